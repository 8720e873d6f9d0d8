//! CPU kernels of the predictor: the fused GraphConv row kernel (neighbour sum, both linear maps,
//! bias and activation in one pass over a block of rows), its weight-gradient kernel, a rational
//! `tanh`, and compressed adjacency lists. Plain slices in, plain slices out: no tensors, no
//! allocation in the inner loops, no `unsafe` (SIMD through `pulp`'s safe, runtime-dispatched
//! API: AVX2+FMA where the CPU has it, scalar code elsewhere).
//!
//! Layouts: node states are row-major `[rows, width]`; a linear map used by a kernel is stored
//! input-major, `w[i * out + o]` (the transpose of a `candle_nn::Linear` weight), so that one
//! output row is a sum of input-scaled weight rows.
//!
//! Invariants: results do not depend on how rows are split between calls or threads (every row
//! is computed by the same instruction sequence, a neighbour sum adds in edge order); the weight
//! gradient of a row range is a sum in row order, so callers that add per-block partials in block
//! order get the same bits on any number of threads; [`tanh`] is within 4e-7 of the exact
//! function, odd, and in [−1, 1].

use pulp::{Simd, WithSimd};

/// Element-wise activation of a kernel's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Tanh,
    Relu,
    Identity,
}

/// |x| beyond which `tanh` is taken as ±1 (tanh(8) = 1 − 2.3e-7).
const TANH_CLAMP: f32 = 8.0;
/// tanh(x) ≈ x·P(x²)/Q(x²) on [−8, 8]: a weighted least-squares rational fit made for this
/// crate (max error 4e-7 in f32 arithmetic; `tests::tanh_is_accurate` checks it).
const TANH_P: [f32; 7] = [
    1.0,
    0.131_206_44,
    0.003_145_232_6,
    1.159_914_2e-5,
    -2.213_624_1e-8,
    6.276_415_5e-11,
    -1.132_141_7e-13,
];
const TANH_Q: [f32; 4] = [1.0, 0.464_539_74, 0.024_658_531, 0.000_260_695_76];

/// The rational `tanh` of the kernels, one value (same formula as the vector form, but the
/// vector form uses fused multiply-adds where the CPU has them).
pub fn tanh(x: f32) -> f32 {
    let x = x.clamp(-TANH_CLAMP, TANH_CLAMP);
    let t = x * x;
    let mut p = TANH_P[6];
    for &c in TANH_P[..6].iter().rev() {
        p = p * t + c;
    }
    let mut q = TANH_Q[3];
    for &c in TANH_Q[..3].iter().rev() {
        q = q * t + c;
    }
    (x * p / q).clamp(-1.0, 1.0)
}

#[inline(always)]
fn tanh_v<S: Simd>(s: S, x: S::f32s) -> S::f32s {
    let x = s.min_f32s(
        s.max_f32s(x, s.splat_f32s(-TANH_CLAMP)),
        s.splat_f32s(TANH_CLAMP),
    );
    let t = s.mul_f32s(x, x);
    let mut p = s.splat_f32s(TANH_P[6]);
    for &c in TANH_P[..6].iter().rev() {
        p = s.mul_add_e_f32s(p, t, s.splat_f32s(c));
    }
    let mut q = s.splat_f32s(TANH_Q[3]);
    for &c in TANH_Q[..3].iter().rev() {
        q = s.mul_add_e_f32s(q, t, s.splat_f32s(c));
    }
    let y = s.div_f32s(s.mul_f32s(x, p), q);
    s.min_f32s(s.max_f32s(y, s.splat_f32s(-1.0)), s.splat_f32s(1.0))
}

#[inline(always)]
fn act_v<S: Simd>(s: S, act: Act, x: S::f32s) -> S::f32s {
    match act {
        Act::Tanh => tanh_v(s, x),
        Act::Relu => s.max_f32s(x, s.splat_f32s(0.0)),
        Act::Identity => x,
    }
}

fn act_scalar(act: Act, x: f32) -> f32 {
    match act {
        Act::Tanh => tanh(x),
        Act::Relu => x.max(0.0),
        Act::Identity => x,
    }
}

/// Adjacency lists in compressed rows: row `i` is `idx[ptr[i]..ptr[i + 1]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Csr {
    pub ptr: Vec<u32>,
    pub idx: Vec<u32>,
}

impl Csr {
    /// Row `i` lists `from[e]` for every edge `e` with `to[e] == i`, in edge order. Indices must
    /// be below `n`.
    pub fn gather(n: usize, from: &[u32], to: &[u32]) -> Csr {
        let mut c = Csr::default();
        c.rebuild(n, from, to);
        c
    }

    /// [`Csr::gather`] into this value's buffers (no allocation once they are large enough).
    pub fn rebuild(&mut self, n: usize, from: &[u32], to: &[u32]) {
        self.ptr.clear();
        self.ptr.resize(n + 1, 0);
        for &t in to {
            self.ptr[t as usize + 1] += 1;
        }
        for i in 0..n {
            self.ptr[i + 1] += self.ptr[i];
        }
        self.idx.clear();
        self.idx.resize(from.len(), 0);
        // Fill positions: ptr[i] counts up while row i fills, then the prefix is shifted back.
        for (&f, &t) in from.iter().zip(to) {
            let p = &mut self.ptr[t as usize];
            self.idx[*p as usize] = f;
            *p += 1;
        }
        for i in (1..=n).rev() {
            self.ptr[i] = self.ptr[i - 1];
        }
        self.ptr[0] = 0;
    }

    pub fn rows(&self) -> usize {
        self.ptr.len().saturating_sub(1)
    }

    #[inline]
    pub fn row(&self, i: usize) -> &[u32] {
        &self.idx[self.ptr[i] as usize..self.ptr[i + 1] as usize]
    }
}

/// One fused GraphConv-like map over rows of `x`:
/// `out_i = act(b + x_i·W_self + (Σ_{j ∈ nbr(i)} x_j)·W_nbr)`.
#[derive(Debug, Clone, Copy)]
pub struct Conv<'a> {
    /// All input rows, `[n, k]`.
    pub x: &'a [f32],
    /// Input width.
    pub k: usize,
    /// Neighbour lists into the rows of `x`; `None`: no neighbour term.
    pub nbr: Option<&'a Csr>,
    /// `[k, h]`, input-major.
    pub w_self: &'a [f32],
    /// `[k, h]`, input-major (unused without `nbr`).
    pub w_nbr: &'a [f32],
    /// `[h]` or none.
    pub bias: Option<&'a [f32]>,
    pub act: Act,
}

impl Conv<'_> {
    /// Output width.
    pub fn h(&self) -> usize {
        self.w_self.len() / self.k.max(1)
    }

    /// Rows `row0..row0 + out.len() / h` of the output into `out`.
    pub fn rows(&self, row0: usize, out: &mut [f32]) {
        debug_assert_eq!(out.len() % self.h().max(1), 0);
        dispatch(ConvOp { c: self, row0, out });
    }
}

/// Run `op` with the best SIMD instruction set of this CPU.
fn dispatch<Op: WithSimd>(op: Op) -> Op::Output {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        return Simd::vectorize(simd, op);
    }
    Simd::vectorize(pulp::Scalar::new(), op)
}

fn lanes<S: Simd>() -> usize {
    std::mem::size_of::<S::f32s>() / std::mem::size_of::<f32>()
}

struct ConvOp<'a, 'b> {
    c: &'b Conv<'a>,
    row0: usize,
    out: &'b mut [f32],
}

impl WithSimd for ConvOp<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let h = self.c.h();
        let l = lanes::<S>();
        if h.is_multiple_of(l) && l > 1 {
            match h / l {
                1 => conv_v::<S, 1>(s, self.c, self.row0, self.out),
                2 => conv_v::<S, 2>(s, self.c, self.row0, self.out),
                4 => conv_v::<S, 4>(s, self.c, self.row0, self.out),
                8 => conv_v::<S, 8>(s, self.c, self.row0, self.out),
                _ => conv_scalar(self.c, self.row0, self.out),
            }
        } else {
            conv_scalar(self.c, self.row0, self.out)
        }
    }
}

/// `acc += Σ_{j ∈ nbr} x_j` over rows of width `k` (vectorised over the width).
#[inline(always)]
fn neighbour_sum<S: Simd>(s: S, x: &[f32], k: usize, nbr: &[u32], acc: &mut [f32]) {
    acc.fill(0.0);
    for &j in nbr {
        let xj = &x[j as usize * k..][..k];
        let (av, at) = S::as_mut_simd_f32s(acc);
        let (xv, xt) = S::as_simd_f32s(xj);
        for (a, &b) in av.iter_mut().zip(xv) {
            *a = s.add_f32s(*a, b);
        }
        for (a, &b) in at.iter_mut().zip(xt) {
            *a += b;
        }
    }
}

#[inline(always)]
fn conv_v<S: Simd, const HV: usize>(s: S, c: &Conv, row0: usize, out: &mut [f32]) {
    let h = HV * lanes::<S>();
    let k = c.k;
    let ws = pulp::as_arrays::<HV, _>(S::as_simd_f32s(c.w_self).0).0;
    let wn = pulp::as_arrays::<HV, _>(S::as_simd_f32s(c.w_nbr).0).0;
    let bias: [S::f32s; HV] = match c.bias {
        Some(b) => {
            let bv = S::as_simd_f32s(b).0;
            std::array::from_fn(|v| bv[v])
        }
        None => [s.splat_f32s(0.0); HV],
    };
    let mut agg = vec![0f32; 2 * k];
    let rows = out.len() / h;
    // Two rows at a time share the weight loads; wide outputs go one row at a time.
    let pair = if HV <= 4 { rows / 2 } else { 0 };
    for p in 0..pair {
        let i = row0 + 2 * p;
        block::<S, HV, 2>(
            s,
            c,
            ws,
            wn,
            bias,
            &mut agg,
            i,
            &mut out[2 * p * h..][..2 * h],
        );
    }
    for r in 2 * pair..rows {
        block::<S, HV, 1>(
            s,
            c,
            ws,
            wn,
            bias,
            &mut agg,
            row0 + r,
            &mut out[r * h..][..h],
        );
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn block<S: Simd, const HV: usize, const R: usize>(
    s: S,
    c: &Conv,
    ws: &[[S::f32s; HV]],
    wn: &[[S::f32s; HV]],
    bias: [S::f32s; HV],
    agg: &mut [f32],
    i0: usize,
    out: &mut [f32],
) {
    let k = c.k;
    let mut acc = [bias; R];
    let xs: [&[f32]; R] = std::array::from_fn(|r| &c.x[(i0 + r) * k..][..k]);
    for (kk, w) in ws[..k].iter().enumerate() {
        for r in 0..R {
            let a = s.splat_f32s(xs[r][kk]);
            for v in 0..HV {
                acc[r][v] = s.mul_add_e_f32s(a, w[v], acc[r][v]);
            }
        }
    }
    if let Some(nbr) = c.nbr {
        let mut any = false;
        for r in 0..R {
            let row = nbr.row(i0 + r);
            any |= !row.is_empty();
            neighbour_sum(s, c.x, k, row, &mut agg[r * k..][..k]);
        }
        if any {
            for (kk, w) in wn[..k].iter().enumerate() {
                for r in 0..R {
                    let a = s.splat_f32s(agg[r * k + kk]);
                    for v in 0..HV {
                        acc[r][v] = s.mul_add_e_f32s(a, w[v], acc[r][v]);
                    }
                }
            }
        }
    }
    let h = HV * lanes::<S>();
    for r in 0..R {
        let o = S::as_mut_simd_f32s(&mut out[r * h..][..h]).0;
        for v in 0..HV {
            o[v] = act_v(s, c.act, acc[r][v]);
        }
    }
}

/// Any widths, no SIMD: the fallback of [`Conv::rows`].
fn conv_scalar(c: &Conv, row0: usize, out: &mut [f32]) {
    let (k, h) = (c.k, c.h());
    let mut agg = vec![0f32; k];
    for (r, o) in out.chunks_exact_mut(h).enumerate() {
        let i = row0 + r;
        match c.bias {
            Some(b) => o.copy_from_slice(b),
            None => o.fill(0.0),
        }
        for (kk, &a) in c.x[i * k..][..k].iter().enumerate() {
            for (y, &w) in o.iter_mut().zip(&c.w_self[kk * h..][..h]) {
                *y += a * w;
            }
        }
        if let Some(nbr) = c.nbr {
            agg.fill(0.0);
            for &j in nbr.row(i) {
                for (a, &b) in agg.iter_mut().zip(&c.x[j as usize * k..][..k]) {
                    *a += b;
                }
            }
            for (kk, &a) in agg.iter().enumerate() {
                for (y, &w) in o.iter_mut().zip(&c.w_nbr[kk * h..][..h]) {
                    *y += a * w;
                }
            }
        }
        for y in o.iter_mut() {
            *y = act_scalar(c.act, *y);
        }
    }
}

/// `y = act(x)` in place, with the kernels' activation arithmetic.
pub fn activate(act: Act, y: &mut [f32]) {
    struct Op<'a>(Act, &'a mut [f32]);
    impl WithSimd for Op<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, s: S) {
            let (v, t) = S::as_mut_simd_f32s(self.1);
            for x in v {
                *x = act_v(s, self.0, *x);
            }
            for x in t {
                *x = act_scalar(self.0, *x);
            }
        }
    }
    if act != Act::Identity {
        dispatch(Op(act, y));
    }
}

/// `dz = dy · act'(·)` written through the activation's output `y` (tanh: 1 − y², ReLU: y > 0).
pub fn act_backward(act: Act, y: &[f32], dy: &[f32], dz: &mut [f32]) {
    match act {
        Act::Tanh => {
            for ((z, &y), &d) in dz.iter_mut().zip(y).zip(dy) {
                *z = d * (1.0 - y * y);
            }
        }
        Act::Relu => {
            for ((z, &y), &d) in dz.iter_mut().zip(y).zip(dy) {
                *z = if y > 0.0 { d } else { 0.0 };
            }
        }
        Act::Identity => dz.copy_from_slice(dy),
    }
}

/// Gradients of the weights of a [`Conv`] from the gradient `dz` of its pre-activation output.
#[derive(Debug, Clone, Copy)]
pub struct ConvGrad<'a> {
    /// The forward's input rows `[n, k]`.
    pub x: &'a [f32],
    pub k: usize,
    pub nbr: Option<&'a Csr>,
    /// `[n, h]`.
    pub dz: &'a [f32],
    pub h: usize,
}

/// Per-block weight gradient sums: `[k, h]` self, `[k, h]` neighbour, `[h]` bias.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightGrads {
    pub w_self: Vec<f32>,
    pub w_nbr: Vec<f32>,
    pub bias: Vec<f32>,
}

impl WeightGrads {
    pub fn zeros(k: usize, h: usize) -> WeightGrads {
        WeightGrads {
            w_self: vec![0.0; k * h],
            w_nbr: vec![0.0; k * h],
            bias: vec![0.0; h],
        }
    }

    /// `self += o`, element by element.
    pub fn add(&mut self, o: &WeightGrads) {
        for (a, b) in [
            (&mut self.w_self, &o.w_self),
            (&mut self.w_nbr, &o.w_nbr),
            (&mut self.bias, &o.bias),
        ] {
            for (x, &y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
    }
}

impl ConvGrad<'_> {
    /// Add the contributions of rows `rows` to `g` (`g` sized by [`WeightGrads::zeros`]).
    pub fn accumulate(&self, rows: std::ops::Range<usize>, g: &mut WeightGrads) {
        dispatch(GradOp { c: self, rows, g });
    }
}

struct GradOp<'a, 'b> {
    c: &'b ConvGrad<'a>,
    rows: std::ops::Range<usize>,
    g: &'b mut WeightGrads,
}

impl WithSimd for GradOp<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let l = lanes::<S>();
        let h = self.c.h;
        if h.is_multiple_of(l) && l > 1 {
            match h / l {
                1 => grad_v::<S, 1>(s, self.c, self.rows, self.g),
                2 => grad_v::<S, 2>(s, self.c, self.rows, self.g),
                4 => grad_v::<S, 4>(s, self.c, self.rows, self.g),
                _ => grad_scalar(self.c, self.rows, self.g),
            }
        } else {
            grad_scalar(self.c, self.rows, self.g)
        }
    }
}

/// Rows per block of the weight-gradient kernel (its inputs then stay in L1).
const GRAD_TILE_ROWS: usize = 64;

#[inline(always)]
fn grad_v<S: Simd, const HV: usize>(
    s: S,
    c: &ConvGrad,
    rows: std::ops::Range<usize>,
    g: &mut WeightGrads,
) {
    let (k, h) = (c.k, c.h);
    let mut agg = vec![0f32; GRAD_TILE_ROWS * k];
    let mut lo = rows.start;
    while lo < rows.end {
        let hi = (lo + GRAD_TILE_ROWS).min(rows.end);
        let m = hi - lo;
        let dz = &c.dz[lo * h..hi * h];
        {
            let gb = S::as_mut_simd_f32s(&mut g.bias).0;
            for row in pulp::as_arrays::<HV, _>(S::as_simd_f32s(dz).0).0 {
                for v in 0..HV {
                    gb[v] = s.add_f32s(gb[v], row[v]);
                }
            }
        }
        outer_tile::<S, HV>(s, &c.x[lo * k..hi * k], k, dz, &mut g.w_self);
        if let Some(nbr) = c.nbr {
            for r in 0..m {
                neighbour_sum(s, c.x, k, nbr.row(lo + r), &mut agg[r * k..][..k]);
            }
            outer_tile::<S, HV>(s, &agg[..m * k], k, dz, &mut g.w_nbr);
        }
        lo = hi;
    }
}

/// `w[kk] += Σ_r a[r][kk]·dz[r]` (rows in order), three inputs `kk` at a time held in registers.
#[inline(always)]
fn outer_tile<S: Simd, const HV: usize>(s: S, a: &[f32], k: usize, dz: &[f32], w: &mut [f32]) {
    let dz = pulp::as_arrays::<HV, _>(S::as_simd_f32s(dz).0).0;
    let wv = pulp::as_arrays_mut::<HV, _>(S::as_mut_simd_f32s(w).0).0;
    let mut kk = 0;
    while kk + 3 <= k {
        let mut acc0 = wv[kk];
        let mut acc1 = wv[kk + 1];
        let mut acc2 = wv[kk + 2];
        for (row, d) in a.chunks_exact(k).zip(dz) {
            let b0 = s.splat_f32s(row[kk]);
            let b1 = s.splat_f32s(row[kk + 1]);
            let b2 = s.splat_f32s(row[kk + 2]);
            for v in 0..HV {
                acc0[v] = s.mul_add_e_f32s(b0, d[v], acc0[v]);
                acc1[v] = s.mul_add_e_f32s(b1, d[v], acc1[v]);
                acc2[v] = s.mul_add_e_f32s(b2, d[v], acc2[v]);
            }
        }
        wv[kk] = acc0;
        wv[kk + 1] = acc1;
        wv[kk + 2] = acc2;
        kk += 3;
    }
    while kk < k {
        let mut acc = wv[kk];
        for (row, d) in a.chunks_exact(k).zip(dz) {
            let b = s.splat_f32s(row[kk]);
            for v in 0..HV {
                acc[v] = s.mul_add_e_f32s(b, d[v], acc[v]);
            }
        }
        wv[kk] = acc;
        kk += 1;
    }
}

fn grad_scalar(c: &ConvGrad, rows: std::ops::Range<usize>, g: &mut WeightGrads) {
    let (k, h) = (c.k, c.h);
    let mut agg = vec![0f32; k];
    for i in rows {
        let dz = &c.dz[i * h..][..h];
        for (b, &d) in g.bias.iter_mut().zip(dz) {
            *b += d;
        }
        for (kk, &a) in c.x[i * k..][..k].iter().enumerate() {
            for (w, &d) in g.w_self[kk * h..][..h].iter_mut().zip(dz) {
                *w += a * d;
            }
        }
        if let Some(nbr) = c.nbr {
            agg.fill(0.0);
            for &j in nbr.row(i) {
                for (a, &b) in agg.iter_mut().zip(&c.x[j as usize * k..][..k]) {
                    *a += b;
                }
            }
            for (kk, &a) in agg.iter().enumerate() {
                for (w, &d) in g.w_nbr[kk * h..][..h].iter_mut().zip(dz) {
                    *w += a * d;
                }
            }
        }
    }
}

/// The transpose of a row-major `[rows, cols]` matrix.
pub fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small deterministic generator for test data.
    pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn tanh_is_accurate() {
        let mut worst = 0f64;
        for i in -120_000..=120_000 {
            let x = i as f32 * 1e-4;
            let e = (tanh(x) as f64 - (x as f64).tanh()).abs();
            worst = worst.max(e);
        }
        assert!(worst < 4e-7, "{worst}");
        let mut y = (-4000..4000).map(|i| i as f32 * 3e-3).collect::<Vec<_>>();
        let x = y.clone();
        activate(Act::Tanh, &mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!((a.tanh() - b).abs() < 4e-7 && b.abs() <= 1.0);
        }
        assert!((tanh(100.0) - 1.0).abs() < 4e-7 && tanh(-100.0) == -tanh(100.0));
        assert!(tanh(f32::INFINITY) <= 1.0);
    }

    #[test]
    fn csr_rows_keep_edge_order() {
        let c = Csr::gather(4, &[0, 2, 1, 0], &[1, 1, 3, 3]);
        assert_eq!(c.rows(), 4);
        assert_eq!(c.row(0), &[] as &[u32]);
        assert_eq!(c.row(1), &[0, 2]);
        assert_eq!(c.row(2), &[] as &[u32]);
        assert_eq!(c.row(3), &[1, 0]);
    }

    /// The SIMD kernels against the scalar ones, at several widths and odd row counts.
    #[test]
    fn simd_kernels_match_scalar() {
        let n = 9;
        let src = [0u32, 0, 1, 3, 4, 4, 7, 2];
        let dst = [1u32, 2, 2, 4, 5, 8, 8, 8];
        let nbr = Csr::gather(n, &src, &dst);
        for (k, h) in [(32, 32), (64, 32), (5, 8), (32, 64), (6, 3)] {
            let x = values(n * k, 1);
            let ws = values(k * h, 2);
            let wn = values(k * h, 3);
            let b = values(h, 4);
            for act in [Act::Tanh, Act::Relu, Act::Identity] {
                let c = Conv {
                    x: &x,
                    k,
                    nbr: Some(&nbr),
                    w_self: &ws,
                    w_nbr: &wn,
                    bias: Some(&b),
                    act,
                };
                let mut fast = vec![0f32; n * h];
                c.rows(0, &mut fast);
                let mut part = vec![0f32; n * h];
                c.rows(0, &mut part[..3 * h]);
                c.rows(3, &mut part[3 * h..]);
                assert_eq!(fast, part, "rows split differently");
                let mut slow = vec![0f32; n * h];
                conv_scalar(&c, 0, &mut slow);
                for (a, b) in fast.iter().zip(&slow) {
                    assert!(
                        (a - b).abs() < 1e-5 * (1.0 + b.abs()),
                        "{k}x{h}: {a} vs {b}"
                    );
                }
            }
            let dz = values(n * h, 5);
            let gc = ConvGrad {
                x: &x,
                k,
                nbr: Some(&nbr),
                dz: &dz,
                h,
            };
            let mut fast = WeightGrads::zeros(k, h);
            gc.accumulate(0..n, &mut fast);
            let mut slow = WeightGrads::zeros(k, h);
            grad_scalar(&gc, 0..n, &mut slow);
            for (a, b) in [
                (&fast.w_self, &slow.w_self),
                (&fast.w_nbr, &slow.w_nbr),
                (&fast.bias, &slow.bias),
            ] {
                for (a, b) in a.iter().zip(b) {
                    assert!(
                        (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                        "{k}x{h}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
