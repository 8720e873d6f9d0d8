//! The daemon's durable state: a sled database under `<state_dir>/db`.
//!
//! Trees: `meta` (schema version), `tasks` (name → [`TaskRecord`] JSON), `task_specs`
//! (`name/hash` → the self-contained spec snapshot of that version), `searches` (id →
//! [`SearchRecord`] JSON), `checkpoints` (search id → opaque bytes: the serialised search state
//! without its history), `search_history` (`id/index` → one evaluated candidate of a search's
//! history, appended as the search goes, so a checkpoint costs what the generation added, not
//! the whole history), `predictions` (`model_version\0graph_hash` → f64 little-endian),
//! `models` (task model id `name/hash` → its sidecar, [`crate::tuned::TunedMeta`] JSON).
//!
//! Invariants: the schema version is checked at [`Store::open`]: a newer one is refused, an older
//! one is upgraded through [`MIGRATIONS`] (one function per version step) before anything else
//! reads the store. Writes that belong together (a task record and its version's snapshot; a
//! task turning ready, its model's metadata and the search its file asks for; a search's progress
//! and its checkpoint) happen in one sled transaction, and the store is flushed to disk after
//! each transition a restart must see (new task version, status change, removal, every search
//! generation), and a reader never sees such a write before its flush has finished
//! ([`Store::durable`]): what the daemon reports survives a `kill -9`. Search status moves are conditional (queued → running is claimed once; only a
//! queued search is cancelled here, a running one by its worker), so two writers never race.
//! A task name is owned by one source file at a time. Removing a task file keeps its record,
//! versions and results (`removed_at` is set). [`Store::export`] / [`Store::import`] round-trip
//! every tree as JSON lines.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::graph::hash::GraphHash;
use crate::search::SearchState;
use crate::taskfile::TaskSpec;

/// Schema version written by this build.
pub const SCHEMA_VERSION: u32 = 2;

/// A step upgrading the store from version `i + 1` to `i + 2` (index `i` of [`MIGRATIONS`]).
pub type Migration = fn(&sled::Db) -> Result<(), StoreError>;

/// The upgrade path; `MIGRATIONS.len() == SCHEMA_VERSION - 1`. Version 1 is the first schema.
pub const MIGRATIONS: &[Migration] = &[v1_to_v2];

/// Version 2: search records carry their progress (evaluations, budget, generation, best,
/// model, resumptions) explicitly, a `models` tree holds task models' metadata, and a
/// `search_history` tree the searches' histories. Every v1 search record is rewritten with the
/// new fields (zero, or taken from its checkpoint when it has one); a v1 checkpoint (the whole
/// state, history included) stays as it is and is read as such; the new trees start empty
/// (v1 never fine-tuned).
fn v1_to_v2(db: &sled::Db) -> Result<(), StoreError> {
    let searches = db.open_tree("searches")?;
    let checkpoints = db.open_tree("checkpoints")?;
    db.open_tree("models")?;
    db.open_tree("search_history")?;
    for kv in searches.iter() {
        let (k, v) = kv?;
        let mut rec: SearchRecord = decode("searches", &k, &v)?;
        if let Some(cp) = checkpoints.get(&k)? {
            if let Ok(state) = serde_json::from_slice::<serde_json::Value>(&cp) {
                rec.generation = state["generation"].as_u64().unwrap_or(0);
                rec.evaluations = state["evaluations"].as_u64().unwrap_or(0);
                rec.budget = state["spec"]["budget"].as_u64().unwrap_or(0);
            }
        }
        searches.insert(k, encode(&rec))?;
    }
    Ok(())
}
const _: () = assert!(MIGRATIONS.len() as u32 == SCHEMA_VERSION - 1);

const TREES: [&str; 7] = [
    "tasks",
    "task_specs",
    "searches",
    "checkpoints",
    "search_history",
    "predictions",
    "models",
];

/// The likely reason a store could not be opened, when it is sled's lock being held (another
/// process has the store open); other failures (permissions, corruption) get no hint, which
/// would mislead.
fn lock_hint(e: &sled::Error) -> &'static str {
    if lock_held(e) {
        " (is another aiop using this state directory?)"
    } else {
        ""
    }
}

/// Whether `e` is sled's file lock held by another process (sled 0.34 reports it as an `Other`
/// I/O error with this message).
fn lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock"))
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the store at {path}: {error}{hint}", hint = lock_hint(.error))]
    Open { path: PathBuf, error: sled::Error },
    #[error("the store at {path} has schema version {found}, newer than the {supported} this aiop understands: run a newer aiop or use another --state")]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("the store's schema version is unreadable or invalid: {0}")]
    Schema(String),
    /// The state directory's lock file is held: another aiop (a daemon, an export, a
    /// compaction) is using it.
    #[error("the store at {path} is in use (is another aiop using this state directory?)")]
    Locked { path: PathBuf },
    /// A compaction's copy does not hold what the store held (nothing was swapped).
    #[error("compacting {path}: {message}; the store is left as it was")]
    Compact { path: PathBuf, message: String },
    #[error("store: {0}")]
    Db(#[from] sled::Error),
    #[error("store record {tree}/{key}: {message}")]
    Decode {
        tree: &'static str,
        key: String,
        message: String,
    },
    #[error("task name '{name}' is already defined by {file}")]
    NameTaken { name: String, file: String },
    #[error("no task '{0}'")]
    NoTask(String),
    #[error("no search '{0}'")]
    NoSearch(String),
    #[error("a search with id '{0}' exists already")]
    SearchExists(String),
    /// Only a finished search can be deleted: a worker may be writing a queued or running one.
    #[error("search '{id}' is {}: cancel it, and delete it once it has ended", .status.as_str())]
    SearchUnfinished { id: String, status: SearchStatus },
    #[error("import line {line}: {message}")]
    Import { line: usize, message: String },
    /// An import into a store that holds records (it would mix two stores).
    #[error("the store is not empty: import into a fresh state directory")]
    NotEmpty,
    #[error("export/import: {0}")]
    Io(#[from] std::io::Error),
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> StoreError {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Db(e),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting for a fine-tuning job.
    Queued,
    /// A fine-tuning job is running.
    Tuning,
    /// A model for the current version exists.
    Ready,
    /// The last job failed (see `error`).
    Failed,
}

/// One accepted content of a task file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskVersion {
    /// The spec's content hash.
    pub hash: String,
    pub created_at: u64,
    pub space: String,
    pub samples: usize,
}

/// A task as the daemon knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub name: String,
    pub status: TaskStatus,
    pub error: Option<String>,
    /// The task file it was read from.
    pub source: String,
    /// Hash of the current version (the last of `versions`).
    pub spec_hash: String,
    /// Every accepted version, oldest first.
    pub versions: Vec<TaskVersion>,
    pub created_at: u64,
    pub updated_at: u64,
    /// Set when its file was deleted; results are kept.
    pub removed_at: Option<u64>,
    /// The last model fine-tuned for this task (possibly for an older version).
    #[serde(default)]
    pub model: Option<String>,
}

/// What [`Store::record_task`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A task never seen before.
    New,
    /// Known task, new content: a new version, queued.
    NewVersion,
    /// Known task whose file was removed, back with content already known.
    Restored,
    /// Nothing changed.
    Unchanged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchStatus {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl SearchStatus {
    /// The name the API and the records use.
    pub fn as_str(self) -> &'static str {
        match self {
            SearchStatus::Queued => "queued",
            SearchStatus::Running => "running",
            SearchStatus::Done => "done",
            SearchStatus::Failed => "failed",
            SearchStatus::Cancelled => "cancelled",
        }
    }
}

/// An architecture search and what it found so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchRecord {
    pub id: String,
    pub task: String,
    /// The search parameters as submitted.
    pub spec: serde_json::Value,
    pub status: SearchStatus,
    /// Fraction of the budget spent, 0..=1.
    pub progress: f64,
    /// The current result set (ranking or front), in the task's units.
    pub results: serde_json::Value,
    pub error: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
    /// Fitness evaluations spent (schema 2).
    #[serde(default)]
    pub evaluations: u64,
    /// Fitness evaluations allowed.
    #[serde(default)]
    pub budget: u64,
    /// Generations done.
    #[serde(default)]
    pub generation: u64,
    /// The best candidate so far, in the task's units.
    #[serde(default)]
    pub best: Option<serde_json::Value>,
    /// The model scoring candidates (its cache name).
    #[serde(default)]
    pub model: Option<String>,
    /// How often the search was resumed from a checkpoint after a stop or a crash.
    #[serde(default)]
    pub resumes: u32,
    /// The generation of the checkpoint the last resumption started from.
    #[serde(default)]
    pub resumed_from_generation: Option<u64>,
    /// Why a done search ended ([`crate::search::EndReason`]: `budget`, `stalled`,
    /// `no_candidates`): a search that stops short of its budget says so.
    #[serde(default)]
    pub ended_because: Option<crate::search::EndReason>,
}

impl SearchRecord {
    /// A new queued search.
    pub fn queued(id: &str, task: &str, spec: serde_json::Value, budget: u64) -> SearchRecord {
        let now = now_ms();
        SearchRecord {
            id: id.to_string(),
            task: task.to_string(),
            spec,
            status: SearchStatus::Queued,
            progress: 0.0,
            results: serde_json::Value::Null,
            error: None,
            created_at: now,
            updated_at: now,
            evaluations: 0,
            budget,
            generation: 0,
            best: None,
            model: None,
            resumes: 0,
            resumed_from_generation: None,
            ended_because: None,
        }
    }
}

/// Handle to the store; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    tasks: sled::Tree,
    task_specs: sled::Tree,
    searches: sled::Tree,
    checkpoints: sled::Tree,
    search_history: sled::Tree,
    predictions: sled::Tree,
    models: sled::Tree,
    /// Held for writing by every write that is flushed, from its commit to the end of its
    /// flush, and for reading by the record readers (`task`, `tasks`, `search`, `searches`,
    /// `task_spec`, `model_meta`). sled makes a commit visible before it is on disk; without the
    /// gate the API could report a generation that a `kill -9` a moment later loses. With it,
    /// whatever a reader sees of a flushed write is already durable.
    durable: Arc<RwLock<()>>,
    /// The state directory's lock ([`lock_state`]), held while any handle lives: it keeps a
    /// second aiop out, and a compaction's swap of the database folder whole.
    lock: Arc<std::fs::File>,
}

/// What a search generation writes besides its record: the state's head (everything but the
/// history) and the history entries added since the last checkpoint (`history_from` is the
/// index of the first).
#[derive(Debug, Clone, Copy)]
pub struct Checkpoint<'a> {
    pub head: &'a [u8],
    pub history_from: usize,
    pub history: &'a [Vec<u8>],
}

/// A checkpoint as read back: the head and the history entries, in order.
pub type StoredCheckpoint = (Vec<u8>, Vec<Vec<u8>>);

/// A search state from a checkpoint: its head (`{"history_len", "state"}`) and the history
/// entries stored beside it; a schema-1 checkpoint is the whole state (then no entry is in the
/// history tree yet). Returns the state and how many of its history entries the tree holds.
/// The state is checked as one to step ([`SearchState::check`]): a spec within its limits, no
/// index past its history.
pub fn decode_checkpoint(
    head: &[u8],
    history: &[impl AsRef<[u8]>],
) -> Result<(SearchState, usize), String> {
    let (state, n) = decode_state(head, history)?;
    state.check().map_err(|e| e.to_string())?;
    Ok((state, n))
}

fn decode_state(head: &[u8], history: &[impl AsRef<[u8]>]) -> Result<(SearchState, usize), String> {
    let v: serde_json::Value = serde_json::from_slice(head).map_err(|e| e.to_string())?;
    let Some(st) = v.get("state") else {
        return Ok((serde_json::from_value(v).map_err(|e| e.to_string())?, 0));
    };
    let n = v["history_len"]
        .as_u64()
        .ok_or("the checkpoint has no history_len")? as usize;
    if history.len() < n {
        return Err(format!(
            "the checkpoint names {n} evaluated candidates, the store has {}",
            history.len()
        ));
    }
    let mut state: SearchState = serde_json::from_value(st.clone()).map_err(|e| e.to_string())?;
    state.history = history[..n]
        .iter()
        .map(|e| serde_json::from_slice(e.as_ref()).map_err(|e| e.to_string()))
        .collect::<Result<_, String>>()?;
    Ok((state, n))
}

fn history_key(id: &str, index: usize) -> String {
    format!("{id}/{index:012}")
}

fn decode<T: for<'de> Deserialize<'de>>(
    tree: &'static str,
    key: &[u8],
    v: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Decode {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records serialise")
}

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

fn prediction_key(model: &str, graph: GraphHash) -> Vec<u8> {
    format!("{model}\0{graph}").into_bytes()
}

/// Bring a store at schema `from` to `to` with `table` (index `i` upgrades `i+1 → i+2`).
fn migrate(db: &sled::Db, from: u32, to: u32, table: &[Migration]) -> Result<(), StoreError> {
    for v in from..to {
        let step = table
            .get(v as usize - 1)
            .ok_or_else(|| StoreError::Schema(format!("no migration from version {v}")))?;
        step(db)?;
        db.insert("schema_version", (v + 1).to_be_bytes().to_vec())?;
        db.flush()?;
    }
    Ok(())
}

impl Store {
    /// Open (or create) the store under `state_dir/db`, checking and upgrading its schema.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(state_dir, SCHEMA_VERSION, MIGRATIONS)
    }

    fn open_with(state_dir: &Path, current: u32, table: &[Migration]) -> Result<Store, StoreError> {
        let lock = lock_state(state_dir)?;
        finish_compaction(state_dir)?;
        let path = state_dir.join("db");
        let db = open_locked(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            error: source,
        })?;
        // The version lives in the default tree under `schema_version`.
        match db.get("schema_version")? {
            None => {
                let fresh = TREES
                    .iter()
                    .all(|t| db.open_tree(t).map(|t| t.is_empty()).unwrap_or(false));
                if !fresh {
                    return Err(StoreError::Schema(
                        "records but no schema_version key".into(),
                    ));
                }
                db.insert("schema_version", current.to_be_bytes().to_vec())?;
                db.flush()?;
            }
            Some(v) => {
                let found = u32::from_be_bytes(
                    v.as_ref()
                        .try_into()
                        .map_err(|_| StoreError::Schema(format!("{} bytes", v.len())))?,
                );
                if found > current {
                    return Err(StoreError::TooNew {
                        path,
                        found,
                        supported: current,
                    });
                }
                if found == 0 {
                    return Err(StoreError::Schema("version 0".into()));
                }
                migrate(&db, found, current, table)?;
            }
        }
        Ok(Store {
            tasks: db.open_tree("tasks")?,
            task_specs: db.open_tree("task_specs")?,
            searches: db.open_tree("searches")?,
            checkpoints: db.open_tree("checkpoints")?,
            search_history: db.open_tree("search_history")?,
            predictions: db.open_tree("predictions")?,
            models: db.open_tree("models")?,
            db,
            durable: Arc::new(RwLock::new(())),
            lock: Arc::new(lock),
        })
    }

    /// Rewrite the store at `state_dir` into a fresh database and swap it in. sled never gives
    /// back the space of what was deleted or overwritten (a deleted search, pruned predictions,
    /// the checkpoints of ended searches), so a store of long-running searches only grows; a
    /// copy holds just the live records. The daemon must be stopped (the state's lock says so
    /// otherwise). Crash-safe: the copy is checked against the store (sled's checksum of every
    /// tree) and marked complete before the swap; a swap a crash interrupts is finished by the
    /// next [`Store::open`], and an unmarked copy is discarded by it.
    pub fn compact(state_dir: &Path) -> Result<Compacted, StoreError> {
        let db_path = state_dir.join("db");
        if !db_path.is_dir() {
            return Err(StoreError::Compact {
                path: db_path,
                message: "no store here (not the state directory of a daemon)".into(),
            });
        }
        let store = Store::open(state_dir)?;
        let bytes_before = dir_size(&db_path)?;
        let copy_path = state_dir.join(COMPACT_COPY);
        if copy_path.exists() {
            std::fs::remove_dir_all(&copy_path)?;
        }
        let copy = sled::Config::new().path(&copy_path).open()?;
        let mut records = 0u64;
        for name in store.db.tree_names() {
            let counted = TREES.iter().any(|t| t.as_bytes() == &name[..]);
            let from = store.db.open_tree(&name)?;
            let n = write_batched(&copy.open_tree(&name)?, from.iter().map(|kv| Ok(kv?)))?;
            if counted {
                records += n;
            }
        }
        copy.flush()?;
        let (want, got) = (store.db.checksum()?, copy.checksum()?);
        if want != got {
            drop(copy);
            let _ = std::fs::remove_dir_all(&copy_path);
            return Err(StoreError::Compact {
                path: db_path,
                message: format!("the copy's checksum {got:#010x} is not the store's {want:#010x}"),
            });
        }
        drop(copy);
        // A copy no smaller than the store (one with nothing deleted or overwritten to give
        // back: sled's own overhead is the same in both) is no gain: the store stays as it is.
        let copy_bytes = dir_size(&copy_path)?;
        if copy_bytes >= bytes_before {
            std::fs::remove_dir_all(&copy_path)?;
            return Ok(Compacted {
                records,
                bytes_before,
                bytes_after: bytes_before,
                kept: true,
            });
        }
        // Every handle on the old database goes before its folder moves; the lock stays.
        let lock = store.lock.clone();
        store.flush()?;
        drop(store);
        let marker = state_dir.join(COMPACT_DONE);
        let f = std::fs::File::create(&marker)?;
        f.sync_all()?;
        sync_dir(state_dir)?;
        finish_compaction(state_dir)?;
        drop(lock);
        Ok(Compacted {
            records,
            bytes_before,
            bytes_after: dir_size(&db_path)?,
            kept: false,
        })
    }

    /// The schema version on disk.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let v = self
            .db
            .get("schema_version")?
            .ok_or_else(|| StoreError::Schema("missing".into()))?;
        Ok(u32::from_be_bytes(v.as_ref().try_into().map_err(|_| {
            StoreError::Schema(format!("{} bytes", v.len()))
        })?))
    }

    /// The write side of [`Store::durable`]: hold it across a write's commit and flush.
    fn durable_write(&self) -> RwLockWriteGuard<'_, ()> {
        self.durable.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The read side of [`Store::durable`]: a record read waits for a flush in progress.
    fn durable_read(&self) -> RwLockReadGuard<'_, ()> {
        self.durable.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Write everything to disk now.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Record a validated task read from `source`: a new task, a new version (queued), a task
    /// back from removal, or nothing when the content is unchanged. Task record and version
    /// snapshot are written in one transaction, then flushed.
    pub fn record_task(
        &self,
        spec: &TaskSpec,
        source: &Path,
    ) -> Result<(TaskRecord, Recorded), StoreError> {
        let src = source.display().to_string();
        let now = now_ms();
        let snapshot = encode(&spec.snapshot());
        let spec_key = format!("{}/{}", spec.name, spec.hash);
        let version = TaskVersion {
            hash: spec.hash.clone(),
            created_at: now,
            space: spec.space.name().to_string(),
            samples: spec.samples.len(),
        };
        let _durable = self.durable_write();
        let out = (&self.tasks, &self.task_specs).transaction(|(tasks, specs)| {
            let old: Option<TaskRecord> = match tasks.get(spec.name.as_bytes())? {
                Some(v) => Some(decode("tasks", spec.name.as_bytes(), &v).map_err(abort)?),
                None => None,
            };
            let (rec, what) = match old {
                None => (
                    TaskRecord {
                        name: spec.name.clone(),
                        status: TaskStatus::Queued,
                        error: None,
                        source: src.clone(),
                        spec_hash: spec.hash.clone(),
                        versions: vec![version.clone()],
                        created_at: now,
                        updated_at: now,
                        removed_at: None,
                        model: None,
                    },
                    Recorded::New,
                ),
                Some(old) if old.removed_at.is_none() && old.source != src => {
                    return Err(abort(StoreError::NameTaken {
                        name: spec.name.clone(),
                        file: old.source,
                    }))
                }
                Some(old) if old.spec_hash == spec.hash => {
                    if old.removed_at.is_none() && old.source == src {
                        return Ok((old, Recorded::Unchanged));
                    }
                    let mut rec = old;
                    rec.removed_at = None;
                    rec.source = src.clone();
                    rec.updated_at = now;
                    (rec, Recorded::Restored)
                }
                Some(mut rec) => {
                    rec.status = TaskStatus::Queued;
                    rec.error = None;
                    rec.source = src.clone();
                    rec.spec_hash = spec.hash.clone();
                    rec.removed_at = None;
                    rec.updated_at = now;
                    if !rec.versions.iter().any(|v| v.hash == spec.hash) {
                        rec.versions.push(version.clone());
                    }
                    (rec, Recorded::NewVersion)
                }
            };
            tasks.insert(spec.name.as_bytes(), encode(&rec))?;
            specs.insert(spec_key.as_bytes(), snapshot.as_slice())?;
            Ok((rec, what))
        })?;
        if out.1 != Recorded::Unchanged {
            self.flush()?;
        }
        Ok(out)
    }

    fn update_task(
        &self,
        name: &str,
        f: impl Fn(&mut TaskRecord) -> bool,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let _durable = self.durable_write();
        let out = self.tasks.transaction(|tasks| {
            let Some(v) = tasks.get(name.as_bytes())? else {
                return Ok(None);
            };
            let mut rec: TaskRecord = decode("tasks", name.as_bytes(), &v).map_err(abort)?;
            if !f(&mut rec) {
                return Ok(None);
            }
            rec.updated_at = now_ms();
            tasks.insert(name.as_bytes(), encode(&rec))?;
            Ok(Some(rec))
        })?;
        if out.is_some() {
            self.flush()?;
        }
        Ok(out)
    }

    /// Mark the tasks read from `source` as removed, but the one named `keep`: every one when
    /// the file was deleted (`keep` None), the older names when the file now defines another
    /// (a task renamed in place). Returns the records changed.
    pub fn mark_removed(
        &self,
        source: &Path,
        keep: Option<&str>,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let src = source.display().to_string();
        let mut changed = Vec::new();
        for rec in self.tasks()? {
            if rec.source != src || rec.removed_at.is_some() || Some(rec.name.as_str()) == keep {
                continue;
            }
            let out = self.update_task(&rec.name, |r| {
                if r.source != src || r.removed_at.is_some() {
                    return false;
                }
                r.removed_at = Some(now_ms());
                true
            })?;
            changed.extend(out);
        }
        Ok(changed)
    }

    /// Set a task's status (the jobs' side: tuning, ready, failed with an error) for the
    /// version `hash`; a stale update for an older version is ignored (returns `None`).
    pub fn set_task_status(
        &self,
        name: &str,
        hash: &str,
        status: TaskStatus,
        error: Option<String>,
    ) -> Result<Option<TaskRecord>, StoreError> {
        if self.tasks.get(name.as_bytes())?.is_none() {
            return Err(StoreError::NoTask(name.to_string()));
        }
        self.update_task(name, |r| {
            if r.spec_hash != hash {
                return false;
            }
            r.status = status;
            r.error = error.clone();
            true
        })
    }

    /// Claim the version `hash` of a task for a fine-tuning job: queued → tuning. `None` when the
    /// task is not queued at that version (already claimed, outdated), or removed unless
    /// `even_removed` (a job a stop or crash interrupted, run again at start-up).
    pub fn start_tuning(
        &self,
        name: &str,
        hash: &str,
        even_removed: bool,
    ) -> Result<Option<TaskRecord>, StoreError> {
        self.update_task(name, |r| {
            if r.spec_hash != hash
                || r.status != TaskStatus::Queued
                || (r.removed_at.is_some() && !even_removed)
            {
                return false;
            }
            r.status = TaskStatus::Tuning;
            r.error = None;
            true
        })
    }

    /// A job produced `model` (its metadata `meta`) for the version `hash`: the task is ready,
    /// the model's metadata is recorded, and `search` (the search the task file asks for) is
    /// created unless a search of that id exists or the task's file was deleted meanwhile, all
    /// in one transaction. `None` (and nothing
    /// written) when the task has moved on to another version meanwhile; otherwise the record
    /// and whether `search` was created.
    pub fn set_task_ready(
        &self,
        name: &str,
        hash: &str,
        model: &str,
        meta: Option<&serde_json::Value>,
        search: Option<&SearchRecord>,
    ) -> Result<Option<(TaskRecord, bool)>, StoreError> {
        let meta = meta.map(encode);
        let search_bytes = search.map(encode);
        let _durable = self.durable_write();
        let out = (&self.tasks, &self.models, &self.searches).transaction(
            |(tasks, models, searches)| {
                let Some(v) = tasks.get(name.as_bytes())? else {
                    return Ok(None);
                };
                let mut rec: TaskRecord = decode("tasks", name.as_bytes(), &v).map_err(abort)?;
                if rec.spec_hash != hash {
                    return Ok(None);
                }
                rec.status = TaskStatus::Ready;
                rec.error = None;
                rec.model = Some(model.to_string());
                rec.updated_at = now_ms();
                tasks.insert(name.as_bytes(), encode(&rec))?;
                if let Some(m) = &meta {
                    models.insert(model.as_bytes(), m.as_slice())?;
                }
                let mut created = false;
                if let (Some(s), Some(b), None) = (search, &search_bytes, rec.removed_at) {
                    if searches.get(s.id.as_bytes())?.is_none() {
                        searches.insert(s.id.as_bytes(), b.as_slice())?;
                        created = true;
                    }
                }
                Ok(Some((rec, created)))
            },
        )?;
        if out.is_some() {
            self.flush()?;
        }
        Ok(out)
    }

    /// The metadata of the task model `id` (`name/hash`), if recorded.
    pub fn model_meta(&self, id: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let _durable = self.durable_read();
        self.models
            .get(id.as_bytes())?
            .map(|v| decode("models", id.as_bytes(), &v))
            .transpose()
    }

    pub fn task(&self, name: &str) -> Result<Option<TaskRecord>, StoreError> {
        let _durable = self.durable_read();
        self.tasks
            .get(name.as_bytes())?
            .map(|v| decode("tasks", name.as_bytes(), &v))
            .transpose()
    }

    /// All tasks, by name.
    pub fn tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        let _durable = self.durable_read();
        self.tasks
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("tasks", &k, &v)
            })
            .collect()
    }

    /// The snapshot ([`TaskSpec::snapshot`]) of a task version.
    pub fn task_spec(
        &self,
        name: &str,
        hash: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let key = format!("{name}/{hash}");
        let _durable = self.durable_read();
        self.task_specs
            .get(key.as_bytes())?
            .map(|v| decode("task_specs", key.as_bytes(), &v))
            .transpose()
    }

    /// Create or replace a search record.
    pub fn put_search(&self, rec: &SearchRecord) -> Result<(), StoreError> {
        let _durable = self.durable_write();
        self.searches.insert(rec.id.as_bytes(), encode(rec))?;
        self.flush()
    }

    /// Create a search record; an error when the id is taken. Flushed: a search is on disk
    /// before it runs.
    pub fn insert_search(&self, rec: &SearchRecord) -> Result<(), StoreError> {
        let _durable = self.durable_write();
        let swapped = self.searches.compare_and_swap(
            rec.id.as_bytes(),
            None as Option<&[u8]>,
            Some(encode(rec)),
        )?;
        if swapped.is_err() {
            return Err(StoreError::SearchExists(rec.id.clone()));
        }
        self.flush()
    }

    pub fn search(&self, id: &str) -> Result<Option<SearchRecord>, StoreError> {
        let _durable = self.durable_read();
        self.searches
            .get(id.as_bytes())?
            .map(|v| decode("searches", id.as_bytes(), &v))
            .transpose()
    }

    pub fn searches(&self) -> Result<Vec<SearchRecord>, StoreError> {
        let _durable = self.durable_read();
        self.searches
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("searches", &k, &v)
            })
            .collect()
    }

    /// Change a search record with `f` (which returns false to leave it as it is) and, when
    /// given, write its checkpoint (head replaced, history appended), in one transaction;
    /// flushed when `flush`. Returns the record after the change, or `None` when `f` declined.
    pub fn update_search(
        &self,
        id: &str,
        checkpoint: Option<Checkpoint<'_>>,
        flush: bool,
        f: impl Fn(&mut SearchRecord) -> bool,
    ) -> Result<Option<SearchRecord>, StoreError> {
        let _durable = flush.then(|| self.durable_write());
        let trees = (&self.searches, &self.checkpoints, &self.search_history);
        let rec = trees.transaction(|(searches, cps, history)| {
            let v = searches
                .get(id.as_bytes())?
                .ok_or_else(|| abort(StoreError::NoSearch(id.to_string())))?;
            let mut rec: SearchRecord = decode("searches", id.as_bytes(), &v).map_err(abort)?;
            if !f(&mut rec) {
                return Ok(None);
            }
            rec.updated_at = now_ms();
            searches.insert(id.as_bytes(), encode(&rec))?;
            if let Some(cp) = checkpoint {
                cps.insert(id.as_bytes(), cp.head)?;
                for (k, e) in cp.history.iter().enumerate() {
                    history.insert(
                        history_key(id, cp.history_from + k).as_bytes(),
                        e.as_slice(),
                    )?;
                }
            }
            Ok(Some(rec))
        })?;
        if flush && rec.is_some() {
            self.flush()?;
        }
        Ok(rec)
    }

    /// Delete a finished search (done, failed or cancelled) for good: its record, checkpoint
    /// and every history entry go in one transaction, then the store is flushed; returns the
    /// record as it was. A queued or running search is refused
    /// ([`StoreError::SearchUnfinished`]); none is [`StoreError::NoSearch`]. No worker writes a
    /// finished search, so the history's keys, listed before the transaction, are all of them.
    pub fn remove_search(&self, id: &str) -> Result<SearchRecord, StoreError> {
        let _durable = self.durable_write();
        let keys: Vec<sled::IVec> = self
            .search_history
            .scan_prefix(format!("{id}/").as_bytes())
            .keys()
            .collect::<Result<_, _>>()?;
        let trees = (&self.searches, &self.checkpoints, &self.search_history);
        let rec = trees.transaction(|(searches, cps, history)| {
            let v = searches
                .get(id.as_bytes())?
                .ok_or_else(|| abort(StoreError::NoSearch(id.to_string())))?;
            let rec: SearchRecord = decode("searches", id.as_bytes(), &v).map_err(abort)?;
            if matches!(rec.status, SearchStatus::Queued | SearchStatus::Running) {
                return Err(abort(StoreError::SearchUnfinished {
                    id: id.to_string(),
                    status: rec.status,
                }));
            }
            searches.remove(id.as_bytes())?;
            cps.remove(id.as_bytes())?;
            for k in &keys {
                history.remove(k)?;
            }
            Ok(rec)
        })?;
        self.flush()?;
        Ok(rec)
    }

    /// Claim a queued search for a worker: queued → running. `None` when it is not queued.
    pub fn claim_search(&self, id: &str) -> Result<Option<SearchRecord>, StoreError> {
        self.update_search(id, None, true, |r| {
            if r.status != SearchStatus::Queued {
                return false;
            }
            r.status = SearchStatus::Running;
            r.error = None;
            true
        })
    }

    /// Cancel a search that no worker runs: queued → cancelled (with `reason`). `None` when it
    /// is not queued.
    pub fn cancel_queued_search(
        &self,
        id: &str,
        reason: Option<&str>,
    ) -> Result<Option<SearchRecord>, StoreError> {
        self.update_search(id, None, true, |r| {
            if r.status != SearchStatus::Queued {
                return false;
            }
            r.status = SearchStatus::Cancelled;
            r.error = reason.map(str::to_string);
            true
        })
    }

    /// Save a search's progress, results and checkpoint together (one transaction).
    pub fn save_search_progress(
        &self,
        id: &str,
        status: SearchStatus,
        progress: f64,
        results: &serde_json::Value,
        checkpoint: &[u8],
    ) -> Result<SearchRecord, StoreError> {
        let cp = Checkpoint {
            head: checkpoint,
            history_from: 0,
            history: &[],
        };
        let rec = self.update_search(id, Some(cp), status != SearchStatus::Running, |r| {
            r.status = status;
            r.progress = progress;
            r.results = results.clone();
            true
        })?;
        Ok(rec.expect("the update always applies"))
    }

    /// The head of a search's checkpoint.
    pub fn checkpoint(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.checkpoints.get(id.as_bytes())?.map(|v| v.to_vec()))
    }

    /// A search's checkpoint: its head and every history entry, in order.
    pub fn search_checkpoint(&self, id: &str) -> Result<Option<StoredCheckpoint>, StoreError> {
        let Some(head) = self.checkpoints.get(id.as_bytes())? else {
            return Ok(None);
        };
        let history = self
            .search_history
            .scan_prefix(format!("{id}/").as_bytes())
            .map(|kv| kv.map(|(_, v)| v.to_vec()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some((head.to_vec(), history)))
    }

    /// A cached prediction of `model` for the graph `graph`.
    pub fn cached_prediction(
        &self,
        model: &str,
        graph: GraphHash,
    ) -> Result<Option<f64>, StoreError> {
        let key = prediction_key(model, graph);
        self.predictions
            .get(&key)?
            .map(|v| {
                let b: [u8; 8] = v.as_ref().try_into().map_err(|_| StoreError::Decode {
                    tree: "predictions",
                    key: String::from_utf8_lossy(&key).into_owned(),
                    message: format!("{} bytes, expected 8", v.len()),
                })?;
                Ok(f64::from_le_bytes(b))
            })
            .transpose()
    }

    pub fn cache_prediction(
        &self,
        model: &str,
        graph: GraphHash,
        value: f64,
    ) -> Result<(), StoreError> {
        self.predictions
            .insert(prediction_key(model, graph), value.to_le_bytes().to_vec())?;
        Ok(())
    }

    /// Cache many predictions of `model` at once (one batch).
    pub fn cache_predictions(
        &self,
        model: &str,
        values: &[(GraphHash, f64)],
    ) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for (g, v) in values {
            b.insert(prediction_key(model, *g), v.to_le_bytes().to_vec());
        }
        self.predictions.apply_batch(b)?;
        Ok(())
    }

    /// Remove every cached prediction of a model whose name starts with `prefix` and that
    /// `keep` rejects, and return how many this call removed (a value removed meanwhile by
    /// another call is not counted twice). Only keys under `prefix` are read. The cache only
    /// saves work: a removed value is computed again if it is ever asked for, so pruning never
    /// changes an answer.
    pub fn prune_predictions(
        &self,
        prefix: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        for key in self.predictions.scan_prefix(prefix.as_bytes()).keys() {
            let key = key?;
            let name = key.split(|&b| b == 0).next().unwrap_or_default();
            if !keep(&String::from_utf8_lossy(name)) && self.predictions.remove(&key)?.is_some() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Bytes the store takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// Register the store's gauges (tasks and searches by status, size on disk) in `reg`;
    /// they are read from the store at every scrape.
    pub fn register_metrics(&self, reg: &prometheus::Registry) -> Result<(), prometheus::Error> {
        reg.register(Box::new(StoreCollector::new(self.clone())?))
    }

    fn tree(&self, name: &str) -> Option<&sled::Tree> {
        match name {
            "tasks" => Some(&self.tasks),
            "task_specs" => Some(&self.task_specs),
            "searches" => Some(&self.searches),
            "checkpoints" => Some(&self.checkpoints),
            "search_history" => Some(&self.search_history),
            "predictions" => Some(&self.predictions),
            "models" => Some(&self.models),
            _ => None,
        }
    }

    /// Write the whole store as JSON lines: a header, then `{"tree", "key", "value"}` per record
    /// (JSON trees as JSON, checkpoints as hex, predictions as numbers).
    pub fn export(&self, mut w: impl Write) -> Result<usize, StoreError> {
        let header = serde_json::json!({"aiop_store": SCHEMA_VERSION});
        writeln!(w, "{header}")?;
        let mut n = 0;
        for name in TREES {
            let tree = self.tree(name).expect("known tree");
            for kv in tree.iter() {
                let (k, v) = kv?;
                let key = String::from_utf8_lossy(&k).into_owned();
                let value = match name {
                    "checkpoints" => serde_json::Value::String(hex(&v)),
                    "predictions" => {
                        let b: [u8; 8] = v.as_ref().try_into().map_err(|_| StoreError::Decode {
                            tree: "predictions",
                            key: key.clone(),
                            message: "not 8 bytes".into(),
                        })?;
                        serde_json::json!(f64::from_le_bytes(b))
                    }
                    _ => serde_json::from_slice(&v).map_err(|e| StoreError::Decode {
                        tree: "export",
                        key: key.clone(),
                        message: e.to_string(),
                    })?,
                };
                let line = serde_json::json!({"tree": name, "key": key, "value": value});
                writeln!(w, "{line}")?;
                n += 1;
            }
        }
        w.flush()?;
        Ok(n)
    }

    /// Load an [`export`](Store::export) into this store, which must be empty. Every line is
    /// checked before anything is written ([`Export::read`]); then all records go in one batch
    /// per tree.
    pub fn import(&self, r: impl BufRead) -> Result<usize, StoreError> {
        self.import_records(Export::read(r)?)
    }

    /// Write records read by [`Export::read`] into this store, which must be empty.
    pub fn import_records(&self, export: Export) -> Result<usize, StoreError> {
        if TREES
            .iter()
            .any(|t| !self.tree(t).expect("known tree").is_empty())
        {
            return Err(StoreError::NotEmpty);
        }
        let _durable = self.durable_write();
        let n = export.records.len();
        for t in TREES {
            write_batched(
                self.tree(t).expect("known tree"),
                export
                    .records
                    .iter()
                    .filter(|(tree, _, _)| *tree == t)
                    .map(|(_, k, v)| {
                        Ok((sled::IVec::from(k.as_bytes()), sled::IVec::from(&v[..])))
                    }),
            )?;
        }
        self.flush()?;
        Ok(n)
    }
}

/// The records of an [`export`](Store::export), read and checked, ready for
/// [`Store::import_records`]: reading one needs no store, so a malformed file creates none.
#[derive(Debug)]
pub struct Export {
    /// (tree, key, the value's stored bytes), in the file's order.
    records: Vec<(&'static str, String, Vec<u8>)>,
}

impl Export {
    /// Read an export: the header line first (an empty file is no export), then one record
    /// per line, each decoded as the store will hold it; a key given twice in one tree is an
    /// error naming both lines (an export holds each record once: two would leave one
    /// silently).
    pub fn read(r: impl BufRead) -> Result<Export, StoreError> {
        let mut records = Vec::new();
        let mut seen: HashMap<(&'static str, String), usize> = HashMap::new();
        let mut header = false;
        for (k, line) in r.lines().enumerate() {
            let line_no = k + 1;
            let line = line?;
            let err = |message: String| StoreError::Import {
                line: line_no,
                message,
            };
            let v: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| err(e.to_string()))?;
            if line_no == 1 {
                match v.get("aiop_store").and_then(|x| x.as_u64()) {
                    Some(s) if s == SCHEMA_VERSION as u64 => {
                        header = true;
                        continue;
                    }
                    Some(s) => {
                        return Err(err(format!(
                            "export has schema version {s}, this aiop writes {SCHEMA_VERSION}"
                        )))
                    }
                    None => return Err(err("not an aiop store export (no header)".into())),
                }
            }
            let name = v.get("tree").and_then(|t| t.as_str()).unwrap_or_default();
            let tree = TREES
                .iter()
                .copied()
                .find(|t| *t == name)
                .ok_or_else(|| err(format!("unknown tree '{name}'")))?;
            let key = v
                .get("key")
                .and_then(|t| t.as_str())
                .ok_or_else(|| err("no key".into()))?;
            let value = v.get("value").ok_or_else(|| err("no value".into()))?;
            let bytes = match tree {
                "checkpoints" => unhex(value.as_str().unwrap_or_default())
                    .ok_or_else(|| err("checkpoint is not hex".into()))?,
                "task_specs" => {
                    let spec = TaskSpec::from_snapshot(value)
                        .map_err(|e| err(format!("not a task version's snapshot: {e}")))?;
                    let want = format!("{}/{}", spec.name, spec.hash);
                    if key != want {
                        return Err(err(format!(
                            "key '{key}' is not the snapshot's task and version '{want}'"
                        )));
                    }
                    encode(value)
                }
                "models" if !(value.is_object() || value.is_null()) => {
                    return Err(err(format!(
                        "a task model's metadata is a JSON object, not {value}"
                    )))
                }
                "search_history" => {
                    if split_history_key(key).is_none() {
                        return Err(err(format!(
                            "key '{key}' is not a search's history entry (<search id>/<12 digits>)"
                        )));
                    }
                    encode(value)
                }
                "predictions" => value
                    .as_f64()
                    .ok_or_else(|| err("prediction is not a number".into()))?
                    .to_le_bytes()
                    .to_vec(),
                "tasks" => encode(
                    &serde_json::from_value::<TaskRecord>(value.clone())
                        .map_err(|e| err(e.to_string()))?,
                ),
                "searches" => encode(
                    &serde_json::from_value::<SearchRecord>(value.clone())
                        .map_err(|e| err(e.to_string()))?,
                ),
                _ => encode(value),
            };
            if let Some(first) = seen.insert((tree, key.to_string()), line_no) {
                return Err(err(format!(
                    "tree '{tree}' key '{key}' is also on line {first}: an export holds each \
                     record once"
                )));
            }
            records.push((tree, key.to_string(), bytes));
        }
        if !header {
            return Err(StoreError::Import {
                line: 1,
                message: "the file is empty: not an aiop store export (no header)".into(),
            });
        }
        check_checkpoints(&records, &seen)?;
        Ok(Export { records })
    }

    /// Records read (the header not counted).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// `<search id>/<12 digits>`, a history entry's key ([`history_key`]), as (id, index).
fn split_history_key(key: &str) -> Option<(&str, usize)> {
    let (id, index) = key.rsplit_once('/')?;
    (!id.is_empty() && index.len() == 12 && index.bytes().all(|b| b.is_ascii_digit()))
        .then(|| (id, index.parse().expect("12 digits")))
}

/// An export's searches as the daemon will resume them: each checkpoint, with the history
/// entries of its search in order, decodes as a search state ([`decode_checkpoint`]), belongs
/// to a search the export has a record of, and every history entry to a checkpoint's search
/// (entries numbered from 0 without a gap). Errors name the line of the record at fault
/// (`seen`: each record's line).
fn check_checkpoints(
    records: &[(&'static str, String, Vec<u8>)],
    seen: &HashMap<(&'static str, String), usize>,
) -> Result<(), StoreError> {
    let line = |tree: &'static str, key: &str| seen.get(&(tree, key.to_string())).copied();
    let mut history: BTreeMap<&str, BTreeMap<usize, (&[u8], &str)>> = BTreeMap::new();
    for (tree, key, bytes) in records {
        if *tree == "search_history" {
            let (id, index) = split_history_key(key).expect("checked when read");
            history
                .entry(id)
                .or_default()
                .insert(index, (bytes.as_slice(), key.as_str()));
        }
    }
    for (tree, key, head) in records {
        if *tree != "checkpoints" {
            continue;
        }
        let fail = |message: String| StoreError::Import {
            line: line(tree, key).unwrap_or(0),
            message,
        };
        if line("searches", key).is_none() {
            return Err(fail(format!(
                "the checkpoint of search '{key}', which has no record in the export"
            )));
        }
        let entries = history.remove(key.as_str()).unwrap_or_default();
        if let Some((k, (_, (_, hkey)))) = entries.iter().enumerate().find(|(k, (i, _))| *k != **i)
        {
            return Err(StoreError::Import {
                line: line("search_history", hkey).unwrap_or(0),
                message: format!(
                    "history entry '{hkey}' of search '{key}' follows {k} entries: its \
                     history has a gap"
                ),
            });
        }
        let bytes: Vec<&[u8]> = entries.values().map(|(b, _)| *b).collect();
        decode_checkpoint(head, &bytes).map_err(|e| {
            fail(format!(
                "the checkpoint of search '{key}' is unreadable: {e}"
            ))
        })?;
    }
    if let Some((id, entries)) = history.into_iter().next() {
        let (_, hkey) = entries.values().next().expect("an id has entries");
        return Err(StoreError::Import {
            line: line("search_history", hkey).unwrap_or(0),
            message: format!(
                "history entry '{hkey}' of search '{id}', which has no checkpoint in the export"
            ),
        });
    }
    Ok(())
}

/// The store's gauges, computed at scrape time: `aiop_tasks{status}` (fine-tuning jobs by state),
/// `aiop_searches{status}`, `aiop_store_size_bytes`.
struct StoreCollector {
    store: Store,
    tasks: prometheus::IntGaugeVec,
    searches: prometheus::IntGaugeVec,
    size: prometheus::IntGauge,
}

impl StoreCollector {
    fn new(store: Store) -> Result<StoreCollector, prometheus::Error> {
        use prometheus::{IntGauge, IntGaugeVec, Opts};
        Ok(StoreCollector {
            store,
            tasks: IntGaugeVec::new(
                Opts::new(
                    "aiop_tasks",
                    "Tasks by status (queued, tuning, ready, failed)",
                ),
                &["status"],
            )?,
            searches: IntGaugeVec::new(
                Opts::new(
                    "aiop_searches",
                    "Searches by status (queued, running, done, failed, cancelled)",
                ),
                &["status"],
            )?,
            size: IntGauge::new("aiop_store_size_bytes", "Size of the sled store on disk")?,
        })
    }
}

impl prometheus::core::Collector for StoreCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut d = self.tasks.desc();
        d.extend(self.searches.desc());
        d.extend(self.size.desc());
        d
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        fn name<T: Serialize>(v: &T) -> String {
            serde_json::to_value(v)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        }
        // Each gauge is set to a complete count, never zeroed and counted up in place: two
        // scrapes at once (Prometheus and a person's curl) would otherwise add up each other's
        // counts.
        let mut tasks: BTreeMap<String, i64> = [
            TaskStatus::Queued,
            TaskStatus::Tuning,
            TaskStatus::Ready,
            TaskStatus::Failed,
        ]
        .iter()
        .map(|s| (name(s), 0))
        .collect();
        if let Ok(all) = self.store.tasks() {
            for t in all.iter().filter(|t| t.removed_at.is_none()) {
                *tasks.entry(name(&t.status)).or_default() += 1;
            }
        }
        let mut searches: BTreeMap<String, i64> = [
            SearchStatus::Queued,
            SearchStatus::Running,
            SearchStatus::Done,
            SearchStatus::Failed,
            SearchStatus::Cancelled,
        ]
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
        if let Ok(all) = self.store.searches() {
            for s in all {
                *searches.entry(s.status.as_str().to_string()).or_default() += 1;
            }
        }
        for (status, n) in tasks {
            self.tasks.with_label_values(&[status.as_str()]).set(n);
        }
        for (status, n) in searches {
            self.searches.with_label_values(&[status.as_str()]).set(n);
        }
        if let Ok(n) = self.store.size_on_disk() {
            self.size.set(n as i64);
        }
        let mut out = self.tasks.collect();
        out.extend(self.searches.collect());
        out.extend(self.size.collect());
        out
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What [`Store::compact`] did: records copied, and the database folder's size before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// The records of the data trees, as many as `export` writes (the store's own bookkeeping,
    /// copied too, is not counted).
    pub records: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// The copy was no smaller than the store, which was kept as it was.
    pub kept: bool,
}

/// The most records, and bytes, one batch holds when a tree is written whole (compaction,
/// import). sled keeps the superseded versions of the pages a batch rewrites, and a large batch
/// rewrites them many times over: a compaction in batches of 10,000 made a store of one
/// finished 10,000-evaluation search larger by 40 % (11,833 -> 16,425 KiB); batches of 50 to
/// 300 records gave 11,264 KiB (BENCHMARKS.md, "Store compaction and import").
const BATCH_RECORDS: usize = 256;
const BATCH_BYTES: usize = 1 << 20;

/// Write `items` into `to` in batches of at most [`BATCH_RECORDS`] records or [`BATCH_BYTES`]
/// bytes; returns how many were written.
fn write_batched(
    to: &sled::Tree,
    items: impl Iterator<Item = Result<(sled::IVec, sled::IVec), StoreError>>,
) -> Result<u64, StoreError> {
    let (mut batch, mut records, mut bytes, mut total) = (sled::Batch::default(), 0, 0, 0u64);
    for kv in items {
        let (k, v) = kv?;
        bytes += k.len() + v.len();
        batch.insert(k, v);
        records += 1;
        total += 1;
        if records == BATCH_RECORDS || bytes >= BATCH_BYTES {
            to.apply_batch(std::mem::take(&mut batch))?;
            (records, bytes) = (0, 0);
        }
    }
    to.apply_batch(batch)?;
    Ok(total)
}

/// The compaction's copy of the database, beside `db` in the state directory.
const COMPACT_COPY: &str = "db.compact";
/// Written once the copy is complete and checked: from then on the swap is finished, never
/// undone.
const COMPACT_DONE: &str = "db.compact.done";
/// The old database during the swap.
const COMPACT_OLD: &str = "db.compact.old";

/// Take the state directory's lock file (`store.lock`, created with the directory if need be),
/// waiting up to [`LOCK_WAIT`] for a process that is letting it go.
fn lock_state(state_dir: &Path) -> Result<std::fs::File, StoreError> {
    std::fs::create_dir_all(state_dir)?;
    let path = state_dir.join("store.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    let would_block = |e: &std::fs::TryLockError| matches!(e, std::fs::TryLockError::WouldBlock);
    match retry_while(would_block, || file.try_lock()) {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked { path }),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// Finish or discard a compaction found in `state_dir` (the state's lock held): with its
/// completion marker, move the copy into place (`db` → `db.compact.old`, `db.compact` → `db`,
/// each rename done once whatever step a crash stopped at) and remove the old database and
/// the marker; without one, the copy is incomplete and removed, the store untouched.
fn finish_compaction(state_dir: &Path) -> Result<(), StoreError> {
    let (db, copy) = (state_dir.join("db"), state_dir.join(COMPACT_COPY));
    let (old, marker) = (state_dir.join(COMPACT_OLD), state_dir.join(COMPACT_DONE));
    if !marker.exists() {
        if copy.exists() {
            tracing::warn!(path = %copy.display(), "removing an unfinished compaction's copy");
            std::fs::remove_dir_all(&copy)?;
        }
        return Ok(());
    }
    if copy.exists() {
        if db.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old)?;
            }
            std::fs::rename(&db, &old)?;
        }
        std::fs::rename(&copy, &db)?;
        sync_dir(state_dir)?;
    }
    if !db.is_dir() {
        // Not a state the swap leaves at any step: keep everything for a person to look at.
        return Err(StoreError::Compact {
            path: db,
            message: format!(
                "a finished compaction left no database (neither {} nor {} holds one); \
                 the old one, if any, is at {}",
                copy.display(),
                state_dir.join("db").display(),
                old.display()
            ),
        });
    }
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    std::fs::remove_file(&marker)?;
    sync_dir(state_dir)?;
    Ok(())
}

/// Make the renames and removals in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Bytes in the files under `dir`.
fn dir_size(dir: &Path) -> Result<u64, StoreError> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        n += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(n)
}

/// Open sled's database at `path`, waiting up to [`LOCK_WAIT`] for its file lock. A store
/// dropped in this process releases the lock only when sled's flusher thread lets go of the
/// database, a moment later; a reopen in between (a restart inside one process, as the tests
/// do) would otherwise fail at random. A lock held by another process is still an error, after
/// the wait.
fn open_locked(path: &Path) -> Result<sled::Db, sled::Error> {
    retry_while(lock_held, || sled::Config::new().path(path).open())
}

/// `attempt` until it succeeds or fails otherwise than `held` says (a lock another holder is
/// letting go of), for at most [`LOCK_WAIT`]; then its last answer.
fn retry_while<T, E>(
    held: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let start = std::time::Instant::now();
    loop {
        match attempt() {
            Err(e) if held(&e) && start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// How long [`open_locked`] and [`lock_state`] wait for a file lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::taskfile::{self, Limits};

    const CSV: &str = "arch,value\n\
        |avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|,81.9\n\
        |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|,90.39\n";

    /// A fresh store and a folder for task files (the guards keep both alive).
    fn store_and_files() -> (tempfile::TempDir, tempfile::TempDir, Store) {
        let state = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        let st = Store::open(state.path()).unwrap();
        (state, files, st)
    }

    fn spec(dir: &Path, name: &str, csv: &str) -> (TaskSpec, PathBuf) {
        std::fs::write(dir.join(format!("{name}.csv")), csv).unwrap();
        let t = dir.join(format!("{name}.toml"));
        std::fs::write(
            &t,
            format!("name = \"{name}\"\nspace = \"nb201\"\nhead = \"cifar10\"\nsamples = \"{name}.csv\"\n"),
        )
        .unwrap();
        (taskfile::load(&t, &Limits::default()).unwrap(), t)
    }

    /// Every record reader waits while a flushed write holds the gate (between its commit and
    /// the end of its flush), and goes on once it is released.
    #[test]
    fn concurrent_scrapes_each_count_the_store_once() {
        let (_d, _f, store) = store_and_files();
        for i in 0..6 {
            let mut rec = SearchRecord::queued(&format!("s{i}"), "t", serde_json::json!({}), 1);
            if i % 2 == 0 {
                rec.status = SearchStatus::Done;
            }
            store.insert_search(&rec).unwrap();
        }
        let reg = prometheus::Registry::new();
        store.register_metrics(&reg).unwrap();
        let count = |families: &[prometheus::proto::MetricFamily], status: &str| -> i64 {
            let f = families
                .iter()
                .find(|f| f.name() == "aiop_searches")
                .unwrap();
            let m = f.get_metric().iter().find(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "status" && l.value() == status)
            });
            m.map(|m| m.get_gauge().get_value() as i64).unwrap()
        };
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..150 {
                        let g = reg.gather();
                        assert_eq!((count(&g, "done"), count(&g, "queued")), (3, 3));
                        assert_eq!(count(&g, "running"), 0);
                    }
                });
            }
        });
    }

    #[test]
    fn record_readers_wait_for_a_flush_in_progress() {
        let state = tempfile::tempdir().unwrap();
        let st = Store::open(state.path()).unwrap();
        st.insert_search(&SearchRecord::queued("s", "t", serde_json::json!({}), 10))
            .unwrap();
        type Read = fn(&Store) -> bool;
        let readers: [(&str, Read); 6] = [
            ("search", |st| st.search("s").unwrap().is_some()),
            ("searches", |st| st.searches().unwrap().len() == 1),
            ("task", |st| st.task("t").unwrap().is_none()),
            ("tasks", |st| st.tasks().unwrap().is_empty()),
            ("task_spec", |st| st.task_spec("t", "h").unwrap().is_none()),
            ("model_meta", |st| st.model_meta("t/h").unwrap().is_none()),
        ];
        for (name, read) in readers {
            let gate = st.durable_write();
            let (tx, rx) = std::sync::mpsc::channel();
            let reader = st.clone();
            let h = std::thread::spawn(move || tx.send(read(&reader)).unwrap());
            assert!(
                rx.recv_timeout(std::time::Duration::from_millis(150))
                    .is_err(),
                "{name} read past a flush in progress"
            );
            drop(gate);
            let got = rx.recv_timeout(std::time::Duration::from_secs(10));
            assert_eq!(got, Ok(true), "{name}");
            h.join().unwrap();
        }
    }

    #[test]
    fn task_versions_survive_reopen() {
        let state = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        let (s1, src) = spec(files.path(), "a", CSV);
        {
            let st = Store::open(state.path()).unwrap();
            assert_eq!(st.record_task(&s1, &src).unwrap().1, Recorded::New);
            assert_eq!(st.record_task(&s1, &src).unwrap().1, Recorded::Unchanged);
            let (s2, _) = spec(files.path(), "a", &CSV.replace("90.39", "91"));
            let (rec, what) = st.record_task(&s2, &src).unwrap();
            assert_eq!(what, Recorded::NewVersion);
            assert_eq!(rec.versions.len(), 2);
            assert_eq!(rec.status, TaskStatus::Queued);
            // A stale status update (old version) is ignored; a current one applies.
            assert!(st
                .set_task_status("a", &s1.hash, TaskStatus::Ready, None)
                .unwrap()
                .is_none());
            st.set_task_status("a", &s2.hash, TaskStatus::Failed, Some("boom".into()))
                .unwrap()
                .unwrap();
            assert!(st.task_spec("a", &s1.hash).unwrap().is_some());
        }
        let st = Store::open(state.path()).unwrap();
        let rec = st.task("a").unwrap().unwrap();
        assert_eq!(rec.versions.len(), 2);
        assert_eq!(rec.status, TaskStatus::Failed);
        assert_eq!(rec.error.as_deref(), Some("boom"));
        assert_eq!(st.schema_version().unwrap(), SCHEMA_VERSION);
        // Removal keeps the record; the same content brings it back.
        let removed = st.mark_removed(&src, None).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(removed[0].removed_at.is_some());
        assert!(st.mark_removed(&src, None).unwrap().is_empty());
        let (s2, _) = spec(files.path(), "a", &CSV.replace("90.39", "91"));
        assert_eq!(st.record_task(&s2, &src).unwrap().1, Recorded::Restored);
    }

    #[test]
    fn a_name_belongs_to_one_file() {
        let (_state, files, st) = store_and_files();
        let (s, src) = spec(files.path(), "a", CSV);
        st.record_task(&s, &src).unwrap();
        let e = st
            .record_task(&s, &files.path().join("other.toml"))
            .unwrap_err();
        assert!(matches!(e, StoreError::NameTaken { .. }), "{e}");
    }

    #[test]
    fn a_task_renamed_in_its_file_retires_the_old_name_only() {
        let (_state, files, st) = store_and_files();
        let (a, src) = spec(files.path(), "a", CSV);
        let (b, _) = spec(files.path(), "b", CSV);
        st.record_task(&a, &src).unwrap();
        st.record_task(&b, &src).unwrap();
        let gone = st.mark_removed(&src, Some("b")).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].name, "a");
        assert!(st.task("a").unwrap().unwrap().removed_at.is_some());
        assert!(st.task("b").unwrap().unwrap().removed_at.is_none());
        // The old name is free for another file.
        st.record_task(&a, &files.path().join("other.toml"))
            .unwrap();
        let gone = st.mark_removed(&src, None).unwrap();
        assert_eq!(
            gone.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
    }

    #[test]
    fn a_reopen_waits_for_the_lock_of_a_store_dropped_a_moment_later() {
        let state = tempfile::tempdir().unwrap();
        let st = Store::open(state.path()).unwrap();
        let holder = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(st);
        });
        let again = Store::open(state.path());
        holder.join().unwrap();
        assert!(again.is_ok(), "{:?}", again.err());
        drop(again);
        // Drop and reopen in a row, as a restart inside one process does.
        for _ in 0..20 {
            drop(Store::open(state.path()).unwrap());
        }
    }

    #[test]
    fn newer_schema_refused_and_migrations_run() {
        let state = tempfile::tempdir().unwrap();
        {
            let st = Store::open(state.path()).unwrap();
            st.db
                .insert("schema_version", 99u32.to_be_bytes().to_vec())
                .unwrap();
            st.flush().unwrap();
        }
        let e = Store::open(state.path()).err().unwrap();
        assert!(matches!(e, StoreError::TooNew { found: 99, .. }), "{e}");

        let state = tempfile::tempdir().unwrap();
        drop(Store::open(state.path()).unwrap());
        fn add_marker(db: &sled::Db) -> Result<(), StoreError> {
            db.insert("migrated", "yes")?;
            Ok(())
        }
        let st =
            Store::open_with(state.path(), SCHEMA_VERSION + 1, &[v1_to_v2, add_marker]).unwrap();
        assert_eq!(st.schema_version().unwrap(), SCHEMA_VERSION + 1);
        assert!(st.db.get("migrated").unwrap().is_some());
    }

    #[test]
    fn v1_search_records_are_upgraded_from_their_checkpoints() {
        let state = tempfile::tempdir().unwrap();
        {
            let v1 = Store::open_with(state.path(), 1, &[]).unwrap();
            // A search record as schema 1 wrote it, and its checkpoint.
            let rec = serde_json::json!({"id": "s", "task": "t", "spec": {}, "status": "running",
                "progress": 0.5, "results": null, "error": null, "created_at": 1, "updated_at": 2});
            v1.searches.insert("s", encode(&rec)).unwrap();
            v1.checkpoints
                .insert(
                    "s",
                    br#"{"generation": 7, "evaluations": 56, "spec": {"budget": 112}}"#.to_vec(),
                )
                .unwrap();
            v1.flush().unwrap();
        }
        let st = Store::open(state.path()).unwrap();
        assert_eq!(st.schema_version().unwrap(), 2);
        let r = st.search("s").unwrap().unwrap();
        assert_eq!((r.generation, r.evaluations, r.budget), (7, 56, 112));
        assert_eq!(r.status, SearchStatus::Running);
    }

    #[test]
    fn search_history_is_appended_with_each_checkpoint() {
        let state = tempfile::tempdir().unwrap();
        let st = Store::open(state.path()).unwrap();
        for id in ["s", "s2"] {
            st.insert_search(&SearchRecord::queued(id, "t", serde_json::json!({}), 9))
                .unwrap();
        }
        let e = |k: u8| vec![b'0' + k];
        let gen = |from: usize, n: u8, head: &'static [u8]| {
            let entries: Vec<Vec<u8>> = (from as u8..n).map(e).collect();
            st.update_search(
                "s",
                Some(Checkpoint {
                    head,
                    history_from: from,
                    history: &entries,
                }),
                true,
                |r| {
                    r.generation += 1;
                    true
                },
            )
            .unwrap()
            .unwrap()
        };
        gen(0, 3, b"h1");
        // Thirteen entries: keys sort numerically (zero-padded indices).
        let r = gen(3, 13, b"h2");
        assert_eq!(r.generation, 2);
        let (head, hist) = st.search_checkpoint("s").unwrap().unwrap();
        assert_eq!(head, b"h2");
        assert_eq!(hist, (0..13).map(e).collect::<Vec<_>>());
        // Another search's history is its own ("s2" shares the prefix "s").
        assert_eq!(st.search_checkpoint("s2").unwrap(), None);
    }

    #[test]
    fn removing_a_finished_search_deletes_its_record_checkpoint_and_history_only() {
        let state = tempfile::tempdir().unwrap();
        let st = Store::open(state.path()).unwrap();
        for id in ["s", "s2"] {
            st.insert_search(&SearchRecord::queued(id, "t", serde_json::json!({}), 9))
                .unwrap();
            let entries: Vec<Vec<u8>> = (0..12u8).map(|k| vec![k]).collect();
            let cp = Checkpoint {
                head: b"head",
                history_from: 0,
                history: &entries,
            };
            st.update_search(id, Some(cp), true, |r| {
                r.status = SearchStatus::Running;
                true
            })
            .unwrap();
        }
        // A running search (a worker writes it) is refused and kept whole.
        let e = st.remove_search("s").unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::SearchUnfinished {
                    status: SearchStatus::Running,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("is running"), "{e}");
        assert_eq!(st.search_checkpoint("s").unwrap().unwrap().1.len(), 12);
        st.update_search("s", None, true, |r| {
            r.status = SearchStatus::Done;
            true
        })
        .unwrap();
        let gone = st.remove_search("s").unwrap();
        assert_eq!((gone.id.as_str(), gone.status), ("s", SearchStatus::Done));
        assert!(matches!(
            st.remove_search("s"),
            Err(StoreError::NoSearch(_))
        ));
        drop(st);
        let st = Store::open(state.path()).unwrap();
        assert_eq!(st.search("s").unwrap(), None);
        assert_eq!(st.search_checkpoint("s").unwrap(), None);
        assert_eq!(st.search_history.scan_prefix(b"s/").count(), 0);
        // The other search ("s2" shares the prefix "s") is untouched.
        let (head, hist) = st.search_checkpoint("s2").unwrap().unwrap();
        assert_eq!((head.as_slice(), hist.len()), (&b"head"[..], 12));
        assert_eq!(st.searches().unwrap().len(), 1);
    }

    #[test]
    fn search_status_names_are_their_serialised_names() {
        for s in [
            SearchStatus::Queued,
            SearchStatus::Running,
            SearchStatus::Done,
            SearchStatus::Failed,
            SearchStatus::Cancelled,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn ready_task_model_and_search_are_one_write() {
        let (_state, files, st) = store_and_files();
        let (s, src) = spec(files.path(), "a", CSV);
        st.record_task(&s, &src).unwrap();
        let search = SearchRecord::queued("t-a", "a", serde_json::json!({}), 5);
        let meta = serde_json::json!({"task": "a"});
        let id = format!("a/{}", s.hash);
        // An outdated version writes nothing.
        assert!(st
            .set_task_ready("a", &"0".repeat(32), &id, Some(&meta), Some(&search))
            .unwrap()
            .is_none());
        assert!(st.search("t-a").unwrap().is_none());
        let (rec, created) = st
            .set_task_ready("a", &s.hash, &id, Some(&meta), Some(&search))
            .unwrap()
            .unwrap();
        assert!(created && rec.status == TaskStatus::Ready);
        assert_eq!(st.model_meta(&id).unwrap(), Some(meta.clone()));
        assert_eq!(
            st.search("t-a").unwrap().unwrap().status,
            SearchStatus::Queued
        );
        // Ready again (a re-run after a crash): the search is not created twice.
        let (_, created) = st
            .set_task_ready("a", &s.hash, &id, Some(&meta), Some(&search))
            .unwrap()
            .unwrap();
        assert!(!created);
    }

    #[test]
    fn searches_predictions_and_export_roundtrip() {
        let (_state, files, st) = store_and_files();
        let (s, src) = spec(files.path(), "a", CSV);
        st.record_task(&s, &src).unwrap();
        let rec = SearchRecord::queued("s1", "a", serde_json::json!({"budget": 10}), 10);
        st.insert_search(&rec).unwrap();
        assert!(matches!(
            st.insert_search(&rec),
            Err(StoreError::SearchExists(_))
        ));
        // Claimed once; a running search is not cancelled here.
        assert!(st.claim_search("s1").unwrap().is_some());
        assert!(st.claim_search("s1").unwrap().is_none());
        assert!(st.cancel_queued_search("s1", None).unwrap().is_none());
        let r = st
            .save_search_progress(
                "s1",
                SearchStatus::Running,
                0.5,
                &serde_json::json!([1]),
                &head_of_a_new_search(),
            )
            .unwrap();
        assert_eq!(r.progress, 0.5);
        assert!(st
            .save_search_progress(
                "nope",
                SearchStatus::Running,
                0.5,
                &serde_json::Value::Null,
                b""
            )
            .is_err());
        let h = GraphHash(0xabc);
        st.cache_prediction("m1", h, 93.5).unwrap();
        assert_eq!(st.cached_prediction("m1", h).unwrap(), Some(93.5));
        assert_eq!(st.cached_prediction("m2", h).unwrap(), None);
        // Pruning removes exactly the rejected models' values.
        st.cache_predictions("m2", &[(h, 1.0), (GraphHash(7), 2.0)])
            .unwrap();
        st.cache_prediction("m20", h, 3.0).unwrap();
        assert_eq!(st.prune_predictions("", |m| m != "m2").unwrap(), 2);
        assert_eq!(st.cached_prediction("m2", h).unwrap(), None);
        assert_eq!(st.cached_prediction("m20", h).unwrap(), Some(3.0));
        assert_eq!(st.prune_predictions("", |m| m != "m20").unwrap(), 1);
        assert_eq!(st.prune_predictions("", |_| false).unwrap(), 1);
        st.cache_prediction("m1", h, 93.5).unwrap();

        let mut out = Vec::new();
        let n = st.export(&mut out).unwrap();
        assert_eq!(n, 5);
        let other = tempfile::tempdir().unwrap();
        let st2 = Store::open(other.path()).unwrap();
        assert_eq!(st2.import(out.as_slice()).unwrap(), 5);
        assert_eq!(st2.tasks().unwrap(), st.tasks().unwrap());
        assert_eq!(st2.search("s1").unwrap(), st.search("s1").unwrap());
        assert_eq!(
            st2.checkpoint("s1").unwrap().unwrap(),
            head_of_a_new_search()
        );
        assert_eq!(st2.cached_prediction("m1", h).unwrap(), Some(93.5));
        assert!(st2.task_spec("a", &s.hash).unwrap().is_some());
        // Importing twice is refused; garbage names its line.
        assert!(st2.import(out.as_slice()).is_err());
        let third = tempfile::tempdir().unwrap();
        let st3 = Store::open(third.path()).unwrap();
        let e = st3
            .import(format!("{{\"aiop_store\": {SCHEMA_VERSION}}}\nnot json\n").as_bytes())
            .unwrap_err();
        assert!(matches!(e, StoreError::Import { line: 2, .. }), "{e}");
        // An empty file is no export; a record given twice names both lines.
        let e = Export::read(&b""[..]).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("empty"), "{e}");
        let text = String::from_utf8(out).unwrap();
        let second = text.lines().nth(1).unwrap();
        let dup = format!("{text}{second}\n");
        let e = Export::read(dup.as_bytes()).unwrap_err().to_string();
        assert!(
            e.contains(&format!("line {}", n + 2)) && e.contains("also on line 2"),
            "{e}"
        );
        assert_eq!(Export::read(text.as_bytes()).unwrap().len(), n);
    }

    /// The checkpoint head of a search that has not run a generation.
    fn head_of_a_new_search() -> Vec<u8> {
        let state = SearchState::new(crate::search::SearchSpec {
            space: Some(crate::spaces::SpaceId::Nb201),
            task: Some(crate::spaces::Task::Cifar10),
            ..crate::search::SearchSpec::default()
        })
        .unwrap();
        serde_json::to_vec(&serde_json::json!({"history_len": 0, "state": state})).unwrap()
    }

    #[test]
    fn an_import_refuses_records_the_daemon_could_not_use() {
        let dir = tempfile::tempdir().unwrap();
        let st = Store::open(dir.path()).unwrap();
        let rec = SearchRecord::queued("s1", "t", serde_json::json!({}), 1);
        st.insert_search(&rec).unwrap();
        st.save_search_progress(
            "s1",
            SearchStatus::Running,
            0.0,
            &serde_json::Value::Null,
            &head_of_a_new_search(),
        )
        .unwrap();
        let mut out = Vec::new();
        st.export(&mut out).unwrap();
        let good = String::from_utf8(out).unwrap();
        assert!(Export::read(good.as_bytes()).is_ok(), "{good}");
        let header = format!("{{\"aiop_store\": {SCHEMA_VERSION}}}\n");
        let search_line = good
            .lines()
            .find(|l| l.contains("\"tree\":\"searches\""))
            .unwrap();
        // Each: records after the header, the line at fault and what its error says.
        let cases: Vec<(String, usize, &str)> = vec![
            (
                r#"{"tree":"task_specs","key":"x/y","value":5}"#.into(),
                2,
                "not a task version's snapshot",
            ),
            (
                r#"{"tree":"models","key":"m","value":{"a":1}}
{"tree":"models","key":"n","value":[1,2]}"#
                    .into(),
                3,
                "metadata is a JSON object",
            ),
            (
                r#"{"tree":"search_history","key":"h","value":[1,2]}"#.into(),
                2,
                "is not a search's history entry",
            ),
            (
                r#"{"tree":"checkpoints","key":"k","value":"00ff"}"#.into(),
                2,
                "the checkpoint of search 'k', which has no record",
            ),
            (
                format!(
                    "{search_line}\n{}",
                    r#"{"tree":"checkpoints","key":"s1","value":"00ff"}"#
                ),
                3,
                "the checkpoint of search 's1' is unreadable",
            ),
            (
                r#"{"tree":"search_history","key":"s9/000000000000","value":{}}"#.into(),
                2,
                "which has no checkpoint in the export",
            ),
        ];
        for (records, line, says) in cases {
            let text = format!("{header}{records}\n");
            let e = Export::read(text.as_bytes()).unwrap_err();
            assert!(
                matches!(e, StoreError::Import { line: l, .. } if l == line),
                "{records}: {e}"
            );
            assert!(e.to_string().contains(says), "{records}: {e}");
        }
        // A state that names an entry past its history, or a spec over the limits, would fail
        // (or panic) at its resume.
        for (path, value, says) in [
            (
                "frontier",
                serde_json::json!([99]),
                "names history entry 99, of 0",
            ),
            ("batch", serde_json::json!(u64::MAX), "is over the limit"),
        ] {
            let mut head: serde_json::Value =
                serde_json::from_slice(&head_of_a_new_search()).unwrap();
            match path {
                "frontier" => head["state"]["frontier"] = value,
                _ => head["state"]["spec"]["batch"] = value,
            }
            let cp = serde_json::json!({"tree": "checkpoints", "key": "s1",
                "value": hex(&serde_json::to_vec(&head).unwrap())});
            let text = format!("{header}{search_line}\n{cp}\n");
            let e = Export::read(text.as_bytes()).unwrap_err().to_string();
            assert!(e.contains("line 3") && e.contains(says), "{path}: {e}");
        }
        // A history with a gap: entry 1 without entry 0.
        let gap = format!(
            "{good}{}\n",
            r#"{"tree":"search_history","key":"s1/000000000001","value":{}}"#
        );
        let e = Export::read(gap.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("its history has a gap"), "{e}");
        // Into a store that holds records: refused as such, nothing written.
        assert!(matches!(
            st.import(good.as_bytes()),
            Err(StoreError::NotEmpty)
        ));
    }

    #[test]
    fn only_a_held_lock_gets_the_other_daemon_hint() {
        let dir = tempfile::tempdir().unwrap();
        let held = Store::open(dir.path()).unwrap();
        let e = Store::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("another aiop"), "{e}");
        drop(held);
        // A store folder that is not one (here a file where sled wants its folder).
        let bad = tempfile::tempdir().unwrap();
        std::fs::write(bad.path().join("db"), b"not a store").unwrap();
        let e = Store::open(bad.path()).err().unwrap().to_string();
        assert!(
            e.starts_with("opening the store at") && !e.contains("another aiop"),
            "{e}"
        );
    }

    /// A store of `n` cached predictions under model `keep` and `n` under `drop`, a task and a
    /// search; `drop`'s are then removed (what a deleted task model's cache leaves behind).
    fn grown_store(dir: &Path, files: &Path, n: u128) -> String {
        let st = Store::open(dir).unwrap();
        let (s, src) = spec(files, "a", CSV);
        st.record_task(&s, &src).unwrap();
        st.insert_search(&SearchRecord::queued("s1", "a", serde_json::json!({}), 10))
            .unwrap();
        // Three deleted values for each kept one: the copy is far smaller than the store
        // whatever sled's overhead does under load (at one for one, a loaded machine once
        // gave a copy no smaller).
        for (model, count) in [("keep", n), ("drop", 3 * n)] {
            let values: Vec<(GraphHash, f64)> =
                (0..count).map(|i| (GraphHash(i), i as f64 / 7.0)).collect();
            st.cache_predictions(model, &values).unwrap();
        }
        assert_eq!(
            st.prune_predictions("", |m| m != "drop").unwrap(),
            3 * n as usize
        );
        st.flush().unwrap();
        let mut out = Vec::new();
        st.export(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn exported(dir: &Path) -> String {
        let mut out = Vec::new();
        Store::open(dir).unwrap().export(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.metadata().unwrap().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    #[test]
    fn compaction_keeps_every_record_and_gives_back_the_space() {
        let state = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        let before = grown_store(state.path(), files.path(), 40_000);
        let c = Store::compact(state.path()).unwrap();
        // The live records: a task, its version's snapshot, a search, 40,000 predictions (the
        // schema version in the default tree is copied, not counted): as many as are exported.
        assert_eq!(c.records, 40_000 + 3, "{c:?}");
        assert_eq!(
            c.records as usize,
            before.lines().count() - 1,
            "the export's header"
        );
        assert!(c.bytes_after < c.bytes_before, "{c:?}");
        assert_eq!(exported(state.path()), before);
        // Nothing of the swap is left beside the store, and the store works as before.
        let names: Vec<String> = std::fs::read_dir(state.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| n == "db" || n == "store.lock"),
            "{names:?}"
        );
        let st = Store::open(state.path()).unwrap();
        assert_eq!(st.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(
            st.cached_prediction("keep", GraphHash(3)).unwrap(),
            Some(3.0 / 7.0)
        );
        assert_eq!(st.cached_prediction("drop", GraphHash(3)).unwrap(), None);
        // Not while the store is open elsewhere; not where there is none.
        let e = Store::compact(state.path()).unwrap_err();
        assert!(matches!(e, StoreError::Locked { .. }), "{e}");
        assert!(e.to_string().contains("another aiop"), "{e}");
        drop(st);
        // Compacted again, nothing is left to give back: the store is kept as it is unless a
        // copy is smaller, and either way holds the same records, nothing left beside it.
        let again = Store::compact(state.path()).unwrap();
        assert_eq!(exported(state.path()), before);
        if again.kept {
            assert_eq!(again.bytes_after, again.bytes_before, "{again:?}");
        } else {
            assert!(again.bytes_after < again.bytes_before, "{again:?}");
        }
        assert!(!state.path().join(COMPACT_COPY).exists());
        let empty = tempfile::tempdir().unwrap();
        let e = Store::compact(empty.path()).unwrap_err().to_string();
        assert!(e.contains("no store here"), "{e}");
        assert!(!empty.path().join("db").exists(), "none is created");
    }

    #[test]
    fn a_compaction_a_crash_interrupted_is_finished_or_discarded_at_the_next_open() {
        let files = tempfile::tempdir().unwrap();
        // `small`'s database plays the finished copy, `big` the store being compacted.
        let small = tempfile::tempdir().unwrap();
        let small_text = grown_store(small.path(), files.path(), 10);
        let big = tempfile::tempdir().unwrap();
        let big_text = grown_store(big.path(), files.path(), 500);
        let at = |step: &str| {
            let s = tempfile::tempdir().unwrap();
            let (db, copy) = (s.path().join("db"), s.path().join(COMPACT_COPY));
            let (old, done) = (s.path().join(COMPACT_OLD), s.path().join(COMPACT_DONE));
            copy_dir(&big.path().join("db"), &db);
            copy_dir(&small.path().join("db"), &copy);
            match step {
                "copying" => {}
                "marked" => std::fs::write(&done, b"").unwrap(),
                "moved aside" => {
                    std::fs::write(&done, b"").unwrap();
                    std::fs::rename(&db, &old).unwrap();
                }
                "swapped" => {
                    std::fs::write(&done, b"").unwrap();
                    std::fs::rename(&db, &old).unwrap();
                    std::fs::rename(&copy, &db).unwrap();
                }
                _ => unreachable!(),
            }
            s
        };
        // Before the copy is marked complete the store is the old one, the copy removed.
        let s = at("copying");
        assert_eq!(exported(s.path()), big_text);
        assert!(!s.path().join(COMPACT_COPY).exists());
        // From the mark on, whatever step it stopped at, the copy is the store.
        for step in ["marked", "moved aside", "swapped"] {
            let s = at(step);
            assert_eq!(exported(s.path()), small_text, "{step}");
            for left in [COMPACT_COPY, COMPACT_OLD, COMPACT_DONE] {
                assert!(!s.path().join(left).exists(), "{step}: {left} is left");
            }
        }
        // A mark with no database anywhere is refused, nothing removed.
        let s = at("moved aside");
        std::fs::remove_dir_all(s.path().join(COMPACT_COPY)).unwrap();
        let e = Store::open(s.path()).err().unwrap().to_string();
        assert!(e.contains("left no database"), "{e}");
        assert!(s.path().join(COMPACT_OLD).is_dir());
    }
}
