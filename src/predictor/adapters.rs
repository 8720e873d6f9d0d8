//! K-Adapters (AIO-P's knowledge infusion): a frozen pretrained encoder plus, per adapter task,
//! a stack of GraphConv adapter layers and a new MLP head; the adapters' predictions are
//! averaged.
//!
//! Adapter k, layer i (1-based, one per backbone layer): `h_k,i = act(GraphConv_{2w→w}(
//! [h_backbone,i ‖ h_k,i−1]))` with `h_k,0` the backbone's node embedding; the head reads the
//! concatenation of the mean-pooled (per [`Config::pooling`]) last backbone and last adapter
//! states (`2w`) through widths `head` to 1 (AIO-P: 64→32→32→32→32→1, ReLU).
//! Variables: `adapter{k}.layer{i}.{root,rel}` and `adapter{k}.head.layer{j}`.
//!
//! Invariants: backbone states are detached, so training an adapter neither computes gradients
//! for nor changes the encoder; adapters need an encoder with at least one layer whose node
//! embedding width equals its hidden width (true of the default configuration).

use candle_core::Tensor;
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::batch::Batch;
use super::checkpoint::Trained;
use super::data::TaskKey;
use super::gnn::{pool, Activation, GraphConv};
use super::init::{sorted_vars, var_builder};
use super::model::{Config, Encoder, Head, Regressor};
use super::train::{train, Sample, TrainConfig, TrainReport};
use super::PredictorError;

/// Shape of the adapters (their depth is the encoder's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdapterConfig {
    pub activation: Activation,
    pub head: Vec<usize>,
    pub head_activation: Activation,
}

impl Default for AdapterConfig {
    fn default() -> AdapterConfig {
        AdapterConfig {
            activation: Activation::Tanh,
            head: vec![32, 32, 32, 32],
            head_activation: Activation::Relu,
        }
    }
}

/// What a checkpoint records of its adapters (in the sidecar), enough to rebuild them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptersMeta {
    pub config: AdapterConfig,
    /// The task each adapter was trained on, adapter `k` at index `k`.
    pub tasks: Vec<TaskKey>,
}

/// Most adapters a model may have.
pub const MAX_ADAPTERS: usize = 1024;

/// One adapter: layers and head.
#[derive(Debug, Clone)]
pub struct Adapter {
    layers: Vec<GraphConv>,
    head: Head,
    activation: Activation,
}

impl Adapter {
    pub fn new(
        base: &Config,
        c: &AdapterConfig,
        vb: VarBuilder,
    ) -> Result<Adapter, PredictorError> {
        if base.layers == 0 || base.embed_dim() != base.hidden {
            return Err(PredictorError::Config(
                "adapters need an encoder with layers and embedding width = hidden width".into(),
            ));
        }
        let w = base.hidden;
        let layers = (0..base.layers)
            .map(|i| GraphConv::new(2 * w, w, vb.pp(format!("layer{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let head = Head::new(2 * w, &c.head, c.head_activation, vb.pp("head"))?;
        Ok(Adapter {
            layers,
            head,
            activation: c.activation,
        })
    }

    /// Prediction `[G]` from the backbone's (detached) node states.
    fn forward(&self, states: &[Tensor], b: &Batch, enc: &Encoder) -> candle_core::Result<Tensor> {
        let mut h = states[0].clone();
        for (i, l) in self.layers.iter().enumerate() {
            let x = Tensor::cat(&[&states[i + 1], &h], 1)?;
            h = l.forward_act(&x, b, self.activation)?;
        }
        let last = states.last().expect("states");
        let g = Tensor::cat(&[pool(last, b, enc.pooling)?, pool(&h, b, enc.pooling)?], 1)?;
        self.head.forward(&g)
    }
}

/// A frozen encoder with adapters; predicts the mean of its adapters' predictions.
#[derive(Debug, Clone)]
pub struct Adapted {
    pub encoder: Encoder,
    pub adapters: Vec<Adapter>,
}

impl Adapted {
    /// The backbone's node states, detached from the variables.
    pub fn backbone(&self, b: &Batch) -> candle_core::Result<Vec<Tensor>> {
        Ok(self
            .encoder
            .node_states(b)?
            .into_iter()
            .map(|t| t.detach())
            .collect())
    }

    /// One adapter's prediction, as a [`Regressor`] (what trains that adapter).
    pub fn only(&self, k: usize) -> OneAdapter<'_> {
        OneAdapter { model: self, k }
    }
}

impl Regressor for Adapted {
    fn predict(&self, b: &Batch) -> candle_core::Result<Tensor> {
        let states = self.backbone(b)?;
        let mut sum: Option<Tensor> = None;
        for a in &self.adapters {
            let y = a.forward(&states, b, &self.encoder)?;
            sum = Some(match sum {
                None => y,
                Some(s) => (s + y)?,
            });
        }
        match sum {
            Some(s) => s / self.adapters.len() as f64,
            None => candle_core::bail!("no adapters"),
        }
    }
}

/// Build adapters `0..n` over `map` (new variables drawn from `seed`, existing ones reused).
pub fn build(
    encoder: &Encoder,
    base: &Config,
    c: &AdapterConfig,
    n: usize,
    map: &VarMap,
    seed: u64,
) -> Result<Adapted, PredictorError> {
    // Bounded before anything is allocated (a loaded sidecar may say anything).
    super::model::check_head("adapters.config.head", &c.head)?;
    if n > MAX_ADAPTERS {
        return Err(PredictorError::Config(format!(
            "adapters: {n} is over the limit of {MAX_ADAPTERS}"
        )));
    }
    let dev = encoder.embed_device();
    let adapters = (0..n)
        .map(|k| {
            let vb = var_builder(map, seed.wrapping_add(k as u64), &dev);
            Adapter::new(base, c, vb.pp(format!("adapter{k}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Adapted {
        encoder: encoder.clone(),
        adapters,
    })
}

/// Add one adapter per task to a pretrained model and train each on its task's samples
/// (standardised targets), the encoder frozen. Afterwards `t` predicts with the adapters'
/// average and records them in its sidecar. Replaces adapters it already had.
pub fn train_adapters(
    t: &mut Trained,
    tasks: &[(TaskKey, Vec<Sample>)],
    c: &AdapterConfig,
    tc: &TrainConfig,
    quiet: bool,
) -> Result<Vec<TrainReport>, PredictorError> {
    if tasks.is_empty() {
        return Err(PredictorError::Config("no adapter tasks".into()));
    }
    if t.adapted.is_some() {
        // Drop the old adapters' variables so the new ones start from the seed.
        t.map
            .data()
            .lock()
            .expect("VarMap lock poisoned")
            .retain(|name, _| !name.starts_with("adapter"));
    }
    let model = build(
        &t.model.encoder,
        &t.model.config,
        c,
        tasks.len(),
        &t.map,
        tc.seed,
    )?;
    let mut reports = Vec::with_capacity(tasks.len());
    for (k, (_, samples)) in tasks.iter().enumerate() {
        let prefix = format!("adapter{k}.");
        let vars: Vec<_> = sorted_vars(&t.map)
            .into_iter()
            .filter(|(n, _)| n.starts_with(&prefix))
            .collect();
        reports.push(train(&model.only(k), &vars, samples, tc, quiet, &t.device)?);
    }
    t.adapted = Some(model);
    t.meta.adapters = Some(AdaptersMeta {
        config: c.clone(),
        tasks: tasks.iter().map(|(k, _)| *k).collect(),
    });
    Ok(reports)
}

/// A view of one adapter of an [`Adapted`] model.
pub struct OneAdapter<'a> {
    model: &'a Adapted,
    k: usize,
}

impl Regressor for OneAdapter<'_> {
    fn predict(&self, b: &Batch) -> candle_core::Result<Tensor> {
        let states = self.model.backbone(b)?;
        self.model.adapters[self.k].forward(&states, b, &self.model.encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::batch::Batch;
    use crate::predictor::features::extract;
    use crate::predictor::features::tests::small_graph;
    use crate::predictor::model::Predictor;
    use candle_core::Device;

    #[test]
    fn adapters_average_and_leave_the_encoder_without_gradients() {
        let dev = Device::Cpu;
        let cfg = Config {
            layers: 2,
            ..Config::default()
        };
        let map = VarMap::new();
        let vb = var_builder(&map, 4, &dev);
        let p = Predictor::new(&cfg, vb.clone()).unwrap();
        let ac = AdapterConfig::default();
        let adapters = (0..2)
            .map(|k| Adapter::new(&cfg, &ac, vb.pp(format!("adapter{k}"))).unwrap())
            .collect();
        let m = Adapted {
            encoder: p.encoder.clone(),
            adapters,
        };
        let f = extract(&small_graph(), &cfg.features());
        let b = Batch::pack(&[&f, &f], &dev).unwrap();
        let y: Vec<f32> = m.predict(&b).unwrap().to_vec1().unwrap();
        let y0: Vec<f32> = m.only(0).predict(&b).unwrap().to_vec1().unwrap();
        let y1: Vec<f32> = m.only(1).predict(&b).unwrap().to_vec1().unwrap();
        assert!(((y0[0] + y1[0]) / 2.0 - y[0]).abs() < 1e-6);
        let loss = m.only(0).predict(&b).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let data = map.data().lock().unwrap();
        for (name, v) in data.iter() {
            let has = grads.get(v.as_tensor()).is_some();
            assert_eq!(has, name.starts_with("adapter0."), "{name}");
        }
    }

    #[test]
    fn trained_adapters_save_load_and_keep_the_encoder() {
        use crate::predictor::checkpoint::Trained;
        use crate::predictor::data::load_task;
        use crate::rng::Rng;
        use std::collections::BTreeMap;
        let dev = Device::Cpu;
        let cfg = Config {
            layers: 2,
            ..Config::default()
        };
        let mut t = Trained::init(&cfg, 5, &dev).unwrap();
        let fc = cfg.features();
        let mut tasks = Vec::new();
        let mut stats = BTreeMap::new();
        for name in ["nb201/cifar10", "nb201/cifar100"] {
            let key: TaskKey = name.parse().unwrap();
            let set = load_task(key, &fc, Some(12), &mut Rng::new(1)).unwrap();
            let y: Vec<f64> = set.examples.iter().map(|e| e.value).collect();
            let f: Vec<f64> = set.examples.iter().map(|e| e.gflops).collect();
            let s = crate::predictor::transform::TaskScaler::fit(&y, &f, true).unwrap();
            stats.insert(key, s);
            let samples = set.examples.iter().map(|e| e.sample(&s)).collect();
            tasks.push((key, samples));
        }
        t.meta.stats = stats;
        let enc = |t: &Trained| -> Vec<Vec<f32>> {
            sorted_vars(&t.map)
                .into_iter()
                .filter(|(n, _)| !n.starts_with("adapter"))
                .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
                .collect()
        };
        let before = enc(&t);
        let tc = TrainConfig {
            epochs: 2,
            batch_size: 4,
            dev_fraction: 0.0,
            ..TrainConfig::default()
        };
        let r = train_adapters(&mut t, &tasks, &AdapterConfig::default(), &tc, true).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(enc(&t), before, "the encoder is frozen");
        let key = tasks[0].0;
        let inputs: Vec<_> = tasks[0].1.iter().map(|s| (&*s.features, 0.1)).collect();
        let p1 = t.predict(key, &inputs, 4).unwrap();
        let dir = tempfile::tempdir().unwrap();
        t.save(dir.path()).unwrap();
        let back = Trained::load(dir.path(), &dev).unwrap();
        assert_eq!(back.meta.adapters, t.meta.adapters);
        assert_eq!(back.predict(key, &inputs, 4).unwrap(), p1);
    }
}
