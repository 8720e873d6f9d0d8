//! The daemon end to end: the real `aiop serve` binary on a temporary state directory, real HTTP
//! over loopback, task files dropped into the watched folder, signals. `malformed` and `search`
//! hold the issue's acceptance scenarios; this file the helpers and the life-cycle tests.

mod malformed;
mod search;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aiop::client::{request, Response};

const T: Duration = Duration::from_secs(5);
const GRACE_SECS: u64 = 3;

/// A running `aiop serve`; killed when dropped.
struct Daemon {
    child: Child,
    addr: String,
    state: PathBuf,
}

impl Daemon {
    /// A daemon on `state` that checkpoints its searches after every generation, so that tests
    /// can watch (and interrupt) a search generation by generation.
    fn start(state: &Path) -> Daemon {
        Daemon::start_with(state, &[("AIOP_CHECKPOINT_INTERVAL_MS", "0")])
    }

    /// A daemon on `state` with these `AIOP_*` settings besides the tests' usual ones.
    fn start_with(state: &Path, env: &[(&str, &str)]) -> Daemon {
        let _ = std::fs::remove_file(state.join("aiop.addr"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state.with_extension("log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_aiop"))
            .args(["serve", "--listen", "127.0.0.1:0", "--state"])
            .arg(state)
            // No config/aiop.toml in the working directory: defaults, env and flags only.
            .current_dir(state.parent().unwrap())
            .env("AIOP_WATCH_DEBOUNCE_MS", "100")
            .env("AIOP_SHUTDOWN_GRACE_SECS", GRACE_SECS.to_string())
            .env("AIOP_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let addr_file = state.join("aiop.addr");
        let addr = wait_for("the address file", || {
            std::fs::read_to_string(&addr_file)
                .ok()
                .filter(|s| s.ends_with('\n'))
        });
        Daemon {
            child,
            addr: addr.trim().to_string(),
            state: state.to_path_buf(),
        }
    }

    fn get(&self, path: &str) -> Response {
        request(&self.addr, "GET", path, &[], None, T).unwrap()
    }

    fn send(&self, method: &str, path: &str, body: &serde_json::Value) -> Response {
        let b = body.to_string();
        request(
            &self.addr,
            method,
            path,
            &[("Content-Type", "application/json")],
            Some(b.as_bytes()),
            Duration::from_secs(30),
        )
        .unwrap()
    }

    /// `GET /metrics` as (series → value), e.g. `aiop_searches{status="done"}`.
    fn metrics(&self) -> std::collections::HashMap<String, f64> {
        self.get("/metrics")
            .text()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    /// Wait until task `name` is ready; returns its record.
    fn wait_ready(&self, name: &str) -> serde_json::Value {
        wait_long(&format!("task {name} ready"), || {
            let r = self.get(&format!("/v1/tasks/{name}"));
            let v = r.json();
            assert_ne!(v["status"], "failed", "{v}");
            (v["status"] == "ready").then_some(v)
        })
    }

    /// `POST /v1/predict` of the base model for NB-201 CIFAR-10: the daemon answers.
    fn assert_predicts(&self) {
        let r = self.send(
            "POST",
            "/v1/predict",
            &serde_json::json!({"space": "nb201", "task": "cifar10", "archs": [NB201_ARCH]}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.json()["predictions"][0]["prediction"]
            .as_f64()
            .unwrap()
            .is_finite());
    }

    fn tasks_dir(&self) -> PathBuf {
        self.state.join("tasks")
    }

    fn task(&self, name: &str) -> Option<serde_json::Value> {
        let r = self.get("/v1/tasks");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
    }

    fn signal(&self, sig: &str) {
        send_signal(sig, self.child.id());
    }

    /// SIGKILL at once (no `kill` process to spawn first, so the signal lands as soon as the
    /// test decides).
    fn kill_now(&mut self) {
        self.child.kill().unwrap();
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let end = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < end,
                "the daemon did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kill SIG PID`, which must succeed.
fn send_signal(sig: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_within(what, Duration::from_secs(15), Duration::from_millis(25), f)
}

/// For fine-tuning and searches, which share 2 cores with other tests in CI.
fn wait_long<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_within(what, Duration::from_secs(120), Duration::from_millis(10), f)
}

fn wait_within<T>(
    what: &str,
    within: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(every);
    }
}

const NB201_ARCH: &str =
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|";

/// `n` TransNAS-Bench-101 macro architectures (every 160th row of the shipped table) with
/// their real `segmentsemantic` labels, as a samples CSV.
fn seg_samples(n: usize) -> String {
    let mut csv = String::from("arch,value\n");
    for (arch, value) in crate::common::table_rows("tnb101_macro", "segmentsemantic", 160, n) {
        csv.push_str(&format!("{arch},{value}\n"));
    }
    assert_eq!(csv.lines().count(), n + 1);
    csv
}

/// The TNB-101 macro `segmentsemantic` task file (2 fine-tuning epochs: tests stay quick),
/// with `search` appended (a `[search]` table, or nothing).
fn seg_task(name: &str, search: &str) -> String {
    format!(
        "name = \"{name}\"\nspace = \"tnb101_macro\"\nhead = \"segmentsemantic\"\n\
         samples = \"seg.csv\"\n\n[finetune]\nepochs = 2\nseed = 7\n{search}"
    )
}

/// Poll a search until `done` says so; returns every answer seen, the last one last.
fn watch_search(
    d: &Daemon,
    id: &str,
    mut done: impl FnMut(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let mut seen = Vec::new();
    wait_long(&format!("search {id}"), || {
        let r = d.get(&format!("/v1/searches/{id}"));
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_ne!(v["status"], "failed", "{v}");
        let stop = done(&v);
        seen.push(v);
        stop.then_some(())
    });
    seen
}

/// The first `n` NB-201 architectures with their CIFAR-10 labels, as a samples CSV.
fn nb201_samples(n: usize) -> String {
    let mut csv = String::from("arch,value\n");
    for (arch, value) in crate::common::nb201_cifar10_rows(n) {
        csv.push_str(&format!("{arch},{value}\n"));
    }
    csv
}

fn task_toml(name: &str, samples: &str) -> String {
    format!("name = \"{name}\"\nspace = \"nb201\"\nhead = \"cifar10\"\nsamples = \"{samples}\"\n")
}

/// A valid NB-201 task, fine-tuned for 1 epoch only.
fn quick_task(name: &str, samples: &str) -> String {
    format!("{}[finetune]\nepochs = 1\n", task_toml(name, samples))
}

/// Write a file the way careful users do: under a hidden name, then renamed into place.
fn drop_file(dir: &Path, name: &str, content: &[u8]) {
    let tmp = dir.join(format!(".{name}.partial"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[test]
fn a_log_reader_that_goes_away_does_not_take_the_daemon_down() {
    // Standard error a pipe whose reader has gone (a log shipper restarted, `| head`): every
    // log line fails to be written. The daemon panicked at its first.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_aiop"))
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(&state)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let addr = wait_for("the address file", || {
        std::fs::read_to_string(state.join("aiop.addr"))
            .ok()
            .filter(|s| s.ends_with('\n'))
    });
    let r = request(addr.trim(), "GET", "/healthz", &[], None, T).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    send_signal("-TERM", child.id());
    let status = wait_within(
        "the exit",
        Duration::from_secs(15),
        Duration::from_millis(20),
        || child.try_wait().unwrap(),
    );
    assert!(status.success(), "{status:?}");
}

#[test]
fn kill_9_then_restart_keeps_tasks() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let mut d = Daemon::start(&state);
    let tasks = d.tasks_dir();
    drop_file(&tasks, "k.csv", nb201_samples(20).as_bytes());
    drop_file(&tasks, "k.toml", task_toml("keep", "k.csv").as_bytes());
    drop_file(&tasks, "g.csv", nb201_samples(4).as_bytes());
    drop_file(&tasks, "g.toml", task_toml("gone", "g.csv").as_bytes());
    let version = wait_for("the task", || d.task("keep"))["version"].clone();
    wait_for("the second task", || d.task("gone"));
    wait_for("fine-tuning to start", || {
        (d.task("keep").unwrap()["status"] == "tuning").then_some(())
    });
    d.signal("-KILL");
    let status = d.wait_exit(T);
    assert_eq!(status.code(), None, "killed by a signal");
    drop(d);

    // While the daemon is down, one task file is deleted.
    std::fs::remove_file(tasks.join("g.toml")).unwrap();
    let mut d = Daemon::start(&state);
    let t = d.task("keep").expect("the task survives kill -9");
    // Its fine-tuning (100 epochs) was interrupted: queued again, running again.
    assert_eq!(t["version"], version);
    assert!(t["status"] == "queued" || t["status"] == "tuning", "{t}");
    assert!(d.metrics()["aiop_jobs_recovered_total"] >= 1.0);
    let gone = wait_for("the removed task", || {
        d.task("gone").filter(|t| t["removed"] == true)
    });
    assert_eq!(gone["versions"], 1, "a removed task keeps its versions");
    d.signal("-INT");
    assert_eq!(
        d.wait_exit(Duration::from_secs(GRACE_SECS + 3)).code(),
        Some(0)
    );

    // The stopped daemon's store round-trips through `aiop store export` / `import`.
    let aiop = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_aiop"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let dump = root.path().join("dump.jsonl");
    let copy = root.path().join("copy");
    let st = state.as_os_str();
    aiop(&[
        os("store"),
        os("export"),
        os("--state"),
        st,
        os("-o"),
        dump.as_os_str(),
    ]);
    aiop(&[
        os("store"),
        os("import"),
        os("--state"),
        copy.as_os_str(),
        dump.as_os_str(),
    ]);
    let again = aiop(&[os("store"), os("export"), os("--state"), copy.as_os_str()]);
    let first = std::fs::read_to_string(&dump).unwrap();
    assert_eq!(String::from_utf8(again).unwrap(), first);
    assert!(
        first.contains("\"keep\"") && first.lines().count() >= 5,
        "{first}"
    );
}

/// The series of a running fine-tuning job, which the dashboard plots: they exist only while
/// one runs.
const WHILE_TUNING: [&str; 2] = ["aiop_finetune_steps", "aiop_finetune_planned_steps"];

#[test]
fn a_stop_interrupts_a_running_fine_tune_which_runs_again_at_the_next_start() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let mut d = Daemon::start(&state);
    let tasks = d.tasks_dir();
    drop_file(&tasks, "l.csv", nb201_samples(20).as_bytes());
    // 100,000 epochs at batch 1: far longer than the grace period, or this test.
    let long = format!(
        "{}[finetune]\nepochs = 100000\nselect_epochs = false\n",
        task_toml("long", "l.csv")
    );
    drop_file(&tasks, "l.toml", long.as_bytes());
    wait_long("fine-tuning to start", || {
        d.task("long")
            .filter(|t| t["status"] == "tuning")
            .map(|_| ())
    });
    // Its progress shows, against the steps planned: 100,000 epochs × 20 networks at batch 1.
    let p = wait_long("steps taken", || {
        d.task("long")
            .map(|t| t["tuning"].clone())
            .filter(|p| p["steps"].as_u64().is_some_and(|s| s > 0))
    });
    assert_eq!(p["planned_steps"], 2_000_000, "{p}");
    assert!(p["fraction"].as_f64().unwrap() < 0.01, "{p}");
    assert!(p["eta_secs"].as_f64().unwrap() > 0.0, "{p}");
    assert_eq!(p["version"], d.task("long").unwrap()["version"]);
    // And in /metrics, as the dashboard plots it.
    let m = d.metrics();
    let series = |name: &str| m.get(&format!("{name}{{task=\"long\"}}")).copied();
    assert!(
        series("aiop_finetune_steps").is_some_and(|s| s > 0.0),
        "{m:?}"
    );
    assert_eq!(series("aiop_finetune_planned_steps"), Some(2_000_000.0));
    assert!(series("aiop_finetune_elapsed_seconds").is_some_and(|s| s > 0.0));
    let dashboard = include_str!("../../config/grafana-dashboard.json");
    for w in WHILE_TUNING {
        assert!(dashboard.contains(w), "{w}");
    }
    let one = d.get("/v1/tasks/long").json();
    assert!(one["tuning"]["steps"].as_u64().unwrap() >= p["steps"].as_u64().unwrap());
    let status = Command::new(env!("CARGO_BIN_EXE_aiop"))
        .args(["status", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("fine-tuning: 0% (") && text.contains("of at most 2000000 steps"),
        "{text}"
    );
    let t0 = Instant::now();
    d.signal("-TERM");
    assert_eq!(
        d.wait_exit(Duration::from_secs(GRACE_SECS + 3)).code(),
        Some(0)
    );
    // Stopped at its next step, not abandoned when the grace period ran out.
    assert!(
        t0.elapsed() < Duration::from_secs(GRACE_SECS),
        "{:?}",
        t0.elapsed()
    );
    drop(d);
    let log = std::fs::read_to_string(state.with_extension("log")).unwrap();
    assert!(log.contains("fine-tuning interrupted by the stop"), "{log}");
    assert!(!log.contains("abandoned"), "{log}");
    assert!(
        !state.join("models").join("long").exists()
            || std::fs::read_dir(state.join("models").join("long"))
                .unwrap()
                .next()
                .is_none(),
        "an interrupted fine-tune saves no model"
    );

    let d = Daemon::start(&state);
    assert_eq!(d.metrics()["aiop_jobs_recovered_total"], 1.0);
    wait_long("the fine-tuning to run again", || {
        d.task("long")
            .filter(|t| t["status"] == "tuning")
            .map(|_| ())
    });
}

#[test]
fn bad_config_names_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nlisten_adr = 3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aiop"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("bad.toml:2") && err.contains("listen_adr"),
        "{err}"
    );
}

#[test]
fn tells_systemd_ready_then_stopping() {
    use std::os::unix::net::UnixDatagram;
    let root = tempfile::tempdir().unwrap();
    let sock_path = root.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let state = root.path().join("state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_aiop"))
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(&state)
        .current_dir(root.path())
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1\n");
    // READY comes once the API answers.
    let addr = std::fs::read_to_string(state.join("aiop.addr")).unwrap();
    assert_eq!(
        request(addr.trim(), "GET", "/healthz", &[], None, T)
            .unwrap()
            .status,
        200
    );
    send_signal("-TERM", child.id());
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1\n");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn a_second_daemon_on_the_same_state_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let d = Daemon::start(&state);
    let out = Command::new(env!("CARGO_BIN_EXE_aiop"))
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(&state)
        .current_dir(root.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("another aiop"), "{err}");
    // The first one is untouched, address file included.
    assert!(state.join("aiop.addr").exists());
    assert_eq!(d.get("/healthz").status, 200);
    // With JSON logs, the reason it stopped is a JSON line too, said once.
    let out = Command::new(env!("CARGO_BIN_EXE_aiop"))
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(&state)
        .env("AIOP_LOG_FORMAT", "json")
        .current_dir(root.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "ERROR", "{err}");
    assert!(
        last["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("another aiop")),
        "{err}"
    );
}

/// Settings that cannot work are configuration errors (exit 78) found before anything is
/// created: a model folder that is not there, a state path that is a file, a value past its
/// ceiling (which used to panic at the first request or at shutdown).
#[test]
fn unusable_settings_exit_78_before_touching_the_state() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let file = root.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let no_model = root.path().join("no-model");
    let cases: [(&str, &std::ffi::OsStr, &str); 4] = [
        ("AIOP_MODEL", no_model.as_os_str(), "no-model"),
        ("AIOP_STATE_DIR", file.as_os_str(), "a-file"),
        (
            "AIOP_REQUEST_TIMEOUT_SECS",
            "18446744073709551615".as_ref(),
            "AIOP_REQUEST_TIMEOUT_SECS",
        ),
        ("AIOP_TOKEN", "".as_ref(), "AIOP_TOKEN"),
    ];
    for (var, value, named) in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_aiop"));
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .env(var, value)
            .current_dir(root.path());
        if var != "AIOP_STATE_DIR" {
            cmd.arg("--state").arg(&state);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{var}: {err}");
        assert!(err.contains(named), "{var}: {err}");
        assert!(!state.exists(), "{var} created the state folder");
    }
    // A configured model folder that is no checkpoint: also 78 (restarting will not fix it).
    let not_model = root.path().join("not-a-model");
    std::fs::create_dir(&not_model).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aiop"))
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(&state)
        .env("AIOP_MODEL", &not_model)
        .current_dir(root.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("not-a-model"), "{err}");
}

/// `GET /v1/spaces` names, per task the base model predicts, the member of the shipped pair that
/// answers it: the embedded base selection's choice.
#[test]
fn spaces_name_the_member_that_answers_each_base_task() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(&root.path().join("state"));
    let r = d.get("/v1/spaces");
    assert_eq!(r.status, 200, "{}", r.text());
    let spaces = r.json()["spaces"].as_array().unwrap().clone();
    let selection: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/search_spaces/predictor/base.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let picks = selection["tasks"].as_object().unwrap();
    let mut seen = 0;
    for s in &spaces {
        let space = s["space"].as_str().unwrap();
        for (task, member) in s["base"].as_object().unwrap() {
            let key = format!("{space}/{task}");
            assert_eq!(member, &picks[&key]["member"], "{key}");
            seen += 1;
        }
    }
    assert_eq!(seen, picks.len());
    let nb101 = spaces.iter().find(|s| s["space"] == "nb101").unwrap();
    assert!(nb101["base"].as_object().unwrap().is_empty(), "{nb101}");
    let members: Vec<&serde_json::Value> = picks.values().map(|p| &p["member"]).collect();
    assert!(
        members.contains(&&serde_json::json!("aio"))
            && members.contains(&&serde_json::json!("plain"))
    );
}

#[test]
fn stuck_or_idle_clients_do_not_hold_the_shutdown() {
    use std::io::Write;
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let mut d = Daemon::start(&state);
    // Half a request, never finished.
    let mut stuck = std::net::TcpStream::connect(&d.addr).unwrap();
    stuck
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // And an idle keep-alive connection, its one request answered.
    let mut idle = std::net::TcpStream::connect(&d.addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(std::io::Read::read(&mut idle, &mut buf).unwrap() > 0);
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    d.signal("-TERM");
    let status = d.wait_exit(Duration::from_secs(GRACE_SECS + 3));
    assert_eq!(status.code(), Some(0));
    // Neither is waited for: no request of theirs is being answered.
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    drop((stuck, idle));
}

#[test]
fn what_the_folder_takes_can_be_submitted_and_half_sent_headers_time_out() {
    use std::io::{Read, Write};
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let d = Daemon::start_with(
        &state,
        &[
            ("AIOP_BODY_LIMIT_BYTES", "2048"),
            ("AIOP_REQUEST_TIMEOUT_SECS", "3"),
        ],
    );
    // Over the API's body limit: refused, naming the limit and its setting.
    let big =
        serde_json::json!({"space": "nb201", "task": "cifar10", "archs": vec![NB201_ARCH; 40]});
    let r = d.send("POST", "/v1/predict", &big);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        r.text().contains("limit of 2048 bytes (body_limit_bytes)"),
        "{}",
        r.text()
    );
    // A task's files have the folder's limits, whatever the API's.
    let csv = nb201_samples(80);
    assert!(csv.len() > 2 * 2048);
    let task = serde_json::json!({"files": [
        {"path": "z.toml", "content": format!("{}mode = \"zero-shot\"\n", task_toml("z", "z.csv"))},
        {"path": "z.csv", "content": csv},
    ]});
    let r = d.send("POST", "/v1/tasks", &task);
    assert_eq!(r.status, 202, "{}", r.text());
    wait_for("the submitted task", || d.task("z"));
    // Its samples broken: the task keeps its version, and its summary says why the file is not read.
    drop_file(&d.tasks_dir(), "z.csv", b"arch,value\nnot-an-arch,1\n");
    let t = wait_for("the file's error", || {
        d.task("z").filter(|t| t["file_error"].is_string())
    });
    assert!(t["file_error"].as_str().unwrap().contains("z.csv"), "{t}");
    assert_eq!(t["versions"], 1);
    // A client that stops halfway through its headers is cut off after the time limit.
    let mut stuck = std::net::TcpStream::connect(&d.addr).unwrap();
    stuck
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stuck
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    let n = stuck.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[test]
fn client_commands_encode_ids_name_a_timeout_and_end_quietly_on_a_closed_pipe() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(&root.path().join("state"));
    // An id with a space or a `?` reaches the daemon whole.
    for id in ["a b", "x?y", "p/q#r"] {
        let o = crate::common::aiop(&["searches", id, "--addr", &d.addr], "");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("HTTP 404") && err.contains(&format!("no search '{id}'")),
            "{id}: {err}"
        );
    }
    // A reader that has gone (`aiop status | head -0`): no message, success.
    let mut child = Command::new(env!("CARGO_BIN_EXE_aiop"))
        .args(["status", "--addr", &d.addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.is_empty(),
        "{:?}: {err}",
        out.status
    );
    // A port that accepts but never answers: a timeout, said as one.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let t0 = Instant::now();
    let o = crate::common::aiop(&["status", "--addr", &addr], "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(75), "EX_TEMPFAIL: {err}");
    assert!(
        err.contains(&format!(
            "{addr}: timed out after 5 s waiting for the response"
        )),
        "{err}"
    );
    assert!(t0.elapsed() >= Duration::from_secs(5));
    // Nothing listening: EX_UNAVAILABLE.
    drop(silent);
    let o = crate::common::aiop(&["status", "--addr", &addr], "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(69), "{err}");
    assert!(err.contains("is aiop serve running at"), "{err}");
    // A search spec the daemon refuses (422) is bad data: 65, with the daemon's reason.
    let spec = root.path().join("bad.json");
    std::fs::write(
        &spec,
        r#"{"space": "nb201", "task": "cifar10", "budget": 0}"#,
    )
    .unwrap();
    let o = crate::common::aiop(&["submit", spec.to_str().unwrap(), "--addr", &d.addr], "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(65), "{err}");
    assert!(err.contains("HTTP 422") && err.contains("budget"), "{err}");
    // A daemon that wants a token, asked without one: EX_NOPERM.
    let guarded = Daemon::start_with(&root.path().join("guarded"), &[("AIOP_TOKEN", "s3cret")]);
    let o = crate::common::aiop(
        &["submit", spec.to_str().unwrap(), "--addr", &guarded.addr],
        "",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(77), "{err}");
    assert!(err.contains("HTTP 401"), "{err}");
    // Removing a task wants it too (refused before the task is even looked up).
    let o = crate::common::aiop(&["remove", "any", "--addr", &guarded.addr], "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(77), "{err}");
    assert!(err.contains("DELETE /v1/tasks/any: HTTP 401"), "{err}");
    // The scheme's name is case-insensitive; the token and the scheme are checked.
    for (auth, status) in [
        ("bearer s3cret", 404),
        ("BEARER s3cret", 404),
        ("Bearer s3cre", 401),
        ("Basic s3cret", 401),
        ("s3cret", 401),
    ] {
        let r = request(
            &guarded.addr,
            "DELETE",
            "/v1/tasks/any",
            &[("Authorization", auth)],
            None,
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(r.status, status, "{auth}: {}", r.text());
    }
}
