//! `aiop bench predictor`: predictor throughput as BENCHMARKS.md reports it — inference graphs/s
//! at batch 1, 256 and 4096 (packing included, no gradients: [`Regressor::infer`]) and training
//! graphs/s at batch 32 (forward, backward, clipping, Adam: the steps of `train`), medians over rounds, on 4096 seeded
//! NB-201 CIFAR-10 graphs; also per CPU-second of the process (Linux), a figure that other
//! processes sharing the cores disturb far less than the wall clock. `--dump DIR` also writes what the PyTorch twin of
//! `tests/bench/torch_twin.py` needs to run the same model on the same graphs and check it
//! agrees: the weights, the graphs' features as JSON, aiop's predictions and one training step's
//! loss and gradients.
//!
//! Nothing here asserts a speed (targets live in BENCHMARKS.md, not in tests). Invariants: the
//! graphs, the training batches and targets depend only on fixed seeds, so a dump and a timing
//! run describe the same work; the model trained in the timing is a copy, the dumped model is
//! never changed.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use aiop::predictor::batch::Batch;
use aiop::predictor::checkpoint::Trained;
use aiop::predictor::data::prepare;
use aiop::predictor::features::GraphFeatures;
use aiop::predictor::init::sorted_vars;
use aiop::predictor::model::{Config, Regressor};
use aiop::predictor::train::{batch_gradients, clip_scale, grad_norm, Adam, TrainConfig};
use aiop::predictor::{default_device, Device};
use aiop::rng::Rng;
use aiop::spaces::{self, Arch, SpaceId};

#[derive(Debug, Args)]
pub struct BenchPredictorArgs {
    /// A checkpoint to time (default: a freshly initialised default model, seed 0).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Training steps to time per round.
    #[arg(long, default_value_t = 30,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub train_steps: usize,
    /// Rounds; medians are reported.
    #[arg(long, default_value_t = 3,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub rounds: usize,
    /// Also time inference through candle's autograd graph (`Regressor::predict`).
    #[arg(long)]
    pub candle: bool,
    /// Time only training (for profiling).
    #[arg(long, conflicts_with = "candle")]
    pub training_only: bool,
    /// Write the model, the graphs (JSON), aiop's predictions and one training step's gradients
    /// into this directory for the PyTorch twin, then time as usual.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Graphs in the benchmark set.
const GRAPHS: usize = 4096;
/// Batch sizes and graphs per round of the inference timings.
const INFERENCE: [(usize, usize); 3] = [(1, 1000), (256, 4096), (4096, 8192)];

#[derive(Serialize)]
struct BenchResult {
    device: String,
    threads: usize,
    rounds: usize,
    featurise_graphs_per_s: f64,
    mean_nodes: f64,
    /// (batch, median graphs/s, every round's graphs/s).
    inference: Vec<(usize, f64, Vec<f64>)>,
    /// (batch, median graphs per CPU-second of the process, every round's), where
    /// `/proc/self/stat` is readable: robust to other processes sharing the cores.
    inference_cpu: Vec<(usize, f64, Vec<f64>)>,
    candle_inference: Vec<(usize, f64, Vec<f64>)>,
    train_batch: usize,
    train_graphs_per_s: f64,
    train_rounds: Vec<f64>,
    train_graphs_per_cpu_s: Option<f64>,
}

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`, in 1/100 s ticks;
/// `None` elsewhere).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Wall-clock and CPU-time rates of `n` units done since `(wall, cpu)`.
fn rates(n: usize, start: (Instant, Option<f64>)) -> (f64, Option<f64>) {
    let wall = n as f64 / start.0.elapsed().as_secs_f64();
    let cpu = match (start.1, cpu_seconds()) {
        (Some(a), Some(b)) if b > a => Some(n as f64 / (b - a)),
        _ => None,
    };
    (wall, cpu)
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Graphs/s (wall clock, and per CPU-second) of `run` over `graphs` in chunks of `batch`, at
/// least `min_graphs` graphs, after one warm-up chunk.
fn time_batches(
    graphs: &[&GraphFeatures],
    batch: usize,
    min_graphs: usize,
    run: &dyn Fn(&[&GraphFeatures]) -> anyhow::Result<()>,
) -> anyhow::Result<(f64, Option<f64>)> {
    run(&graphs[..batch.min(graphs.len())])?;
    let start = (Instant::now(), cpu_seconds());
    let mut done = 0usize;
    while done < min_graphs {
        for chunk in graphs.chunks(batch) {
            run(chunk)?;
            done += chunk.len();
            if done >= min_graphs {
                break;
            }
        }
    }
    Ok(rates(done, start))
}

/// Target of training sample `i` (fixed, so that the twin trains on the same batches).
fn target(i: usize) -> f32 {
    ((i % 7) as f32 - 3.0) / 3.0
}

/// Graphs of training step `i` (32 consecutive graphs, wrapping).
fn train_window(i: usize, batch: usize) -> std::ops::Range<usize> {
    let lo = (i * batch) % (GRAPHS - batch);
    lo..lo + batch
}

/// A copy of `t`'s weights in a fresh model (training changes it, not `t`; adapters, if `t` has
/// any, are not copied: the benchmark trains the base predictor).
fn copy_of(t: &Trained, device: &Device) -> anyhow::Result<Trained> {
    let c = Trained::init(&t.model.config, t.meta.seed, device)?;
    let src: HashMap<String, _> = sorted_vars(&t.map).into_iter().collect();
    for (name, v) in sorted_vars(&c.map) {
        let w = src
            .get(&name)
            .with_context(|| format!("no variable {name} in the model"))?;
        v.set(&w.as_tensor().copy()?)?;
    }
    Ok(c)
}

pub fn bench(a: BenchPredictorArgs) -> anyhow::Result<()> {
    let device = default_device();
    let t = match &a.model {
        Some(dir) => Trained::load(dir, &device)?,
        None => Trained::init(&Config::default(), 0, &device)?,
    };
    let fc = t.model.config.features();
    let task = spaces::Task::Cifar10;
    let mut rng = Rng::new(0);
    let archs: Vec<Arch> = (0..GRAPHS)
        .map(|_| spaces::sample(SpaceId::Nb201, &mut rng))
        .collect();
    let start = Instant::now();
    let feats: Vec<GraphFeatures> = archs
        .iter()
        .map(|arch| prepare(arch, task, &fc).map(|x| x.0))
        .collect::<Result<_, _>>()?;
    let featurise = feats.len() as f64 / start.elapsed().as_secs_f64();
    let refs: Vec<&GraphFeatures> = feats.iter().collect();
    let mean_nodes = feats.iter().map(|f| f.num_nodes()).sum::<usize>() as f64 / feats.len() as f64;
    let tc = TrainConfig::default();
    if let Some(dir) = &a.dump {
        dump(dir, &t, &archs, &refs, &tc, &device)?;
    }

    let rounds = a.rounds.max(1);
    let infer = |chunk: &[&GraphFeatures]| -> anyhow::Result<()> {
        let y = t.model.infer(chunk, &device)?;
        anyhow::ensure!(y.len() == chunk.len());
        Ok(())
    };
    let through_candle = |chunk: &[&GraphFeatures]| -> anyhow::Result<()> {
        let b = Batch::pack(chunk, &device)?;
        let y = t.model.predict(&b)?.to_vec1::<f32>()?;
        anyhow::ensure!(y.len() == chunk.len());
        Ok(())
    };
    let mut per = vec![Vec::new(); INFERENCE.len()];
    let mut per_cpu = vec![Vec::new(); INFERENCE.len()];
    let mut per_candle = vec![Vec::new(); INFERENCE.len()];
    let mut train_rounds = Vec::new();
    let mut train_cpu = Vec::new();

    let tt = copy_of(&t, &device)?;
    let vars = sorted_vars(&tt.map);
    let mut opt = Adam::new(vars.iter().map(|(_, v)| v.clone()).collect(), tc.lr)?;
    let mut step = |i: usize| -> anyhow::Result<()> {
        let w = train_window(i, tc.batch_size);
        let y: Vec<f32> = w.clone().map(target).collect();
        let (_, mut grads) = batch_gradients(&tt.model, &refs[w], &y, &vars, &device)?;
        let scale = clip_scale(grad_norm(&grads, &vars)?, tc.clip_norm);
        opt.step(&mut grads, scale)?;
        Ok(())
    };
    let mut next_step = 0usize;
    for _ in 0..rounds {
        for (k, &(batch, min_graphs)) in INFERENCE.iter().enumerate() {
            if a.training_only {
                break;
            }
            let (wall, cpu) = time_batches(&refs, batch, min_graphs, &infer)?;
            per[k].push(wall);
            per_cpu[k].extend(cpu);
            if a.candle {
                per_candle[k].push(time_batches(&refs, batch, min_graphs, &through_candle)?.0);
            }
        }
        // The whole timed loop runs on a rayon worker (as `train` does): the fused ops'
        // parallel loops then start without waking a pool from outside.
        let (wall, cpu) = rayon::scope(|_| -> anyhow::Result<_> {
            step(next_step)?; // warm-up
            next_step += 1;
            let start = (Instant::now(), cpu_seconds());
            for _ in 0..a.train_steps.max(1) {
                step(next_step)?;
                next_step += 1;
            }
            Ok(rates(a.train_steps.max(1) * tc.batch_size, start))
        })?;
        train_rounds.push(wall);
        train_cpu.extend(cpu);
    }
    let summary = |per: Vec<Vec<f64>>| -> Vec<(usize, f64, Vec<f64>)> {
        INFERENCE
            .iter()
            .zip(per)
            .filter(|(_, xs)| !xs.is_empty())
            .map(|(&(b, _), xs)| (b, median(&xs), xs))
            .collect()
    };
    let r = BenchResult {
        device: format!("{device:?}"),
        threads: rayon::current_num_threads(),
        rounds,
        featurise_graphs_per_s: featurise,
        mean_nodes,
        inference: summary(per),
        inference_cpu: summary(per_cpu),
        candle_inference: summary(per_candle),
        train_batch: tc.batch_size,
        train_graphs_per_s: median(&train_rounds),
        train_rounds,
        train_graphs_per_cpu_s: (!train_cpu.is_empty()).then(|| median(&train_cpu)),
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&r)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "predictor bench on {} ({} threads; NB-201 CIFAR-10 graphs, {:.0} nodes on average; \
         medians of {} rounds)",
        r.device, r.threads, r.mean_nodes, r.rounds
    )?;
    writeln!(
        out,
        "  build graph + features       {:>10.0} graphs/s",
        r.featurise_graphs_per_s
    )?;
    for (b, gps, _) in &r.inference {
        let cpu = r.inference_cpu.iter().find(|x| x.0 == *b);
        let cpu = cpu.map_or(String::new(), |c| format!("  ({:.0} per CPU-second)", c.1));
        writeln!(
            out,
            "  inference, batch {b:<5}       {gps:>10.0} graphs/s{cpu}"
        )?;
    }
    for (b, gps, _) in &r.candle_inference {
        writeln!(out, "  candle graph, batch {b:<5}    {gps:>10.0} graphs/s")?;
    }
    let cpu = r
        .train_graphs_per_cpu_s
        .map_or(String::new(), |c| format!("  ({c:.0} per CPU-second)"));
    writeln!(
        out,
        "  training, batch {:<5}        {:>10.0} graphs/s{cpu}",
        r.train_batch, r.train_graphs_per_s
    )?;
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string(v)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// Everything the PyTorch twin needs, into `dir`.
fn dump(
    dir: &Path,
    t: &Trained,
    archs: &[Arch],
    graphs: &[&GraphFeatures],
    tc: &TrainConfig,
    device: &Device,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    t.save(dir)?;
    let gs: Vec<serde_json::Value> = archs
        .iter()
        .zip(graphs)
        .map(|(a, g)| {
            serde_json::json!({
                "arch": a.to_string(),
                "op": g.op,
                "res": g.res,
                "weighted": g.weighted,
                "kernel": g.kernel,
                "bias": g.bias,
                "src": g.src,
                "dst": g.dst,
            })
        })
        .collect();
    write_json(
        &dir.join("graphs.json"),
        &serde_json::json!({
            "space": "nb201",
            "task": "cifar10",
            "graphs": gs,
        }),
    )?;
    // Predictions through both aiop paths.
    let fast = t.model.infer(graphs, device)?;
    let mut generic = Vec::with_capacity(graphs.len());
    for chunk in graphs.chunks(256) {
        let b = Batch::pack(chunk, device)?;
        generic.extend(t.model.predict(&b)?.to_vec1::<f32>()?);
    }
    // One training step on the first batch: loss, gradient norm and gradients.
    let w = train_window(0, tc.batch_size);
    let b = Batch::pack(&graphs[w.clone()], device)?;
    let targets: Vec<f32> = (0..GRAPHS).map(target).collect();
    let y = candle_core::Tensor::from_slice(&targets[w], tc.batch_size, device)?;
    let loss = (t.model.predict(&b)? - y)?.sqr()?.mean_all()?;
    let grads = loss.backward()?;
    let vars = sorted_vars(&t.map);
    let norm = grad_norm(&grads, &vars)?;
    let mut by_name = HashMap::new();
    for (name, v) in &vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            by_name.insert(name.clone(), g.clone());
        }
    }
    candle_core::safetensors::save(&by_name, dir.join("grads.safetensors"))?;
    write_json(
        &dir.join("aiop.json"),
        &serde_json::json!({
            "predictions_fast": fast,
            "predictions_candle": generic,
            "train_batch": tc.batch_size,
            "lr": tc.lr,
            "clip_norm": tc.clip_norm,
            "targets": targets,
            "first_step": { "loss": loss.to_scalar::<f32>()?, "grad_norm": norm },
            "inference": INFERENCE,
        }),
    )?;
    Ok(())
}
