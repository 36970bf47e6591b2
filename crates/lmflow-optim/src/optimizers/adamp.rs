//! AdamP (Heo et al. 2021), as `torch-optimizer` 0.3.0 (LMFlow's `AdamP`).

use burn::config::Config;
use burn::optim::{LearningRate, Optimizer};
use burn::tensor::{Device, Tensor};

use super::projection::project;
use super::state::{bias_correction, optimizer_state};

/// Configuration of [`AdamP`]; defaults are the reference's.
#[derive(Config, Debug)]
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

impl AdamPConfig {
    /// Builds the per-tensor optimizer (wrap with `ModuleOptimizer::from`).
    pub fn build(&self) -> AdamP {
        AdamP {
            config: self.clone(),
        }
    }
}

/// AdamP optimizer: Adam that removes the radial part of updates to scale-invariant weights.
#[derive(Clone, Debug)]
pub struct AdamP {
    config: AdamPConfig,
}

optimizer_state! {
    /// State of [`AdamP`] for one parameter.
    pub struct AdamPState {
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

impl Optimizer for AdamP {
    type State<const D: usize> = AdamPState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let c = &self.config;
        let state = state.unwrap_or_else(|| AdamPState {
            exp_avg: tensor.zeros_like(),
            exp_avg_sq: tensor.zeros_like(),
            step: 0,
        });
        let step = state.step + 1;
        let exp_avg = state.exp_avg.mul_scalar(c.beta_1) + grad.clone().mul_scalar(1.0 - c.beta_1);
        let exp_avg_sq = state.exp_avg_sq.mul_scalar(c.beta_2)
            + grad.clone().square().mul_scalar(1.0 - c.beta_2);
        let denom = exp_avg_sq
            .clone()
            .sqrt()
            .div_scalar(bias_correction(c.beta_2, step).sqrt())
            .add_scalar(c.epsilon);
        let step_size = lr / bias_correction(c.beta_1, step);
        let perturb = if c.nesterov {
            (exp_avg.clone().mul_scalar(c.beta_1) + grad.clone().mul_scalar(1.0 - c.beta_1))
                .div(denom)
        } else {
            exp_avg.clone().div(denom)
        };
        let (perturb, wd_ratio, _) =
            project(&tensor, &grad, perturb, c.delta, c.wd_ratio, c.epsilon);
        let tensor = if c.weight_decay > 0.0 {
            tensor.mul_scalar(1.0 - lr * c.weight_decay * wd_ratio)
        } else {
            tensor
        };
        (
            tensor - perturb.mul_scalar(step_size),
            Some(AdamPState {
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
