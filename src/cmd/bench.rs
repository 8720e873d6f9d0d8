//! `aiop bench graph`: computational-graph building speed, single-threaded, as BENCHMARKS.md
//! reports it. Medians over repeated rounds; nothing here asserts a speed (targets live in
//! BENCHMARKS.md, not in tests).

use std::io::Write;
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use aiop::graph::Convention;
use aiop::rng::Rng;
use aiop::spaces::{self, SpaceId};

#[derive(Debug, Args)]
pub struct BenchGraphArgs {
    /// Space to build (default: each of nb201/cifar10 and tnb101_macro/segmentsemantic).
    #[arg(long, requires = "task")]
    pub space: Option<String>,
    #[arg(long)]
    pub task: Option<String>,
    /// Graphs per round.
    #[arg(long, default_value_t = 20_000)]
    pub graphs: usize,
    /// Rounds; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Serialize)]
struct BenchRow {
    space: &'static str,
    task: &'static str,
    graphs: usize,
    mean_nodes: f64,
    build_per_s: f64,
    build_hash_flops_per_s: f64,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

pub fn graph(a: BenchGraphArgs) -> anyhow::Result<()> {
    let cases: Vec<(SpaceId, spaces::Task)> = match (&a.space, &a.task) {
        (Some(s), Some(t)) => {
            let s = SpaceId::from_name(s)?;
            vec![(s, s.task(t)?)]
        }
        _ => vec![
            (SpaceId::Nb201, spaces::Task::Cifar10),
            (SpaceId::Tnb101Macro, spaces::Task::SegmentSemantic),
        ],
    };
    let mut out = std::io::stdout().lock();
    for (space, task) in cases {
        let mut rng = Rng::new(a.seed);
        let archs: Vec<_> = (0..a.graphs.max(1))
            .map(|_| spaces::sample(space, &mut rng))
            .collect();
        let mut nodes = 0usize;
        let mut build = Vec::new();
        let mut full = Vec::new();
        let mut sink = 0u64;
        for _ in 0..a.rounds.max(1) {
            let t = Instant::now();
            for arch in &archs {
                let g = arch.build(task)?;
                nodes += g.len();
            }
            build.push(archs.len() as f64 / t.elapsed().as_secs_f64());
            let t = Instant::now();
            for arch in &archs {
                let g = arch.build(task)?;
                sink ^= g.hash().0 as u64 ^ g.flops(Convention::Macs) ^ g.params();
            }
            full.push(archs.len() as f64 / t.elapsed().as_secs_f64());
        }
        std::hint::black_box(sink);
        let row = BenchRow {
            space: space.name(),
            task: task.name(),
            graphs: archs.len(),
            mean_nodes: nodes as f64 / (archs.len() * a.rounds.max(1)) as f64,
            build_per_s: median(build),
            build_hash_flops_per_s: median(full),
        };
        writeln!(out, "{}", serde_json::to_string(&row)?)?;
    }
    Ok(())
}
