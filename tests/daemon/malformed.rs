//! Acceptance: malformed task files, each of another kind, each get a precise `.error` (file,
//! line, field where they apply) while the daemon stays up and keeps answering predictions; a
//! fixed file clears its report; `POST /v1/tasks` refuses the same mistakes before they reach the
//! folder; the CLI client; SIGTERM drains to exit 0.

use std::process::Command;
use std::time::Duration;

use super::*;

/// A malformed task file: its name, its content, extra files beside it, and what its `.error`
/// report must contain.
type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, String)>, Vec<&'a str>);

/// The graph-format example of docs/graph-format.md, with `down` declared as `out`.
fn graph_json(down_out: &str) -> String {
    format!(
        r#"{{"format": "aiop-graph", "version": 1, "nodes": [
  {{"id": "x",    "op": "input",  "out": [3, 32, 32]}},
  {{"id": "stem", "op": "conv",   "inputs": ["x"], "out": [16, 32, 32], "kernel": 3, "padding": 1}},
  {{"id": "bn",   "op": "batch_norm", "inputs": ["stem"]}},
  {{"id": "act",  "op": "relu",   "inputs": ["bn"]}},
  {{"id": "down", "op": "conv",   "inputs": ["act"], "out": {down_out}, "kernel": 3, "stride": 2, "padding": 1}},
  {{"id": "gap",  "op": "global_avg_pool", "inputs": ["down"]}},
  {{"id": "fc",   "op": "linear", "inputs": ["gap"], "out": [10, 1, 1], "bias": true}},
  {{"id": "y",    "op": "output", "inputs": ["fc"]}}
]}}"#
    )
}

fn graph_task(name: &str, samples: &str) -> String {
    format!("name = \"{name}\"\nspace = \"graph\"\nsamples = \"{samples}\"\n")
}

#[test]
fn malformed_task_files_get_precise_errors_while_predictions_go_on() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    // What a daemon killed mid-submission left behind is cleared at start.
    let stale = state.join("tasks").join(".submit-1-0");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("t.toml"), "x").unwrap();
    let mut d = Daemon::start(&state);
    let h = d.get("/healthz");
    assert_eq!((h.status, h.json()["status"].as_str()), (200, Some("ok")));

    let tasks = d.tasks_dir();
    assert!(tasks.is_dir(), "the watched folder is created");
    assert!(!stale.exists(), "the stale staging folder is removed");
    drop_file(&tasks, "c10.csv", nb201_samples(20).as_bytes());
    drop_file(
        &tasks,
        "c10.toml",
        quick_task("nb201-c10", "c10.csv").as_bytes(),
    );
    let t = wait_for("the task", || d.task("nb201-c10"));
    assert_eq!(t["versions"], 1);
    let rec = d.get("/v1/tasks/nb201-c10").json();
    assert_eq!(rec["versions"][0]["samples"], 20);
    assert!(!tasks.join("c10.toml.error").exists());

    std::fs::write(state.join("outside.csv"), nb201_samples(3)).unwrap();
    let five = nb201_samples(5);
    let second = five.lines().nth(1).unwrap().to_string();
    let mut binary = b"name = \"bin\"\n".to_vec();
    binary.extend_from_slice(&[0, 159, 146, 150, 0, 1, 2]);
    let mut latin1 = b"name = \"caf".to_vec();
    latin1.extend_from_slice(&[0xe9, b'"', b'\n']);
    let label = |csv: &str, line: usize, v: &str| -> String {
        // Replace the label of CSV line `line` (1-based, header = 1) with `v`.
        csv.lines()
            .enumerate()
            .map(|(k, l)| {
                if k + 1 == line {
                    format!("{},{v}\n", l.rsplit_once(',').unwrap().0)
                } else {
                    format!("{l}\n")
                }
            })
            .collect()
    };
    let cases: Vec<Case> = vec![
        (
            "syntax.toml",
            b"name = \"s\"\nspace = = \"x\"\n".to_vec(),
            vec![],
            vec!["syntax.toml", "line: 2"],
        ),
        (
            "space.toml",
            task_toml("sp", "c10.csv")
                .replace("nb201", "nb999")
                .into_bytes(),
            vec![],
            vec!["space.toml", "line: 2", "field: space", "nb999"],
        ),
        (
            "head.toml",
            task_toml("hd", "c10.csv")
                .replace("cifar10", "jigsaw")
                .into_bytes(),
            vec![],
            vec!["head.toml", "line: 3", "field: head", "jigsaw"],
        ),
        (
            "nosamples.toml",
            task_toml("ns", "missing.csv").into_bytes(),
            vec![],
            vec!["nosamples.toml", "line: 4", "field: samples", "missing.csv"],
        ),
        (
            "value.toml",
            task_toml("v", "value.csv").into_bytes(),
            vec![("value.csv", label(&five, 2, "n/a"))],
            vec!["value.csv", "line: 2", "field: value", "n/a"],
        ),
        (
            "nan.toml",
            task_toml("nan", "nan.csv").into_bytes(),
            vec![("nan.csv", label(&five, 3, "NaN"))],
            vec!["nan.csv", "line: 3", "field: value", "not a finite number"],
        ),
        (
            "inf.toml",
            task_toml("inf", "inf.csv").into_bytes(),
            vec![("inf.csv", label(&five, 4, "-inf"))],
            vec!["inf.csv", "line: 4", "field: value", "-inf"],
        ),
        (
            "overflow.toml",
            task_toml("ovf", "overflow.csv").into_bytes(),
            vec![("overflow.csv", label(&five, 5, "1e999"))],
            vec!["overflow.csv", "line: 5", "field: value", "1e999"],
        ),
        (
            "arch.toml",
            task_toml("a", "arch.csv").into_bytes(),
            vec![(
                "arch.csv",
                five.replacen("avg_pool_3x3~0", "max_pool_9x9~0", 1),
            )],
            vec!["arch.csv", "line: 2", "field: arch"],
        ),
        (
            "duprow.toml",
            task_toml("dr", "duprow.csv").into_bytes(),
            vec![("duprow.csv", format!("{five}{second}\n"))],
            vec!["duprow.csv", "line: 7", "field: arch", "first at line 2"],
        ),
        (
            "header.toml",
            task_toml("hdr", "header.csv").into_bytes(),
            vec![("header.csv", five.replacen("arch,value", "arch,acc", 1))],
            vec!["header.csv", "line: 1", "field: header", "arch,acc"],
        ),
        (
            "empty.toml",
            task_toml("em", "empty.csv").into_bytes(),
            vec![("empty.csv", "arch,value\n".into())],
            vec!["empty.toml", "line: 4", "field: samples", "has 0 labelled"],
        ),
        (
            "outside.toml",
            task_toml("o", "../outside.csv").into_bytes(),
            vec![],
            vec!["outside.toml", "field: samples", "outside the task folder"],
        ),
        (
            "unknown.toml",
            format!("{}colour = \"red\"\n", task_toml("u", "c10.csv")).into_bytes(),
            vec![],
            vec!["unknown.toml", "line: 5", "field: colour"],
        ),
        (
            "dupkey.toml",
            format!("name = \"x\"\n{}", task_toml("dk", "c10.csv")).into_bytes(),
            vec![],
            vec!["dupkey.toml", "line: 2", "field: name", "duplicate key"],
        ),
        (
            "dupname.toml",
            task_toml("nb201-c10", "c10.csv").into_bytes(),
            vec![],
            vec!["dupname.toml", "field: name", "c10.toml"],
        ),
        (
            "mode.toml",
            format!("{}mode = \"sometimes\"\n", task_toml("m", "c10.csv")).into_bytes(),
            vec![],
            vec!["mode.toml", "line: 5", "field: mode", "sometimes"],
        ),
        (
            "type.toml",
            format!("{}higher_is_better = \"yes\"\n", task_toml("ty", "c10.csv")).into_bytes(),
            vec![],
            vec!["type.toml", "line: 5", "field: higher_is_better"],
        ),
        (
            "badname.toml",
            task_toml("a b", "c10.csv").into_bytes(),
            vec![],
            vec!["badname.toml", "line: 1", "field: name", "'a b'"],
        ),
        (
            "budget.toml",
            format!("{}\n[search]\nbudget = 0\n", task_toml("bu", "c10.csv")).into_bytes(),
            vec![],
            vec!["budget.toml", "line: 7", "field: search.budget"],
        ),
        (
            "epochs.toml",
            format!("{}[finetune]\nepochs = -3\n", task_toml("ep", "c10.csv")).into_bytes(),
            vec![],
            vec!["epochs.toml", "line: 6", "field: finetune.epochs", "-3"],
        ),
        (
            "badgraph.toml",
            graph_task("bg", "badgraph.csv").into_bytes(),
            vec![
                (
                    "g_bad.json",
                    "{\"format\": \"aiop-graph\", \"nodes\": [".into(),
                ),
                ("badgraph.csv", "graph,value\ng_bad.json,0.5\n".into()),
            ],
            vec!["g_bad.json", "field: graph", "samples line 2"],
        ),
        (
            "shape.toml",
            graph_task("sh", "shape.csv").into_bytes(),
            vec![
                ("g_ok.json", graph_json("[32, 16, 16]")),
                ("g_shape.json", graph_json("[32, 32, 32]")),
                (
                    "shape.csv",
                    "graph,value\ng_ok.json,0.5\ng_shape.json,0.7\n".into(),
                ),
            ],
            vec![
                "g_shape.json",
                "field: graph",
                "node 'down'",
                "samples line 3",
            ],
        ),
        (
            "binary.toml",
            binary,
            vec![],
            vec!["binary.toml", "binary file"],
        ),
        (
            "latin1.toml",
            latin1,
            vec![],
            vec!["latin1.toml", "not UTF-8"],
        ),
    ];
    for (name, content, extra, _) in &cases {
        for (f, c) in extra {
            drop_file(&tasks, f, c.as_bytes());
        }
        drop_file(&tasks, name, content);
    }
    // A 50 MB task file, rejected by its size before any byte is read.
    let huge = std::fs::File::create(tasks.join("huge.toml")).unwrap();
    huge.set_len(50 << 20).unwrap();
    drop(huge);

    let mut kinds = 1; // huge.toml
    for (name, _, _, expect) in &cases {
        let report = wait_for(name, || {
            std::fs::read_to_string(tasks.join(format!("{name}.error"))).ok()
        });
        for e in expect {
            assert!(report.contains(e), "{name}.error lacks '{e}':\n{report}");
        }
        // Up and answering predictions after every bad file.
        d.assert_predicts();
        kinds += 1;
    }
    let report = wait_for("huge.toml.error", || {
        std::fs::read_to_string(tasks.join("huge.toml.error")).ok()
    });
    assert!(
        report.contains("huge.toml") && report.contains("52428800 bytes"),
        "{report}"
    );
    assert!(kinds >= 20, "{kinds} kinds of malformed files");
    assert_eq!(
        d.get("/v1/tasks").json()["tasks"].as_array().unwrap().len(),
        1,
        "only the valid task is recorded"
    );

    // Fixing a file clears its report.
    drop_file(&tasks, "space.toml", quick_task("sp", "c10.csv").as_bytes());
    wait_for("the fixed task", || d.task("sp"));
    wait_for("the stale report to go", || {
        (!tasks.join("space.toml.error").exists()).then_some(())
    });

    let rejected = d.metrics()["aiop_task_files_rejected_total"];
    assert!(rejected >= kinds as f64, "{rejected} rejections");

    // The same mistakes through the API are refused before they reach the folder.
    let bad_value = serde_json::json!({"files": [
        {"path": "api.toml", "content": task_toml("api-task", "api.csv")},
        {"path": "api.csv", "content": label(&five, 3, "n/a")},
    ]});
    let r = d.send("POST", "/v1/tasks", &bad_value);
    assert_eq!(r.status, 422, "{}", r.text());
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("api.csv:3") && msg.contains("field 'value'"),
        "{msg}"
    );
    assert!(!tasks.join("api.toml").exists() && !tasks.join("api.csv").exists());
    let escape = serde_json::json!({"files": [
        {"path": "../evil.toml", "content": "x"}]});
    assert_eq!(d.send("POST", "/v1/tasks", &escape).status, 422);
    // A valid one is moved in and picked up by the watcher (through the CLI client).
    let src = root.path().join("submit");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("api.csv"), &five).unwrap();
    std::fs::write(src.join("api.toml"), quick_task("api-task", "api.csv")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aiop"))
        .args(["submit", "--state"])
        .arg(&state)
        .arg(src.join("api.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["task"], "api-task");
    let t = wait_for("the submitted task", || d.task("api-task"));
    assert_eq!(t["version"], answer["version"]);

    // A submission never replaces another task's files: a samples file it reads (with other
    // content), or a task file that defines it.
    let c10 = std::fs::read_to_string(tasks.join("c10.csv")).unwrap();
    let theirs = serde_json::json!({"files": [
        {"path": "api2.toml", "content": quick_task("api2", "c10.csv")},
        {"path": "c10.csv", "content": five},
    ]});
    let r = d.send("POST", "/v1/tasks", &theirs);
    assert_eq!(r.status, 409, "{}", r.text());
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("files[1]: 'c10.csv' is read by task") && msg.contains("'nb201-c10'"),
        "{msg}"
    );
    let owner = serde_json::json!({"files": [
        {"path": "c10.toml", "content": quick_task("other", "c10.csv")},
        {"path": "c10.csv", "content": c10},
    ]});
    let r = d.send("POST", "/v1/tasks", &owner);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.text().contains("'c10.toml' defines task 'nb201-c10'"),
        "{}",
        r.text()
    );
    assert_eq!(std::fs::read_to_string(tasks.join("c10.csv")).unwrap(), c10);
    assert!(!tasks.join("api2.toml").exists());
    assert_eq!(d.task("nb201-c10").unwrap()["versions"], 1);
    // The same content is no change: a second task may share the samples file.
    let shared = serde_json::json!({"files": [
        {"path": "api3.toml", "content": format!("{}mode = \"zero-shot\"\n", task_toml("api3", "c10.csv"))},
        {"path": "c10.csv", "content": c10},
    ]});
    let r = d.send("POST", "/v1/tasks", &shared);
    assert_eq!(r.status, 202, "{}", r.text());
    // Nor does it write files the task does not read.
    let extra = serde_json::json!({"files": [
        {"path": "api4.toml", "content": quick_task("api4", "api4.csv")},
        {"path": "api4.csv", "content": five},
        {"path": "notes.csv", "content": "x"},
    ]});
    let r = d.send("POST", "/v1/tasks", &extra);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text()
            .contains("files[2]: 'notes.csv' is not a file the task reads"),
        "{}",
        r.text()
    );
    assert!(!tasks.join("notes.csv").exists() && !tasks.join("api4.toml").exists());
    // A NUL (or any control character) in a path is the path's error, not the server's.
    let nul = serde_json::json!({"files": [
        {"path": "nul\u{0}.toml", "content": quick_task("nul", "api.csv")}]});
    let r = d.send("POST", "/v1/tasks", &nul);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("files[0].path"), "{}", r.text());
    // One path cannot be a folder of another, nor go through a file of the folder.
    let nested = serde_json::json!({"files": [
        {"path": "n.toml", "content": quick_task("n", "n/s.csv")},
        {"path": "n", "content": five},
        {"path": "n/s.csv", "content": five},
    ]});
    let r = d.send("POST", "/v1/tasks", &nested);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text()
            .contains("files[2].path: 'n/s.csv' and files[1]'s 'n'"),
        "{}",
        r.text()
    );
    // A path given twice; more files than any task reads (checked without comparing every
    // pair: 100,001 paths were minutes of work).
    let twice = serde_json::json!({"files": [
        {"path": "t.toml", "content": quick_task("t", "t.csv")},
        {"path": "t.csv", "content": five},
        {"path": "t.csv", "content": five},
    ]});
    let r = d.send("POST", "/v1/tasks", &twice);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("files[2]: 't.csv' given twice"),
        "{}",
        r.text()
    );
    let many: Vec<serde_json::Value> = (0..=aiop::api::MAX_SUBMIT_FILES)
        .map(|k| serde_json::json!({"path": format!("f{k}.csv"), "content": ""}))
        .collect();
    let r = d.send("POST", "/v1/tasks", &serde_json::json!({ "files": many }));
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("over the limit of 100000"),
        "{}",
        r.text()
    );
    let through = serde_json::json!({"files": [
        {"path": "through.toml", "content": quick_task("through", "api.csv/s.csv")},
        {"path": "api.csv/s.csv", "content": five},
    ]});
    let r = d.send("POST", "/v1/tasks", &through);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.text().contains("files[1].path")
            && r.text().contains("'api.csv' in the task folder is a file"),
        "{}",
        r.text()
    );
    assert!(!tasks.join("through.toml").exists() && tasks.join("api.csv").is_file());
    // Two submissions of one name under two file names: the second is refused even before
    // the watcher has read the first.
    let named = |file: &str| {
        serde_json::json!({"files": [
            {"path": file, "content": quick_task("twice", "twice.csv")},
            {"path": "twice.csv", "content": five},
        ]})
    };
    let r = d.send("POST", "/v1/tasks", &named("twice1.toml"));
    assert_eq!(r.status, 202, "{}", r.text());
    let r = d.send("POST", "/v1/tasks", &named("twice2.toml"));
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("twice1.toml"), "{}", r.text());
    assert!(!tasks.join("twice2.toml").exists());
    // Its own file again is a resubmission, as before.
    let r = d.send("POST", "/v1/tasks", &named("twice1.toml"));
    assert_eq!(r.status, 202, "{}", r.text());

    // A body must be a JSON object sent as JSON: an array is not read field by field (it
    // started a search), and a body of another type is 415.
    let predict = serde_json::json!(["nb201", "cifar10", null, NB201_ARCH]);
    for path in ["/v1/predict", "/v1/searches", "/v1/graph", "/v1/tasks"] {
        let r = d.send("POST", path, &predict);
        assert_eq!(r.status, 422, "{path}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "invalid_body");
        assert!(r.text().contains("expected a JSON object"), "{}", r.text());
        let r = aiop::client::request(
            &d.addr,
            "POST",
            path,
            &[("Content-Type", "text/plain")],
            Some(b"{}"),
            std::time::Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(r.status, 415, "{path}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "unsupported_media_type");
    }
    assert_eq!(
        d.get("/v1/searches").json()["total"],
        0,
        "no search was started"
    );

    // Errors in the URL's path are JSON errors like the rest; an unknown search is not found.
    let r = d.get("/v1/searches/%ff");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "bad_request", "{}", r.text());
    let r = d.send("DELETE", "/v1/searches/nosuch", &serde_json::Value::Null);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "not_found");

    // A query the task endpoints do not read is refused, naming it (it was ignored).
    for path in ["/v1/tasks?status=ready", "/v1/tasks/nb201-c10?x=1"] {
        let r = d.get(path);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(
            r.text().contains("unknown query parameter"),
            "{path}: {}",
            r.text()
        );
    }
    // The graph endpoint answers real statistics.
    let body = serde_json::json!({"space": "nb201", "task": "cifar10", "archs": [NB201_ARCH]});
    let r = d.send("POST", "/v1/graph", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["graphs"][0]["mparams"].as_f64().unwrap() > 0.0);
    // One architecture or a list, not both (which would come first was a guess).
    for path in ["/v1/graph", "/v1/predict"] {
        let both = serde_json::json!({"space": "nb201", "task": "cifar10",
            "arch": NB201_ARCH, "archs": [NB201_ARCH]});
        let r = d.send("POST", path, &both);
        assert_eq!(r.status, 422, "{path}: {}", r.text());
        assert!(r.text().contains("not both"), "{path}: {}", r.text());
    }

    // The client command, once the task is ready.
    d.wait_ready("nb201-c10");
    let out = Command::new(env!("CARGO_BIN_EXE_aiop"))
        .args(["status", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("nb201-c10") && text.contains("ready"),
        "{text}"
    );
    // The rejected files are listed with their errors, beside the tasks.
    let rejected = d.get("/v1/tasks").json()["rejected"].clone();
    let syntax = rejected
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["file"].as_str().unwrap().ends_with("syntax.toml"))
        .unwrap_or_else(|| panic!("{rejected}"));
    assert!(
        syntax["report"].as_str().unwrap().contains("line: 2"),
        "{syntax}"
    );
    assert!(
        text.contains("task file(s) rejected") && text.contains("syntax.toml: "),
        "{text}"
    );

    d.signal("-TERM");
    let status = d.wait_exit(Duration::from_secs(GRACE_SECS + 3));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    assert!(!state.join("aiop.addr").exists());
}

/// What the task-file check accepts in `[search]` is what the daemon then searches: at each of
/// the daemon's limits the task's search is queued (`build_spec` takes it), one past the limit
/// the file is refused naming the field (taskfile's own unit test has more such values).
#[test]
fn task_file_search_limits_are_the_daemon_s() {
    use aiop::search::{MAX_BATCH, MAX_BUDGET, MAX_POPULATION};
    // searches.rs keeps its own copies of the limits its build_spec enforces.
    assert_eq!(
        (MAX_BUDGET, MAX_BATCH, MAX_POPULATION),
        (
            aiop::searches::MAX_BUDGET,
            aiop::searches::MAX_BATCH,
            aiop::searches::MAX_POPULATION
        )
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.csv"), nb201_samples(3)).unwrap();
    let t = dir.path().join("t.toml");
    let load = |table: &str| {
        std::fs::write(
            &t,
            format!("{}[search]\n{table}\n", task_toml("lim", "s.csv")),
        )
        .unwrap();
        aiop::taskfile::load(&t, &aiop::taskfile::Limits::default())
    };
    let searched = |table: &str| {
        let spec = load(table).unwrap_or_else(|e| panic!("{table}: {e}"));
        let rec = aiop::searches::task_search_record(&spec, "m", "v").unwrap();
        assert_ne!(
            rec.status,
            aiop::store::SearchStatus::Failed,
            "{table}: {:?}",
            rec.error
        );
    };
    let p = MAX_POPULATION;
    for (at, past, field) in [
        (
            format!("budget = {MAX_BUDGET}"),
            format!("budget = {}", MAX_BUDGET + 1),
            "search.budget",
        ),
        (
            format!("batch = {MAX_BATCH}"),
            format!("batch = {}", MAX_BATCH + 1),
            "search.batch",
        ),
        (
            format!("population = {p}"),
            format!("population = {}", p + 1),
            "search.population",
        ),
        (
            format!("population = {p}\nsample = {p}"),
            format!("population = {p}\nsample = {}", p + 1),
            "search.sample",
        ),
        ("sample = 64".into(), "sample = 65".into(), "search.sample"),
        (
            "population = 16".into(),
            "population = 15".into(),
            "search.population",
        ),
    ] {
        searched(&at);
        let e = load(&past).unwrap_err();
        assert_eq!(e.field(), Some(field), "{past}: {e}");
    }
    // A random search reads neither population nor sample: given, they are refused.
    let e = load("algorithm = \"random\"\nsample = 10").unwrap_err();
    assert_eq!(e.field(), Some("search.sample"), "{e}");
    searched("algorithm = \"random\"\nbatch = 4");
}
