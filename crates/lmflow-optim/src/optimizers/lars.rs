//! LARS (You et al. 2017) in the PyTorch Lightning Bolts form used by LMFlow's `LARS`.

use burn::config::Config;
use burn::optim::LearningRate;
use burn::tensor::Tensor;

use crate::Error;
use crate::registry::{invalid, registered};

use super::state::{Step, broadcast_scalar, config_optimizer, l2_norm, optimizer_state};

/// Configuration of [`Lars`]; defaults are the reference's (its default `lr` is 1e-2).
#[derive(Config, Debug, PartialEq)]
pub struct LarsConfig {
    /// Momentum factor.
    #[config(default = 0.0)]
    pub momentum: f64,
    /// Dampening of the momentum.
    #[config(default = 0.0)]
    pub dampening: f64,
    /// Weight decay; tensors are LARS-scaled only when it is non-zero.
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// Nesterov momentum.
    #[config(default = false)]
    pub nesterov: bool,
    /// Trust coefficient `eta` of the layer-wise learning rate.
    #[config(default = 0.01)]
    pub trust_coefficient: f64,
    /// Added to the denominator of the trust ratio.
    #[config(default = 1e-8)]
    pub epsilon: f64,
}

/// Nesterov momentum needs a momentum and no dampening, as the reference checks.
fn check(c: &LarsConfig, _lr: f64) -> Result<(), Error> {
    if c.nesterov && (c.momentum <= 0.0 || c.dampening != 0.0) {
        return Err(invalid(
            "nesterov",
            "Nesterov momentum requires a momentum and zero dampening".into(),
        ));
    }
    Ok(())
}

registered!(LarsConfig => Lars, lr = 1e-2, check = check);

config_optimizer! {
    /// LARS optimizer: SGD with a layer-wise trust ratio.
    pub struct Lars(LarsConfig) -> LarsState = update;
}

optimizer_state! {
    /// State of [`Lars`] for one parameter (only with momentum).
    pub struct LarsState {
        tensors {
            /// Momentum buffer.
            momentum_buffer: Tensor<D>,
        }
        optional {}
        scalars {}
    }
}

fn update<const D: usize>(
    c: &LarsConfig,
    lr: LearningRate,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    state: Option<LarsState<D>>,
) -> Step<D, LarsState<D>> {
    let mut d_p = grad.clone();
    if c.weight_decay != 0.0 {
        let p_norm = l2_norm(tensor.clone());
        let g_norm = l2_norm(grad);
        // Scale only where both norms are non-zero (no host round trip).
        let active = p_norm
            .clone()
            .not_equal_elem(0.0)
            .bool_and(g_norm.clone().not_equal_elem(0.0))
            .float();
        let trust = p_norm
            .clone()
            .div(g_norm + p_norm.mul_scalar(c.weight_decay).add_scalar(c.epsilon))
            .mul_scalar(c.trust_coefficient);
        let scale = trust.mul(active.clone()) + active.clone().neg().add_scalar(1.0);
        let decay = active.mul_scalar(c.weight_decay);
        d_p = (d_p + tensor.clone().mul(broadcast_scalar::<D>(decay)))
            .mul(broadcast_scalar::<D>(scale));
    }
    let mut next = None;
    if c.momentum != 0.0 {
        let buf = match state {
            Some(s) => s
                .momentum_buffer
                .mul_scalar(c.momentum)
                .add(d_p.clone().mul_scalar(1.0 - c.dampening)),
            None => d_p.clone(),
        };
        d_p = if c.nesterov {
            d_p + buf.clone().mul_scalar(c.momentum)
        } else {
            buf.clone()
        };
        next = Some(LarsState {
            momentum_buffer: buf,
        });
    }
    (tensor - d_p.mul_scalar(lr), next)
}
