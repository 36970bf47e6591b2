//! NovoGrad (Ginsburg et al. 2019), as `torch-optimizer` 0.3.0 (LMFlow's `NovoGrad`).

use burn::config::Config;
use burn::optim::LearningRate;
use burn::tensor::Tensor;

use crate::registry::registered;

use super::state::{
    Step, broadcast_scalar, config_optimizer, ema, l2_penalty, optimizer_state, running_max,
};

/// Configuration of [`NovoGrad`]; defaults are the reference's (its default `lr` is 1e-2).
#[derive(Config, Debug, PartialEq)]
pub struct NovoGradConfig {
    /// Decay of the momentum.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// Decay of the per-tensor second moment.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// Added to the denominator.
    #[config(default = 1e-8)]
    pub epsilon: f64,
    /// Weight decay added to the normalised gradient.
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// Multiply the normalised gradient by `1 - beta_1`.
    #[config(default = false)]
    pub grad_averaging: bool,
    /// AMSGrad variant.
    #[config(default = false)]
    pub amsgrad: bool,
}

registered!(NovoGradConfig => NovoGrad, lr = 1e-2);

config_optimizer! {
    /// NovoGrad optimizer: layer-wise (per-tensor) second moments.
    pub struct NovoGrad(NovoGradConfig) -> NovoGradState = update;
}

optimizer_state! {
    /// State of [`NovoGrad`] for one parameter.
    pub struct NovoGradState {
        tensors {
            /// Momentum.
            exp_avg: Tensor<D>,
            /// Per-tensor second moment (one element).
            exp_avg_sq: Tensor<1>,
        }
        optional {
            /// AMSGrad maximum (one element).
            max_exp_avg_sq: Tensor<1>,
        }
        scalars {
            /// Number of steps taken.
            step: usize,
        }
    }
}

fn update<const D: usize>(
    c: &NovoGradConfig,
    lr: LearningRate,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    state: Option<NovoGradState<D>>,
) -> Step<D, NovoGradState<D>> {
    let device = tensor.device();
    let state = state.unwrap_or_else(|| NovoGradState {
        exp_avg: tensor.zeros_like(),
        exp_avg_sq: Tensor::zeros([1], &device),
        max_exp_avg_sq: c.amsgrad.then(|| Tensor::zeros([1], &device)),
        step: 0,
    });
    let norm = grad.clone().square().sum();
    // First update (a zero moment) copies the norm, later ones average it.
    let first = state.exp_avg_sq.clone().equal_elem(0.0);
    let exp_avg_sq = ema(state.exp_avg_sq, norm.clone(), c.beta_2).mask_where(first, norm);
    let max_exp_avg_sq = running_max(c.amsgrad, state.max_exp_avg_sq, &exp_avg_sq);
    let v = max_exp_avg_sq.as_ref().unwrap_or(&exp_avg_sq).clone();
    let denom = v.sqrt().add_scalar(c.epsilon);
    let mut g = l2_penalty(
        grad.div(broadcast_scalar::<D>(denom)),
        &tensor,
        c.weight_decay,
    );
    if c.grad_averaging {
        g = g.mul_scalar(1.0 - c.beta_1);
    }
    let exp_avg = state.exp_avg.mul_scalar(c.beta_1) + g;
    let state = NovoGradState {
        exp_avg: exp_avg.clone(),
        exp_avg_sq,
        max_exp_avg_sq,
        step: state.step + 1,
    };
    (tensor - exp_avg.mul_scalar(lr), Some(state))
}
