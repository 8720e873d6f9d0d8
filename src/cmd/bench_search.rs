//! `aiop bench search`: candidates scored per second by regularized evolution with the
//! predictor as its fitness, as BENCHMARKS.md reports it. Everything a search does per
//! candidate is in the clock: tournament, mutation, building and hashing the graph, FLOPs and
//! parameters, feature extraction, the batched predictor call, bookkeeping. With the search's
//! score cache on (as every search runs), a network seen before is not scored again; off, every
//! candidate goes through the predictor. Medians over rounds (seeds 0, 1, ...); nothing here
//! asserts a speed.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use crate::cmd::bench::median;
use aiop::search::{self, Algorithm, SearchSpec, SearchState};
use aiop::spaces::{SpaceId, Task};

#[derive(Debug, Args)]
pub struct BenchSearchArgs {
    #[arg(long, default_value = "nb201", value_parser = super::space_parser())]
    pub space: SpaceId,
    #[arg(long, default_value = "cifar10")]
    pub task: String,
    /// Predictor checkpoint (default: the embedded model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Predictor evaluations per search (its budget).
    #[arg(long, default_value_t = 10_000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub budget: usize,
    #[arg(long, default_value_t = 64)]
    pub population: usize,
    #[arg(long, default_value_t = 16)]
    pub sample: usize,
    /// Candidates per generation (one predictor call each), comma-separated.
    #[arg(long, default_value = "16,256", value_delimiter = ',')]
    pub batch: Vec<usize>,
    #[arg(long, default_value_t = 3,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub rounds: usize,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Row {
    space: String,
    task: String,
    batch: usize,
    cache: bool,
    /// Candidates the search handled per round (scored or served from the cache).
    candidates: usize,
    /// Of which scored by the predictor.
    evaluations: usize,
    seconds: f64,
    candidates_per_s: f64,
    evaluations_per_s: f64,
}

pub fn bench(a: BenchSearchArgs) -> anyhow::Result<()> {
    let space = a.space;
    let task = super::task_arg(space, &a.task)?;
    // Every batch's search checked before any output (`--batch 16,0` ran 16 first).
    for &batch in &a.batch {
        spec(&a, space, task, batch, true, 0)
            .validate()
            .map_err(|e| super::UsageError(e.to_string()))?;
    }
    let device = aiop::predictor::default_device();
    let model = crate::cmd::predictor::load_model(a.model.as_deref(), &device)?;
    let mut out = std::io::stdout().lock();
    if !a.json {
        writeln!(
            out,
            "{:<14} {:<16} {:>6} {:>6} {:>11} {:>11} {:>9} {:>13} {:>13}",
            "space",
            "task",
            "batch",
            "cache",
            "candidates",
            "evaluated",
            "seconds",
            "candidates/s",
            "evaluated/s"
        )?;
    }
    for &batch in &a.batch {
        for cache in [false, true] {
            let mut runs = Vec::with_capacity(a.rounds);
            for round in 0..a.rounds {
                runs.push(one(&a, space, task, &model, batch, cache, round as u64)?);
            }
            let pick = |f: fn(&(usize, usize, f64)) -> f64| median(runs.iter().map(f).collect());
            let seconds = pick(|r| r.2);
            let row = Row {
                space: a.space.name().to_string(),
                task: a.task.clone(),
                batch,
                cache,
                candidates: pick(|r| r.0 as f64) as usize,
                evaluations: pick(|r| r.1 as f64) as usize,
                seconds,
                candidates_per_s: pick(|r| r.0 as f64 / r.2),
                evaluations_per_s: pick(|r| r.1 as f64 / r.2),
            };
            if a.json {
                writeln!(out, "{}", serde_json::to_string(&row)?)?;
            } else {
                writeln!(
                    out,
                    "{:<14} {:<16} {:>6} {:>6} {:>11} {:>11} {:>9.3} {:>13.0} {:>13.0}",
                    row.space,
                    row.task,
                    row.batch,
                    if row.cache { "on" } else { "off" },
                    row.candidates,
                    row.evaluations,
                    row.seconds,
                    row.candidates_per_s,
                    row.evaluations_per_s
                )?;
            }
        }
    }
    Ok(())
}

/// The evolution each round runs.
fn spec(
    a: &BenchSearchArgs,
    space: SpaceId,
    task: Task,
    batch: usize,
    cache: bool,
    seed: u64,
) -> SearchSpec {
    SearchSpec {
        space: Some(space),
        task: Some(task),
        algorithm: Algorithm::Evolution,
        budget: a.budget,
        population: a.population,
        sample: a.sample,
        batch,
        seed,
        cache,
        ..SearchSpec::default()
    }
}

/// One search: (candidates handled, predictor evaluations, seconds).
fn one(
    a: &BenchSearchArgs,
    space: SpaceId,
    task: Task,
    model: &aiop::predictor::checkpoint::Trained,
    batch: usize,
    cache: bool,
    seed: u64,
) -> anyhow::Result<(usize, usize, f64)> {
    let spec = spec(a, space, task, batch, cache, seed);
    let mut fitness = search::PredictorFitness::new(model.duplicate()?, space, task)?;
    let mut state = SearchState::new(spec)?;
    let cancel = AtomicBool::new(false);
    let t = Instant::now();
    search::run(&mut state, &mut fitness, &cancel, |_| Ok(()))?;
    let seconds = t.elapsed().as_secs_f64();
    Ok((state.proposed, state.evaluations, seconds))
}
