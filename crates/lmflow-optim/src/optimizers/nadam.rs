//! NAdam (Dozat 2016) with momentum decay, as `torch.optim.NAdam`.

use burn::config::Config;
use burn::optim::{LearningRate, Optimizer};
use burn::tensor::{Device, Tensor};

use super::state::{bias_correction, optimizer_state};

/// Configuration of [`NAdam`]; defaults are `torch.optim.NAdam`'s (its default `lr` is 2e-3).
#[derive(Config, Debug)]
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

impl NAdamConfig {
    /// Builds the per-tensor optimizer (wrap with `ModuleOptimizer::from`).
    pub fn build(&self) -> NAdam {
        NAdam {
            config: self.clone(),
        }
    }
}

/// NAdam optimizer: Adam with Nesterov momentum.
#[derive(Clone, Debug)]
pub struct NAdam {
    config: NAdamConfig,
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

impl Optimizer for NAdam {
    type State<const D: usize> = NAdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let c = &self.config;
        let state = state.unwrap_or_else(|| NAdamState {
            exp_avg: tensor.zeros_like(),
            exp_avg_sq: tensor.zeros_like(),
            mu_product: 1.0,
            step: 0,
        });
        let step = state.step + 1;
        let bc2 = bias_correction(c.beta_2, step);
        let (tensor, grad) = if c.weight_decay == 0.0 {
            (tensor, grad)
        } else if c.decoupled_weight_decay {
            (tensor.mul_scalar(1.0 - lr * c.weight_decay), grad)
        } else {
            let grad = grad + tensor.clone().mul_scalar(c.weight_decay);
            (tensor, grad)
        };
        let t = step as f64;
        let mu = c.beta_1 * (1.0 - 0.5 * 0.96f64.powf(t * c.momentum_decay));
        let mu_next = c.beta_1 * (1.0 - 0.5 * 0.96f64.powf((t + 1.0) * c.momentum_decay));
        // PyTorch keeps the product in an f32 tensor.
        let mu_product = (state.mu_product * mu) as f32 as f64;
        let mu_product_next = mu_product * mu_next;

        let exp_avg = state.exp_avg.mul_scalar(c.beta_1) + grad.clone().mul_scalar(1.0 - c.beta_1);
        let exp_avg_sq = state.exp_avg_sq.mul_scalar(c.beta_2)
            + grad.clone().square().mul_scalar(1.0 - c.beta_2);
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
        (
            tensor,
            Some(NAdamState {
                exp_avg,
                exp_avg_sq,
                mu_product,
                step,
            }),
        )
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.to_device(device)
    }
}
