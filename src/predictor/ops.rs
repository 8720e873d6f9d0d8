//! Fused candle ops for the predictor on the CPU, with hand-written backward passes: the node
//! embedding (one op over the flattened embedding variables), the GraphConv layer with its
//! activation (one op: neighbour sum, both linear maps, bias, activation), and pooling. They
//! replace the chains of `index_select`/`index_add`/`matmul`/`cat`/`tanh` ops of the generic
//! path, whose every step allocated an intermediate tensor and whose backward also computed
//! gradients of constants; here the batch structure lives in the op (a [`HostBatch`]), not in
//! index tensors, so only variables and node states are in the autograd graph.
//!
//! Used only for f32 tensors on the CPU ([`fused`]); other devices keep the generic candle ops.
//!
//! Invariants: forward and backward are deterministic and independent of the number of rayon
//! threads (row blocks are fixed-size and partial weight gradients are added in block order);
//! each op's backward matches finite differences of its forward (tests here and in
//! [`super::model`]); an input without a gradient path (`!track_op()`) gets no gradient computed.

use std::sync::Arc;

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Shape, Storage, Tensor,
};
use rayon::prelude::*;

use super::batch::{Batch, HostBatch};
use super::fast::{embed_backward, embed_rows, EmbedDims};
use super::gnn::{Activation, Pooling};
use super::kernels::{self, Act, Conv, ConvGrad, WeightGrads};

/// Rows per parallel block of the row kernels.
const BLOCK_ROWS: usize = 256;
/// Rows per block of a weight-gradient partial sum.
const GRAD_BLOCK_ROWS: usize = 256;

/// The kernels' activation for a model's.
pub fn act_of(a: Activation) -> Act {
    match a {
        Activation::Tanh => Act::Tanh,
        Activation::Relu => Act::Relu,
        Activation::Identity => Act::Identity,
    }
}

/// Whether the fused ops apply to `t` (f32 on the CPU).
pub fn fused(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Call `f` with the values of `t` as f32, row-major; without a copy when `t` is a contiguous f32
/// tensor on the CPU.
pub fn read_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    {
        let (st, l) = t.storage_and_layout();
        if let (Storage::Cpu(c), Some((a, b))) = (&*st, l.contiguous_offsets()) {
            if let Ok(s) = c.as_slice::<f32>() {
                return Ok(f(&s[a..b]));
            }
        }
    }
    let v = t
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .to_vec1::<f32>()?;
    Ok(f(&v))
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => bail!("fused op: non-contiguous input"),
    }
}

/// `f(first_row, rows)` over blocks of `width`-wide rows of `out`, in parallel when there are
/// several blocks.
fn par_rows(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let block = BLOCK_ROWS * width.max(1);
    if out.len() <= block {
        f(0, out);
    } else {
        out.par_chunks_mut(block)
            .enumerate()
            .for_each(|(i, o)| f(i * BLOCK_ROWS, o));
    }
}

fn cpu(v: Vec<f32>, shape: impl Into<Shape>) -> candle_core::Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Node embeddings `[N, width]` of a batch from the flat embedding parameters.
struct EmbedOp {
    host: Arc<HostBatch>,
    dims: EmbedDims,
}

impl CustomOp1 for EmbedOp {
    fn name(&self) -> &'static str {
        "aiop-node-embedding"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = slice(s, l)?;
        let n = self.host.nodes.num_nodes();
        let w = self.dims.width();
        let mut out = vec![0f32; n * w];
        par_rows(&mut out, w, |row0, o| {
            embed_rows(&self.dims, p, &self.host.nodes, row0..row0 + o.len() / w, o)
        });
        Ok((CpuStorage::F32(out), Shape::from((n, w))))
    }

    fn bwd(&self, p: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if !p.track_op() {
            return Ok(None);
        }
        let grad = grad.contiguous()?;
        let mut g = vec![0f32; self.dims.len()];
        read_f32(&grad, |de| {
            embed_backward(&self.dims, &self.host.nodes, de, &mut g)
        })?;
        Ok(Some(cpu(g, self.dims.len())?))
    }
}

/// `act(x·W_rootᵀ + (Σ_{j→i} x_j)·W_relᵀ + b)` with the weights packed as `[W_root | W_rel | b]`
/// (`[h, 2k + 1]`).
struct ConvOp {
    host: Arc<HostBatch>,
    act: Act,
}

/// The packed weights split into kernel layout: `[k, h]`, `[k, h]`, `[h]`.
fn unpack(w: &[f32], k: usize, h: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let stride = 2 * k + 1;
    let mut ws = vec![0f32; k * h];
    let mut wn = vec![0f32; k * h];
    let mut b = vec![0f32; h];
    for o in 0..h {
        let row = &w[o * stride..][..stride];
        for i in 0..k {
            ws[i * h + o] = row[i];
            wn[i * h + o] = row[k + i];
        }
        b[o] = row[2 * k];
    }
    (ws, wn, b)
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "aiop-graph-conv"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = l1.shape().dims2()?;
        let (h, kk) = l2.shape().dims2()?;
        if kk != 2 * k + 1 || n != self.host.incoming.rows() {
            bail!(
                "graph conv: input [{n}, {k}], weights [{h}, {kk}], batch of {} nodes",
                self.host.incoming.rows()
            );
        }
        let x = slice(s1, l1)?;
        let (ws, wn, b) = unpack(slice(s2, l2)?, k, h);
        let conv = Conv {
            x,
            k,
            nbr: Some(&self.host.incoming),
            w_self: &ws,
            w_nbr: &wn,
            bias: Some(&b),
            act: self.act,
        };
        let mut out = vec![0f32; n * h];
        par_rows(&mut out, h, |row0, o| conv.rows(row0, o));
        Ok((CpuStorage::F32(out), Shape::from((n, h))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, k) = x.dims2()?;
        let h = w.dim(0)?;
        let dy = dy.contiguous()?;
        let mut dz = vec![0f32; n * h];
        read_f32(y, |y| {
            read_f32(&dy, |dy| {
                let block = BLOCK_ROWS * h;
                dz.par_chunks_mut(block)
                    .zip(y.par_chunks(block).zip(dy.par_chunks(block)))
                    .for_each(|(z, (y, d))| kernels::act_backward(self.act, y, d, z));
            })
        })??;
        let dw = if w.track_op() {
            let g = read_f32(x, |x| {
                let gc = ConvGrad {
                    x,
                    k,
                    nbr: Some(&self.host.incoming),
                    dz: &dz,
                    h,
                };
                let blocks = n.div_ceil(GRAD_BLOCK_ROWS);
                let parts: Vec<WeightGrads> = (0..blocks)
                    .into_par_iter()
                    .map(|b| {
                        let mut g = WeightGrads::zeros(k, h);
                        let lo = b * GRAD_BLOCK_ROWS;
                        gc.accumulate(lo..(lo + GRAD_BLOCK_ROWS).min(n), &mut g);
                        g
                    })
                    .collect();
                let mut g = WeightGrads::zeros(k, h);
                for p in &parts {
                    g.add(p);
                }
                g
            })?;
            let stride = 2 * k + 1;
            let mut packed = vec![0f32; h * stride];
            for o in 0..h {
                let row = &mut packed[o * stride..][..stride];
                for i in 0..k {
                    row[i] = g.w_self[i * h + o];
                    row[k + i] = g.w_nbr[i * h + o];
                }
                row[2 * k] = g.bias[o];
            }
            Some(cpu(packed, (h, stride))?)
        } else {
            None
        };
        let dx = if x.track_op() {
            // dx_j = dz_j·W_root + (Σ_{j→i} dz_i)·W_rel: the same kernel over the reversed
            // edges, with the weights in their stored `[h, k]` layout.
            let (w_root, w_rel) = read_f32(w, |w| {
                let stride = 2 * k + 1;
                let mut a = Vec::with_capacity(h * k);
                let mut b = Vec::with_capacity(h * k);
                for o in 0..h {
                    a.extend_from_slice(&w[o * stride..][..k]);
                    b.extend_from_slice(&w[o * stride + k..][..k]);
                }
                (a, b)
            })?;
            let conv = Conv {
                x: &dz,
                k: h,
                nbr: Some(&self.host.outgoing),
                w_self: &w_root,
                w_nbr: &w_rel,
                bias: None,
                act: Act::Identity,
            };
            let mut dx = vec![0f32; n * k];
            par_rows(&mut dx, k, |row0, o| conv.rows(row0, o));
            Some(cpu(dx, (n, k))?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// Per-graph sum or mean of node states `[N, d]` → `[G, d]`.
struct PoolOp {
    host: Arc<HostBatch>,
    mean: bool,
}

impl CustomOp1 for PoolOp {
    fn name(&self) -> &'static str {
        "aiop-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d) = l.shape().dims2()?;
        let ptr = &self.host.graph_ptr;
        if ptr.last().copied() != Some(n as u32) {
            bail!("pool: {n} rows for a batch of {:?} nodes", ptr.last());
        }
        let x = slice(s, l)?;
        let g = ptr.len() - 1;
        let mut out = vec![0f32; g * d];
        for (gi, o) in out.chunks_exact_mut(d.max(1)).enumerate() {
            let (lo, hi) = (ptr[gi] as usize, ptr[gi + 1] as usize);
            for row in x[lo * d..hi * d].chunks_exact(d) {
                for (a, &b) in o.iter_mut().zip(row) {
                    *a += b;
                }
            }
            if self.mean {
                let c = (hi - lo) as f32;
                for a in o.iter_mut() {
                    *a /= c;
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((g, d))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let (n, d) = x.dims2()?;
        let grad = grad.contiguous()?;
        let ptr = &self.host.graph_ptr;
        let mut dx = vec![0f32; n * d];
        read_f32(&grad, |dg| {
            for (gi, row) in dg.chunks_exact(d.max(1)).enumerate() {
                let (lo, hi) = (ptr[gi] as usize, ptr[gi + 1] as usize);
                let c = (hi - lo) as f32;
                for o in dx[lo * d..hi * d].chunks_exact_mut(d) {
                    for (a, &b) in o.iter_mut().zip(row) {
                        *a = if self.mean { b / c } else { b };
                    }
                }
            }
        })?;
        Ok(Some(cpu(dx, (n, d))?))
    }
}

/// Node embeddings `[N, width]` of batch `b` from the flattened embedding variables (in
/// [`super::fast::EMBED_VARS`] order).
pub fn embed(flat: &Tensor, b: &Batch, dims: EmbedDims) -> candle_core::Result<Tensor> {
    if let Err(e) = dims.check(&b.host.nodes) {
        bail!("node embedding: {e}");
    }
    flat.apply_op1(EmbedOp {
        host: b.host.clone(),
        dims,
    })
}

/// One GraphConv layer and its activation as one op.
pub fn graph_conv(
    x: &Tensor,
    root: &Tensor,
    rel: &Tensor,
    bias: &Tensor,
    b: &Batch,
    act: Activation,
) -> candle_core::Result<Tensor> {
    let w = Tensor::cat(&[root, rel, &bias.unsqueeze(1)?], 1)?;
    x.contiguous()?.apply_op2(
        &w,
        ConvOp {
            host: b.host.clone(),
            act: act_of(act),
        },
    )
}

/// Pooling of node states into graph embeddings as one op.
pub fn pool(h: &Tensor, b: &Batch, pooling: Pooling) -> candle_core::Result<Tensor> {
    h.contiguous()?.apply_op1(PoolOp {
        host: b.host.clone(),
        mean: pooling == Pooling::Mean,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::predictor::features::tests::small_graph;
    use crate::predictor::features::{extract, FeatureConfig, GraphFeatures};
    use crate::predictor::init::{sorted_vars, var_builder};
    use crate::predictor::model::tests::tiny_config;
    use crate::predictor::model::{Config, Predictor, Regressor};
    use crate::rng::Rng;
    use crate::spaces::{self, SpaceId, Task};
    use candle_core::Var;
    use candle_nn::VarMap;

    /// `n` seeded NB-201 CIFAR-10 graphs' features.
    pub(crate) fn nb201_graphs(n: usize, fc: &FeatureConfig) -> Vec<GraphFeatures> {
        let mut rng = Rng::new(3);
        (0..n)
            .map(|_| {
                let g = spaces::sample(SpaceId::Nb201, &mut rng)
                    .build(Task::Cifar10)
                    .unwrap();
                extract(&g, fc)
            })
            .collect()
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Predictions and every variable's gradient of a squared loss, fused or generic.
    fn outputs(m: &Predictor, map: &VarMap, b: &Batch, fused: bool) -> Vec<Vec<f32>> {
        let y = if fused {
            m.predict(b).unwrap()
        } else {
            m.predict_generic(b).unwrap()
        };
        let t: Vec<f32> = (0..b.num_graphs).map(|i| i as f32 * 0.3 - 0.5).collect();
        let t = Tensor::from_vec(t, b.num_graphs, &Device::Cpu).unwrap();
        let loss = (&y - t).unwrap().sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let mut out = vec![flat(&y)];
        for (name, v) in sorted_vars(map) {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            out.push(flat(g));
        }
        out
    }

    #[test]
    fn fused_ops_match_the_generic_candle_ops() {
        let dev = Device::Cpu;
        let relu_sum = Config {
            activation: Activation::Relu,
            pooling: Pooling::Sum,
            ..Config::default()
        };
        for cfg in [Config::default(), relu_sum, tiny_config()] {
            let map = VarMap::new();
            let m = Predictor::new(&cfg, var_builder(&map, 5, &dev)).unwrap();
            let mut feats = nb201_graphs(3, &cfg.features());
            feats.push(extract(&small_graph(), &cfg.features()));
            let refs: Vec<&GraphFeatures> = feats.iter().collect();
            let b = Batch::pack(&refs, &dev).unwrap();
            let fused = outputs(&m, &map, &b, true);
            let generic = outputs(&m, &map, &b, false);
            for (i, (f, g)) in fused.iter().zip(&generic).enumerate() {
                let scale = g.iter().fold(0f32, |a, x| a.max(x.abs()));
                for (a, b) in f.iter().zip(g) {
                    assert!(
                        (a - b).abs() <= 1e-5 + 1e-4 * scale,
                        "{:?} output {i}: fused {a}, generic {b}",
                        cfg.activation
                    );
                }
            }
        }
    }

    #[test]
    fn fused_ops_do_not_depend_on_the_thread_count() {
        let dev = Device::Cpu;
        let map = VarMap::new();
        let cfg = Config::default();
        let m = Predictor::new(&cfg, var_builder(&map, 2, &dev)).unwrap();
        let feats = nb201_graphs(8, &cfg.features());
        let refs: Vec<&GraphFeatures> = feats.iter().collect();
        let b = Batch::pack(&refs, &dev).unwrap();
        assert!(b.num_nodes > 4 * GRAD_BLOCK_ROWS);
        let run = || outputs(&m, &map, &b, true);
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        assert_eq!(pool(1).install(run), pool(3).install(run));
    }

    /// Finite differences against the conv op's backward, for the input and every weight, at
    /// widths that take the SIMD kernels (8) and the scalar ones (3).
    #[test]
    fn conv_op_backward_matches_finite_differences() {
        let dev = Device::Cpu;
        let f1 = extract(&small_graph(), &crate::predictor::features::tests::cfg());
        let f2 = GraphFeatures {
            src: vec![0, 1, 0],
            dst: vec![1, 2, 2],
            ..f1.clone()
        };
        let b = Batch::pack(&[&f1, &f2], &dev).unwrap();
        let n = b.num_nodes;
        for (k, h) in [(8, 8), (3, 8), (8, 3)] {
            for act in [Activation::Tanh, Activation::Identity] {
                let vals = |len: usize, seed: u32| {
                    let v = crate::predictor::kernels::tests::values(len, seed);
                    v.into_iter().map(|x| x * 0.8).collect::<Vec<f32>>()
                };
                let var = |v: Vec<f32>, shape: (usize, usize)| {
                    Var::from_tensor(&Tensor::from_vec(v, shape, &dev).unwrap()).unwrap()
                };
                let x = var(vals(n * k, 1), (n, k));
                let root = var(vals(h * k, 2), (h, k));
                let rel = var(vals(h * k, 3), (h, k));
                let bias = var(vals(h, 4), (1, h));
                let r = Tensor::from_vec(vals(n * h, 5), (n, h), &dev).unwrap();
                let loss = || {
                    let bias = bias.as_tensor().squeeze(0).unwrap();
                    let y = graph_conv(
                        x.as_tensor(),
                        root.as_tensor(),
                        rel.as_tensor(),
                        &bias,
                        &b,
                        act,
                    )
                    .unwrap();
                    (y * &r).unwrap().sum_all().unwrap()
                };
                let grads = loss().backward().unwrap();
                let eps = 1e-2f32;
                for v in [&x, &root, &rel, &bias] {
                    let g = flat(grads.get(v.as_tensor()).unwrap());
                    let base = flat(v.as_tensor());
                    for i in 0..base.len() {
                        let mut p = base.clone();
                        let mut at = |d: f32| {
                            p[i] = base[i] + d;
                            v.set(&Tensor::from_vec(p.clone(), v.shape(), &dev).unwrap())
                                .unwrap();
                            loss().to_scalar::<f32>().unwrap() as f64
                        };
                        let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
                        v.set(&Tensor::from_vec(base.clone(), v.shape(), &dev).unwrap())
                            .unwrap();
                        assert!(
                            (fd - g[i] as f64).abs() <= 2e-3 + 1e-2 * fd.abs(),
                            "k {k} h {h} {act:?}: element {i}: finite difference {fd}, backward {}",
                            g[i]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn constants_get_no_gradient_and_bad_indices_are_errors() {
        let dev = Device::Cpu;
        let f = extract(&small_graph(), &crate::predictor::features::tests::cfg());
        let b = Batch::pack(&[&f], &dev).unwrap();
        let n = b.num_nodes;
        let x = Tensor::ones((n, 8), DType::F32, &dev).unwrap();
        let w = Var::ones((8, 8), DType::F32, &dev).unwrap();
        let bias = Tensor::zeros(8, DType::F32, &dev).unwrap();
        let y = graph_conv(
            &x,
            w.as_tensor(),
            w.as_tensor(),
            &bias,
            &b,
            Activation::Tanh,
        )
        .unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        assert!(grads.get(w.as_tensor()).is_some());
        // An op index outside the table is an error, not a panic.
        let dims = EmbedDims::of(&Config::default());
        let mut bad = f.clone();
        bad.op[0] = 99;
        let bb = Batch::pack(&[&bad], &dev).unwrap();
        let p = Tensor::zeros(dims.len(), DType::F32, &dev).unwrap();
        assert!(embed(&p, &bb, dims).is_err());
    }
}
