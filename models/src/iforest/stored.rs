//! The serialised form of a forest and its validation.
//!
//! Trees are stored as node lists with child indices relative to the tree;
//! a leaf has `left == right == 0` (the root can never be a child, since
//! children must come after their parent). Loading checks every index,
//! feature and threshold, that each non-root node has exactly one parent,
//! and bounds the depth, so a decoded forest can be traversed without
//! panics or endless loops.

use serde::{Deserialize, Serialize};

use super::flat::{Flat, Node};
use super::{Contamination, average_path_length};
use crate::detector::Calibration;
use crate::error::{ModelError, Result};

/// Deepest tree accepted on load (fitted trees are at most `ceil(log2(max_samples))` deep).
pub const MAX_DEPTH: u32 = 64;

/// One stored tree node.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StoredNode {
    /// Feature index the node splits on (0 for leaves).
    pub feature: u32,
    /// Rows with `x as f32 <= threshold` go left.
    pub threshold: f32,
    /// Left child index within the tree, 0 for a leaf.
    pub left: u32,
    /// Right child index within the tree, 0 for a leaf.
    pub right: u32,
    /// Training rows that reached the node (scikit-learn's `n_node_samples`).
    pub n_samples: u32,
}

impl StoredNode {
    /// Whether the node is a leaf.
    pub fn is_leaf(&self) -> bool {
        self.left == 0 && self.right == 0
    }
}

/// Everything a forest needs to be rebuilt; the serde form of `IsolationForest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredForest {
    /// Features per row.
    pub n_features: u32,
    /// scikit-learn's `max_samples_`.
    pub max_samples: u64,
    /// scikit-learn's `offset_`.
    pub offset: f64,
    /// Contamination used for the offset.
    pub contamination: Contamination,
    /// Raw-to-`[0, 1]` calibration.
    pub calibration: Calibration,
    /// Threshold in calibrated space.
    pub threshold: f64,
    /// The trees, in scoring order.
    pub trees: Vec<Vec<StoredNode>>,
}

fn invalid(msg: String) -> ModelError {
    ModelError::Decode(msg)
}

impl StoredForest {
    /// Checks the structure and builds the packed scoring layout.
    pub fn validate_and_flatten(&self) -> Result<Flat> {
        if self.n_features == 0 {
            return Err(invalid("forest has no features".into()));
        }
        if self.max_samples == 0 {
            return Err(invalid("max_samples must be at least 1".into()));
        }
        if !self.offset.is_finite() {
            return Err(invalid("offset is not finite".into()));
        }
        if let Contamination::Fraction(c) = self.contamination
            && !(c > 0.0 && c <= 0.5)
        {
            return Err(invalid(format!("contamination {c} is out of (0, 0.5]")));
        }
        if !self.calibration.is_valid() {
            return Err(invalid("calibration is invalid".into()));
        }
        if !self.threshold.is_finite() {
            return Err(invalid("threshold is not finite".into()));
        }
        if self.trees.is_empty() {
            return Err(invalid("forest has no trees".into()));
        }
        let total: usize = self.trees.iter().map(Vec::len).sum();
        if total >= u32::MAX as usize {
            return Err(invalid("forest has too many nodes".into()));
        }
        let mut flat = Flat::with_capacity(self.n_features as usize, self.trees.len(), total);
        let mut depth = Vec::new();
        let mut parents = Vec::new();
        for (t, tree) in self.trees.iter().enumerate() {
            if tree.is_empty() {
                return Err(invalid(format!("tree {t} is empty")));
            }
            let len = tree.len();
            let base = flat.nodes.len() as u32;
            depth.clear();
            depth.resize(len, 0u32);
            parents.clear();
            parents.resize(len, 0u8);
            for (i, node) in tree.iter().enumerate() {
                if node.n_samples == 0 {
                    return Err(invalid(format!("tree {t} node {i} has no samples")));
                }
                if i > 0 && parents[i] != 1 {
                    return Err(invalid(format!("tree {t} node {i} is not reachable")));
                }
                let here = base + i as u32;
                let d = depth[i];
                if node.is_leaf() {
                    let value =
                        (f64::from(d) + 1.0 + average_path_length(node.n_samples.into())) - 1.0;
                    flat.push(
                        Node {
                            feature: 0,
                            threshold: 0.0,
                            left: here,
                            right: here,
                        },
                        value,
                        average_path_length(node.n_samples.into()),
                    );
                    continue;
                }
                let (l, r) = (node.left as usize, node.right as usize);
                if l <= i || r <= i || l >= len || r >= len || l == r {
                    return Err(invalid(format!(
                        "tree {t} node {i} has children {l} and {r} out of order or range"
                    )));
                }
                if node.feature >= self.n_features {
                    return Err(invalid(format!(
                        "tree {t} node {i} splits on feature {} of {}",
                        node.feature, self.n_features
                    )));
                }
                if !node.threshold.is_finite() {
                    return Err(invalid(format!(
                        "tree {t} node {i} has a non-finite threshold"
                    )));
                }
                if d >= MAX_DEPTH {
                    return Err(invalid(format!("tree {t} is deeper than {MAX_DEPTH}")));
                }
                for c in [l, r] {
                    parents[c] = parents[c].saturating_add(1);
                    depth[c] = d + 1;
                }
                flat.push(
                    Node {
                        feature: node.feature,
                        threshold: node.threshold,
                        left: base + node.left,
                        right: base + node.right,
                    },
                    0.0,
                    average_path_length(node.n_samples.into()),
                );
            }
            let tree_depth = depth.iter().copied().max().unwrap_or(0);
            flat.finish_tree(base, tree_depth);
        }
        flat.finish();
        Ok(flat)
    }
}
