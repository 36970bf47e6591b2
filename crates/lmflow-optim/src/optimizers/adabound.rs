//! AdaBound (Luo et al. 2019), as `torch-optimizer` 0.3.0 (LMFlow's `AdaBound`).

use burn::config::Config;
use burn::optim::LearningRate;
use burn::tensor::Tensor;

use crate::Error;
use crate::registry::{Registered, Switches, invalid};

use super::state::{
    Step, bias_correction, config_optimizer, ema, l2_penalty, optimizer_state, running_max,
};

/// Configuration of [`AdaBound`]; defaults are the reference's.
#[derive(Config, Debug, PartialEq)]
pub struct AdaBoundConfig {
    /// The learning rate the optimizer was created with (the reference's `base_lr`): the
    /// bounds converge to `final_lr * lr / initial_lr`.
    #[config(default = 1e-3)]
    pub initial_lr: f64,
    /// Decay of the first moment.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// Decay of the second moment.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// Final (SGD) learning rate.
    #[config(default = 0.1)]
    pub final_lr: f64,
    /// Convergence speed of the bounds.
    #[config(default = 1e-3)]
    pub gamma: f64,
    /// Added to the denominator.
    #[config(default = 1e-8)]
    pub epsilon: f64,
    /// L2 penalty added to the gradient.
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// AMSBound variant.
    #[config(default = false)]
    pub amsbound: bool,
}

impl Registered for AdaBoundConfig {
    const DEFAULT_LR: f64 = 1e-3;
    /// The registry's `lr` is the reference's `base_lr`.
    const DERIVED: &'static [&'static str] = &["initial_lr"];
    type Optimizer = AdaBound;

    fn defaults() -> Self {
        Self::new()
    }

    fn weight_decay(&self) -> f64 {
        self.weight_decay
    }

    fn build_group(&self, lr: f64, weight_decay: f64, _switches: &Switches) -> AdaBound {
        self.clone()
            .with_initial_lr(lr)
            .with_weight_decay(weight_decay)
            .build()
    }

    fn check(&self, lr: f64) -> Result<(), Error> {
        if lr <= 0.0 {
            return Err(invalid(
                "lr",
                "adabound's bounds are relative to a positive lr".into(),
            ));
        }
        Ok(())
    }
}

config_optimizer! {
    /// AdaBound optimizer: Adam with dynamic bounds that converge to SGD.
    pub struct AdaBound(AdaBoundConfig) -> AdaBoundState = update;
}

optimizer_state! {
    /// State of [`AdaBound`] for one parameter.
    pub struct AdaBoundState {
        tensors {
            /// First moment.
            exp_avg: Tensor<D>,
            /// Second moment.
            exp_avg_sq: Tensor<D>,
        }
        optional {
            /// AMSBound maximum.
            max_exp_avg_sq: Tensor<D>,
        }
        scalars {
            /// Number of steps taken.
            step: usize,
        }
    }
}

fn update<const D: usize>(
    c: &AdaBoundConfig,
    lr: LearningRate,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    state: Option<AdaBoundState<D>>,
) -> Step<D, AdaBoundState<D>> {
    let state = state.unwrap_or_else(|| AdaBoundState {
        exp_avg: tensor.zeros_like(),
        exp_avg_sq: tensor.zeros_like(),
        max_exp_avg_sq: c.amsbound.then(|| tensor.zeros_like()),
        step: 0,
    });
    let step = state.step + 1;
    let grad = l2_penalty(grad, &tensor, c.weight_decay);
    let exp_avg = ema(state.exp_avg, grad.clone(), c.beta_1);
    let exp_avg_sq = ema(state.exp_avg_sq, grad.square(), c.beta_2);
    let max_exp_avg_sq = running_max(c.amsbound, state.max_exp_avg_sq, &exp_avg_sq);
    let v = max_exp_avg_sq.as_ref().unwrap_or(&exp_avg_sq).clone();
    let denom = v.sqrt().add_scalar(c.epsilon);
    let t = step as f64;
    let step_size = lr * bias_correction(c.beta_2, step).sqrt() / bias_correction(c.beta_1, step);
    let final_lr = c.final_lr * lr / c.initial_lr;
    let lower = final_lr * (1.0 - 1.0 / (c.gamma * t + 1.0));
    let upper = final_lr * (1.0 + 1.0 / (c.gamma * t));
    let update = denom
        .recip()
        .mul_scalar(step_size)
        .clamp(lower, upper)
        .mul(exp_avg.clone());
    let state = AdaBoundState {
        exp_avg,
        exp_avg_sq,
        max_exp_avg_sq,
        step,
    };
    (tensor - update, Some(state))
}
