//! The error type of this crate: every variant names the file and, where there is one, the key or
//! tensor that was wrong.

use std::path::PathBuf;

/// Errors from loading, running or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A required file is missing from a model folder.
    #[error("{path}: file not found ({what})")]
    MissingFile {
        /// The path that was looked for.
        path: PathBuf,
        /// What the file is needed for.
        what: String,
    },
    /// A JSON file is not valid JSON.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A configuration key is missing or has an unusable value.
    #[error("{path}: key `{key}`: {message}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// `config.json` names an architecture this crate does not implement.
    #[error("{path}: unsupported model_type `{model_type}` (supported: {supported})")]
    UnsupportedModelType {
        /// The configuration file.
        path: PathBuf,
        /// The `model_type` found.
        model_type: String,
        /// The supported `model_type` values, comma separated.
        supported: String,
    },
    /// A safetensors file is corrupt or truncated (for example an interrupted download).
    #[error("{path}: not a valid safetensors file ({message})")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the parser reported.
        message: String,
    },
    /// A tensor the architecture needs is not in the checkpoint.
    #[error("{path}: tensor `{name}` is missing from the checkpoint")]
    MissingTensor {
        /// The checkpoint file (or folder, for sharded checkpoints without an index entry).
        path: PathBuf,
        /// The tensor's Hub name.
        name: String,
    },
    /// A tensor has a shape other than the configuration implies.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor's Hub name.
        name: String,
        /// The shape implied by `config.json`.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype this crate cannot convert to a float tensor.
    #[error(
        "{path}: tensor `{name}` has unsupported dtype {dtype} (supported: F32, F16, BF16, F64)"
    )]
    Dtype {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor's Hub name.
        name: String,
        /// The stored dtype.
        dtype: String,
    },
    /// A stored float tensor holds NaN or infinity (checked when weights are loaded).
    #[error(
        "{path}: tensor `{name}` holds {what} (element {index}): the file is damaged or was \
         saved from a diverged model; weights must be finite"
    )]
    NonFinite {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor's Hub name.
        name: String,
        /// `NaN`, `inf` or `-inf`.
        what: String,
        /// The flat index of the first such element.
        index: usize,
    },
    /// The weights would not fit in the memory this process may use.
    #[error(
        "{path}: the weights take {:.1} GiB as {dtype}, more than the {:.1} GiB of memory this \
         process can use (RAM + swap, or the address-space limit); use a smaller --dtype, \
         QLoRA, or a larger machine", *needed as f64 / (1u64 << 30) as f64, *limit as f64 / (1u64 << 30) as f64
    )]
    TooLarge {
        /// The model folder.
        path: PathBuf,
        /// Bytes the converted tensors take.
        needed: u64,
        /// Bytes available (see `weights::host_memory_limit`).
        limit: u64,
        /// The dtype of the loaded tensors.
        dtype: String,
    },
    /// The tokenizer files could not be loaded (the error names the file).
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    /// A quantised checkpoint (bitsandbytes) that cannot be loaded: an unsupported method or
    /// quantisation type, or quantisation tensors that do not fit the layer.
    #[error("{path}: {name}: {message}")]
    Quantization {
        /// `config.json` or the checkpoint file.
        path: PathBuf,
        /// The configuration key or the tensor at fault.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A forward pass was called with inputs that do not fit the model or the cache.
    #[error("invalid forward input: {0}")]
    Input(String),
}

impl ModelError {
    /// Shorthand for [`ModelError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`ModelError::Config`].
    pub fn config(path: impl Into<PathBuf>, key: &str, message: impl Into<String>) -> Self {
        Self::Config {
            path: path.into(),
            key: key.to_string(),
            message: message.into(),
        }
    }
}
