//! Built-in search spaces: architecture strings, sampling, enumeration, mutations, and the CG of
//! an (architecture, task) pair, plus the benchmark label tables ([`labels`]).
//!
//! Each space is one module implementing [`SearchSpace`]; [`Arch`] and the free functions here
//! dispatch over them so callers (CLI, predictor, searches, daemon) name a space at run time.
//! Invariants: `parse(format(a)) == a` for every architecture; the NASLib tuple spelling parses
//! to the same architecture; `neighbours(a)` are valid, distinct from `a` and from each other;
//! `build(a, task)` is the whole network the benchmark trained for that task.

pub mod darts;
pub mod labels;
pub mod nb101;
pub mod nb201;
pub mod tnb101;

use serde::{Deserialize, Serialize};

use crate::graph::{Graph, GraphError};
use crate::rng::Rng;

/// The built-in spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SpaceId {
    #[serde(rename = "nb201")]
    Nb201,
    #[serde(rename = "tnb101_micro")]
    Tnb101Micro,
    #[serde(rename = "tnb101_macro")]
    Tnb101Macro,
    #[serde(rename = "nb101")]
    Nb101,
    #[serde(rename = "darts")]
    Darts,
}

/// Tasks (datasets) the benchmark networks were trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Task {
    #[serde(rename = "cifar10")]
    Cifar10,
    #[serde(rename = "cifar100")]
    Cifar100,
    #[serde(rename = "ImageNet16-120")]
    ImageNet16_120,
    #[serde(rename = "class_scene")]
    ClassScene,
    #[serde(rename = "class_object")]
    ClassObject,
    #[serde(rename = "room_layout")]
    RoomLayout,
    #[serde(rename = "jigsaw")]
    Jigsaw,
    #[serde(rename = "segmentsemantic")]
    SegmentSemantic,
    #[serde(rename = "normal")]
    Normal,
    #[serde(rename = "autoencoder")]
    Autoencoder,
}

/// The seven TransNAS-Bench-101 tasks, in the data files' column order.
pub const TNB_TASKS: [Task; 7] = [
    Task::ClassScene,
    Task::ClassObject,
    Task::RoomLayout,
    Task::Jigsaw,
    Task::SegmentSemantic,
    Task::Normal,
    Task::Autoencoder,
];

impl Task {
    pub const ALL: [Task; 10] = [
        Task::Cifar10,
        Task::Cifar100,
        Task::ImageNet16_120,
        Task::ClassScene,
        Task::ClassObject,
        Task::RoomLayout,
        Task::Jigsaw,
        Task::SegmentSemantic,
        Task::Normal,
        Task::Autoencoder,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Task::Cifar10 => "cifar10",
            Task::Cifar100 => "cifar100",
            Task::ImageNet16_120 => "ImageNet16-120",
            Task::ClassScene => "class_scene",
            Task::ClassObject => "class_object",
            Task::RoomLayout => "room_layout",
            Task::Jigsaw => "jigsaw",
            Task::SegmentSemantic => "segmentsemantic",
            Task::Normal => "normal",
            Task::Autoencoder => "autoencoder",
        }
    }

    pub fn from_name(s: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.name() == s)
    }

    /// What the label measures, in the task's units.
    pub fn metric(self) -> &'static str {
        match self {
            Task::RoomLayout => "negative L2 loss",
            Task::SegmentSemantic => "pixel accuracy %",
            Task::Normal | Task::Autoencoder => "SSIM (0..1)",
            _ => "top-1 accuracy %",
        }
    }

    /// Whether a larger label is better. All shipped labels are (room layout is a *negative*
    /// loss); fine-tuned tasks state their own direction.
    pub fn higher_is_better(self) -> bool {
        true
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl SpaceId {
    pub const ALL: [SpaceId; 5] = [
        SpaceId::Nb201,
        SpaceId::Tnb101Micro,
        SpaceId::Tnb101Macro,
        SpaceId::Nb101,
        SpaceId::Darts,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SpaceId::Nb201 => "nb201",
            SpaceId::Tnb101Micro => "tnb101_micro",
            SpaceId::Tnb101Macro => "tnb101_macro",
            SpaceId::Nb101 => "nb101",
            SpaceId::Darts => "darts",
        }
    }

    pub fn from_name(s: &str) -> Result<SpaceId, SpaceError> {
        SpaceId::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| SpaceError::UnknownSpace(s.to_string()))
    }

    /// Tasks this space has networks (and labels) for.
    pub fn tasks(self) -> &'static [Task] {
        match self {
            SpaceId::Nb201 => &[Task::Cifar10, Task::Cifar100, Task::ImageNet16_120],
            SpaceId::Tnb101Micro | SpaceId::Tnb101Macro => &TNB_TASKS,
            SpaceId::Nb101 | SpaceId::Darts => &[Task::Cifar10],
        }
    }

    /// Check that a task name belongs to this space.
    pub fn task(self, name: &str) -> Result<Task, SpaceError> {
        Task::from_name(name)
            .filter(|t| self.tasks().contains(t))
            .ok_or_else(|| SpaceError::UnknownTask {
                space: self,
                task: name.to_string(),
            })
    }

    /// Human description of the architecture string format (used in parse errors and help).
    pub fn format_help(self) -> &'static str {
        match self {
            SpaceId::Nb201 => nb201::Nb201::FORMAT_HELP,
            SpaceId::Tnb101Micro => tnb101::Micro::FORMAT_HELP,
            SpaceId::Tnb101Macro => tnb101::Macro::FORMAT_HELP,
            SpaceId::Nb101 => nb101::Nb101::FORMAT_HELP,
            SpaceId::Darts => darts::Darts::FORMAT_HELP,
        }
    }
}

impl std::fmt::Display for SpaceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors of the spaces room.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    #[error(
        "unknown space '{0}' (expected one of: nb201, tnb101_micro, tnb101_macro, nb101, darts)"
    )]
    UnknownSpace(String),
    #[error("space {space} has no task '{task}' (expected one of: {})", space.tasks().iter().map(|t| t.name()).collect::<Vec<_>>().join(", "))]
    UnknownTask { space: SpaceId, task: String },
    #[error("{space}: cannot parse '{input}': {message} (expected {})", space.format_help())]
    Parse {
        space: SpaceId,
        input: String,
        message: String,
    },
    #[error("{space}: building the graph of {arch} for {task}: {source}")]
    Graph {
        space: SpaceId,
        arch: String,
        task: Task,
        #[source]
        source: GraphError,
    },
    #[error("{file}:{line}: {message}")]
    Labels {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// What every built-in space provides. Implemented by a unit struct per space.
pub trait SearchSpace {
    /// An architecture of the space (canonical: equal networks are equal values where the space
    /// allows it cheaply).
    type Arch: Clone + PartialEq + Eq + std::hash::Hash + std::fmt::Debug;
    const ID: SpaceId;
    /// One line describing the accepted strings, for errors and help.
    const FORMAT_HELP: &'static str;

    /// Parse the benchmark's string or the NASLib tuple spelling.
    fn parse(s: &str) -> Result<Self::Arch, SpaceError>;
    /// The benchmark's own string (NASLib tuple where the benchmark has none).
    fn format(a: &Self::Arch) -> String;
    /// The NASLib tuple spelling used by the shipped NAS-Bench-Suite-Zero files.
    fn naslib(a: &Self::Arch) -> String;
    /// A uniformly random architecture.
    fn sample(rng: &mut Rng) -> Self::Arch;
    /// Every architecture, where the space is small enough to list.
    fn enumerate() -> Option<Vec<Self::Arch>>;
    /// All architectures one edit away (valid, distinct, none equal to `a`).
    fn neighbours(a: &Self::Arch) -> Vec<Self::Arch>;
    /// The CG of the whole network trained for `task` (a task of this space).
    fn build(a: &Self::Arch, task: Task) -> Result<Graph, SpaceError>;
}

/// An architecture of any built-in space. Serialises as `{"space": ..., "arch": "<string>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Arch {
    Nb201(<nb201::Nb201 as SearchSpace>::Arch),
    Micro(<tnb101::Micro as SearchSpace>::Arch),
    Macro(<tnb101::Macro as SearchSpace>::Arch),
    Nb101(<nb101::Nb101 as SearchSpace>::Arch),
    Darts(<darts::Darts as SearchSpace>::Arch),
}

/// Run `$body` with `S` the space type of an [`Arch`] value, `$x` its inner architecture and
/// `$wrap` the constructor that wraps that space's architectures back into [`Arch`].
macro_rules! dispatch {
    ($a:expr, $x:ident, $wrap:ident => $body:expr) => {
        match $a {
            Arch::Nb201($x) => {
                type S = nb201::Nb201;
                let $wrap = Arch::Nb201;
                $body
            }
            Arch::Micro($x) => {
                type S = tnb101::Micro;
                let $wrap = Arch::Micro;
                $body
            }
            Arch::Macro($x) => {
                type S = tnb101::Macro;
                let $wrap = Arch::Macro;
                $body
            }
            Arch::Nb101($x) => {
                type S = nb101::Nb101;
                let $wrap = Arch::Nb101;
                $body
            }
            Arch::Darts($x) => {
                type S = darts::Darts;
                let $wrap = Arch::Darts;
                $body
            }
        }
    };
}

macro_rules! by_space {
    ($space:expr, $S:ident, $wrap:ident => $body:expr) => {
        match $space {
            SpaceId::Nb201 => {
                type $S = nb201::Nb201;
                let $wrap = Arch::Nb201;
                $body
            }
            SpaceId::Tnb101Micro => {
                type $S = tnb101::Micro;
                let $wrap = Arch::Micro;
                $body
            }
            SpaceId::Tnb101Macro => {
                type $S = tnb101::Macro;
                let $wrap = Arch::Macro;
                $body
            }
            SpaceId::Nb101 => {
                type $S = nb101::Nb101;
                let $wrap = Arch::Nb101;
                $body
            }
            SpaceId::Darts => {
                type $S = darts::Darts;
                let $wrap = Arch::Darts;
                $body
            }
        }
    };
}

impl Arch {
    pub fn space(&self) -> SpaceId {
        dispatch!(self, _a, _w => S::ID)
    }

    /// Parse a string of a space (benchmark string or NASLib tuple).
    pub fn parse(space: SpaceId, s: &str) -> Result<Arch, SpaceError> {
        by_space!(space, S, wrap => S::parse(s.trim()).map(wrap))
    }

    /// The NASLib tuple spelling.
    pub fn naslib(&self) -> String {
        dispatch!(self, a, _w => S::naslib(a))
    }

    /// The CG for a task given by name (checked against the space).
    pub fn build(&self, task: Task) -> Result<Graph, SpaceError> {
        let space = self.space();
        if !space.tasks().contains(&task) {
            return Err(SpaceError::UnknownTask {
                space,
                task: task.name().to_string(),
            });
        }
        dispatch!(self, a, _w => S::build(a, task))
    }

    pub fn neighbours(&self) -> Vec<Arch> {
        dispatch!(self, a, wrap => S::neighbours(a).into_iter().map(wrap).collect())
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&dispatch!(self, a, _w => S::format(a)))
    }
}

/// Every architecture at most `radius` moves (one-edit mutations, [`Arch::neighbours`]) from
/// `start`, the start excluded, nearest first; each one once.
pub fn within(start: &Arch, radius: usize) -> Vec<Arch> {
    let mut seen: std::collections::HashSet<Arch> = [start.clone()].into();
    let mut out: Vec<Arch> = Vec::new();
    let mut ring = vec![start.clone()];
    for _ in 0..radius {
        if ring.is_empty() {
            // The whole space is within reach: no larger radius adds anything.
            break;
        }
        let mut next = Vec::new();
        for a in &ring {
            for n in a.neighbours() {
                if seen.insert(n.clone()) {
                    next.push(n);
                }
            }
        }
        out.extend(next.iter().cloned());
        ring = next;
    }
    out
}

/// A uniformly random architecture of a space.
pub fn sample(space: SpaceId, rng: &mut Rng) -> Arch {
    by_space!(space, S, wrap => wrap(S::sample(rng)))
}

/// Every architecture of a space, where it is small enough to list.
pub fn enumerate(space: SpaceId) -> Option<Vec<Arch>> {
    by_space!(space, S, wrap => S::enumerate().map(|v| v.into_iter().map(wrap).collect()))
}

impl Serialize for Arch {
    fn serialize<Se: serde::Serializer>(&self, s: Se) -> Result<Se::Ok, Se::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Arch", 2)?;
        st.serialize_field("space", &self.space())?;
        st.serialize_field("arch", &self.to_string())?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Arch, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            space: SpaceId,
            arch: String,
        }
        let r = Raw::deserialize(d)?;
        Arch::parse(r.space, &r.arch).map_err(serde::de::Error::custom)
    }
}

/// Shared helper: parse a parenthesised or bracketed tuple of integers, e.g. `(0, 2, 3)`, with
/// Python's one trailing comma allowed (`(0,)`); an empty entry elsewhere (`(0,,2)`, `(,0)`)
/// makes it no tuple.
pub(crate) fn parse_int_tuple(s: &str) -> Option<Vec<i64>> {
    let t = s.trim();
    let inner = t
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .or_else(|| t.strip_prefix('[').and_then(|x| x.strip_suffix(']')))?;
    if inner.trim().is_empty() {
        return Some(Vec::new());
    }
    let inner = inner.trim_end();
    let inner = inner.strip_suffix(',').unwrap_or(inner);
    inner
        .split(',')
        .map(|x| x.trim().parse::<i64>().ok())
        .collect()
}

/// Shared helper: every array that differs from `ops` in exactly one position, set to another
/// of `choices` (the 1-edit neighbours of a cell written as one op per edge), position by position.
pub(crate) fn one_op_edits<T: Copy + PartialEq, const N: usize>(
    ops: &[T; N],
    choices: &[T],
) -> Vec<[T; N]> {
    let mut out = Vec::with_capacity(N * choices.len().saturating_sub(1));
    for (k, &current) in ops.iter().enumerate() {
        for &c in choices {
            if c != current {
                let mut n = *ops;
                n[k] = c;
                out.push(n);
            }
        }
    }
    out
}

/// Shared helper: format integers as a NASLib tuple `(a, b, c)`.
pub(crate) fn format_int_tuple(xs: impl IntoIterator<Item = i64>) -> String {
    let v: Vec<String> = xs.into_iter().map(|x| x.to_string()).collect();
    format!("({})", v.join(", "))
}

/// Wrap a graph error with the space, arch and task it happened in.
pub(crate) fn graph_err(
    space: SpaceId,
    arch: String,
    task: Task,
) -> impl FnOnce(GraphError) -> SpaceError {
    move |source| SpaceError::Graph {
        space,
        arch,
        task,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn a_tuple_has_no_empty_entry_but_may_end_in_one_comma() {
        assert_eq!(parse_int_tuple("(0, 2, 3)"), Some(vec![0, 2, 3]));
        assert_eq!(parse_int_tuple("[1,2,]"), Some(vec![1, 2]));
        assert_eq!(parse_int_tuple("(0,)"), Some(vec![0]));
        assert_eq!(parse_int_tuple("()"), Some(vec![]));
        for bad in [
            "(0,,2)", "(,0,2)", "(,)", "(0, 2,,)", "(0 2)", "(0, x)", "0, 2",
        ] {
            assert_eq!(parse_int_tuple(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_radius_past_the_space_ends_when_the_space_does() {
        // NB-201 is 15,625 networks, all within 6 edits of any; a radius of 2^64 - 1 ends there.
        let a = sample(SpaceId::Nb201, &mut crate::rng::Rng::new(0));
        assert_eq!(within(&a, usize::MAX).len(), 15_624);
    }

    #[test]
    fn within_grows_by_rings_of_neighbours() {
        let mut rng = Rng::new(4);
        for space in [SpaceId::Nb201, SpaceId::Tnb101Macro] {
            let a = sample(space, &mut rng);
            let one = within(&a, 1);
            let two = within(&a, 2);
            let names = |v: &[Arch]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
            let n1: HashSet<String> = names(&a.neighbours()).into_iter().collect();
            assert_eq!(names(&one).into_iter().collect::<HashSet<_>>(), n1);
            assert_eq!(names(&two[..one.len()]), names(&one), "nearest first");
            let all: HashSet<String> = names(&two).into_iter().collect();
            assert_eq!(all.len(), two.len(), "each once");
            assert!(!all.contains(&a.to_string()), "start excluded");
            for x in &two[one.len()..] {
                assert!(!n1.contains(&x.to_string()));
                assert!(one.iter().any(|y| y.neighbours().contains(x)));
            }
            assert!(within(&a, 0).is_empty());
            if space == SpaceId::Nb201 {
                // 6 edges of 5 ops: 6·4 = 24 networks one edit away and C(6,2)·4·4 = 240 two.
                assert_eq!((one.len(), two.len()), (24, 24 + 240));
            }
        }
    }
}
