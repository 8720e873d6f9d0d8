//! The AIO-P predictor network: node embedding → k-GNN encoder → pooling → MLP head, one scalar
//! (a standardised, FLOPs-scaled label) per graph.
//!
//! Node embedding (defaults of [`Config`]): unweighted nodes get `op embedding (24) ‖ linear(6→8)
//! of the resolution vector`; weighted nodes `op embedding (14, a separate table) ‖ the same
//! resolution map (8) ‖ kernel embedding(kh) (4) ‖ kernel embedding(kw) (4, the same table) ‖
//! linear(2→2) of the one-hot bias flag` — 32 dims either way. Then `layers` [`GraphConv`]s of
//! width `hidden` each followed by `activation`, pooling, and the head: linear layers through the
//! widths of `head` to 1, `head_activation` between them (defaults 32→32→32→32→32→1, ReLU).
//!
//! Variable names (stable, they key the safetensors file): `embed.op`, `embed.w_op`, `embed.res`,
//! `embed.kernel`, `embed.bias`, `gnn.layer{i}.{root,rel}`, `head.layer{i}`.
//! Invariants: both embedding branches have the same width ([`Config::validate`]); the encoder
//! and head are separate values so a frozen encoder can feed new heads (K-Adapters).
//! On the CPU the embedding, each layer with its activation, and pooling are fused ops
//! ([`super::ops`]), and [`Regressor::infer`] of a [`Predictor`] runs without candle
//! ([`super::fast`]); both compute the function of the generic candle path (kept for other
//! devices) to float rounding.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::batch::Batch;
use super::fast::{EmbedDims, FastPredictor};
use super::features::{FeatureConfig, GraphFeatures, Normalisers, RES_DIMS};
use super::gnn::{pool, Activation, GraphConv, Pooling};
use super::init::{embedding, linear};
use super::ops;
use super::PredictorError;

/// Largest width of an embedding, the GNN or a head layer ([`Config::validate`]).
pub const MAX_WIDTH: usize = 4096;
/// Largest op or kernel-size vocabulary.
pub const MAX_VOCAB: usize = 4096;
/// Most GraphConv layers, and most head layers.
pub const MAX_LAYERS: usize = 64;

/// The architecture of the predictor. Serialised into checkpoints; every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Op embedding table size (0 = out of vocabulary; AIO-P's vocabulary has 32 slots).
    pub num_ops: usize,
    /// Op embedding width of unweighted nodes.
    pub op_dim: usize,
    /// Op embedding width of weighted nodes.
    pub weighted_op_dim: usize,
    /// Output width of the resolution map.
    pub res_dim: usize,
    /// Kernel-size embedding table size (sizes 1..kernel_vocab; 0 = other).
    pub kernel_vocab: usize,
    pub kernel_dim: usize,
    pub bias_dim: usize,
    /// GNN width.
    pub hidden: usize,
    /// Number of GraphConv layers.
    pub layers: usize,
    pub activation: Activation,
    pub pooling: Pooling,
    /// Hidden widths of the head (the last layer maps to 1).
    pub head: Vec<usize>,
    pub head_activation: Activation,
    /// Divisors of the resolution features.
    pub normalisers: Normalisers,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            num_ops: 32,
            op_dim: 24,
            weighted_op_dim: 14,
            res_dim: 8,
            kernel_vocab: 8,
            kernel_dim: 4,
            bias_dim: 2,
            hidden: 32,
            layers: 6,
            activation: Activation::Tanh,
            pooling: Pooling::Mean,
            head: vec![32, 32, 32, 32],
            head_activation: Activation::Relu,
            normalisers: Normalisers::default(),
        }
    }
}

impl Config {
    /// Width of a node embedding.
    pub fn embed_dim(&self) -> usize {
        self.op_dim + self.res_dim
    }

    /// Check the configuration before anything is allocated for it: every width, table size
    /// and depth within [`MAX_WIDTH`], [`MAX_VOCAB`], [`MAX_LAYERS`] (a huge value in a file
    /// would otherwise abort the process on allocation), the two embedding branches equally
    /// wide, the normalisers positive. Errors name the field.
    pub fn validate(&self) -> Result<(), PredictorError> {
        let bad = |field: &str, why: String| Err(PredictorError::Config(format!("{field}: {why}")));
        for (field, v, max) in [
            ("num_ops", self.num_ops, MAX_VOCAB),
            ("kernel_vocab", self.kernel_vocab, MAX_VOCAB),
            ("op_dim", self.op_dim, MAX_WIDTH),
            ("weighted_op_dim", self.weighted_op_dim, MAX_WIDTH),
            ("res_dim", self.res_dim, MAX_WIDTH),
            ("kernel_dim", self.kernel_dim, MAX_WIDTH),
            ("bias_dim", self.bias_dim, MAX_WIDTH),
            ("hidden", self.hidden, MAX_WIDTH),
            ("layers", self.layers, MAX_LAYERS),
        ] {
            if v > max {
                return bad(field, format!("{v} is over the limit of {max}"));
            }
        }
        check_head("head", &self.head)?;
        for (field, v) in [
            ("num_ops", self.num_ops),
            ("kernel_vocab", self.kernel_vocab),
            ("hidden", self.hidden),
        ] {
            if v < 1 {
                return bad(field, "must be positive".into());
            }
        }
        let w = self.weighted_op_dim + self.res_dim + 2 * self.kernel_dim + self.bias_dim;
        if w != self.embed_dim() {
            return Err(PredictorError::Config(format!(
                "weighted node embedding is {w} wide, unweighted {}: they must agree",
                self.embed_dim()
            )));
        }
        let nz = self.normalisers;
        for (field, v) in [("h", nz.h), ("w", nz.w), ("c", nz.c)] {
            if !(v.is_finite() && v > 0.0) {
                return bad(
                    &format!("normalisers.{field}"),
                    format!("{v} is not a positive finite number"),
                );
            }
        }
        Ok(())
    }

    pub fn features(&self) -> FeatureConfig {
        FeatureConfig {
            num_ops: self.num_ops,
            kernel_vocab: self.kernel_vocab,
            normalisers: self.normalisers,
        }
    }
}

/// Check the hidden widths of a head (`field` names it in errors): at most [`MAX_LAYERS`] of
/// them, each in `1..=MAX_WIDTH`.
pub fn check_head(field: &str, head: &[usize]) -> Result<(), PredictorError> {
    if head.len() > MAX_LAYERS {
        return Err(PredictorError::Config(format!(
            "{field}: {} layers is over the limit of {MAX_LAYERS}",
            head.len()
        )));
    }
    match head.iter().position(|w| !(1..=MAX_WIDTH).contains(w)) {
        Some(i) => Err(PredictorError::Config(format!(
            "{field}[{i}]: {} is not in 1..={MAX_WIDTH}",
            head[i]
        ))),
        None => Ok(()),
    }
}

/// AIO-P node embedding.
#[derive(Debug, Clone)]
pub struct NodeEmbedding {
    op: Embedding,
    w_op: Embedding,
    res: Linear,
    kernel: Embedding,
    bias: Linear,
    dims: EmbedDims,
}

impl NodeEmbedding {
    pub fn new(c: &Config, vb: VarBuilder) -> candle_core::Result<NodeEmbedding> {
        Ok(NodeEmbedding {
            op: embedding(c.num_ops, c.op_dim, vb.pp("op"))?,
            w_op: embedding(c.num_ops, c.weighted_op_dim, vb.pp("w_op"))?,
            res: linear(RES_DIMS, c.res_dim, true, vb.pp("res"))?,
            kernel: embedding(c.kernel_vocab, c.kernel_dim, vb.pp("kernel"))?,
            bias: linear(2, c.bias_dim, true, vb.pp("bias"))?,
            dims: EmbedDims::of(c),
        })
    }

    /// The variables in [`super::fast::EMBED_VARS`] order.
    pub fn tensors(&self) -> candle_core::Result<[Tensor; 7]> {
        let bias = |l: &Linear| match l.bias() {
            Some(b) => Ok(b.clone()),
            None => candle_core::bail!("embedding linear map without bias"),
        };
        Ok([
            self.op.embeddings().clone(),
            self.w_op.embeddings().clone(),
            self.res.weight().clone(),
            bias(&self.res)?,
            self.kernel.embeddings().clone(),
            self.bias.weight().clone(),
            bias(&self.bias)?,
        ])
    }

    /// `[N, embed_dim]` in node order.
    pub fn forward(&self, b: &Batch) -> candle_core::Result<Tensor> {
        if ops::fused(self.op.embeddings()) {
            let parts = self
                .tensors()?
                .iter()
                .map(|t| t.flatten_all())
                .collect::<candle_core::Result<Vec<_>>>()?;
            return ops::embed(&Tensor::cat(&parts, 0)?, b, self.dims);
        }
        self.forward_generic(b)
    }

    /// [`NodeEmbedding::forward`] with generic candle ops (any device).
    pub fn forward_generic(&self, b: &Batch) -> candle_core::Result<Tensor> {
        let res = self.res.forward(&b.res)?;
        let mut parts = Vec::with_capacity(2);
        if let Some(p) = &b.plain {
            let op = self.op.forward(&b.op.index_select(p, 0)?)?;
            parts.push(Tensor::cat(&[op, res.index_select(p, 0)?], 1)?);
        }
        if let (Some(w), Some(kh), Some(kw), Some(bias)) = (&b.weighted, &b.kh, &b.kw, &b.bias) {
            let op = self.w_op.forward(&b.op.index_select(w, 0)?)?;
            parts.push(Tensor::cat(
                &[
                    op,
                    res.index_select(w, 0)?,
                    self.kernel.forward(kh)?,
                    self.kernel.forward(kw)?,
                    self.bias.forward(bias)?,
                ],
                1,
            )?);
        }
        let rows = Tensor::cat(&parts, 0)?;
        rows.index_select(&b.perm, 0)
    }
}

/// Embedding and GNN layers: everything below the head.
#[derive(Debug, Clone)]
pub struct Encoder {
    pub embed: NodeEmbedding,
    pub layers: Vec<GraphConv>,
    pub activation: Activation,
    pub pooling: Pooling,
}

impl Encoder {
    /// Variables under `vb.pp("embed")` and `vb.pp("gnn")`.
    pub fn new(c: &Config, vb: VarBuilder) -> candle_core::Result<Encoder> {
        let embed = NodeEmbedding::new(c, vb.pp("embed"))?;
        let mut layers = Vec::with_capacity(c.layers);
        let mut d = c.embed_dim();
        for i in 0..c.layers {
            layers.push(GraphConv::new(
                d,
                c.hidden,
                vb.pp("gnn").pp(format!("layer{i}")),
            )?);
            d = c.hidden;
        }
        Ok(Encoder {
            embed,
            layers,
            activation: c.activation,
            pooling: c.pooling,
        })
    }

    /// The device the encoder's weights live on.
    pub fn embed_device(&self) -> candle_core::Device {
        self.embed.op.embeddings().device().clone()
    }

    /// Node states: the embedding, then every layer's output (`layers + 1` tensors).
    pub fn node_states(&self, b: &Batch) -> candle_core::Result<Vec<Tensor>> {
        let mut hs = Vec::with_capacity(self.layers.len() + 1);
        hs.push(self.embed.forward(b)?);
        for l in &self.layers {
            let x = hs.last().expect("non-empty");
            let y = l.forward_act(x, b, self.activation)?;
            hs.push(y);
        }
        Ok(hs)
    }

    /// Graph embeddings `[G, width]`.
    pub fn forward(&self, b: &Batch) -> candle_core::Result<Tensor> {
        let mut x = self.embed.forward(b)?;
        for l in &self.layers {
            x = l.forward_act(&x, b, self.activation)?;
        }
        pool(&x, b, self.pooling)
    }

    /// [`Encoder::forward`] with the generic candle ops only (any device): the reference the
    /// fused CPU ops are tested against.
    pub fn forward_generic(&self, b: &Batch) -> candle_core::Result<Tensor> {
        let mut x = self.embed.forward_generic(b)?;
        for l in &self.layers {
            x = self.activation.apply(&l.forward_generic(&x, b)?)?;
        }
        super::gnn::pool_generic(&x, b, self.pooling)
    }
}

/// An MLP from a graph embedding to one scalar.
#[derive(Debug, Clone)]
pub struct Head {
    layers: Vec<Linear>,
    activation: Activation,
}

impl Head {
    /// Linear layers `in → widths[0] → … → 1` under `vb.pp("layer{i}")`.
    pub fn new(
        in_dim: usize,
        widths: &[usize],
        activation: Activation,
        vb: VarBuilder,
    ) -> candle_core::Result<Head> {
        let mut layers = Vec::with_capacity(widths.len() + 1);
        let mut d = in_dim;
        for (i, &w) in widths.iter().chain(std::iter::once(&1)).enumerate() {
            layers.push(linear(d, w, true, vb.pp(format!("layer{i}")))?);
            d = w;
        }
        Ok(Head { layers, activation })
    }

    /// The linear layers, input side first.
    pub fn linears(&self) -> &[Linear] {
        &self.layers
    }

    /// The activation between layers.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// `[G, in]` → `[G]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x)?;
            if i < last {
                x = self.activation.apply(&x)?;
            }
        }
        x.squeeze(1)
    }
}

/// Anything that maps a batch to one prediction per graph (`[G]`).
pub trait Regressor {
    /// Predictions `[G]` as a tensor, differentiable in the model's variables.
    fn predict(&self, b: &Batch) -> candle_core::Result<Tensor>;

    /// Predictions for `graphs`, in order, when no gradient is wanted. The default packs them
    /// into one batch on `dev` and runs [`Regressor::predict`]; a model may have a faster path.
    fn infer(&self, graphs: &[&GraphFeatures], dev: &Device) -> Result<Vec<f32>, PredictorError> {
        infer_generic(self, graphs, dev)
    }
}

/// [`Regressor::infer`] through [`Regressor::predict`].
pub fn infer_generic<R: Regressor + ?Sized>(
    model: &R,
    graphs: &[&GraphFeatures],
    dev: &Device,
) -> Result<Vec<f32>, PredictorError> {
    let b = Batch::pack(graphs, dev)?;
    Ok(model.predict(&b)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// The AIO-P predictor.
#[derive(Debug, Clone)]
pub struct Predictor {
    pub config: Config,
    pub encoder: Encoder,
    pub head: Head,
}

impl Predictor {
    /// Variables under `embed.*`, `gnn.*` and `head.*` of `vb`.
    pub fn new(config: &Config, vb: VarBuilder) -> Result<Predictor, PredictorError> {
        config.validate()?;
        let encoder = Encoder::new(config, vb.clone())?;
        let width = if config.layers == 0 {
            config.embed_dim()
        } else {
            config.hidden
        };
        let head = Head::new(width, &config.head, config.head_activation, vb.pp("head"))?;
        Ok(Predictor {
            config: config.clone(),
            encoder,
            head,
        })
    }

    /// [`Regressor::predict`] with the generic candle ops only (any device).
    pub fn predict_generic(&self, b: &Batch) -> candle_core::Result<Tensor> {
        self.head.forward(&self.encoder.forward_generic(b)?)
    }
}

impl Regressor for Predictor {
    fn predict(&self, b: &Batch) -> candle_core::Result<Tensor> {
        self.head.forward(&self.encoder.forward(b)?)
    }

    /// On the CPU, the candle-free path of [`super::fast`] (the weights are copied once per
    /// call).
    fn infer(&self, graphs: &[&GraphFeatures], dev: &Device) -> Result<Vec<f32>, PredictorError> {
        if dev.is_cpu() && ops::fused(self.encoder.embed.op.embeddings()) {
            if graphs.is_empty() {
                return Err(PredictorError::Data("an empty batch".into()));
            }
            return FastPredictor::new(self)?.predict(graphs);
        }
        infer_generic(self, graphs, dev)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::predictor::features::extract;
    use crate::predictor::features::tests::small_graph;
    use crate::predictor::init::{sorted_vars, var_builder};
    use candle_core::{Device, Var};
    use candle_nn::VarMap;

    pub(crate) fn tiny_config() -> Config {
        Config {
            op_dim: 6,
            weighted_op_dim: 2,
            res_dim: 2,
            kernel_dim: 1,
            bias_dim: 2,
            hidden: 4,
            layers: 2,
            head: vec![4],
            ..Config::default()
        }
    }

    #[test]
    fn default_config_is_valid_and_sized_like_the_paper() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.embed_dim(), 32);
        let bad = Config {
            op_dim: 20,
            ..Config::default()
        };
        assert!(bad.validate().is_err());
        // Out-of-bounds values are refused by name, before anything is allocated.
        for (c, field) in [
            (
                Config {
                    hidden: 1 << 40,
                    ..Config::default()
                },
                "hidden",
            ),
            (
                Config {
                    op_dim: usize::MAX,
                    ..Config::default()
                },
                "op_dim",
            ),
            (
                Config {
                    kernel_dim: usize::MAX / 2 + 1,
                    ..Config::default()
                },
                "kernel_dim",
            ),
            (
                Config {
                    num_ops: 1 << 40,
                    ..Config::default()
                },
                "num_ops",
            ),
            (
                Config {
                    layers: 1 << 30,
                    ..Config::default()
                },
                "layers",
            ),
            (
                Config {
                    head: vec![32, 1 << 40],
                    ..Config::default()
                },
                "head[1]",
            ),
            (
                Config {
                    head: vec![32, 0],
                    ..Config::default()
                },
                "head[1]",
            ),
            (
                Config {
                    hidden: 0,
                    ..Config::default()
                },
                "hidden",
            ),
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        let mut nz = Config::default();
        nz.normalisers.c = f32::INFINITY;
        assert!(nz
            .validate()
            .unwrap_err()
            .to_string()
            .contains("normalisers.c"));
        let json = serde_json::to_string(&c).unwrap();
        let back: Config = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        let partial: Config = serde_json::from_str(r#"{"layers": 3}"#).unwrap();
        assert_eq!(partial.layers, 3);
        assert_eq!(partial.hidden, 32);
    }

    #[test]
    fn forward_shapes_and_batch_independence() {
        let dev = Device::Cpu;
        let map = VarMap::new();
        let m = Predictor::new(&Config::default(), var_builder(&map, 0, &dev)).unwrap();
        let f = extract(&small_graph(), &m.config.features());
        let one = Batch::pack(&[&f], &dev).unwrap();
        let three = Batch::pack(&[&f, &f, &f], &dev).unwrap();
        let y1: Vec<f32> = m.predict(&one).unwrap().to_vec1().unwrap();
        let y3: Vec<f32> = m.predict(&three).unwrap().to_vec1().unwrap();
        assert_eq!(y1.len(), 1);
        assert_eq!(y3.len(), 3);
        for y in y3 {
            assert!((y - y1[0]).abs() < 1e-5);
        }
    }

    /// Finite differences against candle's gradients for every variable of a tiny model. This is
    /// what catches a wrong backward of the gather/scatter ops.
    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let map = VarMap::new();
        let m = Predictor::new(&tiny_config(), var_builder(&map, 3, &dev)).unwrap();
        // Two graphs of different sizes so pooling and offsets matter.
        let f1 = extract(&small_graph(), &m.config.features());
        let mut b = crate::graph::GraphBuilder::new();
        let x = b.input(3, 8, 8).unwrap();
        let c1 = b
            .conv(x, crate::graph::builder::Conv::new(4, 3).bias(true))
            .unwrap();
        let c2 = b.conv(x, crate::graph::builder::Conv::new(4, 1)).unwrap();
        let a = b.add(&[c1, c2]).unwrap();
        b.output(a).unwrap();
        let f2 = extract(&b.finish(), &m.config.features());
        let batch = Batch::pack(&[&f1, &f2], &dev).unwrap();
        let target = Tensor::new(&[0.3f32, -0.7], &dev).unwrap();
        let loss_of = || -> f64 {
            let y = m.predict(&batch).unwrap();
            let l = (y - &target).unwrap().sqr().unwrap().sum_all().unwrap();
            l.to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let y = m.predict(&batch).unwrap();
        let loss = (y - &target).unwrap().sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let eps = 1e-2f32;
        let mut checked = 0;
        for (name, var) in sorted_vars(&map) {
            let g: Vec<f32> = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"))
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let base: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let shape = var.shape().clone();
            let set = |v: &Var, vals: &[f32]| {
                v.set(&Tensor::from_vec(vals.to_vec(), shape.clone(), &dev).unwrap())
                    .unwrap()
            };
            for k in 0..base.len() {
                let mut p = base.clone();
                p[k] += eps;
                set(&var, &p);
                let lp = loss_of();
                p[k] -= 2.0 * eps;
                set(&var, &p);
                let lm = loss_of();
                set(&var, &base);
                let fd = (lp - lm) / (2.0 * eps as f64);
                let err = (fd - g[k] as f64).abs();
                assert!(
                    err <= 2e-3 + 2e-2 * fd.abs(),
                    "{name}[{k}]: finite difference {fd}, backward {}",
                    g[k]
                );
                checked += 1;
            }
        }
        assert!(checked > 100);
    }
}
