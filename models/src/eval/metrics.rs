//! Ranking and classification metrics with scikit-learn's definitions.
//!
//! - [`roc_auc`] is `sklearn.metrics.roc_auc_score` (binary), the trapezoid
//!   area under the ROC curve taken at every distinct score, so tied scores
//!   count one half, as in the Mann-Whitney U statistic.
//! - [`average_precision`] is `sklearn.metrics.average_precision_score`,
//!   `sum_n (R_n - R_{n-1}) P_n` over distinct score thresholds (tied scores
//!   form one step), no interpolation.
//! - [`BinaryCounts`] holds the confusion counts behind F1, precision, recall and
//!   the SKAB false-alarm and missed-alarm rates.
//!
//! Higher scores mean "more anomalous"; a label `true` marks an anomaly (the
//! positive class).

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

fn check_inputs(scores: &[f64], labels: &[bool]) -> Result<()> {
    if scores.len() != labels.len() {
        return Err(ModelError::Invalid(format!(
            "got {} scores but {} labels",
            scores.len(),
            labels.len()
        )));
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(ModelError::Invalid(format!(
            "score {i} is not finite: {}",
            scores[i]
        )));
    }
    Ok(())
}

/// Cumulative (true positives, false positives) at each distinct score,
/// from the highest score down: scikit-learn's `_binary_clf_curve`.
fn clf_curve(scores: &[f64], labels: &[bool]) -> Vec<(u64, u64)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut curve = Vec::new();
    let (mut tp, mut fp) = (0u64, 0u64);
    for (k, &i) in order.iter().enumerate() {
        if labels[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        // `==` (not total order) so that -0.0 and 0.0 tie, as in numpy.
        let last_of_group = order.get(k + 1).is_none_or(|&j| scores[j] != scores[i]);
        if last_of_group {
            curve.push((tp, fp));
        }
    }
    curve
}

/// Area under the ROC curve, as scikit-learn's `roc_auc_score` computes it
/// for binary labels (ties between a positive and a negative count one half).
///
/// Errors when the lengths differ, a score is not finite, or only one class
/// is present (the AUC is undefined then, scikit-learn raises too).
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Result<f64> {
    check_inputs(scores, labels)?;
    let pos = labels.iter().filter(|&&l| l).count() as u64;
    let neg = labels.len() as u64 - pos;
    if pos == 0 || neg == 0 {
        return Err(ModelError::Invalid(
            "roc-auc needs both anomalies and normal rows in the labels".into(),
        ));
    }
    // Twice the trapezoid area in (fp, tp) count units, exact in integers.
    let mut twice_area: u128 = 0;
    let (mut prev_tp, mut prev_fp) = (0u64, 0u64);
    for (tp, fp) in clf_curve(scores, labels) {
        twice_area += u128::from(fp - prev_fp) * u128::from(tp + prev_tp);
        (prev_tp, prev_fp) = (tp, fp);
    }
    Ok(twice_area as f64 / (2.0 * pos as f64 * neg as f64))
}

/// Average precision as scikit-learn's `average_precision_score`:
/// `sum_n (R_n - R_{n-1}) P_n`, one step per distinct score.
///
/// Errors when the lengths differ, a score is not finite, or there is no
/// anomaly in the labels (recall is undefined then).
pub fn average_precision(scores: &[f64], labels: &[bool]) -> Result<f64> {
    check_inputs(scores, labels)?;
    let pos = labels.iter().filter(|&&l| l).count() as u64;
    if pos == 0 {
        return Err(ModelError::Invalid(
            "average precision needs at least one anomaly in the labels".into(),
        ));
    }
    let mut ap = 0.0;
    let mut prev_tp = 0u64;
    for (tp, fp) in clf_curve(scores, labels) {
        if tp > prev_tp {
            let recall_step = (tp - prev_tp) as f64 / pos as f64;
            ap += recall_step * (tp as f64 / (tp + fp) as f64);
        }
        prev_tp = tp;
    }
    Ok(ap)
}

/// Confusion counts of binary predictions (positive = anomaly).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinaryCounts {
    /// Anomalies predicted as anomalies.
    pub tp: u64,
    /// Normal rows predicted as anomalies (false alarms).
    pub fp: u64,
    /// Normal rows predicted as normal.
    pub tn: u64,
    /// Anomalies predicted as normal (missed alarms).
    pub fn_: u64,
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

impl BinaryCounts {
    /// Counts predictions against labels; errors when the lengths differ.
    pub fn from_predictions(predicted: &[bool], labels: &[bool]) -> Result<Self> {
        if predicted.len() != labels.len() {
            return Err(ModelError::Invalid(format!(
                "got {} predictions but {} labels",
                predicted.len(),
                labels.len()
            )));
        }
        let mut c = BinaryCounts::default();
        for (&p, &l) in predicted.iter().zip(labels) {
            match (p, l) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        Ok(c)
    }

    /// Counts `score > threshold` (the project's decision rule) against labels.
    pub fn from_scores(scores: &[f64], labels: &[bool], threshold: f64) -> Result<Self> {
        check_inputs(scores, labels)?;
        let predicted: Vec<bool> = scores.iter().map(|&s| s > threshold).collect();
        Self::from_predictions(&predicted, labels)
    }

    /// Adds another set of counts to this one (pooling).
    pub fn add(&mut self, other: &BinaryCounts) {
        self.tp += other.tp;
        self.fp += other.fp;
        self.tn += other.tn;
        self.fn_ += other.fn_;
    }

    /// All counted rows.
    pub fn total(&self) -> u64 {
        self.tp + self.fp + self.tn + self.fn_
    }

    /// TP / (TP + FP); 0 when nothing was predicted positive (scikit-learn's
    /// `zero_division` default).
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    /// TP / (TP + FN); 0 when there are no anomalies.
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// F1 = 2 TP / (2 TP + FP + FN); 0 when that denominator is 0.
    pub fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    /// False-alarm rate FP / (FP + TN); 0 when there are no normal rows.
    pub fn false_alarm_rate(&self) -> f64 {
        ratio(self.fp, self.fp + self.tn)
    }

    /// Missed-alarm rate FN / (FN + TP); 0 when there are no anomalies.
    pub fn missed_alarm_rate(&self) -> f64 {
        ratio(self.fn_, self.fn_ + self.tp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(v: &[u8]) -> Vec<bool> {
        v.iter().map(|&b| b == 1).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    // Reference values from scikit-learn 1.9.1:
    // /opt/sad-venv/bin/python -c "from sklearn.metrics import roc_auc_score as r, average_precision_score as a;
    //   s=[0.1,0.4,0.35,0.8,0.4,0.4,0.9,0.1,0.55,0.2]; y=[0,0,1,1,1,0,1,0,0,1]; print(r(y,s), a(y,s))"
    // -> 0.68 0.7392857142857143
    #[test]
    fn roc_auc_and_average_precision_match_scikit_learn_with_ties() {
        let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4, 0.9, 0.1, 0.55, 0.2];
        let y = labels(&[0, 0, 1, 1, 1, 0, 1, 0, 0, 1]);
        assert!(close(roc_auc(&s, &y).unwrap(), 0.68));
        assert!(close(
            average_precision(&s, &y).unwrap(),
            0.7392857142857143
        ));
    }

    // s=[3,1,2,2,5,0,2,4]; y=[1,0,0,1,1,0,0,0] -> 0.7999999999999999 0.7222222222222222
    // (scikit-learn's trapezoid sum rounds; the exact area is 12/15 = 0.8)
    #[test]
    fn roc_auc_and_average_precision_match_scikit_learn_on_a_three_way_tie() {
        let s = [3.0, 1.0, 2.0, 2.0, 5.0, 0.0, 2.0, 4.0];
        let y = labels(&[1, 0, 0, 1, 1, 0, 0, 0]);
        assert!(close(roc_auc(&s, &y).unwrap(), 0.8));
        assert!(close(
            average_precision(&s, &y).unwrap(),
            0.7222222222222222
        ));
    }

    // s=[0.5]*6; y=[0,1,0,1,1,0] -> 0.5 0.5
    #[test]
    fn constant_scores_give_chance_auc_and_prevalence_ap() {
        let s = [0.5; 6];
        let y = labels(&[0, 1, 0, 1, 1, 0]);
        assert!(close(roc_auc(&s, &y).unwrap(), 0.5));
        assert!(close(average_precision(&s, &y).unwrap(), 0.5));
    }

    #[test]
    fn perfect_and_reversed_rankings_give_one_and_zero() {
        let y = labels(&[0, 0, 1, 1]);
        assert!(close(roc_auc(&[0.1, 0.2, 0.8, 0.9], &y).unwrap(), 1.0));
        assert!(close(roc_auc(&[0.9, 0.8, 0.2, 0.1], &y).unwrap(), 0.0));
        assert!(close(
            average_precision(&[0.1, 0.2, 0.8, 0.9], &y).unwrap(),
            1.0
        ));
    }

    #[test]
    fn one_class_mismatched_lengths_and_nan_are_errors() {
        assert!(roc_auc(&[0.1, 0.2], &[true, true]).is_err());
        assert!(roc_auc(&[0.1, 0.2], &[false, false]).is_err());
        assert!(average_precision(&[0.1, 0.2], &[false, false]).is_err());
        assert!(roc_auc(&[0.1], &[true, false]).is_err());
        assert!(roc_auc(&[0.1, f64::NAN], &[true, false]).is_err());
        assert!(BinaryCounts::from_predictions(&[true], &[true, false]).is_err());
    }

    // y=[1,0,0,1,1,0,0,0]; p=[1,0,1,1,0,0,1,0]:
    // f1_score -> 0.5714285714285714, precision_score -> 0.5, recall_score -> 0.6666666666666666
    #[test]
    fn binary_counts_match_scikit_learn_f1_precision_recall() {
        let y = labels(&[1, 0, 0, 1, 1, 0, 0, 0]);
        let p = labels(&[1, 0, 1, 1, 0, 0, 1, 0]);
        let c = BinaryCounts::from_predictions(&p, &y).unwrap();
        assert_eq!(
            c,
            BinaryCounts {
                tp: 2,
                fp: 2,
                tn: 3,
                fn_: 1
            }
        );
        assert!(close(c.f1(), 0.5714285714285714));
        assert!(close(c.precision(), 0.5));
        assert!(close(c.recall(), 0.6666666666666666));
        assert!(close(c.false_alarm_rate(), 2.0 / 5.0));
        assert!(close(c.missed_alarm_rate(), 1.0 / 3.0));
        assert_eq!(c.total(), 8);
    }

    #[test]
    fn counts_from_scores_use_strictly_greater_and_pool_by_adding() {
        let y = labels(&[1, 0, 1]);
        let c = BinaryCounts::from_scores(&[0.5, 0.5, 0.7], &y, 0.5).unwrap();
        assert_eq!((c.tp, c.fp, c.tn, c.fn_), (1, 0, 1, 1));
        let mut pooled = c;
        pooled.add(&c);
        assert_eq!((pooled.tp, pooled.fp, pooled.tn, pooled.fn_), (2, 0, 2, 2));
    }

    #[test]
    fn empty_denominators_give_zero_rates() {
        let c = BinaryCounts::default();
        assert_eq!(
            (c.f1(), c.precision(), c.recall(), c.false_alarm_rate()),
            (0.0, 0.0, 0.0, 0.0)
        );
    }
}
