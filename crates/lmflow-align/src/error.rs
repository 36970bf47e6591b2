//! Errors of the alignment crate.

use std::path::PathBuf;

/// Everything that can go wrong in alignment code.
#[derive(Debug, thiserror::Error)]
pub enum AlignError {
    /// Invalid settings.
    #[error("invalid alignment configuration: {0}")]
    Config(String),
    /// A data file (lexicon, prompt set, ...) has unusable content.
    #[error("{path}: {message}")]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the record or line.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A model failed to load, run or save.
    #[error(transparent)]
    Model(#[from] lmflow_models::ModelError),
    /// A dataset failed to read or tokenize.
    #[error(transparent)]
    Dataset(#[from] lmflow_datasets::DatasetError),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] lmflow_train::TrainError),
    /// Adapter handling failed.
    #[error(transparent)]
    Peft(#[from] lmflow_peft::PeftError),
    /// Generation failed.
    #[error(transparent)]
    Infer(#[from] lmflow_infer::InferError),
}

impl AlignError {
    /// Shorthand for [`AlignError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
