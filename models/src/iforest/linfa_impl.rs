//! linfa integration: fit from a `Dataset`, predict scikit-learn scores.

use linfa::DatasetBase;
use linfa::traits::{Fit, PredictInplace};
use ndarray::{Array1, Array2};

use super::{IsolationForest, IsolationForestParams};
use crate::error::{ModelError, Result};

impl<T> Fit<Array2<f64>, T, ModelError> for IsolationForestParams {
    type Object = IsolationForest;

    /// Fits on the dataset's records; targets are ignored (unsupervised).
    fn fit(&self, dataset: &DatasetBase<Array2<f64>, T>) -> Result<IsolationForest> {
        let records = dataset.records();
        let n_features = records.ncols();
        let standard = records.as_standard_layout();
        let rows = standard
            .as_slice()
            .ok_or_else(|| ModelError::Invalid("records are not contiguous".into()))?;
        IsolationForestParams::fit(self, rows, n_features)
    }
}

/// Predicts scikit-learn's `score_samples` (negative, lower is more abnormal),
/// the quantity linfa users would rank by; use [`IsolationForest::predict`]
/// for labels.
///
/// linfa's trait cannot return errors: rows with the wrong width or a
/// non-finite value get `NaN`, as does every row when the target length
/// differs from the number of records.
impl PredictInplace<Array2<f64>, Array1<f64>> for IsolationForest {
    fn predict_inplace(&self, x: &Array2<f64>, y: &mut Array1<f64>) {
        if y.len() != x.nrows() || x.ncols() != self.n_features() {
            y.fill(f64::NAN);
            return;
        }
        let standard = x.as_standard_layout();
        let scored = standard.as_slice().map(|rows| self.score_samples(rows));
        match scored {
            Some(Ok(scores)) => {
                for (t, s) in y.iter_mut().zip(scores) {
                    *t = s;
                }
            }
            _ => {
                for (t, row) in y.iter_mut().zip(x.rows()) {
                    let row: Vec<f64> = row.to_vec();
                    *t = self.score_one(&row).unwrap_or(f64::NAN);
                }
            }
        }
    }

    fn default_target(&self, x: &Array2<f64>) -> Array1<f64> {
        Array1::zeros(x.nrows())
    }
}
