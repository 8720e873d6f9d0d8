//! `aiop pretrain` and `aiop predict`: training the AIO-P predictor on the shipped labels and
//! predicting architectures read from stdin (`aiop bench predictor` is in
//! [`super::bench_predictor`]).

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use aiop::predictor::checkpoint::Trained;
use aiop::predictor::data::{prepare, TaskKey};
use aiop::predictor::features::GraphFeatures;
use aiop::predictor::pretrain::{pretrain as run_pretrain, PretrainConfig};
use aiop::predictor::{default_device, PredictorError};
use aiop::spaces::{Arch, SpaceId};

use super::DataError;

/// Where models go and are read from unless told otherwise.
pub const DEFAULT_MODEL_DIR: &str = "state/predictor";

#[derive(Debug, Args)]
pub struct PretrainArgs {
    /// A JSON pretraining configuration (`tasks`, `max_per_task`, `test_fraction`, `model`,
    /// `train`; every field optional). Default: all tasks of NB-201 and TNB-101 micro and macro
    /// (17), all labels, 10 % test per task, the paper's model and optimiser, 40 epochs.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Checkpoint directory to write.
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
    /// Search space of the architectures on stdin.
    #[arg(long)]
    pub space: String,
    /// Task to predict (the model needs label statistics for space/task).
    #[arg(long)]
    pub task: String,
    /// Checkpoint directory (default: the pretrained model embedded in the binary).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Graphs per forward pass.
    #[arg(long, default_value_t = 1024)]
    pub batch_size: usize,
}

fn load_config(a: &PretrainArgs) -> anyhow::Result<PretrainConfig> {
    let mut cfg = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text).map_err(|e| DataError(format!("{}: {e}", p.display())))?
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
            .map_err(|e| DataError(e.to_string()))?;
    }
    Ok(cfg)
}

pub fn pretrain(a: PretrainArgs) -> anyhow::Result<()> {
    let cfg = load_config(&a)?;
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
    arch: &'a str,
    prediction: f64,
}

/// The checkpoint in `dir`, or the embedded default model when none is given.
pub fn load_model(
    dir: Option<&std::path::Path>,
    device: &aiop::predictor::Device,
) -> anyhow::Result<Trained> {
    use anyhow::Context;
    match dir {
        Some(d) => Trained::load(d, device)
            .with_context(|| format!("loading the predictor from {}", d.display())),
        None => Ok(aiop::predictor::shipped::load(device)?),
    }
}

pub fn predict(a: PredictArgs) -> anyhow::Result<()> {
    let space = SpaceId::from_name(&a.space)?;
    let task = space.task(&a.task)?;
    let key = TaskKey::new(space, task);
    let device = default_device();
    let t = load_model(a.model.as_deref(), &device)?;
    t.scaler(key)?;
    let fc = t.model.config.features();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = 0usize;
    let mut pending: Vec<(String, GraphFeatures, f64)> = Vec::new();
    let flush = |pending: &mut Vec<(String, GraphFeatures, f64)>,
                 out: &mut dyn Write|
     -> anyhow::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let inputs: Vec<_> = pending.iter().map(|(_, f, g)| (f, *g)).collect();
        let pred = t.predict(key, &inputs, a.batch_size)?;
        for ((arch, _, _), p) in pending.iter().zip(pred) {
            let line = PredictionLine {
                arch,
                prediction: p,
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        }
        pending.clear();
        Ok(())
    };
    for (k, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        let s = line.trim();
        if s.is_empty() {
            continue;
        }
        match Arch::parse(space, s)
            .map_err(PredictorError::from)
            .and_then(|arch| Ok((prepare(&arch, task, &fc)?, arch)))
        {
            Ok(((f, gf), arch)) => pending.push((arch.to_string(), f, gf)),
            Err(e) => {
                // Keep output in input order: emit what came before, then report.
                flush(&mut pending, &mut out)?;
                failed += 1;
                eprintln!("aiop: stdin line {}: {e}", k + 1);
            }
        }
        if pending.len() >= a.batch_size.max(1) {
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
