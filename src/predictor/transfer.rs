//! Transfer of a pretrained predictor to a target task with a few labelled networks (AIO-P:
//! 20): zero-shot (the samples only set the task's μ/σ) or fine-tuning (then also train on
//! them, by default 100 epochs at batch 1, Adam lr 1e-4, the trainable variables chosen by name
//! prefix), evaluated on the target's other labelled networks.
//!
//! Invariants: the fitting samples are a seeded choice and never part of the evaluation; zero-shot
//! changes no weight, only the target's statistics in the model's sidecar; fine-tuning changes
//! only variables whose names start with one of `trainable`.

use serde::{Deserialize, Serialize};

use super::checkpoint::Trained;
use super::data::{split, Example, TaskKey};
use super::pretrain::{evaluate, TaskEval};
use super::train::{train, Sample, TrainConfig, TrainReport};
use super::transform::TaskScaler;
use super::PredictorError;
use crate::rng::Rng;

/// How to transfer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransferConfig {
    /// Labelled target networks used (for μ/σ, and for fine-tuning).
    pub samples: usize,
    /// Fine-tune on the samples (else zero-shot).
    pub fine_tune: bool,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Name prefixes of the variables fine-tuning trains (`embed.`, `gnn.`, `head.`).
    pub trainable: Vec<String>,
    pub seed: u64,
}

impl Default for TransferConfig {
    fn default() -> TransferConfig {
        TransferConfig {
            samples: 20,
            fine_tune: false,
            epochs: 100,
            batch_size: 1,
            lr: 1e-4,
            trainable: super::checkpoint::VARIABLE_PARTS.map(String::from).into(),
            seed: 0,
        }
    }
}

/// What a transfer did and how well the result ranks the target's other networks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferReport {
    pub target: TaskKey,
    pub samples: usize,
    pub scaler: TaskScaler,
    pub fine_tune: Option<TrainReport>,
    /// On the labelled networks not among the samples (None when there are none).
    pub eval: Option<TaskEval>,
}

/// Transfer `t` to `key` using `labelled` networks of that task.
pub fn transfer(
    t: &mut Trained,
    key: TaskKey,
    higher_is_better: bool,
    labelled: Vec<Example>,
    cfg: &TransferConfig,
    quiet: bool,
) -> Result<TransferReport, PredictorError> {
    if cfg.samples == 0 || labelled.len() < cfg.samples {
        return Err(PredictorError::Data(format!(
            "transfer needs {} labelled networks of {key}, got {}",
            cfg.samples,
            labelled.len()
        )));
    }
    let mut rng = Rng::new(cfg.seed ^ 0x7a45_f3e5);
    let frac = cfg.samples as f64 / labelled.len() as f64;
    let (rest, fit) = if cfg.samples == labelled.len() {
        (Vec::new(), labelled)
    } else {
        split(labelled, frac, &mut rng)
    };
    debug_assert_eq!(fit.len(), cfg.samples);
    let y: Vec<f64> = fit.iter().map(|e| e.value).collect();
    let f: Vec<f64> = fit.iter().map(|e| e.gflops).collect();
    let scaler = TaskScaler::fit_with(&y, &f, higher_is_better, t.flops_scaling())?;
    t.meta.stats.insert(key, scaler);

    let fine_tune = if cfg.fine_tune {
        let samples: Vec<Sample> = fit.iter().map(|e| e.sample(&scaler)).collect();
        let vars = t.trainable_vars(&cfg.trainable)?;
        let tc = TrainConfig {
            epochs: cfg.epochs,
            batch_size: cfg.batch_size,
            lr: cfg.lr,
            dev_fraction: 0.0,
            seed: cfg.seed,
            ..TrainConfig::default()
        };
        Some(train(
            t.regressor(),
            &vars,
            &samples,
            &tc,
            quiet,
            &t.device,
        )?)
    } else {
        None
    };
    let eval = if rest.is_empty() {
        None
    } else {
        Some(evaluate(t, key, &rest, 256)?)
    };
    Ok(TransferReport {
        target: key,
        samples: fit.len(),
        scaler,
        fine_tune,
        eval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::data::load_task;
    use crate::predictor::init::sorted_vars;
    use crate::predictor::model::tests::tiny_config;
    use candle_core::Device;

    #[test]
    fn zero_shot_sets_statistics_only_and_fine_tune_respects_prefixes() {
        let dev = Device::Cpu;
        let mut t = Trained::init(&tiny_config(), 2, &dev).unwrap();
        let key: TaskKey = "nb201/cifar100".parse().unwrap();
        let set = load_task(key, &t.model.config.features(), Some(30), &mut Rng::new(3)).unwrap();
        let weights = |t: &Trained| -> Vec<(String, Vec<f32>)> {
            sorted_vars(&t.map)
                .into_iter()
                .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
                .collect()
        };
        let w0 = weights(&t);
        let cfg = TransferConfig::default();
        let r = transfer(&mut t, key, true, set.examples.clone(), &cfg, true).unwrap();
        assert_eq!(r.samples, 20);
        assert_eq!(r.eval.as_ref().unwrap().n, 10);
        assert!(t.meta.stats.contains_key(&key));
        assert_eq!(weights(&t), w0, "zero-shot changes no weight");

        let cfg = TransferConfig {
            fine_tune: true,
            epochs: 2,
            trainable: vec!["head.".into()],
            ..TransferConfig::default()
        };
        let r = transfer(&mut t, key, true, set.examples, &cfg, true).unwrap();
        assert_eq!(r.fine_tune.unwrap().epochs.len(), 2);
        for ((n, a), (_, b)) in w0.iter().zip(weights(&t)) {
            assert_eq!(n.starts_with("head."), *a != b, "{n}");
        }
    }
}
