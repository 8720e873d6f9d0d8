//! The JSON interchange format of a CG (`docs/graph-format.md`): how a user brings any network.
//!
//! Invariants: reading validates everything a [`Graph`] promises (known ops, known inputs, no
//! cycle, the op's arity and shape rule, no attribute an op does not read) and names the node and
//! field at fault; nodes may be listed in any order and are stored topologically (file order kept
//! where it already is one); its FLOPs (both conventions) and parameters fit in a `u64` (a
//! graph whose counts would overflow is refused, naming the node); writing is deterministic, one node per line, and
//! `write(read(write(g))) == write(g)` byte for byte.

use std::collections::{BinaryHeap, HashMap};

use serde::{Deserialize, Serialize};

use super::builder::canonical_attrs;
use super::shape::{infer_checked, InputTensor};
use super::{flops, Attrs, Convention, Graph, GraphError, Node, Op, Shape};

/// The `format` value of a graph file.
pub const FORMAT: &str = "aiop-graph";
/// The version this code writes and reads.
pub const VERSION: u32 = 1;
/// Most nodes a graph file may have.
pub const MAX_NODES: usize = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Pair {
    One(u32),
    Two([u32; 2]),
}

impl Pair {
    fn get(self) -> [u32; 2] {
        match self {
            Pair::One(v) => [v, v],
            Pair::Two(v) => v,
        }
    }
    fn of(v: [u32; 2]) -> Pair {
        if v[0] == v[1] {
            Pair::One(v[0])
        } else {
            Pair::Two(v)
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGraph {
    format: String,
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    nodes: Vec<FileNode>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNode {
    id: String,
    op: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    inputs: Vec<String>,
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    input: Option<[u32; 3]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    out: Option<[u32; 3]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    batch: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kernel: Option<Pair>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stride: Option<Pair>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    padding: Option<Pair>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dilation: Option<Pair>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    groups: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output_padding: Option<Pair>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    affine: Option<bool>,
}

fn shape_of(v: [u32; 3]) -> Shape {
    Shape::new(v[0], v[1], v[2])
}

fn arr(s: Shape) -> [u32; 3] {
    [s.c, s.h, s.w]
}

/// Write a graph in the interchange format (ids are the graph's names, or `n<index>`).
pub fn to_json(g: &Graph) -> String {
    let mut out = String::with_capacity(64 + g.len() * 120);
    out.push_str(&format!(
        "{{\"format\": \"{FORMAT}\", \"version\": {VERSION}, \"nodes\": [\n"
    ));
    for (i, n) in g.nodes().iter().enumerate() {
        let id = super::NodeId(i as u32);
        let u = n.op.attr_use();
        let a = &n.attrs;
        let fnode = FileNode {
            id: g.name(id),
            op: n.op.name().to_string(),
            inputs: g
                .inputs(id)
                .iter()
                .map(|&p| g.name(super::NodeId(p)))
                .collect(),
            input: if n.op == Op::Input {
                None
            } else {
                Some(arr(n.input))
            },
            out: Some(arr(n.output)),
            batch: (n.op == Op::Input && n.batch != 1).then_some(n.batch),
            kernel: u.kernel.then_some(Pair::of(a.kernel)),
            stride: u.stride.then_some(Pair::of(a.stride)),
            padding: u.padding.then_some(Pair::of(a.padding)),
            dilation: u.dilation.then_some(Pair::of(a.dilation)),
            groups: u.groups.then_some(a.groups),
            output_padding: u.output_padding.then_some(Pair::of(a.output_padding)),
            bias: u.bias.then_some(a.bias),
            affine: u.affine.then_some(a.affine),
        };
        out.push_str("  ");
        out.push_str(&serde_json::to_string(&fnode).expect("a node always serialises"));
        if i + 1 < g.len() {
            out.push(',');
        }
        out.push('\n');
    }
    out.push_str("]}\n");
    out
}

fn field_err(node: &str, field: &'static str, message: impl Into<String>) -> GraphError {
    GraphError::Field {
        node: format!("'{node}'"),
        field,
        message: message.into(),
    }
}

/// Read and validate a graph in the interchange format.
pub fn from_json(text: &str) -> Result<Graph, GraphError> {
    let file: FileGraph = serde_json::from_str(text)?;
    if file.format != FORMAT {
        return Err(GraphError::Invalid(format!(
            "field 'format': expected \"{FORMAT}\", got \"{}\"",
            file.format
        )));
    }
    if file.version != VERSION {
        return Err(GraphError::Invalid(format!(
            "field 'version': this aiop reads version {VERSION}, the file is version {}",
            file.version
        )));
    }
    if file.nodes.is_empty() {
        return Err(GraphError::Invalid(
            "field 'nodes': the graph has no nodes".into(),
        ));
    }
    if file.nodes.len() > MAX_NODES {
        return Err(GraphError::Invalid(format!(
            "field 'nodes': {} nodes exceed the limit {MAX_NODES}",
            file.nodes.len()
        )));
    }
    // Ids and ops.
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(file.nodes.len());
    let mut ops = Vec::with_capacity(file.nodes.len());
    for (i, n) in file.nodes.iter().enumerate() {
        if index.insert(n.id.as_str(), i).is_some() {
            return Err(GraphError::DuplicateId(n.id.clone()));
        }
        let op = Op::from_name(&n.op).ok_or_else(|| GraphError::UnknownOp {
            node: format!("'{}'", n.id),
            op: n.op.clone(),
            expected: Op::ALL.map(|o| o.name()).join(", "),
        })?;
        ops.push(op);
    }
    // Edges, then a stable topological order (Kahn, smallest file index first).
    let mut preds: Vec<Vec<usize>> = Vec::with_capacity(file.nodes.len());
    let mut succs: Vec<Vec<usize>> = vec![Vec::new(); file.nodes.len()];
    for (i, n) in file.nodes.iter().enumerate() {
        let mut p = Vec::with_capacity(n.inputs.len());
        for name in &n.inputs {
            let &j = index
                .get(name.as_str())
                .ok_or_else(|| GraphError::UnknownInput {
                    node: format!("'{}'", n.id),
                    input: name.clone(),
                })?;
            p.push(j);
            succs[j].push(i);
        }
        preds.push(p);
    }
    let mut indeg: Vec<usize> = preds.iter().map(Vec::len).collect();
    let mut ready: BinaryHeap<std::cmp::Reverse<usize>> = indeg
        .iter()
        .enumerate()
        .filter(|(_, &d)| d == 0)
        .map(|(i, _)| std::cmp::Reverse(i))
        .collect();
    let mut order = Vec::with_capacity(file.nodes.len());
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        order.push(i);
        for &s in &succs[i] {
            indeg[s] -= 1;
            if indeg[s] == 0 {
                ready.push(std::cmp::Reverse(s));
            }
        }
    }
    if order.len() < file.nodes.len() {
        let stuck = (0..file.nodes.len()).find(|&i| indeg[i] > 0).unwrap_or(0);
        return Err(GraphError::Cycle(format!("'{}'", file.nodes[stuck].id)));
    }
    let mut new_index = vec![0u32; file.nodes.len()];
    for (k, &i) in order.iter().enumerate() {
        new_index[i] = k as u32;
    }
    // Nodes in order, each checked against its op's rule.
    let mut g = Graph {
        nodes: Vec::with_capacity(order.len()),
        preds: Vec::new(),
        names: Some(Vec::with_capacity(order.len())),
    };
    let mut tensors: Vec<InputTensor> = Vec::new();
    // The graph's MACs, NASLib FLOPs and parameters so far: each must fit in a u64.
    let mut totals = [0u64; 3];
    for &i in &order {
        let n = &file.nodes[i];
        let op = ops[i];
        let mut attrs = read_attrs(n, op)?;
        tensors.clear();
        for &p in &preds[i] {
            let k = new_index[p] as usize;
            let pn = &g.nodes[k];
            tensors.push(InputTensor {
                shape: pn.output,
                batch: if pn.op == Op::BatchToDepth {
                    1
                } else {
                    pn.batch
                },
            });
        }
        // A depthwise conv's groups are its input channels unless given (then they are checked).
        if let (Op::DepthwiseConv, None, [t]) = (op, n.groups, &tensors[..]) {
            attrs.groups = t.shape.c;
        }
        if n.batch.is_some() && op != Op::Input {
            return Err(field_err(
                &n.id,
                "batch",
                "only an input declares its batch (other nodes inherit it)",
            ));
        }
        let declared = n.out.map(shape_of);
        if declared.is_none() && op.needs_declared_output() {
            return Err(field_err(
                &n.id,
                "out",
                format!("{op} needs its output shape [c, h, w]"),
            ));
        }
        let r = infer_checked(op, &attrs, &tensors, declared, n.batch.unwrap_or(1)).map_err(
            |message| GraphError::Shape {
                node: format!("'{}'", n.id),
                message,
            },
        )?;
        if let Some(d) = n.input {
            // An input's is its own output: one that disagrees is checked, not dropped.
            if shape_of(d) != r.input {
                return Err(field_err(
                    &n.id,
                    "in",
                    format!(
                        "declared input {} but {} {}",
                        shape_of(d),
                        if op == Op::Input {
                            "an input's is its output,"
                        } else {
                            "its inputs give"
                        },
                        r.input
                    ),
                ));
            }
        }
        let first_input = g.preds.len() as u32;
        g.preds.extend(preds[i].iter().map(|&p| new_index[p]));
        g.nodes.push(Node {
            op,
            input: r.input,
            output: r.output,
            attrs,
            batch: r.batch,
            first_input,
            num_inputs: preds[i].len() as u32,
        });
        let node = &g.nodes[g.nodes.len() - 1];
        let counts = [
            (
                flops::node_flops_checked(node, Convention::Macs),
                "FLOPs (macs)",
            ),
            (
                flops::node_flops_checked(node, Convention::Naslib),
                "FLOPs (naslib)",
            ),
            (flops::node_params_checked(node), "parameters"),
        ];
        for (total, (count, what)) in totals.iter_mut().zip(counts) {
            *total =
                count
                    .and_then(|c| total.checked_add(c))
                    .ok_or_else(|| GraphError::Overflow {
                        node: format!("'{}'", n.id),
                        what,
                    })?;
        }
        if let Some(names) = g.names.as_mut() {
            names.push(n.id.clone());
        }
    }
    // Ids that are just the default `n<index>` carry nothing: drop them so that a built graph
    // written and read back is equal to itself.
    let default_ids = g
        .names
        .as_ref()
        .is_some_and(|ns| ns.iter().enumerate().all(|(i, n)| *n == format!("n{i}")));
    if default_ids {
        g.names = None;
    }
    Ok(g)
}

fn read_attrs(n: &FileNode, op: Op) -> Result<Attrs, GraphError> {
    let u = op.attr_use();
    let d = Attrs::default();
    let check = |given: bool, used: bool, field: &'static str| -> Result<(), GraphError> {
        if given && !used {
            return Err(field_err(
                &n.id,
                field,
                format!("does not apply to op '{op}'"),
            ));
        }
        Ok(())
    };
    check(n.kernel.is_some(), u.kernel, "kernel")?;
    check(n.stride.is_some(), u.stride, "stride")?;
    check(n.padding.is_some(), u.padding, "padding")?;
    check(n.dilation.is_some(), u.dilation, "dilation")?;
    check(n.groups.is_some(), u.groups, "groups")?;
    check(
        n.output_padding.is_some(),
        u.output_padding,
        "output_padding",
    )?;
    check(n.bias.is_some(), u.bias, "bias")?;
    check(n.affine.is_some(), u.affine, "affine")?;
    let a = Attrs {
        kernel: n.kernel.map_or(d.kernel, Pair::get),
        stride: n.stride.map_or(d.stride, Pair::get),
        padding: n.padding.map_or(d.padding, Pair::get),
        dilation: n.dilation.map_or(d.dilation, Pair::get),
        groups: n.groups.unwrap_or(d.groups),
        output_padding: n.output_padding.map_or(d.output_padding, Pair::get),
        bias: n.bias.unwrap_or(d.bias),
        affine: n.affine.unwrap_or(d.affine),
    };
    Ok(canonical_attrs(op, &a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::builder::Conv;
    use crate::graph::GraphBuilder;

    fn small() -> Graph {
        let mut b = GraphBuilder::new();
        let x = b.input(3, 16, 16).unwrap();
        let c = b.conv(x, Conv::new(8, 3).stride(2)).unwrap();
        let bn = b.batch_norm(c, false).unwrap();
        let p = b.global_avg_pool(bn).unwrap();
        let l = b.linear(p, 10, true).unwrap();
        b.output(l).unwrap();
        b.finish()
    }

    #[test]
    fn round_trips_byte_for_byte() {
        let g = small();
        let text = to_json(&g);
        let back = from_json(&text).unwrap();
        assert_eq!(to_json(&back), text);
        assert_eq!(back.nodes(), g.nodes());
        assert_eq!(back.hash(), g.hash());
    }

    #[test]
    fn nodes_in_any_order_and_optional_shapes() {
        let text = r#"{"format": "aiop-graph", "version": 1, "nodes": [
            {"id": "out", "op": "output", "inputs": ["r"]},
            {"id": "r", "op": "relu", "inputs": ["c"]},
            {"id": "c", "op": "conv", "inputs": ["x"], "out": [4, 8, 8], "kernel": 3, "padding": 1},
            {"id": "x", "op": "input", "out": [3, 8, 8]}
        ]}"#;
        let g = from_json(text).unwrap();
        assert_eq!(g.names().unwrap(), ["x", "c", "r", "out"]);
        assert_eq!(g.nodes()[3].output, Shape::new(4, 8, 8));
    }

    #[test]
    fn errors_name_the_node_and_field() {
        let bad_shape = r#"{"format": "aiop-graph", "version": 1, "nodes": [
            {"id": "x", "op": "input", "out": [3, 8, 8]},
            {"id": "c", "op": "conv", "inputs": ["x"], "out": [4, 8, 8], "kernel": 3, "stride": 2, "padding": 1}
        ]}"#;
        let e = from_json(bad_shape).unwrap_err().to_string();
        assert!(
            e.contains("node 'c'") && e.contains("gives [4, 4, 4]"),
            "{e}"
        );
        let bad_attr = r#"{"format": "aiop-graph", "version": 1, "nodes": [
            {"id": "x", "op": "input", "out": [3, 8, 8]},
            {"id": "r", "op": "relu", "inputs": ["x"], "kernel": 3}
        ]}"#;
        let e = from_json(bad_attr).unwrap_err().to_string();
        assert!(e.contains("node 'r': field 'kernel'"), "{e}");
        let cycle = r#"{"format": "aiop-graph", "version": 1, "nodes": [
            {"id": "a", "op": "relu", "inputs": ["b"]},
            {"id": "b", "op": "relu", "inputs": ["a"]}
        ]}"#;
        assert!(matches!(from_json(cycle), Err(GraphError::Cycle(_))));
        let unknown = r#"{"format": "aiop-graph", "version": 1, "nodes": [
            {"id": "a", "op": "convolution"}]}"#;
        let e = from_json(unknown).unwrap_err().to_string();
        assert!(e.contains("unknown op 'convolution'"), "{e}");
        let typo = r#"{"format": "aiop-graph", "version": 1, "nodes": [
            {"id": "a", "op": "input", "out": [3, 8, 8], "kernal": 3}]}"#;
        let e = from_json(typo).unwrap_err().to_string();
        assert!(e.contains("kernal") && e.contains("line 2"), "{e}");
        // An input's `in` is checked against its `out`, not dropped.
        let input_in = |shape: &str| {
            format!(
                r#"{{"format": "aiop-graph", "version": 1, "nodes": [
                {{"id": "x", "op": "input", "in": {shape}, "out": [3, 8, 8]}}]}}"#
            )
        };
        assert!(from_json(&input_in("[3, 8, 8]")).is_ok());
        let e = from_json(&input_in("[3, 9, 8]")).unwrap_err().to_string();
        assert!(e.contains("node 'x': field 'in'"), "{e}");
        // A depthwise conv's groups default to its input channels; given, they are checked.
        let depthwise = |groups: &str| {
            format!(
                r#"{{"format": "aiop-graph", "version": 1, "nodes": [
                {{"id": "x", "op": "input", "out": [4, 8, 8]}},
                {{"id": "c", "op": "depthwise_conv", "inputs": ["x"], "out": [4, 8, 8],
                  "kernel": 3, "padding": 1{groups}}}]}}"#
            )
        };
        let implied = from_json(&depthwise("")).unwrap();
        assert_eq!(implied.nodes()[1].attrs.groups, 4);
        let given = from_json(&depthwise(r#", "groups": 4"#)).unwrap();
        assert_eq!(implied.hash(), given.hash());
        let e = from_json(&depthwise(r#", "groups": 2"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("groups == input channels (4), got 2"), "{e}");
    }

    #[test]
    fn counts_past_u64_are_refused_at_the_node_that_overflows() {
        // Each conv: 2^20 · 2^20 · 2^20 · 2^3 = 2^63 MACs, so the second one's sum overflows.
        let m = 1 << 20;
        let graph = |nodes: &str| {
            format!(
                r#"{{"format": "aiop-graph", "version": 1, "nodes": [
                {{"id": "x", "op": "input", "out": [{m}, {m}, 8]}}, {nodes}]}}"#
            )
        };
        let conv = |id: &str| {
            format!(
                r#"{{"id": "{id}", "op": "conv", "inputs": ["x"], "out": [{m}, {m}, 8], "kernel": 1}}"#
            )
        };
        let one = from_json(&graph(&conv("a"))).unwrap();
        assert_eq!(one.flops(Convention::Macs), 1 << 63);
        let e = from_json(&graph(&format!("{}, {}", conv("a"), conv("b")))).unwrap_err();
        assert!(
            matches!(&e, GraphError::Overflow { node, what: "FLOPs (macs)" } if node == "'b'"),
            "{e}"
        );
        // One node past u64 on its own (2^20 channels in and out at 2^20 x 2^20).
        let huge = format!(
            r#"{{"format": "aiop-graph", "version": 1, "nodes": [
            {{"id": "x", "op": "input", "out": [{m}, {m}, {m}]}},
            {{"id": "c", "op": "conv", "inputs": ["x"], "out": [{m}, {m}, {m}], "kernel": 1}}]}}"#
        );
        let e = from_json(&huge).unwrap_err().to_string();
        assert!(
            e.starts_with("node 'c': the graph's FLOPs (macs) overflow 64 bits"),
            "{e}"
        );
    }
}
