//! AdamP (Heo et al. 2021), as `torch-optimizer` 0.3.0 (LMFlow's `AdamP`).

use burn::config::Config;
use burn::optim::LearningRate;
use burn::tensor::Tensor;

use super::projection::project;
use crate::registry::registered;

use super::state::{MomentState, Step, adam_denom, bias_correction, config_optimizer, ema};

/// Configuration of [`AdamP`]; defaults are the reference's.
#[derive(Config, Debug, PartialEq)]
pub struct AdamPConfig {
    /// Decay of the first moment.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// Decay of the second moment.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// Added to the denominator and the norms.
    #[config(default = 1e-8)]
    pub epsilon: f64,
    /// Decoupled weight decay.
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// Cosine threshold of the projection.
    #[config(default = 0.1)]
    pub delta: f64,
    /// Weight-decay ratio applied to projected tensors.
    #[config(default = 0.1)]
    pub wd_ratio: f64,
    /// Nesterov momentum.
    #[config(default = false)]
    pub nesterov: bool,
}

registered!(AdamPConfig => AdamP, lr = 1e-3);

config_optimizer! {
    /// AdamP optimizer: Adam that removes the radial part of updates to scale-invariant weights.
    pub struct AdamP(AdamPConfig) -> AdamPState = update;
}

/// State of [`AdamP`] for one parameter.
pub type AdamPState<const D: usize> = MomentState<D>;

fn update<const D: usize>(
    c: &AdamPConfig,
    lr: LearningRate,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    state: Option<AdamPState<D>>,
) -> Step<D, AdamPState<D>> {
    let state = state.unwrap_or_else(|| MomentState::filled(&tensor, 0.0));
    let step = state.step + 1;
    let exp_avg = ema(state.exp_avg, grad.clone(), c.beta_1);
    let exp_avg_sq = ema(state.exp_avg_sq, grad.clone().square(), c.beta_2);
    let denom = adam_denom(
        exp_avg_sq.clone(),
        bias_correction(c.beta_2, step),
        c.epsilon,
    );
    let step_size = lr / bias_correction(c.beta_1, step);
    let perturb = if c.nesterov {
        ema(exp_avg.clone(), grad.clone(), c.beta_1).div(denom)
    } else {
        exp_avg.clone().div(denom)
    };
    let (perturb, wd_ratio, _) = project(&tensor, &grad, perturb, c.delta, c.wd_ratio, c.epsilon);
    let tensor = if c.weight_decay > 0.0 {
        tensor.mul_scalar(1.0 - lr * c.weight_decay * wd_ratio)
    } else {
        tensor
    };
    let state = AdamPState {
        exp_avg,
        exp_avg_sq,
        step,
    };
    (tensor - perturb.mul_scalar(step_size), Some(state))
}
