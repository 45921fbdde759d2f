//! Feature extraction for univariate series.
//!
//! Isolation Forest and Half-Space Trees score vectors, not points in time.
//! [`SeriesFeaturizer`] turns a univariate stream into one small vector per
//! point, online and in O(1) per point, so the same code serves a replayed
//! benchmark series and a live sensor:
//!
//! | feature | meaning |
//! |---|---|
//! | `value` | the reading itself |
//! | `diff` | change since the previous reading |
//! | `dev` | distance from the mean of the previous `window` readings |
//! | `std` | standard deviation of the previous `window` readings |
//!
//! Until `window` readings have been seen the window statistics cover what
//! there is (the first point has `diff = dev = std = 0`).

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Names of the features [`SeriesFeaturizer`] emits, in order.
pub const SERIES_FEATURE_NAMES: [&str; 4] = ["value", "diff", "dev", "std"];

/// Online featuriser of one univariate series; serialisable with the series' state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesFeaturizer {
    window: usize,
    recent: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
}

impl SeriesFeaturizer {
    /// A featuriser whose window statistics cover the last `window` readings (at least 2).
    pub fn new(window: usize) -> Self {
        let window = window.max(2);
        Self {
            window,
            recent: VecDeque::with_capacity(window),
            sum: 0.0,
            sum_sq: 0.0,
        }
    }

    /// Number of features per point.
    pub const fn n_features(&self) -> usize {
        SERIES_FEATURE_NAMES.len()
    }

    /// Features of the next reading; updates the window afterwards.
    pub fn push(&mut self, x: f64) -> [f64; 4] {
        let n = self.recent.len();
        let feats = if n == 0 {
            [x, 0.0, 0.0, 0.0]
        } else {
            let mean = self.sum / n as f64;
            let var = (self.sum_sq / n as f64 - mean * mean).max(0.0);
            let prev = self.recent.back().copied().unwrap_or(x);
            [x, x - prev, x - mean, var.sqrt()]
        };
        if n == self.window
            && let Some(old) = self.recent.pop_front()
        {
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        self.recent.push_back(x);
        self.sum += x;
        self.sum_sq += x * x;
        feats
    }

    /// Row-major features of a whole series (one row per reading).
    pub fn featurize(window: usize, values: &[f64]) -> Vec<f64> {
        let mut f = Self::new(window);
        let mut out = Vec::with_capacity(values.len() * 4);
        for &v in values {
            out.extend_from_slice(&f.push(v));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_of_a_step_show_the_jump_in_diff_and_dev() {
        let mut values = vec![1.0; 20];
        values.push(11.0);
        let rows = SeriesFeaturizer::featurize(5, &values);
        let last = &rows[rows.len() - 4..];
        assert_eq!(last, &[11.0, 10.0, 10.0, 0.0]);
        assert_eq!(&rows[..4], &[1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn window_statistics_cover_only_the_last_readings() {
        let values: Vec<f64> = (0..10).map(f64::from).collect();
        let rows = SeriesFeaturizer::featurize(3, &values);
        // at index 9 the window holds 6, 7, 8: mean 7, population std sqrt(2/3)
        let r = &rows[9 * 4..];
        assert!((r[2] - 2.0).abs() < 1e-12);
        assert!((r[3] - (2.0f64 / 3.0).sqrt()).abs() < 1e-9);
    }
}
