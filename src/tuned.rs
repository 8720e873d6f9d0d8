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
//! cross-validation runs on the base model's no-transform companion (`choose_transform`) and
//! the better of the two is fine-tuned; its out-of-fold predictions then fit a
//! [`crate::predictor::calibrate::Calibration`] to the task's units (`calibrate`). [`TaskModel::save`] writes the checkpoint
//! plus a sidecar `task.json` ([`TunedMeta`]: task, version, space and head, scaler, base
//! model, training report) under `<models>/<task name>/<version>/`.
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

use crate::predictor::calibrate::Calibration;
use crate::predictor::checkpoint::Trained;
use crate::predictor::features::{extract, GraphFeatures};
use crate::predictor::init::sorted_vars;
use crate::predictor::select::{
    samples_of, select_epochs, EpochSelection, Labelled, SelectionReport,
};
use crate::predictor::train::{predict_batched, train, TrainConfig, TrainReport};
use crate::predictor::transform::{gflops, TaskScaler};
use crate::predictor::{shipped, Device, PredictorError};
use crate::taskfile::{Finetune, Mode, SampleInput, TaskSpace, TaskSpec};

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
}

/// A content fingerprint of a model's weights and configuration (32 hex digits): two models
/// with the same fingerprint predict the same.
pub fn fingerprint(t: &Trained) -> Result<String, PredictorError> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let config = serde_json::to_vec(&(&t.meta.config, &t.meta.adapters)).map_err(|e| {
        PredictorError::Config(format!("the model configuration does not serialise: {e}"))
    })?;
    h.update(&config);
    for (name, var) in sorted_vars(&t.map) {
        h.update(name.as_bytes());
        let v: Vec<f32> = var
            .as_tensor()
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?;
        for x in v {
            h.update(&x.to_le_bytes());
        }
    }
    Ok(format!("{:032x}", h.digest128()))
}

/// How well the model fits its own samples after transfer (in-sample, for information).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    pub spearman: f64,
    pub kendall: f64,
    /// Mean absolute error in the task's units.
    pub mae: f64,
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
    /// Training MSE (standardised units) of the last epoch, or of the model as it stands when
    /// no epoch ran (None only in sidecars written before that).
    pub final_loss: Option<f64>,
    pub fit: FitReport,
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

/// A task model: weights and sidecar.
pub struct TaskModel {
    pub trained: Trained,
    pub meta: TunedMeta,
}

/// Check a model id (`<name>/<32 hex>`) and return its folder under `models`.
pub fn id_dir(models: &Path, id: &str) -> Result<PathBuf, TunedError> {
    let bad = || TunedError::BadId(id.to_string());
    let (name, version) = id.split_once('/').ok_or_else(bad)?;
    let name_ok = !name.is_empty()
        && name.len() <= crate::taskfile::MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    let version_ok = version.len() == 32 && version.chars().all(|c| c.is_ascii_hexdigit());
    if !name_ok || !version_ok {
        return Err(bad());
    }
    Ok(models.join(name).join(version))
}

impl TaskModel {
    /// Read a task model folder written by [`TaskModel::save`].
    pub fn load(dir: &Path, device: &Device) -> Result<TaskModel, TunedError> {
        let m = dir.join(SIDECAR);
        let text = std::fs::read_to_string(&m).map_err(io_err(&m))?;
        let probe: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| TunedError::Sidecar {
                path: m.clone(),
                message: e.to_string(),
            })?;
        let v = probe.get("format_version").and_then(|v| v.as_u64());
        if v != Some(FORMAT_VERSION as u64) {
            return Err(TunedError::Sidecar {
                path: m,
                message: format!("format version {v:?}, this build reads {FORMAT_VERSION}"),
            });
        }
        let meta: TunedMeta = serde_json::from_value(probe).map_err(|e| TunedError::Sidecar {
            path: m.clone(),
            message: e.to_string(),
        })?;
        let trained = Trained::load(dir, device).map_err(|e| predictor_err(&meta.task, e))?;
        Ok(TaskModel { trained, meta })
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
        let z = predict_batched(
            self.trained.regressor(),
            &feats,
            batch_size,
            &self.trained.device,
        )
        .map_err(|e| predictor_err(&self.meta.task, e))?;
        let gflops = graphs.iter().map(|g| g.1);
        Ok(to_units(
            &self.meta.scaler,
            self.meta.calibration.as_ref(),
            &z,
            gflops,
        ))
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

/// The newest model (by creation time) of task `name` under `models`.
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
        let Ok(text) = std::fs::read_to_string(p.join(SIDECAR)) else {
            continue;
        };
        let Ok(meta) = serde_json::from_str::<TunedMeta>(&text) else {
            continue;
        };
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

/// Standardised predictions in the task's units: the scaler's inverse, then the calibration
/// when there is one.
fn to_units(
    scaler: &TaskScaler,
    calibration: Option<&Calibration>,
    z: &[f32],
    gflops: impl Iterator<Item = f64>,
) -> Vec<f64> {
    z.iter()
        .zip(gflops)
        .map(|(&z, g)| {
            let v = scaler.inverse(z as f64, g);
            calibration.map_or(v, |c| c.apply(v))
        })
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Carry `base` (described by `base_name`) to the task `spec`: fit its statistics on the
/// samples and, unless the task is zero-shot, fine-tune on them. With the epochs selected and
/// `choose_transform`, `companion` (the base's no-transform twin and its name, see
/// [`BaseModel::load_plain`]) is cross-validated too and replaces `base` when its chosen length
/// ranks the held-out samples better. `quiet` hides the progress bar.
pub fn finetune(
    spec: &TaskSpec,
    mut base: Trained,
    base_name: &str,
    companion: Option<(Trained, String)>,
    quiet: bool,
) -> Result<TaskModel, TunedError> {
    let start = Instant::now();
    let perr = |e: PredictorError| predictor_err(&spec.name, e);
    let mut base_name = base_name.to_string();
    let mut base_fingerprint = fingerprint(&base).map_err(perr)?;
    let data = prepare(spec, &base)?;
    let y: Vec<f64> = data.iter().map(|d| d.value).collect();
    let gf: Vec<f64> = data.iter().map(|d| d.gflops).collect();
    let mut scaler =
        TaskScaler::fit_with(&y, &gf, spec.higher_is_better, base.flops_scaling()).map_err(perr)?;
    let settings = spec.finetune.unwrap_or_default().resolved();
    let mut selection = None;
    let mut calibration = None;
    let report = match spec.mode {
        Mode::ZeroShot => None,
        Mode::Finetune => {
            let tc = TrainConfig {
                epochs: settings.epochs,
                batch_size: settings.batch_size,
                lr: settings.lr,
                dev_fraction: 0.0,
                seed: settings.seed,
                ..TrainConfig::default()
            };
            let prefixes: Vec<String> = ["embed.", "gnn.", "head."].map(String::from).into();
            let mut epochs = settings.epochs;
            if settings.select_epochs && data.len() >= MIN_SELECT_SAMPLES {
                let d = EpochSelection::default();
                let mut candidates: Vec<usize> =
                    d.candidates.into_iter().filter(|&e| e < epochs).collect();
                candidates.push(epochs);
                let sel = EpochSelection { candidates, ..d };
                let mut r =
                    select_epochs(&base, &data, spec.higher_is_better, &tc, &prefixes, &sel)
                        .map_err(perr)?;
                // The companion reads the same features (else it is not a candidate).
                let companion = companion.filter(|(p, _)| {
                    settings.choose_transform
                        && p.model.config.features() == base.model.config.features()
                });
                if let Some((p, name)) = companion {
                    let rp = select_epochs(&p, &data, spec.higher_is_better, &tc, &prefixes, &sel)
                        .map_err(perr)?;
                    if rp.best_score() > r.best_score() {
                        base_fingerprint = fingerprint(&p).map_err(perr)?;
                        scaler =
                            TaskScaler::fit_with(&y, &gf, spec.higher_is_better, p.flops_scaling())
                                .map_err(perr)?;
                        base = p;
                        base_name = name;
                        r = rp;
                    }
                }
                epochs = r.epochs;
                if settings.calibrate {
                    calibration = Some(Calibration::fit(&r.oof, &y).map_err(perr)?);
                }
                selection = Some(r);
            }
            if epochs == 0 {
                None
            } else {
                let tc = TrainConfig { epochs, ..tc };
                let vars = base.trainable_vars(&prefixes).map_err(perr)?;
                let all: Vec<usize> = (0..data.len()).collect();
                let samples = samples_of(&data, &all, &scaler);
                let r = train(base.regressor(), &vars, &samples, &tc, quiet, &base.device)
                    .map_err(perr)?;
                Some(r)
            }
        }
    };
    // One pass over the samples serves the fit report and, where no epoch ran, the loss.
    let feats: Vec<&GraphFeatures> = data.iter().map(|d| &*d.features).collect();
    let z = predict_batched(base.regressor(), &feats, 256, &base.device).map_err(perr)?;
    let pred = to_units(
        &scaler,
        calibration.as_ref(),
        &z,
        data.iter().map(|d| d.gflops),
    );
    let fit = FitReport {
        spearman: crate::stats::spearman(&pred, &y),
        kendall: crate::stats::kendall(&pred, &y),
        mae: crate::stats::mae(&pred, &y),
    };
    // The last epoch's training MSE, or where no epoch ran (zero-shot, or 0 epochs chosen)
    // the MSE of the model as it stands, so that the loss gauge always has a value.
    let final_loss = match report.as_ref().and_then(|r| r.epochs.last()) {
        Some(e) => e.train_mse,
        None => {
            let all: Vec<usize> = (0..data.len()).collect();
            let t = samples_of(&data, &all, &scaler);
            z.iter()
                .zip(&t)
                .map(|(&z, s)| (z as f64 - s.target as f64).powi(2))
                .sum::<f64>()
                / data.len().max(1) as f64
        }
    };
    base.meta.report = Some(serde_json::json!({"task": spec.name, "version": spec.hash}));
    let meta = TunedMeta {
        format_version: FORMAT_VERSION,
        task: spec.name.clone(),
        version: spec.hash.clone(),
        space: spec.space,
        higher_is_better: spec.higher_is_better,
        mode: spec.mode,
        scaler,
        base_model: base_name,
        base_fingerprint,
        samples: spec.samples.len(),
        finetune: (spec.mode == Mode::Finetune).then_some(settings),
        selection,
        calibration,
        final_loss: Some(final_loss),
        train: report,
        fit,
        seconds: start.elapsed().as_secs_f64(),
        created_at: now_ms(),
    };
    Ok(TaskModel {
        trained: base,
        meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::taskfile::{self, Limits};

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
        )
        .unwrap()
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
        let feats: Vec<(GraphFeatures, f64)> = prepare(&spec, &a.trained)
            .unwrap()
            .iter()
            .map(|d| ((*d.features).clone(), d.gflops))
            .collect();
        let inputs: Vec<(&GraphFeatures, f64)> = feats.iter().map(|(f, g)| (f, *g)).collect();
        let raw = a
            .trained
            .predict_scaled(&a.meta.scaler, &inputs, 8)
            .unwrap();
        let want: Vec<f64> = raw.iter().map(|&v| cal.apply(v)).collect();
        assert_eq!(a.predict(&inputs, 8).unwrap(), want);
        let raw_spec = task(
            dir.path(),
            "[finetune]\nepochs = 7\nseed = 5\ncalibrate = false\n",
        );
        let c = tune(&raw_spec, false);
        assert!(c.meta.selection.is_some() && c.meta.calibration.is_none());
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
    fn finetune_keeps_whichever_of_the_model_and_its_companion_cross_validates_better() {
        let dir = tempfile::tempdir().unwrap();
        let spec = task(dir.path(), "[finetune]\nepochs = 5\nseed = 3\n");
        let (plain, plain_name) = BaseModel::Embedded
            .load_plain(&Device::Cpu)
            .unwrap()
            .unwrap();
        // Each model alone.
        let a = tune(&spec, false);
        let p = finetune(&spec, plain, &plain_name, None, true).unwrap();
        assert!(a.meta.scaler.flops_scaling && !p.meta.scaler.flops_scaling);
        let (sa, sp) = (
            a.meta.selection.clone().unwrap(),
            p.meta.selection.clone().unwrap(),
        );
        // Both offered: the better held-out rank wins (ties: the base model), and the result is
        // exactly that model's own fine-tuning.
        let both = tune(&spec, true);
        let want = if sp.best_score() > sa.best_score() {
            &p
        } else {
            &a
        };
        assert_eq!(both.meta.base_model, want.meta.base_model);
        assert_eq!(both.meta.base_fingerprint, want.meta.base_fingerprint);
        assert_eq!(both.meta.scaler, want.meta.scaler);
        assert_eq!(both.meta.selection, want.meta.selection);
        assert_eq!(
            fingerprint(&both.trained).unwrap(),
            fingerprint(&want.trained).unwrap()
        );
        // Switched off: the base model, whatever the companion would score.
        let off = task(
            dir.path(),
            "[finetune]\nepochs = 5\nseed = 3\nchoose_transform = false\n",
        );
        let o = tune(&off, true);
        assert_eq!(o.meta.base_model, a.meta.base_model);
        assert_eq!(o.meta.selection, a.meta.selection);
    }
}
