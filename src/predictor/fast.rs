//! The predictor's CPU inference path without candle: the trained weights copied once into plain
//! vectors, then per graph the node embedding, every GraphConv layer (the fused kernel of
//! [`super::kernels`]: neighbour sum, both linear maps, bias and activation in one pass),
//! pooling and the head, in buffers that stay in cache and are reused across graphs; graphs are
//! spread over rayon's threads. Also the node-embedding arithmetic (forward and backward) that
//! the fused training op of [`super::ops`] shares.
//!
//! Invariants: [`FastPredictor::predict`] computes the same function as
//! [`super::model::Regressor::predict`] of the model it was built from (to float rounding: the
//! `tanh` here is the kernels' rational one, within 4e-7 of the exact function, and sums run in
//! another order); predictions do not depend on the batch a graph comes in nor on the number of
//! threads; the flat embedding parameters follow [`EMBED_VARS`] order.

use rayon::prelude::*;

use super::features::{GraphFeatures, RES_DIMS};
use super::gnn::Pooling;
use super::kernels::{self, Act, Conv, Csr};
use super::model::{Config, Predictor};
use super::ops::{act_of, read_f32};
use super::PredictorError;

/// The embedding variables (under `embed.`) in the order of the flat parameter vector.
pub const EMBED_VARS: [&str; 7] = [
    "op.weight",
    "w_op.weight",
    "res.weight",
    "res.bias",
    "kernel.weight",
    "bias.weight",
    "bias.bias",
];

/// Sizes of the node embedding, and where each table sits in the flat parameter vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbedDims {
    pub num_ops: usize,
    pub op_dim: usize,
    pub w_op_dim: usize,
    pub res_dim: usize,
    pub kernel_vocab: usize,
    pub kernel_dim: usize,
    pub bias_dim: usize,
}

impl EmbedDims {
    pub fn of(c: &Config) -> EmbedDims {
        EmbedDims {
            num_ops: c.num_ops,
            op_dim: c.op_dim,
            w_op_dim: c.weighted_op_dim,
            res_dim: c.res_dim,
            kernel_vocab: c.kernel_vocab,
            kernel_dim: c.kernel_dim,
            bias_dim: c.bias_dim,
        }
    }

    /// Width of a node embedding.
    pub fn width(&self) -> usize {
        self.op_dim + self.res_dim
    }

    /// Element counts of the [`EMBED_VARS`], in order.
    pub fn sizes(&self) -> [usize; 7] {
        [
            self.num_ops * self.op_dim,
            self.num_ops * self.w_op_dim,
            self.res_dim * RES_DIMS,
            self.res_dim,
            self.kernel_vocab * self.kernel_dim,
            self.bias_dim * 2,
            self.bias_dim,
        ]
    }

    /// Offsets of the [`EMBED_VARS`] in the flat vector, and its length.
    fn offsets(&self) -> ([usize; 7], usize) {
        let mut off = [0usize; 7];
        let mut at = 0;
        for (o, s) in off.iter_mut().zip(self.sizes()) {
            *o = at;
            at += s;
        }
        (off, at)
    }

    pub fn len(&self) -> usize {
        self.offsets().1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An error unless every op and kernel index of `f` fits its table.
    pub fn check(&self, f: &GraphFeatures) -> Result<(), String> {
        if let Some(op) = f.op.iter().find(|&&o| o as usize >= self.num_ops) {
            return Err(format!(
                "op index {op} outside the {}-op table",
                self.num_ops
            ));
        }
        if let Some(k) = f
            .kernel
            .iter()
            .flatten()
            .find(|&&k| k as usize >= self.kernel_vocab)
        {
            return Err(format!(
                "kernel index {k} outside the {}-entry table",
                self.kernel_vocab
            ));
        }
        if f.res.len() != f.op.len() * RES_DIMS
            || f.weighted.len() != f.op.len()
            || f.kernel.len() != f.op.len()
            || f.bias.len() != f.op.len()
        {
            return Err("node feature vectors of different lengths".into());
        }
        Ok(())
    }
}

/// Embeddings of nodes `rows` of `f` into `out` (`[rows, width]`), from flat parameters `p`.
/// Indices must have passed [`EmbedDims::check`].
pub fn embed_rows(
    d: &EmbedDims,
    p: &[f32],
    f: &GraphFeatures,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let ([o_op, o_wop, o_rw, o_rb, o_k, o_bw, o_bb], _) = d.offsets();
    let w = d.width();
    for (i, o) in rows.zip(out.chunks_exact_mut(w)) {
        let op = f.op[i] as usize;
        let res = &f.res[i * RES_DIMS..][..RES_DIMS];
        let res_map = |o: &mut [f32]| {
            for (r, y) in o.iter_mut().enumerate() {
                let wr = &p[o_rw + r * RES_DIMS..][..RES_DIMS];
                let mut acc = 0f32;
                for (a, b) in res.iter().zip(wr) {
                    acc += a * b;
                }
                *y = acc + p[o_rb + r];
            }
        };
        if f.weighted[i] {
            let (a, rest) = o.split_at_mut(d.w_op_dim);
            a.copy_from_slice(&p[o_wop + op * d.w_op_dim..][..d.w_op_dim]);
            let (b, rest) = rest.split_at_mut(d.res_dim);
            res_map(b);
            let (kh, rest) = rest.split_at_mut(d.kernel_dim);
            let (kw, rest) = rest.split_at_mut(d.kernel_dim);
            let [h, v] = f.kernel[i];
            kh.copy_from_slice(&p[o_k + h as usize * d.kernel_dim..][..d.kernel_dim]);
            kw.copy_from_slice(&p[o_k + v as usize * d.kernel_dim..][..d.kernel_dim]);
            let flag = f.bias[i] as usize;
            for (r, y) in rest.iter_mut().enumerate() {
                *y = p[o_bw + r * 2 + flag] + p[o_bb + r];
            }
        } else {
            let (a, b) = o.split_at_mut(d.op_dim);
            a.copy_from_slice(&p[o_op + op * d.op_dim..][..d.op_dim]);
            res_map(b);
        }
    }
}

/// `g += ∂(Σ de·embedding)/∂p`: the gradient of the flat parameters from the gradient `de`
/// (`[nodes, width]`) of all nodes' embeddings. Sums in node order.
pub fn embed_backward(d: &EmbedDims, f: &GraphFeatures, de: &[f32], g: &mut [f32]) {
    let ([o_op, o_wop, o_rw, o_rb, o_k, o_bw, o_bb], _) = d.offsets();
    let w = d.width();
    let add = |g: &mut [f32], at: usize, e: &[f32]| {
        for (x, &y) in g[at..][..e.len()].iter_mut().zip(e) {
            *x += y;
        }
    };
    for (i, e) in de.chunks_exact(w).enumerate() {
        let op = f.op[i] as usize;
        let res = &f.res[i * RES_DIMS..][..RES_DIMS];
        let res_back = |g: &mut [f32], e: &[f32]| {
            for (r, &er) in e.iter().enumerate() {
                for (x, &a) in g[o_rw + r * RES_DIMS..][..RES_DIMS].iter_mut().zip(res) {
                    *x += er * a;
                }
                g[o_rb + r] += er;
            }
        };
        if f.weighted[i] {
            let (a, rest) = e.split_at(d.w_op_dim);
            add(g, o_wop + op * d.w_op_dim, a);
            let (b, rest) = rest.split_at(d.res_dim);
            res_back(g, b);
            let (kh, rest) = rest.split_at(d.kernel_dim);
            let (kw, rest) = rest.split_at(d.kernel_dim);
            let [h, v] = f.kernel[i];
            add(g, o_k + h as usize * d.kernel_dim, kh);
            add(g, o_k + v as usize * d.kernel_dim, kw);
            let flag = f.bias[i] as usize;
            for (r, &er) in rest.iter().enumerate() {
                g[o_bw + r * 2 + flag] += er;
                g[o_bb + r] += er;
            }
        } else {
            let (a, b) = e.split_at(d.op_dim);
            add(g, o_op + op * d.op_dim, a);
            res_back(g, b);
        }
    }
}

/// One GraphConv layer's weights in kernel layout.
#[derive(Debug, Clone)]
struct Layer {
    k: usize,
    /// `[k, h]` each.
    w_self: Vec<f32>,
    w_nbr: Vec<f32>,
    bias: Vec<f32>,
}

/// One head layer: weight `[out, in]` as stored, bias `[out]`.
#[derive(Debug, Clone)]
struct Dense {
    inp: usize,
    w: Vec<f32>,
    b: Vec<f32>,
}

/// Buffers reused from graph to graph.
#[derive(Debug, Default)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    csr: Csr,
    v: Vec<f32>,
    u: Vec<f32>,
}

/// A snapshot of a [`Predictor`]'s weights for CPU inference.
#[derive(Debug, Clone)]
pub struct FastPredictor {
    dims: EmbedDims,
    embed: Vec<f32>,
    layers: Vec<Layer>,
    act: Act,
    pooling: Pooling,
    head: Vec<Dense>,
    head_act: Act,
}

impl FastPredictor {
    /// Copy the weights of `p` (on any device; they are read back to the host).
    pub fn new(p: &Predictor) -> Result<FastPredictor, PredictorError> {
        let dims = EmbedDims::of(&p.config);
        let mut embed = Vec::with_capacity(dims.len());
        for t in p.encoder.embed.tensors()? {
            read_f32(&t, |s| embed.extend_from_slice(s))?;
        }
        if embed.len() != dims.len() {
            return Err(PredictorError::Config(format!(
                "embedding weights hold {} values, the configuration says {}",
                embed.len(),
                dims.len()
            )));
        }
        let mut layers = Vec::with_capacity(p.encoder.layers.len());
        let mut k = dims.width();
        for l in &p.encoder.layers {
            let (root, rel, bias) = l.tensors();
            let h = root.dim(0)?;
            let w_self = read_f32(root, |s| kernels::transpose(s, h, k))?;
            let w_nbr = read_f32(rel, |s| kernels::transpose(s, h, k))?;
            let bias = match bias {
                Some(b) => read_f32(b, <[f32]>::to_vec)?,
                None => vec![0.0; h],
            };
            layers.push(Layer {
                k,
                w_self,
                w_nbr,
                bias,
            });
            k = h;
        }
        let mut head = Vec::new();
        for l in p.head.linears() {
            let (out, inp) = l.weight().dims2()?;
            let w = read_f32(l.weight(), <[f32]>::to_vec)?;
            let b = match l.bias() {
                Some(b) => read_f32(b, <[f32]>::to_vec)?,
                None => vec![0.0; out],
            };
            head.push(Dense { inp, w, b });
        }
        Ok(FastPredictor {
            dims,
            embed,
            layers,
            act: act_of(p.encoder.activation),
            pooling: p.encoder.pooling,
            head,
            head_act: act_of(p.head.activation()),
        })
    }

    /// One prediction per graph, in order. Graphs are spread over threads when there are several.
    pub fn predict(&self, graphs: &[&GraphFeatures]) -> Result<Vec<f32>, PredictorError> {
        for (i, g) in graphs.iter().enumerate() {
            if g.num_nodes() == 0 {
                return Err(PredictorError::Data(format!(
                    "graph {i} of the batch has no node"
                )));
            }
            self.dims
                .check(g)
                .map_err(|e| PredictorError::Data(format!("graph {i} of the batch: {e}")))?;
        }
        if graphs.len() == 1 {
            return Ok(vec![self.one(graphs[0], &mut Scratch::default())]);
        }
        Ok(graphs
            .par_iter()
            .map_init(Scratch::default, |s, g| self.one(g, s))
            .collect())
    }

    fn one(&self, g: &GraphFeatures, s: &mut Scratch) -> f32 {
        let n = g.num_nodes();
        let w = self.dims.width();
        s.csr.rebuild(n, &g.src, &g.dst);
        s.a.clear();
        s.a.resize(n * w, 0.0);
        embed_rows(&self.dims, &self.embed, g, 0..n, &mut s.a);
        let mut width = w;
        for l in &self.layers {
            let h = l.bias.len();
            s.b.clear();
            s.b.resize(n * h, 0.0);
            Conv {
                x: &s.a,
                k: l.k,
                nbr: Some(&s.csr),
                w_self: &l.w_self,
                w_nbr: &l.w_nbr,
                bias: Some(&l.bias),
                act: self.act,
            }
            .rows(0, &mut s.b);
            std::mem::swap(&mut s.a, &mut s.b);
            width = h;
        }
        s.v.clear();
        s.v.resize(width, 0.0);
        for row in s.a.chunks_exact(width) {
            for (v, &x) in s.v.iter_mut().zip(row) {
                *v += x;
            }
        }
        if self.pooling == Pooling::Mean {
            for v in s.v.iter_mut() {
                *v /= n as f32;
            }
        }
        let last = self.head.len().saturating_sub(1);
        for (i, l) in self.head.iter().enumerate() {
            s.u.clear();
            s.u.extend(l.b.iter().enumerate().map(|(o, &b)| {
                let row = &l.w[o * l.inp..][..l.inp];
                let mut acc = 0f32;
                for (a, x) in row.iter().zip(&s.v) {
                    acc += a * x;
                }
                acc + b
            }));
            if i < last {
                kernels::activate(self.head_act, &mut s.u);
            }
            std::mem::swap(&mut s.u, &mut s.v);
        }
        s.v.first().copied().unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::batch::Batch;
    use crate::predictor::features::extract;
    use crate::predictor::features::tests::small_graph;
    use crate::predictor::init::var_builder;
    use crate::predictor::model::Regressor;
    use crate::predictor::ops::tests::nb201_graphs;
    use candle_core::Device;
    use candle_nn::VarMap;

    /// The candle-free path against the generic candle ops, on a fresh and on the shipped
    /// (trained) model; and a graph's prediction does not depend on its batch.
    #[test]
    fn fast_inference_equals_the_candle_path() {
        let dev = Device::Cpu;
        let map = VarMap::new();
        let fresh = Predictor::new(&Config::default(), var_builder(&map, 9, &dev)).unwrap();
        let shipped = crate::predictor::shipped::load(&dev).unwrap().model;
        for m in [&fresh, &shipped] {
            let fc = m.config.features();
            let mut feats = nb201_graphs(12, &fc);
            feats.push(extract(&small_graph(), &fc));
            let refs: Vec<&GraphFeatures> = feats.iter().collect();
            let fast = m.infer(&refs, &dev).unwrap();
            let b = Batch::pack(&refs, &dev).unwrap();
            let generic: Vec<f32> = m.predict_generic(&b).unwrap().to_vec1().unwrap();
            let spread = generic.iter().fold(0f32, |a, &x| a.max(x.abs()));
            assert!(spread > 1e-3);
            for (a, b) in fast.iter().zip(&generic) {
                assert!((a - b).abs() <= 1e-5, "fast {a}, candle {b}");
            }
            for (g, &y) in refs.iter().zip(&fast) {
                assert_eq!(m.infer(&[g], &dev).unwrap()[0], y);
            }
        }
    }

    #[test]
    fn bad_graphs_are_errors() {
        let dev = Device::Cpu;
        let map = VarMap::new();
        let m = Predictor::new(&Config::default(), var_builder(&map, 1, &dev)).unwrap();
        let f = extract(&small_graph(), &m.config.features());
        assert!(m.infer(&[], &dev).is_err());
        assert!(m.infer(&[&f, &GraphFeatures::default()], &dev).is_err());
        let mut bad = f.clone();
        bad.kernel[1] = [50, 1];
        assert!(m.infer(&[&f, &bad], &dev).is_err());
        let dims = EmbedDims::of(&m.config);
        assert_eq!(dims.len(), dims.sizes().iter().sum::<usize>());
        assert!(!dims.is_empty());
    }
}
