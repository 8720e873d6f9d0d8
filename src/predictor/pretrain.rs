//! Pretraining on the shipped labels of a set of (space, task) pairs: load and featurise every
//! network once, hold out a seeded test split per task, fit each task's label statistics on the
//! rest, train one predictor on all tasks' standardised targets, and evaluate it per task on the
//! held-out networks in task units.
//!
//! Invariants: test networks never influence training (not the weights, not μ/σ, not the dev
//! split that picks the best epoch); the whole run is a function of the [`PretrainConfig`]
//! (its `train.seed` included) and the shipped tables.

use serde::{Deserialize, Serialize};

use candle_core::Device;

use super::adapters::{train_adapters, AdapterConfig};
use super::checkpoint::Trained;
use super::data::{data_hash, data_hash_of, examples, sample_rows, split, Example, TaskKey};
use super::init::sorted_vars;
use super::model::Config;
use super::train::{train, Sample, TrainConfig, TrainReport};
use super::transform::TaskScaler;
use super::PredictorError;
use crate::rng::Rng;
use crate::spaces::labels::Labelled;
use crate::spaces::SpaceId;
use crate::stats::{kendall, mae, spearman};

/// What to pretrain on and how. Every field has a default (see [`PretrainConfig::default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainConfig {
    /// Tasks, spelt `space/task`. Default: every labelled task of NB-201 (cifar10, cifar100,
    /// ImageNet16-120) and of TransNAS-Bench-101 micro and macro (7 tasks each): 17 tasks,
    /// about 98k networks (one epoch is some minutes of CPU; see `aiop bench predictor`).
    pub tasks: Vec<TaskKey>,
    /// Keep at most this many labelled networks per task (a seeded subsample); all by default.
    pub max_per_task: Option<usize>,
    /// Fraction of each task's networks held out for the test report.
    pub test_fraction: f64,
    /// Apply Eq. 5's FLOPs scaling before standardising (AIO-P; false = plain z-scores).
    pub flops_scaling: bool,
    pub model: Config,
    pub train: TrainConfig,
    /// K-Adapters trained after the encoder, the encoder frozen (AIO-P's knowledge infusion):
    /// one adapter per task of the stage, the model then predicting with their average. None
    /// by default (the shipped model is the encoder and its head alone).
    pub adapters: Option<AdapterStage>,
}

/// The K-Adapter stage of a pretraining.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdapterStage {
    /// One adapter per task, spelt `space/task`; a task may also be one of the encoder's (its
    /// statistics and split are then shared) or new to the model (its statistics are fitted
    /// on its networks' training part, its test part reported with the others).
    pub tasks: Vec<TaskKey>,
    pub config: AdapterConfig,
    /// Training of each adapter on its own task's standardised labels. The paper trains 100
    /// epochs at lr 1e-4; the default here is the encoder's budget (10 epochs, lr 1e-3, batch
    /// 32, best epoch by a 10 % dev split), since adapters train through candle's generic
    /// (unfused) ops.
    pub train: TrainConfig,
}

impl AdapterStage {
    /// What the stage itself must hold before anything trains: a head within the model's
    /// limits, at most [`super::adapters::MAX_ADAPTERS`] tasks, a valid training schedule.
    pub fn validate(&self) -> Result<(), PredictorError> {
        super::model::check_head("adapters.config.head", &self.config.head)?;
        if self.tasks.len() > super::adapters::MAX_ADAPTERS {
            return Err(PredictorError::Config(format!(
                "adapters.tasks: {} is over the limit of {}",
                self.tasks.len(),
                super::adapters::MAX_ADAPTERS
            )));
        }
        self.train.validate("adapters.train.")
    }
}

impl Default for AdapterStage {
    fn default() -> AdapterStage {
        AdapterStage {
            tasks: Vec::new(),
            config: AdapterConfig::default(),
            train: TrainConfig {
                epochs: 10,
                lr: 1e-3,
                ..TrainConfig::default()
            },
        }
    }
}

impl Default for PretrainConfig {
    fn default() -> PretrainConfig {
        PretrainConfig {
            tasks: [SpaceId::Nb201, SpaceId::Tnb101Micro, SpaceId::Tnb101Macro]
                .into_iter()
                .flat_map(TaskKey::all_of)
                .collect(),
            max_per_task: None,
            test_fraction: 0.1,
            flops_scaling: true,
            model: Config::default(),
            train: TrainConfig::default(),
            adapters: None,
        }
    }
}

impl PretrainConfig {
    /// Check every field before anything is drawn or allocated: the model
    /// ([`Config::validate`]), the training settings ([`TrainConfig::validate`]), the data
    /// fields and the adapter stage. An error names the field as the JSON file spells it.
    pub fn validate(&self) -> Result<(), PredictorError> {
        let bad = |m: String| Err(PredictorError::Config(m));
        if self.tasks.is_empty() {
            return bad("tasks: no tasks to pretrain on".into());
        }
        // A task listed twice would be trained on twice over (its networks twice in every
        // epoch), silently weighting it above the rest.
        let twice = |tasks: &[TaskKey]| {
            tasks
                .iter()
                .enumerate()
                .find(|(i, k)| tasks[..*i].contains(k))
                .map(|(_, k)| *k)
        };
        if let Some(k) = twice(&self.tasks) {
            return bad(format!("tasks: {k} is listed twice"));
        }
        if self.max_per_task == Some(0) {
            return bad("max_per_task: must be positive".into());
        }
        if !(0.0..1.0).contains(&self.test_fraction) {
            return bad(format!(
                "test_fraction: {} is not in [0, 1)",
                crate::show::num(self.test_fraction)
            ));
        }
        self.model
            .validate()
            .map_err(|e| PredictorError::Config(format!("model.{}", e.into_message())))?;
        self.train.validate("train.")?;
        if let Some(stage) = &self.adapters {
            if stage.tasks.is_empty() {
                return bad("adapters.tasks is empty".into());
            }
            if let Some(k) = twice(&stage.tasks) {
                return bad(format!("adapters.tasks: {k} is listed twice"));
            }
            if self.model.layers == 0 || self.model.embed_dim() != self.model.hidden {
                return bad(format!(
                    "adapters need model.layers > 0 and a node embedding as wide as model.hidden \
                     (op_dim + res_dim = {}, hidden = {})",
                    self.model.embed_dim(),
                    self.model.hidden
                ));
            }
            stage.validate()?;
        }
        Ok(())
    }
}

/// Held-out quality of one task, in task units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEval {
    pub task: TaskKey,
    pub n: usize,
    pub spearman: f64,
    pub kendall: f64,
    pub mae: f64,
}

/// Summary of a pretraining run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainReport {
    /// Seconds spent building graphs and features.
    pub prepare_seconds: f64,
    pub train: TrainReport,
    /// One per adapter, in the stage's task order (empty without adapters).
    #[serde(default)]
    pub adapters: Vec<TrainReport>,
    pub test: Vec<TaskEval>,
}

/// Evaluate a trained model on labelled examples of a task it has statistics for.
pub fn evaluate(
    t: &Trained,
    key: TaskKey,
    examples: &[Example],
    batch_size: usize,
) -> Result<TaskEval, PredictorError> {
    let inputs: Vec<_> = examples.iter().map(|e| (&*e.features, e.gflops)).collect();
    let pred = t.predict(key, &inputs, batch_size)?;
    let truth: Vec<f64> = examples.iter().map(|e| e.value).collect();
    Ok(TaskEval {
        task: key,
        n: examples.len(),
        spearman: spearman(&pred, &truth),
        kendall: kendall(&pred, &truth),
        mae: mae(&pred, &truth),
    })
}

/// Run a pretraining as configured.
/// The labelled networks a pretraining by `cfg` draws, per task: the training part and the test
/// part (seeded subsamples and splits; no graph is built), the encoder's tasks first, then the
/// adapter stage's tasks the encoder does not have. [`pretrain`] trains on exactly these, so
/// [`drawn_hash`] of them is the model's `data_hash`: how a caller checks that `cfg` is the
/// configuration a checkpoint was pretrained with.
pub fn drawn_rows(cfg: &PretrainConfig) -> Result<Vec<DrawnRows>, PredictorError> {
    let mut rng = Rng::new(cfg.train.seed ^ 0x5eed_da7a);
    let mut draw = |key: TaskKey| -> Result<DrawnRows, PredictorError> {
        let (rows, higher_is_better) = sample_rows(key, cfg.max_per_task, &mut rng.fork())?;
        let (kept, test) = split(rows, cfg.test_fraction, &mut rng.fork());
        Ok(DrawnRows {
            key,
            higher_is_better,
            kept,
            test,
        })
    };
    let mut out = Vec::with_capacity(cfg.tasks.len());
    for &key in &cfg.tasks {
        out.push(draw(key)?);
    }
    if let Some(stage) = &cfg.adapters {
        for &key in &stage.tasks {
            if !out.iter().any(|d| d.key == key) {
                out.push(draw(key)?);
            }
        }
    }
    Ok(out)
}

/// One task's networks in a pretraining ([`drawn_rows`]).
#[derive(Debug, Clone)]
pub struct DrawnRows {
    pub key: TaskKey,
    pub higher_is_better: bool,
    pub kept: Vec<Labelled>,
    pub test: Vec<Labelled>,
}

/// [`data_hash_of`] the training parts of `drawn`: a checkpoint's `data_hash` when `drawn` is
/// what its pretraining drew.
pub fn drawn_hash(drawn: &[DrawnRows]) -> String {
    data_hash_of(
        drawn
            .iter()
            .map(|d| (d.key, d.kept.iter().map(|r| (&r.arch, r.value)).collect())),
    )
}

pub fn pretrain(
    cfg: &PretrainConfig,
    quiet: bool,
    device: &Device,
) -> Result<(Trained, PretrainReport), PredictorError> {
    cfg.validate()?;
    let seed = cfg.train.seed;
    let fc = cfg.model.features();
    let start = std::time::Instant::now();
    // Every task's networks, the adapter stage's own tasks after the encoder's.
    let sets = drawn_rows(cfg)?
        .into_iter()
        .map(|d| {
            Ok((
                d.key,
                d.higher_is_better,
                examples(d.key.task, d.kept, &fc)?,
                examples(d.key.task, d.test, &fc)?,
            ))
        })
        .collect::<Result<Vec<_>, PredictorError>>()?;
    let prepare_seconds = start.elapsed().as_secs_f64();

    let mut t = Trained::init(&cfg.model, seed, device)?;
    let mut samples = Vec::new();
    for (key, hib, kept, _) in &sets[..cfg.tasks.len()] {
        let y: Vec<f64> = kept.iter().map(|e| e.value).collect();
        let f: Vec<f64> = kept.iter().map(|e| e.gflops).collect();
        let s = TaskScaler::fit_with(&y, &f, *hib, cfg.flops_scaling)?;
        t.meta.stats.insert(*key, s);
        samples.extend(kept.iter().map(|e| e.sample(&s)));
    }
    t.meta.train = Some(cfg.train.clone());

    let vars = sorted_vars(&t.map);
    let report = train(&t.model, &vars, &samples, &cfg.train, quiet, device)?;
    let mut adapter_reports = Vec::new();
    if let Some(stage) = &cfg.adapters {
        let mut per_task = Vec::with_capacity(stage.tasks.len());
        for &key in &stage.tasks {
            let (_, hib, kept, _) = sets.iter().find(|s| s.0 == key).expect("drawn above");
            if let std::collections::btree_map::Entry::Vacant(v) = t.meta.stats.entry(key) {
                let y: Vec<f64> = kept.iter().map(|e| e.value).collect();
                let f: Vec<f64> = kept.iter().map(|e| e.gflops).collect();
                v.insert(TaskScaler::fit_with(&y, &f, *hib, cfg.flops_scaling)?);
            }
            let s = t.scaler(key)?;
            let samples: Vec<Sample> = kept.iter().map(|e| e.sample(&s)).collect();
            per_task.push((key, samples));
        }
        adapter_reports = train_adapters(&mut t, &per_task, &stage.config, &stage.train, quiet)?;
    }
    t.meta.data_hash = data_hash(sets.iter().map(|(k, _, kept, _)| (*k, &kept[..])));
    let mut test = Vec::with_capacity(sets.len());
    for (key, _, _, held) in &sets {
        if !held.is_empty() {
            test.push(evaluate(&t, *key, held, 256)?);
        }
    }
    let report = PretrainReport {
        prepare_seconds,
        train: report,
        adapters: adapter_reports,
        test,
    };
    t.meta.report = Some(
        serde_json::to_value(&report).map_err(|source| PredictorError::Json {
            path: "report".into(),
            source,
        })?,
    );
    Ok((t, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::checkpoint::tests::flat_weights;
    use crate::predictor::model::tests::tiny_config;

    #[test]
    fn default_config_round_trips_and_names_nb201_and_tnb101() {
        let c = PretrainConfig::default();
        let j = serde_json::to_string(&c).unwrap();
        assert!(j.contains("\"nb201/cifar10\""), "{j}");
        assert!(j.contains("\"tnb101_macro/segmentsemantic\""), "{j}");
        assert_eq!(c.tasks.len(), 17);
        assert_eq!(serde_json::from_str::<PretrainConfig>(&j).unwrap(), c);
        assert!(serde_json::from_str::<PretrainConfig>(r#"{"epochs": 3}"#).is_err());
        let mut twice = c.clone();
        twice.tasks.push(c.tasks[3]);
        let e = twice.validate().unwrap_err().to_string();
        assert!(e.contains("tasks: ") && e.contains("listed twice"), "{e}");
    }

    /// Two epochs on 40 NB-201 CIFAR-10 networks (10 held out for the test report).
    fn tiny(model: Config) -> PretrainConfig {
        PretrainConfig {
            tasks: vec!["nb201/cifar10".parse().unwrap()],
            max_per_task: Some(40),
            test_fraction: 0.25,
            model,
            flops_scaling: true,
            train: TrainConfig {
                epochs: 2,
                batch_size: 8,
                ..TrainConfig::default()
            },
            adapters: None,
        }
    }

    #[test]
    fn tiny_pretrain_runs_end_to_end() {
        let cfg = tiny(tiny_config());
        let (t, r) = pretrain(&cfg, true, &Device::Cpu).unwrap();
        assert!(t.adapted.is_none() && r.adapters.is_empty());
        assert_eq!(r.test.len(), 1);
        assert_eq!(r.test[0].n, 10);
        assert_eq!(r.train.train_size + r.train.dev_size, 30);
        assert_eq!(t.meta.stats.len(), 1);
        assert_eq!(t.meta.data_hash.len(), 32);
    }

    #[test]
    fn adapter_stage_trains_adapters_on_a_frozen_encoder_and_round_trips() {
        let c10: TaskKey = "nb201/cifar10".parse().unwrap();
        let c100: TaskKey = "nb201/cifar100".parse().unwrap();
        let base = tiny(Config {
            hidden: 8,
            ..tiny_config()
        });
        let (plain, _) = pretrain(&base, true, &Device::Cpu).unwrap();
        let cfg = PretrainConfig {
            adapters: Some(AdapterStage {
                tasks: vec![c10, c100],
                train: TrainConfig {
                    epochs: 3,
                    batch_size: 8,
                    ..TrainConfig::default()
                },
                ..AdapterStage::default()
            }),
            ..base
        };
        let narrow = PretrainConfig {
            model: tiny_config(),
            ..cfg.clone()
        };
        let e = match pretrain(&narrow, true, &Device::Cpu) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a narrow encoder took adapters"),
        };
        assert!(e.contains("model.hidden"), "{e}");
        let (t, r) = pretrain(&cfg, true, &Device::Cpu).unwrap();
        // The encoder is the one trained without adapters (same seed), untouched by them.
        let enc = |m: &Trained| flat_weights(m, "gnn.");
        assert_eq!(enc(&plain), enc(&t));
        assert_eq!(r.adapters.len(), 2);
        let meta = t.meta.adapters.as_ref().unwrap();
        assert_eq!(meta.tasks, vec![c10, c100]);
        // The adapter-only task got statistics and a test report.
        assert!(t.meta.stats.contains_key(&c100));
        assert_eq!(
            r.test.iter().map(|e| e.task).collect::<Vec<_>>(),
            vec![c10, c100]
        );
        assert_ne!(t.meta.data_hash, plain.meta.data_hash);
        // Fine-tuning an adapted model trains the adapters only.
        let names: Vec<String> = t
            .trainable_vars(&[])
            .unwrap()
            .into_iter()
            .map(|v| v.0)
            .collect();
        assert!(!names.is_empty() && names.iter().all(|n| n.starts_with("adapter")));
        // Saved and loaded, it predicts the same.
        let dir = tempfile::tempdir().unwrap();
        t.save(dir.path()).unwrap();
        let back = Trained::load(dir.path(), &Device::Cpu).unwrap();
        let set = crate::predictor::data::load_task(
            c100,
            &cfg.model.features(),
            Some(5),
            &mut Rng::new(3),
        )
        .unwrap();
        let inputs: Vec<_> = set
            .examples
            .iter()
            .map(|e| (&*e.features, e.gflops))
            .collect();
        let a = t.predict(c100, &inputs, 4).unwrap();
        let b = back.predict(c100, &inputs, 4).unwrap();
        assert_eq!(a, b);
        assert_ne!(
            a,
            plain
                .predict_scaled(&t.scaler(c100).unwrap(), &inputs, 4)
                .unwrap()
        );
    }
}
