//! Shape-preserving edits of a free computational graph, the moves of the FLOP-reducing search on
//! networks that belong to no built-in space (AIO-P: "1-edit mutations of a computational graph").
//!
//! Edits: prune the output channels of a conv (the new width propagates to every consumer);
//! shrink a conv's kernel by 2 (padding adjusted so the output size stays); replace a conv by a
//! depthwise-separable pair (depthwise k×k then pointwise 1×1); drop a branch of an `add` (the
//! add is replaced by one of its inputs; the other branches become dead and are removed).
//! Invariants: every graph [`apply`] returns passed the builder's shape rules, so it is
//! shape-valid; an edit that would break a shape (an `add` whose branches no longer agree, a
//! broadcast that no longer fits) is an error, never a silent graph; nodes that no longer reach an
//! output are removed; the graph's input and output shapes never change.

use super::builder::Conv;
use super::{Graph, GraphBuilder, GraphError, Node, NodeId, Op, Shape};

/// One edit of a graph. Node indices refer to the graph the edit was listed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "edit", rename_all = "snake_case")]
pub enum GraphEdit {
    /// Keep the first `keep` output channels of conv `node`.
    PruneChannels { node: u32, keep: u32 },
    /// Kernel k×k → (k−2)×(k−2) with the same output size.
    ShrinkKernel { node: u32 },
    /// Conv k×k → depthwise k×k + pointwise 1×1.
    Separable { node: u32 },
    /// Replace `add` node `node` by its input number `keep`.
    DropBranch { node: u32, keep: u32 },
}

/// Fractions of channels a prune may keep.
const PRUNE_KEEP: [(u32, u32); 2] = [(3, 4), (1, 2)];

/// Every edit applicable to `g` (each may still fail in [`apply`] when shapes disagree).
pub fn edits(g: &Graph) -> Vec<GraphEdit> {
    let mut out = Vec::new();
    for (i, n) in g.nodes().iter().enumerate() {
        let i = i as u32;
        match n.op {
            Op::Conv if n.attrs.groups == 1 => {
                for (num, den) in PRUNE_KEEP {
                    let keep = n.output.c * num / den;
                    if keep >= 1 && keep < n.output.c {
                        out.push(GraphEdit::PruneChannels { node: i, keep });
                    }
                }
                if n.attrs.kernel[0] >= 3 && n.attrs.kernel[1] >= 3 {
                    out.push(GraphEdit::ShrinkKernel { node: i });
                    out.push(GraphEdit::Separable { node: i });
                }
            }
            Op::Add => {
                for k in 0..g.inputs(NodeId(i)).len() as u32 {
                    out.push(GraphEdit::DropBranch { node: i, keep: k });
                }
            }
            _ => {}
        }
    }
    out
}

/// What the rewrite does with one node.
enum Action {
    /// Re-create it with the given conv spec (for conv-like nodes) on the new inputs.
    Conv(Op, Conv),
    /// Re-create it (a conv) with this many output channels, its attributes as they were.
    Prune(u32),
    /// Depthwise + pointwise pair.
    Separable(Conv),
    /// Map the node to one of its (new) inputs.
    Alias(usize),
    /// Re-create it as it was, shapes re-derived from the new inputs.
    Keep,
}

fn conv_spec(n: &Node) -> Conv {
    let a = &n.attrs;
    Conv {
        out: n.output.c,
        kernel: a.kernel[0],
        stride: a.stride[0],
        padding: a.padding[0],
        dilation: a.dilation[0],
        groups: a.groups,
        output_padding: a.output_padding[0],
        bias: a.bias,
    }
}

fn edit_err(edit: &GraphEdit, message: impl Into<String>) -> GraphError {
    GraphError::Invalid(format!("edit {edit:?}: {}", message.into()))
}

/// Apply one edit, returning a new shape-valid graph.
pub fn apply(g: &Graph, edit: &GraphEdit) -> Result<Graph, GraphError> {
    let target = match *edit {
        GraphEdit::PruneChannels { node, .. }
        | GraphEdit::ShrinkKernel { node }
        | GraphEdit::Separable { node }
        | GraphEdit::DropBranch { node, .. } => node,
    };
    let t = g
        .nodes()
        .get(target as usize)
        .ok_or_else(|| edit_err(edit, "no such node"))?;
    let square = |n: &Node| {
        n.attrs.kernel[0] == n.attrs.kernel[1]
            && n.attrs.stride[0] == n.attrs.stride[1]
            && n.attrs.padding[0] == n.attrs.padding[1]
            && n.attrs.dilation[0] == n.attrs.dilation[1]
    };
    let action = match *edit {
        GraphEdit::PruneChannels { keep, .. } => {
            if t.op != Op::Conv || keep == 0 || keep >= t.output.c || t.attrs.groups != 1 {
                return Err(edit_err(
                    edit,
                    "needs an ungrouped conv and 0 < keep < channels",
                ));
            }
            // Its own attributes, each of both sides (a [3, 1] kernel stays one).
            Action::Prune(keep)
        }
        GraphEdit::ShrinkKernel { .. } => {
            if t.op != Op::Conv || t.attrs.kernel[0] < 3 || !square(t) {
                return Err(edit_err(edit, "needs a square conv with kernel >= 3"));
            }
            let s = conv_spec(t);
            let pad = s
                .padding
                .checked_sub(s.dilation)
                .ok_or_else(|| edit_err(edit, "padding too small to keep the output size"))?;
            Action::Conv(
                Op::Conv,
                Conv {
                    kernel: s.kernel - 2,
                    padding: pad,
                    ..s
                },
            )
        }
        GraphEdit::Separable { .. } => {
            if t.op != Op::Conv || t.attrs.groups != 1 || t.attrs.kernel[0] < 3 || !square(t) {
                return Err(edit_err(
                    edit,
                    "needs an ungrouped square conv with kernel >= 3",
                ));
            }
            Action::Separable(conv_spec(t))
        }
        GraphEdit::DropBranch { keep, .. } => {
            if t.op != Op::Add || keep as usize >= g.inputs(NodeId(target)).len() {
                return Err(edit_err(edit, "needs an add and one of its inputs"));
            }
            Action::Alias(keep as usize)
        }
    };
    let rebuilt = rewrite(g, target, action)?;
    let pruned = remove_dead(&rebuilt)?;
    // The network's interface must not change.
    let io = |g: &Graph| -> Vec<Shape> {
        g.nodes()
            .iter()
            .filter(|n| matches!(n.op, Op::Input | Op::Output))
            .map(|n| n.output)
            .collect()
    };
    if io(&pruned) != io(g) {
        return Err(edit_err(
            edit,
            "changes the network's input or output shape",
        ));
    }
    Ok(pruned)
}

/// Re-create `g` node by node, applying `action` to node `target` and re-deriving every shape.
fn rewrite(g: &Graph, target: u32, action: Action) -> Result<Graph, GraphError> {
    let mut b = GraphBuilder::with_capacity(g.len() + 1, g.num_edges() + 1);
    let mut map: Vec<NodeId> = Vec::with_capacity(g.len());
    let mut ins: Vec<NodeId> = Vec::with_capacity(8);
    for (i, n) in g.nodes().iter().enumerate() {
        ins.clear();
        ins.extend(g.inputs(NodeId(i as u32)).iter().map(|&p| map[p as usize]));
        let here = if i as u32 == target {
            &action
        } else {
            &Action::Keep
        };
        let id = match here {
            Action::Conv(op, spec) => push_conv(&mut b, *op, ins[0], *spec)?,
            Action::Prune(keep) => {
                b.push(n.op, n.attrs, &[ins[0]], Some(Shape::new(*keep, 0, 0)), 1)?
            }
            Action::Separable(spec) => {
                let c = b.shape(ins[0]).c;
                let dw = Conv {
                    out: c,
                    groups: c,
                    bias: false,
                    ..*spec
                };
                let d = b.push(
                    Op::DepthwiseConv,
                    dw.attrs(),
                    &[ins[0]],
                    Some(Shape::new(c, 0, 0)),
                    1,
                )?;
                b.conv(
                    d,
                    Conv {
                        kernel: 1,
                        stride: 1,
                        padding: 0,
                        dilation: 1,
                        groups: 1,
                        ..*spec
                    },
                )?
            }
            Action::Alias(k) => ins[*k],
            Action::Keep => keep_node(&mut b, n, &ins)?,
        };
        map.push(id);
    }
    Ok(b.finish())
}

fn push_conv(b: &mut GraphBuilder, op: Op, x: NodeId, spec: Conv) -> Result<NodeId, GraphError> {
    b.push(op, spec.attrs(), &[x], Some(Shape::new(spec.out, 0, 0)), 1)
}

/// Re-create a node on new inputs whose channel counts may have changed.
fn keep_node(b: &mut GraphBuilder, n: &Node, ins: &[NodeId]) -> Result<NodeId, GraphError> {
    let new_in = ins.first().map(|&x| b.shape(x));
    let old_in = n.input;
    match n.op {
        Op::Input => b.input_batched(n.output.c, n.output.h, n.output.w, n.batch),
        Op::Conv | Op::DepthwiseConv | Op::ConvTranspose => {
            // Its own attributes, each of both sides (a [3, 1] kernel stays one).
            let mut attrs = n.attrs;
            let mut out = n.output.c;
            let c = new_in.map_or(old_in.c, |s| s.c);
            if n.attrs.groups > 1 && n.attrs.groups == old_in.c {
                // Depthwise (or multiplier) conv follows its input's width.
                out = c * (n.output.c / old_in.c.max(1));
                attrs.groups = c;
            }
            b.push(n.op, attrs, &[ins[0]], Some(Shape::new(out, 0, 0)), 1)
        }
        Op::Zero => {
            let c = if n.output.c == old_in.c {
                new_in.map_or(old_in.c, |s| s.c)
            } else {
                n.output.c
            };
            b.zero(ins[0], c, n.attrs.stride[0])
        }
        Op::Slice => {
            let c = n.output.c.min(new_in.map_or(old_in.c, |s| s.c));
            b.slice(ins[0], c)
        }
        Op::Linear => b.linear(ins[0], n.output.c, n.attrs.bias),
        Op::Resize => b.resize(ins[0], n.output.h, n.output.w),
        // Multi-input ops go through `push` directly so that a 1-input add stays a node.
        _ => b.push(n.op, n.attrs, ins, None, 1),
    }
}

/// Remove nodes from which no output node is reachable (inputs are always kept).
pub fn remove_dead(g: &Graph) -> Result<Graph, GraphError> {
    let n = g.len();
    let mut live = vec![false; n];
    for o in g.outputs() {
        live[o.index()] = true;
    }
    for i in (0..n).rev() {
        if live[i] {
            for &p in g.inputs(NodeId(i as u32)) {
                live[p as usize] = true;
            }
        }
    }
    for (i, node) in g.nodes().iter().enumerate() {
        if node.op == Op::Input {
            live[i] = true;
        }
    }
    if live.iter().all(|&l| l) {
        return Ok(g.clone());
    }
    let mut b = GraphBuilder::with_capacity(n, g.num_edges());
    let mut map: Vec<Option<NodeId>> = vec![None; n];
    let mut ins = Vec::with_capacity(8);
    for (i, node) in g.nodes().iter().enumerate() {
        if !live[i] {
            continue;
        }
        ins.clear();
        for &p in g.inputs(NodeId(i as u32)) {
            ins.push(map[p as usize].expect("inputs of a live node are live"));
        }
        map[i] = Some(keep_node(&mut b, node, &ins)?);
    }
    Ok(b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Convention;

    /// conv → bn → relu → conv → add(shortcut) → gap → linear → output.
    fn resnetish() -> Graph {
        let mut b = GraphBuilder::new();
        let x = b.input(3, 16, 16).unwrap();
        let s = b.conv(x, Conv::new(8, 3)).unwrap();
        let c1 = b.conv(s, Conv::new(16, 3)).unwrap();
        let bn = b.batch_norm(c1, true).unwrap();
        let r = b.relu(bn).unwrap();
        let c2 = b.conv(r, Conv::new(8, 3)).unwrap();
        let a = b.add(&[c2, s]).unwrap();
        let p = b.global_avg_pool(a).unwrap();
        let l = b.linear(p, 10, true).unwrap();
        b.output(l).unwrap();
        b.finish()
    }

    #[test]
    fn edits_keep_a_conv_s_two_sides_apart() {
        // conv [3, 1] (padding [1, 0]) → conv 3x3 → conv 1x1 → output: pruning either of the
        // first two, or shrinking the second, leaves the first [3, 1] (each re-created conv
        // was made square from its first side).
        let mut b = GraphBuilder::new();
        let x = b.input(4, 8, 8).unwrap();
        let mut attrs = Conv::new(8, 3).attrs();
        attrs.kernel = [3, 1];
        attrs.padding = [1, 0];
        let tall = b
            .push(Op::Conv, attrs, &[x], Some(Shape::new(8, 0, 0)), 1)
            .unwrap();
        let c = b.conv(tall, Conv::new(8, 3)).unwrap();
        let last = b.conv(c, Conv::new(8, 1)).unwrap();
        b.output(last).unwrap();
        let g = b.finish();
        for e in [
            GraphEdit::PruneChannels { node: 1, keep: 4 },
            GraphEdit::PruneChannels { node: 2, keep: 4 },
            GraphEdit::ShrinkKernel { node: 2 },
        ] {
            let h = apply(&g, &e).unwrap();
            let n = &h.nodes()[1];
            assert_eq!((n.attrs.kernel, n.attrs.padding), ([3, 1], [1, 0]), "{e:?}");
            assert_eq!((n.output.h, n.output.w), (8, 8), "{e:?}");
        }
        // A non-square conv is neither shrunk nor split.
        for e in [
            GraphEdit::ShrinkKernel { node: 1 },
            GraphEdit::Separable { node: 1 },
        ] {
            assert!(apply(&g, &e).is_err(), "{e:?}");
        }
    }

    #[test]
    fn pruning_propagates_to_consumers() {
        let g = resnetish();
        let e = GraphEdit::PruneChannels { node: 2, keep: 8 };
        let h = apply(&g, &e).unwrap();
        assert_eq!(h.nodes()[2].output.c, 8);
        assert_eq!(h.nodes()[3].input.c, 8); // the batch norm follows
        assert_eq!(h.nodes()[5].input.c, 8); // and the next conv reads 8 channels
        assert!(h.flops(Convention::Macs) < g.flops(Convention::Macs));
        assert!(h.params() < g.params());
    }

    #[test]
    fn pruning_into_an_add_is_refused() {
        let g = resnetish();
        // Node 5 feeds the add together with node 1: its width cannot change alone.
        let e = GraphEdit::PruneChannels { node: 5, keep: 4 };
        assert!(apply(&g, &e).is_err());
    }

    #[test]
    fn shrink_and_separable_keep_shapes() {
        let g = resnetish();
        let h = apply(&g, &GraphEdit::ShrinkKernel { node: 2 }).unwrap();
        assert_eq!(h.nodes()[2].attrs.kernel, [1, 1]);
        assert_eq!(h.nodes()[2].output, g.nodes()[2].output);
        let h = apply(&g, &GraphEdit::Separable { node: 2 }).unwrap();
        assert_eq!(h.len(), g.len() + 1);
        assert_eq!(h.nodes()[2].op, Op::DepthwiseConv);
        assert_eq!(h.nodes()[3].output, g.nodes()[2].output);
        assert!(h.flops(Convention::Macs) < g.flops(Convention::Macs));
    }

    #[test]
    fn dropping_a_branch_removes_the_dead_nodes() {
        let g = resnetish();
        // Keep the shortcut (input 1 of the add): the conv-bn-relu-conv branch dies.
        let h = apply(&g, &GraphEdit::DropBranch { node: 6, keep: 1 }).unwrap();
        assert_eq!(h.len(), g.len() - 5);
        assert!(h.nodes().iter().all(|n| n.op != Op::BatchNorm));
    }

    #[test]
    fn every_listed_edit_gives_a_valid_graph_or_an_error() {
        let g = resnetish();
        let es = edits(&g);
        assert!(es.len() >= 8);
        for e in es {
            if let Ok(h) = apply(&g, &e) {
                let back = crate::graph::json::from_json(&crate::graph::json::to_json(&h)).unwrap();
                assert_eq!(back.nodes(), h.nodes());
                assert_ne!(h.hash(), g.hash());
            }
        }
    }
}
