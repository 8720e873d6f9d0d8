//! The predictor service: one thread that owns every model the daemon predicts with (the base
//! model and the task models, loaded on first use) and answers prediction requests from the
//! API, the searches and anyone else, batching the requests that wait together into one
//! forward pass per model.
//!
//! Callers ([`PredictorService::predict`], blocking: call it from a blocking thread, never from
//! an async worker) build graphs and features themselves (in parallel, on their own threads),
//! look the graphs up in the store's prediction cache keyed by (model version, graph hash), and
//! send only the misses to the service thread over a crossbeam channel. The thread takes the
//! first waiting request, then every request already queued behind it (up to
//! `max_batch_graphs` graphs), groups them by model and runs one batched forward pass per model.
//!
//! Invariants: candle runs on the service thread only (for predictions); results come back in
//! the order of the items sent; a model is identified by its cache name ([`ModelRef`] +
//! the base model's fingerprint), so a cached value is never served for another model; every
//! model the service loads has the base model's feature configuration (features are computed
//! by callers with [`PredictorService::feature_config`]); a model that fails to load fails the
//! requests for it, never the service.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};

use crate::graph::hash::GraphHash;
use crate::graph::Graph;
use crate::predictor::base::{Base, Member};
use crate::predictor::data::TaskKey;
use crate::predictor::features::{extract, FeatureConfig, GraphFeatures};
use crate::predictor::transform::gflops;
use crate::predictor::{default_device, Device};
use crate::spaces::{SpaceId, Task};
use crate::store::{Store, StoreError};
use crate::tuned::{BaseModel, TaskModel};

/// Task models kept loaded at once (least recently used dropped first).
const MAX_LOADED: usize = 16;

/// Which model predicts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelRef {
    /// The base model, for a benchmark task it has statistics for.
    Base { space: SpaceId, task: Task },
    /// A task model, by id (`name/version`).
    Tuned { id: String },
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelRef::Base { space, task } => write!(f, "base model for {space}/{task}"),
            ModelRef::Tuned { id } => write!(f, "task model {id}"),
        }
    }
}

/// Who asked (a label of `aiop_predictions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Api,
    Search,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Search => "search",
        }
    }
}

/// How the cache names of task models ([`ModelRef::Tuned`]) begin.
pub const TUNED_PREFIX: &str = "tuned/";

/// Model versions of base predictions start with this (`base-<fingerprint>/<space>/<task>`).
pub const BASE_PREFIX: &str = "base-";

/// One graph to predict: its hash (the cache key), features and GFLOPs.
#[derive(Debug, Clone)]
pub struct Item {
    pub hash: GraphHash,
    pub features: GraphFeatures,
    pub gflops: f64,
}

/// Errors of the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The model cannot predict (missing, unreadable, no statistics for the task).
    #[error("{model}: {message}")]
    Model { model: String, message: String },
    #[error("the predictor service has stopped")]
    Stopped,
    /// The forward pass this request was part of panicked (a bug; the service goes on).
    #[error("the predictor failed on this batch (see the daemon's log)")]
    Failed,
    #[error("loading the base model {base}: {message}")]
    Base { base: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("registering predictor metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("starting the predictor thread: {0}")]
    Thread(std::io::Error),
}

/// Settings of the service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Where task models live (`<state>/models`).
    pub models_dir: PathBuf,
    pub base: BaseModel,
    /// Most graphs in one forward pass.
    pub max_batch_graphs: usize,
}

#[derive(Clone)]
struct Metrics {
    predictions: IntCounterVec,
    hits: IntCounter,
    misses: IntCounter,
    batch_seconds: Histogram,
    batch_graphs: Histogram,
    batch_requests: Histogram,
}

impl Metrics {
    fn register(reg: &Registry) -> Result<Metrics, prometheus::Error> {
        let m = Metrics {
            predictions: IntCounterVec::new(
                Opts::new("aiop_predictions_total", "Predictions answered"),
                &["source"],
            )?,
            hits: IntCounter::new(
                "aiop_prediction_cache_hits_total",
                "Predictions served from the cache",
            )?,
            misses: IntCounter::new(
                "aiop_prediction_cache_misses_total",
                "Predictions the model computed (not in the cache)",
            )?,
            batch_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "aiop_prediction_batch_seconds",
                    "Time of one batched forward pass of the predictor service",
                )
                .buckets(prometheus::exponential_buckets(0.0001, 2.0, 18)?),
            )?,
            batch_graphs: Histogram::with_opts(
                HistogramOpts::new(
                    "aiop_prediction_batch_graphs",
                    "Graphs per batched forward pass",
                )
                .buckets(prometheus::exponential_buckets(1.0, 2.0, 14)?),
            )?,
            batch_requests: Histogram::with_opts(
                HistogramOpts::new(
                    "aiop_prediction_batch_requests",
                    "Requests merged into one forward pass",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            )?,
        };
        reg.register(Box::new(m.predictions.clone()))?;
        reg.register(Box::new(m.hits.clone()))?;
        reg.register(Box::new(m.misses.clone()))?;
        reg.register(Box::new(m.batch_seconds.clone()))?;
        reg.register(Box::new(m.batch_graphs.clone()))?;
        reg.register(Box::new(m.batch_requests.clone()))?;
        Ok(m)
    }
}

struct Request {
    model: ModelRef,
    key: String,
    items: Vec<Item>,
    reply: Sender<Result<Vec<f64>, ServiceError>>,
}

enum Msg {
    Predict(Request),
    Stop,
}

struct Inner {
    tx: Sender<Msg>,
    store: Store,
    base_fingerprint: String,
    /// Which member of the base answers each task it knows (for `GET /v1/spaces`).
    base_members: BTreeMap<TaskKey, Member>,
    features: FeatureConfig,
    metrics: Metrics,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Handle to the service; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct PredictorService {
    inner: Arc<Inner>,
}

impl PredictorService {
    /// Load the base model on a new service thread and start serving.
    pub fn start(
        cfg: ServiceConfig,
        store: Store,
        registry: &Registry,
    ) -> Result<PredictorService, ServiceError> {
        let metrics = Metrics::register(registry)?;
        let (tx, rx) = crossbeam_channel::unbounded::<Msg>();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let m = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("aiop-predictor".into())
            .spawn(move || {
                let device = default_device();
                let base = match cfg.base.load_base(&device) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ServiceError::Base {
                            base: cfg.base.describe(),
                            message: e.to_string(),
                        }));
                        return;
                    }
                };
                let fp = match base.fingerprint() {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ServiceError::Base {
                            base: cfg.base.describe(),
                            message: e.to_string(),
                        }));
                        return;
                    }
                };
                let features = base.aio.model.config.features();
                let _ = ready_tx.send(Ok((fp, base.members(), features)));
                let mut w = Worker {
                    base,
                    features,
                    device,
                    cfg,
                    loaded: HashMap::new(),
                    tick: 0,
                    metrics: m,
                };
                w.run(rx);
            })
            .map_err(ServiceError::Thread)?;
        let (base_fingerprint, base_members, features) =
            ready_rx.recv().map_err(|_| ServiceError::Stopped)??;
        tracing::info!(base = %base_fingerprint, "predictor service ready");
        // Base predictions cached for another base (an older binary's models or selection) are
        // never read again: drop them in the background, keeping this base's.
        let (st, live) = (
            store.clone(),
            format!("{BASE_PREFIX}{}/", &base_fingerprint[..16]),
        );
        std::thread::Builder::new()
            .name("aiop-base-prune".into())
            .spawn(
                move || match st.prune_predictions(BASE_PREFIX, |m| m.starts_with(&live)) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        removed = n,
                        "cached predictions of an earlier base model pruned"
                    ),
                    Err(e) => tracing::warn!(error = %e, "pruning earlier base predictions failed"),
                },
            )
            .map_err(ServiceError::Thread)?;
        Ok(PredictorService {
            inner: Arc::new(Inner {
                tx,
                store,
                base_fingerprint,
                base_members,
                features,
                metrics,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The feature configuration every served model uses.
    pub fn feature_config(&self) -> FeatureConfig {
        self.inner.features
    }

    /// The tasks the base predicts, and which member of it answers each.
    pub fn base_members(&self) -> &BTreeMap<TaskKey, Member> {
        &self.inner.base_members
    }

    /// The base model's fingerprint.
    pub fn base_fingerprint(&self) -> &str {
        &self.inner.base_fingerprint
    }

    /// The name of `m`'s predictions in the cache: its model version.
    pub fn model_version(&self, m: &ModelRef) -> String {
        match m {
            ModelRef::Base { space, task } => {
                format!(
                    "{BASE_PREFIX}{}/{space}/{task}",
                    &self.inner.base_fingerprint[..16]
                )
            }
            ModelRef::Tuned { id } => format!("{TUNED_PREFIX}{id}"),
        }
    }

    /// Features, GFLOPs and hash of a graph, ready to send.
    pub fn item(&self, g: &Graph) -> Item {
        Item {
            hash: g.hash(),
            features: extract(g, &self.inner.features),
            gflops: gflops(g),
        }
    }

    /// Predictions of `m` for `items` in the task's units, in input order. Blocks until the
    /// service answers: call from a blocking thread.
    pub fn predict(
        &self,
        m: &ModelRef,
        items: Vec<Item>,
        source: Source,
    ) -> Result<Vec<f64>, ServiceError> {
        let key = self.model_version(m);
        let n = items.len();
        let mut out: Vec<Option<f64>> = Vec::with_capacity(n);
        let mut misses: Vec<Item> = Vec::new();
        let mut miss_at: Vec<usize> = Vec::new();
        for (i, it) in items.into_iter().enumerate() {
            match self.inner.store.cached_prediction(&key, it.hash)? {
                Some(v) => out.push(Some(v)),
                None => {
                    out.push(None);
                    miss_at.push(i);
                    misses.push(it);
                }
            }
        }
        let metrics = &self.inner.metrics;
        metrics.hits.inc_by((n - misses.len()) as u64);
        metrics.misses.inc_by(misses.len() as u64);
        if !misses.is_empty() {
            let hashes: Vec<GraphHash> = misses.iter().map(|i| i.hash).collect();
            let (reply, answer) = crossbeam_channel::bounded(1);
            self.inner
                .tx
                .send(Msg::Predict(Request {
                    model: m.clone(),
                    key: key.clone(),
                    items: misses,
                    reply,
                }))
                .map_err(|_| ServiceError::Stopped)?;
            let values = answer.recv().map_err(|_| ServiceError::Failed)??;
            let pairs: Vec<(GraphHash, f64)> = hashes.into_iter().zip(values).collect();
            self.inner.store.cache_predictions(&key, &pairs)?;
            for (&i, (_, v)) in miss_at.iter().zip(&pairs) {
                out[i] = Some(*v);
            }
        }
        metrics
            .predictions
            .with_label_values(&[source.label()])
            .inc_by(n as u64);
        Ok(out
            .into_iter()
            .map(|v| v.expect("every item answered"))
            .collect())
    }

    /// Stop the thread after the requests already queued are answered (later ones get
    /// [`ServiceError::Stopped`]), and wait for it.
    pub fn stop(&self) {
        let _ = self.inner.tx.send(Msg::Stop);
        let handle = self.inner.thread.lock().expect("service lock").take();
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("the predictor thread panicked");
            }
        }
    }
}

/// What predicts for one [`ModelRef`].
enum Loaded<'a> {
    Base(&'a Base, TaskKey),
    Tuned(&'a TaskModel),
}

struct Worker {
    /// The base predictor (the AIO-P model, and the shipped pair's per-task selection).
    base: Base,
    features: FeatureConfig,
    device: Device,
    cfg: ServiceConfig,
    /// Task models by id, with the tick they were last used at.
    loaded: HashMap<String, (TaskModel, u64)>,
    tick: u64,
    metrics: Metrics,
}

impl Worker {
    fn run(&mut self, rx: Receiver<Msg>) {
        let max = self.cfg.max_batch_graphs.max(1);
        loop {
            let first = match rx.recv() {
                Ok(Msg::Predict(r)) => r,
                Ok(Msg::Stop) | Err(_) => break,
            };
            let mut graphs = first.items.len();
            let mut batch = vec![first];
            let mut stop = false;
            while graphs < max {
                match rx.try_recv() {
                    Ok(Msg::Predict(r)) => {
                        graphs += r.items.len();
                        batch.push(r);
                    }
                    Ok(Msg::Stop) => {
                        stop = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            // A panic fails the requests of this batch (their reply channels drop), not the service.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve(batch))).is_err()
            {
                tracing::error!("the predictor panicked on a batch; its requests failed");
            }
            if stop {
                break;
            }
        }
        // Whatever is still queued is refused, not left hanging.
        while let Ok(m) = rx.try_recv() {
            if let Msg::Predict(r) = m {
                let _ = r.reply.send(Err(ServiceError::Stopped));
            }
        }
        tracing::info!("predictor service stopped");
    }

    fn load(&mut self, m: &ModelRef) -> Result<(), String> {
        let ModelRef::Tuned { id } = m else {
            return Ok(());
        };
        self.tick += 1;
        if let Some(e) = self.loaded.get_mut(id) {
            e.1 = self.tick;
            return Ok(());
        }
        let t = TaskModel::load_id(&self.cfg.models_dir, id, &self.device)
            .map_err(|e| e.to_string())?;
        if t.trained.model.config.features() != self.features {
            return Err(
                "its feature configuration differs from the daemon's base model's; \
                 fine-tune it again from the base model"
                    .into(),
            );
        }
        if self.loaded.len() >= MAX_LOADED {
            if let Some(oldest) = self
                .loaded
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            {
                self.loaded.remove(&oldest);
            }
        }
        tracing::info!(model = %id, "task model loaded");
        self.loaded.insert(id.clone(), (t, self.tick));
        Ok(())
    }

    fn model(&self, m: &ModelRef) -> Result<Loaded<'_>, String> {
        match m {
            ModelRef::Base { space, task } => {
                let key = TaskKey::new(*space, *task);
                self.base.features_for(key).map_err(|e| e.to_string())?;
                Ok(Loaded::Base(&self.base, key))
            }
            ModelRef::Tuned { id } => self
                .loaded
                .get(id)
                .map(|(t, _)| Loaded::Tuned(t))
                .ok_or_else(|| "not loaded".to_string()),
        }
    }

    fn serve(&mut self, batch: Vec<Request>) {
        self.metrics.batch_requests.observe(batch.len() as f64);
        // Group by model, keeping the order requests arrived in.
        let mut groups: Vec<(String, Vec<Request>)> = Vec::new();
        for r in batch {
            match groups.iter_mut().find(|(k, _)| *k == r.key) {
                Some((_, g)) => g.push(r),
                None => groups.push((r.key.clone(), vec![r])),
            }
        }
        for (_, reqs) in groups {
            let model = reqs[0].model.clone();
            let answer = self.load(&model).and_then(|()| self.forward(&model, &reqs));
            match answer {
                Ok(values) => {
                    let mut at = 0;
                    for r in reqs {
                        let n = r.items.len();
                        let _ = r.reply.send(Ok(values[at..at + n].to_vec()));
                        at += n;
                    }
                }
                Err(message) => {
                    tracing::warn!(model = %model, error = %message, "prediction failed");
                    for r in reqs {
                        let _ = r.reply.send(Err(ServiceError::Model {
                            model: model.to_string(),
                            message: message.clone(),
                        }));
                    }
                }
            }
        }
    }

    fn forward(&self, m: &ModelRef, reqs: &[Request]) -> Result<Vec<f64>, String> {
        let inputs: Vec<(&GraphFeatures, f64)> = reqs
            .iter()
            .flat_map(|r| r.items.iter().map(|i| (&i.features, i.gflops)))
            .collect();
        let max = self.cfg.max_batch_graphs.max(1);
        let model = self.model(m)?;
        // One forward pass per `max` graphs (requests merged may hold more), each observed.
        let mut out = Vec::with_capacity(inputs.len());
        for chunk in inputs.chunks(max) {
            let start = Instant::now();
            out.extend(match &model {
                Loaded::Base(b, key) => b.predict(*key, chunk, max).map_err(|e| e.to_string())?,
                Loaded::Tuned(t) => t.predict(chunk, max).map_err(|e| e.to_string())?,
            });
            self.metrics
                .batch_seconds
                .observe(start.elapsed().as_secs_f64());
            self.metrics.batch_graphs.observe(chunk.len() as f64);
        }
        if let Some(bad) = out.iter().find(|v| !v.is_finite()) {
            return Err(format!("the model predicted a non-finite value ({bad})"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spaces::Arch;

    /// A service over the embedded base, its task models under `state/models`.
    fn start_embedded(state: &std::path::Path, store: &Store, reg: &Registry) -> PredictorService {
        PredictorService::start(
            ServiceConfig {
                models_dir: state.join("models"),
                base: BaseModel::Embedded,
                max_batch_graphs: 64,
            },
            store.clone(),
            reg,
        )
        .unwrap()
    }

    #[test]
    fn base_predictions_cached_for_another_base_are_pruned_at_start() {
        let state = tempfile::tempdir().unwrap();
        let store = Store::open(state.path()).unwrap();
        let fp = BaseModel::Embedded
            .load_base(&Device::Cpu)
            .unwrap()
            .fingerprint()
            .unwrap();
        let g = GraphHash(7);
        let current = format!("{BASE_PREFIX}{}/nb201/cifar10", &fp[..16]);
        let stale = format!("{BASE_PREFIX}{}/nb201/cifar10", "0".repeat(16));
        let tuned = format!("{TUNED_PREFIX}t/abc");
        for (m, v) in [(&current, 1.0), (&stale, 2.0), (&tuned, 3.0)] {
            store.cache_prediction(m, g, v).unwrap();
        }
        let svc = start_embedded(state.path(), &store, &Registry::new());
        assert_eq!(
            svc.model_version(&ModelRef::Base {
                space: SpaceId::Nb201,
                task: Task::Cifar10
            }),
            current
        );
        let t0 = Instant::now();
        while store.cached_prediction(&stale, g).unwrap().is_some() {
            assert!(t0.elapsed().as_secs() < 30, "the stale entry stays");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(store.cached_prediction(&current, g).unwrap(), Some(1.0));
        assert_eq!(store.cached_prediction(&tuned, g).unwrap(), Some(3.0));
    }

    #[test]
    fn each_forward_pass_is_observed_at_most_max_batch_graphs() {
        let state = tempfile::tempdir().unwrap();
        let store = Store::open(state.path()).unwrap();
        let reg = Registry::new();
        let svc = PredictorService::start(
            ServiceConfig {
                models_dir: state.path().join("models"),
                base: BaseModel::Embedded,
                max_batch_graphs: 2,
            },
            store.clone(),
            &reg,
        )
        .unwrap();
        let mut rng = crate::rng::Rng::new(3);
        let mut seen = std::collections::HashSet::new();
        let mut items = Vec::new();
        while items.len() < 7 {
            let g = crate::spaces::sample(SpaceId::Nb201, &mut rng)
                .build(Task::Cifar10)
                .unwrap();
            if seen.insert(g.hash()) {
                items.push(svc.item(&g));
            }
        }
        let m = ModelRef::Base {
            space: SpaceId::Nb201,
            task: Task::Cifar10,
        };
        assert_eq!(svc.predict(&m, items, Source::Api).unwrap().len(), 7);
        let h = reg
            .gather()
            .into_iter()
            .find(|f| f.name() == "aiop_prediction_batch_graphs")
            .unwrap();
        let h = h.get_metric()[0].get_histogram();
        // 7 graphs of one request in passes of 2, 2, 2, 1 (it was one observation of 7).
        assert_eq!((h.get_sample_count(), h.get_sample_sum()), (4, 7.0));
        svc.stop();
    }

    #[test]
    fn batches_caches_and_answers_in_order() {
        let state = tempfile::tempdir().unwrap();
        let store = Store::open(state.path()).unwrap();
        let reg = Registry::new();
        let svc = start_embedded(state.path(), &store, &reg);
        let m = ModelRef::Base {
            space: SpaceId::Nb201,
            task: Task::Cifar10,
        };
        let archs = [
            "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
            "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|",
        ];
        let items = |svc: &PredictorService| -> Vec<Item> {
            archs
                .iter()
                .map(|a| {
                    let g = Arch::parse(SpaceId::Nb201, a)
                        .unwrap()
                        .build(Task::Cifar10)
                        .unwrap();
                    svc.item(&g)
                })
                .collect()
        };
        // Concurrent callers are answered, each in its own order.
        let threads: Vec<_> = (0..4)
            .map(|k| {
                let (svc, m) = (svc.clone(), m.clone());
                let mut its = items(&svc);
                if k % 2 == 1 {
                    its.reverse();
                }
                std::thread::spawn(move || (k, svc.predict(&m, its, Source::Api).unwrap()))
            })
            .collect();
        let answers: Vec<(usize, Vec<f64>)> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        let first = answers.iter().find(|(k, _)| *k == 0).unwrap().1.clone();
        assert_ne!(first[0], first[1]);
        for (k, a) in &answers {
            let mut a = a.clone();
            if k % 2 == 1 {
                a.reverse();
            }
            assert_eq!(a, first);
        }
        // Batch composition does not change a graph's prediction (what makes a resumed search
        // score exactly as an uninterrupted one, whatever other requests share its batches).
        let base = BaseModel::Embedded.load_base(&Device::Cpu).unwrap();
        let its = items(&svc);
        let key = TaskKey::new(SpaceId::Nb201, Task::Cifar10);
        let alone = base
            .predict(key, &[(&its[0].features, its[0].gflops)], 8)
            .unwrap();
        let both = base
            .predict(
                key,
                &[
                    (&its[1].features, its[1].gflops),
                    (&its[0].features, its[0].gflops),
                ],
                8,
            )
            .unwrap();
        assert_eq!(alone[0].to_bits(), both[1].to_bits());
        assert_eq!(alone[0].to_bits(), first[0].to_bits());
        let key = svc.model_version(&m);
        assert_eq!(
            store.cached_prediction(&key, items(&svc)[0].hash).unwrap(),
            Some(first[0])
        );
        assert!(svc.inner.metrics.hits.get() + svc.inner.metrics.misses.get() == 8);
        // A model without statistics for the task, and a missing task model, fail the request.
        let e = svc
            .predict(
                &ModelRef::Base {
                    space: SpaceId::Darts,
                    task: Task::Cifar10,
                },
                items(&svc),
                Source::Api,
            )
            .unwrap_err();
        assert!(matches!(e, ServiceError::Model { .. }), "{e}");
        let e = svc
            .predict(
                &ModelRef::Tuned {
                    id: format!("nope/{}", "0".repeat(32)),
                },
                items(&svc),
                Source::Api,
            )
            .unwrap_err();
        assert!(matches!(e, ServiceError::Model { .. }), "{e}");
        svc.stop();
        assert!(
            svc.predict(&m, vec![items(&svc).remove(0)], Source::Api)
                .is_ok(),
            "cached values are still answered"
        );
        let mut fresh = items(&svc).remove(0);
        fresh.hash = GraphHash(1);
        assert!(matches!(
            svc.predict(&m, vec![fresh], Source::Api),
            Err(ServiceError::Stopped)
        ));
    }
}
