//! RAdam (Liu et al. 2020), as `torch.optim.RAdam`.

use burn::config::Config;
use burn::optim::{LearningRate, Optimizer};
use burn::tensor::{Device, Tensor};

use super::state::{bias_correction, optimizer_state};

/// Configuration of [`RAdam`]; defaults are `torch.optim.RAdam`'s.
#[derive(Config, Debug)]
pub struct RAdamConfig {
    /// Decay of the first moment.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// Decay of the second moment.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// Added to the square root of the second moment.
    #[config(default = 1e-8)]
    pub epsilon: f64,
    /// Weight decay (L2 penalty, or decoupled when `decoupled_weight_decay`).
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// Decoupled (AdamW-style) weight decay instead of an L2 penalty.
    #[config(default = false)]
    pub decoupled_weight_decay: bool,
}

impl RAdamConfig {
    /// Builds the per-tensor optimizer (wrap with `ModuleOptimizer::from`).
    pub fn build(&self) -> RAdam {
        RAdam {
            config: self.clone(),
        }
    }
}

/// Rectified Adam: falls back to SGD with momentum while the variance estimate is unreliable.
#[derive(Clone, Debug)]
pub struct RAdam {
    config: RAdamConfig,
}

optimizer_state! {
    /// State of [`RAdam`] for one parameter.
    pub struct RAdamState {
        tensors {
            /// First moment.
            exp_avg: Tensor<D>,
            /// Second moment.
            exp_avg_sq: Tensor<D>,
        }
        optional {}
        scalars {
            /// Number of steps taken.
            step: usize,
        }
    }
}

impl Optimizer for RAdam {
    type State<const D: usize> = RAdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let c = &self.config;
        let state = state.unwrap_or_else(|| RAdamState {
            exp_avg: tensor.zeros_like(),
            exp_avg_sq: tensor.zeros_like(),
            step: 0,
        });
        let step = state.step + 1;
        let (tensor, grad) = if c.weight_decay == 0.0 {
            (tensor, grad)
        } else if c.decoupled_weight_decay {
            (tensor.mul_scalar(1.0 - lr * c.weight_decay), grad)
        } else {
            let grad = grad + tensor.clone().mul_scalar(c.weight_decay);
            (tensor, grad)
        };
        let exp_avg = state.exp_avg.mul_scalar(c.beta_1) + grad.clone().mul_scalar(1.0 - c.beta_1);
        let exp_avg_sq =
            state.exp_avg_sq.mul_scalar(c.beta_2) + grad.square().mul_scalar(1.0 - c.beta_2);
        let bc1 = bias_correction(c.beta_1, step);
        let bc2 = bias_correction(c.beta_2, step);
        let t = step as f64;
        let rho_inf = 2.0 / (1.0 - c.beta_2) - 1.0;
        let rho_t = rho_inf - 2.0 * t * c.beta_2.powi(step as i32) / bc2;
        let corrected = exp_avg.clone().div_scalar(bc1);
        let tensor = if rho_t > 5.0 {
            let rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                .sqrt();
            let adaptive = exp_avg_sq
                .clone()
                .sqrt()
                .add_scalar(c.epsilon)
                .recip()
                .mul_scalar(bc2.sqrt());
            tensor - corrected.mul_scalar(lr).mul(adaptive).mul_scalar(rect)
        } else {
            tensor - corrected.mul_scalar(lr)
        };
        (
            tensor,
            Some(RAdamState {
                exp_avg,
                exp_avg_sq,
                step,
            }),
        )
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.to_device(device)
    }
}
