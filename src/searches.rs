//! The daemon's architecture searches: submitted through the API or asked for by a task file's
//! `[search]` table, run on a bounded pool of dedicated worker threads, scored by the shared
//! [`PredictorService`], checkpointed in the store as they go (every generation, or at most
//! once per checkpoint interval).
//!
//! A search record (in the store's `searches` tree) holds the request as submitted, the
//! resolved [`crate::search::SearchSpec`] and the model that scores candidates (a task model id,
//! or the base model for a benchmark task), fixed when the search is created so that a resumed
//! search scores with the model it started with.
//!
//! Invariants: the record is written (flushed) before the search runs; after its first
//! generation, then after any generation that ends at least the checkpoint interval after the
//! last checkpoint (every one when the interval is 0), and whenever it ends, is cancelled or
//! stopped, the serialised [`SearchState`] and the record's progress, best and results are
//! written in one transaction and flushed, so the record always shows a durable checkpoint and
//! a crash loses at most the interval's work plus the generation in flight; a worker checks
//! its search's cancellation flag and the pool's stop flag before every generation; a stop
//! (SIGTERM) leaves the search `queued` at its last checkpoint, and at start-up queued and
//! interrupted (`running`) searches are queued again and resume from their checkpoint, which
//! continues exactly as an uninterrupted run would (the state is resumable bit for bit and
//! predictions are deterministic); cancelling keeps the results found so far; at most
//! `workers` searches run at once; nothing here runs on an async worker.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use serde::{Deserialize, Serialize};

use crate::search::fitness::Candidate;
use crate::search::{self, Fitness, SearchError, SearchSpec, SearchState, Start};
use crate::service::{ModelRef, PredictorService, Source};
use crate::spaces::{Arch, SpaceId};
use crate::store::{now_ms, Checkpoint, SearchRecord, SearchStatus, Store, StoreError};
use crate::taskfile::{self, TaskSpace, TaskSpec};

/// A search as submitted (`POST /v1/searches`, `aiop submit FILE.json`, or a task file's
/// `[search]` table). Unset fields take [`SearchSpec::default`]'s values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// A task known to the daemon (its task model scores), or with `space` a benchmark task
    /// (the base model scores, with the benchmark's head).
    pub task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub population: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mflops: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mparams: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// FLOP reduction: the start architecture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// FLOP reduction: the start network as a JSON graph (docs/graph-format.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_graph: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
    /// FLOP reduction: the start's measured value in the task's units; the tolerance is then
    /// measured from it rather than from the start's prediction. A task file's search sets it
    /// to the start's label when the start is among the task's samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<f64>,
    /// FLOP reduction: most moves from the start (unlimited when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radius: Option<usize>,
    /// FLOP reduction: the tolerance holds on both sides of the reference (a network predicted
    /// more than the tolerance above it is not returned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub two_sided: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_objective: Option<bool>,
}

/// What a search record's `spec` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSpec {
    pub request: SearchRequest,
    pub search: SearchSpec,
    pub model: ModelRef,
    /// Whether larger predictions are better (the search maximises the sign-adjusted score;
    /// results are reported in the task's units).
    pub higher_is_better: bool,
    /// `api`, or the task file version that asked for it.
    pub origin: String,
}

/// Errors of the search manager.
#[derive(Debug, thiserror::Error)]
pub enum SearchesError {
    /// The request is not a valid search (422).
    #[error("{0}")]
    Invalid(String),
    /// No such search or task (404).
    #[error("{0}")]
    NotFound(String),
    /// The task has no model yet (409).
    #[error("{0}")]
    NotReady(String),
    /// The search has not ended, so it cannot be deleted (409).
    #[error("{0}")]
    Unfinished(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("registering search metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("starting a search thread: {0}")]
    Thread(std::io::Error),
    #[error("the search pool has stopped")]
    Stopped,
}

#[derive(Clone)]
struct Metrics {
    running: IntGauge,
    generations: IntCounter,
    candidates: IntCounter,
    best: GaugeVec,
    recovered: IntCounter,
    finished: IntCounterVec,
}

impl Metrics {
    fn register(reg: &Registry) -> Result<Metrics, prometheus::Error> {
        let m = Metrics {
            running: IntGauge::new("aiop_searches_running", "Searches running now")?,
            generations: IntCounter::new(
                "aiop_search_generations_total",
                "Search generations completed",
            )?,
            candidates: IntCounter::new(
                "aiop_search_candidates_evaluated_total",
                "Candidates scored by searches (fitness evaluations)",
            )?,
            best: GaugeVec::new(
                Opts::new(
                    "aiop_search_best_score",
                    "Best predicted score of each search so far, in its task's units",
                ),
                &["search"],
            )?,
            recovered: IntCounter::new(
                "aiop_searches_recovered_total",
                "Searches queued again at start-up (interrupted or still queued)",
            )?,
            finished: IntCounterVec::new(
                Opts::new("aiop_searches_finished_total", "Searches that ended"),
                &["outcome"],
            )?,
        };
        // Every outcome's series from the start, at 0 (a dashboard shows "none yet").
        for outcome in ["done", "failed", "cancelled"] {
            m.finished.with_label_values(&[outcome]);
        }
        reg.register(Box::new(m.running.clone()))?;
        reg.register(Box::new(m.generations.clone()))?;
        reg.register(Box::new(m.candidates.clone()))?;
        reg.register(Box::new(m.best.clone()))?;
        reg.register(Box::new(m.recovered.clone()))?;
        reg.register(Box::new(m.finished.clone()))?;
        Ok(m)
    }
}

/// A running search's cancellation: the flag its worker checks, and why.
#[derive(Default)]
struct Cancel {
    flag: AtomicBool,
    reason: Mutex<Option<String>>,
}

struct Inner {
    store: Store,
    predictor: PredictorService,
    tx: Mutex<Option<Sender<String>>>,
    /// Searches claimed by a worker, with their cancellation.
    running: Mutex<HashMap<String, Arc<Cancel>>>,
    stop: AtomicBool,
    stop_tx: Mutex<Option<Sender<()>>>,
    metrics: Metrics,
    workers: Mutex<Vec<JoinHandle<()>>>,
    counter: AtomicU64,
    /// Least time between two checkpoints of a running search (zero: every generation): a
    /// search of millisecond generations would otherwise spend most of its time flushing.
    checkpoint_interval: std::time::Duration,
    /// Ended searches whose `aiop_search_best_score` series is still exported, oldest first
    /// (at most [`FINISHED_SERIES`]): a daemon running searches for months would otherwise
    /// export one series per search it ever ran.
    finished_series: Mutex<VecDeque<String>>,
}

/// How many ended searches keep their `aiop_search_best_score` series (their final value stays
/// in Prometheus' history; the record keeps it too).
pub const FINISHED_SERIES: usize = 100;

/// Note that search `id` ended; returns the searches whose series go, oldest first.
fn retire(finished: &mut VecDeque<String>, id: &str, keep: usize) -> Vec<String> {
    finished.retain(|f| f != id);
    finished.push_back(id.to_string());
    let over = finished.len().saturating_sub(keep);
    finished.drain(..over).collect()
}

/// The search manager; cheap to clone (the API, the jobs and the watcher hold one).
#[derive(Clone)]
pub struct Searches {
    inner: Arc<Inner>,
}

/// The id of the search a task file version asks for.
pub fn task_search_id(task: &str, version: &str) -> String {
    format!("t-{task}-{}", &version[..version.len().min(12)])
}

impl Searches {
    /// Start `workers` threads and queue every search the store has as queued or running
    /// (interrupted by a stop or a crash). A running search is checkpointed at most once per
    /// `checkpoint_interval` (besides its first generation and its end).
    pub fn start(
        workers: usize,
        store: Store,
        predictor: PredictorService,
        registry: &Registry,
        checkpoint_interval: std::time::Duration,
    ) -> Result<Searches, SearchesError> {
        let metrics = Metrics::register(registry)?;
        let (tx, rx) = crossbeam_channel::unbounded::<String>();
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let mut pending: Vec<SearchRecord> = store
            .searches()?
            .into_iter()
            .filter(|s| matches!(s.status, SearchStatus::Queued | SearchStatus::Running))
            .collect();
        pending.sort_by_key(|s| s.created_at);
        for s in &pending {
            if s.status == SearchStatus::Running {
                store.update_search(&s.id, None, true, |r| {
                    if r.status != SearchStatus::Running {
                        return false;
                    }
                    r.status = SearchStatus::Queued;
                    true
                })?;
            }
            metrics.recovered.inc();
            tracing::info!(search = %s.id, generation = s.generation, "search queued again after a restart");
            let _ = tx.send(s.id.clone());
        }
        let inner = Arc::new(Inner {
            store,
            predictor,
            tx: Mutex::new(Some(tx)),
            running: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            stop_tx: Mutex::new(Some(stop_tx)),
            metrics,
            workers: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
            checkpoint_interval,
            finished_series: Mutex::new(VecDeque::new()),
        });
        let me = Searches { inner };
        for k in 0..workers.max(1) {
            let (rx, stop_rx, me2) = (rx.clone(), stop_rx.clone(), me.clone());
            let h = std::thread::Builder::new()
                .name(format!("aiop-search-{k}"))
                .spawn(move || me2.worker(rx, stop_rx))
                .map_err(SearchesError::Thread)?;
            me.inner.workers.lock().expect("workers lock").push(h);
        }
        Ok(me)
    }

    /// Turn a request into a stored spec: resolve the model, check the search is valid.
    /// A benchmark task the base model has no statistics for is refused here, not at the
    /// search's first generation.
    pub fn resolve(&self, req: &SearchRequest, origin: &str) -> Result<StoredSpec, SearchesError> {
        let stored = resolve(&self.inner.store, req, origin)?;
        if let ModelRef::Base { space, task } = stored.model {
            let known = self.inner.predictor.base_members();
            if !known.contains_key(&crate::predictor::data::TaskKey::new(space, task)) {
                let names: Vec<String> = known.keys().map(|k| k.to_string()).collect();
                return Err(invalid(format!(
                    "task: the base model does not predict {space}/{task} (it predicts {}); \
                     search a task of the daemon instead (a task file with labelled samples \
                     of it, without \"space\")",
                    names.join(", ")
                )));
            }
        }
        Ok(stored)
    }

    /// Create a search from a request (written before it runs) and queue it.
    pub fn submit(&self, req: SearchRequest) -> Result<SearchRecord, SearchesError> {
        let stored = self.resolve(&req, "api")?;
        let task = match &stored.model {
            ModelRef::Base { space, task } => format!("{space}/{task}"),
            ModelRef::Tuned { .. } => req.task.clone(),
        };
        let mut rec = SearchRecord::queued(
            "",
            &task,
            serde_json::to_value(&stored).expect("specs serialise"),
            stored.search.budget as u64,
        );
        rec.model = Some(self.inner.predictor.model_version(&stored.model));
        // A stopping daemon refuses before anything is stored: a client that retries the 503
        // must not find the first attempt queued at the next start.
        if self.inner.tx.lock().expect("queue lock").is_none() {
            return Err(SearchesError::Stopped);
        }
        loop {
            rec.id = self.new_id();
            match self.inner.store.insert_search(&rec) {
                Ok(()) => break,
                Err(StoreError::SearchExists(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        tracing::info!(search = %rec.id, task = %rec.task, budget = rec.budget, "search submitted");
        match self.enqueue(&rec.id) {
            // The stop came between the check above and here: the record is stored, queued,
            // and runs at the next start (as every queued search does), so the submission
            // stands and the client is told so rather than invited to retry.
            Err(SearchesError::Stopped) => {
                tracing::info!(search = %rec.id, "the daemon is stopping: the search runs at the next start");
                Ok(rec)
            }
            r => r.map(|()| rec),
        }
    }

    fn new_id(&self) -> String {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let h = xxhash_rust::xxh3::xxh3_64(
            &[
                nanos.to_le_bytes(),
                n.to_le_bytes(),
                u64::from(std::process::id()).to_le_bytes(),
            ]
            .concat(),
        );
        format!("s-{h:016x}")
    }

    /// The cache name of the task model `id`'s predictions (what search records show).
    pub fn model_version(&self, id: &str) -> String {
        self.inner
            .predictor
            .model_version(&ModelRef::Tuned { id: id.to_string() })
    }

    /// Create and queue the search a ready task's file asks for, unless it exists (whatever
    /// its state: a search cancelled when its file was deleted stays cancelled). For a task
    /// restored after its file was deleted while it was fine-tuning: the search was not
    /// created then, the file being gone. Returns the record created.
    pub fn ensure_task_search(
        &self,
        spec: &TaskSpec,
        model: &str,
    ) -> Result<Option<SearchRecord>, SearchesError> {
        let Some(rec) = task_search_record(spec, model, &self.model_version(model)) else {
            return Ok(None);
        };
        match self.inner.store.insert_search(&rec) {
            Ok(()) => {}
            Err(StoreError::SearchExists(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        if rec.status == SearchStatus::Queued {
            self.enqueue(&rec.id)?;
        }
        Ok(Some(rec))
    }

    /// Queue a search already in the store.
    pub fn enqueue(&self, id: &str) -> Result<(), SearchesError> {
        let tx = self.inner.tx.lock().expect("queue lock");
        match tx.as_ref() {
            Some(tx) => tx.send(id.to_string()).map_err(|_| SearchesError::Stopped),
            None => Err(SearchesError::Stopped),
        }
    }

    /// Cancel a search: a queued one at once, a running one at its next generation (its worker
    /// writes `cancelled`). Results found so far are kept. Idempotent: a finished search is
    /// returned as it is. The record returned is the search as the request found it (a running
    /// one says `running`, however soon its worker stops).
    pub fn cancel(&self, id: &str, reason: Option<&str>) -> Result<SearchRecord, SearchesError> {
        let running = self.inner.running.lock().expect("running lock");
        if let Some(c) = running.get(id) {
            // The record as the request found it, read before the flag is set: once set, the
            // worker may write `cancelled` at any moment, and the answer would depend on the race.
            let rec = self.inner.store.search(id)?;
            *c.reason.lock().expect("reason lock") = reason.map(str::to_string);
            c.flag.store(true, Ordering::SeqCst);
            tracing::info!(search = %id, "search cancellation requested");
            return rec.ok_or_else(|| SearchesError::NotFound(format!("no search '{id}'")));
        } else if let Some(rec) = match self.inner.store.cancel_queued_search(id, reason) {
            Err(StoreError::NoSearch(_)) => {
                return Err(SearchesError::NotFound(format!("no search '{id}'")))
            }
            r => r?,
        } {
            self.inner
                .metrics
                .finished
                .with_label_values(&["cancelled"])
                .inc();
            tracing::info!(search = %id, "queued search cancelled");
            return Ok(rec);
        }
        drop(running);
        self.inner
            .store
            .search(id)?
            .ok_or_else(|| SearchesError::NotFound(format!("no search '{id}'")))
    }

    /// Delete a finished search for good: its record, checkpoint and history (returned as it
    /// was, results included, for a last export). A queued or running one is refused: cancel
    /// it first. A task's own search is created again only if the task is restored (its file
    /// deleted and put back), as at any restore.
    pub fn remove(&self, id: &str) -> Result<SearchRecord, SearchesError> {
        match self.inner.store.remove_search(id) {
            Ok(rec) => {
                tracing::info!(search = %id, status = rec.status.as_str(), "search deleted");
                // Its series goes with it: a deleted search is no longer one to watch.
                self.inner
                    .finished_series
                    .lock()
                    .expect("series lock")
                    .retain(|f| f != id);
                let _ = self.inner.metrics.best.remove_label_values(&[id]);
                Ok(rec)
            }
            Err(StoreError::NoSearch(_)) => {
                Err(SearchesError::NotFound(format!("no search '{id}'")))
            }
            Err(e @ StoreError::SearchUnfinished { .. }) => {
                Err(SearchesError::Unfinished(e.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Cancel every unfinished search of `task` (its file was deleted); returns how many.
    pub fn cancel_task(&self, task: &str, reason: &str) -> usize {
        let ids: Vec<String> = match self.inner.store.searches() {
            Ok(all) => all
                .into_iter()
                .filter(|s| {
                    s.task == task
                        && matches!(s.status, SearchStatus::Queued | SearchStatus::Running)
                })
                .map(|s| s.id)
                .collect(),
            Err(e) => {
                tracing::error!(task, error = %e, "listing the searches of a task");
                return 0;
            }
        };
        for id in &ids {
            if let Err(e) = self.cancel(id, Some(reason)) {
                tracing::error!(search = %id, error = %e, "cancelling a search");
            }
        }
        ids.len()
    }

    /// Ask every worker to stop after its current generation (non-blocking).
    pub fn signal_stop(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.stop_tx.lock().expect("stop lock").take();
        self.inner.tx.lock().expect("queue lock").take();
    }

    /// Stop and wait for the workers: running searches checkpoint and stay queued.
    pub fn stop(&self) {
        self.signal_stop();
        let handles: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.inner.workers.lock().expect("workers lock"));
        for h in handles {
            if h.join().is_err() {
                tracing::error!("a search thread panicked");
            }
        }
    }

    fn worker(&self, rx: Receiver<String>, stop: Receiver<()>) {
        loop {
            if self.inner.stop.load(Ordering::SeqCst) {
                return;
            }
            let id = crossbeam_channel::select! {
                recv(stop) -> _ => return,
                recv(rx) -> m => match m { Ok(id) => id, Err(_) => return },
            };
            if self.inner.stop.load(Ordering::SeqCst) {
                return;
            }
            match self.run_one(&id) {
                Ok(()) => {}
                // Cancelled while queued, then deleted before its turn came.
                Err(StoreError::NoSearch(_)) => {
                    tracing::debug!(search = %id, "a queued search was deleted before it ran")
                }
                Err(e) => tracing::error!(search = %id, error = %e, "search failed in the store"),
            }
        }
    }

    fn run_one(&self, id: &str) -> Result<(), StoreError> {
        let cancel = Arc::new(Cancel::default());
        self.inner
            .running
            .lock()
            .expect("running lock")
            .insert(id.to_string(), cancel.clone());
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.claim_and_run(id, &cancel)
        }));
        self.inner.running.lock().expect("running lock").remove(id);
        match out {
            Ok(r) => r,
            Err(_) => {
                // A bug, not the search's input: record it; the worker goes on with the next.
                self.inner
                    .metrics
                    .finished
                    .with_label_values(&["failed"])
                    .inc();
                self.inner.store.update_search(id, None, true, |r| {
                    r.status = SearchStatus::Failed;
                    r.error = Some("the search panicked (a bug: see the daemon's log); its last checkpoint is kept".into());
                    true
                })?;
                Ok(())
            }
        }
    }

    fn claim_and_run(&self, id: &str, cancel: &Cancel) -> Result<(), StoreError> {
        let store = &self.inner.store;
        let Some(rec) = store.claim_search(id)? else {
            return Ok(()); // cancelled, finished or claimed already
        };
        let m = &self.inner.metrics;
        let fail = |message: String| -> Result<(), StoreError> {
            tracing::warn!(search = %id, error = %message, "search failed");
            m.finished.with_label_values(&["failed"]).inc();
            store.update_search(id, None, true, |r| {
                r.status = SearchStatus::Failed;
                r.error = Some(message.clone());
                true
            })?;
            Ok(())
        };
        let stored: StoredSpec = match serde_json::from_value(rec.spec.clone()) {
            Ok(s) => s,
            Err(e) => return fail(format!("the stored search spec is unreadable: {e}")),
        };
        // `saved`: history entries already in the store's history tree.
        let (mut state, resumed, mut saved) = match store.search_checkpoint(id)? {
            Some((head, history)) => match crate::store::decode_checkpoint(&head, &history) {
                Ok((s, n)) => (s, true, n),
                Err(e) => return fail(format!("the search checkpoint is unreadable: {e}")),
            },
            None => match SearchState::new(stored.search.clone()) {
                Ok(s) => (s, false, 0),
                Err(e) => return fail(e.to_string()),
            },
        };
        if resumed {
            let g = state.generation;
            store.update_search(id, None, true, |r| {
                r.resumes += 1;
                r.resumed_from_generation = Some(g);
                true
            })?;
            tracing::info!(search = %id, generation = g, evaluations = state.evaluations, "search resumed from its checkpoint");
        } else {
            tracing::info!(search = %id, task = %rec.task, "search started");
        }
        let sign = if stored.higher_is_better { 1.0 } else { -1.0 };
        let report = Report {
            sign,
            oracle: Oracle::of(&stored.model),
        };
        let mut fitness = ServiceFitness {
            predictor: &self.inner.predictor,
            model: &stored.model,
            sign,
        };
        // Counted as running until this frame ends, unwinding included.
        struct Running<'a>(&'a IntGauge);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        m.running.inc();
        let running = Running(&m.running);
        // When the last checkpoint was written (none yet in this run: the first generation's
        // is written at once, so a new search shows progress without waiting an interval).
        let mut last_save: Option<std::time::Instant> = None;
        let outcome = loop {
            if state.done {
                break Ok(SearchStatus::Done);
            }
            if cancel.flag.load(Ordering::SeqCst) {
                break Ok(SearchStatus::Cancelled);
            }
            if self.inner.stop.load(Ordering::SeqCst) {
                break Ok(SearchStatus::Queued);
            }
            let before = state.evaluations;
            if let Err(e) = search::step(&mut state, &mut fitness) {
                break Err(e);
            }
            m.generations.inc();
            m.candidates.inc_by((state.evaluations - before) as u64);
            let status = if state.done {
                SearchStatus::Done
            } else {
                SearchStatus::Running
            };
            let due = last_save.is_none_or(|t| t.elapsed() >= self.inner.checkpoint_interval);
            if state.done || due {
                self.save(id, &mut state, &mut saved, status, &report, None)?;
                last_save = Some(std::time::Instant::now());
            }
            if let Some(b) = state.best() {
                m.best.with_label_values(&[id]).set(b.score * sign);
            }
        };
        drop(running);
        if !matches!(outcome, Ok(SearchStatus::Queued)) {
            let mut f = self.inner.finished_series.lock().expect("series lock");
            for old in retire(&mut f, id, FINISHED_SERIES) {
                let _ = m.best.remove_label_values(&[&old]);
            }
        }
        match outcome {
            Ok(SearchStatus::Done) => {
                m.finished.with_label_values(&["done"]).inc();
                tracing::info!(search = %id, evaluations = state.evaluations, generations = state.generation, "search done");
                Ok(())
            }
            Ok(status) => {
                let reason = cancel.reason.lock().expect("reason lock").clone();
                if status == SearchStatus::Cancelled {
                    m.finished.with_label_values(&["cancelled"]).inc();
                    tracing::info!(search = %id, generation = state.generation, "search cancelled: results kept");
                } else {
                    tracing::info!(search = %id, generation = state.generation, "search stopped at its checkpoint; it resumes at the next start");
                }
                self.save(id, &mut state, &mut saved, status, &report, reason)
            }
            Err(e) => {
                // The last checkpoint stays: the failure is recorded with what was found.
                fail(e.to_string())
            }
        }
    }

    /// Write the record's progress and the checkpoint (the state's head, and the history
    /// entries from `saved` on) in one transaction, flushed.
    fn save(
        &self,
        id: &str,
        state: &mut SearchState,
        saved: &mut usize,
        status: SearchStatus,
        report: &Report,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        let history = std::mem::take(&mut state.history);
        let head = serde_json::to_vec(&serde_json::json!({
            "history_len": history.len(),
            "state": &*state,
        }))
        .expect("search states serialise");
        state.history = history;
        let added: Vec<Vec<u8>> = state.history[*saved..]
            .iter()
            .map(|e| serde_json::to_vec(e).expect("candidates serialise"))
            .collect();
        let mut rows = state.results();
        if let Some(o) = &report.oracle {
            o.table.fill_oracle(o.space, &mut rows);
        }
        let results: Vec<serde_json::Value> = rows
            .into_iter()
            .map(|mut r| {
                r.predicted *= report.sign;
                serde_json::to_value(r).expect("rows serialise")
            })
            .collect();
        let best = state.best().map(|b| {
            serde_json::json!({
                "arch": match &b.genome { search::Genome::Arch(a) => Some(a.to_string()), _ => None },
                "predicted": b.score * report.sign,
                "mflops": b.mflops,
                "mparams": b.mparams,
                "hash": b.hash,
                "generation": b.generation,
            })
        });
        let budget = state.spec.budget.max(1) as f64;
        self.inner.store.update_search(
            id,
            Some(Checkpoint {
                head: &head,
                history_from: *saved,
                history: &added,
            }),
            true,
            |r| {
                r.status = status;
                r.evaluations = state.evaluations as u64;
                r.generation = state.generation;
                r.budget = state.spec.budget as u64;
                r.progress = if state.done {
                    1.0
                } else {
                    (state.evaluations as f64 / budget).min(1.0)
                };
                r.best = best.clone();
                r.ended_because = state.end_reason();
                r.results = serde_json::Value::Array(results.clone());
                if error.is_some() {
                    r.error = error.clone();
                }
                true
            },
        )?;
        *saved = state.history.len();
        Ok(())
    }
}

/// How a search's record reports its scores.
struct Report {
    /// Maps the maximised score back to the task's units (−1 where lower is better).
    sign: f64,
    /// Fills the results' true labels where a benchmark table has them.
    oracle: Option<Oracle>,
}

/// The true labels of a base-model search's benchmark task, for the results' `oracle` column
/// (a report only: the search never reads them). A task model's search has none: its labels
/// are the user's, and the benchmark's need not measure the same thing.
struct Oracle {
    space: SpaceId,
    table: search::TableFitness,
}

impl Oracle {
    fn of(model: &ModelRef) -> Option<Oracle> {
        match model {
            ModelRef::Base { space, task } => Some(Oracle {
                space: *space,
                table: search::TableFitness::load(*space, *task).ok()?,
            }),
            ModelRef::Tuned { .. } => None,
        }
    }
}

/// The predictor service as a search fitness (higher is better: predictions times `sign`).
struct ServiceFitness<'a> {
    predictor: &'a PredictorService,
    model: &'a ModelRef,
    sign: f64,
}

impl Fitness for ServiceFitness<'_> {
    fn score(&mut self, batch: &[Candidate<'_>]) -> Result<Vec<f64>, SearchError> {
        let items = batch.iter().map(|c| self.predictor.item(c.graph)).collect();
        let p = self
            .predictor
            .predict(self.model, items, Source::Search)
            .map_err(|e| SearchError::Fitness(e.to_string()))?;
        Ok(p.into_iter().map(|v| v * self.sign).collect())
    }
}

fn invalid(m: impl Into<String>) -> SearchesError {
    SearchesError::Invalid(m.into())
}

/// A task of the store as something that predicts: its latest model and what its networks are.
#[derive(Debug, Clone, PartialEq)]
pub struct TunedTask {
    /// The task model's id (`name/version`), possibly of an older version than the current.
    pub model_id: String,
    pub space: TaskSpace,
    pub higher_is_better: bool,
}

/// Look up task `name`'s model: not found (404), or not ready yet (409).
pub fn tuned_task(store: &Store, name: &str) -> Result<TunedTask, SearchesError> {
    let rec = store.task(name)?.ok_or_else(|| {
        SearchesError::NotFound(format!(
            "no task '{name}' (for a benchmark task give its space too)"
        ))
    })?;
    let Some(id) = rec.model.clone() else {
        let why = rec.error.map(|e| format!(": {e}")).unwrap_or_default();
        return Err(SearchesError::NotReady(format!(
            "task '{name}' has no model yet (status {}{why})",
            serde_json::to_value(rec.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        )));
    };
    let version = id.split_once('/').map_or("", |(_, v)| v);
    let snap = store.task_spec(name, version)?.ok_or_else(|| {
        SearchesError::NotFound(format!("task '{name}' has no version {version}"))
    })?;
    let space: TaskSpace = serde_json::from_value(snap["space"].clone())
        .map_err(|e| invalid(format!("task '{name}': {e}")))?;
    Ok(TunedTask {
        model_id: id,
        space,
        higher_is_better: snap["higher_is_better"].as_bool().unwrap_or(true),
    })
}

/// Resolve a request against the store's tasks (see [`Searches::resolve`]).
fn resolve(store: &Store, req: &SearchRequest, origin: &str) -> Result<StoredSpec, SearchesError> {
    let (model, space, head, higher_is_better) = match &req.space {
        Some(s) => {
            let space = SpaceId::from_name(s).map_err(|e| invalid(format!("space: {e}")))?;
            let task = space
                .task(&req.task)
                .map_err(|e| invalid(format!("task: {e}")))?;
            let hib = crate::spaces::labels::load(space, task)
                .map(|t| t.higher_is_better)
                .unwrap_or(true);
            (ModelRef::Base { space, task }, Some(space), Some(task), hib)
        }
        None => {
            let t = tuned_task(store, &req.task)?;
            let model = ModelRef::Tuned { id: t.model_id };
            match t.space {
                TaskSpace::Builtin { space, head } => {
                    (model, Some(space), Some(head), t.higher_is_better)
                }
                TaskSpace::Graph => (model, None, None, t.higher_is_better),
            }
        }
    };
    let spec = build_spec(req, space, head, higher_is_better)?;
    // A submission only (a stored spec is never resolved again, and a task file's table goes
    // through `resolve_with`): a field the search would ignore is refused, naming it.
    let given = serde_json::to_value(req).expect("requests serialise");
    spec.algorithm
        .refuse_unread_options(|field| given.get(field).is_some())
        .map_err(|e| invalid(e.to_string()))?;
    Ok(StoredSpec {
        request: req.clone(),
        search: spec,
        model,
        higher_is_better,
        origin: origin.to_string(),
    })
}

/// The request a task file's `[search]` table stands for.
pub fn request_from_task(spec: &TaskSpec) -> Option<SearchRequest> {
    let s = spec.search.as_ref()?;
    let algorithm = s.algorithm.name();
    Some(SearchRequest {
        task: spec.name.clone(),
        space: None,
        algorithm: Some(algorithm.into()),
        budget: s.budget.map(|v| v as usize),
        population: s.population.map(|v| v as usize),
        sample: s.sample.map(|v| v as usize),
        batch: s.batch.map(|v| v as usize),
        max_mflops: s.max_mflops,
        max_mparams: s.max_mparams,
        seed: s.seed,
        start: s.start.clone(),
        start_graph: None,
        tolerance: s.tolerance,
        reference: start_label(spec),
        radius: s.radius.map(|r| r as usize),
        two_sided: s.two_sided,
        top_k: None,
        multi_objective: None,
    })
}

/// The label of a FLOP reduction's start among the task's samples, when it is one of them (the
/// first such sample's).
fn start_label(spec: &TaskSpec) -> Option<f64> {
    let s = spec.search.as_ref()?;
    if s.algorithm != search::Algorithm::Flops {
        return None;
    }
    let start = s.start.as_deref()?;
    spec.samples.iter().find_map(|x| match &x.input {
        taskfile::SampleInput::Arch(a) if a.to_string() == start => Some(x.value),
        _ => None,
    })
}

/// The search record a task file version's `[search]` table asks for once the task's model
/// `model_id` exists: queued, or failed (with the reason) when the table cannot be searched.
/// `None` when the task has no `[search]` table. `model_version` names the model in the cache.
pub fn task_search_record(
    spec: &TaskSpec,
    model_id: &str,
    model_version: &str,
) -> Option<SearchRecord> {
    let req = request_from_task(spec)?;
    let id = task_search_id(&spec.name, &spec.hash);
    let origin = format!("task file version {}", spec.hash);
    let stored = match spec.space {
        TaskSpace::Builtin { space, head } => {
            resolve_with(&req, space, head, model_id, spec, &origin)
        }
        TaskSpace::Graph => Err(invalid(
            "a search needs a built-in space; space = \"graph\" has no architecture strings",
        )),
    };
    let mut rec = match stored {
        Ok(s) => SearchRecord::queued(
            &id,
            &spec.name,
            serde_json::to_value(&s).expect("specs serialise"),
            s.search.budget as u64,
        ),
        Err(e) => {
            let mut r = SearchRecord::queued(
                &id,
                &spec.name,
                serde_json::json!({"request": req, "origin": origin}),
                0,
            );
            r.status = SearchStatus::Failed;
            r.error = Some(format!("the task file's [search] table: {e}"));
            r
        }
    };
    rec.model = Some(model_version.to_string());
    rec.created_at = now_ms();
    Some(rec)
}

/// [`resolve`] for a task whose model is being recorded (the jobs' side, inside the
/// transaction that makes it ready).
fn resolve_with(
    req: &SearchRequest,
    space: SpaceId,
    head: crate::spaces::Task,
    model_id: &str,
    spec: &TaskSpec,
    origin: &str,
) -> Result<StoredSpec, SearchesError> {
    Ok(StoredSpec {
        request: req.clone(),
        search: build_spec(req, Some(space), Some(head), spec.higher_is_better)?,
        model: ModelRef::Tuned {
            id: model_id.to_string(),
        },
        higher_is_better: spec.higher_is_better,
        origin: origin.to_string(),
    })
}

/// The search spec of a request, for networks of `space` built with `head`'s network head
/// (the search maximises: a lower-is-better task's reference changes sign, as its scores do).
fn build_spec(
    req: &SearchRequest,
    space: Option<SpaceId>,
    head: Option<crate::spaces::Task>,
    higher_is_better: bool,
) -> Result<SearchSpec, SearchesError> {
    let d = SearchSpec::default();
    let algorithm: search::Algorithm = match &req.algorithm {
        None => d.algorithm,
        Some(a) => a.parse().map_err(invalid)?,
    };
    let start = match (&req.start, &req.start_graph) {
        (Some(_), Some(_)) => return Err(invalid("give 'start' or 'start_graph', not both")),
        (Some(a), None) => {
            let space = space.ok_or_else(|| {
                invalid("'start' is an architecture string; this task has no built-in space")
            })?;
            Some(Start::Arch(
                Arch::parse(space, a)
                    .map_err(|e| invalid(format!("start: {e}")))?
                    .to_string(),
            ))
        }
        (None, Some(g)) => {
            let text = g.to_string();
            let graph = crate::graph::json::from_json(&text)
                .map_err(|e| invalid(format!("start_graph: {e}")))?;
            search::check_start_graph(&graph).map_err(|e| invalid(format!("start_graph: {e}")))?;
            Some(Start::Graph(text))
        }
        (None, None) => None,
    };
    let spec = SearchSpec {
        space,
        task: head,
        algorithm,
        budget: req.budget.unwrap_or(d.budget),
        population: req.population.unwrap_or(d.population),
        sample: req.sample.unwrap_or(d.sample),
        batch: req.batch.unwrap_or(d.batch),
        max_mflops: req.max_mflops,
        max_mparams: req.max_mparams,
        multi_objective: req.multi_objective.unwrap_or(d.multi_objective),
        seed: req.seed.unwrap_or(d.seed),
        start,
        tolerance: req.tolerance.unwrap_or(d.tolerance),
        reference: req.reference.map(|v| if higher_is_better { v } else { -v }),
        two_sided: req.two_sided.unwrap_or(d.two_sided),
        radius: req.radius.or(d.radius),
        beam: d.beam,
        top_k: req.top_k.unwrap_or(d.top_k),
        cache: true,
    };
    if spec.top_k == 0 || spec.top_k > 1000 {
        return Err(invalid("top_k must be within 1..=1000"));
    }
    // The budget's, batch's and population's limits are the spec's own.
    spec.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(spec)
}

/// The daemon's limits on a search, shared with the task-file check.
pub use crate::search::{MAX_BATCH, MAX_BUDGET, MAX_POPULATION};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::TableFitness;
    use crate::spaces::Task;

    /// A task file of 2 NB-201 samples (the second labelled 90.39, as written below) with a FLOP
    /// reduction from `start`; `extra` goes at the top level.
    fn flops_task(dir: &std::path::Path, start: &str, extra: &str) -> TaskSpec {
        let csv = "arch,value\n\
            |avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|,81.9\n\
            |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|,90.39\n";
        std::fs::write(dir.join("s.csv"), csv).unwrap();
        let t = dir.join("t.toml");
        std::fs::write(
            &t,
            format!(
                "name = \"t\"\nspace = \"nb201\"\nhead = \"cifar10\"\nsamples = \"s.csv\"\n{extra}\n\
                 [search]\nalgorithm = \"flops\"\nstart = \"{start}\"\n"
            ),
        )
        .unwrap();
        crate::taskfile::load(&t, &crate::taskfile::Limits::default()).unwrap()
    }

    #[test]
    fn a_labelled_start_is_the_reduction_s_reference_in_the_fitness_s_sign() {
        let dir = tempfile::tempdir().unwrap();
        let labelled = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|";
        let spec = flops_task(dir.path(), labelled, "");
        let req = request_from_task(&spec).unwrap();
        assert_eq!(req.reference, Some(90.39));
        let rec = task_search_record(&spec, "t/v", "v").unwrap();
        let stored: StoredSpec = serde_json::from_value(rec.spec.clone()).unwrap();
        assert_eq!(stored.search.reference, Some(90.39));
        // Lower is better: the search maximises −value, so the reference is negated too.
        let spec = flops_task(dir.path(), labelled, "higher_is_better = false");
        let rec = task_search_record(&spec, "t/v", "v").unwrap();
        let stored: StoredSpec = serde_json::from_value(rec.spec.clone()).unwrap();
        assert_eq!(stored.search.reference, Some(-90.39));
        // A start that is not a sample: measured from its prediction, as before.
        let other = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|";
        let spec = flops_task(dir.path(), other, "");
        assert_eq!(request_from_task(&spec).unwrap().reference, None);
        // Left out of the stored request when unset.
        let text = serde_json::to_string(&request_from_task(&spec).unwrap()).unwrap();
        assert!(!text.contains("reference"), "{text}");
    }

    #[test]
    fn a_task_file_s_reduction_is_two_sided_unless_it_says_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let start = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|";
        let stored = |spec: &TaskSpec| -> StoredSpec {
            let rec = task_search_record(spec, "t/v", "v").unwrap();
            serde_json::from_value(rec.spec.clone()).unwrap()
        };
        let spec = flops_task(dir.path(), start, "");
        assert_eq!(request_from_task(&spec).unwrap().two_sided, None);
        assert!(stored(&spec).search.two_sided);
        // The [search] table is the file's last: a line appended joins it.
        let t = dir.path().join("t.toml");
        let text = std::fs::read_to_string(&t).unwrap();
        std::fs::write(&t, format!("{text}two_sided = false\n")).unwrap();
        let spec = crate::taskfile::load(&t, &crate::taskfile::Limits::default()).unwrap();
        assert_eq!(request_from_task(&spec).unwrap().two_sided, Some(false));
        assert!(!stored(&spec).search.two_sided);
    }

    #[test]
    fn ended_searches_keep_their_series_up_to_the_bound_oldest_retired_first() {
        let mut f = VecDeque::new();
        assert!(retire(&mut f, "a", 2).is_empty());
        assert!(retire(&mut f, "b", 2).is_empty());
        assert_eq!(retire(&mut f, "c", 2), vec!["a".to_string()]);
        // A search ending again (resumed, then cancelled) moves to the back, not in twice.
        assert!(retire(&mut f, "b", 2).is_empty());
        assert_eq!(f, VecDeque::from(["c".to_string(), "b".to_string()]));
        assert_eq!(retire(&mut f, "d", 2), vec!["c".to_string()]);
    }

    #[test]
    fn checkpoints_read_back_in_both_layouts() {
        let spec = SearchSpec {
            space: Some(SpaceId::Nb201),
            task: Some(Task::Cifar10),
            budget: 40,
            population: 8,
            sample: 2,
            batch: 4,
            seed: 3,
            ..SearchSpec::default()
        };
        let mut fit = TableFitness::load(SpaceId::Nb201, Task::Cifar10).unwrap();
        let mut st = SearchState::new(spec).unwrap();
        for _ in 0..4 {
            search::step(&mut st, &mut fit).unwrap();
        }
        // Schema 1: the whole state.
        let whole = serde_json::to_vec(&st).unwrap();
        let (back, n) = crate::store::decode_checkpoint(&whole, &[] as &[Vec<u8>]).unwrap();
        assert_eq!((back, n), (st.clone(), 0));
        // Schema 2: the head, and the history beside it.
        let mut head_state = st.clone();
        let history = std::mem::take(&mut head_state.history);
        let head = serde_json::to_vec(
            &serde_json::json!({"history_len": history.len(), "state": head_state}),
        )
        .unwrap();
        let entries: Vec<Vec<u8>> = history
            .iter()
            .map(|e| serde_json::to_vec(e).unwrap())
            .collect();
        let (back, n) = crate::store::decode_checkpoint(&head, &entries).unwrap();
        assert_eq!((back, n), (st.clone(), st.history.len()));
        assert!(crate::store::decode_checkpoint(&head, &entries[..1]).is_err());
    }
}
