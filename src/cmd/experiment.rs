//! `aiop experiment search`: sample efficiency of searches measured against the benchmark
//! tables, over many seeds, as BENCHMARKS.md reports it. Every number is a TRUE label from the
//! table of the architecture the method returns after at most k true queries.
//!
//! Methods: `random` (the best of k random architectures), `evolution` (regularized evolution
//! whose fitness is the true label, k queries) and `predictor` (an active search: the AIO-P
//! predictor of `--model`, fine-tuned round after round on the true labels bought so far, ranks
//! the candidates of an evolution and the best predicted unqueried ones are queried, 5 per
//! round after 10 random ones). All return the best architecture they queried; `predictor` runs
//! once to the largest k and reports its best after the first k queries for every k (the first
//! k queries of a longer run are exactly those of a run stopped at k).
//!
//! `aiop experiment flops`: the FLOP-reducing search from each table's best architecture, with a
//! predictor fitted to a few labelled networks as a task file is (`--recipe task`:
//! [`aiop::tuned::finetune`], what `aiop finetune` and the daemon run) or by AIO-P's fixed
//! fine-tuning (`--recipe paper`), reporting the TRUE drop of the network it returns.
//!
//! `aiop experiment base`: fits the base selection ([`aiop::predictor::base`]) of a pretrained
//! pair and reports it per task on networks it was not fitted on.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::UsageError;
use aiop::predictor::checkpoint::Trained;
use aiop::search::active::ActiveSpec;
use aiop::search::surrogate::SurrogateConfig;
use aiop::search::{self, Algorithm, SearchSpec, SearchState, TableFitness};
use aiop::spaces::{labels, Arch, SpaceId, Task};
use aiop::stats;

#[derive(Debug, Args)]
pub struct ExperimentArgs {
    #[arg(long, value_parser = super::space_parser())]
    pub space: SpaceId,
    /// Tasks, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub task: Vec<String>,
    /// True-query budgets, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "50,100,150")]
    pub queries: Vec<usize>,
    #[arg(long, default_value_t = 10,
          value_parser = clap::builder::RangedU64ValueParser::<u64>::new()
              .range(1..=aiop::predictor::eval::MAX_SEEDS as u64))]
    pub seeds: u64,
    /// Methods, comma-separated: random, evolution, predictor.
    #[arg(long, value_delimiter = ',', default_value = "random,evolution")]
    pub methods: Vec<String>,
    /// Pretrained predictor for the `predictor` method (default: the embedded model). It must
    /// never have seen a task of the searched space (checked).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A second pretrained predictor (e.g. `--model`'s no-transform companion) fine-tuned
    /// beside it; the surrogate is the mean of the two (`predictor`; checked like `--model`).
    #[arg(long)]
    pub companion: Option<PathBuf>,
    /// Fine-tuning updates per round of the `predictor` method (200 since session 18; 400
    /// before).
    #[arg(long, default_value_t = 200)]
    pub surrogate_steps: usize,
    /// Weight of the ranking term in each round's fine-tuning (`predictor` method; 0: squared
    /// error alone).
    #[arg(long, default_value_t = SurrogateConfig::default().rank_weight)]
    pub rank_weight: f64,
    /// Predictor evaluations of each round's evolution (`predictor` method).
    #[arg(long, default_value_t = 2000)]
    pub inner_budget: usize,
    /// Best queried architectures whose neighbourhoods make the local pool (`predictor`).
    #[arg(long, default_value_t = ActiveSpec::default().parents)]
    pub parents: usize,
    /// Picks per round from the local pool (`predictor`; the rest from the global evolution).
    #[arg(long, default_value_t = ActiveSpec::default().local)]
    pub local: usize,
    /// Parents whose neighbourhoods are spent give way to the next best (`predictor`; `false`:
    /// the best `--parents`, spent or not, the method before session 7).
    #[arg(long, default_value_t = ActiveSpec::default().live_parents, action = clap::ArgAction::Set)]
    pub live_parents: bool,
    /// Edits from a parent that the local pool reaches (`predictor`; 1: the one-edit
    /// neighbourhood).
    #[arg(long, default_value_t = ActiveSpec::default().radius)]
    pub local_radius: usize,
    /// True queries per round (`predictor`).
    #[arg(long, default_value_t = ActiveSpec::default().per_round)]
    pub per_round: usize,
    /// Random architectures queried before the first fit (`predictor`).
    #[arg(long, default_value_t = ActiveSpec::default().initial)]
    pub initial: usize,
    /// Seeds run side by side (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Write all runs as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Run {
    space: &'static str,
    task: &'static str,
    method: String,
    queries: usize,
    seed: u64,
    best_true: f64,
    arch: String,
}

#[derive(Debug, Serialize)]
struct Summary {
    space: &'static str,
    task: &'static str,
    method: String,
    queries: usize,
    mean: f64,
    std: f64,
    optimum: f64,
    mean_gap: f64,
}

/// Run one true-label search and return the best queried architecture and its label.
fn true_search(
    space: SpaceId,
    task: Task,
    method: &str,
    k: usize,
    seed: u64,
    table: &TableFitness,
) -> anyhow::Result<(String, f64)> {
    let algorithm = match method {
        "random" => Algorithm::Random,
        "evolution" => Algorithm::Evolution,
        m => unreachable!("method '{m}' is checked with the arguments"),
    };
    // Small budgets need a small population (Real et al. scale P and S with the budget).
    let population = (k / 3).clamp(10, 64);
    let spec = SearchSpec {
        space: Some(space),
        task: Some(task),
        algorithm,
        budget: k,
        population,
        sample: (population / 4).max(2),
        batch: 10,
        seed,
        top_k: 1,
        ..SearchSpec::default()
    };
    let mut fit = table.clone();
    let mut s = SearchState::new(spec)?;
    search::run(&mut s, &mut fit, &AtomicBool::new(false), |_| Ok(()))?;
    let best = s.best().context("the search evaluated nothing")?;
    let search::Genome::Arch(a) = &best.genome else {
        anyhow::bail!("a space search returned a graph");
    };
    let truth = table
        .lookup(a)
        .context("the best architecture has no label")?;
    Ok((a.to_string(), truth))
}

/// The `predictor` method: best true label after each of `ks` queries of one active search.
fn predictor_search(
    space: SpaceId,
    task: Task,
    ks: &[usize],
    seed: u64,
    models: &[aiop::predictor::checkpoint::Trained],
    a: &ExperimentArgs,
    table: &TableFitness,
) -> anyhow::Result<Vec<(String, f64)>> {
    use aiop::search::active::active_search;
    use aiop::search::surrogate::{MeanSurrogate, PredictorSurrogate};
    let k_max = ks.iter().copied().max().unwrap_or(0);
    let spec = ActiveSpec {
        space: Some(space),
        task: Some(task),
        queries: k_max,
        seed,
        inner_budget: a.inner_budget,
        parents: a.parents,
        local: a.local,
        live_parents: a.live_parents,
        radius: a.local_radius,
        per_round: a.per_round,
        initial: a.initial,
        ..ActiveSpec::default()
    };
    let cfg = SurrogateConfig {
        steps: a.surrogate_steps,
        rank_weight: a.rank_weight,
        seed,
        ..SurrogateConfig::default()
    };
    let members = models
        .iter()
        .map(|m| PredictorSurrogate::new(m, cfg.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut surrogate = MeanSurrogate(members);
    let mut oracle = table.clone();
    let r = active_search(&spec, &mut surrogate, &mut oracle, &AtomicBool::new(false))?;
    ks.iter()
        .map(|&k| {
            let q = r.queried[..k.min(r.queried.len())]
                .iter()
                .max_by(|a, b| a.label.total_cmp(&b.label))
                .context("nothing was queried")?;
            Ok((q.arch.to_string(), q.label))
        })
        .collect()
}

/// The tasks `--task` names in `space`, each once.
fn task_list(space: SpaceId, names: &[String]) -> Result<Vec<Task>, UsageError> {
    let mut tasks = Vec::with_capacity(names.len());
    for t in names {
        let task = super::task_arg(space, t)?;
        if tasks.contains(&task) {
            return Err(UsageError(format!("--task: {t} is listed twice")));
        }
        tasks.push(task);
    }
    Ok(tasks)
}

/// A list option's value given twice (`--queries 20,20`): its rows would be printed twice.
fn once_each<T: PartialEq + std::fmt::Display>(option: &str, xs: &[T]) -> Result<(), UsageError> {
    match xs.iter().enumerate().find(|(k, x)| xs[..*k].contains(x)) {
        Some((_, x)) => Err(UsageError(format!("{option}: {x} is listed twice"))),
        None => Ok(()),
    }
}

/// The methods `aiop experiment search` runs.
const METHODS: [&str; 3] = ["random", "evolution", "predictor"];

pub fn experiment(a: ExperimentArgs) -> anyhow::Result<()> {
    let space = a.space;
    // Everything the arguments alone can tell, before any work or output.
    if let Some(m) = a.methods.iter().find(|m| !METHODS.contains(&m.as_str())) {
        return Err(UsageError(format!(
            "--methods: unknown method '{m}' (expected {})",
            METHODS.join(", ")
        ))
        .into());
    }
    if let Some(p) = &a.json {
        super::check_writable(p, "--json")?;
    }
    if let Some(k) = a.queries.iter().find(|&&k| k == 0) {
        return Err(UsageError(format!("--queries: {k}: a budget must be at least 1")).into());
    }
    if let Some(k) = a.queries.iter().find(|&&k| k > aiop::search::MAX_BUDGET) {
        return Err(UsageError(format!(
            "--queries: {k} is over the limit of {} true queries",
            aiop::search::MAX_BUDGET
        ))
        .into());
    }
    once_each("--methods", &a.methods)?;
    once_each("--queries", &a.queries)?;
    // The predictor method's own options (its active search read them only once it ran).
    if a.methods.iter().any(|m| m == "predictor") {
        for (option, v, min, max) in [
            ("--per-round", a.per_round, 1, aiop::search::MAX_BUDGET),
            (
                "--inner-budget",
                a.inner_budget,
                1,
                aiop::search::MAX_BUDGET,
            ),
            ("--local-radius", a.local_radius, 1, usize::MAX),
            (
                "--surrogate-steps",
                a.surrogate_steps,
                0,
                aiop::search::MAX_BUDGET,
            ),
        ] {
            if !(min..=max).contains(&v) {
                return Err(UsageError(format!("{option}: {v} is not in {min}..={max}")).into());
            }
        }
        if !(a.rank_weight.is_finite() && a.rank_weight >= 0.0) {
            return Err(UsageError(format!(
                "--rank-weight: {} is not a finite number >= 0",
                aiop::show::num(a.rank_weight)
            ))
            .into());
        }
    }
    let mut tables = Vec::with_capacity(a.task.len());
    for task in task_list(space, &a.task)? {
        // Every method queries the true labels of the networks it proposes.
        tables.push((task, TableFitness::load_complete(space, task)?));
    }
    let mut models = Vec::new();
    if a.methods.iter().any(|m| m == "predictor") {
        let dirs = std::iter::once(a.model.as_deref()).chain(a.companion.as_deref().map(Some));
        for dir in dirs {
            let t = crate::cmd::predictor::load_model(dir, &aiop::predictor::default_device())?;
            if let Some(k) = t.meta.stats.keys().find(|k| k.space == space) {
                return Err(UsageError(format!(
                    "the predictor was pretrained on {k}: a model for searching {} must not \
                     have seen that space's labels (pretrain one without it, e.g. `aiop eval \
                     --pretrained DIR` of the unseen-space protocol, or `aiop pretrain --tasks`)",
                    space.name()
                ))
                .into());
            }
            models.push(t);
        }
    }
    let mut runs = Vec::new();
    let mut summaries = Vec::new();
    // Rows as they come; a reader gone from stdout must not end the runs before `--json`.
    let mut out = super::report_out();
    writeln!(
        out,
        "{:<14} {:<16} {:<10} {:>4}  {:>18}  {:>9}  {:>8}",
        "space", "task", "method", "k", "best true (mean±sd)", "optimum", "gap"
    )?;
    for (task, table) in tables {
        let optimum = labels::load(space, task)?
            .rows
            .iter()
            .map(|r| r.value)
            .fold(f64::NEG_INFINITY, f64::max);
        for method in &a.methods {
            // Per seed, the best (arch, true label) at every k.
            let seeds: Vec<u64> = (0..a.seeds).collect();
            let per_seed: Vec<Vec<(String, f64)>> =
                aiop::pool::parallel(&seeds, a.threads, |&seed| match method.as_str() {
                    "predictor" => {
                        predictor_search(space, task, &a.queries, seed, &models, &a, &table)
                    }
                    _ => a
                        .queries
                        .iter()
                        .map(|&k| true_search(space, task, method, k, seed, &table))
                        .collect::<anyhow::Result<_>>(),
                })?;
            for (ki, &k) in a.queries.iter().enumerate() {
                let mut bests = Vec::new();
                for seed in 0..a.seeds {
                    let (arch, v) = per_seed[seed as usize][ki].clone();
                    bests.push(v);
                    runs.push(Run {
                        space: space.name(),
                        task: task.name(),
                        method: method.clone(),
                        queries: k,
                        seed,
                        best_true: v,
                        arch,
                    });
                }
                let s = Summary {
                    space: space.name(),
                    task: task.name(),
                    method: method.clone(),
                    queries: k,
                    mean: stats::mean(&bests),
                    std: stats::std(&bests),
                    optimum,
                    mean_gap: optimum - stats::mean(&bests),
                };
                writeln!(
                    out,
                    "{:<14} {:<16} {:<10} {:>4}  {:>9.3} ± {:<6.3}  {:>9.3}  {:>8.3}",
                    s.space, s.task, s.method, s.queries, s.mean, s.std, s.optimum, s.mean_gap
                )?;
                summaries.push(s);
            }
        }
    }
    if let Some(p) = &a.json {
        let doc = serde_json::json!({ "summaries": summaries, "runs": runs });
        std::fs::write(p, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct FlopsExperimentArgs {
    #[arg(long, value_parser = super::space_parser())]
    pub space: SpaceId,
    /// Tasks, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub task: Vec<String>,
    /// Pretrained predictor (default: the embedded model). It must never have seen the task
    /// (checked); it is fine-tuned on `--samples` random labelled networks of the task per seed,
    /// as a user's task file would.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Labelled networks of the task the predictor is fine-tuned on (FT-20).
    #[arg(long, default_value_t = 20)]
    pub samples: usize,
    /// How the predictor is fitted to them: `task`, as `aiop finetune` and the daemon fit a
    /// task file (epochs cross-validated, blended with --companion, calibrated to the task's
    /// units); `paper`, AIO-P's 100 epochs at batch 1 (the method before session 7).
    #[arg(long, value_enum, default_value = "task")]
    pub recipe: Recipe,
    /// The no-transform companion of --model, blended with it by the `task` recipe (checked
    /// like --model).
    #[arg(long)]
    pub companion: Option<PathBuf>,
    /// Learning rate of the `task` recipe's fine-tuning (a task file's `[finetune] lr`).
    #[arg(long, default_value_t = aiop::predictor::train::FINETUNE_LR)]
    pub lr: f64,
    /// Largest predicted drop allowed (task units, points for accuracies).
    #[arg(long, default_value_t = 0.5)]
    pub tolerance: f64,
    /// Measure the tolerance from the start's true label (a user shrinking a network knows
    /// how well it does; the search's `reference`, which a daemon task file sets when its
    /// start is a sample) instead of from its predicted score (`false`: sessions 4–7).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub anchor: bool,
    /// Two-sided tolerance (the search's `two_sided`, the product's default since session 11):
    /// the found network's prediction may also not exceed the reference by more than the
    /// tolerance (`false`: sessions 4–10). Several values (`false,true`) run each variant from
    /// the same fitted predictor per seed, reported side by side.
    #[arg(long, value_delimiter = ',', default_value = "true", action = clap::ArgAction::Set)]
    pub two_sided: Vec<bool>,
    /// Predictor evaluations per reduction.
    #[arg(long, default_value_t = 2000)]
    pub budget: usize,
    /// Draw the labelled networks from those at most this many moves from the start (as a
    /// user shrinking a network would train a few variants of it); 0: from the whole space.
    #[arg(long, default_value_t = 0)]
    pub near: usize,
    /// The reduction's trust region: at most this many moves from the start (unlimited when
    /// absent).
    #[arg(long)]
    pub radius: Option<usize>,
    #[arg(long, default_value_t = 10,
          value_parser = clap::builder::RangedU64ValueParser::<u64>::new()
              .range(1..=aiop::predictor::eval::MAX_SEEDS as u64))]
    pub seeds: u64,
    /// Seeds run side by side (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Write all runs as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The labelled networks `pool` as the task file a user would write for them (fine-tuning
/// seeded by `seed`), for `tuned::finetune`.
fn labelled_task(
    space: SpaceId,
    task: Task,
    higher_is_better: bool,
    pool: &[aiop::predictor::data::Example],
    seed: u64,
    lr: f64,
) -> aiop::taskfile::TaskSpec {
    use aiop::taskfile::{FinetuneSpec, Mode, Sample, SampleInput, TaskSpace};
    aiop::taskfile::TaskSpec {
        name: format!("{}-{}", space.name(), task.name()),
        space: TaskSpace::Builtin { space, head: task },
        higher_is_better,
        mode: Mode::Finetune,
        samples_file: String::new(),
        samples: pool
            .iter()
            .enumerate()
            .map(|(i, e)| Sample {
                input: SampleInput::Arch(e.arch.clone()),
                value: e.value,
                // As if read from a CSV under its header.
                line: i + 2,
            })
            .collect(),
        search: None,
        finetune: Some(FinetuneSpec {
            seed: Some(seed),
            lr: Some(lr),
            ..FinetuneSpec::default()
        }),
        hash: "0".repeat(32),
    }
}

/// How `aiop experiment flops` fits the predictor to the labelled networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Recipe {
    Task,
    Paper,
}

#[derive(Debug, Serialize)]
struct FlopsRun {
    task: &'static str,
    seed: u64,
    two_sided: bool,
    start: String,
    start_mflops: f64,
    start_true: f64,
    start_predicted: f64,
    found: String,
    found_mflops: f64,
    found_predicted: f64,
    found_true: Option<f64>,
    reduction: f64,
    predicted_drop: f64,
    true_drop: Option<f64>,
    evaluations: usize,
}

/// The share of the start's FLOPs a reduction must cut to count, with a true drop within the
/// tolerance, as reaching the target (15 %).
const MIN_CUT: f64 = 0.15;

/// What `--recipe` fits to a seed's labelled networks.
struct Fitted<'a> {
    base: &'a Trained,
    companion: Option<&'a Trained>,
    key: aiop::predictor::data::TaskKey,
    higher_is_better: bool,
}

impl Fitted<'_> {
    /// The predictor fitted to `pool` (FT-20), as a search fitness.
    fn fit(
        &self,
        a: &FlopsExperimentArgs,
        pool: Vec<aiop::predictor::data::Example>,
        seed: u64,
    ) -> anyhow::Result<Box<dyn search::Fitness>> {
        use aiop::predictor::transfer::{transfer, TransferConfig};
        let (space, task) = (self.key.space, self.key.task);
        Ok(match a.recipe {
            Recipe::Paper => {
                let mut model = self.base.duplicate()?;
                let tc = TransferConfig {
                    samples: a.samples,
                    fine_tune: true,
                    seed,
                    ..TransferConfig::default()
                };
                transfer(&mut model, self.key, self.higher_is_better, pool, &tc, true)?;
                Box::new(search::PredictorFitness::new(model, space, task)?)
            }
            Recipe::Task => {
                let spec = labelled_task(space, task, self.higher_is_better, &pool, seed, a.lr);
                let second = match self.companion {
                    Some(c) => Some((c.duplicate()?, "companion".to_string())),
                    None => None,
                };
                let m = aiop::tuned::finetune(
                    &spec,
                    self.base.duplicate()?,
                    "base",
                    second,
                    true,
                    &Default::default(),
                )?;
                Box::new(crate::cmd::search::TunedFitness::new(m))
            }
        })
    }
}

/// A reduction's start: the table's best network of a task and its true label.
struct Reduction<'a> {
    key: aiop::predictor::data::TaskKey,
    start: &'a Arch,
    best: f64,
    table: &'a TableFitness,
}

impl Reduction<'_> {
    /// One FLOP-reducing search from the start scored by `fitness`, and the cheapest network
    /// it returns with its true drop.
    fn reduce(
        &self,
        a: &FlopsExperimentArgs,
        seed: u64,
        two_sided: bool,
        fitness: &mut dyn search::Fitness,
    ) -> anyhow::Result<FlopsRun> {
        let (space, task) = (self.key.space, self.key.task);
        let spec = reduction_spec(a, self.key, self.start, self.best, seed, two_sided);
        let mut s = SearchState::new(spec)?;
        search::run(&mut s, fitness, &AtomicBool::new(false), |_| Ok(()))?;
        let results = s.results();
        let first = &s.history[0];
        let cheapest = results
            .iter()
            .min_by(|x, y| x.mflops.total_cmp(&y.mflops))
            .context("a reduction returns at least its start")?;
        let found = cheapest.arch.clone().unwrap_or_default();
        let found_true = Arch::parse(space, &found)
            .ok()
            .and_then(|x| self.table.lookup(&x));
        Ok(FlopsRun {
            task: task.name(),
            seed,
            two_sided,
            start: self.start.to_string(),
            start_mflops: first.mflops,
            start_true: self.best,
            start_predicted: first.score,
            found,
            found_mflops: cheapest.mflops,
            found_predicted: cheapest.predicted,
            found_true,
            reduction: 1.0 - cheapest.mflops / first.mflops,
            // From the line the tolerance was measured from (none for the start itself).
            predicted_drop: if cheapest.hash == first.hash {
                0.0
            } else {
                s.spec.reference.unwrap_or(first.score) - cheapest.predicted
            },
            true_drop: found_true.map(|v| self.best - v),
            evaluations: s.evaluations,
        })
    }
}

/// One line of the table: the runs of one task and tolerance variant.
fn summarise(
    out: &mut impl Write,
    key: aiop::predictor::data::TaskKey,
    rows: &[&FlopsRun],
    tolerance: f64,
    two_sided: bool,
) -> std::io::Result<()> {
    let red: Vec<f64> = rows.iter().map(|r| 100.0 * r.reduction).collect();
    let pd: Vec<f64> = rows.iter().map(|r| r.predicted_drop).collect();
    let td: Vec<f64> = rows.iter().filter_map(|r| r.true_drop).collect();
    let within = |r: &&&FlopsRun| r.true_drop.is_some_and(|d| d <= tolerance);
    let ok = rows.iter().filter(within).count();
    let both = rows
        .iter()
        .filter(within)
        .filter(|r| r.reduction >= MIN_CUT)
        .count();
    writeln!(
        out,
        "{:<14} {:<16} {:>8.1} ± {:<5.1} {:>8.3} ± {:<5.3} {:>8.3} ± {:<5.3} {:>5}/{}  \
         both {}/{}{}",
        key.space.name(),
        key.task.name(),
        stats::mean(&red),
        stats::std(&red),
        stats::mean(&pd),
        stats::std(&pd),
        stats::mean(&td),
        stats::std(&td),
        ok,
        rows.len(),
        both,
        rows.len(),
        if two_sided { "  (two-sided)" } else { "" }
    )
}

/// The FLOP reduction each run makes from `start` (true value `best`).
fn reduction_spec(
    a: &FlopsExperimentArgs,
    key: aiop::predictor::data::TaskKey,
    start: &Arch,
    best: f64,
    seed: u64,
    two_sided: bool,
) -> SearchSpec {
    SearchSpec {
        space: Some(key.space),
        task: Some(key.task),
        algorithm: Algorithm::Flops,
        budget: a.budget,
        two_sided,
        start: Some(search::Start::Arch(start.to_string())),
        tolerance: a.tolerance,
        reference: a.anchor.then_some(best),
        radius: a.radius,
        seed,
        ..SearchSpec::default()
    }
}

/// `aiop experiment flops`: from the table's best architecture of a task, the FLOP-reducing
/// search scored by the AIO-P predictor fine-tuned on 20 labelled networks of that task; the
/// cheapest network found whose predicted score is within the tolerance of the start's, with its
/// TRUE drop from the table.
pub fn flops_experiment(a: FlopsExperimentArgs) -> anyhow::Result<()> {
    use aiop::predictor::data::{load_task, TaskKey};

    let space = a.space;
    if let Some(p) = &a.json {
        super::check_writable(p, "--json")?;
    }
    // What the arguments alone tell, before any work or output.
    let tasks = task_list(space, &a.task)?;
    if a.samples < aiop::taskfile::MIN_SAMPLES {
        return Err(UsageError(format!(
            "--samples: {} (a task needs at least {} labelled networks)",
            a.samples,
            aiop::taskfile::MIN_SAMPLES
        ))
        .into());
    }
    if !(a.lr > 0.0 && a.lr <= 1.0) {
        return Err(UsageError(format!("--lr: {} is not in (0, 1]", aiop::show::num(a.lr))).into());
    }
    once_each("--two-sided", &a.two_sided)?;
    // The reductions' options (--budget, --tolerance, --radius) as the search checks them, on
    // a network of the space standing in for each task's best.
    let stand_in = aiop::spaces::sample(space, &mut aiop::rng::Rng::new(0));
    let key = aiop::predictor::data::TaskKey::new(space, tasks[0]);
    for &two_sided in &a.two_sided {
        reduction_spec(&a, key, &stand_in, 0.0, 0, two_sided)
            .validate()
            .map_err(|e| UsageError(e.to_string()))?;
    }
    let device = aiop::predictor::default_device();
    let base = crate::cmd::predictor::load_model(a.model.as_deref(), &device)?;
    let companion = a
        .companion
        .as_deref()
        .map(|d| crate::cmd::predictor::load_model(Some(d), &device))
        .transpose()?;
    if a.recipe == Recipe::Paper && companion.is_some() {
        return Err(UsageError("--companion is for --recipe task".into()).into());
    }
    let mut runs = Vec::new();
    // Rows as they come; a reader gone from stdout must not end the runs before `--json`.
    let mut out = super::report_out();
    // Printed with the first task's rows: what that task refuses comes before any output.
    let mut header = Some(format!(
        "{:<14} {:<16} {:>16} {:>16} {:>16} {:>8}",
        "space", "task", "FLOPs cut %", "predicted drop", "true drop", "ok≤tol"
    ));
    for task in tasks {
        let key = TaskKey::new(space, task);
        if std::iter::once(&base)
            .chain(&companion)
            .any(|m| m.meta.stats.contains_key(&key))
        {
            return Err(UsageError(format!(
                "the predictor was pretrained on {key}: use a model that never saw it \
                 (e.g. one saved by `aiop eval --pretrained DIR`)"
            ))
            .into());
        }
        let table = TableFitness::load(space, task)?;
        let set = load_task(
            key,
            &base.model.config.features(),
            None,
            &mut aiop::rng::Rng::new(0),
        )?;
        let best = set
            .examples
            .iter()
            .max_by(|x, y| x.value.total_cmp(&y.value))
            .context("the task has no labels")?;
        let start = best.arch.clone();
        // The networks the labelled ones are drawn from: the whole table, or those near the
        // start (never the start itself).
        let near: Option<HashSet<Arch>> =
            (a.near > 0).then(|| aiop::spaces::within(&start, a.near).into_iter().collect());
        let fitted = Fitted {
            base: &base,
            companion: companion.as_ref(),
            key,
            higher_is_better: set.higher_is_better,
        };
        let reduction = Reduction {
            key,
            start: &start,
            best: best.value,
            table: &table,
        };
        let labelled = set
            .examples
            .iter()
            .filter(|e| e.arch != start)
            .filter(|e| near.as_ref().is_none_or(|n| n.contains(&e.arch)))
            .count();
        if labelled < a.samples {
            return Err(UsageError(format!(
                "--samples {}: {key} labels {labelled} networks besides its best ({start}){}",
                a.samples,
                if a.near > 0 {
                    format!(" within --near {} moves of it", a.near)
                } else {
                    String::new()
                }
            ))
            .into());
        }
        let seeds: Vec<u64> = (0..a.seeds).collect();
        let per_seed = aiop::pool::parallel(
            &seeds,
            a.threads,
            |&seed| -> anyhow::Result<Vec<FlopsRun>> {
                // FT-20 on random labelled networks.
                let mut rng = aiop::rng::Rng::new(seed ^ 0xf10b5);
                let mut pool: Vec<_> = set
                    .examples
                    .iter()
                    .filter(|e| e.arch != start)
                    .filter(|e| near.as_ref().is_none_or(|n| n.contains(&e.arch)))
                    .cloned()
                    .collect();
                rng.shuffle(&mut pool);
                pool.truncate(a.samples);
                let mut fitness = fitted.fit(&a, pool, seed)?;
                a.two_sided
                    .iter()
                    .map(|&two_sided| reduction.reduce(&a, seed, two_sided, fitness.as_mut()))
                    .collect()
            },
        )?;
        let all: Vec<FlopsRun> = per_seed.into_iter().flatten().collect();
        if let Some(h) = header.take() {
            writeln!(out, "{h}")?;
        }
        for &two_sided in &a.two_sided {
            let rows: Vec<&FlopsRun> = all.iter().filter(|r| r.two_sided == two_sided).collect();
            summarise(&mut out, key, &rows, a.tolerance, two_sided)?;
        }
        // What any search could reach: the table's networks with at least 15 % fewer FLOPs
        // than the start and a true drop within the tolerance, in all and within the radius
        // (FLOPs as the loaded examples carry them: the task graph's MACs in billions).
        let region: Option<HashSet<Arch>> = a
            .radius
            .map(|r| aiop::spaces::within(&start, r).into_iter().collect());
        let (mut reachable, mut in_region) = (0usize, 0usize);
        for e in &set.examples {
            if best.value - e.value <= a.tolerance && e.gflops <= (1.0 - MIN_CUT) * best.gflops {
                reachable += 1;
                if region.as_ref().is_some_and(|r| r.contains(&e.arch)) {
                    in_region += 1;
                }
            }
        }
        writeln!(
            out,
            "  the table holds {reachable} of {} networks with >= 15% fewer FLOPs than {start} \
             and a true drop <= {}{}",
            set.examples.len(),
            a.tolerance,
            match a.radius {
                Some(r) => format!(", {in_region} of them within {r} moves"),
                None => String::new(),
            }
        )?;
        runs.extend(all);
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&runs)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct BaseExperimentArgs {
    /// The AIO-P model (default: the embedded one); its companion is DIR/plain.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The pretraining config of the AIO-P model (checked against its data hash); needed with
    /// --model (default: the embedded model's, search_spaces/predictor/pretrain.json).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The pretraining config of the companion; needed with --model (default: the embedded
    /// companion's, search_spaces/predictor/pretrain-plain.json).
    #[arg(long)]
    pub plain_config: Option<PathBuf>,
    /// Networks per task to choose and calibrate on (at least 4).
    #[arg(long, default_value_t = 500,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(4..))]
    pub fit: usize,
    /// Further networks per task to report on (at least 1).
    #[arg(long, default_value_t = 1000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub eval: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the selection here (JSON; the embedded one is search_spaces/predictor/base.json).
    #[arg(long)]
    pub write: Option<PathBuf>,
    /// Write the per-task report here (JSON).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn base_experiment(a: BaseExperimentArgs) -> anyhow::Result<()> {
    use aiop::predictor::base::{self, FitConfig, Member};
    if let Some(p) = &a.json {
        super::check_writable(p, "--json")?;
    }
    if let Some(p) = &a.write {
        super::check_writable(p, "--write")?;
    }
    // A model of one's own comes with the configs it was pretrained with; the embedded pair's
    // are embedded with it.
    let read = crate::cmd::predictor::read_pretrain_config;
    let (ca, cp) = match (&a.model, &a.config, &a.plain_config) {
        (_, Some(c), Some(p)) => (read(c, "--config")?, read(p, "--plain-config")?),
        (None, None, None) => aiop::predictor::shipped::pretrain_configs()?,
        _ => {
            return Err(UsageError(
                "--config and --plain-config go together, and --model needs both (the \
                 pretraining configs of the model and of its companion)"
                    .into(),
            )
            .into())
        }
    };
    let device = aiop::predictor::default_device();
    let base_model = aiop::tuned::BaseModel::from_option(a.model.as_deref());
    let aio = base_model
        .load(&device)
        .with_context(|| format!("loading {}", base_model.describe()))?;
    let (plain, plain_name) = base_model
        .load_plain(&device)?
        .with_context(|| format!("{} has no companion (plain/)", base_model.describe()))?;
    let cfg = FitConfig {
        fit: a.fit,
        eval: a.eval,
        seed: a.seed,
    };
    let (sel, report) = base::fit(&aio, &ca, &plain, &cp, cfg)?;
    // The table is printed after the files are written: a closed pipe on stdout must not lose
    // the run's results.
    use std::fmt::Write as _;
    let mut table = String::new();
    writeln!(
        table,
        "base selection of {} and {plain_name}: fitted on {} networks per task outside both pretrainings, reported on up to {} others",
        base_model.describe(),
        a.fit,
        a.eval
    )?;
    writeln!(
        table,
        "{:<30} {:>5}  {:>6}  {:>22}  {:>28}",
        "task", "n", "member", "spearman aio/plain/base", "mae aio/plain/base"
    )?;
    for r in &report {
        writeln!(
            table,
            "{:<30} {:>5}  {:>6}  {:>6.3} / {:>6.3} / {:>6.3}  {:>8.4} / {:>8.4} / {:>8.4}",
            r.task.to_string(),
            r.n,
            match r.member {
                Member::Aio => "aio",
                Member::Plain => "plain",
            },
            r.spearman_aio,
            r.spearman_plain,
            r.spearman_base,
            r.mae_aio,
            r.mae_plain,
            r.mae_base
        )?;
    }
    let m = |f: fn(&base::BaseEval) -> f64| {
        report.iter().map(f).sum::<f64>() / report.len().max(1) as f64
    };
    writeln!(
        table,
        "mean spearman: aio {:.3}, plain {:.3}, base {:.3}",
        m(|r| r.spearman_aio),
        m(|r| r.spearman_plain),
        m(|r| r.spearman_base)
    )?;
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.write {
        let mut text = serde_json::to_string_pretty(&sel)?;
        text.push('\n');
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("aiop: wrote {}", p.display());
    }
    use std::io::Write as _;
    std::io::stdout().lock().write_all(table.as_bytes())?;
    Ok(())
}
