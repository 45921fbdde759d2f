//! Packed scoring layout: one node array for the whole forest.
//!
//! Leaves point to themselves, so a walk of a tree's depth always ends on the
//! leaf the row belongs to, whatever the leaf's own depth. Walks are
//! interleaved in groups of [`LANES`] (rows of a block for batches, trees for
//! a single row) so the CPU overlaps their memory loads. Per-row sums are
//! always accumulated in tree order, which keeps them bit-identical to
//! scikit-learn's `depths += ...` loop.

use std::fmt;

/// Independent walks interleaved at a time.
const LANES: usize = 8;
/// Rows converted to `f32` and scored together (tree-major inside a block).
const BLOCK: usize = 512;
/// Rows up to this many features are converted on the stack for single-row scoring.
const STACK_FEATURES: usize = 32;

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
}

impl fmt::Debug for Flat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flat")
            .field("trees", &self.roots.len())
            .field("nodes", &self.nodes.len())
            .field("max_depth", &self.depths.iter().max())
            .finish()
    }
}

impl Flat {
    /// An empty layout with room for `nodes` nodes.
    pub fn with_capacity(trees: usize, nodes: usize) -> Self {
        Self {
            nodes: Vec::with_capacity(nodes),
            leaf_value: Vec::with_capacity(nodes),
            node_c: Vec::with_capacity(nodes),
            roots: Vec::with_capacity(trees),
            depths: Vec::with_capacity(trees),
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
            self.accumulate_block(xs, nf, acc);
            out.extend_from_slice(acc);
        }
    }

    /// Adds every tree's path length to `acc`, tree-major over the block.
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
}
