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
use burn::optim::{GradientsParams, LearningRate, ModuleOptimizer};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::groups::ParamGroupsConfig;
use crate::optimizers::*;

mod builtin;
mod spec;

pub use builtin::*;
pub use spec::{ConfigSpec, Registered, Switches};
pub(crate) use spec::{invalid, registered};

/// One registry entry: its peak learning rate, its checks and its builder.
pub(crate) trait Entry {
    /// The peak learning rate.
    fn lr(&self) -> f64;

    /// Rejects the values the reference rejects, beyond the learning-rate check.
    fn check(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Builds the optimizer over the parameter groups.
    fn build(&self, groups: &ParamGroupsConfig) -> Result<BuiltOptimizer, Error>;
}

/// Declares [`OptimizerConfig`] (one variant per name, internally tagged by `name`),
/// [`OPTIMIZER_NAMES`] and the dispatch to each variant's [`Entry`].
macro_rules! registry {
    ($( $(#[$doc:meta])* $variant:ident($spec:ty) = $name:literal $(| $alias:literal)*, )*) => {
        /// Any optimizer, by name.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "name")]
        pub enum OptimizerConfig {
            $(
                $(#[$doc])*
                #[serde(rename = $name $(, alias = $alias)*)]
                $variant($spec),
            )*
        }

        /// Every name the registry accepts.
        pub const OPTIMIZER_NAMES: &[&str] = &[$($name),*];

        /// Other names the registry accepts for some optimizers.
        const ALIASES: &[&str] = &[$($($alias,)*)*];

        impl OptimizerConfig {
            /// The registry name.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $name,)*
                }
            }

            fn entry(&self) -> &dyn Entry {
                match self {
                    $(Self::$variant(spec) => spec,)*
                }
            }
        }
    };
}

registry! {
    /// SGD (Burn).
    Sgd(SgdSpec) = "sgd",
    /// Adam (Burn).
    Adam(AdamSpec) = "adam",
    /// AdamW (Burn).
    AdamW(AdamWSpec) = "adamw",
    /// AdamW with 8-bit state.
    AdamW8bit(ConfigSpec<AdamW8bitConfig>) = "adamw_8bit",
    /// Adagrad (Burn).
    Adagrad(AdagradSpec) = "adagrad",
    /// RMSprop (Burn).
    RmsProp(RmsPropSpec) = "rmsprop",
    /// Lion (Burn).
    Lion(LionSpec) = "lion",
    /// LAMB (Burn).
    Lamb(LambSpec) = "lamb",
    /// Adan (Burn).
    Adan(AdanSpec) = "adan",
    /// Adafactor (Burn).
    Adafactor(AdafactorSpec) = "adafactor",
    /// Muon (Burn).
    Muon(MuonSpec) = "muon",
    /// Adamax.
    Adamax(ConfigSpec<AdamaxConfig>) = "adamax",
    /// NAdam.
    NAdam(ConfigSpec<NAdamConfig>) = "nadam",
    /// RAdam.
    RAdam(ConfigSpec<RAdamConfig>) = "radam",
    /// Adadelta.
    Adadelta(ConfigSpec<AdadeltaConfig>) = "adadelta",
    /// AdaBelief.
    AdaBelief(ConfigSpec<AdaBeliefConfig>) = "adabelief",
    /// AdaBound.
    AdaBound(ConfigSpec<AdaBoundConfig>) = "adabound",
    /// Yogi.
    Yogi(ConfigSpec<YogiConfig>) = "yogi",
    /// AdamP.
    AdamP(ConfigSpec<AdamPConfig>) = "adamp",
    /// SGDP.
    Sgdp(ConfigSpec<SgdpConfig>) = "sgdp",
    /// NovoGrad.
    NovoGrad(ConfigSpec<NovoGradConfig>) = "novograd",
    /// LARS.
    Lars(ConfigSpec<LarsConfig>) = "lars",
    /// SophiaG.
    SophiaG(ConfigSpec<SophiaGConfig>) = "sophiag" | "sophia",
    /// Schedule-free AdamW.
    AdamWScheduleFree(ConfigSpec<AdamWScheduleFreeConfig>) = "adamw_schedule_free",
    /// Schedule-free SGD.
    SgdScheduleFree(ConfigSpec<SgdScheduleFreeConfig>) = "sgd_schedule_free",
    /// No-op.
    Dummy(ConfigSpec<DummyConfig>) = "dummy",
}

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
    /// An optimizer without SophiaG's or schedule-free's hooks.
    pub(crate) fn plain(optimizer: ModuleOptimizer, lr: f64) -> Self {
        Self {
            optimizer,
            lr,
            hessian: None,
            schedule_free: None,
        }
    }

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
            && !ALIASES.contains(&name)
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

    /// The peak learning rate of the config.
    pub fn lr(&self) -> f64 {
        self.entry().lr()
    }

    /// Builds the optimizer with one group (every parameter decays, one learning rate), as
    /// `torch.optim.X(model.parameters(), ...)`.
    pub fn build(&self) -> Result<BuiltOptimizer, Error> {
        self.build_with_groups(&ParamGroupsConfig::single())
    }

    /// Checks the values the reference implementations reject.
    pub fn validate(&self) -> Result<(), Error> {
        let lr = self.lr();
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(invalid("lr", format!("{lr} is not a non-negative number")));
        }
        self.entry().check()
    }

    /// Builds the optimizer with parameter groups (weight-decay exclusion, learning-rate ratios).
    pub fn build_with_groups(&self, groups: &ParamGroupsConfig) -> Result<BuiltOptimizer, Error> {
        self.validate()?;
        self.entry().build(groups)
    }
}
