//! A serialisable standard scaler, fitted with linfa-preprocessing.
//!
//! linfa-preprocessing's `LinearScaler` does the fitting; its offsets and
//! scales are copied into [`StandardScaler`] (a plain data type of `sad-common`) so that they travel in a model
//! manifest and apply to plain `&[f64]` rows without ndarray on the hot path.

use linfa::prelude::*;
use linfa_preprocessing::linear_scaling::LinearScaler;
use ndarray::Array2;

use crate::error::{ModelError, Result};

pub use sad_common::StandardScaler;

/// Fits a [`StandardScaler`] on row-major data with `n_features` columns.
pub fn fit_standard_scaler(rows: &[f64], n_features: usize) -> Result<StandardScaler> {
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
    Ok(StandardScaler { mean, scale })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_columns_have_zero_mean_and_unit_variance() {
        let rows: Vec<f64> = (0..200)
            .flat_map(|i| [i as f64, 5.0, (i % 7) as f64 * 3.0])
            .collect();
        let s = fit_standard_scaler(&rows, 3).unwrap();
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
