//! Jobs: the fine-tuning work a task version needs once it is accepted, run on dedicated
//! threads, with the store as the record of where each task stands.
//!
//! The predictor plugs in through [`Finetuner`]; [`ModelTuner`] is the real one (task models of
//! [`crate::tuned`], written under `<state>/models`). This module owns the queue, the workers and
//! the status transitions; when a version turns ready its model's metadata is recorded and the
//! search its `[search]` table asks for is created in the same store transaction, then handed to
//! the search pool. Invariants: at most `workers` jobs run at once, each on its own
//! thread, never on an async worker; a job is for one task *version*: a job whose version is no
//! longer the task's current one, or not queued (a duplicate), is skipped, one running when a
//! newer version of its task is submitted stops at its next training step (`superseded`), and a status update for an old version is ignored
//! by the store, so a slow job never overwrites a newer version's state; transitions are
//! queued → tuning → ready (with the model version) or failed (with the error); tasks queued when
//! the pool starts (e.g. before a restart), and tasks left `tuning` by an interrupted job, are
//! enqueued again; [`Jobs::stop`] interrupts running jobs at their next training step (they
//! stay `tuning`, nothing of theirs is saved, and they run again at the next start) and drops
//! the queued ones (they stay `queued` in the store and are picked up at the next start). At start-up and whenever a model turns ready, the prediction cache drops the
//! values, and the model folder the models, of task-model versions no task or unfinished search
//! uses any more.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub use crate::predictor::train::Cancel;
use crate::predictor::{default_device, Device};
use crate::searches::{self, Searches};
use crate::service::TUNED_PREFIX;
use crate::store::{SearchStatus, Store, StoreError, TaskStatus};
use crate::taskfile::TaskSpec;
use crate::tuned::{self, BaseModel};

/// A model a fine-tuning job produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Finetuned {
    /// Its id (`name/version` for task models): what the task record and searches name.
    pub model: String,
    /// Its metadata, recorded in the store (`Null` when there is none).
    pub meta: serde_json::Value,
}

/// What fine-tunes the predictor on a task version.
pub trait Finetuner: Send + Sync + 'static {
    /// Fine-tune on `snapshot` (see [`crate::taskfile::TaskSpec::snapshot`]); returns the model
    /// produced, or a message saying why it failed. Once `cancel` is set (the pool is
    /// stopping) it should return soon, with an error; the job then runs again at the next
    /// start, so nothing it leaves half done may be recorded as done.
    fn finetune(
        &self,
        task: &str,
        snapshot: &serde_json::Value,
        cancel: &Cancel,
    ) -> Result<Finetuned, String>;

    /// At most how many training steps fine-tuning `snapshot` takes, when known: what a job's
    /// progress (the steps counted by the `Cancel` it is given) is shown against.
    fn planned_steps(&self, snapshot: &serde_json::Value) -> Option<u64> {
        let _ = snapshot;
        None
    }

    /// Delete the stored model `model` (a [`Finetuned::model`] id), which nothing uses any more;
    /// true when something was deleted. Finetuners that store nothing keep the default.
    fn discard(&self, model: &str) -> Result<bool, String> {
        let _ = model;
        Ok(false)
    }
}

/// The real [`Finetuner`]: [`tuned::finetune`] from a fresh copy of the base model, the model
/// saved under `models_dir`; registers `aiop_finetune_duration_seconds` and
/// `aiop_finetune_final_loss{task}`.
pub struct ModelTuner {
    models_dir: PathBuf,
    base: BaseModel,
    device: Device,
    duration: Histogram,
    final_loss: GaugeVec,
}

impl ModelTuner {
    pub fn new(
        models_dir: PathBuf,
        base: BaseModel,
        registry: &Registry,
    ) -> Result<ModelTuner, JobsError> {
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "aiop_finetune_duration_seconds",
                "Time to fine-tune (or fit zero-shot) a task model",
            )
            .buckets(prometheus::exponential_buckets(0.05, 2.0, 16)?),
        )?;
        let final_loss = GaugeVec::new(
            Opts::new(
                "aiop_finetune_final_loss",
                "Training MSE (standardised units) of the last fine-tuning epoch, per task",
            ),
            &["task"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(final_loss.clone()))?;
        Ok(ModelTuner {
            models_dir,
            base,
            device: default_device(),
            duration,
            final_loss,
        })
    }
}

impl Finetuner for ModelTuner {
    fn planned_steps(&self, snapshot: &serde_json::Value) -> Option<u64> {
        TaskSpec::from_snapshot(snapshot)
            .ok()
            .map(|spec| tuned::planned_steps(&spec))
    }

    fn finetune(
        &self,
        task: &str,
        snapshot: &serde_json::Value,
        cancel: &Cancel,
    ) -> Result<Finetuned, String> {
        let start = Instant::now();
        let spec = TaskSpec::from_snapshot(snapshot)?;
        let base = self
            .base
            .load(&self.device)
            .map_err(|e| format!("loading the base model {}: {e}", self.base.describe()))?;
        let companion = self.base.companion_for(&spec, &self.device).map_err(|e| {
            format!(
                "loading the no-transform companion of {}: {e}",
                self.base.describe()
            )
        })?;
        let m = tuned::finetune(&spec, base, &self.base.describe(), companion, true, cancel)
            .map_err(|e| e.to_string())?;
        m.save(&self.models_dir).map_err(|e| e.to_string())?;
        self.duration.observe(start.elapsed().as_secs_f64());
        if let Some(l) = m.meta.final_loss {
            self.final_loss.with_label_values(&[task]).set(l);
        }
        tracing::info!(task, model = %m.meta.id(), seconds = m.meta.seconds, final_loss = ?m.meta.final_loss, spearman = m.meta.fit.spearman, cv_spearman = ?m.meta.cross_validated.as_ref().map(|c| c.spearman), "task model saved");
        Ok(Finetuned {
            model: m.meta.id(),
            meta: serde_json::to_value(&m.meta).map_err(|e| e.to_string())?,
        })
    }

    fn discard(&self, model: &str) -> Result<bool, String> {
        tuned::remove(&self.models_dir, model).map_err(|e| e.to_string())
    }
}

/// One unit of work: fine-tune `task` at `version` (a spec hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub task: String,
    pub version: String,
    /// Queued again at start-up after a stop or a crash cut its fine-tuning short: it runs even
    /// if the task's file has gone since (a task taken away while it was fine-tuning gets its
    /// model all the same, a restart between included). Other jobs of a removed task are
    /// dropped: it waits, `queued`, for its file to come back.
    pub interrupted: bool,
}

/// Errors of starting the pool.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("registering job metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("starting a job thread: {0}")]
    Thread(std::io::Error),
}

#[derive(Clone)]
struct Metrics {
    finished: IntCounterVec,
    running: IntGauge,
    recovered: IntCounter,
    /// Cached predictions dropped because their task-model version went out of use.
    pruned: IntCounter,
    /// Task-model folders deleted because their version went out of use.
    models_pruned: IntCounter,
}

impl Metrics {
    fn register(reg: &Registry) -> Result<Metrics, prometheus::Error> {
        let m = Metrics {
            finished: IntCounterVec::new(
                Opts::new("aiop_jobs_finished_total", "Fine-tuning jobs finished"),
                &["outcome"],
            )?,
            running: IntGauge::new("aiop_jobs_running", "Fine-tuning jobs running now")?,
            recovered: IntCounter::new(
                "aiop_jobs_recovered_total",
                "Fine-tuning jobs queued again at start-up (left queued or interrupted)",
            )?,
            pruned: IntCounter::new(
                "aiop_prediction_cache_pruned_total",
                "Cached predictions removed because no task or unfinished search uses their \
                 task-model version any more",
            )?,
            models_pruned: IntCounter::new(
                "aiop_task_models_pruned_total",
                "Task models deleted because their task moved on to a newer version and no \
                 unfinished search uses them",
            )?,
        };
        // Every outcome's series from the start, at 0: a dashboard shows "none yet", not "no data".
        for outcome in ["ready", "failed", "interrupted", "skipped", "superseded"] {
            m.finished.with_label_values(&[outcome]);
        }
        reg.register(Box::new(m.finished.clone()))?;
        reg.register(Box::new(m.running.clone()))?;
        reg.register(Box::new(m.recovered.clone()))?;
        reg.register(Box::new(m.pruned.clone()))?;
        reg.register(Box::new(m.models_pruned.clone()))?;
        Ok(m)
    }
}

/// Hands jobs to the pool; cheap to clone (the watcher holds one).
#[derive(Clone)]
pub struct Submitter {
    tx: Sender<Job>,
    /// The running jobs: one of an older version of the job's task is told to stop.
    tuning: Tuning,
}

impl Submitter {
    /// Queue a job; false when the pool has stopped. A job running for another version of the
    /// same task stops at its next training step: the store would ignore what it produced,
    /// and it would hold a worker the new version waits for.
    pub fn submit(&self, job: Job) -> bool {
        if self.tuning.supersede(&job.task, &job.version) {
            tracing::info!(task = %job.task, version = %job.version, "a new version of the task: the fine-tuning of the old one stops");
        }
        self.tx.send(job).is_ok()
    }
}

/// The worker pool.
/// The fine-tuning jobs running now and how far each has gone, by task: what `GET /v1/tasks`
/// shows of a task that is `tuning`. In memory only (a restarted job starts again from zero).
#[derive(Debug, Clone, Default)]
pub struct Tuning(Arc<Mutex<HashMap<String, Running>>>);

/// One running job's progress.
#[derive(Debug)]
struct Running {
    version: String,
    /// Training steps taken so far, counted by the job's `Cancel`.
    steps: Arc<AtomicU64>,
    /// At most how many it will take ([`Finetuner::planned_steps`]).
    planned: Option<u64>,
    started: Instant,
    /// Set when a newer version of the task is submitted: the job stops.
    superseded: Arc<AtomicBool>,
}

/// A running job's progress as the API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Progress {
    /// The task version being fine-tuned.
    pub version: String,
    pub steps: u64,
    /// At most how many steps the job takes (the length cross-validation chooses may be
    /// shorter: the job then ends before reaching it).
    pub planned_steps: Option<u64>,
    /// `steps / planned_steps`, below 1 until the job ends.
    pub fraction: Option<f64>,
    pub elapsed_secs: f64,
    /// Time left at the rate so far, if every planned step is taken (an upper bound).
    pub eta_secs: Option<f64>,
}

impl Tuning {
    /// The progress of `task`'s running job, if one runs.
    pub fn get(&self, task: &str) -> Option<Progress> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(task).map(Running::progress)
    }

    /// Every running job's progress, by task name, sorted.
    pub fn all(&self) -> Vec<(String, Progress)> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<_> = map.iter().map(|(t, r)| (t.clone(), r.progress())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Register `task`'s job for `version`: the counter of its steps and the flag that
    /// [`Tuning::supersede`] sets.
    fn start(
        &self,
        task: &str,
        version: &str,
        planned: Option<u64>,
    ) -> (Arc<AtomicU64>, Arc<AtomicBool>) {
        let steps = Arc::new(AtomicU64::new(0));
        let superseded = Arc::new(AtomicBool::new(false));
        let r = Running {
            version: version.to_string(),
            steps: steps.clone(),
            planned,
            started: Instant::now(),
            superseded: superseded.clone(),
        };
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(task.to_string(), r);
        (steps, superseded)
    }

    /// Tell `task`'s running job to stop if it is for a version other than `version`; true
    /// when one was told.
    fn supersede(&self, task: &str, version: &str) -> bool {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(task) {
            Some(r) if r.version != version => {
                r.superseded.store(true, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// `task`'s job for `version` is over (a job of another version of it, running beside,
    /// keeps its entry).
    fn end(&self, task: &str, version: &str) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(task).is_some_and(|r| r.version == version) {
            map.remove(task);
        }
    }
}

impl Running {
    fn progress(&self) -> Progress {
        let r = self;
        let steps = r.steps.load(Ordering::Relaxed);
        let elapsed = r.started.elapsed().as_secs_f64();
        let planned = r.planned.filter(|&p| p > 0);
        let fraction = planned.map(|p| (steps.min(p) as f64 / p as f64).min(0.999));
        let eta = planned
            .filter(|_| steps > 0)
            .map(|p| elapsed * p.saturating_sub(steps) as f64 / steps as f64);
        Progress {
            version: r.version.clone(),
            steps,
            planned_steps: r.planned,
            fraction,
            elapsed_secs: elapsed,
            eta_secs: eta,
        }
    }
}

/// The running jobs' progress as gauges, read at scrape time: `aiop_finetune_steps{task}`,
/// `aiop_finetune_planned_steps{task}` (absent when the runner cannot tell) and
/// `aiop_finetune_elapsed_seconds{task}`. A job's series exist while it runs and vanish when
/// it ends, so a dashboard plots `steps / planned_steps` per task without stale lines.
struct TuningCollector {
    tuning: Tuning,
    steps: IntGaugeVec,
    planned: IntGaugeVec,
    elapsed: GaugeVec,
    /// Held through a scrape: the gauges are reset and refilled, and two scrapes interleaving
    /// would otherwise see each other's half-filled state.
    scrape: Mutex<()>,
}

impl TuningCollector {
    fn new(tuning: Tuning) -> Result<TuningCollector, prometheus::Error> {
        Ok(TuningCollector {
            tuning,
            steps: IntGaugeVec::new(
                Opts::new(
                    "aiop_finetune_steps",
                    "Training steps taken so far by the running fine-tuning job of each task",
                ),
                &["task"],
            )?,
            planned: IntGaugeVec::new(
                Opts::new(
                    "aiop_finetune_planned_steps",
                    "At most how many training steps the running fine-tuning job of each task \
                     takes (cross-validation may choose fewer)",
                ),
                &["task"],
            )?,
            elapsed: GaugeVec::new(
                Opts::new(
                    "aiop_finetune_elapsed_seconds",
                    "Time since the running fine-tuning job of each task started",
                ),
                &["task"],
            )?,
            scrape: Mutex::new(()),
        })
    }
}

impl prometheus::core::Collector for TuningCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut d = self.steps.desc();
        d.extend(self.planned.desc());
        d.extend(self.elapsed.desc());
        d
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let _scrape = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        self.steps.reset();
        self.planned.reset();
        self.elapsed.reset();
        for (task, p) in self.tuning.all() {
            self.steps
                .with_label_values(&[task.as_str()])
                .set(i64::try_from(p.steps).unwrap_or(i64::MAX));
            if let Some(n) = p.planned_steps {
                self.planned
                    .with_label_values(&[task.as_str()])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            self.elapsed
                .with_label_values(&[task.as_str()])
                .set(p.elapsed_secs);
        }
        let mut out = self.steps.collect();
        out.extend(self.planned.collect());
        out.extend(self.elapsed.collect());
        out
    }
}

pub struct Jobs {
    tx: Option<Sender<Job>>,
    stop: Sender<()>,
    /// Set by [`Jobs::stop`]: running fine-tunings return at their next training step.
    cancel: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    tuning: Tuning,
}

impl Jobs {
    /// Start `workers` threads running jobs with `runner`, and enqueue every task the store has
    /// as queued. Ready versions' searches go to `searches` when given.
    pub fn start(
        workers: usize,
        store: Store,
        runner: Arc<dyn Finetuner>,
        registry: &Registry,
        searches: Option<Searches>,
    ) -> Result<Jobs, JobsError> {
        let metrics = Metrics::register(registry)?;
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let (stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let cancel = Arc::new(AtomicBool::new(false));
        let tuning = Tuning::default();
        registry.register(Box::new(TuningCollector::new(tuning.clone())?))?;
        for t in store.tasks()? {
            let interrupted = t.status == TaskStatus::Tuning;
            if interrupted {
                // Interrupted by a stop or a crash: run it again.
                store.set_task_status(&t.name, &t.spec_hash, TaskStatus::Queued, None)?;
            }
            if interrupted || (t.status == TaskStatus::Queued && t.removed_at.is_none()) {
                metrics.recovered.inc();
                let _ = tx.send(Job {
                    task: t.name,
                    version: t.spec_hash,
                    interrupted,
                });
            }
        }
        let mut handles = Vec::with_capacity(workers);
        // No job starts before the start-up pruning (on the first worker) is over: a model a
        // job saves meanwhile could belong to a version the pruning read as out of use.
        let pruned = Arc::new(std::sync::Barrier::new(workers.max(1)));
        for k in 0..workers.max(1) {
            let (rx, stopping, store, runner, metrics, searches, pruned) = (
                rx.clone(),
                Stopping {
                    stop: stop_rx.clone(),
                    cancel: Cancel::new(cancel.clone()),
                    tuning: tuning.clone(),
                },
                store.clone(),
                runner.clone(),
                metrics.clone(),
                searches.clone(),
                pruned.clone(),
            );
            let h = std::thread::Builder::new()
                .name(format!("aiop-job-{k}"))
                .spawn(move || {
                    worker(
                        rx,
                        stopping,
                        store,
                        runner.as_ref(),
                        metrics,
                        searches.as_ref(),
                        Startup {
                            prune: k == 0,
                            pruned: &pruned,
                        },
                    )
                })
                .map_err(JobsError::Thread)?;
            handles.push(h);
        }
        Ok(Jobs {
            tx: Some(tx),
            stop,
            cancel,
            workers: handles,
            tuning,
        })
    }

    /// The running jobs' progress (shared: it follows the pool).
    pub fn tuning(&self) -> Tuning {
        self.tuning.clone()
    }

    pub fn submitter(&self) -> Submitter {
        Submitter {
            tx: self.tx.clone().expect("running pool"),
            tuning: self.tuning.clone(),
        }
    }

    /// Interrupt running jobs (their tasks stay `tuning` and run again at the next start), drop
    /// queued ones, join the threads.
    /// Tell running fine-tunings to return at their next training step (what [`Jobs::stop`]
    /// begins with), without waiting: a stop signals it first, with the searches', so that
    /// neither drains while the other has the grace period.
    pub fn signal_stop(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    pub fn stop(mut self) {
        self.signal_stop();
        self.tx = None;
        drop(self.stop);
        for h in self.workers {
            if h.join().is_err() {
                tracing::error!("a job thread panicked");
            }
        }
    }
}

/// A worker's part in the start-up pruning.
struct Startup<'a> {
    /// This worker runs it.
    prune: bool,
    /// Passed by every worker once it is over.
    pruned: &'a std::sync::Barrier,
}

/// How a worker learns that the pool is stopping.
struct Stopping {
    /// Closed by [`Jobs::stop`]: the worker takes no further job.
    stop: Receiver<()>,
    /// Set by [`Jobs::stop`]: the job running returns at its next training step.
    cancel: Cancel,
    /// Where the job running shows its progress.
    tuning: Tuning,
}

fn worker(
    rx: Receiver<Job>,
    stopping: Stopping,
    store: Store,
    runner: &dyn Finetuner,
    metrics: Metrics,
    searches: Option<&Searches>,
    startup: Startup<'_>,
) {
    // The start-up pruning runs here, off the caller's (async) thread; every worker waits for it.
    if let (true, Some(s)) = (startup.prune, searches) {
        prune_stale(&store, s, runner, &metrics, None);
    }
    startup.pruned.wait();
    loop {
        let job = crossbeam_channel::select! {
            recv(stopping.stop) -> _ => return,
            recv(rx) -> j => match j { Ok(j) => j, Err(_) => return },
        };
        if let Err(e) = run_one(&job, &store, runner, &metrics, searches, &stopping) {
            tracing::error!(task = %job.task, version = %job.version, error = %e, "job failed in the store");
        }
    }
}

fn run_one(
    job: &Job,
    store: &Store,
    runner: &dyn Finetuner,
    metrics: &Metrics,
    searches: Option<&Searches>,
    stopping: &Stopping,
) -> Result<(), StoreError> {
    let cancel = &stopping.cancel;
    // Only a queued current version moves to `tuning`: outdated, duplicate and removed (but
    // for an interrupted job's) are dropped.
    if store
        .start_tuning(&job.task, &job.version, job.interrupted)?
        .is_none()
    {
        metrics.finished.with_label_values(&["skipped"]).inc();
        return Ok(());
    }
    let Some(snapshot) = store.task_spec(&job.task, &job.version)? else {
        store.set_task_status(
            &job.task,
            &job.version,
            TaskStatus::Failed,
            Some("the store has no snapshot of this version".into()),
        )?;
        metrics.finished.with_label_values(&["failed"]).inc();
        return Ok(());
    };
    metrics.running.inc();
    tracing::info!(task = %job.task, version = %job.version, "fine-tuning started");
    let (steps, superseded) =
        stopping
            .tuning
            .start(&job.task, &job.version, runner.planned_steps(&snapshot));
    // A new version submitted between the claim above and the registration just made found
    // no job to tell: looked up once more now.
    if store
        .task(&job.task)?
        .is_some_and(|t| t.spec_hash != job.version)
    {
        superseded.store(true, Ordering::Relaxed);
    }
    let counting = cancel.counting(steps).or(superseded.clone());
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runner.finetune(&job.task, &snapshot, &counting)
    }))
    .unwrap_or_else(|_| Err("the fine-tuning job panicked".into()));
    stopping.tuning.end(&job.task, &job.version);
    metrics.running.dec();
    match out {
        Ok(Finetuned { model, meta }) => {
            // The search the task file asks for, created with the ready state in one write.
            let search = searches.and_then(|s| {
                let spec = TaskSpec::from_snapshot(&snapshot).ok()?;
                let version = s.model_version(&model);
                searches::task_search_record(&spec, &model, &version)
            });
            let meta = (!meta.is_null()).then_some(&meta);
            let ready =
                store.set_task_ready(&job.task, &job.version, &model, meta, search.as_ref())?;
            metrics.finished.with_label_values(&["ready"]).inc();
            tracing::info!(task = %job.task, version = %job.version, %model, "fine-tuning done");
            if let Some(s) = searches {
                // The version this one replaces may have left predictions nothing will read.
                prune_stale(store, s, runner, metrics, Some(&job.task));
            }
            if let (Some(s), Some((_, true)), Some(rec)) = (searches, ready, &search) {
                if rec.status == crate::store::SearchStatus::Queued {
                    if let Err(e) = s.enqueue(&rec.id) {
                        tracing::warn!(search = %rec.id, error = %e, "the task's search stays queued until the next start");
                    }
                }
            }
        }
        Err(e) if superseded.load(Ordering::Relaxed) && !cancel.is_set() => {
            // Its task moved on: the new version's job (queued) replaces it; its own status
            // update would be ignored by the store.
            metrics.finished.with_label_values(&["superseded"]).inc();
            tracing::info!(task = %job.task, version = %job.version, error = %e, "fine-tuning stopped: a newer version of the task replaces it");
        }
        Err(e) if cancel.is_set() => {
            // Stopped, not failed: the task stays `tuning`, which the next start queues again.
            metrics.finished.with_label_values(&["interrupted"]).inc();
            tracing::info!(task = %job.task, version = %job.version, error = %e, "fine-tuning interrupted by the stop: it runs again at the next start");
        }
        Err(e) => {
            store.set_task_status(&job.task, &job.version, TaskStatus::Failed, Some(e.clone()))?;
            metrics.finished.with_label_values(&["failed"]).inc();
            tracing::warn!(task = %job.task, version = %job.version, error = %e, "fine-tuning failed");
        }
    }
    Ok(())
}

/// Drop what task-model versions nothing uses any more have left behind, of every task when
/// `task` is None (at start-up), else of `task` alone (the one whose model just changed):
///
/// - their cached predictions: of every version that no task (file not removed) holds as its
///   model and no queued or running search scores with (base-model predictions are kept);
/// - their stored models ([`Finetuner::discard`]): of each version the store recorded for a
///   task, except the task's current version, the model it holds (kept for a removed task too,
///   which its file coming back restores), and those of queued or running searches. Models the
///   store never recorded (`aiop finetune` into the same state folder) are not touched.
///
/// A long-running daemon whose task files change would otherwise keep every old version's
/// predictions and models forever. A failure is logged: pruning only frees space.
fn prune_stale(
    store: &Store,
    searches: &Searches,
    runner: &dyn Finetuner,
    metrics: &Metrics,
    task: Option<&str>,
) {
    if let Err(e) = try_prune_stale(store, searches, runner, metrics, task) {
        tracing::warn!(error = %e, "pruning unused task models failed");
    }
}

fn try_prune_stale(
    store: &Store,
    searches: &Searches,
    runner: &dyn Finetuner,
    metrics: &Metrics,
    task: Option<&str>,
) -> Result<(), StoreError> {
    let tasks = store.tasks()?;
    let in_search: std::collections::HashSet<String> = store
        .searches()?
        .into_iter()
        .filter(|r| matches!(r.status, SearchStatus::Queued | SearchStatus::Running))
        .filter_map(|r| r.model)
        .collect();
    let mut live = in_search.clone();
    live.extend(
        tasks
            .iter()
            .filter(|t| t.removed_at.is_none())
            .filter_map(|t| t.model.as_deref())
            .map(|id| searches.model_version(id)),
    );
    let prefix = match task {
        None => TUNED_PREFIX.to_string(),
        Some(t) => format!("{TUNED_PREFIX}{t}/"),
    };
    let n = store.prune_predictions(&prefix, |m| live.contains(m))?;
    if n > 0 {
        metrics.pruned.inc_by(n as u64);
        tracing::info!(
            entries = n,
            "cached predictions of unused task-model versions pruned"
        );
    }
    for t in tasks.iter().filter(|t| task.is_none_or(|n| n == t.name)) {
        for v in t.versions.iter().filter(|v| v.hash != t.spec_hash) {
            let id = format!("{}/{}", t.name, v.hash);
            if t.model.as_deref() == Some(id.as_str())
                || in_search.contains(&searches.model_version(&id))
            {
                continue;
            }
            match runner.discard(&id) {
                Ok(true) => {
                    metrics.models_pruned.inc();
                    tracing::info!(model = %id, "unused task model deleted");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(model = %id, error = %e, "deleting an unused task model failed")
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::taskfile::{self, Limits};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// A test double: records what it was asked, answers from the task name.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, usize)>>);

    impl Finetuner for Recorder {
        fn finetune(
            &self,
            task: &str,
            snapshot: &serde_json::Value,
            _cancel: &Cancel,
        ) -> Result<Finetuned, String> {
            let n = snapshot["samples"].as_array().map_or(0, |s| s.len());
            self.0.lock().unwrap().push((task.to_string(), n));
            match task {
                "bad" => Err("diverged".into()),
                "boom" => panic!("kaboom"),
                _ => Ok(Finetuned {
                    model: format!("model-{task}"),
                    meta: serde_json::Value::Null,
                }),
            }
        }
    }

    fn add(store: &Store, dir: &std::path::Path, name: &str) -> String {
        let csv = "arch,value\n\
            |avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|,81.9\n\
            |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|,90.39\n";
        std::fs::write(dir.join("s.csv"), csv).unwrap();
        let t = dir.join(format!("{name}.toml"));
        std::fs::write(
            &t,
            format!(
                "name = \"{name}\"\nspace = \"nb201\"\nhead = \"cifar10\"\nsamples = \"s.csv\"\n"
            ),
        )
        .unwrap();
        let spec = taskfile::load(&t, &Limits::default()).unwrap();
        store.record_task(&spec, &t).unwrap();
        spec.hash
    }

    fn wait_status(store: &Store, name: &str, want: TaskStatus) {
        let end = Instant::now() + Duration::from_secs(30);
        while store.task(name).unwrap().unwrap().status != want {
            assert!(Instant::now() < end, "{name} never became {want:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn queued_tasks_run_to_ready_or_failed() {
        let state = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        let store = Store::open(state.path()).unwrap();
        add(&store, files.path(), "good");
        add(&store, files.path(), "bad");
        let runner = Arc::new(Recorder::default());
        let reg = Registry::new();
        let jobs = Jobs::start(2, store.clone(), runner.clone(), &reg, None).unwrap();
        wait_status(&store, "good", TaskStatus::Ready);
        wait_status(&store, "bad", TaskStatus::Failed);
        assert_eq!(
            store.task("good").unwrap().unwrap().model.as_deref(),
            Some("model-good")
        );
        assert_eq!(
            store.task("bad").unwrap().unwrap().error.as_deref(),
            Some("diverged")
        );
        // A submitted job; a panicking runner fails the task, not the pool.
        let v = add(&store, files.path(), "boom");
        assert!(jobs.submitter().submit(Job {
            task: "boom".into(),
            version: v,
            interrupted: false
        }));
        wait_status(&store, "boom", TaskStatus::Failed);
        // A job for an outdated version is skipped.
        assert!(jobs.submitter().submit(Job {
            task: "good".into(),
            version: "0".repeat(32),
            interrupted: false
        }));
        let v = add(&store, files.path(), "after");
        assert!(jobs.submitter().submit(Job {
            task: "after".into(),
            version: v,
            interrupted: false
        }));
        wait_status(&store, "after", TaskStatus::Ready);
        jobs.stop();
        let calls = runner.0.lock().unwrap();
        assert_eq!(calls.iter().filter(|(t, _)| t == "good").count(), 1);
        assert!(calls.iter().all(|(_, n)| *n == 2));
    }

    #[test]
    fn a_removed_task_cut_short_while_tuning_is_tuned_at_the_next_start() {
        let state = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        let store = Store::open(state.path()).unwrap();
        // "cut" was fine-tuning when the daemon stopped, its file taken away meanwhile; the
        // file of "waiting" went before its job began.
        let cut = add(&store, files.path(), "cut");
        store
            .set_task_status("cut", &cut, TaskStatus::Tuning, None)
            .unwrap();
        add(&store, files.path(), "waiting");
        for name in ["cut", "waiting"] {
            store
                .mark_removed(&files.path().join(format!("{name}.toml")), None)
                .unwrap();
        }
        let runner = Arc::new(Recorder::default());
        let jobs = Jobs::start(1, store.clone(), runner.clone(), &Registry::new(), None).unwrap();
        // The first gets its model all the same (it stayed `queued` for good, untuned).
        wait_status(&store, "cut", TaskStatus::Ready);
        jobs.stop();
        let rec = store.task("cut").unwrap().unwrap();
        assert!(rec.removed_at.is_some() && rec.model.as_deref() == Some("model-cut"));
        // The second waits, queued, for its file.
        assert_eq!(
            store.task("waiting").unwrap().unwrap().status,
            TaskStatus::Queued
        );
        let calls = runner.0.lock().unwrap();
        assert_eq!(
            calls.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
            ["cut"]
        );
    }

    /// Blocks its first job until it is cancelled (or 20 s pass: then it succeeds, stale);
    /// the later ones succeed at once.
    #[derive(Default)]
    struct Blocker(Mutex<usize>);

    impl Finetuner for Blocker {
        fn finetune(
            &self,
            _task: &str,
            _snapshot: &serde_json::Value,
            cancel: &Cancel,
        ) -> Result<Finetuned, String> {
            let call = {
                let mut n = self.0.lock().unwrap();
                *n += 1;
                *n
            };
            if call == 1 {
                let end = Instant::now() + Duration::from_secs(20);
                while Instant::now() < end {
                    if cancel.is_set() {
                        return Err("training cancelled".into());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            Ok(Finetuned {
                model: format!("model-{call}"),
                meta: serde_json::Value::Null,
            })
        }
    }

    #[test]
    fn a_new_version_stops_the_fine_tuning_of_the_old_one() {
        let state = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        let store = Store::open(state.path()).unwrap();
        add(&store, files.path(), "t");
        let runner = Arc::new(Blocker::default());
        let reg = Registry::new();
        // One worker: the new version waits for it.
        let jobs = Jobs::start(1, store.clone(), runner.clone(), &reg, None).unwrap();
        let tuning = jobs.tuning();
        let end = Instant::now() + Duration::from_secs(30);
        while tuning.get("t").is_none() {
            assert!(Instant::now() < end, "the first job never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The file changes: a new version, submitted as the watcher does.
        let t = files.path().join("t.toml");
        let text = std::fs::read_to_string(&t).unwrap() + "mode = \"zero-shot\"\n";
        std::fs::write(&t, text).unwrap();
        let spec = taskfile::load(&t, &Limits::default()).unwrap();
        let (_, what) = store.record_task(&spec, &t).unwrap();
        assert_eq!(what, crate::store::Recorded::NewVersion);
        assert!(jobs.submitter().submit(Job {
            task: "t".into(),
            version: spec.hash.clone(),
            interrupted: false
        }));
        let started = Instant::now();
        wait_status(&store, "t", TaskStatus::Ready);
        let rec = store.task("t").unwrap().unwrap();
        assert_eq!(
            (rec.spec_hash.as_str(), rec.model.as_deref()),
            (spec.hash.as_str(), Some("model-2"))
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the old job ran on"
        );
        let outcome = |o: &str| {
            reg.gather()
                .iter()
                .find(|f| f.name() == "aiop_jobs_finished_total")
                .and_then(|f| {
                    f.get_metric()
                        .iter()
                        .find(|m| m.get_label().iter().any(|l| l.value() == o))
                })
                .map(|m| m.get_counter().get_value())
        };
        assert_eq!(
            (outcome("superseded"), outcome("ready")),
            (Some(1.0), Some(1.0))
        );
        jobs.stop();
    }
}
