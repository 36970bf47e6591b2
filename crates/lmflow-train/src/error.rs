//! Errors of the trainer.

use std::path::PathBuf;

/// Everything that can go wrong while training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file could not be parsed or written.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// The configuration is inconsistent.
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// The loss or the gradient norm of a step is NaN or infinite. The run stops before the
    /// optimizer step and before any checkpoint of that step, so the last good checkpoint stays.
    #[error(
        "step {step}: the {quantity} is {value}, not a finite number; training stopped before \
         the optimizer step (the last checkpoint is kept). Lower the learning rate, or check the \
         data and the model weights for NaN/inf"
    )]
    NonFinite {
        /// The optimizer step that produced it (1-based).
        step: usize,
        /// `"loss"` or `"gradient norm"`.
        quantity: &'static str,
        /// The value.
        value: f64,
    },
    /// The output folder holds another run, or cannot be used as asked.
    #[error("{dir}: {message}")]
    RunFolder {
        /// The output folder.
        dir: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// A collective operation of a data-parallel run failed, or the ranks disagree.
    #[error("data-parallel rank {rank}: {message}")]
    Distributed {
        /// The rank that reports it.
        rank: usize,
        /// What went wrong.
        message: String,
    },
    /// The run was asked to stop (Ctrl-C) and stopped after writing the checkpoint of `step`.
    #[error(
        "interrupted: stopped after step {step}; checkpoint {checkpoint} written (run the same \
         command again to resume from it)"
    )]
    Interrupted {
        /// The last completed optimizer step.
        step: usize,
        /// The checkpoint written for it.
        checkpoint: PathBuf,
    },
    /// Drawing the loss curve failed.
    #[error("{path}: cannot draw the loss curve: {message}")]
    Plot {
        /// The PNG file.
        path: PathBuf,
        /// What the plotting library said.
        message: String,
    },
    /// The model failed to load or save.
    #[error(transparent)]
    Model(#[from] lmflow_models::ModelError),
    /// The dataset failed to load, tokenize or batch.
    #[error(transparent)]
    Data(#[from] lmflow_datasets::DatasetError),
    /// An adapter operation failed.
    #[error(transparent)]
    Peft(#[from] lmflow_peft::PeftError),
    /// The optimizer or schedule failed.
    #[error(transparent)]
    Optim(#[from] lmflow_optim::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
