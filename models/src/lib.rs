//! Detectors of the stream anomaly detector and the tools to judge them.
//!
//! Every model implements [`Detector`]: batch and single-row raw scores,
//! a [`Calibration`] kept with the model that maps raw scores to `[0, 1]`,
//! a threshold in that calibrated space and per-feature contributions for
//! explanations. The same code runs in the agent and in the coordinator's
//! central detection.
//!
//! - [`iforest`]: Isolation Forest with scikit-learn's exact scores.
//! - [`streaming`]: Half-Space Trees and EWMA z-score, update-and-score per event.
//! - [`eval`]: ROC-AUC, average precision, the SKAB protocol and the NAB v1 scorer.
//! - [`bundle`]: a model manifest and payload become a running detector.
//! - [`data`]: CSV loaders for tabular sets, NAB series and SKAB files.
//! - [`features`]: online features of univariate series for vector detectors.
//! - [`scaler`]: a serialisable standard scaler fitted with linfa-preprocessing.

pub mod bundle;
pub mod data;
pub mod detector;
pub mod error;
pub mod eval;
pub mod features;
pub mod iforest;
pub mod nn;
pub mod scaler;
pub mod streaming;

pub use detector::{Calibration, Contribution, Detector, Score, fit_calibration};
pub use error::ModelError;
