//! Adamax (Kingma & Ba 2015, section 7.1), as `torch.optim.Adamax`.

use burn::config::Config;
use burn::optim::{LearningRate, Optimizer};
use burn::tensor::{Device, Tensor};

use super::state::{bias_correction, optimizer_state};

/// Configuration of [`Adamax`]; defaults are `torch.optim.Adamax`'s.
#[derive(Config, Debug)]
pub struct AdamaxConfig {
    /// Decay of the first moment.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// Decay of the infinity norm.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// Added to the gradient magnitude before the infinity norm.
    #[config(default = 1e-8)]
    pub epsilon: f64,
    /// L2 penalty added to the gradient.
    #[config(default = 0.0)]
    pub weight_decay: f64,
}

impl AdamaxConfig {
    /// Builds the per-tensor optimizer (wrap with `ModuleOptimizer::from`).
    pub fn build(&self) -> Adamax {
        Adamax {
            config: self.clone(),
        }
    }
}

/// Adamax optimizer: Adam with the infinity norm in place of the second moment.
#[derive(Clone, Debug)]
pub struct Adamax {
    config: AdamaxConfig,
}

optimizer_state! {
    /// State of [`Adamax`] for one parameter.
    pub struct AdamaxState {
        tensors {
            /// First moment.
            exp_avg: Tensor<D>,
            /// Exponentially weighted infinity norm.
            exp_inf: Tensor<D>,
        }
        optional {}
        scalars {
            /// Number of steps taken.
            step: usize,
        }
    }
}

impl Optimizer for Adamax {
    type State<const D: usize> = AdamaxState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let c = &self.config;
        let grad = if c.weight_decay != 0.0 {
            grad + tensor.clone().mul_scalar(c.weight_decay)
        } else {
            grad
        };
        let (exp_avg, exp_inf, step) = match state {
            Some(s) => (
                s.exp_avg.mul_scalar(c.beta_1) + grad.clone().mul_scalar(1.0 - c.beta_1),
                s.exp_inf
                    .mul_scalar(c.beta_2)
                    .max_pair(grad.abs().add_scalar(c.epsilon)),
                s.step + 1,
            ),
            None => (
                grad.clone().mul_scalar(1.0 - c.beta_1),
                grad.abs().add_scalar(c.epsilon),
                1,
            ),
        };
        let clr = lr / bias_correction(c.beta_1, step);
        let tensor = tensor - exp_avg.clone().div(exp_inf.clone()).mul_scalar(clr);
        (
            tensor,
            Some(AdamaxState {
                exp_avg,
                exp_inf,
                step,
            }),
        )
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.to_device(device)
    }
}
