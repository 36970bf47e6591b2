//! `adapter_config.json` as Hugging Face PEFT writes it (`LoraConfig`).
//!
//! Field names and JSON shapes are PEFT's. Fields this crate does not model are kept in
//! [`LoraConfig::extra`] and written back unchanged, so an adapter round-trips through
//! LMFlow-rs without losing information. Settings that change the adapter's math and are not
//! implemented (another `peft_type`, `bias = "all"`, ...) are rejected by
//! [`LoraConfig::validate`] with a [`PeftError::Unsupported`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::PeftError;

/// Which modules receive an adapter (`target_modules` / `exclude_modules`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Module names matched as PEFT does: the full path or its dotted suffix
    /// (`q_proj` matches `model.layers.0.self_attn.q_proj`).
    Names(Vec<String>),
    /// A regular expression matched against the whole module path, or the shorthand
    /// `all-linear` (every linear layer except the output head).
    Pattern(String),
}

/// PEFT's `init_lora_weights`: `true` (A kaiming-uniform, B zero), `false` (A and B both
/// kaiming-uniform, a non-identity start used in tests), or a named method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitLoraWeights {
    /// `true` / `false`.
    Bool(bool),
    /// `"gaussian"`, `"pissa"` (and PEFT's other names, which are rejected at init time).
    Method(String),
}

/// `layers_to_transform`: one layer index or a list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerIndices {
    /// A single layer.
    One(usize),
    /// Several layers.
    Many(Vec<usize>),
}

impl LayerIndices {
    /// Whether `index` is selected.
    pub fn contains(&self, index: usize) -> bool {
        match self {
            Self::One(i) => *i == index,
            Self::Many(v) => v.contains(&index),
        }
    }
}

/// A string or a list of strings (`layers_pattern`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    /// One string.
    One(String),
    /// Several strings.
    Many(Vec<String>),
}

impl StringOrList {
    /// The strings.
    pub fn as_vec(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

fn default_peft_type() -> String {
    "LORA".into()
}
fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}
fn default_bias() -> String {
    "none".into()
}
fn default_init() -> InitLoraWeights {
    InitLoraWeights::Bool(true)
}

fn null_as_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

/// Writes whole numbers as JSON integers (PEFT writes `"lora_alpha": 16`).
fn number_value(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        Value::from(v as i64)
    } else {
        Value::from(v)
    }
}

fn ser_alpha<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    number_value(*v).serialize(s)
}

fn ser_alpha_map<S: serde::Serializer>(v: &BTreeMap<String, f64>, s: S) -> Result<S::Ok, S::Error> {
    let m: serde_json::Map<String, Value> = v
        .iter()
        .map(|(k, x)| (k.clone(), number_value(*x)))
        .collect();
    m.serialize(s)
}

/// A LoRA / rsLoRA / DoRA adapter configuration, field for field PEFT's `LoraConfig`.
///
/// Defaults are PEFT's: `r = 8`, `lora_alpha = 8`, `lora_dropout = 0`, `bias = "none"`,
/// `init_lora_weights = true`, everything else off.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Must be `"LORA"`.
    #[serde(default = "default_peft_type")]
    pub peft_type: String,
    /// PEFT task type, e.g. `"CAUSAL_LM"` (kept, not interpreted).
    #[serde(default)]
    pub task_type: Option<String>,
    /// Rank of the update.
    #[serde(default = "default_r")]
    pub r: usize,
    /// Scaling numerator: `scale = lora_alpha / r` (or `/ sqrt(r)` with rsLoRA).
    #[serde(default = "default_alpha", serialize_with = "ser_alpha")]
    pub lora_alpha: f64,
    /// Which modules get an adapter; `None` is an error at injection (PEFT would use a
    /// per-architecture default list).
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    /// Modules never adapted, same syntax as `target_modules`.
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    /// Dropout probability on the adapter input (training only).
    #[serde(default)]
    pub lora_dropout: f64,
    /// `true` for GPT-2's `Conv1D` layers (`[in, out]` storage). The adapter tensors are the
    /// same either way; the flag is kept for PEFT.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Bias training: only `"none"` is supported.
    #[serde(default = "default_bias")]
    pub bias: String,
    /// rsLoRA: `scale = lora_alpha / sqrt(r)`.
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA: weight-decomposed adaptation with a magnitude vector per output row.
    #[serde(default)]
    pub use_dora: bool,
    /// Modules trained fully and saved with the adapter (e.g. `lm_head`, `embed_tokens`).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Initialisation of new adapters.
    #[serde(default = "default_init")]
    pub init_lora_weights: InitLoraWeights,
    /// Restrict adapters to these decoder-layer indices (list targets only, as PEFT).
    #[serde(default)]
    pub layers_to_transform: Option<LayerIndices>,
    /// Name of the layer list in the module path (`layers`, `h`); default: any.
    #[serde(default)]
    pub layers_pattern: Option<StringOrList>,
    /// Per-module rank overrides (`{"o_proj": 2}`; keys are regexes matched against the
    /// dotted suffix of the module path, as PEFT's `get_pattern_key`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha overrides, same key syntax as `rank_pattern`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        serialize_with = "ser_alpha_map"
    )]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// The base model (Hub id or path; a relative path is resolved against the adapter folder).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Base model revision (kept).
    #[serde(default)]
    pub revision: Option<String>,
    /// PEFT's inference-mode flag (PEFT writes `true` when saving).
    #[serde(default)]
    pub inference_mode: bool,
    /// Every other field of the file, written back unchanged.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            peft_type: default_peft_type(),
            task_type: Some("CAUSAL_LM".into()),
            r: default_r(),
            lora_alpha: default_alpha(),
            target_modules: None,
            exclude_modules: None,
            lora_dropout: 0.0,
            fan_in_fan_out: false,
            bias: default_bias(),
            use_rslora: false,
            use_dora: false,
            modules_to_save: None,
            init_lora_weights: default_init(),
            layers_to_transform: None,
            layers_pattern: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            base_model_name_or_path: None,
            revision: None,
            inference_mode: false,
            extra: serde_json::Map::new(),
        }
    }
}

/// PEFT fields that change the adapter's math and are not implemented: an error when set
/// to anything but `null` / `false` / an empty value.
const UNSUPPORTED_EXTRA: &[(&str, &str)] = &[
    (
        "lora_bias",
        "LoRA bias vectors on lora_B are not implemented",
    ),
    ("use_qalora", "QA-LoRA is not implemented"),
    ("use_bdlora", "block-diagonal LoRA is not implemented"),
    ("layer_replication", "layer replication is not implemented"),
    (
        "trainable_token_indices",
        "trainable tokens are not implemented; use modules_to_save",
    ),
    (
        "target_parameters",
        "targeting nn.Parameter (MoE experts) is not implemented",
    ),
    (
        "alora_invocation_tokens",
        "activated LoRA (aLoRA) is not implemented",
    ),
    ("velora_config", "VeLoRA is not implemented"),
    ("monteclora_config", "MonteCLoRA is not implemented"),
    ("arrow_config", "Arrow routing is not implemented"),
];

fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

impl LoraConfig {
    /// A LoRA config for the given rank, alpha and target modules (other fields default).
    pub fn new(r: usize, lora_alpha: f64, target_modules: TargetModules) -> Self {
        Self {
            r,
            lora_alpha,
            target_modules: Some(target_modules),
            ..Self::default()
        }
    }

    /// Checks that this crate implements everything the config asks for.
    pub fn validate(&self) -> Result<(), PeftError> {
        if self.peft_type != "LORA" {
            return Err(PeftError::Unsupported {
                field: "peft_type".into(),
                value: format!("{:?}", self.peft_type),
                reason: "only LORA adapters (incl. rsLoRA / DoRA) are supported".into(),
            });
        }
        if self.r == 0 {
            return Err(PeftError::InvalidConfig {
                field: "r".into(),
                reason: "must be positive".into(),
            });
        }
        if let Some((k, _)) = self.rank_pattern.iter().find(|(_, r)| **r == 0) {
            return Err(PeftError::InvalidConfig {
                field: format!("rank_pattern.{k}"),
                reason: "must be positive".into(),
            });
        }
        if !self.lora_alpha.is_finite() {
            return Err(PeftError::InvalidConfig {
                field: "lora_alpha".into(),
                reason: format!("{} is not a finite number", self.lora_alpha),
            });
        }
        if let Some((k, a)) = self.alpha_pattern.iter().find(|(_, a)| !a.is_finite()) {
            return Err(PeftError::InvalidConfig {
                field: format!("alpha_pattern.{k}"),
                reason: format!("{a} is not a finite number"),
            });
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(PeftError::InvalidConfig {
                field: "lora_dropout".into(),
                reason: format!("{} is not in [0, 1)", self.lora_dropout),
            });
        }
        if self.bias != "none" {
            return Err(PeftError::Unsupported {
                field: "bias".into(),
                value: format!("{:?}", self.bias),
                reason: "only bias = \"none\" is supported".into(),
            });
        }
        for (field, reason) in UNSUPPORTED_EXTRA {
            if let Some(v) = self.extra.get(*field)
                && !is_unset(v)
            {
                return Err(PeftError::Unsupported {
                    field: (*field).into(),
                    value: v.to_string(),
                    reason: (*reason).into(),
                });
            }
        }
        Ok(())
    }

    /// Reads and validates `adapter_config.json`.
    pub fn from_file(path: &Path) -> Result<Self, PeftError> {
        let text = std::fs::read_to_string(path).map_err(|e| PeftError::io(path, e))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|source| PeftError::ConfigJson {
            path: path.into(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The JSON PEFT writes: keys sorted, two-space indentation.
    pub fn to_json_string(&self) -> Result<String, serde_json::Error> {
        let value = serde_json::to_value(self)?;
        serde_json::to_string_pretty(&sorted(value))
    }

    /// Writes `adapter_config.json`.
    pub fn save(&self, path: &Path) -> Result<(), PeftError> {
        let text = self
            .to_json_string()
            .map_err(|source| PeftError::ConfigJson {
                path: path.into(),
                source,
            })?;
        std::fs::write(path, text).map_err(|e| PeftError::io(path, e))
    }

    /// Rank and alpha for the module at `path`, after `rank_pattern` / `alpha_pattern`.
    pub fn rank_and_alpha(&self, path: &str) -> Result<(usize, f64), PeftError> {
        let r = match pattern_key(self.rank_pattern.keys(), path)? {
            Some(k) => self.rank_pattern[k],
            None => self.r,
        };
        let alpha = match pattern_key(self.alpha_pattern.keys(), path)? {
            Some(k) => self.alpha_pattern[k],
            None => self.lora_alpha,
        };
        Ok((r, alpha))
    }

    /// The adapter scale for rank `r` and `alpha`: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scale(&self, r: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }
}

/// PEFT's `get_pattern_key`: the first key `k` with `(.*\.)?(k)$` matching `path` from its start.
fn pattern_key<'a>(
    keys: impl Iterator<Item = &'a String>,
    path: &str,
) -> Result<Option<&'a String>, PeftError> {
    for key in keys {
        let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{key})$")).map_err(|e| {
            PeftError::InvalidConfig {
                field: format!("rank_pattern/alpha_pattern key {key:?}"),
                reason: e.to_string(),
            }
        })?;
        if re.is_match(path) {
            return Ok(Some(key));
        }
    }
    Ok(None)
}

fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let b: BTreeMap<String, Value> = m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(b.into_iter().collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_unknown_fields_and_integers() {
        let text = r#"{"peft_type":"LORA","r":4,"lora_alpha":16,"target_modules":["q_proj"],
            "rank_pattern":{"o_proj":2},"alpha_pattern":null,"megatron_core":"megatron.core",
            "loftq_config":{},"lora_bias":false,"some_future_field":{"a":1}}"#;
        let cfg: LoraConfig = serde_json::from_str(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.extra["some_future_field"]["a"], 1);
        let out: Value = serde_json::from_str(&cfg.to_json_string().unwrap()).unwrap();
        assert_eq!(out["lora_alpha"], Value::from(16));
        assert_eq!(out["megatron_core"], "megatron.core");
        assert_eq!(out["some_future_field"]["a"], 1);
        assert_eq!(
            cfg.rank_and_alpha("model.layers.1.self_attn.o_proj")
                .unwrap(),
            (2, 16.0)
        );
        assert_eq!(
            cfg.rank_and_alpha("model.layers.1.self_attn.q_proj")
                .unwrap(),
            (4, 16.0)
        );
    }

    #[test]
    fn rejects_unsupported_settings() {
        let ia3: LoraConfig = serde_json::from_str(r#"{"peft_type":"IA3"}"#).unwrap();
        assert!(
            matches!(ia3.validate(), Err(PeftError::Unsupported { field, .. }) if field == "peft_type")
        );
        let bias: LoraConfig = serde_json::from_str(r#"{"bias":"all"}"#).unwrap();
        assert!(bias.validate().is_err());
        let tt: LoraConfig = serde_json::from_str(r#"{"trainable_token_indices":[1,2]}"#).unwrap();
        assert!(tt.validate().is_err());
    }

    #[test]
    fn rslora_scale() {
        let mut cfg = LoraConfig::new(4, 16.0, TargetModules::Names(vec!["q_proj".into()]));
        assert_eq!(cfg.scale(4, 16.0), 4.0);
        cfg.use_rslora = true;
        assert_eq!(cfg.scale(4, 16.0), 8.0);
    }
}
