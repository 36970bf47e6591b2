//! Errors of the crate.

/// Errors raised while building optimizers, schedules or parameter groups.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An optimizer name that the registry does not know.
    #[error("unknown optimizer `{name}`; supported: {supported}")]
    UnknownOptimizer {
        /// The name that was asked for.
        name: String,
        /// Comma-separated list of the supported names.
        supported: String,
    },
    /// A configuration (JSON) could not be parsed.
    #[error("invalid {what} configuration: {source}")]
    Config {
        /// What was being parsed (`optimizer`, `schedule`).
        what: &'static str,
        /// The parser error, naming the offending field.
        #[source]
        source: serde_json::Error,
    },
    /// A field holds a value outside its domain.
    #[error("invalid value for `{field}` of {what}: {reason}")]
    InvalidValue {
        /// The configuration the field belongs to.
        what: &'static str,
        /// The field name.
        field: &'static str,
        /// Why the value is rejected.
        reason: String,
    },
    /// A parameter-group pattern is not a valid regular expression.
    #[error("invalid parameter-group pattern `{pattern}`: {reason}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// The regex error.
        reason: String,
    },
}
