//! The primitive operation vocabulary of a computational graph.
//!
//! Every node of a CG carries exactly one [`Op`]. The vocabulary covers AIO-P's (GENNAPE's)
//! primitive set plus the few primitives the shipped benchmark networks need that AIO-P folds away
//! (leaky ReLU, channel slicing, tile stacking). Invariants: an op's `name()` is its stable
//! spelling in the JSON interchange format and in DOT output; `Op::from_name` is its exact
//! inverse; `index()` is stable across releases (the predictor's embedding table is indexed by it),
//! so new ops are only ever appended.

use serde::{Deserialize, Serialize};

/// A primitive operation. See `docs/graph-format.md` for the shape rule of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// The network input (an image or a stack of tiles). No inputs.
    Input,
    /// The network output. Exactly one input; shape unchanged.
    Output,
    /// 2-D convolution, possibly grouped and dilated.
    Conv,
    /// Depthwise 2-D convolution (groups == input channels).
    DepthwiseConv,
    /// Transposed 2-D convolution (learned upsampling).
    ConvTranspose,
    /// Batch normalisation, affine or not.
    BatchNorm,
    Relu,
    Relu6,
    /// Leaky ReLU (the TransNAS-Bench-101 decoders use it).
    LeakyRelu,
    Sigmoid,
    Tanh,
    Swish,
    HardSwish,
    Gelu,
    /// Fully connected layer over the channel dimension (matmul).
    Linear,
    /// Element-wise sum of two or more inputs of one shape.
    Add,
    /// Element-wise product; an input of spatial size 1x1 broadcasts (squeeze-excite).
    Mul,
    /// Concatenation along channels of inputs with one spatial size.
    Concat,
    MaxPool,
    AvgPool,
    /// Global average pooling as a pooling layer (`AdaptiveAvgPool2d(1)`).
    GlobalAvgPool,
    /// Global mean as a tensor op (`x.mean((2, 3))`): same shape rule as global pooling,
    /// different FLOPs convention in NAS-Bench-Suite-Zero.
    Mean,
    /// Zero padding of the spatial dimensions.
    Pad,
    Identity,
    /// The `none` operation: outputs zeros (optionally strided and with other channels).
    Zero,
    /// Resize / upsample to a given spatial size.
    Resize,
    /// Keep the first `out.c` channels (NAS-Bench-101's channel truncation).
    Slice,
    /// Stack the `batch` tiles that a shared sub-network ran on into channels
    /// (TransNAS-Bench-101 jigsaw: 9 tiles, one encoder).
    BatchToDepth,
}

impl Op {
    /// Every op, in `index()` order.
    pub const ALL: [Op; 28] = [
        Op::Input,
        Op::Output,
        Op::Conv,
        Op::DepthwiseConv,
        Op::ConvTranspose,
        Op::BatchNorm,
        Op::Relu,
        Op::Relu6,
        Op::LeakyRelu,
        Op::Sigmoid,
        Op::Tanh,
        Op::Swish,
        Op::HardSwish,
        Op::Gelu,
        Op::Linear,
        Op::Add,
        Op::Mul,
        Op::Concat,
        Op::MaxPool,
        Op::AvgPool,
        Op::GlobalAvgPool,
        Op::Mean,
        Op::Pad,
        Op::Identity,
        Op::Zero,
        Op::Resize,
        Op::Slice,
        Op::BatchToDepth,
    ];

    /// Stable spelling used in JSON and DOT.
    pub fn name(self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Output => "output",
            Op::Conv => "conv",
            Op::DepthwiseConv => "depthwise_conv",
            Op::ConvTranspose => "conv_transpose",
            Op::BatchNorm => "batch_norm",
            Op::Relu => "relu",
            Op::Relu6 => "relu6",
            Op::LeakyRelu => "leaky_relu",
            Op::Sigmoid => "sigmoid",
            Op::Tanh => "tanh",
            Op::Swish => "swish",
            Op::HardSwish => "hard_swish",
            Op::Gelu => "gelu",
            Op::Linear => "linear",
            Op::Add => "add",
            Op::Mul => "mul",
            Op::Concat => "concat",
            Op::MaxPool => "max_pool",
            Op::AvgPool => "avg_pool",
            Op::GlobalAvgPool => "global_avg_pool",
            Op::Mean => "mean",
            Op::Pad => "pad",
            Op::Identity => "identity",
            Op::Zero => "zero",
            Op::Resize => "resize",
            Op::Slice => "slice",
            Op::BatchToDepth => "batch_to_depth",
        }
    }

    /// Inverse of [`Op::name`].
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.iter().copied().find(|op| op.name() == name)
    }

    /// Stable small integer for embeddings; 0 is reserved for out-of-vocabulary, so ops start at 1.
    pub fn index(self) -> usize {
        self as usize + 1
    }

    /// Ops whose node holds a weight tensor with a kernel (AIO-P's "weighted nodes").
    pub fn is_weighted(self) -> bool {
        matches!(
            self,
            Op::Conv | Op::DepthwiseConv | Op::ConvTranspose | Op::Linear
        )
    }

    /// Ops whose inputs may be reordered without changing the result.
    pub fn is_commutative(self) -> bool {
        matches!(self, Op::Add | Op::Mul)
    }

    /// Ops that apply element-wise and keep the shape of their single input.
    pub fn is_elementwise(self) -> bool {
        matches!(
            self,
            Op::Output
                | Op::BatchNorm
                | Op::Relu
                | Op::Relu6
                | Op::LeakyRelu
                | Op::Sigmoid
                | Op::Tanh
                | Op::Swish
                | Op::HardSwish
                | Op::Gelu
                | Op::Identity
        )
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_indices_are_dense() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(Op::from_name(op.name()), Some(*op));
            assert_eq!(op.index(), i + 1);
        }
        assert_eq!(Op::from_name("convolution"), None);
    }

    #[test]
    fn serde_spelling_matches_name() {
        for op in Op::ALL {
            let s = serde_json::to_string(&op).unwrap();
            assert_eq!(s, format!("\"{}\"", op.name()));
        }
    }
}
