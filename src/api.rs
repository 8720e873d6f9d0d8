//! The HTTP API (axum): health, metrics, spaces, tasks, graph statistics, predictions and
//! searches.
//!
//! Routes: `GET /healthz`, `GET /metrics` (Prometheus text), `GET /v1/spaces`, `GET /v1/tasks`,
//! `POST /v1/tasks` (submit a task file), `GET|DELETE /v1/tasks/{name}`, `POST /v1/graph`,
//! `POST /v1/predict`, `GET|POST /v1/searches`, `GET|DELETE /v1/searches/{id}`.
//! Invariants: every error is JSON `{"error": {"code", "message"}}` with a fitting status
//! (unknown routes and methods, bad JSON and oversized bodies included); bodies over the
//! configured limit are refused with 413; requests over the time limit get 408; every `POST` and
//! `DELETE` requires `Authorization: Bearer <token>` when a token is configured (checked before
//! the body is read); CPU work (building graphs, features) and store scans run on the blocking
//! pool, never on the async workers, and predictions go through the shared
//! [`PredictorService`]; handlers never write the store themselves: searches are created and
//! cancelled by [`Searches`], and a submitted task file is validated in a hidden staging folder
//! and then moved into the watched folder, where the watcher records it like any dropped file.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{
    DefaultBodyLimit, FromRequestParts, MatchedPath, Path, RawQuery, Request, State,
};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};

use crate::graph::{json, Convention, Graph};
use crate::searches::{tuned_task, SearchRequest, Searches, SearchesError};
use crate::service::{Item, ModelRef, PredictorService, ServiceError, Source};
use crate::spaces::{labels, Arch, SpaceId, Task};
use crate::store::{SearchRecord, SearchStatus, Store, TaskStatus};
use crate::taskfile::{self, Limits, TaskSpace};

/// The daemon's parts the API drives.
#[derive(Clone)]
pub struct Backend {
    pub predictor: PredictorService,
    pub searches: Searches,
    /// The watched folder, where submitted task files go.
    pub tasks_dir: std::path::PathBuf,
    /// Size limits of task files (submitted ones too).
    pub limits: Limits,
    /// The running fine-tuning jobs' progress (none without a fine-tuner).
    pub tuning: Option<crate::jobs::Tuning>,
}

/// Settings of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub body_limit_bytes: usize,
    /// Most items (graphs, later predictions) one request may ask for.
    pub max_items: usize,
    pub token: Option<String>,
    pub request_timeout: Duration,
}

/// An API failure, answered as `{"error": {"code", "message"}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A body sent without `Content-Type: application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request took longer than {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Internal(String),
    #[error("registering API metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl ApiError {
    fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            ApiError::Internal(_) | ApiError::Metrics(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "internal API error");
        }
        let body = Json(serde_json::json!({"error": {"code": code, "message": self.to_string()}}));
        let mut resp = (status, body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(r.body_text()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(r.body_text()),
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable {
                code: "invalid_body",
                message: r.body_text(),
            },
            _ => ApiError::BadRequest(r.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::BadRequest(format!("the URL's path: {}", r.body_text()))
    }
}

/// A request body's `T` read from a JSON object only: serde reads a struct from an array too,
/// field by field in declaration order (`["t1", null, "random", 30]` would start a search), a
/// meaning no client intends and that changes whenever a field moves.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                map: M,
            ) -> Result<Object<T>, M::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// The JSON body of a request whose size limit is `limit` bytes (the `setting` that sets it):
/// a body over it is told both.
fn body_of<T>(
    body: Result<Json<Object<T>>, JsonRejection>,
    limit: usize,
    setting: &str,
) -> Result<T, ApiError> {
    match body {
        Ok(Json(Object(v))) => Ok(v),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::PayloadTooLarge(
            format!("the request body is over its limit of {limit} bytes ({setting})"),
        )),
        Err(r) => Err(r.into()),
    }
}

/// The body limit of `POST /v1/tasks`: room for a task file and a samples file at their own
/// limits, JSON-escaped (at most doubled), beside the API's limit for everything else, so
/// that whatever the folder accepts can be submitted.
fn task_body_limit(api: usize, limits: &Limits) -> usize {
    let files = 2 * (limits.max_toml_bytes + limits.max_samples_bytes);
    api.saturating_add(usize::try_from(files).unwrap_or(usize::MAX))
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

impl From<SearchesError> for ApiError {
    fn from(e: SearchesError) -> ApiError {
        match e {
            SearchesError::Invalid(m) => ApiError::Unprocessable {
                code: "invalid_search",
                message: m,
            },
            SearchesError::NotFound(m) => ApiError::NotFound(m),
            SearchesError::NotReady(m) | SearchesError::Unfinished(m) => ApiError::Conflict(m),
            SearchesError::Stopped => ApiError::Unavailable(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        match e {
            ServiceError::Model { .. } => ApiError::Unprocessable {
                code: "model_error",
                message: e.to_string(),
            },
            ServiceError::Stopped => ApiError::Unavailable(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> ApiError {
        ApiError::Internal(format!("a blocking task failed: {e}"))
    }
}

#[derive(Clone)]
struct Metrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    graphs: prometheus::IntCounter,
}

impl Metrics {
    fn register(reg: &Registry) -> Result<Metrics, prometheus::Error> {
        let m = Metrics {
            requests: IntCounterVec::new(
                Opts::new("aiop_http_requests_total", "HTTP requests answered"),
                &["method", "route", "status"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "aiop_http_request_duration_seconds",
                    "Time to answer HTTP requests",
                ),
                &["route"],
            )?,
            graphs: prometheus::IntCounter::new(
                "aiop_graphs_built_total",
                "Graphs built or read by POST /v1/graph",
            )?,
        };
        reg.register(Box::new(m.requests.clone()))?;
        reg.register(Box::new(m.duration.clone()))?;
        reg.register(Box::new(m.graphs.clone()))?;
        Ok(m)
    }
}

#[derive(Clone)]
struct AppState {
    store: Store,
    registry: Registry,
    cfg: Arc<ApiConfig>,
    metrics: Metrics,
    backend: Backend,
}

/// Build the router; registers the API's metrics in `registry`.
pub fn router(
    store: Store,
    registry: &Registry,
    cfg: ApiConfig,
    backend: Backend,
) -> Result<Router, ApiError> {
    let metrics = Metrics::register(registry)?;
    clear_stale_submissions(&backend.tasks_dir);
    let state = AppState {
        store,
        registry: registry.clone(),
        cfg: Arc::new(cfg.clone()),
        metrics,
        backend,
    };
    // POST and DELETE handlers take [`Authorized`]: the bearer token, when one is configured.
    Ok(Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/v1/spaces", get(spaces))
        .route(
            "/v1/tasks",
            get(tasks)
                .post(submit_task)
                .layer(DefaultBodyLimit::max(task_body_limit(
                    cfg.body_limit_bytes,
                    &state.backend.limits,
                ))),
        )
        .route("/v1/tasks/{name}", get(task).delete(delete_task))
        .route("/v1/graph", post(graph))
        .route("/v1/predict", post(predict))
        .route("/v1/searches", get(list_searches).post(create_search))
        .route("/v1/searches/{id}", get(get_search).delete(delete_search))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(cfg.body_limit_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state))
}

/// Time limit, request counting and latency, per matched route.
async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let method = method_label(req.method());
    let start = Instant::now();
    let limit = st.cfg.request_timeout;
    let resp = match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout(limit).into_response(),
    };
    st.metrics
        .requests
        .with_label_values(&[method, route.as_str(), resp.status().as_str()])
        .inc();
    st.metrics
        .duration
        .with_label_values(&[route.as_str()])
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// The `method` label of a request: one of the standard methods, else `other`, so that a
/// client sending made-up methods cannot grow the metric's series without bound.
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::PATCH,
        Method::CONNECT,
        Method::TRACE,
    ]
    .into_iter()
    .zip([
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ])
    .find(|(k, _)| k == m)
    .map_or("other", |(_, l)| l)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Proof that a request carries the configured bearer token (always, when none is configured).
/// An extractor of the request head, so it is checked before any body is read.
struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        if let Some(token) = &st.cfg.token {
            let given = parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                // The scheme's name is case-insensitive (RFC 9110, 11.1): `bearer` is `Bearer`.
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map_or("", |(_, t)| t);
            if !constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
                return Err(ApiError::Unauthorized);
            }
        }
        Ok(Authorized)
    }
}

async fn healthz(State(st): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "store_schema": st.store.schema_version()?,
    })))
}

async fn metrics_text(State(st): State<AppState>) -> Result<Response, ApiError> {
    let enc = prometheus::TextEncoder::new();
    let mut buf = Vec::new();
    enc.encode(&st.registry.gather(), &mut buf)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, enc.format_type().to_string())], buf).into_response())
}

#[derive(Serialize)]
struct SpaceInfo {
    space: &'static str,
    tasks: Vec<&'static str>,
    labelled: usize,
    /// The tasks the base model predicts (`POST /v1/predict` with space and task), each with the
    /// member of the shipped pair that answers it (`aio` or `plain`).
    base: std::collections::BTreeMap<&'static str, crate::predictor::base::Member>,
}

async fn spaces(State(st): State<AppState>) -> Json<serde_json::Value> {
    let members = st.backend.predictor.base_members();
    let v: Vec<SpaceInfo> = SpaceId::ALL
        .into_iter()
        .map(|s| SpaceInfo {
            space: s.name(),
            tasks: s.tasks().iter().map(|t| t.name()).collect(),
            labelled: labels::count(s),
            base: members
                .iter()
                .filter(|(k, _)| k.space == s)
                .map(|(k, m)| (k.task.name(), *m))
                .collect(),
        })
        .collect();
    Json(serde_json::json!({"spaces": v}))
}

#[derive(Serialize)]
struct TaskSummary<'a> {
    name: &'a str,
    status: TaskStatus,
    version: &'a str,
    versions: usize,
    removed: bool,
    error: Option<&'a str>,
    /// The watcher's report on the task's file, when the file as it stands is rejected (the
    /// task keeps its last good version).
    #[serde(skip_serializing_if = "Option::is_none")]
    file_error: Option<String>,
    /// How far the fine-tuning of the current version has gone, while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    tuning: Option<crate::jobs::Progress>,
    updated_at: u64,
}

/// A task file the watcher rejected, as its `.error` report says.
#[derive(Serialize)]
struct Rejected {
    /// The task file.
    file: String,
    /// The report's `error:` line.
    error: String,
    /// The whole report (file, line, field, error).
    report: String,
}

/// The rejected task files of the folder `dir` (those with a `.error` report beside them).
fn rejected_files(dir: &std::path::Path) -> Vec<Rejected> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<Rejected> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            let name = p.file_name()?.to_str()?;
            let file = name.strip_suffix(".error")?;
            if !file.ends_with(".toml") || file.starts_with('.') {
                return None;
            }
            // Opened as a regular file only: a FIFO in its place would block the request.
            let mut report = String::new();
            std::io::Read::read_to_string(
                &mut std::io::Read::take(taskfile::open_regular(&p).ok()?, 1 << 20),
                &mut report,
            )
            .ok()?;
            let error = report
                .lines()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or("")
                .to_string();
            Some(Rejected {
                file: p.with_file_name(file).display().to_string(),
                error,
                report,
            })
        })
        .collect();
    v.sort_by(|a, b| a.file.cmp(&b.file));
    v
}

/// A query string where an endpoint reads none: a 400 naming its first parameter, as
/// `GET /v1/searches` answers one it does not know (a filter silently ignored would answer
/// another question than the one asked).
fn no_query(query: Option<&str>) -> Result<(), ApiError> {
    match form_urlencoded::parse(query.unwrap_or_default().as_bytes()).next() {
        Some((k, _)) => Err(ApiError::BadRequest(format!(
            "unknown query parameter `{k}` (this endpoint takes none)"
        ))),
        None => Ok(()),
    }
}

async fn tasks(
    State(st): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    no_query(query.as_deref())?;
    let store = st.store.clone();
    let dir = st
        .backend
        .tasks_dir
        .canonicalize()
        .unwrap_or(st.backend.tasks_dir.clone());
    let (all, rejected) =
        tokio::task::spawn_blocking(move || store.tasks().map(|t| (t, rejected_files(&dir))))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??;
    let v: Vec<TaskSummary> = all
        .iter()
        .map(|t| TaskSummary {
            name: &t.name,
            status: t.status,
            version: &t.spec_hash,
            versions: t.versions.len(),
            removed: t.removed_at.is_some(),
            error: t.error.as_deref(),
            file_error: rejected
                .iter()
                .find(|r| t.removed_at.is_none() && r.file == t.source)
                .map(|r| r.error.clone()),
            tuning: st
                .backend
                .tuning
                .as_ref()
                .filter(|_| t.status == TaskStatus::Tuning)
                .and_then(|j| j.get(&t.name))
                .filter(|p| p.version == t.spec_hash),
            updated_at: t.updated_at,
        })
        .collect();
    Ok(Json(serde_json::json!({"tasks": v, "rejected": rejected})))
}

async fn task(
    State(st): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(name) = name?;
    no_query(query.as_deref())?;
    let rec = st
        .store
        .task(&name)?
        .ok_or_else(|| ApiError::NotFound(format!("no task '{name}'")))?;
    // How well its model fits its samples, and the cross-validated estimate of how it ranks
    // networks it has not seen (null where the model's sidecar has none).
    let quality = match &rec.model {
        Some(id) => st.store.model_meta(id)?.map(|m| {
            serde_json::json!({
                "fit": m.get("fit"),
                "cross_validated": m.get("cross_validated"),
            })
        }),
        None => None,
    };
    let mut v = serde_json::to_value(&rec).map_err(|e| ApiError::Internal(e.to_string()))?;
    v["model_quality"] = quality.unwrap_or(serde_json::Value::Null);
    if let Some(p) = st
        .backend
        .tuning
        .as_ref()
        .filter(|_| rec.status == TaskStatus::Tuning)
        .and_then(|j| j.get(&rec.name))
        .filter(|p| p.version == rec.spec_hash)
    {
        v["tuning"] = serde_json::to_value(p).map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    Ok(Json(v))
}

/// `POST /v1/graph`: architectures of a space (built with a task's head) or JSON graphs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GraphRequest {
    space: Option<String>,
    task: Option<String>,
    arch: Option<String>,
    #[serde(default)]
    archs: Vec<String>,
    #[serde(default)]
    graphs: Vec<serde_json::Value>,
    flops_convention: Option<String>,
}

#[derive(Debug, Serialize)]
struct GraphStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    arch: Option<String>,
    nodes: usize,
    edges: usize,
    mflops: f64,
    mparams: f64,
    hash: String,
}

fn stats(g: &Graph, arch: Option<String>, conv: Convention) -> GraphStats {
    GraphStats {
        arch,
        nodes: g.len(),
        edges: g.num_edges(),
        mflops: g.flops(conv) as f64 / 1e6,
        mparams: g.params() as f64 / 1e6,
        hash: g.hash().to_string(),
    }
}

fn unprocessable(message: String) -> ApiError {
    ApiError::Unprocessable {
        code: "invalid_input",
        message,
    }
}

fn build_graphs(req: GraphRequest) -> Result<Vec<GraphStats>, ApiError> {
    let conv: Convention = req
        .flops_convention
        .as_deref()
        .unwrap_or("macs")
        .parse()
        .map_err(unprocessable)?;
    let mut archs = req.archs;
    archs.extend(req.arch);
    let mut out = Vec::with_capacity(archs.len() + req.graphs.len());
    if !archs.is_empty() {
        let (Some(space), Some(task)) = (&req.space, &req.task) else {
            return Err(unprocessable(
                "'space' and 'task' are needed with 'arch'/'archs'".into(),
            ));
        };
        let space = SpaceId::from_name(space).map_err(|e| unprocessable(e.to_string()))?;
        let task = space.task(task).map_err(|e| unprocessable(e.to_string()))?;
        for (k, s) in archs.iter().enumerate() {
            let arch =
                Arch::parse(space, s).map_err(|e| unprocessable(format!("archs[{k}]: {e}")))?;
            let g = arch
                .build(task)
                .map_err(|e| unprocessable(format!("archs[{k}]: {e}")))?;
            out.push(stats(&g, Some(arch.to_string()), conv));
        }
    } else if req.space.is_some() || req.task.is_some() {
        return Err(unprocessable(
            "'space' and 'task' are only used with 'arch'/'archs'".into(),
        ));
    }
    for (k, v) in req.graphs.iter().enumerate() {
        let g = json::from_json(&v.to_string())
            .map_err(|e| unprocessable(format!("graphs[{k}]: {e}")))?;
        out.push(stats(&g, None, conv));
    }
    Ok(out)
}

/// The items of a `/v1/graph` or `/v1/predict` request (`what`: its verb and its plural), checked:
/// at least one, `arch` or `archs` but not both (which would come first in the answer, and
/// which index an error names, would be a guess), at most `max`.
fn check_items(
    arch: Option<&String>,
    archs: &[String],
    graphs: usize,
    max: usize,
    what: (&str, &str),
) -> Result<(), ApiError> {
    let n = archs.len() + usize::from(arch.is_some()) + graphs;
    if n == 0 {
        return Err(unprocessable(format!(
            "nothing to {}: give 'arch', 'archs' or 'graphs'",
            what.0
        )));
    }
    if arch.is_some() && !archs.is_empty() {
        return Err(unprocessable(
            "give 'arch' (one) or 'archs' (a list), not both".into(),
        ));
    }
    if n > max {
        return Err(ApiError::Unprocessable {
            code: "too_many_items",
            message: format!("{n} {} asked, at most {max} per request", what.1),
        });
    }
    Ok(())
}

async fn graph(
    State(st): State<AppState>,
    _auth: Authorized,
    body: Result<Json<Object<GraphRequest>>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req = body_of(body, st.cfg.body_limit_bytes, "body_limit_bytes")?;
    check_items(
        req.arch.as_ref(),
        &req.archs,
        req.graphs.len(),
        st.cfg.max_items,
        ("build", "graphs"),
    )?;
    let out = tokio::task::spawn_blocking(move || build_graphs(req))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    st.metrics.graphs.inc_by(out.len() as u64);
    Ok(Json(serde_json::json!({"graphs": out})))
}

/// `POST /v1/predict`: a benchmark task with the base model (`space` + `task`) or a task's own
/// model (`tuned`), for architecture strings and/or JSON graphs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictRequest {
    space: Option<String>,
    task: Option<String>,
    tuned: Option<String>,
    arch: Option<String>,
    #[serde(default)]
    archs: Vec<String>,
    #[serde(default)]
    graphs: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct Prediction {
    #[serde(skip_serializing_if = "Option::is_none")]
    arch: Option<String>,
    /// The graph's hash, for JSON graphs.
    #[serde(skip_serializing_if = "Option::is_none")]
    graph: Option<String>,
    prediction: f64,
}

/// Which model answers, and the space and head architectures are built with (if any).
fn predict_model(
    store: &Store,
    req: &PredictRequest,
) -> Result<(ModelRef, Option<(SpaceId, Task)>), ApiError> {
    match (&req.tuned, &req.space, &req.task) {
        (Some(name), None, None) => {
            let t = tuned_task(store, name)?;
            let sh = match t.space {
                TaskSpace::Builtin { space, head } => Some((space, head)),
                TaskSpace::Graph => None,
            };
            Ok((ModelRef::Tuned { id: t.model_id }, sh))
        }
        (None, Some(space), Some(task)) => {
            let space = SpaceId::from_name(space).map_err(|e| unprocessable(e.to_string()))?;
            let task = space.task(task).map_err(|e| unprocessable(e.to_string()))?;
            Ok((ModelRef::Base { space, task }, Some((space, task))))
        }
        _ => Err(unprocessable(
            "give either 'tuned' (a task's name) or 'space' and 'task' (a benchmark task)".into(),
        )),
    }
}

fn predict_blocking(
    store: &Store,
    predictor: &PredictorService,
    mut req: PredictRequest,
) -> Result<serde_json::Value, ApiError> {
    let (model, space_head) = predict_model(store, &req)?;
    let mut archs = std::mem::take(&mut req.archs);
    archs.extend(req.arch.take());
    let mut items: Vec<Item> = Vec::with_capacity(archs.len() + req.graphs.len());
    let mut rows: Vec<Prediction> = Vec::with_capacity(items.capacity());
    if !archs.is_empty() {
        let Some((space, head)) = space_head else {
            return Err(unprocessable(
                "this task's networks are JSON graphs: send 'graphs', not architecture strings"
                    .into(),
            ));
        };
        for (k, s) in archs.iter().enumerate() {
            let arch =
                Arch::parse(space, s).map_err(|e| unprocessable(format!("archs[{k}]: {e}")))?;
            let g = arch
                .build(head)
                .map_err(|e| unprocessable(format!("archs[{k}]: {e}")))?;
            items.push(predictor.item(&g));
            rows.push(Prediction {
                arch: Some(arch.to_string()),
                graph: None,
                prediction: f64::NAN,
            });
        }
    }
    for (k, v) in req.graphs.iter().enumerate() {
        let g = json::from_json(&v.to_string())
            .map_err(|e| unprocessable(format!("graphs[{k}]: {e}")))?;
        let it = predictor.item(&g);
        rows.push(Prediction {
            arch: None,
            graph: Some(it.hash.to_string()),
            prediction: f64::NAN,
        });
        items.push(it);
    }
    let values = predictor.predict(&model, items, Source::Api)?;
    for (r, v) in rows.iter_mut().zip(values) {
        r.prediction = v;
    }
    Ok(serde_json::json!({"model": predictor.model_version(&model), "predictions": rows}))
}

async fn predict(
    State(st): State<AppState>,
    _auth: Authorized,
    body: Result<Json<Object<PredictRequest>>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req = body_of(body, st.cfg.body_limit_bytes, "body_limit_bytes")?;
    check_items(
        req.arch.as_ref(),
        &req.archs,
        req.graphs.len(),
        st.cfg.max_items,
        ("predict", "predictions"),
    )?;
    let (store, predictor) = (st.store.clone(), st.backend.predictor.clone());
    let out =
        tokio::task::spawn_blocking(move || predict_blocking(&store, &predictor, req)).await??;
    Ok(Json(out))
}

/// A search record as the API shows it: progress always; in the detail view the spec, and
/// `results` once the search has ended, `results_so_far` (the same ranking or front, as of its
/// last checkpoint) while it is queued or running and has any: a search of days is worth
/// looking at before it ends, but a consumer of `results` must never take an interim ranking
/// for the final one.
fn search_view(r: &SearchRecord, detail: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": r.id,
        "task": r.task,
        "status": r.status,
        "error": r.error,
        "model": r.model,
        "progress": r.progress,
        "evaluations": r.evaluations,
        "budget": r.budget,
        "generation": r.generation,
        "best": r.best,
        "resumes": r.resumes,
        "resumed_from_generation": r.resumed_from_generation,
        "ended_because": r.ended_because,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    });
    if detail {
        v["spec"] = r.spec.clone();
        let ended = matches!(
            r.status,
            SearchStatus::Done | SearchStatus::Cancelled | SearchStatus::Failed
        );
        if ended {
            v["results"] = r.results.clone();
        } else if r.results.as_array().is_some_and(|a| !a.is_empty()) {
            v["results_so_far"] = r.results.clone();
        }
    }
    v
}

/// Which searches `GET /v1/searches` lists: `?status=…&task=…` keep the matching ones (oldest
/// first, as created), `?offset=N&limit=M` page through them. Unknown or repeated parameters
/// and bad values are refused, naming the parameter: a typo never silently lists everything.
#[derive(Debug, Clone, Default, PartialEq)]
struct SearchFilter {
    status: Option<SearchStatus>,
    task: Option<String>,
    /// Most searches in one answer; all of them when absent.
    limit: Option<usize>,
    offset: usize,
}

impl SearchFilter {
    fn parse(query: Option<&str>) -> Result<SearchFilter, ApiError> {
        let bad = |name: &str, why: String| {
            ApiError::BadRequest(format!("query parameter `{name}`: {why}"))
        };
        let count = |name: &str, v: &str, least: usize| {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n >= least)
                .ok_or_else(|| bad(name, format!("'{v}' is not a whole number ≥ {least}")))
        };
        let mut f = SearchFilter::default();
        let mut seen = Vec::new();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if seen.contains(&k) {
                return Err(bad(&k, "given twice".into()));
            }
            match &*k {
                "status" => {
                    let status = serde_json::from_value(serde_json::Value::from(&*v));
                    f.status = Some(status.map_err(|_| {
                        bad(
                            "status",
                            format!(
                                "unknown status '{v}' (one of queued, running, done, failed, \
                                 cancelled)"
                            ),
                        )
                    })?);
                }
                "task" => f.task = Some(v.to_string()),
                "limit" => f.limit = Some(count("limit", &v, 1)?),
                "offset" => f.offset = count("offset", &v, 0)?,
                _ => {
                    return Err(bad(
                        &k,
                        "unknown (the parameters are status, task, limit, offset)".into(),
                    ))
                }
            }
            seen.push(k);
        }
        Ok(f)
    }

    /// The page of `all` (sorted here, oldest first) this filter asks for, and how many match.
    fn page(&self, mut all: Vec<SearchRecord>) -> (Vec<SearchRecord>, usize) {
        all.retain(|r| {
            self.status.is_none_or(|s| r.status == s)
                && self.task.as_ref().is_none_or(|t| &r.task == t)
        });
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        let total = all.len();
        let page = all
            .into_iter()
            .skip(self.offset)
            .take(self.limit.unwrap_or(usize::MAX))
            .collect();
        (page, total)
    }
}

async fn list_searches(
    State(st): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let filter = SearchFilter::parse(query.as_deref())?;
    let store = st.store.clone();
    let all = tokio::task::spawn_blocking(move || store.searches()).await??;
    let (page, total) = filter.page(all);
    let v: Vec<serde_json::Value> = page.iter().map(|r| search_view(r, false)).collect();
    // Where the next page starts, while there is one.
    let next = Some(filter.offset.saturating_add(v.len())).filter(|&n| n < total);
    Ok(Json(
        serde_json::json!({"searches": v, "total": total, "next_offset": next}),
    ))
}

async fn get_search(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(id) = id?;
    let store = st.store.clone();
    let rec = tokio::task::spawn_blocking(move || store.search(&id).map(|r| (id, r))).await??;
    match rec {
        (_, Some(r)) => Ok(Json(search_view(&r, true))),
        (id, None) => Err(ApiError::NotFound(format!("no search '{id}'"))),
    }
}

async fn create_search(
    State(st): State<AppState>,
    _auth: Authorized,
    body: Result<Json<Object<SearchRequest>>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let req = body_of(body, st.cfg.body_limit_bytes, "body_limit_bytes")?;
    let searches = st.backend.searches.clone();
    let rec = tokio::task::spawn_blocking(move || searches.submit(req)).await??;
    Ok((StatusCode::CREATED, Json(search_view(&rec, true))))
}

/// `DELETE /v1/searches/{id}`: cancel the search (202; its results so far are kept), or with
/// `?purge=true` delete a finished one for good (200, the record as it was; 409 while it is
/// queued or running). Any other query parameter is refused.
async fn delete_search(
    State(st): State<AppState>,
    _auth: Authorized,
    id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Path(id) = id?;
    let mut purge = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match (&*k, &*v, purge) {
            ("purge", "true" | "false", None) => purge = Some(v == "true"),
            ("purge", _, _) => {
                return Err(ApiError::BadRequest(format!(
                    "query parameter `purge`: '{v}' (true or false, given once)"
                )))
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter `{k}` (only `purge`)"
                )))
            }
        }
    }
    let purge = purge.unwrap_or(false);
    let searches = st.backend.searches.clone();
    if purge {
        let rec = tokio::task::spawn_blocking(move || searches.remove(&id)).await??;
        let mut v = search_view(&rec, true);
        v["deleted"] = serde_json::Value::Bool(true);
        return Ok((StatusCode::OK, Json(v)));
    }
    let rec = tokio::task::spawn_blocking(move || {
        searches.cancel(&id, Some("cancelled through the API"))
    })
    .await??;
    Ok((StatusCode::ACCEPTED, Json(search_view(&rec, true))))
}

/// `DELETE /v1/tasks/{name}`: remove the task's file from the watched folder, as deleting it
/// by hand does (202): the watcher then marks the task removed and cancels its searches,
/// keeping its record, versions, model and results. The files it reads stay (another task may
/// read them; a resubmission writes them again). A task removed already is answered as it is
/// (200): the request is idempotent.
async fn delete_task(
    State(st): State<AppState>,
    _auth: Authorized,
    name: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Path(name) = name?;
    let (store, backend) = (st.store.clone(), st.backend.clone());
    tokio::task::spawn_blocking(move || {
        let rec = store
            .task(&name)?
            .ok_or_else(|| ApiError::NotFound(format!("no task '{name}'")))?;
        let view = |rec: &crate::store::TaskRecord| {
            serde_json::to_value(rec).map_err(|e| ApiError::Internal(e.to_string()))
        };
        if rec.removed_at.is_some() {
            return Ok((StatusCode::OK, Json(view(&rec)?)));
        }
        let dir = backend
            .tasks_dir
            .canonicalize()
            .map_err(|e| ApiError::Internal(format!("the tasks folder: {e}")))?;
        let source = std::path::Path::new(&rec.source);
        // Only ever a file of the watched folder (a record names no other, but a path is
        // checked before anything is deleted).
        if !source.starts_with(&dir) || source.extension().is_none_or(|e| e != "toml") {
            return Err(ApiError::Conflict(format!(
                "task '{name}' is defined by {}, not a task file of the watched folder {}",
                rec.source,
                dir.display()
            )));
        }
        // The file may have been rewritten or renamed over since the watcher read it: one that
        // declares another task now is that task's, and stays.
        if let Some(other) = taskfile::declared_name(source, &backend.limits)
            .filter(|other| *other != name)
        {
            return Err(ApiError::Conflict(format!(
                "task '{name}' was defined by {}, which now declares task '{other}' (the \
                 watcher has not read it again yet): nothing was deleted; try again in a moment",
                rec.source
            )));
        }
        match std::fs::remove_file(source) {
            Ok(()) => tracing::info!(task = %name, file = %rec.source, "task file removed through the API"),
            // Gone already: the watcher is about to mark the task removed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ApiError::Internal(format!(
                    "removing {}: {e}",
                    rec.source
                )))
            }
        }
        Ok((StatusCode::ACCEPTED, Json(view(&rec)?)))
    })
    .await?
}

/// `POST /v1/tasks`: a task file and the files it names, as `{"files": [{"path", "content"}]}`
/// with paths relative to the task folder (exactly one `*.toml` at the top level).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitTask {
    files: Vec<SubmitFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitFile {
    path: String,
    content: String,
}

/// A submitted path: relative, plain components, nothing the watcher would ignore, no
/// control character (a NUL cannot be in a file name at all; a newline would break the logs).
fn safe_relative(p: &str) -> Result<std::path::PathBuf, String> {
    use std::path::Component;
    let path = std::path::Path::new(p);
    if let Some(c) = p.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{p:?}: a control character ({:?}) cannot be in a file name",
            c
        ));
    }
    if p.is_empty() || p.len() > 255 || path.is_absolute() {
        return Err(format!(
            "'{p}': give a relative path inside the task folder"
        ));
    }
    for c in path.components() {
        let Component::Normal(n) = c else {
            return Err(format!("'{p}': only plain names (no '..', '.' or root)"));
        };
        if taskfile::ignored(n.to_str().unwrap_or(".")) {
            return Err(format!(
                "'{p}': hidden and temporary names are ignored by the task folder"
            ));
        }
    }
    Ok(path.to_path_buf())
}

/// The first task file of the folder `dir` other than `except` that declares the task name
/// `name` now, whether or not the watcher has read it yet (a submission a moment ago, a file
/// written by hand).
fn file_declaring(
    dir: &std::path::Path,
    name: &str,
    except: &std::path::Path,
    limits: &Limits,
) -> Option<PathBuf> {
    taskfile::task_files(dir)
        .ok()?
        .into_iter()
        .find(|p| p != except && taskfile::declared_name(p, limits).as_deref() == Some(name))
}

/// Why the submitted file `rel` cannot be written into the folder `dir` as it stands: a folder
/// on its way that is a file or a symlink (whose target could be anywhere), or a folder (or
/// anything but a regular file or symlink) at its own name.
fn blocked_target(dir: &std::path::Path, rel: &std::path::Path) -> Option<String> {
    let mut at = dir.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for (i, c) in parts.iter().enumerate() {
        at.push(c);
        let Ok(m) = std::fs::symlink_metadata(&at) else {
            return None;
        };
        let shown = at.strip_prefix(dir).unwrap_or(&at).display().to_string();
        if i + 1 < parts.len() && !m.is_dir() {
            return Some(format!(
                "'{shown}' in the task folder is {}, not a folder",
                if m.file_type().is_symlink() {
                    "a symlink"
                } else {
                    "a file"
                }
            ));
        }
        if i + 1 == parts.len() && !(m.is_file() || m.file_type().is_symlink()) {
            return Some(format!(
                "'{shown}' in the task folder is {}, not a file",
                if m.is_dir() {
                    "a folder"
                } else {
                    "not a regular file"
                }
            ));
        }
    }
    None
}

/// The prefix of the hidden folders submissions are staged in, inside the tasks folder.
const STAGE_PREFIX: &str = ".submit-";

/// Remove the staging folders a daemon killed mid-submission left in the tasks folder (hidden,
/// so never read as tasks, but never removed either). Only this daemon, holding the state's
/// lock, stages there.
fn clear_stale_submissions(dir: &std::path::Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let stale = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(STAGE_PREFIX))
            && e.file_type().is_ok_and(|t| t.is_dir());
        if stale {
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => {
                    tracing::info!(folder = %e.path().display(), "removed an interrupted submission's staging folder")
                }
                Err(err) => {
                    tracing::warn!(folder = %e.path().display(), error = %err, "cannot remove an interrupted submission's staging folder")
                }
            }
        }
    }
}

/// One submission at a time: checking the folder and writing into it are one step, so two
/// submissions of one task name cannot both pass the checks.
static SUBMITTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Most files one `POST /v1/tasks` may carry: a task file, its samples file and its graph
/// files (one per labelled network, far fewer in any real task).
pub const MAX_SUBMIT_FILES: usize = 100_000;

fn submit_blocking(
    store: &Store,
    backend: &Backend,
    req: SubmitTask,
) -> Result<serde_json::Value, ApiError> {
    let bad = |m: String| ApiError::Unprocessable {
        code: "invalid_task",
        message: m,
    };
    if req.files.len() > MAX_SUBMIT_FILES {
        return Err(bad(format!(
            "files: {} files, over the limit of {MAX_SUBMIT_FILES} (a task file, its samples \
             and its graph files)",
            req.files.len()
        )));
    }
    let mut paths = Vec::with_capacity(req.files.len());
    let mut given: HashSet<&PathBuf> = HashSet::with_capacity(req.files.len());
    let mut toml = None;
    for (k, f) in req.files.iter().enumerate() {
        let p = safe_relative(&f.path).map_err(|m| bad(format!("files[{k}].path: {m}")))?;
        paths.push(p);
    }
    for (k, p) in paths.iter().enumerate() {
        if !given.insert(p) {
            return Err(bad(format!(
                "files[{k}]: '{}' given twice",
                req.files[k].path
            )));
        }
    }
    // A path that is a folder of another sorts right before the first path inside it.
    let mut order: Vec<usize> = (0..paths.len()).collect();
    order.sort_by(|&i, &j| paths[i].cmp(&paths[j]));
    if let Some(w) = order
        .windows(2)
        .find(|w| paths[w[1]].starts_with(&paths[w[0]]))
    {
        let (j, k) = (w[0].min(w[1]), w[0].max(w[1]));
        return Err(bad(format!(
            "files[{k}].path: '{}' and files[{j}]'s '{}' cannot both be: one would be a \
             folder of the other",
            req.files[k].path, req.files[j].path
        )));
    }
    for (k, p) in paths.iter().enumerate() {
        if p.extension().is_some_and(|e| e == "toml") {
            if p.components().count() != 1 || toml.is_some() {
                return Err(bad(
                    "exactly one task file (*.toml), at the top level of the folder".into(),
                ));
            }
            toml = Some(k);
        }
    }
    let Some(toml) = toml else {
        return Err(bad("no task file (*.toml) among the files".into()));
    };
    let dir = backend
        .tasks_dir
        .canonicalize()
        .map_err(|e| ApiError::Internal(format!("the tasks folder: {e}")))?;
    // Staged under a hidden name inside the watched folder (same file system: moves are renames).
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let stage = dir.join(format!(
        "{STAGE_PREFIX}{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let io = |e: std::io::Error| ApiError::Internal(format!("staging the task: {e}"));
    let _one = SUBMITTING.lock().unwrap_or_else(|e| e.into_inner());
    let result = (|| {
        for (f, p) in req.files.iter().zip(&paths) {
            let target = stage.join(p);
            std::fs::create_dir_all(target.parent().expect("staged files have a folder"))
                .map_err(io)?;
            std::fs::write(&target, &f.content).map_err(io)?;
        }
        let staged_toml = stage.join(&paths[toml]);
        let spec = taskfile::load(&staged_toml, &backend.limits).map_err(|e| {
            let stage_s = format!("{}/", stage.display());
            bad(e.to_string().replace(&stage_s, ""))
        })?;
        let final_toml = dir.join(&paths[toml]);
        // Every file submitted is one the task reads: nothing else is written into the folder.
        let reads: HashSet<PathBuf> = spec
            .files()
            .into_iter()
            .map(|rel| std::path::Path::new(rel).components().collect())
            .collect();
        for (k, p) in paths.iter().enumerate() {
            if k != toml && !reads.contains(p) {
                return Err(bad(format!(
                    "files[{k}]: '{}' is not a file the task reads (its samples file, its graph files)",
                    req.files[k].path
                )));
            }
        }
        if let Some(t) = store.task(&spec.name)? {
            if t.removed_at.is_none() && std::path::Path::new(&t.source) != final_toml {
                return Err(ApiError::Conflict(format!(
                    "task name '{}' is already defined by {}",
                    spec.name, t.source
                )));
            }
        }
        // A file not read yet (an earlier submission, a file written by hand) claims it too.
        if let Some(other) = file_declaring(&dir, &spec.name, &final_toml, &backend.limits) {
            return Err(ApiError::Conflict(format!(
                "task name '{}' is already defined by {}",
                spec.name,
                other.display()
            )));
        }
        for (k, p) in paths.iter().enumerate() {
            if let Some(why) = blocked_target(&dir, p) {
                return Err(ApiError::Conflict(format!(
                    "files[{k}].path: '{}' cannot be written: {why}",
                    req.files[k].path
                )));
            }
        }
        // A submission may replace its own task's files, never another task's: neither a task
        // file that defines another task nor, with other content, a file another task reads.
        let readers = files_of_other_tasks(store, &dir, &spec.name)?;
        for (k, (f, p)) in req.files.iter().zip(&paths).enumerate() {
            let target = dir.join(p);
            let Some(tasks) = readers.get(&target) else {
                continue;
            };
            let same = || -> std::io::Result<bool> {
                let mut c = Vec::new();
                std::io::Read::read_to_end(
                    &mut std::io::Read::take(
                        taskfile::open_regular(&target)?,
                        f.content.len() as u64 + 1,
                    ),
                    &mut c,
                )?;
                Ok(c == f.content.as_bytes())
            };
            if k != toml && same().unwrap_or(false) {
                continue;
            }
            let what = if k == toml { "defines" } else { "is read by" };
            return Err(ApiError::Conflict(format!(
                "files[{k}]: '{}' {what} task {}; submitting it would change {}: give this task's files names of their own",
                f.path,
                tasks.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", "),
                if tasks.len() == 1 { "that task" } else { "those tasks" },
            )));
        }
        // The files the task names first, the task file last.
        let mut order: Vec<usize> = (0..paths.len()).filter(|&i| i != toml).collect();
        order.push(toml);
        for i in order {
            let target = dir.join(&paths[i]);
            std::fs::create_dir_all(target.parent().expect("task files have a folder"))
                .map_err(io)?;
            std::fs::rename(stage.join(&paths[i]), &target).map_err(io)?;
        }
        Ok(serde_json::json!({
            "task": spec.name,
            "version": spec.hash,
            "file": final_toml.display().to_string(),
            "samples": spec.samples.len(),
        }))
    })();
    let _ = std::fs::remove_dir_all(&stage);
    result
}

/// The files in the tasks folder that the live tasks other than `name` are defined by or read
/// (task file, samples file, graph files of their current version), each with those tasks.
fn files_of_other_tasks(
    store: &Store,
    dir: &std::path::Path,
    name: &str,
) -> Result<std::collections::HashMap<PathBuf, Vec<String>>, ApiError> {
    let mut out: std::collections::HashMap<PathBuf, Vec<String>> = Default::default();
    for t in store.tasks()? {
        if t.name == name || t.removed_at.is_some() {
            continue;
        }
        let source = PathBuf::from(&t.source);
        if source.parent() != Some(dir) {
            continue;
        }
        let mut files = vec![source];
        if let Some(snap) = store.task_spec(&t.name, &t.spec_hash)? {
            let rel = taskfile::TaskSpec::snapshot_files(&snap);
            files.extend(rel.into_iter().map(|r| dir.join(r)));
        }
        for f in files {
            let e = out.entry(f).or_default();
            if !e.contains(&t.name) {
                e.push(t.name.clone());
            }
        }
    }
    Ok(out)
}

async fn submit_task(
    State(st): State<AppState>,
    _auth: Authorized,
    body: Result<Json<Object<SubmitTask>>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let req = body_of(
        body,
        task_body_limit(st.cfg.body_limit_bytes, &st.backend.limits),
        "2 x (max_task_file_bytes + max_samples_file_bytes) + body_limit_bytes",
    )?;
    let (store, backend) = (st.store.clone(), st.backend.clone());
    let out = tokio::task::spawn_blocking(move || submit_blocking(&store, &backend, req)).await??;
    Ok((StatusCode::ACCEPTED, Json(out)))
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    #[test]
    fn made_up_methods_share_one_label() {
        assert_eq!(super::method_label(&Method::GET), "GET");
        assert_eq!(super::method_label(&Method::DELETE), "DELETE");
        for m in ["Z1", "Z2", "BREW"] {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            assert_eq!(super::method_label(&m), "other");
        }
    }

    #[test]
    fn search_filters_parse_and_page() {
        use super::{SearchFilter, SearchRecord, SearchStatus};
        assert_eq!(SearchFilter::parse(None).unwrap(), SearchFilter::default());
        assert_eq!(
            SearchFilter::parse(Some("")).unwrap(),
            SearchFilter::default()
        );
        let f = SearchFilter::parse(Some("status=done&task=seg%2Dmacro&limit=2&offset=1")).unwrap();
        assert_eq!(f.status, Some(SearchStatus::Done));
        assert_eq!(f.task.as_deref(), Some("seg-macro"));
        assert_eq!((f.limit, f.offset), (Some(2), 1));
        for (q, says) in [
            ("stauts=done", "`stauts`: unknown"),
            ("status=finished", "unknown status 'finished'"),
            ("limit=0", "`limit`: '0' is not a whole number ≥ 1"),
            ("limit=-3", "`limit`"),
            ("offset=99999999999999999999999", "`offset`"),
            ("task=a&task=b", "`task`: given twice"),
        ] {
            let e = SearchFilter::parse(Some(q)).unwrap_err().to_string();
            assert!(e.contains(says), "{q}: {e}");
        }
        // Five searches, created in the order c, a, e, b, d; the done ones are a, b, d.
        let all: Vec<SearchRecord> = ["c", "a", "e", "b", "d"]
            .iter()
            .enumerate()
            .map(|(k, id)| {
                let mut r = SearchRecord::queued(id, "t", serde_json::Value::Null, 1);
                r.created_at = k as u64;
                if "abd".contains(id) {
                    r.status = SearchStatus::Done;
                }
                r
            })
            .collect();
        let ids = |f: &str| {
            let (page, total) = SearchFilter::parse(Some(f)).unwrap().page(all.clone());
            (page.into_iter().map(|r| r.id).collect::<String>(), total)
        };
        assert_eq!(ids(""), ("caebd".into(), 5));
        assert_eq!(ids("status=done"), ("abd".into(), 3));
        assert_eq!(ids("status=done&offset=1&limit=1"), ("b".into(), 3));
        assert_eq!(ids("limit=2&offset=4"), ("d".into(), 5));
        assert_eq!(ids("offset=9"), ("".into(), 5));
        assert_eq!(ids("task=other"), ("".into(), 0));
    }
}
