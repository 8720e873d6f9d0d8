//! A shape-propagating graph builder: search spaces describe networks compactly with it, and a
//! shape mismatch is an error at the node that causes it, never a silent graph.
//!
//! Invariants: nodes are appended in topological order (a node can only name existing nodes as
//! inputs); every append runs the op's shape rule ([`super::shape::infer`]); single-input `add`
//! and `concat` are not created (AIO-P's simplification: the input is returned instead).

use super::shape::{infer, InputTensor};
use super::{Attrs, Graph, GraphError, Node, NodeId, Op, Shape};

/// Convolution hyper-parameters. `Conv::new(out, k)` is a stride-1 conv with "same" padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv {
    pub out: u32,
    pub kernel: u32,
    pub stride: u32,
    pub padding: u32,
    pub dilation: u32,
    pub groups: u32,
    pub output_padding: u32,
    pub bias: bool,
}

impl Conv {
    pub fn new(out: u32, kernel: u32) -> Conv {
        Conv {
            out,
            kernel,
            stride: 1,
            padding: (kernel.saturating_sub(1)) / 2,
            dilation: 1,
            groups: 1,
            output_padding: 0,
            bias: false,
        }
    }
    pub fn stride(mut self, s: u32) -> Conv {
        self.stride = s;
        self
    }
    pub fn pad(mut self, p: u32) -> Conv {
        self.padding = p;
        self
    }
    /// Sets the dilation and the matching "same" padding.
    pub fn dilation(mut self, d: u32) -> Conv {
        self.dilation = d;
        self.padding = d * (self.kernel.saturating_sub(1)) / 2;
        self
    }
    pub fn groups(mut self, g: u32) -> Conv {
        self.groups = g;
        self
    }
    pub fn output_padding(mut self, p: u32) -> Conv {
        self.output_padding = p;
        self
    }
    pub fn bias(mut self, b: bool) -> Conv {
        self.bias = b;
        self
    }
    /// The node attributes of this spec.
    pub(crate) fn attrs(&self) -> Attrs {
        Attrs {
            kernel: [self.kernel; 2],
            stride: [self.stride; 2],
            padding: [self.padding; 2],
            dilation: [self.dilation; 2],
            groups: self.groups,
            output_padding: [self.output_padding; 2],
            bias: self.bias,
            affine: true,
        }
    }
}

/// Builds a [`Graph`] node by node.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    g: Graph,
    /// Reused buffer of input tensors for shape inference (no allocation per node).
    scratch: Vec<InputTensor>,
}

type R = Result<NodeId, GraphError>;

/// Keep only the attributes an op reads, so equal networks have equal nodes.
pub(crate) fn canonical_attrs(op: Op, a: &Attrs) -> Attrs {
    let u = op.attr_use();
    let d = Attrs::default();
    Attrs {
        kernel: if u.kernel { a.kernel } else { d.kernel },
        stride: if u.stride { a.stride } else { d.stride },
        padding: if u.padding { a.padding } else { d.padding },
        dilation: if u.dilation { a.dilation } else { d.dilation },
        groups: if u.groups { a.groups } else { d.groups },
        output_padding: if u.output_padding {
            a.output_padding
        } else {
            d.output_padding
        },
        bias: if u.bias { a.bias } else { d.bias },
        affine: if u.affine { a.affine } else { d.affine },
    }
}

impl GraphBuilder {
    pub fn new() -> GraphBuilder {
        GraphBuilder::default()
    }

    /// A builder with room for `nodes` nodes and `edges` edges.
    pub fn with_capacity(nodes: usize, edges: usize) -> GraphBuilder {
        let mut b = GraphBuilder::default();
        b.g.nodes.reserve(nodes);
        b.g.preds.reserve(edges);
        b
    }

    /// Append a node after checking its op's shape rule. `declared` carries the output channels
    /// (or size) for ops that need them; `batch` is only read for [`Op::Input`].
    pub fn push(
        &mut self,
        op: Op,
        attrs: Attrs,
        inputs: &[NodeId],
        declared: Option<Shape>,
        batch: u32,
    ) -> R {
        let id = self.g.nodes.len() as u32;
        self.scratch.clear();
        for &i in inputs {
            if i.0 >= id {
                return Err(GraphError::UnknownInput {
                    node: format!("n{id} ({op})"),
                    input: format!("n{}", i.0),
                });
            }
            self.scratch.push(InputTensor {
                shape: self.g.nodes[i.index()].output,
                batch: self.g.out_batch(i),
            });
        }
        let attrs = canonical_attrs(op, &attrs);
        let r = infer(op, &attrs, &self.scratch, declared, batch).map_err(|message| {
            GraphError::Shape {
                node: format!("n{id} ({op})"),
                message,
            }
        })?;
        let first_input = self.g.preds.len() as u32;
        self.g.preds.extend(inputs.iter().map(|i| i.0));
        self.g.nodes.push(Node {
            op,
            input: r.input,
            output: r.output,
            attrs,
            batch: r.batch,
            first_input,
            num_inputs: inputs.len() as u32,
        });
        Ok(NodeId(id))
    }

    fn unary(&mut self, op: Op, x: NodeId) -> R {
        self.push(op, Attrs::default(), &[x], None, 1)
    }

    /// Output shape of an existing node.
    pub fn shape(&self, x: NodeId) -> Shape {
        self.g.nodes[x.index()].output
    }

    pub fn len(&self) -> usize {
        self.g.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.g.nodes.is_empty()
    }

    /// The network input, run once per sample.
    pub fn input(&mut self, c: u32, h: u32, w: u32) -> R {
        self.input_batched(c, h, w, 1)
    }

    /// An input of `batch` tiles per sample, each `c x h x w` (the jigsaw puzzle's 9 tiles).
    pub fn input_batched(&mut self, c: u32, h: u32, w: u32, batch: u32) -> R {
        self.push(
            Op::Input,
            Attrs::default(),
            &[],
            Some(Shape::new(c, h, w)),
            batch,
        )
    }

    pub fn output(&mut self, x: NodeId) -> R {
        self.unary(Op::Output, x)
    }

    fn conv_like(&mut self, op: Op, x: NodeId, spec: Conv) -> R {
        // Only the channels of the declared shape are read for conv-like ops.
        self.push(op, spec.attrs(), &[x], Some(Shape::new(spec.out, 0, 0)), 1)
    }

    /// Convolution (grouped and dilated as the spec says).
    pub fn conv(&mut self, x: NodeId, spec: Conv) -> R {
        self.conv_like(Op::Conv, x, spec)
    }

    /// Depthwise convolution: groups set to the input channels.
    pub fn depthwise(&mut self, x: NodeId, spec: Conv) -> R {
        let c = self.shape(x).c;
        self.conv_like(Op::DepthwiseConv, x, spec.groups(c))
    }

    pub fn conv_transpose(&mut self, x: NodeId, spec: Conv) -> R {
        self.conv_like(Op::ConvTranspose, x, spec)
    }

    pub fn batch_norm(&mut self, x: NodeId, affine: bool) -> R {
        let a = Attrs {
            affine,
            ..Attrs::default()
        };
        self.push(Op::BatchNorm, a, &[x], None, 1)
    }

    pub fn relu(&mut self, x: NodeId) -> R {
        self.unary(Op::Relu, x)
    }
    pub fn relu6(&mut self, x: NodeId) -> R {
        self.unary(Op::Relu6, x)
    }
    pub fn leaky_relu(&mut self, x: NodeId) -> R {
        self.unary(Op::LeakyRelu, x)
    }
    pub fn sigmoid(&mut self, x: NodeId) -> R {
        self.unary(Op::Sigmoid, x)
    }
    pub fn tanh(&mut self, x: NodeId) -> R {
        self.unary(Op::Tanh, x)
    }
    pub fn swish(&mut self, x: NodeId) -> R {
        self.unary(Op::Swish, x)
    }
    pub fn hard_swish(&mut self, x: NodeId) -> R {
        self.unary(Op::HardSwish, x)
    }
    pub fn gelu(&mut self, x: NodeId) -> R {
        self.unary(Op::Gelu, x)
    }
    pub fn identity(&mut self, x: NodeId) -> R {
        self.unary(Op::Identity, x)
    }
    pub fn global_avg_pool(&mut self, x: NodeId) -> R {
        self.unary(Op::GlobalAvgPool, x)
    }
    pub fn mean(&mut self, x: NodeId) -> R {
        self.unary(Op::Mean, x)
    }
    pub fn batch_to_depth(&mut self, x: NodeId) -> R {
        self.unary(Op::BatchToDepth, x)
    }

    /// The `none` op: zeros with `out_c` channels, subsampled by `stride`.
    pub fn zero(&mut self, x: NodeId, out_c: u32, stride: u32) -> R {
        let a = Attrs {
            stride: [stride; 2],
            ..Attrs::default()
        };
        let s = self.shape(x);
        let h = (s.h.max(1) - 1) / stride.max(1) + 1;
        let w = (s.w.max(1) - 1) / stride.max(1) + 1;
        self.push(Op::Zero, a, &[x], Some(Shape::new(out_c, h, w)), 1)
    }

    fn pool(&mut self, op: Op, x: NodeId, k: u32, s: u32, p: u32) -> R {
        let a = Attrs {
            kernel: [k; 2],
            stride: [s; 2],
            padding: [p; 2],
            ..Attrs::default()
        };
        self.push(op, a, &[x], None, 1)
    }
    pub fn max_pool(&mut self, x: NodeId, k: u32, s: u32, p: u32) -> R {
        self.pool(Op::MaxPool, x, k, s, p)
    }
    pub fn avg_pool(&mut self, x: NodeId, k: u32, s: u32, p: u32) -> R {
        self.pool(Op::AvgPool, x, k, s, p)
    }

    pub fn pad(&mut self, x: NodeId, p: u32) -> R {
        let a = Attrs {
            padding: [p; 2],
            ..Attrs::default()
        };
        self.push(Op::Pad, a, &[x], None, 1)
    }

    /// Fully connected layer over channels (at every position; after pooling that is 1x1).
    pub fn linear(&mut self, x: NodeId, out: u32, bias: bool) -> R {
        let s = self.shape(x);
        let a = Attrs {
            bias,
            ..Attrs::default()
        };
        self.push(Op::Linear, a, &[x], Some(Shape::new(out, s.h, s.w)), 1)
    }

    pub fn resize(&mut self, x: NodeId, h: u32, w: u32) -> R {
        let c = self.shape(x).c;
        self.push(
            Op::Resize,
            Attrs::default(),
            &[x],
            Some(Shape::new(c, h, w)),
            1,
        )
    }

    /// Keep the first `c` channels.
    pub fn slice(&mut self, x: NodeId, c: u32) -> R {
        let s = self.shape(x);
        self.push(
            Op::Slice,
            Attrs::default(),
            &[x],
            Some(Shape::new(c, s.h, s.w)),
            1,
        )
    }

    fn multi(&mut self, op: Op, xs: &[NodeId]) -> R {
        match xs {
            [] => Err(GraphError::Invalid(format!("{op} of no inputs"))),
            [x] => Ok(*x),
            _ => self.push(op, Attrs::default(), xs, None, 1),
        }
    }

    /// Sum of the inputs; a single input is returned as is.
    pub fn add(&mut self, xs: &[NodeId]) -> R {
        self.multi(Op::Add, xs)
    }
    /// Product of the inputs; a single input is returned as is.
    pub fn mul(&mut self, xs: &[NodeId]) -> R {
        self.multi(Op::Mul, xs)
    }
    /// Channel concatenation in the given order; a single input is returned as is.
    pub fn concat(&mut self, xs: &[NodeId]) -> R {
        self.multi(Op::Concat, xs)
    }

    pub fn finish(self) -> Graph {
        self.g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_small_resnet_block() {
        let mut b = GraphBuilder::new();
        let x = b.input(3, 32, 32).unwrap();
        let c = b.conv(x, Conv::new(16, 3).stride(2)).unwrap();
        assert_eq!(b.shape(c), Shape::new(16, 16, 16));
        let r = b.relu(c).unwrap();
        let s = b.conv(x, Conv::new(16, 1).stride(2)).unwrap();
        let a = b.add(&[r, s]).unwrap();
        let o = b.output(a).unwrap();
        let g = b.finish();
        assert_eq!(g.len(), 6);
        assert_eq!(g.inputs(a), &[r.0, s.0]);
        assert_eq!(g.outputs(), vec![o]);
    }

    #[test]
    fn mismatch_names_the_node() {
        let mut b = GraphBuilder::new();
        let x = b.input(3, 32, 32).unwrap();
        let c = b.conv(x, Conv::new(16, 3).stride(2)).unwrap();
        let err = b.add(&[x, c]).unwrap_err().to_string();
        assert!(err.starts_with("node n2 (add)"), "{err}");
    }

    #[test]
    fn single_input_add_is_elided_and_attrs_are_canonical() {
        let mut b = GraphBuilder::new();
        let x = b.input(3, 8, 8).unwrap();
        assert_eq!(b.add(&[x]).unwrap(), x);
        let r = b
            .push(
                Op::Relu,
                Attrs {
                    kernel: [3, 3],
                    ..Attrs::default()
                },
                &[x],
                None,
                1,
            )
            .unwrap();
        assert_eq!(b.finish().node(r).attrs, Attrs::default());
    }

    #[test]
    fn transposed_and_dilated_convs() {
        let mut b = GraphBuilder::new();
        let x = b.input(8, 16, 16).unwrap();
        let d = b.depthwise(x, Conv::new(8, 5).dilation(2)).unwrap();
        assert_eq!(b.shape(d), Shape::new(8, 16, 16));
        let t = b
            .conv_transpose(x, Conv::new(4, 3).stride(2).pad(1).output_padding(1))
            .unwrap();
        assert_eq!(b.shape(t), Shape::new(4, 32, 32));
    }
}
