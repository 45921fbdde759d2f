//! Building a forest from trees exported from scikit-learn.
//!
//! `scripts/sklearn_golden.py` writes this shape (one [`SklearnTree`] per
//! `estimators_[i].tree_`); [`IsolationForest::from_sklearn_export`] turns it
//! into our layout, which then scores exactly like scikit-learn.

use serde::{Deserialize, Serialize};

use super::fit::f32_floor;
use super::stored::{StoredForest, StoredNode};
use super::{Contamination, DEFAULT_THRESHOLD, IsolationForest};
use crate::detector::{Calibration, fit_calibration_at};
use crate::error::{ModelError, Result};

/// The arrays of one fitted `ExtraTreeRegressor.tree_`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SklearnTree {
    /// `tree_.feature` (negative for leaves), indices into this tree's feature sub-set.
    pub feature: Vec<i64>,
    /// `tree_.threshold` (ignored for leaves).
    pub threshold: Vec<f64>,
    /// `tree_.children_left` (`-1` for leaves).
    pub children_left: Vec<i64>,
    /// `tree_.children_right` (`-1` for leaves).
    pub children_right: Vec<i64>,
    /// `tree_.n_node_samples`.
    pub n_node_samples: Vec<i64>,
    /// `estimators_features_[i]` when the forest sub-samples features
    /// (`max_features_ < n_features`), else `None` (the tree sees all features).
    #[serde(default)]
    pub estimator_features: Option<Vec<usize>>,
}

/// A fitted scikit-learn `IsolationForest`, as exported by `scripts/sklearn_golden.py`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SklearnExport {
    /// `n_features_in_`.
    pub n_features: usize,
    /// `max_samples_`.
    pub max_samples: usize,
    /// `offset_`.
    pub offset: f64,
    /// `contamination` (`None` for `"auto"`).
    pub contamination: Option<f64>,
    /// `score_samples` of the training rows, used for the [`Calibration`];
    /// empty gives a calibration centred on `-offset_` with unit-free spread 0.1.
    #[serde(default)]
    pub train_score_samples: Vec<f64>,
    /// The trees in `estimators_` order.
    pub trees: Vec<SklearnTree>,
}

fn bad(msg: String) -> ModelError {
    ModelError::Invalid(format!("sklearn export: {msg}"))
}

fn to_u32(v: i64, what: &str, t: usize, i: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| bad(format!("tree {t} node {i} has {what} {v}")))
}

impl IsolationForest {
    /// Builds a forest from scikit-learn's fitted arrays; scores then match
    /// scikit-learn's `score_samples`, `decision_function` and `predict`.
    pub fn from_sklearn_export(export: &SklearnExport) -> Result<Self> {
        let mut trees = Vec::with_capacity(export.trees.len());
        for (t, tree) in export.trees.iter().enumerate() {
            let len = tree.feature.len();
            if [
                tree.threshold.len(),
                tree.children_left.len(),
                tree.children_right.len(),
                tree.n_node_samples.len(),
            ]
            .iter()
            .any(|&l| l != len)
            {
                return Err(bad(format!("tree {t} arrays differ in length")));
            }
            let mut nodes = Vec::with_capacity(len);
            for i in 0..len {
                let n_samples = to_u32(tree.n_node_samples[i], "n_node_samples", t, i)?;
                if tree.children_left[i] < 0 {
                    nodes.push(StoredNode {
                        feature: 0,
                        threshold: 0.0,
                        left: 0,
                        right: 0,
                        n_samples,
                    });
                    continue;
                }
                let local = usize::try_from(tree.feature[i]).map_err(|_| {
                    bad(format!("tree {t} node {i} has feature {}", tree.feature[i]))
                })?;
                let feature = match &tree.estimator_features {
                    Some(map) => *map.get(local).ok_or_else(|| {
                        bad(format!(
                            "tree {t} node {i} feature {local} not in its sub-set"
                        ))
                    })?,
                    None => local,
                };
                nodes.push(StoredNode {
                    feature: u32::try_from(feature)
                        .map_err(|_| bad(format!("tree {t} node {i} has feature {feature}")))?,
                    threshold: f32_floor(tree.threshold[i]),
                    left: to_u32(tree.children_left[i], "left child", t, i)?,
                    right: to_u32(tree.children_right[i], "right child", t, i)?,
                    n_samples,
                });
            }
            trees.push(nodes);
        }
        let contamination = match export.contamination {
            None => Contamination::Auto,
            Some(c) => Contamination::Fraction(c),
        };
        let center = -export.offset;
        let calibration = if export.train_score_samples.is_empty() {
            Calibration::Logistic { center, scale: 0.1 }
        } else {
            let raw: Vec<f64> = export.train_score_samples.iter().map(|s| -s).collect();
            fit_calibration_at(&raw, center)?
        };
        let stored = StoredForest {
            n_features: u32::try_from(export.n_features)
                .map_err(|_| bad(format!("n_features {} is too large", export.n_features)))?,
            max_samples: export.max_samples as u64,
            offset: export.offset,
            contamination,
            calibration,
            threshold: DEFAULT_THRESHOLD,
            trees,
        };
        Self::from_stored(stored)
    }
}
