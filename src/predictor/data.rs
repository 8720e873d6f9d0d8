//! Training data from the shipped label tables: (space, task) keys, labelled examples with their
//! graph features and GFLOPs built once, seeded subsampling and splits, and a hash that
//! identifies the data a model was trained on.
//!
//! Invariants: an [`Example`]'s features and GFLOPs are those of the graph its architecture
//! builds for the example's task; examples keep the label table's order unless a seeded
//! subsample or split reorders them; [`data_hash`] depends on keys, architecture strings and
//! label bits only, in order.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::features::{extract, FeatureConfig, GraphFeatures};
use super::train::Sample;
use super::transform::{gflops, TaskScaler};
use super::PredictorError;
use crate::rng::Rng;
use crate::spaces::{labels, Arch, SpaceId, Task};

/// A (space, task) pair: a label distribution of its own, with its own statistics. Spelt
/// `space/task`, e.g. `nb201/cifar10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskKey {
    pub space: SpaceId,
    pub task: Task,
}

impl TaskKey {
    pub fn new(space: SpaceId, task: Task) -> TaskKey {
        TaskKey { space, task }
    }

    /// Every task of a space.
    pub fn all_of(space: SpaceId) -> Vec<TaskKey> {
        space
            .tasks()
            .iter()
            .map(|&t| TaskKey::new(space, t))
            .collect()
    }
}

impl std::fmt::Display for TaskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.space, self.task)
    }
}

impl std::str::FromStr for TaskKey {
    type Err = PredictorError;
    fn from_str(s: &str) -> Result<TaskKey, PredictorError> {
        let (sp, t) = s.split_once('/').ok_or_else(|| {
            PredictorError::Data(format!("task key '{s}' is not of the form space/task"))
        })?;
        let space = SpaceId::from_name(sp)?;
        let task = space.task(t)?;
        Ok(TaskKey { space, task })
    }
}

impl Serialize for TaskKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TaskKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TaskKey, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One labelled network, ready for training.
#[derive(Debug, Clone)]
pub struct Example {
    pub arch: Arch,
    pub features: Arc<GraphFeatures>,
    pub gflops: f64,
    /// The label in the task's units.
    pub value: f64,
}

impl Example {
    /// A training sample: its features and its label standardised by `s`.
    pub fn sample(&self, s: &TaskScaler) -> Sample {
        Sample {
            features: self.features.clone(),
            target: s.forward(self.value, self.gflops) as f32,
            units: Some((*s, self.gflops)),
        }
    }
}

/// Labelled examples of one task.
#[derive(Debug, Clone)]
pub struct TaskSet {
    pub key: TaskKey,
    pub higher_is_better: bool,
    pub examples: Vec<Example>,
}

/// Build the graph of `arch` for `task` and extract its features and GFLOPs.
pub fn prepare(
    arch: &Arch,
    task: Task,
    fc: &FeatureConfig,
) -> Result<(GraphFeatures, f64), PredictorError> {
    let g = arch.build(task)?;
    Ok((extract(&g, fc), gflops(&g)))
}

/// Load the labels of `key`, keep `limit` of them (a seeded uniform subsample) or all, and
/// build their examples.
pub fn load_task(
    key: TaskKey,
    fc: &FeatureConfig,
    limit: Option<usize>,
    rng: &mut Rng,
) -> Result<TaskSet, PredictorError> {
    let (rows, higher_is_better) = sample_rows(key, limit, rng)?;
    Ok(TaskSet {
        key,
        higher_is_better,
        examples: examples(key.task, rows, fc)?,
    })
}

/// The examples of labelled `rows` of `task`: each graph built and featurised, in order.
pub fn examples(
    task: Task,
    rows: Vec<labels::Labelled>,
    fc: &FeatureConfig,
) -> Result<Vec<Example>, PredictorError> {
    rows.into_iter()
        .map(|r| {
            let (f, gf) = prepare(&r.arch, task, fc)?;
            Ok(Example {
                arch: r.arch,
                features: Arc::new(f),
                gflops: gf,
                value: r.value,
            })
        })
        .collect()
}

/// The labelled rows [`load_task`] keeps for the same arguments (the same seeded subsample, in
/// the same order), without building their graphs; and whether higher is better.
pub fn sample_rows(
    key: TaskKey,
    limit: Option<usize>,
    rng: &mut Rng,
) -> Result<(Vec<labels::Labelled>, bool), PredictorError> {
    let table = labels::load(key.space, key.task)?;
    let mut rows = table.rows;
    if let Some(n) = limit {
        if n < rows.len() {
            rng.shuffle(&mut rows);
            rows.truncate(n);
        }
    }
    Ok((rows, table.higher_is_better))
}

/// Split off a seeded `fraction` of the examples (rounded, at least one when the fraction is
/// positive and there are two or more): returns (kept, held out).
pub fn split<T>(examples: Vec<T>, fraction: f64, rng: &mut Rng) -> (Vec<T>, Vec<T>) {
    let n = examples.len();
    let k = if fraction > 0.0 && n >= 2 {
        ((n as f64 * fraction).round() as usize).clamp(1, n - 1)
    } else {
        0
    };
    let mut idx: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut idx);
    let mut held = vec![false; n];
    for &i in &idx[..k] {
        held[i] = true;
    }
    let (mut kept, mut out) = (Vec::with_capacity(n - k), Vec::with_capacity(k));
    for (e, h) in examples.into_iter().zip(held) {
        if h {
            out.push(e);
        } else {
            kept.push(e);
        }
    }
    (kept, out)
}

/// A hex hash of the training data: task keys, architecture strings and label bits, in order.
pub fn data_hash<'a>(sets: impl IntoIterator<Item = (TaskKey, &'a [Example])>) -> String {
    data_hash_of(
        sets.into_iter()
            .map(|(k, ex)| (k, ex.iter().map(|e| (&e.arch, e.value)).collect())),
    )
}

/// [`data_hash`] of (architecture, label) pairs per task.
pub fn data_hash_of<'a>(sets: impl IntoIterator<Item = (TaskKey, Vec<(&'a Arch, f64)>)>) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (key, rows) in sets {
        h.update(key.to_string().as_bytes());
        h.update(&[0]);
        for (arch, value) in rows {
            h.update(arch.to_string().as_bytes());
            h.update(&[0]);
            h.update(&value.to_bits().to_le_bytes());
        }
    }
    format!("{:032x}", h.digest128())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::model::Config;

    #[test]
    fn task_keys_round_trip() {
        let k: TaskKey = "nb201/ImageNet16-120".parse().unwrap();
        assert_eq!(k, TaskKey::new(SpaceId::Nb201, Task::ImageNet16_120));
        assert_eq!(k.to_string(), "nb201/ImageNet16-120");
        let j = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<TaskKey>(&j).unwrap(), k);
        assert!("nb201/jigsaw".parse::<TaskKey>().is_err());
        assert!("nb201".parse::<TaskKey>().is_err());
    }

    #[test]
    fn subsample_split_and_hash_are_seeded() {
        let fc = Config::default().features();
        let key = TaskKey::new(SpaceId::Nb201, Task::Cifar10);
        let a = load_task(key, &fc, Some(10), &mut Rng::new(1)).unwrap();
        let b = load_task(key, &fc, Some(10), &mut Rng::new(1)).unwrap();
        assert_eq!(a.examples.len(), 10);
        assert!(a.examples.iter().all(|e| e.gflops > 0.0));
        let ha = data_hash([(key, &a.examples[..])]);
        assert_eq!(ha, data_hash([(key, &b.examples[..])]));
        let (kept, held) = split(a.examples.clone(), 0.2, &mut Rng::new(2));
        assert_eq!((kept.len(), held.len()), (8, 2));
        assert_ne!(ha, data_hash([(key, &kept[..])]));
    }
}
