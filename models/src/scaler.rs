//! A serialisable standard scaler, fitted with linfa-preprocessing.
//!
//! linfa-preprocessing's `LinearScaler` does the fitting; its offsets and
//! scales are copied into [`StandardScaler`] so that they travel in a model
//! manifest and apply to plain `&[f64]` rows without ndarray on the hot path.

use linfa::prelude::*;
use linfa_preprocessing::linear_scaling::LinearScaler;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// `(x - mean) / scale` per feature; a zero-variance feature keeps scale 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StandardScaler {
    /// Per-feature mean subtracted first.
    pub mean: Vec<f64>,
    /// Per-feature divisor (standard deviation, or 1 for constant features).
    pub scale: Vec<f64>,
}

impl StandardScaler {
    /// Fits on row-major data with `n_features` columns.
    pub fn fit(rows: &[f64], n_features: usize) -> Result<Self> {
        let n = crate::detector::check_batch(rows, n_features)?;
        if n < 2 {
            return Err(ModelError::Invalid("scaler needs at least two rows".into()));
        }
        let x = Array2::from_shape_vec((n, n_features), rows.to_vec())
            .map_err(|e| ModelError::Invalid(e.to_string()))?;
        let ds = DatasetBase::from(x);
        let fitted = LinearScaler::standard()
            .fit(&ds)
            .map_err(|e| ModelError::Invalid(format!("fit scaler: {e}")))?;
        let mean = fitted.offsets().to_vec();
        // linfa stores multiplicative scales (1/std, or 0 for constant columns).
        let scale = fitted
            .scales()
            .iter()
            .map(|&s| {
                if s.is_finite() && s > 0.0 {
                    1.0 / s
                } else {
                    1.0
                }
            })
            .collect();
        Ok(Self { mean, scale })
    }

    /// Number of features.
    pub fn n_features(&self) -> usize {
        self.mean.len()
    }

    /// Scales a row in place.
    #[inline]
    pub fn transform_in_place(&self, row: &mut [f64]) {
        for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
            *x = (*x - m) / s;
        }
    }

    /// Scales a row-major batch into a new vector.
    pub fn transform(&self, rows: &[f64]) -> Vec<f64> {
        let mut out = rows.to_vec();
        for row in out.chunks_exact_mut(self.n_features().max(1)) {
            self.transform_in_place(row);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_columns_have_zero_mean_and_unit_variance() {
        let rows: Vec<f64> = (0..200)
            .flat_map(|i| [i as f64, 5.0, (i % 7) as f64 * 3.0])
            .collect();
        let s = StandardScaler::fit(&rows, 3).unwrap();
        let t = s.transform(&rows);
        for c in [0, 2] {
            let col: Vec<f64> = t.chunks(3).map(|r| r[c]).collect();
            let mean = col.iter().sum::<f64>() / col.len() as f64;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / col.len() as f64;
            assert!(mean.abs() < 1e-9, "mean {mean}");
            assert!((var.sqrt() - 1.0).abs() < 0.01, "std {}", var.sqrt());
        }
        // the constant column is centred, not blown up
        assert!(t.chunks(3).all(|r| r[1] == 0.0));
    }
}
