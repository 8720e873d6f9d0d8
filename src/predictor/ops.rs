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
const GRAD_BLOCK_ROWS: usize = 1024;

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
