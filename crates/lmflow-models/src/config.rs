//! `config.json` of a Hub model folder.
//!
//! [`ModelConfig`] keeps the whole JSON object (so that saving writes back every key, including
//! the ones this crate does not use) and offers typed, error-reporting accessors. Each
//! architecture turns it into its own typed configuration (for example
//! [`LlamaConfig::from_hf`](crate::llama::LlamaConfig::from_hf)), applying the same defaults as
//! the matching `transformers` configuration class.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::ModelError;

/// File name of a model configuration.
pub const CONFIG_FILE: &str = "config.json";

/// Upper bounds of `config.json` dimensions, far above any released model: a value beyond
/// them is a damaged or hostile file and would abort in allocation.
pub const MAX_DIMENSIONS: &[(&str, u64)] = &[
    ("num_hidden_layers", 1 << 12),
    ("n_layer", 1 << 12),
    ("hidden_size", 1 << 17),
    ("n_embd", 1 << 17),
    ("d_model", 1 << 17),
    ("word_embed_proj_dim", 1 << 17),
    ("intermediate_size", 1 << 20),
    ("n_inner", 1 << 20),
    ("ffn_dim", 1 << 20),
    ("num_attention_heads", 1 << 12),
    ("n_head", 1 << 12),
    ("num_key_value_heads", 1 << 12),
    ("head_dim", 1 << 14),
    ("vocab_size", 1 << 24),
    ("max_position_embeddings", 1 << 26),
    ("n_positions", 1 << 26),
];

/// Upper bound of the parameter count estimated from `config.json` (1e13, five times the
/// largest released models).
pub const MAX_PARAMETERS: f64 = 1e13;

/// A parsed `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The `model_type` key (e.g. `"llama"`).
    pub model_type: String,
    /// Every key of the file, in file order.
    pub raw: Map<String, Value>,
    /// The file it was read from (used in error messages; empty for configurations built in
    /// memory).
    pub path: PathBuf,
}

impl ModelConfig {
    /// Reads `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        Self::from_file(&dir.join(CONFIG_FILE))
    }

    /// Reads a configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ModelError::MissingFile {
                    path: path.to_path_buf(),
                    what: "model configuration".into(),
                }
            } else {
                ModelError::io(path, e)
            }
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(value, path)
    }

    /// Builds a configuration from a JSON object; `path` is only used in error messages.
    pub fn from_json(value: Value, path: &Path) -> Result<Self, ModelError> {
        let Value::Object(raw) = value else {
            return Err(ModelError::config(path, "<root>", "expected a JSON object"));
        };
        let model_type = match raw.get("model_type") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(ModelError::config(path, "model_type", "not a string")),
            None => return Err(ModelError::config(path, "model_type", "missing")),
        };
        let config = Self {
            model_type,
            raw,
            path: path.to_path_buf(),
        };
        config.check_ranges()?;
        Ok(config)
    }

    /// Rejects values that would make every output NaN (a norm epsilon or RoPE base that is
    /// not a positive finite number) or that no real model has and that would abort in
    /// allocation (a dimension beyond [`MAX_DIMENSIONS`], or more than [`MAX_PARAMETERS`]
    /// parameters), before anything is built.
    fn check_ranges(&self) -> Result<(), ModelError> {
        for key in [
            "rms_norm_eps",
            "layer_norm_eps",
            "layer_norm_epsilon",
            "norm_eps",
            "rope_theta",
        ] {
            if let Some(v) = self.f64_opt(key)?
                && !(v.is_finite() && v > 0.0)
            {
                return Err(self.err(key, format!("{v} is not a positive, finite number")));
            }
        }
        for (key, max) in MAX_DIMENSIONS {
            if let Some(0) = self.get(key).and_then(Value::as_u64) {
                return Err(self.err(key, "0: a model dimension must be at least 1"));
            }
            if let Some(v) = self.get(key).and_then(Value::as_u64)
                && v > *max
            {
                return Err(self.err(
                    key,
                    format!("{v} is beyond any real model (at most {max} accepted)"),
                ));
            }
        }
        let dim = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| self.get(k).and_then(Value::as_u64))
                .unwrap_or(0) as f64
        };
        let hidden = dim(&["hidden_size", "n_embd", "d_model"]);
        let inner = dim(&["intermediate_size", "n_inner", "ffn_dim"]).max(4.0 * hidden);
        let layers = dim(&["num_hidden_layers", "n_layer"]);
        let vocab = dim(&["vocab_size"]);
        let params = 2.0 * vocab * hidden + layers * (4.0 * hidden * hidden + 3.0 * hidden * inner);
        if params > MAX_PARAMETERS {
            return Err(self.err(
                "num_hidden_layers",
                format!(
                    "the dimensions describe about {params:.1e} parameters, beyond any real model \
                     (at most {MAX_PARAMETERS:.0e} accepted)"
                ),
            ));
        }
        Ok(())
    }

    /// The raw value of a key (`None` when absent or `null`).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.raw.get(key).filter(|v| !v.is_null())
    }

    fn err(&self, key: &str, message: impl Into<String>) -> ModelError {
        ModelError::config(&self.path, key, message)
    }

    /// An optional non-negative integer.
    pub fn usize_opt(&self, key: &str) -> Result<Option<usize>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                self.err(key, format!("expected a non-negative integer, found {v}"))
            }),
        }
    }

    /// A required non-negative integer (the first of `keys` present; later keys are aliases,
    /// e.g. `["hidden_size", "n_embd"]`).
    pub fn usize_req(&self, keys: &[&str]) -> Result<usize, ModelError> {
        for key in keys {
            if let Some(v) = self.usize_opt(key)? {
                return Ok(v);
            }
        }
        Err(self.err(keys.first().copied().unwrap_or(""), "missing"))
    }

    /// An optional number.
    pub fn f64_opt(&self, key: &str) -> Result<Option<f64>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a number, found {v}"))),
        }
    }

    /// An optional boolean.
    pub fn bool_opt(&self, key: &str) -> Result<Option<bool>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected true or false, found {v}"))),
        }
    }

    /// An optional string.
    pub fn str_opt(&self, key: &str) -> Result<Option<&str>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a string, found {v}"))),
        }
    }

    /// A token id key that may hold one id or a list (`eos_token_id`); always a list.
    pub fn token_ids(&self, key: &str) -> Result<Vec<u32>, ModelError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .map(|n| n as u32)
                        .ok_or_else(|| self.err(key, format!("expected token ids, found {v}")))
                })
                .collect(),
            Some(v) => v
                .as_u64()
                .map(|n| vec![n as u32])
                .ok_or_else(|| self.err(key, format!("expected a token id, found {v}"))),
        }
    }

    /// The dtype the checkpoint declares (`dtype`, or the older `torch_dtype`), e.g.
    /// `"bfloat16"`.
    pub fn declared_dtype(&self) -> Option<&str> {
        self.get("dtype")
            .or_else(|| self.get("torch_dtype"))
            .and_then(Value::as_str)
    }

    /// Sets a key (used when saving, e.g. to record the dtype written).
    pub fn set(&mut self, key: &str, value: Value) {
        self.raw.insert(key.to_string(), value);
    }

    /// Pretty JSON text of the configuration, as written to `config.json`.
    pub fn to_json_string(&self) -> String {
        // Serialising a `Map<String, Value>` cannot fail.
        serde_json::to_string_pretty(&self.raw).unwrap_or_default()
    }

    /// Writes the configuration to `dir/config.json`.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let path = dir.join(CONFIG_FILE);
        std::fs::write(&path, self.to_json_string() + "\n").map_err(|e| ModelError::io(&path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: Value) -> Result<ModelConfig, ModelError> {
        let mut v = serde_json::json!({
            "model_type": "llama", "vocab_size": 48, "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4
        });
        if let (Value::Object(base), Value::Object(extra)) = (&mut v, extra) {
            base.extend(extra);
        }
        ModelConfig::from_json(v, Path::new("config.json"))
    }

    #[test]
    fn values_that_make_nan_or_abort_are_rejected_naming_the_key() {
        assert!(parse(serde_json::json!({"rms_norm_eps": 1e-6, "rope_theta": 1e4})).is_ok());
        for (key, value) in [
            ("rms_norm_eps", serde_json::json!(-1.0)),
            ("rms_norm_eps", serde_json::json!(0.0)),
            ("layer_norm_epsilon", serde_json::json!(-1e-5)),
            ("rope_theta", serde_json::json!(0.0)),
            ("rope_theta", serde_json::json!(-10000.0)),
            ("num_hidden_layers", serde_json::json!(1_000_000_000u64)),
            ("hidden_size", serde_json::json!(1u64 << 40)),
            ("vocab_size", serde_json::json!(1u64 << 40)),
        ] {
            let mut one = Map::new();
            one.insert(key.to_string(), value);
            let err = parse(Value::Object(one)).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
        // Each dimension plausible, the product not.
        let err = parse(serde_json::json!({
            "hidden_size": 100_000, "intermediate_size": 1_000_000, "num_hidden_layers": 4000
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("parameters"), "{err}");
    }
}
