//! Embedding alignment: an unsupervised correction of a pretrained model for a new search space,
//! made from the new space's graphs alone (no label).
//!
//! Why: on a space it never saw, the encoder's pooled graph embeddings sit elsewhere, and spread
//! differently, than those of the pretraining graphs the head was fitted on. Mapping each
//! embedding dimension of the target graphs onto the pretraining's mean (and, in `scale` mode,
//! spread) before the head is the classic first-moment / diagonal second-moment domain
//! alignment (AdaBN, Li et al. 2016; diagonal CORAL, Sun et al. 2016) applied to the readout.
//!
//! Method: `x_j → a_j (x_j − μt_j) + μs_j` with `μs, σs` the mean and population sd of the
//! source (pretraining) embeddings and `μt, σt` those of the target's, `a_j = 1` (`shift`) or
//! `clamp(σs_j / σt_j, 1/8, 8)` (`scale`; a dimension constant on either side keeps `a_j = 1`).
//! The map is folded into the head's first linear layer (`W' = W·diag(a)`, `b' = b + W·(μs −
//! a⊙μt)`), so the aligned model is an ordinary [`Trained`]: fine-tuning, cross-validation,
//! checkpoints and the fast inference path need nothing new.
//!
//! Status: a measurement option of `aiop eval` (`"align": "shift"` or `"scale"` in its config),
//! not part of any default. Validated in session 15 (BENCHMARKS.md): on NB-101 and DARTS as
//! unseen spaces `shift` raised every column (the default blend 0.824 → 0.838) and `scale`
//! lowered the blend (0.791); on NB-201 and TNB-101 micro as unseen spaces `shift` lowered the
//! blend (0.685 → 0.674, a row by 0.039), so neither was adopted. The mixture of pretraining
//! spaces is a poor reference where the target resembles one of them; `nearest` (session 16),
//! which takes the nearest pretraining task's centroid instead, raised every zero-shot column
//! on NB-101 and DARTS but left the blend level (0.824 → 0.824, DARTS −0.011): not adopted.
//!
//! Invariants: a pure function of the model and the two sets of graphs; the aligned model's
//! prediction for a graph whose embedding equals `μt` is the original model's prediction at
//! `μs`; the original model is left untouched; models with K-Adapters are refused (their heads
//! read a different embedding).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::checkpoint::Trained;
use super::data::{load_task, TaskKey};
use super::features::{FeatureConfig, GraphFeatures};
use super::PredictorError;
use crate::rng::Rng;

/// Which moments are matched, and onto which source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlignMode {
    /// Means only, onto the mixture of every pretraining task's graphs.
    Shift,
    /// Means and per-dimension spreads (the spread ratio clamped to [1/8, 8]), onto the mixture.
    Scale,
    /// Means only, onto the one pretraining task whose graphs lie nearest the target's
    /// ([`offset`]; [`nearest`]). Why: where a new space resembles one pretraining space, the
    /// mixture's centre is the wrong reference (session 15's `shift` lowered those rows), while
    /// the nearest task's centre moves such a target little and a far one still onto ground the
    /// head knows.
    Nearest,
}

impl AlignMode {
    /// Whether the source is one moment set per pretraining task (else one for the mixture).
    pub fn per_task(self) -> bool {
        self == AlignMode::Nearest
    }
}

/// The largest spread ratio `scale` applies (and its inverse the smallest).
pub const MAX_RATIO: f64 = 8.0;

/// Per-dimension mean and population sd of a set of graph embeddings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// How many graphs they summarise.
    pub count: usize,
}

impl Moments {
    /// Moments of `rows` (each one embedding); an error when empty or ragged.
    pub fn of(rows: &[Vec<f64>]) -> Result<Moments, PredictorError> {
        let d = rows
            .first()
            .map(Vec::len)
            .ok_or_else(|| PredictorError::Data("moments of no embedding".into()))?;
        if rows.iter().any(|r| r.len() != d) {
            return Err(PredictorError::Data(
                "embeddings of different widths".into(),
            ));
        }
        let n = rows.len() as f64;
        let mut mean = vec![0.0; d];
        for r in rows {
            for (m, x) in mean.iter_mut().zip(r) {
                *m += x / n;
            }
        }
        let mut var = vec![0.0; d];
        for r in rows {
            for ((v, x), m) in var.iter_mut().zip(r).zip(&mean) {
                *v += (x - m) * (x - m) / n;
            }
        }
        Ok(Moments {
            mean,
            std: var.into_iter().map(f64::sqrt).collect(),
            count: rows.len(),
        })
    }
}

/// Networks per pretraining task whose embeddings make the source moments.
pub const SOURCE_PER_TASK: usize = 200;

/// The graphs of the source moments: at most [`SOURCE_PER_TASK`] networks of each task
/// ([`load_task`]'s seeded subsample, seed 0), in task order.
pub fn source_graphs(
    fc: &FeatureConfig,
    tasks: &[TaskKey],
) -> Result<Vec<Arc<GraphFeatures>>, PredictorError> {
    let mut out = Vec::new();
    for &key in tasks {
        let set = load_task(key, fc, Some(SOURCE_PER_TASK), &mut Rng::new(0))?;
        out.extend(set.examples.into_iter().map(|e| e.features));
    }
    Ok(out)
}

/// One pretraining task's source graphs.
pub type TaskGraphs = (TaskKey, Vec<Arc<GraphFeatures>>);

/// The same graphs as [`source_graphs`], kept apart per task.
pub fn source_graphs_by_task(
    fc: &FeatureConfig,
    tasks: &[TaskKey],
) -> Result<Vec<TaskGraphs>, PredictorError> {
    tasks
        .iter()
        .map(|&key| Ok((key, source_graphs(fc, &[key])?)))
        .collect()
}

/// Of several named source moment sets, the one whose centroid lies nearest `target`'s
/// ([`offset`]), with that offset; ties go to the first. An error when there is none.
pub fn nearest<'a, K>(
    sources: &'a [(K, Moments)],
    target: &Moments,
) -> Result<(&'a K, &'a Moments, f64), PredictorError> {
    sources
        .iter()
        .map(|(k, m)| (k, m, offset(m, target)))
        .fold(None, |best: Option<(&K, &Moments, f64)>, c| match best {
            Some(b) if b.2 <= c.2 => Some(b),
            _ => Some(c),
        })
        .ok_or_else(|| PredictorError::Data("alignment without source moments".into()))
}

/// `t`'s embedding moments over `graphs`.
pub fn moments_of(t: &Trained, graphs: &[&GraphFeatures]) -> Result<Moments, PredictorError> {
    Moments::of(&t.embeddings(graphs)?)
}

/// How far `target`'s centroid lies from `source`'s, in `source` standard deviations: the
/// root mean square over dimensions of `(μt − μs) / σs` (a dimension constant in the source is
/// skipped). A diagnostic of how new a space looks to the encoder.
pub fn offset(source: &Moments, target: &Moments) -> f64 {
    let terms: Vec<f64> = source
        .mean
        .iter()
        .zip(&source.std)
        .zip(&target.mean)
        .filter(|((_, s), _)| **s > 1e-12)
        .map(|((ms, s), mt)| ((mt - ms) / s).powi(2))
        .collect();
    if terms.is_empty() {
        return 0.0;
    }
    (terms.iter().sum::<f64>() / terms.len() as f64).sqrt()
}

/// The per-dimension map `x → a ⊙ x + c` taking `target` onto `source`.
pub fn affine(
    source: &Moments,
    target: &Moments,
    mode: AlignMode,
) -> Result<(Vec<f64>, Vec<f64>), PredictorError> {
    if source.mean.len() != target.mean.len() {
        return Err(PredictorError::Data(format!(
            "source embeddings are {} wide, target {}",
            source.mean.len(),
            target.mean.len()
        )));
    }
    let a: Vec<f64> = source
        .std
        .iter()
        .zip(&target.std)
        .map(|(&s, &t)| match mode {
            AlignMode::Shift | AlignMode::Nearest => 1.0,
            AlignMode::Scale if s > 1e-12 && t > 1e-12 => (s / t).clamp(1.0 / MAX_RATIO, MAX_RATIO),
            AlignMode::Scale => 1.0,
        })
        .collect();
    let c: Vec<f64> = a
        .iter()
        .zip(&source.mean)
        .zip(&target.mean)
        .map(|((a, ms), mt)| ms - a * mt)
        .collect();
    Ok((a, c))
}

impl Trained {
    /// A copy whose head reads target embeddings as if they were source ones: [`affine`]
    /// folded into `head.layer0`.
    pub fn aligned(
        &self,
        source: &Moments,
        target: &Moments,
        mode: AlignMode,
    ) -> Result<Trained, PredictorError> {
        if self.adapted.is_some() {
            return Err(PredictorError::Config(
                "embedding alignment of a model with K-Adapters".into(),
            ));
        }
        let (a, c) = affine(source, target, mode)?;
        let t = self.duplicate()?;
        let l0 = &t.model.head.linears()[0];
        let w = l0.weight();
        let b = l0
            .bias()
            .ok_or_else(|| PredictorError::Config("the head's first layer has no bias".into()))?;
        let (out_dim, in_dim) = w.dims2()?;
        if in_dim != a.len() {
            return Err(PredictorError::Data(format!(
                "the head reads {in_dim} dims, the embeddings have {}",
                a.len()
            )));
        }
        let dev = w.device();
        let wv: Vec<Vec<f32>> = w.to_dtype(DType::F32)?.to_vec2()?;
        let bv: Vec<f32> = b.to_dtype(DType::F32)?.to_vec1()?;
        let mut new_w = Vec::with_capacity(out_dim * in_dim);
        let mut new_b = Vec::with_capacity(out_dim);
        for (row, bias) in wv.iter().zip(&bv) {
            new_w.extend(row.iter().zip(&a).map(|(&w, &a)| (w as f64 * a) as f32));
            let shift: f64 = row.iter().zip(&c).map(|(&w, &c)| w as f64 * c).sum();
            new_b.push((*bias as f64 + shift) as f32);
        }
        let vars = t.map.data().lock().expect("var map lock");
        let set = |name: &str, v: Tensor| -> Result<(), PredictorError> {
            let var = vars
                .get(name)
                .ok_or_else(|| PredictorError::Data(format!("the model has no variable {name}")))?;
            var.set(&v.to_dtype(var.dtype())?)?;
            Ok(())
        };
        set(
            "head.layer0.weight",
            Tensor::from_vec(new_w, (out_dim, in_dim), dev)?,
        )?;
        set("head.layer0.bias", Tensor::from_vec(new_b, out_dim, dev)?)?;
        drop(vars);
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::features::extract;
    use crate::predictor::features::tests::small_graph;
    use crate::predictor::model::tests::tiny_config;
    use crate::predictor::model::Regressor;
    use candle_core::Device;

    /// The tiny model with a smooth head (a ReLU head this small can be constant).
    fn config() -> crate::predictor::model::Config {
        crate::predictor::model::Config {
            head_activation: crate::predictor::gnn::Activation::Tanh,
            ..tiny_config()
        }
    }

    fn graphs() -> Vec<GraphFeatures> {
        let c = config().features();
        let mut out = vec![extract(&small_graph(), &c)];
        for (ch, k) in [(4, 3), (8, 1), (6, 5)] {
            let mut b = crate::graph::GraphBuilder::new();
            let x = b.input(3, 8, 8).unwrap();
            let y = b
                .conv(x, crate::graph::builder::Conv::new(ch, k).bias(true))
                .unwrap();
            b.output(y).unwrap();
            out.push(extract(&b.finish(), &c));
        }
        out
    }

    #[test]
    fn moments_are_mean_and_population_sd() {
        let m = Moments::of(&[vec![1.0, 5.0], vec![3.0, 5.0]]).unwrap();
        assert_eq!(m.mean, vec![2.0, 5.0]);
        assert_eq!(m.std, vec![1.0, 0.0]);
        assert_eq!(m.count, 2);
        assert!(Moments::of(&[]).is_err());
        // Offset: dim 0 is 1 source sd away, dim 1 (constant in the source) is skipped.
        let t = Moments::of(&[vec![3.0, 9.0], vec![3.0, 9.0]]).unwrap();
        assert!((offset(&m, &t) - 1.0).abs() < 1e-12);
        assert_eq!(offset(&m, &m), 0.0);
        assert!(Moments::of(&[vec![1.0], vec![1.0, 2.0]]).is_err());
    }

    #[test]
    fn nearest_picks_the_smallest_offset_and_the_first_of_a_tie() {
        let m = |mean: f64, std: f64| Moments {
            mean: vec![mean, 0.0],
            std: vec![std, 1.0],
            count: 5,
        };
        let target = m(3.0, 1.0);
        // Offsets from the target: a 3 / √2, b (wide) 0.5 / √2, c 0.
        let sources = vec![("a", m(0.0, 1.0)), ("b", m(1.0, 4.0)), ("c", m(3.0, 0.5))];
        let (k, s, off) = nearest(&sources, &target).unwrap();
        assert_eq!((*k, off), ("c", 0.0));
        assert_eq!(s, &sources[2].1);
        let (k, _, off) = nearest(&sources[..2], &target).unwrap();
        assert_eq!(*k, "b");
        assert!((off - 0.5 / 2f64.sqrt()).abs() < 1e-12);
        let tie = vec![("x", m(2.0, 1.0)), ("y", m(4.0, 1.0))];
        assert_eq!(*nearest(&tie, &target).unwrap().0, "x");
        let none: Vec<(&str, Moments)> = Vec::new();
        assert!(nearest(&none, &target).is_err());
        // Nearest shifts like `shift`: no rescaling.
        let (a, _) = affine(&sources[1].1, &target, AlignMode::Nearest).unwrap();
        assert_eq!(a, vec![1.0, 1.0]);
        assert!(AlignMode::Nearest.per_task() && !AlignMode::Shift.per_task());
    }

    #[test]
    fn affine_maps_target_moments_onto_source_within_the_clamp() {
        let s = Moments {
            mean: vec![1.0, 0.0, 2.0],
            std: vec![2.0, 1.0, 0.0],
            count: 3,
        };
        let t = Moments {
            mean: vec![0.0, 1.0, 1.0],
            std: vec![1.0, 100.0, 1.0],
            count: 3,
        };
        let (a, c) = affine(&s, &t, AlignMode::Scale).unwrap();
        // Dim 0: a = 2, μt ↦ μs. Dim 1: ratio 0.01 clamped to 1/8. Dim 2: constant source.
        assert_eq!(a, vec![2.0, 1.0 / MAX_RATIO, 1.0]);
        for j in 0..3 {
            assert!((a[j] * t.mean[j] + c[j] - s.mean[j]).abs() < 1e-12);
        }
        let (a, c) = affine(&s, &t, AlignMode::Shift).unwrap();
        assert_eq!(a, vec![1.0; 3]);
        assert_eq!(c, vec![1.0, -1.0, 1.0]);
        let narrow = Moments {
            mean: vec![0.0],
            std: vec![1.0],
            count: 1,
        };
        assert!(affine(&s, &narrow, AlignMode::Shift).is_err());
    }

    /// The folded model predicts, for every graph, what the original head predicts on the
    /// mapped embedding; the original is untouched.
    #[test]
    fn folding_into_the_head_equals_mapping_the_embedding() {
        let dev = Device::Cpu;
        let t = Trained::init(&config(), 7, &dev).unwrap();
        let gs = graphs();
        let refs: Vec<&GraphFeatures> = gs.iter().collect();
        let emb = t.embeddings(&refs).unwrap();
        let target = Moments::of(&emb).unwrap();
        let source = Moments {
            mean: target.mean.iter().map(|m| m + 0.3).collect(),
            std: target.std.iter().map(|s| s * 1.7).collect(),
            count: 10,
        };
        let before = t.model.infer(&refs, &dev).unwrap();
        for mode in [AlignMode::Shift, AlignMode::Scale] {
            let al = t.aligned(&source, &target, mode).unwrap();
            let (a, c) = affine(&source, &target, mode).unwrap();
            let got = al.model.infer(&refs, &dev).unwrap();
            let mapped: Vec<f32> = emb
                .iter()
                .flat_map(|e| {
                    e.iter()
                        .zip(&a)
                        .zip(&c)
                        .map(|((x, a), c)| (a * x + c) as f32)
                })
                .collect();
            let x = Tensor::from_vec(mapped, (emb.len(), a.len()), &dev).unwrap();
            let want: Vec<f32> = t.model.head.forward(&x).unwrap().to_vec1().unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "{mode:?}: {g} vs {w}");
            }
            assert!(got.iter().zip(&before).any(|(g, b)| (g - b).abs() > 1e-4));
        }
        assert_eq!(t.model.infer(&refs, &dev).unwrap(), before);
        // Aligning a space onto itself changes nothing.
        let same = t.aligned(&target, &target, AlignMode::Scale).unwrap();
        let got = same.model.infer(&refs, &dev).unwrap();
        for (g, b) in got.iter().zip(&before) {
            assert!((g - b).abs() < 1e-5);
        }
    }
}
