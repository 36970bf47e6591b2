//! NAdam (Dozat 2016) with momentum decay, as `torch.optim.NAdam`.

use burn::config::Config;
use burn::optim::LearningRate;
use burn::tensor::Tensor;

use crate::registry::registered;

use super::state::{
    Step, apply_weight_decay, bias_correction, config_optimizer, ema, optimizer_state,
};

/// Configuration of [`NAdam`]; defaults are `torch.optim.NAdam`'s (its default `lr` is 2e-3).
#[derive(Config, Debug, PartialEq)]
pub struct NAdamConfig {
    /// Decay of the first moment.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// Decay of the second moment.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// Added to the denominator.
    #[config(default = 1e-8)]
    pub epsilon: f64,
    /// Weight decay (L2 penalty, or decoupled when `decoupled_weight_decay`).
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// Momentum decay `psi` of the momentum schedule.
    #[config(default = 4e-3)]
    pub momentum_decay: f64,
    /// Decoupled (AdamW-style) weight decay instead of an L2 penalty.
    #[config(default = false)]
    pub decoupled_weight_decay: bool,
}

registered!(NAdamConfig => NAdam, lr = 2e-3);

config_optimizer! {
    /// NAdam optimizer: Adam with Nesterov momentum.
    pub struct NAdam(NAdamConfig) -> NAdamState = update;
}

optimizer_state! {
    /// State of [`NAdam`] for one parameter.
    pub struct NAdamState {
        tensors {
            /// First moment.
            exp_avg: Tensor<D>,
            /// Second moment.
            exp_avg_sq: Tensor<D>,
        }
        optional {}
        scalars {
            /// Product of the momentum coefficients so far.
            mu_product: f64,
            /// Number of steps taken.
            step: usize,
        }
    }
}

fn update<const D: usize>(
    c: &NAdamConfig,
    lr: LearningRate,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    state: Option<NAdamState<D>>,
) -> Step<D, NAdamState<D>> {
    let state = state.unwrap_or_else(|| NAdamState {
        exp_avg: tensor.zeros_like(),
        exp_avg_sq: tensor.zeros_like(),
        mu_product: 1.0,
        step: 0,
    });
    let step = state.step + 1;
    let bc2 = bias_correction(c.beta_2, step);
    let (tensor, grad) =
        apply_weight_decay(tensor, grad, lr, c.weight_decay, c.decoupled_weight_decay);
    let t = step as f64;
    let mu = c.beta_1 * (1.0 - 0.5 * 0.96f64.powf(t * c.momentum_decay));
    let mu_next = c.beta_1 * (1.0 - 0.5 * 0.96f64.powf((t + 1.0) * c.momentum_decay));
    // PyTorch keeps the product in an f32 tensor.
    let mu_product = (state.mu_product * mu) as f32 as f64;
    let mu_product_next = mu_product * mu_next;

    let exp_avg = ema(state.exp_avg, grad.clone(), c.beta_1);
    let exp_avg_sq = ema(state.exp_avg_sq, grad.clone().square(), c.beta_2);
    let denom = exp_avg_sq
        .clone()
        .div_scalar(bc2)
        .sqrt()
        .add_scalar(c.epsilon);
    let tensor = tensor
        + grad
            .div(denom.clone())
            .mul_scalar(-lr * (1.0 - mu) / (1.0 - mu_product))
        + exp_avg
            .clone()
            .div(denom)
            .mul_scalar(-lr * mu_next / (1.0 - mu_product_next));
    let state = NAdamState {
        exp_avg,
        exp_avg_sq,
        mu_product,
        step,
    };
    (tensor, Some(state))
}
