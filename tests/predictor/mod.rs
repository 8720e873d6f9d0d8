//! `aiop pretrain` then `aiop predict` as a user runs them: a tiny model trained for one epoch,
//! predictions as JSON lines in input order, a bad line reported with exit code 65.

use crate::common::{aiop, aiop_ok, nb201_cifar10_rows};

const A: &str =
    "|skip_connect~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_1x1~0|nor_conv_1x1~1|none~2|";
const B: &str =
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|";

/// `aiop pretrain --seed 3` of a tiny model (2 layers, head 8, one epoch) on the data that
/// `data` (JSON fields `tasks`, `max_per_task`, `test_fraction`) names, into `dir/m`.
fn pretrain_tiny(dir: &std::path::Path, data: &str) -> (std::path::PathBuf, std::process::Output) {
    let cfg = dir.join("cfg.json");
    let text = format!(
        r#"{{{data}, "model": {{"layers": 2, "head": [8]}},
            "train": {{"epochs": 1, "batch_size": 8}}}}"#
    );
    std::fs::write(&cfg, text).unwrap();
    let model = dir.join("m");
    let o = pretrain(&cfg, &model, &["--seed", "3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (model, o)
}

/// `aiop pretrain --config cfg --out out` with `extra` arguments.
fn pretrain(cfg: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "pretrain",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    aiop(&args, "")
}

#[test]
fn pretrain_then_predict_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let (model, o) = pretrain_tiny(
        dir.path(),
        r#""tasks": ["nb201/cifar10"], "max_per_task": 24, "test_fraction": 0.25"#,
    );
    let m = model.to_str().unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["test"][0]["n"], 6);
    assert!(model.join("model.safetensors").exists());
    assert!(model.join("model.json").exists());

    let input = format!("{B}\n{A}\nnot an arch\n{A}\n");
    let o = aiop(
        &[
            "predict", "--space", "nb201", "--task", "cifar10", "--model", m,
        ],
        &input,
    );
    assert_eq!(o.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 3"));
    let lines: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let archs: Vec<&str> = lines.iter().map(|l| l["arch"].as_str().unwrap()).collect();
    assert_eq!(archs, vec![B, A, A]);
    assert_eq!(lines[1]["prediction"], lines[2]["prediction"]);
    assert!(lines[0]["prediction"].as_f64().unwrap().is_finite());

    // A task the model has no statistics for is refused.
    let o = aiop(
        &[
            "predict", "--space", "nb201", "--task", "cifar100", "--model", m,
        ],
        &format!("{A}\n"),
    );
    assert!(!o.status.success());

    // The same model as the fitness of a search: predictions are the scores, the oracle column
    // holds the table's true label, and the result file exports.
    let res = dir.path().join("r.json");
    let o = aiop(
        &[
            "search",
            "--space",
            "nb201",
            "--task",
            "cifar10",
            "--fitness",
            "predictor",
            "--model",
            m,
            "--budget",
            "40",
            "--population",
            "16",
            "--sample",
            "4",
            "--seed",
            "1",
            "--json",
            res.to_str().unwrap(),
            "--quiet",
        ],
        "",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&res).unwrap()).unwrap();
    assert!(file["evaluations"].as_u64().unwrap() <= 40);
    let results = file["results"].as_array().unwrap();
    assert!(!results.is_empty());
    let top = results[0]["arch"].as_str().unwrap();
    let o = aiop(
        &[
            "predict", "--space", "nb201", "--task", "cifar10", "--model", m,
        ],
        &format!("{top}\n"),
    );
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (a, b) = (
        p["prediction"].as_f64().unwrap(),
        results[0]["predicted"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-4 * a.abs().max(1.0), "{a} vs {b}");
    assert!(results[0]["oracle"].as_f64().is_some());
}

/// A damaged checkpoint, base selection or pretraining config is bad data (exit 65) and the
/// error names the file and the field, without the library's own prefixes.
#[test]
fn a_damaged_model_or_config_is_refused_naming_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = pretrain_tiny(
        dir.path(),
        r#""tasks": ["nb201/cifar10"], "max_per_task": 16, "test_fraction": 0.25"#,
    );
    let m = model.to_str().unwrap();
    let predict = |m: &str| {
        aiop(
            &[
                "predict", "--space", "nb201", "--task", "cifar10", "--model", m,
            ],
            &format!("{A}\n"),
        )
    };
    assert!(predict(m).status.success());
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // A base selection beside a plain model: a malformed one is named.
    let plain = model.join("plain");
    std::fs::create_dir(&plain).unwrap();
    for f in ["model.json", "model.safetensors"] {
        std::fs::copy(model.join(f), plain.join(f)).unwrap();
    }
    std::fs::write(model.join("base.json"), "{ not json").unwrap();
    let o = predict(m);
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    assert!(stderr(&o).contains("base.json"), "{}", stderr(&o));
    std::fs::remove_file(model.join("base.json")).unwrap();
    std::fs::remove_dir_all(&plain).unwrap();

    // Truncated weights, then a malformed sidecar.
    let w = model.join("model.safetensors");
    let weights = std::fs::read(&w).unwrap();
    std::fs::write(&w, &weights[..weights.len() / 2]).unwrap();
    let o = predict(m);
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    assert!(stderr(&o).contains("model.safetensors"), "{}", stderr(&o));
    std::fs::write(&w, &weights).unwrap();
    std::fs::write(model.join("model.json"), "{").unwrap();
    let o = predict(m);
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    assert!(stderr(&o).contains("model.json"), "{}", stderr(&o));

    // A training setting out of range in a pretraining config: file and field, no prefix.
    let cfg = dir.path().join("bad.json");
    std::fs::write(
        &cfg,
        r#"{"tasks": ["nb201/cifar10"], "train": {"epochs": 1, "lr": 2.0}}"#,
    )
    .unwrap();
    let out = dir.path().join("never");
    let o = pretrain(&cfg, &out, &[]);
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("bad.json: train.lr: 2 is not in (0, 1]"), "{e}");
    assert!(!e.contains("invalid model configuration"), "{e}");
    assert!(!out.exists());
}

/// `aiop eval` end to end on a tiny configuration: pretraining that excludes the target, every
/// method and baseline reported per seed, the JSON report written, the pretrained models saved
/// and then reused (the second run pretrains nothing and reproduces the first run's numbers).
#[test]
fn eval_reports_every_method_and_reuses_its_pretrained_models() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("eval.json");
    std::fs::write(
        &cfg,
        r#"{"seeds": 2, "pretrain_max_per_task": 12, "pretrain": {"epochs": 1, "batch_size": 8},
            "model": {"layers": 2, "head": [8]}, "fine_tune": {"epochs": 2, "batch_size": 1,
            "dev_fraction": 0.0}, "max_eval": 40, "targets": ["tnb101_macro/normal"],
            "threads": 2}"#,
    )
    .unwrap();
    let report = dir.path().join("r.json");
    let pre = dir.path().join("pre");
    let args = [
        "eval",
        "--protocol",
        "unseen-space",
        "--config",
        cfg.to_str().unwrap(),
        "--json",
        report.to_str().unwrap(),
        "--pretrained",
        pre.to_str().unwrap(),
    ];
    let o = aiop(&args, "");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(table.contains("tnb101_macro/normal"), "{table}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["protocol"], "unseen-space");
    // Its table read by nobody (stdout closed, as `| head` leaves it): the report is written all
    // the same and the run succeeds.
    let again = dir.path().join("again.json");
    let mut quiet = args;
    quiet[6] = again.to_str().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_aiop"))
        .args(quiet)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(again.exists());
    let pretrain: Vec<&str> = r["pretrain_tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(pretrain.contains(&"tnb101_micro/normal"));
    assert!(pretrain.iter().all(|t| !t.starts_with("tnb101_macro/")));
    let methods = r["rows"][0]["methods"].as_object().unwrap();
    for m in [
        "aio-p zero-shot",
        "aio-p ft-20",
        "no-transform zero-shot",
        "no-transform ft-20",
        "scratch-20",
        "flops rank",
        "params rank",
    ] {
        let s = &methods[m];
        assert_eq!(s["per_seed"].as_array().unwrap().len(), 2, "{m}");
        assert_eq!(s["per_seed"][0]["n"], 40, "{m}");
        let sp = s["spearman"]["mean"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&sp), "{m}: {sp}");
    }
    assert!(methods["flops rank"]["mae"].is_null());
    assert!(methods["aio-p ft-20"]["mae"]["mean"].as_f64().unwrap() > 0.0);
    assert!(pre.join("aio/model.json").exists() && pre.join("plain/model.json").exists());

    let o = aiop(&args, "");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("pretraining"));
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(
        again["rows"], r["rows"],
        "same seeds, same models, same numbers"
    );

    // The measurement options: aligned embeddings change what the pretrained models predict
    // (not the size ranks, not the model trained from scratch), and the bagged column appears.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let options = text.trim_end().trim_end_matches('}').to_string()
        + r#", "align": "shift", "bagged": true}"#;
    std::fs::write(&cfg, options).unwrap();
    let o = aiop(&args, "");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("offset"));
    let aligned: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let (before, after) = (&r["rows"][0]["methods"], &aligned["rows"][0]["methods"]);
    for same in ["flops rank", "params rank", "scratch-20"] {
        assert_eq!(before[same], after[same], "{same}");
    }
    assert_ne!(before["aio-p zero-shot"], after["aio-p zero-shot"]);
    let bagged = &after["wmeanz (bagged) ft-20 cv cal"]["spearman"]["mean"];
    assert!(
        bagged.as_f64().is_some_and(|x| (-1.0..=1.0).contains(&x)),
        "{bagged}"
    );
    assert!(before.get("wmeanz (bagged) ft-20 cv cal").is_none());

    // A pretrained model that saw a target is refused.
    let o = aiop(
        &[
            "eval",
            "--protocol",
            "unseen-task",
            "--quick",
            "--pretrained",
            pre.to_str().unwrap(),
        ],
        "",
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("a target of unseen-task"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A tiny model pretrained on one TNB-101 task: `aiop experiment flops` and the predictor-guided
/// `aiop experiment search` run with it on NB-201 and report true labels; the embedded model,
/// which saw NB-201's labels, is refused for both.
#[test]
fn predictor_experiments_run_and_refuse_a_model_that_saw_the_space() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = pretrain_tiny(
        dir.path(),
        r#""tasks": ["tnb101_micro/class_object"], "max_per_task": 16, "test_fraction": 0.0"#,
    );
    let m = model.to_str().unwrap();

    // One run per recipe: `task` (the default, as `aiop finetune` fits a task file) and AIO-P's
    // fixed `paper` recipe.
    let flops = |recipe: &str| -> Vec<serde_json::Value> {
        let json = dir.path().join(format!("flops-{recipe}.json"));
        let j = json.to_str().unwrap();
        let args = [
            "experiment",
            "flops",
            "--space",
            "nb201",
            "--task",
            "cifar10",
            "--model",
            m,
            "--samples",
            "5",
            "--seeds",
            "2",
            "--budget",
            "40",
            "--recipe",
            recipe,
            "--json",
            j,
        ];
        crate::common::aiop_ok(&args, "");
        let runs: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        runs.as_array().unwrap().clone()
    };
    let (runs, paper) = (flops("task"), flops("paper"));
    assert_eq!((runs.len(), paper.len()), (2, 2));
    for r in runs.iter().chain(&paper) {
        // The start is the table's best CIFAR-10 network.
        assert!(
            (r["start_true"].as_f64().unwrap() - 91.57).abs() < 0.01,
            "{r}"
        );
        assert!(r["found_mflops"].as_f64().unwrap() <= r["start_mflops"].as_f64().unwrap());
        assert!(r["predicted_drop"].as_f64().unwrap() <= 0.5 + 1e-9, "{r}");
        assert!(r["evaluations"].as_u64().unwrap() <= 40);
        // NB-201 labels every architecture: the true drop is always known.
        assert!(r["true_drop"].as_f64().unwrap() >= 0.0, "{r}");
    }
    // The recipes fit different predictors: other predictions of the same start.
    for (t, p) in runs.iter().zip(&paper) {
        assert_ne!(p["start_predicted"], t["start_predicted"], "{p} {t}");
    }

    let json = dir.path().join("search.json");
    let o = aiop(
        &[
            "experiment",
            "search",
            "--space",
            "nb201",
            "--task",
            "cifar10",
            "--methods",
            "predictor",
            "--model",
            m,
            "--queries",
            "20,30",
            "--seeds",
            "1",
            "--surrogate-steps",
            "10",
            "--json",
            json.to_str().unwrap(),
        ],
        "",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let s = doc["summaries"].as_array().unwrap();
    assert_eq!(s.len(), 2);
    let (b20, b30) = (
        s[0]["mean"].as_f64().unwrap(),
        s[1]["mean"].as_f64().unwrap(),
    );
    assert!(b30 >= b20 && b30 <= 91.57 + 1e-9, "{b20} {b30}");

    for args in [
        &[
            "experiment",
            "flops",
            "--space",
            "nb201",
            "--task",
            "cifar10",
            "--seeds",
            "1",
        ][..],
        &[
            "experiment",
            "search",
            "--space",
            "nb201",
            "--task",
            "cifar10",
            "--methods",
            "predictor",
            "--seeds",
            "1",
        ][..],
    ] {
        let o = aiop(args, "");
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("nb201/"), "{err}");
    }
}

/// Three NB-201 networks exported as JSON graphs with their real CIFAR-10 labels (validation
/// accuracy from the shipped table): a task of `space = "graph"`.
fn graph_task(dir: &std::path::Path, epochs: u32) -> std::path::PathBuf {
    let mut csv = String::from("graph,value\n");
    for (k, (arch, value)) in nb201_cifar10_rows(4).into_iter().enumerate() {
        let o = aiop(
            &[
                "graph", "--space", "nb201", "--task", "cifar10", "--format", "graph",
            ],
            &format!("{arch}\n"),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::write(dir.join(format!("net{k}.json")), &o.stdout).unwrap();
        csv.push_str(&format!("net{k}.json,{value}\n"));
    }
    std::fs::write(dir.join("nets.csv"), csv).unwrap();
    let t = dir.join("nets.toml");
    std::fs::write(
        &t,
        format!(
            "name = \"nets\"\nspace = \"graph\"\nsamples = \"nets.csv\"\n[finetune]\nepochs = {epochs}\n"
        ),
    )
    .unwrap();
    t
}

#[test]
fn finetune_then_predict_tuned_graphs() {
    let dir = tempfile::tempdir().unwrap();
    let t = graph_task(dir.path(), 2);
    let state = dir.path().join("state");
    let st = state.to_str().unwrap();
    let o = aiop(
        &[
            "finetune",
            "--task",
            t.to_str().unwrap(),
            "--state",
            st,
            "-q",
        ],
        "",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["task"], "nets");
    assert_eq!(summary["samples"], 4);
    assert_eq!(summary["finetune"]["epochs"], 2);
    assert!(summary["final_loss"].as_f64().unwrap().is_finite());
    let version = summary["version"].as_str().unwrap();
    let model = state.join("models/nets").join(version);
    assert!(model.join("task.json").exists() && model.join("model.safetensors").exists());

    // Graph files on stdin, in input order, "graph" in place of "arch".
    let p = |k: usize| {
        dir.path()
            .join(format!("net{k}.json"))
            .display()
            .to_string()
    };
    let input = format!("{}\n{}\nnope.json\n{}\n", p(2), p(0), p(2));
    let o = aiop(
        &["predict", "--tuned", "nets", "--state", st, "--graphs"],
        &input,
    );
    assert_eq!(
        o.status.code(),
        Some(65),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 3"));
    let lines: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<String> = lines
        .iter()
        .map(|l| l["graph"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec![p(2), p(0), p(2)]);
    assert!(lines.iter().all(|l| l.get("arch").is_none()));
    assert_eq!(lines[0]["prediction"], lines[2]["prediction"]);
    // A task model (a version folder, or the task's folder) is not a --model checkpoint.
    for d in [model.clone(), state.join("models/nets")] {
        let o = aiop(
            &[
                "predict",
                "--space",
                "nb201",
                "--task",
                "cifar10",
                "--model",
                d.to_str().unwrap(),
            ],
            "",
        );
        assert_eq!(o.status.code(), Some(2));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            e.contains("task model") && e.contains("use --tuned nets"),
            "{e}"
        );
    }
    // A graph task has no architecture strings, nor a space to search.
    let o = aiop(&["predict", "--tuned", "nets", "--state", st], "x\n");
    assert_eq!(o.status.code(), Some(65));
    let o = aiop(
        &[
            "search",
            "--tuned",
            "nets",
            "--state",
            st,
            "--algorithm",
            "flops",
            "--start-graph",
            &p(0),
            "--space",
            "tnb101_micro",
            "--task",
            "jigsaw",
        ],
        "",
    );
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("fine-tuned on JSON graphs"), "{e}");
    // An unknown task model, and a bad task file (exit 65, file, line and field named).
    let o = aiop(&["predict", "--tuned", "other", "--state", st], "");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no task model 'other'"));
    std::fs::write(
        &t,
        "name = \"nets\"\nspace = \"graph\"\nsamples = \"nets.csv\"\n[finetune]\nlr = -1.0\n",
    )
    .unwrap();
    let o = aiop(
        &["finetune", "--task", t.to_str().unwrap(), "--state", st],
        "",
    );
    assert_eq!(o.status.code(), Some(65));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("nets.toml:5") && err.contains("finetune.lr"),
        "{err}"
    );
}

/// Four 3x3 convs of one input, summed in pairs through ReLUs, the pairs wired two ways.
fn paired_convs(pairs: [(usize, usize); 4]) -> String {
    let mut nodes = vec![r#"{"id": "x", "op": "input", "out": [8, 8, 8]}"#.to_string()];
    for i in 1..=4 {
        nodes.push(format!(
            r#"{{"id": "m{i}", "op": "conv", "inputs": ["x"], "out": [8, 8, 8], "kernel": 3, "padding": 1}}"#
        ));
    }
    for (k, (a, b)) in pairs.iter().enumerate() {
        nodes.push(format!(
            r#"{{"id": "c{k}", "op": "add", "inputs": ["m{a}", "m{b}"]}}"#
        ));
        nodes.push(format!(
            r#"{{"id": "r{k}", "op": "relu", "inputs": ["c{k}"]}}"#
        ));
    }
    nodes.push(r#"{"id": "s", "op": "add", "inputs": ["r0", "r1", "r2", "r3"]}"#.into());
    nodes.push(r#"{"id": "y", "op": "output", "inputs": ["s"]}"#.into());
    format!(
        r#"{{"format": "aiop-graph", "version": 1, "nodes": [{}]}}"#,
        nodes.join(", ")
    )
}

#[test]
fn networks_the_hash_cannot_tell_apart_the_predictor_cannot_either() {
    // (1+2), (1+2), (3+4), (3+4) against the ring (1+2), (2+3), (3+4), (4+1): not isomorphic,
    // but every node sees the same unfolded ancestry and descendancy. The hash, a colour
    // refinement, gives them one value; the predictor's message passing gives them one
    // prediction, so as its cache key the hash loses nothing (src/graph/hash.rs).
    let dir = tempfile::tempdir().unwrap();
    let twin = dir.path().join("twin.json");
    let ring = dir.path().join("ring.json");
    std::fs::write(&twin, paired_convs([(1, 2), (1, 2), (3, 4), (3, 4)])).unwrap();
    std::fs::write(&ring, paired_convs([(1, 2), (2, 3), (3, 4), (4, 1)])).unwrap();
    let paths = format!("{}\n{}\n", twin.display(), ring.display());
    let hashes: Vec<serde_json::Value> = [&twin, &ring]
        .iter()
        .map(|p| {
            let o = aiop_ok(&["graph", "--file", p.to_str().unwrap()], "");
            serde_json::from_slice::<serde_json::Value>(&o).unwrap()["hash"].clone()
        })
        .collect();
    assert_eq!(hashes[0], hashes[1]);
    for (space, task) in [("nb201", "cifar10"), ("tnb101_macro", "segmentsemantic")] {
        let out = aiop_ok(
            &["predict", "--space", space, "--task", task, "--graphs"],
            &paths,
        );
        let p = crate::common::predictions(&out);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].to_bits(), p[1].to_bits(), "{space}/{task}: {p:?}");
    }
}
