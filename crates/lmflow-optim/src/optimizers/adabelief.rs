//! AdaBelief (Zhuang et al. 2020), as `adabelief-pytorch` 0.2.1 (LMFlow's `AdaBelief`).

use burn::config::Config;
use burn::optim::LearningRate;
use burn::tensor::Tensor;

use crate::registry::registered;

use super::state::{
    Step, adam_denom, apply_weight_decay, bias_correction, config_optimizer, ema, optimizer_state,
    running_max,
};

/// Configuration of [`AdaBelief`]; defaults are `adabelief-pytorch` 0.2.1's.
#[derive(Config, Debug, PartialEq)]
pub struct AdaBeliefConfig {
    /// Decay of the first moment.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// Decay of the gradient-residual variance.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// Added to the variance (every step, in place, as the reference does) and the denominator.
    #[config(default = 1e-16)]
    pub epsilon: f64,
    /// Weight decay.
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// AMSGrad variant (maximum of the variance).
    #[config(default = false)]
    pub amsgrad: bool,
    /// Decoupled weight decay (`p *= 1 - lr * wd`) instead of an L2 penalty.
    #[config(default = true)]
    pub weight_decouple: bool,
    /// With decoupled decay: `p *= 1 - wd`, independent of the learning rate.
    #[config(default = false)]
    pub fixed_decay: bool,
    /// RAdam-style rectification.
    #[config(default = true)]
    pub rectify: bool,
    /// While rectification is off (early steps), take SGD-with-momentum steps.
    #[config(default = true)]
    pub degenerated_to_sgd: bool,
}

registered!(AdaBeliefConfig => AdaBelief, lr = 1e-3);

config_optimizer! {
    /// AdaBelief optimizer: Adam whose step adapts to the "belief" in the gradient.
    pub struct AdaBelief(AdaBeliefConfig) -> AdaBeliefState = update;
}

optimizer_state! {
    /// State of [`AdaBelief`] for one parameter.
    pub struct AdaBeliefState {
        tensors {
            /// First moment.
            exp_avg: Tensor<D>,
            /// Variance of the gradient around the first moment (plus accumulated `eps`).
            exp_avg_var: Tensor<D>,
        }
        optional {
            /// AMSGrad maximum.
            max_exp_avg_var: Tensor<D>,
        }
        scalars {
            /// Number of steps taken.
            step: usize,
        }
    }
}

fn update<const D: usize>(
    c: &AdaBeliefConfig,
    lr: LearningRate,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    state: Option<AdaBeliefState<D>>,
) -> Step<D, AdaBeliefState<D>> {
    let state = state.unwrap_or_else(|| AdaBeliefState {
        exp_avg: tensor.zeros_like(),
        exp_avg_var: tensor.zeros_like(),
        max_exp_avg_var: c.amsgrad.then(|| tensor.zeros_like()),
        step: 0,
    });
    let (tensor, grad) = if c.weight_decouple && c.fixed_decay {
        (tensor.mul_scalar(1.0 - c.weight_decay), grad)
    } else {
        apply_weight_decay(tensor, grad, lr, c.weight_decay, c.weight_decouple)
    };
    let step = state.step + 1;
    let bc1 = bias_correction(c.beta_1, step);
    let exp_avg = ema(state.exp_avg, grad.clone(), c.beta_1);
    let residual = grad - exp_avg.clone();
    // The reference adds eps to the variance in place every step.
    let exp_avg_var = ema(state.exp_avg_var, residual.square(), c.beta_2).add_scalar(c.epsilon);
    let max_exp_avg_var = running_max(c.amsgrad, state.max_exp_avg_var, &exp_avg_var);
    let tensor = if !c.rectify {
        let var = max_exp_avg_var.as_ref().unwrap_or(&exp_avg_var).clone();
        let denom = adam_denom(var, bias_correction(c.beta_2, step), c.epsilon);
        tensor - exp_avg.clone().div(denom).mul_scalar(lr / bc1)
    } else {
        let t = step as f64;
        let beta2_t = c.beta_2.powi(step as i32);
        let n_sma_max = 2.0 / (1.0 - c.beta_2) - 1.0;
        let n_sma = n_sma_max - 2.0 * t * beta2_t / (1.0 - beta2_t);
        if n_sma >= 5.0 {
            let step_size = ((1.0 - beta2_t) * (n_sma - 4.0) / (n_sma_max - 4.0) * (n_sma - 2.0)
                / n_sma
                * n_sma_max
                / (n_sma_max - 2.0))
                .sqrt()
                / bc1;
            let denom = exp_avg_var.clone().sqrt().add_scalar(c.epsilon);
            tensor - exp_avg.clone().div(denom).mul_scalar(step_size * lr)
        } else if c.degenerated_to_sgd {
            tensor - exp_avg.clone().mul_scalar(lr / bc1)
        } else {
            tensor
        }
    };
    let state = AdaBeliefState {
        exp_avg,
        exp_avg_var,
        max_exp_avg_var,
        step,
    };
    (tensor, Some(state))
}
