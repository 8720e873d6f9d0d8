//! Helpers shared by the behaviour tests.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Run the real `aiop` binary with arguments and standard input; wait for it. A command that
/// refuses its arguments may exit before reading its input: the write then meets a closed pipe,
/// which is not an error of the test (on a loaded machine it happened).
pub fn aiop(args: &[&str], stdin: &str) -> Output {
    aiop_bytes(args, stdin.as_bytes())
}

/// [`aiop`] with standard input of any bytes (not UTF-8, say).
pub fn aiop_bytes(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aiop"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    match child.stdin.take().unwrap().write_all(stdin) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.unwrap(),
    }
    child.wait_with_output().unwrap()
}

/// Every `step`-th row (the first `n` of them) of a shipped label table, as (architecture
/// string, the `column` label as written).
pub fn table_rows(space: &str, column: &str, step: usize, n: usize) -> Vec<(String, String)> {
    let path = format!(
        "{}/search_spaces/{space}/labels.csv",
        env!("CARGO_MANIFEST_DIR")
    );
    let table = std::fs::read_to_string(path).unwrap();
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let ai = header.iter().position(|h| *h == "arch_str").unwrap();
    let vi = header.iter().position(|h| *h == column).unwrap();
    lines
        .step_by(step)
        .take(n)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[ai].to_string(), f[vi].to_string())
        })
        .collect()
}

/// The first `n` NB-201 architectures of the shipped table with their CIFAR-10 validation
/// accuracy, as (architecture string, label as written).
pub fn nb201_cifar10_rows(n: usize) -> Vec<(String, String)> {
    table_rows("nb201", "val_acc_cifar10", 1, n)
}

/// [`aiop`] that must succeed (its standard error shown otherwise); returns standard output.
pub fn aiop_ok(args: &[&str], stdin: &str) -> Vec<u8> {
    let o = aiop(args, stdin);
    assert!(
        o.status.success(),
        "aiop {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// The `prediction` of each JSON line `aiop predict` printed, in order.
pub fn predictions(stdout: &[u8]) -> Vec<f64> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["prediction"]
                .as_f64()
                .unwrap()
        })
        .collect()
}
