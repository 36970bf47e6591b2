//! Error type of the inference crate.

/// Everything that can go wrong while generating, decoding speculatively or evaluating.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// A generation or evaluation setting is out of range (names the field and why).
    #[error("invalid setting `{field}`: {reason}")]
    InvalidConfig {
        /// Name of the offending field, e.g. `top_p`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A prompt or input is unusable (empty, longer than the cache, ...).
    #[error("invalid input {index}: {reason}")]
    InvalidInput {
        /// Index of the prompt / record in the batch or file.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor read back from the device had an unexpected type or shape.
    #[error("tensor `{name}`: {reason}")]
    Tensor {
        /// What the tensor holds, e.g. `logits`.
        name: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// Error raised by the model crate (loading, tokenizing, forward).
    #[error(transparent)]
    Model(#[from] lmflow_models::ModelError),
    /// Error raised while loading a PEFT adapter.
    #[error(transparent)]
    Peft(#[from] lmflow_peft::PeftError),
    /// Error raised by the tokenizer (encoding, decoding).
    #[error(transparent)]
    Tokenizer(#[from] lmflow_models::tokenizer::TokenizerError),
}

/// Shorthand for results of this crate.
pub type Result<T, E = InferError> = std::result::Result<T, E>;
