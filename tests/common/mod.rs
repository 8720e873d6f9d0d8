//! Helpers shared by the behaviour tests.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Run the real `aiop` binary with arguments and standard input; wait for it.
pub fn aiop(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aiop"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The first `n` NB-201 architectures of the shipped table with their CIFAR-10 validation
/// accuracy, as (architecture string, label as written).
pub fn nb201_cifar10_rows(n: usize) -> Vec<(String, String)> {
    let table = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/search_spaces/nb201/labels.csv"
    ))
    .unwrap();
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let ai = header.iter().position(|h| *h == "arch_str").unwrap();
    let vi = header.iter().position(|h| *h == "val_acc_cifar10").unwrap();
    lines
        .take(n)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[ai].to_string(), f[vi].to_string())
        })
        .collect()
}
