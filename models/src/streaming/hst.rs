//! Half-Space Trees (Tan, Ting & Liu, "Fast anomaly detection for streaming
//! data", IJCAI 2011).
//!
//! # Model
//!
//! An ensemble of `n_trees` complete binary trees of depth `height`, built
//! from the seed alone, before any data is seen. Each tree gets a random
//! *work space*: for every feature `q` (mapped to `[0, 1]`, see below) a
//! value `s_q` is drawn uniformly from `[0, 1)` and the feature's range in
//! that tree is `s_q ± 2·max(s_q, 1 - s_q)`, which always covers `[0, 1]`
//! with room to spare. Every internal node picks a feature uniformly at
//! random and splits the node's current range of that feature at its
//! mid-point (the paper's construction).
//!
//! Every node has a *reference* mass `r`: how many events of the last
//! complete window of `window_size` events passed through it. The events of
//! the window in progress are buffered (the paper's *latest* profile `l`,
//! kept as the events themselves); when the window is full they become the
//! reference window and their profile the new `r` (the paper's swap).
//!
//! # Scoring
//!
//! An event walks down each tree until it reaches a leaf or a node whose
//! reference mass is below the size limit `0.1 · window_size` (the paper's
//! constant). At that stopping node at depth `d` the tree's mass score is
//! `m = r · 2^d` (the paper's score: high for dense regions). The raw anomaly
//! score is
//!
//! ```text
//! raw = 1 - mean over trees of log2(1 + m) / log2(1 + window_size · 2^height)
//! ```
//!
//! which is in `[0, 1]`: 0 when every tree ends in a full leaf, 1 when every
//! tree ends in an empty node. This is the paper's mass in the log domain,
//! averaged over trees the way Isolation Forest averages path lengths. The
//! paper's linear normalisation (`1 - Σ m / max`) is not used because at
//! height 15 it squeezes every score, normal or not, into `[0.999, 1]`; the
//! log keeps the ordering within each tree and spreads scores over the unit
//! interval, so calibration is [`Calibration::Identity`].
//!
//! Until the first window is complete the detector is not warm: the score is
//! 0 and nothing is flagged. The default threshold [`HST_DEFAULT_THRESHOLD`]
//! (0.85) is set for series of one to a few features: on noisy sines with 1–3
//! features, normal events score 0.4–0.7 (99th percentile ≈ 0.66, 99.9th ≈
//! 0.8; trees stop a few levels deep with a mass just under the size limit)
//! while spikes and level shifts that leave the data's range score 0.85–1
//! (most trees stop at a node holding 0–2 events). 0.8 would catch slightly
//! smaller excursions at the price of about one false alert per 1000 events. Scores drop as features are added, because the
//! data fills a smaller share of the work space and normal cells get denser:
//! with 8 features normal events score 0.25–0.6 and a spike in one feature
//! 0.5–0.75, so lower the threshold ([`HalfSpaceTrees::with_threshold`]) or
//! watch such series with the EWMA detector.
//!
//! # Work space
//!
//! With [`HstParams::limits`] the `[lo, hi]` range of each feature is given
//! up front. Without it the first window's events are buffered and the
//! per-feature minimum and maximum over that window become the limits (a
//! feature that was constant gets the width `max(1, |value| · 1e-3)`). At each
//! split a value is mapped to `(x - lo) / (hi - lo)` and compared with the
//! split point; values outside the limits simply fall into the outermost cell
//! of each tree's work space, which is the same as clamping them to it.
//! Split points are stored as `f32` (plenty for depth ≤ 20) to keep nodes small.
//!
//! # Contributions
//!
//! For each tree, every split on the path to the stopping node moves the
//! event from a node with reference mass `r_parent` to a child with mass
//! `r_child`. The split's feature is credited `log2(1 + r_parent) -
//! log2(1 + r_child)`: the mass, in bits, that this split cut away from the
//! event's cell. A split that sends the event where no data was gets almost
//! the whole window's bits; an ordinary split about one bit. Contributions
//! are these credits averaged over trees; they sum to the mean of
//! `log2(1 + window_size) - log2(1 + r_stop)` over trees.
//!
//! # Cost and state
//!
//! Per event: one walk per tree down to its stopping node (a handful of
//! levels; the upper levels stay in cache) and a copy of the row into the
//! window buffer; no allocation. Every `window_size` events the new reference
//! profile is counted level by level from the buffered rows, descending only
//! below nodes that hold at least the size limit, because scoring never looks
//! further; every mass scoring reads is therefore the exact count, and the
//! work stops where the data thins out. Masses of older windows are not
//! cleared but ignored through a per-node window stamp. Memory:
//! `n_trees · 2^(height+1) · 12` bytes of nodes (about 20 MB at the defaults)
//! plus two windows of rows. The serialised state holds the parameters, the
//! limits and the raw events of the reference and the current windows; the
//! trees are regenerated from the seed and the reference profile recounted
//! from its events, so a restored detector scores exactly like the saved one.

use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{decode_state, encode_state, sanitize_threshold};
use crate::detector::{Calibration, Detector, Score, check_batch, check_row};
use crate::error::{ModelError, Result};
use sad_common::ModelKind;

/// Default decision threshold on the raw (= calibrated) score; see the module docs.
pub const HST_DEFAULT_THRESHOLD: f64 = 0.85;

/// Fraction of the window below which a node's reference mass stops scoring (from the paper).
pub const SIZE_LIMIT_FRACTION: f64 = 0.1;

/// Largest supported tree height (a tree has `2^(height+1) - 1` nodes).
pub const MAX_HEIGHT: usize = 20;

/// Most nodes over all trees (`n_trees · 2^(height+1)`), bounding memory to about 1 GiB.
pub const MAX_TOTAL_NODES: usize = 1 << 26;

/// Most values buffered per window (`window_size · n_features`).
pub const MAX_WINDOW_VALUES: usize = 1 << 22;

/// Most features (split features are stored as `u16`).
pub const MAX_FEATURES: usize = u16::MAX as usize + 1;

/// Format version byte of [`HalfSpaceTrees::to_bytes`].
const STATE_VERSION: u8 = 1;

/// Parameters of [`HalfSpaceTrees`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HstParams {
    /// Number of trees, at least 1 (default 10, as in river).
    pub n_trees: usize,
    /// Depth of every tree, 1 to 20 (default 8, as in river). Memory grows as
    /// `n_trees * 2^(height + 1) * 12` bytes per detector: 61 KB at the
    /// defaults, 20 MB at the paper's 25 trees of height 15, too much for an
    /// agent that keeps one detector per series.
    pub height: usize,
    /// Events per mass window, at least 1 (default 250, as in the paper).
    pub window_size: usize,
    /// Seed of the random work spaces and split dimensions (default 42).
    pub seed: u64,
    /// Per-feature `(lo, hi)` range; `None` learns min/max from the first window (default).
    pub limits: Option<Vec<(f64, f64)>>,
}

impl Default for HstParams {
    fn default() -> Self {
        Self {
            n_trees: 10,
            height: 8,
            window_size: 250,
            seed: 42,
            limits: None,
        }
    }
}

impl HstParams {
    /// Checks every parameter for rows of `n_features` values, naming the first invalid one.
    pub fn validate(&self, n_features: usize) -> Result<()> {
        let invalid = |msg: String| Err(ModelError::Invalid(msg));
        if self.n_trees == 0 {
            return invalid("n_trees must be at least 1, got 0".into());
        }
        if !(1..=MAX_HEIGHT).contains(&self.height) {
            return invalid(format!(
                "height must be in 1..={MAX_HEIGHT}, got {}",
                self.height
            ));
        }
        if self.window_size == 0 {
            return invalid("window_size must be at least 1, got 0".into());
        }
        if !(1..=MAX_FEATURES).contains(&n_features) {
            return invalid(format!(
                "n_features must be in 1..={MAX_FEATURES}, got {n_features}"
            ));
        }
        if self
            .n_trees
            .checked_mul(2 << self.height)
            .is_none_or(|n| n > MAX_TOTAL_NODES)
        {
            return invalid(format!(
                "n_trees × 2^(height+1) must be at most {MAX_TOTAL_NODES} nodes, got n_trees {} and height {}",
                self.n_trees, self.height
            ));
        }
        if self
            .window_size
            .checked_mul(n_features)
            .is_none_or(|n| n > MAX_WINDOW_VALUES)
        {
            return invalid(format!(
                "window_size × n_features must be at most {MAX_WINDOW_VALUES}, got window_size {} and {n_features} features",
                self.window_size
            ));
        }
        if let Some(limits) = &self.limits {
            check_limits(limits, n_features)?;
        }
        Ok(())
    }
}

/// Checks one `(lo, hi)` pair per feature, finite with `lo < hi`.
fn check_limits(limits: &[(f64, f64)], n_features: usize) -> Result<()> {
    if limits.len() != n_features {
        return Err(ModelError::Invalid(format!(
            "limits must have one (lo, hi) pair per feature: expected {n_features}, got {}",
            limits.len()
        )));
    }
    for (f, &(lo, hi)) in limits.iter().enumerate() {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(ModelError::Invalid(format!(
                "limits of feature {f} must be finite with lo < hi, got ({lo}, {hi})"
            )));
        }
    }
    Ok(())
}

/// The persisted learning state (decoding side).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct HstState {
    params: HstParams,
    n_features: usize,
    /// Work-space limits in use: given, or learned from the first window.
    limits: Option<Vec<(f64, f64)>>,
    windows_done: u64,
    /// Raw rows of the last complete window (row-major).
    reference: Vec<f64>,
    /// Raw rows of the window in progress (row-major).
    current: Vec<f64>,
    threshold: f64,
}

/// The persisted learning state (encoding side, borrowing; same layout as [`HstState`]).
#[derive(Serialize)]
struct HstStateRef<'a> {
    params: &'a HstParams,
    n_features: usize,
    limits: Option<&'a [(f64, f64)]>,
    windows_done: u64,
    reference: &'a [f64],
    current: &'a [f64],
    threshold: f64,
}

/// One tree node, 12 bytes, in heap order within its tree.
///
/// `r` is the reference mass of window `epoch` (the window counter mod 2^16)
/// and counts as 0 when stamped with another window, so a new reference
/// profile needs no clearing pass; a sweep every 2^15 windows keeps the stamp
/// unambiguous.
#[derive(Debug, Clone, Copy, Default)]
struct Node {
    /// Split value in unit work-space coordinates (internal nodes).
    split: f32,
    /// Split feature (internal nodes).
    feature: u16,
    epoch: u16,
    r: u32,
}

impl Node {
    /// The reference mass of window `epoch`.
    #[inline(always)]
    fn r_at(&self, epoch: u16) -> u32 {
        if self.epoch == epoch { self.r } else { 0 }
    }

    /// Counts one more event in window `epoch`'s reference mass.
    #[inline(always)]
    fn count(&mut self, epoch: u16) {
        if self.epoch != epoch {
            self.epoch = epoch;
            self.r = 0;
        }
        self.r = self.r.saturating_add(1);
    }
}

/// Windows between two sweeps that re-stamp stale nodes (keeps `Node::epoch` unambiguous).
const SWEEP_EVERY: u64 = 1 << 15;

/// The trees: nodes in heap order (children of `i` at `2i+1`, `2i+2`), tree after tree.
#[derive(Clone)]
struct Forest {
    n_trees: usize,
    height: usize,
    /// Nodes per tree, `2^(height+1) - 1`.
    n_nodes: usize,
    nodes: Vec<Node>,
    /// Per-feature `(lo, hi - lo)` mapping raw values to unit coordinates.
    norm: Vec<(f64, f64)>,
    /// Scratch of the window rebuild: each row's node and the rows still descending.
    pos: Vec<u32>,
    active: Vec<u32>,
}

impl Forest {
    /// Regenerates the trees of `params` (already validated) from its seed,
    /// every node stamped with window `epoch`.
    fn build(params: &HstParams, n_features: usize, epoch: u16) -> Self {
        let height = params.height;
        let n_nodes = (2usize << height) - 1;
        let mut nodes = vec![
            Node {
                epoch,
                ..Node::default()
            };
            params.n_trees * n_nodes
        ];
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
        let mut range = vec![(0.0, 0.0); n_features];
        for tree in nodes.chunks_exact_mut(n_nodes) {
            for r in &mut range {
                let s: f64 = rng.r#gen();
                let half = 2.0 * s.max(1.0 - s);
                *r = (s - half, s + half);
            }
            grow(&mut rng, &mut range, tree, 0, height);
        }
        Self {
            n_trees: params.n_trees,
            height,
            n_nodes,
            nodes,
            norm: vec![(0.0, 1.0); n_features],
            pos: Vec::with_capacity(params.window_size),
            active: Vec::with_capacity(params.window_size),
        }
    }

    /// Sets the per-feature `(lo, hi)` limits that map raw values to unit coordinates.
    fn set_limits(&mut self, limits: &[(f64, f64)]) {
        for (n, &(lo, hi)) in self.norm.iter_mut().zip(limits) {
            *n = (lo, hi - lo);
        }
    }

    /// The nodes of tree `t`.
    #[inline(always)]
    fn tree(&self, t: usize) -> &[Node] {
        &self.nodes[t * self.n_nodes..(t + 1) * self.n_nodes]
    }

    /// The child of internal `node` (whose data is `n`) that `row` goes to.
    #[inline(always)]
    fn child(&self, node: usize, n: &Node, row: &[f64]) -> usize {
        let q = n.feature as usize;
        let (lo, width) = self.norm[q];
        if (row[q] - lo) / width < f64::from(n.split) {
            2 * node + 1
        } else {
            2 * node + 2
        }
    }

    /// Builds window `epoch`'s reference profile from its row-major `rows`.
    ///
    /// Level by level, only the rows whose node holds at least `size_limit`
    /// rows descend further: scoring never looks below a node with less, so
    /// every mass it reads is the exact count while the work stops where the
    /// data thins out.
    fn rebuild(&mut self, rows: &[f64], n_features: usize, epoch: u16, size_limit: f64) {
        let n_rows = rows.len() / n_features;
        for t in 0..self.n_trees {
            let base = t * self.n_nodes;
            self.pos.clear();
            self.pos.resize(n_rows, 0);
            self.active.clear();
            self.active.extend(0..n_rows as u32);
            let root = &mut self.nodes[base];
            root.epoch = epoch;
            root.r = n_rows as u32;
            for _ in 0..self.height {
                let mut kept = 0;
                for k in 0..self.active.len() {
                    let i = self.active[k] as usize;
                    let node = self.pos[i] as usize;
                    let n = self.nodes[base + node];
                    if f64::from(n.r_at(epoch)) < size_limit {
                        continue;
                    }
                    let row = &rows[i * n_features..(i + 1) * n_features];
                    let child = self.child(node, &n, row);
                    self.nodes[base + child].count(epoch);
                    self.pos[i] = child as u32;
                    self.active[kept] = i as u32;
                    kept += 1;
                }
                self.active.truncate(kept);
                if kept == 0 {
                    break;
                }
            }
        }
    }

    /// Re-stamps every node not of window `epoch` as empty in it.
    fn sweep(&mut self, epoch: u16) {
        for n in &mut self.nodes {
            if n.epoch != epoch {
                n.epoch = epoch;
                n.r = 0;
            }
        }
    }
}

/// Fills the subtree at `node` (heap index within one tree) with `depth_left`
/// levels of mid-point splits on uniformly chosen features.
fn grow(
    rng: &mut ChaCha8Rng,
    range: &mut [(f64, f64)],
    tree: &mut [Node],
    node: usize,
    depth_left: usize,
) {
    if depth_left == 0 {
        return;
    }
    // u32 keeps the draw identical on 32- and 64-bit targets; n_features <= 65536.
    let q = rng.gen_range(0..range.len() as u32) as usize;
    let (lo, hi) = range[q];
    let mid = 0.5 * (lo + hi);
    tree[node].feature = q as u16;
    tree[node].split = mid as f32;
    range[q] = (lo, mid);
    grow(rng, range, tree, 2 * node + 1, depth_left - 1);
    range[q] = (mid, hi);
    grow(rng, range, tree, 2 * node + 2, depth_left - 1);
    range[q] = (lo, hi);
}

/// Per-feature limits learned from a row-major window: min and max, widened when constant.
fn learn_limits(rows: &[f64], n_features: usize) -> Vec<(f64, f64)> {
    let mut limits = vec![(f64::INFINITY, f64::NEG_INFINITY); n_features];
    for row in rows.chunks_exact(n_features) {
        for (l, &x) in limits.iter_mut().zip(row) {
            l.0 = l.0.min(x);
            l.1 = l.1.max(x);
        }
    }
    for l in &mut limits {
        if l.1 <= l.0 {
            let width = (l.0.abs() * 1e-3).max(1.0);
            if (l.0 + width).is_finite() {
                l.1 = l.0 + width;
            } else {
                l.0 = l.1 - width;
            }
        }
    }
    limits
}

/// Streaming Half-Space Trees detector; see the module docs for the definitions.
#[derive(Clone)]
pub struct HalfSpaceTrees {
    params: HstParams,
    n_features: usize,
    /// Work-space limits in use: given, or learned from the first window.
    limits: Option<Vec<(f64, f64)>>,
    windows_done: u64,
    /// Raw rows of the last complete window (row-major); kept for persistence.
    reference: Vec<f64>,
    /// Raw rows of the window in progress (row-major); kept for persistence.
    current: Vec<f64>,
    threshold: f64,
    /// Trees and masses, derived from the fields above (rebuilt on restore).
    forest: Forest,
    size_limit: f64,
    log_max: f64,
}

impl fmt::Debug for HalfSpaceTrees {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HalfSpaceTrees")
            .field("params", &self.params)
            .field("n_features", &self.n_features)
            .field("limits", &self.limits)
            .field("windows_done", &self.windows_done)
            .field("events_in_window", &(self.current.len() / self.n_features))
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

impl HalfSpaceTrees {
    /// A fresh detector for rows of `n_features` values.
    pub fn new(params: HstParams, n_features: usize) -> Result<Self> {
        let limits = params.limits.clone();
        Self::from_state(HstState {
            params,
            n_features,
            limits,
            windows_done: 0,
            reference: Vec::new(),
            current: Vec::new(),
            threshold: HST_DEFAULT_THRESHOLD,
        })
    }

    /// Validates a state, regenerates the trees from the seed and replays the stored windows.
    fn from_state(s: HstState) -> Result<Self> {
        s.params.validate(s.n_features)?;
        let nf = s.n_features;
        let window_values = s.params.window_size * nf; // no overflow: checked by validate
        if !(0.0..=1.0).contains(&s.threshold) {
            return Err(ModelError::Invalid(format!(
                "threshold must be in [0, 1], got {}",
                s.threshold
            )));
        }
        match (&s.params.limits, &s.limits) {
            (Some(given), Some(used)) if given != used => {
                return Err(ModelError::Invalid(
                    "hst state limits differ from the given limits".into(),
                ));
            }
            (Some(_), None) => {
                return Err(ModelError::Invalid(
                    "hst state lost its given limits".into(),
                ));
            }
            (_, Some(used)) => check_limits(used, nf)?,
            (None, None) => {}
        }
        let warm = s.windows_done > 0;
        if warm && (s.reference.len() != window_values || s.limits.is_none()) {
            return Err(ModelError::Invalid(format!(
                "hst state after {} windows needs limits and a reference window of {window_values} values, got {}",
                s.windows_done,
                s.reference.len()
            )));
        }
        if !warm && !s.reference.is_empty() {
            return Err(ModelError::Invalid(
                "hst state has a reference window before its first window ended".into(),
            ));
        }
        if !s.current.len().is_multiple_of(nf) || s.current.len() >= window_values {
            return Err(ModelError::Invalid(format!(
                "hst state's current window has {} values, not whole rows of {nf} below {window_values}",
                s.current.len()
            )));
        }
        if let Some(i) = s
            .reference
            .iter()
            .chain(&s.current)
            .position(|v| !v.is_finite())
        {
            return Err(ModelError::NonFinite { feature: i % nf });
        }

        let epoch = epoch_of(s.windows_done);
        // Stamped with another window, so every mass starts at 0.
        let forest = Forest::build(&s.params, nf, epoch.wrapping_sub(1));
        let mut det = Self {
            forest,
            size_limit: SIZE_LIMIT_FRACTION * s.params.window_size as f64,
            log_max: (1.0 + s.params.window_size as f64 * (1u64 << s.params.height) as f64).log2(),
            params: s.params,
            n_features: nf,
            limits: None,
            windows_done: s.windows_done,
            reference: s.reference,
            current: s.current,
            threshold: s.threshold,
        };
        det.reference
            .reserve_exact(window_values - det.reference.len());
        det.current.reserve_exact(window_values - det.current.len());
        if let Some(limits) = s.limits {
            det.forest.set_limits(&limits);
            det.limits = Some(limits);
            if warm {
                // The reference profile is a function of the reference rows alone.
                det.forest
                    .rebuild(&det.reference, nf, epoch, det.size_limit);
            }
        }
        Ok(det)
    }

    /// The parameters the detector was built with.
    pub fn params(&self) -> &HstParams {
        &self.params
    }

    /// The per-feature `(lo, hi)` work-space limits in use, once known.
    pub fn limits(&self) -> Option<&[(f64, f64)]> {
        self.limits.as_deref()
    }

    /// Sets the decision threshold (calibrated space); clamped to `[0, 1]`, NaN is ignored.
    pub fn with_threshold(mut self, t: f64) -> Self {
        self.threshold = sanitize_threshold(t, self.threshold);
        self
    }

    /// Whether the first window is complete, so scores are reported.
    pub fn is_warm(&self) -> bool {
        self.windows_done > 0
    }

    /// Number of complete windows so far.
    pub fn windows_done(&self) -> u64 {
        self.windows_done
    }

    /// The whole learning state: a version byte and its postcard encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_state(STATE_VERSION, &self.state_ref())
    }

    /// Restores a detector saved by [`HalfSpaceTrees::to_bytes`], validating every field.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_state(decode_state("hst", STATE_VERSION, bytes)?)
    }

    fn state_ref(&self) -> HstStateRef<'_> {
        HstStateRef {
            params: &self.params,
            n_features: self.n_features,
            limits: self.limits.as_deref(),
            windows_done: self.windows_done,
            reference: &self.reference,
            current: &self.current,
            threshold: self.threshold,
        }
    }

    /// The window counter as stamped on nodes.
    #[inline]
    fn epoch(&self) -> u16 {
        epoch_of(self.windows_done)
    }

    /// One tree's share of the score: `log2(1 + r · 2^depth)`.
    #[inline]
    fn tree_log_mass(depth: usize, r: u32) -> f64 {
        (1.0 + f64::from(r) * (1u64 << depth) as f64).log2()
    }

    /// Turns the sum of the trees' log masses into the raw score.
    #[inline]
    fn raw_from_log_mass(&self, sum: f64) -> f64 {
        (1.0 - sum / (self.forest.n_trees as f64 * self.log_max)).clamp(0.0, 1.0)
    }

    /// Raw score of a checked row against the reference profile.
    fn raw_checked(&self, row: &[f64]) -> f64 {
        if !self.is_warm() {
            return 0.0;
        }
        let epoch = self.epoch();
        let f = &self.forest;
        let mut sum = 0.0;
        for t in 0..f.n_trees {
            let tree = f.tree(t);
            let mut node = 0;
            let mut depth = 0;
            loop {
                let n = &tree[node];
                let r = n.r_at(epoch);
                if depth == f.height || f64::from(r) < self.size_limit {
                    sum += Self::tree_log_mass(depth, r);
                    break;
                }
                node = f.child(node, n, row);
                depth += 1;
            }
        }
        self.raw_from_log_mass(sum)
    }

    /// Learns a checked row: adds it to the current window and closes the
    /// window when it is full.
    fn learn_checked(&mut self, row: &[f64]) {
        self.current.extend_from_slice(row);
        if self.current.len() == self.params.window_size * self.n_features {
            self.end_window();
        }
    }

    /// Closes a window: its rows become the reference window and their mass
    /// profile the reference profile; the first window also fixes the limits.
    fn end_window(&mut self) {
        if self.limits.is_none() {
            let limits = learn_limits(&self.current, self.n_features);
            self.forest.set_limits(&limits);
            self.limits = Some(limits);
        }
        std::mem::swap(&mut self.reference, &mut self.current);
        self.current.clear();
        self.windows_done = self.windows_done.saturating_add(1);
        let epoch = self.epoch();
        self.forest
            .rebuild(&self.reference, self.n_features, epoch, self.size_limit);
        if self.windows_done.is_multiple_of(SWEEP_EVERY) {
            self.forest.sweep(epoch);
        }
    }
}

/// The node stamp of window number `windows_done` (mod 2^16).
#[inline]
fn epoch_of(windows_done: u64) -> u16 {
    (windows_done & u64::from(u16::MAX)) as u16
}

impl Detector for HalfSpaceTrees {
    fn kind(&self) -> ModelKind {
        ModelKind::HalfSpaceTrees
    }

    fn n_features(&self) -> usize {
        self.n_features
    }

    fn raw_score_batch(&self, rows: &[f64], out: &mut Vec<f64>) -> Result<()> {
        out.clear();
        check_batch(rows, self.n_features)?;
        out.extend(
            rows.chunks_exact(self.n_features)
                .map(|row| self.raw_checked(row)),
        );
        Ok(())
    }

    fn raw_score(&self, row: &[f64]) -> Result<f64> {
        check_row(row, self.n_features)?;
        Ok(self.raw_checked(row))
    }

    /// Mass bits cut away by splits on each feature, averaged over trees (module docs).
    fn contributions(&self, row: &[f64]) -> Result<Vec<f64>> {
        check_row(row, self.n_features)?;
        let mut out = vec![0.0; self.n_features];
        if !self.is_warm() {
            return Ok(out);
        }
        let epoch = self.epoch();
        let f = &self.forest;
        for t in 0..f.n_trees {
            let tree = f.tree(t);
            let mut node = 0;
            let mut depth = 0;
            let mut r_parent = tree[0].r_at(epoch);
            while depth < f.height && f64::from(r_parent) >= self.size_limit {
                let n = &tree[node];
                node = f.child(node, n, row);
                let r_child = tree[node].r_at(epoch);
                out[n.feature as usize] +=
                    (1.0 + f64::from(r_parent)).log2() - (1.0 + f64::from(r_child)).log2();
                r_parent = r_child;
                depth += 1;
            }
        }
        for c in &mut out {
            *c /= f.n_trees as f64;
        }
        Ok(out)
    }

    fn calibration(&self) -> &Calibration {
        &Calibration::Identity
    }

    fn threshold(&self) -> f64 {
        self.threshold
    }

    fn learn(&mut self, row: &[f64]) -> Result<()> {
        check_row(row, self.n_features)?;
        self.learn_checked(row);
        Ok(())
    }

    fn is_streaming(&self) -> bool {
        true
    }

    /// Calibrated score; before the first window is complete it is 0 and nothing is flagged.
    fn finish(&self, raw: f64) -> Score {
        if !self.is_warm() {
            return Score {
                raw: 0.0,
                score: 0.0,
                is_anomaly: false,
            };
        }
        let score = raw.clamp(0.0, 1.0);
        Score {
            raw,
            score,
            is_anomaly: score > self.threshold,
        }
    }

    /// Scores against the reference profile, then adds the row to the current window.
    fn update_and_score(&mut self, row: &[f64]) -> Result<Score> {
        check_row(row, self.n_features)?;
        let score = self.finish(self.raw_checked(row));
        self.learn_checked(row);
        Ok(score)
    }
}

impl Serialize for HalfSpaceTrees {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.state_ref().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for HalfSpaceTrees {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let state = HstState::deserialize(deserializer)?;
        Self::from_state(state).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{ProptestConfig, any, prop_assert, proptest};

    /// Small trees keep the debug-build tests fast.
    fn small(seed: u64) -> HstParams {
        HstParams {
            n_trees: 25,
            height: 10,
            window_size: 250,
            seed,
            limits: None,
        }
    }

    /// `n` rows of `n_features` noisy sines with different phases.
    fn noisy_sines(n: usize, n_features: usize, seed: u64) -> Vec<Vec<f64>> {
        super::super::test_support::noisy_sines(n, n_features, 0.1, seed)
    }

    fn run(det: &mut HalfSpaceTrees, rows: &[Vec<f64>]) -> Vec<Score> {
        super::super::test_support::run(det, rows)
    }

    fn max_score(scores: &[Score]) -> f64 {
        scores.iter().map(|s| s.score).fold(0.0, f64::max)
    }

    #[test]
    fn the_same_seed_gives_the_same_scores_and_another_seed_does_not() {
        let rows = noisy_sines(400, 2, 1);
        let a = run(&mut HalfSpaceTrees::new(small(7), 2).unwrap(), &rows);
        let b = run(&mut HalfSpaceTrees::new(small(7), 2).unwrap(), &rows);
        let c = run(&mut HalfSpaceTrees::new(small(8), 2).unwrap(), &rows);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn saving_mid_stream_and_restoring_continues_with_identical_scores() {
        let rows = noisy_sines(700, 3, 2);
        let given = HstParams {
            limits: Some(vec![(-1.5, 1.5); 3]),
            ..small(3)
        };
        for params in [small(3), given] {
            let expected = run(&mut HalfSpaceTrees::new(params.clone(), 3).unwrap(), &rows);
            // Cut inside the first window, on a window boundary and mid-window later.
            for cut in [37, 500, 613] {
                let mut first = HalfSpaceTrees::new(params.clone(), 3).unwrap();
                let mut got = run(&mut first, &rows[..cut]);
                let bytes = first.to_bytes();
                drop(first);
                let mut restored = HalfSpaceTrees::from_bytes(&bytes).unwrap();
                got.extend(run(&mut restored, &rows[cut..]));
                assert_eq!(got, expected, "cut at {cut}, limits {:?}", params.limits);
            }
        }
    }

    #[test]
    fn serde_serialisation_carries_the_same_state_as_to_bytes() {
        let mut det = HalfSpaceTrees::new(small(4), 2)
            .unwrap()
            .with_threshold(0.7);
        run(&mut det, &noisy_sines(300, 2, 4));
        let bytes = postcard::to_allocvec(&det).unwrap();
        assert_eq!(bytes[..], det.to_bytes()[1..]);
        let back: HalfSpaceTrees = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.threshold(), 0.7);
        let row = [0.3, 0.2];
        assert_eq!(back.score(&row).unwrap(), det.score(&row).unwrap());
    }

    #[test]
    fn nothing_is_scored_or_flagged_before_the_first_window_is_complete() {
        let mut det = HalfSpaceTrees::new(small(5), 1)
            .unwrap()
            .with_threshold(0.0);
        for (i, row) in noisy_sines(249, 1, 5).iter().enumerate() {
            let x = if i == 50 { [1e9] } else { [row[0]] };
            assert!(det.contributions(&x).unwrap().iter().all(|c| *c == 0.0));
            let s = det.update_and_score(&x).unwrap();
            assert_eq!(s.score, 0.0, "event {i}");
            assert!(!s.is_anomaly);
        }
        assert!(!det.is_warm());
        assert!(det.limits().is_none());
        det.learn(&[0.0]).unwrap();
        assert!(det.is_warm());
        assert!(det.limits().is_some());
        assert!(det.score(&[-1e9]).unwrap().is_anomaly);
    }

    #[test]
    fn a_spike_in_a_noisy_sine_scores_above_every_surrounding_normal_point() {
        let mut rows = noisy_sines(700, 1, 6);
        rows[600][0] += 4.0;
        let mut det = HalfSpaceTrees::new(small(6), 1).unwrap();
        let scores = run(&mut det, &rows);
        let normal = max_score(&scores[250..600]).max(max_score(&scores[601..]));
        assert!(
            scores[600].score > normal,
            "{} vs {normal}",
            scores[600].score
        );
        assert!(scores[600].is_anomaly);
    }

    #[test]
    fn a_level_shift_is_scored_above_the_preceding_normal_points() {
        let mut rows = noisy_sines(700, 2, 7);
        for r in &mut rows[600..] {
            r[1] += 4.0;
        }
        let mut det = HalfSpaceTrees::new(small(7), 2).unwrap();
        let scores = run(&mut det, &rows);
        let normal = max_score(&scores[250..600]);
        assert!(scores[600..650].iter().all(|s| s.score > normal));
        assert!(scores[600].is_anomaly);
    }

    #[test]
    fn a_persistent_shift_becomes_normal_once_it_fills_the_reference_window() {
        let mut rows = noisy_sines(1000, 1, 8);
        for r in &mut rows[500..] {
            r[0] += 4.0;
        }
        let mut det = HalfSpaceTrees::new(small(8), 1).unwrap();
        let scores = run(&mut det, &rows);
        // Events 750..1000 are scored against the window 500..750, all shifted.
        assert!(scores[500..520].iter().all(|s| s.is_anomaly));
        let mean_after = scores[750..].iter().map(|s| s.score).sum::<f64>() / 250.0;
        assert!(mean_after < 0.7, "{mean_after}");
    }

    #[test]
    fn scores_stay_in_the_unit_interval_even_for_extreme_values() {
        let mut det = HalfSpaceTrees::new(small(9), 2).unwrap();
        run(&mut det, &noisy_sines(150, 2, 9));
        for row in [
            [0.0, 0.0],
            [1e300, -1e300],
            [f64::MAX, f64::MIN],
            [0.5, -0.5],
        ] {
            let s = det.update_and_score(&row).unwrap();
            assert!((0.0..=1.0).contains(&s.score), "{s:?}");
        }
        for s in run(&mut det, &noisy_sines(150, 2, 10)) {
            assert!((0.0..=1.0).contains(&s.score) && s.raw == s.score);
        }
        assert!(HalfSpaceTrees::from_bytes(&det.to_bytes()).is_ok());
    }

    #[test]
    fn bad_rows_are_errors_and_leave_the_state_unchanged() {
        let mut det = HalfSpaceTrees::new(small(10), 2).unwrap();
        run(&mut det, &noisy_sines(120, 2, 10));
        let before = det.to_bytes();
        assert!(matches!(
            det.update_and_score(&[1.0]),
            Err(ModelError::Dimension {
                expected: 2,
                got: 1
            })
        ));
        assert!(matches!(
            det.update_and_score(&[f64::NAN, 1.0]),
            Err(ModelError::NonFinite { feature: 0 })
        ));
        assert!(det.learn(&[0.0, f64::NEG_INFINITY]).is_err());
        assert!(det.contributions(&[0.0, 0.0, 0.0]).is_err());
        assert!(det.score_batch(&[1.0, 2.0, 3.0]).is_err());
        assert_eq!(det.to_bytes(), before);
    }

    #[test]
    fn contributions_point_at_the_spiking_feature() {
        let rows = noisy_sines(300, 4, 11);
        let mut det = HalfSpaceTrees::new(small(11), 4).unwrap();
        run(&mut det, &rows);
        for j in 0..4 {
            let mut row = rows[299].clone();
            row[j] += 3.0;
            let top = det.explain(&row, 4).unwrap();
            assert_eq!(top[0].feature, j, "{top:?}");
        }
    }

    #[test]
    fn given_limits_are_used_from_the_first_event() {
        let limits = vec![(-2.0, 2.0), (0.0, 10.0)];
        let params = HstParams {
            limits: Some(limits.clone()),
            ..small(12)
        };
        let mut det = HalfSpaceTrees::new(params, 2).unwrap();
        assert_eq!(det.limits(), Some(&limits[..]));
        let rows: Vec<Vec<f64>> = noisy_sines(250, 1, 12)
            .into_iter()
            .map(|r| vec![r[0], 5.0])
            .collect();
        run(&mut det, &rows);
        assert_eq!(det.limits(), Some(&limits[..]));
        assert!(det.score(&[0.0, 9.5]).unwrap().is_anomaly);
        assert!(!det.score(&rows[10]).unwrap().is_anomaly);
    }

    #[test]
    fn a_feature_constant_in_the_first_window_still_works_and_flags_a_change() {
        let mut det = HalfSpaceTrees::new(small(13), 2).unwrap();
        let rows: Vec<Vec<f64>> = noisy_sines(300, 1, 13)
            .into_iter()
            .map(|r| vec![r[0], 1000.0])
            .collect();
        run(&mut det, &rows);
        let limits = det.limits().unwrap();
        assert!(limits[1].0 < limits[1].1);
        let s = det.score(&[0.0, 1005.0]).unwrap();
        assert!(s.is_anomaly, "{s:?}");
    }

    #[test]
    fn stale_masses_never_resurface_after_the_window_stamp_wraps_around() {
        let params = HstParams {
            n_trees: 2,
            height: 4,
            window_size: 1,
            seed: 14,
            limits: Some(vec![(0.0, 1.0)]),
        };
        let mut det = HalfSpaceTrees::new(params, 1).unwrap();
        // Visit a far corner once, then stay elsewhere for more than 2^16 windows.
        det.learn(&[0.99]).unwrap();
        for i in 0..70_000 {
            det.learn(&[0.1 + (i % 7) as f64 * 0.01]).unwrap();
        }
        let restored = HalfSpaceTrees::from_bytes(&det.to_bytes()).unwrap();
        for x in [0.99, 0.5, 0.12, 0.0] {
            assert_eq!(
                det.score(&[x]).unwrap(),
                restored.score(&[x]).unwrap(),
                "x = {x}"
            );
        }
        assert_eq!(det.windows_done(), 70_001);
    }

    #[test]
    fn invalid_parameters_are_rejected_by_name() {
        let bad = |p: HstParams, n: usize, name: &str| {
            let e = HalfSpaceTrees::new(p, n).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        };
        let d = small(0);
        bad(
            HstParams {
                n_trees: 0,
                ..d.clone()
            },
            1,
            "n_trees",
        );
        bad(
            HstParams {
                height: 0,
                ..d.clone()
            },
            1,
            "height",
        );
        bad(
            HstParams {
                height: 21,
                ..d.clone()
            },
            1,
            "height",
        );
        bad(
            HstParams {
                window_size: 0,
                ..d.clone()
            },
            1,
            "window_size",
        );
        bad(d.clone(), 0, "n_features");
        bad(
            HstParams {
                n_trees: 1 << 20,
                ..d.clone()
            },
            1,
            "n_trees",
        );
        let with = |l: Vec<(f64, f64)>| HstParams {
            limits: Some(l),
            ..d.clone()
        };
        bad(with(vec![(1.0, 1.0)]), 1, "limits");
        bad(with(vec![(0.0, f64::INFINITY)]), 1, "limits");
        bad(with(vec![(f64::NAN, 1.0)]), 1, "limits");
        bad(with(vec![(0.0, 1.0)]), 2, "limits");
        assert!(HalfSpaceTrees::new(with(vec![(0.0, 1.0)]), 1).is_ok());
    }

    #[test]
    fn the_detector_reports_its_kind_calibration_and_default_threshold() {
        let det = HalfSpaceTrees::new(small(15), 1).unwrap();
        assert_eq!(det.kind(), ModelKind::HalfSpaceTrees);
        assert!(det.is_streaming());
        assert_eq!(*det.calibration(), Calibration::Identity);
        assert_eq!(det.threshold(), HST_DEFAULT_THRESHOLD);
        assert_eq!(
            det.clone().with_threshold(f64::NAN).threshold(),
            HST_DEFAULT_THRESHOLD
        );
        assert_eq!(det.with_threshold(7.0).threshold(), 1.0);
        assert_eq!(HstParams::default().n_trees, 10);
        assert_eq!(HstParams::default().height, 8);
        assert_eq!(HstParams::default().window_size, 250);
    }

    #[test]
    fn a_foreign_version_byte_is_rejected() {
        let mut bytes = HalfSpaceTrees::new(small(16), 1).unwrap().to_bytes();
        bytes[0] = 2;
        let e = HalfSpaceTrees::from_bytes(&bytes).unwrap_err().to_string();
        assert!(e.contains("version"), "{e}");
    }

    fn saved_state() -> Vec<u8> {
        let params = HstParams {
            n_trees: 3,
            height: 4,
            window_size: 20,
            seed: 17,
            limits: None,
        };
        let mut det = HalfSpaceTrees::new(params, 2).unwrap();
        run(&mut det, &noisy_sines(30, 2, 17));
        det.to_bytes()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn decoding_truncated_state_errs_without_panicking(cut in 0usize..10_000) {
            let bytes = saved_state();
            let cut = cut % bytes.len();
            prop_assert!(HalfSpaceTrees::from_bytes(&bytes[..cut]).is_err());
        }

        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            // Random bytes may by chance decode into a valid state; it must then be usable.
            if let Ok(det) = HalfSpaceTrees::from_bytes(&bytes) {
                let row = vec![0.0; det.n_features()];
                prop_assert!(det.score(&row).is_ok());
            }
        }

        #[test]
        fn decoding_corrupted_state_never_panics(pos in 0usize..10_000, byte in any::<u8>()) {
            let mut bytes = saved_state();
            let pos = pos % bytes.len();
            bytes[pos] = byte;
            if let Ok(mut det) = HalfSpaceTrees::from_bytes(&bytes) {
                let row = vec![0.5; det.n_features()];
                prop_assert!(det.update_and_score(&row).is_ok());
            }
        }
    }
}
