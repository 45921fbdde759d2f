//! Isolation Forest with scikit-learn's exact scores.
//!
//! [`IsolationForestParams::fit`] grows extremely randomised isolation trees
//! the way scikit-learn 1.9 does (sub-sampling without replacement, optional
//! per-tree feature sub-sets, a uniformly chosen non-constant feature per
//! node and a uniform threshold in `[min, max)` computed in `f32`, depth
//! limit `ceil(log2(max_samples))`). The random numbers differ from
//! scikit-learn's, so fitted trees differ, but the *scoring* of a given set of
//! trees is exactly scikit-learn's: [`IsolationForest::score_samples`],
//! [`IsolationForest::decision_function`], [`IsolationForest::predict`] and
//! [`IsolationForest::offset`] agree with it to the last bits (see
//! `models/tests/iforest_parity.rs`, which loads trees exported from
//! scikit-learn through [`IsolationForest::from_sklearn_export`]).
//!
//! Exactness details kept from scikit-learn:
//! - rows are cast to `f32` before traversal and go left when
//!   `x_f32 <= threshold`; each node stores the largest `f32` not above its
//!   `f64` threshold, which makes an `f32` comparison equivalent;
//! - a leaf's path length is `(depth + 1) + c(n_leaf) - 1` with the same
//!   operation order as scikit-learn, summed over trees in tree order;
//! - `score_samples = -2^(-(sum / (n_trees * c(max_samples))))`;
//! - `offset_` is `-0.5` for [`Contamination::Auto`] and numpy's linear
//!   percentile of the training `score_samples` otherwise.
//!
//! Layout for speed: forests up to depth 10 (fitted with `max_samples <=
//! 1024`) are scored on complete binary trees (8-byte split slots, children
//! of slot `i` at `2i` and `2i + 1`, shallow leaves repeated below
//! themselves), so every walk is a fixed number of branch-free steps with no
//! child pointers and no bounds checks; deeper forests walk one packed node
//! array (16 bytes per node, leaves pointing to themselves). Either way
//! several independent walks (rows of a block, or trees for one row) are
//! interleaved to hide memory latency. No threads are used.
//!
//! Serialisation ([`IsolationForest::to_bytes`], serde) stores the trees with
//! relative child indices and the node sizes; loading validates the whole
//! structure before the model is usable.

mod fit;
mod flat;
mod linfa_impl;
pub mod sklearn;
mod stored;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::detector::{Calibration, Detector, check_batch, check_row, fit_calibration_at};
use crate::error::{ModelError, Result};
use flat::Flat;
use sad_common::ModelKind;
use stored::StoredForest;

/// How many training rows each tree sees (scikit-learn's `max_samples`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxSamples {
    /// `min(256, n_rows)`.
    Auto,
    /// This many rows, capped at the number of training rows.
    Count(usize),
    /// `floor(fraction * n_rows)` rows; the fraction must be in `(0, 1]`.
    Fraction(f64),
}

/// Expected share of outliers, which sets [`IsolationForest::offset`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Contamination {
    /// scikit-learn's `"auto"`: `offset_ = -0.5` (raw score 0.5 is the boundary).
    Auto,
    /// A share in `(0, 0.5]`: the offset flags that share of the training rows.
    Fraction(f64),
}

/// Fitting parameters of an [`IsolationForest`], with scikit-learn's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IsolationForestParams {
    /// Number of trees (default 100, at least 1).
    pub n_estimators: usize,
    /// Rows per tree (default [`MaxSamples::Auto`]).
    pub max_samples: MaxSamples,
    /// Expected outlier share (default [`Contamination::Auto`]).
    pub contamination: Contamination,
    /// Fraction of features each tree may use, in `(0, 1]`; each tree draws
    /// `max(1, floor(max_features * n_features))` features (default 1.0).
    pub max_features: f64,
    /// Seed of the random generator; the same seed gives the same forest (default 0).
    pub seed: u64,
}

impl Default for IsolationForestParams {
    fn default() -> Self {
        Self {
            n_estimators: 100,
            max_samples: MaxSamples::Auto,
            contamination: Contamination::Auto,
            max_features: 1.0,
            seed: 0,
        }
    }
}

impl IsolationForestParams {
    /// Fits a forest on row-major `rows` with `n_features` values per row.
    ///
    /// Fails on an empty or ragged batch, non-finite values or invalid parameters.
    pub fn fit(&self, rows: &[f64], n_features: usize) -> Result<IsolationForest> {
        let n_rows = check_batch(rows, n_features)?;
        if n_rows == 0 {
            return Err(ModelError::Invalid(
                "isolation forest needs at least one training row".into(),
            ));
        }
        let plan = self.plan(n_rows, n_features)?;
        let trees = fit::grow_forest(rows, n_features, &plan, self.seed);
        let stored = StoredForest {
            n_features: to_u32(n_features, "n_features")?,
            max_samples: plan.max_samples as u64,
            offset: -0.5,
            contamination: self.contamination,
            calibration: Calibration::Logistic {
                center: 0.5,
                scale: 1.0,
            },
            threshold: DEFAULT_THRESHOLD,
            trees,
        };
        let mut forest = IsolationForest::from_stored(stored)?;
        forest.calibrate_on(rows)?;
        Ok(forest)
    }

    /// Checks the parameters against the data shape and resolves them.
    fn plan(&self, n_rows: usize, n_features: usize) -> Result<fit::Plan> {
        if self.n_estimators == 0 {
            return Err(ModelError::Invalid(
                "n_estimators must be at least 1".into(),
            ));
        }
        let max_samples = match self.max_samples {
            MaxSamples::Auto => n_rows.min(256),
            MaxSamples::Count(0) => {
                return Err(ModelError::Invalid("max_samples must be at least 1".into()));
            }
            MaxSamples::Count(c) => c.min(n_rows),
            MaxSamples::Fraction(f) => {
                if !(f > 0.0 && f <= 1.0) {
                    return Err(ModelError::Invalid(format!(
                        "max_samples fraction must be in (0, 1], got {f}"
                    )));
                }
                let m = (f * n_rows as f64) as usize;
                if m == 0 {
                    return Err(ModelError::Invalid(format!(
                        "max_samples fraction {f} of {n_rows} rows selects no row"
                    )));
                }
                m
            }
        };
        if let Contamination::Fraction(c) = self.contamination
            && !(c > 0.0 && c <= 0.5)
        {
            return Err(ModelError::Invalid(format!(
                "contamination must be in (0, 0.5], got {c}"
            )));
        }
        if !(self.max_features > 0.0 && self.max_features <= 1.0) {
            return Err(ModelError::Invalid(format!(
                "max_features must be in (0, 1], got {}",
                self.max_features
            )));
        }
        let features_per_tree = ((self.max_features * n_features as f64) as usize).max(1);
        to_u32(n_features, "n_features")?;
        to_u32(max_samples, "max_samples")?;
        Ok(fit::Plan {
            n_estimators: self.n_estimators,
            max_samples,
            features_per_tree: features_per_tree.min(n_features),
            max_depth: depth_limit(max_samples),
        })
    }
}

/// scikit-learn's `max_depth = ceil(log2(max(max_samples, 2)))`, in integers.
fn depth_limit(max_samples: usize) -> u32 {
    (max_samples.max(2) - 1).ilog2() + 1
}

fn to_u32(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| ModelError::Invalid(format!("{what} {v} is too large")))
}

/// Default decision threshold in calibrated space.
const DEFAULT_THRESHOLD: f64 = 0.5;

/// Euler–Mascheroni constant, as numpy's `np.euler_gamma`.
const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// Average path length `c(n)` of an unsuccessful search in a binary search
/// tree of `n` items (scikit-learn's `_average_path_length`, same operation order).
pub fn average_path_length(n: u64) -> f64 {
    if n <= 1 {
        0.0
    } else if n == 2 {
        1.0
    } else {
        let n = n as f64;
        2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n
    }
}

/// A fitted (or imported) Isolation Forest; see the [module docs](self).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "StoredForest", into = "StoredForest")]
pub struct IsolationForest {
    stored: StoredForest,
    flat: Flat,
    /// `n_trees * c(max_samples)`, scikit-learn's denominator.
    denominator: f64,
}

impl TryFrom<StoredForest> for IsolationForest {
    type Error = ModelError;
    fn try_from(stored: StoredForest) -> Result<Self> {
        Self::from_stored(stored)
    }
}

impl From<IsolationForest> for StoredForest {
    fn from(forest: IsolationForest) -> Self {
        forest.stored
    }
}

impl IsolationForest {
    /// Validates the stored form and builds the packed scoring layout.
    fn from_stored(stored: StoredForest) -> Result<Self> {
        let flat = stored.validate_and_flatten()?;
        let denominator = stored.trees.len() as f64 * average_path_length(stored.max_samples);
        Ok(Self {
            stored,
            flat,
            denominator,
        })
    }

    /// Sets `offset_` and the calibration from the training rows (scikit-learn's fit tail).
    fn calibrate_on(&mut self, rows: &[f64]) -> Result<()> {
        let scores = self.score_samples(rows)?;
        let raw: Vec<f64> = scores.iter().map(|s| -s).collect();
        let (offset, center) = match self.stored.contamination {
            Contamination::Auto => (-0.5, 0.5),
            Contamination::Fraction(c) => {
                let offset = offset_for_contamination(&scores, c);
                (offset, -offset)
            }
        };
        // For Fraction(c) this is `fit_calibration(raw, c)` with its centre
        // (the 1 - c quantile of the raw scores) taken exactly as `-offset_`,
        // so the calibrated threshold 0.5 decides exactly like `predict`.
        self.stored.offset = offset;
        self.stored.calibration = fit_calibration_at(&raw, center)?;
        Ok(())
    }

    /// scikit-learn's `score_samples`: negative, lower is more abnormal.
    pub fn score_samples(&self, rows: &[f64]) -> Result<Vec<f64>> {
        let mut out = Vec::new();
        self.score_samples_into(rows, &mut out)?;
        Ok(out)
    }

    /// [`IsolationForest::score_samples`] into a reused buffer (cleared first).
    pub fn score_samples_into(&self, rows: &[f64], out: &mut Vec<f64>) -> Result<()> {
        let nf = self.n_features();
        let n = check_batch(rows, nf)?;
        out.clear();
        out.reserve(n);
        self.flat.path_sums(rows, nf, out);
        for v in out.iter_mut() {
            *v = self.score_from_sum(*v);
        }
        Ok(())
    }

    /// Turns a sum of per-tree path lengths into scikit-learn's score.
    #[inline]
    fn score_from_sum(&self, sum: f64) -> f64 {
        // sklearn: 2 ** -np.divide(depths, denominator, out=ones, where=denominator != 0)
        let ratio = if self.denominator != 0.0 {
            sum / self.denominator
        } else {
            1.0
        };
        -(2f64.powf(-ratio))
    }

    /// scikit-learn's `offset_`: `decision_function = score_samples - offset_`.
    pub fn offset(&self) -> f64 {
        self.stored.offset
    }

    /// scikit-learn's `decision_function`: negative for outliers.
    pub fn decision_function(&self, rows: &[f64]) -> Result<Vec<f64>> {
        let mut s = self.score_samples(rows)?;
        let offset = self.offset();
        for v in &mut s {
            *v -= offset;
        }
        Ok(s)
    }

    /// scikit-learn's `predict`: `-1` for outliers (decision below 0), `1` for inliers.
    pub fn predict(&self, rows: &[f64]) -> Result<Vec<i8>> {
        Ok(self
            .decision_function(rows)?
            .into_iter()
            .map(|d| if d < 0.0 { -1 } else { 1 })
            .collect())
    }

    /// Number of features per row.
    pub fn n_features(&self) -> usize {
        self.stored.n_features as usize
    }

    /// Number of trees.
    pub fn n_estimators(&self) -> usize {
        self.stored.trees.len()
    }

    /// scikit-learn's `max_samples_`: rows each tree was grown from.
    pub fn max_samples(&self) -> usize {
        self.stored.max_samples as usize
    }

    /// The contamination the forest was fitted (or exported) with.
    pub fn contamination(&self) -> Contamination {
        self.stored.contamination
    }

    /// Sets the decision threshold in calibrated space (default 0.5, which
    /// decides like scikit-learn's `predict`).
    pub fn with_threshold(mut self, t: f64) -> Self {
        self.stored.threshold = t;
        self
    }

    /// Replaces the calibration (for example one kept in a model manifest).
    pub fn with_calibration(mut self, calibration: Calibration) -> Self {
        self.stored.calibration = calibration;
        self
    }

    /// Encodes the forest with postcard.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain vectors and numbers into a Vec cannot fail.
        postcard::to_allocvec(&self.stored).unwrap_or_default()
    }

    /// Decodes and validates a forest written by [`IsolationForest::to_bytes`].
    ///
    /// Never panics: garbage, truncated or inconsistent input is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let stored: StoredForest =
            postcard::from_bytes(bytes).map_err(|e| ModelError::Decode(e.to_string()))?;
        Self::from_stored(stored)
    }

    /// Per-feature contributions to one row's anomaly score.
    ///
    /// Definition ("how much a feature shortens isolation paths"): in every
    /// tree the row walks from the root to a leaf; at each internal node of
    /// size `n` that splits on feature `f` and sends the row into a child of
    /// size `m`, `f` is credited `c(n) - (1 + c(m))`, the expected remaining
    /// path length before the split minus the one after it (one step taken
    /// plus the child's expectation). Credits are averaged over trees. A
    /// feature that cuts the row off from most of the data gets a large
    /// positive credit; a split that keeps the row with the bulk gets little
    /// or a negative one. Per tree the credits telescope, so the values sum
    /// to `mean(c(n_root)) - mean path length`: larger for shorter paths,
    /// consistent with the anomaly score.
    pub fn contributions(&self, row: &[f64]) -> Result<Vec<f64>> {
        check_row(row, self.n_features())?;
        Ok(self.flat.contributions(row, self.n_features()))
    }

    /// Scores one row (checked) with the latency-oriented path.
    fn score_one(&self, row: &[f64]) -> Result<f64> {
        check_row(row, self.n_features())?;
        Ok(self.score_from_sum(self.flat.path_sum_one(row)))
    }
}

/// scikit-learn's `offset_` for a contamination fraction `c`: numpy's linear
/// percentile of the training `score_samples` at `100 * c`, bit for bit.
pub fn offset_for_contamination(train_scores: &[f64], c: f64) -> f64 {
    let mut sorted = train_scores.to_vec();
    sorted.sort_by(f64::total_cmp);
    numpy_percentile_sorted(&sorted, 100.0 * c)
}

/// numpy's `percentile(a, pct)` with the default "linear" method, on sorted data.
///
/// Follows numpy 2's operation order (`q = pct / 100`, virtual index
/// `(n - 1) * q`, and the two-sided lerp) so the result is bit-identical.
pub(crate) fn numpy_percentile_sorted(sorted: &[f64], pct: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let q = pct / 100.0;
    let virtual_index = (n - 1) as f64 * q;
    if virtual_index >= (n - 1) as f64 {
        return sorted[n - 1];
    }
    if virtual_index < 0.0 {
        return sorted[0];
    }
    let prev = virtual_index.floor();
    let gamma = virtual_index - prev;
    let i = prev as usize;
    let (a, b) = (sorted[i], sorted[i + 1]);
    let diff = b - a;
    if gamma >= 0.5 {
        b - diff * (1.0 - gamma)
    } else {
        a + diff * gamma
    }
}

impl Detector for IsolationForest {
    fn kind(&self) -> ModelKind {
        ModelKind::IsolationForest
    }

    fn n_features(&self) -> usize {
        self.stored.n_features as usize
    }

    /// Raw score is `-score_samples`, in `(0, 1]`, higher is more anomalous.
    fn raw_score_batch(&self, rows: &[f64], out: &mut Vec<f64>) -> Result<()> {
        self.score_samples_into(rows, out)?;
        for v in out.iter_mut() {
            *v = -*v;
        }
        Ok(())
    }

    fn raw_score(&self, row: &[f64]) -> Result<f64> {
        Ok(-self.score_one(row)?)
    }

    fn contributions(&self, row: &[f64]) -> Result<Vec<f64>> {
        IsolationForest::contributions(self, row)
    }

    fn calibration(&self) -> &Calibration {
        &self.stored.calibration
    }

    fn threshold(&self) -> f64 {
        self.stored.threshold
    }
}
