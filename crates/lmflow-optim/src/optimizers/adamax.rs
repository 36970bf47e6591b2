//! Adamax (Kingma & Ba 2015, section 7.1), as `torch.optim.Adamax`.

use burn::config::Config;
use burn::optim::LearningRate;
use burn::tensor::Tensor;

use crate::registry::registered;

use super::state::{Step, bias_correction, config_optimizer, ema, l2_penalty, optimizer_state};

/// Configuration of [`Adamax`]; defaults are `torch.optim.Adamax`'s.
#[derive(Config, Debug, PartialEq)]
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

registered!(AdamaxConfig => Adamax, lr = 2e-3);

config_optimizer! {
    /// Adamax optimizer: Adam with the infinity norm in place of the second moment.
    pub struct Adamax(AdamaxConfig) -> AdamaxState = update;
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

fn update<const D: usize>(
    c: &AdamaxConfig,
    lr: LearningRate,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    state: Option<AdamaxState<D>>,
) -> Step<D, AdamaxState<D>> {
    let grad = l2_penalty(grad, &tensor, c.weight_decay);
    let (exp_avg, exp_inf, step) = match state {
        Some(s) => (
            ema(s.exp_avg, grad.clone(), c.beta_1),
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
    let state = AdamaxState {
        exp_avg,
        exp_inf,
        step,
    };
    (tensor, Some(state))
}
