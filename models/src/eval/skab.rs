//! The SKAB leaderboard protocol (waico/SKAB, binary "outlier detection" task).
//!
//! For each file, the first [`SKAB_TRAIN_ROWS`] rows (400) train the detector
//! and every later row is a test point. The test points of **all** files are
//! then pooled: the confusion counts of the files are summed (not averaged
//! per file) and F1, false-alarm rate FP / (FP + TN) and missed-alarm rate
//! FN / (FN + TP) are computed once on the sums. Ground truth is the
//! `anomaly` column of each test row; the `changepoint` column is not used.
//! The anomaly-free recording is not part of the pooled test.
//!
//! The leaderboard reports FAR and MAR in percent; these functions return
//! fractions in `[0, 1]`.

use crate::data::SkabFile;
use crate::error::{ModelError, Result};
use crate::eval::metrics::BinaryCounts;

/// Rows at the start of each SKAB file that train the detector.
pub const SKAB_TRAIN_ROWS: usize = 400;

/// One SKAB file cut into its training and test parts (borrowed).
#[derive(Debug, Clone, Copy)]
pub struct SkabSplit<'a> {
    /// Features per row.
    pub n_features: usize,
    /// Row-major features of the first 400 rows.
    pub train: &'a [f64],
    /// Row-major features of the remaining rows.
    pub test: &'a [f64],
    /// `anomaly` labels of the test rows.
    pub test_labels: &'a [bool],
}

impl SkabSplit<'_> {
    /// Number of test rows.
    pub fn n_test(&self) -> usize {
        self.test_labels.len()
    }
}

/// Splits a file into its first 400 rows (train) and the rest (test).
///
/// Errors when the file has no test rows (400 rows or fewer) or carries no
/// labels.
pub fn split(file: &SkabFile) -> Result<SkabSplit<'_>> {
    let n = file.n_rows();
    if !file.labelled {
        return Err(ModelError::Invalid(format!(
            "{}: skab protocol needs the anomaly column",
            file.name
        )));
    }
    if n <= SKAB_TRAIN_ROWS || file.x.len() != n * file.n_features || file.anomaly.len() != n {
        return Err(ModelError::Invalid(format!(
            "{}: skab protocol needs more than {SKAB_TRAIN_ROWS} consistent rows, got {n}",
            file.name
        )));
    }
    let cut = SKAB_TRAIN_ROWS * file.n_features;
    Ok(SkabSplit {
        n_features: file.n_features,
        train: &file.x[..cut],
        test: &file.x[cut..],
        test_labels: &file.anomaly[SKAB_TRAIN_ROWS..],
    })
}

/// Pools per-file predictions of the test rows: `predicted[k]` holds one
/// label per test row of `files[k]` (rows 400.. in file order).
pub fn pooled_counts(files: &[SkabFile], predicted: &[Vec<bool>]) -> Result<BinaryCounts> {
    if files.len() != predicted.len() {
        return Err(ModelError::Invalid(format!(
            "got predictions for {} files but {} files",
            predicted.len(),
            files.len()
        )));
    }
    let mut pooled = BinaryCounts::default();
    for (file, pred) in files.iter().zip(predicted) {
        let s = split(file)?;
        let counts = BinaryCounts::from_predictions(pred, s.test_labels)
            .map_err(|e| ModelError::Invalid(format!("{}: {e}", file.name)))?;
        pooled.add(&counts);
    }
    Ok(pooled)
}

/// Pools per-file test scores thresholded with `score > threshold` (the
/// project's decision rule); `scores[k]` has one score per test row of `files[k]`.
pub fn pooled_counts_from_scores(
    files: &[SkabFile],
    scores: &[Vec<f64>],
    threshold: f64,
) -> Result<BinaryCounts> {
    if scores.iter().flatten().any(|s| !s.is_finite()) {
        return Err(ModelError::Invalid("skab scores must be finite".into()));
    }
    let predicted: Vec<Vec<bool>> = scores
        .iter()
        .map(|s| s.iter().map(|&v| v > threshold).collect())
        .collect();
    pooled_counts(files, &predicted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, anomaly_rows: std::ops::Range<usize>, n: usize) -> SkabFile {
        SkabFile {
            name: name.into(),
            timestamps: (0..n as i64).collect(),
            feature_names: vec!["a".into(), "b".into()],
            n_features: 2,
            x: (0..2 * n).map(|v| v as f64).collect(),
            anomaly: (0..n).map(|i| anomaly_rows.contains(&i)).collect(),
            changepoint: vec![false; n],
            labelled: true,
        }
    }

    #[test]
    fn split_keeps_the_first_400_rows_for_training() {
        let f = file("valve1/0.csv", 450..460, 500);
        let s = split(&f).unwrap();
        assert_eq!(s.train.len(), 800);
        assert_eq!(s.test.len(), 200);
        assert_eq!(s.test[0], 800.0);
        assert_eq!(s.n_test(), 100);
        assert!(s.test_labels[50] && !s.test_labels[49]);
    }

    #[test]
    fn split_rejects_files_without_test_rows() {
        assert!(split(&file("short.csv", 0..0, 400)).is_err());
    }

    #[test]
    fn pooled_counts_sum_test_rows_of_all_files_and_ignore_training_rows() {
        // File A: anomalies at rows 0..10 (training, ignored) and 410..420.
        let mut a = file("a", 410..420, 500);
        for i in 0..10 {
            a.anomaly[i] = true;
        }
        // File B: anomalies at 400..450.
        let b = file("b", 400..450, 450);
        // A predicts rows 405..415 -> TP 5 (410..415), FP 5 (405..410), FN 5, TN 85.
        let pa: Vec<bool> = (400..500).map(|i| (405..415).contains(&i)).collect();
        // B predicts nothing -> FN 50.
        let pb = vec![false; 50];
        let c = pooled_counts(&[a.clone(), b.clone()], &[pa, pb]).unwrap();
        assert_eq!(
            c,
            BinaryCounts {
                tp: 5,
                fp: 5,
                tn: 85,
                fn_: 55
            }
        );
        // F1 = 10 / (10 + 5 + 55).
        assert!((c.f1() - 10.0 / 70.0).abs() < 1e-12);
        assert!(pooled_counts(&[a.clone(), b.clone()], &[vec![false; 100]]).is_err());
        assert!(pooled_counts(&[a, b], &[vec![false; 100], vec![false; 49]]).is_err());
    }

    #[test]
    fn pooled_counts_from_scores_threshold_strictly() {
        let a = file("a", 400..401, 402);
        let c = pooled_counts_from_scores(&[a], &[vec![0.5, 0.4]], 0.5).unwrap();
        assert_eq!((c.tp, c.fn_, c.tn), (0, 1, 1));
    }
}
