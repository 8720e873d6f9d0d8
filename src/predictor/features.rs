//! AIO-P node features of a computational graph, as plain vectors (no tensors, no gradients).
//!
//! Per node: the op's embedding index ([`Op::index`], 1-based; 0 = out of vocabulary, used for
//! any op whose index does not fit the model's embedding table), the resolution vector
//! `[H_in, H_out, W_in, W_out, C_in, C_out]` divided by the [`Normalisers`] stored with the
//! model, and for weighted nodes ([`Op::is_weighted`]) the kernel indices `(kh, kw)` and the bias
//! flag. Edges are the graph's data-flow edges `src → dst` with node indices local to the graph.
//!
//! Invariants: every vector has one entry per node (`res` six); `op[i] < num_ops`;
//! `kernel[i] < kernel_vocab` and is 0 for unweighted nodes; features depend only on the graph
//! and the [`FeatureConfig`], so they are computed once per graph and cached.

use serde::{Deserialize, Serialize};

use crate::graph::{Graph, Op};

/// Number of resolution features per node.
pub const RES_DIMS: usize = 6;

/// Divisors of the resolution vector. The defaults are AIO-P's classification setting: heights
/// and widths by 256, channels by 512 (the paper uses per-graph maxima for other tasks; fixed
/// divisors keep a feature meaning the same thing across graphs, which is what a pretrained
/// model transferred to new spaces needs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalisers {
    pub h: f32,
    pub w: f32,
    pub c: f32,
}

impl Default for Normalisers {
    fn default() -> Normalisers {
        Normalisers {
            h: 256.0,
            w: 256.0,
            c: 512.0,
        }
    }
}

/// What feature extraction needs to know of the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureConfig {
    /// Size of the op embedding table: ops with `index() >= num_ops` map to 0.
    pub num_ops: usize,
    /// Size of the kernel embedding table: kernel sizes `1..kernel_vocab` map to themselves,
    /// anything else (0, or too large) to 0.
    pub kernel_vocab: usize,
    pub normalisers: Normalisers,
}

/// Features of one graph.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GraphFeatures {
    /// Op embedding index per node.
    pub op: Vec<u32>,
    /// Resolution vector per node, row-major `[n, 6]`.
    pub res: Vec<f32>,
    /// Whether the node is a weighted node.
    pub weighted: Vec<bool>,
    /// Kernel indices `[kh, kw]` per node (`[0, 0]` for unweighted nodes).
    pub kernel: Vec<[u32; 2]>,
    /// Bias flag per node (false for unweighted nodes).
    pub bias: Vec<bool>,
    /// Edge sources and destinations (local node indices), in [`Graph::edges`] order.
    pub src: Vec<u32>,
    pub dst: Vec<u32>,
}

impl GraphFeatures {
    pub fn num_nodes(&self) -> usize {
        self.op.len()
    }

    pub fn num_edges(&self) -> usize {
        self.src.len()
    }

    pub fn num_weighted(&self) -> usize {
        self.weighted.iter().filter(|&&w| w).count()
    }
}

/// The op's embedding index, 0 when it does not fit the table.
pub fn op_index(op: Op, num_ops: usize) -> u32 {
    let i = op.index();
    if i < num_ops {
        i as u32
    } else {
        0
    }
}

/// The kernel size's embedding index, 0 when it does not fit the table.
pub fn kernel_index(k: u32, kernel_vocab: usize) -> u32 {
    if k >= 1 && (k as usize) < kernel_vocab {
        k
    } else {
        0
    }
}

/// Extract the features of a graph.
pub fn extract(g: &Graph, cfg: &FeatureConfig) -> GraphFeatures {
    let n = g.len();
    let nz = cfg.normalisers;
    let mut f = GraphFeatures {
        op: Vec::with_capacity(n),
        res: Vec::with_capacity(n * RES_DIMS),
        weighted: Vec::with_capacity(n),
        kernel: Vec::with_capacity(n),
        bias: Vec::with_capacity(n),
        src: Vec::with_capacity(g.num_edges()),
        dst: Vec::with_capacity(g.num_edges()),
    };
    for node in g.nodes() {
        f.op.push(op_index(node.op, cfg.num_ops));
        let (i, o) = (node.input, node.output);
        f.res.extend_from_slice(&[
            i.h as f32 / nz.h,
            o.h as f32 / nz.h,
            i.w as f32 / nz.w,
            o.w as f32 / nz.w,
            i.c as f32 / nz.c,
            o.c as f32 / nz.c,
        ]);
        let w = node.op.is_weighted();
        f.weighted.push(w);
        if w {
            f.kernel.push([
                kernel_index(node.attrs.kernel[0], cfg.kernel_vocab),
                kernel_index(node.attrs.kernel[1], cfg.kernel_vocab),
            ]);
            f.bias.push(node.attrs.bias);
        } else {
            f.kernel.push([0, 0]);
            f.bias.push(false);
        }
    }
    for (s, d) in g.edges() {
        f.src.push(s);
        f.dst.push(d);
    }
    f
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::graph::builder::Conv;
    use crate::graph::GraphBuilder;

    /// input(3x32x32) → conv3x3(16, bias) → relu → gap → linear(10) → output.
    pub(crate) fn small_graph() -> Graph {
        let mut b = GraphBuilder::new();
        let x = b.input(3, 32, 32).unwrap();
        let c = b.conv(x, Conv::new(16, 3).bias(true)).unwrap();
        let r = b.relu(c).unwrap();
        let p = b.global_avg_pool(r).unwrap();
        let l = b.linear(p, 10, false).unwrap();
        b.output(l).unwrap();
        b.finish()
    }

    pub(crate) fn cfg() -> FeatureConfig {
        FeatureConfig {
            num_ops: 32,
            kernel_vocab: 8,
            normalisers: Normalisers::default(),
        }
    }

    #[test]
    fn small_graph_features() {
        let g = small_graph();
        let f = extract(&g, &cfg());
        assert_eq!(f.num_nodes(), 6);
        assert_eq!(f.res.len(), 6 * RES_DIMS);
        assert_eq!(f.num_edges(), 5);
        assert_eq!(f.src, vec![0, 1, 2, 3, 4]);
        assert_eq!(f.dst, vec![1, 2, 3, 4, 5]);
        assert_eq!(f.op[0], Op::Input.index() as u32);
        assert_eq!(f.op[1], Op::Conv.index() as u32);
        assert_eq!(f.weighted, vec![false, true, false, false, true, false]);
        assert_eq!(f.kernel[1], [3, 3]);
        assert_eq!(f.kernel[4], [1, 1]);
        assert_eq!(f.kernel[2], [0, 0]);
        assert_eq!(f.bias, vec![false, true, false, false, false, false]);
        // conv: 32x32x3 → 32x32x16.
        let r = &f.res[RES_DIMS..2 * RES_DIMS];
        let want = [0.125, 0.125, 0.125, 0.125, 3.0 / 512.0, 16.0 / 512.0];
        for (a, b) in r.iter().zip(want) {
            assert!((a - b).abs() < 1e-7, "{r:?}");
        }
    }

    #[test]
    fn out_of_vocabulary_maps_to_zero() {
        let g = small_graph();
        // A table of 4 ops holds indices 1..=3 (input, output, conv) only.
        let f = extract(
            &g,
            &FeatureConfig {
                num_ops: 4,
                kernel_vocab: 3,
                ..cfg()
            },
        );
        assert_eq!(f.op[0], Op::Input.index() as u32);
        assert_eq!(f.op[1], Op::Conv.index() as u32);
        assert_eq!(f.op[2], 0, "relu is out of a 4-slot vocabulary");
        assert_eq!(f.op[4], 0, "linear is out of a 4-slot vocabulary");
        assert_eq!(f.kernel[1], [0, 0], "kernel 3 is out of a 3-slot table");
        assert_eq!(f.kernel[4], [1, 1]);
        assert_eq!(kernel_index(0, 8), 0);
        assert_eq!(kernel_index(7, 8), 7);
        assert_eq!(kernel_index(8, 8), 0);
    }
}
