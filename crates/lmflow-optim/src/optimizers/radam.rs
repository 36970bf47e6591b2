//! RAdam (Liu et al. 2020), as `torch.optim.RAdam`.

use burn::config::Config;
use burn::optim::LearningRate;
use burn::tensor::Tensor;

use crate::registry::registered;

use super::state::{MomentState, Step, apply_weight_decay, bias_correction, config_optimizer, ema};

/// Configuration of [`RAdam`]; defaults are `torch.optim.RAdam`'s.
#[derive(Config, Debug, PartialEq)]
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

registered!(RAdamConfig => RAdam, lr = 1e-3);

config_optimizer! {
    /// Rectified Adam: falls back to SGD with momentum while the variance estimate is unreliable.
    pub struct RAdam(RAdamConfig) -> RAdamState = update;
}

/// State of [`RAdam`] for one parameter.
pub type RAdamState<const D: usize> = MomentState<D>;

fn update<const D: usize>(
    c: &RAdamConfig,
    lr: LearningRate,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    state: Option<RAdamState<D>>,
) -> Step<D, RAdamState<D>> {
    let state = state.unwrap_or_else(|| MomentState::filled(&tensor, 0.0));
    let step = state.step + 1;
    let (tensor, grad) =
        apply_weight_decay(tensor, grad, lr, c.weight_decay, c.decoupled_weight_decay);
    let exp_avg = ema(state.exp_avg, grad.clone(), c.beta_1);
    let exp_avg_sq = ema(state.exp_avg_sq, grad.square(), c.beta_2);
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
    let state = RAdamState {
        exp_avg,
        exp_avg_sq,
        step,
    };
    (tensor, Some(state))
}
