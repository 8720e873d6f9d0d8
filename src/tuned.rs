//! Task models: the pretrained predictor carried to one user task ([`TaskSpec`]) and kept on
//! disk, what `aiop finetune`, `aiop predict --tuned` and the daemon's fine-tuning jobs share.
//!
//! [`finetune`] builds each sample's graph (a built-in space's architecture with the task's
//! head, or the task's JSON graph), extracts its features and GFLOPs, fits the task's
//! [`TaskScaler`] (AIO-P's FLOPs transform and standardisation) on all samples, and, unless the
//! task is zero-shot, fine-tunes the model on them as [`crate::predictor::transfer`] does
//! (defaults: batch 1, Adam lr 1e-4; the encoder, embeddings and head trainable, or the adapters
//! when the base model has K-Adapters). The number of epochs, at most `epochs` (100), is chosen
//! by 5-fold cross-validation on the samples themselves ([`crate::predictor::select`]; 0 keeps
//! the zero-shot model) unless `select_epochs = false`: AIO-P's fixed 100 epochs ranked
//! unseen tasks worse than zero-shot on several validation tasks (BENCHMARKS.md). The same
//! cross-validation runs on the base model's no-transform companion, which by default
//! (`companion = "weighted"`) is fine-tuned too and blended with the base model: each member's
//! predictions standardised by its out-of-fold predictions and weighted by how well those rank
//! the samples ([`Blend`], fitted on the out-of-fold predictions; `"average"`: the plain mean
//! in task units; `"choose"`: the better of the two is kept); the out-of-fold predictions of
//! what is kept then fit a [`crate::predictor::calibrate::Calibration`] to the task's units
//! (`calibrate`).
//! [`TaskModel::save`] writes the checkpoint
//! plus a sidecar `task.json` ([`TunedMeta`]: task, version, space and head, scaler, base
//! model, training report, blend), and a blended or averaged companion's checkpoint in
//! `companion/`, under
//! `<models>/<task name>/<version>/`.
//!
//! Invariants: the same spec, base model and seed give the same weights on one machine (every
//! random choice is seeded by the `[finetune]` seed); zero-shot changes no weight; a model
//! directory appears complete or not at all (written beside under a hidden name, then renamed);
//! a sidecar of another format version is refused; a model id is `<name>/<version>`, both parts
//! checked, so that an id never leads outside the models folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::predictor::base::{Base, BaseSelection};
use crate::predictor::blend::{Blend, Weighting};
use crate::predictor::calibrate::Calibration;
use crate::predictor::checkpoint::Trained;
use crate::predictor::features::{extract, GraphFeatures};
use crate::predictor::select::{
    samples_of, select_epochs, EpochSelection, Labelled, SelectionReport,
};
use crate::predictor::train::{predict_batched, train, Cancel, TrainConfig, TrainReport};
use crate::predictor::transform::{gflops, TaskScaler};
use crate::predictor::{shipped, Device, PredictorError};
use crate::taskfile::{Companion, Finetune, Mode, SampleInput, TaskSpace, TaskSpec};

/// Fewest samples for choosing the number of epochs by cross-validation (fewer: the fixed
/// `epochs` are trained).
pub const MIN_SELECT_SAMPLES: usize = 5;

/// Layout version of `task.json`.
pub const FORMAT_VERSION: u32 = 1;
/// The sidecar beside the checkpoint files.
pub const SIDECAR: &str = "task.json";

/// Errors of task models.
#[derive(Debug, thiserror::Error)]
pub enum TunedError {
    /// A sample's network cannot be built or featurised.
    #[error("task '{task}': sample at line {line} of its samples file: {message}")]
    Sample {
        task: String,
        line: usize,
        message: String,
    },
    #[error("task '{task}': {source}")]
    Predictor {
        task: String,
        #[source]
        source: Box<PredictorError>,
    },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("task model {path}: {message}")]
    Sidecar { path: PathBuf, message: String },
    #[error("no task model '{name}' in {dir} (run `aiop finetune --task FILE.toml` first, with the same --state)")]
    NotFound { name: String, dir: PathBuf },
    #[error("'{0}' is not a task model id (expected <task name>/<32 hex digits>)")]
    BadId(String),
}

fn predictor_err(task: &str, e: PredictorError) -> TunedError {
    TunedError::Predictor {
        task: task.to_string(),
        source: Box::new(e),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TunedError + '_ {
    move |e| TunedError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Where the pretrained base model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseModel {
    /// The model embedded in the binary ([`shipped`]).
    Embedded,
    /// A checkpoint directory written by `aiop pretrain`.
    Dir(PathBuf),
}

impl BaseModel {
    /// `Dir` when a directory is given, else the embedded model.
    pub fn from_option(dir: Option<&Path>) -> BaseModel {
        dir.map_or(BaseModel::Embedded, |d| BaseModel::Dir(d.to_path_buf()))
    }

    /// A fresh copy of the base model on `device`.
    pub fn load(&self, device: &Device) -> Result<Trained, PredictorError> {
        match self {
            BaseModel::Embedded => shipped::load(device),
            BaseModel::Dir(d) => Trained::load(d, device),
        }
    }

    /// What predicts a pretraining task without a task model: the embedded pair with its
    /// selection; a directory's model with `plain/` and `base.json` beside it likewise; else the
    /// directory's model alone ([`crate::predictor::base`]).
    pub fn load_base(&self, device: &Device) -> Result<Base, PredictorError> {
        match self {
            BaseModel::Embedded => shipped::base(device),
            BaseModel::Dir(d) => {
                let aio = Trained::load(d, device)?;
                let sel = d.join("base.json");
                match (self.load_plain(device)?, sel.exists()) {
                    (Some((plain, _)), true) => {
                        let text =
                            std::fs::read_to_string(&sel).map_err(|e| PredictorError::Io {
                                path: sel.display().to_string(),
                                source: e,
                            })?;
                        // Every error names the file: it is what to fix or remove.
                        let at = |message: String| PredictorError::Checkpoint {
                            path: sel.display().to_string(),
                            message,
                        };
                        let s: BaseSelection =
                            serde_json::from_str(&text).map_err(|e| at(e.to_string()))?;
                        Base::with_selection(aio, plain, s).map_err(|e| at(e.into_message()))
                    }
                    _ => Ok(Base::single(aio)),
                }
            }
        }
    }

    /// How it is named in sidecars and logs.
    pub fn describe(&self) -> String {
        match self {
            BaseModel::Embedded => format!("embedded:{}", shipped::DIR),
            BaseModel::Dir(d) => d.display().to_string(),
        }
    }

    /// Its companion pretrained without Eq. 5's FLOPs scaling, with its name: the embedded
    /// one, or a directory's `plain/` subdirectory when it holds a model (None otherwise).
    pub fn load_plain(&self, device: &Device) -> Result<Option<(Trained, String)>, PredictorError> {
        match self {
            BaseModel::Embedded => Ok(Some((
                shipped::load_plain(device)?,
                format!("embedded:{}", shipped::PLAIN_DIR),
            ))),
            BaseModel::Dir(d) => {
                let p = d.join("plain");
                if p.join(crate::predictor::checkpoint::META_FILE).exists() {
                    Ok(Some((Trained::load(&p, device)?, p.display().to_string())))
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// The companion [`finetune`] should be offered for `spec` ([`BaseModel::load_plain`]),
    /// loaded only when it would use one ([`wants_companion`]).
    pub fn companion_for(
        &self,
        spec: &TaskSpec,
        device: &Device,
    ) -> Result<Option<(Trained, String)>, PredictorError> {
        if wants_companion(spec) {
            self.load_plain(device)
        } else {
            Ok(None)
        }
    }
}

pub use crate::predictor::checkpoint::fingerprint;

/// Whether `dir` is (part of) a task model rather than a pretrained checkpoint: a version
/// folder under `<state>/models/<name>/` (it holds the sidecar), the task's folder holding
/// them, or a version's [`COMPANION_DIR`]. `Some` with the task's name ("NAME" when it cannot
/// be told) when it is one. A task model predicts with its own task's statistics and blend: it
/// is no base to fine-tune or predict other tasks from.
pub fn task_model_of(dir: &Path) -> Option<String> {
    let real = dir.canonicalize().ok()?;
    let name_of = |p: Option<&Path>| {
        p.and_then(Path::file_name)
            .map_or_else(|| "NAME".to_string(), |n| n.to_string_lossy().into_owned())
    };
    let version = |p: &Path| p.join(SIDECAR).is_file();
    if version(&real) {
        return Some(name_of(real.parent()));
    }
    if real.file_name().is_some_and(|n| n == COMPANION_DIR) && real.parent().is_some_and(version) {
        return Some(name_of(real.parent().and_then(Path::parent)));
    }
    let holds_versions = std::fs::read_dir(&real)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| version(&e.path()));
    holds_versions.then(|| name_of(Some(&real)))
}

/// How well the model fits its own samples after transfer (in-sample, for information). A
/// measure that is not defined (a correlation of predictions that are all equal) is written as
/// JSON's `null` and read back as NaN: it must not make the model unloadable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    #[serde(deserialize_with = "nan_if_null")]
    pub spearman: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub kendall: f64,
    /// Mean absolute error in the task's units.
    #[serde(deserialize_with = "nan_if_null")]
    pub mae: f64,
}

/// A number, or `null` (what serde_json writes for NaN) as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl FitReport {
    /// The measures of predictions `pred` against labels `y`.
    pub fn of(pred: &[f64], y: &[f64]) -> FitReport {
        FitReport {
            spearman: crate::stats::spearman(pred, y),
            kendall: crate::stats::kendall(pred, y),
            mae: crate::stats::mae(pred, y),
        }
    }
}

/// The sidecar `task.json` of a task model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunedMeta {
    pub format_version: u32,
    pub task: String,
    /// The task version (spec hash) the model was made for.
    pub version: String,
    pub space: TaskSpace,
    pub higher_is_better: bool,
    pub mode: Mode,
    pub scaler: TaskScaler,
    /// [`BaseModel::describe`] of the model it started from.
    pub base_model: String,
    /// [`fingerprint`] of that base model.
    pub base_fingerprint: String,
    pub samples: usize,
    /// The fine-tuning settings (None when zero-shot).
    pub finetune: Option<Finetune>,
    /// How the number of epochs was chosen, when it was (`select_epochs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<SelectionReport>,
    /// The line from the model's predictions to the task's units, fitted on the selection's
    /// out-of-fold predictions (`calibrate`); absent: predictions are used as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    pub train: Option<TrainReport>,
    /// The no-transform companion averaged with the model (`companion = "average"`); its
    /// weights are in `companion/` of the model folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub companion: Option<CompanionMeta>,
    /// How the two members combine (`companion = "weighted"`: base model first, companion
    /// second, each standardised and weighted); absent with a companion: their mean in the
    /// task's units (`"average"`, and sidecars written before the blend existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blend: Option<Blend>,
    /// MSE on the samples (standardised units) of the model as it stands after fine-tuning,
    /// averaged over the members (None only in sidecars written before it was always set).
    pub final_loss: Option<f64>,
    pub fit: FitReport,
    /// The same measures on the cross-validation's out-of-fold predictions, through the blend
    /// and the calibration (each sample predicted by models that never saw its label and were
    /// trained on fewer samples; the blend weights and the calibration line were fitted on these
    /// predictions): an estimate of how the model ranks networks it has not seen, unlike `fit`.
    /// On validation it averaged 0.07 below the test Spearman, noisily (BENCHMARKS.md, session
    /// 15). Absent without `select_epochs` and in sidecars written before session 15.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_validated: Option<FitReport>,
    pub seconds: f64,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
}

impl TunedMeta {
    /// `<task name>/<version>`: the model's id, its folder under the models folder, and its
    /// name in the prediction cache.
    pub fn id(&self) -> String {
        format!("{}/{}", self.task, self.version)
    }
}

/// The second member of an averaged task model: the base model's no-transform companion,
/// fine-tuned on the same samples for its own cross-validated length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompanionMeta {
    /// [`BaseModel::describe`]-style name of the companion it started from.
    pub base_model: String,
    /// [`fingerprint`] of that companion.
    pub base_fingerprint: String,
    /// Its own statistics of the samples (without Eq. 5's FLOPs scaling).
    pub scaler: TaskScaler,
    /// Its epoch selection; its out-of-fold predictions enter the calibration's fit.
    pub selection: SelectionReport,
    pub train: Option<TrainReport>,
}

/// A task model: weights and sidecar.
pub struct TaskModel {
    pub trained: Trained,
    /// The averaged companion's weights, exactly when `meta.companion` is set.
    pub companion: Option<Trained>,
    pub meta: TunedMeta,
}

/// Sub-folder of a model folder holding the averaged companion's checkpoint.
pub const COMPANION_DIR: &str = "companion";

/// Check a model id (`<name>/<32 hex>`) and return its folder under `models`.
pub fn id_dir(models: &Path, id: &str) -> Result<PathBuf, TunedError> {
    let bad = || TunedError::BadId(id.to_string());
    let (name, version) = id.split_once('/').ok_or_else(bad)?;
    let name_ok = crate::taskfile::task_name(name);
    let version_ok = version.len() == 32 && version.chars().all(|c| c.is_ascii_hexdigit());
    if !name_ok || !version_ok {
        return Err(bad());
    }
    Ok(models.join(name).join(version))
}

/// The sidecar `m` of a task model, checked: its format version, its fields, and its
/// statistics (the model's and its companion's) usable ([`TaskScaler::check`]).
fn read_sidecar(m: &Path) -> Result<TunedMeta, TunedError> {
    let bad = |message: String| TunedError::Sidecar {
        path: m.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(m).map_err(io_err(m))?;
    let probe: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let v = probe.get("format_version").and_then(|v| v.as_u64());
    if v != Some(FORMAT_VERSION as u64) {
        return Err(bad(format!(
            "format version {v:?}, this build reads {FORMAT_VERSION}"
        )));
    }
    let meta: TunedMeta = serde_json::from_value(probe).map_err(|e| bad(e.to_string()))?;
    let companion = meta
        .companion
        .as_ref()
        .map(|c| ("companion.scaler", &c.scaler));
    for (field, s) in std::iter::once(("scaler", &meta.scaler)).chain(companion) {
        s.check()
            .map_err(|e| bad(format!("task '{}': field {field}: {e}", meta.task)))?;
    }
    Ok(meta)
}

impl TaskModel {
    /// Read a task model folder written by [`TaskModel::save`].
    pub fn load(dir: &Path, device: &Device) -> Result<TaskModel, TunedError> {
        let m = dir.join(SIDECAR);
        let meta = read_sidecar(&m)?;
        let trained = Trained::load(dir, device).map_err(|e| predictor_err(&meta.task, e))?;
        if let Some(b) = &meta.blend {
            let checked = match meta.companion {
                Some(_) => b.check(2),
                None => Err(PredictorError::Data("a blend without a companion".into())),
            };
            checked.map_err(|e| TunedError::Sidecar {
                path: m.clone(),
                message: format!("field blend: {e}"),
            })?;
        }
        let companion = match meta.companion {
            None => None,
            Some(_) => Some(
                Trained::load(&dir.join(COMPANION_DIR), device)
                    .map_err(|e| predictor_err(&meta.task, e))?,
            ),
        };
        Ok(TaskModel {
            trained,
            companion,
            meta,
        })
    }

    /// The model `id` under `models`.
    pub fn load_id(models: &Path, id: &str, device: &Device) -> Result<TaskModel, TunedError> {
        TaskModel::load(&id_dir(models, id)?, device)
    }

    /// Predictions in the task's units, in input order.
    pub fn predict(
        &self,
        graphs: &[(&GraphFeatures, f64)],
        batch_size: usize,
    ) -> Result<Vec<f64>, TunedError> {
        let feats: Vec<&GraphFeatures> = graphs.iter().map(|g| g.0).collect();
        let gflops: Vec<f64> = graphs.iter().map(|g| g.1).collect();
        let mut members = vec![(&self.trained, &self.meta.scaler)];
        if let (Some(t), Some(m)) = (&self.companion, &self.meta.companion) {
            members.push((t, &m.scaler));
        }
        let (units, _) = ensemble(&members, &feats, &gflops, batch_size)
            .map_err(|e| predictor_err(&self.meta.task, e))?;
        let units = combine(&units, self.meta.blend.as_ref());
        Ok(calibrated(units, self.meta.calibration.as_ref()))
    }

    /// Write the model under `models/<name>/<version>/`, replacing a model of the same id.
    /// Returns the folder.
    pub fn save(&self, models: &Path) -> Result<PathBuf, TunedError> {
        let dir = id_dir(models, &self.meta.id())?;
        let parent = dir.parent().expect("an id folder has a parent");
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        let tmp = parent.join(format!(".{}.tmp-{}", self.meta.version, std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        self.trained
            .save(&tmp)
            .map_err(|e| predictor_err(&self.meta.task, e))?;
        if let Some(c) = &self.companion {
            c.save(&tmp.join(COMPANION_DIR))
                .map_err(|e| predictor_err(&self.meta.task, e))?;
        }
        let side = tmp.join(SIDECAR);
        let json = serde_json::to_string_pretty(&self.meta).expect("the sidecar serialises");
        std::fs::write(&side, json + "\n").map_err(io_err(&side))?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
        Ok(dir)
    }
}

/// Delete the model `id` under `models` (and its task's folder once empty); false when there
/// was none. For models nothing uses any more: the caller decides which.
pub fn remove(models: &Path, id: &str) -> Result<bool, TunedError> {
    let dir = id_dir(models, id)?;
    if !dir.is_dir() {
        return Ok(false);
    }
    std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    if let Some(parent) = dir.parent() {
        // Fails, harmlessly, while another version is there.
        let _ = std::fs::remove_dir(parent);
    }
    Ok(true)
}

/// The newest model (by creation time) of task `name` under `models`. Every version's sidecar
/// is read: one that is missing or malformed is an error naming it (it may be the newest).
pub fn latest(models: &Path, name: &str) -> Result<PathBuf, TunedError> {
    let not_found = || TunedError::NotFound {
        name: name.to_string(),
        dir: models.to_path_buf(),
    };
    // The name is checked like an id's, with a placeholder version.
    let folder = id_dir(models, &format!("{name}/{}", "0".repeat(32)))
        .map_err(|_| not_found())?
        .parent()
        .expect("an id folder has a parent")
        .to_path_buf();
    let rd = std::fs::read_dir(&folder).map_err(|_| not_found())?;
    let mut best: Option<(u64, PathBuf)> = None;
    for e in rd.flatten() {
        let p = e.path();
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if hidden || !p.is_dir() {
            continue;
        }
        // A version whose sidecar cannot be read might be the newest: reported, not skipped
        // for an older one.
        let meta = read_sidecar(&p.join(SIDECAR))?;
        if best.as_ref().is_none_or(|(t, _)| meta.created_at > *t) {
            best = Some((meta.created_at, p));
        }
    }
    best.map(|(_, p)| p).ok_or_else(not_found)
}

/// Features, GFLOPs and label of every sample of `spec`, in file order.
fn prepare(spec: &TaskSpec, t: &Trained) -> Result<Vec<Labelled>, TunedError> {
    let fc = t.model.config.features();
    spec.samples
        .iter()
        .map(|s| {
            let built;
            let g = match (&s.input, spec.space) {
                (SampleInput::Arch(a), TaskSpace::Builtin { head, .. }) => {
                    built = a.build(head).map_err(|e| TunedError::Sample {
                        task: spec.name.clone(),
                        line: s.line,
                        message: e.to_string(),
                    })?;
                    &built
                }
                (SampleInput::Graph { graph, .. }, _) => graph,
                (SampleInput::Arch(_), TaskSpace::Graph) => {
                    return Err(TunedError::Sample {
                        task: spec.name.clone(),
                        line: s.line,
                        message: "an architecture string in a task of JSON graphs".into(),
                    })
                }
            };
            Ok(Labelled {
                features: Arc::new(extract(g, &fc)),
                value: s.value,
                gflops: gflops(g),
            })
        })
        .collect()
}

/// One list of values per member of a task model (base model first).
type PerMember<T> = Vec<Vec<T>>;

/// Each member's predictions in the task's units (through its own scaler's inverse) and in
/// its standardised units.
fn ensemble(
    members: &[(&Trained, &TaskScaler)],
    feats: &[&GraphFeatures],
    gflops: &[f64],
    batch_size: usize,
) -> Result<(PerMember<f64>, PerMember<f32>), PredictorError> {
    let mut units = Vec::with_capacity(members.len());
    let mut zs = Vec::with_capacity(members.len());
    for (t, scaler) in members {
        let z = predict_batched(t.regressor(), feats, batch_size, &t.device)?;
        units.push(
            z.iter()
                .zip(gflops)
                .map(|(&z, &g)| scaler.inverse(z as f64, g))
                .collect(),
        );
        zs.push(z);
    }
    Ok((units, zs))
}

/// The members' predictions in task units (`units[m][i]`) combined: through the blend when
/// there is one, else their mean.
fn combine(units: &[Vec<f64>], blend: Option<&Blend>) -> Vec<f64> {
    let signals: Vec<&[f64]> = units.iter().map(|u| u.as_slice()).collect();
    match blend {
        Some(b) => b.apply_all(&signals),
        None => {
            let n = signals.first().map_or(0, |s| s.len());
            let k = signals.len() as f64;
            (0..n)
                .map(|i| signals.iter().map(|s| s[i] / k).sum())
                .collect()
        }
    }
}

/// Predictions through the calibration, when there is one.
fn calibrated(units: Vec<f64>, calibration: Option<&Calibration>) -> Vec<f64> {
    match calibration {
        None => units,
        Some(c) => units.into_iter().map(|v| c.apply(v)).collect(),
    }
}

/// Fine-tune `t` on all of `data` for `epochs` (none: keep it as it is).
fn fit_member(
    t: &Trained,
    data: &[Labelled],
    scaler: &TaskScaler,
    tc: &TrainConfig,
    epochs: usize,
    prefixes: &[String],
    quiet: bool,
) -> Result<Option<TrainReport>, PredictorError> {
    if epochs == 0 {
        return Ok(None);
    }
    let tc = TrainConfig {
        epochs,
        ..tc.clone()
    };
    let vars = t.trainable_vars(prefixes)?;
    let all: Vec<usize> = (0..data.len()).collect();
    let samples = samples_of(data, &all, scaler);
    train(t.regressor(), &vars, &samples, &tc, quiet, &t.device).map(Some)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// At most how many optimisation steps [`finetune`] takes on `spec` (the daemon shows a job's
/// progress against it): the cross-validation trains each fold of each member (the companion
/// too, when [`wants_companion`]) for the longest candidate length, the task's `epochs`; the
/// final fit of each kept member is counted at that length too, though the length chosen may
/// be shorter (then the job ends early). Zero for a zero-shot task. Counts steps of
/// `batch_size` networks, as the training loop does.
pub fn planned_steps(spec: &TaskSpec) -> u64 {
    if spec.mode == Mode::ZeroShot {
        return 0;
    }
    let settings = spec.finetune.unwrap_or_default().resolved();
    let n = spec.samples.len();
    let b = settings.batch_size.max(1);
    let e = settings.epochs as u64;
    let run = |m: usize| e.saturating_mul(m.div_ceil(b) as u64);
    if !(settings.select_epochs && n >= MIN_SELECT_SAMPLES) {
        return run(n);
    }
    let k = EpochSelection::default().folds.min(n).max(1);
    // Fold f holds out the positions p with p % k == f (select.rs), and trains on the rest.
    let cv: u64 = (0..k)
        .map(|f| run(n - (n - f).div_ceil(k)))
        .fold(0, u64::saturating_add);
    let members = if wants_companion(spec) { 2 } else { 1 };
    let fitted = match settings.companion {
        Companion::Average | Companion::Weighted if members == 2 => 2,
        _ => 1,
    };
    cv.saturating_mul(members)
        .saturating_add(run(n).saturating_mul(fitted))
}

/// Whether [`finetune`] would use a companion model for `spec`: fine-tuning with the length
/// cross-validated on enough samples, and `companion` not `off`. Callers load the companion only
/// then.
pub fn wants_companion(spec: &TaskSpec) -> bool {
    let settings = spec.finetune.unwrap_or_default().resolved();
    spec.mode == Mode::Finetune
        && settings.select_epochs
        && spec.samples.len() >= MIN_SELECT_SAMPLES
        && settings.companion != Companion::Off
}

/// Carry `base` (described by `base_name`) to the task `spec`: fit its statistics on the
/// samples and, unless the task is zero-shot, fine-tune on them. With the epochs selected,
/// `companion` (the base's no-transform twin and its name, see [`BaseModel::load_plain`]) is
/// cross-validated too and, as the task's `companion` setting says, fine-tuned and averaged
/// with `base` or put in its place when its chosen length ranks the held-out samples better.
/// `quiet` hides the progress bar; once `cancel` is set, training stops and this returns an
/// error (nothing is saved: the caller saves the model).
pub fn finetune(
    spec: &TaskSpec,
    mut base: Trained,
    base_name: &str,
    companion: Option<(Trained, String)>,
    quiet: bool,
    cancel: &Cancel,
) -> Result<TaskModel, TunedError> {
    let start = Instant::now();
    let perr = |e: PredictorError| predictor_err(&spec.name, e);
    let mut base_name = base_name.to_string();
    let mut base_fingerprint = fingerprint(&base).map_err(perr)?;
    let data = prepare(spec, &base)?;
    let y: Vec<f64> = data.iter().map(|d| d.value).collect();
    let gf: Vec<f64> = data.iter().map(|d| d.gflops).collect();
    let hib = spec.higher_is_better;
    let mut scaler = TaskScaler::fit_with(&y, &gf, hib, base.flops_scaling()).map_err(perr)?;
    let settings = spec.finetune.unwrap_or_default().resolved();
    let mut selection = None;
    let mut calibration = None;
    let mut cross_validated = None;
    let mut blend = None;
    let mut second: Option<(Trained, CompanionMeta)> = None;
    let report = match spec.mode {
        Mode::ZeroShot => None,
        Mode::Finetune => {
            let tc = TrainConfig {
                epochs: settings.epochs,
                batch_size: settings.batch_size,
                lr: settings.lr,
                dev_fraction: 0.0,
                seed: settings.seed,
                rank_weight: settings.rank_weight,
                cancel: cancel.clone(),
                ..TrainConfig::default()
            };
            let prefixes: Vec<String> = crate::predictor::checkpoint::VARIABLE_PARTS
                .map(String::from)
                .into();
            let mut epochs = settings.epochs;
            if settings.select_epochs && data.len() >= MIN_SELECT_SAMPLES {
                let d = EpochSelection::default();
                let mut candidates: Vec<usize> =
                    d.candidates.into_iter().filter(|&e| e < epochs).collect();
                candidates.push(epochs);
                let sel = EpochSelection { candidates, ..d };
                let mut r = select_epochs(&base, &data, hib, &tc, &prefixes, &sel).map_err(perr)?;
                // The companion reads the same features (else it is not a candidate).
                let companion = companion.filter(|(p, _)| {
                    settings.companion != Companion::Off
                        && p.model.config.features() == base.model.config.features()
                });
                if let Some((p, name)) = companion {
                    let rp = select_epochs(&p, &data, hib, &tc, &prefixes, &sel).map_err(perr)?;
                    let ps = TaskScaler::fit_with(&y, &gf, hib, p.flops_scaling()).map_err(perr)?;
                    let fp = fingerprint(&p).map_err(perr)?;
                    if matches!(settings.companion, Companion::Average | Companion::Weighted) {
                        let train = fit_member(&p, &data, &ps, &tc, rp.epochs, &prefixes, quiet)
                            .map_err(perr)?;
                        let meta = CompanionMeta {
                            base_model: name,
                            base_fingerprint: fp,
                            scaler: ps,
                            selection: rp,
                            train,
                        };
                        second = Some((p, meta));
                    } else if rp.best_score() > r.best_score() {
                        (base, base_name, base_fingerprint, scaler) = (p, name, fp, ps);
                        r = rp;
                    }
                }
                epochs = r.epochs;
                // What the model (or the blend, or the average) predicts out of fold.
                let oof = match &second {
                    Some((_, m)) if settings.companion == Companion::Weighted => {
                        let signals = [r.oof.as_slice(), m.selection.oof.as_slice()];
                        let b = Blend::fit(&signals, &y, Weighting::Rank).map_err(perr)?;
                        let oof = b.apply_all(&signals);
                        blend = Some(b);
                        oof
                    }
                    Some((_, m)) => crate::stats::midpoints(&r.oof, &m.selection.oof),
                    None => r.oof.clone(),
                };
                if settings.calibrate {
                    calibration = Some(Calibration::fit(&oof, &y).map_err(perr)?);
                }
                cross_validated = Some(FitReport::of(&calibrated(oof, calibration.as_ref()), &y));
                selection = Some(r);
            }
            fit_member(&base, &data, &scaler, &tc, epochs, &prefixes, quiet).map_err(perr)?
        }
    };
    // One pass over the samples serves the fit report and the loss.
    let feats: Vec<&GraphFeatures> = data.iter().map(|d| &*d.features).collect();
    let mut members = vec![(&base, &scaler)];
    if let Some((t, m)) = &second {
        members.push((t, &m.scaler));
    }
    let (units, zs) = ensemble(&members, &feats, &gf, 256).map_err(perr)?;
    let pred = calibrated(combine(&units, blend.as_ref()), calibration.as_ref());
    let fit = FitReport::of(&pred, &y);
    let final_loss = members
        .iter()
        .zip(&zs)
        .map(|((_, s), z)| {
            z.iter()
                .zip(&data)
                .map(|(&z, d)| (z as f64 - s.forward(d.value, d.gflops)).powi(2))
                .sum::<f64>()
                / data.len().max(1) as f64
        })
        .sum::<f64>()
        / members.len() as f64;
    let report_tag = serde_json::json!({"task": spec.name, "version": spec.hash});
    base.meta.report = Some(report_tag.clone());
    let (companion_trained, companion_meta) = match second {
        Some((mut t, m)) => {
            t.meta.report = Some(report_tag);
            (Some(t), Some(m))
        }
        None => (None, None),
    };
    let meta = TunedMeta {
        format_version: FORMAT_VERSION,
        task: spec.name.clone(),
        version: spec.hash.clone(),
        space: spec.space,
        higher_is_better: hib,
        mode: spec.mode,
        scaler,
        base_model: base_name,
        base_fingerprint,
        samples: spec.samples.len(),
        finetune: (spec.mode == Mode::Finetune).then_some(settings),
        selection,
        calibration,
        companion: companion_meta,
        blend,
        final_loss: Some(final_loss),
        train: report,
        fit,
        cross_validated,
        seconds: start.elapsed().as_secs_f64(),
        created_at: now_ms(),
    };
    Ok(TaskModel {
        trained: base,
        companion: companion_trained,
        meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::taskfile::{self, Limits};

    #[test]
    fn an_undefined_fit_measure_round_trips_as_nan() {
        let r = FitReport::of(&[1.0, 1.0, 1.0], &[0.5, 0.7, 0.9]);
        assert!(r.spearman.is_nan(), "{r:?}");
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"spearman\":null"), "{text}");
        let back: FitReport = serde_json::from_str(&text).unwrap();
        assert!(back.spearman.is_nan() && back.kendall.is_nan());
        assert_eq!(back.mae, r.mae);
    }

    /// Six real NB-201 CIFAR-10 labels (validation accuracy, from the shipped table).
    fn task(dir: &Path, extra: &str) -> TaskSpec {
        let table = crate::spaces::labels::load(
            crate::spaces::SpaceId::Nb201,
            crate::spaces::Task::Cifar10,
        )
        .unwrap();
        let mut csv = String::from("arch,value\n");
        for r in table.rows.iter().take(6) {
            csv.push_str(&format!("{},{}\n", r.arch, r.value));
        }
        std::fs::write(dir.join("s.csv"), csv).unwrap();
        let t = dir.join("t.toml");
        std::fs::write(
            &t,
            format!("name = \"c10\"\nspace = \"nb201\"\nhead = \"cifar10\"\nsamples = \"s.csv\"\n{extra}"),
        )
        .unwrap();
        taskfile::load(&t, &Limits::default()).unwrap()
    }

    /// Each sample's features and GFLOPs, as `predict` takes them.
    fn sample_features(spec: &TaskSpec, t: &Trained) -> Vec<(GraphFeatures, f64)> {
        prepare(spec, t)
            .unwrap()
            .iter()
            .map(|d| ((*d.features).clone(), d.gflops))
            .collect()
    }

    /// [`finetune`] from the embedded model, offered its companion when `both`.
    fn tune(spec: &TaskSpec, both: bool) -> TaskModel {
        let dev = Device::Cpu;
        let base = BaseModel::Embedded;
        let companion = if both {
            base.load_plain(&dev).unwrap()
        } else {
            None
        };
        finetune(
            spec,
            base.load(&dev).unwrap(),
            &base.describe(),
            companion,
            true,
            &Cancel::default(),
        )
        .unwrap()
    }

    /// The steps [`finetune`] counts into its `Cancel`: exactly [`planned_steps`] without the
    /// cross-validation; with it, every cross-validation step (2 members × 5 folds × 3 epochs
    /// × ⌈fold size / 2⌉ = 84 on 6 networks), then each member's final fit at the length
    /// chosen, at most the planned 3 epochs × 3 steps each.
    #[test]
    fn finetune_counts_the_steps_it_plans() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let base = BaseModel::Embedded;
        let run = |spec: &TaskSpec, both: bool| {
            let steps = Arc::new(AtomicU64::new(0));
            let companion = both.then(|| base.load_plain(&dev).unwrap()).flatten();
            let cancel = Cancel::default().counting(steps.clone());
            finetune(
                spec,
                base.load(&dev).unwrap(),
                "b",
                companion,
                true,
                &cancel,
            )
            .unwrap();
            steps.load(Ordering::Relaxed)
        };
        let plain = task(
            dir.path(),
            "[finetune]\nepochs = 3\nbatch_size = 2\nselect_epochs = false\n",
        );
        assert_eq!(planned_steps(&plain), 9);
        assert_eq!(run(&plain, false), 9);
        let cv = task(dir.path(), "[finetune]\nepochs = 3\nbatch_size = 2\n");
        assert!(wants_companion(&cv));
        assert_eq!(planned_steps(&cv), 84 + 2 * 9);
        let counted = run(&cv, true);
        assert!(
            (84..=102).contains(&counted) && (counted - 84) % 3 == 0,
            "{counted}"
        );
        let zs = task(dir.path(), "mode = \"zero-shot\"\n");
        assert_eq!((planned_steps(&zs), run(&zs, true)), (0, 0));
    }

    #[test]
    fn a_cancelled_finetune_stops_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let spec = task(dir.path(), "");
        let dev = Device::Cpu;
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let r = finetune(
            &spec,
            BaseModel::Embedded.load(&dev).unwrap(),
            "embedded",
            None,
            true,
            &Cancel::new(flag),
        );
        let e = r.err().expect("cancelled before its first step");
        assert!(e.to_string().contains("cancelled"), "{e}");
    }

    #[test]
    fn the_companion_is_wanted_only_where_finetune_would_use_it() {
        let dir = tempfile::tempdir().unwrap();
        assert!(wants_companion(&task(dir.path(), "")));
        assert!(wants_companion(&task(
            dir.path(),
            "[finetune]\ncompanion = \"choose\"\n"
        )));
        for extra in [
            "[finetune]\ncompanion = \"off\"\n",
            "[finetune]\nselect_epochs = false\n",
            "mode = \"zero-shot\"\n",
        ] {
            assert!(!wants_companion(&task(dir.path(), extra)), "{extra}");
        }
        // Fewer samples than the cross-validation needs.
        let mut few = task(dir.path(), "");
        few.samples.truncate(MIN_SELECT_SAMPLES - 1);
        assert!(!wants_companion(&few));
    }

    #[test]
    fn finetune_chooses_its_epochs_on_the_samples_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let spec = task(dir.path(), "[finetune]\nepochs = 7\nseed = 5\n");
        let a = tune(&spec, false);
        let sel = a.meta.selection.as_ref().expect("epochs selected");
        // The defaults below the maximum, then the maximum itself.
        let tried: Vec<usize> = sel.scores.iter().map(|s| s.0).collect();
        assert_eq!(tried, vec![0, 5, 7]);
        assert!(tried.contains(&sel.epochs));
        assert!(a.meta.finetune.unwrap().select_epochs);
        // Calibrated on the chosen length's out-of-fold predictions, and predictions use it.
        assert_eq!(sel.oof.len(), 6);
        let y: Vec<f64> = spec.samples.iter().map(|s| s.value).collect();
        let cal = a.meta.calibration.expect("calibrated by default");
        assert_eq!(cal, Calibration::fit(&sel.oof, &y).unwrap());
        let feats = sample_features(&spec, &a.trained);
        let inputs: Vec<(&GraphFeatures, f64)> = feats.iter().map(|(f, g)| (f, *g)).collect();
        let raw = a
            .trained
            .predict_scaled(&a.meta.scaler, &inputs, 8)
            .unwrap();
        let want: Vec<f64> = raw.iter().map(|&v| cal.apply(v)).collect();
        assert_eq!(a.predict(&inputs, 8).unwrap(), want);
        // The held-out estimate: the calibrated out-of-fold predictions against the labels.
        let cv = a.meta.cross_validated.as_ref().expect("cross-validated");
        let held: Vec<f64> = sel.oof.iter().map(|&v| cal.apply(v)).collect();
        assert_eq!(*cv, FitReport::of(&held, &y));
        let raw_spec = task(
            dir.path(),
            "[finetune]\nepochs = 7\nseed = 5\ncalibrate = false\n",
        );
        let c = tune(&raw_spec, false);
        assert!(c.meta.selection.is_some() && c.meta.calibration.is_none());
        let cv = c.meta.cross_validated.as_ref().expect("cross-validated");
        assert_eq!(cv.spearman, crate::stats::spearman(&sel.oof, &y));
        assert_eq!(c.predict(&inputs, 8).unwrap(), raw);
        let trained = a.meta.train.as_ref().map_or(0, |r| r.epochs.len());
        assert_eq!(trained, sel.epochs);
        if sel.epochs == 0 {
            assert_eq!(fingerprint(&a.trained).unwrap(), a.meta.base_fingerprint);
        }
        // Repeatable.
        let b = tune(&spec, false);
        assert_eq!(b.meta.selection, a.meta.selection);
        assert_eq!(
            fingerprint(&a.trained).unwrap(),
            fingerprint(&b.trained).unwrap()
        );
    }

    #[test]
    fn latest_reports_a_version_whose_sidecar_cannot_be_read() {
        let dir = tempfile::tempdir().unwrap();
        let spec = task(dir.path(), "mode = \"zero-shot\"\n");
        let m = tune(&spec, false);
        let models = dir.path().join("models");
        let saved = m.save(&models).unwrap();
        assert_eq!(latest(&models, "c10").unwrap(), saved);
        // Another version, perhaps the newest, whose sidecar is damaged: named, not skipped.
        let other = models.join("c10").join("f".repeat(32));
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join(SIDECAR), "{").unwrap();
        match latest(&models, "c10") {
            Err(TunedError::Sidecar { path, .. }) => assert_eq!(path, other.join(SIDECAR)),
            r => panic!("expected a sidecar error, got {r:?}"),
        }
        std::fs::remove_file(other.join(SIDECAR)).unwrap();
        assert!(matches!(latest(&models, "c10"), Err(TunedError::Io { .. })));
        std::fs::remove_dir(&other).unwrap();
        assert_eq!(latest(&models, "c10").unwrap(), saved);
    }

    #[test]
    fn remove_deletes_one_saved_model_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let spec = task(dir.path(), "mode = \"zero-shot\"\n");
        let m = tune(&spec, false);
        let models = dir.path().join("models");
        let saved = m.save(&models).unwrap();
        let other = models.join("c10").join("f".repeat(32));
        std::fs::create_dir_all(&other).unwrap();
        assert!(remove(&models, &m.meta.id()).unwrap());
        assert!(
            !saved.exists() && other.is_dir(),
            "only the model asked for"
        );
        assert!(!remove(&models, &m.meta.id()).unwrap(), "already gone");
        assert!(remove(&models, &format!("c10/{}", "f".repeat(32))).unwrap());
        assert!(
            !models.join("c10").exists(),
            "the empty task folder goes too"
        );
        assert!(matches!(
            remove(&models, "../x/0"),
            Err(TunedError::BadId(_))
        ));
    }

    #[test]
    fn finetune_is_seeded_saved_and_reloaded_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let spec = task(
            dir.path(),
            "[finetune]\nepochs = 2\nseed = 5\nselect_epochs = false\n",
        );
        let dev = Device::Cpu;
        let a = tune(&spec, false);
        let b = tune(&spec, false);
        assert_eq!(
            fingerprint(&a.trained).unwrap(),
            fingerprint(&b.trained).unwrap()
        );
        assert_ne!(
            fingerprint(&a.trained).unwrap(),
            a.meta.base_fingerprint,
            "fine-tuning changed the weights"
        );
        assert_eq!(a.meta.train.as_ref().unwrap().epochs.len(), 2);
        assert!(a.meta.selection.is_none() && a.meta.calibration.is_none());
        assert!(
            a.meta.cross_validated.is_none(),
            "no cross-validation, no estimate"
        );
        assert!(a.meta.final_loss.unwrap().is_finite());
        let models = dir.path().join("models");
        let saved = a.save(&models).unwrap();
        assert_eq!(saved, models.join("c10").join(&spec.hash));
        assert_eq!(latest(&models, "c10").unwrap(), saved);
        let back = TaskModel::load_id(&models, &a.meta.id(), &dev).unwrap();
        assert_eq!(back.meta, a.meta);
        let g = crate::spaces::Arch::parse(
            crate::spaces::SpaceId::Nb201,
            "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
        )
        .unwrap()
        .build(crate::spaces::Task::Cifar10)
        .unwrap();
        let f = extract(&g, &back.trained.model.config.features());
        let p = back.predict(&[(&f, gflops(&g))], 1).unwrap();
        assert_eq!(p, a.predict(&[(&f, gflops(&g))], 1).unwrap());
        assert!(p[0] > 0.0 && p[0] < 100.0, "{p:?} in accuracy units");
        // Ids cannot lead outside the models folder.
        for bad in [
            "../x/0123",
            "c10",
            &format!("../{}", spec.hash),
            &format!(".x/{}", spec.hash),
        ] {
            assert!(id_dir(&models, bad).is_err(), "{bad}");
        }
        assert!(matches!(
            latest(&models, "nope"),
            Err(TunedError::NotFound { .. })
        ));
        // A newer version whose sidecar is corrupt is reported, not skipped for this one.
        let newer = models.join("c10").join("f".repeat(32));
        std::fs::create_dir_all(&newer).unwrap();
        std::fs::write(newer.join(SIDECAR), "{\"format_version\": 1, ").unwrap();
        let e = latest(&models, "c10").unwrap_err().to_string();
        assert!(
            e.contains(&newer.join(SIDECAR).display().to_string()),
            "{e}"
        );
        std::fs::remove_dir_all(&newer).unwrap();
        // Statistics that cannot predict are refused, naming the task, the field and the file.
        let side = saved.join(SIDECAR);
        let mut meta = a.meta.clone();
        meta.scaler.sigma = 0.0;
        std::fs::write(&side, serde_json::to_string(&meta).unwrap()).unwrap();
        let e = TaskModel::load(&saved, &dev).err().unwrap().to_string();
        let file = side.display().to_string();
        assert!(
            e.contains("'c10'") && e.contains("scaler: sigma") && e.contains(&file),
            "{e}"
        );
    }

    #[test]
    fn zero_shot_changes_no_weight() {
        let dir = tempfile::tempdir().unwrap();
        let spec = task(dir.path(), "mode = \"zero-shot\"\n");
        let m = tune(&spec, true);
        assert_eq!(fingerprint(&m.trained).unwrap(), m.meta.base_fingerprint);
        assert!(m.meta.train.is_none() && m.meta.finetune.is_none());
        assert!(m.meta.fit.spearman.is_finite());
        assert!(m.meta.final_loss.unwrap().is_finite());
        assert!(
            m.meta.scaler.flops_scaling,
            "zero-shot keeps the AIO-P model"
        );
    }

    #[test]
    fn finetune_averages_or_chooses_the_model_and_its_companion() {
        let dir = tempfile::tempdir().unwrap();
        let spec_with = |c: &str| {
            task(
                dir.path(),
                &format!("[finetune]\nepochs = 5\nseed = 3\n{c}"),
            )
        };
        let spec = spec_with("");
        let (plain, plain_name) = BaseModel::Embedded
            .load_plain(&Device::Cpu)
            .unwrap()
            .unwrap();
        // Each model alone.
        let a = tune(&spec, false);
        let p = finetune(&spec, plain, &plain_name, None, true, &Cancel::default()).unwrap();
        assert!(a.meta.scaler.flops_scaling && !p.meta.scaler.flops_scaling);
        let (sa, sp) = (
            a.meta.selection.clone().unwrap(),
            p.meta.selection.clone().unwrap(),
        );
        let feats = sample_features(&spec, &a.trained);
        let inputs: Vec<(&GraphFeatures, f64)> = feats.iter().map(|(f, g)| (f, *g)).collect();
        let y: Vec<f64> = spec.samples.iter().map(|s| s.value).collect();

        let ra = a
            .trained
            .predict_scaled(&a.meta.scaler, &inputs, 8)
            .unwrap();
        let rp = p
            .trained
            .predict_scaled(&p.meta.scaler, &inputs, 8)
            .unwrap();
        let models = dir.path().join("models");

        // By default both are fine-tuned, each exactly as alone, and blended: each member
        // standardised by its out-of-fold predictions and weighted by their rank of the
        // samples; the calibration is fitted on the blend's out-of-fold predictions.
        let both = tune(&spec, true);
        assert_eq!(both.meta.selection.as_ref(), Some(&sa));
        assert_eq!(both.meta.scaler, a.meta.scaler);
        let c = both.meta.companion.as_ref().expect("blended");
        assert_eq!((&c.selection, &c.scaler), (&sp, &p.meta.scaler));
        assert_eq!(c.base_model, p.meta.base_model);
        let ct = both.companion.as_ref().unwrap();
        assert_eq!(
            fingerprint(&both.trained).unwrap(),
            fingerprint(&a.trained).unwrap()
        );
        assert_eq!(fingerprint(ct).unwrap(), fingerprint(&p.trained).unwrap());
        let oofs = [sa.oof.as_slice(), sp.oof.as_slice()];
        let blend = Blend::fit(&oofs, &y, Weighting::Rank).unwrap();
        assert_eq!(both.meta.blend.as_ref(), Some(&blend));
        let cal = Calibration::fit(&blend.apply_all(&oofs), &y).unwrap();
        assert_eq!(both.meta.calibration.as_ref(), Some(&cal));
        let want: Vec<f64> = blend
            .apply_all(&[&ra, &rp])
            .into_iter()
            .map(|v| cal.apply(v))
            .collect();
        let got = both.predict(&inputs, 8).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-9, "{g} vs {w}");
        }
        // Saved and read back, it predicts the same.
        both.save(&models).unwrap();
        let back = TaskModel::load_id(&models, &both.meta.id(), &Device::Cpu).unwrap();
        assert_eq!(back.meta, both.meta);
        assert_eq!(back.predict(&inputs, 8).unwrap(), got);

        // "average": the same two members, their mean in task units, the calibration fitted
        // on the mean's out-of-fold predictions.
        let avg = tune(&spec_with("companion = \"average\"\n"), true);
        assert!(avg.meta.blend.is_none() && avg.companion.is_some());
        assert_eq!(avg.meta.companion.as_ref().unwrap().selection, sp);
        let oof: Vec<f64> = sa
            .oof
            .iter()
            .zip(&sp.oof)
            .map(|(x, z)| (x + z) / 2.0)
            .collect();
        let cal = Calibration::fit(&oof, &y).unwrap();
        assert_eq!(avg.meta.calibration.as_ref(), Some(&cal));
        let want: Vec<f64> = ra
            .iter()
            .zip(&rp)
            .map(|(x, z)| cal.apply(x / 2.0 + z / 2.0))
            .collect();
        let got = avg.predict(&inputs, 8).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-9, "{g} vs {w}");
        }

        // "choose": the better held-out rank wins (ties: the base model), and the result is
        // exactly that model's own fine-tuning.
        let chosen = tune(&spec_with("companion = \"choose\"\n"), true);
        let want = if sp.best_score() > sa.best_score() {
            &p
        } else {
            &a
        };
        assert!(chosen.companion.is_none() && chosen.meta.companion.is_none());
        assert_eq!(chosen.meta.base_model, want.meta.base_model);
        assert_eq!(chosen.meta.base_fingerprint, want.meta.base_fingerprint);
        assert_eq!(chosen.meta.scaler, want.meta.scaler);
        assert_eq!(chosen.meta.selection, want.meta.selection);
        assert_eq!(
            fingerprint(&chosen.trained).unwrap(),
            fingerprint(&want.trained).unwrap()
        );
        // Switched off: the base model, whatever the companion would score.
        let o = tune(&spec_with("companion = \"off\"\n"), true);
        assert!(o.meta.companion.is_none());
        assert_eq!(o.meta.base_model, a.meta.base_model);
        assert_eq!(o.meta.selection, a.meta.selection);
    }

    #[test]
    fn a_sidecar_with_a_broken_blend_is_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let spec = task(dir.path(), "[finetune]\nepochs = 5\nseed = 3\n");
        let m = tune(&spec, true);
        assert!(m.meta.blend.is_some());
        let models = dir.path().join("models");
        let folder = m.save(&models).unwrap();
        let sidecar = folder.join(SIDECAR);
        let good: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&sidecar).unwrap()).unwrap();
        type Break = fn(&mut serde_json::Value);
        let breaks: [(&str, Break); 3] = [
            ("negative weight", |v| {
                v["blend"]["members"][0]["weight"] = serde_json::json!(-0.5)
            }),
            ("one member", |v| {
                v["blend"]["members"].as_array_mut().unwrap().pop();
            }),
            ("no companion", |v| {
                v.as_object_mut().unwrap().remove("companion");
            }),
        ];
        for (what, f) in breaks {
            let mut v = good.clone();
            f(&mut v);
            std::fs::write(&sidecar, serde_json::to_string(&v).unwrap()).unwrap();
            let e = TaskModel::load(&folder, &Device::Cpu).err().expect(what);
            let msg = e.to_string();
            assert!(
                msg.contains("blend") && msg.contains(SIDECAR),
                "{what}: {msg}"
            );
        }
    }
}
