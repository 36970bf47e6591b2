//! Yogi (Zaheer et al. 2018), as `torch-optimizer` 0.3.0 (LMFlow's `Yogi`).

use burn::config::Config;
use burn::optim::LearningRate;
use burn::tensor::Tensor;

use crate::registry::registered;

use super::state::{
    MomentState, Step, adam_denom, bias_correction, config_optimizer, ema, l2_penalty,
};

/// Configuration of [`Yogi`]; defaults are the reference's (its default `lr` is 1e-2).
#[derive(Config, Debug, PartialEq)]
pub struct YogiConfig {
    /// Decay of the first moment.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// Decay of the second moment.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// Added to the denominator.
    #[config(default = 1e-3)]
    pub epsilon: f64,
    /// Initial value of both moments.
    #[config(default = 1e-6)]
    pub initial_accumulator: f64,
    /// L2 penalty added to the gradient.
    #[config(default = 0.0)]
    pub weight_decay: f64,
}

registered!(YogiConfig => Yogi, lr = 1e-2);

config_optimizer! {
    /// Yogi optimizer: Adam with an additive, sign-controlled second-moment update.
    pub struct Yogi(YogiConfig) -> YogiState = update;
}

/// State of [`Yogi`] for one parameter.
pub type YogiState<const D: usize> = MomentState<D>;

fn update<const D: usize>(
    c: &YogiConfig,
    lr: LearningRate,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    state: Option<YogiState<D>>,
) -> Step<D, YogiState<D>> {
    let state = state.unwrap_or_else(|| MomentState::filled(&tensor, c.initial_accumulator));
    let step = state.step + 1;
    let grad = l2_penalty(grad, &tensor, c.weight_decay);
    let exp_avg = ema(state.exp_avg, grad.clone(), c.beta_1);
    let grad_sq = grad.square();
    let exp_avg_sq = state.exp_avg_sq.clone()
        - (state.exp_avg_sq - grad_sq.clone())
            .sign()
            .mul(grad_sq)
            .mul_scalar(1.0 - c.beta_2);
    let denom = adam_denom(
        exp_avg_sq.clone(),
        bias_correction(c.beta_2, step),
        c.epsilon,
    );
    let step_size = lr / bias_correction(c.beta_1, step);
    let tensor = tensor - exp_avg.clone().div(denom).mul_scalar(step_size);
    let state = YogiState {
        exp_avg,
        exp_avg_sq,
        step,
    };
    (tensor, Some(state))
}
