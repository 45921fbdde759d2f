//! EWMA z-score: per-feature exponentially weighted mean and variance.
//!
//! For each feature the detector keeps an exponentially weighted moving
//! average and variance, updated with Finch's incremental formulas
//! ("Incremental calculation of weighted mean and variance", 2009):
//!
//! ```text
//! diff = x - mean;  incr = a * diff;  mean += incr;  var = (1 - a) * (var + diff * incr)
//! ```
//!
//! with `a = max(alpha, 1 / n)` for the `n`-th event, so the first `1 / alpha`
//! events use the plain running mean and population variance (no start-up
//! bias towards the first value) and later events forget with weight `alpha`.
//!
//! An event's per-feature z-score is `z_f = |x_f - mean_f| / sqrt(var_f + eps)`
//! against the state *before* the event; the raw score is `max_f z_f` and the
//! contributions are the `z_f`. During the first [`EwmaParams::warmup`] events
//! the raw score, the score and the contributions are 0 and nothing is flagged.
//!
//! Calibration is logistic, centred at [`EwmaParams::z_threshold`] with scale
//! [`EWMA_CALIBRATION_SCALE`] (0.5): `z_threshold` maps to 0.5, one standard
//! deviation above it to 0.88 and one below to 0.12. The default threshold
//! 0.5 therefore flags exactly the events with `max_f z_f > z_threshold`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{decode_state, encode_state, sanitize_threshold};
use crate::detector::{Calibration, Detector, Score, check_batch, check_row};
use crate::error::{ModelError, Result};
use sad_common::ModelKind;

/// Spread of the logistic calibration in z units: `z_threshold ± 1` maps to 0.88 / 0.12.
pub const EWMA_CALIBRATION_SCALE: f64 = 0.5;

/// Default decision threshold in calibrated space: flags `max z > z_threshold`.
pub const EWMA_DEFAULT_THRESHOLD: f64 = 0.5;

/// Added to the variance before the square root so constant features do not divide by zero.
const VAR_EPS: f64 = 1e-12;

/// Format version byte of [`EwmaZScore::to_bytes`].
const STATE_VERSION: u8 = 1;

/// Parameters of [`EwmaZScore`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EwmaParams {
    /// Weight of the newest event in the moving mean and variance, in `(0, 1]` (default 0.05).
    pub alpha: f64,
    /// Events learned before scores are reported, at least 2 (default 30).
    pub warmup: usize,
    /// z-score that calibrates to 0.5, the default decision boundary (default 4.0).
    pub z_threshold: f64,
}

impl Default for EwmaParams {
    fn default() -> Self {
        Self {
            alpha: 0.05,
            warmup: 30,
            z_threshold: 4.0,
        }
    }
}

impl EwmaParams {
    /// Checks every parameter, naming the first invalid one.
    pub fn validate(&self) -> Result<()> {
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(ModelError::Invalid(format!(
                "alpha must be in (0, 1], got {}",
                self.alpha
            )));
        }
        if self.warmup < 2 {
            return Err(ModelError::Invalid(format!(
                "warmup must be at least 2 events, got {}",
                self.warmup
            )));
        }
        if !(self.z_threshold.is_finite() && self.z_threshold > 0.0) {
            return Err(ModelError::Invalid(format!(
                "z_threshold must be finite and positive, got {}",
                self.z_threshold
            )));
        }
        Ok(())
    }
}

/// The persisted learning state of [`EwmaZScore`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct EwmaState {
    params: EwmaParams,
    /// Events learned so far.
    n_seen: u64,
    mean: Vec<f64>,
    var: Vec<f64>,
    threshold: f64,
}

/// Streaming per-feature EWMA z-score detector.
#[derive(Debug, Clone, PartialEq)]
pub struct EwmaZScore {
    state: EwmaState,
    calibration: Calibration,
}

impl EwmaZScore {
    /// A fresh detector for rows of `n_features` values.
    pub fn new(params: EwmaParams, n_features: usize) -> Result<Self> {
        params.validate()?;
        if n_features == 0 {
            return Err(ModelError::Invalid(
                "n_features must be at least 1, got 0".into(),
            ));
        }
        Self::from_state(EwmaState {
            params,
            n_seen: 0,
            mean: vec![0.0; n_features],
            var: vec![0.0; n_features],
            threshold: EWMA_DEFAULT_THRESHOLD,
        })
    }

    fn from_state(state: EwmaState) -> Result<Self> {
        state.params.validate()?;
        let n = state.mean.len();
        if n == 0 || state.var.len() != n {
            return Err(ModelError::Invalid(format!(
                "ewma state has {} means and {} variances",
                n,
                state.var.len()
            )));
        }
        if state.mean.iter().any(|m| !m.is_finite())
            || state.var.iter().any(|v| !(v.is_finite() && *v >= 0.0))
        {
            return Err(ModelError::Invalid(
                "ewma state has a non-finite mean or a negative variance".into(),
            ));
        }
        if !(0.0..=1.0).contains(&state.threshold) {
            return Err(ModelError::Invalid(format!(
                "threshold must be in [0, 1], got {}",
                state.threshold
            )));
        }
        let calibration = Calibration::Logistic {
            center: state.params.z_threshold,
            scale: EWMA_CALIBRATION_SCALE,
        };
        Ok(Self { state, calibration })
    }

    /// The parameters the detector was built with.
    pub fn params(&self) -> &EwmaParams {
        &self.state.params
    }

    /// Sets the decision threshold (calibrated space); clamped to `[0, 1]`, NaN is ignored.
    pub fn with_threshold(mut self, t: f64) -> Self {
        self.state.threshold = sanitize_threshold(t, self.state.threshold);
        self
    }

    /// Whether warm-up is over, so scores are reported.
    pub fn is_warm(&self) -> bool {
        self.state.n_seen >= self.state.params.warmup as u64
    }

    /// Number of events learned so far.
    pub fn n_seen(&self) -> u64 {
        self.state.n_seen
    }

    /// The whole learning state: a version byte and its postcard encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_state(STATE_VERSION, &self.state)
    }

    /// Restores a detector saved by [`EwmaZScore::to_bytes`], validating every field.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_state(decode_state("ewma", STATE_VERSION, bytes)?)
    }

    /// z-score of feature `f` against the current state (row already checked).
    #[inline]
    fn z(&self, f: usize, x: f64) -> f64 {
        (x - self.state.mean[f]).abs() / (self.state.var[f] + VAR_EPS).sqrt()
    }

    /// Raw score of a checked row.
    #[inline]
    fn raw_checked(&self, row: &[f64]) -> f64 {
        if !self.is_warm() {
            return 0.0;
        }
        (0..row.len()).fold(0.0, |acc, f| acc.max(self.z(f, row[f])))
    }
}

impl Detector for EwmaZScore {
    fn kind(&self) -> ModelKind {
        ModelKind::Ewma
    }

    fn n_features(&self) -> usize {
        self.state.mean.len()
    }

    fn raw_score_batch(&self, rows: &[f64], out: &mut Vec<f64>) -> Result<()> {
        out.clear();
        let n = self.n_features();
        check_batch(rows, n)?;
        out.extend(rows.chunks_exact(n).map(|row| self.raw_checked(row)));
        Ok(())
    }

    fn raw_score(&self, row: &[f64]) -> Result<f64> {
        check_row(row, self.n_features())?;
        Ok(self.raw_checked(row))
    }

    fn contributions(&self, row: &[f64]) -> Result<Vec<f64>> {
        check_row(row, self.n_features())?;
        if !self.is_warm() {
            return Ok(vec![0.0; row.len()]);
        }
        Ok(row.iter().enumerate().map(|(f, &x)| self.z(f, x)).collect())
    }

    fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    fn threshold(&self) -> f64 {
        self.state.threshold
    }

    fn learn(&mut self, row: &[f64]) -> Result<()> {
        check_row(row, self.n_features())?;
        let s = &mut self.state;
        s.n_seen = s.n_seen.saturating_add(1);
        let a = s.params.alpha.max(1.0 / s.n_seen as f64);
        for ((&x, mean), var) in row.iter().zip(&mut s.mean).zip(&mut s.var) {
            let diff = x - *mean;
            let incr = a * diff;
            let new_mean = *mean + incr;
            let new_var = (1.0 - a) * (*var + diff * incr);
            // Finite inputs can still overflow (|x| near f64::MAX); keep the
            // state finite so it stays serialisable and restorable.
            if new_mean.is_finite() && new_var.is_finite() {
                *mean = new_mean;
                *var = new_var;
            }
        }
        Ok(())
    }

    fn is_streaming(&self) -> bool {
        true
    }

    /// Calibrated score; during warm-up the score is exactly 0 and nothing is flagged.
    fn finish(&self, raw: f64) -> Score {
        if !self.is_warm() {
            return Score {
                raw: 0.0,
                score: 0.0,
                is_anomaly: false,
            };
        }
        let score = self.calibration.apply(raw);
        Score {
            raw,
            score,
            is_anomaly: score > self.state.threshold,
        }
    }
}

impl Serialize for EwmaZScore {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.state.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for EwmaZScore {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let state = EwmaState::deserialize(deserializer)?;
        Self::from_state(state).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `n` rows of `n_features` noisy sines with different phases.
    fn noisy_sines(n: usize, n_features: usize, seed: u64) -> Vec<Vec<f64>> {
        super::super::test_support::noisy_sines(n, n_features, 0.2, seed)
    }

    fn run(det: &mut EwmaZScore, rows: &[Vec<f64>]) -> Vec<Score> {
        super::super::test_support::run(det, rows)
    }

    #[test]
    fn saving_mid_stream_and_restoring_continues_with_identical_scores() {
        let rows = noisy_sines(300, 3, 1);
        let mut whole = EwmaZScore::new(EwmaParams::default(), 3).unwrap();
        let expected = run(&mut whole, &rows);

        let mut first = EwmaZScore::new(EwmaParams::default(), 3)
            .unwrap()
            .with_threshold(0.7);
        let mut got = run(&mut first, &rows[..137]);
        let bytes = first.to_bytes();
        drop(first);
        let mut restored = EwmaZScore::from_bytes(&bytes).unwrap();
        assert_eq!(restored.threshold(), 0.7);
        restored = restored.with_threshold(EWMA_DEFAULT_THRESHOLD);
        got.extend(run(&mut restored, &rows[137..]));
        assert_eq!(got, expected);
        assert_eq!(restored.n_seen(), 300);
    }

    #[test]
    fn serde_serialisation_carries_the_same_state_as_to_bytes() {
        let mut det = EwmaZScore::new(EwmaParams::default(), 2).unwrap();
        run(&mut det, &noisy_sines(50, 2, 3));
        let bytes = postcard::to_allocvec(&det).unwrap();
        assert_eq!(bytes[..], det.to_bytes()[1..]);
        let back: EwmaZScore = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, det);
        let json = serde_json::to_string(&det).unwrap();
        assert!(serde_json::from_str::<EwmaZScore>(&json).is_ok());
    }

    #[test]
    fn nothing_is_scored_or_flagged_during_warm_up() {
        let params = EwmaParams::default();
        let mut det = EwmaZScore::new(params, 1).unwrap();
        for i in 0..params.warmup {
            // Wildly varying values that would be flagged after warm-up.
            let x = if i % 2 == 0 { 1e6 } else { -1e6 * i as f64 };
            assert_eq!(det.contributions(&[x]).unwrap(), vec![0.0]);
            let s = det.update_and_score(&[x]).unwrap();
            assert_eq!(s.score, 0.0, "event {i}");
            assert!(!s.is_anomaly);
        }
        assert!(det.is_warm());
        assert!(det.score(&[1e9]).unwrap().is_anomaly);
    }

    #[test]
    fn a_spike_in_a_noisy_sine_scores_above_every_normal_point_and_is_flagged() {
        let mut rows = noisy_sines(400, 1, 7);
        rows[300][0] += 5.0;
        let mut det = EwmaZScore::new(EwmaParams::default(), 1).unwrap();
        let scores = run(&mut det, &rows);
        let normal_max = scores[100..300].iter().map(|s| s.score).fold(0.0, f64::max);
        assert!(
            scores[300].score > normal_max,
            "{} vs {normal_max}",
            scores[300].score
        );
        assert!(scores[300].is_anomaly);
        assert!(scores[100..300].iter().all(|s| !s.is_anomaly));
    }

    #[test]
    fn a_level_shift_is_scored_above_the_preceding_normal_points() {
        let mut rows = noisy_sines(400, 1, 8);
        for r in &mut rows[300..] {
            r[0] += 6.0;
        }
        let mut det = EwmaZScore::new(EwmaParams::default(), 1).unwrap();
        let scores = run(&mut det, &rows);
        let normal_max = scores[100..300].iter().map(|s| s.score).fold(0.0, f64::max);
        assert!(scores[300].score > normal_max);
        assert!(scores[300].is_anomaly);
    }

    #[test]
    fn contributions_point_at_the_spiking_feature() {
        let mut det = EwmaZScore::new(EwmaParams::default(), 4).unwrap();
        run(&mut det, &noisy_sines(200, 4, 11));
        let mut row = noisy_sines(201, 4, 11).pop().unwrap();
        row[2] += 8.0;
        let top = det.explain(&row, 4).unwrap();
        assert_eq!(top[0].feature, 2);
        assert_eq!(det.raw_score(&row).unwrap(), top[0].weight);
    }

    #[test]
    fn scores_stay_in_the_unit_interval_even_for_extreme_values() {
        let mut det = EwmaZScore::new(EwmaParams::default(), 2).unwrap();
        run(&mut det, &noisy_sines(100, 2, 5));
        for row in [
            [0.0, 0.0],
            [1e300, -1e300],
            [f64::MAX, f64::MIN],
            [1.0, -1.0],
        ] {
            let s = det.update_and_score(&row).unwrap();
            assert!((0.0..=1.0).contains(&s.score), "{s:?}");
        }
        // The state stayed finite and restorable after the extremes.
        assert!(EwmaZScore::from_bytes(&det.to_bytes()).is_ok());
    }

    #[test]
    fn bad_rows_are_errors_and_leave_the_state_unchanged() {
        let mut det = EwmaZScore::new(EwmaParams::default(), 2).unwrap();
        run(&mut det, &noisy_sines(40, 2, 2));
        let before = det.clone();
        assert!(matches!(
            det.update_and_score(&[1.0]),
            Err(ModelError::Dimension {
                expected: 2,
                got: 1
            })
        ));
        assert!(matches!(
            det.update_and_score(&[1.0, f64::NAN]),
            Err(ModelError::NonFinite { feature: 1 })
        ));
        assert!(det.learn(&[f64::INFINITY, 0.0]).is_err());
        assert!(det.score_batch(&[1.0, 2.0, 3.0]).is_err());
        assert_eq!(det, before);
    }

    #[test]
    fn invalid_parameters_are_rejected_by_name() {
        let bad = |p: EwmaParams, n: usize, name: &str| {
            let e = EwmaZScore::new(p, n).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        };
        let d = EwmaParams::default();
        bad(EwmaParams { alpha: 0.0, ..d }, 1, "alpha");
        bad(EwmaParams { alpha: 1.5, ..d }, 1, "alpha");
        bad(
            EwmaParams {
                alpha: f64::NAN,
                ..d
            },
            1,
            "alpha",
        );
        bad(EwmaParams { warmup: 1, ..d }, 1, "warmup");
        bad(
            EwmaParams {
                z_threshold: -1.0,
                ..d
            },
            1,
            "z_threshold",
        );
        bad(d, 0, "n_features");
        assert!(EwmaZScore::new(EwmaParams { alpha: 1.0, ..d }, 1).is_ok());
    }

    #[test]
    fn the_detector_reports_its_kind_and_calibration() {
        let det = EwmaZScore::new(EwmaParams::default(), 1).unwrap();
        assert_eq!(det.kind(), ModelKind::Ewma);
        assert!(det.is_streaming());
        assert_eq!(det.calibration().apply(4.0), 0.5);
        assert_eq!(det.threshold(), EWMA_DEFAULT_THRESHOLD);
    }

    #[test]
    fn early_events_use_the_exact_running_mean_and_variance() {
        let mut det = EwmaZScore::new(EwmaParams::default(), 1).unwrap();
        for x in [1.0, 2.0, 3.0, 4.0] {
            det.learn(&[x]).unwrap();
        }
        assert!((det.state.mean[0] - 2.5).abs() < 1e-12);
        assert!((det.state.var[0] - 1.25).abs() < 1e-12);
    }

    #[test]
    fn a_foreign_version_byte_is_rejected() {
        let mut bytes = EwmaZScore::new(EwmaParams::default(), 1)
            .unwrap()
            .to_bytes();
        bytes[0] = 99;
        let e = EwmaZScore::from_bytes(&bytes).unwrap_err().to_string();
        assert!(e.contains("version"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn decoding_truncated_state_errs_without_panicking(cut in 0usize..1000) {
            let mut det = EwmaZScore::new(EwmaParams::default(), 3).unwrap();
            run(&mut det, &noisy_sines(40, 3, 4));
            let bytes = det.to_bytes();
            let cut = cut % bytes.len();
            prop_assert!(EwmaZScore::from_bytes(&bytes[..cut]).is_err());
        }

        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            // Random bytes may by chance decode into a valid state; it must then be usable.
            if let Ok(det) = EwmaZScore::from_bytes(&bytes) {
                let row = vec![0.0; det.n_features()];
                prop_assert!(det.score(&row).is_ok());
            }
        }

        #[test]
        fn decoding_corrupted_state_never_panics(pos in 0usize..1000, byte in any::<u8>()) {
            let mut det = EwmaZScore::new(EwmaParams::default(), 2).unwrap();
            run(&mut det, &noisy_sines(40, 2, 4));
            let mut bytes = det.to_bytes();
            let pos = pos % bytes.len();
            bytes[pos] = byte;
            if let Ok(det) = EwmaZScore::from_bytes(&bytes) {
                prop_assert!(det.score(&[0.0, 0.0]).is_ok());
            }
        }
    }
}
