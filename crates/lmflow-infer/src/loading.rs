//! Loading a model folder for inference: optional PEFT adapter and RoPE scaling override.

use std::path::Path;

use burn::tensor::Device;
use lmflow_models::rope::RopeConfig;
use lmflow_models::{LoadOptions, ModelConfig, Pretrained, RopeScaling, load_pretrained};
use serde_json::Value;

use crate::error::{InferError, Result};

/// Parses a `rope_scaling` override written as in `config.json` (e.g.
/// `{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}`; `type` is
/// accepted for `rope_type`), with the model folder's `config.json` supplying defaults such as
/// `max_position_embeddings`. Uses the same parser as loading, so every field transformers reads
/// is honoured.
///
/// # Errors
/// Unreadable `config.json`, JSON that is not an object, an unknown `rope_type` or a missing
/// required field.
pub fn parse_rope_scaling(model_dir: &Path, json: &str) -> Result<RopeScaling> {
    let value: Value = serde_json::from_str(json).map_err(|e| InferError::InvalidConfig {
        field: "rope_scaling",
        reason: format!("not valid JSON: {e}"),
    })?;
    if !value.is_object() {
        return Err(InferError::InvalidConfig {
            field: "rope_scaling",
            reason: "expected a JSON object such as {\"rope_type\": \"linear\", \"factor\": 2.0}"
                .into(),
        });
    }
    let mut config = ModelConfig::from_dir(model_dir)?;
    config.raw.remove("rope_parameters");
    config.raw.insert("rope_scaling".into(), value);
    let max_pos = config
        .usize_opt("max_position_embeddings")?
        .or(config.usize_opt("n_positions")?)
        .unwrap_or(2048);
    Ok(RopeConfig::from_hf(&config, 2, max_pos, 10_000.0)?.scaling)
}

/// Loads `model_dir` ([`load_pretrained`]) and, when given, the PEFT adapter folder
/// `adapter_dir` as the active adapter `"default"`.
///
/// # Errors
/// Any [`lmflow_models::ModelError`] of loading, or the adapter's [`lmflow_peft::PeftError`].
pub fn load_model(
    model_dir: &Path,
    adapter_dir: Option<&Path>,
    options: &LoadOptions,
    device: &Device,
) -> Result<Pretrained> {
    let mut pretrained = load_pretrained(model_dir, device, options)?;
    if let Some(dir) = adapter_dir {
        lmflow_peft::load_adapter(&mut pretrained.model, dir, "default", device)?;
        tracing::info!("loaded adapter {}", dir.display());
    }
    Ok(pretrained)
}
