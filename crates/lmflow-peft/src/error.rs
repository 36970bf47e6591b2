//! The error type of `lmflow-peft`.

use std::path::PathBuf;

/// Everything that can go wrong while configuring, loading or saving adapters.
#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `adapter_config.json` is not valid JSON or has a field of the wrong type.
    #[error("{path}: invalid adapter config: {source}")]
    ConfigJson {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// The configuration asks for something this crate does not implement.
    #[error("unsupported adapter config field `{field}` = {value}: {reason}")]
    Unsupported {
        /// The config field.
        field: String,
        /// Its value, as JSON.
        value: String,
        /// What is and is not supported.
        reason: String,
    },
    /// The configuration is inconsistent (e.g. `r = 0`, a regex that does not compile).
    #[error("invalid adapter config field `{field}`: {reason}")]
    InvalidConfig {
        /// The config field.
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A safetensors file could not be parsed or written.
    #[error("{path}: safetensors: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A tensor is missing, has an unexpected dtype or shape.
    #[error("{path}: tensor `{key}`: {reason}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        key: String,
        /// What went wrong.
        reason: String,
    },
    /// An adapter file holds tensors for modules the model does not have.
    #[error("{path}: {count} tensor(s) match no module of the model, e.g. `{example}`")]
    UnusedTensors {
        /// The file.
        path: PathBuf,
        /// How many tensors were not used.
        count: usize,
        /// The first unused key.
        example: String,
    },
    /// No linear layer of the model matches `target_modules`.
    #[error("no module of the model matches target_modules {targets}")]
    NoTargetMatched {
        /// The targets, as JSON.
        targets: String,
    },
    /// An adapter name is unknown or already taken.
    #[error("adapter `{name}`: {reason}")]
    Adapter {
        /// The adapter name.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// A bitsandbytes-quantised checkpoint could not be understood.
    #[error("bitsandbytes tensor `{key}`: {reason}")]
    Quantization {
        /// The tensor (module path) concerned.
        key: String,
        /// What went wrong.
        reason: String,
    },
}

impl PeftError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
