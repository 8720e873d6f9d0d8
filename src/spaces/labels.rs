//! The benchmark label tables shipped under `search_spaces/` (see `search_spaces/SOURCES.md`),
//! embedded in the binary so that aiop works from any directory with no data folder.
//!
//! Invariants: every label is a real benchmark measurement (DARTS labels are NAS-Bench-301
//! *surrogate* predictions and say so via [`LabelTable::surrogate`]); every architecture string
//! in a table parses in its space; rows keep the file's order; a malformed table is an error
//! naming the file and line, never a silently shorter table.

use super::{Arch, SpaceError, SpaceId, Task};

/// One labelled architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    pub arch: Arch,
    /// The label in the task's units (see [`Task::metric`]).
    pub value: f64,
}

/// All labels of one (space, task).
#[derive(Debug, Clone)]
pub struct LabelTable {
    pub space: SpaceId,
    pub task: Task,
    pub metric: &'static str,
    pub higher_is_better: bool,
    /// True when labels come from a surrogate model rather than training runs.
    pub surrogate: bool,
    pub rows: Vec<Labelled>,
}

struct Source {
    file: &'static str,
    text: &'static str,
    /// Column holding the architecture string.
    arch_col: &'static str,
    surrogate: bool,
}

fn source(space: SpaceId) -> Source {
    match space {
        SpaceId::Nb201 => Source {
            file: "search_spaces/nb201/labels.csv",
            text: include_str!("../../search_spaces/nb201/labels.csv"),
            arch_col: "arch_str",
            surrogate: false,
        },
        SpaceId::Tnb101Micro => Source {
            file: "search_spaces/tnb101_micro/labels.csv",
            text: include_str!("../../search_spaces/tnb101_micro/labels.csv"),
            arch_col: "arch_str",
            surrogate: false,
        },
        SpaceId::Tnb101Macro => Source {
            file: "search_spaces/tnb101_macro/labels.csv",
            text: include_str!("../../search_spaces/tnb101_macro/labels.csv"),
            arch_col: "arch_str",
            surrogate: false,
        },
        SpaceId::Nb101 => Source {
            file: "search_spaces/nb101/labels.csv",
            text: include_str!("../../search_spaces/nb101/labels.csv"),
            arch_col: "arch",
            surrogate: false,
        },
        SpaceId::Darts => Source {
            file: "search_spaces/darts/labels.csv",
            text: include_str!("../../search_spaces/darts/labels.csv"),
            arch_col: "arch",
            surrogate: true,
        },
    }
}

/// The label column of a task in its space's table.
fn value_col(space: SpaceId, task: Task) -> String {
    match space {
        SpaceId::Nb201 | SpaceId::Nb101 => format!("val_acc_{}", task.name()),
        SpaceId::Darts => format!("surrogate_acc_{}", task.name()),
        SpaceId::Tnb101Micro | SpaceId::Tnb101Macro => task.name().to_string(),
    }
}

/// Load the labels of a (space, task).
pub fn load(space: SpaceId, task: Task) -> Result<LabelTable, SpaceError> {
    if !space.tasks().contains(&task) {
        return Err(SpaceError::UnknownTask {
            space,
            task: task.name().to_string(),
        });
    }
    let src = source(space);
    let err = |line: usize, message: String| SpaceError::Labels {
        file: src.file.to_string(),
        line,
        message,
    };
    let mut rdr = csv::Reader::from_reader(src.text.as_bytes());
    let headers = rdr.headers().map_err(|e| err(1, e.to_string()))?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| err(1, format!("no column '{name}'")))
    };
    let ai = col(src.arch_col)?;
    let vcol = value_col(space, task);
    let vi = col(&vcol)?;
    let mut rows = Vec::new();
    for (k, rec) in rdr.records().enumerate() {
        let line = k + 2;
        let rec = rec.map_err(|e| err(line, e.to_string()))?;
        let a = rec
            .get(ai)
            .ok_or_else(|| err(line, "missing arch".into()))?;
        let v = rec
            .get(vi)
            .ok_or_else(|| err(line, format!("missing {vcol}")))?;
        let arch = Arch::parse(space, a).map_err(|e| err(line, e.to_string()))?;
        let value: f64 = v
            .parse()
            .map_err(|_| err(line, format!("{vcol} '{v}' is not a number")))?;
        if !value.is_finite() {
            return Err(err(line, format!("{vcol} '{v}' is not finite")));
        }
        rows.push(Labelled { arch, value });
    }
    Ok(LabelTable {
        space,
        task,
        metric: task.metric(),
        higher_is_better: task.higher_is_better(),
        surrogate: src.surrogate,
        rows,
    })
}

/// Number of labelled architectures of a space (rows of its table), without parsing them.
pub fn count(space: SpaceId) -> usize {
    source(space)
        .text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nb201_table_loads_with_known_row() {
        let t = load(SpaceId::Nb201, Task::Cifar10).unwrap();
        assert_eq!(t.rows.len(), 15_625);
        assert_eq!(count(SpaceId::Nb201), 15_625);
        // First data row of the table.
        assert_eq!(
            t.rows[0].arch.to_string(),
            "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"
        );
        assert!((t.rows[0].value - 81.9).abs() < 1e-9);
        assert!(!t.surrogate);
    }

    #[test]
    fn wrong_task_is_an_error() {
        assert!(matches!(
            load(SpaceId::Nb201, Task::Jigsaw),
            Err(SpaceError::UnknownTask { .. })
        ));
    }
}
