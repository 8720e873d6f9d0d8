//! Task definition files: the TOML (plus a samples CSV, plus JSON graphs for `space = "graph"`)
//! that users drop into the watched folder or pass to `aiop finetune --task FILE.toml`.
//! The format is documented in `docs/task-format.md`.
//!
//! Invariants: [`load`] either returns a fully validated [`TaskSpec`] or one [`TaskFileError`]
//! naming the file at fault, and where it applies the line and the field. No file is read before
//! its size is checked against [`Limits`]; binary and non-UTF-8 files are rejected; every path a
//! task names is relative and resolves (symlinks included) inside the folder of its TOML. A spec
//! has at least two samples, no two of them the same network (however spelt), and only finite
//! labels of magnitude at most [`MAX_LABEL`], at least [`MIN_LABEL_SPREAD`] apart.
//! [`TaskSpec::hash`] depends on the normalised content only (not on file names, key order,
//! whitespace or architecture spelling), so it is the task's version.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::graph::{hash::GraphHash, json, Graph};
use crate::names::bare_key;
use crate::predictor::train::{FINETUNE_LR, RANK_WEIGHT};
use crate::search::{self, Algorithm};
use crate::spaces::{Arch, SpaceId, Task};

/// Longest task name.
pub const MAX_NAME_LEN: usize = 64;
/// Fewest labelled samples a task may have.
pub const MIN_SAMPLES: usize = 2;
/// Largest label magnitude. Fine-tuning squares labels and their differences (label
/// statistics, calibration, the blend), which must stay finite; a label near `f64::MAX` would
/// overflow them, so a task's labels are refused beyond ±1e100, far past any real metric.
pub const MAX_LABEL: f64 = 1e100;

/// The least spread (largest label minus smallest) a task's labels may have. Their spread sets
/// the scale of every prediction: labels all equal, or so close that the difference is
/// rounding, give a model that predicts nothing (its in-sample correlation is not even
/// defined).
pub const MIN_LABEL_SPREAD: f64 = 1e-9;

/// File size limits, checked before any byte is read.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_toml_bytes: u64,
    /// Samples CSV and each JSON graph file.
    pub max_samples_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_toml_bytes: 1 << 20,
            max_samples_bytes: 16 << 20,
        }
    }
}

/// Why a task file was rejected. Every variant names the file at fault (the TOML, the CSV or a
/// JSON graph); `field` is the TOML key or CSV column concerned.
#[derive(Debug, thiserror::Error)]
pub enum TaskFileError {
    /// A whole-file problem: unreadable, missing, too large, binary, not UTF-8, outside the folder;
    /// or a required key that is absent (it has no line).
    #[error("{}: {}{message}", file.display(), field_prefix(field))]
    File {
        file: PathBuf,
        field: Option<String>,
        message: String,
    },
    /// A problem at a line that no single field owns (TOML syntax, CSV structure).
    #[error("{}:{line}: {message}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        message: String,
    },
    /// A field (TOML key or CSV column) with a bad value.
    #[error("{}:{line}: field '{field}': {message}", file.display())]
    Field {
        file: PathBuf,
        line: usize,
        field: String,
        message: String,
    },
}

fn field_prefix(field: &Option<String>) -> String {
    field
        .as_ref()
        .map(|f| format!("field '{f}': "))
        .unwrap_or_default()
}

impl TaskFileError {
    pub fn file(&self) -> &Path {
        match self {
            TaskFileError::File { file, .. }
            | TaskFileError::Syntax { file, .. }
            | TaskFileError::Field { file, .. } => file,
        }
    }

    pub fn line(&self) -> Option<usize> {
        match self {
            TaskFileError::File { .. } => None,
            TaskFileError::Syntax { line, .. } | TaskFileError::Field { line, .. } => Some(*line),
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            TaskFileError::File { field, .. } => field.as_deref(),
            TaskFileError::Syntax { .. } => None,
            TaskFileError::Field { field, .. } => Some(field),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            TaskFileError::File { message, .. }
            | TaskFileError::Syntax { message, .. }
            | TaskFileError::Field { message, .. } => message,
        }
    }
}

/// What the networks of a task are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TaskSpace {
    /// A built-in space; graphs are built with the network head of `head`.
    Builtin { space: SpaceId, head: Task },
    /// Networks given as JSON graph files.
    Graph,
}

impl TaskSpace {
    pub fn name(&self) -> &'static str {
        match self {
            TaskSpace::Builtin { space, .. } => space.name(),
            TaskSpace::Graph => "graph",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Fine-tune the predictor on the samples (the default).
    Finetune,
    /// Use the pretrained predictor as is; samples only evaluate it.
    ZeroShot,
}

/// The optional `[search]` table. Unset fields take the search's own defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSpec {
    pub algorithm: Algorithm,
    pub budget: Option<u64>,
    pub population: Option<u64>,
    pub sample: Option<u64>,
    /// New candidates per generation. Absent from the version hash when unset (added later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u64>,
    pub max_mflops: Option<f64>,
    pub max_mparams: Option<f64>,
    pub seed: Option<u64>,
    /// Canonical architecture string to start from.
    pub start: Option<String>,
    pub tolerance: Option<f64>,
    /// FLOP reduction: most moves from the start. Absent from the version hash when unset
    /// (added later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radius: Option<u64>,
    /// FLOP reduction: the tolerance holds on both sides (the search's `two_sided`). Absent
    /// from the version hash when unset (added later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub two_sided: Option<bool>,
}

/// The optional `[finetune]` table: how the predictor is fine-tuned on the samples. Unset
/// fields take the defaults of [`FinetuneSpec::resolved`] (AIO-P's: at most 100 epochs,
/// batch 1, lr [`FINETUNE_LR`] = 1e-4, seed 0; the number of epochs chosen by cross-validation
/// on the samples).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_epochs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibrate: Option<bool>,
    /// The older spelling of `companion`: true is `choose`, false `off` (kept so that task
    /// files and stored task versions that use it still read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choose_transform: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub companion: Option<Companion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank_weight: Option<f64>,
}

/// What fine-tuning does with the base model's no-transform companion (the same encoder
/// pretrained without Eq. 5's FLOPs scaling), when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Companion {
    /// Fine-tune both (each for its own cross-validated length) and predict with a blend of
    /// their predictions, each standardised by its out-of-fold predictions on the samples and
    /// weighted by how well those rank the samples ([`crate::predictor::blend`], `wmeanz`).
    /// The default since session 10 (BENCHMARKS.md).
    Weighted,
    /// Fine-tune both (each for its own cross-validated length) and predict with the mean of
    /// their predictions in the task's units (the default of sessions 6–9).
    Average,
    /// Fine-tune whichever ranks the held-out samples better.
    Choose,
    /// The base model only (and what sidecars written before this setting existed mean).
    #[default]
    Off,
}

/// Fine-tuning settings with every default filled in.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Finetune {
    /// The number of epochs, or with `select_epochs` the most that may be chosen.
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    /// Choose the number of epochs (0 = zero-shot, up to `epochs`) by cross-validation on
    /// the samples ([`crate::predictor::select`]). False in sidecars written before it existed.
    #[serde(default)]
    pub select_epochs: bool,
    /// With `select_epochs`, map predictions to the task's units by a line fitted on the
    /// cross-validation's out-of-fold predictions ([`crate::predictor::calibrate`]; never
    /// changes their order). False in sidecars written before it existed.
    #[serde(default)]
    pub calibrate: bool,
    /// With `select_epochs`, what to do with the base model's no-transform companion (when
    /// there is one): blend it with the base model (`weighted`), average the two, choose
    /// between them, or leave it out.
    /// `off` in sidecars written before it existed.
    #[serde(default)]
    pub companion: Companion,
    /// Weight of the pairwise ranking term added to the squared error
    /// ([`crate::predictor::train::TrainConfig::rank_weight`]). 0 in sidecars written before
    /// it existed.
    #[serde(default)]
    pub rank_weight: f64,
}

impl FinetuneSpec {
    /// The settings, defaults filled in.
    pub fn resolved(&self) -> Finetune {
        Finetune {
            epochs: self.epochs.unwrap_or(100) as usize,
            batch_size: self.batch_size.unwrap_or(1) as usize,
            lr: self.lr.unwrap_or(FINETUNE_LR),
            seed: self.seed.unwrap_or(0),
            select_epochs: self.select_epochs.unwrap_or(true),
            calibrate: self.calibrate.unwrap_or(true),
            companion: self
                .companion
                .or(self.choose_transform.map(
                    |c| {
                        if c {
                            Companion::Choose
                        } else {
                            Companion::Off
                        }
                    },
                ))
                .unwrap_or(Companion::Weighted),
            rank_weight: self.rank_weight.unwrap_or(RANK_WEIGHT),
        }
    }
}

/// One network of a task.
#[derive(Debug, Clone, PartialEq)]
pub enum SampleInput {
    Arch(Arch),
    /// A JSON graph file, by its path relative to the task folder as written in the CSV.
    Graph {
        path: String,
        graph: Graph,
    },
}

/// One labelled network.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub input: SampleInput,
    pub value: f64,
    /// Line of the samples CSV it came from.
    pub line: usize,
}

impl Sample {
    /// The content key of the network: canonical architecture string, or graph hash.
    pub fn key(&self) -> String {
        match &self.input {
            SampleInput::Arch(a) => a.to_string(),
            SampleInput::Graph { graph, .. } => graph.hash().to_string(),
        }
    }
}

/// A validated task definition.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub name: String,
    pub space: TaskSpace,
    pub higher_is_better: bool,
    pub mode: Mode,
    /// The samples path as written in the TOML.
    pub samples_file: String,
    pub samples: Vec<Sample>,
    pub search: Option<SearchSpec>,
    /// The `[finetune]` table, when given.
    pub finetune: Option<FinetuneSpec>,
    /// Content hash of the normalised spec and samples: the task version (32 hex digits).
    pub hash: String,
}

#[derive(Serialize)]
struct Normalised<'a> {
    format: u32,
    name: &'a str,
    space: &'a TaskSpace,
    higher_is_better: bool,
    mode: Mode,
    search: &'a Option<SearchSpec>,
    /// Left out when unset, so that files written before the table existed keep their version.
    #[serde(skip_serializing_if = "Option::is_none")]
    finetune: &'a Option<FinetuneSpec>,
    samples: Vec<(String, f64)>,
}

impl TaskSpec {
    fn content_hash(&self) -> String {
        let n = Normalised {
            format: 1,
            name: &self.name,
            space: &self.space,
            higher_is_better: self.higher_is_better,
            mode: self.mode,
            search: &self.search,
            finetune: &self.finetune,
            samples: self.samples.iter().map(|s| (s.key(), s.value)).collect(),
        };
        let bytes = serde_json::to_vec(&n).expect("normalised spec serialises");
        format!(
            "{:032x}",
            xxhash_rust::xxh3::xxh3_128_with_seed(&bytes, 0x6169_6f70)
        )
    }

    /// A self-contained JSON copy of the spec (graphs inlined in the interchange format), what
    /// the store keeps per version so that jobs never re-read a file that may have changed.
    pub fn snapshot(&self) -> serde_json::Value {
        let samples: Vec<serde_json::Value> = self
            .samples
            .iter()
            .map(|s| match &s.input {
                SampleInput::Arch(a) => {
                    serde_json::json!({"arch": a.to_string(), "value": s.value, "line": s.line})
                }
                SampleInput::Graph { path, graph } => serde_json::json!({
                    "graph_file": path,
                    "graph": serde_json::from_str::<serde_json::Value>(&json::to_json(graph))
                        .unwrap_or(serde_json::Value::Null),
                    "value": s.value,
                    "line": s.line,
                }),
            })
            .collect();
        serde_json::json!({
            "name": self.name,
            "space": self.space,
            "higher_is_better": self.higher_is_better,
            "mode": self.mode,
            "search": self.search,
            "finetune": self.finetune,
            "samples_file": self.samples_file,
            "samples": samples,
            "hash": self.hash,
        })
    }
}

impl TaskSpec {
    /// The files the task reads besides its task file, as written (relative to the task file's
    /// folder): the samples file, then each graph file once.
    pub fn files(&self) -> Vec<&str> {
        let graphs = self.samples.iter().filter_map(|s| match &s.input {
            SampleInput::Graph { path, .. } => Some(path.as_str()),
            SampleInput::Arch(_) => None,
        });
        first_of_each(std::iter::once(self.samples_file.as_str()).chain(graphs))
    }

    /// [`TaskSpec::files`] of the spec a [`TaskSpec::snapshot`] holds, read from the snapshot
    /// as it is (without checking it as [`TaskSpec::from_snapshot`] does).
    pub fn snapshot_files(snapshot: &serde_json::Value) -> Vec<&str> {
        let graphs = snapshot["samples"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["graph_file"].as_str());
        first_of_each(snapshot["samples_file"].as_str().into_iter().chain(graphs))
    }

    /// Read back a [`TaskSpec::snapshot`], checking that its content still hashes to its
    /// version (a snapshot that does not is refused, never used).
    pub fn from_snapshot(v: &serde_json::Value) -> Result<TaskSpec, String> {
        fn field<T: for<'de> Deserialize<'de>>(
            v: &serde_json::Value,
            k: &str,
        ) -> Result<T, String> {
            serde_json::from_value(v.get(k).cloned().unwrap_or(serde_json::Value::Null))
                .map_err(|e| format!("snapshot field '{k}': {e}"))
        }
        let space: TaskSpace = field(v, "space")?;
        let rows: Vec<serde_json::Value> = field(v, "samples")?;
        let mut samples = Vec::with_capacity(rows.len());
        for (k, r) in rows.iter().enumerate() {
            let value: f64 = field(r, "value")?;
            let line = r.get("line").and_then(|l| l.as_u64()).unwrap_or(0) as usize;
            let input = match space {
                TaskSpace::Builtin { space, .. } => {
                    let a: String = field(r, "arch")?;
                    SampleInput::Arch(
                        Arch::parse(space, &a).map_err(|e| format!("snapshot sample {k}: {e}"))?,
                    )
                }
                TaskSpace::Graph => SampleInput::Graph {
                    path: field(r, "graph_file")?,
                    graph: json::from_json(
                        &r.get("graph").cloned().unwrap_or_default().to_string(),
                    )
                    .map_err(|e| format!("snapshot sample {k}: {e}"))?,
                },
            };
            samples.push(Sample { input, value, line });
        }
        let mut spec = TaskSpec {
            name: field(v, "name")?,
            space,
            higher_is_better: field(v, "higher_is_better")?,
            mode: field(v, "mode")?,
            samples_file: field(v, "samples_file")?,
            samples,
            search: field(v, "search")?,
            finetune: field(v, "finetune")?,
            hash: String::new(),
        };
        let want: String = field(v, "hash")?;
        spec.hash = spec.content_hash();
        if spec.hash != want {
            return Err(format!(
                "snapshot of task '{}' hashes to {}, not to its version {want}",
                spec.name, spec.hash
            ));
        }
        Ok(spec)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: Spanned<String>,
    space: Spanned<String>,
    head: Option<Spanned<String>>,
    samples: Spanned<String>,
    higher_is_better: Option<bool>,
    mode: Option<Spanned<String>>,
    search: Option<Spanned<RawSearch>>,
    finetune: Option<RawFinetune>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFinetune {
    epochs: Option<Spanned<i64>>,
    batch_size: Option<Spanned<i64>>,
    lr: Option<Spanned<f64>>,
    seed: Option<Spanned<i64>>,
    select_epochs: Option<bool>,
    calibrate: Option<bool>,
    choose_transform: Option<bool>,
    companion: Option<Spanned<String>>,
    rank_weight: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSearch {
    algorithm: Option<Spanned<String>>,
    budget: Option<Spanned<i64>>,
    population: Option<Spanned<i64>>,
    sample: Option<Spanned<i64>>,
    batch: Option<Spanned<i64>>,
    max_mflops: Option<Spanned<f64>>,
    max_mparams: Option<Spanned<f64>>,
    seed: Option<Spanned<i64>>,
    start: Option<Spanned<String>>,
    tolerance: Option<Spanned<f64>>,
    radius: Option<Spanned<i64>>,
    two_sided: Option<Spanned<bool>>,
}

/// 1-based line of a byte offset in `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Open `path` for reading when it is a regular file. Anything else is refused with
/// `ErrorKind::InvalidInput`, and the check is made on the opened file, which is opened without
/// blocking: a FIFO (which a plain open waits on until a writer comes, for ever in the
/// watcher's thread) or a device put in the file's place since it was last looked at is
/// refused too.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let f = options.open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(f)
}

/// Whether a task folder ignores a file name: hidden, an editor's backup or swap file, a
/// temporary file, an error report. The watcher reads no such file, and a submission may not
/// name one.
pub fn ignored(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".tmp")
        || name.ends_with(".error")
}

/// The task files (`*.toml`, not [`ignored`]) at the top level of the folder `dir`, sorted.
pub fn task_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "toml")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !ignored(n))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// The task name a task file declares, read without checking the rest of it: `None` when the
/// file cannot be read (not a regular file, too big, not UTF-8) or its TOML has no string
/// `name`. What it is for: telling which name a file claims now, before the watcher has read
/// it (a file being renamed or rewritten, a submission racing another).
pub fn declared_name(path: &Path, limits: &Limits) -> Option<String> {
    let text = read_text(path, limits.max_toml_bytes, None).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    table.get("name")?.as_str().map(str::to_string)
}

/// Read a whole text file after checking its size; binary or non-UTF-8 content is an error.
fn read_text(path: &Path, limit: u64, field: Option<&str>) -> Result<String, TaskFileError> {
    let err = |message: String| TaskFileError::File {
        file: path.to_path_buf(),
        field: field.map(str::to_string),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    if meta.len() > limit {
        return Err(err(format!(
            "file is {} bytes, over the limit of {limit} bytes",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    open_regular(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput => err(e.to_string()),
            _ => err(format!("cannot read: {e}")),
        })?;
    if bytes.len() as u64 > limit {
        return Err(err(format!(
            "file grew over the limit of {limit} bytes while being read"
        )));
    }
    if let Some(pos) = bytes.iter().position(|&b| b == 0) {
        return Err(err(format!(
            "binary file (NUL byte at line {}), expected UTF-8 text",
            bytes[..pos].iter().filter(|&&b| b == b'\n').count() + 1
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        err(format!("not UTF-8 text (invalid byte at line {line})"))
    })
}

/// Resolve `rel` (as written in a file) inside `folder` (canonical), refusing any escape.
fn resolve_inside(folder: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if rel.trim().is_empty() {
        return Err("empty path".into());
    }
    if p.is_absolute() {
        return Err(format!(
            "'{rel}' is an absolute path; give a path relative to the task folder"
        ));
    }
    let joined = folder.join(p);
    let canonical = joined
        .canonicalize()
        .map_err(|e| format!("'{rel}' not found in the task folder: {e}"))?;
    if !canonical.starts_with(folder) {
        return Err(format!(
            "'{rel}' leads outside the task folder {} (.. or a symlink)",
            folder.display()
        ));
    }
    Ok(canonical)
}

/// The items of `it` in order, each once.
fn first_of_each<'a>(it: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = std::collections::HashSet::new();
    it.filter(|x| seen.insert(*x)).collect()
}

/// A task name: 1 to [`MAX_NAME_LEN`] characters of A-Z a-z 0-9 _ . -, not starting with `.`.
/// It names the folder of the task's models ([`crate::tuned::id_dir`]), so it is never `.`, `..`
/// or a hidden folder.
pub(crate) fn task_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Guess the key a TOML error is about: from "unknown/missing field `x`", else the key written
/// on the error's line (1-based `line` of `text`); inside a `[table]`, prefixed with its name
/// (`search.budget`), as the checks after parsing name their fields. An unknown table is
/// reported at its own header with its last name part as the unknown key (`[serch]`: `serch`;
/// `[finetune.sub]`: `sub`): its field is the header's whole dotted name.
fn toml_error_field(message: &str, text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let line_text = lines.get(line.wrapping_sub(1)).copied().unwrap_or("");
    let key = ["unknown field `", "missing field `", "duplicate key `"]
        .iter()
        .find_map(|marker| message.split(marker).nth(1))
        .and_then(|rest| rest.split('`').next().map(str::to_string))
        .or_else(|| {
            let key = line_text.split('=').next()?.trim();
            (line_text.contains('=') && bare_key(key)).then(|| key.to_string())
        })?;
    // The table the error's line is in: the last `[name]` header above it (or on it), if any,
    // as its dotted parts.
    let above = &lines[..line.min(lines.len())];
    let (at, table) = match above
        .iter()
        .enumerate()
        .rev()
        .map(|(k, l)| (k, l.trim()))
        .find(|(_, l)| l.starts_with('[') && !l.starts_with("[["))
        .and_then(|(k, l)| Some((k, l.strip_prefix('[')?.split(']').next()?)))
        .map(|(k, t)| (k, t.split('.').map(str::trim).collect::<Vec<_>>()))
        .filter(|(_, parts)| parts.iter().all(|p| bare_key(p)))
    {
        Some((k, parts)) => (Some(k + 1), parts),
        None => (None, Vec::new()),
    };
    Some(if at == Some(line) && table.last() == Some(&key.as_str()) {
        table.join(".")
    } else if !table.is_empty() && !key.contains('.') {
        format!("{}.{key}", table.join("."))
    } else {
        key
    })
}

/// What serde cannot say right about a task file's shape, said first: a required top-level key
/// that is absent (serde blames the table it was reading last: `search.name`), and a table
/// (`[search]`, `[finetune]`) given as something else, an array of tables (`[[search]]`)
/// above all, which serde would read field by field. A file that is not TOML is left to the
/// full parse, whose error names the line.
fn check_shape(text: &str, file: &Path) -> Result<(), TaskFileError> {
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return Ok(());
    };
    for key in ["search", "finetune"] {
        let Some(v) = table.get(key) else { continue };
        if v.is_table() {
            continue;
        }
        let found = match v {
            toml::Value::Array(a) if a.iter().all(toml::Value::is_table) => {
                format!("an array of tables ([[{key}]])")
            }
            other => format!("a value of type {}", other.type_str()),
        };
        // The line that declares it: `[[key]]`, `key = ...` or `key.x = ...`.
        let line = text
            .lines()
            .position(|l| {
                let l = l.trim_start();
                l.strip_prefix("[[")
                    .and_then(|r| r.trim_start().strip_prefix(key))
                    .is_some_and(|r| r.trim_start().starts_with(']'))
                    || l.strip_prefix(key).is_some_and(|r| {
                        let r = r.trim_start();
                        r.starts_with('=') || r.starts_with('.')
                    })
            })
            .map_or(1, |k| k + 1);
        return Err(TaskFileError::Field {
            file: file.to_path_buf(),
            line,
            field: key.to_string(),
            message: format!("expected a table ([{key}]), found {found}"),
        });
    }
    for key in ["name", "space", "samples"] {
        if !table.contains_key(key) {
            return Err(TaskFileError::File {
                file: file.to_path_buf(),
                field: Some(key.to_string()),
                message: format!("missing field `{key}`"),
            });
        }
    }
    Ok(())
}

/// Load and validate the task file at `toml_path`.
pub fn load(toml_path: &Path, limits: &Limits) -> Result<TaskSpec, TaskFileError> {
    let file = toml_path.to_path_buf();
    let file_err = |message: String| TaskFileError::File {
        file: file.clone(),
        field: None,
        message,
    };
    let folder = toml_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .canonicalize()
        .map_err(|e| file_err(format!("cannot resolve the task folder: {e}")))?;
    // A task file that is a symlink must not lead out of its folder either.
    let real = toml_path
        .canonicalize()
        .map_err(|e| match std::fs::read_link(toml_path) {
            Ok(target) => file_err(format!(
                "a symlink to {}, which does not exist",
                target.display()
            )),
            Err(_) => file_err(format!("cannot read: {e}")),
        })?;
    if !real.starts_with(&folder) {
        return Err(file_err(format!(
            "a symlink leading outside the task folder {}",
            folder.display()
        )));
    }
    let text = read_text(toml_path, limits.max_toml_bytes, None)?;
    check_shape(&text, &file)?;
    let raw: RawTask = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(&text, s.start));
        let message = e.message().trim().to_string();
        match toml_error_field(&message, &text, line) {
            // A required top-level key that is absent has no line to point at.
            Some(field) if message.starts_with("missing field") && !field.contains('.') => {
                TaskFileError::File {
                    file: file.clone(),
                    field: Some(field),
                    message,
                }
            }
            Some(field) => TaskFileError::Field {
                file: file.clone(),
                line,
                field,
                message,
            },
            None => TaskFileError::Syntax {
                file: file.clone(),
                line,
                message,
            },
        }
    })?;
    let field_err =
        |field: &str, span: std::ops::Range<usize>, message: String| TaskFileError::Field {
            file: file.clone(),
            line: line_of(&text, span.start),
            field: field.to_string(),
            message,
        };

    let name = raw.name.get_ref().clone();
    if !task_name(&name) {
        return Err(field_err(
            "name",
            raw.name.span(),
            format!(
                "'{name}' is not a task name: 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 _ . -, \
                 not starting with '.'"
            ),
        ));
    }

    let space = match raw.space.get_ref().as_str() {
        "graph" => {
            if let Some(h) = &raw.head {
                return Err(field_err(
                    "head",
                    h.span(),
                    "not used when space = \"graph\" (the JSON graphs are whole networks); remove it".into(),
                ));
            }
            TaskSpace::Graph
        }
        s => {
            let space = SpaceId::from_name(s).map_err(|e| {
                field_err(
                    "space",
                    raw.space.span(),
                    format!("{e}, or 'graph' for JSON graph files"),
                )
            })?;
            let Some(h) = &raw.head else {
                return Err(field_err(
                    "head",
                    raw.space.span(),
                    format!(
                        "missing: space {s} needs the task whose network head to build (one of: {})",
                        space.tasks().iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
                    ),
                ));
            };
            let head = space
                .task(h.get_ref())
                .map_err(|e| field_err("head", h.span(), e.to_string()))?;
            TaskSpace::Builtin { space, head }
        }
    };

    let mode = match &raw.mode {
        None => Mode::Finetune,
        Some(m) => match m.get_ref().as_str() {
            "finetune" => Mode::Finetune,
            "zero-shot" => Mode::ZeroShot,
            other => {
                return Err(field_err(
                    "mode",
                    m.span(),
                    format!("unknown mode '{other}' (expected 'finetune' or 'zero-shot')"),
                ))
            }
        },
    };

    let search = match (raw.search, &space) {
        (None, _) => None,
        // The daemon searches the architecture strings of a built-in space; a graph task's
        // `[search]`, even one naming no algorithm, would be a search that fails once queued.
        (Some(s), TaskSpace::Graph) => {
            return Err(field_err(
                "search",
                s.span(),
                "a search needs a built-in space; space = \"graph\" has no architecture \
                 strings: remove the [search] table"
                    .into(),
            ))
        }
        (Some(s), TaskSpace::Builtin { space, .. }) => {
            Some(parse_search(s.into_inner(), *space, &field_err)?)
        }
    };

    let finetune = raw
        .finetune
        .map(|f| parse_finetune(f, &field_err))
        .transpose()?;

    let samples_rel = raw.samples.get_ref().clone();
    let csv_path = resolve_inside(&folder, &samples_rel)
        .map_err(|m| field_err("samples", raw.samples.span(), m))?;
    let samples = read_samples(&csv_path, &folder, &space, limits)?;
    if samples.len() < MIN_SAMPLES {
        return Err(field_err(
            "samples",
            raw.samples.span(),
            format!(
                "'{samples_rel}' has {} labelled sample(s); at least {MIN_SAMPLES} are needed",
                samples.len()
            ),
        ));
    }

    let (lo, hi) = samples
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x.value), hi.max(x.value))
        });
    if hi - lo < MIN_LABEL_SPREAD {
        return Err(TaskFileError::Field {
            file: csv_path.clone(),
            line: samples.last().map_or(0, |x| x.line),
            field: "value".into(),
            message: if hi == lo {
                format!(
                    "every label is {lo}: a task's labels must differ (their spread sets the \
                     scale of the predictions)"
                )
            } else {
                format!(
                    "the labels lie within [{lo:e}, {hi:e}], less than {MIN_LABEL_SPREAD:e} \
                     apart: rescale them (their spread sets the scale of the predictions)"
                )
            },
        });
    }

    let mut spec = TaskSpec {
        name,
        space,
        higher_is_better: raw.higher_is_better.unwrap_or(true),
        mode,
        samples_file: samples_rel,
        samples,
        search,
        finetune,
        hash: String::new(),
    };
    spec.hash = spec.content_hash();
    Ok(spec)
}

/// Most fine-tuning epochs a task may ask for.
pub const MAX_EPOCHS: i64 = 100_000;

fn parse_finetune(
    f: RawFinetune,
    field_err: &impl Fn(&str, std::ops::Range<usize>, String) -> TaskFileError,
) -> Result<FinetuneSpec, TaskFileError> {
    let count = |name: &str, v: &Option<Spanned<i64>>, min: i64, max: i64| match v {
        None => Ok(None),
        Some(x) if (min..=max).contains(x.get_ref()) => Ok(Some(*x.get_ref() as u64)),
        Some(x) => Err(field_err(
            name,
            x.span(),
            format!("{} is outside {min}..={max}", x.get_ref()),
        )),
    };
    let companion = match &f.companion {
        None => None,
        Some(c) => {
            let v = match c.get_ref().as_str() {
                "weighted" => Companion::Weighted,
                "average" => Companion::Average,
                "choose" => Companion::Choose,
                "off" => Companion::Off,
                other => {
                    return Err(field_err(
                        "finetune.companion",
                        c.span(),
                        format!("'{other}' is not one of weighted, average, choose, off"),
                    ))
                }
            };
            if f.choose_transform.is_some() {
                return Err(field_err(
                    "finetune.companion",
                    c.span(),
                    "give companion or the older choose_transform, not both".into(),
                ));
            }
            Some(v)
        }
    };
    // A finite number accepted by `ok`, else an error naming the field and `range`.
    let number = |name: &str, v: &Option<Spanned<f64>>, ok: fn(f64) -> bool, range: &str| match v {
        None => Ok(None),
        Some(x) if x.get_ref().is_finite() && ok(*x.get_ref()) => Ok(Some(*x.get_ref())),
        Some(x) => Err(field_err(
            name,
            x.span(),
            format!(
                "{} must be a finite number in {range}",
                crate::show::num(*x.get_ref())
            ),
        )),
    };
    let lr = number("finetune.lr", &f.lr, |v| v > 0.0 && v <= 1.0, "(0, 1]")?;
    let rank_weight = number(
        "finetune.rank_weight",
        &f.rank_weight,
        |v| (0.0..=100.0).contains(&v),
        "[0, 100]",
    )?;
    Ok(FinetuneSpec {
        epochs: count("finetune.epochs", &f.epochs, 1, MAX_EPOCHS)?,
        batch_size: count("finetune.batch_size", &f.batch_size, 1, 4096)?,
        lr,
        seed: count("finetune.seed", &f.seed, 0, i64::MAX)?,
        select_epochs: f.select_epochs,
        calibrate: f.calibrate,
        choose_transform: f.choose_transform,
        companion,
        rank_weight,
    })
}

fn parse_search(
    s: RawSearch,
    space: SpaceId,
    field_err: &impl Fn(&str, std::ops::Range<usize>, String) -> TaskFileError,
) -> Result<SearchSpec, TaskFileError> {
    let algorithm = match &s.algorithm {
        None => Algorithm::Evolution,
        Some(a) => a
            .get_ref()
            .parse::<Algorithm>()
            .map_err(|e| field_err("search.algorithm", a.span(), e))?,
    };
    // What the algorithm does not read (a FLOP reduction's start, evolution's tournament) is
    // refused, not silently ignored: the table is the search's own (`Algorithm::SPECIFIC`).
    let spans = [
        ("population", s.population.as_ref().map(|x| x.span())),
        ("sample", s.sample.as_ref().map(|x| x.span())),
        ("start", s.start.as_ref().map(|x| x.span())),
        ("tolerance", s.tolerance.as_ref().map(|x| x.span())),
        ("radius", s.radius.as_ref().map(|x| x.span())),
        ("two_sided", s.two_sided.as_ref().map(|x| x.span())),
    ];
    if let Some((option, Some(span))) = spans
        .into_iter()
        .find(|(o, sp)| sp.is_some() && !algorithm.reads(o))
    {
        return Err(field_err(
            &format!("search.{option}"),
            span,
            format!(
                "only {} reads it; this one is {}{}",
                search::Algorithm::readers_phrase(option, |a| format!("algorithm = \"{a}\"")),
                algorithm.name(),
                if s.algorithm.is_none() {
                    " (the default)"
                } else {
                    ""
                }
            ),
        ));
    }
    // A whole number in min..=max, else an error naming the field and the bound it breaks.
    let count = |name: &str, v: &Option<Spanned<i64>>, min: i64, max: i64| match v {
        None => Ok(None),
        Some(x) if (min..=max).contains(x.get_ref()) => Ok(Some(*x.get_ref() as u64)),
        Some(x) if *x.get_ref() < min => Err(field_err(
            name,
            x.span(),
            format!("{} is below the minimum of {min}", x.get_ref()),
        )),
        Some(x) => Err(field_err(
            name,
            x.span(),
            format!("{} is over the limit of {max}", x.get_ref()),
        )),
    };
    let positive = |name: &str, v: &Option<Spanned<f64>>, allow_zero: bool| match v {
        None => Ok(None),
        Some(x)
            if x.get_ref().is_finite()
                && (*x.get_ref() > 0.0 || (allow_zero && *x.get_ref() == 0.0)) =>
        {
            Ok(Some(*x.get_ref()))
        }
        Some(x) => Err(field_err(
            name,
            x.span(),
            format!(
                "{} must be a finite number {}",
                crate::show::num(*x.get_ref()),
                if allow_zero { "≥ 0" } else { "> 0" }
            ),
        )),
    };
    // The daemon's limits (`searches::build_spec` refuses the same values).
    let budget = count("search.budget", &s.budget, 1, search::MAX_BUDGET as i64)?;
    let population = count(
        "search.population",
        &s.population,
        2,
        search::MAX_POPULATION as i64,
    )?;
    let sample = count("search.sample", &s.sample, 1, search::MAX_POPULATION as i64)?;
    let batch = count("search.batch", &s.batch, 1, search::MAX_BATCH as i64)?;
    // The tournament must fit in the population, an unset one taking the search's default
    // (only evolution reads them: the others were refused them above).
    let d = search::SearchSpec::default();
    let (p, k) = (
        population.unwrap_or(d.population as u64),
        sample.unwrap_or(d.sample as u64),
    );
    if k > p {
        // Defaults alone always fit, so one of the two is given.
        if let Some(x) = &s.sample {
            let of = if population.is_some() { "" } else { "default " };
            let hint = if population.is_some() {
                ""
            } else {
                " (give search.population too)"
            };
            return Err(field_err(
                "search.sample",
                x.span(),
                format!("tournament sample {k} exceeds the {of}population {p}{hint}"),
            ));
        }
        if let Some(x) = &s.population {
            return Err(field_err(
                "search.population",
                x.span(),
                format!(
                    "population {p} is below the default tournament sample {k} \
                     (give search.sample of at most {p} too)"
                ),
            ));
        }
    }
    let seed = count("search.seed", &s.seed, 0, i64::MAX)?;
    let start = match &s.start {
        None => None,
        Some(x) => Some(
            Arch::parse(space, x.get_ref())
                .map_err(|e| field_err("search.start", x.span(), e.to_string()))?
                .to_string(),
        ),
    };
    if let (Algorithm::Flops, None, Some(a)) = (algorithm, &start, &s.algorithm) {
        return Err(field_err(
            "search.algorithm",
            a.span(),
            "a FLOP-reducing search needs a start network: add search.start".into(),
        ));
    }
    Ok(SearchSpec {
        algorithm,
        budget,
        population,
        sample,
        batch,
        max_mflops: positive("search.max_mflops", &s.max_mflops, false)?,
        max_mparams: positive("search.max_mparams", &s.max_mparams, false)?,
        seed,
        start,
        tolerance: positive("search.tolerance", &s.tolerance, true)?,
        radius: count("search.radius", &s.radius, 1, i64::MAX)?,
        two_sided: s.two_sided.map(|x| *x.get_ref()),
    })
}

fn read_samples(
    csv_path: &Path,
    folder: &Path,
    space: &TaskSpace,
    limits: &Limits,
) -> Result<Vec<Sample>, TaskFileError> {
    let text = read_text(csv_path, limits.max_samples_bytes, Some("samples"))?;
    let at = |line: usize, field: &str, message: String| TaskFileError::Field {
        file: csv_path.to_path_buf(),
        line,
        field: field.to_string(),
        message,
    };
    let key_col = match space {
        TaskSpace::Builtin { .. } => "arch",
        TaskSpace::Graph => "graph",
    };
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = rdr.headers().map_err(|e| TaskFileError::Syntax {
        file: csv_path.to_path_buf(),
        line: 1,
        message: e.to_string(),
    })?;
    let names: Vec<&str> = headers.iter().collect();
    if names != [key_col, "value"] {
        return Err(at(
            1,
            "header",
            format!(
                "header is '{}', expected '{key_col},value' for space {}",
                names.join(","),
                space.name()
            ),
        ));
    }
    let mut samples = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut seen_graphs: HashMap<GraphHash, usize> = HashMap::new();
    // Lines come from byte offsets: csv's own line count is off in CRLF files, and there a
    // record's offset can be that of the `\n` ending the line before it (csv ends a record at
    // the `\r`), so line ends at the offset are skipped first (a record never starts with one).
    let line_at = |p: Option<&csv::Position>| {
        p.map_or(0, |p| {
            let start = p.byte() as usize;
            let skip = text.as_bytes()[start.min(text.len())..]
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            line_of(&text, start + skip)
        })
    };
    for rec in rdr.records() {
        let rec = rec.map_err(|e| TaskFileError::Syntax {
            file: csv_path.to_path_buf(),
            line: line_at(e.position()),
            // csv's own message repeats its (CRLF-blind) line count.
            message: match e.kind() {
                csv::ErrorKind::UnequalLengths {
                    expected_len, len, ..
                } => format!("{len} field(s), expected {expected_len} ({key_col},value)"),
                _ => e.to_string(),
            },
        })?;
        let line = line_at(rec.position());
        let (key, v) = (&rec[0], &rec[1]);
        let value: f64 = v
            .parse()
            .map_err(|_| at(line, "value", format!("'{v}' is not a number")))?;
        if !value.is_finite() {
            return Err(at(line, "value", format!("'{v}' is not a finite number")));
        }
        if value.abs() > MAX_LABEL {
            return Err(at(
                line,
                "value",
                format!(
                    "'{v}' is beyond ±{MAX_LABEL:e}, the largest label magnitude a task may \
                     have (rescale the labels)"
                ),
            ));
        }
        let input = match space {
            TaskSpace::Builtin { space, head } => {
                let arch = Arch::parse(*space, key).map_err(|e| at(line, "arch", e.to_string()))?;
                let canon = arch.to_string();
                if let Some(first) = seen.insert(canon.clone(), line) {
                    return Err(at(
                        line,
                        "arch",
                        format!("duplicate architecture {canon} (first at line {first})"),
                    ));
                }
                // Two spellings of one network (NB-101 cells that prune to the same one, and
                // DARTS genomes that build the same graph) are one sample with two labels.
                let graph = arch
                    .build(*head)
                    .map_err(|e| at(line, "arch", e.to_string()))?;
                if let Some(first) = seen_graphs.insert(graph.hash(), line) {
                    return Err(at(
                        line,
                        "arch",
                        format!(
                            "'{key}' is the same network as line {first} (another spelling of \
                             it: the labels would disagree on one network)"
                        ),
                    ));
                }
                SampleInput::Arch(arch)
            }
            TaskSpace::Graph => {
                let gpath = resolve_inside(folder, key).map_err(|m| at(line, "graph", m))?;
                let gtext = read_text(&gpath, limits.max_samples_bytes, Some("graph"))?;
                let graph = json::from_json(&gtext).map_err(|e| TaskFileError::File {
                    file: gpath.clone(),
                    field: Some("graph".into()),
                    message: format!("invalid JSON graph (samples line {line}): {e}"),
                })?;
                if let Some(first) = seen_graphs.insert(graph.hash(), line) {
                    return Err(at(
                        line,
                        "graph",
                        format!(
                            "'{key}' is the same network as line {first} (the same graph hash: \
                             isomorphic, or wired so alike at every node that the predictor \
                             cannot tell them apart, docs/graph-format.md)"
                        ),
                    ));
                }
                SampleInput::Graph {
                    path: key.to_string(),
                    graph,
                }
            }
        };
        samples.push(Sample { input, value, line });
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [&str; 3] = [
        "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|",
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
        "|avg_pool_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|avg_pool_3x3~2|",
    ];

    fn setup(toml: &str, csv: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.csv"), csv).unwrap();
        let t = dir.path().join("t.toml");
        std::fs::write(&t, toml).unwrap();
        (dir, t)
    }

    fn good_csv() -> String {
        format!(
            "arch,value\n{},81.9\n{},90.39\n{},81.93\n",
            A[0], A[1], A[2]
        )
    }

    const GOOD: &str =
        "name = \"seg\"\nspace = \"nb201\"\nhead = \"cifar10\"\nsamples = \"s.csv\"\n";

    /// A start network for the FLOP-reduction tables: the first sample.
    const START: &str = A[0];

    fn err(toml: &str, csv: &str) -> TaskFileError {
        let (_d, t) = setup(toml, csv);
        load(&t, &Limits::default()).unwrap_err()
    }

    #[test]
    fn valid_task_loads_with_stable_hash() {
        let (_d, t) = setup(GOOD, &good_csv());
        let s = load(&t, &Limits::default()).unwrap();
        assert_eq!(s.samples.len(), 3);
        assert_eq!(s.mode, Mode::Finetune);
        assert!(s.higher_is_better);
        assert_eq!(s.hash.len(), 32);
        // Same content, other spelling and key order: same version.
        let reordered = "samples = 's.csv'\nhead = \"cifar10\"\n\nspace = \"nb201\"\nname = \"seg\"\nhigher_is_better = true\n";
        let (_d2, t2) = setup(reordered, &good_csv());
        assert_eq!(load(&t2, &Limits::default()).unwrap().hash, s.hash);
        // A changed label is a new version.
        let (_d3, t3) = setup(GOOD, &good_csv().replace("90.39", "90.4"));
        assert_ne!(load(&t3, &Limits::default()).unwrap().hash, s.hash);
        assert_eq!(s.snapshot()["samples"].as_array().unwrap().len(), 3);
        // A search table's two_sided reads, and changes the version; unset, the hash is that of
        // a file written before the field existed.
        let flops = format!(
            "{GOOD}[search]\nalgorithm = \"flops\"\nstart = \"{START}\"\ntolerance = 0.5\n"
        );
        let (_d4, t4) = setup(&flops, &good_csv());
        let plain = load(&t4, &Limits::default()).unwrap();
        assert_eq!(plain.search.as_ref().unwrap().two_sided, None);
        let (_d5, t5) = setup(&format!("{flops}two_sided = true\n"), &good_csv());
        let two = load(&t5, &Limits::default()).unwrap();
        assert_eq!(two.search.as_ref().unwrap().two_sided, Some(true));
        assert_ne!(two.hash, plain.hash);
    }

    #[test]
    fn toml_errors_name_line_and_field() {
        let e = err("name = \"x\"\nspace = \n", &good_csv());
        assert_eq!((e.line(), e.field()), (Some(2), Some("space")), "{e}");
        let e = err("name = \"x\"\n[[[\n", &good_csv());
        assert!(matches!(e, TaskFileError::Syntax { line: 2, .. }), "{e}");
        let e = err(&format!("{GOOD}colour = 3\n"), &good_csv());
        assert_eq!((e.line(), e.field()), (Some(5), Some("colour")), "{e}");
        let e = err(&GOOD.replace("nb201", "nb999"), &good_csv());
        assert_eq!((e.line(), e.field()), (Some(2), Some("space")), "{e}");
        let e = err(&GOOD.replace("cifar10", "jigsaw"), &good_csv());
        assert_eq!(e.field(), Some("head"), "{e}");
        let e = err(&GOOD.replace("seg", "a b"), &good_csv());
        assert_eq!(e.field(), Some("name"), "{e}");
        // A name is a folder of models: never `..`, `.` or hidden (id_dir refuses the same).
        for bad in ["..", ".", ".seg"] {
            let e = err(&GOOD.replace("\"seg\"", &format!("\"{bad}\"")), &good_csv());
            assert_eq!(e.field(), Some("name"), "{bad}: {e}");
        }
        let e = err(&format!("{GOOD}higher_is_better = \"yes\"\n"), &good_csv());
        assert_eq!(e.field(), Some("higher_is_better"), "{e}");
        let e = err(&format!("{GOOD}[search]\nbudget = 0\n"), &good_csv());
        assert_eq!(
            (e.line(), e.field()),
            (Some(6), Some("search.budget")),
            "{e}"
        );
        // A missing key has no line (not line 1).
        let e = err(
            "\nname = \"x\"\nspace = \"nb201\"\nhead = \"cifar10\"\n",
            &good_csv(),
        );
        assert_eq!((e.line(), e.field()), (None, Some("samples")), "{e}");
        assert!(
            e.to_string()
                .ends_with("t.toml: field 'samples': missing field `samples`"),
            "{e}"
        );
        // So with only tables in the file (serde blamed the table: `search.name`).
        for only in ["[search]\nbudget = 5\n", "[finetune]\nepochs = 2\n"] {
            let e = err(only, &good_csv());
            assert_eq!((e.line(), e.field()), (None, Some("name")), "{e}");
        }
        // A table given as an array of tables, or as a value, is said to be one (serde read
        // an array field by field).
        for (tail, line, key, found) in [
            (
                "[[search]]\nbudget = 1\n",
                5,
                "search",
                "an array of tables ([[search]])",
            ),
            (
                "[[finetune]]\nepochs = 1\n",
                5,
                "finetune",
                "an array of tables",
            ),
            ("search = [4, 5]\n", 5, "search", "a value of type array"),
            ("finetune = 3\n", 5, "finetune", "a value of type integer"),
        ] {
            let e = err(&format!("{GOOD}{tail}"), &good_csv());
            assert_eq!((e.line(), e.field()), (Some(line), Some(key)), "{e}");
            assert!(
                e.to_string()
                    .contains(&format!("expected a table ([{key}]), found {found}")),
                "{e}"
            );
        }
        let e = err(&format!("{GOOD}[search]\npopulation = 1\n"), &good_csv());
        assert_eq!(e.field(), Some("search.population"), "{e}");
        // The algorithm's name is read by the search's own parser, whose message it keeps.
        let e = err(
            &format!("{GOOD}[search]\nalgorithm = \"evolve\"\n"),
            &good_csv(),
        );
        assert_eq!(
            (e.line(), e.field()),
            (Some(6), Some("search.algorithm")),
            "{e}"
        );
        assert!(
            e.to_string()
                .ends_with("unknown algorithm 'evolve' (expected evolution, random or flops)"),
            "{e}"
        );
        // Checked values, type errors and unknown keys inside a table name the table too.
        for (table, line, field) in [
            ("[search]\nradius = 0", 6, "search.radius"),
            ("[search]\ntwo_sided = \"yes\"", 6, "search.two_sided"),
            ("[finetune]\nepochs = \"x\"", 6, "finetune.epochs"),
            ("[search]\ncolour = 1", 6, "search.colour"),
            ("[search]\nalgorithm = \"flops\"", 6, "search.algorithm"),
            // What only a FLOP reduction reads, given to another algorithm.
            ("[search]\ntolerance = 0.5", 6, "search.tolerance"),
            (
                "[search]\nalgorithm = \"random\"\ntwo_sided = false",
                7,
                "search.two_sided",
            ),
            ("[search]\nbudget = 9\nradius = 2", 7, "search.radius"),
            (&format!("[search]\nstart = \"{START}\""), 6, "search.start"),
        ] {
            let e = err(&format!("{GOOD}{table}\n"), &good_csv());
            assert_eq!((e.line(), e.field()), (Some(line), Some(field)), "{e}");
        }
        for (bad, field) in [
            ("epochs = 0", "finetune.epochs"),
            ("batch_size = 5000", "finetune.batch_size"),
            ("lr = nan", "finetune.lr"),
            ("seed = -1", "finetune.seed"),
            ("companion = \"both\"", "finetune.companion"),
            ("rank_weight = -1.0", "finetune.rank_weight"),
            ("rank_weight = inf", "finetune.rank_weight"),
            (
                "companion = \"off\"\nchoose_transform = true",
                "finetune.companion",
            ),
        ] {
            let e = err(&format!("{GOOD}[finetune]\n{bad}\n"), &good_csv());
            assert_eq!((e.line(), e.field()), (Some(6), Some(field)), "{e}");
        }
    }

    #[test]
    fn misspelled_tables_are_named_whole() {
        // An unknown table is reported at its header: its field is the header's dotted name,
        // not the last part twice or alone.
        for (table, field) in [
            ("[serch]\nbudget = 1", "serch"),
            ("[Search]\nbudget = 1", "Search"),
            ("[finetune.sub]\nepochs = 1", "finetune.sub"),
            ("[search]\nsearch = 1", "search.search"),
        ] {
            let e = err(&format!("{GOOD}{table}\n"), &good_csv());
            let line = if field == "search.search" { 6 } else { 5 };
            assert_eq!((e.line(), e.field()), (Some(line), Some(field)), "{e}");
        }
    }

    #[test]
    fn search_values_past_the_daemon_s_limits_are_refused() {
        use crate::search::{MAX_BATCH, MAX_BUDGET, MAX_POPULATION};
        // (That the check accepts what the daemon searches, at the limits themselves, is
        // tests/daemon/malformed.rs's: it needs `searches`, a room above this one.)
        let p = MAX_POPULATION;
        for (table, field, limit) in [
            (
                format!("budget = {}", MAX_BUDGET + 1),
                "search.budget",
                MAX_BUDGET,
            ),
            (
                format!("budget = {}", i64::MAX),
                "search.budget",
                MAX_BUDGET,
            ),
            (
                format!("batch = {}", MAX_BATCH + 1),
                "search.batch",
                MAX_BATCH,
            ),
            (format!("population = {}", p + 1), "search.population", p),
            (format!("population = {}", i64::MAX), "search.population", p),
            (
                format!("population = {p}\nsample = {}", p + 1),
                "search.sample",
                p,
            ),
        ] {
            let e = err(&format!("{GOOD}[search]\n{table}\n"), &good_csv());
            assert_eq!(e.field(), Some(field), "{table}: {e}");
            assert!(e.message().contains(&format!("limit of {limit}")), "{e}");
        }
        // The tournament fits the population, an unset one taking the default (64 and 16).
        let e = err(&format!("{GOOD}[search]\nsample = 100\n"), &good_csv());
        assert_eq!(
            (e.line(), e.field()),
            (Some(6), Some("search.sample")),
            "{e}"
        );
        assert!(e.message().contains("default population 64"), "{e}");
        let e = err(&format!("{GOOD}[search]\npopulation = 8\n"), &good_csv());
        assert_eq!(e.field(), Some("search.population"), "{e}");
        assert!(e.message().contains("default tournament sample 16"), "{e}");
        // Only evolution reads them: random search and FLOP reduction are refused either, a
        // valid one too, naming the first the file gives and what reads it.
        let e = err(
            &format!("{GOOD}[search]\nalgorithm = \"random\"\nsample = 9\npopulation = 8\n"),
            &good_csv(),
        );
        assert_eq!(
            (e.line(), e.field()),
            (Some(8), Some("search.population")),
            "{e}"
        );
        assert!(
            e.message().contains(
                "only evolution (algorithm = \"evolution\") reads it; this one is random"
            ),
            "{e}"
        );
        let e = err(
            &format!("{GOOD}[search]\nalgorithm = \"flops\"\nstart = \"{START}\"\nsample = 4\n"),
            &good_csv(),
        );
        assert_eq!(
            (e.line(), e.field()),
            (Some(8), Some("search.sample")),
            "{e}"
        );
    }

    #[test]
    fn finetune_table_is_part_of_the_version_and_the_snapshot() {
        let (_d, t) = setup(GOOD, &good_csv());
        let plain = load(&t, &Limits::default()).unwrap();
        assert_eq!(plain.finetune, None);
        let defaults = plain.finetune.unwrap_or_default().resolved();
        assert_eq!((defaults.epochs, defaults.lr), (100, FINETUNE_LR));
        let (_d2, t2) = setup(
            &format!("{GOOD}[finetune]\nepochs = 3\nlr = 0.001\n[search]\nbatch = 4\n"),
            &good_csv(),
        );
        let tuned = load(&t2, &Limits::default()).unwrap();
        assert_ne!(tuned.hash, plain.hash);
        let f = tuned.finetune.unwrap().resolved();
        assert_eq!((f.epochs, f.batch_size, f.lr, f.seed), (3, 1, 0.001, 0));
        assert_eq!(f.companion, Companion::Weighted);
        // The older spelling still reads; the new one wins where both could apply.
        for (table, want) in [
            ("choose_transform = true", Companion::Choose),
            ("choose_transform = false", Companion::Off),
            ("companion = \"choose\"", Companion::Choose),
            ("companion = \"off\"", Companion::Off),
            ("companion = \"average\"", Companion::Average),
            ("companion = \"weighted\"", Companion::Weighted),
        ] {
            let (_d3, t3) = setup(&format!("{GOOD}[finetune]\n{table}\n"), &good_csv());
            let f = load(&t3, &Limits::default()).unwrap().finetune.unwrap();
            assert_eq!(f.resolved().companion, want, "{table}");
        }
        // A snapshot reads back to the same spec; a tampered one is refused.
        for spec in [&plain, &tuned] {
            assert_eq!(&TaskSpec::from_snapshot(&spec.snapshot()).unwrap(), spec);
        }
        let mut snap = tuned.snapshot();
        snap["samples"][0]["value"] = serde_json::json!(1.0);
        assert!(TaskSpec::from_snapshot(&snap)
            .unwrap_err()
            .contains("not to its version"));
    }

    #[test]
    fn samples_errors_name_csv_line() {
        let e = err(GOOD, &good_csv().replace("90.39", "ninety"));
        assert!(e.file().ends_with("s.csv"));
        assert_eq!((e.line(), e.field()), (Some(3), Some("value")), "{e}");
        let e = err(GOOD, &good_csv().replace("90.39", "inf"));
        assert_eq!((e.line(), e.field()), (Some(3), Some("value")), "{e}");
        let e = err(
            GOOD,
            &good_csv().replace("nor_conv_3x3~0|+", "conv_9x9~0|+"),
        );
        assert_eq!((e.line(), e.field()), (Some(3), Some("arch")), "{e}");
        let e = err(GOOD, &format!("{}{},1\n", good_csv(), A[0]));
        assert_eq!((e.line(), e.field()), (Some(5), Some("arch")), "{e}");
        assert!(e.message().contains("line 2"), "{e}");
        let e = err(GOOD, &format!("arch,value\n{},1\n", A[0]));
        assert_eq!(e.field(), Some("samples"), "{e}");
        let e = err(GOOD, "arch,acc\n");
        assert_eq!(e.field(), Some("header"), "{e}");
        // Labels that do not differ (or only by rounding) are refused on the CSV's last line.
        let same = format!("arch,value\n{},5\n{},5\n{},5\n", A[0], A[1], A[2]);
        let e = err(GOOD, &same);
        assert!(e.file().ends_with("s.csv"));
        assert_eq!((e.line(), e.field()), (Some(4), Some("value")), "{e}");
        assert!(e.message().contains("every label is 5"), "{e}");
        let tiny = format!("arch,value\n{},1e-300\n{},2e-300\n", A[0], A[1]);
        let e = err(GOOD, &tiny);
        assert_eq!((e.line(), e.field()), (Some(3), Some("value")), "{e}");
        assert!(e.message().contains("rescale"), "{e}");
        assert!(load(
            &setup(
                GOOD,
                &format!("arch,value\n{},0.5\n{},0.500001\n", A[0], A[1])
            )
            .1,
            &Limits::default()
        )
        .is_ok());
    }

    #[test]
    fn two_spellings_of_one_network_are_refused() {
        // Two NB-101 cells of the shipped labels that prune to the same one (input, one op,
        // output): aiop builds one graph of both.
        let cells = [
            "(0, 1, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 3, 4, 2, 2, 1)",
            "(0, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 4, 4, 2, 2, 1)",
            "(0, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 4, 4, 4, 1)",
        ];
        let toml = GOOD.replace("nb201", "nb101");
        let csv = format!(
            "arch,value\n\"{}\",90\n\"{}\",92\n\"{}\",91\n",
            cells[0], cells[2], cells[1]
        );
        let e = err(&toml, &csv);
        assert_eq!((e.line(), e.field()), (Some(4), Some("arch")), "{e}");
        assert!(e.message().contains("same network as line 2"), "{e}");
        let csv = format!("arch,value\n\"{}\",90\n\"{}\",92\n", cells[0], cells[2]);
        assert!(load(&setup(&toml, &csv).1, &Limits::default()).is_ok());
    }

    #[test]
    fn crlf_samples_errors_name_the_right_line() {
        let crlf = |s: &str| s.replace('\n', "\r\n");
        let e = err(GOOD, &crlf(&good_csv().replace("90.39", "ninety")));
        assert_eq!((e.line(), e.field()), (Some(3), Some("value")), "{e}");
        let e = err(GOOD, &crlf(&format!("{}{},1\n", good_csv(), A[0])));
        assert_eq!((e.line(), e.field()), (Some(5), Some("arch")), "{e}");
        assert!(e.message().contains("line 2"), "{e}");
        // Blank lines count as lines, in either ending.
        for nl in ["\n", "\r\n"] {
            let csv = format!("arch,value{nl}{nl}{},1{nl}{nl}{},abc{nl}", A[0], A[1]);
            let e = err(GOOD, &csv);
            assert_eq!(
                (e.line(), e.field()),
                (Some(5), Some("value")),
                "{nl:?}: {e}"
            );
        }
        // A row of the wrong width: the line, and csv's own line count left out.
        let e = err(
            GOOD,
            &crlf(&format!("arch,value\n{},1\n{},1,2\n", A[0], A[1])),
        );
        assert!(matches!(e, TaskFileError::Syntax { line: 3, .. }), "{e}");
        assert_eq!(e.message(), "3 field(s), expected 2 (arch,value)", "{e}");
    }

    #[test]
    fn labels_beyond_the_bound_are_refused() {
        for bad in ["1e300", "-1e101", "1.0000001e100"] {
            let e = err(GOOD, &good_csv().replace("90.39", bad));
            assert_eq!(
                (e.line(), e.field()),
                (Some(3), Some("value")),
                "{bad}: {e}"
            );
            assert!(e.message().contains("1e100"), "{e}");
        }
        let (_d, t) = setup(GOOD, &good_csv().replace("90.39", "-1e100"));
        assert_eq!(
            load(&t, &Limits::default()).unwrap().samples[1].value,
            -1e100
        );
    }

    #[test]
    fn paths_may_not_escape() {
        let outer = tempfile::tempdir().unwrap();
        let inner = outer.path().join("tasks");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(outer.path().join("s.csv"), good_csv()).unwrap();
        let t = inner.join("t.toml");
        for (samples, what) in [
            ("../s.csv", "outside"),
            ("/etc/passwd", "absolute"),
            ("nope.csv", "not found"),
        ] {
            std::fs::write(&t, GOOD.replace("s.csv", samples)).unwrap();
            let e = load(&t, &Limits::default()).unwrap_err();
            assert_eq!(e.field(), Some("samples"), "{e}");
            assert!(e.to_string().contains(what), "{e}");
        }
        std::os::unix::fs::symlink(outer.path().join("t.toml"), inner.join("out.toml")).unwrap();
        std::fs::write(outer.path().join("t.toml"), GOOD).unwrap();
        let e = load(&inner.join("out.toml"), &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("outside the task folder"), "{e}");
        std::os::unix::fs::symlink(outer.path().join("s.csv"), inner.join("link.csv")).unwrap();
        std::fs::write(&t, GOOD.replace("s.csv", "link.csv")).unwrap();
        let e = load(&t, &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
    }

    #[test]
    fn size_binary_and_encoding_checked() {
        let (_d, t) = setup(GOOD, &good_csv());
        let small = Limits {
            max_toml_bytes: 10,
            ..Limits::default()
        };
        assert!(load(&t, &small)
            .unwrap_err()
            .to_string()
            .contains("over the limit"));
        let small = Limits {
            max_samples_bytes: 10,
            ..Limits::default()
        };
        let e = load(&t, &small).unwrap_err();
        assert_eq!(e.field(), Some("samples"), "{e}");
        std::fs::write(&t, b"name = \"a\"\0\n").unwrap();
        assert!(load(&t, &Limits::default())
            .unwrap_err()
            .to_string()
            .contains("binary"));
        std::fs::write(&t, b"name = \"\xff\"\n").unwrap();
        assert!(load(&t, &Limits::default())
            .unwrap_err()
            .to_string()
            .contains("UTF-8"));
    }

    #[test]
    fn graph_samples() {
        let dir = tempfile::tempdir().unwrap();
        let mut csv = String::from("graph,value\n");
        for (k, a) in A.iter().enumerate() {
            let g = Arch::parse(SpaceId::Nb201, a)
                .unwrap()
                .build(Task::Cifar10)
                .unwrap();
            std::fs::write(dir.path().join(format!("g{k}.json")), json::to_json(&g)).unwrap();
            csv.push_str(&format!("g{k}.json,{k}\n"));
        }
        std::fs::write(dir.path().join("s.csv"), &csv).unwrap();
        let t = dir.path().join("t.toml");
        std::fs::write(&t, "name = \"g\"\nspace = \"graph\"\nsamples = \"s.csv\"\n").unwrap();
        let s = load(&t, &Limits::default()).unwrap();
        assert_eq!(s.samples.len(), 3);
        // The files it reads, from the spec and from its snapshot alike.
        assert_eq!(s.files(), ["s.csv", "g0.json", "g1.json", "g2.json"]);
        assert_eq!(TaskSpec::snapshot_files(&s.snapshot()), s.files());
        std::fs::write(dir.path().join("g1.json"), "{\"nodes\": [{\"id\": \"x\"}]}").unwrap();
        let e = load(&t, &Limits::default()).unwrap_err();
        assert!(e.file().ends_with("g1.json"), "{e}");
        assert_eq!(e.field(), Some("graph"));
        std::fs::write(
            &t,
            "name = \"g\"\nspace = \"graph\"\nhead = \"cifar10\"\nsamples = \"s.csv\"\n",
        )
        .unwrap();
        assert_eq!(
            load(&t, &Limits::default()).unwrap_err().field(),
            Some("head")
        );
        // A graph task has no search, whether or not its table names an algorithm (one that
        // names none passed, and its search failed once the task was ready).
        let plain = "name = \"g\"\nspace = \"graph\"\nsamples = \"s.csv\"\n";
        for table in [
            "[search]\nbudget = 50\n",
            "[search]\nalgorithm = \"random\"\n",
        ] {
            std::fs::write(&t, format!("{plain}{table}")).unwrap();
            let e = load(&t, &Limits::default()).unwrap_err();
            assert_eq!((e.line(), e.field()), (Some(4), Some("search")), "{e}");
            assert!(e.message().contains("built-in space"), "{e}");
        }
    }
}
