//! Parameter groups: no weight decay for biases and norm weights, per-group learning-rate ratios.
//!
//! Parameters are identified by their module path, the dot-joined field names from the root
//! module down to the parameter (`layers.0.attn.q_proj.weight`, `norm.gamma`, `lm_head.bias`),
//! which is what Burn's `ModuleOptimizer` matches `ParamGroup`s against. Patterns are regular
//! expressions searched anywhere in the path.

use burn::module::ParamGroup;
use burn::optim::{LearningRate, ModuleOptimizer, Optimizer};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Default no-decay patterns: biases and normalisation weights (HF `Trainer` excludes biases and
/// LayerNorm/RMSNorm parameters; Burn's `LayerNorm`/`RmsNorm` call theirs `gamma`/`beta`).
pub const DEFAULT_NO_DECAY: &[&str] = &[
    r"bias",
    r"(?i)layer_?norm",
    r"(?i)rms_?norm",
    r"(?:^|\.)norm(?:$|\.|_)",
    r"_norm(?:$|\.)",
    r"(?:^|\.)ln_",
    r"\.(?:gamma|beta)$",
];

/// A learning-rate multiplier for the parameters whose path matches `pattern`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrRatio {
    /// Regular expression searched in the parameter path (e.g. `lora_b` for LoRA+).
    pub pattern: String,
    /// Multiplier of the scheduled learning rate (e.g. 16 for LoRA+'s B matrices).
    pub ratio: f64,
}

/// How parameters are split into groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParamGroupsConfig {
    /// Paths matching any of these patterns get no weight decay (default [`DEFAULT_NO_DECAY`]).
    pub no_decay: Vec<String>,
    /// Learning-rate ratios; when several match, the last one wins.
    pub lr_ratios: Vec<LrRatio>,
}

impl Default for ParamGroupsConfig {
    fn default() -> Self {
        Self {
            no_decay: DEFAULT_NO_DECAY.iter().map(|s| s.to_string()).collect(),
            lr_ratios: Vec::new(),
        }
    }
}

impl ParamGroupsConfig {
    /// One group: every parameter decays and uses the scheduled learning rate.
    pub fn single() -> Self {
        Self {
            no_decay: Vec::new(),
            lr_ratios: Vec::new(),
        }
    }

    /// Adds the LoRA+ rule: LoRA `B` matrices (paths containing `lora_b`) train with `ratio`
    /// times the learning rate.
    pub fn with_lora_plus(mut self, ratio: f64) -> Self {
        self.lr_ratios.push(LrRatio {
            pattern: r"(?i)lora_b".to_string(),
            ratio,
        });
        self
    }

    fn no_decay_pattern(&self) -> Option<String> {
        (!self.no_decay.is_empty()).then(|| {
            self.no_decay
                .iter()
                .map(|p| format!("(?:{p})"))
                .collect::<Vec<_>>()
                .join("|")
        })
    }

    /// Whether `path` is excluded from weight decay.
    pub fn is_no_decay(&self, path: &str) -> Result<bool, Error> {
        match self.no_decay_pattern() {
            None => Ok(false),
            Some(p) => Ok(compile(&p)?.matches(&burn::module::ParamId::new(), Some(path))),
        }
    }

    /// Builds a `ModuleOptimizer` from `make(weight_decay)`, which gives the per-tensor
    /// optimizer with the given weight decay (`weight_decay` for decayed groups, 0 for the
    /// no-decay group).
    pub fn assemble<O: Optimizer>(
        &self,
        weight_decay: f64,
        make: impl Fn(f64) -> O,
    ) -> Result<ModuleOptimizer, Error> {
        for rule in &self.lr_ratios {
            if !(rule.ratio.is_finite() && rule.ratio > 0.0) {
                return Err(Error::InvalidValue {
                    what: "parameter groups",
                    field: "lr_ratios.ratio",
                    reason: format!("{} is not a positive number", rule.ratio),
                });
            }
        }
        let split_decay = weight_decay != 0.0;
        let no_decay = if split_decay {
            self.no_decay_pattern()
        } else {
            None
        };
        let mut optim = ModuleOptimizer::from(make(weight_decay));
        if let Some(nd) = &no_decay {
            optim = optim.with_group(compile(nd)?, make(0.0), None);
        }
        for rule in &self.lr_ratios {
            let group = compile(&rule.pattern)?;
            match &no_decay {
                Some(nd) => {
                    optim = optim.with_group(
                        group.exclude(compile(nd)?),
                        LrScaled::new(make(weight_decay), rule.ratio),
                        None,
                    );
                    let both = ParamGroup::from_regexes(vec![rule.pattern.as_str(), nd.as_str()])
                        .map_err(|e| pattern_error(&rule.pattern, e))?;
                    optim = optim.with_group(both, LrScaled::new(make(0.0), rule.ratio), None);
                }
                None => {
                    optim = optim.with_group(
                        group,
                        LrScaled::new(make(weight_decay), rule.ratio),
                        None,
                    );
                }
            }
        }
        Ok(optim)
    }
}

fn pattern_error(pattern: &str, e: burn::module::ParamGroupError) -> Error {
    Error::Pattern {
        pattern: pattern.to_string(),
        reason: format!("{e:?}"),
    }
}

fn compile(pattern: &str) -> Result<ParamGroup, Error> {
    ParamGroup::from_regex(pattern).map_err(|e| pattern_error(pattern, e))
}

/// Wraps an optimizer so that it steps with `ratio` times the learning rate it is given.
#[derive(Clone, Debug)]
pub struct LrScaled<O> {
    inner: O,
    ratio: f64,
}

impl<O> LrScaled<O> {
    /// Wraps `inner` with the multiplier `ratio`.
    pub fn new(inner: O, ratio: f64) -> Self {
        Self { inner, ratio }
    }
}

impl<O: Optimizer> Optimizer for LrScaled<O> {
    type State<const D: usize> = O::State<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        self.inner.step(lr * self.ratio, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        O::to_device(state, device)
    }
}
