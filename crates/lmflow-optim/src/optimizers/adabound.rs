//! AdaBound (Luo et al. 2019), as `torch-optimizer` 0.3.0 (LMFlow's `AdaBound`).

use burn::config::Config;
use burn::optim::{LearningRate, Optimizer};
use burn::tensor::{Device, Tensor};

use super::state::{bias_correction, optimizer_state};

/// Configuration of [`AdaBound`]; defaults are the reference's.
#[derive(Config, Debug)]
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

impl AdaBoundConfig {
    /// Builds the per-tensor optimizer (wrap with `ModuleOptimizer::from`).
    pub fn build(&self) -> AdaBound {
        AdaBound {
            config: self.clone(),
        }
    }
}

/// AdaBound optimizer: Adam with dynamic bounds that converge to SGD.
#[derive(Clone, Debug)]
pub struct AdaBound {
    config: AdaBoundConfig,
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

impl Optimizer for AdaBound {
    type State<const D: usize> = AdaBoundState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let c = &self.config;
        let state = state.unwrap_or_else(|| AdaBoundState {
            exp_avg: tensor.zeros_like(),
            exp_avg_sq: tensor.zeros_like(),
            max_exp_avg_sq: c.amsbound.then(|| tensor.zeros_like()),
            step: 0,
        });
        let step = state.step + 1;
        let grad = if c.weight_decay != 0.0 {
            grad + tensor.clone().mul_scalar(c.weight_decay)
        } else {
            grad
        };
        let exp_avg = state.exp_avg.mul_scalar(c.beta_1) + grad.clone().mul_scalar(1.0 - c.beta_1);
        let exp_avg_sq =
            state.exp_avg_sq.mul_scalar(c.beta_2) + grad.square().mul_scalar(1.0 - c.beta_2);
        let max_exp_avg_sq = if c.amsbound {
            Some(match state.max_exp_avg_sq {
                Some(m) => m.max_pair(exp_avg_sq.clone()),
                None => exp_avg_sq.clone(),
            })
        } else {
            None
        };
        let denom = max_exp_avg_sq
            .as_ref()
            .unwrap_or(&exp_avg_sq)
            .clone()
            .sqrt()
            .add_scalar(c.epsilon);
        let t = step as f64;
        let step_size =
            lr * bias_correction(c.beta_2, step).sqrt() / bias_correction(c.beta_1, step);
        let final_lr = c.final_lr * lr / c.initial_lr;
        let lower = final_lr * (1.0 - 1.0 / (c.gamma * t + 1.0));
        let upper = final_lr * (1.0 + 1.0 / (c.gamma * t));
        let update = denom
            .recip()
            .mul_scalar(step_size)
            .clamp(lower, upper)
            .mul(exp_avg.clone());
        (
            tensor - update,
            Some(AdaBoundState {
                exp_avg,
                exp_avg_sq,
                max_exp_avg_sq,
                step,
            }),
        )
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.to_device(device)
    }
}
