//! The HTTP API (axum): health, metrics, spaces, tasks, and graph statistics.
//!
//! Routes: `GET /healthz`, `GET /metrics` (Prometheus text), `GET /v1/spaces`, `GET /v1/tasks`,
//! `GET /v1/tasks/{name}`, `POST /v1/graph`. Invariants: every error is JSON
//! `{"error": {"code", "message"}}` with a fitting status (unknown routes and methods, bad JSON
//! and oversized bodies included); bodies over the configured limit are refused with 413;
//! requests over the time limit get 408; every `POST` under `/v1` requires
//! `Authorization: Bearer <token>` when a token is configured; CPU work (building graphs) runs on
//! the blocking pool, never on the async workers; handlers read the store, never write it (the
//! watcher and the jobs own the writes).
//!
//! Seam for the predictor: `POST /v1/predict` and the `/v1/searches` routes belong in
//! `protected_routes` once the predictor and the search jobs exist; they are not mounted before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};

use crate::graph::{json, Convention, Graph};
use crate::spaces::{labels, Arch, SpaceId};
use crate::store::{Store, TaskRecord, TaskStatus};

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
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    PayloadTooLarge(String),
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
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
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
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable {
                code: "invalid_body",
                message: r.body_text(),
            },
            _ => ApiError::BadRequest(r.body_text()),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        ApiError::Internal(e.to_string())
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
}

/// Build the router; registers the API's metrics in `registry`.
pub fn router(store: Store, registry: &Registry, cfg: ApiConfig) -> Result<Router, ApiError> {
    let metrics = Metrics::register(registry)?;
    let state = AppState {
        store,
        registry: registry.clone(),
        cfg: Arc::new(cfg.clone()),
        metrics,
    };
    let open = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/v1/spaces", get(spaces))
        .route("/v1/tasks", get(tasks))
        .route("/v1/tasks/{name}", get(task));
    Ok(open
        .merge(protected_routes(state.clone()))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(cfg.body_limit_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state))
}

/// Compute and mutating routes: behind the bearer token when one is configured.
fn protected_routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/graph", post(graph))
        .route_layer(middleware::from_fn_with_state(state, require_token))
}

/// Time limit, request counting and latency, per matched route.
async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let method = req.method().to_string();
    let start = Instant::now();
    let limit = st.cfg.request_timeout;
    let resp = match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout(limit).into_response(),
    };
    st.metrics
        .requests
        .with_label_values(&[method.as_str(), route.as_str(), resp.status().as_str()])
        .inc();
    st.metrics
        .duration
        .with_label_values(&[route.as_str()])
        .observe(start.elapsed().as_secs_f64());
    resp
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(
    State(st): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(token) = &st.cfg.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(next.run(req).await)
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
}

async fn spaces() -> Json<serde_json::Value> {
    let v: Vec<SpaceInfo> = SpaceId::ALL
        .into_iter()
        .map(|s| SpaceInfo {
            space: s.name(),
            tasks: s.tasks().iter().map(|t| t.name()).collect(),
            labelled: labels::count(s),
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
    updated_at: u64,
}

async fn tasks(State(st): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let store = st.store.clone();
    let all = tokio::task::spawn_blocking(move || store.tasks())
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
            updated_at: t.updated_at,
        })
        .collect();
    Ok(Json(serde_json::json!({"tasks": v})))
}

async fn task(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<TaskRecord>, ApiError> {
    st.store
        .task(&name)?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no task '{name}'")))
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

async fn graph(
    State(st): State<AppState>,
    body: Result<Json<GraphRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(req) = body?;
    let n = req.archs.len() + usize::from(req.arch.is_some()) + req.graphs.len();
    if n == 0 {
        return Err(unprocessable(
            "nothing to build: give 'arch', 'archs' or 'graphs'".into(),
        ));
    }
    if n > st.cfg.max_items {
        return Err(ApiError::Unprocessable {
            code: "too_many_items",
            message: format!("{n} graphs asked, at most {} per request", st.cfg.max_items),
        });
    }
    let out = tokio::task::spawn_blocking(move || build_graphs(req))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    st.metrics.graphs.inc_by(out.len() as u64);
    Ok(Json(serde_json::json!({"graphs": out})))
}
