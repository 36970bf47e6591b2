//! The registry's view of an optimizer of this crate: its `XConfig` is the one definition of
//! the hyper-parameters and their defaults, read and written in PyTorch's spelling.

use burn::config::Config;
use burn::optim::Optimizer;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::{BuiltOptimizer, Entry};
use crate::Error;
use crate::groups::ParamGroupsConfig;
use crate::optimizers::{HessianSwitch, ScheduleFreeSwitch};

/// An optimizer config of this crate that the registry builds.
///
/// The config's own fields and defaults are what the registry accepts, spelled as in PyTorch:
/// `epsilon` is `eps`, and `beta_1`, `beta_2`, ... form the array `betas`.
pub trait Registered: Config + Clone + PartialEq {
    /// The reference implementation's default (peak) learning rate.
    const DEFAULT_LR: f64;
    /// Config fields the registry fills itself and JSON cannot name.
    const DERIVED: &'static [&'static str] = &[];
    /// Whether the built optimizer exposes [`BuiltOptimizer::hessian`] (SophiaG).
    const HESSIAN: bool = false;
    /// Whether the built optimizer exposes [`BuiltOptimizer::schedule_free`].
    const SCHEDULE_FREE: bool = false;
    /// The per-tensor optimizer the config builds.
    type Optimizer: Optimizer;

    /// The config with the reference's defaults.
    fn defaults() -> Self;

    /// The weight decay of the decayed parameter group.
    fn weight_decay(&self) -> f64;

    /// Builds the optimizer of one parameter group with `weight_decay` (0 for the no-decay
    /// group), given the configured peak learning rate `lr` and the switches shared by all
    /// groups.
    fn build_group(&self, lr: f64, weight_decay: f64, switches: &Switches) -> Self::Optimizer;

    /// Rejects the values the reference rejects (the learning rate is already checked to be a
    /// non-negative number).
    fn check(&self, _lr: f64) -> Result<(), Error> {
        Ok(())
    }
}

/// Implements [`Registered`] for a config whose optimizer needs nothing but its fields: the
/// group's weight decay replaces `weight_decay` and `build()` makes the optimizer.
/// With `check = f`, `f(&config, lr)` is [`Registered::check`].
macro_rules! registered {
    ($config:ty => $optimizer:ty, lr = $lr:expr $(, check = $check:path)?) => {
        impl $crate::registry::Registered for $config {
            const DEFAULT_LR: f64 = $lr;
            type Optimizer = $optimizer;

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
                _switches: &$crate::registry::Switches,
            ) -> $optimizer {
                self.clone().with_weight_decay(weight_decay).build()
            }
$(
            fn check(&self, lr: f64) -> Result<(), $crate::Error> {
                $check(self, lr)
            }
)?
        }
    };
}

pub(crate) use registered;

/// The switches one built optimizer shares between its parameter groups.
#[derive(Clone, Debug, Default)]
pub struct Switches {
    /// SophiaG's Hessian-update switch.
    pub hessian: HessianSwitch,
    /// Schedule-free's train/eval switch.
    pub schedule_free: ScheduleFreeSwitch,
}

/// The error of a rejected value, for [`Registered::check`].
pub(crate) fn invalid(field: &'static str, reason: String) -> Error {
    Error::InvalidValue {
        what: "optimizer",
        field,
        reason,
    }
}

/// An optimizer of this crate as the registry holds it: the peak learning rate and the
/// optimizer's config (JSON: `lr` plus the config's fields in PyTorch spelling).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigSpec<C> {
    /// Peak learning rate (default [`Registered::DEFAULT_LR`]).
    pub lr: f64,
    /// The optimizer's hyper-parameters.
    pub config: C,
}

impl<C: Registered> Default for ConfigSpec<C> {
    fn default() -> Self {
        Self {
            lr: C::DEFAULT_LR,
            config: C::defaults(),
        }
    }
}

/// The config's fields under their Rust names.
fn fields<C: Registered>(config: &C) -> Result<Map<String, Value>, String> {
    match serde_json::to_value(config).map_err(|e| e.to_string())? {
        Value::Object(map) => Ok(map),
        other => Err(format!("a config serialised to {other}, not to an object")),
    }
}

/// The PyTorch name of a config field (`betas` for every `beta_i`), `None` for derived ones.
fn torch_name<C: Registered>(field: &str) -> Option<&str> {
    match field {
        f if C::DERIVED.contains(&f) => None,
        "epsilon" => Some("eps"),
        f if f.starts_with("beta_") => Some("betas"),
        f => Some(f),
    }
}

/// The config in PyTorch spelling, after `lr`.
fn to_torch<C: Registered>(lr: f64, config: &C) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    out.insert("lr".into(), lr.into());
    let mut betas = Vec::new();
    for (field, value) in fields(config)? {
        match torch_name::<C>(&field) {
            Some("betas") => betas.push((field, value)),
            Some(name) => {
                out.insert(name.to_string(), value);
            }
            None => {}
        }
    }
    if !betas.is_empty() {
        betas.sort_by(|a, b| a.0.cmp(&b.0));
        out.insert(
            "betas".into(),
            Value::Array(betas.into_iter().map(|(_, v)| v).collect()),
        );
    }
    Ok(out)
}

/// Reads `lr` and the fields given in PyTorch spelling over the config's defaults.
fn from_torch<C: Registered>(given: Map<String, Value>) -> Result<ConfigSpec<C>, String> {
    let defaults = C::defaults();
    let mut fields = fields(&defaults)?;
    let mut lr = C::DEFAULT_LR;
    for (key, value) in given {
        let targets: Vec<String> = fields
            .keys()
            .filter(|f| torch_name::<C>(f) == Some(key.as_str()))
            .cloned()
            .collect();
        if key == "lr" {
            lr = f64::deserialize(value).map_err(|e| format!("lr: {e}"))?;
        } else if key == "betas" && !targets.is_empty() {
            let values = match value {
                Value::Array(values) if values.len() == targets.len() => values,
                other => {
                    return Err(format!(
                        "betas: {other} is not an array of {} decays",
                        targets.len()
                    ));
                }
            };
            let mut targets = targets;
            targets.sort();
            fields.extend(targets.into_iter().zip(values));
        } else if let [field] = targets.as_slice() {
            fields.insert(field.clone(), value);
        } else {
            let accepted: Vec<String> = to_torch(C::DEFAULT_LR, &defaults)?
                .keys()
                .map(|k| format!("`{k}`"))
                .collect();
            return Err(format!(
                "unknown field `{key}`, expected one of {}",
                accepted.join(", ")
            ));
        }
    }
    let config = serde_json::from_value(Value::Object(fields)).map_err(|e| e.to_string())?;
    Ok(ConfigSpec { lr, config })
}

impl<C: Registered> Serialize for ConfigSpec<C> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        to_torch(self.lr, &self.config)
            .map_err(S::Error::custom)?
            .serialize(serializer)
    }
}

impl<'de, C: Registered> Deserialize<'de> for ConfigSpec<C> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_torch(Map::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}

impl<C: Registered> Entry for ConfigSpec<C> {
    fn lr(&self) -> f64 {
        self.lr
    }

    fn check(&self) -> Result<(), Error> {
        self.config.check(self.lr)
    }

    fn build(&self, groups: &ParamGroupsConfig) -> Result<BuiltOptimizer, Error> {
        let switches = Switches::default();
        let optimizer = groups.assemble(self.config.weight_decay(), |wd| {
            self.config.build_group(self.lr, wd, &switches)
        })?;
        Ok(BuiltOptimizer {
            optimizer,
            lr: self.lr,
            hessian: C::HESSIAN.then(|| switches.hessian.clone()),
            schedule_free: C::SCHEDULE_FREE.then(|| switches.schedule_free.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::registry::{OPTIMIZER_NAMES, OptimizerConfig};

    #[test]
    fn every_config_round_trips_through_json() {
        for name in OPTIMIZER_NAMES {
            let config = OptimizerConfig::from_value(json!({ "name": name })).expect("defaults");
            let value = serde_json::to_value(&config).expect("serialise");
            assert_eq!(value["name"], json!(name));
            let back = OptimizerConfig::from_value(value).expect("parse back");
            assert_eq!(back, config, "{name}");
        }
    }

    #[test]
    fn fields_use_pytorch_spelling_and_the_config_defaults() {
        let config = OptimizerConfig::from_json(r#"{"name": "adabelief", "betas": [0.8, 0.9]}"#)
            .expect("adabelief");
        let value = serde_json::to_value(&config).expect("serialise");
        assert_eq!(value["betas"], json!([0.8, 0.9]));
        assert_eq!(value["eps"], json!(1e-16));
        assert_eq!(value["lr"], json!(1e-3));
        assert!(value.get("epsilon").is_none() && value.get("beta_1").is_none());
        match config {
            OptimizerConfig::AdaBelief(spec) => {
                assert_eq!((spec.config.beta_1, spec.config.beta_2), (0.8, 0.9));
                assert!(spec.config.rectify);
            }
            other => panic!("parsed as {other:?}"),
        }
        for bad in [
            r#"{"name": "adabound", "initial_lr": 0.1}"#,
            r#"{"name": "adamax", "epsilon": 0.1}"#,
            r#"{"name": "adamax", "beta_1": 0.5}"#,
            r#"{"name": "adamax", "betas": [0.5]}"#,
            r#"{"name": "lars", "betas": [0.5, 0.9]}"#,
            r#"{"name": "yogi", "eps": "small"}"#,
        ] {
            assert!(
                OptimizerConfig::from_json(bad).is_err(),
                "{bad} should not parse"
            );
        }
    }
}
