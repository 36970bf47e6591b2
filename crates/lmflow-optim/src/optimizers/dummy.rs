//! LMFlow's `dummy` optimizer: leaves parameters unchanged (useful to measure everything but the
//! update, or to freeze a run); only an optional decoupled weight decay applies.

use burn::config::Config;
use burn::optim::{LearningRate, Optimizer};
use burn::tensor::{Device, Tensor};

use crate::registry::registered;

/// Configuration of [`Dummy`]; defaults are LMFlow's.
#[derive(Config, Debug, PartialEq)]
pub struct DummyConfig {
    /// Weight decay `p -= lr * wd * p` (the only thing that changes parameters).
    #[config(default = 0.0)]
    pub weight_decay: f64,
}

registered!(DummyConfig => Dummy, lr = 0.0);

impl DummyConfig {
    /// Builds the per-tensor optimizer (wrap with `ModuleOptimizer::from`).
    pub fn build(&self) -> Dummy {
        Dummy {
            weight_decay: self.weight_decay,
        }
    }
}

/// The no-op optimizer; keeps no state.
#[derive(Clone, Debug)]
pub struct Dummy {
    weight_decay: f64,
}

impl Optimizer for Dummy {
    type State<const D: usize> = ();

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        _grad: Tensor<D>,
        _state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let tensor = if self.weight_decay > 0.0 {
            tensor.clone() - tensor.mul_scalar(lr * self.weight_decay)
        } else {
            tensor
        };
        (tensor, None)
    }

    fn to_device<const D: usize>(state: Self::State<D>, _device: &Device) -> Self::State<D> {
        state
    }
}
