//! NAS-Bench-101 (Ying et al., ICML 2019): a cell is a DAG of at most 7 vertices (input, up to
//! 5 operation vertices, output) and at most 9 edges; vertex ops are max-pool 3x3,
//! conv1x1-BN-ReLU and conv3x3-BN-ReLU. The CIFAR-10 network stacks the cell.
//!
//! Network (google-research/nasbench `model_builder.py`, NASLib `models/nasbench1.py`): stem
//! conv3x3(3→128)-BN-ReLU at 32x32; three stacks of three cells, a 2x2 stride-2 max-pool before
//! stacks 2 and 3, which double the channels (128, 256, 512); `torch.mean` over space, then
//! linear(512→10). In a cell the spec is first pruned to the vertices on an input→output path.
//! Each vertex gets the channels of `compute_vertex_channels`; an interior vertex sums its
//! interior predecessors (truncated to its channels when one wider) and, if the input feeds it, a
//! conv1x1-BN-ReLU projection of the cell input; the cell output concatenates the interior
//! vertices that feed it, plus (added) a projection of the input when the input feeds it.
//! Invariants: an architecture is the NASLib 56-int tuple as given (7x7 upper-triangular 0/1
//! matrix, row-major, then 7 op indices), unpruned, so `format(parse(s))` is `s`'s canonical
//! spelling; every stored architecture is valid: its pruned spec connects input to output with
//! at most 9 edges, op 0 is input, op 6 output, interior ops are in 2..=4.

use super::{format_int_tuple, graph_err, parse_int_tuple, SearchSpace, SpaceError, SpaceId, Task};
use crate::graph::builder::Conv;
use crate::graph::{Graph, GraphBuilder, GraphError, NodeId};
use crate::rng::Rng;

/// Vertices of the unpruned cell.
pub const NUM_VERTICES: usize = 7;
/// The benchmark's edge budget (of the pruned spec).
pub const MAX_EDGES: usize = 9;

/// A vertex operation, in NASLib's index order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VertexOp {
    Input,
    Output,
    MaxPool3x3,
    Conv1x1,
    Conv3x3,
}

impl VertexOp {
    pub const ALL: [VertexOp; 5] = [
        VertexOp::Input,
        VertexOp::Output,
        VertexOp::MaxPool3x3,
        VertexOp::Conv1x1,
        VertexOp::Conv3x3,
    ];
    /// The ops an interior vertex may hold.
    pub const INTERIOR: [VertexOp; 3] =
        [VertexOp::MaxPool3x3, VertexOp::Conv1x1, VertexOp::Conv3x3];

    /// The benchmark's op name.
    pub fn name(self) -> &'static str {
        match self {
            VertexOp::Input => "input",
            VertexOp::Output => "output",
            VertexOp::MaxPool3x3 => "maxpool3x3",
            VertexOp::Conv1x1 => "conv1x1-bn-relu",
            VertexOp::Conv3x3 => "conv3x3-bn-relu",
        }
    }

    /// NASLib's op index.
    pub fn naslib(self) -> i64 {
        match self {
            VertexOp::Input => 0,
            VertexOp::Output => 1,
            VertexOp::MaxPool3x3 => 2,
            VertexOp::Conv1x1 => 3,
            VertexOp::Conv3x3 => 4,
        }
    }

    fn from_naslib(i: i64) -> Option<VertexOp> {
        VertexOp::ALL.into_iter().find(|o| o.naslib() == i)
    }
}

/// An NB-101 cell as NASLib spells it: the unpruned 7x7 adjacency matrix and the 7 vertex ops.
/// Only valid specs can be constructed (see the module invariants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nb101Arch {
    matrix: [[bool; NUM_VERTICES]; NUM_VERTICES],
    ops: [VertexOp; NUM_VERTICES],
}

/// A spec restricted to the vertices on an input→output path (vertex 0 input, last output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub matrix: Vec<Vec<bool>>,
    pub ops: Vec<VertexOp>,
}

impl Pruned {
    pub fn num_vertices(&self) -> usize {
        self.ops.len()
    }
    pub fn num_edges(&self) -> usize {
        self.matrix.iter().flatten().filter(|&&e| e).count()
    }
}

impl Nb101Arch {
    /// A spec from its matrix and ops, checked: upper-triangular, op 0 input, op 6 output,
    /// interior ops among the three, and the pruned spec connected with at most 9 edges.
    pub fn new(
        matrix: [[bool; NUM_VERTICES]; NUM_VERTICES],
        ops: [VertexOp; NUM_VERTICES],
    ) -> Result<Nb101Arch, String> {
        for (i, row) in matrix.iter().enumerate() {
            if let Some(j) = (0..=i).find(|&j| row[j]) {
                return Err(format!(
                    "edge {i}→{j} is not above the diagonal (the matrix must be upper-triangular)"
                ));
            }
        }
        if ops[0] != VertexOp::Input {
            return Err(format!(
                "vertex 0 must be input (0), got {}",
                ops[0].naslib()
            ));
        }
        if ops[NUM_VERTICES - 1] != VertexOp::Output {
            return Err(format!(
                "vertex 6 must be output (1), got {}",
                ops[NUM_VERTICES - 1].naslib()
            ));
        }
        if let Some(v) = (1..NUM_VERTICES - 1).find(|&v| !VertexOp::INTERIOR.contains(&ops[v])) {
            return Err(format!(
                "interior vertex {v} has op {}, needs 2 (maxpool3x3), 3 (conv1x1) or 4 (conv3x3)",
                ops[v].naslib()
            ));
        }
        let a = Nb101Arch { matrix, ops };
        let p = a
            .pruned()
            .ok_or_else(|| "the input is not connected to the output".to_string())?;
        if p.num_edges() > MAX_EDGES {
            return Err(format!(
                "{} edges after pruning, at most {MAX_EDGES} allowed",
                p.num_edges()
            ));
        }
        Ok(a)
    }

    /// The unpruned adjacency matrix (`matrix[i][j]`: edge i→j).
    pub fn matrix(&self) -> &[[bool; NUM_VERTICES]; NUM_VERTICES] {
        &self.matrix
    }

    /// The unpruned vertex ops.
    pub fn ops(&self) -> &[VertexOp; NUM_VERTICES] {
        &self.ops
    }

    /// Which vertices lie on an input→output path (reachable from the input and reaching the
    /// output).
    pub fn on_path(&self) -> [bool; NUM_VERTICES] {
        let n = NUM_VERTICES;
        // The matrix is upper-triangular, so one pass in vertex order (or reverse) suffices.
        let mut fwd = [false; NUM_VERTICES];
        fwd[0] = true;
        for t in 0..n {
            if fwd[t] {
                for (v, &e) in self.matrix[t].iter().enumerate().skip(t + 1) {
                    fwd[v] |= e;
                }
            }
        }
        let mut bwd = [false; NUM_VERTICES];
        bwd[n - 1] = true;
        for t in (0..n).rev() {
            if bwd[t] {
                for (v, row) in self.matrix.iter().enumerate().take(t) {
                    bwd[v] |= row[t];
                }
            }
        }
        std::array::from_fn(|v| fwd[v] && bwd[v])
    }

    /// The spec with vertices off every input→output path removed (the benchmark's
    /// `ModelSpec` pruning); `None` when the input does not reach the output.
    pub fn pruned(&self) -> Option<Pruned> {
        let on = self.on_path();
        if !on[0] {
            return None;
        }
        let keep: Vec<usize> = (0..NUM_VERTICES).filter(|&v| on[v]).collect();
        Some(Pruned {
            matrix: keep
                .iter()
                .map(|&i| keep.iter().map(|&j| self.matrix[i][j]).collect())
                .collect(),
            ops: keep.iter().map(|&i| self.ops[i]).collect(),
        })
    }

    /// The 56 NASLib ints: 49 matrix entries row-major, then 7 op indices.
    fn tuple(&self) -> impl Iterator<Item = i64> + '_ {
        self.matrix
            .iter()
            .flatten()
            .map(|&e| i64::from(e))
            .chain(self.ops.iter().map(|o| o.naslib()))
    }
}

/// Channels of each vertex of a pruned spec (nasbench `compute_vertex_channels`): the output's
/// channels are split among the vertices feeding it (the first `out % fan_in` get one more);
/// every other interior vertex takes the max of its successors.
pub fn vertex_channels(cin: u32, cout: u32, m: &[Vec<bool>]) -> Vec<u32> {
    let n = m.len();
    let mut vc = vec![0u32; n];
    vc[0] = cin;
    vc[n - 1] = cout;
    if n == 2 {
        return vc;
    }
    let fan_in = (1..n).filter(|&i| m[i][n - 1]).count() as u32;
    if fan_in == 0 {
        return vc;
    }
    let base = cout / fan_in;
    let mut extra = cout % fan_in;
    for v in 1..n - 1 {
        if m[v][n - 1] {
            vc[v] = base;
            if extra > 0 {
                vc[v] += 1;
                extra -= 1;
            }
        }
    }
    for v in (1..n.saturating_sub(2)).rev() {
        if !m[v][n - 1] {
            for d in v + 1..n - 1 {
                if m[v][d] {
                    vc[v] = vc[v].max(vc[d]);
                }
            }
        }
    }
    vc
}

/// The NAS-Bench-101 space.
pub struct Nb101;

fn perr(input: &str, message: impl Into<String>) -> SpaceError {
    SpaceError::Parse {
        space: SpaceId::Nb101,
        input: input.to_string(),
        message: message.into(),
    }
}

/// conv(k)-BN-ReLU, "same" padding, no bias.
fn conv_bn_relu(b: &mut GraphBuilder, x: NodeId, out: u32, k: u32) -> Result<NodeId, GraphError> {
    let c = b.conv(x, Conv::new(out, k))?;
    let n = b.batch_norm(c, true)?;
    b.relu(n)
}

impl Nb101 {
    fn cell(b: &mut GraphBuilder, x: NodeId, cout: u32, p: &Pruned) -> Result<NodeId, GraphError> {
        let n = p.num_vertices();
        let m = &p.matrix;
        let vc = vertex_channels(b.shape(x).c, cout, m);
        let mut tensors: Vec<NodeId> = Vec::with_capacity(n);
        tensors.push(x);
        let mut concat_in: Vec<NodeId> = Vec::new();
        for t in 1..n - 1 {
            let mut fan_in: Vec<NodeId> = Vec::new();
            for src in 1..t {
                if m[src][t] {
                    let s = tensors[src];
                    let sc = b.shape(s).c;
                    fan_in.push(if sc > vc[t] { b.slice(s, vc[t])? } else { s });
                }
            }
            if m[0][t] {
                fan_in.push(conv_bn_relu(b, x, vc[t], 1)?);
            }
            let v_in = b.add(&fan_in)?;
            let v = match p.ops[t] {
                VertexOp::Conv3x3 => conv_bn_relu(b, v_in, vc[t], 3)?,
                VertexOp::Conv1x1 => conv_bn_relu(b, v_in, vc[t], 1)?,
                VertexOp::MaxPool3x3 => b.max_pool(v_in, 3, 1, 1)?,
                op => {
                    return Err(GraphError::Invalid(format!(
                        "interior vertex {t} has op {}",
                        op.name()
                    )))
                }
            };
            tensors.push(v);
            if m[t][n - 1] {
                concat_in.push(v);
            }
        }
        if concat_in.is_empty() {
            if !m[0][n - 1] {
                return Err(GraphError::Invalid("cell output has no inputs".into()));
            }
            return conv_bn_relu(b, x, cout, 1);
        }
        let out = b.concat(&concat_in)?;
        if m[0][n - 1] {
            let proj = conv_bn_relu(b, x, cout, 1)?;
            b.add(&[out, proj])
        } else {
            Ok(out)
        }
    }

    fn network(a: &Nb101Arch) -> Result<Graph, GraphError> {
        let p = a
            .pruned()
            .ok_or_else(|| GraphError::Invalid("input not connected to output".into()))?;
        let mut b = GraphBuilder::with_capacity(400, 500);
        let x = b.input(3, 32, 32)?;
        let mut h = conv_bn_relu(&mut b, x, 128, 3)?;
        let mut c = 128;
        for stack in 0..3 {
            if stack > 0 {
                h = b.max_pool(h, 2, 2, 0)?;
                c *= 2;
            }
            for _ in 0..3 {
                h = Self::cell(&mut b, h, c, &p)?;
            }
        }
        let g = b.mean(h)?;
        let l = b.linear(g, 10, true)?;
        b.output(l)?;
        Ok(b.finish())
    }
}

impl SearchSpace for Nb101 {
    type Arch = Nb101Arch;
    const ID: SpaceId = SpaceId::Nb101;
    const FORMAT_HELP: &'static str = "a NASLib tuple of 56 ints '(0, 1, 0, ..., 0, 2, 4, 3, 4, 2, 1)': the 7x7 upper-triangular 0/1 adjacency matrix row by row, then 7 vertex ops (0 input, 1 output, 2 maxpool3x3, 3 conv1x1-bn-relu, 4 conv3x3-bn-relu; input first, output last); the pruned cell must connect input to output with at most 9 edges";

    fn parse(s: &str) -> Result<Nb101Arch, SpaceError> {
        let t = s.trim();
        let v = parse_int_tuple(t).ok_or_else(|| perr(t, "not a tuple of integers"))?;
        if v.len() != 49 + NUM_VERTICES {
            return Err(perr(t, format!("{} integers, need 56 (49 + 7)", v.len())));
        }
        let mut matrix = [[false; NUM_VERTICES]; NUM_VERTICES];
        for (k, &e) in v[..49].iter().enumerate() {
            matrix[k / NUM_VERTICES][k % NUM_VERTICES] = match e {
                0 => false,
                1 => true,
                _ => {
                    return Err(perr(
                        t,
                        format!("adjacency entry {k} is {e}, must be 0 or 1"),
                    ))
                }
            };
        }
        let mut ops = [VertexOp::Input; NUM_VERTICES];
        for (o, &d) in ops.iter_mut().zip(&v[49..]) {
            *o = VertexOp::from_naslib(d)
                .ok_or_else(|| perr(t, format!("op index {d} is not in 0..=4")))?;
        }
        Nb101Arch::new(matrix, ops).map_err(|m| perr(t, m))
    }

    fn format(a: &Nb101Arch) -> String {
        format_int_tuple(a.tuple())
    }

    fn naslib(a: &Nb101Arch) -> String {
        Self::format(a)
    }

    /// NASLib's sampler: every upper-triangular entry a fair coin, interior ops uniform, redrawn
    /// until the pruned spec is valid.
    fn sample(rng: &mut Rng) -> Nb101Arch {
        loop {
            let mut matrix = [[false; NUM_VERTICES]; NUM_VERTICES];
            for (i, row) in matrix.iter_mut().enumerate() {
                for e in row.iter_mut().skip(i + 1) {
                    *e = rng.below(2) == 1;
                }
            }
            let mut ops = [VertexOp::Input; NUM_VERTICES];
            ops[NUM_VERTICES - 1] = VertexOp::Output;
            for o in &mut ops[1..NUM_VERTICES - 1] {
                *o = VertexOp::INTERIOR[rng.index(3)];
            }
            if let Ok(a) = Nb101Arch::new(matrix, ops) {
                return a;
            }
        }
    }

    fn enumerate() -> Option<Vec<Nb101Arch>> {
        None
    }

    /// NASLib's neighbourhood: every other op of an interior vertex on an input→output path
    /// (changing a pruned vertex would not change the network), then every single edge flip
    /// that leaves a valid spec. Each differs from `a` in one place, so all are distinct.
    fn neighbours(a: &Nb101Arch) -> Vec<Nb101Arch> {
        let mut out = Vec::new();
        let on_path = a.on_path();
        for v in 1..NUM_VERTICES - 1 {
            if !on_path[v] {
                continue;
            }
            for op in VertexOp::INTERIOR {
                if op != a.ops[v] {
                    let mut ops = a.ops;
                    ops[v] = op;
                    if let Ok(n) = Nb101Arch::new(a.matrix, ops) {
                        out.push(n);
                    }
                }
            }
        }
        for i in 0..NUM_VERTICES - 1 {
            for j in i + 1..NUM_VERTICES {
                let mut m = a.matrix;
                m[i][j] = !m[i][j];
                if let Ok(n) = Nb101Arch::new(m, a.ops) {
                    out.push(n);
                }
            }
        }
        out
    }

    fn build(a: &Nb101Arch, task: Task) -> Result<Graph, SpaceError> {
        Self::network(a).map_err(graph_err(SpaceId::Nb101, Self::format(a), task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Convention;
    use std::collections::HashSet;

    const A: &str = "(0, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 4, 4, 4, 1)";

    fn data(rel: &str) -> String {
        let path = format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The first field of a CSV line, unquoted (the arch column holds commas inside quotes).
    fn split_quoted(line: &str) -> (&str, &str) {
        let rest = line.strip_prefix('"').expect("quoted arch");
        let end = rest.find('"').expect("closing quote");
        (&rest[..end], rest[end + 1..].trim_start_matches(','))
    }

    #[test]
    fn parse_format_round_trip() {
        let a = Nb101::parse(A).unwrap();
        assert_eq!(Nb101::format(&a), A);
        assert_eq!(Nb101::naslib(&a), A);
        let bracketed = A.replace('(', "[").replace(')', "]");
        assert_eq!(Nb101::parse(&bracketed).unwrap(), a);
        let tight = A.replace(", ", ",");
        assert_eq!(Nb101::parse(&tight).unwrap(), a);
    }

    #[test]
    fn bad_strings_say_what_was_expected() {
        let mut lower = Nb101::parse(A).unwrap().tuple().collect::<Vec<_>>();
        lower[7] = 1; // edge 1→0
        let mut two = Nb101::parse(A).unwrap().tuple().collect::<Vec<_>>();
        two[1] = 2;
        let mut badop = Nb101::parse(A).unwrap().tuple().collect::<Vec<_>>();
        badop[51] = 1;
        let mut disconnected = vec![0i64; 49];
        disconnected.extend([0, 2, 2, 2, 2, 2, 1]);
        let mut dense: Vec<i64> = (0..49)
            .map(|k| i64::from(k % 7 > k / 7))
            .collect::<Vec<_>>();
        dense.extend([0, 3, 3, 3, 3, 3, 1]);
        for (bad, what) in [
            ("hello".to_string(), "not a tuple"),
            ("(0, 1, 2)".to_string(), "need 56"),
            (format_int_tuple(lower), "upper-triangular"),
            (format_int_tuple(two), "must be 0 or 1"),
            (format_int_tuple(badop), "interior vertex 2"),
            (format_int_tuple(disconnected), "not connected"),
            (format_int_tuple(dense), "21 edges after pruning"),
        ] {
            let e = Nb101::parse(&bad).unwrap_err();
            assert!(matches!(e, SpaceError::Parse { .. }), "{e}");
            let e = e.to_string();
            assert!(e.contains(what), "{e}");
            assert!(e.contains("expected a NASLib tuple of 56 ints"), "{e}");
        }
    }

    #[test]
    fn samples_and_neighbours_are_valid_and_distinct() {
        let mut rng = Rng::new(7);
        for _ in 0..200 {
            let a = Nb101::sample(&mut rng);
            let s = Nb101::format(&a);
            assert_eq!(Nb101::parse(&s).unwrap(), a);
            let p = a.pruned().unwrap();
            assert!(p.num_edges() <= MAX_EDGES);
            let ns = Nb101::neighbours(&a);
            assert!(!ns.is_empty());
            let set: HashSet<_> = ns.iter().collect();
            assert_eq!(set.len(), ns.len());
            assert!(!set.contains(&a));
            for n in &ns {
                assert_eq!(Nb101::parse(&Nb101::format(n)).unwrap(), *n);
            }
        }
    }

    #[test]
    fn channels_split_like_the_benchmark() {
        // 0→1→2→out, 0→3→out: the output's 128 channels split 64/64; vertex 1 takes vertex 2's.
        let m: Vec<Vec<bool>> = [
            [0, 1, 0, 1, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 0, 0, 1],
            [0, 0, 0, 0, 1],
            [0, 0, 0, 0, 0],
        ]
        .iter()
        .map(|r| r.iter().map(|&e| e == 1).collect())
        .collect();
        assert_eq!(vertex_channels(128, 128, &m), vec![128, 64, 64, 64, 128]);
        // 0→{1,2,3}→out: 256 channels split 86/85/85.
        let m3: Vec<Vec<bool>> = (0..5)
            .map(|i| {
                (0..5)
                    .map(|j| {
                        if i == 0 {
                            (1..4).contains(&j)
                        } else {
                            i < 4 && j == 4
                        }
                    })
                    .collect()
            })
            .collect();
        assert_eq!(vertex_channels(128, 256, &m3), vec![128, 86, 85, 85, 256]);
    }

    #[test]
    fn every_expected_flops_row_is_exact() {
        let text = data("tests/data/flops_expected.csv");
        let mut rows = 0;
        for line in text.lines().skip(1) {
            let Some(rest) = line.strip_prefix("nb101,") else {
                continue;
            };
            let (task, rest) = rest.split_once(',').unwrap();
            assert_eq!(task, "cifar10");
            let (arch, nums) = split_quoted(rest);
            let n: Vec<u64> = nums.split(',').map(|x| x.parse().unwrap()).collect();
            let a = Nb101::parse(arch).unwrap();
            let g = Nb101::build(&a, Task::Cifar10).unwrap();
            assert_eq!(g.flops(Convention::Naslib), n[0], "naslib flops of {arch}");
            assert_eq!(g.params(), n[1], "params of {arch}");
            assert_eq!(g.flops(Convention::Macs), n[2], "macs of {arch}");
            rows += 1;
        }
        assert_eq!(rows, 500);
    }

    #[test]
    fn every_label_row_parses_and_round_trips() {
        let text = data("search_spaces/nb101/labels.csv");
        let mut rows = 0;
        for line in text.lines().skip(1) {
            let (arch, _) = split_quoted(line);
            let a = Nb101::parse(arch).unwrap();
            assert_eq!(Nb101::format(&a), arch);
            rows += 1;
        }
        assert_eq!(rows, 500);
    }
}
