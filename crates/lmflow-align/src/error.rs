//! Errors of the alignment crate.

/// Everything that can go wrong in alignment code.
#[derive(Debug, thiserror::Error)]
pub enum AlignError {
    /// Invalid settings.
    #[error("invalid alignment configuration: {0}")]
    Config(String),
}
