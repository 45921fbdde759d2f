//! Growing isolation trees the way scikit-learn's `ExtraTreeRegressor(max_features=1,
//! splitter="random")` does inside `IsolationForest`.
//!
//! Per tree: draw `max_samples` rows without replacement (and, when
//! `features_per_tree < n_features`, that many features without
//! replacement), then split depth first, left child right after its parent.
//! A node becomes a leaf at the depth limit, with one row, or when every
//! candidate feature is constant in it (`max - min <= 1e-7`, scikit-learn's
//! `FEATURE_THRESHOLD`); otherwise it splits on a uniformly chosen
//! non-constant feature at `min + (max - min) * u`, `u` uniform in `[0, 1)`,
//! with values in `f32` as scikit-learn casts them. Features found constant
//! in a node stay excluded in its descendants, as in scikit-learn.

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::stored::StoredNode;

/// scikit-learn's `FEATURE_THRESHOLD`: a feature whose range is not above it is constant.
const FEATURE_THRESHOLD: f64 = 1e-7;

/// Resolved fitting parameters.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Trees to grow.
    pub n_estimators: usize,
    /// Rows per tree (at most the number of rows).
    pub max_samples: usize,
    /// Features per tree (at most the number of features).
    pub features_per_tree: usize,
    /// Depth limit.
    pub max_depth: u32,
}

/// Largest `f32` not above `t`: `x_f32 <= t` exactly when `x_f32 <= f32_floor(t)`.
pub fn f32_floor(t: f64) -> f32 {
    let f = t as f32;
    if f64::from(f) > t { f.next_down() } else { f }
}

/// Grows all trees from checked row-major data. Tree `t` uses the ChaCha8
/// stream `t` of `seed`, so the forest depends only on the seed and the data.
pub fn grow_forest(rows: &[f64], nf: usize, plan: &Plan, seed: u64) -> Vec<Vec<StoredNode>> {
    let n = rows.len() / nf;
    // Column-major f32 copy: scikit-learn fits on X cast to float32.
    let mut cols = vec![0f32; n * nf];
    for (i, row) in rows.chunks_exact(nf).enumerate() {
        for (f, v) in row.iter().enumerate() {
            cols[f * n + i] = *v as f32;
        }
    }
    let mut grower = Grower {
        cols: &cols,
        n_rows: n,
        max_depth: plan.max_depth,
        idx: Vec::with_capacity(plan.max_samples),
        nodes: Vec::new(),
        stack: Vec::new(),
    };
    (0..plan.n_estimators)
        .map(|t| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(t as u64);
            let features: Vec<u32> = if plan.features_per_tree < nf {
                sample(&mut rng, nf, plan.features_per_tree)
                    .into_iter()
                    .map(|f| f as u32)
                    .collect()
            } else {
                (0..nf as u32).collect()
            };
            let rows_drawn = sample(&mut rng, n, plan.max_samples);
            grower.idx.clear();
            grower.idx.extend(rows_drawn.into_iter().map(|i| i as u32));
            grower.grow(features, &mut rng)
        })
        .collect()
}

/// A node waiting to be built.
struct Pending {
    start: usize,
    end: usize,
    depth: u32,
    /// Parent node and whether this is its left child.
    parent: Option<(usize, bool)>,
    /// Features not known to be constant here.
    candidates: Vec<u32>,
}

struct Grower<'a> {
    cols: &'a [f32],
    n_rows: usize,
    max_depth: u32,
    idx: Vec<u32>,
    nodes: Vec<StoredNode>,
    stack: Vec<Pending>,
}

impl Grower<'_> {
    fn value(&self, feature: u32, row: u32) -> f32 {
        self.cols[feature as usize * self.n_rows + row as usize]
    }

    fn min_max(&self, feature: u32, start: usize, end: usize) -> (f32, f32) {
        let mut lo = f32::INFINITY;
        let mut hi = f32::NEG_INFINITY;
        for &r in &self.idx[start..end] {
            let v = self.value(feature, r);
            lo = lo.min(v);
            hi = hi.max(v);
        }
        (lo, hi)
    }

    fn grow(&mut self, features: Vec<u32>, rng: &mut ChaCha8Rng) -> Vec<StoredNode> {
        self.nodes.clear();
        self.stack.clear();
        self.stack.push(Pending {
            start: 0,
            end: self.idx.len(),
            depth: 0,
            parent: None,
            candidates: features,
        });
        while let Some(mut p) = self.stack.pop() {
            let id = self.nodes.len();
            if let Some((parent, is_left)) = p.parent {
                let node = &mut self.nodes[parent];
                if is_left {
                    node.left = id as u32;
                } else {
                    node.right = id as u32;
                }
            }
            let n = p.end - p.start;
            self.nodes.push(StoredNode {
                feature: 0,
                threshold: 0.0,
                left: 0,
                right: 0,
                n_samples: n as u32,
            });
            if p.depth >= self.max_depth || n <= 1 {
                continue;
            }
            let Some((feature, threshold)) = self.draw_split(&mut p, rng) else {
                continue;
            };
            let mid = self.partition(feature, threshold, p.start, p.end);
            if mid == p.start || mid == p.end {
                continue; // cannot happen with min < threshold-floor < max; stay a leaf
            }
            let node = &mut self.nodes[id];
            node.feature = feature;
            node.threshold = threshold;
            self.stack.push(Pending {
                start: mid,
                end: p.end,
                depth: p.depth + 1,
                parent: Some((id, false)),
                candidates: p.candidates.clone(),
            });
            self.stack.push(Pending {
                start: p.start,
                end: mid,
                depth: p.depth + 1,
                parent: Some((id, true)),
                candidates: p.candidates,
            });
        }
        std::mem::take(&mut self.nodes)
    }

    /// Picks a uniformly random non-constant feature and a threshold, dropping
    /// features found constant; `None` when all are constant.
    fn draw_split(&self, p: &mut Pending, rng: &mut ChaCha8Rng) -> Option<(u32, f32)> {
        while !p.candidates.is_empty() {
            let j = rng.gen_range(0..p.candidates.len());
            let feature = p.candidates[j];
            let (lo, hi) = self.min_max(feature, p.start, p.end);
            let (lo, hi) = (f64::from(lo), f64::from(hi));
            if hi <= lo + FEATURE_THRESHOLD {
                p.candidates.swap_remove(j);
                continue;
            }
            let u: f64 = rng.r#gen();
            let mut t = (hi - lo) * u + lo;
            if t == hi {
                t = lo;
            }
            return Some((feature, f32_floor(t)));
        }
        None
    }

    /// Moves rows with `x <= threshold` to the front of `idx[start..end]`; returns the split point.
    fn partition(&mut self, feature: u32, threshold: f32, start: usize, end: usize) -> usize {
        let mut mid = start;
        for k in start..end {
            let r = self.idx[k];
            if self.value(feature, r) <= threshold {
                self.idx.swap(mid, k);
                mid += 1;
            }
        }
        mid
    }
}
