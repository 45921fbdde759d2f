//! Packed scoring layouts.
//!
//! [`Flat`] keeps every tree as absolute-index nodes (used for contributions,
//! and for scoring forests deeper than [`COMPLETE_MAX_DEPTH`]); leaves point
//! to themselves, so a walk of a tree's depth always ends on the leaf the row
//! belongs to, whatever the leaf's own depth.
//!
//! Forests no deeper than [`COMPLETE_MAX_DEPTH`] (all fitted ones with
//! `max_samples <= 1024`, the default 256 gives depth 8) are also laid out as
//! *complete* binary trees of the forest's depth `D`: per tree `2^D` split
//! slots of 8 bytes (`f32` threshold, feature; slot 0 unused, the root at 1,
//! the children of `i` at `2i` and `2i + 1`) and `2^D` leaf path lengths.
//! A shallower leaf is repeated over the whole subtree below it, so every
//! walk is exactly `D` branch-free steps `i = 2i + !(x <= t)` with no child
//! pointers to load, and the leaf is `i - 2^D`.
//!
//! Walks are interleaved in groups of [`LANES`] (rows of a block for batches,
//! trees for a single row) so the CPU overlaps their memory loads. Per-row
//! sums are always accumulated in tree order, which keeps them bit-identical
//! to scikit-learn's `depths += ...` loop.

use std::fmt;

/// Independent walks interleaved at a time.
const LANES: usize = 16;
/// Rows converted to `f32` and scored together (tree-major inside a block).
const BLOCK: usize = 512;
/// Rows up to this many features are converted on the stack for single-row scoring.
const STACK_FEATURES: usize = 32;
/// Deepest forest given the complete-tree layout (`2^10` slots, 16 KiB per tree).
pub const COMPLETE_MAX_DEPTH: u32 = 10;
/// Rows of up to this many features are padded to it for complete-layout walks.
const NARROW: usize = 8;
/// Rows of up to this many features are padded to it; wider forests use the node walks.
const WIDE: usize = 64;

/// One packed node (16 bytes). Leaves have `left == right ==` their own index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node {
    /// Feature to compare.
    pub feature: u32,
    /// Go left when `x as f32 <= threshold`.
    pub threshold: f32,
    /// Absolute index of the left child.
    pub left: u32,
    /// Absolute index of the right child.
    pub right: u32,
}

/// One split slot of the complete layout (8 bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
struct Split {
    /// Go left (to `2i`) when `x as f32 <= threshold`, else right (`2i + 1`).
    threshold: f32,
    /// Feature to compare; always `< n_features` (see [`Complete`]).
    feature: u32,
}

/// Complete-tree layout of a whole forest (see the module docs).
///
/// Invariants established by [`Flat::finish`] (which asserts them) from a
/// forest validated by `StoredForest::validate_and_flatten`:
/// - `splits.len() == leaves.len() == trees * 2^depth`, `depth <= COMPLETE_MAX_DEPTH`;
/// - every `Split::feature < n_features <= WIDE`.
///
/// A walk starts at slot 1 and takes `depth` steps `i = 2i + b` (`b` is 0 or
/// 1), so before step `k` `i < 2^(k+1) <= 2^depth` (a valid split slot of the
/// tree) and after the last step `2^depth <= i < 2^(depth+1)` (leaf `i - 2^depth`).
/// The walks index with `i & (2^depth - 1)` and `feature & (W - 1)` into
/// fixed-size arrays: given these invariants the masks change nothing, and
/// they let the compiler drop every bounds check from the hot loops (the
/// workspace forbids `unsafe`).
#[derive(Clone)]
struct Complete {
    /// `D`: steps of every walk.
    depth: u32,
    /// Split slots, `2^D` per tree, tree after tree.
    splits: Vec<Split>,
    /// Leaf path lengths (`(depth + 1) + c(n) - 1`), `2^D` per tree.
    leaves: Vec<f64>,
}

/// All trees of a forest, packed.
#[derive(Clone)]
pub struct Flat {
    /// Nodes of all trees, tree after tree.
    pub nodes: Vec<Node>,
    /// Per node: the path length of a leaf (`(depth + 1) + c(n) - 1`), 0 for internal nodes.
    leaf_value: Vec<f64>,
    /// Per node: `c(n_node_samples)`, for contributions.
    node_c: Vec<f64>,
    /// Root index of each tree.
    roots: Vec<u32>,
    /// Depth of each tree (steps needed to reach any leaf).
    depths: Vec<u32>,
    /// Features per row.
    n_features: usize,
    /// The complete-tree layout, when the forest is shallow enough (set by [`Flat::finish`]).
    complete: Option<Complete>,
}

impl fmt::Debug for Flat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flat")
            .field("trees", &self.roots.len())
            .field("nodes", &self.nodes.len())
            .field("max_depth", &self.depths.iter().max())
            .field("complete", &self.complete.is_some())
            .finish()
    }
}

impl Flat {
    /// An empty layout for rows of `n_features` with room for `nodes` nodes.
    pub fn with_capacity(n_features: usize, trees: usize, nodes: usize) -> Self {
        Self {
            nodes: Vec::with_capacity(nodes),
            leaf_value: Vec::with_capacity(nodes),
            node_c: Vec::with_capacity(nodes),
            roots: Vec::with_capacity(trees),
            depths: Vec::with_capacity(trees),
            n_features,
            complete: None,
        }
    }

    /// Appends a node of the tree being built.
    pub fn push(&mut self, node: Node, leaf_value: f64, c: f64) {
        self.nodes.push(node);
        self.leaf_value.push(leaf_value);
        self.node_c.push(c);
    }

    /// Closes the tree whose root is at `root`.
    pub fn finish_tree(&mut self, root: u32, depth: u32) {
        self.roots.push(root);
        self.depths.push(depth);
    }

    /// Builds the complete-tree layout once all trees are in (no-op for deep forests).
    ///
    /// Panics if a node splits on a feature `>= n_features` or a walk of a
    /// tree's depth does not end on a leaf; `validate_and_flatten` rules both out.
    pub fn finish(&mut self) {
        self.complete = None;
        let Some(&depth) = self.depths.iter().max() else {
            return;
        };
        if depth > COMPLETE_MAX_DEPTH || self.n_features == 0 || self.n_features > WIDE {
            return;
        }
        let size = 1usize << depth;
        let trees = self.roots.len();
        let blank = Split {
            threshold: 0.0,
            feature: 0,
        };
        let mut splits = vec![blank; trees * size];
        let mut leaves = vec![0.0; trees * size];
        // at[pos]: the node that complete slot `pos` stands for.
        let mut at = vec![0u32; 2 * size];
        for (t, &root) in self.roots.iter().enumerate() {
            let splits = &mut splits[t * size..(t + 1) * size];
            let leaves = &mut leaves[t * size..(t + 1) * size];
            at[1] = root;
            for pos in 1..size {
                let node = self.nodes[at[pos] as usize];
                assert!(
                    (node.feature as usize) < self.n_features,
                    "validated nodes split on existing features"
                );
                splits[pos] = Split {
                    threshold: node.threshold,
                    feature: node.feature,
                };
                at[2 * pos] = node.left;
                at[2 * pos + 1] = node.right;
            }
            for pos in size..2 * size {
                let node = self.nodes[at[pos] as usize];
                assert!(
                    node.left == at[pos] && node.right == at[pos],
                    "walks of a tree's depth end on leaves"
                );
                leaves[pos - size] = self.leaf_value[at[pos] as usize];
            }
        }
        self.complete = Some(Complete {
            depth,
            splits,
            leaves,
        });
    }

    /// Walks one tree for one `f32` row and returns the leaf index.
    #[inline]
    fn walk(&self, root: u32, depth: u32, x: &[f32]) -> usize {
        let mut i = root;
        for _ in 0..depth {
            let node = self.nodes[i as usize];
            i = if x[node.feature as usize] <= node.threshold {
                node.left
            } else {
                node.right
            };
        }
        i as usize
    }

    /// Appends, for each row of a checked row-major batch, the sum over trees
    /// (in tree order) of its path lengths.
    pub fn path_sums(&self, rows: &[f64], nf: usize, out: &mut Vec<f64>) {
        assert!(
            nf == self.n_features && rows.len().is_multiple_of(nf),
            "rows are checked against the forest's width"
        );
        let n = rows.len() / nf;
        if n < LANES {
            for row in rows.chunks_exact(nf) {
                out.push(self.path_sum_one(row));
            }
            return;
        }
        let mut xs = vec![0f32; BLOCK.min(n) * nf];
        let mut acc = vec![0f64; BLOCK.min(n)];
        for block in rows.chunks(BLOCK * nf) {
            let m = block.len() / nf;
            let xs = &mut xs[..m * nf];
            for (d, s) in xs.iter_mut().zip(block) {
                *d = *s as f32;
            }
            let acc = &mut acc[..m];
            acc.fill(0.0);
            match &self.complete {
                Some(c) => c.accumulate_block(xs, nf, acc),
                None => self.accumulate_block(xs, nf, acc),
            }
            out.extend_from_slice(acc);
        }
    }

    /// Adds every tree's path length to `acc`, tree-major over the block
    /// (the node-pointer walk, for forests without the complete layout).
    fn accumulate_block(&self, xs: &[f32], nf: usize, acc: &mut [f64]) {
        let nodes = &self.nodes[..];
        let m = acc.len();
        let full = m / LANES * LANES;
        for (&root, &depth) in self.roots.iter().zip(&self.depths) {
            for (r, acc) in (0..full).step_by(LANES).zip(acc.chunks_exact_mut(LANES)) {
                let rows = &xs[r * nf..(r + LANES) * nf];
                let mut idx = [root; LANES];
                for _ in 0..depth {
                    for (l, i) in idx.iter_mut().enumerate() {
                        let node = nodes[*i as usize];
                        let x = rows[l * nf + node.feature as usize];
                        *i = if x <= node.threshold {
                            node.left
                        } else {
                            node.right
                        };
                    }
                }
                for (a, i) in acc.iter_mut().zip(idx) {
                    *a += self.leaf_value[i as usize];
                }
            }
            for r in full..m {
                let leaf = self.walk(root, depth, &xs[r * nf..(r + 1) * nf]);
                acc[r] += self.leaf_value[leaf];
            }
        }
    }

    /// Sum over trees of one checked row's path lengths, walking several trees at once.
    pub fn path_sum_one(&self, row: &[f64]) -> f64 {
        assert_eq!(row.len(), self.n_features, "rows are checked");
        let mut stack = [0f32; STACK_FEATURES];
        let heap: Vec<f32>;
        let x: &[f32] = if row.len() <= STACK_FEATURES {
            for (d, s) in stack.iter_mut().zip(row) {
                *d = *s as f32;
            }
            &stack[..row.len()]
        } else {
            heap = row.iter().map(|v| *v as f32).collect();
            &heap
        };
        match &self.complete {
            Some(c) => c.path_sum_one(x),
            None => self.path_sum_one_nodes(x),
        }
    }

    /// [`Flat::path_sum_one`] by the node-pointer walk.
    fn path_sum_one_nodes(&self, x: &[f32]) -> f64 {
        let nodes = &self.nodes[..];
        let mut sum = 0.0;
        for (roots, depths) in self.roots.chunks(LANES).zip(self.depths.chunks(LANES)) {
            let k = roots.len();
            let mut idx = [roots[0]; LANES];
            idx[..k].copy_from_slice(roots);
            let depth = depths.iter().copied().max().unwrap_or(0);
            for _ in 0..depth {
                for i in idx.iter_mut() {
                    let node = nodes[*i as usize];
                    *i = if x[node.feature as usize] <= node.threshold {
                        node.left
                    } else {
                        node.right
                    };
                }
            }
            for &i in &idx[..k] {
                sum += self.leaf_value[i as usize];
            }
        }
        sum
    }

    /// Per-feature path-shortening credits of one checked row, averaged over trees
    /// (see `IsolationForest::contributions`).
    pub fn contributions(&self, row: &[f64], nf: usize) -> Vec<f64> {
        let mut out = vec![0.0; nf];
        for &root in &self.roots {
            let mut i = root as usize;
            loop {
                let node = self.nodes[i];
                if node.left as usize == i {
                    break;
                }
                let f = node.feature as usize;
                let child = if (row[f] as f32) <= node.threshold {
                    node.left
                } else {
                    node.right
                } as usize;
                out[f] += self.node_c[i] - (1.0 + self.node_c[child]);
                i = child;
            }
        }
        let n = self.roots.len() as f64;
        for v in &mut out {
            *v /= n;
        }
        out
    }

    /// Path sums by the plain one-row, one-tree node walk (the reference the
    /// packed walks are tested against).
    #[cfg(test)]
    pub fn path_sums_reference(&self, rows: &[f64], nf: usize) -> Vec<f64> {
        rows.chunks_exact(nf)
            .map(|row| {
                let x: Vec<f32> = row.iter().map(|v| *v as f32).collect();
                let mut sum = 0.0;
                for (&root, &depth) in self.roots.iter().zip(&self.depths) {
                    sum += self.leaf_value[self.walk(root, depth, &x)];
                }
                sum
            })
            .collect()
    }

    /// Whether the complete-tree layout is in use.
    #[cfg(test)]
    pub fn is_complete(&self) -> bool {
        self.complete.is_some()
    }

    /// Drops the complete-tree layout, so scoring takes the node-pointer walks.
    #[cfg(test)]
    pub fn without_complete(mut self) -> Self {
        self.complete = None;
        self
    }
}

impl Complete {
    /// Adds every tree's path length to `acc` (one per row of the row-major
    /// `xs`, `nf` values per row), tree-major over the block.
    fn accumulate_block(&self, xs: &[f32], nf: usize, acc: &mut [f64]) {
        assert!(xs.len() == acc.len() * nf, "one accumulator per row");
        if nf <= NARROW {
            let mut rows = vec![[0f32; NARROW]; acc.len()];
            for (d, s) in rows.iter_mut().zip(xs.chunks_exact(nf)) {
                d[..nf].copy_from_slice(s);
            }
            by_depth!(self.depth, accumulate::<NARROW>(self, &rows, acc))
        } else {
            let mut rows = vec![[0f32; WIDE]; acc.len()];
            for (d, s) in rows.iter_mut().zip(xs.chunks_exact(nf)) {
                d[..nf].copy_from_slice(s);
            }
            by_depth!(self.depth, accumulate::<WIDE>(self, &rows, acc))
        }
    }

    /// Sum over trees (in tree order) of one `f32` row's path lengths,
    /// walking [`LANES`] trees at once.
    fn path_sum_one(&self, x: &[f32]) -> f64 {
        if x.len() <= NARROW {
            let mut row = [0f32; NARROW];
            row[..x.len()].copy_from_slice(x);
            by_depth!(self.depth, sum_one::<NARROW>(self, &row))
        } else {
            let mut row = [0f32; WIDE];
            row[..x.len()].copy_from_slice(x);
            by_depth!(self.depth, sum_one::<WIDE>(self, &row))
        }
    }
}

/// Calls `f::<SIZE, W>` with `SIZE = 2^depth` for `depth <= COMPLETE_MAX_DEPTH`.
macro_rules! by_depth {
    ($depth:expr, $f:ident::<$w:ident>($($arg:expr),*)) => {
        match $depth {
            0 => $f::<1, $w>($($arg),*),
            1 => $f::<2, $w>($($arg),*),
            2 => $f::<4, $w>($($arg),*),
            3 => $f::<8, $w>($($arg),*),
            4 => $f::<16, $w>($($arg),*),
            5 => $f::<32, $w>($($arg),*),
            6 => $f::<64, $w>($($arg),*),
            7 => $f::<128, $w>($($arg),*),
            8 => $f::<256, $w>($($arg),*),
            9 => $f::<512, $w>($($arg),*),
            10 => $f::<1024, $w>($($arg),*),
            d => unreachable!("complete layouts are at most {COMPLETE_MAX_DEPTH} deep, not {d}"),
        }
    };
}
use by_depth;

/// One step of a complete-tree walk: from slot `i` to `2i` (left, `x <= t`)
/// or `2i + 1`. Masking by the power-of-two lengths only restates
/// `i < SIZE` and `feature < W` (see [`Complete`]) so no bounds checks remain.
#[inline(always)]
fn step<const SIZE: usize, const W: usize>(
    splits: &[Split; SIZE],
    x: &[f32; W],
    i: usize,
) -> usize {
    let s = splits[i & (SIZE - 1)];
    let x = x[s.feature as usize & (W - 1)];
    2 * i + (usize::from(x <= s.threshold) ^ 1)
}

/// [`Complete::accumulate_block`] for trees of `SIZE = 2^depth` slots and
/// rows padded to `W` values.
fn accumulate<const SIZE: usize, const W: usize>(c: &Complete, rows: &[[f32; W]], acc: &mut [f64]) {
    let depth = SIZE.trailing_zeros();
    let (splits, _) = c.splits.as_chunks::<SIZE>();
    let (leaves, _) = c.leaves.as_chunks::<SIZE>();
    let (groups, rest) = rows.as_chunks::<LANES>();
    let (acc_groups, acc_rest) = acc.as_chunks_mut::<LANES>();
    for (splits, leaves) in splits.iter().zip(leaves) {
        for (rows, acc) in groups.iter().zip(acc_groups.iter_mut()) {
            let mut idx = [1usize; LANES];
            for _ in 0..depth {
                for (i, x) in idx.iter_mut().zip(rows) {
                    *i = step(splits, x, *i);
                }
            }
            for (a, i) in acc.iter_mut().zip(idx) {
                *a += leaves[i & (SIZE - 1)];
            }
        }
        for (a, x) in acc_rest.iter_mut().zip(rest) {
            let mut i = 1;
            for _ in 0..depth {
                i = step(splits, x, i);
            }
            *a += leaves[i & (SIZE - 1)];
        }
    }
}

/// [`Complete::path_sum_one`] for trees of `SIZE = 2^depth` slots and a row
/// padded to `W` values.
fn sum_one<const SIZE: usize, const W: usize>(c: &Complete, x: &[f32; W]) -> f64 {
    let depth = SIZE.trailing_zeros();
    let (splits, _) = c.splits.as_chunks::<SIZE>();
    let (leaves, _) = c.leaves.as_chunks::<SIZE>();
    let mut sum = 0.0;
    let mut trees = splits.chunks_exact(LANES).zip(leaves.chunks_exact(LANES));
    for (splits, leaves) in &mut trees {
        let mut idx = [1usize; LANES];
        for _ in 0..depth {
            for (i, splits) in idx.iter_mut().zip(splits) {
                *i = step(splits, x, *i);
            }
        }
        for (i, leaves) in idx.into_iter().zip(leaves) {
            sum += leaves[i & (SIZE - 1)];
        }
    }
    let done = splits.len() / LANES * LANES;
    for (splits, leaves) in splits[done..].iter().zip(&leaves[done..]) {
        let mut i = 1;
        for _ in 0..depth {
            i = step(splits, x, i);
        }
        sum += leaves[i & (SIZE - 1)];
    }
    sum
}
