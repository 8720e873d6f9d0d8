//! `aiop serve` (the daemon) and `aiop status` (its client): configuration, logging, the tokio
//! runtime and the OS signals live here; the daemon itself is [`aiop::serve::run`].

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

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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
    let config = Config::load(&ov, std::env::vars())?;
    init_tracing(config.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("aiop-async")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
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
    })
}

pub fn status(a: StatusArgs) -> anyhow::Result<()> {
    let t = Duration::from_secs(5);
    let addr = match (&a.addr, &a.state) {
        (Some(addr), _) => addr.clone(),
        (None, Some(state)) => {
            let f = state.join(aiop::serve::ADDR_FILE);
            std::fs::read_to_string(&f)
                .with_context(|| format!("reading {} (is aiop serve running?)", f.display()))?
                .trim()
                .to_string()
        }
        (None, None) => "127.0.0.1:9187".to_string(),
    };
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
    }
    Ok(())
}
