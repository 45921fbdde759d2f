//! Errors of the models crate.

use thiserror::Error;

/// What can go wrong when fitting, scoring, loading or evaluating a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A row had a different number of features than the model expects.
    #[error("wrong dimension: expected {expected} features, got {got}")]
    Dimension {
        /// Features the model was fitted on.
        expected: usize,
        /// Features in the offending input.
        got: usize,
    },
    /// An input value was NaN or infinite.
    #[error("non-finite value in feature {feature}")]
    NonFinite {
        /// Index of the offending feature.
        feature: usize,
    },
    /// A fitting parameter or input was invalid.
    #[error("invalid parameter: {0}")]
    Invalid(String),
    /// Input data could not be read or parsed.
    #[error("{0}")]
    Data(String),
    /// A serialised model could not be decoded.
    #[error("decode model: {0}")]
    Decode(String),
    /// An error reported by linfa (dataset shape, parameters).
    #[error("linfa: {0}")]
    Linfa(#[from] linfa::Error),
    /// An I/O error, with the path or operation that failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Result type of the models crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
