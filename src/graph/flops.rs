//! FLOPs and parameter counts of a node, from the node alone, in two conventions.
//!
//! - [`Convention::Macs`] (the default): multiply-accumulates of every convolution (grouped,
//!   dilated, depthwise), transposed convolution and linear node, counted on every call (a node
//!   with `batch` 9 counts 9 times). Bias, normalisation, activations, pooling, additions: 0.
//! - [`Convention::Naslib`]: the rules behind NAS-Bench-Suite-Zero's published `flops`
//!   (tensorwatch / torchstat on NASLib's models at batch 1), quirks included:
//!   conv `k*k*Cin*(Cout/groups)*Ho*Wo` plus `Cout*Ho*Wo` with a bias; transposed conv 0 (not
//!   supported by the counter); batch norm `numel(in)` times 2 if affine; ReLU, ReLU6 and leaky
//!   ReLU `numel(in)`; max/avg pool `C*Ho*Wo*kh*kw`; global average *pooling layer*
//!   `C*(H+1)*(W+1)`; linear `in*out` (bias not counted); everything else, including the tensor
//!   op `mean`, 0; a module called several times counts once (its last call).
//!
//! Parameters are the same in both: conv `Cout*(Cin/groups)*kh*kw (+Cout)`, transposed conv
//! `Cin*(Cout/groups)*kh*kw (+Cout)`, linear `in*out (+out)`, affine batch norm `2C`.
//! Counts are checked ([`node_flops_checked`], [`node_params_checked`]: `None` past `u64::MAX`);
//! the plain functions saturate instead. A graph read from JSON has been checked not to
//! overflow, in either convention, node by node and in total (`json::from_json`), so for it
//! the plain functions are exact.

use serde::{Deserialize, Serialize};

use super::{Node, Op};

/// How FLOPs are counted. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Convention {
    #[default]
    Macs,
    Naslib,
}

impl std::str::FromStr for Convention {
    type Err = String;
    fn from_str(s: &str) -> Result<Convention, String> {
        match s {
            "macs" => Ok(Convention::Macs),
            "naslib" => Ok(Convention::Naslib),
            _ => Err(format!(
                "unknown FLOPs convention '{s}' (expected macs or naslib)"
            )),
        }
    }
}

fn mul(xs: &[u64]) -> Option<u64> {
    xs.iter().try_fold(1u64, |a, &b| a.checked_mul(b))
}

/// Per-call multiply-accumulates of a weighted node (0 for other ops).
fn macs_per_call(n: &Node) -> Option<u64> {
    let (i, o, a) = (n.input, n.output, &n.attrs);
    let k = a.kernel[0] as u64 * a.kernel[1] as u64;
    let g = a.groups.max(1) as u64;
    match n.op {
        Op::Conv | Op::DepthwiseConv => {
            mul(&[k, i.c as u64 / g, o.c as u64, o.h as u64, o.w as u64])
        }
        // Every input pixel is scattered through the whole kernel into every output channel.
        Op::ConvTranspose => mul(&[k, i.c as u64, o.c as u64 / g, i.h as u64, i.w as u64]),
        Op::Linear => mul(&[i.c as u64, o.c as u64, o.h as u64, o.w as u64]),
        _ => Some(0),
    }
}

/// FLOPs of one node under a convention, saturating at `u64::MAX`.
pub fn node_flops(n: &Node, convention: Convention) -> u64 {
    node_flops_checked(n, convention).unwrap_or(u64::MAX)
}

/// FLOPs of one node under a convention; `None` when they do not fit in a `u64`.
pub fn node_flops_checked(n: &Node, convention: Convention) -> Option<u64> {
    match convention {
        Convention::Macs => macs_per_call(n)?.checked_mul(n.batch as u64),
        Convention::Naslib => naslib_flops(n),
    }
}

fn naslib_flops(n: &Node) -> Option<u64> {
    let (i, o, a) = (n.input, n.output, &n.attrs);
    let k = a.kernel[0] as u64 * a.kernel[1] as u64;
    match n.op {
        Op::Conv | Op::DepthwiseConv => {
            let g = a.groups.max(1) as u64;
            let base = mul(&[k, i.c as u64, o.c as u64 / g, o.h as u64, o.w as u64])?;
            let bias = if a.bias { numel(o)? } else { 0 };
            base.checked_add(bias)
        }
        Op::ConvTranspose => Some(0),
        Op::BatchNorm => numel(i)?.checked_mul(if a.affine { 2 } else { 1 }),
        Op::Relu | Op::Relu6 | Op::LeakyRelu => numel(i),
        Op::MaxPool | Op::AvgPool => numel(o)?.checked_mul(k),
        Op::GlobalAvgPool => mul(&[i.c as u64, i.h as u64 + 1, i.w as u64 + 1]),
        Op::Linear => mul(&[i.c as u64, o.c as u64, o.h as u64, o.w as u64]),
        _ => Some(0),
    }
}

/// Elements of a shape, checked (`Shape::numel` saturates).
fn numel(s: super::Shape) -> Option<u64> {
    mul(&[s.c as u64, s.h as u64, s.w as u64])
}

/// Learned parameters of one node, saturating at `u64::MAX`.
pub fn node_params(n: &Node) -> u64 {
    node_params_checked(n).unwrap_or(u64::MAX)
}

/// Learned parameters of one node; `None` when they do not fit in a `u64`.
pub fn node_params_checked(n: &Node) -> Option<u64> {
    let (i, o, a) = (n.input, n.output, &n.attrs);
    let k = a.kernel[0] as u64 * a.kernel[1] as u64;
    let g = a.groups.max(1) as u64;
    let bias = |c: u32| if a.bias { c as u64 } else { 0 };
    match n.op {
        Op::Conv | Op::DepthwiseConv => {
            mul(&[o.c as u64, i.c as u64 / g, k])?.checked_add(bias(o.c))
        }
        Op::ConvTranspose => mul(&[i.c as u64, o.c as u64 / g, k])?.checked_add(bias(o.c)),
        Op::Linear => mul(&[i.c as u64, o.c as u64])?.checked_add(bias(o.c)),
        Op::BatchNorm if a.affine => Some(2 * i.c as u64),
        _ => Some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::builder::Conv;
    use crate::graph::GraphBuilder;

    #[test]
    fn conv_counts_in_both_conventions() {
        let mut b = GraphBuilder::new();
        let x = b.input(3, 32, 32).unwrap();
        let c = b.conv(x, Conv::new(16, 3).bias(true)).unwrap();
        let bn = b.batch_norm(c, true).unwrap();
        b.relu(bn).unwrap();
        let g = b.finish();
        let conv = 3 * 3 * 3 * 16 * 32 * 32;
        assert_eq!(g.flops(Convention::Macs), conv);
        let bias = 16 * 32 * 32;
        let bn = 2 * 16 * 32 * 32;
        let relu = 16 * 32 * 32;
        assert_eq!(g.flops(Convention::Naslib), conv + bias + bn + relu);
        assert_eq!(g.params(), 3 * 3 * 3 * 16 + 16 + 32);
    }

    #[test]
    fn tiles_count_every_call_in_macs_and_once_in_naslib() {
        let mut b = GraphBuilder::new();
        let x = b.input_batched(3, 8, 8, 9).unwrap();
        let c = b.conv(x, Conv::new(4, 1)).unwrap();
        let s = b.batch_to_depth(c).unwrap();
        let p = b.global_avg_pool(s).unwrap();
        b.linear(p, 10, true).unwrap();
        let g = b.finish();
        let conv = 3 * 4 * 8 * 8;
        assert_eq!(g.flops(Convention::Macs), 9 * conv + 36 * 10);
        assert_eq!(g.flops(Convention::Naslib), conv + 36 * 9 * 9 + 36 * 10);
        assert_eq!(g.params(), 12 + 360 + 10);
    }

    #[test]
    fn depthwise_and_transposed() {
        let mut b = GraphBuilder::new();
        let x = b.input(8, 10, 10).unwrap();
        b.depthwise(x, Conv::new(8, 3)).unwrap();
        b.conv_transpose(
            x,
            Conv::new(4, 3)
                .stride(2)
                .pad(1)
                .output_padding(1)
                .bias(true),
        )
        .unwrap();
        let g = b.finish();
        assert_eq!(g.flops(Convention::Macs), 9 * 8 * 100 + 9 * 8 * 4 * 100);
        assert_eq!(g.flops(Convention::Naslib), 9 * 8 * 100);
        assert_eq!(g.params(), 72 + 8 * 4 * 9 + 4);
    }
}
