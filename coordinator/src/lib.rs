//! Coordinator of the stream anomaly detector.
//!
//! - [`evaluate`]: the evaluation commands (`eval tabular|nab|skab`) that
//!   produce the quality figures in `docs/QUALITY.md`.
//! - [`demo`]: the first command of the README.

pub mod demo;
pub mod evaluate;
