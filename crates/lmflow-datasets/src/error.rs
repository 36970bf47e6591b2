//! The error type of this crate.

use std::path::PathBuf;

use lmflow_models::tokenizer::TokenizerError;

/// Errors raised while reading, rendering, tokenizing or batching datasets.
///
/// Errors about user data name the file, the instance index (0-based; for JSON Lines the
/// index counts instance lines, header excluded) and the field.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file (or one line of a JSON Lines file) is not valid JSON.
    #[error("{path}{}: invalid JSON: {source}", line.map(|l| format!(": line {l}")).unwrap_or_default())]
    Json {
        /// The file.
        path: PathBuf,
        /// The 1-based line of a JSON Lines file.
        line: Option<usize>,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A top-level key of an LMFlow JSON file is missing or malformed.
    #[error("{path}: key `{key}`: {message}")]
    Header {
        /// The file.
        path: PathBuf,
        /// The key (`type` or `instances`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A field of one instance is missing or malformed.
    #[error("{path}: instance {index}: field `{field}`: {message}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The 0-based instance index.
        index: usize,
        /// The field, e.g. `messages[2].role`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A folder mixes files of different dataset types.
    #[error(
        "{path} has type `{found}` but {first} has type `{expected}`: all files of a folder must share one type"
    )]
    MixedTypes {
        /// The file with the different type.
        path: PathBuf,
        /// Its type.
        found: String,
        /// The first file read.
        first: PathBuf,
        /// The type of the first file.
        expected: String,
    },
    /// A file has no instances, or a folder no dataset files.
    #[error("{path}: {message}")]
    Empty {
        /// The file or folder.
        path: PathBuf,
        /// What is empty.
        message: String,
    },
    /// A dataset type was needed (JSON Lines without header) or does not fit the operation.
    #[error("{0}")]
    Type(String),
    /// A chat template name is not one of the presets.
    #[error("unknown chat template `{0}` (presets: {presets})", presets = crate::template::PRESET_NAMES.join(", "))]
    UnknownTemplate(String),
    /// A chat template failed to compile or render.
    #[error("chat template `{name}`: {message}")]
    Template {
        /// The template name.
        name: String,
        /// The template engine's message (e.g. the text of `raise_exception`).
        message: String,
    },
    /// A conversation cannot be rendered (e.g. it does not start with a user turn).
    #[error("conversation: {0}")]
    Conversation(String),
    /// The tokenizer failed or lacks a token the operation needs.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// An option has an invalid value.
    #[error("invalid option: {0}")]
    Config(String),
    /// An image file (or an image processor / processor config) cannot be read or used.
    #[error("{path}: {message}")]
    Image {
        /// The image or config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl DatasetError {
    /// Attaches a file and instance index to a conversation/template error raised while
    /// processing that instance (other errors are returned unchanged).
    pub fn at(self, path: &std::path::Path, index: usize) -> Self {
        match self {
            DatasetError::Conversation(message) => DatasetError::Field {
                path: path.to_path_buf(),
                index,
                field: "messages".into(),
                message,
            },
            other => other,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = DatasetError> = std::result::Result<T, E>;
