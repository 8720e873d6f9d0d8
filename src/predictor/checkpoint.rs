//! A trained predictor on disk: a directory holding `model.safetensors` (the weights, keyed by
//! the variable names of [`super::model`]) and `model.json` (the sidecar: format version, model
//! configuration with its feature normalisers, per-task label statistics, the training data's
//! hash, seed, training settings and a free-form report).
//!
//! Invariants: loading a saved checkpoint gives a model whose predictions equal the saved one's
//! bit for bit; a sidecar of another format version, or weights missing or mis-shaped for the
//! sidecar's configuration (or a tensor it does not have, or a configuration field left out),
//! is an error naming the tensor or field and the file, never a silently different model; NaN
//! or infinite weights are neither saved nor loaded, nor statistics with σ ≤ 0; predictions are
//! returned in task units through the task's [`TaskScaler`].

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::adapters::{self, Adapted, AdaptersMeta};
use super::batch::Batch;
use super::data::TaskKey;
use super::features::GraphFeatures;
use super::init::{sorted_vars, var_builder};
use super::model::{Config, Predictor, Regressor};
use super::train::{predict_batched, TrainConfig};
use super::transform::TaskScaler;
use super::PredictorError;

/// Version of the checkpoint layout; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const META_FILE: &str = "model.json";

/// The JSON sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub format_version: u32,
    pub config: Config,
    /// μ/σ per task, keyed `space/task`.
    pub stats: BTreeMap<TaskKey, TaskScaler>,
    /// [`super::data::data_hash`] of the training data.
    pub data_hash: String,
    pub seed: u64,
    #[serde(default)]
    pub train: Option<TrainConfig>,
    /// Free-form summary of how the model was made (training log, test metrics).
    #[serde(default)]
    pub report: Option<serde_json::Value>,
    /// K-Adapters on top of the (then frozen) encoder; predictions average them.
    #[serde(default)]
    pub adapters: Option<AdaptersMeta>,
}

/// A predictor with its weights and sidecar.
pub struct Trained {
    pub map: VarMap,
    pub model: Predictor,
    /// The encoder with adapters, when the model has them (then it predicts).
    pub adapted: Option<Adapted>,
    pub meta: Meta,
    pub device: Device,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PredictorError + '_ {
    move |source| PredictorError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn ckpt_err(path: &Path, message: impl std::fmt::Display) -> PredictorError {
    PredictorError::Checkpoint {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

impl Trained {
    /// A freshly initialised model (weights from `seed`) with empty statistics.
    pub fn init(config: &Config, seed: u64, device: &Device) -> Result<Trained, PredictorError> {
        let map = VarMap::new();
        let model = Predictor::new(config, var_builder(&map, seed, device))?;
        Ok(Trained {
            map,
            model,
            adapted: None,
            meta: Meta {
                format_version: FORMAT_VERSION,
                config: config.clone(),
                stats: BTreeMap::new(),
                data_hash: String::new(),
                seed,
                train: None,
                report: None,
                adapters: None,
            },
            device: device.clone(),
        })
    }

    /// Write the checkpoint into `dir` (created if missing). Weights that are not all finite
    /// are refused (the error names the tensor): such a model predicts nothing.
    pub fn save(&self, dir: &Path) -> Result<(), PredictorError> {
        let w = dir.join(WEIGHTS_FILE);
        for (name, var) in sorted_vars(&self.map) {
            if !finite(var.as_tensor())? {
                return Err(ckpt_err(
                    &w,
                    format!("tensor {name} holds NaN or infinity: not saved"),
                ));
            }
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        self.map.save(&w).map_err(|e| ckpt_err(&w, e))?;
        let m = dir.join(META_FILE);
        let json =
            serde_json::to_string_pretty(&self.meta).map_err(|source| PredictorError::Json {
                path: m.display().to_string(),
                source,
            })?;
        std::fs::write(&m, json + "\n").map_err(io_err(&m))?;
        // safetensors writes through a temporary file, created private (0600); the weights are
        // as readable as their sidecar, which gets what the umask gives any new file.
        let mode = std::fs::metadata(&m).map_err(io_err(&m))?.permissions();
        std::fs::set_permissions(&w, mode).map_err(io_err(&w))?;
        Ok(())
    }

    /// Read a checkpoint written by [`Trained::save`].
    pub fn load(dir: &Path, device: &Device) -> Result<Trained, PredictorError> {
        let m = dir.join(META_FILE);
        let text = std::fs::read_to_string(&m).map_err(io_err(&m))?;
        let w = dir.join(WEIGHTS_FILE);
        let weights = match std::fs::read(&w) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ckpt_err(&w, "no such file"))
            }
            r => r.map_err(io_err(&w))?,
        };
        Trained::from_bytes(&text, &weights, dir, device)
    }

    /// A checkpoint from its two files' contents (`origin` names them in errors): how the
    /// model embedded in the binary ([`super::shipped`]) is read. The weights must be exactly
    /// the sidecar's model's: every variable present with its shape, finite, and no other
    /// tensor (the error names the tensor and the file).
    pub fn from_bytes(
        meta: &str,
        weights: &[u8],
        origin: &Path,
        device: &Device,
    ) -> Result<Trained, PredictorError> {
        let t = Trained::from_meta(meta, &origin.join(META_FILE), device)?;
        let w = origin.join(WEIGHTS_FILE);
        let tensors =
            candle_core::safetensors::load_buffer(weights, device).map_err(|e| ckpt_err(&w, e))?;
        let vars = sorted_vars(&t.map);
        let mut extra: Vec<&String> = tensors
            .keys()
            .filter(|n| vars.binary_search_by(|(v, _)| v.cmp(n)).is_err())
            .collect();
        extra.sort();
        if let Some(name) = extra.first() {
            return Err(ckpt_err(
                &w,
                format!("tensor {name} is not a variable of the model its sidecar describes"),
            ));
        }
        for (name, var) in vars {
            let v = tensors.get(&name).ok_or_else(|| {
                ckpt_err(&w, format!("no tensor {name} (the sidecar's model has it)"))
            })?;
            if v.dims() != var.dims() {
                return Err(ckpt_err(
                    &w,
                    format!(
                        "tensor {name} is {:?}, the sidecar's model needs {:?}",
                        v.dims(),
                        var.dims()
                    ),
                ));
            }
            if !finite(v)? {
                return Err(ckpt_err(&w, format!("tensor {name} holds NaN or infinity")));
            }
            var.set(v)
                .map_err(|e| ckpt_err(&w, format!("weights {name}: {e}")))?;
        }
        Ok(t)
    }

    /// A model shaped by the sidecar `text` (read from `m`), its weights not yet loaded.
    fn from_meta(text: &str, m: &Path, device: &Device) -> Result<Trained, PredictorError> {
        let probe: serde_json::Value =
            serde_json::from_str(text).map_err(|source| PredictorError::Json {
                path: m.display().to_string(),
                source,
            })?;
        let version = probe.get("format_version").and_then(|v| v.as_u64());
        if version != Some(FORMAT_VERSION as u64) {
            return Err(ckpt_err(
                m,
                format!("format version {version:?}, this build reads {FORMAT_VERSION}"),
            ));
        }
        // Every field of the configuration is stated: a default filled in for a missing one
        // would be a silently different model.
        if let Some(given) = probe.get("config").and_then(|c| c.as_object()) {
            let all = serde_json::to_value(Config::default()).expect("a configuration serialises");
            if let Some(field) = all
                .as_object()
                .and_then(|o| o.keys().find(|k| !given.contains_key(*k)))
            {
                return Err(ckpt_err(m, format!("config.{field} is missing")));
            }
        }
        let meta: Meta = serde_json::from_value(probe).map_err(|source| PredictorError::Json {
            path: m.display().to_string(),
            source,
        })?;
        meta.config
            .validate()
            .map_err(|e| ckpt_err(m, format!("config.{}", e.into_message())))?;
        for (key, s) in &meta.stats {
            s.check()
                .map_err(|e| ckpt_err(m, format!("stats.{key}: {e}")))?;
        }
        let mut t = Trained::init(&meta.config, meta.seed, device)?;
        if let Some(a) = &meta.adapters {
            t.adapted = Some(
                adapters::build(
                    &t.model.encoder,
                    &meta.config,
                    &a.config,
                    a.tasks.len(),
                    &t.map,
                    meta.seed,
                )
                .map_err(|e| ckpt_err(m, e.into_message()))?,
            );
        }
        t.meta = meta;
        Ok(t)
    }

    /// What predicts (and what fine-tuning trains): the K-Adapters' average when the model has
    /// adapters, the plain predictor otherwise.
    pub fn regressor(&self) -> &(dyn Regressor + Sync) {
        match &self.adapted {
            Some(a) => a,
            None => &self.model,
        }
    }

    /// The variables fine-tuning trains, in name order. With adapters: the adapters' (their
    /// encoder is frozen by construction, its states detached, so `prefixes` do not apply).
    /// Without: those whose name starts with one of `prefixes` (of [`VARIABLE_PARTS`]),
    /// every variable when `prefixes` is empty. An error when nothing matches.
    pub fn trainable_vars(
        &self,
        prefixes: &[String],
    ) -> Result<Vec<(String, Var)>, PredictorError> {
        let vars: Vec<_> = sorted_vars(&self.map)
            .into_iter()
            .filter(|(n, _)| {
                if self.adapted.is_some() {
                    n.starts_with("adapter")
                } else {
                    prefixes.is_empty() || prefixes.iter().any(|p| n.starts_with(p.as_str()))
                }
            })
            .collect();
        if vars.is_empty() {
            return Err(PredictorError::Config(format!(
                "no variable matches the trainable prefixes {prefixes:?}"
            )));
        }
        Ok(vars)
    }

    /// Whether the model was trained on FLOPs-scaled labels (Eq. 5): what its statistics say,
    /// true when it has none.
    pub fn flops_scaling(&self) -> bool {
        self.meta
            .stats
            .values()
            .next()
            .is_none_or(|s| s.flops_scaling)
    }

    /// A copy whose every variable is `base + alpha·(self − base)`: weight-space interpolation
    /// between a model and the one it was fine-tuned from (WiSE-FT, Wortsman et al. 2022; alpha
    /// 1 is `self`, 0 is `base`). Both must have the same variables.
    pub fn interpolate(&self, base: &Trained, alpha: f64) -> Result<Trained, PredictorError> {
        let t = self.duplicate()?;
        // b + alpha·(w − b), computed as alpha·w + (1 − alpha)·b.
        t.set_each_from(base, "interpolate", |w, b| {
            w.affine(alpha, 0.0)? + b.affine(1.0 - alpha, 0.0)?
        })?;
        Ok(t)
    }

    /// Set each of this model's variables to `f(its value, the same variable of src)`.
    fn set_each_from(
        &self,
        src: &Trained,
        what: &str,
        f: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<(), PredictorError> {
        let from = src.map.data().lock().expect("var map lock");
        let to = self.map.data().lock().expect("var map lock");
        for (name, var) in to.iter() {
            let v = from.get(name).ok_or_else(|| {
                PredictorError::Data(format!("{what}: no variable {name} in the source"))
            })?;
            var.set(&f(var.as_tensor(), v.as_tensor())?)?;
        }
        Ok(())
    }

    /// The encoder's pooled embedding (`[hidden]`) of each of `graphs`, in order, packed in
    /// batches of 512: what the probe's features and the alignment's moments are made of.
    pub fn embeddings(&self, graphs: &[&GraphFeatures]) -> Result<Vec<Vec<f64>>, PredictorError> {
        let mut out = Vec::with_capacity(graphs.len());
        for chunk in graphs.chunks(512) {
            let b = Batch::pack(chunk, &self.device)?;
            let e = self.model.encoder.forward(&b)?;
            out.extend(e.to_dtype(DType::F64)?.to_vec2::<f64>()?);
        }
        Ok(out)
    }

    /// A deep copy: new variables holding the same values, so training the copy leaves `self`
    /// untouched (a `VarMap` clone would share its variables).
    pub fn duplicate(&self) -> Result<Trained, PredictorError> {
        let mut t = Trained::init(&self.meta.config, self.meta.seed, &self.device)?;
        if let Some(a) = &self.meta.adapters {
            t.adapted = Some(adapters::build(
                &t.model.encoder,
                &self.meta.config,
                &a.config,
                a.tasks.len(),
                &t.map,
                self.meta.seed,
            )?);
        }
        t.set_each_from(self, "duplicate", |_, v| v.copy())?;
        t.meta = self.meta.clone();
        Ok(t)
    }

    /// Statistics of a task, or an error saying the checkpoint has none.
    pub fn scaler(&self, key: TaskKey) -> Result<TaskScaler, PredictorError> {
        self.meta.stats.get(&key).copied().ok_or_else(|| {
            PredictorError::Data(format!(
                "the model has no label statistics for {key} (it knows: {}); \
                 fit them from labelled samples of the task first",
                self.meta
                    .stats
                    .keys()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// Predictions in `key`'s units for graphs with their GFLOPs, in input order.
    pub fn predict(
        &self,
        key: TaskKey,
        graphs: &[(&GraphFeatures, f64)],
        batch_size: usize,
    ) -> Result<Vec<f64>, PredictorError> {
        self.predict_scaled(&self.scaler(key)?, graphs, batch_size)
    }

    /// Predictions in the units of the task `s` was fitted on, for graphs with their GFLOPs,
    /// in input order: how tasks that are not a benchmark [`TaskKey`] (a user's task, its
    /// statistics kept beside the checkpoint) are predicted.
    pub fn predict_scaled(
        &self,
        s: &TaskScaler,
        graphs: &[(&GraphFeatures, f64)],
        batch_size: usize,
    ) -> Result<Vec<f64>, PredictorError> {
        let feats: Vec<&GraphFeatures> = graphs.iter().map(|g| g.0).collect();
        let z = predict_batched(self.regressor(), &feats, batch_size, &self.device)?;
        Ok(z.iter()
            .zip(graphs)
            .map(|(&z, &(_, gf))| s.inverse(z as f64, gf))
            .collect())
    }
}

/// The parts of the model its variables are named under (`vb.pp("embed")` and so on): the
/// prefixes fine-tuning selects by, all of them by default.
pub const VARIABLE_PARTS: [&str; 3] = ["embed.", "gnn.", "head."];

/// Whether every element of `t` is finite.
fn finite(t: &Tensor) -> Result<bool, PredictorError> {
    let v: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    Ok(v.iter().all(|x| x.is_finite()))
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::predictor::features::extract;
    use crate::predictor::features::tests::small_graph;
    use crate::predictor::model::tests::tiny_config;
    use crate::predictor::transform::gflops;
    use crate::spaces::{SpaceId, Task};

    /// Every variable whose name starts with `prefix`, flattened in name order.
    pub(crate) fn flat_weights(t: &Trained, prefix: &str) -> Vec<f32> {
        crate::predictor::init::sorted_vars(&t.map)
            .into_iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .flat_map(|(_, v)| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn interpolation_runs_from_the_base_to_the_model() {
        let dev = Device::Cpu;
        let base = Trained::init(&tiny_config(), 1, &dev).unwrap();
        // Same variables, other values: a stand-in for the fine-tuned model.
        let tuned = base.duplicate().unwrap();
        let other = Trained::init(&tiny_config(), 2, &dev).unwrap();
        {
            let src = other.map.data().lock().unwrap();
            for (n, v) in tuned.map.data().lock().unwrap().iter() {
                v.set(src[n].as_tensor()).unwrap();
            }
        }
        let flat = |t: &Trained| flat_weights(t, "");
        let (b, w) = (flat(&base), flat(&tuned));
        assert_ne!(b, w);
        assert_eq!(flat(&tuned.interpolate(&base, 0.0).unwrap()), b);
        assert_eq!(flat(&tuned.interpolate(&base, 1.0).unwrap()), w);
        let mid = flat(&tuned.interpolate(&base, 0.25).unwrap());
        for ((m, b), w) in mid.iter().zip(&b).zip(&w) {
            assert!((m - (b + 0.25 * (w - b))).abs() < 1e-6, "{m} {b} {w}");
        }
        // Neither input changes.
        assert_eq!((flat(&base), flat(&tuned)), (b, w));
    }

    #[test]
    fn save_load_gives_identical_predictions() {
        let dev = Device::Cpu;
        let mut t = Trained::init(&tiny_config(), 11, &dev).unwrap();
        let key = TaskKey::new(SpaceId::Nb201, Task::Cifar10);
        t.meta.stats.insert(
            key,
            TaskScaler {
                mu: 40.0,
                sigma: 3.0,
                higher_is_better: true,
                flops_scaling: true,
            },
        );
        t.meta.data_hash = "abc".into();
        let g = small_graph();
        let f = extract(&g, &t.model.config.features());
        let gf = gflops(&g);
        let before = t.predict(key, &[(&f, gf), (&f, gf)], 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        t.save(dir.path()).unwrap();
        let mode = |f: &str| std::fs::metadata(dir.path().join(f)).unwrap().permissions();
        assert_eq!(
            mode(WEIGHTS_FILE),
            mode(META_FILE),
            "as readable as the sidecar"
        );
        // A different seed would give different weights unless loading overwrites them all.
        let mut meta = t.meta.clone();
        meta.seed = 99;
        let back = Trained::load(dir.path(), &dev).unwrap();
        assert_eq!(back.meta.stats, t.meta.stats);
        assert_eq!(back.meta.config, t.meta.config);
        let after = back.predict(key, &[(&f, gf), (&f, gf)], 1).unwrap();
        assert_eq!(before, after);
        assert!(back
            .predict(TaskKey::new(SpaceId::Nb201, Task::Cifar100), &[(&f, gf)], 1)
            .is_err());

        // Weights written under another seed's sidecar still load as saved.
        std::fs::write(
            dir.path().join(META_FILE),
            serde_json::to_string(&meta).unwrap(),
        )
        .unwrap();
        let again = Trained::load(dir.path(), &dev).unwrap();
        assert_eq!(again.predict(key, &[(&f, gf)], 1).unwrap()[0], before[0]);

        // Another format version is refused.
        meta.format_version = FORMAT_VERSION + 1;
        std::fs::write(
            dir.path().join(META_FILE),
            serde_json::to_string(&meta).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            Trained::load(dir.path(), &dev),
            Err(PredictorError::Checkpoint { .. })
        ));
    }

    /// The error message of loading the checkpoint in `dir`, which must fail.
    fn load_error(dir: &Path) -> String {
        match Trained::load(dir, &Device::Cpu) {
            Err(e @ PredictorError::Checkpoint { .. }) => e.to_string(),
            Err(e) => panic!("expected a checkpoint error, got {e}"),
            Ok(_) => panic!("a damaged checkpoint loaded"),
        }
    }

    #[test]
    fn weights_that_are_not_the_sidecar_s_model_are_refused_naming_the_tensor() {
        let dev = Device::Cpu;
        let t = Trained::init(&tiny_config(), 5, &dev).unwrap();
        let dir = tempfile::tempdir().unwrap();
        t.save(dir.path()).unwrap();
        let w = dir.path().join(WEIGHTS_FILE);
        let good = candle_core::safetensors::load(&w, &dev).unwrap();
        let (victim, tensor) = good
            .iter()
            .next()
            .map(|(n, t)| (n.clone(), t.clone()))
            .unwrap();
        let rewrite = |edit: &dyn Fn(&mut std::collections::HashMap<String, Tensor>)| {
            let mut m = good.clone();
            edit(&mut m);
            candle_core::safetensors::save(&m, &w).unwrap();
        };
        // An extra tensor.
        rewrite(&|m| {
            m.insert("stray.weight".into(), tensor.clone());
        });
        let e = load_error(dir.path());
        assert!(
            e.contains("stray.weight") && e.contains(WEIGHTS_FILE),
            "{e}"
        );
        // A missing one.
        rewrite(&|m| {
            m.remove(&victim);
        });
        let e = load_error(dir.path());
        assert!(e.contains(&format!("no tensor {victim}")), "{e}");
        // One of another shape.
        rewrite(&|m| {
            let n = tensor.elem_count();
            m.insert(
                victim.clone(),
                Tensor::zeros((n + 1,), tensor.dtype(), &dev).unwrap(),
            );
        });
        let e = load_error(dir.path());
        assert!(e.contains(&victim) && e.contains("needs"), "{e}");
        // NaN weights.
        rewrite(&|m| {
            let nan = (tensor.ones_like().unwrap() * f64::NAN).unwrap();
            m.insert(victim.clone(), nan);
        });
        let e = load_error(dir.path());
        assert!(e.contains(&victim) && e.contains("NaN"), "{e}");
        // Not safetensors at all.
        std::fs::write(&w, b"not a safetensors file").unwrap();
        let e = load_error(dir.path());
        assert!(e.contains(WEIGHTS_FILE), "{e}");
        // And the untouched weights load again.
        rewrite(&|_| {});
        Trained::load(dir.path(), &dev).unwrap();
    }

    #[test]
    fn a_model_with_nan_weights_is_not_saved() {
        let dev = Device::Cpu;
        let t = Trained::init(&tiny_config(), 5, &dev).unwrap();
        let (name, var) = sorted_vars(&t.map).into_iter().next().unwrap();
        var.set(&(var.as_tensor().ones_like().unwrap() * f64::NAN).unwrap())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m");
        let e = t.save(&out).unwrap_err().to_string();
        assert!(e.contains(&name) && e.contains("not saved"), "{e}");
        assert!(!out.join(WEIGHTS_FILE).exists() && !out.join(META_FILE).exists());
    }

    #[test]
    fn a_sidecar_missing_a_config_field_or_with_unusable_statistics_is_refused() {
        let dev = Device::Cpu;
        let t = Trained::init(&tiny_config(), 5, &dev).unwrap();
        let dir = tempfile::tempdir().unwrap();
        t.save(dir.path()).unwrap();
        let m = dir.path().join(META_FILE);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
        let config = v["config"].as_object_mut().unwrap();
        let field = config.keys().next().unwrap().clone();
        config.remove(&field);
        std::fs::write(&m, serde_json::to_string(&v).unwrap()).unwrap();
        let e = load_error(dir.path());
        assert!(
            e.contains(&format!("config.{field} is missing")) && e.contains(META_FILE),
            "{e}"
        );
        // Unusable label statistics are named by their task.
        let mut t = t;
        let key = TaskKey::new(SpaceId::Nb201, Task::Cifar10);
        t.meta.stats.insert(
            key,
            TaskScaler {
                mu: 1.0,
                sigma: 0.0,
                higher_is_better: true,
                flops_scaling: true,
            },
        );
        t.save(dir.path()).unwrap();
        let e = load_error(dir.path());
        assert!(e.contains(&format!("stats.{key}: sigma")), "{e}");
    }
}
