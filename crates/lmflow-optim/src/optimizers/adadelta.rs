//! Adadelta (Zeiler 2012), as `torch.optim.Adadelta`.

use burn::config::Config;
use burn::optim::{LearningRate, Optimizer};
use burn::tensor::{Device, Tensor};

use super::state::optimizer_state;

/// Configuration of [`Adadelta`]; defaults are `torch.optim.Adadelta`'s (its default `lr` is 1.0).
#[derive(Config, Debug)]
pub struct AdadeltaConfig {
    /// Decay of the running averages.
    #[config(default = 0.9)]
    pub rho: f64,
    /// Added inside the square roots.
    #[config(default = 1e-6)]
    pub epsilon: f64,
    /// L2 penalty added to the gradient.
    #[config(default = 0.0)]
    pub weight_decay: f64,
}

impl AdadeltaConfig {
    /// Builds the per-tensor optimizer (wrap with `ModuleOptimizer::from`).
    pub fn build(&self) -> Adadelta {
        Adadelta {
            config: self.clone(),
        }
    }
}

/// Adadelta optimizer.
#[derive(Clone, Debug)]
pub struct Adadelta {
    config: AdadeltaConfig,
}

optimizer_state! {
    /// State of [`Adadelta`] for one parameter.
    pub struct AdadeltaState {
        tensors {
            /// Running average of squared gradients.
            square_avg: Tensor<D>,
            /// Running average of squared updates.
            acc_delta: Tensor<D>,
        }
        optional {}
        scalars {
            /// Number of steps taken.
            step: usize,
        }
    }
}

impl Optimizer for Adadelta {
    type State<const D: usize> = AdadeltaState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let c = &self.config;
        let state = state.unwrap_or_else(|| AdadeltaState {
            square_avg: tensor.zeros_like(),
            acc_delta: tensor.zeros_like(),
            step: 0,
        });
        let grad = if c.weight_decay != 0.0 {
            grad + tensor.clone().mul_scalar(c.weight_decay)
        } else {
            grad
        };
        let square_avg =
            state.square_avg.mul_scalar(c.rho) + grad.clone().square().mul_scalar(1.0 - c.rho);
        let std = square_avg.clone().add_scalar(c.epsilon).sqrt();
        let delta = state
            .acc_delta
            .clone()
            .add_scalar(c.epsilon)
            .sqrt()
            .div(std)
            .mul(grad);
        let acc_delta =
            state.acc_delta.mul_scalar(c.rho) + delta.clone().square().mul_scalar(1.0 - c.rho);
        let tensor = tensor - delta.mul_scalar(lr);
        (
            tensor,
            Some(AdadeltaState {
                square_avg,
                acc_delta,
                step: state.step + 1,
            }),
        )
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.to_device(device)
    }
}
