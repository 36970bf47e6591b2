//! SophiaG (Liu et al. 2023, "Sophia: A Scalable Stochastic Second-order Optimizer"), as the
//! official `SophiaG` (LMFlow's `SophiaG`), with its Gauss-Newton-Bartlett Hessian estimate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::config::Config;
use burn::optim::{LearningRate, Optimizer};
use burn::tensor::{Device, Tensor};

use crate::registry::{Registered, Switches};

use super::state::{ema, optimizer_state};

/// Configuration of [`SophiaG`]; defaults are the reference's (its default `lr` is 1e-4).
#[derive(Config, Debug, PartialEq)]
pub struct SophiaGConfig {
    /// Decay of the first moment.
    #[config(default = 0.965)]
    pub beta_1: f64,
    /// Decay of the Hessian estimate.
    #[config(default = 0.99)]
    pub beta_2: f64,
    /// Clipping threshold `rho`.
    #[config(default = 0.04)]
    pub rho: f64,
    /// Decoupled weight decay.
    #[config(default = 0.1)]
    pub weight_decay: f64,
    /// Tokens per batch `bs` the reference scales `rho` with.
    #[config(default = 5120)]
    pub bs: usize,
}

impl Registered for SophiaGConfig {
    const DEFAULT_LR: f64 = 1e-4;
    const HESSIAN: bool = true;
    type Optimizer = SophiaG;

    fn defaults() -> Self {
        Self::new()
    }

    fn weight_decay(&self) -> f64 {
        self.weight_decay
    }

    fn build_group(&self, _lr: f64, weight_decay: f64, switches: &Switches) -> SophiaG {
        self.clone()
            .with_weight_decay(weight_decay)
            .build_with_switch(switches.hessian.clone())
    }
}

impl SophiaGConfig {
    /// Builds the per-tensor optimizer (wrap with `ModuleOptimizer::from`); keep its
    /// [`SophiaG::hessian_switch`] to run Hessian-estimate steps.
    pub fn build(&self) -> SophiaG {
        self.build_with_switch(HessianSwitch::default())
    }

    /// Builds an optimizer that shares `switch` (one switch for several parameter groups).
    pub fn build_with_switch(&self, switch: HessianSwitch) -> SophiaG {
        SophiaG {
            config: self.clone(),
            hessian_mode: switch,
        }
    }
}

/// Selects what a [`SophiaG`] step does with the gradients it receives.
///
/// While on, a step treats the gradients as those of a loss on labels sampled from the model
/// (the reference's `update_hessian`): it updates `hessian = beta_2 * hessian + (1 - beta_2) *
/// grad^2` and leaves the parameters unchanged. Clones share the switch.
#[derive(Clone, Debug, Default)]
pub struct HessianSwitch(Arc<AtomicBool>);

impl HessianSwitch {
    /// Makes the following steps Hessian updates (`true`) or parameter updates (`false`).
    pub fn set(&self, hessian_update: bool) {
        self.0.store(hessian_update, Ordering::SeqCst);
    }

    /// Whether steps currently update the Hessian estimate.
    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// SophiaG optimizer: clipped, Hessian-preconditioned sign momentum.
#[derive(Clone, Debug)]
pub struct SophiaG {
    config: SophiaGConfig,
    hessian_mode: HessianSwitch,
}

impl SophiaG {
    /// The switch shared by this optimizer and its clones (also inside a `ModuleOptimizer`).
    pub fn hessian_switch(&self) -> HessianSwitch {
        self.hessian_mode.clone()
    }
}

optimizer_state! {
    /// State of [`SophiaG`] for one parameter.
    pub struct SophiaGState {
        tensors {
            /// First moment.
            exp_avg: Tensor<D>,
            /// Diagonal Hessian estimate.
            hessian: Tensor<D>,
        }
        optional {}
        scalars {
            /// Number of parameter updates taken.
            step: usize,
        }
    }
}

impl Optimizer for SophiaG {
    type State<const D: usize> = SophiaGState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let c = &self.config;
        let state = state.unwrap_or_else(|| SophiaGState {
            exp_avg: tensor.zeros_like(),
            hessian: tensor.zeros_like(),
            step: 0,
        });
        if self.hessian_mode.is_on() {
            let hessian = ema(state.hessian, grad.square(), c.beta_2);
            return (tensor, Some(SophiaGState { hessian, ..state }));
        }
        let tensor = tensor.mul_scalar(1.0 - lr * c.weight_decay);
        let exp_avg = ema(state.exp_avg, grad, c.beta_1);
        let ratio = exp_avg
            .clone()
            .abs()
            .div(
                state
                    .hessian
                    .clone()
                    .mul_scalar(c.rho * c.bs as f64)
                    .add_scalar(1e-15),
            )
            .clamp_max(1.0);
        let tensor = tensor - exp_avg.clone().sign().mul(ratio).mul_scalar(lr);
        (
            tensor,
            Some(SophiaGState {
                exp_avg,
                hessian: state.hessian,
                step: state.step + 1,
            }),
        )
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.to_device(device)
    }
}
