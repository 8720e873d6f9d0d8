//! The DARTS space (Liu et al., ICLR 2019) as NAS-Bench-301 evaluates it on CIFAR-10: a normal
//! and a reduction cell, each with 2 inputs and 4 intermediate nodes of 2 incoming edges, 7 ops.
//!
//! Network (NASLib `NasBench301SearchSpace`, evaluation form, C=32, 8 cells): stem
//! conv3x3(3→96)+BN; cells 0..8 at 32, 32, 64 (reduction), 64, 64, 128 (reduction), 128, 128
//! channels; each cell preprocesses its two inputs (the outputs of the two previous cells, the
//! stem standing in for missing ones) with ReLU-conv1x1-BN, or FactorizedReduce(affine) for the
//! older input when the newer came out of a reduction cell; node i+2 sums its edges; the cell
//! output concatenates nodes 2..5. Head: global average pooling, linear(512→10). The auxiliary
//! head is not built (not run at evaluation). In a reduction cell the edges from the two inputs
//! have stride 2. Pools are followed by BN(affine=False); sep/dil convs use BN(affine=False);
//! a strided skip is FactorizedReduce(affine=False).
//! NASLib keys a cell's edges by (source, node), so two edges of one node from the same source
//! collapse into one, the later op winning; the CG builds that single edge.
//! Invariants: an architecture is the compact genotype as given (pairs (source, op) per cell,
//! pairs 2i and 2i+1 feeding node i+2, source in 0..=i+1, op in 0..7); `format` writes the
//! data's spelling `[[(0, 0), (1, 5), ...], [...]]`.

use super::{graph_err, SearchSpace, SpaceError, SpaceId, Task};
use crate::graph::builder::Conv;
use crate::graph::{Graph, GraphBuilder, GraphError, NodeId};
use crate::rng::Rng;

/// An edge operation, in NASLib's compact index order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DartsOp {
    MaxPool3x3,
    AvgPool3x3,
    SkipConnect,
    SepConv3x3,
    SepConv5x5,
    DilConv3x3,
    DilConv5x5,
}

impl DartsOp {
    pub const ALL: [DartsOp; 7] = [
        DartsOp::MaxPool3x3,
        DartsOp::AvgPool3x3,
        DartsOp::SkipConnect,
        DartsOp::SepConv3x3,
        DartsOp::SepConv5x5,
        DartsOp::DilConv3x3,
        DartsOp::DilConv5x5,
    ];

    /// The genotype's op name.
    pub fn name(self) -> &'static str {
        match self {
            DartsOp::MaxPool3x3 => "max_pool_3x3",
            DartsOp::AvgPool3x3 => "avg_pool_3x3",
            DartsOp::SkipConnect => "skip_connect",
            DartsOp::SepConv3x3 => "sep_conv_3x3",
            DartsOp::SepConv5x5 => "sep_conv_5x5",
            DartsOp::DilConv3x3 => "dil_conv_3x3",
            DartsOp::DilConv5x5 => "dil_conv_5x5",
        }
    }

    /// NASLib's compact op index.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One cell: 8 (source, op) pairs; pairs 2i and 2i+1 feed intermediate node i+2.
pub type Cell = [(u8, DartsOp); 8];

/// A DARTS architecture: the normal cell, then the reduction cell. Sources are always in range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DartsArch {
    cells: [Cell; 2],
}

/// Largest source allowed for pair `j` (node j/2+2 reads nodes 0..=j/2+1).
fn max_src(j: usize) -> u8 {
    (j / 2 + 1) as u8
}

impl DartsArch {
    /// An architecture from its two cells, checking every source is an earlier node.
    pub fn new(normal: Cell, reduce: Cell) -> Result<DartsArch, String> {
        for (c, cell) in [normal, reduce].iter().enumerate() {
            for (j, &(src, _)) in cell.iter().enumerate() {
                if src > max_src(j) {
                    return Err(format!(
                        "{} cell pair {j} feeds node {} from node {src}, must be 0..={}",
                        ["normal", "reduction"][c],
                        j / 2 + 2,
                        max_src(j)
                    ));
                }
            }
        }
        Ok(DartsArch {
            cells: [normal, reduce],
        })
    }

    pub fn normal(&self) -> &Cell {
        &self.cells[0]
    }

    pub fn reduce(&self) -> &Cell {
        &self.cells[1]
    }
}

/// The DARTS / NAS-Bench-301 space.
pub struct Darts;

fn perr(input: &str, message: impl Into<String>) -> SpaceError {
    SpaceError::Parse {
        space: SpaceId::Darts,
        input: input.to_string(),
        message: message.into(),
    }
}

/// A cursor over the architecture string with all whitespace removed.
struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn expect(&mut self, what: &[u8]) -> Result<u8, String> {
        match self.peek() {
            Some(c) if what.contains(&c) => {
                self.pos += 1;
                Ok(c)
            }
            got => {
                let want: Vec<String> = what.iter().map(|&c| format!("'{}'", c as char)).collect();
                Err(format!(
                    "expected {} at character {}, found {}",
                    want.join(" or "),
                    self.pos,
                    got.map_or("the end".to_string(), |c| format!("'{}'", c as char))
                ))
            }
        }
    }

    fn int(&mut self) -> Result<u64, String> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        std::str::from_utf8(&self.s[start..self.pos])
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| format!("expected an integer at character {start}"))
    }
}

fn close(open: u8) -> u8 {
    if open == b'[' {
        b']'
    } else {
        b')'
    }
}

fn parse_cell(cur: &mut Cursor, which: &str) -> Result<Cell, String> {
    let open = cur.expect(b"[(")?;
    let mut cell = [(0u8, DartsOp::MaxPool3x3); 8];
    for (j, slot) in cell.iter_mut().enumerate() {
        if j > 0 {
            cur.expect(b",")
                .map_err(|e| format!("{which} cell: {e} (8 pairs)"))?;
        }
        let p = cur.expect(b"([")?;
        let src = cur.int()?;
        cur.expect(b",")?;
        let op = cur.int()?;
        cur.expect(&[close(p)])?;
        let op = usize::try_from(op)
            .ok()
            .and_then(|o| DartsOp::ALL.get(o).copied())
            .ok_or_else(|| format!("{which} cell pair {j}: op {op} is not in 0..=6"))?;
        let src = u8::try_from(src)
            .ok()
            .filter(|&s| s <= max_src(j))
            .ok_or_else(|| {
                format!(
                    "{which} cell pair {j} feeds node {} from node {src}, must be 0..={}",
                    j / 2 + 2,
                    max_src(j)
                )
            })?;
        *slot = (src, op);
    }
    cur.expect(&[close(open)])
        .map_err(|e| format!("{which} cell: {e} (8 pairs)"))?;
    Ok(cell)
}

fn parse_compact(s: &str) -> Result<DartsArch, String> {
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut cur = Cursor { s: &bytes, pos: 0 };
    let open = cur.expect(b"[(")?;
    let normal = parse_cell(&mut cur, "normal")?;
    cur.expect(b",")?;
    let reduce = parse_cell(&mut cur, "reduction")?;
    cur.expect(&[close(open)])?;
    if cur.pos != bytes.len() {
        return Err(format!("unexpected text after character {}", cur.pos));
    }
    DartsArch::new(normal, reduce)
}

/// ReLU-conv1x1-BN(affine), the preprocessing of a cell input.
fn relu_conv_bn(b: &mut GraphBuilder, x: NodeId, c: u32) -> Result<NodeId, GraphError> {
    let r = b.relu(x)?;
    let cv = b.conv(r, Conv::new(c, 1))?;
    b.batch_norm(cv, true)
}

/// FactorizedReduce: ReLU, two 1x1 stride-2 convs to c/2 channels each (the second on the input
/// shifted by one pixel, which the CG cannot express and which changes no count), concat, BN.
fn factorized_reduce(
    b: &mut GraphBuilder,
    x: NodeId,
    c: u32,
    affine: bool,
) -> Result<NodeId, GraphError> {
    let r = b.relu(x)?;
    let c1 = b.conv(r, Conv::new(c / 2, 1).stride(2).pad(0))?;
    let c2 = b.conv(r, Conv::new(c / 2, 1).stride(2).pad(0))?;
    let cat = b.concat(&[c1, c2])?;
    b.batch_norm(cat, affine)
}

fn edge(
    b: &mut GraphBuilder,
    x: NodeId,
    op: DartsOp,
    c: u32,
    stride: u32,
) -> Result<NodeId, GraphError> {
    match op {
        DartsOp::MaxPool3x3 => {
            let p = b.max_pool(x, 3, stride, 1)?;
            b.batch_norm(p, false)
        }
        DartsOp::AvgPool3x3 => {
            let p = b.avg_pool(x, 3, stride, 1)?;
            b.batch_norm(p, false)
        }
        DartsOp::SkipConnect if stride == 1 => b.identity(x),
        DartsOp::SkipConnect => factorized_reduce(b, x, c, false),
        DartsOp::SepConv3x3 | DartsOp::SepConv5x5 => {
            let k = if op == DartsOp::SepConv3x3 { 3 } else { 5 };
            let mut h = x;
            for s in [stride, 1] {
                let r = b.relu(h)?;
                let d = b.depthwise(r, Conv::new(c, k).stride(s))?;
                let p = b.conv(d, Conv::new(c, 1))?;
                h = b.batch_norm(p, false)?;
            }
            Ok(h)
        }
        DartsOp::DilConv3x3 | DartsOp::DilConv5x5 => {
            let k = if op == DartsOp::DilConv3x3 { 3 } else { 5 };
            let r = b.relu(x)?;
            let d = b.depthwise(r, Conv::new(c, k).stride(stride).dilation(2))?;
            let p = b.conv(d, Conv::new(c, 1))?;
            b.batch_norm(p, false)
        }
    }
}

/// The edges of a cell as the benchmark built them: one per (source, node), in first-seen
/// order, carrying the op of the last pair that names it.
pub fn collapsed_edges(cell: &Cell) -> Vec<(usize, usize, DartsOp)> {
    let mut edges: Vec<(usize, usize, DartsOp)> = Vec::with_capacity(8);
    for (j, &(src, op)) in cell.iter().enumerate() {
        let (src, dst) = (src as usize, j / 2 + 2);
        match edges.iter_mut().find(|e| e.0 == src && e.1 == dst) {
            Some(e) => e.2 = op,
            None => edges.push((src, dst, op)),
        }
    }
    edges
}

impl Darts {
    fn cell(
        b: &mut GraphBuilder,
        s0: NodeId,
        s1: NodeId,
        cell: &Cell,
        c: u32,
        reduction: bool,
    ) -> Result<NodeId, GraphError> {
        let edges = collapsed_edges(cell);
        let mut nodes: Vec<NodeId> = vec![s0, s1];
        let mut terms: Vec<NodeId> = Vec::with_capacity(2);
        for dst in 2..6 {
            terms.clear();
            for &(src, _, op) in edges.iter().filter(|e| e.1 == dst) {
                let stride = if reduction && src < 2 { 2 } else { 1 };
                terms.push(edge(b, nodes[src], op, c, stride)?);
            }
            nodes.push(b.add(&terms)?);
        }
        b.concat(&nodes[2..])
    }

    fn network(a: &DartsArch) -> Result<Graph, GraphError> {
        let mut b = GraphBuilder::with_capacity(700, 800);
        let x = b.input(3, 32, 32)?;
        let st = b.conv(x, Conv::new(96, 3))?;
        let stem = b.batch_norm(st, true)?;
        let (mut s0, mut s1) = (stem, stem);
        let mut prev_reduction = false;
        for k in 0..8 {
            let reduction = k == 2 || k == 5;
            let c = match k {
                0 | 1 => 32,
                2..=4 => 64,
                _ => 128,
            };
            let p0 = if prev_reduction {
                factorized_reduce(&mut b, s0, c, true)?
            } else {
                relu_conv_bn(&mut b, s0, c)?
            };
            let p1 = relu_conv_bn(&mut b, s1, c)?;
            let out = Self::cell(
                &mut b,
                p0,
                p1,
                &a.cells[usize::from(reduction)],
                c,
                reduction,
            )?;
            (s0, s1) = (s1, out);
            prev_reduction = reduction;
        }
        let g = b.global_avg_pool(s1)?;
        let l = b.linear(g, 10, true)?;
        b.output(l)?;
        Ok(b.finish())
    }
}

impl SearchSpace for Darts {
    type Arch = DartsArch;
    const ID: SpaceId = SpaceId::Darts;
    const FORMAT_HELP: &'static str = "a NASLib compact genotype '[[(0, 0), (1, 5), (1, 1), (0, 1), (1, 3), (0, 3), (1, 3), (3, 2)], [(1, 0), (0, 2), ...8 pairs]]': normal then reduction cell, 8 (source, op) pairs each, pairs 2i and 2i+1 feeding node i+2 from a source in 0..=i+1, op 0 max_pool_3x3, 1 avg_pool_3x3, 2 skip_connect, 3 sep_conv_3x3, 4 sep_conv_5x5, 5 dil_conv_3x3, 6 dil_conv_5x5 (spaces optional)";

    fn parse(s: &str) -> Result<DartsArch, SpaceError> {
        let t = s.trim();
        parse_compact(t).map_err(|m| perr(t, m))
    }

    fn format(a: &DartsArch) -> String {
        let cell = |c: &Cell| {
            let pairs: Vec<String> = c
                .iter()
                .map(|&(s, o)| format!("({s}, {})", o.index()))
                .collect();
            format!("[{}]", pairs.join(", "))
        };
        format!("[{}, {}]", cell(&a.cells[0]), cell(&a.cells[1]))
    }

    fn naslib(a: &DartsArch) -> String {
        Self::format(a)
    }

    /// NASLib's sampler: per node, two distinct sources drawn uniformly (in draw order) and an
    /// op uniform in 0..7 for each, independently for the two cells.
    fn sample(rng: &mut Rng) -> DartsArch {
        let mut cells = [[(0u8, DartsOp::MaxPool3x3); 8]; 2];
        for i in 0..4 {
            for cell in &mut cells {
                let n = i + 2;
                let first = rng.index(n);
                let mut second = rng.index(n - 1);
                if second >= first {
                    second += 1;
                }
                cell[2 * i] = (first as u8, DartsOp::ALL[rng.index(7)]);
                cell[2 * i + 1] = (second as u8, DartsOp::ALL[rng.index(7)]);
            }
        }
        DartsArch { cells }
    }

    fn enumerate() -> Option<Vec<DartsArch>> {
        None
    }

    /// NASLib's neighbourhood: every other op of one pair, and every other source of one pair
    /// that differs from its sibling's source, in either cell. Each neighbour differs from `a`
    /// in one place, so all are distinct.
    fn neighbours(a: &DartsArch) -> Vec<DartsArch> {
        let mut out = Vec::with_capacity(2 * 8 * 8);
        for c in 0..2 {
            for j in 0..8 {
                let (src, op) = a.cells[c][j];
                for o in DartsOp::ALL {
                    if o != op {
                        let mut n = *a;
                        n.cells[c][j].1 = o;
                        out.push(n);
                    }
                }
                let sibling = a.cells[c][j ^ 1].0;
                for s in 0..=max_src(j) {
                    if s != src && s != sibling {
                        let mut n = *a;
                        n.cells[c][j].0 = s;
                        out.push(n);
                    }
                }
            }
        }
        out
    }

    fn build(a: &DartsArch, task: Task) -> Result<Graph, SpaceError> {
        Self::network(a).map_err(graph_err(SpaceId::Darts, Self::format(a), task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Convention;
    use std::collections::HashSet;

    const A: &str = "[[(0, 0), (1, 5), (1, 1), (0, 1), (1, 3), (0, 3), (1, 3), (3, 2)], [(1, 0), (0, 2), (1, 3), (0, 3), (3, 0), (0, 1), (2, 0), (3, 6)]]";

    fn data(rel: &str) -> String {
        let path = format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The first field of a CSV line, unquoted, and the rest after its comma.
    fn split_quoted(line: &str) -> (&str, &str) {
        let rest = line.strip_prefix('"').expect("quoted arch");
        let end = rest.find('"').expect("closing quote");
        (&rest[..end], rest[end + 1..].trim_start_matches(','))
    }

    #[test]
    fn parse_format_round_trip() {
        let a = Darts::parse(A).unwrap();
        assert_eq!(Darts::format(&a), A);
        assert_eq!(Darts::naslib(&a), A);
        let tight: String = A.chars().filter(|c| *c != ' ').collect();
        assert_eq!(Darts::parse(&tight).unwrap(), a);
        let tuples = A.replace('[', "(").replace(']', ")");
        assert_eq!(Darts::parse(&tuples).unwrap(), a);
        assert_eq!(a.normal()[1], (1, DartsOp::DilConv3x3));
        assert_eq!(a.reduce()[7], (3, DartsOp::DilConv5x5));
    }

    #[test]
    fn bad_strings_say_what_was_expected() {
        for (bad, what) in [
            ("hello".to_string(), "expected '[' or '('"),
            (A.replace("(3, 2)]", "(3, 2), (0, 0)]"), "(8 pairs)"),
            (A.replacen("(1, 5)", "(1, 7)", 1), "op 7 is not in 0..=6"),
            (A.replacen("(1, 5)", "(2, 5)", 1), "must be 0..=1"),
            (A.replacen("(1, 5)", "(1 5)", 1), "expected ','"),
            (format!("{A}x"), "unexpected text"),
            (A[..A.len() - 1].to_string(), "found the end"),
            (A.replacen("(1, 5)", "(-1, 5)", 1), "expected an integer"),
        ] {
            let e = Darts::parse(&bad).unwrap_err();
            assert!(matches!(e, SpaceError::Parse { .. }), "{e}");
            let e = e.to_string();
            assert!(e.contains(what), "{e}");
            assert!(e.contains("expected a NASLib compact genotype"), "{e}");
        }
    }

    #[test]
    fn samples_and_neighbours_are_valid_and_distinct() {
        let mut rng = Rng::new(11);
        for _ in 0..200 {
            let a = Darts::sample(&mut rng);
            assert_eq!(Darts::parse(&Darts::format(&a)).unwrap(), a);
            for cell in &a.cells {
                for i in 0..4 {
                    assert_ne!(cell[2 * i].0, cell[2 * i + 1].0);
                }
            }
            let ns = Darts::neighbours(&a);
            // 16 pairs x 6 other ops, plus 2 x (0 + 0 + 1 + 1 + 2 + 2 + 3 + 3) other sources.
            assert_eq!(ns.len(), 16 * 6 + 2 * 12);
            let set: HashSet<_> = ns.iter().collect();
            assert_eq!(set.len(), ns.len());
            assert!(!set.contains(&a));
            for n in &ns {
                assert_eq!(Darts::parse(&Darts::format(n)).unwrap(), *n);
                for cell in &n.cells {
                    for i in 0..4 {
                        assert_ne!(cell[2 * i].0, cell[2 * i + 1].0);
                    }
                }
            }
        }
    }

    #[test]
    fn duplicate_sources_collapse_into_the_later_edge() {
        let dup = A.replacen("(0, 0), (1, 5)", "(0, 0), (0, 5)", 1);
        let d = Darts::parse(&dup).unwrap();
        let e = collapsed_edges(d.normal());
        assert_eq!(e.len(), 7);
        assert_eq!(e[0], (0, 2, DartsOp::DilConv3x3));
        // The collapsed network equals the one with the single later edge and a dropped pool.
        let g = Darts::build(&d, Task::Cifar10).unwrap();
        let full = Darts::build(&Darts::parse(A).unwrap(), Task::Cifar10).unwrap();
        assert!(g.params() <= full.params());
        assert!(g.flops(Convention::Naslib) < full.flops(Convention::Naslib));
    }

    #[test]
    fn every_expected_flops_row_is_exact() {
        let text = data("tests/data/flops_expected.csv");
        let mut rows = 0;
        for line in text.lines().skip(1) {
            let Some(rest) = line.strip_prefix("darts,") else {
                continue;
            };
            let (task, rest) = rest.split_once(',').unwrap();
            assert_eq!(task, "cifar10");
            let (arch, nums) = split_quoted(rest);
            let n: Vec<u64> = nums.split(',').map(|x| x.parse().unwrap()).collect();
            let a = Darts::parse(arch).unwrap();
            let g = Darts::build(&a, Task::Cifar10).unwrap();
            assert_eq!(g.flops(Convention::Naslib), n[0], "naslib flops of {arch}");
            assert_eq!(g.params(), n[1], "params of {arch}");
            assert_eq!(g.flops(Convention::Macs), n[2], "macs of {arch}");
            rows += 1;
        }
        assert_eq!(rows, 725);
    }

    #[test]
    fn every_label_row_parses_and_round_trips() {
        let text = data("search_spaces/darts/labels.csv");
        let mut rows = 0;
        for line in text.lines().skip(1) {
            let (arch, _) = split_quoted(line);
            let a = Darts::parse(arch).unwrap();
            assert_eq!(Darts::format(&a), arch);
            rows += 1;
        }
        assert_eq!(rows, 725);
    }
}
