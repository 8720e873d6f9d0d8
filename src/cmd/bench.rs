//! `aiop bench graph`: computational-graph building speed, single-threaded, as BENCHMARKS.md
//! reports it. Medians over repeated rounds; nothing here asserts a speed (targets live in
//! BENCHMARKS.md, not in tests). `aiop bench api`: a load generator for a running daemon
//! (concurrent clients, one `POST /v1/predict` per connection, latency percentiles).

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
    #[arg(long, requires = "task", value_parser = super::space_parser())]
    pub space: Option<SpaceId>,
    /// Task whose head is built (with --space).
    #[arg(long, requires = "space")]
    pub task: Option<String>,
    /// Graphs per round.
    #[arg(long, default_value_t = 20_000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub graphs: usize,
    /// Rounds; the median is reported.
    #[arg(long, default_value_t = 5,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
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

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

pub fn graph(a: BenchGraphArgs) -> anyhow::Result<()> {
    let cases: Vec<(SpaceId, spaces::Task)> = match (&a.space, &a.task) {
        (Some(s), Some(t)) => vec![(*s, super::task_arg(*s, t)?)],
        _ => vec![
            (SpaceId::Nb201, spaces::Task::Cifar10),
            (SpaceId::Tnb101Macro, spaces::Task::SegmentSemantic),
        ],
    };
    let mut out = std::io::stdout().lock();
    for (space, task) in cases {
        let mut rng = Rng::new(a.seed);
        let archs: Vec<_> = (0..a.graphs)
            .map(|_| spaces::sample(space, &mut rng))
            .collect();
        let mut nodes = 0usize;
        let mut build = Vec::new();
        let mut full = Vec::new();
        let mut sink = 0u64;
        for _ in 0..a.rounds {
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
            mean_nodes: nodes as f64 / (archs.len() * a.rounds) as f64,
            build_per_s: median(build),
            build_hash_flops_per_s: median(full),
        };
        writeln!(out, "{}", serde_json::to_string(&row)?)?;
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct BenchApiArgs {
    #[command(flatten)]
    pub daemon: super::serve::DaemonArgs,
    /// Concurrent clients (threads, one request per connection each at a time).
    #[arg(long, default_value_t = 16,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub clients: usize,
    /// Requests in total.
    #[arg(long, default_value_t = 10_000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub requests: usize,
    /// Architectures per request.
    #[arg(long, default_value_t = 1,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub archs: usize,
    /// Space of the architectures (random ones, drawn with --seed).
    #[arg(long, default_value = "tnb101_macro", value_parser = super::space_parser())]
    pub space: SpaceId,
    /// Benchmark task predicted with the base model (unless --tuned).
    #[arg(long, default_value = "segmentsemantic")]
    pub task: String,
    /// Predict with this task's model instead (its space must be --space).
    #[arg(long)]
    pub tuned: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Serialize)]
struct ApiBench {
    clients: usize,
    requests: usize,
    archs_per_request: usize,
    errors: usize,
    first_error: Option<String>,
    seconds: f64,
    requests_per_s: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[k.min(sorted.len() - 1)]
}

pub fn api(a: BenchApiArgs) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let addr = a.daemon.resolve()?;
    let space = a.space;
    let task = super::task_arg(space, &a.task)?;
    let mut rng = Rng::new(a.seed);
    let token = std::env::var("AIOP_TOKEN").ok().filter(|t| !t.is_empty());
    let bodies: Vec<Vec<u8>> = (0..a.requests)
        .map(|_| {
            let archs: Vec<String> = (0..a.archs)
                .map(|_| spaces::sample(space, &mut rng).to_string())
                .collect();
            let v = match &a.tuned {
                Some(t) => serde_json::json!({"tuned": t, "archs": archs}),
                None => {
                    serde_json::json!({"space": space.name(), "task": task.name(), "archs": archs})
                }
            };
            v.to_string().into_bytes()
        })
        .collect();
    let next = AtomicUsize::new(0);
    let lat: Mutex<Vec<f64>> = Mutex::new(Vec::with_capacity(a.requests));
    let errors = AtomicUsize::new(0);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let auth = token.map(|t| format!("Bearer {t}"));
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..a.clients {
            s.spawn(|| {
                let mut mine = Vec::new();
                let mut headers = vec![("Content-Type", "application/json")];
                if let Some(h) = &auth {
                    headers.push(("Authorization", h.as_str()));
                }
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= bodies.len() {
                        break;
                    }
                    let t = Instant::now();
                    let r = aiop::client::request(
                        &addr,
                        "POST",
                        "/v1/predict",
                        &headers,
                        Some(&bodies[i]),
                        std::time::Duration::from_secs(30),
                    );
                    let ok = match r {
                        Ok(r) if r.status == 200 => true,
                        Ok(r) => {
                            first_error.lock().unwrap().get_or_insert(format!(
                                "HTTP {}: {}",
                                r.status,
                                r.text()
                            ));
                            false
                        }
                        Err(e) => {
                            first_error.lock().unwrap().get_or_insert(e.to_string());
                            false
                        }
                    };
                    if ok {
                        mine.push(t.elapsed().as_secs_f64() * 1e3);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                lat.lock().unwrap().extend(mine);
            });
        }
    });
    let seconds = t0.elapsed().as_secs_f64();
    let mut l = lat.into_inner().unwrap();
    l.sort_by(|x, y| x.total_cmp(y));
    let r = ApiBench {
        clients: a.clients,
        requests: a.requests,
        archs_per_request: a.archs,
        errors: errors.into_inner(),
        first_error: first_error.into_inner().unwrap(),
        seconds,
        requests_per_s: a.requests as f64 / seconds,
        p50_ms: percentile(&l, 50.0),
        p90_ms: percentile(&l, 90.0),
        p99_ms: percentile(&l, 99.0),
        max_ms: l.last().copied().unwrap_or(f64::NAN),
    };
    writeln!(std::io::stdout().lock(), "{}", serde_json::to_string(&r)?)?;
    if r.errors > 0 {
        anyhow::bail!("{} of {} requests failed", r.errors, a.requests);
    }
    Ok(())
}
