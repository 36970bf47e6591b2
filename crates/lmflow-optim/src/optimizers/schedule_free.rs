//! Schedule-free AdamW and SGD (Defazio et al. 2024, "The Road Less Scheduled"), as the
//! `schedulefree` 1.2 reference that LMFlow ships (`AdamWScheduleFree`, `SGDScheduleFree`).
//!
//! The module's parameters hold the gradient-evaluation point `y` during training. Evaluate
//! (or save) the averaged point `x` with [`schedule_free_eval`], and go back with
//! [`schedule_free_train`] before the next step; both take the optimizer's
//! [`ScheduleFreeSwitch`].

use burn::config::Config;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, LearningRate, ModuleOptimizer, Optimizer};
use burn::tensor::{Device, Tensor};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::Error;
use crate::registry::{Registered, Switches, invalid};

use super::state::{ema, l2_penalty, optimizer_state};

/// Configuration of schedule-free AdamW; defaults are the reference's (its default `lr` is
/// 2.5e-3).
#[derive(Config, Debug, PartialEq)]
pub struct AdamWScheduleFreeConfig {
    /// Interpolation (momentum) `beta_1`.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// Decay of the second moment.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// Added to the denominator.
    #[config(default = 1e-8)]
    pub epsilon: f64,
    /// Weight decay at `y`.
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// Internal linear warmup steps.
    #[config(default = 0)]
    pub warmup_steps: usize,
    /// Polynomial weighting power `r` of the average.
    #[config(default = 0.0)]
    pub r: f64,
    /// Power of the max learning rate in the averaging weights.
    #[config(default = 2.0)]
    pub weight_lr_power: f64,
}

/// Configuration of schedule-free SGD; defaults are the reference's (its default `lr` is 1.0).
#[derive(Config, Debug, PartialEq)]
pub struct SgdScheduleFreeConfig {
    /// Interpolation (momentum) coefficient.
    #[config(default = 0.9)]
    pub momentum: f64,
    /// Weight decay at `y`.
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// Internal linear warmup steps.
    #[config(default = 0)]
    pub warmup_steps: usize,
    /// Polynomial weighting power `r` of the average.
    #[config(default = 0.0)]
    pub r: f64,
    /// Power of the max learning rate in the averaging weights.
    #[config(default = 2.0)]
    pub weight_lr_power: f64,
}

/// Implements [`Registered`] for a schedule-free config: the optimizers of all groups share
/// the built optimizer's [`ScheduleFreeSwitch`], and the interpolation coefficient `field`
/// (JSON: `json`) must lie in (0, 1).
macro_rules! registered_schedule_free {
    ($config:ty, lr = $lr:expr, $field:ident, $json:literal) => {
        impl Registered for $config {
            const DEFAULT_LR: f64 = $lr;
            const SCHEDULE_FREE: bool = true;
            type Optimizer = ScheduleFree;

            fn defaults() -> Self {
                Self::new()
            }

            fn weight_decay(&self) -> f64 {
                self.weight_decay
            }

            fn build_group(
                &self,
                _lr: f64,
                weight_decay: f64,
                switches: &Switches,
            ) -> ScheduleFree {
                self.clone()
                    .with_weight_decay(weight_decay)
                    .build_with_switch(switches.schedule_free.clone())
            }

            fn check(&self, _lr: f64) -> Result<(), Error> {
                let beta = self.$field;
                if beta > 0.0 && beta < 1.0 {
                    return Ok(());
                }
                Err(invalid(
                    $json,
                    format!(
                        "{} {beta} must be in (0, 1) for schedule-free",
                        stringify!($field)
                    ),
                ))
            }
        }
    };
}

registered_schedule_free!(AdamWScheduleFreeConfig, lr = 2.5e-3, beta_1, "betas");
registered_schedule_free!(SgdScheduleFreeConfig, lr = 1.0, momentum, "momentum");

impl AdamWScheduleFreeConfig {
    /// Builds the per-tensor optimizer (wrap with `ModuleOptimizer::from`).
    pub fn build(&self) -> ScheduleFree {
        self.build_with_switch(ScheduleFreeSwitch::default())
    }

    /// Builds an optimizer that shares `switch` (one switch for several parameter groups).
    pub fn build_with_switch(&self, switch: ScheduleFreeSwitch) -> ScheduleFree {
        ScheduleFree {
            adam: Some((self.beta_2, self.epsilon)),
            beta_1: self.beta_1,
            weight_decay: self.weight_decay,
            warmup_steps: self.warmup_steps,
            r: self.r,
            weight_lr_power: self.weight_lr_power,
            mode: switch,
        }
    }
}

impl SgdScheduleFreeConfig {
    /// Builds the per-tensor optimizer (wrap with `ModuleOptimizer::from`).
    pub fn build(&self) -> ScheduleFree {
        self.build_with_switch(ScheduleFreeSwitch::default())
    }

    /// Builds an optimizer that shares `switch` (one switch for several parameter groups).
    pub fn build_with_switch(&self, switch: ScheduleFreeSwitch) -> ScheduleFree {
        ScheduleFree {
            adam: None,
            beta_1: self.momentum,
            weight_decay: self.weight_decay,
            warmup_steps: self.warmup_steps,
            r: self.r,
            weight_lr_power: self.weight_lr_power,
            mode: switch,
        }
    }
}

/// Schedule-free optimizer (AdamW form when built from [`AdamWScheduleFreeConfig`], SGD form
/// from [`SgdScheduleFreeConfig`]).
#[derive(Clone, Debug)]
pub struct ScheduleFree {
    adam: Option<(f64, f64)>,
    beta_1: f64,
    weight_decay: f64,
    warmup_steps: usize,
    r: f64,
    weight_lr_power: f64,
    mode: ScheduleFreeSwitch,
}

impl ScheduleFree {
    /// The switch shared by this optimizer and its clones, for [`schedule_free_eval`] and
    /// [`schedule_free_train`].
    pub fn switch(&self) -> ScheduleFreeSwitch {
        self.mode.clone()
    }

    /// The interpolation coefficient `beta_1` (momentum for SGD) that relates the training
    /// point `y`, the averaged point `x` and the SGD iterate `z`.
    pub fn beta_1(&self) -> f64 {
        self.beta_1
    }
}

optimizer_state! {
    /// State of [`ScheduleFree`] for one parameter. The averaging counters are per parameter
    /// (the reference keeps them per group; they agree while every parameter is stepped).
    pub struct ScheduleFreeState {
        tensors {
            /// The SGD iterate `z`.
            z: Tensor<D>,
        }
        optional {
            /// Second moment (AdamW form only).
            exp_avg_sq: Tensor<D>,
        }
        scalars {
            /// Steps taken (`k`).
            k: usize,
            /// Sum of the averaging weights.
            weight_sum: f64,
            /// Largest learning rate seen.
            lr_max: f64,
        }
    }
}

impl Optimizer for ScheduleFree {
    type State<const D: usize> = ScheduleFreeState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        match (self.mode.mode(), state) {
            (MODE_STEP, state) => self.train_step(lr, tensor, grad, state),
            (_, None) => (tensor, None),
            (mode, Some(state)) => {
                let weight = if mode == MODE_TO_EVAL {
                    1.0 - 1.0 / self.beta_1
                } else {
                    1.0 - self.beta_1
                };
                let moved = tensor.clone() + (state.z.clone() - tensor).mul_scalar(weight);
                (moved, Some(state))
            }
        }
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.to_device(device)
    }
}

impl ScheduleFree {
    fn train_step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<ScheduleFreeState<D>>,
    ) -> (Tensor<D>, Option<ScheduleFreeState<D>>) {
        let state = state.unwrap_or_else(|| ScheduleFreeState {
            z: tensor.clone(),
            exp_avg_sq: self.adam.map(|_| tensor.zeros_like()),
            k: 0,
            weight_sum: 0.0,
            lr_max: -1.0,
        });
        let k = state.k;
        let sched = if k < self.warmup_steps {
            (k + 1) as f64 / self.warmup_steps as f64
        } else {
            1.0
        };
        let lr = match self.adam {
            Some((beta_2, _)) => lr * sched * (1.0 - beta_2.powi(k as i32 + 1)).sqrt(),
            None => lr * sched,
        };
        let lr_max = lr.max(state.lr_max);
        let weight = ((k + 1) as f64).powf(self.r) * lr_max.powf(self.weight_lr_power);
        let weight_sum = state.weight_sum + weight;
        let ckp1 = if weight_sum != 0.0 {
            weight / weight_sum
        } else {
            0.0
        };
        let (grad, exp_avg_sq) = match (self.adam, state.exp_avg_sq) {
            (Some((beta_2, eps)), v) => {
                let v = ema(
                    v.unwrap_or_else(|| tensor.zeros_like()),
                    grad.clone().square(),
                    beta_2,
                );
                (grad.div(v.clone().sqrt().add_scalar(eps)), Some(v))
            }
            (None, _) => (grad, None),
        };
        let grad = l2_penalty(grad, &tensor, self.weight_decay);
        let y = tensor.clone() + (state.z.clone() - tensor).mul_scalar(ckp1);
        let y = y + grad
            .clone()
            .mul_scalar(lr * (self.beta_1 * (1.0 - ckp1) - 1.0));
        let z = state.z - grad.mul_scalar(lr);
        (
            y,
            Some(ScheduleFreeState {
                z,
                exp_avg_sq,
                k: k + 1,
                weight_sum,
                lr_max,
            }),
        )
    }
}

/// Selects what the steps of a [`ScheduleFree`] optimizer do; clones share it.
#[derive(Clone, Debug, Default)]
pub struct ScheduleFreeSwitch(Arc<AtomicU8>);

const MODE_STEP: u8 = 0;
const MODE_TO_EVAL: u8 = 1;
const MODE_TO_TRAIN: u8 = 2;

impl ScheduleFreeSwitch {
    fn set(&self, mode: u8) {
        self.0.store(mode, Ordering::SeqCst);
    }

    fn mode(&self) -> u8 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Switches `module` from the training point `y` to the averaged point `x` used for evaluation
/// and checkpoints, `x = y + (1 - 1/beta_1) (z - y)` (the reference's `optimizer.eval()`).
///
/// `optimizer` must be the `ModuleOptimizer` built around the [`ScheduleFree`] whose
/// [`switch`](ScheduleFree::switch) is given; parameters without optimizer state stay as they
/// are. Call [`schedule_free_train`] before the next training step.
pub fn schedule_free_eval<M: Module>(
    module: M,
    optimizer: &mut ModuleOptimizer,
    switch: &ScheduleFreeSwitch,
) -> M {
    move_with(module, optimizer, switch, MODE_TO_EVAL)
}

/// Switches `module` back from `x` to `y = x + (1 - beta_1) (z - x)` (`optimizer.train()`).
pub fn schedule_free_train<M: Module>(
    module: M,
    optimizer: &mut ModuleOptimizer,
    switch: &ScheduleFreeSwitch,
) -> M {
    move_with(module, optimizer, switch, MODE_TO_TRAIN)
}

fn move_with<M: Module>(
    module: M,
    optimizer: &mut ModuleOptimizer,
    switch: &ScheduleFreeSwitch,
    mode: u8,
) -> M {
    let mut grads = GradientsParams::new();
    module.visit(&mut ZeroGrads { grads: &mut grads });
    switch.set(mode);
    let module = optimizer.step(0.0, module, grads);
    switch.set(MODE_STEP);
    module
}

struct ZeroGrads<'a> {
    grads: &'a mut GradientsParams,
}

impl ModuleVisitor for ZeroGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.grads
            .register(param.id, param.val().inner().zeros_like());
    }
}
