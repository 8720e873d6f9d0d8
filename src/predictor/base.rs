//! Base predictions: what aiop answers for a pretraining task when no task model is named
//! (`aiop predict --space S --task T`, `aiop search` without `--tuned`, the daemon's
//! `/v1/predict` and searches on the base model).
//!
//! The shipped pair is the AIO-P model (Eq. 5 labels) and its no-transform companion (plain
//! z-scores), pretrained on the same networks. On networks neither saw, the two rank a task
//! differently well, and AIO-P's units carry Eq. 5's FLOPs factor, so its predictions of big
//! networks overshoot (TNB-101 macro segmentsemantic: 121 for a network measured at 94.1).
//! A [`BaseSelection`] names, per task, the member that ranks better on a seeded sample of the
//! task's networks that neither pretraining drew, and a calibration of that member to the task's
//! units fitted on the same networks ([`Calibration`]: `a + b·p` with `b > 0`, or the identity).
//!
//! Invariants: the selection is fitted only on networks outside both pretrainings' draws (checked:
//! the draws are recomputed from the pretraining configs and must reproduce both checkpoints'
//! data hashes); it applies only to the pair it was fitted for (both fingerprints are stored and
//! checked when it is attached); a calibration never changes the order of a member's
//! predictions; a task without a selection is predicted by the AIO-P model, as before.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::calibrate::Calibration;
use super::checkpoint::Trained;
use super::data::{prepare, TaskKey};
use super::features::GraphFeatures;
use super::pretrain::{drawn_hash, drawn_rows, PretrainConfig};
use super::PredictorError;
use crate::rng::Rng;
use crate::spaces::labels;
use crate::stats::{mae, spearman};

/// One of the shipped pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Member {
    /// The AIO-P model (Eq. 5 labels).
    Aio,
    /// Its companion pretrained on plain z-scores.
    Plain,
}

/// What answers for one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskPick {
    pub member: Member,
    /// From the member's predictions to the task's units.
    pub calibration: Calibration,
    /// Networks the pick and the calibration were fitted on.
    pub fit_networks: usize,
    /// Spearman of each member on them.
    pub fit_spearman_aio: f64,
    pub fit_spearman_plain: f64,
}

/// Per task, the member of the pair that predicts it and its calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSelection {
    /// [`super::checkpoint::fingerprint`] of the AIO-P model and of its companion.
    pub aio_fingerprint: String,
    pub plain_fingerprint: String,
    /// How it was fitted (networks per task, seed).
    pub fit: FitConfig,
    pub tasks: BTreeMap<TaskKey, TaskPick>,
}

/// How a selection is fitted and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FitConfig {
    /// Networks per task to choose and calibrate on.
    pub fit: usize,
    /// Further networks per task to report on (never used to choose).
    pub eval: usize,
    pub seed: u64,
}

impl Default for FitConfig {
    fn default() -> FitConfig {
        FitConfig {
            fit: 500,
            eval: 1000,
            seed: 0,
        }
    }
}

/// Held-out quality of one task ([`fit`]'s report), in task units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseEval {
    pub task: TaskKey,
    pub member: Member,
    pub n: usize,
    pub spearman_aio: f64,
    pub spearman_plain: f64,
    pub spearman_base: f64,
    pub mae_aio: f64,
    pub mae_plain: f64,
    pub mae_base: f64,
}

/// An error unless the two members read the same node features (so one graph build serves
/// both, and the daemon's features serve either).
fn same_features(aio: &Trained, plain: &Trained) -> Result<(), PredictorError> {
    if plain.meta.config.features() != aio.meta.config.features() {
        return Err(PredictorError::Config(
            "the companion reads other node features than the AIO-P model".into(),
        ));
    }
    Ok(())
}

/// Predictions of both members for `key` on `rows` (each graph built once).
fn predict_rows(
    aio: &Trained,
    plain: &Trained,
    key: TaskKey,
    rows: &[&labels::Labelled],
) -> Result<(Vec<f64>, Vec<f64>), PredictorError> {
    let fc = aio.meta.config.features();
    let prepared: Vec<(GraphFeatures, f64)> = rows
        .iter()
        .map(|r| prepare(&r.arch, key.task, &fc))
        .collect::<Result<_, _>>()?;
    let inputs: Vec<(&GraphFeatures, f64)> = prepared.iter().map(|(f, g)| (f, *g)).collect();
    Ok((
        aio.predict(key, &inputs, 1024)?,
        plain.predict(key, &inputs, 1024)?,
    ))
}

/// Fit a selection for the pair (`aio` pretrained by `aio_cfg`, `plain` by `plain_cfg`) on every
/// task both have statistics for, and report each task on `cfg.eval` further networks.
pub fn fit(
    aio: &Trained,
    aio_cfg: &PretrainConfig,
    plain: &Trained,
    plain_cfg: &PretrainConfig,
    cfg: FitConfig,
) -> Result<(BaseSelection, Vec<BaseEval>), PredictorError> {
    if cfg.fit < 4 {
        return Err(PredictorError::Config(
            "a base selection needs at least 4 networks per task to fit on".into(),
        ));
    }
    same_features(aio, plain)?;
    let mut drawn: HashSet<(TaskKey, String)> = HashSet::new();
    for (t, c, name) in [(aio, aio_cfg, "AIO-P"), (plain, plain_cfg, "no-transform")] {
        let d = drawn_rows(c)?;
        let h = drawn_hash(&d);
        if h != t.meta.data_hash {
            return Err(PredictorError::Config(format!(
                "the {name} model's pretraining config does not reproduce its data \
                 (data hash {h}, the checkpoint's {}): give the config it was pretrained with",
                t.meta.data_hash
            )));
        }
        for r in d {
            drawn.extend(
                r.kept
                    .iter()
                    .chain(&r.test)
                    .map(|x| (r.key, x.arch.to_string())),
            );
        }
    }
    let keys: Vec<TaskKey> = aio
        .meta
        .stats
        .keys()
        .filter(|k| plain.meta.stats.contains_key(k))
        .copied()
        .collect();
    let mut rng = Rng::new(cfg.seed ^ 0xba5e_5e1e);
    let mut tasks = BTreeMap::new();
    let mut report = Vec::with_capacity(keys.len());
    for key in keys {
        let mut task_rng = rng.fork();
        let table = labels::load(key.space, key.task)?;
        let mut free: Vec<&labels::Labelled> = table
            .rows
            .iter()
            .filter(|r| !drawn.contains(&(key, r.arch.to_string())))
            .collect();
        task_rng.shuffle(&mut free);
        if free.len() < cfg.fit {
            return Err(PredictorError::Data(format!(
                "{key}: {} networks outside the pretrainings, {} needed to fit on",
                free.len(),
                cfg.fit
            )));
        }
        let (fit_rows, rest) = free.split_at(cfg.fit);
        let eval_rows = &rest[..cfg.eval.min(rest.len())];
        let y: Vec<f64> = fit_rows.iter().map(|r| r.value).collect();
        let (pa, pp) = predict_rows(aio, plain, key, fit_rows)?;
        let (sa, sp) = (spearman(&pa, &y), spearman(&pp, &y));
        // Both predict in the task's units, so the better ranker has the higher Spearman
        // whichever way the metric points. Ties go to AIO-P, the paper's model.
        let member = if sp > sa { Member::Plain } else { Member::Aio };
        let chosen = if member == Member::Aio { &pa } else { &pp };
        let calibration = Calibration::fit(chosen, &y)?;
        tasks.insert(
            key,
            TaskPick {
                member,
                calibration,
                fit_networks: fit_rows.len(),
                fit_spearman_aio: sa,
                fit_spearman_plain: sp,
            },
        );
        if !eval_rows.is_empty() {
            let y: Vec<f64> = eval_rows.iter().map(|r| r.value).collect();
            let (ea, ep) = predict_rows(aio, plain, key, eval_rows)?;
            let raw = if member == Member::Aio { &ea } else { &ep };
            let eb: Vec<f64> = raw.iter().map(|&p| calibration.apply(p)).collect();
            report.push(BaseEval {
                task: key,
                member,
                n: y.len(),
                spearman_aio: spearman(&ea, &y),
                spearman_plain: spearman(&ep, &y),
                spearman_base: spearman(&eb, &y),
                mae_aio: mae(&ea, &y),
                mae_plain: mae(&ep, &y),
                mae_base: mae(&eb, &y),
            });
        }
    }
    Ok((
        BaseSelection {
            aio_fingerprint: super::checkpoint::fingerprint(aio)?,
            plain_fingerprint: super::checkpoint::fingerprint(plain)?,
            fit: cfg,
            tasks,
        },
        report,
    ))
}

/// The base predictor: the AIO-P model, and, when a selection for this pair is attached, its
/// companion and the per-task picks.
pub struct Base {
    pub aio: Trained,
    picks: Option<(Trained, BaseSelection)>,
}

impl Base {
    /// The AIO-P model alone (every task predicted by it, uncalibrated).
    pub fn single(aio: Trained) -> Base {
        Base { aio, picks: None }
    }

    /// The pair with `selection`, which must have been fitted for exactly these two models.
    pub fn with_selection(
        aio: Trained,
        plain: Trained,
        selection: BaseSelection,
    ) -> Result<Base, PredictorError> {
        let (fa, fp) = (
            super::checkpoint::fingerprint(&aio)?,
            super::checkpoint::fingerprint(&plain)?,
        );
        same_features(&aio, &plain)?;
        if fa != selection.aio_fingerprint || fp != selection.plain_fingerprint {
            return Err(PredictorError::Config(format!(
                "the base selection was fitted for models {} / {}, not {fa} / {fp}",
                selection.aio_fingerprint, selection.plain_fingerprint
            )));
        }
        Ok(Base {
            aio,
            picks: Some((plain, selection)),
        })
    }

    /// Every task the base predicts, with the member that answers it (the AIO-P model for a
    /// task its selection does not name, and for every task without a selection).
    pub fn members(&self) -> BTreeMap<TaskKey, Member> {
        self.aio
            .meta
            .stats
            .keys()
            .map(|&k| {
                let m = if self.resolve(k).0.flops_scaling() {
                    Member::Aio
                } else {
                    Member::Plain
                };
                (k, m)
            })
            .collect()
    }

    /// The selection in use, if any.
    pub fn selection(&self) -> Option<&BaseSelection> {
        self.picks.as_ref().map(|(_, s)| s)
    }

    /// The model that predicts `key` and the calibration of its predictions.
    pub fn resolve(&self, key: TaskKey) -> (&Trained, Calibration) {
        match &self.picks {
            Some((plain, sel)) => match sel.tasks.get(&key) {
                Some(p) if p.member == Member::Plain => (plain, p.calibration),
                Some(p) => (&self.aio, p.calibration),
                None => (&self.aio, Calibration::identity()),
            },
            None => (&self.aio, Calibration::identity()),
        }
    }

    /// The features the model that predicts `key` reads; an error when it has no statistics
    /// for `key`.
    pub fn features_for(
        &self,
        key: TaskKey,
    ) -> Result<super::features::FeatureConfig, PredictorError> {
        let (t, _) = self.resolve(key);
        t.scaler(key)?;
        Ok(t.model.config.features())
    }

    /// Predictions in `key`'s units for graphs with their GFLOPs, in input order.
    pub fn predict(
        &self,
        key: TaskKey,
        graphs: &[(&GraphFeatures, f64)],
        batch_size: usize,
    ) -> Result<Vec<f64>, PredictorError> {
        let (t, c) = self.resolve(key);
        Ok(t.predict(key, graphs, batch_size)?
            .into_iter()
            .map(|p| c.apply(p))
            .collect())
    }

    /// A fingerprint of what the base predicts: the AIO-P model's, extended by the companion's
    /// and the selection when one is attached (so cached base predictions of another selection
    /// are never served).
    pub fn fingerprint(&self) -> Result<String, PredictorError> {
        let Some((_, sel)) = &self.picks else {
            return super::checkpoint::fingerprint(&self.aio);
        };
        // The selection's AIO-P fingerprint was checked against the model when it was attached.
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(sel.aio_fingerprint.as_bytes());
        h.update(&serde_json::to_vec(sel).map_err(|e| {
            PredictorError::Config(format!("the base selection does not serialise: {e}"))
        })?);
        Ok(format!("{:032x}", h.digest128()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::shipped;
    use candle_core::Device;

    /// The shipped pretraining configs (as `aiop experiment base` reads them).
    fn configs() -> (PretrainConfig, PretrainConfig) {
        shipped::pretrain_configs().unwrap()
    }

    /// The embedded AIO-P model and its companion.
    fn pair() -> (Trained, Trained) {
        let dev = Device::Cpu;
        (
            shipped::load(&dev).unwrap(),
            shipped::load_plain(&dev).unwrap(),
        )
    }

    #[test]
    fn the_shipped_configs_reproduce_both_models_data() {
        let (ca, cp) = configs();
        let (a, p) = pair();
        assert_eq!(drawn_hash(&drawn_rows(&ca).unwrap()), a.meta.data_hash);
        assert_eq!(drawn_hash(&drawn_rows(&cp).unwrap()), p.meta.data_hash);
        // Another seed draws other networks, and the check notices.
        let mut other = ca.clone();
        other.train.seed += 1;
        assert_ne!(drawn_hash(&drawn_rows(&other).unwrap()), a.meta.data_hash);
        assert!(fit(&a, &other, &p, &cp, FitConfig::default()).is_err());
    }

    #[test]
    fn fit_picks_the_better_ranker_on_its_networks_and_calibration_keeps_the_order() {
        let (ca, cp) = configs();
        let (a, p) = pair();
        let cfg = FitConfig {
            fit: 30,
            eval: 25,
            seed: 3,
        };
        let (sel, report) = fit(&a, &ca, &p, &cp, cfg).unwrap();
        assert_eq!(sel.tasks.len(), a.meta.stats.len());
        assert_eq!(report.len(), sel.tasks.len());
        for (key, pick) in &sel.tasks {
            let want = if pick.fit_spearman_plain > pick.fit_spearman_aio {
                Member::Plain
            } else {
                Member::Aio
            };
            assert_eq!(pick.member, want, "{key}");
            assert!(pick.calibration.b > 0.0, "{key}");
            assert_eq!(pick.fit_networks, 30);
        }
        for r in &report {
            assert_eq!(r.n, 25);
            assert_eq!(r.member, sel.tasks[&r.task].member);
            let raw = match r.member {
                Member::Aio => r.spearman_aio,
                Member::Plain => r.spearman_plain,
            };
            assert!((r.spearman_base - raw).abs() < 1e-12, "{}", r.task);
        }
        // The same seed fits the same selection.
        assert_eq!(fit(&a, &ca, &p, &cp, cfg).unwrap().0, sel);
    }

    #[test]
    fn a_selection_applies_to_its_own_pair_and_resolves_per_task() {
        let dev = Device::Cpu;
        let sel = shipped::selection().unwrap();
        let (a, p) = pair();
        let mut wrong = sel.clone();
        wrong.plain_fingerprint = "0".repeat(32);
        assert!(
            Base::with_selection(a.duplicate().unwrap(), p.duplicate().unwrap(), wrong).is_err()
        );
        let base = Base::with_selection(a, p, sel.clone()).unwrap();
        assert_eq!(base.selection(), Some(&sel));
        for (key, pick) in &sel.tasks {
            let (t, c) = base.resolve(*key);
            assert_eq!(t.flops_scaling(), pick.member == Member::Aio, "{key}");
            assert_eq!(c, pick.calibration);
        }
        let single = Base::single(shipped::load(&dev).unwrap());
        let key = *sel.tasks.keys().next().unwrap();
        assert!(single.resolve(key).0.flops_scaling());
        assert_eq!(
            single.resolve(key).1.form,
            crate::predictor::calibrate::Form::Identity
        );
        assert_ne!(single.fingerprint().unwrap(), base.fingerprint().unwrap());
    }
}
