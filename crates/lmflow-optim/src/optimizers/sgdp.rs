//! SGDP (Heo et al. 2021), as `torch-optimizer` 0.3.0 (LMFlow's `SGDP`).

use burn::config::Config;
use burn::optim::LearningRate;
use burn::tensor::Tensor;

use super::projection::project;
use crate::registry::registered;

use super::state::{Step, config_optimizer, optimizer_state};

/// Configuration of [`Sgdp`]; defaults are the reference's.
#[derive(Config, Debug, PartialEq)]
pub struct SgdpConfig {
    /// Momentum factor.
    #[config(default = 0.0)]
    pub momentum: f64,
    /// Dampening of the momentum.
    #[config(default = 0.0)]
    pub dampening: f64,
    /// Added to the norms of the projection.
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

registered!(SgdpConfig => Sgdp, lr = 1e-3);

config_optimizer! {
    /// SGDP optimizer: SGD with the AdamP projection.
    pub struct Sgdp(SgdpConfig) -> SgdpState = update;
}

optimizer_state! {
    /// State of [`Sgdp`] for one parameter.
    pub struct SgdpState {
        tensors {
            /// Momentum buffer.
            momentum: Tensor<D>,
        }
        optional {}
        scalars {}
    }
}

fn update<const D: usize>(
    c: &SgdpConfig,
    lr: LearningRate,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    state: Option<SgdpState<D>>,
) -> Step<D, SgdpState<D>> {
    let buf = state
        .map(|s| s.momentum)
        .unwrap_or_else(|| tensor.zeros_like());
    let buf = buf.mul_scalar(c.momentum) + grad.clone().mul_scalar(1.0 - c.dampening);
    let d_p = if c.nesterov {
        grad.clone() + buf.clone().mul_scalar(c.momentum)
    } else {
        buf.clone()
    };
    let (d_p, wd_ratio, projected) = project(&tensor, &grad, d_p, c.delta, c.wd_ratio, c.epsilon);
    // The reference projects the momentum buffer in place when it is the update itself.
    let buf = if projected && !c.nesterov {
        d_p.clone()
    } else {
        buf
    };
    let tensor = if c.weight_decay != 0.0 {
        tensor.mul_scalar(1.0 - lr * c.weight_decay * wd_ratio / (1.0 - c.momentum))
    } else {
        tensor
    };
    (
        tensor - d_p.mul_scalar(lr),
        Some(SgdpState { momentum: buf }),
    )
}
