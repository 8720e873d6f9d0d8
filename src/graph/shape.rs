//! Shapes, per-node attributes and the one shape rule of every op.
//!
//! [`infer`] is the single source of truth for shapes: the builder calls it to create nodes and
//! the JSON reader calls it to validate declared shapes, so a graph that exists in memory is
//! always shape-consistent. Shapes are per sample (channels, height, width); how many times a node
//! runs per network input (its `batch`, 9 for the jigsaw encoder's tiles) travels separately.

use serde::{Deserialize, Serialize};

use super::op::Op;

/// Largest channel count, height or width accepted anywhere (a guard against absurd inputs).
pub const MAX_DIM: u32 = 1 << 20;
/// Largest kernel size, stride, padding or dilation accepted.
pub const MAX_KERNEL: u32 = 1 << 12;

/// A per-sample tensor shape: channels, height, width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Shape {
    pub c: u32,
    pub h: u32,
    pub w: u32,
}

impl Shape {
    pub const fn new(c: u32, h: u32, w: u32) -> Shape {
        Shape { c, h, w }
    }

    /// Number of elements (saturating).
    pub fn numel(self) -> u64 {
        (self.c as u64)
            .saturating_mul(self.h as u64)
            .saturating_mul(self.w as u64)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {}, {}]", self.c, self.h, self.w)
    }
}

/// The attributes a node may carry beyond its op and shapes. Ops ignore the ones that do not
/// apply to them, and builders leave those at their defaults so that hashing is canonical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attrs {
    /// Kernel (kh, kw) of convolutions and pools.
    pub kernel: [u32; 2],
    pub stride: [u32; 2],
    /// Zero padding added on each side (top/bottom, left/right).
    pub padding: [u32; 2],
    pub dilation: [u32; 2],
    pub groups: u32,
    /// Extra output size of a transposed convolution.
    pub output_padding: [u32; 2],
    /// Whether a weighted node has a bias vector.
    pub bias: bool,
    /// Whether a batch norm has learned scale and shift.
    pub affine: bool,
}

impl Default for Attrs {
    fn default() -> Attrs {
        Attrs {
            kernel: [1, 1],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            output_padding: [0, 0],
            bias: false,
            affine: true,
        }
    }
}

/// Which attributes an op reads; the JSON reader rejects the others and the builder never sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrUse {
    pub kernel: bool,
    pub stride: bool,
    pub padding: bool,
    pub dilation: bool,
    pub groups: bool,
    pub output_padding: bool,
    pub bias: bool,
    pub affine: bool,
}

impl Op {
    /// The attributes this op reads.
    pub fn attr_use(self) -> AttrUse {
        let none = AttrUse {
            kernel: false,
            stride: false,
            padding: false,
            dilation: false,
            groups: false,
            output_padding: false,
            bias: false,
            affine: false,
        };
        match self {
            Op::Conv | Op::DepthwiseConv => AttrUse {
                kernel: true,
                stride: true,
                padding: true,
                dilation: true,
                groups: true,
                bias: true,
                ..none
            },
            Op::ConvTranspose => AttrUse {
                kernel: true,
                stride: true,
                padding: true,
                dilation: true,
                groups: true,
                output_padding: true,
                bias: true,
                ..none
            },
            Op::MaxPool | Op::AvgPool => AttrUse {
                kernel: true,
                stride: true,
                padding: true,
                ..none
            },
            Op::Pad => AttrUse {
                padding: true,
                ..none
            },
            Op::Zero => AttrUse {
                stride: true,
                ..none
            },
            Op::Linear => AttrUse { bias: true, ..none },
            Op::BatchNorm => AttrUse {
                affine: true,
                ..none
            },
            _ => none,
        }
    }

    /// Whether the output shape cannot be derived from inputs and attributes alone, so a
    /// declared output (channels, or the target size of a resize) is required.
    pub fn needs_declared_output(self) -> bool {
        matches!(
            self,
            Op::Input
                | Op::Conv
                | Op::DepthwiseConv
                | Op::ConvTranspose
                | Op::Linear
                | Op::Resize
                | Op::Slice
        )
    }
}

/// What [`infer`] concludes for one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inferred {
    /// The node's input shape as a feature (channels summed for concat).
    pub input: Shape,
    pub output: Shape,
    /// How many times the node runs per network input.
    pub batch: u32,
    /// How many times its consumers see its output per network input.
    pub out_batch: u32,
}

/// The inputs of a node as [`infer`] sees them.
#[derive(Debug, Clone, Copy)]
pub struct InputTensor {
    pub shape: Shape,
    pub batch: u32,
}

fn conv_out(x: u32, k: u32, s: u32, p: u32, d: u32) -> Option<u32> {
    let eff = d.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
    let padded = x.checked_add(p.checked_mul(2)?)?;
    if padded < eff || s == 0 {
        return None;
    }
    Some((padded - eff) / s + 1)
}

fn deconv_out(x: u32, k: u32, s: u32, p: u32, d: u32, op: u32) -> Option<u32> {
    let full = (x.checked_sub(1)?)
        .checked_mul(s)?
        .checked_add(d.checked_mul(k.checked_sub(1)?)?)?
        .checked_add(op)?
        .checked_add(1)?;
    full.checked_sub(p.checked_mul(2)?)
}

fn check_range(a: &Attrs) -> Result<(), String> {
    for (name, v) in [
        ("kernel", a.kernel),
        ("stride", a.stride),
        ("padding", a.padding),
        ("dilation", a.dilation),
        ("output_padding", a.output_padding),
    ] {
        if v.iter().any(|&x| x > MAX_KERNEL) {
            return Err(format!("{name} {v:?} exceeds the limit {MAX_KERNEL}"));
        }
    }
    if a.kernel.contains(&0) || a.stride.contains(&0) || a.dilation.contains(&0) {
        return Err("kernel, stride and dilation must be at least 1".into());
    }
    if a.groups == 0 {
        return Err("groups must be at least 1".into());
    }
    Ok(())
}

/// Like [`infer`], and the declared output, when given, must equal the rule's output in full.
pub fn infer_checked(
    op: Op,
    attrs: &Attrs,
    inputs: &[InputTensor],
    declared: Option<Shape>,
    input_batch: u32,
) -> Result<Inferred, String> {
    let r = infer(op, attrs, inputs, declared, input_batch)?;
    if let Some(d) = declared {
        if d != r.output {
            let on = inputs
                .first()
                .map_or(String::new(), |t| format!(" on {}", t.shape));
            return Err(format!(
                "declared output {d} but {op}{on} gives {}",
                r.output
            ));
        }
    }
    Ok(r)
}

/// Apply an op's shape rule. `declared` supplies the parameters that are not attributes: the
/// output channels of conv-like ops, linear, zero and slice; the target height and width of a
/// resize; the whole shape of an input. It is required for ops in [`Op::needs_declared_output`];
/// its other fields are ignored here ([`infer_checked`] compares them). Errors are human
/// sentences without the node's name (the caller adds it).
pub fn infer(
    op: Op,
    attrs: &Attrs,
    inputs: &[InputTensor],
    declared: Option<Shape>,
    input_batch: u32,
) -> Result<Inferred, String> {
    check_range(attrs)?;
    let arity = |lo: usize, hi: usize| -> Result<(), String> {
        if inputs.len() < lo || inputs.len() > hi {
            let want = if lo == hi {
                format!("{lo}")
            } else if hi == usize::MAX {
                format!("at least {lo}")
            } else {
                format!("{lo} to {hi}")
            };
            return Err(format!("{op} takes {want} input(s), got {}", inputs.len()));
        }
        Ok(())
    };
    let need_declared = || -> Result<Shape, String> {
        declared.ok_or_else(|| format!("{op} needs a declared output shape ('out')"))
    };
    if op == Op::Input {
        arity(0, 0)?;
        let out = need_declared()?;
        check_dims(out)?;
        if input_batch == 0 {
            return Err("batch must be at least 1".into());
        }
        return Ok(Inferred {
            input: out,
            output: out,
            batch: input_batch,
            out_batch: input_batch,
        });
    }
    arity(1, usize::MAX)?;
    let batch = inputs[0].batch;
    if let Some(bad) = inputs.iter().find(|t| t.batch != batch) {
        return Err(format!(
            "inputs run on different batches ({} and {})",
            batch, bad.batch
        ));
    }
    let x = inputs[0].shape;
    let (input, output, out_batch) = match op {
        Op::Input => unreachable!(),
        _ if op.is_elementwise() => {
            arity(1, 1)?;
            (x, x, batch)
        }
        Op::Conv | Op::DepthwiseConv | Op::ConvTranspose => {
            arity(1, 1)?;
            let d = need_declared()?;
            let g = attrs.groups;
            if !x.c.is_multiple_of(g) || !d.c.is_multiple_of(g) {
                return Err(format!(
                    "groups {g} must divide input channels {} and output channels {}",
                    x.c, d.c
                ));
            }
            if op == Op::DepthwiseConv && g != x.c {
                return Err(format!(
                    "a depthwise conv needs groups == input channels ({}), got {g}",
                    x.c
                ));
            }
            let (h, w) = if op == Op::ConvTranspose {
                (
                    deconv_out(
                        x.h,
                        attrs.kernel[0],
                        attrs.stride[0],
                        attrs.padding[0],
                        attrs.dilation[0],
                        attrs.output_padding[0],
                    ),
                    deconv_out(
                        x.w,
                        attrs.kernel[1],
                        attrs.stride[1],
                        attrs.padding[1],
                        attrs.dilation[1],
                        attrs.output_padding[1],
                    ),
                )
            } else {
                (
                    conv_out(
                        x.h,
                        attrs.kernel[0],
                        attrs.stride[0],
                        attrs.padding[0],
                        attrs.dilation[0],
                    ),
                    conv_out(
                        x.w,
                        attrs.kernel[1],
                        attrs.stride[1],
                        attrs.padding[1],
                        attrs.dilation[1],
                    ),
                )
            };
            let (Some(h), Some(w)) = (h, w) else {
                return Err(format!(
                    "kernel {:?} (dilation {:?}, padding {:?}) does not fit input {x}",
                    attrs.kernel, attrs.dilation, attrs.padding
                ));
            };
            (x, Shape::new(d.c, h, w), batch)
        }
        Op::Linear => {
            arity(1, 1)?;
            let d = need_declared()?;
            (x, Shape::new(d.c, x.h, x.w), batch)
        }
        Op::Add => {
            if let Some(bad) = inputs.iter().find(|t| t.shape != x) {
                return Err(format!(
                    "add needs inputs of one shape, got {x} and {}",
                    bad.shape
                ));
            }
            (x, x, batch)
        }
        Op::Mul => {
            let mut out = x;
            for t in inputs {
                let s = t.shape;
                if s.c != out.c {
                    return Err(format!(
                        "mul needs inputs with equal channels, got {out} and {s}"
                    ));
                }
                if (s.h, s.w) == (out.h, out.w) || (s.h, s.w) == (1, 1) {
                    continue;
                }
                if (out.h, out.w) == (1, 1) {
                    out = s;
                    continue;
                }
                return Err(format!(
                    "mul inputs {out} and {s} do not broadcast (only 1x1 broadcasts)"
                ));
            }
            (out, out, batch)
        }
        Op::Concat => {
            let mut c: u32 = 0;
            for t in inputs {
                if (t.shape.h, t.shape.w) != (x.h, x.w) {
                    return Err(format!(
                        "concat needs inputs of one spatial size, got {x} and {}",
                        t.shape
                    ));
                }
                c = c
                    .checked_add(t.shape.c)
                    .ok_or("concat channel count overflows")?;
            }
            let s = Shape::new(c, x.h, x.w);
            (s, s, batch)
        }
        Op::MaxPool | Op::AvgPool => {
            arity(1, 1)?;
            let h = conv_out(x.h, attrs.kernel[0], attrs.stride[0], attrs.padding[0], 1);
            let w = conv_out(x.w, attrs.kernel[1], attrs.stride[1], attrs.padding[1], 1);
            let (Some(h), Some(w)) = (h, w) else {
                return Err(format!(
                    "pool kernel {:?} (padding {:?}) does not fit input {x}",
                    attrs.kernel, attrs.padding
                ));
            };
            (x, Shape::new(x.c, h, w), batch)
        }
        Op::GlobalAvgPool | Op::Mean => {
            arity(1, 1)?;
            (x, Shape::new(x.c, 1, 1), batch)
        }
        Op::Pad => {
            arity(1, 1)?;
            let h = x.h.saturating_add(attrs.padding[0].saturating_mul(2));
            let w = x.w.saturating_add(attrs.padding[1].saturating_mul(2));
            (x, Shape::new(x.c, h, w), batch)
        }
        Op::Zero => {
            arity(1, 1)?;
            let c = declared.map_or(x.c, |d| d.c);
            let h = (x.h.max(1) - 1) / attrs.stride[0] + 1;
            let w = (x.w.max(1) - 1) / attrs.stride[1] + 1;
            (x, Shape::new(c, h, w), batch)
        }
        Op::Resize => {
            arity(1, 1)?;
            let d = need_declared()?;
            (x, Shape::new(x.c, d.h, d.w), batch)
        }
        Op::Slice => {
            arity(1, 1)?;
            let d = need_declared()?;
            if d.c == 0 || d.c > x.c {
                return Err(format!(
                    "slice keeps 1 to {} channels, asked for {}",
                    x.c, d.c
                ));
            }
            (x, Shape::new(d.c, x.h, x.w), batch)
        }
        Op::BatchToDepth => {
            arity(1, 1)?;
            if batch < 2 {
                return Err(format!(
                    "batch_to_depth needs an input that runs on several tiles, got batch {batch}"
                ));
            }
            let c = x.c.checked_mul(batch).ok_or("channel count overflows")?;
            (x, Shape::new(c, x.h, x.w), 1)
        }
        _ => unreachable!("every op has a shape rule"),
    };
    check_dims(output)?;
    Ok(Inferred {
        input,
        output,
        batch,
        out_batch,
    })
}

fn check_dims(s: Shape) -> Result<(), String> {
    if s.c == 0 || s.h == 0 || s.w == 0 {
        return Err(format!("shape {s} has an empty dimension"));
    }
    if s.c > MAX_DIM || s.h > MAX_DIM || s.w > MAX_DIM {
        return Err(format!(
            "shape {s} exceeds the limit {MAX_DIM} per dimension"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(c: u32, h: u32, w: u32) -> InputTensor {
        InputTensor {
            shape: Shape::new(c, h, w),
            batch: 1,
        }
    }

    fn conv(k: u32, s: u32, p: u32, d: u32) -> Attrs {
        Attrs {
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
            dilation: [d, d],
            ..Attrs::default()
        }
    }

    #[test]
    fn conv_shapes_follow_pytorch() {
        let r = infer(
            Op::Conv,
            &conv(3, 2, 1, 1),
            &[t(3, 32, 32)],
            Some(Shape::new(16, 16, 16)),
            1,
        )
        .unwrap();
        assert_eq!(r.output, Shape::new(16, 16, 16));
        // dilated 5x5 with padding 4 keeps size
        let r = infer(
            Op::Conv,
            &conv(5, 1, 4, 2),
            &[t(8, 7, 7)],
            Some(Shape::new(8, 7, 7)),
            1,
        )
        .unwrap();
        assert_eq!(r.output.h, 7);
        // odd input, stride 2: floor
        let r = infer(
            Op::Conv,
            &conv(1, 2, 0, 1),
            &[t(8, 7, 7)],
            Some(Shape::new(8, 4, 4)),
            1,
        );
        assert!(r.is_ok());
    }

    #[test]
    fn declared_mismatch_is_an_error() {
        let e = infer_checked(
            Op::Conv,
            &conv(3, 2, 1, 1),
            &[t(3, 32, 32)],
            Some(Shape::new(16, 32, 32)),
            1,
        )
        .unwrap_err();
        assert!(e.contains("declared output [16, 32, 32]"), "{e}");
    }

    #[test]
    fn transposed_conv_doubles() {
        let a = Attrs {
            kernel: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
            output_padding: [1, 1],
            ..Attrs::default()
        };
        let r = infer(
            Op::ConvTranspose,
            &a,
            &[t(64, 8, 8)],
            Some(Shape::new(32, 16, 16)),
            1,
        )
        .unwrap();
        assert_eq!(r.output, Shape::new(32, 16, 16));
    }

    #[test]
    fn add_and_concat_check_their_inputs() {
        let a = Attrs::default();
        assert!(infer(Op::Add, &a, &[t(4, 8, 8), t(4, 8, 8)], None, 1).is_ok());
        assert!(infer(Op::Add, &a, &[t(4, 8, 8), t(5, 8, 8)], None, 1).is_err());
        let r = infer(Op::Concat, &a, &[t(4, 8, 8), t(5, 8, 8)], None, 1).unwrap();
        assert_eq!(r.output, Shape::new(9, 8, 8));
        assert!(infer(Op::Concat, &a, &[t(4, 8, 8), t(5, 4, 4)], None, 1).is_err());
        let r = infer(Op::Mul, &a, &[t(4, 1, 1), t(4, 8, 8)], None, 1).unwrap();
        assert_eq!(r.output, Shape::new(4, 8, 8));
    }

    #[test]
    fn batch_to_depth_stacks_tiles() {
        let x = InputTensor {
            shape: Shape::new(256, 2, 2),
            batch: 9,
        };
        let r = infer(Op::BatchToDepth, &Attrs::default(), &[x], None, 1).unwrap();
        assert_eq!((r.output.c, r.batch, r.out_batch), (2304, 9, 1));
    }

    #[test]
    fn absurd_values_are_rejected() {
        let r = infer(
            Op::Input,
            &Attrs::default(),
            &[],
            Some(Shape::new(3, u32::MAX, 4)),
            1,
        );
        assert!(r.is_err());
        let r = infer(
            Op::Conv,
            &conv(9, 1, 0, 1),
            &[t(3, 4, 4)],
            Some(Shape::new(3, 1, 1)),
            1,
        );
        assert!(r.unwrap_err().contains("does not fit"));
    }
}
