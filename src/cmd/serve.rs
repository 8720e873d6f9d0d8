//! `aiop serve` (the daemon) and its clients `aiop status`, `aiop searches`, `aiop submit`:
//! configuration, logging, the tokio runtime and the OS signals live here; the daemon itself is
//! [`aiop::serve::run`].

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use prometheus::Registry;
use tracing_subscriber::EnvFilter;

use aiop::client;
use aiop::config::{Config, LogFormat, Overrides};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (default: config/aiop.toml when it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory (store, address file); overrides state_dir.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Watched folder of task files; overrides tasks_dir.
    #[arg(long, value_name = "DIR")]
    pub tasks: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:9187 (port 0: any free port); overrides listen.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Address of the daemon [default: the one in <STATE>/aiop.addr with --state, else
    /// 127.0.0.1:9187].
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<String>,
    /// State directory of the daemon, to read the address it listens on from.
    #[arg(long, value_name = "DIR", conflicts_with = "addr")]
    pub state: Option<PathBuf>,
    /// Print the raw JSON answers instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// Where a client finds the daemon (shared by the client commands).
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Address of the daemon [default: the one in <STATE>/aiop.addr with --state, else
    /// 127.0.0.1:9187].
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<String>,
    /// State directory of the daemon, to read the address it listens on from.
    #[arg(long, value_name = "DIR", conflicts_with = "addr")]
    pub state: Option<PathBuf>,
}

impl DaemonArgs {
    pub fn resolve(&self) -> anyhow::Result<String> {
        daemon_addr(self.addr.as_deref(), self.state.as_deref())
    }
}

fn daemon_addr(addr: Option<&str>, state: Option<&std::path::Path>) -> anyhow::Result<String> {
    use std::net::ToSocketAddrs;
    Ok(match (addr, state) {
        (Some(addr), _) => {
            if addr.to_socket_addrs().is_err() {
                return Err(super::UsageError(format!(
                    "--addr {addr}: not an address (host:port, e.g. 127.0.0.1:9187)"
                ))
                .into());
            }
            addr.to_string()
        }
        (None, Some(state)) => {
            let f = state.join(aiop::serve::ADDR_FILE);
            match std::fs::read_to_string(&f) {
                // A daemon writes the file whole (renamed into place) once it listens.
                Ok(text) if text.trim().to_socket_addrs().is_ok() => text.trim().to_string(),
                Ok(text) => {
                    return Err(super::NoDaemon(format!(
                        "no daemon runs with the state folder {}: its {} holds no address ({:?})",
                        state.display(),
                        aiop::serve::ADDR_FILE,
                        text.trim()
                    ))
                    .into())
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound
                            | std::io::ErrorKind::NotADirectory
                            | std::io::ErrorKind::IsADirectory
                    ) =>
                {
                    return Err(super::NoDaemon(format!(
                        "no daemon runs with the state folder {}: it holds no {} (is aiop serve running?)",
                        state.display(),
                        aiop::serve::ADDR_FILE
                    ))
                    .into())
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("reading {} (is aiop serve running?)", f.display())
                    })
                }
            }
        }
        (None, None) => "127.0.0.1:9187".to_string(),
    })
}

#[derive(Debug, Args)]
pub struct SearchesArgs {
    /// Show this search in detail (results once it has ended) instead of listing all.
    pub id: Option<String>,
    /// Cancel the search ID (its results so far are kept).
    #[arg(long, requires = "id")]
    pub cancel: bool,
    /// Delete the ended search ID for good (record, checkpoint, history); its record is
    /// printed a last time (with --json, to export it). A queued or running one is refused:
    /// --cancel it first.
    #[arg(long, requires = "id", conflicts_with = "cancel")]
    pub delete: bool,
    /// List only the searches in this state (queued, running, done, failed, cancelled).
    #[arg(long, conflicts_with = "id")]
    pub status: Option<String>,
    /// List only the searches of this task.
    #[arg(long, conflicts_with = "id")]
    pub task: Option<String>,
    /// List at most this many (the newest ones); all by default.
    #[arg(long, conflicts_with = "id", value_parser = clap::value_parser!(u64).range(1..))]
    pub last: Option<u64>,
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Print the raw JSON answer.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// A search spec (JSON, as `POST /v1/searches` takes it) or a task file (TOML; it is
    /// checked here, then sent with the files it names).
    pub file: PathBuf,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The task's name.
    pub name: String,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// `aiop remove NAME`: `DELETE /v1/tasks/{name}`, then what it did.
pub fn remove(a: RemoveArgs) -> anyhow::Result<()> {
    let addr = a.daemon.resolve()?;
    let path = format!("/v1/tasks/{}", client::path_segment(&a.name));
    let r = call(&addr, "DELETE", &path, None)?;
    let v = r.json();
    let file = v["source"].as_str().unwrap_or("?");
    if r.status == 202 {
        println!(
            "removing task {}: {file} deleted; the daemon marks it removed and cancels its \
             searches (its record, model and results are kept)",
            a.name
        );
    } else {
        println!(
            "task {} was removed already (its file {file} is gone)",
            a.name
        );
    }
    Ok(())
}

/// The bearer token for mutating requests: `AIOP_TOKEN` when set.
fn auth_headers(token: &Option<String>) -> Vec<(&'static str, String)> {
    let mut h = vec![("Content-Type", "application/json".to_string())];
    if let Some(t) = token {
        h.push(("Authorization", format!("Bearer {t}")));
    }
    h
}

fn call(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> anyhow::Result<client::Response> {
    let token = std::env::var("AIOP_TOKEN").ok().filter(|t| !t.is_empty());
    let h = auth_headers(&token);
    let headers: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = client::request(addr, method, path, &headers, body, Duration::from_secs(30))
        .with_context(|| format!("is aiop serve running at {addr}?"))?;
    if !(200..300).contains(&r.status) {
        return Err(Refused {
            request: format!("{method} {path}"),
            status: r.status,
            body: r.text(),
        }
        .into());
    }
    Ok(r)
}

/// The daemon answered a client command with an error status; `main` turns the status into
/// the exit code (what was sent is bad data, not allowed, or the daemon is stopping).
#[derive(Debug, thiserror::Error)]
#[error("{request}: HTTP {status}: {body}")]
pub struct Refused {
    pub request: String,
    pub status: u16,
    pub body: String,
}

/// `GET /v1/searches` with the filters asked for; `--last N` asks for the total first, then
/// for the page holding the newest N.
fn list_searches(addr: &str, a: &SearchesArgs) -> anyhow::Result<serde_json::Value> {
    let mut query: Vec<String> = Vec::new();
    for (k, v) in [("status", &a.status), ("task", &a.task)] {
        if let Some(v) = v {
            query.push(format!("{k}={}", client::path_segment(v)));
        }
    }
    let get = |page: &[String]| {
        let q = query
            .iter()
            .chain(page)
            .cloned()
            .collect::<Vec<_>>()
            .join("&");
        let path = if q.is_empty() {
            "/v1/searches".to_string()
        } else {
            format!("/v1/searches?{q}")
        };
        call(addr, "GET", &path, None).map(|r| r.json())
    };
    let Some(last) = a.last else {
        return get(&[]);
    };
    let total = get(&["limit=1".into()])?["total"].as_u64().unwrap_or(0);
    let offset = total.saturating_sub(last);
    get(&[format!("offset={offset}"), format!("limit={last}")])
}

pub fn searches(a: SearchesArgs) -> anyhow::Result<()> {
    let addr = a.daemon.resolve()?;
    let mut out = std::io::stdout().lock();
    let Some(id) = &a.id else {
        let list = list_searches(&addr, &a)?;
        if a.json {
            writeln!(out, "{list}")?;
            return Ok(());
        }
        let rows = list["searches"].as_array().cloned().unwrap_or_default();
        let total = list["total"].as_u64().unwrap_or(rows.len() as u64);
        if total == rows.len() as u64 {
            writeln!(out, "{} search(es)", rows.len())?;
        } else {
            writeln!(out, "{} search(es), the last {} shown", total, rows.len())?;
        }
        for s in rows {
            writeln!(
                out,
                "  {:<28} {:<24} {:<9} {:>5.1}% gen {:<5} best {}",
                s["id"].as_str().unwrap_or("?"),
                s["task"].as_str().unwrap_or("?"),
                s["status"].as_str().unwrap_or("?"),
                100.0 * s["progress"].as_f64().unwrap_or(0.0),
                s["generation"],
                s["best"]["predicted"]
                    .as_f64()
                    .map_or("-".into(), |b| format!("{b:.4}")),
            )?;
        }
        return Ok(());
    };
    let path = format!("/v1/searches/{}", client::path_segment(id));
    let r = if a.cancel {
        call(&addr, "DELETE", &path, None)?
    } else if a.delete {
        call(&addr, "DELETE", &format!("{path}?purge=true"), None)?
    } else {
        call(&addr, "GET", &path, None)?
    };
    let v = r.json();
    if a.json {
        writeln!(out, "{v}")?;
        return Ok(());
    }
    if a.cancel {
        writeln!(out, "cancel accepted: {}", cancel_outcome(&v))?;
    }
    writeln!(
        out,
        "{} ({}): {}, {} of {} evaluations, generation {}{}",
        v["id"].as_str().unwrap_or("?"),
        v["task"].as_str().unwrap_or("?"),
        v["status"].as_str().unwrap_or("?"),
        v["evaluations"],
        v["budget"],
        v["generation"],
        v["error"]
            .as_str()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    )?;
    if v["deleted"] == true {
        writeln!(
            out,
            "  deleted: its record, checkpoint and history are gone from the store"
        )?;
    }
    let ended: Option<aiop::search::EndReason> =
        serde_json::from_value(v["ended_because"].clone()).unwrap_or(None);
    if let Some(e) = ended.filter(|e| *e != aiop::search::EndReason::Budget) {
        writeln!(out, "  ended short of its budget: {}", e.describe())?;
    }
    let rows = match (v["results"].as_array(), v["results_so_far"].as_array()) {
        (Some(r), _) => r.clone(),
        (None, Some(r)) => {
            writeln!(out, "  so far (generation {}):", v["generation"])?;
            r.clone()
        }
        (None, None) if v["best"].is_object() => vec![v["best"].clone()],
        (None, None) => Vec::new(),
    };
    for r in rows {
        writeln!(
            out,
            "  {:>10.4} {:>10.3} MFLOPs {:>8.4} M params  {}",
            r["predicted"].as_f64().unwrap_or(f64::NAN),
            r["mflops"].as_f64().unwrap_or(f64::NAN),
            r["mparams"].as_f64().unwrap_or(f64::NAN),
            r["arch"].as_str().unwrap_or("<graph>")
        )?;
    }
    Ok(())
}

/// What a cancellation the daemon accepted does, by the state of the search it answered with
/// (`DELETE /v1/searches/{id}` is idempotent: the same answer for a search cancelled before).
fn cancel_outcome(v: &serde_json::Value) -> String {
    let id = v["id"].as_str().unwrap_or("?");
    match v["status"].as_str().unwrap_or("?") {
        "running" => format!(
            "{id} is running; it stops after its current generation and keeps its results so far"
        ),
        "queued" => format!("{id} is queued; it is cancelled before it starts"),
        "cancelled" => format!("{id} is cancelled; its results so far are kept"),
        s @ ("done" | "failed") => {
            format!("{id} had already ended ({s}); nothing to cancel, its record stays as it is")
        }
        s => format!("{id} is {s}"),
    }
}

pub fn submit(a: SubmitArgs) -> anyhow::Result<()> {
    let addr = a.daemon.resolve()?;
    super::check_input(&a.file, "FILE")?;
    let is_toml = a.file.extension().is_some_and(|e| e == "toml");
    let r = if is_toml {
        // Checked here first (precise errors without a round trip), then sent with its files.
        let spec = aiop::taskfile::load(&a.file, &aiop::taskfile::Limits::default())?;
        let folder = a
            .file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let mut rel: Vec<String> = vec![spec.samples_file.clone()];
        for s in &spec.samples {
            if let aiop::taskfile::SampleInput::Graph { path, .. } = &s.input {
                rel.push(path.clone());
            }
        }
        let mut files = Vec::with_capacity(rel.len() + 1);
        for p in rel {
            let text = std::fs::read_to_string(folder.join(&p))
                .with_context(|| format!("reading {}", folder.join(&p).display()))?;
            files.push(serde_json::json!({"path": p, "content": text}));
        }
        let name = a
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .context("the task file has no name")?;
        let text = std::fs::read_to_string(&a.file)
            .with_context(|| format!("reading {}", a.file.display()))?;
        files.push(serde_json::json!({"path": name, "content": text}));
        let body = serde_json::json!({"files": files}).to_string();
        call(&addr, "POST", "/v1/tasks", Some(body.as_bytes()))?
    } else {
        let text = super::read_input(&a.file, "FILE")?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| super::DataError(format!("{}: not JSON: {e}", a.file.display())))?;
        call(
            &addr,
            "POST",
            "/v1/searches",
            Some(v.to_string().as_bytes()),
        )?
    };
    writeln!(std::io::stdout().lock(), "{}", r.text())?;
    Ok(())
}

/// The daemon's log: standard error, where a write that fails (the reader of a pipe gone: a
/// log shipper restarted, `aiop serve 2>&1 | head`) is dropped, not an error. tracing says a
/// failed write with `eprintln!`, which panics on that same closed stream: the daemon died at
/// its next log line.
struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(std::io::stderr().write(buf).unwrap_or(buf.len()))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogSink);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// Resolves on SIGTERM or SIGINT (handlers installed before the daemon starts).
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{which} received");
    })
}

pub fn serve(a: ServeArgs, registry: Registry) -> anyhow::Result<()> {
    let ov = Overrides {
        config_file: a.config,
        state_dir: a.state,
        tasks_dir: a.tasks,
        listen: a.listen,
    };
    let config = Config::load(&ov, Config::env_vars(std::env::vars_os())?)?;
    let log_format = config.log_format;
    init_tracing(log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("aiop-async")
        .build()
        .context("starting the async runtime")?;
    let out = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let shutdown = shutdown_signal()?;
        let tuner = aiop::jobs::ModelTuner::new(
            config.state_dir.join(aiop::serve::MODELS_DIR),
            aiop::tuned::BaseModel::from_option(config.model.as_deref()),
            &registry,
        )?;
        aiop::serve::run(config, listener, registry, Some(Arc::new(tuner)), shutdown).await?;
        anyhow::Ok(())
    });
    // `run` has drained and flushed within the grace period; work it abandoned (a fine-tuning job
    // still running, queued again at the next start) must not hold the exit, as dropping the
    // runtime would (it waits for blocking tasks).
    rt.shutdown_background();
    match out {
        Err(e) if log_format == LogFormat::Json => {
            tracing::error!(error = %super::error_message(&e), "the daemon stopped on an error");
            Err(e.context(super::Logged))
        }
        out => out,
    }
}

pub fn status(a: StatusArgs) -> anyhow::Result<()> {
    let t = Duration::from_secs(5);
    let addr = daemon_addr(a.addr.as_deref(), a.state.as_deref())?;
    let get = |path: &str| -> anyhow::Result<client::Response> {
        let r = client::request(&addr, "GET", path, &[], None, t)
            .with_context(|| format!("is aiop serve running at {addr}?"))?;
        anyhow::ensure!(
            r.status == 200,
            "GET {path}: HTTP {}: {}",
            r.status,
            r.text()
        );
        Ok(r)
    };
    let health = get("/healthz")?.json();
    let tasks = get("/v1/tasks")?.json();
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{health}\n{tasks}")?;
        return Ok(());
    }
    writeln!(
        out,
        "aiop {} at {}: {}",
        health["version"].as_str().unwrap_or("?"),
        addr,
        health["status"].as_str().unwrap_or("?")
    )?;
    let list = tasks["tasks"].as_array().cloned().unwrap_or_default();
    writeln!(out, "{} task(s)", list.len())?;
    for t in list {
        let removed = if t["removed"].as_bool() == Some(true) {
            " (file removed)"
        } else {
            ""
        };
        writeln!(
            out,
            "  {:<24} {:<8} v{} {}{}{}",
            t["name"].as_str().unwrap_or("?"),
            t["status"].as_str().unwrap_or("?"),
            t["versions"],
            t["version"].as_str().unwrap_or("").get(..8).unwrap_or(""),
            removed,
            t["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default(),
        )?;
        if let Some(p) = t.get("tuning") {
            let pct = p["fraction"]
                .as_f64()
                .map(|f| format!("{:.0}% ", 100.0 * f))
                .unwrap_or_default();
            let eta = p["eta_secs"]
                .as_f64()
                .map(|s| format!(", at most {} left", human_secs(s)))
                .unwrap_or_default();
            writeln!(
                out,
                "  {:<24} fine-tuning: {pct}({} of at most {} steps, {} in{eta})",
                "",
                p["steps"],
                p["planned_steps"],
                human_secs(p["elapsed_secs"].as_f64().unwrap_or(0.0)),
            )?;
        }
        if let Some(e) = t["file_error"].as_str() {
            writeln!(
                out,
                "  {:<24} its file is rejected (the version above stands): {e}",
                ""
            )?;
        }
    }
    let rejected = tasks["rejected"].as_array().cloned().unwrap_or_default();
    if !rejected.is_empty() {
        writeln!(
            out,
            "{} task file(s) rejected (see <file>.error):",
            rejected.len()
        )?;
        for r in rejected {
            writeln!(
                out,
                "  {}: {}",
                r["file"].as_str().unwrap_or("?"),
                r["error"].as_str().unwrap_or("?")
            )?;
        }
    }
    Ok(())
}

/// `secs` as `1h02m`, `3m05s` or `42s`.
fn human_secs(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}
