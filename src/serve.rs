//! The daemon's wiring: store, predictor service, search pool, fine-tuning jobs, task folder
//! watcher and HTTP API, from start-up to drained exit.
//!
//! [`run`] takes a bound listener and a shutdown future (injected, mini-redis style, so tests
//! drive it). Invariants: the store is open, the base model loaded, interrupted searches and
//! jobs queued again and the watcher started before the API answers; the address actually bound
//! is written to `<state_dir>/aiop.addr` (atomically) and systemd is told `READY=1` only once
//! the listener accepts; on shutdown the listener stops accepting and every running search is
//! told to stop at once, then, all within one grace period: in-flight requests finish, searches
//! checkpoint their current generation and stay queued, the watcher stops, running fine-tuning
//! jobs stop at their next training step (to run again at the next start; one still running at
//! the end of the grace period is abandoned, likewise), the predictor service stops,
//! the store is flushed, the address file removed, and `run` returns `Ok` (exit 0). Every
//! component registers its own metrics in the one registry handed in.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Registry;
use tokio::net::TcpListener;

use crate::api::{self, ApiConfig, ApiError, Backend};
use crate::config::Config;
use crate::jobs::{Finetuner, Jobs, JobsError};
use crate::searches::{Searches, SearchesError};
use crate::service::{PredictorService, ServiceConfig, ServiceError};
use crate::store::{Store, StoreError};
use crate::taskfile::Limits;
use crate::tuned::BaseModel;
use crate::watch::{self, WatchConfig, WatchError, Watcher};

/// Where task models live under the state directory.
pub const MODELS_DIR: &str = "models";

/// The file holding the address the API listens on (one line, `host:port`).
pub const ADDR_FILE: &str = "aiop.addr";

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{what} {path}: {error}")]
    Io {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    Jobs(#[from] JobsError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Searches(#[from] SearchesError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("the HTTP server failed: {0}")]
    Server(std::io::Error),
    #[error("a daemon task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Time left until `deadline` (zero when past).
/// The HTTP server: the router on hyper's HTTP/1 connections, as `axum::serve` runs it, plus a
/// limit on the time a client may take to send a request's headers (`header_timeout`; hyper
/// then closes the connection, an idle keep-alive one likewise). `axum::serve` sets none, so a
/// client that stopped halfway through a request line held its connection open for ever, and
/// the shutdown until the end of the grace period. When `stop` fires (or its sender is
/// dropped) no connection is accepted any more, open ones finish the request being answered
/// and close, those answering none (idle keep-alive, headers still coming) are dropped after
/// [`IDLE_AT_SHUTDOWN`], and the future ends when the last one has gone.
async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let inner = TowerToHyperService::new(app.clone());
                    // Requests of this connection being answered: at shutdown a connection
                    // with none (idle, or still sending headers) is not waited for.
                    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                    let counter = active.clone();
                    let service = hyper::service::service_fn(move |req| {
                        let guard = Active::enter(&counter);
                        let answer = hyper::service::Service::call(&inner, req);
                        async move {
                            let r = answer.await;
                            drop(guard);
                            r
                        }
                    });
                    let mut closing = closing_rx.clone();
                    conns.spawn(async move {
                        let mut builder = hyper::server::conn::http1::Builder::new();
                        builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        tokio::pin!(conn);
                        let ended = tokio::select! {
                            r = conn.as_mut() => Some(r),
                            _ = closing.changed() => None,
                        };
                        let r = match ended {
                            Some(r) => r,
                            None => {
                                conn.as_mut().graceful_shutdown();
                                // A request being answered finishes (the grace period bounds
                                // it); a connection answering none for a moment (its last
                                // answer flushed) is dropped rather than waited for.
                                loop {
                                    tokio::select! {
                                        r = conn.as_mut() => break r,
                                        () = tokio::time::sleep(IDLE_AT_SHUTDOWN) => {
                                            if active.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                                                break Ok(());
                                            }
                                        }
                                    }
                                }
                            }
                        };
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "an HTTP connection ended with an error");
                        }
                    });
                }
                // A refused or reset connection concerns that client alone; anything else (out
                // of file descriptors) is waited out as axum::serve does, not a reason to stop.
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                ) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = &mut stop => break,
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// How long a connection answering no request may linger at shutdown (to flush its last
/// answer) before it is dropped.
const IDLE_AT_SHUTDOWN: Duration = Duration::from_millis(200);

/// One request being answered on a connection, counted while it lives.
struct Active(Arc<std::sync::atomic::AtomicUsize>);

impl Active {
    fn enter(n: &Arc<std::sync::atomic::AtomicUsize>) -> Active {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Active(n.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ServeError + 'a {
    move |source| ServeError::Io {
        what,
        path: path.to_path_buf(),
        error: source,
    }
}

/// Write `<state_dir>/aiop.addr` via a temporary file and a rename.
fn write_addr_file(state_dir: &Path, addr: std::net::SocketAddr) -> Result<(), ServeError> {
    let path = state_dir.join(ADDR_FILE);
    let tmp = state_dir.join(format!(".{ADDR_FILE}.tmp"));
    std::fs::write(&tmp, format!("{addr}\n")).map_err(io_err("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err("writing", &path))
}

/// Run the daemon on `listener` until `shutdown` completes, then drain and return. Accepted task
/// versions are fine-tuned by `finetuner` (normally a [`crate::jobs::ModelTuner`]) on
/// `max_concurrent_jobs` threads; without one they stay queued. Predictions and searches use
/// the base model of `config.model` (the embedded one when unset) and the task models under
/// `<state_dir>/models`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    registry: Registry,
    finetuner: Option<Arc<dyn Finetuner>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let state_dir = config.state_dir.clone();
    std::fs::create_dir_all(&state_dir).map_err(io_err("creating", &state_dir))?;
    let dir = state_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&dir)).await??;
    // Only now, holding the store's lock, is a leftover address file surely stale.
    let addr_file = state_dir.join(ADDR_FILE);
    let _ = std::fs::remove_file(&addr_file);
    tracing::info!(state = %state_dir.display(), tasks = store.tasks()?.len(), "store open");
    store.register_metrics(&registry)?;

    let service_cfg = ServiceConfig {
        models_dir: state_dir.join(MODELS_DIR),
        base: BaseModel::from_option(config.model.as_deref()),
        max_batch_graphs: config.max_batch_graphs,
    };
    let (st, reg) = (store.clone(), registry.clone());
    let predictor =
        tokio::task::spawn_blocking(move || PredictorService::start(service_cfg, st, &reg))
            .await??;
    let searches = Searches::start(
        config.max_concurrent_searches,
        store.clone(),
        predictor.clone(),
        &registry,
        config.checkpoint_interval(),
    )?;

    let jobs = match finetuner {
        Some(f) => Some(Jobs::start(
            config.max_concurrent_jobs,
            store.clone(),
            f,
            &registry,
            Some(searches.clone()),
        )?),
        None => {
            tracing::info!(
                "no predictor in this build: accepted tasks stay queued until one is plugged in"
            );
            None
        }
    };
    let watcher = Watcher::start(
        WatchConfig {
            dir: config.tasks_dir(),
            debounce: config.watch_debounce(),
            limits: Limits {
                max_toml_bytes: config.max_task_file_bytes,
                max_samples_bytes: config.max_samples_file_bytes,
            },
        },
        store.clone(),
        watch::Metrics::register(&registry)?,
        jobs.as_ref().map(Jobs::submitter),
        Some(searches.clone()),
    )?;

    let app = api::router(
        store.clone(),
        &registry,
        ApiConfig {
            body_limit_bytes: config.body_limit_bytes,
            max_items: config.max_predictions_per_request,
            token: config.token.clone(),
            request_timeout: std::time::Duration::from_secs(config.request_timeout_secs),
        },
        Backend {
            predictor: predictor.clone(),
            searches: searches.clone(),
            tasks_dir: config.tasks_dir(),
            limits: Limits {
                max_toml_bytes: config.max_task_file_bytes,
                max_samples_bytes: config.max_samples_file_bytes,
            },
            tuning: jobs.as_ref().map(Jobs::tuning),
        },
    )?;
    let addr = listener
        .local_addr()
        .map_err(io_err("reading the listener address of", &state_dir))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let header_timeout = std::time::Duration::from_secs(config.request_timeout_secs);
    let mut server = tokio::spawn(serve_http(listener, app, header_timeout, stop_rx));
    write_addr_file(&state_dir, addr)?;
    tracing::info!(%addr, "listening on {addr}");
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "sd_notify READY=1 failed");
    }

    let early = tokio::select! {
        r = &mut server => Some(r),
        () = shutdown => None,
    };
    // One grace period for the whole drain, from the moment shutdown begins.
    let deadline = Instant::now() + config.shutdown_grace();
    let result = match early {
        Some(r) => {
            tracing::error!("the HTTP server stopped on its own");
            match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ServeError::Server(e)),
                Err(e) => Err(ServeError::Join(e)),
            }
        }
        None => {
            let grace = config.shutdown_grace();
            tracing::info!(
                ?grace,
                "shutting down: no new connections, draining in-flight requests, searches checkpointing"
            );
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            searches.signal_stop();
            if let Some(j) = &jobs {
                j.signal_stop();
            }
            let _ = stop_tx.send(());
            match tokio::time::timeout(left(deadline), &mut server).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(e))) => Err(ServeError::Server(e)),
                Ok(Err(e)) => Err(ServeError::Join(e)),
                Err(_) => {
                    tracing::warn!(
                        ?grace,
                        "grace period over: dropping the requests still in flight"
                    );
                    server.abort();
                    Ok(())
                }
            }
        }
    };
    tokio::task::spawn_blocking(move || watcher.stop()).await?;
    let s = searches.clone();
    if tokio::time::timeout(
        left(deadline),
        tokio::task::spawn_blocking(move || s.stop()),
    )
    .await
    .is_err()
    {
        tracing::warn!("a search generation still running at the end of the grace period: it resumes from its last checkpoint");
    }
    if let Some(jobs) = jobs {
        // A job still running after the grace period is abandoned (its task stays `tuning` and
        // is queued again at the next start).
        let stopping = tokio::task::spawn_blocking(move || jobs.stop());
        if tokio::time::timeout(left(deadline), stopping)
            .await
            .is_err()
        {
            tracing::warn!("fine-tuning jobs still running after the grace period: abandoned");
        }
    }
    let p = predictor.clone();
    let _ = tokio::time::timeout(
        left(deadline),
        tokio::task::spawn_blocking(move || p.stop()),
    )
    .await;
    store.flush()?;
    let _ = std::fs::remove_file(&addr_file);
    tracing::info!("stopped");
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::request;
    use std::time::Duration;

    /// A test double standing in for the predictor: a model named after the sample count.
    struct Counter;

    impl Finetuner for Counter {
        fn finetune(
            &self,
            _task: &str,
            snapshot: &serde_json::Value,
            _cancel: &crate::predictor::train::Cancel,
        ) -> Result<crate::jobs::Finetuned, String> {
            Ok(crate::jobs::Finetuned {
                model: format!(
                    "test-{}",
                    snapshot["samples"].as_array().map_or(0, |s| s.len())
                ),
                meta: serde_json::Value::Null,
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_and_drains_on_shutdown() {
        let state = tempfile::tempdir().unwrap();
        let config = Config {
            state_dir: state.path().to_path_buf(),
            token: Some("sekrit".into()),
            body_limit_bytes: 4096,
            max_predictions_per_request: 2,
            ..Config::default()
        };
        // Left from an earlier run: a prediction of this base model (kept), and one of a
        // task-model version no task or search uses any more (pruned at start).
        let stale = format!("{}gone/{}", crate::service::TUNED_PREFIX, "0".repeat(32));
        let fp = crate::tuned::BaseModel::Embedded
            .load_base(&crate::predictor::Device::Cpu)
            .unwrap()
            .fingerprint()
            .unwrap();
        let base_key = format!("{}{}/nb201/cifar10", crate::service::BASE_PREFIX, &fp[..16]);
        let h = crate::graph::hash::GraphHash(5);
        {
            let st = Store::open(state.path()).unwrap();
            st.cache_prediction(&base_key, h, 1.0).unwrap();
            st.cache_prediction(&stale, h, 2.0).unwrap();
            st.flush().unwrap();
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let daemon = tokio::spawn(run(
            config,
            listener,
            Registry::new(),
            Some(Arc::new(Counter)),
            async {
                let _ = rx.await;
            },
        ));
        let a = addr.clone();
        let st = state.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let t = Duration::from_secs(30);
            let end = std::time::Instant::now() + t;
            while !st.join(ADDR_FILE).exists() {
                assert!(std::time::Instant::now() < end, "no address file");
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(std::fs::read_to_string(st.join(ADDR_FILE)).unwrap().trim(), a);
            let r = request(&a, "GET", "/healthz", &[], None, t).unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            let arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|";
            let body = serde_json::json!({"space": "nb201", "task": "cifar10", "arch": arch}).to_string();
            let r = request(&a, "POST", "/v1/graph", &[], Some(body.as_bytes()), t).unwrap();
            assert_eq!(r.status, 401);
            assert_eq!(r.json()["error"]["code"], "unauthorized");
            let auth = [("Authorization", "Bearer sekrit"), ("Content-Type", "application/json")];
            let r = request(&a, "POST", "/v1/graph", &auth, Some(body.as_bytes()), t).unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            let g = &r.json()["graphs"][0];
            assert!(g["mflops"].as_f64().unwrap() > 0.0 && g["hash"].as_str().unwrap().len() == 32);
            let three = serde_json::json!({"space": "nb201", "task": "cifar10", "archs": [arch, arch, arch]}).to_string();
            let r = request(&a, "POST", "/v1/graph", &auth, Some(three.as_bytes()), t).unwrap();
            assert_eq!((r.status, r.json()["error"]["code"].as_str()), (422, Some("too_many_items")));
            let big = vec![b' '; 10_000];
            let r = request(&a, "POST", "/v1/graph", &auth, Some(&big), t).unwrap();
            assert_eq!(r.status, 413, "{}", r.text());
            let r = request(&a, "POST", "/v1/graph", &auth, Some(b"{not json"), t).unwrap();
            assert_eq!(r.status, 400, "{}", r.text());
            let r = request(&a, "GET", "/v1/tasks/nope", &[], None, t).unwrap();
            assert_eq!((r.status, r.json()["error"]["code"].as_str()), (404, Some("not_found")));
            let r = request(&a, "DELETE", "/v1/tasks", &[], None, t).unwrap();
            assert_eq!(r.status, 405);
            let r = request(&a, "GET", "/metrics", &[], None, t).unwrap();
            let text = r.text();
            assert!(text.contains("aiop_http_requests_total") && text.contains("aiop_task_files_accepted_total"), "{text}");
            assert!(text.contains("aiop_prediction_cache_pruned_total 1\n"), "{text}");
            let r = request(&a, "GET", "/v1/spaces", &[], None, t).unwrap();
            assert_eq!(r.json()["spaces"][0]["space"], "nb201");
            // A task file goes through the job pool to `ready`.
            let tasks = st.join("tasks");
            let csv = format!("arch,value\n{arch},90.4\n|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|,81.9\n");
            std::fs::write(tasks.join("s.csv"), csv).unwrap();
            std::fs::write(tasks.join("t.toml"), "name = \"t\"\nspace = \"nb201\"\nhead = \"cifar10\"\nsamples = \"s.csv\"\n").unwrap();
            let end = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let r = request(&a, "GET", "/v1/tasks/t", &[], None, t).unwrap();
                if r.json()["status"] == "ready" {
                    assert_eq!(r.json()["model"], "test-2");
                    break;
                }
                assert!(std::time::Instant::now() < end, "{}", r.text());
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await
        .unwrap();
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), daemon)
            .await
            .expect("drains within the grace period")
            .unwrap()
            .unwrap();
        assert!(!state.path().join(ADDR_FILE).exists());
        let st = Store::open(state.path()).unwrap();
        assert_eq!(st.cached_prediction(&stale, h).unwrap(), None);
        assert_eq!(st.cached_prediction(&base_key, h).unwrap(), Some(1.0));
    }
}
