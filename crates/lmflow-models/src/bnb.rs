//! bitsandbytes-quantised Hub checkpoints: the folders `transformers` writes for a model
//! loaded with `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")` (QLoRA
//! bases such as the `*-bnb-4bit` models on the Hub).
//!
//! `config.json` carries a `quantization_config` (`quant_method: "bitsandbytes"`); every
//! quantised linear layer is stored as
//!
//! | tensor | dtype, shape | what |
//! | --- | --- | --- |
//! | `<layer>.weight` | `uint8`, `[ceil(out * in / 2), 1]` | NF4 codes, two per byte, the first value of each pair in the high nibble |
//! | `<layer>.weight.absmax` | `f32` `[blocks]`, or `uint8` `[blocks]` with double quantisation | per-block (64 values) scale |
//! | `<layer>.weight.quant_map` | `f32` `[16]` | the NF4 levels |
//! | `<layer>.weight.nested_absmax`, `.nested_quant_map` | `f32` `[ceil(blocks / 256)]`, `[256]` | double quantisation only: scale and 8-bit map of the absmax codes |
//! | `<layer>.weight.quant_state.bitsandbytes__nf4` | `uint8` | UTF-8 JSON: `quant_type`, `blocksize`, `dtype`, `shape`, `nested_blocksize`, `nested_offset` |
//!
//! Layers that are not quantised (embeddings, norms, the output head) are ordinary tensors in
//! the dtype the model was quantised from (often bf16); they load into the requested dtype as
//! any checkpoint does. The [`Loader`](crate::hub::Loader) reads a quantised layer straight
//! into an [`Nf4Weight`] (no dense copy is made); its forward pass dequantises it per call.
//!
//! Refused with a [`ModelError::Quantization`]: 8-bit (`load_in_8bit`, LLM.int8) checkpoints,
//! the `fp4` quantisation type, storage other than `uint8`, and other quantisation methods
//! (GPTQ, AWQ, ...).

use lmflow_peft::{Nf4Weight, PeftError};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::weights::WeightSource;

/// What `config.json`'s `quantization_config` says about a bitsandbytes 4-bit checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BnbQuantization {
    /// `bnb_4bit_use_double_quant`: the per-block absmax values are quantised too.
    pub double_quant: bool,
    /// `bnb_4bit_compute_dtype` (`"bfloat16"`, `"float32"`, ...), as recorded. The model
    /// computes in the dtype it is loaded in (f32 unless asked otherwise); the dequantised
    /// weights are rounded to each layer's `quant_state` dtype first, as bitsandbytes does.
    pub compute_dtype: Option<String>,
}

fn qerr(config: &ModelConfig, key: &str, message: impl Into<String>) -> ModelError {
    ModelError::Quantization {
        path: config.path.clone(),
        name: format!("quantization_config.{key}"),
        message: message.into(),
    }
}

/// Reads `quantization_config` from a model configuration: `Ok(None)` for an ordinary
/// (unquantised) model, the settings of a bitsandbytes NF4 checkpoint, or an error naming
/// what is not supported.
///
/// # Errors
/// [`ModelError::Quantization`] for `load_in_8bit`, `bnb_4bit_quant_type` other than `nf4`,
/// `bnb_4bit_quant_storage` other than `uint8`, or a `quant_method` other than `bitsandbytes`.
pub fn bnb_quantization(config: &ModelConfig) -> Result<Option<BnbQuantization>, ModelError> {
    let Some(q) = config.raw.get("quantization_config") else {
        return Ok(None);
    };
    let Some(q) = q.as_object() else {
        return Err(qerr(config, "", "is not a JSON object"));
    };
    let flag = |key: &str| {
        q.get(key)
            .or_else(|| q.get(&format!("_{key}")))
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    };
    let method = q.get("quant_method").and_then(|v| v.as_str());
    match method {
        Some("bitsandbytes") => {}
        // Configurations written before `quant_method` existed.
        None if flag("load_in_4bit") || flag("load_in_8bit") => {}
        Some(other) => {
            return Err(qerr(
                config,
                "quant_method",
                format!(
                    "`{other}` checkpoints are not supported (bitsandbytes 4-bit NF4 only; \
                     load the unquantised model and use `--qlora`)"
                ),
            ));
        }
        None => return Ok(None),
    }
    if flag("load_in_8bit") {
        return Err(qerr(
            config,
            "load_in_8bit",
            "8-bit (LLM.int8) bitsandbytes checkpoints are not supported (4-bit NF4 only; load \
             the unquantised model and use `--qlora`)",
        ));
    }
    if !flag("load_in_4bit") {
        return Err(qerr(
            config,
            "load_in_4bit",
            "a bitsandbytes configuration without load_in_4bit or load_in_8bit",
        ));
    }
    let quant_type = q
        .get("bnb_4bit_quant_type")
        .and_then(|v| v.as_str())
        .unwrap_or("fp4"); // bitsandbytes' and transformers' default
    if quant_type != "nf4" {
        return Err(qerr(
            config,
            "bnb_4bit_quant_type",
            format!("`{quant_type}` is not supported (nf4 only)"),
        ));
    }
    if let Some(storage) = q.get("bnb_4bit_quant_storage").and_then(|v| v.as_str())
        && storage != "uint8"
    {
        return Err(qerr(
            config,
            "bnb_4bit_quant_storage",
            format!("`{storage}` is not supported (uint8 only)"),
        ));
    }
    Ok(Some(BnbQuantization {
        double_quant: flag("bnb_4bit_use_double_quant"),
        compute_dtype: q
            .get("bnb_4bit_compute_dtype")
            .and_then(|v| v.as_str())
            .map(str::to_string),
    }))
}

/// Reads the layer whose weight is stored under `weight_name` as an [`Nf4Weight`] when the
/// checkpoint holds it in bitsandbytes' 4-bit format (`Ok(None)` otherwise), checking it is
/// `[d_output, d_input]`.
///
/// # Errors
/// [`ModelError::Quantization`] naming the file and tensor: missing or malformed quantisation
/// tensors, an FP4 layer, or a shape other than the layer's.
pub fn read_linear(
    weights: &WeightSource,
    weight_name: &str,
    d_output: usize,
    d_input: usize,
) -> Result<Option<Nf4Weight>, ModelError> {
    let Some(prefix) = weight_name.strip_suffix(".weight") else {
        return Ok(None);
    };
    let err = |name: String, message: String| ModelError::Quantization {
        path: weights.file_of(weight_name),
        name,
        message,
    };
    let q = Nf4Weight::from_bnb_with(prefix, &|key| weights.raw(key), weights.device()).map_err(
        |e| match e {
            PeftError::Quantization { key, reason } => err(key, reason),
            other => err(weight_name.to_string(), other.to_string()),
        },
    )?;
    let Some(q) = q else {
        return Ok(None);
    };
    if (q.rows, q.cols) != (d_output, d_input) {
        return Err(err(
            weight_name.to_string(),
            format!(
                "quantised shape [{}, {}], but the configuration implies [{d_output}, {d_input}]",
                q.rows, q.cols
            ),
        ));
    }
    Ok(Some(q))
}
