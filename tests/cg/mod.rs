//! Computational graphs of the built-in spaces against the benchmarks' published FLOPs and
//! parameters (NAS-Bench-Suite-Zero, every architecture and task) and the reference MAC counter;
//! and every architecture string of the label tables: parse, print back, build.

use std::collections::BTreeMap;

use aiop::graph::Convention;
use aiop::spaces::{labels, Arch, SpaceId, Task};

#[derive(Debug, serde::Deserialize)]
struct Row {
    space: String,
    task: String,
    arch: String,
    naslib_flops: u64,
    params: u64,
    macs: u64,
}

fn rows() -> Vec<Row> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/flops_expected.csv");
    csv::Reader::from_path(path)
        .unwrap()
        .deserialize()
        .map(|r| r.unwrap())
        .collect()
}

fn check_space(space: SpaceId) {
    let mut checked: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for r in rows().into_iter().filter(|r| r.space == space.name()) {
        let task = space.task(&r.task).unwrap();
        let arch = Arch::parse(space, &r.arch).unwrap();
        let g = arch.build(task).unwrap();
        let got = (
            g.flops(Convention::Naslib),
            g.params(),
            g.flops(Convention::Macs),
        );
        if got != (r.naslib_flops, r.params, r.macs) {
            failures.push(format!(
                "{} {} {}: got (naslib, params, macs) {:?}, want {:?}",
                r.space,
                r.task,
                r.arch,
                got,
                (r.naslib_flops, r.params, r.macs)
            ));
        }
        *checked.entry(r.task).or_default() += 1;
    }
    assert!(
        failures.is_empty(),
        "{} mismatches, first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let tasks: Vec<&str> = space.tasks().iter().map(|t| t.name()).collect();
    assert_eq!(
        checked.keys().map(String::as_str).collect::<Vec<_>>().len(),
        tasks.len(),
        "every task of {space} has published counts: {checked:?}"
    );
    eprintln!("{space}: all counts exact for {checked:?}");
}

#[test]
fn nb201_counts_equal_the_published_ones() {
    check_space(SpaceId::Nb201);
}

#[test]
fn tnb101_micro_counts_equal_the_published_ones() {
    check_space(SpaceId::Tnb101Micro);
}

#[test]
fn tnb101_macro_counts_equal_the_published_ones() {
    check_space(SpaceId::Tnb101Macro);
}

#[test]
fn nb101_counts_equal_the_published_ones() {
    check_space(SpaceId::Nb101);
}

#[test]
fn darts_counts_equal_the_published_ones() {
    check_space(SpaceId::Darts);
}

/// Every label-table string parses, prints back to itself and builds a CG (tasks taken in turn,
/// so every task's network is built for a share of the architectures).
fn all_label_strings(space: SpaceId, expected: usize) {
    let tasks = space.tasks();
    let table = labels::load(space, tasks[0]).unwrap();
    assert_eq!(table.rows.len(), expected);
    let text_col = |i: usize| table.rows[i].arch.to_string();
    for (i, row) in table.rows.iter().enumerate() {
        let s = text_col(i);
        let again = Arch::parse(space, &s).unwrap();
        assert_eq!(again, row.arch);
        assert_eq!(again.to_string(), s);
        let task: Task = tasks[i % tasks.len()];
        let g = row.arch.build(task).unwrap();
        assert!(g.len() > 10);
    }
}

#[test]
fn nb201_label_strings_round_trip_and_build() {
    all_label_strings(SpaceId::Nb201, 15_625);
}

#[test]
fn tnb101_micro_label_strings_round_trip_and_build() {
    all_label_strings(SpaceId::Tnb101Micro, 4_096);
}

#[test]
fn tnb101_macro_label_strings_round_trip_and_build() {
    all_label_strings(SpaceId::Tnb101Macro, 3_256);
}

/// The table's own spelling is printed back verbatim (not just our canonical form of it).
#[test]
fn table_spellings_are_printed_back_verbatim() {
    for (space, file, col) in [
        (SpaceId::Nb201, "nb201", "arch_str"),
        (SpaceId::Tnb101Micro, "tnb101_micro", "arch_str"),
        (SpaceId::Tnb101Macro, "tnb101_macro", "arch_str"),
    ] {
        let path = format!(
            "{}/search_spaces/{file}/labels.csv",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut rdr = csv::Reader::from_path(path).unwrap();
        let h = rdr.headers().unwrap().clone();
        let ai = h.iter().position(|x| x == col).unwrap();
        let di = h.iter().position(|x| x == "naslib_op_indices").unwrap();
        let mut n = 0;
        for rec in rdr.records() {
            let rec = rec.unwrap();
            let a = Arch::parse(space, &rec[ai]).unwrap();
            assert_eq!(a.to_string(), &rec[ai]);
            // The digit column names the same architecture as the string.
            let digits: Vec<String> = rec[di].chars().map(|c| c.to_string()).collect();
            let tuple = if space == SpaceId::Tnb101Macro {
                let mut d = digits.clone();
                d.resize(6, "0".into());
                format!("({})", d.join(", "))
            } else {
                format!("({})", digits.join(", "))
            };
            assert_eq!(Arch::parse(space, &tuple).unwrap(), a, "{tuple}");
            n += 1;
        }
        assert!(n >= 3_256);
    }
}
