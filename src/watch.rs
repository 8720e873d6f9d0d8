//! The task folder watcher: turns files dropped into the tasks folder into task records.
//!
//! One dedicated thread owns a notify watcher on the folder (created if missing) and debounces
//! its events. Invariants: hidden and temporary files (`.`-prefixed, `~`-suffixed, `.swp`,
//! `.tmp`) and the watcher's own `.error` files are ignored; a file is read only once it is
//! complete: closed after writing (one written to and still open: after [`OPEN_QUIET`] without a
//! write), or else unchanged (size and mtime) for the debounce time. A `*.toml` is validated
//! ([`crate::taskfile`]; `aiop_task_files_read_total`); an invalid one gets `<file>.error`
//! beside it (file, line, field, message), a log line and `aiop_task_files_rejected_total`, once
//! per distinct report; a valid one loses any stale `.error`, is recorded in the store (a new
//! version, queued, when its hash changed) and counts in `aiop_task_files_accepted_total` (a
//! re-read that changes nothing counts nowhere). Any other file (a samples CSV, a graph) is
//! debounced the same way, and once it is complete the task files that read it when last
//! accepted are read again, with those not accepted yet. A vanished task file is handled after the task files pending beside
//! it (a rename's new name takes its task over, searches and all, rather than the task being
//! retired and restored). A task restored while ready gets the search its `[search]` table asks
//! for when it has none (its file was away when its model was saved). The folder's identity is
//! checked every 2 s: a folder removed, or moved away and replaced, is watched again once one is
//! back at its path, and read as at start-up. A deleted task file marks its task removed, keeping its results,
//! and cancels its unfinished searches (their results so far are kept too); so does a file that
//! now defines another name, for the name it defined before, unless another task file defines
//! that task now, same version (two files that swapped contents: each takes the other's task
//! over, searches and all, whichever is read first). A file rejected because another
//! file holds its name is read again as soon as that name is freed.
//! Files present at start-up are picked up, and tasks whose file vanished while the daemon was
//! down are marked removed. Nothing a file contains can stop the thread: every failure is
//! reported and the loop goes on.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use prometheus::{IntCounter, Registry};

use crate::jobs::{Job, Submitter};
use crate::searches::Searches;
use crate::store::{Recorded, Store, StoreError, TaskStatus};
use crate::taskfile::{self, ignored, Limits, TaskFileError};

/// Errors of starting the watcher (running it cannot fail).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("tasks folder {path}: {error}")]
    Dir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("watching the tasks folder: {0}")]
    Notify(#[from] notify::Error),
    #[error("registering watcher metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("starting the watcher thread: {0}")]
    Thread(std::io::Error),
}

/// Counters of the watcher, registered in the daemon's registry.
#[derive(Clone)]
pub struct Metrics {
    /// Task files read and validated, re-reads included: the watcher's work.
    pub read: IntCounter,
    pub accepted: IntCounter,
    pub rejected: IntCounter,
    pub removed: IntCounter,
}

impl Metrics {
    pub fn register(reg: &Registry) -> Result<Metrics, prometheus::Error> {
        let m = Metrics {
            read: IntCounter::new(
                "aiop_task_files_read_total",
                "Task files read and validated (re-reads after a change to a file they use included)",
            )?,
            accepted: IntCounter::new(
                "aiop_task_files_accepted_total",
                "Task files validated and recorded",
            )?,
            rejected: IntCounter::new(
                "aiop_task_files_rejected_total",
                "Task files rejected (an .error file was written beside them)",
            )?,
            removed: IntCounter::new(
                "aiop_task_files_removed_total",
                "Task files deleted from the folder (their tasks are marked removed)",
            )?,
        };
        reg.register(Box::new(m.read.clone()))?;
        reg.register(Box::new(m.accepted.clone()))?;
        reg.register(Box::new(m.rejected.clone()))?;
        reg.register(Box::new(m.removed.clone()))?;
        Ok(m)
    }
}

/// Settings of the watcher.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub dir: PathBuf,
    pub debounce: Duration,
    pub limits: Limits,
}

enum Msg {
    Fs(notify::Result<notify::Event>),
    Stop,
}

/// The running watcher. [`Watcher::stop`] ends it; dropping it without `stop` also ends the
/// thread (its channel closes) but does not wait.
pub struct Watcher {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

fn is_task_file(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "toml")
}

/// The `.error` file beside a task file.
pub fn error_path(task_file: &Path) -> PathBuf {
    let mut s = task_file.as_os_str().to_owned();
    s.push(".error");
    PathBuf::from(s)
}

type Signature = Option<(u64, Option<SystemTime>)>;

fn signature(p: &Path) -> Signature {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.len(), m.modified().ok()))
}

struct Pending {
    due: Instant,
    sig: Signature,
    /// A vanished task file whose handling already waited once for the files pending beside
    /// it (a rename's new name), so that it waits no more.
    deferred: bool,
    /// Written to, and not closed since: read once closed, or after [`OPEN_QUIET`] without a
    /// write (a writer that keeps it open), not after a mere debounce.
    open: bool,
    /// When the file was last seen written (its last event).
    last_write: Instant,
}

/// How long a file written to and not closed must go without a write before it is read all
/// the same (writers normally close their files, which reads them at once).
const OPEN_QUIET: Duration = Duration::from_secs(10);

/// How often the worker checks that the folder it watches is still the one at its path (one
/// removed, or moved away and replaced, has lost its watch).
const FOLDER_CHECK: Duration = Duration::from_secs(2);

/// The identity of a folder: device and inode where the platform has them.
fn folder_id(p: &Path) -> Option<(u64, u64)> {
    let m = std::fs::metadata(p).ok().filter(|m| m.is_dir())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = m;
        Some((0, 0))
    }
}

struct Worker {
    dir: PathBuf,
    debounce: Duration,
    limits: Limits,
    store: Store,
    metrics: Metrics,
    jobs: Option<Submitter>,
    searches: Option<Searches>,
    pending: HashMap<PathBuf, Pending>,
    /// The notify watch on `dir`; renewed when the folder is replaced.
    notify: RecommendedWatcher,
    /// The identity of the folder being watched (`None` while it is missing).
    folder: Option<(u64, u64)>,
    /// When the folder's identity was last checked.
    checked: Instant,
    /// The files (samples, graphs) each task file read when it last loaded (accepted, or valid
    /// but refused for its name): a change to another file does not read it again. A task file
    /// without an entry (refused, changed, not read yet) reads what its text names
    /// ([`named_reads`]), or anything when that is unknown.
    deps: HashMap<PathBuf, Vec<PathBuf>>,
    /// The report last written for each rejected task file: the same refusal is not reported
    /// (logged, counted, rewritten) again at every re-read.
    reported: HashMap<PathBuf, String>,
    /// Task files rejected only because another file holds their name, with that name: each
    /// is read again when the name is freed (its holder deleted, or renamed to another task).
    conflicts: HashMap<PathBuf, String>,
    /// Names that are not UTF-8, warned about once each (every write, close and rename of such a
    /// file is an event: the same warning six times for one file copied in).
    unreadable_names: std::collections::HashSet<PathBuf>,
}

impl Watcher {
    /// Create the folder if needed, start watching it, pick up the files already there. Task
    /// versions left queued are handed to `jobs` when there is a job pool; a deleted task's
    /// searches are cancelled through `searches`.
    pub fn start(
        cfg: WatchConfig,
        store: Store,
        metrics: Metrics,
        jobs: Option<Submitter>,
        searches: Option<Searches>,
    ) -> Result<Watcher, WatchError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|source| WatchError::Dir {
            path: cfg.dir.clone(),
            error: source,
        })?;
        let dir = cfg.dir.canonicalize().map_err(|source| WatchError::Dir {
            path: cfg.dir.clone(),
            error: source,
        })?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let fs_tx = tx.clone();
        let mut notify = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let _ = fs_tx.send(Msg::Fs(ev));
        })?;
        notify.watch(&dir, RecursiveMode::NonRecursive)?;
        let mut worker = Worker {
            folder: folder_id(&dir),
            checked: Instant::now(),
            dir,
            debounce: cfg.debounce,
            limits: cfg.limits,
            store,
            metrics,
            jobs,
            searches,
            pending: HashMap::new(),
            notify,
            reported: HashMap::new(),
            deps: HashMap::new(),
            conflicts: HashMap::new(),
            unreadable_names: Default::default(),
        };
        let thread = std::thread::Builder::new()
            .name("aiop-watch".into())
            .spawn(move || {
                worker.startup();
                worker.run(rx);
            })
            .map_err(WatchError::Thread)?;
        Ok(Watcher {
            tx,
            thread: Some(thread),
        })
    }

    /// Stop watching and wait for the thread (it finishes the file it is reading, if any).
    pub fn stop(mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the watcher thread panicked");
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // The thread owns the notify watch, whose callback holds a sender: the channel alone
        // would never close.
        let _ = self.tx.send(Msg::Stop);
    }
}

impl Worker {
    fn task_files(&self) -> Vec<PathBuf> {
        match taskfile::task_files(&self.dir) {
            Ok(v) => v,
            // Removed: said once, by the folder check.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot list the tasks folder");
                Vec::new()
            }
        }
    }

    fn startup(&mut self) {
        let files = self.task_files();
        tracing::info!(dir = %self.dir.display(), files = files.len(), "watching the tasks folder");
        for f in &files {
            self.process(f);
        }
        // Tasks whose file vanished while the daemon was down, and tasks defined by a file
        // outside this folder that no file here took over (a store restored or copied from
        // another daemon's, a tasks folder moved): the folder is what defines tasks.
        match self.store.tasks() {
            Ok(tasks) => {
                for t in tasks {
                    let src = Path::new(&t.source);
                    if t.removed_at.is_some() {
                        continue;
                    }
                    if src.parent() != Some(self.dir.as_path()) {
                        self.retire(src, None, "its task file is not in this tasks folder");
                    } else if !src.exists() {
                        self.process(src);
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "reading tasks from the store"),
        }
    }

    fn run(&mut self, rx: Receiver<Msg>) {
        loop {
            let timeout = self
                .pending
                .values()
                .map(|p| p.due.saturating_duration_since(Instant::now()))
                .min()
                .unwrap_or(FOLDER_CHECK)
                .min((self.checked + FOLDER_CHECK).saturating_duration_since(Instant::now()));
            match rx.recv_timeout(timeout) {
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(Msg::Fs(Ok(ev))) => self.on_event(ev),
                Ok(Msg::Fs(Err(e))) => tracing::warn!(error = %e, "file watch error"),
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.checked.elapsed() >= FOLDER_CHECK {
                self.check_folder();
            }
            self.flush_due();
        }
        tracing::info!("tasks folder watcher stopped");
    }

    /// Whether task file `f` reads `file`, or may: its files when it last loaded, else the
    /// samples file its text names, else anything.
    fn may_read(&self, f: &Path, file: &Path) -> bool {
        match self.deps.get(f) {
            Some(d) => d.iter().any(|x| x == file),
            None => named_reads(f, &self.limits).is_none_or(|d| d.iter().any(|x| x == file)),
        }
    }

    /// Watch the folder again when it was removed, or moved away and replaced, since the last
    /// check: a watch follows the folder it was set on, not its path. Its files are then read
    /// as at start-up (tasks whose file is not there any more are marked removed).
    fn check_folder(&mut self) {
        self.checked = Instant::now();
        let now = folder_id(&self.dir);
        if now == self.folder {
            return;
        }
        let Some(id) = now else {
            tracing::error!(dir = %self.dir.display(), "the tasks folder was removed: no task file is read until it is back");
            self.folder = None;
            return;
        };
        let _ = self.notify.unwatch(&self.dir);
        if let Err(e) = self.notify.watch(&self.dir, RecursiveMode::NonRecursive) {
            tracing::error!(dir = %self.dir.display(), error = %e, "cannot watch the new tasks folder; trying again");
            return;
        }
        tracing::warn!(dir = %self.dir.display(), "the tasks folder was replaced: watching the new one");
        self.folder = Some(id);
        self.startup();
    }

    fn arm(&mut self, path: PathBuf, now: bool) {
        self.arm_written(path, now, false);
    }

    /// Arm `path`; `open` when the event was a write to a file not closed since.
    fn arm_written(&mut self, path: PathBuf, now: bool, open: bool) {
        let t = Instant::now();
        let due = if now { t } else { t + self.debounce };
        let sig = signature(&path);
        self.pending.insert(
            path,
            Pending {
                due,
                sig,
                deferred: false,
                open,
                last_write: t,
            },
        );
    }

    fn on_event(&mut self, ev: notify::Event) {
        let closed = matches!(
            ev.kind,
            EventKind::Access(AccessKind::Close(AccessMode::Write))
        );
        if matches!(ev.kind, EventKind::Access(_)) && !closed {
            return;
        }
        for p in ev.paths {
            if p.parent() != Some(self.dir.as_path()) {
                continue;
            }
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                if self.unreadable_names.insert(p.clone()) {
                    tracing::warn!(file = %p.display(), "a file name that is not UTF-8 is never read: rename the file");
                }
                continue;
            };
            if ignored(name) {
                continue;
            }
            // A samples or graph file is debounced like a task file: its tasks are read once
            // it is complete, not at every write. A write to a file not yet closed waits for
            // the close (or a long quiet): rows written slowly are no partial versions.
            // (A creation alone is no write: folders, links and hard links are made whole.)
            let open = !closed
                && matches!(
                    ev.kind,
                    EventKind::Modify(ModifyKind::Data(_)) | EventKind::Modify(ModifyKind::Any)
                );
            if is_task_file(&p) {
                // Its own change: what it reads is what its new content names.
                self.deps.remove(&p);
            }
            self.arm_written(p, closed, open);
        }
    }

    fn flush_due(&mut self) {
        let now = Instant::now();
        let mut due: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(k, _)| k.clone())
            .collect();
        // Files that exist first: a renamed task file's new name takes its task over before
        // the old name's removal is handled.
        due.sort_by_cached_key(|p| !p.exists());
        for path in due {
            let Some(p) = self.pending.remove(&path) else {
                continue;
            };
            let sig = signature(&path);
            if sig != p.sig {
                // Still being written: wait for another quiet period.
                self.pending.insert(
                    path,
                    Pending {
                        due: now + self.debounce,
                        sig,
                        deferred: false,
                        last_write: now,
                        ..p
                    },
                );
                continue;
            }
            if p.open && sig.is_some() && now < p.last_write + OPEN_QUIET {
                // Written and still open: its close reads it (or a long quiet).
                self.pending.insert(
                    path,
                    Pending {
                        due: (now + self.debounce).min(p.last_write + OPEN_QUIET),
                        ..p
                    },
                );
                continue;
            }
            if !is_task_file(&path) {
                // A samples or graph file is complete: the task files that read it, or may
                // (one pending already, being written, is left to come due by itself).
                for f in self.task_files() {
                    if !self.pending.contains_key(&f) && self.may_read(&f, &path) {
                        self.arm(f, true);
                    }
                }
                continue;
            }
            let waits_for = sig.is_some().then(|| {
                self.pending
                    .keys()
                    .find(|q| !is_task_file(q) && q.exists() && self.may_read(&path, q))
            });
            if let Some(q) = waits_for.flatten() {
                // A file it reads (or may) is still being written: read it once that file is
                // complete, which arms it again. (One gone, renamed away, is no reason to wait.)
                tracing::debug!(file = %path.display(), waiting_for = %q.display(), "task file waits for a file it may read");
                continue;
            }
            if sig.is_none() && !p.deferred {
                // A vanished task file waits, once, for the task files pending beside it: the
                // new name of a rename may come due a moment later.
                let last = self
                    .pending
                    .iter()
                    .filter(|(f, _)| is_task_file(f) && f.exists())
                    .map(|(_, q)| q.due)
                    .max();
                if let Some(last) = last {
                    self.pending.insert(
                        path,
                        Pending {
                            due: last.max(now),
                            deferred: true,
                            open: false,
                            ..p
                        },
                    );
                    continue;
                }
            }
            self.process(&path);
        }
    }

    fn process(&mut self, path: &Path) {
        let err_file = error_path(path);
        self.deps.remove(path);
        // A symlink to nothing is a file in the folder that cannot be read (reported, its task
        // kept, as any unreadable file), not a deleted one.
        let dangling = path
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink());
        if !path.exists() && !dangling {
            let _ = std::fs::remove_file(&err_file);
            self.reported.remove(path);
            self.conflicts.remove(path);
            self.retire(path, None, "the task file was deleted");
            return;
        }
        self.metrics.read.inc();
        let spec = match taskfile::load(path, &self.limits) {
            Ok(spec) => spec,
            Err(e) => {
                self.conflicts.remove(path);
                return self.reject(path, &e.to_string(), &ErrorReport::from(&e));
            }
        };
        self.deps
            .insert(path.to_path_buf(), files_read(path, &spec));
        let mut recorded = self.store.record_task(&spec, path);
        let mut renamed = false;
        if let Err(StoreError::NameTaken { file, .. }) = &recorded {
            // The owner was renamed or deleted and its event is not processed yet, or it is
            // not in this folder at all (a state folder copied or restored from another
            // daemon's, or a tasks folder moved: the store names the other folder's file):
            // take over. The task goes on under this file, its searches too (no retirement).
            // So too when the owner declares another name now (two task files that swapped
            // names, each read while the other still held its new name: neither would ever
            // have had it).
            let owner = PathBuf::from(file);
            if !owner.exists()
                || owner.parent() != Some(self.dir.as_path())
                || taskfile::declared_name(&owner, &self.limits).is_some_and(|n| n != spec.name)
            {
                if let Err(e) = self.store.mark_removed(&owner, None) {
                    tracing::error!(file = %owner.display(), error = %e, "marking a task removed");
                }
                recorded = self.store.record_task(&spec, path);
                renamed = true;
            }
        }
        match recorded {
            Ok((rec, what)) => {
                self.conflicts.remove(path);
                self.reported.remove(path);
                if err_file.exists() {
                    let _ = std::fs::remove_file(&err_file);
                }
                if what != Recorded::Unchanged {
                    // The file may have defined another task until now: that name is retired.
                    let why = format!("its task file now defines task '{}'", rec.name);
                    self.retire(path, Some(&rec.name), &why);
                }
                if what == Recorded::Unchanged {
                    tracing::debug!(task = %rec.name, file = %path.display(), "task file re-read: unchanged");
                    return;
                }
                self.metrics.accepted.inc();
                if let (Some(s), Recorded::Restored, TaskStatus::Ready, Some(model)) =
                    (&self.searches, what, rec.status, &rec.model)
                {
                    match s.ensure_task_search(&spec, model) {
                        Ok(Some(search)) => {
                            tracing::info!(task = %rec.name, search = %search.id, "the restored task's search was created")
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::error!(task = %rec.name, error = %e, "creating the restored task's search")
                        }
                    }
                }
                if let (Some(jobs), TaskStatus::Queued) = (&self.jobs, rec.status) {
                    jobs.submit(Job {
                        task: rec.name.clone(),
                        version: rec.spec_hash.clone(),
                        interrupted: false,
                    });
                }
                let what = match what {
                    Recorded::New => "new task",
                    Recorded::NewVersion => "new version",
                    Recorded::Restored if renamed => "the task's file was renamed",
                    Recorded::Restored => "task restored",
                    Recorded::Unchanged => unreachable!("returned above"),
                };
                tracing::info!(task = %rec.name, version = %rec.spec_hash, samples = spec.samples.len(), status = ?rec.status, file = %path.display(), "task file accepted: {what}");
            }
            Err(e @ StoreError::NameTaken { .. }) => {
                self.conflicts.insert(path.to_path_buf(), spec.name.clone());
                let report = ErrorReport {
                    file: path.to_path_buf(),
                    line: None,
                    field: Some("name".into()),
                };
                self.reject(path, &e.to_string(), &report)
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "recording a valid task file failed")
            }
        }
    }

    /// Mark the tasks `source` defined as removed, but `keep` (results kept, their searches
    /// cancelled), and read again the files that were waiting for one of those names.
    fn retire(&mut self, source: &Path, keep: Option<&str>, why: &str) {
        let gone = match self.store.mark_removed(source, keep) {
            Ok(gone) => gone,
            Err(e) => {
                tracing::error!(file = %source.display(), error = %e, "marking a task removed");
                return;
            }
        };
        for t in gone {
            // A task the file gave up for another name that a second task file now defines as
            // it stands, same version (two files that swapped contents), moves to that file:
            // its searches go on, and that file is read now, to take it over.
            let heir = keep.and_then(|_| {
                self.task_files().into_iter().find(|f| {
                    f != source
                        && taskfile::declared_name(f, &self.limits).as_deref()
                            == Some(t.name.as_str())
                        && taskfile::load(f, &self.limits).is_ok_and(|s| s.hash == t.spec_hash)
                })
            });
            if let Some(heir) = heir {
                tracing::info!(task = %t.name, file = %source.display(), to = %heir.display(), "task file no longer declares the task; another one does, which is read now");
                if !self.pending.contains_key(&heir) {
                    self.arm(heir, true);
                }
                continue;
            }
            self.metrics.removed.inc();
            tracing::info!(task = %t.name, file = %source.display(), "task marked removed ({why}), results kept");
            if let Some(s) = &self.searches {
                let n = s.cancel_task(&t.name, why);
                if n > 0 {
                    tracing::info!(task = %t.name, searches = n, "its searches stopped, results kept");
                }
            }
            let waiting: Vec<PathBuf> = self
                .conflicts
                .iter()
                .filter(|(_, name)| **name == t.name)
                .map(|(p, _)| p.clone())
                .collect();
            for p in waiting {
                tracing::info!(task = %t.name, file = %p.display(), "the name is free: reading the file that asked for it");
                self.arm(p, true);
            }
        }
    }

    fn reject(&mut self, path: &Path, message: &str, r: &ErrorReport) {
        let mut text = format!("file: {}\n", r.file.display());
        if let Some(l) = r.line {
            text.push_str(&format!("line: {l}\n"));
        }
        if let Some(f) = &r.field {
            text.push_str(&format!("field: {f}\n"));
        }
        text.push_str(&format!("error: {message}\n"));
        if r.file != path {
            text.push_str(&format!("task file: {}\n", path.display()));
        }
        let target = error_path(path);
        if self.reported.get(path) == Some(&text) && target.exists() {
            // Read again (another file changed) and refused for the same reason: reported
            // already, once is enough.
            tracing::debug!(file = %path.display(), "task file still rejected, for the same reason");
            return;
        }
        self.metrics.rejected.inc();
        tracing::warn!(file = %path.display(), error = %message, "task file rejected");
        self.reported.insert(path.to_path_buf(), text.clone());
        // Written beside, then renamed: readers never see half a report.
        let tmp = self.dir.join(format!(
            ".{}.tmp",
            target.file_name().and_then(|n| n.to_str()).unwrap_or("x")
        ));
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &target)) {
            tracing::error!(file = %target.display(), error = %e, "cannot write the .error file");
        }
    }
}

/// The files a task file read (its samples file, its graph files), as paths the watcher's
/// events name (`.` components dropped).
fn files_read(task_file: &Path, spec: &taskfile::TaskSpec) -> Vec<PathBuf> {
    let dir = task_file.parent().unwrap_or(Path::new(""));
    let mut v: Vec<PathBuf> = spec
        .files()
        .into_iter()
        .flat_map(|rel| event_paths(&dir.join(rel)))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// What a task file not accepted as it stands reads, as far as its text says: the samples file
/// it names (with `event_paths`), for a built-in space; `None` (anything) when that is unknown:
/// unreadable or unparsable text, no samples path, or `space = "graph"` (whose graph files
/// only the samples file names).
fn named_reads(task_file: &Path, limits: &Limits) -> Option<Vec<PathBuf>> {
    // Not a plain `read_to_string`: a FIFO named `*.toml` would block the watcher for good.
    let mut text = String::new();
    taskfile::open_regular(task_file)
        .ok()?
        .take(limits.max_toml_bytes + 1)
        .read_to_string(&mut text)
        .ok()?;
    if text.len() as u64 > limits.max_toml_bytes {
        return None;
    }
    let v: toml::Table = text.parse().ok()?;
    if v.get("space").and_then(|s| s.as_str()) == Some("graph") {
        return None;
    }
    let rel = v.get("samples")?.as_str()?;
    Some(event_paths(&task_file.parent()?.join(rel)))
}

/// The paths an event about file `p` may name: `p` as written (`.` dropped) and, when it goes
/// through `..` or a symlink, the file it resolves to.
fn event_paths(p: &Path) -> Vec<PathBuf> {
    let lexical: PathBuf = p.components().collect();
    let mut v = vec![lexical];
    if let Ok(c) = p.canonicalize() {
        if c != v[0] {
            v.push(c);
        }
    }
    v
}

struct ErrorReport {
    file: PathBuf,
    line: Option<usize>,
    field: Option<String>,
}

impl From<&TaskFileError> for ErrorReport {
    fn from(e: &TaskFileError) -> ErrorReport {
        ErrorReport {
            file: e.file().to_path_buf(),
            line: e.line(),
            field: e.field().map(str::to_string),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_names() {
        for n in [".x.toml", "x.toml~", "x.toml.swp", "x.tmp", "x.toml.error"] {
            assert!(ignored(n), "{n}");
        }
        assert!(!ignored("x.toml"));
        assert_eq!(
            error_path(Path::new("/a/x.toml")),
            PathBuf::from("/a/x.toml.error")
        );
    }

    fn wait_for(mut f: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A state folder with an empty `tasks/` holding `s.csv`, two labelled NB-201 networks.
    /// The error report `err`, once the watcher has written it.
    fn error_report(err: &Path) -> String {
        assert!(wait_for(|| err.exists()), "no report {}", err.display());
        std::fs::read_to_string(err).unwrap()
    }

    fn folder_with_samples() -> (tempfile::TempDir, PathBuf) {
        let state = tempfile::tempdir().unwrap();
        let tasks = state.path().join("tasks");
        std::fs::create_dir(&tasks).unwrap();
        let csv = "arch,value\n\
            |avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|,81.9\n\
            |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|,90.39\n";
        std::fs::write(tasks.join("s.csv"), csv).unwrap();
        (state, tasks)
    }

    /// An NB-201 CIFAR-10 task file defining `name`, its samples in `samples`.
    fn task_toml(name: &str, samples: &str) -> String {
        format!(
            "name = \"{name}\"\nspace = \"nb201\"\nhead = \"cifar10\"\nsamples = \"{samples}\"\n"
        )
    }

    /// A watcher on `tasks` (50 ms debounce, no jobs or searches) and its metrics.
    fn watch(tasks: &Path, store: &Store) -> (Watcher, Metrics) {
        watch_with(tasks, store, Duration::from_millis(50))
    }

    fn watch_with(tasks: &Path, store: &Store, debounce: Duration) -> (Watcher, Metrics) {
        let m = Metrics::register(&Registry::new()).unwrap();
        let cfg = WatchConfig {
            dir: tasks.to_path_buf(),
            debounce,
            limits: Limits::default(),
        };
        let w = Watcher::start(cfg, store.clone(), m.clone(), None, None).unwrap();
        (w, m)
    }

    #[test]
    fn picks_up_rejects_accepts_and_removes() {
        let (state, tasks) = folder_with_samples();
        let good = &task_toml("a", "s.csv");
        std::fs::write(tasks.join("a.toml"), good).unwrap();
        let store = Store::open(state.path()).unwrap();
        let (w, m) = watch(&tasks, &store);
        assert!(
            wait_for(|| store.task("a").unwrap().is_some()),
            "start-up pick-up"
        );
        std::fs::write(
            tasks.join("b.toml"),
            good.replace("nb201", "nb999").replace("\"a\"", "\"b\""),
        )
        .unwrap();
        let err = tasks.join("b.toml.error");
        let report = error_report(&err);
        assert!(
            report.contains("field: space") && report.contains("b.toml"),
            "{report}"
        );
        assert!(m.rejected.get() >= 1);
        // Another file changing reads it again: the same refusal is not reported again.
        let (r0, mtime) = (
            m.rejected.get(),
            std::fs::metadata(&err).unwrap().modified().unwrap(),
        );
        std::fs::write(tasks.join("notes.txt"), "x").unwrap();
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(m.rejected.get(), r0);
        assert_eq!(std::fs::metadata(&err).unwrap().modified().unwrap(), mtime);
        // Fixing the file removes the report.
        std::fs::write(tasks.join("b.toml"), good.replace("\"a\"", "\"b\"")).unwrap();
        assert!(wait_for(
            || !err.exists() && store.task("b").unwrap().is_some()
        ));
        // A renamed task file keeps its task (whatever order the two events are handled in).
        std::fs::rename(tasks.join("b.toml"), tasks.join("b2.toml")).unwrap();
        assert!(wait_for(|| store
            .task("b")
            .unwrap()
            .is_some_and(
                |t| t.source.ends_with("b2.toml") && t.removed_at.is_none()
            )));
        assert!(!tasks.join("b2.toml.error").exists());
        // Ignored files are never read.
        std::fs::write(tasks.join(".hidden.toml"), "garbage").unwrap();
        std::fs::write(tasks.join("c.toml.swp"), "garbage").unwrap();
        std::fs::remove_file(tasks.join("a.toml")).unwrap();
        assert!(wait_for(|| store
            .task("a")
            .unwrap()
            .unwrap()
            .removed_at
            .is_some()));
        assert!(!tasks.join(".hidden.toml.error").exists());
        w.stop();
        assert_eq!(store.tasks().unwrap().len(), 2);
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_named_like_a_task_file_is_reported_and_blocks_nothing() {
        let (state, tasks) = folder_with_samples();
        let fifo = tasks.join("evil.toml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        let store = Store::open(state.path()).unwrap();
        let (w, _m) = watch(&tasks, &store);
        let report = error_report(&tasks.join("evil.toml.error"));
        assert!(report.contains("not a regular file"), "{report}");
        // Every later change reads the files not accepted again, the FIFO among them: none of
        // those reads may wait for a writer.
        for name in ["a", "b"] {
            // A new samples file first: which waiting task files read it is asked of each.
            let csv = format!("{name}.csv");
            std::fs::copy(tasks.join("s.csv"), tasks.join(&csv)).unwrap();
            std::fs::write(tasks.join(format!("{name}.toml")), task_toml(name, &csv)).unwrap();
            assert!(
                wait_for(|| store.task(name).unwrap().is_some()),
                "{name} after the FIFO"
            );
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            w.stop();
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(30)).is_ok(),
            "the watcher did not stop"
        );
    }

    #[test]
    fn a_renamed_task_file_never_retires_its_task() {
        let (state, tasks) = folder_with_samples();
        let good = &task_toml("a", "s.csv");
        std::fs::write(tasks.join("a.toml"), good).unwrap();
        let store = Store::open(state.path()).unwrap();
        // A debounce far longer than the 15 ms between the two steps below, even on a loaded
        // machine.
        let (w, m) = watch_with(&tasks, &store, Duration::from_millis(400));
        let source_is = |f: &str| {
            let f = f.to_string();
            let store = store.clone();
            move || {
                store
                    .task("a")
                    .unwrap()
                    .is_some_and(|t| t.source.ends_with(&f) && t.removed_at.is_none())
            }
        };
        assert!(wait_for(source_is("a.toml")));
        // A plain rename, then one through a name the watcher does not take for a task file,
        // whose new name comes due after the old one: the old name's removal waits for it.
        std::fs::rename(tasks.join("a.toml"), tasks.join("a2.toml")).unwrap();
        assert!(wait_for(source_is("a2.toml")));
        // The claim holds for two renames within the debounce; on a machine so loaded that
        // this thread slept through most of it, the task was rightly retired meanwhile, and
        // the step is tried again from where it stands.
        let mut from = "a2.toml".to_string();
        for attempt in 1.. {
            let to = format!("a{}.toml", attempt + 2);
            let removed = m.removed.get();
            let began = std::time::Instant::now();
            std::fs::rename(tasks.join(&from), tasks.join("a2.bak")).unwrap();
            std::thread::sleep(Duration::from_millis(15));
            std::fs::rename(tasks.join("a2.bak"), tasks.join(&to)).unwrap();
            let gap = began.elapsed();
            assert!(wait_for(source_is(&to)));
            std::thread::sleep(Duration::from_millis(900));
            if gap < Duration::from_millis(200) {
                w.stop();
                assert_eq!(m.removed.get(), removed, "the task was never retired");
                assert!(source_is(&to)());
                break;
            }
            assert!(
                attempt < 5,
                "the two renames took {gap:?} apart {attempt} times"
            );
            from = to;
        }
    }

    #[test]
    fn a_store_restored_beside_a_copied_folder_takes_the_copies() {
        // Daemon A's folder defines "a" and "gone"; its store is exported and imported into B,
        // whose folder has a copy of a.toml only. A's files stay where they are.
        let (a_state, a_tasks) = folder_with_samples();
        std::fs::write(a_tasks.join("a.toml"), task_toml("a", "s.csv")).unwrap();
        std::fs::write(a_tasks.join("gone.toml"), task_toml("gone", "s.csv")).unwrap();
        let mut export = Vec::new();
        {
            let store = Store::open(a_state.path()).unwrap();
            let (w, _) = watch(&a_tasks, &store);
            assert!(wait_for(|| store.tasks().unwrap().len() == 2));
            w.stop();
            store.export(&mut export).unwrap();
        }
        let (b_state, b_tasks) = folder_with_samples();
        std::fs::copy(a_tasks.join("a.toml"), b_tasks.join("a.toml")).unwrap();
        let store = Store::open(b_state.path()).unwrap();
        store.import(&export[..]).unwrap();
        let (w, m) = watch(&b_tasks, &store);
        let b_dir = b_tasks.canonicalize().unwrap();
        assert!(wait_for(|| store.task("a").unwrap().is_some_and(
            |t| Path::new(&t.source).parent() == Some(b_dir.as_path()) && t.removed_at.is_none()
        )));
        assert!(wait_for(|| store
            .task("gone")
            .unwrap()
            .is_some_and(|t| t.removed_at.is_some())));
        w.stop();
        assert!(!b_tasks.join("a.toml.error").exists());
        assert_eq!(m.removed.get(), 1, "only the task no file here defines");
        assert!(a_tasks.join("gone.toml").exists() && a_tasks.join("a.toml").exists());
    }

    /// 12 distinct NB-201 networks with made-up labels, as a samples CSV (the watcher does
    /// not look the labels up).
    fn rows(n: usize) -> Vec<String> {
        let ops = [
            "skip_connect",
            "nor_conv_1x1",
            "nor_conv_3x3",
            "avg_pool_3x3",
        ];
        (0..n)
            .map(|k| {
                let (a, b) = (ops[k % 4], ops[(k / 4) % 4]);
                format!("|{a}~0|+|{b}~0|{a}~1|+|{b}~0|{a}~1|{b}~2|,{}\n", 50 + k)
            })
            .collect()
    }

    #[test]
    fn a_samples_file_still_being_written_is_read_once_complete() {
        use std::io::Write;
        let (state, tasks) = folder_with_samples();
        let good = &task_toml("a", "s.csv");
        std::fs::write(tasks.join("a.toml"), good).unwrap();
        let store = Store::open(state.path()).unwrap();
        let (w, m) = watch(&tasks, &store);
        // The record is written before the acceptance is counted: wait for both.
        assert!(wait_for(
            || store.task("a").unwrap().is_some() && m.accepted.get() == 1
        ));
        let accepted = m.accepted.get();
        // Rewritten row by row, every 80 ms (the debounce is 50 ms), the file open throughout.
        let mut f = std::fs::File::create(tasks.join("s.csv")).unwrap();
        f.write_all(b"arch,value\n").unwrap();
        for r in rows(12) {
            std::thread::sleep(Duration::from_millis(80));
            f.write_all(r.as_bytes()).unwrap();
            f.flush().unwrap();
        }
        drop(f);
        assert!(wait_for(|| store
            .task("a")
            .unwrap()
            .is_some_and(|t| t.versions.len() == 2)));
        std::thread::sleep(Duration::from_millis(300));
        w.stop();
        let t = store.task("a").unwrap().unwrap();
        assert_eq!(
            t.versions.iter().map(|v| v.samples).collect::<Vec<_>>(),
            [2, 12],
            "no version of a half-written file"
        );
        assert_eq!(m.accepted.get(), accepted + 1);
    }

    #[test]
    fn a_changed_samples_file_reads_again_the_tasks_that_use_it_only() {
        let (state, tasks) = folder_with_samples();
        std::fs::copy(tasks.join("s.csv"), tasks.join("t.csv")).unwrap();
        let task = |name: &str, csv: &str| task_toml(name, &format!("./{csv}"));
        std::fs::write(tasks.join("a.toml"), task("a", "s.csv")).unwrap();
        std::fs::write(tasks.join("b.toml"), task("b", "t.csv")).unwrap();
        std::fs::write(tasks.join("bad.toml"), "name = ").unwrap();
        let store = Store::open(state.path()).unwrap();
        let (w, m) = watch(&tasks, &store);
        assert!(wait_for(|| store.task("a").unwrap().is_some()
            && store.task("b").unwrap().is_some()
            && m.rejected.get() == 1));
        let reads = m.read.get();
        let mut csv = std::fs::read_to_string(tasks.join("t.csv")).unwrap();
        csv.push_str(&rows(1)[0]);
        std::fs::write(tasks.join("t.csv"), csv).unwrap();
        assert!(wait_for(|| store
            .task("b")
            .unwrap()
            .is_some_and(|t| t.versions.len() == 2)));
        std::thread::sleep(Duration::from_millis(300));
        w.stop();
        // b, which reads t.csv, and bad.toml, which may (unknown): not a.
        assert_eq!(m.read.get(), reads + 2);
        assert_eq!(store.task("a").unwrap().unwrap().versions.len(), 1);
    }

    #[test]
    fn files_being_written_are_not_read_when_another_completes() {
        use std::io::Write;
        let (state, tasks) = folder_with_samples();
        std::fs::create_dir(tasks.join("sub")).unwrap();
        // Its samples named through `sub/..`: a change to s.csv still reads it again.
        let a = task_toml("a", "sub/../s.csv");
        std::fs::write(tasks.join("a.toml"), a).unwrap();
        let store = Store::open(state.path()).unwrap();
        let (w, m) = watch(&tasks, &store);
        assert!(wait_for(|| store.task("a").unwrap().is_some()));
        let mut csv = std::fs::read_to_string(tasks.join("s.csv")).unwrap();
        csv.push_str(&rows(1)[0]);
        std::fs::write(tasks.join("s.csv"), &csv).unwrap();
        assert!(wait_for(|| store
            .task("a")
            .unwrap()
            .is_some_and(|t| t.versions.len() == 2)));
        // A task file written and still open, and a samples file likewise, while another
        // file completes: neither is read before it is closed.
        let mut toml = std::fs::File::create(tasks.join("p.toml")).unwrap();
        toml.write_all(b"name = \"p\"\nspace = \"nb201\"\n")
            .unwrap();
        toml.flush().unwrap();
        let mut q = std::fs::File::create(tasks.join("q.csv")).unwrap();
        q.write_all(b"arch,value\n").unwrap();
        q.write_all(rows(2)[1].as_bytes()).unwrap();
        q.flush().unwrap();
        std::fs::write(tasks.join("notes.txt"), "x").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(store.task("p").unwrap().is_none());
        assert!(
            !tasks.join("p.toml.error").exists(),
            "a half-written file is not refused"
        );
        toml.write_all(b"head = \"cifar10\"\nsamples = \"q.csv\"\n")
            .unwrap();
        drop(toml);
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            store.task("p").unwrap().is_none(),
            "its samples are still open"
        );
        for r in rows(6).iter().skip(2) {
            q.write_all(r.as_bytes()).unwrap();
        }
        drop(q);
        assert!(wait_for(|| store.task("p").unwrap().is_some()));
        std::thread::sleep(Duration::from_millis(200));
        w.stop();
        let p = store.task("p").unwrap().unwrap();
        assert_eq!(
            p.versions.iter().map(|v| v.samples).collect::<Vec<_>>(),
            [5]
        );
        assert_eq!(m.rejected.get(), 0);
    }

    #[test]
    fn a_folder_made_or_a_file_deleted_beside_a_file_being_written_waits_for_nothing() {
        use std::io::Write;
        let (state, tasks) = folder_with_samples();
        std::fs::write(tasks.join("a.toml"), task_toml("a", "s.csv")).unwrap();
        let store = Store::open(state.path()).unwrap();
        let (w, _m) = watch(&tasks, &store);
        assert!(wait_for(|| store.task("a").unwrap().is_some()));
        // A folder made (no write follows a creation) does not hold a new task file back.
        std::fs::create_dir(tasks.join("d")).unwrap();
        std::fs::write(tasks.join("b.toml"), task_toml("b", "s.csv")).unwrap();
        let t0 = Instant::now();
        assert!(wait_for(|| store.task("b").unwrap().is_some()));
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        // A task file deleted while the file it reads is being written is retired all the same;
        // an unrelated file kept open holds back no task file that does not read it.
        let mut log = std::fs::File::create(tasks.join("app.log")).unwrap();
        log.write_all(b"x\n").unwrap();
        let mut csv = std::fs::OpenOptions::new()
            .append(true)
            .open(tasks.join("s.csv"))
            .unwrap();
        csv.write_all(rows(1)[0].as_bytes()).unwrap();
        csv.flush().unwrap();
        std::fs::remove_file(tasks.join("a.toml")).unwrap();
        assert!(wait_for(|| store
            .task("a")
            .unwrap()
            .is_some_and(|t| t.removed_at.is_some())));
        std::fs::write(
            tasks.join("s2.csv"),
            std::fs::read(tasks.join("s.csv")).unwrap(),
        )
        .unwrap();
        std::fs::write(tasks.join("c.toml"), task_toml("c", "s2.csv")).unwrap();
        assert!(wait_for(|| store.task("c").unwrap().is_some()));
        drop((log, csv));
        w.stop();
    }

    #[test]
    fn a_replaced_folder_is_watched_again() {
        let (state, tasks) = folder_with_samples();
        let task = |name: &str| task_toml(name, "s.csv");
        std::fs::write(tasks.join("a.toml"), task("a")).unwrap();
        let store = Store::open(state.path()).unwrap();
        let (w, _m) = watch(&tasks, &store);
        assert!(wait_for(|| store.task("a").unwrap().is_some()));
        let csv = std::fs::read(tasks.join("s.csv")).unwrap();
        // Moved away (the watch follows the old folder), and a new one put in its place.
        std::fs::rename(&tasks, state.path().join("old-tasks")).unwrap();
        std::fs::create_dir(&tasks).unwrap();
        std::fs::write(tasks.join("s.csv"), &csv).unwrap();
        std::fs::write(tasks.join("b.toml"), task("b")).unwrap();
        assert!(wait_for(|| store.task("b").unwrap().is_some()));
        // a.toml is not in the new folder: its task is marked removed, as at a start-up.
        assert!(wait_for(|| store
            .task("a")
            .unwrap()
            .is_some_and(|t| t.removed_at.is_some())));
        // And files dropped later are seen too.
        std::fs::write(tasks.join("c.toml"), task("c")).unwrap();
        assert!(wait_for(|| store.task("c").unwrap().is_some()));
        w.stop();
    }

    #[test]
    fn a_symlink_to_nothing_is_reported_and_its_task_kept() {
        let (state, tasks) = folder_with_samples();
        std::fs::write(tasks.join("real.txt"), task_toml("a", "s.csv")).unwrap();
        std::os::unix::fs::symlink("real.txt", tasks.join("a.toml")).unwrap();
        std::os::unix::fs::symlink("nothing.txt", tasks.join("b.toml")).unwrap();
        let store = Store::open(state.path()).unwrap();
        let (w, _) = watch(&tasks, &store);
        // A link to nothing gets a report naming its target (it was ignored without a word).
        let report = error_report(&tasks.join("b.toml.error"));
        assert!(
            report.contains("a symlink to nothing.txt, which does not exist"),
            "{report}"
        );
        assert!(wait_for(|| store.task("a").unwrap().is_some()));
        w.stop();
        // A link whose target went while the daemon was down is unreadable, not deleted: its
        // task stays (it was marked removed).
        std::fs::remove_file(tasks.join("real.txt")).unwrap();
        let (w, m) = watch(&tasks, &store);
        let report = error_report(&tasks.join("a.toml.error"));
        w.stop();
        assert!(report.contains("symlink to real.txt"), "{report}");
        assert!(store.task("a").unwrap().unwrap().removed_at.is_none());
        assert_eq!(m.removed.get(), 0);
    }

    #[test]
    fn two_task_files_that_swap_contents_keep_both_tasks() {
        let (state, tasks) = folder_with_samples();
        let task = |name: &str, head: &str| {
            format!(
                "name = \"{name}\"\nspace = \"nb201\"\nhead = \"{head}\"\nsamples = \"s.csv\"\n"
            )
        };
        std::fs::write(tasks.join("a.toml"), task("x", "cifar10")).unwrap();
        std::fs::write(tasks.join("b.toml"), task("y", "cifar100")).unwrap();
        let store = Store::open(state.path()).unwrap();
        let (w, m) = watch(&tasks, &store);
        let at = |name: &str, file: &str| {
            store
                .task(name)
                .unwrap()
                .is_some_and(|t| t.source.ends_with(file) && t.removed_at.is_none())
        };
        assert!(wait_for(|| at("x", "a.toml") && at("y", "b.toml")));
        let versions = |name: &str| store.task(name).unwrap().unwrap().spec_hash;
        let (x, y) = (versions("x"), versions("y"));
        // Each file is read while the other still holds the name it now declares: before the
        // fix, each was refused for the other's name, for good.
        std::fs::write(tasks.join("a.toml"), task("y", "cifar100")).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(tasks.join("b.toml"), task("x", "cifar10")).unwrap();
        assert!(
            wait_for(|| at("x", "b.toml") && at("y", "a.toml")),
            "{:?} {:?}",
            store.task("x").unwrap(),
            std::fs::read_to_string(tasks.join("a.toml.error"))
        );
        std::thread::sleep(Duration::from_millis(300));
        w.stop();
        assert!(!tasks.join("a.toml.error").exists() && !tasks.join("b.toml.error").exists());
        // The same versions, moved: neither task was retired.
        assert_eq!((versions("x"), versions("y")), (x, y));
        assert_eq!(m.removed.get(), 0);
    }

    #[test]
    fn a_renamed_task_frees_its_old_name_for_the_file_waiting_for_it() {
        let (state, tasks) = folder_with_samples();
        let task = |name: &str, head: &str| {
            format!(
                "name = \"{name}\"\nspace = \"nb201\"\nhead = \"{head}\"\nsamples = \"s.csv\"\n"
            )
        };
        std::fs::write(tasks.join("a.toml"), task("x", "cifar10")).unwrap();
        let store = Store::open(state.path()).unwrap();
        let (w, m) = watch(&tasks, &store);
        assert!(wait_for(|| store.task("x").unwrap().is_some()));
        // b.toml asks for the name a.toml holds: rejected, naming the holder.
        std::fs::write(tasks.join("b.toml"), task("x", "cifar100")).unwrap();
        let err = tasks.join("b.toml.error");
        let report = error_report(&err);
        assert!(
            report.contains("field: name") && report.contains("a.toml"),
            "{report}"
        );
        // a.toml now defines y: x is retired, and b.toml takes it without being touched.
        std::fs::write(tasks.join("a.toml"), task("y", "cifar10")).unwrap();
        assert!(wait_for(|| {
            store.task("x").unwrap().is_some_and(|t| {
                t.source.ends_with("b.toml") && t.removed_at.is_none() && !err.exists()
            })
        }));
        let y = store.task("y").unwrap().unwrap();
        assert!(y.source.ends_with("a.toml") && y.removed_at.is_none());
        assert_eq!(m.removed.get(), 1, "x retired from a.toml once");
        // Deleting a.toml retires y alone.
        std::fs::remove_file(tasks.join("a.toml")).unwrap();
        assert!(wait_for(|| store
            .task("y")
            .unwrap()
            .is_some_and(|t| t.removed_at.is_some())));
        w.stop();
        assert!(store.task("x").unwrap().unwrap().removed_at.is_none());
        assert_eq!(m.removed.get(), 2);
    }
}
