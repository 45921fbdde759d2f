//! The one interface every detector implements, and the calibration that maps
//! raw scores to `[0, 1]`.
//!
//! Conventions shared by all detectors:
//! - a **raw score** is the model's own number, higher meaning more anomalous
//!   (for Isolation Forest it is `-score_samples`, as in scikit-learn);
//! - the **score** is the raw score passed through the model's [`Calibration`],
//!   a strictly increasing map onto `[0, 1]`, so rankings (and ROC-AUC) are
//!   unchanged by calibration;
//! - the **threshold** lives in calibrated space: a row is anomalous when its
//!   score is strictly greater than the threshold;
//! - **contributions** are one non-negative-or-signed number per feature,
//!   larger meaning "this feature made the row look more anomalous"; each
//!   detector documents its own definition.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
pub use sad_common::Calibration;
use sad_common::ModelKind;

/// A scored row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// The detector's raw score (higher is more anomalous).
    pub raw: f64,
    /// The calibrated score in `[0, 1]`.
    pub score: f64,
    /// Whether `score` is above the detector's threshold.
    pub is_anomaly: bool,
}

/// One feature's share in a row's anomaly score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    /// Index of the feature in the model's feature vector.
    pub feature: usize,
    /// How much the feature contributed (detector-specific units, larger is more).
    pub weight: f64,
}

/// Fits a logistic [`Calibration`] on training raw scores so that the
/// `1 - contamination` quantile maps to 0.5 and the median maps to 0.1.
///
/// With that, the default threshold 0.5 flags the same share of training
/// rows as `contamination`. Falls back to a wider scale when the scores
/// are (nearly) constant.
pub fn fit_calibration(raw_scores: &[f64], contamination: f64) -> Result<Calibration> {
    if raw_scores.is_empty() {
        return Err(ModelError::Invalid(
            "calibration needs at least one score".into(),
        ));
    }
    if !(contamination > 0.0 && contamination < 0.5) {
        return Err(ModelError::Invalid(format!(
            "contamination must be in (0, 0.5), got {contamination}"
        )));
    }
    let mut sorted: Vec<f64> = raw_scores
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    if sorted.is_empty() {
        return Err(ModelError::Invalid(
            "calibration scores are all non-finite".into(),
        ));
    }
    sorted.sort_by(f64::total_cmp);
    let center = quantile_sorted(&sorted, 1.0 - contamination);
    let median = quantile_sorted(&sorted, 0.5);
    Ok(Calibration::Logistic {
        center,
        scale: spread_scale(&sorted, center - median),
    })
}

/// Logistic calibration centred on a known raw decision boundary (for
/// example scikit-learn's `contamination="auto"` boundary 0.5), with the
/// spread taken from the training scores' median distance to it.
pub fn fit_calibration_at(raw_scores: &[f64], center: f64) -> Result<Calibration> {
    let mut sorted: Vec<f64> = raw_scores
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    if sorted.is_empty() || !center.is_finite() {
        return Err(ModelError::Invalid(
            "calibration needs finite scores and centre".into(),
        ));
    }
    sorted.sort_by(f64::total_cmp);
    let median = quantile_sorted(&sorted, 0.5);
    Ok(Calibration::Logistic {
        center,
        scale: spread_scale(&sorted, center - median),
    })
}

fn spread_scale(sorted: &[f64], center_minus_median: f64) -> f64 {
    let scale = center_minus_median / 9f64.ln();
    if scale.is_finite() && scale > 1e-12 {
        return scale;
    }
    let spread = sorted[sorted.len() - 1] - sorted[0];
    if spread > 1e-12 { spread / 10.0 } else { 1.0 }
}

/// Linear-interpolated quantile (numpy's default, "linear") of sorted data.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    debug_assert!(!sorted.is_empty());
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// Checks that a row has `n_features` finite values.
#[inline]
pub fn check_row(row: &[f64], n_features: usize) -> Result<()> {
    if row.len() != n_features {
        return Err(ModelError::Dimension {
            expected: n_features,
            got: row.len(),
        });
    }
    if let Some(feature) = row.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::NonFinite { feature });
    }
    Ok(())
}

/// Checks a row-major batch: its length is a multiple of `n_features` and
/// every value is finite. Returns the number of rows.
pub fn check_batch(rows: &[f64], n_features: usize) -> Result<usize> {
    if n_features == 0 || !rows.len().is_multiple_of(n_features) {
        return Err(ModelError::Dimension {
            expected: n_features,
            got: if n_features == 0 {
                rows.len()
            } else {
                rows.len() % n_features
            },
        });
    }
    if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::NonFinite {
            feature: i % n_features,
        });
    }
    Ok(rows.len() / n_features)
}

/// The interface of every detector, batch-trained or streaming.
///
/// Batch methods take row-major data: `rows.len()` is a multiple of
/// [`Detector::n_features`]. Implementations check dimensions and finiteness
/// and return [`ModelError`] instead of panicking.
pub trait Detector: Send + Sync {
    /// Which kind of model this is.
    fn kind(&self) -> ModelKind;

    /// Number of features per row.
    fn n_features(&self) -> usize;

    /// Raw scores of a row-major batch, appended to `out` (cleared first).
    fn raw_score_batch(&self, rows: &[f64], out: &mut Vec<f64>) -> Result<()>;

    /// Raw score of one row.
    fn raw_score(&self, row: &[f64]) -> Result<f64> {
        let mut out = Vec::with_capacity(1);
        self.raw_score_batch(row, &mut out)?;
        out.pop().ok_or(ModelError::Dimension {
            expected: self.n_features(),
            got: 0,
        })
    }

    /// Per-feature contributions to one row's anomaly score (one value per feature).
    fn contributions(&self, row: &[f64]) -> Result<Vec<f64>>;

    /// The calibration that maps raw scores to `[0, 1]`.
    fn calibration(&self) -> &Calibration;

    /// The decision threshold in calibrated space.
    fn threshold(&self) -> f64;

    /// Learns from one row (streaming detectors); batch-trained models ignore it.
    fn learn(&mut self, _row: &[f64]) -> Result<()> {
        Ok(())
    }

    /// Whether [`Detector::learn`] changes the model.
    fn is_streaming(&self) -> bool {
        false
    }

    /// Scores one row: raw, calibrated and the decision at [`Detector::threshold`].
    fn score(&self, row: &[f64]) -> Result<Score> {
        let raw = self.raw_score(row)?;
        Ok(self.finish(raw))
    }

    /// Scores a row-major batch.
    fn score_batch(&self, rows: &[f64]) -> Result<Vec<Score>> {
        let mut raw = Vec::new();
        self.raw_score_batch(rows, &mut raw)?;
        Ok(raw.into_iter().map(|r| self.finish(r)).collect())
    }

    /// Turns a raw score into a [`Score`].
    fn finish(&self, raw: f64) -> Score {
        let score = self.calibration().apply(raw);
        Score {
            raw,
            score,
            is_anomaly: score > self.threshold(),
        }
    }

    /// The `k` features that contributed most to a row's score, largest first.
    fn explain(&self, row: &[f64], k: usize) -> Result<Vec<Contribution>> {
        Ok(top_k(&self.contributions(row)?, k))
    }

    /// Scores a row against the current state, then learns from it (prequential).
    fn update_and_score(&mut self, row: &[f64]) -> Result<Score> {
        let s = self.score(row)?;
        self.learn(row)?;
        Ok(s)
    }
}

/// The `k` largest contributions, largest first (ties by feature index).
pub fn top_k(contributions: &[f64], k: usize) -> Vec<Contribution> {
    let mut all: Vec<Contribution> = contributions
        .iter()
        .enumerate()
        .map(|(feature, &weight)| Contribution { feature, weight })
        .collect();
    all.sort_by(|a, b| {
        b.weight
            .total_cmp(&a.weight)
            .then(a.feature.cmp(&b.feature))
    });
    all.truncate(k);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_calibration_maps_quantile_to_half_and_median_to_a_tenth() {
        let raw: Vec<f64> = (0..1001).map(|i| i as f64 / 1000.0).collect();
        let c = fit_calibration(&raw, 0.1).unwrap();
        assert!((c.apply(0.9) - 0.5).abs() < 1e-9);
        assert!((c.apply(0.5) - 0.1).abs() < 1e-9);
        assert!((c.invert(0.5) - 0.9).abs() < 1e-9);
    }

    #[test]
    fn calibration_is_strictly_increasing_and_bounded() {
        let raw: Vec<f64> = (0..100).map(|i| (i as f64).sqrt()).collect();
        let c = fit_calibration(&raw, 0.05).unwrap();
        let mut prev = -1.0;
        for i in 0..200 {
            let p = c.apply(i as f64 * 0.1 - 2.0);
            assert!(p > prev && (0.0..=1.0).contains(&p));
            prev = p;
        }
    }

    #[test]
    fn calibration_of_constant_scores_still_works() {
        let c = fit_calibration(&[0.3; 10], 0.1).unwrap();
        assert!((c.apply(0.3) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn calibration_rejects_bad_contamination() {
        assert!(fit_calibration(&[0.1, 0.2], 0.0).is_err());
        assert!(fit_calibration(&[0.1, 0.2], 0.7).is_err());
        assert!(fit_calibration(&[], 0.1).is_err());
    }

    #[test]
    fn top_k_orders_by_weight_then_feature() {
        let t = top_k(&[0.1, 0.5, 0.5, 0.2], 3);
        assert_eq!(
            t.iter().map(|c| c.feature).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn check_batch_names_the_problem() {
        assert!(matches!(
            check_batch(&[1.0, 2.0, 3.0], 2),
            Err(ModelError::Dimension { .. })
        ));
        assert!(matches!(
            check_batch(&[1.0, f64::NAN], 2),
            Err(ModelError::NonFinite { feature: 1 })
        ));
        assert_eq!(check_batch(&[1.0, 2.0, 3.0, 4.0], 2).unwrap(), 2);
    }
}
