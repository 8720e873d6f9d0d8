//! TransNAS-Bench-101 (Duan et al., CVPR 2021): the micro (cell) space of 4,096 cells on a fixed
//! skeleton and the macro (skeleton) space of 3,256 ResNet-style skeletons, each trained on seven
//! Taskonomy tasks with task-specific heads.
//!
//! Encoder (`MacroNet`, base 64 channels): stem conv3x3 s2 (3→32) + BN, ReLU-conv3x3 s2-BN
//! (32→64); then one stage per skeleton digit t in 1..=4 (t even doubles the channels, t > 2
//! halves the resolution), each of two blocks (the first changes channels and stride). Micro: the
//! skeleton is `41414` and a block is a 4-node cell where node j sums op(node i) over i < j (ops
//! 0 none, 1 skip, 2 ReLU-conv1x1-BN, 3 ReLU-conv3x3-BN; edges from node 0 carry the block's
//! channel change and stride, a skip that changes either is a FactorizedReduce); the cell output
//! is node 3. Macro: a block is a ResNet basic block. Heads at 256x256 input: GAP + linear for
//! classification (scene 63, object 100, room layout 9); jigsaw runs the encoder once per tile
//! on 9 tiles of 64x64 (`input_batched`), stacks them in channels, GAP + linear to 1000; the
//! segmentation and generative (normal, autoencoder) decoders upsample from the encoder's
//! *nominal* feature size (`MacroNet`'s default 224 input), as the benchmark did.
//! Invariants: [`MicroArch`] stores the 6 ops in the API string's edge order
//! (1←0, 2←0, 2←1, 3←0, 3←1, 3←2), which is also NASLib's order; [`MacroArch`] stores the
//! NASLib 6-tuple (digits then zero padding), and only skeletons of the benchmark's space
//! (4 to 6 digits, 1 to 4 downsampling stages, 1 to 3 channel-doubling stages) can be built.

use std::collections::HashSet;

use super::{
    format_int_tuple, graph_err, one_op_edits, parse_int_tuple, SearchSpace, SpaceError, SpaceId,
    Task,
};
use crate::graph::builder::Conv;
use crate::graph::{Graph, GraphBuilder, GraphError, NodeId};
use crate::rng::Rng;

/// Base channel count of every benchmark network (the `64-` of the strings).
const BASE: u32 = 64;
/// The micro space's fixed skeleton.
const MICRO_SKELETON: [u8; 5] = [4, 1, 4, 1, 4];
/// Input side of every task but jigsaw.
const IMAGE: u32 = 256;
/// Side of one jigsaw tile, and the number of tiles.
const TILE: u32 = 64;
const TILES: u32 = 9;

/// One micro-cell edge operation (the benchmark's op codes 0..=3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MicroOp {
    None,
    Skip,
    Conv1x1,
    Conv3x3,
}

impl MicroOp {
    pub const ALL: [MicroOp; 4] = [
        MicroOp::None,
        MicroOp::Skip,
        MicroOp::Conv1x1,
        MicroOp::Conv3x3,
    ];

    /// The benchmark's op code (also NASLib's index).
    pub fn code(self) -> u8 {
        match self {
            MicroOp::None => 0,
            MicroOp::Skip => 1,
            MicroOp::Conv1x1 => 2,
            MicroOp::Conv3x3 => 3,
        }
    }

    fn from_code(c: i64) -> Option<MicroOp> {
        MicroOp::ALL.into_iter().find(|o| i64::from(o.code()) == c)
    }
}

/// A micro cell: ops on edges (1←0, 2←0, 2←1, 3←0, 3←1, 3←2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MicroArch(pub [MicroOp; 6]);

/// (target node, source node) of each stored edge.
const EDGES: [(usize, usize); 6] = [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)];

/// A macro skeleton: its digits (1..=4) followed by zero padding to 6 entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacroArch([u8; 6]);

impl MacroArch {
    /// Check a digit sequence against the space's rules; `Err` says which rule fails.
    pub fn new(digits: &[u8]) -> Result<MacroArch, String> {
        if !(4..=6).contains(&digits.len()) {
            return Err(format!("{} stages, need 4 to 6", digits.len()));
        }
        if let Some(d) = digits.iter().find(|d| !(1..=4).contains(*d)) {
            return Err(format!("stage digit {d} is not in 1..=4"));
        }
        let down = digits.iter().filter(|&&d| d >= 3).count();
        if !(1..=4).contains(&down) {
            return Err(format!(
                "{down} downsampling stages (digits 3, 4), need 1 to 4"
            ));
        }
        let wide = digits.iter().filter(|&&d| d % 2 == 0).count();
        if !(1..=3).contains(&wide) {
            return Err(format!(
                "{wide} channel-doubling stages (digits 2, 4), need 1 to 3"
            ));
        }
        let mut a = [0u8; 6];
        a[..digits.len()].copy_from_slice(digits);
        Ok(MacroArch(a))
    }

    /// The stage digits, without padding.
    pub fn digits(&self) -> &[u8] {
        let n = self.0.iter().position(|&d| d == 0).unwrap_or(6);
        &self.0[..n]
    }
}

fn perr(space: SpaceId, input: &str, message: impl Into<String>) -> SpaceError {
    SpaceError::Parse {
        space,
        input: input.to_string(),
        message: message.into(),
    }
}

/// Split `64-<skeleton>-<cell>` into its skeleton and cell parts, checking the base width.
fn split_api(space: SpaceId, s: &str) -> Result<(&str, &str), SpaceError> {
    let parts: Vec<&str> = s.split('-').collect();
    if parts.len() != 3 {
        return Err(perr(
            space,
            s,
            format!("{} '-'-separated parts, need 3", parts.len()),
        ));
    }
    if parts[0] != BASE.to_string() {
        return Err(perr(
            space,
            s,
            format!("base width '{}', the benchmark only has {BASE}", parts[0]),
        ));
    }
    Ok((parts[1], parts[2]))
}

/// Digits of a string of decimal digits, or `None` if any character is not one.
fn digits_of(s: &str) -> Option<Vec<u8>> {
    s.chars()
        .map(|c| c.to_digit(10).and_then(|d| u8::try_from(d).ok()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Network construction.

/// ReLU, conv (no bias, "same" padding), affine BN.
fn relu_conv_bn(
    b: &mut GraphBuilder,
    x: NodeId,
    out: u32,
    k: u32,
    s: u32,
) -> Result<NodeId, GraphError> {
    let r = b.relu(x)?;
    let c = b.conv(r, Conv::new(out, k).stride(s))?;
    b.batch_norm(c, true)
}

/// ReLU, two 1x1 convs with the stride giving `out/2` and `out - out/2` channels, concat, BN.
/// (The benchmark shifts the second conv's input by one pixel; that changes no shape or count.)
fn factorized_reduce(
    b: &mut GraphBuilder,
    x: NodeId,
    out: u32,
    s: u32,
) -> Result<NodeId, GraphError> {
    let r = b.relu(x)?;
    let c0 = b.conv(r, Conv::new(out / 2, 1).stride(s))?;
    let c1 = b.conv(r, Conv::new(out - out / 2, 1).stride(s))?;
    let cat = b.concat(&[c0, c1])?;
    b.batch_norm(cat, true)
}

fn micro_cell(
    b: &mut GraphBuilder,
    x: NodeId,
    ops: &[MicroOp; 6],
    out: u32,
    stride: u32,
) -> Result<NodeId, GraphError> {
    let mut nodes = [x; 4];
    let mut terms: Vec<NodeId> = Vec::with_capacity(3);
    for j in 1..4 {
        terms.clear();
        for (k, &(dst, src)) in EDGES.iter().enumerate() {
            if dst != j {
                continue;
            }
            let inp = nodes[src];
            let s = if src == 0 { stride } else { 1 };
            let t = match ops[k] {
                MicroOp::None => b.zero(inp, out, s)?,
                MicroOp::Skip if s == 1 && b.shape(inp).c == out => b.identity(inp)?,
                MicroOp::Skip => factorized_reduce(b, inp, out, s)?,
                MicroOp::Conv1x1 => relu_conv_bn(b, inp, out, 1, s)?,
                MicroOp::Conv3x3 => relu_conv_bn(b, inp, out, 3, s)?,
            };
            terms.push(t);
        }
        nodes[j] = b.add(&terms)?;
    }
    Ok(nodes[3])
}

fn basic_block(
    b: &mut GraphBuilder,
    x: NodeId,
    out: u32,
    stride: u32,
) -> Result<NodeId, GraphError> {
    let a = relu_conv_bn(b, x, out, 3, stride)?;
    let a = relu_conv_bn(b, a, out, 3, 1)?;
    let short = if stride != 1 || b.shape(x).c != out {
        let c = b.conv(x, Conv::new(out, 1).stride(stride))?;
        b.batch_norm(c, true)?
    } else {
        x
    };
    b.add(&[a, short])
}

/// The block a skeleton stage repeats: a micro cell or the ResNet basic block.
#[derive(Clone, Copy)]
enum Block<'a> {
    Cell(&'a [MicroOp; 6]),
    Basic,
}

/// The encoder from `x`; returns its output and the nominal feature side the decoders use.
fn encoder(
    b: &mut GraphBuilder,
    x: NodeId,
    skeleton: &[u8],
    block: Block,
) -> Result<(NodeId, u32), GraphError> {
    let s = b.conv(x, Conv::new(BASE / 2, 3).stride(2))?;
    let s = b.batch_norm(s, true)?;
    let mut h = relu_conv_bn(b, s, BASE, 3, 2)?;
    let mut c = BASE;
    let mut fd = 224 / 4;
    for &t in skeleton {
        let ct = if t % 2 == 0 { 2 * c } else { c };
        let stride = if t > 2 { 2 } else { 1 };
        fd /= stride;
        for i in 0..2 {
            let st = if i == 0 { stride } else { 1 };
            h = match block {
                Block::Cell(ops) => micro_cell(b, h, ops, ct, st)?,
                Block::Basic => basic_block(b, h, ct, st)?,
            };
        }
        c = ct;
    }
    Ok((h, fd))
}

/// Conv3x3 with bias, then (optionally) BN and LeakyReLU.
fn conv_layer(
    b: &mut GraphBuilder,
    x: NodeId,
    out: u32,
    norm_act: bool,
) -> Result<NodeId, GraphError> {
    let c = b.conv(x, Conv::new(out, 3).bias(true))?;
    if !norm_act {
        return Ok(c);
    }
    let n = b.batch_norm(c, true)?;
    b.leaky_relu(n)
}

/// ConvTranspose 3x3 stride 2 (pad 1, output padding 1: doubles the side) with bias, BN,
/// LeakyReLU.
fn deconv_layer(b: &mut GraphBuilder, x: NodeId, out: u32) -> Result<NodeId, GraphError> {
    let spec = Conv::new(out, 3)
        .stride(2)
        .pad(1)
        .output_padding(1)
        .bias(true);
    let c = b.conv_transpose(x, spec)?;
    let n = b.batch_norm(c, true)?;
    b.leaky_relu(n)
}

/// `int(log2(256 / fd))`: the decoders' number of upsampling layers.
fn num_upsample(fd: u32) -> Result<u32, GraphError> {
    let nu = (0..=8u32)
        .rev()
        .find(|&n| fd.max(1) << n <= IMAGE)
        .unwrap_or(0);
    if !(2..=6).contains(&nu) {
        return Err(GraphError::Invalid(format!(
            "nominal feature size {fd} needs {nu} upsampling layers, the decoders take 2 to 6"
        )));
    }
    Ok(nu)
}

fn segmentation_decoder(b: &mut GraphBuilder, x: NodeId, nu: u32) -> Result<NodeId, GraphError> {
    let mut h = conv_layer(b, x, 1024, true)?;
    let mut t = 1024;
    for _ in 0..6 - nu {
        h = conv_layer(b, h, t / 2, true)?;
        t /= 2;
    }
    for _ in 0..nu - 1 {
        h = deconv_layer(b, h, t / 2)?;
        t /= 2;
    }
    h = deconv_layer(b, h, t)?;
    conv_layer(b, h, 17, false)
}

fn generative_decoder(b: &mut GraphBuilder, x: NodeId, nu: u32) -> Result<NodeId, GraphError> {
    // Layer k upsamples when `nu` reaches its threshold (conv3, conv5, conv7, conv9 of the
    // benchmark's GenerativeDecoder); conv11 and conv13 always upsample.
    let up_or_conv = |b: &mut GraphBuilder, h: NodeId, out: u32, up: bool| {
        if up {
            deconv_layer(b, h, out)
        } else {
            conv_layer(b, h, out, true)
        }
    };
    let mut h = conv_layer(b, x, 1024, true)?;
    h = conv_layer(b, h, 1024, true)?;
    h = up_or_conv(b, h, 512, nu == 6)?;
    h = conv_layer(b, h, 512, true)?;
    h = up_or_conv(b, h, 256, nu >= 5)?;
    h = conv_layer(b, h, 128, true)?;
    h = up_or_conv(b, h, 64, nu >= 4)?;
    h = conv_layer(b, h, 64, true)?;
    h = up_or_conv(b, h, 32, nu >= 3)?;
    h = conv_layer(b, h, 32, true)?;
    h = deconv_layer(b, h, 16)?;
    h = conv_layer(b, h, 32, true)?;
    h = deconv_layer(b, h, 16)?;
    h = conv_layer(b, h, 3, false)?;
    b.tanh(h)
}

/// The whole network of a skeleton and block for a task.
fn network(skeleton: &[u8], block: Block, task: Task) -> Result<Graph, GraphError> {
    let mut b = GraphBuilder::with_capacity(512, 640);
    let head = match task {
        Task::Jigsaw => {
            let x = b.input_batched(3, TILE, TILE, TILES)?;
            let (h, _) = encoder(&mut b, x, skeleton, block)?;
            let d = b.batch_to_depth(h)?;
            let p = b.global_avg_pool(d)?;
            b.linear(p, 1000, true)?
        }
        Task::ClassScene | Task::ClassObject | Task::RoomLayout => {
            let x = b.input(3, IMAGE, IMAGE)?;
            let (h, _) = encoder(&mut b, x, skeleton, block)?;
            let classes = match task {
                Task::ClassScene => 63,
                Task::ClassObject => 100,
                _ => 9,
            };
            let p = b.global_avg_pool(h)?;
            b.linear(p, classes, true)?
        }
        Task::SegmentSemantic | Task::Normal | Task::Autoencoder => {
            let x = b.input(3, IMAGE, IMAGE)?;
            let (h, fd) = encoder(&mut b, x, skeleton, block)?;
            let nu = num_upsample(fd)?;
            if task == Task::SegmentSemantic {
                segmentation_decoder(&mut b, h, nu)?
            } else {
                generative_decoder(&mut b, h, nu)?
            }
        }
        Task::Cifar10 | Task::Cifar100 | Task::ImageNet16_120 => {
            return Err(GraphError::Invalid(format!(
                "TransNAS-Bench-101 has no network for task {task}"
            )))
        }
    };
    b.output(head)?;
    Ok(b.finish())
}

// ---------------------------------------------------------------------------------------------
// Micro space.

/// The TransNAS-Bench-101 micro (cell) space.
pub struct Micro;

fn micro_from_codes(s: &str, codes: &[i64]) -> Result<MicroArch, SpaceError> {
    if codes.len() != 6 {
        return Err(perr(
            SpaceId::Tnb101Micro,
            s,
            format!("{} edge ops, need 6", codes.len()),
        ));
    }
    let mut ops = [MicroOp::None; 6];
    for (o, &c) in ops.iter_mut().zip(codes) {
        *o = MicroOp::from_code(c).ok_or_else(|| {
            perr(
                SpaceId::Tnb101Micro,
                s,
                format!("op code {c} is not in 0..=3"),
            )
        })?;
    }
    Ok(MicroArch(ops))
}

fn parse_micro_api(s: &str) -> Result<MicroArch, SpaceError> {
    let sp = SpaceId::Tnb101Micro;
    let (skeleton, cell) = split_api(sp, s)?;
    if skeleton != "41414" {
        return Err(perr(
            sp,
            s,
            format!("skeleton '{skeleton}', the micro space's is 41414"),
        ));
    }
    let nodes: Vec<&str> = cell.split('_').collect();
    if nodes.len() != 3 {
        return Err(perr(
            sp,
            s,
            format!("{} '_'-separated cell nodes, need 3", nodes.len()),
        ));
    }
    let mut codes = Vec::with_capacity(6);
    for (j, node) in nodes.iter().enumerate() {
        if node.chars().count() != j + 1 {
            return Err(perr(
                sp,
                s,
                format!("cell node {} is '{node}', needs {} op codes", j + 1, j + 1),
            ));
        }
        let d = digits_of(node).ok_or_else(|| {
            perr(
                sp,
                s,
                format!("cell node {} '{node}' is not all digits", j + 1),
            )
        })?;
        codes.extend(d.into_iter().map(i64::from));
    }
    micro_from_codes(s, &codes)
}

impl Micro {
    /// Parse the 6-digit `naslib_op_indices` column of the label table (e.g. `012333`).
    pub fn parse_digits(s: &str) -> Result<MicroArch, SpaceError> {
        let d = digits_of(s).ok_or_else(|| perr(SpaceId::Tnb101Micro, s, "not all digits"))?;
        micro_from_codes(s, &d.into_iter().map(i64::from).collect::<Vec<_>>())
    }
}

impl SearchSpace for Micro {
    type Arch = MicroArch;
    const ID: SpaceId = SpaceId::Tnb101Micro;
    const FORMAT_HELP: &'static str = "'64-41414-a_bc_def' with a..f the cell's edge ops (0 none, 1 skip, 2 conv1x1, 3 conv3x3), e.g. 64-41414-0_12_333, or a NASLib tuple of the 6 ops in the same order '(0, 1, 2, 3, 3, 3)'";

    fn parse(s: &str) -> Result<MicroArch, SpaceError> {
        let t = s.trim();
        if let Some(codes) = parse_int_tuple(t) {
            micro_from_codes(t, &codes)
        } else if t.contains('-') {
            parse_micro_api(t)
        } else {
            Err(perr(
                SpaceId::Tnb101Micro,
                t,
                "neither an API string nor a NASLib tuple",
            ))
        }
    }

    fn format(a: &MicroArch) -> String {
        let o = |k: usize| a.0[k].code();
        format!(
            "64-41414-{}_{}{}_{}{}{}",
            o(0),
            o(1),
            o(2),
            o(3),
            o(4),
            o(5)
        )
    }

    fn naslib(a: &MicroArch) -> String {
        format_int_tuple(a.0.iter().map(|o| i64::from(o.code())))
    }

    fn sample(rng: &mut Rng) -> MicroArch {
        let mut ops = [MicroOp::None; 6];
        for o in &mut ops {
            *o = MicroOp::ALL[rng.index(4)];
        }
        MicroArch(ops)
    }

    fn enumerate() -> Option<Vec<MicroArch>> {
        let mut out = Vec::with_capacity(4096);
        for code in 0..4096usize {
            let mut ops = [MicroOp::None; 6];
            // Most significant op first: the list is in the label table's order.
            for (k, o) in ops.iter_mut().enumerate() {
                *o = MicroOp::ALL[(code >> (2 * (5 - k))) & 3];
            }
            out.push(MicroArch(ops));
        }
        Some(out)
    }

    fn neighbours(a: &MicroArch) -> Vec<MicroArch> {
        one_op_edits(&a.0, &MicroOp::ALL)
            .into_iter()
            .map(MicroArch)
            .collect()
    }

    fn build(a: &MicroArch, task: Task) -> Result<Graph, SpaceError> {
        network(&MICRO_SKELETON, Block::Cell(&a.0), task).map_err(graph_err(
            SpaceId::Tnb101Micro,
            Self::format(a),
            task,
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Macro space.

/// The TransNAS-Bench-101 macro (skeleton) space.
pub struct Macro;

/// Number of digit sequences of length 4, 5 or 6 over 1..=4 (valid or not).
const MACRO_SEQUENCES: usize = 256 + 1024 + 4096;

/// The `i`-th digit sequence of length 4..=6 (all of length 4 first, each length in
/// lexicographic order).
fn macro_sequence(mut i: usize) -> Vec<u8> {
    let mut len = 4;
    while i >= 1 << (2 * len) {
        i -= 1 << (2 * len);
        len += 1;
    }
    (0..len)
        .map(|k| 1 + ((i >> (2 * (len - 1 - k))) & 3) as u8)
        .collect()
}

fn macro_from_digits(s: &str, digits: &[u8]) -> Result<MacroArch, SpaceError> {
    MacroArch::new(digits).map_err(|m| perr(SpaceId::Tnb101Macro, s, m))
}

fn parse_macro_api(s: &str) -> Result<MacroArch, SpaceError> {
    let sp = SpaceId::Tnb101Macro;
    let (skeleton, cell) = split_api(sp, s)?;
    if cell != "basic" {
        return Err(perr(
            sp,
            s,
            format!("block '{cell}', the macro space's is 'basic'"),
        ));
    }
    let d = digits_of(skeleton)
        .ok_or_else(|| perr(sp, s, format!("skeleton '{skeleton}' is not all digits")))?;
    macro_from_digits(s, &d)
}

fn parse_macro_tuple(s: &str, xs: &[i64]) -> Result<MacroArch, SpaceError> {
    let sp = SpaceId::Tnb101Macro;
    if xs.len() != 6 {
        return Err(perr(
            sp,
            s,
            format!("{} entries, need 6 (digits padded with zeros)", xs.len()),
        ));
    }
    let n = xs.iter().position(|&x| x == 0).unwrap_or(6);
    if xs[n..].iter().any(|&x| x != 0) {
        return Err(perr(sp, s, "a nonzero digit after the zero padding"));
    }
    let digits: Vec<u8> = xs[..n]
        .iter()
        .map(|&x| u8::try_from(x).ok().filter(|d| (1..=4).contains(d)))
        .collect::<Option<_>>()
        .ok_or_else(|| perr(sp, s, "a stage digit not in 1..=4"))?;
    macro_from_digits(s, &digits)
}

impl Macro {
    /// Parse the `naslib_op_indices` column of the label table (the digits, e.g. `1242`).
    pub fn parse_digits(s: &str) -> Result<MacroArch, SpaceError> {
        let d = digits_of(s).ok_or_else(|| perr(SpaceId::Tnb101Macro, s, "not all digits"))?;
        macro_from_digits(s, &d)
    }
}

impl SearchSpace for Macro {
    type Arch = MacroArch;
    const ID: SpaceId = SpaceId::Tnb101Macro;
    const FORMAT_HELP: &'static str = "'64-<skeleton>-basic' with a skeleton of 4 to 6 stage digits (1 plain, 2 double channels, 3 halve resolution, 4 both) holding 1 to 4 of 3/4 and 1 to 3 of 2/4, e.g. 64-1242-basic, or a NASLib tuple of the digits padded with zeros to 6 '(1, 2, 4, 2, 0, 0)'";

    fn parse(s: &str) -> Result<MacroArch, SpaceError> {
        let t = s.trim();
        if let Some(xs) = parse_int_tuple(t) {
            parse_macro_tuple(t, &xs)
        } else if t.contains('-') {
            parse_macro_api(t)
        } else {
            Err(perr(
                SpaceId::Tnb101Macro,
                t,
                "neither an API string nor a NASLib tuple",
            ))
        }
    }

    fn format(a: &MacroArch) -> String {
        let d: String = a.digits().iter().map(|d| char::from(b'0' + d)).collect();
        format!("64-{d}-basic")
    }

    fn naslib(a: &MacroArch) -> String {
        format_int_tuple(a.0.iter().map(|&d| i64::from(d)))
    }

    /// Uniform: a uniform digit sequence of length 4..=6, redrawn until it is valid.
    fn sample(rng: &mut Rng) -> MacroArch {
        loop {
            let seq = macro_sequence(rng.index(MACRO_SEQUENCES));
            if let Ok(a) = MacroArch::new(&seq) {
                return a;
            }
        }
    }

    fn enumerate() -> Option<Vec<MacroArch>> {
        Some(
            (0..MACRO_SEQUENCES)
                .filter_map(|i| MacroArch::new(&macro_sequence(i)).ok())
                .collect(),
        )
    }

    /// Change one digit, insert one or delete one; valid, deduplicated, in that order.
    fn neighbours(a: &MacroArch) -> Vec<MacroArch> {
        let d = a.digits();
        let mut cands: Vec<Vec<u8>> = Vec::new();
        for k in 0..d.len() {
            for v in 1..=4u8 {
                if v != d[k] {
                    let mut n = d.to_vec();
                    n[k] = v;
                    cands.push(n);
                }
            }
        }
        for k in 0..=d.len() {
            for v in 1..=4u8 {
                let mut n = d.to_vec();
                n.insert(k, v);
                cands.push(n);
            }
        }
        for k in 0..d.len() {
            let mut n = d.to_vec();
            n.remove(k);
            cands.push(n);
        }
        let mut seen = HashSet::new();
        cands
            .into_iter()
            .filter_map(|n| MacroArch::new(&n).ok())
            .filter(|n| n != a && seen.insert(*n))
            .collect()
    }

    fn build(a: &MacroArch, task: Task) -> Result<Graph, SpaceError> {
        network(a.digits(), Block::Basic, task).map_err(graph_err(
            SpaceId::Tnb101Macro,
            Self::format(a),
            task,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Convention;

    fn label_archs(space: &str) -> Vec<(String, String)> {
        let path = format!(
            "{}/search_spaces/{space}/labels.csv",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        text.lines()
            .skip(1)
            .map(|l| {
                let mut f = l.split(',');
                (f.next().unwrap().to_string(), f.next().unwrap().to_string())
            })
            .collect()
    }

    #[test]
    fn micro_spellings_agree() {
        let a = Micro::parse("64-41414-1_00_210").unwrap();
        assert_eq!(Micro::format(&a), "64-41414-1_00_210");
        assert_eq!(Micro::naslib(&a), "(1, 0, 0, 2, 1, 0)");
        assert_eq!(Micro::parse("(1, 0, 0, 2, 1, 0)").unwrap(), a);
        assert_eq!(Micro::parse_digits("100210").unwrap(), a);
        for a in Micro::enumerate().unwrap() {
            assert_eq!(Micro::parse(&Micro::format(&a)).unwrap(), a);
            assert_eq!(Micro::parse(&Micro::naslib(&a)).unwrap(), a);
        }
    }

    #[test]
    fn macro_spellings_agree() {
        let a = Macro::parse("64-1242-basic").unwrap();
        assert_eq!(a.digits(), &[1, 2, 4, 2]);
        assert_eq!(Macro::format(&a), "64-1242-basic");
        assert_eq!(Macro::naslib(&a), "(1, 2, 4, 2, 0, 0)");
        assert_eq!(Macro::parse("(1, 2, 4, 2, 0, 0)").unwrap(), a);
        assert_eq!(Macro::parse_digits("1242").unwrap(), a);
        for a in Macro::enumerate().unwrap() {
            assert_eq!(Macro::parse(&Macro::format(&a)).unwrap(), a);
            assert_eq!(Macro::parse(&Macro::naslib(&a)).unwrap(), a);
        }
    }

    #[test]
    fn bad_strings_say_what_was_expected() {
        for bad in [
            "64-41414-0_12",
            "64-41414-0_12_33",
            "64-41414-0_12_334",
            "64-1111-0_12_333",
            "32-41414-0_12_333",
            "64-41414-0_1x_333",
            "(0, 1, 2, 3, 3)",
            "(0, 1, 2, 3, 3, 4)",
            "hello",
            "",
        ] {
            let e = Micro::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected '64-41414-a_bc_def'"), "{e}");
        }
        for (bad, why) in [
            ("64-1111-basic", "0 downsampling"),
            ("64-3333-basic", "0 channel-doubling"),
            ("64-44441-basic", "4 channel-doubling"),
            ("64-333331-basic", "5 downsampling"),
            ("64-124-basic", "3 stages"),
            ("64-1242121-basic", "7 stages"),
            ("64-1252-basic", "digit 5"),
            ("64-1242-0_12_333", "block"),
            ("64-12a2-basic", "not all digits"),
            ("(1, 2, 4, 2)", "need 6"),
            ("(1, 2, 0, 4, 2, 0)", "after the zero padding"),
            ("(1, 2, 4, 2, 0, 9)", "after the zero padding"),
            ("(1, 2, 4, 7, 0, 0)", "not in 1..=4"),
            ("basic", "neither"),
        ] {
            let e = Macro::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected '64-<skeleton>-basic'"), "{e}");
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn enumerations_equal_the_label_tables() {
        let micro = Micro::enumerate().unwrap();
        assert_eq!(micro.len(), 4096);
        let want: Vec<String> = label_archs("tnb101_micro")
            .into_iter()
            .map(|r| r.0)
            .collect();
        let got: Vec<String> = micro.iter().map(Micro::format).collect();
        assert_eq!(got, want);

        let mac = Macro::enumerate().unwrap();
        assert_eq!(mac.len(), 3256);
        let got: HashSet<String> = mac.iter().map(Macro::format).collect();
        assert_eq!(got.len(), 3256);
        let rows = label_archs("tnb101_macro");
        assert_eq!(rows.len(), 3256);
        for (s, digits) in &rows {
            assert!(got.contains(s), "{s} is not enumerated");
            assert_eq!(
                Macro::parse_digits(digits).unwrap(),
                Macro::parse(s).unwrap()
            );
        }
    }

    #[test]
    fn neighbours_are_valid_and_distinct() {
        let m = Micro::parse("64-41414-0_12_333").unwrap();
        let n = Micro::neighbours(&m);
        let ns: HashSet<_> = n.iter().collect();
        assert_eq!((n.len(), ns.len()), (18, 18));
        assert!(!ns.contains(&m));

        let space: HashSet<MacroArch> = Macro::enumerate().unwrap().into_iter().collect();
        let mut total = 0;
        for a in &space {
            let n = Macro::neighbours(a);
            let ns: HashSet<_> = n.iter().collect();
            assert_eq!(ns.len(), n.len(), "{a:?}");
            assert!(!ns.contains(a));
            assert!(n.iter().all(|x| space.contains(x)));
            total += n.len();
        }
        assert!(total > 0);
        // Exactly the valid architectures one digit change, insertion or deletion away.
        let a = Macro::parse("64-1242-basic").unwrap();
        let edit = |x: &[u8], y: &[u8]| -> bool {
            if x.len() == y.len() {
                x.iter().zip(y).filter(|(p, q)| p != q).count() == 1
            } else {
                let (s, l) = if x.len() < y.len() { (x, y) } else { (y, x) };
                l.len() == s.len() + 1
                    && (0..l.len()).any(|k| {
                        let mut v = l.to_vec();
                        v.remove(k);
                        v == s
                    })
            }
        };
        let want: HashSet<_> = space
            .iter()
            .filter(|b| edit(a.digits(), b.digits()))
            .collect();
        let got: HashSet<_> = Macro::neighbours(&a).iter().copied().collect();
        assert_eq!(got, want.into_iter().copied().collect());
    }

    #[test]
    fn sampling_stays_in_the_space() {
        let mut rng = Rng::new(7);
        let space: HashSet<MacroArch> = Macro::enumerate().unwrap().into_iter().collect();
        let mut seen = HashSet::new();
        for _ in 0..2000 {
            let a = Macro::sample(&mut rng);
            assert!(space.contains(&a));
            seen.insert(a);
            let _ = Micro::sample(&mut rng);
        }
        assert!(seen.len() > 1000);
    }

    #[test]
    fn counts_match_every_reference_row() {
        let path = format!(
            "{}/tests/data/flops_expected.csv",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let mut checked = 0;
        let mut bad = Vec::new();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            if !f[0].starts_with("tnb101_") {
                continue;
            }
            let task = Task::from_name(f[1]).unwrap();
            let g = if f[0] == "tnb101_micro" {
                Micro::build(&Micro::parse(f[2]).unwrap(), task)
            } else {
                Macro::build(&Macro::parse(f[2]).unwrap(), task)
            }
            .unwrap();
            let want: Vec<u64> = f[3..6].iter().map(|x| x.parse().unwrap()).collect();
            let got = [
                g.flops(Convention::Naslib),
                g.params(),
                g.flops(Convention::Macs),
            ];
            if got[..] != want[..] {
                bad.push(format!("{line}: got {got:?}"));
            }
            checked += 1;
        }
        assert_eq!(checked, 9926);
        assert!(
            bad.is_empty(),
            "{} of {checked} rows differ, e.g. {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
    }

    #[test]
    fn graphs_end_in_one_output_and_jigsaw_runs_nine_tiles() {
        let a = Micro::parse("64-41414-3_33_333").unwrap();
        for task in super::super::TNB_TASKS {
            let g = Micro::build(&a, task).unwrap();
            assert_eq!(g.outputs().len(), 1, "{task}");
        }
        assert!(Micro::build(&a, Task::Cifar10).is_err());
    }
}
