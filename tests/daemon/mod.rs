//! The daemon end to end: the real `aiop serve` binary on a temporary state directory, real HTTP
//! over loopback, task files dropped into the watched folder, signals.

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
    fn start(state: &Path) -> Daemon {
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
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
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

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The first `n` NB-201 architectures with their CIFAR-10 labels, as a samples CSV.
fn nb201_samples(n: usize) -> String {
    let table = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/search_spaces/nb201/labels.csv"
    ))
    .unwrap();
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let ai = header.iter().position(|h| *h == "arch_str").unwrap();
    let vi = header.iter().position(|h| *h == "val_acc_cifar10").unwrap();
    let mut csv = String::from("arch,value\n");
    for l in lines.take(n) {
        let f: Vec<&str> = l.split(',').collect();
        csv.push_str(&format!("{},{}\n", f[ai], f[vi]));
    }
    csv
}

/// A malformed task file: its name, its content, extra files beside it, and what its `.error`
/// report must contain.
type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, String)>, Vec<&'a str>);

fn task_toml(name: &str, samples: &str) -> String {
    format!("name = \"{name}\"\nspace = \"nb201\"\nhead = \"cifar10\"\nsamples = \"{samples}\"\n")
}

/// Write a file the way careful users do: under a hidden name, then renamed into place.
fn drop_file(dir: &Path, name: &str, content: &[u8]) {
    let tmp = dir.join(format!(".{name}.partial"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[test]
fn daemon_accepts_rejects_and_drains_on_sigterm() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let mut d = Daemon::start(&state);
    let h = d.get("/healthz");
    assert_eq!((h.status, h.json()["status"].as_str()), (200, Some("ok")));

    let tasks = d.tasks_dir();
    assert!(tasks.is_dir(), "the watched folder is created");
    drop_file(&tasks, "c10.csv", nb201_samples(20).as_bytes());
    drop_file(
        &tasks,
        "c10.toml",
        task_toml("nb201-c10", "c10.csv").as_bytes(),
    );
    let t = wait_for("the task", || d.task("nb201-c10"));
    assert_eq!(t["status"], "queued");
    assert_eq!(t["versions"], 1);
    let rec = d.get("/v1/tasks/nb201-c10").json();
    assert_eq!(rec["versions"][0]["samples"], 20);
    assert!(!tasks.join("c10.toml.error").exists());

    // Malformed files: (task file, its content, extra files, what its .error must say).
    std::fs::write(state.join("outside.csv"), nb201_samples(3)).unwrap();
    let bad_value = nb201_samples(5).replacen("81.9", "n/a", 1);
    let bad_arch = nb201_samples(5).replacen("avg_pool_3x3~0", "max_pool_9x9~0", 1);
    let mut binary = b"name = \"bin\"\n".to_vec();
    binary.extend_from_slice(&[0, 159, 146, 150, 0, 1, 2]);
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
            "nosamples.toml",
            task_toml("ns", "missing.csv").into_bytes(),
            vec![],
            vec!["nosamples.toml", "field: samples", "missing.csv"],
        ),
        (
            "value.toml",
            task_toml("v", "value.csv").into_bytes(),
            vec![("value.csv", bad_value)],
            vec!["value.csv", "line: 2", "field: value", "n/a"],
        ),
        (
            "arch.toml",
            task_toml("a", "arch.csv").into_bytes(),
            vec![("arch.csv", bad_arch)],
            vec!["arch.csv", "line: 2", "field: arch"],
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
            "dupname.toml",
            task_toml("nb201-c10", "c10.csv").into_bytes(),
            vec![],
            vec!["dupname.toml", "field: name", "c10.toml"],
        ),
        (
            "binary.toml",
            binary,
            vec![],
            vec!["binary.toml", "binary file"],
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

    for (name, _, _, expect) in &cases {
        let report = wait_for(name, || {
            std::fs::read_to_string(tasks.join(format!("{name}.error"))).ok()
        });
        for e in expect {
            assert!(report.contains(e), "{name}.error lacks '{e}':\n{report}");
        }
        assert_eq!(d.get("/healthz").status, 200);
    }
    let report = wait_for("huge.toml.error", || {
        std::fs::read_to_string(tasks.join("huge.toml.error")).ok()
    });
    assert!(
        report.contains("huge.toml") && report.contains("52428800 bytes"),
        "{report}"
    );
    assert_eq!(
        d.get("/v1/tasks").json()["tasks"].as_array().unwrap().len(),
        1
    );

    // Fixing a file clears its report.
    drop_file(&tasks, "space.toml", task_toml("sp", "c10.csv").as_bytes());
    wait_for("the fixed task", || d.task("sp"));
    wait_for("the stale report to go", || {
        (!tasks.join("space.toml.error").exists()).then_some(())
    });

    let metrics = d.get("/metrics").text();
    let rejected: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("aiop_task_files_rejected_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(rejected >= cases.len() as f64 + 1.0, "{metrics}");

    // The graph endpoint answers real statistics.
    let arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|";
    let body =
        serde_json::json!({"space": "nb201", "task": "cifar10", "archs": [arch]}).to_string();
    let r = request(
        &d.addr,
        "POST",
        "/v1/graph",
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
        T,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["graphs"][0]["mparams"].as_f64().unwrap() > 0.0);

    // The client command.
    let out = Command::new(env!("CARGO_BIN_EXE_aiop"))
        .args(["status", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("nb201-c10") && text.contains("queued"),
        "{text}"
    );

    d.signal("-TERM");
    let status = d.wait_exit(Duration::from_secs(GRACE_SECS + 3));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    assert!(!state.join("aiop.addr").exists());
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
    d.signal("-KILL");
    let status = d.wait_exit(T);
    assert_eq!(status.code(), None, "killed by a signal");
    drop(d);

    // While the daemon is down, one task file is deleted.
    std::fs::remove_file(tasks.join("g.toml")).unwrap();
    let mut d = Daemon::start(&state);
    let t = d.task("keep").expect("the task survives kill -9");
    assert_eq!(
        (&t["version"], &t["status"]),
        (&version, &serde_json::json!("queued"))
    );
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
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
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
}

#[test]
fn a_stuck_client_cannot_hold_shutdown_past_the_grace_period() {
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
    let t0 = Instant::now();
    d.signal("-TERM");
    let status = d.wait_exit(Duration::from_secs(GRACE_SECS + 3));
    assert_eq!(status.code(), Some(0));
    assert!(
        t0.elapsed() < Duration::from_secs(GRACE_SECS + 2),
        "{:?}",
        t0.elapsed()
    );
    drop(stuck);
}
