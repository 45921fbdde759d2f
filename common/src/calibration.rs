//! Score calibration and feature scaling parameters carried in model manifests.
//!
//! These are plain data with the arithmetic to apply them; fitting them is
//! the models crate's job.

use serde::{Deserialize, Serialize};

/// Strictly increasing map from raw scores to `[0, 1]`, stored with the model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Calibration {
    /// The raw score is already a probability-like number; it is clamped to `[0, 1]`.
    Identity,
    /// `1 / (1 + exp(-(raw - center) / scale))`: `center` maps to 0.5.
    Logistic {
        /// Raw score that maps to 0.5 (the raw decision boundary).
        center: f64,
        /// Spread of the logistic curve in raw units (> 0).
        scale: f64,
    },
}

impl Calibration {
    /// Maps a raw score to `[0, 1]`.
    #[inline]
    pub fn apply(&self, raw: f64) -> f64 {
        match *self {
            Calibration::Identity => raw.clamp(0.0, 1.0),
            Calibration::Logistic { center, scale } => {
                1.0 / (1.0 + (-(raw - center) / scale).exp())
            }
        }
    }

    /// The raw score that maps to calibrated score `p` (clamped to `(0, 1)`).
    pub fn invert(&self, p: f64) -> f64 {
        match *self {
            Calibration::Identity => p.clamp(0.0, 1.0),
            Calibration::Logistic { center, scale } => {
                let p = p.clamp(1e-12, 1.0 - 1e-12);
                center - scale * (1.0 / p - 1.0).ln()
            }
        }
    }

    /// Whether the parameters are usable (finite, positive scale).
    pub fn is_valid(&self) -> bool {
        match *self {
            Calibration::Identity => true,
            Calibration::Logistic { center, scale } => {
                center.is_finite() && scale.is_finite() && scale > 0.0
            }
        }
    }
}

/// `(x - mean) / scale` per feature; fitted by the models crate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StandardScaler {
    /// Per-feature mean subtracted first.
    pub mean: Vec<f64>,
    /// Per-feature divisor (standard deviation, or 1 for constant features).
    pub scale: Vec<f64>,
}

impl StandardScaler {
    /// Number of features.
    pub fn n_features(&self) -> usize {
        self.mean.len()
    }

    /// Whether both vectors have the same length and every divisor is finite and positive.
    pub fn is_valid(&self) -> bool {
        self.mean.len() == self.scale.len()
            && self.mean.iter().all(|m| m.is_finite())
            && self.scale.iter().all(|s| s.is_finite() && *s > 0.0)
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
    fn logistic_inverts_its_own_output() {
        let c = Calibration::Logistic {
            center: 0.6,
            scale: 0.05,
        };
        for p in [0.01, 0.3, 0.5, 0.9, 0.999] {
            assert!((c.apply(c.invert(p)) - p).abs() < 1e-9);
        }
        assert_eq!(c.apply(0.6), 0.5);
    }

    #[test]
    fn invalid_parameters_are_reported() {
        assert!(
            !Calibration::Logistic {
                center: 0.0,
                scale: 0.0
            }
            .is_valid()
        );
        assert!(
            !StandardScaler {
                mean: vec![0.0],
                scale: vec![]
            }
            .is_valid()
        );
        assert!(
            StandardScaler {
                mean: vec![0.0],
                scale: vec![2.0]
            }
            .is_valid()
        );
    }
}
