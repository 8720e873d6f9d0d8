//! Acceptance: a TransNAS-Bench-101 macro `segmentsemantic` task with 20 real labelled samples
//! goes from task file to task model to search results; a search survives `kill -9` and SIGTERM
//! and ends exactly where an uninterrupted run with the same seed ends; cancelling and deleting
//! the task file stop searches and keep their results.

use std::time::{Duration, Instant};

use super::*;

/// A metric's value, 0 when the series does not exist yet.
fn metric(m: &std::collections::HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

#[test]
fn task_file_is_fine_tuned_then_its_search_reports_progress_and_results() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let mut d = Daemon::start(&state);
    let before = d.metrics();
    let tasks = d.tasks_dir();
    drop_file(&tasks, "seg.csv", seg_samples(20).as_bytes());
    let search = "\n[search]\nalgorithm = \"evolution\"\nbudget = 240\npopulation = 16\n\
                  sample = 4\nbatch = 8\nseed = 3\n";
    drop_file(&tasks, "seg.toml", seg_task("seg-macro", search).as_bytes());

    let t = d.wait_ready("seg-macro");
    let version = t["spec_hash"].as_str().unwrap().to_string();
    assert_eq!(t["model"], format!("seg-macro/{version}"));
    // The model's quality: in-sample, and cross-validated (the default selects its epochs).
    let q = &t["model_quality"];
    for part in ["fit", "cross_validated"] {
        let sp = q[part]["spearman"].as_f64().unwrap_or(f64::NAN);
        assert!((-1.0..=1.0).contains(&sp), "{part}: {t}");
    }
    assert!(state
        .join("models/seg-macro")
        .join(&version)
        .join("task.json")
        .exists());

    // The task file's search: progress while it runs, then results.
    let id = format!("t-seg-macro-{}", &version[..12]);
    let seen = watch_search(&d, &id, |v| v["status"] == "done");
    let running: Vec<&serde_json::Value> = seen
        .iter()
        .filter(|v| {
            v["status"] == "running"
                && v["generation"].as_u64().unwrap() >= 1
                && v["progress"].as_f64().unwrap() > 0.0
                && v["progress"].as_f64().unwrap() < 1.0
        })
        .collect();
    assert!(!running.is_empty(), "no progress seen: {seen:?}");
    let done = seen.last().unwrap();
    for v in &running {
        assert!(v["best"]["predicted"].as_f64().is_some(), "{v}");
        assert!(v.get("results").is_none(), "results only once it ends: {v}");
        // The ranking so far, as of the generation shown, led by the best so far.
        let so_far = v["results_so_far"].as_array().expect("a ranking so far");
        assert!(!so_far.is_empty() && so_far.len() <= 10, "{v}");
        let s: Vec<f64> = so_far
            .iter()
            .map(|r| r["predicted"].as_f64().unwrap())
            .collect();
        assert!(s.windows(2).all(|w| w[0] >= w[1]), "{s:?}");
        assert_eq!(s[0], v["best"]["predicted"].as_f64().unwrap(), "{v}");
    }
    assert!(done.get("results_so_far").is_none(), "{done}");
    assert_eq!(done["progress"], 1.0);
    assert_eq!(done["evaluations"], 240);
    assert_eq!(done["budget"], 240);
    assert_eq!(done["ended_because"], "budget", "{done}");
    let results = done["results"].as_array().unwrap();
    assert_eq!(results.len(), 10);
    let scores: Vec<f64> = results
        .iter()
        .map(|r| r["predicted"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert_eq!(scores[0], done["best"]["predicted"].as_f64().unwrap());
    assert_eq!(done["model"], format!("tuned/seg-macro/{version}"));
    // A task model's labels are the user's: no benchmark label is offered as the truth.
    assert!(results.iter().all(|r| r["oracle"].is_null()), "{done}");

    // The search's numbers are the task model's predictions, in task units.
    let best_arch = results[0]["arch"].as_str().unwrap().to_string();
    let r = d.send(
        "POST",
        "/v1/predict",
        &serde_json::json!({"tuned": "seg-macro", "archs": [best_arch]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["predictions"][0]["prediction"].as_f64(),
        Some(scores[0])
    );
    // ... and the CLI's, reading the same task model.
    let out = crate::common::aiop(
        &[
            "predict",
            "--tuned",
            "seg-macro",
            "--state",
            state.to_str().unwrap(),
        ],
        &format!("{best_arch}\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["prediction"].as_f64(), Some(scores[0]));

    // The counters moved.
    let m = d.metrics();
    let gens = done["generation"].as_f64().unwrap();
    for (series, want) in [
        ("aiop_search_generations_total", gens),
        ("aiop_search_candidates_evaluated_total", 240.0),
        ("aiop_finetune_duration_seconds_count", 1.0),
        ("aiop_jobs_finished_total{outcome=\"ready\"}", 1.0),
        ("aiop_searches_finished_total{outcome=\"done\"}", 1.0),
        ("aiop_searches{status=\"done\"}", 1.0),
        ("aiop_tasks{status=\"ready\"}", 1.0),
        ("aiop_searches_running", 0.0),
    ] {
        assert_eq!(metric(&m, series), want, "{series}");
        if want > 0.0 {
            assert_eq!(metric(&before, series), 0.0, "{series} before");
        }
    }
    assert_eq!(
        metric(&m, &format!("aiop_search_best_score{{search=\"{id}\"}}")),
        scores[0]
    );
    assert!(metric(&m, "aiop_predictions_total{source=\"search\"}") >= 240.0);
    assert!(metric(&m, "aiop_prediction_cache_misses_total") >= 240.0);
    assert!(metric(&m, "aiop_prediction_batch_seconds_count") >= 1.0);
    assert!(m["aiop_finetune_final_loss{task=\"seg-macro\"}"].is_finite());
    assert!(metric(&m, "aiop_store_size_bytes") > 0.0);
    assert!(metric(&m, "aiop_task_files_accepted_total") >= 1.0);
    // The repeated prediction came from the cache.
    assert!(metric(&m, "aiop_prediction_cache_hits_total") >= 1.0);

    // `aiop export` takes the ended search as the client prints it; a running one is refused.
    let st = state.to_str().unwrap();
    let record = root.path().join("search.json");
    let out = crate::common::aiop(&["searches", &id, "--json", "--state", st], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&record, &out.stdout).unwrap();
    let graph = root.path().join("best.json");
    let rec = record.to_str().unwrap();
    let out = crate::common::aiop(&["export", rec, "--graph", graph.to_str().unwrap()], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), best_arch);
    let out = crate::common::aiop(&["graph", "--file", graph.to_str().unwrap()], "");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["hash"], results[0]["hash"]);
    std::fs::write(&record, running[0].to_string()).unwrap();
    let out = crate::common::aiop(&["export", rec], "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is running") && err.contains("--so-far"),
        "{err}"
    );
    // Unless asked for its ranking so far.
    let out = crate::common::aiop(&["export", rec, "--so-far"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        first.lines().next().unwrap(),
        running[0]["results_so_far"][0]["arch"].as_str().unwrap()
    );

    // A second search through the CLI client, cancelled: its results so far are kept.
    let spec = root.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"task": "seg-macro", "algorithm": "random", "budget": 100000, "batch": 4, "seed": 1}"#,
    )
    .unwrap();
    let out = crate::common::aiop(&["submit", "--state", st, spec.to_str().unwrap()], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sub: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id2 = sub["id"].as_str().unwrap().to_string();
    watch_search(&d, &id2, |v| v["generation"].as_u64().unwrap() >= 2);
    let cancel = |id: &str| {
        let out = crate::common::aiop(&["searches", id, "--cancel", "--state", st], "");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // What the cancellation does, by the state it found.
    let said = cancel(&id2);
    assert!(
        said.starts_with(&format!(
            "cancel accepted: {id2} is running; it stops after"
        )),
        "{said}"
    );
    let seen = watch_search(&d, &id2, |v| v["status"] == "cancelled");
    let said = cancel(&id2);
    assert!(
        said.starts_with(&format!("cancel accepted: {id2} is cancelled;")),
        "{said}"
    );
    let said = cancel(&id);
    assert!(
        said.starts_with(&format!("cancel accepted: {id} had already ended (done)")),
        "{said}"
    );
    let last = seen.last().unwrap();
    assert!(!last["results"].as_array().unwrap().is_empty(), "{last}");
    assert!(last["evaluations"].as_u64().unwrap() < 100000);
    let out = crate::common::aiop(&["searches", "--state", st], "");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&id) && text.contains(&id2) && text.contains("cancelled"),
        "{text}"
    );
    // Filtered and paged (oldest first): by status, the first page of one, a typo refused.
    let page = d.get("/v1/searches?status=cancelled").json();
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["searches"][0]["id"], id2.as_str(), "{page}");
    let page = d.get("/v1/searches?limit=1").json();
    assert_eq!(page["total"], 2, "{page}");
    assert_eq!(page["next_offset"], 1, "{page}");
    assert_eq!(page["searches"][0]["id"], id.as_str(), "{page}");
    let typo = d.get("/v1/searches?stauts=done");
    assert_eq!(typo.status, 400, "{}", typo.text());
    assert!(typo.text().contains("`stauts`"), "{}", typo.text());
    let out = crate::common::aiop(&["searches", "--last", "1", "--state", st], "");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("2 search(es), the last 1 shown") && text.contains(&id2),
        "{text}"
    );
    assert!(!text.contains(&format!("  {id} ")), "{text}");

    // A FLOP reduction from the best network found, through the API: measured from its
    // prediction it keeps cheaper networks; from a measured value ("reference") far above
    // every prediction it keeps the start alone.
    let reduce = |reference: Option<f64>| {
        let mut req = serde_json::json!({"task": "seg-macro", "algorithm": "flops",
            "start": best_arch, "tolerance": 5.0, "budget": 200, "seed": 2});
        if let Some(v) = reference {
            req["reference"] = v.into();
        }
        let r = d.send("POST", "/v1/searches", &req);
        assert_eq!(r.status, 201, "{}", r.text());
        let id = r.json()["id"].as_str().unwrap().to_string();
        watch_search(&d, &id, |v| v["status"] == "done")
            .pop()
            .unwrap()
    };
    let free = reduce(None);
    assert!(free["results"].as_array().unwrap().len() > 1, "{free}");
    // Its best is the cheapest network within the tolerance, the first of its results, in the
    // record and in the gauge alike (not the highest score it saw).
    let first = &free["results"][0];
    assert_eq!(free["best"]["hash"], first["hash"], "{free}");
    let gauge = format!(
        "aiop_search_best_score{{search=\"{}\"}}",
        free["id"].as_str().unwrap()
    );
    assert_eq!(
        metric(&d.metrics(), &gauge),
        first["predicted"].as_f64().unwrap()
    );
    let kept = reduce(Some(scores[0] + 100.0));
    assert_eq!(
        kept["spec"]["search"]["reference"],
        scores[0] + 100.0,
        "{kept}"
    );
    let kept = kept["results"].as_array().unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["arch"], best_arch.as_str());

    // A new version of the task file (zero-shot: quick) replaces the model; the old version's
    // model, which no unfinished search uses any more, is deleted and its cached predictions
    // dropped.
    drop_file(
        &tasks,
        "seg.toml",
        b"name = \"seg-macro\"\nspace = \"tnb101_macro\"\nhead = \"segmentsemantic\"\n\
          samples = \"seg.csv\"\nmode = \"zero-shot\"\n",
    );
    let t = wait_long("the new version's model", || {
        let t = d.get("/v1/tasks/seg-macro").json();
        assert_ne!(t["status"], "failed", "{t}");
        (t["spec_hash"] != version.as_str() && t["status"] == "ready").then_some(t)
    });
    let new_version = t["spec_hash"].as_str().unwrap();
    assert_eq!(t["model"], format!("seg-macro/{new_version}"));
    let models = state.join("models/seg-macro");
    assert!(models.join(new_version).join("task.json").exists());
    // Pruned right after the task turns ready.
    let m = wait_for("the replaced model's deletion", || {
        let m = d.metrics();
        (metric(&m, "aiop_task_models_pruned_total") > 0.0).then_some(m)
    });
    assert_eq!(metric(&m, "aiop_task_models_pruned_total"), 1.0);
    assert!(
        !models.join(&version).exists(),
        "the replaced model is deleted"
    );
    assert!(metric(&m, "aiop_prediction_cache_pruned_total") > 0.0);

    // Every series the shipped Grafana dashboard plots is one the daemon exports.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/grafana-dashboard.json"
    ))
    .unwrap();
    let exported = d.metrics();
    let mut plotted = 0;
    for w in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if super::WHILE_TUNING.contains(&w) {
            // No job runs now, so no series (checked while one runs, in the stop test).
            plotted += 1;
            assert!(
                !exported.keys().any(|k| k.starts_with(w)),
                "{w} after the job"
            );
        } else if w.starts_with("aiop_") {
            plotted += 1;
            assert!(
                exported
                    .keys()
                    .any(|k| k == w || k.starts_with(&format!("{w}{{"))),
                "the dashboard plots {w}, which /metrics lacks"
            );
        }
    }
    assert!(plotted >= 25, "{plotted}");

    d.signal("-TERM");
    assert_eq!(
        d.wait_exit(Duration::from_secs(GRACE_SECS + 3)).code(),
        Some(0)
    );
}

#[test]
fn a_base_model_search_reports_the_tables_true_labels_beside_its_predictions() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(&root.path().join("state"));
    let r = d.send(
        "POST",
        "/v1/searches",
        &serde_json::json!({"space": "nb201", "task": "cifar10", "budget": 48,
            "population": 16, "sample": 4, "batch": 8, "seed": 5}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let done = watch_search(&d, &id, |v| v["status"] == "done")
        .pop()
        .unwrap();
    let table: std::collections::HashMap<String, f64> =
        crate::common::table_rows("nb201", "val_acc_cifar10", 1, usize::MAX)
            .into_iter()
            .map(|(a, v)| (a, v.parse().unwrap()))
            .collect();
    assert_eq!(table.len(), 15625);
    let results = done["results"].as_array().unwrap();
    assert_eq!(results.len(), 10);
    for r in results {
        let arch = r["arch"].as_str().unwrap();
        assert_eq!(r["oracle"].as_f64(), Some(table[arch]), "{r}");
        assert_ne!(r["oracle"], r["predicted"], "{r}");
    }

    // A benchmark task the base model was not pretrained on is refused at submission, naming
    // the field, and nothing is stored: it does not fail later as a search.
    let r = d.send(
        "POST",
        "/v1/searches",
        &serde_json::json!({"space": "darts", "task": "cifar10", "budget": 48}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    let text = r.text();
    assert!(
        text.contains("task: the base model does not predict darts/cifar10")
            && text.contains("nb201/cifar10"),
        "{text}"
    );
    // So is an option the algorithm does not read: a FLOP reduction's, given to another
    // algorithm; evolution's tournament, given to random search.
    for (extra, field) in [
        (
            serde_json::json!({"tolerance": 1.0}),
            "tolerance: only a FLOP reduction",
        ),
        (
            serde_json::json!({"algorithm": "random", "two_sided": false}),
            "two_sided: only a FLOP reduction",
        ),
        (
            serde_json::json!({"radius": 2}),
            "radius: only a FLOP reduction",
        ),
        (
            serde_json::json!({"algorithm": "random", "sample": 4}),
            "sample: only evolution (algorithm evolution) reads it, not random",
        ),
    ] {
        let mut body = serde_json::json!({"space": "nb201", "task": "cifar10", "budget": 48});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = d.send("POST", "/v1/searches", &body);
        assert_eq!(r.status, 422, "{body}: {}", r.text());
        assert!(r.text().contains(field), "{}", r.text());
    }
    let all = d.get("/v1/searches").json();
    assert_eq!(all["searches"].as_array().unwrap().len(), 1, "{all}");

    // Deleting for good: refused while a search runs or is queued, the query checked; a
    // finished one goes with its checkpoint and history, its record answered a last time, and
    // stays gone after a restart.
    let r = d.send(
        "POST",
        "/v1/searches",
        &serde_json::json!({"space": "nb201", "task": "cifar10", "budget": 1_000_000,
            "population": 16, "sample": 4, "batch": 8, "seed": 6}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let long = r.json()["id"].as_str().unwrap().to_string();
    let r = d.send(
        "DELETE",
        &format!("/v1/searches/{long}?purge=true"),
        &serde_json::Value::Null,
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("cancel it"), "{}", r.text());
    for (q, what) in [
        ("purge=yes", "`purge`"),
        ("purge=true&purge=true", "`purge`"),
        ("force=1", "`force`"),
    ] {
        let r = d.send(
            "DELETE",
            &format!("/v1/searches/{id}?{q}"),
            &serde_json::Value::Null,
        );
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert!(r.text().contains(what), "{q}: {}", r.text());
    }
    assert_eq!(d.metrics()["aiop_searches{status=\"done\"}"], 1.0);
    let series = format!("aiop_search_best_score{{search=\"{id}\"}}");
    assert!(d.metrics().contains_key(&series), "{series}");
    let r = d.send(
        "DELETE",
        &format!("/v1/searches/{id}?purge=true"),
        &serde_json::Value::Null,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let last = r.json();
    assert_eq!(
        (last["deleted"].as_bool(), last["status"].as_str()),
        (Some(true), Some("done"))
    );
    assert_eq!(last["results"], done["results"]);
    assert_eq!(d.get(&format!("/v1/searches/{id}")).status, 404);
    assert_eq!(d.metrics()["aiop_searches{status=\"done\"}"], 0.0);
    assert!(
        !d.metrics().contains_key(&series),
        "a deleted search's series goes"
    );
    // The long one, cancelled, then deleted through the CLI client.
    let r = d.send(
        "DELETE",
        &format!("/v1/searches/{long}"),
        &serde_json::Value::Null,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    watch_search(&d, &long, |v| v["status"] == "cancelled");
    let state = root.path().join("state");
    let st = state.to_str().unwrap();
    let out = crate::common::aiop(&["searches", &long, "--delete", "--state", st], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&long) && text.contains("deleted"), "{text}");
    let out = crate::common::aiop(&["searches", &long, "--delete", "--state", st], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HTTP 404"), "{err}");
    // sled keeps the deleted searches' space; `aiop store compact` gives it back, but not
    // while the daemon runs.
    let out = crate::common::aiop(&["store", "compact", "--state", st], "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("another aiop"),
        "{err}"
    );
    assert_eq!(d.get("/healthz").status, 200);
    drop(d);
    let export = || {
        let out = crate::common::aiop(&["store", "export", "--state", st], "");
        assert!(out.status.success());
        out.stdout
    };
    let before = export();
    let out = crate::common::aiop(&["store", "compact", "--state", st], "");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "compacted DIR: N record(s), A KiB -> B KiB"
    let kib: Vec<u64> = said
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .rev()
        .take(2)
        .collect();
    assert!(said.starts_with("compacted ") && kib[0] < kib[1], "{said}");
    assert_eq!(export(), before, "the same records");
    let d = Daemon::start(&root.path().join("state"));
    let all = d.get("/v1/searches").json();
    assert_eq!(all["total"], 0, "{all}");
    assert_eq!(d.get(&format!("/v1/searches/{long}")).status, 404);
}

/// The search spec of the interrupted and the uninterrupted runs.
fn resumable_spec() -> serde_json::Value {
    serde_json::json!({"task": "seg-resume", "algorithm": "evolution", "budget": 320,
        "population": 24, "sample": 6, "batch": 8, "seed": 11})
}

#[test]
fn kill_9_mid_search_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_run() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let mut d = Daemon::start(&state);
    let tasks = d.tasks_dir();
    drop_file(&tasks, "seg.csv", seg_samples(20).as_bytes());
    drop_file(&tasks, "seg.toml", seg_task("seg-resume", "").as_bytes());
    d.wait_ready("seg-resume");

    // A search of 40 generations takes about a second; if it ends between the look and the
    // kill there is nothing to resume, and the test tries again with a new search.
    let mut attempts = 0;
    let (d, id, at_kill) = loop {
        attempts += 1;
        let r = d.send("POST", "/v1/searches", &resumable_spec());
        assert_eq!(r.status, 201, "{}", r.text());
        let id = r.json()["id"].as_str().unwrap().to_string();
        let seen = watch_search(&d, &id, |v| {
            v["status"] == "running" && v["generation"].as_u64().unwrap() >= 3
        });
        let at_kill = seen.last().unwrap().clone();
        assert!(at_kill["progress"].as_f64().unwrap() < 1.0, "{at_kill}");
        d.kill_now();
        assert_eq!(d.wait_exit(T).code(), None, "killed by a signal");
        drop(d);

        let restarted = Daemon::start(&state);
        // Nothing the daemon had reported is lost.
        let back = restarted.get(&format!("/v1/searches/{id}")).json();
        assert!(
            back["generation"].as_u64() >= at_kill["generation"].as_u64(),
            "{back}"
        );
        d = restarted;
        if back["status"] == "done" && back["resumes"] == 0 {
            assert!(
                attempts < 3,
                "the search ended before the kill {attempts} times"
            );
            continue;
        }
        break (d, id, at_kill);
    };
    let seen = watch_search(&d, &id, |v| v["status"] == "done");
    let resumed = seen.last().unwrap().clone();
    assert!(resumed["resumes"].as_u64().unwrap() >= 1, "{resumed}");
    let from = resumed["resumed_from_generation"].as_u64().unwrap();
    assert!(
        from >= at_kill["generation"].as_u64().unwrap(),
        "resumed from generation {from}, the daemon had reported {}",
        at_kill["generation"]
    );
    assert!(
        resumed["best"]["predicted"].as_f64() >= at_kill["best"]["predicted"].as_f64(),
        "{resumed}"
    );
    assert!(d.metrics()["aiop_searches_recovered_total"] >= 1.0);

    // The same spec run through without interruption ends in exactly the same place.
    let r = d.send("POST", "/v1/searches", &resumable_spec());
    assert_eq!(r.status, 201, "{}", r.text());
    let id2 = r.json()["id"].as_str().unwrap().to_string();
    let whole = watch_search(&d, &id2, |v| v["status"] == "done")
        .pop()
        .unwrap();
    assert_eq!(whole["resumes"], 0);
    for k in ["results", "best", "evaluations", "generation"] {
        assert_eq!(resumed[k], whole[k], "{k}");
    }
}

#[test]
fn sigterm_mid_search_exits_within_the_grace_period_and_the_search_resumes() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let mut d = Daemon::start(&state);
    let tasks = d.tasks_dir();
    drop_file(&tasks, "seg.csv", seg_samples(20).as_bytes());
    let search = "\n[search]\nalgorithm = \"random\"\nbudget = 100000\nbatch = 4\nseed = 5\n";
    drop_file(&tasks, "seg.toml", seg_task("seg-term", search).as_bytes());
    let version = d.wait_ready("seg-term")["spec_hash"]
        .as_str()
        .unwrap()
        .to_string();
    let id = format!("t-seg-term-{}", &version[..12]);
    watch_search(&d, &id, |v| {
        v["status"] == "running" && v["generation"].as_u64().unwrap() >= 2
    });

    let before_stop = d.get(&format!("/v1/searches/{id}")).json();
    let t0 = Instant::now();
    d.signal("-TERM");
    let status = d.wait_exit(Duration::from_secs(GRACE_SECS + 3));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    assert!(
        t0.elapsed() < Duration::from_secs(GRACE_SECS),
        "{:?}",
        t0.elapsed()
    );
    drop(d);

    // The record on disk (read with the daemon down): queued again, at its checkpoint.
    let dump = crate::common::aiop(&["store", "export", "--state", state.to_str().unwrap()], "");
    assert!(dump.status.success());
    let stopped: serde_json::Value = String::from_utf8(dump.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["tree"] == "searches" && l["key"] == id.as_str())
        .unwrap()["value"]
        .clone();
    assert_eq!(stopped["status"], "queued", "{stopped}");
    let g = stopped["generation"].as_u64().unwrap();
    assert!(
        g >= before_stop["generation"].as_u64().unwrap(),
        "{stopped} {before_stop}"
    );

    // At the next start the search carries on from the checkpoint written at the stop.
    let d = Daemon::start(&state);
    let seen = watch_search(&d, &id, |v| {
        v["resumes"] == 1 && v["generation"].as_u64().unwrap() > g
    });
    assert_eq!(seen.last().unwrap()["resumed_from_generation"], g);
    assert_eq!(d.metrics()["aiop_searches_recovered_total"], 1.0);

    // Deleting the task file stops its search and keeps what it found.
    std::fs::remove_file(tasks.join("seg.toml")).unwrap();
    cancelled_with_its_task_file(&d, &id);
    let t = d.get("/v1/tasks/seg-term").json();
    assert!(t["removed_at"].is_u64(), "{t}");
}

#[test]
fn between_checkpoints_the_record_stands_still_and_a_crash_redoes_the_lost_generations() {
    // A ten-minute checkpoint interval: after its first generation (checkpointed at once) the
    // search's record waits for the search to end, while the metrics count every generation.
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let long = [("AIOP_CHECKPOINT_INTERVAL_MS", "600000")];
    let mut d = Daemon::start_with(&state, &long);
    let spec = serde_json::json!({"space": "nb201", "task": "cifar10", "budget": 100000,
        "seed": 3});
    let r = d.send("POST", "/v1/searches", &spec);
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    wait_long("generations past the first checkpoint", || {
        (d.metrics()["aiop_search_generations_total"] >= 50.0).then_some(())
    });
    let rec = d.get(&format!("/v1/searches/{id}")).json();
    assert_eq!(rec["status"], "running", "the search ended too soon: {rec}");
    assert_eq!(rec["generation"], 1, "{rec}");
    d.kill_now();
    assert_eq!(d.wait_exit(T).code(), None, "killed by a signal");
    drop(d);

    // The restarted daemon redoes the generations after the checkpoint and ends exactly where
    // an uninterrupted run of the same spec does; the end is always checkpointed.
    let d = Daemon::start_with(&state, &long);
    let resumed = watch_search(&d, &id, |v| v["status"] == "done")
        .pop()
        .unwrap();
    assert_eq!(
        (&resumed["resumes"], &resumed["resumed_from_generation"]),
        (&1.into(), &1.into()),
        "{resumed}"
    );
    assert!(resumed["generation"].as_u64().unwrap() > 50, "{resumed}");
    let r = d.send("POST", "/v1/searches", &spec);
    let id2 = r.json()["id"].as_str().unwrap().to_string();
    let whole = watch_search(&d, &id2, |v| v["status"] == "done")
        .pop()
        .unwrap();
    assert_eq!(whole["resumes"], 0);
    for k in [
        "results",
        "best",
        "evaluations",
        "generation",
        "ended_because",
    ] {
        assert_eq!(resumed[k], whole[k], "{k}");
    }
}

#[test]
fn a_task_file_taken_away_while_tuning_and_put_back_runs_its_search() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let d = Daemon::start(&state);
    let tasks = d.tasks_dir();
    drop_file(&tasks, "seg.csv", seg_samples(20).as_bytes());
    let search = "\n[search]\nalgorithm = \"evolution\"\nbudget = 32\npopulation = 8\n\
                  sample = 4\nbatch = 8\nseed = 3\n";
    // Long enough a fine-tune to take the file away while it runs.
    let toml =
        seg_task("back", search).replace("epochs = 2\n", "epochs = 300\nselect_epochs = false\n");
    drop_file(&tasks, "seg.toml", toml.as_bytes());
    wait_long("fine-tuning to start", || {
        d.task("back")
            .filter(|t| t["status"] == "tuning")
            .map(|_| ())
    });
    let aside = root.path().join("seg.toml");
    std::fs::rename(tasks.join("seg.toml"), &aside).unwrap();
    let t = wait_long("the model, its file gone", || {
        d.task("back")
            .filter(|t| t["status"] == "ready" && t["removed"] == true)
    });
    let version = t["version"].as_str().unwrap().to_string();
    let id = format!("t-back-{}", &version[..12]);
    assert_eq!(
        d.get(&format!("/v1/searches/{id}")).status,
        404,
        "no search without its file"
    );
    // Back in the folder: the task is restored and its search created and run.
    std::fs::rename(&aside, tasks.join("seg.toml")).unwrap();
    wait_for("the search", || {
        (d.get(&format!("/v1/searches/{id}")).status == 200).then_some(())
    });
    let seen = watch_search(&d, &id, |v| v["status"] == "done");
    let done = seen.last().unwrap();
    assert!(!done["results"].as_array().unwrap().is_empty(), "{done}");
    assert_eq!(d.task("back").unwrap()["removed"], false);
    assert_eq!(d.task("back").unwrap()["version"], version.as_str());
}

#[test]
fn a_cancellation_answers_with_the_state_it_found() {
    // Checkpointing every generation, a search's worker stops at most a generation after the
    // flag is set: the answer must still say the search was running (it was read after the
    // flag, and said `cancelled` whenever the worker won the race: CI's failure of stop 30).
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(
        &root.path().join("state"),
        &[("AIOP_CHECKPOINT_INTERVAL_MS", "0")],
    );
    for seed in 0..16 {
        let spec = serde_json::json!({"space": "nb201", "task": "cifar10", "budget": 1_000_000,
            "algorithm": "random", "batch": 1, "seed": seed});
        let r = d.send("POST", "/v1/searches", &spec);
        assert_eq!(r.status, 201, "{}", r.text());
        let id = r.json()["id"].as_str().unwrap().to_string();
        watch_search(&d, &id, |v| {
            v["status"] == "running" && v["generation"].as_u64().unwrap() >= 2
        });
        let r = d.send(
            "DELETE",
            &format!("/v1/searches/{id}"),
            &serde_json::Value::Null,
        );
        assert_eq!(r.status, 202, "{}", r.text());
        assert_eq!(r.json()["status"], "running", "seed {seed}: {}", r.text());
        watch_search(&d, &id, |v| v["status"] == "cancelled");
    }
}

#[test]
fn a_task_submitted_remotely_is_removed_remotely_its_search_cancelled_its_results_kept() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let st = state.to_str().unwrap();
    let d = Daemon::start(&state);
    // Submitted through the API from a folder of the user's, not the watched one.
    let src = root.path().join("mine");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("seg.csv"), seg_samples(20)).unwrap();
    let search = "\n[search]\nalgorithm = \"random\"\nbudget = 100000\nbatch = 4\nseed = 2\n";
    std::fs::write(src.join("rm.toml"), seg_task("seg-rm", search)).unwrap();
    let toml = src.join("rm.toml");
    let out = crate::common::aiop(&["submit", toml.to_str().unwrap(), "--state", st], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = d.wait_ready("seg-rm")["spec_hash"]
        .as_str()
        .unwrap()
        .to_string();
    let id = format!("t-seg-rm-{}", &version[..12]);
    watch_search(&d, &id, |v| v["status"] == "running");

    let remove = || crate::common::aiop(&["remove", "seg-rm", "--state", st], "");
    let out = remove();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.starts_with("removing task seg-rm: "), "{said}");
    // The task file left the watched folder; the samples file it read stays.
    let tasks = d.tasks_dir();
    assert!(!tasks.join("rm.toml").exists());
    assert!(tasks.join("seg.csv").exists());
    cancelled_with_its_task_file(&d, &id);
    let t = wait_for("the task marked removed", || {
        let t = d.get("/v1/tasks/seg-rm").json();
        t["removed_at"].is_u64().then_some(t)
    });
    assert_eq!(t["spec_hash"], version.as_str(), "its record is kept: {t}");
    // Again: answered as it is; an unknown task is not found.
    let out = remove();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("removed already"),
        "{said}"
    );
    let r = d.send("DELETE", "/v1/tasks/nope", &serde_json::Value::Null);
    assert_eq!(r.status, 404, "{}", r.text());
    // Submitted again, it comes back.
    let out = crate::common::aiop(&["submit", toml.to_str().unwrap(), "--state", st], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the task back", || {
        let t = d.get("/v1/tasks/seg-rm").json();
        t["removed_at"].is_null().then_some(())
    });
}

/// Wait for search `id` to be cancelled because its task file was deleted, and check that it
/// kept what it found.
fn cancelled_with_its_task_file(d: &Daemon, id: &str) {
    let seen = watch_search(d, id, |v| v["status"] == "cancelled");
    let last = seen.last().unwrap();
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("task file was deleted"),
        "{last}"
    );
    assert!(!last["results"].as_array().unwrap().is_empty(), "{last}");
}
