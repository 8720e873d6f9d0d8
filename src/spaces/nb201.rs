//! NAS-Bench-201 (Dong & Yang, ICLR 2020): one cell of 4 nodes and 6 edges, 5 candidate ops per
//! edge (15,625 architectures), stacked into the benchmark's ResNet-like network.
//!
//! Network (NASLib / AutoDL-Projects `TinyNetwork`, C=16, N=5): stem conv3x3(3→16)+BN; three
//! stages of 5 cells at 16, 32, 64 channels joined by residual reduction blocks (ReLU-conv3x3 s2-BN,
//! ReLU-conv3x3-BN, shortcut avg-pool 2x2 s2 + conv1x1); head BN, ReLU, global average pooling,
//! linear. Inputs 32x32 (CIFAR) or 16x16 (ImageNet16-120). In a cell, node j sums op(node i) over
//! i < j; the cell output is node 3; every edge is built, `none` edges as zero nodes.
//! Invariants: the architecture is stored as 6 ops in the API string's edge order
//! (1←0, 2←0, 2←1, 3←0, 3←1, 3←2).

use super::{
    format_int_tuple, graph_err, one_op_edits, parse_int_tuple, SearchSpace, SpaceError, SpaceId,
    Task,
};
use crate::graph::builder::Conv;
use crate::graph::{Graph, GraphBuilder, GraphError, NodeId};
use crate::rng::Rng;

/// One edge operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EdgeOp {
    None,
    Skip,
    Conv1x1,
    Conv3x3,
    AvgPool3x3,
}

impl EdgeOp {
    pub const ALL: [EdgeOp; 5] = [
        EdgeOp::None,
        EdgeOp::Skip,
        EdgeOp::Conv1x1,
        EdgeOp::Conv3x3,
        EdgeOp::AvgPool3x3,
    ];

    /// The benchmark's op name.
    pub fn name(self) -> &'static str {
        match self {
            EdgeOp::None => "none",
            EdgeOp::Skip => "skip_connect",
            EdgeOp::Conv1x1 => "nor_conv_1x1",
            EdgeOp::Conv3x3 => "nor_conv_3x3",
            EdgeOp::AvgPool3x3 => "avg_pool_3x3",
        }
    }

    /// NASLib's op index: 0 skip, 1 none, 2 conv3x3, 3 conv1x1, 4 avg pool.
    pub fn naslib(self) -> i64 {
        match self {
            EdgeOp::Skip => 0,
            EdgeOp::None => 1,
            EdgeOp::Conv3x3 => 2,
            EdgeOp::Conv1x1 => 3,
            EdgeOp::AvgPool3x3 => 4,
        }
    }

    fn from_naslib(i: i64) -> Option<EdgeOp> {
        EdgeOp::ALL.into_iter().find(|o| o.naslib() == i)
    }
}

/// An NB-201 cell: ops on edges (1←0, 2←0, 2←1, 3←0, 3←1, 3←2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nb201Arch(pub [EdgeOp; 6]);

/// (target node, source node) of each stored edge.
const EDGES: [(usize, usize); 6] = [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)];
/// NASLib's edge order (1,2),(1,3),(1,4),(2,3),(2,4),(3,4) as indices into [`EDGES`].
const NASLIB_ORDER: [usize; 6] = [0, 1, 3, 2, 4, 5];

/// The NAS-Bench-201 space.
pub struct Nb201;

fn perr(input: &str, message: impl Into<String>) -> SpaceError {
    SpaceError::Parse {
        space: SpaceId::Nb201,
        input: input.to_string(),
        message: message.into(),
    }
}

fn parse_api(s: &str) -> Result<Nb201Arch, SpaceError> {
    let nodes: Vec<&str> = s.split('+').collect();
    if nodes.len() != 3 {
        return Err(perr(
            s,
            format!("{} '+'-separated nodes, need 3", nodes.len()),
        ));
    }
    let mut ops = [EdgeOp::None; 6];
    let mut k = 0;
    for (j, node) in nodes.iter().enumerate() {
        let inner = node
            .strip_prefix('|')
            .and_then(|x| x.strip_suffix('|'))
            .ok_or_else(|| perr(s, format!("node {} is not enclosed in '|'", j + 1)))?;
        let edges: Vec<&str> = inner.split('|').collect();
        if edges.len() != j + 1 {
            return Err(perr(
                s,
                format!("node {} has {} edges, needs {}", j + 1, edges.len(), j + 1),
            ));
        }
        for (i, e) in edges.iter().enumerate() {
            let (name, src) = e
                .split_once('~')
                .ok_or_else(|| perr(s, format!("edge '{e}' is not op~source")))?;
            if src != i.to_string() {
                return Err(perr(s, format!("edge '{e}' should come from node {i}")));
            }
            ops[k] = EdgeOp::ALL
                .into_iter()
                .find(|o| o.name() == name)
                .ok_or_else(|| {
                    perr(
                        s,
                        format!("unknown op '{name}' (ops: none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3)"),
                    )
                })?;
            k += 1;
        }
    }
    Ok(Nb201Arch(ops))
}

fn parse_naslib(s: &str, digits: &[i64]) -> Result<Nb201Arch, SpaceError> {
    if digits.len() != 6 {
        return Err(perr(s, format!("{} op indices, need 6", digits.len())));
    }
    let mut ops = [EdgeOp::None; 6];
    for (pos, &d) in digits.iter().enumerate() {
        ops[NASLIB_ORDER[pos]] = EdgeOp::from_naslib(d)
            .ok_or_else(|| perr(s, format!("op index {d} is not in 0..=4")))?;
    }
    Ok(Nb201Arch(ops))
}

impl Nb201 {
    /// Parse the 6-digit `naslib_op_indices` column of the label table (e.g. `433000`).
    pub fn parse_digits(s: &str) -> Result<Nb201Arch, SpaceError> {
        let digits: Option<Vec<i64>> = s.chars().map(|c| c.to_digit(10).map(i64::from)).collect();
        parse_naslib(s, &digits.ok_or_else(|| perr(s, "not all digits"))?)
    }

    fn cell(b: &mut GraphBuilder, x: NodeId, ops: &[EdgeOp; 6]) -> Result<NodeId, GraphError> {
        let c = b.shape(x).c;
        let mut nodes = [x; 4];
        let mut terms: Vec<NodeId> = Vec::with_capacity(3);
        for j in 1..4 {
            terms.clear();
            for (k, &(dst, src)) in EDGES.iter().enumerate() {
                if dst != j {
                    continue;
                }
                let inp = nodes[src];
                let t = match ops[k] {
                    EdgeOp::None => b.zero(inp, c, 1)?,
                    EdgeOp::Skip => b.identity(inp)?,
                    EdgeOp::Conv1x1 | EdgeOp::Conv3x3 => {
                        let k = if ops[k] == EdgeOp::Conv1x1 { 1 } else { 3 };
                        let r = b.relu(inp)?;
                        let cv = b.conv(r, Conv::new(c, k))?;
                        b.batch_norm(cv, true)?
                    }
                    EdgeOp::AvgPool3x3 => b.avg_pool(inp, 3, 1, 1)?,
                };
                terms.push(t);
            }
            nodes[j] = b.add(&terms)?;
        }
        Ok(nodes[3])
    }

    fn reduction(b: &mut GraphBuilder, x: NodeId, out: u32) -> Result<NodeId, GraphError> {
        let r = b.relu(x)?;
        let c = b.conv(r, Conv::new(out, 3).stride(2))?;
        let c = b.batch_norm(c, true)?;
        let r = b.relu(c)?;
        let c = b.conv(r, Conv::new(out, 3))?;
        let main = b.batch_norm(c, true)?;
        let p = b.avg_pool(x, 2, 2, 0)?;
        let short = b.conv(p, Conv::new(out, 1))?;
        b.add(&[main, short])
    }

    fn network(a: &Nb201Arch, task: Task) -> Result<Graph, GraphError> {
        let (hw, classes) = match task {
            Task::Cifar10 => (32, 10),
            Task::Cifar100 => (32, 100),
            _ => (16, 120),
        };
        let mut b = GraphBuilder::with_capacity(400, 480);
        let x = b.input(3, hw, hw)?;
        let s = b.conv(x, Conv::new(16, 3))?;
        let mut h = b.batch_norm(s, true)?;
        for (stage, c) in [16u32, 32, 64].into_iter().enumerate() {
            if stage > 0 {
                h = Self::reduction(&mut b, h, c)?;
            }
            for _ in 0..5 {
                h = Self::cell(&mut b, h, &a.0)?;
            }
        }
        let bn = b.batch_norm(h, true)?;
        let r = b.relu(bn)?;
        let p = b.global_avg_pool(r)?;
        let l = b.linear(p, classes, true)?;
        b.output(l)?;
        Ok(b.finish())
    }
}

impl SearchSpace for Nb201 {
    type Arch = Nb201Arch;
    const ID: SpaceId = SpaceId::Nb201;
    const FORMAT_HELP: &'static str = "'|op~0|+|op~0|op~1|+|op~0|op~1|op~2|' with op in none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3, or a NASLib tuple of 6 op indices '(0, 2, 3, 2, 3, 1)' (0 skip, 1 none, 2 conv3x3, 3 conv1x1, 4 avg pool)";

    fn parse(s: &str) -> Result<Nb201Arch, SpaceError> {
        let t = s.trim();
        if t.starts_with('|') {
            parse_api(t)
        } else if let Some(d) = parse_int_tuple(t) {
            parse_naslib(t, &d)
        } else {
            Err(perr(t, "neither an API string nor a NASLib tuple"))
        }
    }

    fn format(a: &Nb201Arch) -> String {
        let o = |k: usize| a.0[k].name();
        format!(
            "|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|",
            o(0),
            o(1),
            o(2),
            o(3),
            o(4),
            o(5)
        )
    }

    fn naslib(a: &Nb201Arch) -> String {
        format_int_tuple(NASLIB_ORDER.iter().map(|&k| a.0[k].naslib()))
    }

    fn sample(rng: &mut Rng) -> Nb201Arch {
        let mut ops = [EdgeOp::None; 6];
        for o in &mut ops {
            *o = EdgeOp::ALL[rng.index(5)];
        }
        Nb201Arch(ops)
    }

    fn enumerate() -> Option<Vec<Nb201Arch>> {
        let mut out = Vec::with_capacity(15_625);
        for mut code in 0..15_625usize {
            let mut ops = [EdgeOp::None; 6];
            for o in &mut ops {
                *o = EdgeOp::ALL[code % 5];
                code /= 5;
            }
            out.push(Nb201Arch(ops));
        }
        Some(out)
    }

    fn neighbours(a: &Nb201Arch) -> Vec<Nb201Arch> {
        one_op_edits(&a.0, &EdgeOp::ALL)
            .into_iter()
            .map(Nb201Arch)
            .collect()
    }

    fn build(a: &Nb201Arch, task: Task) -> Result<Graph, SpaceError> {
        Self::network(a, task).map_err(graph_err(SpaceId::Nb201, Self::format(a), task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Convention;

    const A: &str =
        "|skip_connect~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_1x1~0|nor_conv_1x1~1|none~2|";

    #[test]
    fn api_and_naslib_spellings_agree() {
        let a = Nb201::parse(A).unwrap();
        assert_eq!(Nb201::format(&a), A);
        assert_eq!(Nb201::naslib(&a), "(0, 2, 3, 2, 3, 1)");
        assert_eq!(Nb201::parse("(0, 2, 3, 2, 3, 1)").unwrap(), a);
        assert_eq!(Nb201::parse_digits("023231").unwrap(), a);
    }

    #[test]
    fn bad_strings_say_what_was_expected() {
        for bad in [
            "|skip_connect~0|+|nor_conv_3x3~0|+|none~0|none~1|none~2|",
            "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|",
            "(0, 1, 2)",
            "(0, 1, 2, 3, 4, 9)",
            "hello",
        ] {
            let e = Nb201::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected '|op~0|"), "{e}");
        }
    }

    #[test]
    fn counts_match_the_published_test_vector() {
        // flops_testvectors.json: nb201/cifar10, (0, 2, 3, 2, 3, 1): 88.307392 MFLOPs, 0.615386 M params.
        let g = Nb201::build(&Nb201::parse(A).unwrap(), Task::Cifar10).unwrap();
        assert_eq!(g.flops(Convention::Naslib), 88_307_392);
        assert_eq!(g.params(), 615_386);
    }

    #[test]
    fn enumeration_is_complete_and_neighbours_distinct() {
        let all = Nb201::enumerate().unwrap();
        let set: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), 15_625);
        let n = Nb201::neighbours(&all[7]);
        assert_eq!(n.len(), 24);
        let ns: std::collections::HashSet<_> = n.iter().collect();
        assert_eq!(ns.len(), 24);
        assert!(!ns.contains(&all[7]));
    }
}
