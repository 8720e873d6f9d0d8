//! Training loop: MSE on standardised targets, Adam ([`Adam`]: plain loops over CPU variables,
//! candle's AdamW with weight decay 0 elsewhere), global gradient-norm clipping, mini-batches in
//! a seeded order, a seeded dev split whose error picks the best epoch, and a progress bar.
//!
//! Invariants: only the `Var`s passed as trainable are updated (a frozen encoder stays bit for
//! bit); batch inputs are constant tensors, so gradients flow to variables only; the same
//! samples, configuration and seed give the same weights on the same machine (every random
//! choice comes from [`Rng`], gradient norms are summed in variable-name order); at the end the
//! trainable variables hold the weights of the epoch with the lowest dev MSE (the last epoch
//! when there is no dev set); a run stopped by its [`Cancel`] returns an error, its weights
//! left as the last step made them (callers discard the model); a step whose loss or gradient
//! norm is not finite stops the run with [`PredictorError::Diverged`] before any weight takes
//! it; settings are checked first ([`TrainConfig::validate`]).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::batch::Batch;
use super::features::GraphFeatures;
use super::model::Regressor;
use super::ops::read_f32;
use super::transform::TaskScaler;
use super::PredictorError;
use crate::rng::Rng;

/// Optimisation settings. Defaults are AIO-P's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Largest global L2 norm of the gradient (0 = no clipping).
    pub clip_norm: f64,
    /// Fraction of the samples held out to choose the best epoch (0 = none).
    pub dev_fraction: f64,
    pub seed: u64,
    /// Weight of a pairwise ranking term added to each sample's squared error (0: MSE only).
    /// For sample `i` it is the mean over the other training samples `j` of the same task
    /// (the same [`TaskScaler`]: a pretraining set holds many) with a different label of
    /// `softplus(−s·(u_i − u_j)/τ)`, `s` the sign of their labels' difference, `u` the
    /// predictions in the task's units (higher better; see [`Sample::units`]) and `τ` the mean
    /// of `du/dz`, so differences are in standardised units. The other samples' predictions are
    /// those of the epoch's start. Why: the transfer is judged by rank, and with Eq. 5 the
    /// squared error on 20 standardised labels is mostly a FLOPs term (BENCHMARKS.md).
    pub rank_weight: f64,
    /// Checked before every optimisation step: once set, training stops with
    /// [`PredictorError::Cancelled`] (the daemon's fine-tuning jobs, stopped at shutdown).
    #[serde(skip)]
    pub cancel: Cancel,
}

/// A training loop's link to whoever runs it: a stop request checked before every step, and a
/// count of the optimisation steps taken, both absent by default. The count is how a daemon
/// shows a long fine-tuning job's progress (every training run under one `Cancel` adds to the
/// same count: cross-validation folds, companion, final fit). Not part of a configuration's
/// value: two configurations that differ only in it compare equal.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    flag: Option<Arc<AtomicBool>>,
    /// A second reason to stop, for this run alone (its task moved on to a newer version).
    also: Option<Arc<AtomicBool>>,
    steps: Option<Arc<AtomicU64>>,
}

impl Cancel {
    /// Watch `flag` (set elsewhere to stop).
    pub fn new(flag: Arc<AtomicBool>) -> Cancel {
        Cancel {
            flag: Some(flag),
            also: None,
            steps: None,
        }
    }

    /// The same stop request, also counting every optimisation step taken under it into
    /// `steps`.
    pub fn counting(&self, steps: Arc<AtomicU64>) -> Cancel {
        Cancel {
            flag: self.flag.clone(),
            also: self.also.clone(),
            steps: Some(steps),
        }
    }

    /// The same stop request, which `also` being set stops too.
    pub fn or(&self, also: Arc<AtomicBool>) -> Cancel {
        Cancel {
            flag: self.flag.clone(),
            also: Some(also),
            steps: self.steps.clone(),
        }
    }

    pub fn is_set(&self) -> bool {
        [&self.flag, &self.also]
            .into_iter()
            .flatten()
            .any(|f| f.load(Ordering::Relaxed))
    }

    /// One optimisation step was taken.
    fn step_taken(&self) {
        if let Some(s) = &self.steps {
            s.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl PartialEq for Cancel {
    fn eq(&self, _: &Cancel) -> bool {
        true
    }
}

impl Default for TrainConfig {
    fn default() -> TrainConfig {
        TrainConfig {
            epochs: 40,
            batch_size: 32,
            lr: 1e-4,
            clip_norm: 5.0,
            dev_fraction: 0.1,
            seed: 0,
            rank_weight: 0.0,
            cancel: Cancel::default(),
        }
    }
}

/// Most epochs a training may run ([`TrainConfig::validate`]).
pub const MAX_EPOCHS: usize = 1_000_000;
/// Largest mini-batch.
pub const MAX_BATCH: usize = 1 << 20;
/// Largest learning rate (Adam's steps are about `lr` in size; task files have the same bound).
pub const MAX_LR: f64 = 1.0;

impl TrainConfig {
    /// Check every setting; an error names the field, prefixed with `prefix` (where the
    /// settings sit in their file, e.g. `train.`).
    pub fn validate(&self, prefix: &str) -> Result<(), PredictorError> {
        let bad = |field: &str, why: String| {
            Err(PredictorError::Config(format!("{prefix}{field}: {why}")))
        };
        if self.epochs > MAX_EPOCHS {
            return bad(
                "epochs",
                format!("{} is over the limit of {MAX_EPOCHS}", self.epochs),
            );
        }
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            return bad(
                "batch_size",
                format!("{} is not in 1..={MAX_BATCH}", self.batch_size),
            );
        }
        if !(self.lr > 0.0 && self.lr <= MAX_LR) {
            return bad(
                "lr",
                format!("{} is not in (0, {MAX_LR}]", crate::show::num(self.lr)),
            );
        }
        for (field, v) in [
            ("clip_norm", self.clip_norm),
            ("rank_weight", self.rank_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(
                    field,
                    format!("{} is not a finite number ≥ 0", crate::show::num(v)),
                );
            }
        }
        if !(0.0..1.0).contains(&self.dev_fraction) {
            return bad(
                "dev_fraction",
                format!("{} is not in [0, 1)", crate::show::num(self.dev_fraction)),
            );
        }
        Ok(())
    }
}

/// One training example: cached graph features and the standardised target.
#[derive(Debug, Clone)]
pub struct Sample {
    pub features: Arc<GraphFeatures>,
    pub target: f32,
    /// The task's scaler and the network's GFLOPs, which map a standardised value to the task's
    /// units (for [`TrainConfig::rank_weight`]); none: the standardised value is the unit.
    pub units: Option<(TaskScaler, f64)>,
}

impl Sample {
    /// A standardised value `z` of this sample in its task's units (higher better) and the
    /// derivative with respect to `z`.
    fn better_units(&self, z: f64) -> (f64, f64) {
        match &self.units {
            Some((s, f)) => s.better_units(z, *f),
            None => (z, 1.0),
        }
    }
}

/// The default weight of the ranking term in fine-tuning (task files, `aiop eval`'s
/// cross-validated columns), chosen on validation tasks (BENCHMARKS.md, session 8).
pub const RANK_WEIGHT: f64 = 1.0;

/// The default learning rate of the product's fine-tuning (task files, `aiop experiment flops
/// --recipe task`, `aiop eval`'s cross-validated columns): AIO-P's 1e-4. Session 16 measured
/// 3e-4: it ranked the validation rows (a)–(c) better (0.6851 → 0.6938) and was adopted, then
/// withdrawn when FLOP reduction's validation tasks, which fit task models the same way, lost
/// more networks to a true drop over the tolerance with it (BENCHMARKS.md).
pub const FINETUNE_LR: f64 = 1e-4;

/// The ranking term of [`TrainConfig::rank_weight`] for the samples `chunk` against every
/// sample of `all` (indices into `samples`; `z` the predictions of `samples` in the same
/// indexing, from the epoch's start): per chunk member, its loss and its derivative with
/// respect to its prediction.
fn rank_terms(
    samples: &[Sample],
    all: &[usize],
    z: &[f32],
    chunk: &[usize],
    weight: f64,
) -> Vec<(f64, f32)> {
    let u: Vec<(f64, f64)> = all
        .iter()
        .map(|&j| samples[j].better_units(z[j] as f64))
        .collect();
    let y: Vec<f64> = all
        .iter()
        .map(|&j| samples[j].better_units(samples[j].target as f64).0)
        .collect();
    let tau = (u.iter().map(|x| x.1).sum::<f64>() / u.len().max(1) as f64).max(1e-12);
    let pos: std::collections::HashMap<usize, usize> =
        all.iter().enumerate().map(|(k, &j)| (j, k)).collect();
    let n = all.len().saturating_sub(1).max(1) as f64;
    chunk
        .iter()
        .map(|i| {
            let k = pos[i];
            let (ui, di) = u[k];
            let (mut loss, mut grad) = (0.0, 0.0);
            for m in 0..all.len() {
                if m == k || y[m] == y[k] {
                    continue;
                }
                let s = if y[k] > y[m] { 1.0 } else { -1.0 };
                let x = s * (ui - u[m].0) / tau;
                // softplus(−x) and its derivative in x, −σ(−x), computed stably.
                loss += (-x).max(0.0) + (-x.abs()).exp().ln_1p();
                let sig = 1.0 / (1.0 + x.exp());
                grad += -sig * s * di / tau;
            }
            (weight * loss / n, (weight * grad / n) as f32)
        })
        .collect()
}

/// `set` (indices into `samples`) split by task, in order of first appearance, each part in
/// `set`'s order. Samples of one task share its [`TaskScaler`]; samples without units form one
/// group. A single-task set (every fine-tuning) is one group equal to `set`. `set` must be
/// ascending (the training indices are sorted before any shuffle): [`grouped_rank_terms`]
/// binary-searches the groups.
fn task_groups(samples: &[Sample], set: &[usize]) -> Vec<Vec<usize>> {
    let key = |i: usize| {
        samples[i].units.map(|(s, _)| {
            (
                s.mu.to_bits(),
                s.sigma.to_bits(),
                s.higher_is_better,
                s.flops_scaling,
            )
        })
    };
    let mut keys = Vec::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &i in set {
        let k = key(i);
        match keys.iter().position(|x| *x == k) {
            Some(g) => groups[g].push(i),
            None => {
                keys.push(k);
                groups.push(vec![i]);
            }
        }
    }
    groups
}

/// [`rank_terms`] of each member of `chunk` against the other members of its task group
/// (`groups` from [`task_groups`]), in `chunk`'s order.
fn grouped_rank_terms(
    samples: &[Sample],
    groups: &[Vec<usize>],
    z: &[f32],
    chunk: &[usize],
    weight: f64,
) -> Vec<(f64, f32)> {
    if let [all] = groups {
        return rank_terms(samples, all, z, chunk, weight);
    }
    let mut out = vec![(0.0, 0.0); chunk.len()];
    for g in groups {
        let (pos, members): (Vec<usize>, Vec<usize>) = chunk
            .iter()
            .enumerate()
            .filter(|(_, i)| g.binary_search(i).is_ok())
            .map(|(p, &i)| (p, i))
            .unzip();
        if members.is_empty() {
            continue;
        }
        for (p, t) in pos
            .into_iter()
            .zip(rank_terms(samples, g, z, &members, weight))
        {
            out[p] = t;
        }
    }
    out
}

/// What happened in one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub train_mse: f64,
    pub dev_mse: Option<f64>,
}

/// Summary of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub train_size: usize,
    pub dev_size: usize,
    pub epochs: Vec<EpochLog>,
    /// 1-based epoch whose weights were kept (None without a dev set: the last).
    pub best_epoch: Option<usize>,
    pub best_dev_mse: Option<f64>,
    pub seconds: f64,
}

/// Predictions (standardised units) for many graphs, `batch_size` at a time, in input order,
/// through [`Regressor::infer`] (no gradients; the candle-free path for a CPU [`Predictor`]).
///
/// [`Predictor`]: super::model::Predictor
pub fn predict_batched<R: Regressor + ?Sized>(
    model: &R,
    graphs: &[&GraphFeatures],
    batch_size: usize,
    dev: &Device,
) -> Result<Vec<f32>, PredictorError> {
    let mut out = Vec::with_capacity(graphs.len());
    for chunk in graphs.chunks(batch_size.max(1)) {
        out.extend(model.infer(chunk, dev)?);
    }
    Ok(out)
}

/// Adam without weight decay (β₁ 0.9, β₂ 0.999, ε 1e-8: the defaults of candle's `AdamW` and of
/// PyTorch's `Adam`). CPU f32 variables are updated in one loop each (candle's optimizer spends
/// a dozen tensor ops per variable); variables elsewhere go through candle's `AdamW`.
pub struct Adam {
    vars: Vec<Var>,
    lr: f64,
    steps: i32,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    fallback: Option<AdamW>,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl Adam {
    pub fn new(vars: Vec<Var>, lr: f64) -> Result<Adam, PredictorError> {
        let host = vars
            .iter()
            .all(|v| v.device().is_cpu() && v.dtype() == DType::F32);
        let fallback = if host {
            None
        } else {
            Some(AdamW::new(
                vars.clone(),
                ParamsAdamW {
                    lr,
                    beta1: BETA1,
                    beta2: BETA2,
                    eps: EPS,
                    weight_decay: 0.0,
                },
            )?)
        };
        let zeros = |v: &Var| vec![0f32; if host { v.elem_count() } else { 0 }];
        Ok(Adam {
            m: vars.iter().map(zeros).collect(),
            v: vars.iter().map(zeros).collect(),
            vars,
            lr,
            steps: 0,
            fallback,
        })
    }

    /// One update with the gradients in `grads` multiplied by `scale` (a clipping factor).
    /// Variables without a gradient are left alone.
    pub fn step(&mut self, grads: &mut GradStore, scale: f64) -> Result<(), PredictorError> {
        if let Some(opt) = &mut self.fallback {
            if scale != 1.0 {
                for v in &self.vars {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        let g = (g * scale)?;
                        grads.insert(v.as_tensor(), g);
                    }
                }
            }
            opt.step(grads)?;
            return Ok(());
        }
        self.steps += 1;
        let lr = self.lr as f32;
        let (b1, b2, eps) = (BETA1 as f32, BETA2 as f32, EPS as f32);
        let bc1 = (1.0 - BETA1.powi(self.steps)) as f32;
        let bc2 = (1.0 - BETA2.powi(self.steps)) as f32;
        let scale = scale as f32;
        for ((var, m), v) in self.vars.iter().zip(&mut self.m).zip(&mut self.v) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let next = read_f32(g, |g| {
                read_f32(var.as_tensor(), |w| {
                    let mut next = Vec::with_capacity(w.len());
                    for (((&g, &w), m), v) in g.iter().zip(w).zip(m.iter_mut()).zip(v.iter_mut()) {
                        let g = g * scale;
                        *m = b1 * *m + (1.0 - b1) * g;
                        *v = b2 * *v + (1.0 - b2) * g * g;
                        let step = (*m / bc1) / ((*v / bc2).sqrt() + eps);
                        next.push(w - lr * step);
                    }
                    next
                })
            })??;
            var.set(&Tensor::from_vec(next, var.shape(), var.device())?)?;
        }
        Ok(())
    }
}

/// Global L2 norm of the gradients of `vars` (summed in f64, in the order of `vars`).
pub fn grad_norm(grads: &GradStore, vars: &[(String, Var)]) -> Result<f64, PredictorError> {
    let mut sq = 0f64;
    for (_, v) in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += read_f32(g, |g| g.iter().map(|&x| x as f64 * x as f64).sum::<f64>())?;
        }
    }
    Ok(sq.sqrt())
}

/// The factor that brings a gradient of norm `norm` to at most `clip` (1 when `clip` is 0).
pub fn clip_scale(norm: f64, clip: f64) -> f64 {
    if clip > 0.0 && norm > clip {
        clip / (norm + 1e-6)
    } else {
        1.0
    }
}

fn mse(pred: &[f32], samples: &[&Sample]) -> f64 {
    let s: f64 = pred
        .iter()
        .zip(samples)
        .map(|(&p, s)| {
            let d = p as f64 - s.target as f64;
            d * d
        })
        .sum();
    s / pred.len().max(1) as f64
}

fn progress_bar(total: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {pos}/{len} steps, ETA {eta} {msg}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    pb.set_style(style);
    pb
}

/// Mini-batches are computed in parts of at most this many graphs (see [`batch_gradients`]).
pub const PART_GRAPHS: usize = 8;

/// Mean squared error of `model` on one mini-batch and its gradients. The batch is halved
/// recursively into parts of at most [`PART_GRAPHS`] graphs computed in parallel (each part its own
/// candle graph; losses and gradients of `trainable` are added pairwise in a fixed order): one
/// synchronisation per part instead of one per parallel op, and node states small enough to stay
/// in cache. The split depends on the batch size only, so results do not depend on the number of
/// threads.
pub fn batch_gradients<R: Regressor + Sync + ?Sized>(
    model: &R,
    graphs: &[&GraphFeatures],
    targets: &[f32],
    trainable: &[(String, Var)],
    dev: &Device,
) -> Result<(f64, GradStore), PredictorError> {
    let n = graphs.len();
    if n == 0 || targets.len() != n {
        return Err(PredictorError::Data(format!(
            "{n} graphs and {} targets in a batch",
            targets.len()
        )));
    }
    part_gradients(model, graphs, targets, None, n, trainable, dev)
}

/// [`batch_gradients`] of the loss plus `Σ_i linear_i · prediction_i / n` (constant
/// coefficients: the gradient of a term computed outside the graph, such as the ranking term
/// of [`TrainConfig::rank_weight`]); the returned loss leaves that term out.
pub fn batch_gradients_with<R: Regressor + Sync + ?Sized>(
    model: &R,
    graphs: &[&GraphFeatures],
    targets: &[f32],
    linear: &[f32],
    trainable: &[(String, Var)],
    dev: &Device,
) -> Result<(f64, GradStore), PredictorError> {
    let n = graphs.len();
    if n == 0 || targets.len() != n || linear.len() != n {
        return Err(PredictorError::Data(format!(
            "{n} graphs, {} targets and {} coefficients in a batch",
            targets.len(),
            linear.len()
        )));
    }
    part_gradients(model, graphs, targets, Some(linear), n, trainable, dev)
}

/// [`batch_gradients`] of `graphs`, a part of a batch of `total` graphs.
fn part_gradients<R: Regressor + Sync + ?Sized>(
    model: &R,
    graphs: &[&GraphFeatures],
    targets: &[f32],
    linear: Option<&[f32]>,
    total: usize,
    trainable: &[(String, Var)],
    dev: &Device,
) -> Result<(f64, GradStore), PredictorError> {
    let n = graphs.len();
    if n <= PART_GRAPHS {
        let b = Batch::pack(graphs, dev)?;
        let t = Tensor::from_slice(targets, n, dev)?;
        let pred = model.predict(&b)?;
        let loss = ((&pred - t)?.sqr()?.sum_all()? / total as f64)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let grads = match linear {
            None => loss.backward()?,
            Some(c) => {
                let c = Tensor::from_slice(c, n, dev)?;
                let extra = ((&pred * c)?.sum_all()? / total as f64)?;
                (loss + extra)?.backward()?
            }
        };
        return Ok((value, grads));
    }
    let h = n / 2;
    let (la, lb) = match linear {
        Some(c) => (Some(&c[..h]), Some(&c[h..])),
        None => (None, None),
    };
    let (a, b) = rayon::join(
        || {
            part_gradients(
                model,
                &graphs[..h],
                &targets[..h],
                la,
                total,
                trainable,
                dev,
            )
        },
        || {
            part_gradients(
                model,
                &graphs[h..],
                &targets[h..],
                lb,
                total,
                trainable,
                dev,
            )
        },
    );
    let ((la, mut ga), (lb, gb)) = (a?, b?);
    for (_, v) in trainable {
        let t = v.as_tensor();
        let sum = match (ga.get(t), gb.get(t)) {
            (Some(x), Some(y)) => (x + y)?,
            (None, Some(y)) => y.clone(),
            _ => continue,
        };
        ga.insert(t, sum);
    }
    Ok((la + lb, ga))
}

/// Scale gradients in place so that their global L2 norm is at most `clip`; returns the norm
/// before clipping.
pub fn clip_grad_norm(
    grads: &mut GradStore,
    vars: &[(String, Var)],
    clip: f64,
) -> Result<f64, PredictorError> {
    let norm = grad_norm(grads, vars)?;
    let scale = clip_scale(norm, clip);
    if scale != 1.0 {
        for (_, v) in vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                let g = (g * scale)?;
                grads.insert(v.as_tensor(), g);
            }
        }
    }
    Ok(norm)
}

/// Train `trainable` (sorted by name) to fit `samples` with `model`. Runs on rayon's pool
/// (mini-batches through [`batch_gradients`]).
pub fn train<R: Regressor + Sync + ?Sized>(
    model: &R,
    trainable: &[(String, Var)],
    samples: &[Sample],
    cfg: &TrainConfig,
    quiet: bool,
    dev: &Device,
) -> Result<TrainReport, PredictorError> {
    train_observed(model, trainable, samples, cfg, quiet, dev, &mut |_| Ok(()))
}

/// A hook [`train_observed`] calls after each epoch (1-based), before the best epoch's weights
/// are restored; an error stops training.
pub type EpochHook<'a> = dyn FnMut(usize) -> Result<(), PredictorError> + Send + 'a;

/// [`train`], calling `on_epoch` after every epoch with the model as that epoch left it.
pub fn train_observed<R: Regressor + Sync + ?Sized>(
    model: &R,
    trainable: &[(String, Var)],
    samples: &[Sample],
    cfg: &TrainConfig,
    quiet: bool,
    dev: &Device,
    on_epoch: &mut EpochHook<'_>,
) -> Result<TrainReport, PredictorError> {
    let start = std::time::Instant::now();
    if samples.is_empty() {
        return Err(PredictorError::Data("no training samples".into()));
    }
    cfg.validate("")?;
    let mut rng = Rng::new(cfg.seed);
    let mut split_rng = rng.fork();
    let mut order_rng = rng.fork();

    let mut idx: Vec<usize> = (0..samples.len()).collect();
    split_rng.shuffle(&mut idx);
    let n_dev = if samples.len() >= 2 && cfg.dev_fraction > 0.0 {
        ((samples.len() as f64 * cfg.dev_fraction).round() as usize).clamp(1, samples.len() - 1)
    } else {
        0
    };
    let dev_set: Vec<&Sample> = idx[..n_dev].iter().map(|&i| &samples[i]).collect();
    let mut train_idx: Vec<usize> = idx[n_dev..].to_vec();
    train_idx.sort_unstable();
    let dev_graphs: Vec<&GraphFeatures> = dev_set.iter().map(|s| &*s.features).collect();

    let vars: Vec<Var> = trainable.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = Adam::new(vars, cfg.lr)?;

    let steps = train_idx.len().div_ceil(cfg.batch_size);
    let pb = progress_bar((steps as u64).saturating_mul(cfg.epochs as u64), quiet);
    let mut report = TrainReport {
        train_size: train_idx.len(),
        dev_size: n_dev,
        // Grown as epochs end: `epochs` may be large and a run may stop early.
        epochs: Vec::new(),
        best_epoch: None,
        best_dev_mse: None,
        seconds: 0.0,
    };
    let mut best: Option<Vec<Tensor>> = None;
    rayon::scope(|_| -> Result<(), PredictorError> {
        let ranked = cfg.rank_weight > 0.0 && train_idx.len() >= 2;
        let train_graphs: Vec<&GraphFeatures> =
            train_idx.iter().map(|&i| &*samples[i].features).collect();
        let train_set = train_idx.clone();
        // Ranking compares networks of one task only: the training set split by task scaler.
        let groups = if ranked {
            task_groups(samples, &train_set)
        } else {
            Vec::new()
        };
        for epoch in 1..=cfg.epochs {
            // The predictions every ranking term of this epoch compares against.
            let z_start: Vec<f32> = if ranked {
                let p = predict_batched(model, &train_graphs, 256, dev)?;
                let mut z = vec![0f32; samples.len()];
                for (&i, v) in train_set.iter().zip(p) {
                    z[i] = v;
                }
                z
            } else {
                Vec::new()
            };
            order_rng.shuffle(&mut train_idx);
            let (mut sum, mut count) = (0f64, 0usize);
            for (step, chunk) in train_idx.chunks(cfg.batch_size).enumerate() {
                if cfg.cancel.is_set() {
                    return Err(PredictorError::Cancelled);
                }
                let graphs: Vec<&GraphFeatures> =
                    chunk.iter().map(|&i| &*samples[i].features).collect();
                let t: Vec<f32> = chunk.iter().map(|&i| samples[i].target).collect();
                let (l, mut grads) = if ranked {
                    let terms =
                        grouped_rank_terms(samples, &groups, &z_start, chunk, cfg.rank_weight);
                    let c: Vec<f32> = terms.iter().map(|t| t.1).collect();
                    let (l, g) = batch_gradients_with(model, &graphs, &t, &c, trainable, dev)?;
                    let r = terms.iter().map(|t| t.0).sum::<f64>() / chunk.len() as f64;
                    (l + r, g)
                } else {
                    batch_gradients(model, &graphs, &t, trainable, dev)?
                };
                let norm = grad_norm(&grads, trainable)?;
                if !(l.is_finite() && norm.is_finite()) {
                    return Err(PredictorError::Diverged {
                        epoch,
                        step: step + 1,
                        loss: l,
                        grad_norm: norm,
                    });
                }
                let scale = clip_scale(norm, cfg.clip_norm);
                opt.step(&mut grads, scale)?;
                cfg.cancel.step_taken();
                sum += l * chunk.len() as f64;
                count += chunk.len();
                pb.inc(1);
                pb.set_message(format!("epoch {epoch}/{} loss {l:.4}", cfg.epochs));
            }
            let train_mse = sum / count.max(1) as f64;
            let dev_mse = if n_dev > 0 {
                let pred = predict_batched(model, &dev_graphs, 256, dev)?;
                Some(mse(&pred, &dev_set))
            } else {
                None
            };
            if let Some(d) = dev_mse {
                if report.best_dev_mse.is_none_or(|b| d < b) {
                    report.best_dev_mse = Some(d);
                    report.best_epoch = Some(epoch);
                    best = Some(
                        trainable
                            .iter()
                            .map(|(_, v)| v.as_tensor().copy())
                            .collect::<Result<_, _>>()?,
                    );
                }
                pb.println(format!(
                    "epoch {epoch}: train MSE {train_mse:.4}, dev MSE {d:.4}"
                ));
            }
            report.epochs.push(EpochLog {
                epoch,
                train_mse,
                dev_mse,
            });
            on_epoch(epoch)?;
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    if let Some(ws) = best {
        for ((_, v), w) in trainable.iter().zip(ws) {
            v.set(&w)?;
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::features::extract;
    use crate::predictor::init::{sorted_vars, var_builder};
    use crate::predictor::model::tests::tiny_config;
    use crate::predictor::model::{Config, Predictor};
    use crate::spaces::{labels, SpaceId, Task};
    use candle_nn::VarMap;

    /// 48 NB-201 CIFAR-10 networks with standardised accuracies.
    fn tiny_set(fc: &crate::predictor::features::FeatureConfig) -> Vec<Sample> {
        let t = labels::load(SpaceId::Nb201, Task::Cifar10).unwrap();
        let rows: Vec<_> = t.rows.iter().step_by(311).take(48).collect();
        let mean = rows.iter().map(|r| r.value).sum::<f64>() / rows.len() as f64;
        let sd =
            (rows.iter().map(|r| (r.value - mean).powi(2)).sum::<f64>() / rows.len() as f64).sqrt();
        rows.iter()
            .map(|r| Sample {
                features: Arc::new(extract(&r.arch.build(Task::Cifar10).unwrap(), fc)),
                target: ((r.value - mean) / sd) as f32,
                units: None,
            })
            .collect()
    }

    /// The features of the first NB-201 CIFAR-10 network (the ranking tests need any graph).
    fn first_nb201_graph() -> Arc<GraphFeatures> {
        let arch = &labels::load(SpaceId::Nb201, Task::Cifar10).unwrap().rows[0].arch;
        Arc::new(extract(
            &arch.build(Task::Cifar10).unwrap(),
            &Config::default().features(),
        ))
    }

    /// Several tasks in one training set: each sample's ranking term is the one its own task's
    /// samples alone would give; one task gives the ungrouped term exactly.
    #[test]
    fn ranking_terms_compare_within_a_task_only() {
        let g = first_nb201_graph();
        let a = TaskScaler::fit_with(&[1.0, 2.0, 3.0], &[0.1, 0.2, 0.3], true, true).unwrap();
        let b = TaskScaler::fit_with(&[5.0, 4.0, 9.0], &[0.1, 0.2, 0.3], false, true).unwrap();
        // Interleaved: 0, 2, 4 of task a; 1, 3 of task b; 5 without units.
        let spec = [(a, 1.0), (b, 5.0), (a, 2.0), (b, 9.0), (a, 3.0)];
        let mut samples: Vec<Sample> = spec
            .iter()
            .map(|&(s, v)| Sample {
                features: g.clone(),
                target: s.forward(v, 0.2) as f32,
                units: Some((s, 0.2)),
            })
            .collect();
        samples.push(Sample {
            features: g.clone(),
            target: 0.0,
            units: None,
        });
        let set: Vec<usize> = (0..6).collect();
        let groups = task_groups(&samples, &set);
        assert_eq!(groups, vec![vec![0, 2, 4], vec![1, 3], vec![5]]);
        let z = [0.3f32, -0.2, 0.9, 0.1, -0.4, 0.5];
        let chunk = [4, 1, 0, 5];
        let got = grouped_rank_terms(&samples, &groups, &z, &chunk, 0.7);
        for (&i, t) in chunk.iter().zip(&got) {
            let own = groups.iter().find(|g| g.contains(&i)).unwrap();
            assert_eq!(*t, rank_terms(&samples, own, &z, &[i], 0.7)[0]);
        }
        // The lone sample has nobody to be ranked against.
        assert_eq!(got[3], (0.0, 0.0));
        let one = task_groups(&samples, &[0, 2, 4]);
        assert_eq!(
            grouped_rank_terms(&samples, &one, &z, &[2, 0], 0.7),
            rank_terms(&samples, &[0, 2, 4], &z, &[2, 0], 0.7)
        );
    }

    #[test]
    fn the_ranking_term_s_derivative_matches_finite_differences() {
        let y = [70.0, 88.0, 91.5, 93.0, 93.0];
        let f = [0.2, 0.9, 1.4, 3.0, 0.5];
        let g = first_nb201_graph();
        for scaling in [true, false] {
            let s = TaskScaler::fit_with(&y, &f, true, scaling).unwrap();
            let samples: Vec<Sample> = y
                .iter()
                .zip(&f)
                .map(|(&v, &f)| Sample {
                    features: g.clone(),
                    target: s.forward(v, f) as f32,
                    units: Some((s, f)),
                })
                .collect();
            let all: Vec<usize> = (0..y.len()).collect();
            let z = [0.3f32, -0.2, 0.9, 0.1, 0.4];
            for i in 0..y.len() {
                let t = rank_terms(&samples, &all, &z, &[i], 0.7)[0];
                let h = 1e-3f32;
                let at = |d: f32| {
                    let mut zz = z;
                    zz[i] += d;
                    rank_terms(&samples, &all, &zz, &[i], 0.7)[0].0
                };
                let fd = (at(h) - at(-h)) / (2.0 * h as f64);
                assert!(
                    (t.1 as f64 - fd).abs() < 1e-3 * fd.abs().max(1.0),
                    "{scaling} {i}: {} vs {fd}",
                    t.1
                );
            }
            // Ordered predictions cost less than reversed ones.
            let good: Vec<f32> = samples.iter().map(|x| x.target).collect();
            let bad: Vec<f32> = good.iter().map(|v| -v).collect();
            let total = |z: &[f32]| -> f64 {
                rank_terms(&samples, &all, z, &all, 1.0)
                    .iter()
                    .map(|t| t.0)
                    .sum()
            };
            assert!(total(&good) < total(&bad));
        }
    }

    #[test]
    fn a_ranking_term_trains_and_repeats() {
        let fc = Config::default().features();
        let mut set = tiny_set(&fc);
        let y: Vec<f64> = set.iter().map(|x| x.target as f64 * 5.0 + 90.0).collect();
        let f: Vec<f64> = (0..set.len()).map(|i| 0.1 + i as f64 * 0.01).collect();
        let s = TaskScaler::fit(&y, &f, true).unwrap();
        for (x, (&v, &f)) in set.iter_mut().zip(y.iter().zip(&f)) {
            x.target = s.forward(v, f) as f32;
            x.units = Some((s, f));
        }
        let go = || {
            let dev = Device::Cpu;
            let map = VarMap::new();
            let m = Predictor::new(&Config::default(), var_builder(&map, 4, &dev)).unwrap();
            let vars = crate::predictor::init::sorted_vars(&map);
            let cfg = TrainConfig {
                epochs: 3,
                batch_size: 4,
                lr: 1e-3,
                rank_weight: 1.0,
                dev_fraction: 0.0,
                ..TrainConfig::default()
            };
            let r = train(&m, &vars, &set, &cfg, true, &dev).unwrap();
            let w: Vec<Vec<f32>> = vars
                .iter()
                .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
                .collect();
            (r.epochs.iter().map(|e| e.train_mse).collect::<Vec<_>>(), w)
        };
        let (l1, w1) = go();
        let (l2, w2) = go();
        assert_eq!((l1.clone(), w1), (l2, w2), "same seed, same run");
        assert!(l1.iter().all(|l| l.is_finite()));
    }

    fn run(samples: &[Sample], seed: u64, epochs: usize) -> (TrainReport, Vec<Vec<f32>>) {
        let dev = Device::Cpu;
        let map = VarMap::new();
        let m = Predictor::new(&Config::default(), var_builder(&map, seed, &dev)).unwrap();
        let vars = sorted_vars(&map);
        let tc = TrainConfig {
            epochs,
            batch_size: 8,
            lr: 1e-3,
            dev_fraction: 0.0,
            seed,
            ..TrainConfig::default()
        };
        let r = train(&m, &vars, samples, &tc, true, &dev).unwrap();
        let w = vars
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        (r, w)
    }

    #[test]
    fn loss_goes_down_and_runs_repeat() {
        let samples = tiny_set(&Config::default().features());
        let (r1, w1) = run(&samples, 7, 20);
        let first = r1.epochs.first().unwrap().train_mse;
        let last = r1.epochs.last().unwrap().train_mse;
        assert!(last < 0.8 * first, "train MSE {first} → {last}");
        let (r2, w2) = run(&samples, 7, 20);
        assert_eq!(w1, w2, "same seed, same weights");
        assert_eq!(r1.epochs, r2.epochs);
        let (_, w3) = run(&samples, 8, 1);
        assert_ne!(w1, w3);
    }

    #[test]
    fn a_non_finite_loss_stops_training_before_any_weight_takes_it() {
        let mut samples = tiny_set(&Config::default().features());
        // One label far out of range: its squared error overflows f32.
        samples[5].target = 1e30;
        let dev = Device::Cpu;
        let map = VarMap::new();
        let m = Predictor::new(&Config::default(), var_builder(&map, 3, &dev)).unwrap();
        let vars = sorted_vars(&map);
        let flat = || -> Vec<Vec<f32>> {
            vars.iter()
                .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
                .collect()
        };
        let before = flat();
        let tc = TrainConfig {
            epochs: 3,
            batch_size: samples.len(),
            lr: 1e-3,
            dev_fraction: 0.0,
            seed: 3,
            ..TrainConfig::default()
        };
        match train(&m, &vars, &samples, &tc, true, &dev) {
            Err(PredictorError::Diverged { epoch, step, .. }) => assert_eq!((epoch, step), (1, 1)),
            other => panic!("expected Diverged, got {other:?}"),
        }
        assert_eq!(before, flat(), "no step was taken");
    }

    #[test]
    fn dev_split_keeps_best_epoch_and_frozen_vars_stay() {
        let samples = tiny_set(&tiny_config().features());
        let dev = Device::Cpu;
        let map = VarMap::new();
        let m = Predictor::new(&tiny_config(), var_builder(&map, 1, &dev)).unwrap();
        let all = sorted_vars(&map);
        let (head, frozen): (Vec<_>, Vec<_>) =
            all.into_iter().partition(|(n, _)| n.starts_with("head."));
        let before: Vec<Vec<f32>> = frozen
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        let tc = TrainConfig {
            epochs: 3,
            batch_size: 16,
            lr: 1e-3,
            dev_fraction: 0.25,
            seed: 1,
            ..TrainConfig::default()
        };
        let r = train(&m, &head, &samples, &tc, true, &dev).unwrap();
        assert_eq!(r.dev_size, 12);
        assert_eq!(r.train_size, 36);
        let best = r.best_epoch.unwrap();
        let min = r
            .epochs
            .iter()
            .filter_map(|e| e.dev_mse)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(r.epochs[best - 1].dev_mse, Some(min));
        let after: Vec<Vec<f32>> = frozen
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        assert_eq!(before, after);
    }

    /// The host Adam takes the steps of candle's AdamW (weight decay 0), clipping included.
    #[test]
    fn host_adam_matches_candle_adamw() {
        let dev = Device::Cpu;
        let init: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin()).collect();
        let a = Var::from_vec(init.clone(), (8, 5), &dev).unwrap();
        let b = Var::from_vec(init, (8, 5), &dev).unwrap();
        let mut ours = Adam::new(vec![a.clone()], 1e-2).unwrap();
        let mut theirs = AdamW::new(
            vec![b.clone()],
            ParamsAdamW {
                lr: 1e-2,
                weight_decay: 0.0,
                ..ParamsAdamW::default()
            },
        )
        .unwrap();
        let vars = [("a".to_string(), a.clone())];
        let vars_b = [("b".to_string(), b.clone())];
        for step in 0..5 {
            let k = 1.0 + step as f64;
            let loss = |v: &Var| {
                (v.as_tensor().sqr().unwrap() * k)
                    .unwrap()
                    .sum_all()
                    .unwrap()
            };
            let mut ga = loss(&a).backward().unwrap();
            let scale = clip_scale(grad_norm(&ga, &vars).unwrap(), 5.0);
            ours.step(&mut ga, scale).unwrap();
            let mut gb = loss(&b).backward().unwrap();
            clip_grad_norm(&mut gb, &vars_b, 5.0).unwrap();
            theirs.step(&gb).unwrap();
        }
        let va: Vec<f32> = a.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let vb: Vec<f32> = b.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for (x, y) in va.iter().zip(&vb) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }
}
