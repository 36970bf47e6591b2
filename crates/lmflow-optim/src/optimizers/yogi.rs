//! Yogi (Zaheer et al. 2018), as `torch-optimizer` 0.3.0 (LMFlow's `Yogi`).

use burn::config::Config;
use burn::optim::{LearningRate, Optimizer};
use burn::tensor::{Device, Tensor};

use super::state::{bias_correction, optimizer_state};

/// Configuration of [`Yogi`]; defaults are the reference's (its default `lr` is 1e-2).
#[derive(Config, Debug)]
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

impl YogiConfig {
    /// Builds the per-tensor optimizer (wrap with `ModuleOptimizer::from`).
    pub fn build(&self) -> Yogi {
        Yogi {
            config: self.clone(),
        }
    }
}

/// Yogi optimizer: Adam with an additive, sign-controlled second-moment update.
#[derive(Clone, Debug)]
pub struct Yogi {
    config: YogiConfig,
}

optimizer_state! {
    /// State of [`Yogi`] for one parameter.
    pub struct YogiState {
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

impl Optimizer for Yogi {
    type State<const D: usize> = YogiState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let c = &self.config;
        let state = state.unwrap_or_else(|| YogiState {
            exp_avg: tensor.ones_like().mul_scalar(c.initial_accumulator),
            exp_avg_sq: tensor.ones_like().mul_scalar(c.initial_accumulator),
            step: 0,
        });
        let step = state.step + 1;
        let grad = if c.weight_decay != 0.0 {
            grad + tensor.clone().mul_scalar(c.weight_decay)
        } else {
            grad
        };
        let exp_avg = state.exp_avg.mul_scalar(c.beta_1) + grad.clone().mul_scalar(1.0 - c.beta_1);
        let grad_sq = grad.square();
        let exp_avg_sq = state.exp_avg_sq.clone()
            - (state.exp_avg_sq - grad_sq.clone())
                .sign()
                .mul(grad_sq)
                .mul_scalar(1.0 - c.beta_2);
        let denom = exp_avg_sq
            .clone()
            .sqrt()
            .div_scalar(bias_correction(c.beta_2, step).sqrt())
            .add_scalar(c.epsilon);
        let step_size = lr / bias_correction(c.beta_1, step);
        (
            tensor - exp_avg.clone().div(denom).mul_scalar(step_size),
            Some(YogiState {
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
