//! `aiop pretrain`, `aiop finetune` and `aiop predict`: training the AIO-P predictor on the
//! shipped labels, carrying it to a task file (a task model under `<state>/models`), and
//! predicting architectures (or JSON graphs) read from stdin (`aiop bench predictor` is in
//! [`super::bench_predictor`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use aiop::graph::json;
use aiop::predictor::checkpoint::Trained;
use aiop::predictor::data::{prepare, TaskKey};
use aiop::predictor::features::{extract, GraphFeatures};
use aiop::predictor::pretrain::{pretrain as run_pretrain, PretrainConfig};
use aiop::predictor::transform::gflops;
use aiop::predictor::{default_device, shipped, PredictorError};
use aiop::spaces::{Arch, SpaceId};
use aiop::taskfile::{self, TaskSpace};
use aiop::tuned::{self, BaseModel, TaskModel};

use super::{DataError, UsageError};

/// Where models go and are read from unless told otherwise.
pub const DEFAULT_MODEL_DIR: &str = "state/predictor";

#[derive(Debug, Args)]
pub struct PretrainArgs {
    /// A JSON pretraining configuration, every field optional: `tasks` (["space/task", ...]),
    /// `max_per_task`, `test_fraction`, `flops_scaling`, `model` {num_ops, op_dim,
    /// weighted_op_dim, res_dim, kernel_vocab, kernel_dim, bias_dim, hidden, layers,
    /// activation, pooling, head, head_activation, normalisers {h, w, c}}, `train` {epochs,
    /// batch_size, lr, clip_norm, dev_fraction, seed, rank_weight}, `adapters` {tasks, config
    /// {activation, head, head_activation}, train} (README.md, "K-Adapters"; `PretrainConfig`
    /// in src/predictor/pretrain.rs documents each). Default: all tasks of NB-201 and TNB-101
    /// micro and macro (17), all labels, 10 % test per task, the paper's model and optimiser,
    /// 40 epochs.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Checkpoint directory to write (not the shipped model's, search_spaces/predictor).
    #[arg(long, default_value = DEFAULT_MODEL_DIR)]
    pub out: PathBuf,
    /// Seed of every random choice (overrides the configuration's `train.seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Epochs (overrides `train.epochs`).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Comma-separated `space/task` list (overrides `tasks`), e.g. nb201/cifar10.
    #[arg(long)]
    pub tasks: Option<String>,
    /// Keep at most this many labelled networks per task (overrides `max_per_task`).
    #[arg(long)]
    pub max_per_task: Option<usize>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Search space of the architectures on stdin (with --task; not with --tuned).
    #[arg(long, requires = "task", conflicts_with = "tuned", value_parser = super::space_parser())]
    pub space: Option<SpaceId>,
    /// Benchmark task to predict (the model needs label statistics for space/task).
    #[arg(long, requires = "space", conflicts_with = "tuned")]
    pub task: Option<String>,
    /// Predict with the latest task model of this task (written by `aiop finetune` or the
    /// daemon under <STATE>/models).
    #[arg(long, value_name = "NAME", required_unless_present = "space")]
    pub tuned: Option<String>,
    /// State directory holding the task models (with --tuned).
    #[arg(long, value_name = "DIR", default_value = "state", requires = "tuned")]
    pub state: PathBuf,
    /// Checkpoint directory (default: the pretrained model embedded in the binary).
    #[arg(long, conflicts_with = "tuned")]
    pub model: Option<PathBuf>,
    /// Stdin lines are paths of JSON graphs (docs/graph-format.md) instead of architecture
    /// strings; output lines then have "graph" (the path) in place of "arch".
    #[arg(long)]
    pub graphs: bool,
    /// Graphs per forward pass.
    #[arg(long, default_value_t = 1024,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub batch_size: usize,
}

#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// The task file (docs/task-format.md).
    #[arg(long, value_name = "FILE.toml")]
    pub task: PathBuf,
    /// Base checkpoint directory (default: the pretrained model embedded in the binary).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// State directory: the task model goes to <STATE>/models/<name>/<version>/.
    #[arg(long, value_name = "DIR", default_value = "state")]
    pub state: PathBuf,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// A pretraining config file (JSON; unset fields take [`PretrainConfig::default`]'s values).
pub fn read_pretrain_config(p: &std::path::Path, option: &str) -> anyhow::Result<PretrainConfig> {
    let text = super::read_input(p, option)?;
    Ok(serde_json::from_str(&text).map_err(|e| DataError(format!("{}: {e}", p.display())))?)
}

/// The configuration `a` asks for: its file's (checked: a bad value is bad data, exit 65,
/// naming the file and the field), then the flags (checked again: a bad flag value is a usage
/// error, exit 2).
fn load_config(a: &PretrainArgs) -> anyhow::Result<PretrainConfig> {
    let mut cfg = match &a.config {
        Some(p) => {
            let cfg = read_pretrain_config(p, "--config")?;
            cfg.validate()
                .map_err(|e| DataError(format!("{}: {}", p.display(), e.into_message())))?;
            cfg
        }
        None => PretrainConfig::default(),
    };
    if let Some(s) = a.seed {
        cfg.train.seed = s;
    }
    if let Some(e) = a.epochs {
        cfg.train.epochs = e;
    }
    if let Some(n) = a.max_per_task {
        cfg.max_per_task = Some(n);
    }
    if let Some(t) = &a.tasks {
        cfg.tasks = t
            .split(',')
            .map(|s| s.trim().parse::<TaskKey>())
            .collect::<Result<_, _>>()
            .map_err(|e| UsageError(format!("--tasks: {e}")))?;
    }
    cfg.validate().map_err(|e| UsageError(e.to_string()))?;
    Ok(cfg)
}

/// Which shipped model `out` is, if any: one of the repository's shipped checkpoint folders
/// (relative to here or to the source tree this binary was built from). Pretraining into it
/// would overwrite the shipped model. (A folder elsewhere holding a copy of it, such as a
/// reproduction's, is the user's own.)
fn shipped_model_in(out: &Path) -> Option<&'static str> {
    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
    let source = Path::new(env!("CARGO_MANIFEST_DIR"));
    [shipped::DIR, shipped::PLAIN_DIR]
        .into_iter()
        .find(|d| same(out, Path::new(d)) || same(out, &source.join(d)))
}

pub fn pretrain(a: PretrainArgs) -> anyhow::Result<()> {
    let cfg = load_config(&a)?;
    if let Some(d) = shipped_model_in(&a.out) {
        return Err(UsageError(format!(
            "--out {}: that is the shipped model ({d}), which pretraining would overwrite; \
             write elsewhere (and copy the files over deliberately)",
            a.out.display()
        ))
        .into());
    }
    let device = default_device();
    eprintln!(
        "aiop: pretraining on {} for {} epochs (seed {}) on {:?}",
        cfg.tasks
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        cfg.train.epochs,
        cfg.train.seed,
        device
    );
    let (trained, report) = run_pretrain(&cfg, a.quiet, &device)?;
    trained
        .save(&a.out)
        .with_context(|| format!("saving to {}", a.out.display()))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}",
        serde_json::json!({
            "model": a.out.display().to_string(),
            "train_size": report.train.train_size,
            "dev_size": report.train.dev_size,
            "best_epoch": report.train.best_epoch,
            "best_dev_mse": report.train.best_dev_mse,
            "prepare_seconds": report.prepare_seconds,
            "train_seconds": report.train.seconds,
            "test": report.test,
        })
    )?;
    Ok(())
}

#[derive(Serialize)]
struct PredictionLine<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    arch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    graph: Option<&'a str>,
    prediction: f64,
}

/// What predicts a pretraining task without a task model: the embedded pair with its base
/// selection, or the checkpoint in `dir` (with its own `plain/` and `base.json` when it has them).
pub fn load_base(
    dir: Option<&std::path::Path>,
    device: &aiop::predictor::Device,
) -> anyhow::Result<aiop::predictor::base::Base> {
    use anyhow::Context;
    refuse_task_model(dir)?;
    let b = BaseModel::from_option(dir);
    b.load_base(device)
        .with_context(|| format!("loading the base predictor {}", b.describe()))
}

/// A usage error when `--model dir` is a task model ([`tuned::task_model_of`]): those
/// predict with their task's own statistics and blend, through `--tuned NAME`.
fn refuse_task_model(dir: Option<&Path>) -> anyhow::Result<()> {
    refuse_task_model_for(dir, |name| {
        format!("use --tuned {name} (with --state set to the folder holding models/)")
    })
}

/// [`refuse_task_model`], with `advice` (given the task's name) for what to do instead.
fn refuse_task_model_for(
    dir: Option<&Path>,
    advice: impl Fn(&str) -> String,
) -> anyhow::Result<()> {
    let Some(d) = dir else { return Ok(()) };
    super::check_input_dir(d, "--model")?;
    let Some(name) = tuned::task_model_of(d) else {
        return Ok(());
    };
    Err(UsageError(format!(
        "--model {}: that is a task model, not a pretrained checkpoint; {}",
        d.display(),
        advice(&name)
    ))
    .into())
}

/// At most [`QUOTE_CHARS`] characters of `s`, with "…" when it was longer: how a stdin line is
/// quoted in an error.
fn capped(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// How much of a stdin line an error quotes.
const QUOTE_CHARS: usize = 80;

/// The checkpoint in `dir`, or the embedded default model when none is given.
pub fn load_model(
    dir: Option<&std::path::Path>,
    device: &aiop::predictor::Device,
) -> anyhow::Result<Trained> {
    use anyhow::Context;
    refuse_task_model(dir)?;
    match dir {
        Some(d) => Trained::load(d, device)
            .with_context(|| format!("loading the predictor from {}", d.display())),
        None => Ok(aiop::predictor::shipped::load(device)?),
    }
}

pub fn finetune(a: FinetuneArgs) -> anyhow::Result<()> {
    super::check_input(&a.task, "--task")?;
    let spec = taskfile::load(&a.task, &taskfile::Limits::default())?;
    // A task model has no companion (plain/) to blend with and its own task's statistics: it
    // is no base to fine-tune from.
    refuse_task_model_for(a.model.as_deref(), |_| {
        "fine-tune from a pretrained checkpoint (aiop pretrain's --out; default: the embedded \
         model)"
            .to_string()
    })?;
    let device = default_device();
    let base = BaseModel::from_option(a.model.as_deref());
    let trained = base
        .load(&device)
        .with_context(|| format!("loading the base model {}", base.describe()))?;
    let settings = spec.finetune.unwrap_or_default().resolved();
    if !a.quiet {
        eprintln!(
            "aiop: {} '{}' ({} samples, {}) from {}",
            match spec.mode {
                taskfile::Mode::Finetune => format!(
                    "fine-tuning on task ({} epochs, batch {}, lr {}, seed {})",
                    settings.epochs, settings.batch_size, settings.lr, settings.seed
                ),
                taskfile::Mode::ZeroShot => "fitting zero-shot statistics of task".into(),
            },
            spec.name,
            spec.samples.len(),
            spec.space.name(),
            base.describe()
        );
    }
    let companion = base
        .companion_for(&spec, &device)
        .with_context(|| format!("loading the no-transform companion of {}", base.describe()))?;
    let m = tuned::finetune(
        &spec,
        trained,
        &base.describe(),
        companion,
        a.quiet,
        &Default::default(),
    )?;
    let models = a.state.join(aiop::serve::MODELS_DIR);
    let dir = m.save(&models)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}",
        serde_json::json!({
            "task": m.meta.task,
            "version": m.meta.version,
            "model": dir.display().to_string(),
            "mode": m.meta.mode,
            "samples": m.meta.samples,
            "finetune": m.meta.finetune,
            "final_loss": m.meta.final_loss,
            "fit": m.meta.fit,
            "cross_validated": m.meta.cross_validated,
            "base_model": m.meta.base_model,
            "scaler": m.meta.scaler,
            "epochs_chosen": m.meta.selection.as_ref().map(|s| s.epochs),
            "companion": m.meta.companion.as_ref().map(|c| serde_json::json!({
                "base_model": c.base_model,
                "epochs_chosen": c.selection.epochs,
            })),
            "blend_weights": m.meta.blend.as_ref().map(|b| {
                b.members.iter().map(|x| x.weight).collect::<Vec<f64>>()
            }),
            "calibration": m.meta.calibration,
            "seconds": m.meta.seconds,
        })
    )?;
    Ok(())
}

/// What predicts: the base (or given) model for a benchmark task, or a task model.
enum Predictor {
    Base(Box<aiop::predictor::base::Base>, TaskKey),
    Tuned(Box<TaskModel>),
}

impl Predictor {
    fn features(&self) -> aiop::predictor::features::FeatureConfig {
        match self {
            Predictor::Base(t, key) => t.resolve(*key).0.model.config.features(),
            Predictor::Tuned(m) => m.trained.model.config.features(),
        }
    }

    fn predict(&self, graphs: &[(&GraphFeatures, f64)], batch: usize) -> anyhow::Result<Vec<f64>> {
        Ok(match self {
            Predictor::Base(t, key) => t.predict(*key, graphs, batch)?,
            Predictor::Tuned(m) => m.predict(graphs, batch)?,
        })
    }
}

pub fn predict(a: PredictArgs) -> anyhow::Result<()> {
    let device = default_device();
    // The model, and the space and head architecture strings are built with.
    let (model, space_head) = match (&a.tuned, &a.space, &a.task) {
        (Some(name), _, _) => {
            let dir = tuned::latest(&a.state.join(aiop::serve::MODELS_DIR), name)?;
            let m = TaskModel::load(&dir, &device)?;
            let sh = match m.meta.space {
                TaskSpace::Builtin { space, head } => Some((space, head)),
                TaskSpace::Graph => None,
            };
            (Predictor::Tuned(Box::new(m)), sh)
        }
        (None, Some(space), Some(task)) => {
            let space = *space;
            let task = super::task_arg(space, task)?;
            let key = TaskKey::new(space, task);
            let t = load_base(a.model.as_deref(), &device)?;
            t.features_for(key)?;
            (Predictor::Base(Box::new(t), key), Some((space, task)))
        }
        _ => anyhow::bail!("give --tuned NAME, or --space and --task"),
    };
    if !a.graphs && space_head.is_none() {
        return Err(DataError(
            "this task's networks are JSON graphs: pass --graphs and give paths of graph files"
                .into(),
        )
        .into());
    }
    let fc = model.features();
    // One stdin line → (label, features, GFLOPs).
    let read = |s: &str| -> anyhow::Result<(String, GraphFeatures, f64)> {
        if a.graphs {
            let text = std::fs::read_to_string(s).with_context(|| format!("reading {s}"))?;
            let g = json::from_json(&text).map_err(|e| DataError(format!("{s}: {e}")))?;
            Ok((s.to_string(), extract(&g, &fc), gflops(&g)))
        } else {
            let (space, head) = space_head.expect("checked above");
            let arch = Arch::parse(space, s).map_err(PredictorError::from)?;
            let (f, gf) = prepare(&arch, head, &fc)?;
            Ok((arch.to_string(), f, gf))
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = 0usize;
    let mut pending: Vec<(String, GraphFeatures, f64)> = Vec::new();
    let graphs = a.graphs;
    let flush = |pending: &mut Vec<(String, GraphFeatures, f64)>,
                 out: &mut dyn Write|
     -> anyhow::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let inputs: Vec<_> = pending.iter().map(|(_, f, g)| (f, *g)).collect();
        let pred = model.predict(&inputs, a.batch_size)?;
        // JSON has no infinity: a model that overflows is a failure, not a `null` prediction.
        if let Some(((label, _, _), p)) = pending.iter().zip(&pred).find(|(_, p)| !p.is_finite()) {
            anyhow::bail!("the model predicted a non-finite value ({p}) for {label}");
        }
        for ((label, _, _), p) in pending.iter().zip(pred) {
            let line = PredictionLine {
                arch: (!graphs).then_some(label.as_str()),
                graph: graphs.then_some(label.as_str()),
                prediction: p,
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        }
        pending.clear();
        Ok(())
    };
    for line in super::numbered_lines(std::io::stdin().lock()) {
        let (n, line) = line.context("reading stdin")?;
        let result = match &line {
            Ok(l) if l.trim().is_empty() => continue,
            Ok(l) => read(l.trim()),
            Err(e) => Err(DataError(e.clone()).into()),
        };
        match result {
            Ok(x) => pending.push(x),
            Err(e) => {
                // Keep output in input order: emit what came before, then report.
                flush(&mut pending, &mut out)?;
                failed += 1;
                let mut m = super::error_message(&e);
                if let Ok(l) = &line {
                    m = m.replace(l.trim(), &capped(l.trim()));
                }
                eprintln!("aiop: stdin line {n}: {m}");
            }
        }
        if pending.len() >= a.batch_size {
            flush(&mut pending, &mut out)?;
        }
    }
    flush(&mut pending, &mut out)?;
    out.flush()?;
    if failed > 0 {
        return Err(DataError(format!("{failed} line(s) of stdin failed")).into());
    }
    Ok(())
}
