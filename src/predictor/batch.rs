//! Packing many graphs' features into one batch of constant tensors, so that one forward pass
//! handles a variable number of graphs of variable sizes.
//!
//! Nodes of all graphs are concatenated (graph after graph); edge endpoints are offset by the
//! number of nodes of the graphs before; `graph` maps every node to its graph. Node embeddings are
//! computed separately for unweighted nodes (`plain`) and weighted nodes (`weighted`) and put back
//! in node order with `perm`: row `perm[i]` of `[plain rows; weighted rows]` is node `i`.
//!
//! The batch also keeps a [`HostBatch`]: the same inputs as plain vectors plus the adjacency in
//! compressed rows (both directions) and each graph's node range, built once per batch, for the
//! fused CPU ops of [`super::ops`] (which then need no index tensors at all).
//!
//! Invariants: every tensor here is a plain tensor, never a `Var`, so no gradient is ever
//! computed for it; `src`/`dst` < `num_nodes`; `graph` is non-decreasing and < `num_graphs`;
//! `counts[g]` ≥ 1 for every packed graph (an empty graph is an error, its mean is undefined);
//! the host copy describes exactly the nodes, edges and graphs of the tensors.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::features::{GraphFeatures, RES_DIMS};
use super::kernels::Csr;
use super::PredictorError;

/// A batch's inputs as plain vectors, for CPU kernels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostBatch {
    /// All nodes of the batch as one graph (edges offset like the tensors').
    pub nodes: GraphFeatures,
    /// Row `i`: the sources of the edges into node `i` (the messages it sums), in edge order.
    pub incoming: Csr,
    /// Row `j`: the destinations of the edges out of node `j`, in edge order.
    pub outgoing: Csr,
    /// Graph `g` holds nodes `graph_ptr[g]..graph_ptr[g + 1]`.
    pub graph_ptr: Vec<u32>,
}

impl HostBatch {
    fn from_packed(p: &Packed) -> HostBatch {
        let n = p.op.len();
        let mut weighted = vec![false; n];
        let mut kernel = vec![[0u32; 2]; n];
        let mut bias = vec![false; n];
        for (j, &i) in p.weighted.iter().enumerate() {
            let i = i as usize;
            weighted[i] = true;
            kernel[i] = [p.kh[j], p.kw[j]];
            bias[i] = p.bias[2 * j + 1] > 0.5;
        }
        let mut graph_ptr = Vec::with_capacity(p.counts.len() + 1);
        graph_ptr.push(0u32);
        for &c in &p.counts {
            let last = *graph_ptr.last().expect("non-empty");
            graph_ptr.push(last + c as u32);
        }
        HostBatch {
            incoming: Csr::gather(n, &p.src, &p.dst),
            outgoing: Csr::gather(n, &p.dst, &p.src),
            nodes: GraphFeatures {
                op: p.op.clone(),
                res: p.res.clone(),
                weighted,
                kernel,
                bias,
                src: p.src.clone(),
                dst: p.dst.clone(),
            },
            graph_ptr,
        }
    }
}

/// Constant input tensors of one batch.
#[derive(Debug, Clone)]
pub struct Batch {
    pub num_graphs: usize,
    pub num_nodes: usize,
    pub num_edges: usize,
    /// Op index per node, u32 `[N]`.
    pub op: Tensor,
    /// Resolution vectors, f32 `[N, 6]`.
    pub res: Tensor,
    /// Indices of unweighted nodes, u32 `[Np]`; `None` when there are none.
    pub plain: Option<Tensor>,
    /// Indices of weighted nodes, u32 `[Nw]`; `None` when there are none.
    pub weighted: Option<Tensor>,
    /// Kernel indices of weighted nodes, u32 `[Nw]` each.
    pub kh: Option<Tensor>,
    pub kw: Option<Tensor>,
    /// One-hot bias flag of weighted nodes `[no bias, bias]`, f32 `[Nw, 2]`.
    pub bias: Option<Tensor>,
    /// Position of node `i` in `[plain rows; weighted rows]`, u32 `[N]`.
    pub perm: Tensor,
    /// Edge sources and destinations, u32 `[E]`; `None` when the batch has no edge.
    pub src: Option<Tensor>,
    pub dst: Option<Tensor>,
    /// Graph of each node, u32 `[N]`.
    pub graph: Tensor,
    /// Nodes per graph, f32 `[G, 1]`.
    pub counts: Tensor,
    /// The same inputs as plain vectors, with compressed adjacency.
    pub host: Arc<HostBatch>,
}

/// The batch as plain vectors (what [`Batch::pack`] turns into tensors).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Packed {
    pub op: Vec<u32>,
    pub res: Vec<f32>,
    pub plain: Vec<u32>,
    pub weighted: Vec<u32>,
    pub kh: Vec<u32>,
    pub kw: Vec<u32>,
    pub bias: Vec<f32>,
    pub perm: Vec<u32>,
    pub src: Vec<u32>,
    pub dst: Vec<u32>,
    pub graph: Vec<u32>,
    pub counts: Vec<f32>,
}

impl Packed {
    /// Concatenate graphs, offsetting node indices.
    pub fn new(graphs: &[&GraphFeatures]) -> Result<Packed, PredictorError> {
        let n: usize = graphs.iter().map(|g| g.num_nodes()).sum();
        let e: usize = graphs.iter().map(|g| g.num_edges()).sum();
        let mut p = Packed {
            op: Vec::with_capacity(n),
            res: Vec::with_capacity(n * RES_DIMS),
            src: Vec::with_capacity(e),
            dst: Vec::with_capacity(e),
            graph: Vec::with_capacity(n),
            counts: Vec::with_capacity(graphs.len()),
            perm: vec![0; n],
            ..Packed::default()
        };
        let mut offset = 0u32;
        for (gi, g) in graphs.iter().enumerate() {
            let k = g.num_nodes();
            if k == 0 {
                return Err(PredictorError::Data(format!(
                    "graph {gi} of the batch has no node"
                )));
            }
            p.op.extend_from_slice(&g.op);
            p.res.extend_from_slice(&g.res);
            p.src.extend(g.src.iter().map(|&s| s + offset));
            p.dst.extend(g.dst.iter().map(|&d| d + offset));
            p.graph.extend(std::iter::repeat_n(gi as u32, k));
            p.counts.push(k as f32);
            for i in 0..k {
                let node = offset + i as u32;
                if g.weighted[i] {
                    p.weighted.push(node);
                    p.kh.push(g.kernel[i][0]);
                    p.kw.push(g.kernel[i][1]);
                    let b = g.bias[i] as u32 as f32;
                    p.bias.extend_from_slice(&[1.0 - b, b]);
                } else {
                    p.plain.push(node);
                }
            }
            offset += k as u32;
        }
        let np = p.plain.len() as u32;
        for (j, &i) in p.plain.iter().enumerate() {
            p.perm[i as usize] = j as u32;
        }
        for (j, &i) in p.weighted.iter().enumerate() {
            p.perm[i as usize] = np + j as u32;
        }
        Ok(p)
    }
}

fn opt_u32(v: Vec<u32>, dev: &Device) -> candle_core::Result<Option<Tensor>> {
    if v.is_empty() {
        Ok(None)
    } else {
        let n = v.len();
        Tensor::from_vec(v, n, dev).map(Some)
    }
}

impl Batch {
    /// Pack graphs into tensors on `dev`. At least one graph, none empty.
    pub fn pack(graphs: &[&GraphFeatures], dev: &Device) -> Result<Batch, PredictorError> {
        if graphs.is_empty() {
            return Err(PredictorError::Data("an empty batch".into()));
        }
        let p = Packed::new(graphs)?;
        Ok(Batch::from_packed(p, dev)?)
    }

    /// Turn packed vectors into tensors.
    pub fn from_packed(p: Packed, dev: &Device) -> candle_core::Result<Batch> {
        let n = p.op.len();
        let g = p.counts.len();
        let e = p.src.len();
        let nw = p.weighted.len();
        let host = Arc::new(HostBatch::from_packed(&p));
        Ok(Batch {
            num_graphs: g,
            num_nodes: n,
            num_edges: e,
            op: Tensor::from_vec(p.op, n, dev)?,
            res: Tensor::from_vec(p.res, (n, RES_DIMS), dev)?,
            plain: opt_u32(p.plain, dev)?,
            weighted: opt_u32(p.weighted, dev)?,
            kh: opt_u32(p.kh, dev)?,
            kw: opt_u32(p.kw, dev)?,
            bias: if nw == 0 {
                None
            } else {
                Some(Tensor::from_vec(p.bias, (nw, 2), dev)?)
            },
            perm: Tensor::from_vec(p.perm, n, dev)?,
            src: opt_u32(p.src, dev)?,
            dst: opt_u32(p.dst, dev)?,
            graph: Tensor::from_vec(p.graph, n, dev)?,
            counts: Tensor::from_vec(p.counts, (g, 1), dev)?,
            host,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::features::extract;
    use crate::predictor::features::tests::{cfg, small_graph};

    #[test]
    fn offsets_and_permutation() {
        let f = extract(&small_graph(), &cfg());
        let p = Packed::new(&[&f, &f]).unwrap();
        assert_eq!(p.op.len(), 12);
        assert_eq!(p.src, vec![0, 1, 2, 3, 4, 6, 7, 8, 9, 10]);
        assert_eq!(p.dst, vec![1, 2, 3, 4, 5, 7, 8, 9, 10, 11]);
        assert_eq!(p.graph, vec![0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]);
        assert_eq!(p.counts, vec![6.0, 6.0]);
        assert_eq!(p.weighted, vec![1, 4, 7, 10]);
        assert_eq!(p.plain, vec![0, 2, 3, 5, 6, 8, 9, 11]);
        assert_eq!(p.bias, vec![0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]);
        // [plain; weighted][perm[i]] is node i.
        let order: Vec<u32> = p.plain.iter().chain(&p.weighted).copied().collect();
        for i in 0..12u32 {
            assert_eq!(order[p.perm[i as usize] as usize], i);
        }
        let b = Batch::pack(&[&f, &f], &Device::Cpu).unwrap();
        assert_eq!(b.num_graphs, 2);
        // The host copy: the two graphs' features back to back, edges offset.
        let h = &b.host;
        assert_eq!(h.graph_ptr, vec![0, 6, 12]);
        assert_eq!(h.nodes.op[6..], f.op[..]);
        assert_eq!(h.nodes.weighted[6..], f.weighted[..]);
        assert_eq!(h.nodes.kernel[6..], f.kernel[..]);
        assert_eq!(h.nodes.bias[6..], f.bias[..]);
        assert_eq!(h.incoming.row(7), &[6]);
        assert_eq!(h.outgoing.row(6), &[7]);
        assert_eq!(h.incoming.row(6), &[] as &[u32]);
        assert_eq!(b.res.dims(), &[12, RES_DIMS]);
        assert_eq!(b.counts.dims(), &[2, 1]);
    }

    #[test]
    fn empty_inputs_are_errors() {
        assert!(Batch::pack(&[], &Device::Cpu).is_err());
        let empty = GraphFeatures::default();
        assert!(Batch::pack(&[&empty], &Device::Cpu).is_err());
    }
}
