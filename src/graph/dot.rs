//! Graphviz DOT export of a graph, for looking at networks (`aiop graph --format dot`).
//!
//! Invariant: output is deterministic; each node shows its op, key attributes and output shape.

use std::fmt::Write;

use super::{Graph, NodeId, Op};

/// Render a graph as a DOT digraph.
pub fn to_dot(g: &Graph, title: &str) -> String {
    let mut s = String::with_capacity(64 + g.len() * 80);
    let _ = writeln!(s, "digraph \"{}\" {{", escaped(title));
    let _ = writeln!(s, "  rankdir=TB; node [shape=box, fontsize=10];");
    for (i, n) in g.nodes().iter().enumerate() {
        let a = &n.attrs;
        let mut label = n.op.name().to_string();
        let u = n.op.attr_use();
        if u.kernel {
            let _ = write!(label, " {}x{}", a.kernel[0], a.kernel[1]);
        }
        if u.stride && a.stride != [1, 1] {
            let _ = write!(label, " s{}", a.stride[0]);
        }
        if u.dilation && a.dilation != [1, 1] {
            let _ = write!(label, " d{}", a.dilation[0]);
        }
        if u.groups && a.groups != 1 {
            let _ = write!(label, " g{}", a.groups);
        }
        let o = n.output;
        let _ = write!(label, "\\n{}x{}x{}", o.c, o.h, o.w);
        if n.batch != 1 {
            let _ = write!(label, " (x{})", n.batch);
        }
        let style = match n.op {
            Op::Input | Op::Output => ", style=filled, fillcolor=lightgrey",
            Op::Conv | Op::DepthwiseConv | Op::ConvTranspose | Op::Linear => {
                ", style=filled, fillcolor=lightblue"
            }
            _ => "",
        };
        let _ = writeln!(
            s,
            "  n{i} [label=\"{}\"{style}, tooltip=\"{}\"];",
            label,
            escaped(&g.name(NodeId(i as u32)))
        );
    }
    for (src, dst) in g.edges() {
        let _ = writeln!(s, "  n{src} -> n{dst};");
    }
    s.push_str("}\n");
    s
}

/// `text` inside a DOT double-quoted string: a backslash, a quote or a line break is escaped
/// (unescaped, a name ending in `\` swallowed the closing quote and the file would not parse).
fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::GraphBuilder;

    #[test]
    fn dot_lists_nodes_and_edges() {
        let mut b = GraphBuilder::new();
        let x = b.input(3, 4, 4).unwrap();
        let r = b.relu(x).unwrap();
        b.output(r).unwrap();
        let d = to_dot(&b.finish(), "t");
        assert!(d.starts_with("digraph \"t\" {"));
        assert!(d.contains("n0 -> n1;") && d.contains("n1 -> n2;"));
        assert!(d.contains("relu\\n3x4x4"));
    }

    #[test]
    fn quotes_and_backslashes_in_names_are_escaped() {
        let mut b = GraphBuilder::new();
        let x = b.input(3, 4, 4).unwrap();
        b.output(x).unwrap();
        // A title ending in a backslash ended the string early: the file did not parse.
        let d = to_dot(&b.finish(), "C:\\runs\\\"best\"\\");
        assert!(
            d.starts_with("digraph \"C:\\\\runs\\\\\\\"best\\\"\\\\\" {"),
            "{d}"
        );
        assert_eq!(escaped("a\nb"), "a\\nb");
    }
}
