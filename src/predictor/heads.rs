//! Task heads: one linear readout of a frozen pretrained encoder per pretraining task, fitted on
//! that task's own labelled networks, as signals about a new target task.
//!
//! Why: pretraining fits one head to every task at once, so what sets one task apart from the
//! others (what jigsaw rewards and segmentation does not) is averaged away in the head, though
//! the encoder saw it. A head per pretraining task keeps it, at the cost of a ridge regression
//! (no training: K-Adapters, [`super::adapters`], trained per task and averaged, ranked worse on
//! validation). On a target none of the heads has seen any of its labels, so the few labelled
//! networks only weigh them ([`super::eval`]'s `heads` columns).
//!
//! A head of model `m` for task `k` maps a network's features — `m`'s pooled graph embedding,
//! `m`'s own standardised prediction, ln GFLOPs, ln params — to `k`'s label standardised by `m`'s
//! statistics for `k` (Eq. 5 and the z-score for an AIO-P model, the z-score alone for a
//! no-transform one), by [`Probe`] (ridge, penalty by exact leave-one-out error). Its prediction
//! for a target network is therefore a standardised score of the same kind as `m`'s, and maps to
//! the target's units through the target's scaler for `m`.
//!
//! Status: columns of `aiop eval` only (`heads`, `top head`, `wmeanz+heads`, `wmeanz+top head`),
//! part of no default. Validated in session 19 (BENCHMARKS.md): over the twelve validation rows
//! the heads alone rank a new space better than the model's own head (0.625 against 0.564
//! zero-shot), but as a third member of the default blend they lowered its mean (0.7084 →
//! 0.7059, the best head alone 0.7067).
//!
//! Invariants: fitting is a pure function of the models and the shipped tables (the networks per
//! task are a seeded subsample, seed 0); the heads come in model order, then task order.

use std::sync::Arc;

use super::blend::{Blend, Weighting};
use super::checkpoint::Trained;
use super::data::{load_task, TaskKey};
use super::features::GraphFeatures;
use super::probe::Probe;
use super::train::predict_batched;
use super::transform::TaskScaler;
use super::PredictorError;
use crate::rng::Rng;
use crate::stats::spearman;

/// Networks per pretraining task a head is fitted on (the pretraining's default budget).
pub const NETWORKS_PER_TASK: usize = 1000;

/// One fitted head.
#[derive(Debug, Clone)]
pub struct TaskHead {
    /// The index of its model in the list given to [`TaskHeads::fit`].
    pub model: usize,
    pub task: TaskKey,
    pub probe: Probe,
}

/// Every model's heads.
#[derive(Debug, Clone)]
pub struct TaskHeads {
    pub heads: Vec<TaskHead>,
}

/// The networks a head reads: graph features, GFLOPs, params.
pub struct Networks<'a> {
    pub features: Vec<&'a GraphFeatures>,
    pub gflops: &'a [f64],
    pub params: &'a [f64],
}

/// A head's features of each network for model `t` (see the module docs).
pub fn head_features(t: &Trained, n: &Networks) -> Result<Vec<Vec<f64>>, PredictorError> {
    let m = n.features.len();
    if n.gflops.len() != m || n.params.len() != m {
        return Err(PredictorError::Data(format!(
            "task heads: {m} networks with {} GFLOPs and {} params",
            n.gflops.len(),
            n.params.len()
        )));
    }
    let z = predict_batched(t.regressor(), &n.features, 512, &t.device)?;
    let mut rows = t.embeddings(&n.features)?;
    for (((row, z), g), p) in rows.iter_mut().zip(z).zip(n.gflops).zip(n.params) {
        row.push(z as f64);
        row.push(g.max(1e-9).ln());
        row.push(p.max(1.0).ln());
    }
    Ok(rows)
}

impl TaskHeads {
    /// Fit a head per (model, task) on at most `per_task` networks of each task. Every model
    /// must hold label statistics for every task (it was pretrained on them).
    pub fn fit(
        models: &[&Trained],
        tasks: &[TaskKey],
        per_task: usize,
        log: &(dyn Fn(&str) + Sync),
    ) -> Result<TaskHeads, PredictorError> {
        let fc = match models.first() {
            Some(m) => m.meta.config.features(),
            None => return Ok(TaskHeads { heads: Vec::new() }),
        };
        let mut heads = Vec::new();
        for &key in tasks {
            let set = load_task(key, &fc, Some(per_task), &mut Rng::new(0))?;
            let gflops: Vec<f64> = set.examples.iter().map(|e| e.gflops).collect();
            let params = set
                .examples
                .iter()
                .map(|e| Ok(e.arch.build(key.task)?.params() as f64))
                .collect::<Result<Vec<f64>, PredictorError>>()?;
            let feats: Vec<Arc<GraphFeatures>> =
                set.examples.iter().map(|e| e.features.clone()).collect();
            let nets = Networks {
                features: feats.iter().map(|f| &**f).collect(),
                gflops: &gflops,
                params: &params,
            };
            for (mi, m) in models.iter().enumerate() {
                let s = m.scaler(key)?;
                let y: Vec<f64> = set
                    .examples
                    .iter()
                    .map(|e| s.forward(e.value, e.gflops))
                    .collect();
                let x = head_features(m, &nets)?;
                let probe = Probe::fit(&x, &y)?;
                heads.push(TaskHead {
                    model: mi,
                    task: key,
                    probe,
                });
            }
            log(&format!(
                "task heads: {key} fitted on {} networks",
                set.examples.len()
            ));
        }
        heads.sort_by_key(|h| h.model);
        Ok(TaskHeads { heads })
    }

    /// Each head's standardised prediction of each network, `out[h][i]` (heads in order).
    pub fn predict(
        &self,
        models: &[&Trained],
        n: &Networks,
    ) -> Result<Vec<Vec<f64>>, PredictorError> {
        let x = models
            .iter()
            .map(|m| head_features(m, n))
            .collect::<Result<Vec<_>, _>>()?;
        self.heads
            .iter()
            .map(|h| {
                let rows = x.get(h.model).ok_or_else(|| {
                    PredictorError::Data(format!("task heads: no model {}", h.model))
                })?;
                Ok(h.probe.apply_all(rows.iter().map(Vec::as_slice)))
            })
            .collect()
    }
}

/// A target task as the heads' members see it: every head's standardised prediction of the
/// labelled networks and of the evaluation set, with their GFLOPs and the labels.
pub struct HeadTarget<'a> {
    /// Per head, its model (0: an AIO-P model, Eq. 5; 1: a no-transform one).
    pub owner: &'a [usize],
    /// `fit_z[h][i]`: head `h`'s prediction of labelled network `i`.
    pub fit_z: Vec<Vec<f64>>,
    pub fit_gflops: Vec<f64>,
    /// The labels, in the task's units.
    pub y: &'a [f64],
    /// `eval_z[h][j]`: head `h`'s prediction of evaluation network `j`.
    pub eval_z: Vec<Vec<f64>>,
    pub eval_gflops: Vec<f64>,
    pub higher_is_better: bool,
}

/// One blend member made of heads: its out-of-fold predictions of the labelled networks and
/// its predictions of the evaluation set, in the task's units.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadMember {
    pub oof: Vec<f64>,
    pub eval: Vec<f64>,
}

/// Per head, its values for a set of networks.
type PerHead = Vec<Vec<f64>>;

/// A member fitted on some labelled networks: its predictions of all of them and of the
/// evaluation set.
struct Fitted {
    labelled: Vec<f64>,
    eval: Vec<f64>,
}

/// Every head in the target's units, through its model's kind of scaler fitted on the labelled
/// networks `rows` only: per head, all labelled networks and the evaluation set.
fn head_units(t: &HeadTarget, rows: &[usize]) -> Result<(PerHead, PerHead), PredictorError> {
    let ry: Vec<f64> = rows.iter().map(|&r| t.y[r]).collect();
    let rg: Vec<f64> = rows.iter().map(|&r| t.fit_gflops[r]).collect();
    let scalers = [
        TaskScaler::fit_with(&ry, &rg, t.higher_is_better, true)?,
        TaskScaler::fit_with(&ry, &rg, t.higher_is_better, false)?,
    ];
    let units = |z: &[Vec<f64>], g: &[f64]| -> Vec<Vec<f64>> {
        z.iter()
            .zip(t.owner)
            .map(|(h, &o)| {
                let s = &scalers[o.min(1)];
                h.iter().zip(g).map(|(&z, &g)| s.inverse(z, g)).collect()
            })
            .collect()
    };
    Ok((
        units(&t.fit_z, &t.fit_gflops),
        units(&t.eval_z, &t.eval_gflops),
    ))
}

/// The two members fitted on labelled networks `rows`: the [`Weighting::Rank`] blend of every
/// head, and the head whose Spearman on `rows` is best (ties: the first); each as its
/// predictions of all labelled networks and of the evaluation set.
fn combine(t: &HeadTarget, rows: &[usize]) -> Result<[Fitted; 2], PredictorError> {
    let (fit, eval) = head_units(t, rows)?;
    let ry: Vec<f64> = rows.iter().map(|&r| t.y[r]).collect();
    let on_rows: Vec<Vec<f64>> = fit
        .iter()
        .map(|f| rows.iter().map(|&r| f[r]).collect())
        .collect();
    let refs: Vec<&[f64]> = on_rows.iter().map(Vec::as_slice).collect();
    let b = Blend::fit(&refs, &ry, Weighting::Rank)?;
    let all_fit: Vec<&[f64]> = fit.iter().map(Vec::as_slice).collect();
    let all_eval: Vec<&[f64]> = eval.iter().map(Vec::as_slice).collect();
    let (mut top, mut top_rho) = (0, f64::NEG_INFINITY);
    for (h, r) in refs.iter().enumerate() {
        let rho = spearman(r, &ry);
        if rho > top_rho {
            (top, top_rho) = (h, rho);
        }
    }
    Ok([
        Fitted {
            labelled: b.apply_all(&all_fit),
            eval: b.apply_all(&all_eval),
        },
        Fitted {
            labelled: fit[top].clone(),
            eval: eval[top].clone(),
        },
    ])
}

/// The heads' two members of a blend (`heads`, `top head`): each fitted on all labelled
/// networks for the evaluation set, and, for its out-of-fold predictions, on the other folds
/// (`fold[i]`: the fold of labelled network `i`), scalers included, so no labelled network's
/// own label reaches its out-of-fold prediction.
pub fn head_members(t: &HeadTarget, fold: &[usize]) -> Result<[HeadMember; 2], PredictorError> {
    let n = t.y.len();
    let shaped = t.owner.len() == t.fit_z.len()
        && t.fit_z.len() == t.eval_z.len()
        && !t.fit_z.is_empty()
        && fold.len() == n
        && t.fit_gflops.len() == n
        && t.fit_z.iter().all(|h| h.len() == n)
        && t.eval_z.iter().all(|h| h.len() == t.eval_gflops.len());
    if !shaped {
        return Err(PredictorError::Data(
            "task heads: predictions, labels, GFLOPs and folds of different shapes".into(),
        ));
    }
    let every: Vec<usize> = (0..n).collect();
    let full = combine(t, &every)?;
    let mut oof = [vec![f64::NAN; n], vec![f64::NAN; n]];
    let mut folds: Vec<usize> = fold.to_vec();
    folds.sort_unstable();
    folds.dedup();
    for f in folds {
        let rest: Vec<usize> = every.iter().copied().filter(|&r| fold[r] != f).collect();
        let c = combine(t, &rest)?;
        for r in every.iter().copied().filter(|&r| fold[r] == f) {
            for (o, ci) in oof.iter_mut().zip(&c) {
                o[r] = ci.labelled[r];
            }
        }
    }
    let [a, b] = full;
    let [oa, ob] = oof;
    Ok([
        HeadMember {
            oof: oa,
            eval: a.eval,
        },
        HeadMember {
            oof: ob,
            eval: b.eval,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::model::Config;
    use crate::predictor::Device;
    use crate::spaces::{SpaceId, Task};

    /// An untrained model with label statistics of `tasks` (plain z-scores), as if it had been
    /// pretrained on them.
    fn model_for(tasks: &[TaskKey]) -> Trained {
        let mut t = Trained::init(&Config::default(), 3, &Device::Cpu).unwrap();
        for &key in tasks {
            let set =
                load_task(key, &t.meta.config.features(), Some(60), &mut Rng::new(0)).unwrap();
            let y: Vec<f64> = set.examples.iter().map(|e| e.value).collect();
            let g: Vec<f64> = set.examples.iter().map(|e| e.gflops).collect();
            let s = TaskScaler::fit_with(&y, &g, set.higher_is_better, false).unwrap();
            t.meta.stats.insert(key, s);
        }
        t
    }

    #[test]
    fn a_head_per_model_and_task_that_reads_its_task() {
        let tasks = [
            TaskKey::new(SpaceId::Nb201, Task::Cifar10),
            TaskKey::new(SpaceId::Tnb101Macro, Task::Jigsaw),
        ];
        let (a, b) = (model_for(&tasks), model_for(&tasks));
        let heads = TaskHeads::fit(&[&a, &b], &tasks, 120, &|_| {}).unwrap();
        let order: Vec<(usize, TaskKey)> = heads.heads.iter().map(|h| (h.model, h.task)).collect();
        assert_eq!(
            order,
            vec![(0, tasks[0]), (0, tasks[1]), (1, tasks[0]), (1, tasks[1])]
        );
        // On networks of its task the head ranks the task's labels: an untrained encoder still
        // gives it ln GFLOPs and ln params, which rank NB-201 CIFAR-10 well.
        let set = load_task(
            tasks[0],
            &a.meta.config.features(),
            Some(300),
            &mut Rng::new(7),
        )
        .unwrap();
        let gflops: Vec<f64> = set.examples.iter().map(|e| e.gflops).collect();
        let params: Vec<f64> = set
            .examples
            .iter()
            .map(|e| e.arch.build(tasks[0].task).unwrap().params() as f64)
            .collect();
        let nets = Networks {
            features: set.examples.iter().map(|e| &*e.features).collect(),
            gflops: &gflops,
            params: &params,
        };
        let z = heads.predict(&[&a, &b], &nets).unwrap();
        assert_eq!(z.len(), 4);
        assert!(z
            .iter()
            .all(|h| h.len() == 300 && h.iter().all(|v| v.is_finite())));
        let y: Vec<f64> = set.examples.iter().map(|e| e.value).collect();
        let rho = spearman(&z[0], &y);
        assert!(rho > 0.3, "{rho}");
        // A model without statistics for a task cannot have its head.
        let bare = model_for(&tasks[..1]);
        assert!(TaskHeads::fit(&[&bare], &tasks, 50, &|_| {}).is_err());
        // Mismatched inputs are refused.
        let short = Networks {
            features: nets.features.clone(),
            gflops: &gflops[..10],
            params: &params,
        };
        assert!(heads.predict(&[&a, &b], &short).is_err());
    }

    #[test]
    fn head_members_pick_the_head_that_ranks_and_keep_folds_apart() {
        // Three no-transform heads of 12 labelled and 30 evaluation networks: one ranks the
        // labels, one is their reverse, one is noise.
        let mut r = Rng::new(5);
        let y: Vec<f64> = (0..12).map(|i| i as f64 + 0.1 * r.next_f64()).collect();
        let truth: Vec<f64> = (0..30).map(|j| j as f64).collect();
        let noise = |r: &mut Rng, n: usize| -> Vec<f64> { (0..n).map(|_| r.next_f64()).collect() };
        let fit_z = vec![y.clone(), y.iter().map(|v| -v).collect(), noise(&mut r, 12)];
        let eval_z = vec![
            truth.clone(),
            truth.iter().map(|v| -v).collect(),
            noise(&mut r, 30),
        ];
        let owner = [1, 1, 1];
        let t = HeadTarget {
            owner: &owner,
            fit_z,
            fit_gflops: vec![1.0; 12],
            y: &y,
            eval_z,
            eval_gflops: vec![1.0; 30],
            higher_is_better: true,
        };
        let fold: Vec<usize> = (0..12).map(|i| i % 3).collect();
        let [blend, top] = head_members(&t, &fold).unwrap();
        // The best head alone is the one that ranks; the blend leaves the reversed one out.
        assert!(spearman(&top.eval, &truth) > 0.999);
        assert!(spearman(&blend.eval, &truth) > 0.8);
        assert!(spearman(&top.oof, &y) > 0.999);
        // An out-of-fold prediction is what the combination fitted without its fold gives:
        // changing a label of fold 0 moves no prediction of fold 0 ...
        let mut y2 = y.clone();
        y2[0] += 100.0;
        let t2 = HeadTarget {
            fit_z: t.fit_z.clone(),
            eval_z: t.eval_z.clone(),
            fit_gflops: t.fit_gflops.clone(),
            eval_gflops: t.eval_gflops.clone(),
            y: &y2,
            ..t
        };
        let [blend2, _] = head_members(&t2, &fold).unwrap();
        for i in (0..12).filter(|i| i % 3 == 0) {
            assert_eq!(blend.oof[i], blend2.oof[i], "{i}");
        }
        // ... but may move the others'.
        assert!((0..12).any(|i| i % 3 != 0 && blend.oof[i] != blend2.oof[i]));
        assert!(head_members(&t, &fold[..5]).is_err());
    }
}
