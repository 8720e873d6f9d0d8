//! The `aiop` binary as a user runs it: `aiop spaces`, `aiop graph` on stdin, one arch, DOT,
//! the interchange format and back, and bad input with a precise error and exit code 65.

use crate::common::{aiop, aiop_bytes, aiop_ok};

const A: &str =
    "|skip_connect~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_1x1~0|nor_conv_1x1~1|none~2|";

#[test]
fn spaces_lists_every_space_with_label_counts() {
    let o = aiop(&["spaces", "--json"], "");
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let get = |s: &str| rows.iter().find(|r| r["space"] == s).unwrap().clone();
    assert_eq!(get("nb201")["labelled"], 15_625);
    assert_eq!(get("nb201")["size"], 15_625);
    assert_eq!(get("tnb101_micro")["labelled"], 4_096);
    assert_eq!(get("tnb101_macro")["labelled"], 3_256);
    assert_eq!(get("nb101")["labelled"], 500);
    assert_eq!(get("darts")["labelled"], 725);
    assert_eq!(get("tnb101_macro")["tasks"].as_array().unwrap().len(), 7);
}

#[test]
fn graph_reads_stdin_and_writes_json_lines_in_order() {
    let input = format!("{A}\n(4, 0, 4, 1, 2, 0)\n");
    let o = aiop(
        &[
            "graph",
            "--space",
            "nb201",
            "--task",
            "cifar10",
            "--flops-convention",
            "naslib",
        ],
        &input,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["arch"], A);
    // Published: 88.307392 MFLOPs, 0.615386 M params; 46.343872 / 0.316346 for the second.
    assert_eq!(lines[0]["mflops"], 88.307392);
    assert_eq!(lines[0]["mparams"], 0.615386);
    assert_eq!(lines[1]["mflops"], 46.343872);
    assert_eq!(
        lines[1]["arch"],
        "|avg_pool_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_3x3~1|skip_connect~2|"
    );
    for l in &lines {
        assert_eq!(l["hash"].as_str().unwrap().len(), 32);
        assert!(l["nodes"].as_u64().unwrap() > 100);
        assert!(l["edges"].as_u64().unwrap() > l["nodes"].as_u64().unwrap());
    }
}

#[test]
fn graph_exports_dot_and_the_interchange_format_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let o = aiop(
        &[
            "graph", "--space", "nb201", "--task", "cifar10", "--arch", A, "--format", "dot",
        ],
        "",
    );
    assert!(o.status.success());
    let dot = String::from_utf8(o.stdout).unwrap();
    assert!(dot.starts_with("digraph") && dot.contains("->"));

    let o = aiop(
        &[
            "graph", "--space", "nb201", "--task", "cifar10", "--arch", A,
        ],
        "",
    );
    let direct: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let o = aiop(
        &[
            "graph", "--space", "nb201", "--task", "cifar10", "--arch", A, "--format", "graph",
        ],
        "",
    );
    assert!(o.status.success());
    let path = dir.path().join("g.json");
    std::fs::write(&path, &o.stdout).unwrap();
    let o = aiop(&["graph", "--file", path.to_str().unwrap()], "");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let via_file: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in ["nodes", "edges", "mflops", "mparams", "hash"] {
        assert_eq!(direct[k], via_file[k], "{k}");
    }
    assert_eq!(via_file["graph"], path.to_str().unwrap());
}

#[test]
fn bad_input_names_the_line_and_what_was_expected() {
    let input = format!("{A}\n|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|\n{A}\n");
    let o = aiop(&["graph", "--space", "nb201", "--task", "cifar10"], &input);
    assert_eq!(o.status.code(), Some(65));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains("stdin line 2"), "{err}");
    assert!(err.contains("unknown op 'conv'"), "{err}");
    // The good lines are still answered.
    assert_eq!(String::from_utf8(o.stdout).unwrap().lines().count(), 2);

    let o = aiop(
        &[
            "graph", "--space", "nb999", "--task", "cifar10", "--arch", A,
        ],
        "",
    );
    // An unknown space is a usage error listing the spaces (in predict too).
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("'nb999'") && err.contains("tnb101_macro"),
        "{err}"
    );
    for cmd in [
        &["predict", "--space", "nb999", "--task", "cifar10"][..],
        // And in the benchmarks, before any work.
        &["bench", "graph", "--space", "nb999", "--task", "cifar10"],
        &["bench", "search", "--space", "nb999"],
        &["bench", "api", "--space", "nb999", "--addr", "127.0.0.1:9"],
    ] {
        let o = aiop(cmd, "");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(2), "{cmd:?}: {err}");
        assert!(err.contains("'nb999'") && err.contains("darts"), "{err}");
    }
    let o = aiop(
        &["graph", "--space", "nb201", "--task", "jigsaw", "--arch", A],
        "",
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no task 'jigsaw'"));
}

#[test]
fn a_line_that_is_not_utf8_is_reported_and_the_rest_answered() {
    let input = [
        format!("{A}\n").as_bytes(),
        b"\xff\xfe\n",
        format!("{A}\n").as_bytes(),
    ]
    .concat();
    for args in [
        ["graph", "--space", "nb201", "--task", "cifar10"],
        ["predict", "--space", "nb201", "--task", "cifar10"],
    ] {
        let o = aiop_bytes(&args, &input);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(65), "{}: {err}", args[0]);
        assert!(
            err.contains("stdin line 2: not UTF-8 text (invalid byte at column 1)"),
            "{}: {err}",
            args[0]
        );
        let out = String::from_utf8(o.stdout).unwrap();
        assert_eq!(out.lines().count(), 2, "{}: {out}", args[0]);
        for l in out.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["arch"], A, "{}: {l}", args[0]);
        }
    }
}

#[test]
fn an_input_that_is_not_there_exits_66_naming_its_option() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let none = format!("{d}/nope.json");
    // Each a command line (words split at spaces) and what its error says.
    for (line, says) in [
        (format!("graph --file {none}"), "--file "),
        (format!("graph --file {d}"), "is a folder, not a file"),
        (
            format!("finetune --task {d}/nope.toml --state {d}"),
            "--task ",
        ),
        (format!("export {none}"), "RESULTS "),
        (format!("pretrain --config {none} --out {d}/m"), "--config "),
        (
            format!("predict --space nb201 --task cifar10 --model {d}/m"),
            "--model ",
        ),
        (
            format!("eval --protocol unseen-task --config {none}"),
            "--config ",
        ),
        (
            format!("search --space nb201 --task cifar10 --algorithm flops --start-graph {none}"),
            "--start-graph ",
        ),
        (
            format!("search --tuned nope --state {d}"),
            "no task model 'nope'",
        ),
    ] {
        let args: Vec<&str> = line.split(' ').collect();
        let o = aiop(&args, A);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(66), "{line}: {err}");
        assert!(err.contains(says), "{line}: {err}");
        assert!(o.stdout.is_empty(), "{line}");
    }
    // A client with a state folder where no daemon runs (no address file, an empty one, a
    // file for a folder): no daemon answers (69); an --addr that is no address is bad usage.
    let o = aiop(&["status", "--addr", "http://127.0.0.1:9187"], "");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not an address"));
    std::fs::create_dir(dir.path().join("e")).unwrap();
    std::fs::write(dir.path().join("e/aiop.addr"), "").unwrap();
    for line in [
        format!("status --state {d}"),
        format!("submit {none} --state {d}"),
        format!("status --state {d}/e"),
        format!("searches --state {d}/e/aiop.addr"),
    ] {
        let args: Vec<&str> = line.split(' ').collect();
        let o = aiop(&args, "");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(69), "{line}: {err}");
        assert!(
            err.contains("no daemon runs with the state folder"),
            "{err}"
        );
    }
    // A file that is there but not text is bad data (65); a byte-order mark is no part of it,
    // nor of stdin's first line.
    let graph = aiop_ok(
        &[
            "graph", "--space", "nb201", "--task", "cifar10", "--arch", A, "--format", "graph",
        ],
        "",
    );
    let path = dir.path().join("g.json");
    std::fs::write(&path, [&b"\xef\xbb\xbf"[..], &graph].concat()).unwrap();
    let from_file = aiop_ok(&["graph", "--file", path.to_str().unwrap()], "");
    let from_stdin = aiop_bytes(
        &["graph", "--space", "nb201", "--task", "cifar10"],
        format!("\u{feff}{A}\n").as_bytes(),
    );
    assert!(from_stdin.status.success());
    let hash = |out: &[u8]| {
        let v: serde_json::Value = serde_json::from_slice(out).unwrap();
        v["hash"].as_str().unwrap().to_string()
    };
    assert_eq!(hash(&from_file), hash(&from_stdin.stdout));
    std::fs::write(&path, b"{\"format\": \"aiop-\xffgraph\"}").unwrap();
    let o = aiop(&["graph", "--file", path.to_str().unwrap()], "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(65), "{err}");
    assert!(err.contains("g.json: not UTF-8 text"), "{err}");
}

#[test]
fn a_flop_reduction_that_meets_no_constraint_says_so_after_its_results() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let json_s = json.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "search",
            "-q",
            "--space",
            "nb201",
            "--task",
            "cifar10",
            "--fitness",
            "oracle",
            "--algorithm",
            "flops",
            "--start",
            A,
            "--budget",
            "30",
            "--json",
            json_s,
        ];
        args.extend_from_slice(extra);
        aiop(&args, "")
    };
    // No NB-201 network has 1 MFLOP: the start, which breaks the constraint, is the only
    // result, written and printed, and the constraint no network met is a usage error.
    let o = run(&["--max-mflops", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no candidate satisfies the constraints (max_mflops 1)"),
        "{err}"
    );
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = file["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{file}");
    assert!(results[0]["mflops"].as_f64().unwrap() > 1.0);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1);
    // One that some network meets ends as usual, even when none of those keeps the
    // tolerance (the constraints were met; the start alone is the result).
    let o = run(&["--max-mflops", "50"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["--max-mflops", "80", "--radius", "1", "--tolerance", "0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A free start graph is at most MAX_START_NODES nodes (each generation copies it per
    // move): a chain of 4,096 convs is refused before any work.
    let mut nodes = vec![r#"{"id": "x", "op": "input", "out": [8, 8, 8]}"#.to_string()];
    let mut prev = "x".to_string();
    for k in 0..aiop::search::MAX_START_NODES {
        nodes.push(format!(
            r#"{{"id": "c{k}", "op": "conv", "inputs": ["{prev}"], "out": [8, 8, 8], "kernel": 3, "padding": 1}}"#
        ));
        prev = format!("c{k}");
    }
    let big = dir.path().join("big.json");
    std::fs::write(
        &big,
        format!(
            r#"{{"format": "aiop-graph", "version": 1, "nodes": [{}]}}"#,
            nodes.join(",")
        ),
    )
    .unwrap();
    let o = aiop(
        &[
            "search",
            "--space",
            "nb201",
            "--task",
            "cifar10",
            "--algorithm",
            "flops",
            "--start-graph",
            big.to_str().unwrap(),
        ],
        "",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("4097 nodes, over the limit of 4096"), "{err}");
}

#[test]
fn a_graph_file_error_is_said_once_and_overflowing_flops_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.json");
    let file = path.to_str().unwrap();
    std::fs::write(&path, r#"{"format": "aiop-graph", "nodes": []}"#).unwrap();
    let o = aiop(&["graph", "--file", file], "");
    assert_eq!(o.status.code(), Some(65));
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(err.matches("missing field `version`").count(), 1, "{err}");
    assert!(err.contains("g.json: JSON graph: missing field"), "{err}");
    // 2^20 channels in and out at 2^20 x 2^20: 2^80 multiply-accumulates.
    let m = 1 << 20;
    std::fs::write(
        &path,
        format!(
            r#"{{"format": "aiop-graph", "version": 1, "nodes": [
  {{"id": "x", "op": "input", "out": [{m}, {m}, {m}]}},
  {{"id": "huge", "op": "conv", "inputs": ["x"], "out": [{m}, {m}, {m}], "kernel": 1}}
]}}"#
        ),
    )
    .unwrap();
    let o = aiop(&["graph", "--file", file], "");
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(o.status.code(), Some(65), "{err}");
    assert!(
        err.contains("g.json") && err.contains("node 'huge'") && err.contains("overflow"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn store_commands_create_no_store_they_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("stat");
    let o = aiop(&["store", "export", "--state", typo.to_str().unwrap()], "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(66), "{err}");
    assert!(err.contains("no store at") && err.contains("stat"), "{err}");
    assert!(o.stdout.is_empty() && !typo.exists());
    let o = aiop(&["store", "compact", "--state", typo.to_str().unwrap()], "");
    assert_eq!(o.status.code(), Some(66));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing compacted"));
    // An import opens its input first.
    let missing = dir.path().join("nope.jsonl");
    let o = aiop(
        &[
            "store",
            "import",
            "--state",
            typo.to_str().unwrap(),
            missing.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(o.status.code(), Some(66));
    assert!(String::from_utf8_lossy(&o.stderr).contains("FILE "));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope.jsonl: no such file"));
    assert!(!typo.exists());
    // A malformed export is bad input data, and makes no store: an empty file (a backup that
    // failed) is no export either.
    let header = format!("{{\"aiop_store\": {}}}\n", aiop::store::SCHEMA_VERSION);
    for (k, bad) in [
        "garbage\n".to_string(),
        format!("{header}{{\"tree\": \"nope\"}}\n"),
        String::new(),
    ]
    .into_iter()
    .enumerate()
    {
        let f = dir.path().join(format!("bad{k}.jsonl"));
        std::fs::write(&f, &bad).unwrap();
        let state = dir.path().join(format!("s{k}"));
        let o = aiop(
            &[
                "store",
                "import",
                "--state",
                state.to_str().unwrap(),
                f.to_str().unwrap(),
            ],
            "",
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(65), "{bad}: {err}");
        assert!(
            err.contains(&format!("import line {}", [1, 2, 1][k])),
            "{err}"
        );
        assert!(!state.exists(), "{bad}: a store was made");
    }
}

#[test]
fn a_task_the_base_model_does_not_know_is_a_data_error_before_any_work() {
    // DARTS is a space of the tables, but the embedded models were not pretrained on it: both
    // the search and the prediction refuse at once, with the same exit code, naming the task.
    let search = aiop(
        &[
            "search", "--space", "darts", "--task", "cifar10", "--budget", "10", "--quiet",
        ],
        "",
    );
    let predict = aiop(&["predict", "--space", "darts", "--task", "cifar10"], "");
    for o in [search, predict] {
        assert_eq!(o.status.code(), Some(65));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("no label statistics for darts/cifar10"),
            "{err}"
        );
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn a_shape_inconsistent_graph_file_names_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(
        &path,
        r#"{"format": "aiop-graph", "version": 1, "nodes": [
  {"id": "x", "op": "input", "out": [3, 32, 32]},
  {"id": "stem", "op": "conv", "inputs": ["x"], "out": [16, 32, 32], "kernel": 3, "padding": 1},
  {"id": "down", "op": "conv", "inputs": ["stem"], "out": [32, 16, 16], "kernel": 3, "stride": 2, "padding": 1},
  {"id": "sum", "op": "add", "inputs": ["stem", "down"]}
]}"#,
    )
    .unwrap();
    let o = aiop(&["graph", "--file", path.to_str().unwrap()], "");
    assert_eq!(o.status.code(), Some(65));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(
        err.contains("bad.json") && err.contains("node 'sum'"),
        "{err}"
    );
}

/// Run `aiop` with its stdout a pipe whose reader has gone before anything is printed (as
/// `| head` does after its lines): the exit status, and stderr.
fn aiop_into_closed_pipe(args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_aiop"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    (o.status, String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn results_files_are_written_when_stdout_has_no_reader() {
    let dir = tempfile::tempdir().unwrap();
    let res = dir.path().join("r.json");
    let res_s = res.to_str().unwrap();
    let (status, err) = aiop_into_closed_pipe(&[
        "search",
        "--space",
        "nb201",
        "--task",
        "cifar10",
        "--fitness",
        "oracle",
        "--budget",
        "40",
        "--seed",
        "1",
        "--json",
        res_s,
        "--quiet",
    ]);
    assert!(status.success(), "{err}");
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&res).unwrap()).unwrap();
    assert_eq!(file["results"].as_array().unwrap().len(), 10);
    let g = dir.path().join("best.json");
    let (status, err) = aiop_into_closed_pipe(&["export", res_s, "--graph", g.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    let o = aiop(&["graph", "--file", g.to_str().unwrap()], "");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["hash"], file["results"][0]["hash"]);
    // An experiment prints its rows as it goes; the reader's going does not end it first.
    let ex = dir.path().join("ex.json");
    let (status, err) = aiop_into_closed_pipe(&[
        "experiment",
        "search",
        "--space",
        "nb201",
        "--task",
        "cifar10",
        "--methods",
        "random",
        "--seeds",
        "2",
        "--queries",
        "20",
        "--json",
        ex.to_str().unwrap(),
    ]);
    assert!(status.success(), "{err}");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&ex).unwrap()).unwrap();
    assert_eq!(doc["runs"].as_array().unwrap().len(), 2);
}

#[test]
fn search_writes_results_that_export_as_arch_and_graph() {
    let dir = tempfile::tempdir().unwrap();
    let res = dir.path().join("r.json");
    let o = aiop(
        &[
            "search",
            "--space",
            "tnb101_macro",
            "--task",
            "segmentsemantic",
            "--fitness",
            "oracle",
            "--budget",
            "60",
            "--population",
            "20",
            "--sample",
            "5",
            "--max-mflops",
            "20000",
            "--seed",
            "3",
            "--json",
            res.to_str().unwrap(),
            "--quiet",
        ],
        "",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&res).unwrap()).unwrap();
    let results = file["results"].as_array().unwrap();
    assert_eq!(results.len(), 10);
    assert!(file["evaluations"].as_u64().unwrap() <= 60);
    for r in results {
        assert!(r["mflops"].as_f64().unwrap() <= 20000.0);
        // The oracle column is the table's label; with the oracle fitness it equals the score.
        assert_eq!(r["oracle"], r["predicted"]);
    }
    let g = dir.path().join("best.json");
    let o = aiop(
        &[
            "export",
            res.to_str().unwrap(),
            "--graph",
            g.to_str().unwrap(),
        ],
        "",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let arch = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert_eq!(arch, results[0]["arch"].as_str().unwrap());
    let o = aiop(&["graph", "--file", g.to_str().unwrap()], "");
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["hash"], results[0]["hash"]);
    // Ranks are 0-based: past the last is a usage error that says which there are.
    let res_s = res.to_str().unwrap();
    let o = aiop(&["export", res_s, "--rank", "10"], "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--rank 10:") && err.contains("holds 10 result(s), ranks 0 to 9"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
    let o = aiop(&["export", res_s, "--rank", "9"], "");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A result that makes no network is bad data, named by file, result and field; a hash
    // that is not its network's is said, the network exported all the same.
    let edited = dir.path().join("edited.json");
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = file.clone();
        f(&mut v);
        std::fs::write(&edited, v.to_string()).unwrap();
        aiop(&["export", edited.to_str().unwrap()], "")
    };
    for (change, says) in [
        (
            &(|v: &mut serde_json::Value| {
                v["results"][0].as_object_mut().unwrap().remove("arch");
            }) as &dyn Fn(&mut serde_json::Value),
            "result 0 has neither an architecture (arch) nor a graph",
        ),
        (
            &|v: &mut serde_json::Value| v["results"][0]["arch"] = "bogus".into(),
            "result 0 field 'arch': tnb101_macro: cannot parse 'bogus'",
        ),
        (
            &|v: &mut serde_json::Value| v["spec"]["task"] = "cifar10".into(),
            "result 0 field 'arch': space tnb101_macro has no task 'cifar10'",
        ),
    ] {
        let o = edit(change);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(65), "{err}");
        assert!(err.contains(&format!("edited.json: {says}")), "{err}");
    }
    let o = edit(&|v| v["results"][0]["hash"] = "0".repeat(32).into());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("field 'hash': the result's hash 0000"),
        "{err}"
    );
    // Not a results file: bad input data.
    let garbage = dir.path().join("garbage.json");
    for text in ["not json", r#"{"spec": 3}"#, r#"{"id": "x"}"#] {
        std::fs::write(&garbage, text).unwrap();
        let o = aiop(&["export", garbage.to_str().unwrap()], "");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(65), "{text}: {err}");
        assert!(err.contains("garbage.json: "), "{err}");
    }
    // A daemon search that ended without results (failed, or cancelled while queued) is
    // said to have ended.
    for status in ["cancelled", "failed"] {
        let rec = serde_json::json!({"id": "s1", "status": status, "spec": {"search": file["spec"]},
            "results": null});
        std::fs::write(&garbage, rec.to_string()).unwrap();
        let o = aiop(&["export", garbage.to_str().unwrap()], "");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("search s1 has ended ({status}) without results")),
            "{err}"
        );
    }
}

#[test]
fn search_with_a_task_model_scores_as_predict_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("arch,value\n");
    for (arch, value) in crate::common::nb201_cifar10_rows(6) {
        csv.push_str(&format!("{arch},{value}\n"));
    }
    std::fs::write(dir.path().join("s.csv"), csv).unwrap();
    let t = dir.path().join("t.toml");
    std::fs::write(
        &t,
        "name = \"c10\"\nspace = \"nb201\"\nhead = \"cifar10\"\nsamples = \"s.csv\"\n\
         [finetune]\nepochs = 1\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    let st = state.to_str().unwrap();
    let t = t.to_str().unwrap();
    aiop_ok(&["finetune", "--task", t, "--state", st, "-q"], "");
    // Space and head come from the task model.
    let res = dir.path().join("r.json");
    let r = res.to_str().unwrap();
    let small = [
        "--budget",
        "48",
        "--population",
        "16",
        "--sample",
        "4",
        "--batch",
        "8",
    ];
    let mut args = vec!["search", "--tuned", "c10", "--state", st, "--seed", "1"];
    args.extend(small);
    args.extend(["--json", r, "--quiet"]);
    let printed = String::from_utf8(aiop_ok(&args, "")).unwrap();
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&res).unwrap()).unwrap();
    assert_eq!(file["spec"]["space"], "nb201");
    assert_eq!(file["spec"]["task"], "cifar10");
    let results = file["results"].as_array().unwrap();
    assert_eq!(results.len(), 10);
    // The task is the user's: the benchmark's labels of the same networks (another task's)
    // are no oracle for it, in the file or on the screen.
    assert!(results.iter().all(|r| r["oracle"].is_null()), "{file}");
    assert_eq!(printed.lines().count(), 10, "{printed}");
    for l in printed.lines() {
        let oracle = l
            .split(" oracle ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next();
        assert_eq!(oracle, Some("-"), "{l}");
    }
    let archs: Vec<&str> = results
        .iter()
        .map(|r| r["arch"].as_str().unwrap())
        .collect();
    let out = aiop_ok(
        &["predict", "--tuned", "c10", "--state", st],
        &format!("{}\n", archs.join("\n")),
    );
    let predicted = crate::common::predictions(&out);
    for (r, p) in results.iter().zip(&predicted) {
        let s = r["predicted"].as_f64().unwrap();
        assert!((s - p).abs() < 1e-9, "search {s} vs predict {p}");
    }
    assert!(
        predicted.windows(2).all(|w| w[0] >= w[1]),
        "best first: {predicted:?}"
    );
    // A FLOP reduction from the best of those: measured from its prediction it finds cheaper
    // networks within the tolerance of it; from a measured value far above every prediction
    // (--reference) it keeps the start alone.
    let reduce = |reference: Option<&str>| {
        let mut args = vec![
            "search",
            "--tuned",
            "c10",
            "--state",
            st,
            "--algorithm",
            "flops",
            "--start",
            archs[0],
            "--tolerance",
            "5",
            "--budget",
            "200",
            "--json",
            r,
            "-q",
        ];
        if let Some(v) = reference {
            args.extend(["--reference", v]);
        }
        aiop_ok(&args, "");
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(&res).unwrap()).unwrap()
    };
    let free = reduce(None);
    assert!(free["results"].as_array().unwrap().len() > 1, "{free}");
    let high = format!("{}", predicted[0] + 100.0);
    let anchored = reduce(Some(&high));
    assert_eq!(anchored["spec"]["reference"], predicted[0] + 100.0);
    let kept = anchored["results"].as_array().unwrap();
    assert_eq!(kept.len(), 1, "{anchored}");
    assert_eq!(kept[0]["arch"], archs[0]);
    // Another space or head than the model's is refused, naming the model's.
    let o = aiop(
        &[
            "search", "--tuned", "c10", "--state", st, "--space", "nb201", "--task", "cifar100",
        ],
        "",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--space nb201 --task cifar10"), "{err}");
    // A task model is no base to fine-tune from (it was taken, without its companion).
    let version = std::fs::read_dir(state.join("models").join("c10"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    // Its companion neither (it passed as a pretrained checkpoint).
    let companion = version.join("companion");
    assert!(companion.is_dir(), "the default blend saves one");
    for model in [&version, &companion] {
        let model = model.to_str().unwrap();
        let o = aiop(
            &[
                "finetune", "--task", t, "--state", st, "--model", model, "-q",
            ],
            "",
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{model}: {err}");
        assert!(err.contains("that is a task model"), "{model}: {err}");
    }
    // A missing task model is named.
    let o = aiop(&["search", "--tuned", "nope", "--state", st], "");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no task model 'nope'"));
    // A lower-is-better task (the same labels as an error): the reference written with the
    // results is the one given, in the task's units (it was written negated).
    let low = dir.path().join("low.toml");
    std::fs::write(
        &low,
        "name = \"low\"\nspace = \"nb201\"\nhead = \"cifar10\"\nsamples = \"s.csv\"\n\
         higher_is_better = false\n[finetune]\nepochs = 1\n",
    )
    .unwrap();
    aiop_ok(
        &[
            "finetune",
            "--task",
            low.to_str().unwrap(),
            "--state",
            st,
            "-q",
        ],
        "",
    );
    aiop_ok(
        &[
            "search",
            "--tuned",
            "low",
            "--state",
            st,
            "--algorithm",
            "flops",
            "--start",
            archs[0],
            "--budget",
            "20",
            "--reference",
            "7.5",
            "--json",
            r,
            "-q",
        ],
        "",
    );
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&res).unwrap()).unwrap();
    assert_eq!(file["spec"]["reference"], 7.5, "{file}");
}

#[test]
fn predictor_commands_refuse_bad_settings_by_name_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let code = |args: &[&str]| {
        let o = aiop(args, "");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // Usage errors (2): no seeds, an unknown protocol, the shipped model as --out.
    let (c, e) = code(&[
        "eval",
        "--protocol",
        "unseen-task",
        "--quick",
        "--seeds",
        "0",
    ]);
    assert_eq!(c, Some(2), "{e}");
    assert!(e.contains("--seeds"), "{e}");
    let (c, e) = code(&["eval", "--protocol", "unseen-everything", "--quick"]);
    assert_eq!(c, Some(2), "{e}");
    assert!(e.contains("--protocol"), "{e}");
    for shipped in ["search_spaces/predictor", "search_spaces/predictor/plain"] {
        let (c, e) = code(&["pretrain", "--out", shipped]);
        assert_eq!(c, Some(2), "{e}");
        assert!(e.contains("shipped model"), "{e}");
    }
    // A task given twice (it would be trained on twice over); a batch of no graphs.
    let out = dir.path().join("twice");
    let (c, e) = code(&[
        "pretrain",
        "--tasks",
        "nb201/cifar10,nb201/cifar100,nb201/cifar10",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(c, Some(2), "{e}");
    assert!(e.contains("nb201/cifar10 is listed twice"), "{e}");
    assert!(!out.exists());
    let (c, e) = code(&[
        "predict",
        "--space",
        "nb201",
        "--task",
        "cifar10",
        "--batch-size",
        "0",
    ]);
    assert_eq!(c, Some(2), "{e}");
    assert!(e.contains("--batch-size"), "{e}");
    // Bad data (65), naming the file and the field: a width far over any allocation, a NaN
    // learning rate (JSON has no NaN: a negative one), before anything is allocated or drawn.
    for (body, field) in [
        (r#"{"model": {"hidden": 1099511627776}}"#, "model.hidden"),
        (r#"{"train": {"lr": -1.0}}"#, "train.lr"),
        (r#"{"train": {"batch_size": 0}}"#, "train.batch_size"),
    ] {
        let cfg = dir.path().join("cfg.json");
        std::fs::write(&cfg, body).unwrap();
        let out = dir.path().join("out");
        let (c, e) = code(&[
            "pretrain",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(c, Some(65), "{body}: {e}");
        assert!(e.contains(field) && e.contains("cfg.json"), "{body}: {e}");
        assert!(!out.exists(), "{body}");
    }
    // A very long bad line is quoted capped, not whole.
    let long = format!("|{}|", "x".repeat(5000));
    let o = aiop(&["predict", "--space", "nb201", "--task", "cifar10"], &long);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("stdin line 1") && e.contains('…'), "{e}");
    assert!(e.len() < 1000, "{} bytes: {e}", e.len());
}

#[test]
fn search_and_export_refuse_bad_arguments_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let base = "search --space nb201 --task cifar10 --fitness oracle";
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = base.split(' ').collect();
        if !extra.contains(&"--budget") {
            args.extend(["--budget", "16"]);
        }
        args.push("--quiet");
        args.extend(extra);
        let o = aiop(&args, "");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        (o.status.code(), err, o.stdout)
    };
    let bad_graph = dir.path().join("bad-start.json");
    std::fs::write(&bad_graph, "{\"format\": \"aiop-graph\"").unwrap();
    let bad_graph = bad_graph.to_str().unwrap();
    let no_dir = dir.path().join("no/such/folder/r.json");
    let no_dir = no_dir.to_str().unwrap();
    for (extra, code, says) in [
        // Options only a FLOP reduction reads (usage: 2), named as the command line spells them.
        (
            &["--tolerance", "1"][..],
            2,
            "--tolerance: only a FLOP reduction",
        ),
        (
            &["--two-sided", "false"],
            2,
            "--two-sided: only a FLOP reduction",
        ),
        (
            &["--algorithm", "random", "--radius", "2"],
            2,
            "--radius: only a FLOP reduction",
        ),
        (
            &["--start-graph", bad_graph],
            2,
            "--start-graph: only a FLOP reduction",
        ),
        // Evolution's tournament, given to random search; a front flag to a FLOP reduction.
        (
            &["--algorithm", "random", "--population", "8"],
            2,
            "--population: only evolution (--algorithm evolution) reads it, not random",
        ),
        (
            &["--algorithm", "flops", "--start", "x", "--multi-objective"],
            2,
            "--multi-objective: only evolution or random search (--algorithm evolution or \
             --algorithm random) reads it, not flops",
        ),
        // A spec that cannot be searched is bad usage, each reason its own.
        (&["--budget", "0"], 2, "budget must be at least 1"),
        (&["--batch", "0"], 2, "batch must be at least 1"),
        (
            &["--max-mflops", "NaN"],
            2,
            "max_mflops must be a positive number",
        ),
        (
            &["--max-mparams=-1"],
            2,
            "max_mparams must be a positive number",
        ),
        (
            &["--max-mflops", "0.001"],
            2,
            "satisfies the constraints (max_mflops 0.001)",
        ),
        (&["--top", "0"], 2, "--top"),
        // A start that is not a network: bad data (65), named.
        (
            &["--algorithm", "flops", "--start-graph", bad_graph],
            65,
            "--start-graph ",
        ),
        (
            &["--algorithm", "flops", "--start", "|nope~0|"],
            65,
            "--start '|nope~0|'",
        ),
        // A destination that cannot be written, before the search runs.
        (&["--json", no_dir], 2, "--json "),
    ] {
        let (c, err, out) = run(extra);
        assert_eq!(c, Some(code), "{extra:?}: {err}");
        assert!(err.contains(says), "{extra:?}: {err}");
        assert!(out.is_empty(), "{extra:?}: nothing is searched");
    }
    let (_, err, _) = run(&["--algorithm", "flops", "--start-graph", bad_graph]);
    assert!(err.contains("bad-start.json"), "{err}");
    let (_, err, _) = run(&["--json", no_dir]);
    assert!(err.contains(no_dir), "{err}");
    // A fitness that needs a space and a task, without them (a free graph's reduction); an
    // unknown task: usage (2).
    let o = aiop(
        &[
            "graph", "--space", "nb201", "--task", "cifar10", "--arch", A, "--format", "graph",
        ],
        "",
    );
    let good_graph = dir.path().join("start.json");
    std::fs::write(&good_graph, &o.stdout).unwrap();
    let good_graph = good_graph.to_str().unwrap();
    // Each a command line (its words split at spaces: the paths here have none), what its
    // error says, and whether it must print nothing.
    let refused = |line: &str, says: &str, silent: bool| {
        let args: Vec<&str> = line.split(' ').collect();
        let o = aiop(&args, "");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        if silent {
            assert!(o.stdout.is_empty(), "{args:?}: nothing is run");
        }
    };
    let free = format!("search --algorithm flops --start-graph {good_graph}");
    for (line, says) in [
        (
            format!("{free} --fitness oracle"),
            "the oracle fitness needs --space and --task",
        ),
        (
            free.clone(),
            "the predictor fitness needs --space and --task",
        ),
        ("search --space nb201".into(), "need a space and a task"),
        (
            "search --space nb201 --task cifar10 --multi-objective --top 5".into(),
            "--top: only a single-objective",
        ),
        (
            "search --space nb201 --task cifar10 --batch 18446744073709551615".into(),
            "batch 18446744073709551615 is over the limit of 4096",
        ),
        ("search --task cifar1000".into(), "--task: unknown task"),
        ("search --space nb201 --task jigsaw".into(), "--task: "),
        // So in every command that takes one (it was bad data, 65, elsewhere).
        (
            format!("graph --space nb201 --task jigsaw --arch {A}"),
            "--task: space nb201 has no task 'jigsaw'",
        ),
        (
            "predict --space nb201 --task jigsaw".into(),
            "--task: space nb201 has no task 'jigsaw'",
        ),
    ] {
        refused(&line, says, false);
    }
    // Experiments and evaluations refuse what their arguments alone tell, before any output
    // or work: a --json that cannot be written (checked after the whole run, it lost it), no
    // task (nothing ran, exit 0), no seeds, an unknown method, a space whose table labels a
    // sample only (the search failed at its first unlabelled network, exit 1).
    let c10 = "experiment search --space nb201 --task cifar10";
    let nb101 = "experiment flops --space nb101 --task cifar10";
    for (line, says) in [
        (
            format!("eval --protocol unseen-task --quick --json {no_dir}"),
            "--json ",
        ),
        ("experiment search --space nb201".into(), "--task"),
        (format!("{c10} --seeds 0"), "--seeds"),
        (format!("{c10} --seeds 10001"), "--seeds"),
        (
            format!("{c10} --queries 1000001"),
            "over the limit of 1000000",
        ),
        (
            "eval --protocol unseen-task --quick --config c.json".into(),
            "cannot be used with",
        ),
        ("experiment base --eval 0".into(), "--eval"),
        (
            "eval --protocol unseen-task --seeds 10001".into(),
            "--seeds: 10001",
        ),
        (
            format!("{c10} --methods bogus"),
            "unknown method 'bogus' (expected random, evolution, predictor)",
        ),
        (format!("{c10} --json {no_dir}"), "--json "),
        (
            "experiment search --space nb101 --task cifar10".into(),
            "labels a sample of its networks (500 rows)",
        ),
        (
            format!("experiment flops --space darts --task cifar10 --json {no_dir}"),
            "--json ",
        ),
        (
            format!("{nb101},bogus"),
            "--task: space nb101 has no task 'bogus'",
        ),
        (format!("{nb101} --samples 1"), "--samples: 1"),
        (format!("{nb101} --lr 0"), "--lr: 0 is not in (0, 1]"),
        (format!("{c10} --queries 5,0"), "--queries: 0"),
        (format!("{c10},cifar10"), "--task: cifar10 is listed twice"),
        (
            format!("{c10} --queries 20,20"),
            "--queries: 20 is listed twice",
        ),
        (
            format!("{c10} --methods predictor --per-round 0"),
            "--per-round: 0 is not in 1..=",
        ),
        (
            format!("{c10} --methods predictor --rank-weight nan"),
            "--rank-weight: NaN",
        ),
        (
            format!("{c10} --methods predictor --local-radius 0"),
            "--local-radius: 0",
        ),
        (
            format!("{c10} --methods random,random"),
            "--methods: random is listed twice",
        ),
        (
            format!("{nb101} --two-sided true,true"),
            "--two-sided: true is listed twice",
        ),
        (format!("{nb101} --budget 0"), "budget must be at least 1"),
        (format!("{nb101} --radius 0"), "radius must be at least 1"),
        ("experiment base --fit 3".into(), "--fit"),
        (
            "experiment base --config c.json".into(),
            "--config and --plain-config go together",
        ),
        ("bench graph --task cifar10".into(), "--space"),
        ("bench graph --graphs 0".into(), "--graphs"),
        (
            "bench search --batch 16,0".into(),
            "batch must be at least 1",
        ),
        ("bench graph --rounds 0".into(), "--rounds"),
        (
            format!("pretrain --tasks nb201/bogus --out {no_dir}"),
            "--tasks: space nb201 has no task 'bogus'",
        ),
        (
            "search --space darts --task cifar10 --fitness oracle".into(),
            "labels a sample of its networks (725 rows)",
        ),
        (
            format!("{free} --space nb201 --task cifar10 --fitness oracle"),
            "a --start-graph has no label",
        ),
    ] {
        refused(&line, says, true);
    }
    // An unknown space is a usage error listing the spaces.
    let o = aiop(&["search", "--space", "nb999", "--task", "cifar10"], "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("nb201") && err.contains("tnb101_macro"),
        "{err}"
    );
    // A FLOP reduction takes them all, --two-sided and --tolerance included.
    let res = dir.path().join("r.json");
    let (c, err, _) = run(&[
        "--algorithm",
        "flops",
        "--start",
        A,
        "--tolerance",
        "1",
        "--two-sided",
        "false",
        "--radius",
        "1",
        "--json",
        res.to_str().unwrap(),
    ]);
    assert_eq!(c, Some(0), "{err}");
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&res).unwrap()).unwrap();
    assert_eq!(file["spec"]["tolerance"], 1.0);
    assert!(file["spec"].get("two_sided").is_none(), "{file}");
    // export checks where it writes first: nothing is printed.
    let o = aiop(&["export", res.to_str().unwrap(), "--graph", no_dir], "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("--graph {no_dir}")), "{err}");
    assert!(o.stdout.is_empty());
}
