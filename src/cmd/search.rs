//! `aiop search` and `aiop export`: run a search from the command line with a progress bar, write
//! its results, and turn a chosen result into an architecture string and a JSON graph.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};

use aiop::graph::json;
use aiop::search::{self, Algorithm, Fitness, ResultRow, SearchSpec, SearchState, Start};
use aiop::spaces::{Arch, SpaceId, Task};

use super::{DataError, UsageError};

/// What scores candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FitnessKind {
    /// The benchmark table's true labels (baselines and experiments; every score is a "query").
    Oracle,
    /// The AIO-P predictor checkpoint given by --model (it must know the task's statistics).
    Predictor,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Search space (a --tuned task model gives its own; one fine-tuned on JSON graphs, whose
    /// search reduces a --start-graph, needs none).
    #[arg(long, value_parser = super::space_parser())]
    pub space: Option<SpaceId>,
    /// Task whose network head is built.
    #[arg(long)]
    pub task: Option<String>,
    #[arg(long, default_value = "evolution", value_parser = parse_algorithm)]
    pub algorithm: Algorithm,
    /// What scores candidates.
    #[arg(long, value_enum, default_value = "predictor")]
    pub fitness: FitnessKind,
    /// Predictor checkpoint directory (for --fitness predictor; default: the embedded model).
    #[arg(long, conflicts_with = "tuned")]
    pub model: Option<PathBuf>,
    /// Score with the task model fine-tuned for task NAME (`aiop finetune`, or the daemon),
    /// in that task's units; --space and --task default to the task's space and head.
    #[arg(long, value_name = "NAME", conflicts_with = "fitness")]
    pub tuned: Option<String>,
    /// State directory holding the task models (with --tuned).
    #[arg(long, value_name = "DIR", default_value = "state", requires = "tuned")]
    pub state: PathBuf,
    /// Fitness evaluations allowed.
    #[arg(long, default_value_t = 1000)]
    pub budget: usize,
    #[arg(long, default_value_t = 64)]
    pub population: usize,
    /// Tournament size.
    #[arg(long, default_value_t = 16)]
    pub sample: usize,
    /// Candidates per generation (one fitness call each).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long)]
    pub max_mflops: Option<f64>,
    #[arg(long)]
    pub max_mparams: Option<f64>,
    /// Keep the Pareto front of score vs MFLOPs.
    #[arg(long)]
    pub multi_objective: bool,
    /// FLOP reduction: start architecture.
    #[arg(long, conflicts_with = "start_graph")]
    pub start: Option<String>,
    /// FLOP reduction: start network in the graph format.
    #[arg(long)]
    pub start_graph: Option<PathBuf>,
    /// FLOP reduction: largest score drop allowed (task units) [default: 0.5].
    #[arg(long)]
    pub tolerance: Option<f64>,
    /// FLOP reduction: the start's measured value (task units), when you have it; the
    /// tolerance is then measured from it rather than from the start's predicted score, which a
    /// predictor fitted to few labels pulls towards their mean (BENCHMARKS.md).
    #[arg(long)]
    pub reference: Option<f64>,
    /// FLOP reduction: at most this many moves from the start (unlimited when absent). Keep the
    /// search where the predictor has labels: near the networks it was fine-tuned on.
    #[arg(long)]
    pub radius: Option<usize>,
    /// FLOP reduction: keep the predicted score within the tolerance on both sides of the
    /// reference (a cheaper network predicted far above a good start is the predictor
    /// extrapolating) [default: true].
    #[arg(long, action = clap::ArgAction::Set)]
    pub two_sided: Option<bool>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Results to keep (single objective).
    #[arg(long, default_value_t = 10,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub top: usize,
    /// Write the results here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// The ids of the arguments given on the command line (not defaults), filled in by
    /// `main` from clap's matches: what [`Algorithm::refuse_unread_options`] is asked about.
    #[arg(skip)]
    pub given: Vec<String>,
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    s.parse()
}

/// The file `aiop search --json` writes and `aiop export` reads.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResultsFile {
    pub spec: SearchSpec,
    pub evaluations: usize,
    pub generations: u64,
    /// Why it ended (absent in files of older versions).
    #[serde(default)]
    pub ended_because: Option<search::EndReason>,
    pub results: Vec<ResultRow>,
}

/// The spec `a` asks for, from the start network parsed up front (`start`); `sign` is the
/// fitness's (−1 for a lower-is-better task model: the search maximises, so a reference in task
/// units changes sign too).
fn spec_from(a: &SearchArgs, start: Option<Start>, sign: f64) -> anyhow::Result<SearchSpec> {
    let task: Option<Task> = match (a.space, a.task.as_deref()) {
        (Some(s), Some(t)) => Some(super::task_arg(s, t)?),
        (None, Some(t)) => Some(
            Task::from_name(t).ok_or_else(|| UsageError(format!("--task: unknown task '{t}'")))?,
        ),
        _ => None,
    };
    let d = SearchSpec::default();
    Ok(SearchSpec {
        space: a.space,
        task,
        algorithm: a.algorithm,
        budget: a.budget,
        population: a.population,
        sample: a.sample,
        batch: a.batch,
        max_mflops: a.max_mflops,
        max_mparams: a.max_mparams,
        multi_objective: a.multi_objective,
        seed: a.seed,
        start,
        tolerance: a.tolerance.unwrap_or(d.tolerance),
        reference: a.reference.map(|v| v * sign),
        radius: a.radius,
        two_sided: a.two_sided.unwrap_or(d.two_sided),
        top_k: a.top,
        ..d
    })
}

/// Refuse an option the chosen algorithm does not read (a FLOP reduction's given to evolution,
/// a tournament's to random search...), naming the first as the command line spells it.
fn refuse_unread_options(a: &SearchArgs) -> Result<(), UsageError> {
    // A front (multi-objective, or a FLOP reduction's) returns all its networks: `--top` cuts
    // a ranking only.
    if a.given.iter().any(|g| g == "top") && (a.multi_objective || a.algorithm == Algorithm::Flops)
    {
        return Err(UsageError(
            "--top: only a single-objective evolution or random search keeps a ranking to cut; \
             a front (--multi-objective, --algorithm flops) returns all its networks"
                .into(),
        ));
    }
    match a
        .algorithm
        .refuse_unread_options(|id| a.given.iter().any(|g| g == id))
    {
        Err(search::SearchError::Unread { option, algorithm }) => Err(UsageError(format!(
            "--{}: only {} reads it, not {algorithm}",
            option.replace('_', "-"),
            Algorithm::readers_phrase(option, |r| format!("--algorithm {r}"))
        ))),
        _ => Ok(()),
    }
}

/// The start graph of `--start-graph`, read and checked before any work; errors name the file
/// (a malformed one is bad data: 65).
fn start_graph(a: &SearchArgs) -> anyhow::Result<Option<Start>> {
    let Some(p) = &a.start_graph else {
        return Ok(None);
    };
    let text = super::read_input(p, "--start-graph")?;
    let g = json::from_json(&text).with_context(|| format!("--start-graph {}", p.display()))?;
    search::check_start_graph(&g).with_context(|| format!("--start-graph {}", p.display()))?;
    Ok(Some(Start::Graph(text)))
}

/// The start of `--start` as the canonical string of an architecture of the space (known once
/// a task model has given it), or the graph already read; a malformed architecture is bad
/// data (65), named.
fn start_from(a: &SearchArgs, graph: Option<Start>) -> anyhow::Result<Option<Start>> {
    let Some(s) = &a.start else {
        return Ok(graph);
    };
    let Some(space) = a.space else {
        return Err(
            UsageError("--start is an architecture string: give --space too".into()).into(),
        );
    };
    let arch = Arch::parse(space, s).with_context(|| format!("--start '{s}'"))?;
    Ok(Some(Start::Arch(arch.to_string())))
}

/// A task model (fine-tuned by `aiop finetune` or the daemon) as a search fitness: its
/// predictions in the task's units, as `aiop predict --tuned` gives them, times `sign` (−1 for a
/// lower-is-better task: searches maximise).
pub(crate) struct TunedFitness {
    model: aiop::tuned::TaskModel,
    features: aiop::predictor::features::FeatureConfig,
    sign: f64,
}

impl Fitness for TunedFitness {
    fn score(
        &mut self,
        batch: &[aiop::search::fitness::Candidate<'_>],
    ) -> Result<Vec<f64>, aiop::search::SearchError> {
        let feats = aiop::search::fitness::featurise(batch, &self.features);
        let inputs: Vec<_> = feats.iter().map(|(f, g)| (f, *g)).collect();
        let p = self
            .model
            .predict(&inputs, 256)
            .map_err(|e| aiop::search::SearchError::Fitness(e.to_string()))?;
        Ok(p.into_iter().map(|v| v * self.sign).collect())
    }
}

impl TunedFitness {
    pub(crate) fn new(model: aiop::tuned::TaskModel) -> TunedFitness {
        let features = model.trained.model.config.features();
        let sign = if model.meta.higher_is_better {
            1.0
        } else {
            -1.0
        };
        TunedFitness {
            model,
            features,
            sign,
        }
    }
}

/// Load the task model `name` and fill the space and head it was fine-tuned for into `a`
/// (an explicit --space/--task must agree with a built-in space's task model; one fine-tuned
/// on JSON graphs takes neither).
fn tuned_fitness(a: &mut SearchArgs, name: &str) -> anyhow::Result<TunedFitness> {
    use aiop::taskfile::TaskSpace;
    let dir = aiop::tuned::latest(&a.state.join(aiop::serve::MODELS_DIR), name)?;
    let model = aiop::tuned::TaskModel::load(&dir, &aiop::predictor::default_device())?;
    if let TaskSpace::Builtin { space, head } = model.meta.space {
        let given_space = a.space;
        let given_task = a
            .task
            .as_deref()
            .map(|t| super::task_arg(given_space.unwrap_or(space), t))
            .transpose()?;
        if given_space.is_some_and(|s| s != space) || given_task.is_some_and(|t| t != head) {
            return Err(UsageError(format!(
                "task model '{name}' was fine-tuned for --space {} --task {}; leave them out \
                 or give those",
                space.name(),
                head.name()
            ))
            .into());
        }
        a.space = Some(space);
        a.task = Some(head.name().to_string());
    } else if a.space.is_some() || a.task.is_some() {
        return Err(UsageError(format!(
            "task model '{name}' was fine-tuned on JSON graphs (space graph), not on a space's \
             architectures: leave --space and --task out and give --start-graph"
        ))
        .into());
    }
    Ok(TunedFitness::new(model))
}

pub fn search(mut a: SearchArgs) -> anyhow::Result<()> {
    // Everything the arguments alone can tell is checked before any work.
    refuse_unread_options(&a)?;
    if let Some(p) = &a.json {
        super::check_writable(p, "--json")?;
    }
    let graph = start_graph(&a)?;
    let tuned = match a.tuned.clone() {
        Some(name) => Some(tuned_fitness(&mut a, &name)?),
        None => None,
    };
    let start = start_from(&a, graph)?;
    // Scores back to the task's units (the search maximises sign × prediction).
    let sign = tuned.as_ref().map_or(1.0, |t| t.sign);
    let spec = spec_from(&a, start, sign)?;
    let mut state = SearchState::new(spec.clone())?;
    let (space, task) = (spec.space, spec.task);
    // A task model's labels are the user's own: a benchmark table's label of the same network
    // measures another task and is no truth for it (the daemon's records leave it out too).
    let benchmark = tuned.is_none();
    let mut fitness: Box<dyn Fitness> = match (tuned, a.fitness) {
        (Some(t), _) => Box::new(t),
        (None, FitnessKind::Oracle) => {
            let (Some(space), Some(task)) = (space, task) else {
                return Err(
                    UsageError("the oracle fitness needs --space and --task".into()).into(),
                );
            };
            if matches!(spec.start, Some(Start::Graph(_))) {
                return Err(UsageError(
                    "the oracle fitness scores a space's architectures from its table; a \
                     --start-graph has no label there: use --fitness predictor or --tuned"
                        .into(),
                )
                .into());
            }
            Box::new(search::TableFitness::load_complete(space, task)?)
        }
        (None, FitnessKind::Predictor) => {
            let (Some(space), Some(task)) = (space, task) else {
                return Err(
                    UsageError("the predictor fitness needs --space and --task".into()).into(),
                );
            };
            let model = crate::cmd::predictor::load_base(
                a.model.as_deref(),
                &aiop::predictor::default_device(),
            )?;
            Box::new(search::PredictorFitness::from_base(model, space, task)?)
        }
    };
    let bar = progress_bar(a.quiet, spec.budget as u64);
    let started = std::time::Instant::now();
    let cancel = AtomicBool::new(false);
    search::run(&mut state, fitness.as_mut(), &cancel, |s| {
        bar.set_position(s.evaluations as u64);
        let rate = s.proposed as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let best = s.best().map_or(f64::NAN, |b| b.score * sign);
        bar.set_message(format!(
            "gen {} best {best:.4} {rate:.0} cand/s",
            s.generation
        ));
        Ok(())
    })?;
    bar.finish_and_clear();
    let mut results = state.results();
    for r in &mut results {
        r.predicted *= sign;
    }
    if benchmark {
        fill_oracle(&mut results, space, task);
    }
    let file = ResultsFile {
        // The search as asked: its reference in the task's units, as given (the search
        // itself maximised sign × score).
        spec: SearchSpec {
            reference: spec.reference.map(|v| v * sign),
            ..spec
        },
        evaluations: state.evaluations,
        generations: state.generation,
        ended_because: state.end_reason(),
        results,
    };
    if let Some(e) = file
        .ended_because
        .filter(|e| *e != search::EndReason::Budget)
    {
        // Stopping short of the budget is worth a line on stderr; a full run is the norm.
        eprintln!(
            "aiop search: ended after {} of {} evaluations: {}",
            file.evaluations,
            file.spec.budget,
            e.describe()
        );
    }
    // The file first: a reader of stdout that quits early (`| head`) ends the printing, and
    // with it this command, quietly (a closed pipe is no failure) — the results file must
    // already be written by then.
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&file)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    let mut out = std::io::stdout().lock();
    for r in &file.results {
        let name = r.arch.clone().unwrap_or_else(|| "<graph>".into());
        let oracle = r.oracle.map_or("-".to_string(), |o| format!("{o:.4}"));
        writeln!(
            out,
            "{:>10.4} {:>10.3} MFLOPs {:>8.4} M params  oracle {oracle:>8}  {name}",
            r.predicted, r.mflops, r.mparams
        )?;
    }
    // A FLOP reduction whose start breaks the constraints and that found nothing cheaper
    // within them has printed the start alone: constraints no network met are the same
    // usage error (2) as evolution's, said after the results.
    if !state.found_within_constraints() {
        return Err(search::SearchError::Infeasible {
            tries: state.evaluations,
            constraints: file.spec.constraints(),
        }
        .into());
    }
    Ok(())
}

/// Fill the oracle column from the benchmark table where it has the architecture.
fn fill_oracle(results: &mut [ResultRow], space: Option<SpaceId>, task: Option<Task>) {
    let (Some(space), Some(task)) = (space, task) else {
        return;
    };
    if let Ok(table) = search::TableFitness::load(space, task) {
        table.fill_oracle(space, results);
    }
}

pub(crate) fn progress_bar(quiet: bool, len: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} eta {eta} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A results file written by `aiop search --json`, or a daemon's ended search as
    /// `aiop searches ID --json` (or `GET /v1/searches/{id}`) prints it.
    pub results: PathBuf,
    /// Which result (0 = the first: the best, or the cheapest on a front).
    #[arg(long, default_value_t = 0)]
    pub rank: usize,
    /// Write the network in the graph format here (default: stdout after the arch line).
    #[arg(long)]
    pub graph: Option<PathBuf>,
    /// Export from a daemon search that has not ended, from its ranking so far
    /// (`results_so_far`, as of its last checkpoint); without it such a search is refused.
    #[arg(long)]
    pub so_far: bool,
}

/// A search as the daemon's API shows it (`GET /v1/searches/{id}`): only what export needs.
#[derive(Deserialize)]
struct DaemonSearch {
    id: String,
    status: String,
    spec: DaemonSearchSpec,
    /// Present once the search has ended.
    results: Option<Vec<ResultRow>>,
    /// Present while it is queued or running, once it has a ranking.
    results_so_far: Option<Vec<ResultRow>>,
}

#[derive(Deserialize)]
struct DaemonSearchSpec {
    search: SearchSpec,
}

/// The spec and ranked results of either a results file (`aiop search --json`) or a daemon's
/// search record, told apart by the record's `id`; a search that has not ended gives its
/// ranking so far only when `so_far` asks for it.
fn read_results(text: &str, so_far: bool) -> anyhow::Result<(SearchSpec, Vec<ResultRow>)> {
    let not_results = |e: serde_json::Error| {
        DataError(format!(
            "not a results file (`aiop search --json`) nor a daemon search record: {e}"
        ))
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(not_results)?;
    if value.get("id").is_none() {
        let file: ResultsFile = serde_json::from_value(value).map_err(not_results)?;
        return Ok((file.spec, file.results));
    }
    let rec: DaemonSearch = serde_json::from_value(value)
        .map_err(|e| DataError(format!("a daemon search record, but not a valid one: {e}")))?;
    // Statuses of a search that has ended (the store's `SearchStatus`, as the API spells them).
    let ended = matches!(rec.status.as_str(), "done" | "failed" | "cancelled");
    match (rec.results, rec.results_so_far) {
        (Some(results), _) => Ok((rec.spec.search, results)),
        (None, Some(results)) if so_far => Ok((rec.spec.search, results)),
        (None, Some(_)) => anyhow::bail!(
            "search {} is {}: its results come once it has ended \
             (`--so-far` exports from its ranking so far)",
            rec.id,
            rec.status
        ),
        (None, None) if ended => anyhow::bail!(
            "search {} has ended ({}) without results: it ranked no network",
            rec.id,
            rec.status
        ),
        (None, None) => anyhow::bail!(
            "search {} is {} and has no ranking yet: its results come once it has ended",
            rec.id,
            rec.status
        ),
    }
}

pub fn export(a: ExportArgs) -> anyhow::Result<()> {
    if let Some(p) = &a.graph {
        super::check_writable(p, "--graph")?;
    }
    let text = super::read_input(&a.results, "RESULTS")?;
    let (spec, results) =
        read_results(&text, a.so_far).with_context(|| a.results.display().to_string())?;
    if results.is_empty() {
        anyhow::bail!(
            "{}: the search found no network (no results to export)",
            a.results.display()
        );
    }
    let r = results.get(a.rank).ok_or_else(|| {
        UsageError(format!(
            "--rank {}: {} holds {} result(s), ranks 0 to {} (0 is the first)",
            a.rank,
            a.results.display(),
            results.len(),
            results.len() - 1
        ))
    })?;
    // What the result holds is bad data (65) when it does not make a network, named by file,
    // result and field.
    let at = |field: &str| format!("{}: result {} field '{field}'", a.results.display(), a.rank);
    let graph = match (&r.arch, &r.graph, spec.space, spec.task) {
        (Some(s), _, Some(space), Some(task)) => Arc::new(
            Arch::parse(space, s)
                .and_then(|arch| arch.build(task))
                .with_context(|| at("arch"))?,
        ),
        (_, Some(g), _, _) => {
            Arc::new(json::from_json(&g.to_string()).with_context(|| at("graph"))?)
        }
        (Some(_), None, _, _) => {
            return Err(DataError(format!(
                "{}: an architecture, but the spec names no space and task to build it in",
                at("arch")
            ))
            .into())
        }
        (None, None, _, _) => {
            return Err(DataError(format!(
                "{}: result {} has neither an architecture (arch) nor a graph",
                a.results.display(),
                a.rank
            ))
            .into())
        }
    };
    if graph.hash() != r.hash {
        // Kept as a warning: the network is what the result names; its recorded hash may be
        // another aiop's, or edited.
        eprintln!(
            "aiop: warning: {}: the result's hash {} is not its network's ({})",
            at("hash"),
            r.hash,
            graph.hash()
        );
    }
    let text = json::to_json(&graph);
    // The file before stdout, for the reason `search` gives.
    if let Some(p) = &a.graph {
        std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if let Some(s) = &r.arch {
        writeln!(out, "{s}")?;
    }
    if a.graph.is_none() {
        out.write_all(text.as_bytes())?;
    }
    Ok(())
}
