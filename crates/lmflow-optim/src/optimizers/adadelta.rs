//! Adadelta (Zeiler 2012), as `torch.optim.Adadelta`.

use burn::config::Config;
use burn::optim::LearningRate;
use burn::tensor::Tensor;

use crate::registry::registered;

use super::state::{Step, config_optimizer, ema, l2_penalty, optimizer_state};

/// Configuration of [`Adadelta`]; defaults are `torch.optim.Adadelta`'s (its default `lr` is 1.0).
#[derive(Config, Debug, PartialEq)]
pub struct AdadeltaConfig {
    /// Decay of the running averages.
    #[config(default = 0.9)]
    pub rho: f64,
    /// Added inside the square roots.
    #[config(default = 1e-6)]
    pub epsilon: f64,
    /// L2 penalty added to the gradient.
    #[config(default = 0.0)]
    pub weight_decay: f64,
}

registered!(AdadeltaConfig => Adadelta, lr = 1.0);

config_optimizer! {
    /// Adadelta optimizer.
    pub struct Adadelta(AdadeltaConfig) -> AdadeltaState = update;
}

optimizer_state! {
    /// State of [`Adadelta`] for one parameter.
    pub struct AdadeltaState {
        tensors {
            /// Running average of squared gradients.
            square_avg: Tensor<D>,
            /// Running average of squared updates.
            acc_delta: Tensor<D>,
        }
        optional {}
        scalars {
            /// Number of steps taken.
            step: usize,
        }
    }
}

fn update<const D: usize>(
    c: &AdadeltaConfig,
    lr: LearningRate,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    state: Option<AdadeltaState<D>>,
) -> Step<D, AdadeltaState<D>> {
    let state = state.unwrap_or_else(|| AdadeltaState {
        square_avg: tensor.zeros_like(),
        acc_delta: tensor.zeros_like(),
        step: 0,
    });
    let grad = l2_penalty(grad, &tensor, c.weight_decay);
    let square_avg = ema(state.square_avg, grad.clone().square(), c.rho);
    let std = square_avg.clone().add_scalar(c.epsilon).sqrt();
    let delta = state
        .acc_delta
        .clone()
        .add_scalar(c.epsilon)
        .sqrt()
        .div(std)
        .mul(grad);
    let acc_delta = ema(state.acc_delta, delta.clone().square(), c.rho);
    let state = AdadeltaState {
        square_avg,
        acc_delta,
        step: state.step + 1,
    };
    (tensor - delta.mul_scalar(lr), Some(state))
}
