//! Evaluation: the protocols every quality figure of this project is measured with.
//!
//! | function | protocol | source |
//! |---|---|---|
//! | [`metrics::roc_auc`], [`metrics::average_precision`] | ranking quality on tabular sets (ODDS "all" and 60/40) | scikit-learn's `roc_auc_score`, `average_precision_score` |
//! | [`metrics::BinaryCounts`] | F1, precision, recall, false/missed-alarm rates | scikit-learn's `f1_score` etc.; SKAB's FAR/MAR |
//! | [`skab::split`], [`skab::pooled_counts`] | SKAB leaderboard: first 400 rows train, test rows of all files pooled | waico/SKAB |
//! | [`nab::optimize_threshold`], [`nab::score_detections`], [`nab::score_at_threshold`] | NAB v1 score, three profiles, normalised 0 (null) to 100 (perfect) | numenta/NAB `sweeper.py`, `optimizer.py`, `scorer.py`, `runner.py` at ea702d75 |
//!
//! The functions are pure: data come from [`crate::data`], scores from any
//! [`crate::Detector`], and nothing here does I/O.

pub mod metrics;
pub mod nab;
pub mod skab;

pub use metrics::{BinaryCounts, average_precision, roc_auc};
pub use nab::{
    NabFileInput, NabFileScore, NabProfile, NabResult, optimize_threshold, score_at_threshold,
    score_detections,
};
pub use skab::{SKAB_TRAIN_ROWS, SkabSplit, pooled_counts, pooled_counts_from_scores, split};
