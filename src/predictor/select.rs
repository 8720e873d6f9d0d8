//! How long to fine-tune on a target's few labelled networks, chosen by cross-validation on
//! those networks alone.
//!
//! AIO-P fine-tunes every target for a fixed 100 epochs. On targets whose labels barely vary
//! (TNB-101 segmentation: 93.7 ± 0.9 pixel accuracy), Eq. 5 makes the target mostly a FLOPs
//! term, and fitting 20 networks for 100 epochs can rank the rest worse than the zero-shot
//! model did. [`select_epochs`] splits the labelled networks into folds, fine-tunes a copy of
//! the model on all folds but one for each candidate length (0 = zero-shot), predicts the
//! held-out fold in task units, and keeps the length whose pooled out-of-fold predictions rank
//! the labels best (Spearman; ties go to the shorter). One fine-tuning run per fold serves
//! every candidate: predictions are taken as the run passes each candidate epoch.
//!
//! Invariants: only the labelled networks handed in are read (never a target's evaluation
//! set); `base` is never modified (folds train deep copies); each fold's μ/σ are fitted on that
//! fold's training part only; the result is a function of the inputs and `tc.seed`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::checkpoint::Trained;
use super::features::GraphFeatures;
use super::train::{predict_batched, train_observed, Sample, TrainConfig};
use super::transform::TaskScaler;
use super::PredictorError;
use crate::rng::Rng;
use crate::stats::spearman;

/// The candidates and folds of the selection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EpochSelection {
    /// Folds of the labelled networks (at most one per network).
    pub folds: usize,
    /// Candidate fine-tuning lengths in epochs; 0 is zero-shot.
    pub candidates: Vec<usize>,
    /// Judge (and use) each fine-tuned model interpolated towards the one it started from:
    /// weights `base + wise·(tuned − base)` (WiSE-FT). None (the default) uses the fine-tuned
    /// weights as they are. A measured candidate, not a default (BENCHMARKS.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wise: Option<f64>,
}

impl Default for EpochSelection {
    fn default() -> EpochSelection {
        EpochSelection {
            folds: 5,
            candidates: vec![0, 5, 10, 25, 50, 100],
            wise: None,
        }
    }
}

/// A labelled network: features, label in task units, GFLOPs.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub features: Arc<GraphFeatures>,
    pub value: f64,
    pub gflops: f64,
}

/// What the selection measured and chose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectionReport {
    /// The chosen number of epochs.
    pub epochs: usize,
    /// Each candidate with the Spearman correlation of its out-of-fold predictions.
    pub scores: Vec<(usize, f64)>,
    /// The chosen candidate's out-of-fold prediction of each labelled network, in task units
    /// and input order (what [`super::calibrate`] is fitted on). Empty in reports written
    /// before it existed.
    #[serde(default)]
    pub oof: Vec<f64>,
}

impl SelectionReport {
    /// The out-of-fold Spearman of the chosen length (−∞ when unknown).
    pub fn best_score(&self) -> f64 {
        self.scores
            .iter()
            .find(|c| c.0 == self.epochs)
            .map_or(f64::NEG_INFINITY, |c| c.1)
    }
}

/// How well out-of-fold predictions `pred` rank the labels `y`: Spearman, −∞ where undefined
/// (a constant prediction), so that any defined score beats it.
pub fn oof_score(pred: &[f64], y: &[f64]) -> f64 {
    let r = spearman(pred, y);
    if r.is_finite() {
        r
    } else {
        f64::NEG_INFINITY
    }
}

/// Standardised samples of `data[idx]` under `s`.
pub fn samples_of(data: &[Labelled], idx: &[usize], s: &TaskScaler) -> Vec<Sample> {
    idx.iter()
        .map(|&i| Sample {
            features: data[i].features.clone(),
            target: s.forward(data[i].value, data[i].gflops) as f32,
            units: Some((*s, data[i].gflops)),
        })
        .collect()
}

/// The shuffled order of `n` labelled networks the cross-validation deals into folds:
/// the network at position `p` is in fold `p % k`.
fn fold_order(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed ^ 0xf01d_5e1e).shuffle(&mut order);
    order
}

/// The fold of each of `n` networks (input order) in [`select_epochs`] with `folds` folds and
/// recipe seed `seed`, so that other predictors can be judged on exactly the same folds.
pub fn fold_of_each(n: usize, folds: usize, seed: u64) -> Vec<usize> {
    let k = folds.min(n).max(1);
    let mut fold = vec![0; n];
    for (p, &i) in fold_order(n, seed).iter().enumerate() {
        fold[i] = p % k;
    }
    fold
}

/// Choose how many epochs to fine-tune `base` on `data` (see the module docs). `tc` is the
/// fine-tuning recipe (its `epochs` is ignored: the candidates are tried), `trainable` the
/// variable prefixes as for [`Trained::trainable_vars`].
pub fn select_epochs(
    base: &Trained,
    data: &[Labelled],
    higher_is_better: bool,
    tc: &TrainConfig,
    trainable: &[String],
    sel: &EpochSelection,
) -> Result<SelectionReport, PredictorError> {
    select_epochs_bagged(base, data, higher_is_better, tc, trainable, sel, &[], &[]).map(|r| r.0)
}

/// [`select_epochs`], and the fold models' mean prediction of other networks (`extra`, with
/// their GFLOPs `extra_gflops`) at the chosen length, in task units (each fold model through its
/// own scaler's inverse): the fold models bagged. Empty when `extra` is. A measurement of
/// `aiop eval` (session 15), read by no default.
#[allow(clippy::too_many_arguments)]
pub fn select_epochs_bagged(
    base: &Trained,
    data: &[Labelled],
    higher_is_better: bool,
    tc: &TrainConfig,
    trainable: &[String],
    sel: &EpochSelection,
    extra: &[&GraphFeatures],
    extra_gflops: &[f64],
) -> Result<(SelectionReport, Vec<f64>), PredictorError> {
    if extra.len() != extra_gflops.len() {
        return Err(PredictorError::Data(format!(
            "{} extra networks with {} GFLOPs",
            extra.len(),
            extra_gflops.len()
        )));
    }
    let mut cands = sel.candidates.clone();
    cands.sort_unstable();
    cands.dedup();
    if cands.is_empty() {
        return Err(PredictorError::Config(
            "no candidate epochs to select from".into(),
        ));
    }
    let n = data.len();
    let k = sel.folds.min(n);
    if k < 2 {
        return Err(PredictorError::Config(format!(
            "selecting epochs needs at least 2 folds of labelled networks (folds {}, networks {n})",
            sel.folds
        )));
    }
    let order = fold_order(n, tc.seed);
    let fold_of = |pos: usize| pos % k;
    // oof[c][i]: candidate c's out-of-fold prediction for network i, in task units.
    let mut oof = vec![vec![f64::NAN; n]; cands.len()];
    // bag[c][j]: the mean over folds of candidate c's prediction of extra network j.
    let mut bag = vec![vec![0.0; extra.len()]; cands.len()];
    let max_epochs = *cands.last().expect("non-empty");
    for f in 0..k {
        let held: Vec<usize> = (0..n)
            .filter(|&p| fold_of(p) == f)
            .map(|p| order[p])
            .collect();
        let fit: Vec<usize> = (0..n)
            .filter(|&p| fold_of(p) != f)
            .map(|p| order[p])
            .collect();
        let y: Vec<f64> = fit.iter().map(|&i| data[i].value).collect();
        let g: Vec<f64> = fit.iter().map(|&i| data[i].gflops).collect();
        let s = TaskScaler::fit_with(&y, &g, higher_is_better, base.flops_scaling())?;
        let t = base.duplicate()?;
        let held_feats: Vec<&GraphFeatures> = held.iter().map(|&i| &*data[i].features).collect();
        let record = |epoch: usize,
                      oof: &mut [Vec<f64>],
                      bag: &mut [Vec<f64>]|
         -> Result<(), PredictorError> {
            if let Some(c) = cands.iter().position(|&e| e == epoch) {
                let w;
                let m = match sel.wise {
                    Some(a) if epoch > 0 => {
                        w = t.interpolate(base, a)?;
                        &w
                    }
                    _ => &t,
                };
                let z = predict_batched(m.regressor(), &held_feats, 256, &m.device)?;
                for (&i, &z) in held.iter().zip(&z) {
                    oof[c][i] = s.inverse(z as f64, data[i].gflops);
                }
                if !extra.is_empty() {
                    let z = predict_batched(m.regressor(), extra, 512, &m.device)?;
                    for ((b, &z), &g) in bag[c].iter_mut().zip(&z).zip(extra_gflops) {
                        *b += s.inverse(z as f64, g) / k as f64;
                    }
                }
            }
            Ok(())
        };
        record(0, &mut oof, &mut bag)?;
        if max_epochs > 0 {
            let cfg = TrainConfig {
                epochs: max_epochs,
                dev_fraction: 0.0,
                seed: tc.seed.wrapping_add(f as u64),
                ..tc.clone()
            };
            let vars = t.trainable_vars(trainable)?;
            let samples = samples_of(data, &fit, &s);
            train_observed(
                t.regressor(),
                &vars,
                &samples,
                &cfg,
                true,
                &t.device,
                &mut |e| record(e, &mut oof, &mut bag),
            )?;
        }
    }
    let truth: Vec<f64> = data.iter().map(|d| d.value).collect();
    let scores: Vec<(usize, f64)> = cands
        .iter()
        .zip(&oof)
        .map(|(&e, p)| (e, oof_score(p, &truth)))
        .collect();
    let mut best = 0;
    for c in 1..scores.len() {
        if scores[c].1 > scores[best].1 {
            best = c;
        }
    }
    Ok((
        SelectionReport {
            epochs: scores[best].0,
            scores,
            oof: oof.swap_remove(best),
        },
        bag.swap_remove(best),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::data::{load_task, TaskKey};
    use crate::predictor::model::tests::tiny_config;
    use candle_core::Device;

    fn labelled(key: &str, n: usize) -> (Vec<Labelled>, bool) {
        let key: TaskKey = key.parse().unwrap();
        let set = load_task(key, &tiny_config().features(), Some(n), &mut Rng::new(5)).unwrap();
        let data = set
            .examples
            .iter()
            .map(|e| Labelled {
                features: e.features.clone(),
                value: e.value,
                gflops: e.gflops,
            })
            .collect();
        (data, set.higher_is_better)
    }

    /// A tiny model, 20 labelled NB-201 networks, a fast recipe and 4 folds over `candidates`.
    fn setup(
        candidates: Vec<usize>,
    ) -> (Trained, Vec<Labelled>, bool, TrainConfig, EpochSelection) {
        let base = Trained::init(&tiny_config(), 3, &Device::Cpu).unwrap();
        let (data, hib) = labelled("nb201/cifar10", 20);
        let tc = TrainConfig {
            batch_size: 4,
            lr: 1e-2,
            seed: 7,
            ..TrainConfig::default()
        };
        let sel = EpochSelection {
            folds: 4,
            candidates,
            wise: None,
        };
        (base, data, hib, tc, sel)
    }

    #[test]
    fn picks_a_candidate_by_out_of_fold_rank_and_leaves_the_base_alone() {
        let (base, data, hib, tc, sel) = setup(vec![10, 0, 3]);
        let before = base.duplicate().unwrap();
        let r = select_epochs(&base, &data, hib, &tc, &[], &sel).unwrap();
        assert_eq!(
            r.scores.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![0, 3, 10]
        );
        let best = r
            .scores
            .iter()
            .map(|s| s.1)
            .fold(f64::NEG_INFINITY, f64::max);
        let chosen = r.scores.iter().find(|s| s.0 == r.epochs).unwrap().1;
        assert_eq!(chosen, best);
        // The first candidate reaching the best score wins.
        assert_eq!(r.epochs, r.scores.iter().find(|s| s.1 == best).unwrap().0);
        // Repeatable, and the base model untouched.
        assert_eq!(select_epochs(&base, &data, hib, &tc, &[], &sel).unwrap(), r);
        let (a, b) = (
            crate::predictor::init::sorted_vars(&base.map),
            crate::predictor::init::sorted_vars(&before.map),
        );
        for ((_, x), (_, y)) in a.iter().zip(&b) {
            let x: Vec<f32> = x.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let y: Vec<f32> = y.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(x, y);
        }
        // Training moves the out-of-fold predictions: the candidates do not all score alike.
        assert!(r.scores.iter().any(|s| s.1 != r.scores[0].1), "{r:?}");
    }

    /// The bagged predictions are the mean over folds of each fold model's prediction through
    /// that fold's scaler; the selection itself is `select_epochs`'.
    #[test]
    fn bagging_averages_the_fold_models_in_task_units() {
        let (base, data, hib, tc, sel) = setup(vec![0, 3]);
        let (extra_data, _) = labelled("nb201/cifar100", 7);
        let extra: Vec<&GraphFeatures> = extra_data.iter().map(|d| &*d.features).collect();
        let gflops: Vec<f64> = extra_data.iter().map(|d| d.gflops).collect();
        let plain = select_epochs(&base, &data, hib, &tc, &[], &sel).unwrap();
        let (r, bag) =
            select_epochs_bagged(&base, &data, hib, &tc, &[], &sel, &extra, &gflops).unwrap();
        assert_eq!(r, plain);
        assert_eq!(bag.len(), 7);
        let (_, none) = select_epochs_bagged(&base, &data, hib, &tc, &[], &sel, &[], &[]).unwrap();
        assert!(none.is_empty());
        assert!(select_epochs_bagged(&base, &data, hib, &tc, &[], &sel, &extra, &[]).is_err());
        // Zero-shot only: every fold model is the base, so the bag is the base's standardised
        // prediction through each fold's scaler, averaged.
        let zs = EpochSelection {
            candidates: vec![0],
            ..sel
        };
        let (_, bag) =
            select_epochs_bagged(&base, &data, hib, &tc, &[], &zs, &extra, &gflops).unwrap();
        let folds = fold_of_each(data.len(), 4, tc.seed);
        let z = predict_batched(base.regressor(), &extra, 64, &base.device).unwrap();
        for (j, got) in bag.iter().enumerate() {
            let mut want = 0.0;
            for f in 0..4 {
                let fit: Vec<&Labelled> = data
                    .iter()
                    .zip(&folds)
                    .filter(|(_, &k)| k != f)
                    .map(|(d, _)| d)
                    .collect();
                let y: Vec<f64> = fit.iter().map(|d| d.value).collect();
                let g: Vec<f64> = fit.iter().map(|d| d.gflops).collect();
                let s = TaskScaler::fit_with(&y, &g, hib, base.flops_scaling()).unwrap();
                want += s.inverse(z[j] as f64, gflops[j]) / 4.0;
            }
            assert!(
                (got - want).abs() < 1e-9 * want.abs().max(1.0),
                "{j}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn folds_are_balanced_seeded_and_shared() {
        let f = fold_of_each(20, 5, 7);
        for k in 0..5 {
            assert_eq!(f.iter().filter(|&&x| x == k).count(), 4);
        }
        assert_eq!(f, fold_of_each(20, 5, 7));
        assert_ne!(f, fold_of_each(20, 5, 8));
        // More folds than networks: one network per fold.
        let mut g = fold_of_each(3, 5, 1);
        g.sort_unstable();
        assert_eq!(g, vec![0, 1, 2]);
    }

    #[test]
    fn refuses_too_few_networks_or_no_candidates() {
        let base = Trained::init(&tiny_config(), 3, &Device::Cpu).unwrap();
        let (data, hib) = labelled("nb201/cifar10", 1);
        let tc = TrainConfig::default();
        let e = select_epochs(&base, &data, hib, &tc, &[], &EpochSelection::default());
        assert!(e.unwrap_err().to_string().contains("at least 2 folds"));
        let (data, hib) = labelled("nb201/cifar10", 6);
        let none = EpochSelection {
            candidates: vec![],
            ..EpochSelection::default()
        };
        assert!(select_epochs(&base, &data, hib, &tc, &[], &none).is_err());
    }
}
