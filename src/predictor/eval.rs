//! The evaluation protocols of the predictor, on the real benchmark labels we ship: how well a
//! pretrained AIO-P model transfers to tasks (`unseen-task`) and search spaces (`unseen-space`)
//! it never saw, zero-shot and fine-tuned on 20 labelled networks (FT-20), next to the baselines
//! (rank by FLOPs, rank by parameters, the same GNN without the FLOPs label transform, the GNN
//! trained from scratch on the same 20), and how many labels it needs (`sample-efficiency`).
//!
//! Invariants: a target task's labels never reach pretraining (the pretraining task list is
//! checked against the targets); for every (target, seed) the 20 fitting networks are one seeded
//! choice shared by every method and left out of that seed's evaluation set; all numbers are in
//! the target's units (MAE) or ranks of those (Spearman, Kendall); the report is a function of
//! the [`EvalConfig`] (seeds included) and the shipped tables; the `align` option reads the
//! target's graphs (every network of its table), never their labels.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use candle_core::Device;

use super::align::{moments_of, nearest, source_graphs_by_task, AlignMode, Moments};
use super::blend::{flops_signal, Blend, Weighting};
use super::calibrate::{Calibration, Form};
use super::checkpoint::Trained;
use super::data::{load_task, Example, TaskKey};
use super::features::GraphFeatures;
use super::heads::{head_members, HeadTarget, Networks, TaskHeads};
use super::model::Config;
use super::pretrain::{pretrain, AdapterStage, PretrainConfig};
use super::probe::Probe;
use super::select::{
    fold_of_each, oof_score, select_epochs, select_epochs_bagged, EpochSelection, Labelled,
    SelectionReport,
};
use super::train::{predict_batched, train, Sample, TrainConfig};
use super::transform::TaskScaler;
use super::PredictorError;
use crate::rng::Rng;
use crate::spaces::{SpaceId, Task};
use crate::stats::{kendall, mae, mean, midpoints, spearman, std};

/// Which protocol to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    UnseenTask,
    UnseenSpace,
    SampleEfficiency,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::UnseenTask => "unseen-task",
            Protocol::UnseenSpace => "unseen-space",
            Protocol::SampleEfficiency => "sample-efficiency",
        }
    }

    /// The target tasks of the protocol.
    pub fn targets(self) -> Vec<TaskKey> {
        use SpaceId::{Nb201, Tnb101Macro, Tnb101Micro};
        match self {
            Protocol::UnseenTask => [Tnb101Micro, Tnb101Macro]
                .into_iter()
                .flat_map(|s| {
                    [Task::SegmentSemantic, Task::Normal, Task::Autoencoder]
                        .map(|t| TaskKey::new(s, t))
                })
                .collect(),
            Protocol::UnseenSpace => TaskKey::all_of(Tnb101Macro),
            Protocol::SampleEfficiency => vec![TaskKey::new(Nb201, Task::Cifar10)],
        }
    }

    /// Pretraining tasks: every labelled task of NB-201 and TNB-101 micro and macro, less what
    /// the protocol holds out (the target tasks in both TNB spaces; the whole macro space; NB-201
    /// CIFAR-10).
    pub fn pretrain_tasks(self) -> Vec<TaskKey> {
        let all = [SpaceId::Nb201, SpaceId::Tnb101Micro, SpaceId::Tnb101Macro]
            .into_iter()
            .flat_map(TaskKey::all_of);
        match self {
            Protocol::UnseenTask => all
                .filter(|k| {
                    !matches!(
                        k.task,
                        Task::SegmentSemantic | Task::Normal | Task::Autoencoder
                    )
                })
                .collect(),
            Protocol::UnseenSpace => all.filter(|k| k.space != SpaceId::Tnb101Macro).collect(),
            Protocol::SampleEfficiency => all
                .filter(|k| *k != TaskKey::new(SpaceId::Nb201, Task::Cifar10))
                .collect(),
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = PredictorError;
    fn from_str(s: &str) -> Result<Protocol, PredictorError> {
        match s {
            "unseen-task" => Ok(Protocol::UnseenTask),
            "unseen-space" => Ok(Protocol::UnseenSpace),
            "sample-efficiency" => Ok(Protocol::SampleEfficiency),
            _ => Err(PredictorError::Config(format!(
                "unknown protocol '{s}' (unseen-task, unseen-space, sample-efficiency)"
            ))),
        }
    }
}

/// Everything a protocol run depends on. Defaults: the full protocol as documented in
/// BENCHMARKS.md; [`EvalConfig::quick`] is the small version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    pub seeds: usize,
    /// Labelled target networks per seed (μ/σ and the fine-tuning set).
    pub samples: usize,
    /// Pretraining: at most this many networks per pretraining task (seeded subsample).
    pub pretrain_max_per_task: Option<usize>,
    pub pretrain: TrainConfig,
    pub model: Config,
    /// Fine-tuning on the 20 (AIO-P: 100 epochs, batch 1, Adam lr 1e-4, everything trainable).
    pub fine_tune: TrainConfig,
    /// Name prefixes of the variables FT-20 trains (`embed.`, `gnn.`, `head.`).
    pub trainable: Vec<String>,
    /// Learning rate of the from-scratch baseline (same epochs and batch as `fine_tune`).
    pub scratch_lr: f64,
    /// Run the trained baselines (no-transform model, from scratch); off, only AIO-P and the
    /// FLOPs and params ranks are measured and no plain model is pretrained.
    pub baselines: bool,
    /// Evaluate on at most this many of a target's other networks (a seeded subsample; all when
    /// unset).
    pub max_eval: Option<usize>,
    /// Restrict the protocol to these targets (all of the protocol's when empty).
    pub targets: Vec<TaskKey>,
    /// Sample efficiency: training set sizes.
    pub sizes: Vec<usize>,
    /// Sample efficiency: graphs seen per training run (epochs = this / size, at least 1, at
    /// most `max_epochs`). 80,000 was chosen over 20,000 on NB-201 CIFAR-100 (a target of no
    /// protocol; sizes 781 and 1,563: Kendall +0.014 and +0.036 fine-tuned, BENCHMARKS.md).
    pub graph_steps: usize,
    pub max_epochs: usize,
    /// Sample efficiency: learning rate of both from-scratch and fine-tuning runs.
    pub size_lr: f64,
    /// Sample efficiency: weight of the pairwise ranking term
    /// ([`TrainConfig::rank_weight`]) in both from-scratch and fine-tuning runs. 1 since
    /// session 10, chosen on NB-201 CIFAR-100 (sizes 156, 781, 1,563: fine-tuned Kendall
    /// +0.012, +0.003, +0.008; BENCHMARKS.md).
    pub size_rank_weight: f64,
    /// Worker threads for independent runs (0 = available parallelism).
    pub threads: usize,
    /// K-Adapters of the AIO-P model (never of the no-transform baseline), trained after its
    /// encoder; none by default. Their tasks are checked not to be targets.
    pub adapters: Option<AdapterStage>,
    /// Also report `aio-p ft-20 cv`: AIO-P fine-tuned for a length chosen by cross-validation
    /// on the 20 samples alone ([`super::select`], what `aiop finetune` and the daemon do by
    /// default); on by default, off when null.
    pub select: Option<EpochSelection>,
    /// Pretrain on these tasks instead of the protocol's (validation runs: e.g. the 4 TNB-101
    /// micro tasks that are no protocol's target, with `targets`); each is checked not to be a
    /// target.
    pub pretrain_tasks: Vec<TaskKey>,
    /// The ranking term of the product's fine-tuning (`TrainConfig::rank_weight`) in the
    /// cross-validated columns (`cv`, `either`, `mean`, `pick`), as `aiop finetune` and the
    /// daemon use it; the paper's `ft-20` columns train with `fine_tune` as it is. 3 and 10 were
    /// measured against 1 in session 12 and not adopted (BENCHMARKS.md).
    pub rank_weight: f64,
    /// The learning rate of the product's fine-tuning (`aiop finetune`, the daemon) in the
    /// cross-validated columns; the paper's `ft-20` columns train with `fine_tune.lr`. By
    /// default [`super::train::FINETUNE_LR`] (1e-4); session 16 measured 3e-4 (BENCHMARKS.md).
    pub cv_lr: f64,
    /// More pretrained members of the `ens wmeanz` column: each is pretrained on the
    /// protocol's tasks (its own schedule when given) and fine-tuned like the two default
    /// members, and all are blended by `wmeanz`. None by default (no column). Session 12 measured
    /// a seed ensemble (+0.0085 on validation (d)) and a paper-schedule member (+0.002): neither
    /// is worth its cost as a default (BENCHMARKS.md).
    pub members: Vec<MemberSpec>,
    /// Map each target's graph embeddings onto the pretraining graphs' moments before the head
    /// ([`super::align`]), in every model of the transfer protocols (AIO-P, no-transform and
    /// extra members) and so in every column but scratch, FLOPs and params; none by default.
    /// Session 15 validated `shift` and `scale`, session 16 `nearest`; none was adopted
    /// (BENCHMARKS.md).
    pub align: Option<AlignMode>,
    /// Also report `wmeanz (bagged)`: each member predicts by the mean of its cross-validation
    /// fold models at the chosen length instead of a model refitted on all the samples
    /// ([`super::select::select_epochs_bagged`]); off by default. Session 15 (BENCHMARKS.md).
    pub bagged: bool,
    /// Also report the task heads' columns (`heads`, `top head`, `wmeanz+heads`, `wmeanz+top
    /// head`): per-pretraining-task linear readouts of both frozen encoders ([`super::heads`]),
    /// weighed on the 20; off by default. Session 19 (BENCHMARKS.md). Not with `align`.
    pub heads: bool,
}

/// One more pretrained model of the `ens wmeanz` column (validation of ensembles, session 12).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    /// Its folder under `aiop eval --pretrained` (reused when present, saved when not).
    pub name: String,
    /// Eq. 5 labels (an AIO-P member) or plain z-scores (a no-transform member).
    pub flops_scaling: bool,
    /// Its pretraining schedule and seed (the protocol's `pretrain` when absent).
    #[serde(default)]
    pub pretrain: Option<TrainConfig>,
}

impl Default for EvalConfig {
    fn default() -> EvalConfig {
        EvalConfig {
            seeds: 5,
            samples: 20,
            pretrain_max_per_task: Some(1000),
            pretrain: TrainConfig {
                epochs: 10,
                batch_size: 32,
                lr: 1e-3,
                seed: 0,
                ..TrainConfig::default()
            },
            model: Config::default(),
            fine_tune: TrainConfig {
                epochs: 100,
                batch_size: 1,
                lr: 1e-4,
                dev_fraction: 0.0,
                ..TrainConfig::default()
            },
            trainable: super::checkpoint::VARIABLE_PARTS.map(String::from).into(),
            scratch_lr: 1e-3,
            baselines: true,
            max_eval: None,
            targets: Vec::new(),
            sizes: vec![78, 156, 469, 781, 1563],
            graph_steps: 80_000,
            max_epochs: 200,
            size_lr: 1e-3,
            size_rank_weight: super::train::RANK_WEIGHT,
            threads: 0,
            adapters: None,
            select: Some(EpochSelection::default()),
            pretrain_tasks: Vec::new(),
            rank_weight: super::train::RANK_WEIGHT,
            cv_lr: super::train::FINETUNE_LR,
            members: Vec::new(),
            align: None,
            bagged: false,
            heads: false,
        }
    }
}

impl EvalConfig {
    /// The small version for CI: one seed, small pretraining, short fine-tuning, a capped
    /// evaluation set and two targets (one size for sample efficiency).
    pub fn quick(protocol: Protocol) -> EvalConfig {
        let d = EvalConfig::default();
        EvalConfig {
            seeds: 1,
            pretrain_max_per_task: Some(150),
            pretrain: TrainConfig {
                epochs: 3,
                ..d.pretrain.clone()
            },
            fine_tune: TrainConfig {
                epochs: 10,
                ..d.fine_tune.clone()
            },
            max_eval: Some(500),
            targets: protocol.targets().into_iter().take(2).collect(),
            sizes: vec![78],
            graph_steps: 2000,
            ..d
        }
    }
}

/// Mean and population standard deviation over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
}

impl MeanStd {
    fn of(xs: &[f64]) -> MeanStd {
        MeanStd {
            mean: mean(xs),
            std: std(xs),
        }
    }
}

/// One method's scores on one target, per seed and summarised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodScores {
    pub spearman: MeanStd,
    pub kendall: MeanStd,
    /// In the target's units; absent for the rank-only baselines.
    pub mae: Option<MeanStd>,
    pub per_seed: Vec<SeedScore>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeedScore {
    pub seed: u64,
    pub n: usize,
    pub spearman: f64,
    pub kendall: f64,
    pub mae: Option<f64>,
    /// Fine-tuning epochs chosen by cross-validation (`aio-p ft-20 cv` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    /// The calibration form chosen (`aio-p ft-20 cv cal` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<Form>,
    /// Whether cross-validation chose the no-transform model alone (`either` and `pick ft-20 cv
    /// cal` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_transform: Option<bool>,
    /// The Spearman of the out-of-fold predictions on the fitting samples (the blends only):
    /// the estimate `aiop finetune` reports as `cross_validated`, to set beside the test figure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cv_spearman: Option<f64>,
}

/// One row of a report: a target (and, for sample efficiency, a training size).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetRow {
    pub target: TaskKey,
    /// Training set size (sample efficiency) or fitting samples (transfer protocols).
    pub samples: usize,
    pub methods: BTreeMap<String, MethodScores>,
}

/// What a protocol run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub protocol: Protocol,
    pub config: EvalConfig,
    pub pretrain_tasks: Vec<TaskKey>,
    pub rows: Vec<TargetRow>,
    /// Mean over rows of each method's mean Spearman (transfer protocols).
    pub mean_spearman: BTreeMap<String, f64>,
    pub seconds: f64,
}

/// Method names, in report order.
pub const ZERO_SHOT: &str = "aio-p zero-shot";
pub const FT: &str = "aio-p ft-20";
pub const FT_CV: &str = "aio-p ft-20 cv";
pub const FT_CAL: &str = "aio-p ft-20 cv cal";
pub const BOTH_CAL: &str = "either ft-20 cv cal";
pub const MEAN_CAL: &str = "mean ft-20 cv cal";
pub const PICK_CAL: &str = "pick ft-20 cv cal";
pub const MEANZ_CAL: &str = "meanz ft-20 cv cal";
pub const WMEANZ_CAL: &str = "wmeanz ft-20 cv cal";
pub const WFLOPS_CAL: &str = "wmeanz+flops ft-20 cv cal";
pub const ENS_CAL: &str = "ens wmeanz ft-20 cv cal";
pub const PROBE: &str = "probe";
pub const WPROBE_CAL: &str = "wmeanz+probe ft-20 cv cal";
pub const GPROBE_CAL: &str = "wmeanz+gated probe ft-20 cv cal";
pub const FPROBE_CAL: &str = "wmeanz+probe (folds) ft-20 cv cal";
pub const BAG_CAL: &str = "wmeanz (bagged) ft-20 cv cal";
pub const HEADS: &str = "heads";
pub const TOP_HEAD: &str = "top head";
pub const WHEADS_CAL: &str = "wmeanz+heads ft-20 cv cal";
pub const WTOP_CAL: &str = "wmeanz+top head ft-20 cv cal";
pub const PLAIN_ZERO_SHOT: &str = "no-transform zero-shot";
pub const PLAIN_FT: &str = "no-transform ft-20";
pub const SCRATCH: &str = "scratch-20";
pub const FLOPS: &str = "flops rank";
pub const PARAMS: &str = "params rank";
pub const SE_SCRATCH: &str = "scratch";
pub const SE_FT: &str = "pretrained ft";

/// A target's labelled networks with the sizes the baselines rank by.
struct TargetData {
    key: TaskKey,
    higher_is_better: bool,
    examples: Vec<Example>,
    mflops: Vec<f64>,
    params: Vec<f64>,
}

fn load_target(key: TaskKey, cfg: &EvalConfig) -> Result<TargetData, PredictorError> {
    let set = load_task(key, &cfg.model.features(), None, &mut Rng::new(0))?;
    let mut mflops = Vec::with_capacity(set.examples.len());
    let mut params = Vec::with_capacity(set.examples.len());
    for e in &set.examples {
        let g = e.arch.build(key.task)?;
        mflops.push(g.flops(crate::graph::Convention::Macs) as f64 / 1e6);
        params.push(g.params() as f64);
    }
    Ok(TargetData {
        key,
        higher_is_better: set.higher_is_better,
        examples: set.examples,
        mflops,
        params,
    })
}

/// The seeded split of one (target, seed): `fit` networks and the evaluation set.
fn choose(n: usize, fit: usize, max_eval: Option<usize>, seed: u64, key: TaskKey) -> Split {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(key.to_string().as_bytes());
    let mut rng = Rng::new(seed ^ h.digest());
    let mut idx: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut idx);
    let fit_idx = idx[..fit.min(n)].to_vec();
    let mut rest = idx[fit.min(n)..].to_vec();
    if let Some(m) = max_eval {
        rest.truncate(m);
    }
    rest.sort_unstable();
    Split {
        fit: fit_idx,
        eval: rest,
    }
}

struct Split {
    fit: Vec<usize>,
    eval: Vec<usize>,
}

fn score(seed: u64, pred: &[f64], truth: &[f64], with_mae: bool) -> SeedScore {
    SeedScore {
        seed,
        n: truth.len(),
        spearman: spearman(pred, truth),
        kendall: kendall(pred, truth),
        mae: with_mae.then(|| mae(pred, truth)),
        epochs: None,
        form: None,
        no_transform: None,
        cv_spearman: None,
    }
}

fn summarise(per_seed: Vec<SeedScore>) -> MethodScores {
    let sp: Vec<f64> = per_seed.iter().map(|s| s.spearman).collect();
    let kt: Vec<f64> = per_seed.iter().map(|s| s.kendall).collect();
    let ma: Option<Vec<f64>> = per_seed.iter().map(|s| s.mae).collect();
    MethodScores {
        spearman: MeanStd::of(&sp),
        kendall: MeanStd::of(&kt),
        mae: ma.map(|m| MeanStd::of(&m)),
        per_seed,
    }
}

/// Standardised predictions of `t` for `examples[idx]`.
fn z_scores(t: &Trained, examples: &[Example], idx: &[usize]) -> Result<Vec<f32>, PredictorError> {
    let feats: Vec<_> = idx.iter().map(|&i| &*examples[i].features).collect();
    predict_batched(t.regressor(), &feats, 512, &t.device)
}

/// The probe's features of every example: the frozen encoders' graph embeddings, then ln GFLOPs
/// and ln params ([`super::probe`]).
fn probe_features(
    models: &[&Trained],
    examples: &[Example],
    params: &[f64],
) -> Result<Vec<Vec<f64>>, PredictorError> {
    let feats: Vec<&GraphFeatures> = examples.iter().map(|e| &*e.features).collect();
    let mut rows: Vec<Vec<f64>> = vec![Vec::new(); examples.len()];
    for t in models {
        for (row, e) in rows.iter_mut().zip(t.embeddings(&feats)?) {
            row.extend(e);
        }
    }
    for ((row, e), p) in rows.iter_mut().zip(examples).zip(params) {
        row.push(e.gflops.max(1e-9).ln());
        row.push(p.max(1.0).ln());
    }
    Ok(rows)
}

fn to_units(z: &[f32], s: &TaskScaler, examples: &[Example], idx: &[usize]) -> Vec<f64> {
    z.iter()
        .zip(idx)
        .map(|(&z, &i)| s.inverse(z as f64, examples[i].gflops))
        .collect()
}

/// Train `t`'s variables whose names start with one of `trainable` (all when empty) on
/// `examples[idx]` with targets from `s`.
fn fit_on(
    t: &Trained,
    s: &TaskScaler,
    examples: &[Example],
    idx: &[usize],
    tc: &TrainConfig,
    trainable: &[String],
) -> Result<(), PredictorError> {
    let samples: Vec<Sample> = idx.iter().map(|&i| examples[i].sample(s)).collect();
    let vars = t.trainable_vars(trainable)?;
    train(t.regressor(), &vars, &samples, tc, true, &t.device)?;
    Ok(())
}

/// Pretrain for `protocol` (refusing a task list that touches a target).
fn pretrain_for(
    protocol: Protocol,
    cfg: &EvalConfig,
    flops_scaling: bool,
    schedule: Option<&TrainConfig>,
    device: &Device,
) -> Result<Trained, PredictorError> {
    let tasks = pretrain_tasks_of(protocol, cfg);
    let targets = targets_of(protocol, cfg);
    // K-Adapters belong to the AIO-P model; the no-transform baseline is the plain GNN.
    let adapters = cfg.adapters.clone().filter(|_| flops_scaling);
    let adapter_tasks = adapters.iter().flat_map(|a| a.tasks.iter());
    if let Some(k) = tasks
        .iter()
        .chain(adapter_tasks)
        .find(|k| targets.contains(k))
    {
        return Err(PredictorError::Config(format!(
            "pretraining task {k} is a target of {}",
            protocol.name()
        )));
    }
    let pc = PretrainConfig {
        tasks,
        max_per_task: cfg.pretrain_max_per_task,
        test_fraction: 0.0,
        flops_scaling,
        model: cfg.model.clone(),
        train: schedule.unwrap_or(&cfg.pretrain).clone(),
        adapters,
    };
    Ok(pretrain(&pc, true, device)?.0)
}

fn pretrain_tasks_of(protocol: Protocol, cfg: &EvalConfig) -> Vec<TaskKey> {
    if cfg.pretrain_tasks.is_empty() {
        protocol.pretrain_tasks()
    } else {
        cfg.pretrain_tasks.clone()
    }
}

fn targets_of(protocol: Protocol, cfg: &EvalConfig) -> Vec<TaskKey> {
    if cfg.targets.is_empty() {
        protocol.targets()
    } else {
        cfg.targets.clone()
    }
}

/// Check that a pretrained model handed in saw none of the protocol's targets.
pub fn check_pretrained(
    t: &Trained,
    protocol: Protocol,
    cfg: &EvalConfig,
) -> Result<(), PredictorError> {
    let targets = targets_of(protocol, cfg);
    if let Some(k) = t.meta.stats.keys().find(|k| targets.contains(k)) {
        return Err(PredictorError::Config(format!(
            "the pretrained model was trained on {k}, a target of {}",
            protocol.name()
        )));
    }
    Ok(())
}

/// Most seeds an evaluation (or an experiment) runs: far past any use (each is a full run),
/// and a bound on what is allocated per seed.
pub const MAX_SEEDS: usize = 10_000;

impl EvalConfig {
    /// Check the settings a run cannot do without (at least one seed; the model and the
    /// pretraining and fine-tuning settings as [`Config::validate`] and
    /// [`TrainConfig::validate`] check them); an error names the field.
    pub fn validate(&self) -> Result<(), PredictorError> {
        if !(1..=MAX_SEEDS).contains(&self.seeds) {
            return Err(PredictorError::Config(format!(
                "seeds: {} is not in 1..={MAX_SEEDS}",
                self.seeds
            )));
        }
        let bad = |m: String| Err(PredictorError::Config(m));
        // What a run reads only after its pretrainings, checked before them.
        if self.samples < 2 {
            return bad(format!(
                "samples: {} (μ and σ, and any fine-tuning, need at least 2)",
                self.samples
            ));
        }
        if self.max_eval == Some(0) {
            return bad("max_eval: must be at least 1 (leave it out for all)".into());
        }
        for (field, v) in [
            ("scratch_lr", self.scratch_lr),
            ("cv_lr", self.cv_lr),
            ("size_lr", self.size_lr),
        ] {
            if !(v > 0.0 && v <= super::train::MAX_LR) {
                return bad(format!(
                    "{field}: {} is not in (0, {}]",
                    crate::show::num(v),
                    super::train::MAX_LR
                ));
            }
        }
        for (field, v) in [
            ("rank_weight", self.rank_weight),
            ("size_rank_weight", self.size_rank_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!(
                    "{field}: {} is not a finite number ≥ 0",
                    crate::show::num(v)
                ));
            }
        }
        use super::checkpoint::VARIABLE_PARTS;
        if let Some(t) = self.trainable.iter().find(|t| {
            !VARIABLE_PARTS
                .iter()
                .any(|p| p.starts_with(t.as_str()) || t.starts_with(p))
        }) {
            return bad(format!(
                "trainable: '{t}' names no variable (prefixes of {})",
                VARIABLE_PARTS.join(", ")
            ));
        }
        if let Some(k) = self
            .targets
            .iter()
            .find(|k| self.pretrain_tasks.contains(k))
        {
            return bad(format!("targets: {k} is also in pretrain_tasks"));
        }
        if let Some(stage) = &self.adapters {
            stage.validate()?;
        }
        for (k, m) in self.members.iter().enumerate() {
            if let Some(p) = &m.pretrain {
                p.validate(&format!("members[{k}].pretrain."))?;
            }
        }
        self.model
            .validate()
            .map_err(|e| PredictorError::Config(format!("model.{}", e.into_message())))?;
        self.pretrain.validate("pretrain.")?;
        self.fine_tune.validate("fine_tune.")
    }
}

/// Refuse `members` whose names are not plain folder names, collide with `aio`, `plain` or each
/// other (each is a folder of `aiop eval --pretrained`).
fn check_members(cfg: &EvalConfig) -> Result<(), PredictorError> {
    let mut seen = std::collections::BTreeSet::new();
    for m in &cfg.members {
        let plain_name = crate::names::bare_key(&m.name);
        if !plain_name || m.name == "aio" || m.name == "plain" || !seen.insert(&m.name) {
            return Err(PredictorError::Config(format!(
                "members: {:?} is not a folder name of letters, digits, - and _ other than \
                 aio, plain and the other members'",
                m.name
            )));
        }
    }
    Ok(())
}

/// Pretrained models a protocol run may reuse (each must satisfy [`check_pretrained`]).
#[derive(Default)]
pub struct Pretrained {
    /// With the FLOPs label transform.
    pub aio: Option<Trained>,
    /// Without it (transfer protocols' baseline).
    pub plain: Option<Trained>,
    /// `EvalConfig::members`, by name.
    pub members: BTreeMap<String, Trained>,
}

/// Run a protocol. `log` receives one line per finished step.
pub fn run(
    protocol: Protocol,
    cfg: &EvalConfig,
    given: Pretrained,
    device: &Device,
    log: &(dyn Fn(&str) + Sync),
) -> Result<(EvalReport, Pretrained), PredictorError> {
    let start = std::time::Instant::now();
    cfg.validate()?;
    check_members(cfg)?;
    let aio = match given.aio {
        Some(t) => t,
        None => {
            log("pretraining (FLOPs-scaled labels)");
            pretrain_for(protocol, cfg, true, None, device)?
        }
    };
    check_pretrained(&aio, protocol, cfg)?;
    let (rows, plain, members) = match protocol {
        Protocol::SampleEfficiency => (
            sample_efficiency(cfg, &aio, device, log)?,
            given.plain,
            given.members,
        ),
        _ => {
            let plain = match given.plain {
                Some(t) => Some(t),
                None if cfg.baselines => {
                    log("pretraining (plain z-scores, no FLOPs scaling)");
                    Some(pretrain_for(protocol, cfg, false, None, device)?)
                }
                None => None,
            };
            if let Some(p) = &plain {
                check_pretrained(p, protocol, cfg)?;
            }
            let mut members = given.members;
            for m in &cfg.members {
                if !members.contains_key(&m.name) {
                    log(&format!("pretraining member {}", m.name));
                    let t =
                        pretrain_for(protocol, cfg, m.flops_scaling, m.pretrain.as_ref(), device)?;
                    members.insert(m.name.clone(), t);
                }
                check_pretrained(&members[&m.name], protocol, cfg)?;
            }
            let extra: Vec<(&Trained, bool)> = cfg
                .members
                .iter()
                .map(|m| (&members[&m.name], m.flops_scaling))
                .collect();
            let rows = transfer_protocol(protocol, cfg, &aio, plain.as_ref(), &extra, device, log)?;
            (rows, plain, members)
        }
    };
    let mut mean_spearman = BTreeMap::new();
    if protocol != Protocol::SampleEfficiency {
        for name in [
            ZERO_SHOT,
            FT,
            FT_CV,
            FT_CAL,
            BOTH_CAL,
            MEAN_CAL,
            PICK_CAL,
            MEANZ_CAL,
            WMEANZ_CAL,
            WFLOPS_CAL,
            ENS_CAL,
            PROBE,
            WPROBE_CAL,
            GPROBE_CAL,
            FPROBE_CAL,
            BAG_CAL,
            HEADS,
            TOP_HEAD,
            WHEADS_CAL,
            WTOP_CAL,
            PLAIN_ZERO_SHOT,
            PLAIN_FT,
            SCRATCH,
            FLOPS,
            PARAMS,
        ] {
            let xs: Vec<f64> = rows
                .iter()
                .filter_map(|r| r.methods.get(name).map(|m| m.spearman.mean))
                .collect();
            if !xs.is_empty() {
                mean_spearman.insert(name.to_string(), mean(&xs));
            }
        }
    }
    let report = EvalReport {
        protocol,
        config: cfg.clone(),
        pretrain_tasks: pretrain_tasks_of(protocol, cfg),
        rows,
        mean_spearman,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((
        report,
        Pretrained {
            aio: Some(aio),
            plain,
            members,
        },
    ))
}

/// Scores of one (target, seed) for every method of the transfer protocols.
type SeedScores = Vec<(&'static str, SeedScore)>;

fn transfer_protocol(
    protocol: Protocol,
    cfg: &EvalConfig,
    aio: &Trained,
    plain: Option<&Trained>,
    extra: &[(&Trained, bool)],
    device: &Device,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Vec<TargetRow>, PredictorError> {
    let mut rows = Vec::new();
    // Alignment: each model's embedding moments over the pretraining graphs, once. The models
    // in order: AIO-P, the no-transform one when there is one, the extra members.
    let models: Vec<&Trained> = std::iter::once(aio)
        .chain(plain)
        .chain(extra.iter().map(|e| e.0))
        .collect();
    // Per model, the named source moment sets: one for the mixture, or one per task.
    let sources: Option<Vec<Vec<(String, Moments)>>> = match cfg.align {
        Some(mode) => {
            let tasks = pretrain_tasks_of(protocol, cfg);
            let by_task = source_graphs_by_task(&cfg.model.features(), &tasks)?;
            let sets: Vec<(String, Vec<Arc<GraphFeatures>>)> = if mode.per_task() {
                by_task
                    .into_iter()
                    .map(|(k, g)| (k.to_string(), g))
                    .collect()
            } else {
                let all = by_task.into_iter().flat_map(|(_, g)| g).collect();
                vec![("the pretraining mixture".into(), all)]
            };
            let moments = models
                .iter()
                .map(|m| {
                    sets.iter()
                        .map(|(name, g)| {
                            let refs: Vec<&GraphFeatures> = g.iter().map(|g| &**g).collect();
                            Ok((name.clone(), moments_of(m, &refs)?))
                        })
                        .collect::<Result<Vec<_>, PredictorError>>()
                })
                .collect::<Result<Vec<_>, _>>()?;
            log(&format!(
                "alignment: moments of {} pretraining graphs in {} set(s)",
                sets.iter().map(|s| s.1.len()).sum::<usize>(),
                sets.len()
            ));
            Some(moments)
        }
        None => None,
    };
    // Task heads of both models, once (they read no target).
    let heads = match plain {
        Some(p) if cfg.heads && cfg.baselines && cfg.select.is_some() => {
            if cfg.align.is_some() {
                return Err(PredictorError::Config(
                    "the task heads' columns are not measured with align".into(),
                ));
            }
            let tasks = pretrain_tasks_of(protocol, cfg);
            Some(TaskHeads::fit(
                &[aio, p],
                &tasks,
                super::heads::NETWORKS_PER_TASK,
                log,
            )?)
        }
        _ => None,
    };
    for key in targets_of(protocol, cfg) {
        let data = load_target(key, cfg)?;
        let n = data.examples.len();
        let all: Vec<usize> = (0..n).collect();
        let aligned_models = match (cfg.align, &sources) {
            (Some(mode), Some(src)) => {
                let refs: Vec<&GraphFeatures> =
                    data.examples.iter().map(|e| &*e.features).collect();
                let mut out = Vec::new();
                for (m, s) in models.iter().zip(src) {
                    let t = moments_of(m, &refs)?;
                    let (name, s, off) = nearest(s, &t)?;
                    log(&format!(
                        "alignment {key}: model {}: offset {off:.3} from {name}",
                        out.len(),
                    ));
                    out.push(m.aligned(s, &t, mode)?);
                }
                Some(out)
            }
            _ => None,
        };
        // The aligned copies come back in `models`' order.
        let (aio, plain, extra_owned): (&Trained, Option<&Trained>, Vec<(&Trained, bool)>) =
            match &aligned_models {
                Some(ms) => {
                    let mut it = ms.iter();
                    let aio = it.next().expect("AIO-P is aligned first");
                    let plain = plain.map(|_| it.next().expect("then the no-transform model"));
                    let extra = extra.iter().zip(it).map(|(e, m)| (m, e.1)).collect();
                    (aio, plain, extra)
                }
                None => (aio, plain, extra.to_vec()),
            };
        let extra = &extra_owned[..];
        // Zero-shot predictions do not depend on the seed: one pass per model.
        let z_aio = z_scores(aio, &data.examples, &all)?;
        let z_plain = match plain {
            Some(p) if cfg.baselines => Some(z_scores(p, &data.examples, &all)?),
            _ => None,
        };
        // The probe's features, when both models are there to blend it with.
        let probe_x = match plain {
            Some(p) if cfg.baselines && cfg.select.is_some() => {
                Some(probe_features(&[aio, p], &data.examples, &data.params)?)
            }
            _ => None,
        };
        // Each head's standardised prediction of every target network, and its model (0:
        // AIO-P, 1: no-transform).
        let head_z = match (&heads, plain) {
            (Some(h), Some(p)) => {
                let gflops: Vec<f64> = data.examples.iter().map(|e| e.gflops).collect();
                let nets = Networks {
                    features: data.examples.iter().map(|e| &*e.features).collect(),
                    gflops: &gflops,
                    params: &data.params,
                };
                let z = h.predict(&[aio, p], &nets)?;
                let owner: Vec<usize> = h.heads.iter().map(|h| h.model).collect();
                Some((z, owner))
            }
            _ => None,
        };
        let seeds: Vec<u64> = (0..cfg.seeds as u64).collect();
        let per_seed = crate::pool::parallel(&seeds, cfg.threads, |&seed| {
            let plain = plain.zip(z_plain.as_deref());
            let probe_x = probe_x.as_deref();
            let head_z = head_z.as_ref().map(|(z, o)| (&z[..], &o[..]));
            let extras = Extras { probe_x, head_z };
            one_seed(cfg, &data, aio, plain, extra, &z_aio, extras, seed, device)
        })?;
        let mut methods: BTreeMap<String, Vec<SeedScore>> = BTreeMap::new();
        for scores in per_seed {
            for (name, s) in scores {
                methods.entry(name.to_string()).or_default().push(s);
            }
        }
        let row = TargetRow {
            target: key,
            samples: cfg.samples,
            methods: methods
                .into_iter()
                .map(|(k, v)| (k, summarise(v)))
                .collect(),
        };
        let cv = row
            .methods
            .get(FT_CV)
            .map(|m| format!(", ft-20 cv {:.3}", m.spearman.mean))
            .unwrap_or_default();
        log(&format!(
            "{key}: zero-shot {:.3}, ft-20 {:.3}{cv}, flops {:.3} (spearman)",
            row.methods[ZERO_SHOT].spearman.mean,
            row.methods[FT].spearman.mean,
            row.methods[FLOPS].spearman.mean
        ));
        rows.push(row);
    }
    Ok(rows)
}

/// Seed-independent inputs of the measured-only columns of one target.
struct Extras<'a> {
    /// The probe's features of every network.
    probe_x: Option<&'a [Vec<f64>]>,
    /// Each task head's standardised prediction of every network, and its model (0: AIO-P,
    /// 1: no-transform).
    head_z: Option<(&'a [Vec<f64>], &'a [usize])>,
}

#[allow(clippy::too_many_arguments)]
fn one_seed(
    cfg: &EvalConfig,
    data: &TargetData,
    aio: &Trained,
    plain: Option<(&Trained, &[f32])>,
    extra: &[(&Trained, bool)],
    z_aio: &[f32],
    extras: Extras,
    seed: u64,
    device: &Device,
) -> Result<SeedScores, PredictorError> {
    let probe_x = extras.probe_x;
    let ex = &data.examples;
    let sp = choose(ex.len(), cfg.samples, cfg.max_eval, seed, data.key);
    if sp.fit.len() < cfg.samples || sp.eval.len() < 2 {
        return Err(PredictorError::Data(format!(
            "{} has {} labelled networks, too few for {} samples and an evaluation",
            data.key,
            ex.len(),
            cfg.samples
        )));
    }
    let truth: Vec<f64> = sp.eval.iter().map(|&i| ex[i].value).collect();
    let fit_y: Vec<f64> = sp.fit.iter().map(|&i| ex[i].value).collect();
    let fit_f: Vec<f64> = sp.fit.iter().map(|&i| ex[i].gflops).collect();
    let hib = data.higher_is_better;
    let s_aio = TaskScaler::fit_with(&fit_y, &fit_f, hib, true)?;
    let s_plain = TaskScaler::fit_with(&fit_y, &fit_f, hib, false)?;
    let pick = |z: &[f32]| -> Vec<f32> { sp.eval.iter().map(|&i| z[i]).collect() };
    let mut out: SeedScores = Vec::new();

    // Baselines that rank by size: larger is predicted better when higher is better.
    let dir = if hib { 1.0 } else { -1.0 };
    let by = |v: &[f64]| -> Vec<f64> { sp.eval.iter().map(|&i| dir * v[i]).collect() };
    out.push((FLOPS, score(seed, &by(&data.mflops), &truth, false)));
    out.push((PARAMS, score(seed, &by(&data.params), &truth, false)));

    let zs = to_units(&pick(z_aio), &s_aio, ex, &sp.eval);
    out.push((ZERO_SHOT, score(seed, &zs, &truth, true)));
    if let Some((_, z_plain)) = plain {
        let zs = to_units(&pick(z_plain), &s_plain, ex, &sp.eval);
        out.push((PLAIN_ZERO_SHOT, score(seed, &zs, &truth, true)));
    }

    let ft = TrainConfig {
        seed,
        ..cfg.fine_tune.clone()
    };
    let mut fine_tuned = vec![(FT, aio, &s_aio)];
    if let Some((p, _)) = plain {
        fine_tuned.push((PLAIN_FT, p, &s_plain));
    }
    for (name, base, s) in fine_tuned {
        let t = base.duplicate()?;
        fit_on(&t, s, ex, &sp.fit, &ft, &cfg.trainable)?;
        let z = z_scores(&t, ex, &sp.eval)?;
        out.push((
            name,
            score(seed, &to_units(&z, s, ex, &sp.eval), &truth, true),
        ));
    }
    if let Some(sel) = &cfg.select {
        let ft_cv = TrainConfig {
            rank_weight: cfg.rank_weight,
            lr: cfg.cv_lr,
            ..ft.clone()
        };
        let data: Vec<Labelled> = sp
            .fit
            .iter()
            .map(|&i| Labelled {
                features: ex[i].features.clone(),
                value: ex[i].value,
                gflops: ex[i].gflops,
            })
            .collect();
        // A copy of `base` fine-tuned for the chosen length, on the evaluation set in task
        // units; calibrated by a line fitted on out-of-fold predictions `oof`.
        let y: Vec<f64> = data.iter().map(|d| d.value).collect();
        let tuned = |base: &Trained, s: &TaskScaler, chosen: &SelectionReport| {
            let t = base.duplicate()?;
            if chosen.epochs > 0 {
                let tc = TrainConfig {
                    epochs: chosen.epochs,
                    ..ft_cv.clone()
                };
                fit_on(&t, s, ex, &sp.fit, &tc, &cfg.trainable)?;
            }
            let t = match sel.wise {
                Some(a) if chosen.epochs > 0 => t.interpolate(base, a)?,
                _ => t,
            };
            Ok::<_, PredictorError>(to_units(&z_scores(&t, ex, &sp.eval)?, s, ex, &sp.eval))
        };
        let calibrate = |units: &[f64], oof: &[f64]| {
            let cal = Calibration::fit(oof, &y)?;
            let v: Vec<f64> = units.iter().map(|&p| cal.apply(p)).collect();
            Ok::<_, PredictorError>((v, cal.form))
        };
        // The evaluation set for the bagged fold models (none unless asked for).
        let (bag_feats, bag_gflops): (Vec<&GraphFeatures>, Vec<f64>) = if cfg.bagged {
            sp.eval
                .iter()
                .map(|&i| (&*ex[i].features, ex[i].gflops))
                .unzip()
        } else {
            (Vec::new(), Vec::new())
        };
        let select = |m: &Trained| {
            select_epochs_bagged(
                m,
                &data,
                hib,
                &ft_cv,
                &cfg.trainable,
                sel,
                &bag_feats,
                &bag_gflops,
            )
        };
        let (chosen, aio_bag) = select(aio)?;
        let units = tuned(aio, &s_aio, &chosen)?;
        let mut sc = score(seed, &units, &truth, true);
        sc.epochs = Some(chosen.epochs);
        out.push((FT_CV, sc));
        let (calibrated, form) = calibrate(&units, &chosen.oof)?;
        let mut cal_sc = score(seed, &calibrated, &truth, true);
        cal_sc.epochs = Some(chosen.epochs);
        cal_sc.form = Some(form);
        out.push((FT_CAL, cal_sc));
        if let Some((p, _)) = plain {
            // The same selection over the no-transform model, then both ways of using it:
            // the one whose best length ranks the held-out folds better (ties: AIO-P), and
            // the mean of both in task units, calibrated on the mean's out-of-fold predictions.
            let (other, plain_bag) = select(p)?;
            let plain_units = tuned(p, &s_plain, &other)?;
            let plain_won = other.best_score() > chosen.best_score();
            let mut sc = if plain_won {
                let (calibrated, form) = calibrate(&plain_units, &other.oof)?;
                let mut sc = score(seed, &calibrated, &truth, true);
                sc.epochs = Some(other.epochs);
                sc.form = Some(form);
                sc
            } else {
                cal_sc
            };
            sc.no_transform = Some(plain_won);
            out.push((BOTH_CAL, sc));
            let (mean_units, mean_oof) = (
                midpoints(&units, &plain_units),
                midpoints(&chosen.oof, &other.oof),
            );
            let (calibrated, form) = calibrate(&mean_units, &mean_oof)?;
            let mut sc = score(seed, &calibrated, &truth, true);
            sc.form = Some(form);
            out.push((MEAN_CAL, sc));
            // Whichever of the mean, AIO-P and no-transform ranks the held-out folds best
            // (ties in that order).
            let rank = |oof: &[f64]| oof_score(oof, &y);
            let options = [
                (&mean_units, &mean_oof),
                (&units, &chosen.oof),
                (&plain_units, &other.oof),
            ];
            let mut best = 0;
            for (i, o) in options.iter().enumerate().skip(1) {
                if rank(o.1) > rank(options[best].1) {
                    best = i;
                }
            }
            let (calibrated, form) = calibrate(options[best].0, options[best].1)?;
            let mut sc = score(seed, &calibrated, &truth, true);
            sc.form = Some(form);
            sc.no_transform = Some(best == 2);
            out.push((PICK_CAL, sc));
            // Blends of the standardised members (and log-FLOPs), fitted on the out-of-fold
            // predictions, then calibrated on the blend of those.
            let blended = |weighting, fit_sig: &[&[f64]], eval_sig: &[&[f64]]| {
                let b = Blend::fit(fit_sig, &y, weighting)?;
                let oof = b.apply_all(fit_sig);
                let (calibrated, form) = calibrate(&b.apply_all(eval_sig), &oof)?;
                let mut sc = score(seed, &calibrated, &truth, true);
                sc.form = Some(form);
                sc.cv_spearman = Some(spearman(&oof, &y));
                Ok::<_, PredictorError>(sc)
            };
            let flops_of = |idx: &[usize]| -> Vec<f64> {
                idx.iter()
                    .map(|&i| flops_signal(ex[i].gflops, hib))
                    .collect()
            };
            let (flops_fit, flops_eval) = (flops_of(&sp.fit), flops_of(&sp.eval));
            let blends: [(&str, Weighting, bool); 3] = [
                (MEANZ_CAL, Weighting::Equal, false),
                (WMEANZ_CAL, Weighting::Rank, false),
                (WFLOPS_CAL, Weighting::Rank, true),
            ];
            for (name, weighting, with_flops) in blends {
                let mut fit_sig: Vec<&[f64]> = vec![&chosen.oof, &other.oof];
                let mut eval_sig: Vec<&[f64]> = vec![&units, &plain_units];
                if with_flops {
                    fit_sig.push(&flops_fit);
                    eval_sig.push(&flops_eval);
                }
                out.push((name, blended(weighting, &fit_sig, &eval_sig)?));
            }
            if cfg.bagged {
                // `wmeanz` with each member's fold models bagged in place of its refit.
                let fit_sig: Vec<&[f64]> = vec![&chosen.oof, &other.oof];
                let eval_sig: Vec<&[f64]> = vec![&aio_bag, &plain_bag];
                out.push((BAG_CAL, blended(Weighting::Rank, &fit_sig, &eval_sig)?));
            }
            if let Some(px) = probe_x {
                // A ridge probe on the frozen encoders' embeddings, alone and as a third
                // member of `wmeanz`, weighed by its nested leave-one-out predictions.
                // The 20 fitting rows are copied; the evaluation rows are only read.
                let px_fit: Vec<Vec<f64>> = sp.fit.iter().map(|&i| px[i].clone()).collect();
                let probe = Probe::fit(&px_fit, &y)?;
                let probe_eval = probe.apply_all(sp.eval.iter().map(|&i| px[i].as_slice()));
                let probe_oof = Probe::out_of_fold(&px_fit, &y)?;
                out.push((PROBE, score(seed, &probe_eval, &truth, true)));
                let fit_sig: Vec<&[f64]> = vec![&chosen.oof, &other.oof, &probe_oof];
                let eval_sig: Vec<&[f64]> = vec![&units, &plain_units, &probe_eval];
                out.push((WPROBE_CAL, blended(Weighting::Rank, &fit_sig, &eval_sig)?));
                // The probe joins only when its held-out predictions rank the 20 at least as
                // well as the better fine-tuned member's (else this is `wmeanz`).
                let k = if rank(&probe_oof) >= rank(&chosen.oof).max(rank(&other.oof)) {
                    3
                } else {
                    2
                };
                let gated = blended(Weighting::Rank, &fit_sig[..k], &eval_sig[..k])?;
                out.push((GPROBE_CAL, gated));
                // The probe's held-out predictions from the members' own folds.
                let folds = fold_of_each(y.len(), sel.folds, ft_cv.seed);
                let probe_folds = Probe::out_of_folds(&px_fit, &y, &folds)?;
                let fit_sig: Vec<&[f64]> = vec![&chosen.oof, &other.oof, &probe_folds];
                out.push((FPROBE_CAL, blended(Weighting::Rank, &fit_sig, &eval_sig)?));
            }
            if let Some((hz, owner)) = extras.head_z {
                // The task heads, blended (`heads`) or the best one (`top head`), alone and
                // as a third member of `wmeanz`, weighed by their out-of-fold signals on the
                // members' own folds.
                let pick = |idx: &[usize]| -> Vec<Vec<f64>> {
                    hz.iter()
                        .map(|h| idx.iter().map(|&i| h[i]).collect())
                        .collect()
                };
                let gflops =
                    |idx: &[usize]| -> Vec<f64> { idx.iter().map(|&i| ex[i].gflops).collect() };
                let target = HeadTarget {
                    owner,
                    fit_z: pick(&sp.fit),
                    fit_gflops: gflops(&sp.fit),
                    y: &y,
                    eval_z: pick(&sp.eval),
                    eval_gflops: gflops(&sp.eval),
                    higher_is_better: hib,
                };
                let folds = fold_of_each(y.len(), sel.folds, ft_cv.seed);
                let members = head_members(&target, &folds)?;
                let names = [(HEADS, WHEADS_CAL), (TOP_HEAD, WTOP_CAL)];
                for (m, (alone, with)) in members.iter().zip(names) {
                    out.push((alone, score(seed, &m.eval, &truth, true)));
                    let fit_sig: Vec<&[f64]> = vec![&chosen.oof, &other.oof, &m.oof];
                    let eval_sig: Vec<&[f64]> = vec![&units, &plain_units, &m.eval];
                    out.push((with, blended(Weighting::Rank, &fit_sig, &eval_sig)?));
                }
            }
            if !extra.is_empty() {
                // The two members above and every extra one, each fine-tuned for its own
                // cross-validated length, blended by `wmeanz`.
                let (mut extra_fit, mut extra_eval) = (Vec::new(), Vec::new());
                for &(m, flops_scaling) in extra {
                    let s = if flops_scaling { &s_aio } else { &s_plain };
                    let sel_m = select_epochs(m, &data, hib, &ft_cv, &cfg.trainable, sel)?;
                    extra_eval.push(tuned(m, s, &sel_m)?);
                    extra_fit.push(sel_m.oof);
                }
                let fit_ref: Vec<&[f64]> = [&chosen.oof[..], &other.oof]
                    .into_iter()
                    .chain(extra_fit.iter().map(Vec::as_slice))
                    .collect();
                let eval_ref: Vec<&[f64]> = [&units[..], &plain_units]
                    .into_iter()
                    .chain(extra_eval.iter().map(Vec::as_slice))
                    .collect();
                out.push((ENS_CAL, blended(Weighting::Rank, &fit_ref, &eval_ref)?));
            }
        }
    }
    if !cfg.baselines {
        return Ok(out);
    }
    let t = Trained::init(&cfg.model, 1000 + seed, device)?;
    let sc = TrainConfig {
        lr: cfg.scratch_lr,
        ..ft
    };
    fit_on(&t, &s_aio, ex, &sp.fit, &sc, &[])?;
    let z = z_scores(&t, ex, &sp.eval)?;
    out.push((
        SCRATCH,
        score(seed, &to_units(&z, &s_aio, ex, &sp.eval), &truth, true),
    ));
    Ok(out)
}

fn sample_efficiency(
    cfg: &EvalConfig,
    aio: &Trained,
    device: &Device,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Vec<TargetRow>, PredictorError> {
    let mut rows = Vec::new();
    for key in targets_of(Protocol::SampleEfficiency, cfg) {
        let data = load_target(key, cfg)?;
        let ex = &data.examples;
        for &size in &cfg.sizes {
            let jobs: Vec<(u64, bool)> = (0..cfg.seeds as u64)
                .flat_map(|s| [(s, false), (s, true)])
                .collect();
            let scores = crate::pool::parallel(&jobs, cfg.threads, |&(seed, pretrained)| {
                let sp = choose(ex.len(), size, cfg.max_eval, seed, key);
                if sp.fit.len() < size || sp.eval.len() < 2 {
                    return Err(PredictorError::Data(format!(
                        "{key} has {} labelled networks, too few for {size}",
                        ex.len()
                    )));
                }
                let y: Vec<f64> = sp.fit.iter().map(|&i| ex[i].value).collect();
                let f: Vec<f64> = sp.fit.iter().map(|&i| ex[i].gflops).collect();
                let s = TaskScaler::fit(&y, &f, data.higher_is_better)?;
                let t = if pretrained {
                    aio.duplicate()?
                } else {
                    Trained::init(&cfg.model, 1000 + seed, device)?
                };
                let epochs = (cfg.graph_steps / size).clamp(1, cfg.max_epochs.max(1));
                let tc = TrainConfig {
                    epochs,
                    lr: cfg.size_lr,
                    rank_weight: cfg.size_rank_weight,
                    seed,
                    ..cfg.pretrain.clone()
                };
                let all = if pretrained { &cfg.trainable[..] } else { &[] };
                fit_on(&t, &s, ex, &sp.fit, &tc, all)?;
                let z = z_scores(&t, ex, &sp.eval)?;
                let truth: Vec<f64> = sp.eval.iter().map(|&i| ex[i].value).collect();
                let pred = to_units(&z, &s, ex, &sp.eval);
                Ok((
                    if pretrained { SE_FT } else { SE_SCRATCH },
                    score(seed, &pred, &truth, true),
                ))
            })?;
            let mut methods: BTreeMap<String, Vec<SeedScore>> = BTreeMap::new();
            for (name, s) in scores {
                methods.entry(name.to_string()).or_default().push(s);
            }
            let row = TargetRow {
                target: key,
                samples: size,
                methods: methods
                    .into_iter()
                    .map(|(k, v)| (k, summarise(v)))
                    .collect(),
            };
            log(&format!(
                "{key} n={size}: scratch kendall {:.3}, pretrained ft {:.3}",
                row.methods[SE_SCRATCH].kendall.mean, row.methods[SE_FT].kendall.mean
            ));
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The report as a fixed-width table.
pub fn table(r: &EvalReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} ({} seeds, {:.0} s; pretrained on {} tasks)",
        r.protocol.name(),
        r.config.seeds,
        r.seconds,
        r.pretrain_tasks.len()
    );
    // The method column is as wide as its longest name, so the numbers stay aligned.
    let w = r
        .rows
        .iter()
        .flat_map(|row| row.methods.keys())
        .chain(r.mean_spearman.keys())
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0)
        .max(24);
    let _ = writeln!(
        s,
        "{:<30} {:>5}  {:<w$} {:>15} {:>15} {:>15}",
        "target", "n", "method", "spearman", "kendall", "mae"
    );
    let pm = |m: &MeanStd| format!("{:.3} ± {:.3}", m.mean, m.std);
    for row in &r.rows {
        for (name, m) in &row.methods {
            let _ = writeln!(
                s,
                "{:<30} {:>5}  {:<w$} {:>15} {:>15} {:>15}",
                row.target.to_string(),
                row.samples,
                name,
                pm(&m.spearman),
                pm(&m.kendall),
                m.mae.as_ref().map_or("-".to_string(), pm)
            );
        }
    }
    for (name, v) in &r.mean_spearman {
        let _ = writeln!(s, "mean spearman over targets, {name:<w$} {v:.3}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::init::sorted_vars;

    #[test]
    fn a_config_is_checked_before_any_pretraining() {
        let mut all = vec![EvalConfig::default()];
        for p in [
            Protocol::UnseenTask,
            Protocol::UnseenSpace,
            Protocol::SampleEfficiency,
        ] {
            all.push(EvalConfig::quick(p));
        }
        for c in &all {
            c.validate().unwrap();
        }
        let nb = |t| TaskKey::new(SpaceId::Nb201, t);
        type Change = Box<dyn Fn(&mut EvalConfig)>;
        let cases: Vec<(&str, Change)> = vec![
            ("samples: 1", Box::new(|c| c.samples = 1)),
            ("max_eval: must be", Box::new(|c| c.max_eval = Some(0))),
            ("scratch_lr: -1", Box::new(|c| c.scratch_lr = -1.0)),
            ("cv_lr: 0", Box::new(|c| c.cv_lr = 0.0)),
            ("rank_weight: NaN", Box::new(|c| c.rank_weight = f64::NAN)),
            (
                "trainable: 'bogus.'",
                Box::new(|c| c.trainable = vec!["bogus.".into()]),
            ),
            (
                "targets: nb201/cifar10 is also in pretrain_tasks",
                Box::new(move |c| {
                    c.targets = vec![nb(Task::Cifar10)];
                    c.pretrain_tasks = vec![nb(Task::Cifar10), nb(Task::Cifar100)];
                }),
            ),
            (
                "adapters.config.head[0]",
                Box::new(move |c| {
                    c.adapters = Some(AdapterStage {
                        tasks: vec![nb(Task::Cifar100)],
                        config: crate::predictor::adapters::AdapterConfig {
                            head: vec![0],
                            ..Default::default()
                        },
                        train: TrainConfig::default(),
                    })
                }),
            ),
        ];
        for (says, change) in cases {
            let mut c = EvalConfig::default();
            change(&mut c);
            let e = c.validate().unwrap_err().into_message();
            assert!(e.starts_with(says), "{says}: {e}");
        }
    }

    /// Every line's numbers start in the same column, however long a method's name.
    #[test]
    fn the_table_aligns_long_method_names() {
        let ms = |x: f64| MeanStd { mean: x, std: 0.0 };
        let scores = MethodScores {
            spearman: ms(0.5),
            kendall: ms(0.4),
            mae: Some(ms(1.0)),
            per_seed: Vec::new(),
        };
        let names = [ZERO_SHOT, FPROBE_CAL, BAG_CAL];
        let report = EvalReport {
            protocol: Protocol::UnseenSpace,
            config: EvalConfig::default(),
            pretrain_tasks: Vec::new(),
            rows: vec![TargetRow {
                target: "nb101/cifar10".parse().unwrap(),
                samples: 20,
                methods: names
                    .iter()
                    .map(|n| (n.to_string(), scores.clone()))
                    .collect(),
            }],
            mean_spearman: names.iter().map(|n| (n.to_string(), 0.5)).collect(),
            seconds: 1.0,
        };
        let text = table(&report);
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(lines.len(), 1 + 2 * names.len());
        let col =
            |l: &str, pat: &str| l.chars().count() - l.split_once(pat).unwrap().1.chars().count();
        let at = col(lines[0], "spearman");
        for l in &lines[1..=names.len()] {
            assert_eq!(col(l, "0.500 ± 0.000"), at, "{l}");
        }
        let ends: Vec<usize> = lines[1 + names.len()..]
            .iter()
            .map(|l| l.chars().count())
            .collect();
        assert!(ends.windows(2).all(|w| w[0] == w[1]), "{text}");
    }

    /// The cross-validated columns measure the product's fine-tuning step unless a config
    /// says otherwise; the paper's columns keep their own.
    #[test]
    fn cross_validated_columns_fine_tune_at_the_product_s_learning_rate() {
        let d = EvalConfig::default();
        assert_eq!(d.cv_lr, super::super::train::FINETUNE_LR);
        assert_eq!(d.fine_tune.lr, 1e-4);
        let c: EvalConfig = serde_json::from_str(r#"{"cv_lr": 3e-4}"#).unwrap();
        assert_eq!((c.cv_lr, c.fine_tune.lr), (3e-4, 1e-4));
    }

    #[test]
    fn members_must_be_distinct_plain_folder_names() {
        let member = |name: &str| MemberSpec {
            name: name.into(),
            flops_scaling: true,
            pretrain: None,
        };
        let with = |names: &[&str]| EvalConfig {
            members: names.iter().map(|n| member(n)).collect(),
            ..EvalConfig::default()
        };
        assert!(check_members(&with(&[])).is_ok());
        assert!(check_members(&with(&["aio-s1", "plain_s1"])).is_ok());
        for bad in [
            &["../x"][..],
            &["a/b"],
            &[""],
            &["aio"],
            &["plain"],
            &["aio-s1", "aio-s1"],
        ] {
            let e = check_members(&with(bad)).unwrap_err().to_string();
            assert!(e.contains("members"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn pretraining_never_sees_a_target() {
        for p in [
            Protocol::UnseenTask,
            Protocol::UnseenSpace,
            Protocol::SampleEfficiency,
        ] {
            let pre = p.pretrain_tasks();
            assert!(!pre.is_empty());
            for t in p.targets() {
                assert!(
                    !pre.contains(&t),
                    "{} pretrains on its target {t}",
                    p.name()
                );
            }
        }
        assert_eq!(Protocol::UnseenTask.targets().len(), 6);
        assert_eq!(Protocol::UnseenTask.pretrain_tasks().len(), 3 + 4 + 4);
        assert_eq!(Protocol::UnseenSpace.targets().len(), 7);
        assert_eq!(Protocol::UnseenSpace.pretrain_tasks().len(), 3 + 7);
        assert!(Protocol::UnseenSpace
            .pretrain_tasks()
            .iter()
            .all(|k| k.space != SpaceId::Tnb101Macro));
        assert_eq!(
            "unseen-space".parse::<Protocol>().unwrap(),
            Protocol::UnseenSpace
        );
        assert!("unseen".parse::<Protocol>().is_err());
    }

    #[test]
    fn splits_are_seeded_disjoint_and_capped() {
        let key: TaskKey = "nb201/cifar10".parse().unwrap();
        let a = choose(100, 20, None, 3, key);
        let b = choose(100, 20, None, 3, key);
        assert_eq!(a.fit, b.fit);
        assert_eq!(a.eval, b.eval);
        assert_eq!(a.fit.len() + a.eval.len(), 100);
        assert!(a.fit.iter().all(|i| !a.eval.contains(i)));
        let c = choose(100, 20, None, 4, key);
        assert_ne!(a.fit, c.fit);
        let d = choose(100, 20, Some(30), 3, key);
        assert_eq!(d.fit, a.fit);
        assert_eq!(d.eval.len(), 30);
    }

    #[test]
    fn a_model_that_saw_a_target_is_refused() {
        let cfg = EvalConfig::default();
        let mut t = Trained::init(
            &crate::predictor::model::tests::tiny_config(),
            0,
            &Device::Cpu,
        )
        .unwrap();
        check_pretrained(&t, Protocol::UnseenSpace, &cfg).unwrap();
        let s = TaskScaler::fit(&[1.0, 2.0], &[0.1, 0.2], true).unwrap();
        t.meta
            .stats
            .insert("tnb101_macro/jigsaw".parse().unwrap(), s);
        assert!(check_pretrained(&t, Protocol::UnseenSpace, &cfg).is_err());
        check_pretrained(&t, Protocol::UnseenTask, &cfg).unwrap();
    }

    #[test]
    fn duplicate_is_deep() {
        let t = Trained::init(
            &crate::predictor::model::tests::tiny_config(),
            5,
            &Device::Cpu,
        )
        .unwrap();
        let d = t.duplicate().unwrap();
        let (name, v) = sorted_vars(&d.map).into_iter().next().unwrap();
        let before: Vec<f32> = sorted_vars(&t.map)[0]
            .1
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        v.set(&v.as_tensor().affine(0.0, 7.0).unwrap()).unwrap();
        let after: Vec<f32> = sorted_vars(&t.map)[0]
            .1
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(
            before, after,
            "changing the copy's {name} changed the original"
        );
    }
}
