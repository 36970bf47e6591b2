//! The specs of Burn's own optimizers: PyTorch's names and defaults, mapped onto Burn's
//! configs (whose own defaults differ).

use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{
    AdaGradConfig, AdafactorConfig, AdamConfig, AdamWConfig, AdanConfig, LambConfig, LionConfig,
    MuonConfig, RmsPropConfig, SgdConfig,
};
use serde::{Deserialize, Serialize};

use super::{BuiltOptimizer, Entry};
use crate::Error;
use crate::groups::ParamGroupsConfig;

/// Declares the spec of one of Burn's optimizers (fields with their defaults) and its registry
/// entry, which builds one optimizer per parameter group with `|spec, weight_decay| ...`.
macro_rules! spec {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$fm:meta])* $field:ident : $ty:ty = $default:expr ),* $(,)? }
        |$s:ident, $wd:ident| $build:block
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

        impl Entry for $name {
            fn lr(&self) -> f64 {
                self.lr
            }

            fn build(&self, groups: &ParamGroupsConfig) -> Result<BuiltOptimizer, Error> {
                let $s = self;
                let optimizer = groups.assemble(self.weight_decay, |$wd| $build)?;
                Ok(BuiltOptimizer::plain(optimizer, self.lr))
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
    |s, wd| {
        SgdConfig::new()
            .with_weight_decay(l2(wd))
            .with_momentum((s.momentum != 0.0).then_some(MomentumConfig {
                momentum: s.momentum,
                dampening: s.dampening,
                nesterov: s.nesterov,
            }))
            .build()
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
    |s, wd| {
        AdamConfig::new()
            .with_beta_1(s.betas[0] as f32)
            .with_beta_2(s.betas[1] as f32)
            .with_epsilon(s.eps as f32)
            .with_amsgrad(s.amsgrad)
            .with_weight_decay(l2(wd))
            .build()
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
    |s, wd| {
        AdaGradConfig::new()
            .with_lr_decay(s.lr_decay)
            .with_epsilon(s.eps as f32)
            .with_weight_decay(l2(wd))
            .build()
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
    |s, wd| {
        RmsPropConfig::new()
            .with_alpha(s.alpha as f32)
            .with_epsilon(s.eps as f32)
            .with_momentum(s.momentum as f32)
            .with_centered(s.centered)
            .with_weight_decay(l2(wd))
            .build()
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
    |s, wd| {
        LionConfig::new()
            .with_beta_1(s.betas[0] as f32)
            .with_beta_2(s.betas[1] as f32)
            .with_weight_decay(wd as f32)
            .build()
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
    |s, wd| {
        LambConfig::new()
            .with_beta_1(s.betas[0] as f32)
            .with_beta_2(s.betas[1] as f32)
            .with_epsilon(s.eps as f32)
            .with_weight_decay(wd as f32)
            .build()
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
    |s, wd| {
        AdanConfig::new()
            .with_beta_1(s.betas[0] as f32)
            .with_beta_2(s.betas[1] as f32)
            .with_beta_3(s.betas[2] as f32)
            .with_epsilon(s.eps as f32)
            .with_no_prox(s.no_prox)
            .with_weight_decay(wd as f32)
            .build()
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
    |s, wd| {
        AdafactorConfig::new()
            .with_relative_step(s.relative_step)
            .with_scale_parameter(s.scale_parameter)
            .with_clip_threshold(s.clip_threshold as f32)
            .with_decay_rate(s.decay_rate)
            .with_weight_decay(wd as f32)
            .build()
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
    |s, wd| {
        MuonConfig::new()
            .with_weight_decay(l2(wd))
            .with_momentum(MomentumConfig {
                momentum: s.momentum,
                dampening: 0.0,
                nesterov: true,
            })
            .with_ns_steps(s.ns_steps)
            .build()
    }
}

/// `adamw`: the fields and defaults of [`AdamSpec`], with decoupled weight decay.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AdamWSpec(pub AdamSpec);

impl Entry for AdamWSpec {
    fn lr(&self) -> f64 {
        self.0.lr
    }

    fn build(&self, groups: &ParamGroupsConfig) -> Result<BuiltOptimizer, Error> {
        let s = &self.0;
        let optimizer = groups.assemble(s.weight_decay, |wd| {
            AdamWConfig::new()
                .with_beta_1(s.betas[0] as f32)
                .with_beta_2(s.betas[1] as f32)
                .with_epsilon(s.eps as f32)
                .with_amsgrad(s.amsgrad)
                .with_weight_decay(wd as f32)
                .build()
        })?;
        Ok(BuiltOptimizer::plain(optimizer, s.lr))
    }
}

/// Burn's L2 penalty, off when `weight_decay` is 0.
fn l2(weight_decay: f64) -> Option<WeightDecayConfig> {
    (weight_decay != 0.0).then(|| WeightDecayConfig::new(weight_decay as f32))
}
