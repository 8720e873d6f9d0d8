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

use super::checkpoint::Trained;
use super::data::{load_task, TaskKey};
use super::features::GraphFeatures;
use super::probe::Probe;
use super::train::predict_batched;
use super::PredictorError;
use crate::rng::Rng;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::model::Config;
    use crate::predictor::transform::TaskScaler;
    use crate::predictor::Device;
    use crate::spaces::{SpaceId, Task};
    use crate::stats::spearman;

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
}
