//! Build any optimizer from a name plus parameters, as a config file gives it.
//!
//! ```json
//! {"name": "adabelief", "lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.01}
//! ```
//!
//! Field names and defaults follow the reference implementation of each optimizer (PyTorch
//! spelling: `betas`, `eps`, `weight_decay`, `momentum`, ...); an unknown field or name is an
//! error that lists what is accepted. `lr` is the peak learning rate handed to the schedule.

use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{
    AdaGradConfig, AdafactorConfig, AdamConfig, AdamWConfig, AdanConfig, GradientsParams,
    LambConfig, LearningRate, LionConfig, ModuleOptimizer, MuonConfig, RmsPropConfig, SgdConfig,
};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::groups::ParamGroupsConfig;
use crate::optimizers::*;

macro_rules! spec {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$fm:meta])* $field:ident : $ty:ty = $default:expr ),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $( $(#[$fm])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }
    };
}

spec! {
    /// `sgd` (`torch.optim.SGD`, Burn's `Sgd`).
    SgdSpec {
        /// Learning rate (default 1e-3).
        lr: f64 = 1e-3,
        /// Momentum (default 0).
        momentum: f64 = 0.0,
        /// Dampening (default 0).
        dampening: f64 = 0.0,
        /// L2 penalty (default 0).
        weight_decay: f64 = 0.0,
        /// Nesterov momentum (default false).
        nesterov: bool = false,
    }
}

spec! {
    /// `adam` and `adamw` (`torch.optim.Adam`/`AdamW`, Burn's `Adam`/`AdamW`). For `adam`
    /// `weight_decay` is an L2 penalty, for `adamw` it is decoupled (default 0 as in HF
    /// `TrainingArguments`, where `torch.optim.AdamW` would use 0.01).
    AdamSpec {
        /// Learning rate (default 1e-3).
        lr: f64 = 1e-3,
        /// Moment decays (default [0.9, 0.999]).
        betas: [f64; 2] = [0.9, 0.999],
        /// Denominator epsilon (default 1e-8).
        eps: f64 = 1e-8,
        /// Weight decay (default 0).
        weight_decay: f64 = 0.0,
        /// AMSGrad (default false).
        amsgrad: bool = false,
    }
}

spec! {
    /// `adagrad` (`torch.optim.Adagrad`, Burn's `AdaGrad`).
    AdagradSpec {
        /// Learning rate (default 1e-2).
        lr: f64 = 1e-2,
        /// Learning-rate decay (default 0).
        lr_decay: f64 = 0.0,
        /// Denominator epsilon (default 1e-10).
        eps: f64 = 1e-10,
        /// L2 penalty (default 0).
        weight_decay: f64 = 0.0,
    }
}

spec! {
    /// `rmsprop` (`torch.optim.RMSprop`, Burn's `RmsProp`).
    RmsPropSpec {
        /// Learning rate (default 1e-2).
        lr: f64 = 1e-2,
        /// Smoothing constant (default 0.99).
        alpha: f64 = 0.99,
        /// Denominator epsilon (default 1e-8).
        eps: f64 = 1e-8,
        /// L2 penalty (default 0).
        weight_decay: f64 = 0.0,
        /// Momentum (default 0).
        momentum: f64 = 0.0,
        /// Centered variant (default false).
        centered: bool = false,
    }
}

spec! {
    /// `lion` (Burn's `Lion`; Chen et al. 2023).
    LionSpec {
        /// Learning rate (default 1e-4).
        lr: f64 = 1e-4,
        /// Interpolation and momentum decays (default [0.9, 0.99]).
        betas: [f64; 2] = [0.9, 0.99],
        /// Decoupled weight decay (default 0).
        weight_decay: f64 = 0.0,
    }
}

spec! {
    /// `lamb` (Burn's `Lamb`).
    LambSpec {
        /// Learning rate (default 1e-3).
        lr: f64 = 1e-3,
        /// Moment decays (default [0.9, 0.999]).
        betas: [f64; 2] = [0.9, 0.999],
        /// Denominator epsilon (default 1e-6).
        eps: f64 = 1e-6,
        /// Weight decay (default 0).
        weight_decay: f64 = 0.0,
    }
}

spec! {
    /// `adan` (Burn's `Adan`; Xie et al. 2022).
    AdanSpec {
        /// Learning rate (default 1e-3).
        lr: f64 = 1e-3,
        /// The three decays (default [0.98, 0.92, 0.99]).
        betas: [f64; 3] = [0.98, 0.92, 0.99],
        /// Denominator epsilon (default 1e-8).
        eps: f64 = 1e-8,
        /// Weight decay (default 0).
        weight_decay: f64 = 0.0,
        /// Decay without the proximal form (default false).
        no_prox: bool = false,
    }
}

spec! {
    /// `adafactor` (Burn's `Adafactor`, relative step; `lr` is ignored while `relative_step`).
    AdafactorSpec {
        /// Learning rate handed to the optimizer (default 1e-3).
        lr: f64 = 1e-3,
        /// Time-dependent relative step size (default true).
        relative_step: bool = true,
        /// Scale the step by the parameter RMS (default true).
        scale_parameter: bool = true,
        /// Update clipping threshold (default 1.0).
        clip_threshold: f64 = 1.0,
        /// Second-moment decay exponent (default -0.8).
        decay_rate: f64 = -0.8,
        /// Weight decay (default 0).
        weight_decay: f64 = 0.0,
    }
}

spec! {
    /// `muon` (Burn's `Muon`, for 2-D weights; Jordan et al. 2024).
    MuonSpec {
        /// Learning rate (default 2e-2).
        lr: f64 = 2e-2,
        /// Momentum (default 0.95, Nesterov).
        momentum: f64 = 0.95,
        /// L2 penalty (default 0).
        weight_decay: f64 = 0.0,
        /// Newton-Schulz iterations (default 5).
        ns_steps: usize = 5,
    }
}

spec! {
    /// `adamw_8bit` (AdamW with 8-bit blockwise state; defaults of bitsandbytes' `AdamW8bit`).
    AdamW8bitSpec {
        /// Learning rate (default 1e-3).
        lr: f64 = 1e-3,
        /// Moment decays (default [0.9, 0.999]).
        betas: [f64; 2] = [0.9, 0.999],
        /// Denominator epsilon (default 1e-8).
        eps: f64 = 1e-8,
        /// Decoupled weight decay (default 1e-2).
        weight_decay: f64 = 1e-2,
        /// Elements per quantisation block (default 256).
        block_size: usize = 256,
        /// Tensors smaller than this keep f32 state (default 4096).
        min_8bit_size: usize = 4096,
    }
}

spec! {
    /// `adamax` (`torch.optim.Adamax`).
    AdamaxSpec {
        /// Learning rate (default 2e-3).
        lr: f64 = 2e-3,
        /// Decays (default [0.9, 0.999]).
        betas: [f64; 2] = [0.9, 0.999],
        /// Epsilon (default 1e-8).
        eps: f64 = 1e-8,
        /// L2 penalty (default 0).
        weight_decay: f64 = 0.0,
    }
}

spec! {
    /// `nadam` (`torch.optim.NAdam`).
    NAdamSpec {
        /// Learning rate (default 2e-3).
        lr: f64 = 2e-3,
        /// Decays (default [0.9, 0.999]).
        betas: [f64; 2] = [0.9, 0.999],
        /// Epsilon (default 1e-8).
        eps: f64 = 1e-8,
        /// Weight decay (default 0).
        weight_decay: f64 = 0.0,
        /// Momentum decay (default 4e-3).
        momentum_decay: f64 = 4e-3,
        /// Decoupled weight decay (default false).
        decoupled_weight_decay: bool = false,
    }
}

spec! {
    /// `radam` (`torch.optim.RAdam`).
    RAdamSpec {
        /// Learning rate (default 1e-3).
        lr: f64 = 1e-3,
        /// Decays (default [0.9, 0.999]).
        betas: [f64; 2] = [0.9, 0.999],
        /// Epsilon (default 1e-8).
        eps: f64 = 1e-8,
        /// Weight decay (default 0).
        weight_decay: f64 = 0.0,
        /// Decoupled weight decay (default false).
        decoupled_weight_decay: bool = false,
    }
}

spec! {
    /// `adadelta` (`torch.optim.Adadelta`).
    AdadeltaSpec {
        /// Learning rate (default 1.0).
        lr: f64 = 1.0,
        /// Decay (default 0.9).
        rho: f64 = 0.9,
        /// Epsilon (default 1e-6).
        eps: f64 = 1e-6,
        /// L2 penalty (default 0).
        weight_decay: f64 = 0.0,
    }
}

spec! {
    /// `adabelief` (`adabelief-pytorch` 0.2.1).
    AdaBeliefSpec {
        /// Learning rate (default 1e-3).
        lr: f64 = 1e-3,
        /// Decays (default [0.9, 0.999]).
        betas: [f64; 2] = [0.9, 0.999],
        /// Epsilon (default 1e-16).
        eps: f64 = 1e-16,
        /// Weight decay (default 0).
        weight_decay: f64 = 0.0,
        /// AMSGrad (default false).
        amsgrad: bool = false,
        /// Decoupled weight decay (default true).
        weight_decouple: bool = true,
        /// Learning-rate-independent decay (default false).
        fixed_decay: bool = false,
        /// Rectification (default true).
        rectify: bool = true,
        /// SGD steps while unrectified (default true).
        degenerated_to_sgd: bool = true,
    }
}

spec! {
    /// `adabound` (`torch-optimizer` 0.3.0).
    AdaBoundSpec {
        /// Learning rate (default 1e-3); also the reference's `base_lr`.
        lr: f64 = 1e-3,
        /// Decays (default [0.9, 0.999]).
        betas: [f64; 2] = [0.9, 0.999],
        /// Final SGD learning rate (default 0.1).
        final_lr: f64 = 0.1,
        /// Bound convergence speed (default 1e-3).
        gamma: f64 = 1e-3,
        /// Epsilon (default 1e-8).
        eps: f64 = 1e-8,
        /// L2 penalty (default 0).
        weight_decay: f64 = 0.0,
        /// AMSBound (default false).
        amsbound: bool = false,
    }
}

spec! {
    /// `yogi` (`torch-optimizer` 0.3.0).
    YogiSpec {
        /// Learning rate (default 1e-2).
        lr: f64 = 1e-2,
        /// Decays (default [0.9, 0.999]).
        betas: [f64; 2] = [0.9, 0.999],
        /// Epsilon (default 1e-3).
        eps: f64 = 1e-3,
        /// Initial moments (default 1e-6).
        initial_accumulator: f64 = 1e-6,
        /// L2 penalty (default 0).
        weight_decay: f64 = 0.0,
    }
}

spec! {
    /// `adamp` (`torch-optimizer` 0.3.0).
    AdamPSpec {
        /// Learning rate (default 1e-3).
        lr: f64 = 1e-3,
        /// Decays (default [0.9, 0.999]).
        betas: [f64; 2] = [0.9, 0.999],
        /// Epsilon (default 1e-8).
        eps: f64 = 1e-8,
        /// Decoupled weight decay (default 0).
        weight_decay: f64 = 0.0,
        /// Projection threshold (default 0.1).
        delta: f64 = 0.1,
        /// Weight-decay ratio when projected (default 0.1).
        wd_ratio: f64 = 0.1,
        /// Nesterov (default false).
        nesterov: bool = false,
    }
}

spec! {
    /// `sgdp` (`torch-optimizer` 0.3.0).
    SgdpSpec {
        /// Learning rate (default 1e-3).
        lr: f64 = 1e-3,
        /// Momentum (default 0).
        momentum: f64 = 0.0,
        /// Dampening (default 0).
        dampening: f64 = 0.0,
        /// Epsilon (default 1e-8).
        eps: f64 = 1e-8,
        /// Decoupled weight decay (default 0).
        weight_decay: f64 = 0.0,
        /// Projection threshold (default 0.1).
        delta: f64 = 0.1,
        /// Weight-decay ratio when projected (default 0.1).
        wd_ratio: f64 = 0.1,
        /// Nesterov (default false).
        nesterov: bool = false,
    }
}

spec! {
    /// `novograd` (`torch-optimizer` 0.3.0).
    NovoGradSpec {
        /// Learning rate (default 1e-2).
        lr: f64 = 1e-2,
        /// Decays (default [0.9, 0.999]).
        betas: [f64; 2] = [0.9, 0.999],
        /// Epsilon (default 1e-8).
        eps: f64 = 1e-8,
        /// Weight decay (default 0).
        weight_decay: f64 = 0.0,
        /// Gradient averaging (default false).
        grad_averaging: bool = false,
        /// AMSGrad (default false).
        amsgrad: bool = false,
    }
}

spec! {
    /// `lars` (Lightning Bolts LARS, LMFlow's `LARS`).
    LarsSpec {
        /// Learning rate (default 1e-2).
        lr: f64 = 1e-2,
        /// Momentum (default 0).
        momentum: f64 = 0.0,
        /// Dampening (default 0).
        dampening: f64 = 0.0,
        /// Weight decay (default 0; LARS scaling needs it non-zero).
        weight_decay: f64 = 0.0,
        /// Nesterov (default false).
        nesterov: bool = false,
        /// Trust coefficient (default 0.01).
        trust_coefficient: f64 = 0.01,
        /// Epsilon (default 1e-8).
        eps: f64 = 1e-8,
    }
}

spec! {
    /// `sophiag` (official SophiaG).
    SophiaGSpec {
        /// Learning rate (default 1e-4).
        lr: f64 = 1e-4,
        /// Momentum and Hessian decays (default [0.965, 0.99]).
        betas: [f64; 2] = [0.965, 0.99],
        /// Clipping threshold (default 0.04).
        rho: f64 = 0.04,
        /// Decoupled weight decay (default 0.1).
        weight_decay: f64 = 0.1,
        /// Batch tokens scaling `rho` (default 5120).
        bs: usize = 5120,
    }
}

spec! {
    /// `adamw_schedule_free` (`schedulefree` 1.2 AdamW).
    AdamWScheduleFreeSpec {
        /// Learning rate (default 2.5e-3).
        lr: f64 = 2.5e-3,
        /// Decays (default [0.9, 0.999]).
        betas: [f64; 2] = [0.9, 0.999],
        /// Epsilon (default 1e-8).
        eps: f64 = 1e-8,
        /// Weight decay (default 0).
        weight_decay: f64 = 0.0,
        /// Internal warmup steps (default 0).
        warmup_steps: usize = 0,
        /// Averaging power `r` (default 0).
        r: f64 = 0.0,
        /// Learning-rate power of the averaging weights (default 2).
        weight_lr_power: f64 = 2.0,
    }
}

spec! {
    /// `sgd_schedule_free` (`schedulefree` 1.2 SGD).
    SgdScheduleFreeSpec {
        /// Learning rate (default 1.0).
        lr: f64 = 1.0,
        /// Interpolation momentum (default 0.9).
        momentum: f64 = 0.9,
        /// Weight decay (default 0).
        weight_decay: f64 = 0.0,
        /// Internal warmup steps (default 0).
        warmup_steps: usize = 0,
        /// Averaging power `r` (default 0).
        r: f64 = 0.0,
        /// Learning-rate power of the averaging weights (default 2).
        weight_lr_power: f64 = 2.0,
    }
}

spec! {
    /// `dummy` (LMFlow's no-op optimizer).
    DummySpec {
        /// Learning rate (default 0).
        lr: f64 = 0.0,
        /// Weight decay, the only effect (default 0).
        weight_decay: f64 = 0.0,
    }
}

/// Any optimizer, by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name")]
pub enum OptimizerConfig {
    /// SGD (Burn).
    #[serde(rename = "sgd")]
    Sgd(SgdSpec),
    /// Adam (Burn).
    #[serde(rename = "adam")]
    Adam(AdamSpec),
    /// AdamW (Burn).
    #[serde(rename = "adamw")]
    AdamW(AdamSpec),
    /// AdamW with 8-bit state.
    #[serde(rename = "adamw_8bit")]
    AdamW8bit(AdamW8bitSpec),
    /// Adagrad (Burn).
    #[serde(rename = "adagrad")]
    Adagrad(AdagradSpec),
    /// RMSprop (Burn).
    #[serde(rename = "rmsprop")]
    RmsProp(RmsPropSpec),
    /// Lion (Burn).
    #[serde(rename = "lion")]
    Lion(LionSpec),
    /// LAMB (Burn).
    #[serde(rename = "lamb")]
    Lamb(LambSpec),
    /// Adan (Burn).
    #[serde(rename = "adan")]
    Adan(AdanSpec),
    /// Adafactor (Burn).
    #[serde(rename = "adafactor")]
    Adafactor(AdafactorSpec),
    /// Muon (Burn).
    #[serde(rename = "muon")]
    Muon(MuonSpec),
    /// Adamax.
    #[serde(rename = "adamax")]
    Adamax(AdamaxSpec),
    /// NAdam.
    #[serde(rename = "nadam")]
    NAdam(NAdamSpec),
    /// RAdam.
    #[serde(rename = "radam")]
    RAdam(RAdamSpec),
    /// Adadelta.
    #[serde(rename = "adadelta")]
    Adadelta(AdadeltaSpec),
    /// AdaBelief.
    #[serde(rename = "adabelief")]
    AdaBelief(AdaBeliefSpec),
    /// AdaBound.
    #[serde(rename = "adabound")]
    AdaBound(AdaBoundSpec),
    /// Yogi.
    #[serde(rename = "yogi")]
    Yogi(YogiSpec),
    /// AdamP.
    #[serde(rename = "adamp")]
    AdamP(AdamPSpec),
    /// SGDP.
    #[serde(rename = "sgdp")]
    Sgdp(SgdpSpec),
    /// NovoGrad.
    #[serde(rename = "novograd")]
    NovoGrad(NovoGradSpec),
    /// LARS.
    #[serde(rename = "lars")]
    Lars(LarsSpec),
    /// SophiaG.
    #[serde(rename = "sophiag", alias = "sophia")]
    SophiaG(SophiaGSpec),
    /// Schedule-free AdamW.
    #[serde(rename = "adamw_schedule_free")]
    AdamWScheduleFree(AdamWScheduleFreeSpec),
    /// Schedule-free SGD.
    #[serde(rename = "sgd_schedule_free")]
    SgdScheduleFree(SgdScheduleFreeSpec),
    /// No-op.
    #[serde(rename = "dummy")]
    Dummy(DummySpec),
}

/// Every name the registry accepts.
pub const OPTIMIZER_NAMES: &[&str] = &[
    "sgd",
    "adam",
    "adamw",
    "adamw_8bit",
    "adagrad",
    "rmsprop",
    "lion",
    "lamb",
    "adan",
    "adafactor",
    "muon",
    "adamax",
    "nadam",
    "radam",
    "adadelta",
    "adabelief",
    "adabound",
    "yogi",
    "adamp",
    "sgdp",
    "novograd",
    "lars",
    "sophiag",
    "adamw_schedule_free",
    "sgd_schedule_free",
    "dummy",
];

/// A built optimizer: the `ModuleOptimizer` to step a module with, plus the hooks some
/// optimizers need (SophiaG's Hessian estimate, schedule-free's evaluation point).
#[derive(Clone)]
pub struct BuiltOptimizer {
    /// The Burn optimizer over the whole module (state saves and loads through its records).
    pub optimizer: ModuleOptimizer,
    /// The peak learning rate from the config.
    pub lr: f64,
    /// SophiaG's switch, for [`BuiltOptimizer::update_hessian`].
    pub hessian: Option<HessianSwitch>,
    /// Schedule-free's switch, for [`BuiltOptimizer::eval_params`].
    pub schedule_free: Option<ScheduleFreeSwitch>,
}

impl BuiltOptimizer {
    /// One update of `module` with `grads` at learning rate `lr`.
    pub fn step<M: Module>(&mut self, lr: LearningRate, module: M, grads: GradientsParams) -> M {
        self.optimizer.step(lr, module, grads)
    }

    /// SophiaG's Hessian-estimate update from gradients of a loss on sampled labels; the
    /// parameters are unchanged. Errors for other optimizers.
    pub fn update_hessian<M: Module>(
        &mut self,
        module: M,
        grads: GradientsParams,
    ) -> Result<M, Error> {
        let switch = self.hessian.clone().ok_or(Error::InvalidValue {
            what: "optimizer",
            field: "name",
            reason: "only sophiag keeps a Hessian estimate".into(),
        })?;
        switch.set(true);
        let module = self.optimizer.step(0.0, module, grads);
        switch.set(false);
        Ok(module)
    }

    /// Moves a schedule-free module to its evaluation point (identity for other optimizers).
    pub fn eval_params<M: Module>(&mut self, module: M) -> M {
        match self.schedule_free.clone() {
            Some(s) => schedule_free_eval(module, &mut self.optimizer, &s),
            None => module,
        }
    }

    /// Moves a schedule-free module back to its training point (identity for others).
    pub fn train_params<M: Module>(&mut self, module: M) -> M {
        match self.schedule_free.clone() {
            Some(s) => schedule_free_train(module, &mut self.optimizer, &s),
            None => module,
        }
    }
}

fn l2(weight_decay: f64) -> Option<WeightDecayConfig> {
    (weight_decay != 0.0).then(|| WeightDecayConfig::new(weight_decay as f32))
}

impl OptimizerConfig {
    /// Parses a JSON config. An unknown name or field gives an error listing the valid ones.
    pub fn from_json(json: &str) -> Result<Self, Error> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|source| Error::Config {
                what: "optimizer",
                source,
            })?;
        Self::from_value(value)
    }

    /// Parses a JSON value (see [`OptimizerConfig::from_json`]).
    pub fn from_value(value: serde_json::Value) -> Result<Self, Error> {
        if let Some(name) = value.get("name").and_then(|n| n.as_str())
            && !OPTIMIZER_NAMES.contains(&name)
            && name != "sophia"
        {
            return Err(Error::UnknownOptimizer {
                name: name.to_string(),
                supported: OPTIMIZER_NAMES.join(", "),
            });
        }
        serde_json::from_value(value).map_err(|source| Error::Config {
            what: "optimizer",
            source,
        })
    }

    /// The registry name.
    pub fn name(&self) -> &'static str {
        use OptimizerConfig::*;
        match self {
            Sgd(_) => "sgd",
            Adam(_) => "adam",
            AdamW(_) => "adamw",
            AdamW8bit(_) => "adamw_8bit",
            Adagrad(_) => "adagrad",
            RmsProp(_) => "rmsprop",
            Lion(_) => "lion",
            Lamb(_) => "lamb",
            Adan(_) => "adan",
            Adafactor(_) => "adafactor",
            Muon(_) => "muon",
            Adamax(_) => "adamax",
            NAdam(_) => "nadam",
            RAdam(_) => "radam",
            Adadelta(_) => "adadelta",
            AdaBelief(_) => "adabelief",
            AdaBound(_) => "adabound",
            Yogi(_) => "yogi",
            AdamP(_) => "adamp",
            Sgdp(_) => "sgdp",
            NovoGrad(_) => "novograd",
            Lars(_) => "lars",
            SophiaG(_) => "sophiag",
            AdamWScheduleFree(_) => "adamw_schedule_free",
            SgdScheduleFree(_) => "sgd_schedule_free",
            Dummy(_) => "dummy",
        }
    }

    /// The peak learning rate of the config.
    pub fn lr(&self) -> f64 {
        use OptimizerConfig::*;
        match self {
            Sgd(s) => s.lr,
            Adam(s) | AdamW(s) => s.lr,
            AdamW8bit(s) => s.lr,
            Adagrad(s) => s.lr,
            RmsProp(s) => s.lr,
            Lion(s) => s.lr,
            Lamb(s) => s.lr,
            Adan(s) => s.lr,
            Adafactor(s) => s.lr,
            Muon(s) => s.lr,
            Adamax(s) => s.lr,
            NAdam(s) => s.lr,
            RAdam(s) => s.lr,
            Adadelta(s) => s.lr,
            AdaBelief(s) => s.lr,
            AdaBound(s) => s.lr,
            Yogi(s) => s.lr,
            AdamP(s) => s.lr,
            Sgdp(s) => s.lr,
            NovoGrad(s) => s.lr,
            Lars(s) => s.lr,
            SophiaG(s) => s.lr,
            AdamWScheduleFree(s) => s.lr,
            SgdScheduleFree(s) => s.lr,
            Dummy(s) => s.lr,
        }
    }

    /// Builds the optimizer with one group (every parameter decays, one learning rate), as
    /// `torch.optim.X(model.parameters(), ...)`.
    pub fn build(&self) -> Result<BuiltOptimizer, Error> {
        self.build_with_groups(&ParamGroupsConfig::single())
    }

    /// Checks the values the reference implementations reject.
    pub fn validate(&self) -> Result<(), Error> {
        use OptimizerConfig::*;
        let invalid = |field, reason: String| {
            Err(Error::InvalidValue {
                what: "optimizer",
                field,
                reason,
            })
        };
        let lr = self.lr();
        if !(lr.is_finite() && lr >= 0.0) {
            return invalid("lr", format!("{lr} is not a non-negative number"));
        }
        match self {
            AdaBound(s) if s.lr <= 0.0 => invalid(
                "lr",
                "adabound's bounds are relative to a positive lr".into(),
            ),
            AdamWScheduleFree(s) if !(s.betas[0] > 0.0 && s.betas[0] < 1.0) => invalid(
                "betas",
                format!("beta_1 {} must be in (0, 1) for schedule-free", s.betas[0]),
            ),
            SgdScheduleFree(s) if !(s.momentum > 0.0 && s.momentum < 1.0) => invalid(
                "momentum",
                format!("{} must be in (0, 1) for schedule-free", s.momentum),
            ),
            Lars(s) if s.nesterov && (s.momentum <= 0.0 || s.dampening != 0.0) => invalid(
                "nesterov",
                "Nesterov momentum requires a momentum and zero dampening".into(),
            ),
            _ => Ok(()),
        }
    }

    /// Builds the optimizer with parameter groups (weight-decay exclusion, learning-rate ratios).
    pub fn build_with_groups(&self, groups: &ParamGroupsConfig) -> Result<BuiltOptimizer, Error> {
        use OptimizerConfig::*;
        self.validate()?;
        let mut hessian = None;
        let mut schedule_free = None;
        let optimizer = match self {
            Sgd(s) => groups.assemble(s.weight_decay, |wd| {
                SgdConfig::new()
                    .with_weight_decay(l2(wd))
                    .with_momentum((s.momentum != 0.0).then_some(MomentumConfig {
                        momentum: s.momentum,
                        dampening: s.dampening,
                        nesterov: s.nesterov,
                    }))
                    .build()
            })?,
            Adam(s) => groups.assemble(s.weight_decay, |wd| {
                AdamConfig::new()
                    .with_beta_1(s.betas[0] as f32)
                    .with_beta_2(s.betas[1] as f32)
                    .with_epsilon(s.eps as f32)
                    .with_amsgrad(s.amsgrad)
                    .with_weight_decay(l2(wd))
                    .build()
            })?,
            AdamW(s) => groups.assemble(s.weight_decay, |wd| {
                AdamWConfig::new()
                    .with_beta_1(s.betas[0] as f32)
                    .with_beta_2(s.betas[1] as f32)
                    .with_epsilon(s.eps as f32)
                    .with_amsgrad(s.amsgrad)
                    .with_weight_decay(wd as f32)
                    .build()
            })?,
            AdamW8bit(s) => groups.assemble(s.weight_decay, |wd| {
                AdamW8bitConfig::new()
                    .with_beta_1(s.betas[0])
                    .with_beta_2(s.betas[1])
                    .with_epsilon(s.eps)
                    .with_weight_decay(wd)
                    .with_block_size(s.block_size)
                    .with_min_8bit_size(s.min_8bit_size)
                    .build()
            })?,
            Adagrad(s) => groups.assemble(s.weight_decay, |wd| {
                AdaGradConfig::new()
                    .with_lr_decay(s.lr_decay)
                    .with_epsilon(s.eps as f32)
                    .with_weight_decay(l2(wd))
                    .build()
            })?,
            RmsProp(s) => groups.assemble(s.weight_decay, |wd| {
                RmsPropConfig::new()
                    .with_alpha(s.alpha as f32)
                    .with_epsilon(s.eps as f32)
                    .with_momentum(s.momentum as f32)
                    .with_centered(s.centered)
                    .with_weight_decay(l2(wd))
                    .build()
            })?,
            Lion(s) => groups.assemble(s.weight_decay, |wd| {
                LionConfig::new()
                    .with_beta_1(s.betas[0] as f32)
                    .with_beta_2(s.betas[1] as f32)
                    .with_weight_decay(wd as f32)
                    .build()
            })?,
            Lamb(s) => groups.assemble(s.weight_decay, |wd| {
                LambConfig::new()
                    .with_beta_1(s.betas[0] as f32)
                    .with_beta_2(s.betas[1] as f32)
                    .with_epsilon(s.eps as f32)
                    .with_weight_decay(wd as f32)
                    .build()
            })?,
            Adan(s) => groups.assemble(s.weight_decay, |wd| {
                AdanConfig::new()
                    .with_beta_1(s.betas[0] as f32)
                    .with_beta_2(s.betas[1] as f32)
                    .with_beta_3(s.betas[2] as f32)
                    .with_epsilon(s.eps as f32)
                    .with_no_prox(s.no_prox)
                    .with_weight_decay(wd as f32)
                    .build()
            })?,
            Adafactor(s) => groups.assemble(s.weight_decay, |wd| {
                AdafactorConfig::new()
                    .with_relative_step(s.relative_step)
                    .with_scale_parameter(s.scale_parameter)
                    .with_clip_threshold(s.clip_threshold as f32)
                    .with_decay_rate(s.decay_rate)
                    .with_weight_decay(wd as f32)
                    .build()
            })?,
            Muon(s) => groups.assemble(s.weight_decay, |wd| {
                MuonConfig::new()
                    .with_weight_decay(l2(wd))
                    .with_momentum(MomentumConfig {
                        momentum: s.momentum,
                        dampening: 0.0,
                        nesterov: true,
                    })
                    .with_ns_steps(s.ns_steps)
                    .build()
            })?,
            Adamax(s) => groups.assemble(s.weight_decay, |wd| {
                AdamaxConfig::new()
                    .with_beta_1(s.betas[0])
                    .with_beta_2(s.betas[1])
                    .with_epsilon(s.eps)
                    .with_weight_decay(wd)
                    .build()
            })?,
            NAdam(s) => groups.assemble(s.weight_decay, |wd| {
                NAdamConfig::new()
                    .with_beta_1(s.betas[0])
                    .with_beta_2(s.betas[1])
                    .with_epsilon(s.eps)
                    .with_weight_decay(wd)
                    .with_momentum_decay(s.momentum_decay)
                    .with_decoupled_weight_decay(s.decoupled_weight_decay)
                    .build()
            })?,
            RAdam(s) => groups.assemble(s.weight_decay, |wd| {
                RAdamConfig::new()
                    .with_beta_1(s.betas[0])
                    .with_beta_2(s.betas[1])
                    .with_epsilon(s.eps)
                    .with_weight_decay(wd)
                    .with_decoupled_weight_decay(s.decoupled_weight_decay)
                    .build()
            })?,
            Adadelta(s) => groups.assemble(s.weight_decay, |wd| {
                AdadeltaConfig::new()
                    .with_rho(s.rho)
                    .with_epsilon(s.eps)
                    .with_weight_decay(wd)
                    .build()
            })?,
            AdaBelief(s) => groups.assemble(s.weight_decay, |wd| {
                AdaBeliefConfig::new()
                    .with_beta_1(s.betas[0])
                    .with_beta_2(s.betas[1])
                    .with_epsilon(s.eps)
                    .with_weight_decay(wd)
                    .with_amsgrad(s.amsgrad)
                    .with_weight_decouple(s.weight_decouple)
                    .with_fixed_decay(s.fixed_decay)
                    .with_rectify(s.rectify)
                    .with_degenerated_to_sgd(s.degenerated_to_sgd)
                    .build()
            })?,
            AdaBound(s) => groups.assemble(s.weight_decay, |wd| {
                AdaBoundConfig::new()
                    .with_initial_lr(s.lr)
                    .with_beta_1(s.betas[0])
                    .with_beta_2(s.betas[1])
                    .with_final_lr(s.final_lr)
                    .with_gamma(s.gamma)
                    .with_epsilon(s.eps)
                    .with_weight_decay(wd)
                    .with_amsbound(s.amsbound)
                    .build()
            })?,
            Yogi(s) => groups.assemble(s.weight_decay, |wd| {
                YogiConfig::new()
                    .with_beta_1(s.betas[0])
                    .with_beta_2(s.betas[1])
                    .with_epsilon(s.eps)
                    .with_initial_accumulator(s.initial_accumulator)
                    .with_weight_decay(wd)
                    .build()
            })?,
            AdamP(s) => groups.assemble(s.weight_decay, |wd| {
                AdamPConfig::new()
                    .with_beta_1(s.betas[0])
                    .with_beta_2(s.betas[1])
                    .with_epsilon(s.eps)
                    .with_weight_decay(wd)
                    .with_delta(s.delta)
                    .with_wd_ratio(s.wd_ratio)
                    .with_nesterov(s.nesterov)
                    .build()
            })?,
            Sgdp(s) => groups.assemble(s.weight_decay, |wd| {
                SgdpConfig::new()
                    .with_momentum(s.momentum)
                    .with_dampening(s.dampening)
                    .with_epsilon(s.eps)
                    .with_weight_decay(wd)
                    .with_delta(s.delta)
                    .with_wd_ratio(s.wd_ratio)
                    .with_nesterov(s.nesterov)
                    .build()
            })?,
            NovoGrad(s) => groups.assemble(s.weight_decay, |wd| {
                NovoGradConfig::new()
                    .with_beta_1(s.betas[0])
                    .with_beta_2(s.betas[1])
                    .with_epsilon(s.eps)
                    .with_weight_decay(wd)
                    .with_grad_averaging(s.grad_averaging)
                    .with_amsgrad(s.amsgrad)
                    .build()
            })?,
            Lars(s) => groups.assemble(s.weight_decay, |wd| {
                LarsConfig::new()
                    .with_momentum(s.momentum)
                    .with_dampening(s.dampening)
                    .with_weight_decay(wd)
                    .with_nesterov(s.nesterov)
                    .with_trust_coefficient(s.trust_coefficient)
                    .with_epsilon(s.eps)
                    .build()
            })?,
            SophiaG(s) => {
                let switch = HessianSwitch::default();
                hessian = Some(switch.clone());
                groups.assemble(s.weight_decay, |wd| {
                    SophiaGConfig::new()
                        .with_beta_1(s.betas[0])
                        .with_beta_2(s.betas[1])
                        .with_rho(s.rho)
                        .with_weight_decay(wd)
                        .with_bs(s.bs)
                        .build_with_switch(switch.clone())
                })?
            }
            AdamWScheduleFree(s) => {
                let switch = ScheduleFreeSwitch::default();
                schedule_free = Some(switch.clone());
                groups.assemble(s.weight_decay, |wd| {
                    AdamWScheduleFreeConfig::new()
                        .with_beta_1(s.betas[0])
                        .with_beta_2(s.betas[1])
                        .with_epsilon(s.eps)
                        .with_weight_decay(wd)
                        .with_warmup_steps(s.warmup_steps)
                        .with_r(s.r)
                        .with_weight_lr_power(s.weight_lr_power)
                        .build_with_switch(switch.clone())
                })?
            }
            SgdScheduleFree(s) => {
                let switch = ScheduleFreeSwitch::default();
                schedule_free = Some(switch.clone());
                groups.assemble(s.weight_decay, |wd| {
                    SgdScheduleFreeConfig::new()
                        .with_momentum(s.momentum)
                        .with_weight_decay(wd)
                        .with_warmup_steps(s.warmup_steps)
                        .with_r(s.r)
                        .with_weight_lr_power(s.weight_lr_power)
                        .build_with_switch(switch.clone())
                })?
            }
            Dummy(s) => groups.assemble(s.weight_decay, |wd| {
                DummyConfig::new().with_weight_decay(wd).build()
            })?,
        };
        Ok(BuiltOptimizer {
            optimizer,
            lr: self.lr(),
            hessian,
            schedule_free,
        })
    }
}
