//! NovoGrad (Ginsburg et al. 2019), as `torch-optimizer` 0.3.0 (LMFlow's `NovoGrad`).

use burn::config::Config;
use burn::optim::{LearningRate, Optimizer};
use burn::tensor::{Device, Tensor};

use super::state::{broadcast_scalar, optimizer_state};

/// Configuration of [`NovoGrad`]; defaults are the reference's (its default `lr` is 1e-2).
#[derive(Config, Debug)]
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

impl NovoGradConfig {
    /// Builds the per-tensor optimizer (wrap with `ModuleOptimizer::from`).
    pub fn build(&self) -> NovoGrad {
        NovoGrad {
            config: self.clone(),
        }
    }
}

/// NovoGrad optimizer: layer-wise (per-tensor) second moments.
#[derive(Clone, Debug)]
pub struct NovoGrad {
    config: NovoGradConfig,
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

impl Optimizer for NovoGrad {
    type State<const D: usize> = NovoGradState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let c = &self.config;
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
        let averaged =
            state.exp_avg_sq.mul_scalar(c.beta_2) + norm.clone().mul_scalar(1.0 - c.beta_2);
        let exp_avg_sq = averaged.mask_where(first, norm);
        let max_exp_avg_sq = if c.amsgrad {
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
        let mut g = grad.div(broadcast_scalar::<D>(denom));
        if c.weight_decay != 0.0 {
            g = g + tensor.clone().mul_scalar(c.weight_decay);
        }
        if c.grad_averaging {
            g = g.mul_scalar(1.0 - c.beta_1);
        }
        let exp_avg = state.exp_avg.mul_scalar(c.beta_1) + g;
        (
            tensor - exp_avg.clone().mul_scalar(lr),
            Some(NovoGradState {
                exp_avg,
                exp_avg_sq,
                max_exp_avg_sq,
                step: state.step + 1,
            }),
        )
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.to_device(device)
    }
}
