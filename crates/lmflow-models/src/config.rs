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
        Ok(Self {
            model_type,
            raw,
            path: path.to_path_buf(),
        })
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
