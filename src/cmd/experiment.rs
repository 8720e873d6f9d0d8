//! `aiop experiment search`: sample efficiency of searches measured against the benchmark
//! tables, over many seeds, as BENCHMARKS.md reports it. Every number is a TRUE label from the
//! table of the architecture the method returns after at most k true queries.
//!
//! Methods: `random` (the best of k random architectures) and `evolution` (regularized evolution
//! whose fitness is the true label, k queries). Both return the best architecture they queried.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use aiop::search::{self, Algorithm, SearchSpec, SearchState, TableFitness};
use aiop::spaces::{labels, SpaceId, Task};
use aiop::stats;

#[derive(Debug, Args)]
pub struct ExperimentArgs {
    #[arg(long)]
    pub space: String,
    /// Tasks, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub task: Vec<String>,
    /// True-query budgets, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "50,100,150")]
    pub queries: Vec<usize>,
    #[arg(long, default_value_t = 10)]
    pub seeds: u64,
    /// Methods, comma-separated: random, evolution.
    #[arg(long, value_delimiter = ',', default_value = "random,evolution")]
    pub methods: Vec<String>,
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
        m => anyhow::bail!("unknown method '{m}' (expected random or evolution)"),
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

pub fn experiment(a: ExperimentArgs) -> anyhow::Result<()> {
    let space = SpaceId::from_name(&a.space)?;
    let mut runs = Vec::new();
    let mut summaries = Vec::new();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<14} {:<16} {:<10} {:>4}  {:>18}  {:>9}  {:>8}",
        "space", "task", "method", "k", "best true (mean±sd)", "optimum", "gap"
    )?;
    for t in &a.task {
        let task = space.task(t)?;
        let table = TableFitness::load(space, task)?;
        let optimum = labels::load(space, task)?
            .rows
            .iter()
            .map(|r| r.value)
            .fold(f64::NEG_INFINITY, f64::max);
        for method in &a.methods {
            for &k in &a.queries {
                let mut bests = Vec::new();
                for seed in 0..a.seeds {
                    let (arch, v) = true_search(space, task, method, k, seed, &table)?;
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
