//! Graph layers: k-GNN `GraphConv` message passing (Morris et al. 2019, as in PyG), per-graph
//! pooling, and the activation functions the configs name.
//!
//! `GraphConv`: x_i' = W_root·x_i + W_rel·Σ_{j→i} x_j + b (PyG: `lin_rel` has the bias,
//! `lin_root` none). Messages follow the data flow (from an edge's source to its destination).
//! Invariants: the neighbour sum is `index_select` over sources then `index_add` into
//! destinations, pooling is `index_add` into graphs (then a division by node counts for the mean)
//! — both have correct gradients in candle 0.11.1, unlike `scatter_add`; a batch with no edge
//! aggregates zeros. On the CPU (f32) a layer with its activation, and pooling, run as the fused
//! ops of [`super::ops`] instead (same function, hand-written backward); elsewhere as the
//! generic candle ops here.

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::batch::Batch;
use super::init::linear;
use super::ops;

/// Element-wise activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Tanh,
    Relu,
    Identity,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Tanh => x.tanh(),
            Activation::Relu => x.relu(),
            Activation::Identity => Ok(x.clone()),
        }
    }
}

/// How node states become one graph embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    Mean,
    Sum,
}

/// Σ_{j→i} x_j for every node i: `[N, d]` → `[N, d]`.
pub fn neighbour_sum(x: &Tensor, batch: &Batch) -> candle_core::Result<Tensor> {
    let zeros = x.zeros_like()?;
    match (&batch.src, &batch.dst) {
        (Some(src), Some(dst)) => zeros.index_add(dst, &x.index_select(src, 0)?, 0),
        _ => Ok(zeros),
    }
}

/// Pool node states `[N, d]` into graph embeddings `[G, d]`.
pub fn pool(h: &Tensor, batch: &Batch, pooling: Pooling) -> candle_core::Result<Tensor> {
    if ops::fused(h) {
        return ops::pool(h, batch, pooling);
    }
    pool_generic(h, batch, pooling)
}

/// [`pool`] with generic candle ops (any device).
pub fn pool_generic(h: &Tensor, batch: &Batch, pooling: Pooling) -> candle_core::Result<Tensor> {
    let d = h.dim(1)?;
    let zeros = Tensor::zeros((batch.num_graphs, d), h.dtype(), h.device())?;
    let sum = zeros.index_add(&batch.graph, h, 0)?;
    match pooling {
        Pooling::Sum => Ok(sum),
        Pooling::Mean => sum.broadcast_div(&batch.counts),
    }
}

/// One k-GNN layer.
#[derive(Debug, Clone)]
pub struct GraphConv {
    root: Linear,
    rel: Linear,
}

impl GraphConv {
    /// Weights under `vb`: `root.weight`, `rel.weight`, `rel.bias`.
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<GraphConv> {
        Ok(GraphConv {
            root: linear(in_dim, out_dim, false, vb.pp("root"))?,
            rel: linear(in_dim, out_dim, true, vb.pp("rel"))?,
        })
    }

    /// The layer's output before any activation.
    pub fn forward(&self, x: &Tensor, batch: &Batch) -> candle_core::Result<Tensor> {
        self.forward_act(x, batch, Activation::Identity)
    }

    /// `act(forward(x))`, one fused op on the CPU.
    pub fn forward_act(
        &self,
        x: &Tensor,
        batch: &Batch,
        act: Activation,
    ) -> candle_core::Result<Tensor> {
        if ops::fused(x) {
            let bias = match self.rel.bias() {
                Some(b) => b.clone(),
                None => Tensor::zeros(self.rel.weight().dim(0)?, x.dtype(), x.device())?,
            };
            return ops::graph_conv(x, self.root.weight(), self.rel.weight(), &bias, batch, act);
        }
        act.apply(&self.forward_generic(x, batch)?)
    }

    /// [`GraphConv::forward`] with generic candle ops (any device).
    pub fn forward_generic(&self, x: &Tensor, batch: &Batch) -> candle_core::Result<Tensor> {
        let agg = neighbour_sum(x, batch)?;
        self.rel.forward(&agg)? + self.root.forward(x)?
    }

    /// The weights: `root.weight` `[out, in]`, `rel.weight` `[out, in]`, `rel.bias` `[out]`.
    pub fn tensors(&self) -> (&Tensor, &Tensor, Option<&Tensor>) {
        (self.root.weight(), self.rel.weight(), self.rel.bias())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::batch::Packed;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// A batch of one 3-node graph with edges 0→1, 0→2, 1→2 (features unused here).
    fn three_node_batch() -> Batch {
        let p = Packed {
            op: vec![1, 2, 3],
            res: vec![0.0; 18],
            plain: vec![0, 1, 2],
            perm: vec![0, 1, 2],
            src: vec![0, 0, 1],
            dst: vec![1, 2, 2],
            graph: vec![0, 0, 0],
            counts: vec![3.0],
            ..Packed::default()
        };
        Batch::from_packed(p, &Device::Cpu).unwrap()
    }

    #[test]
    fn graph_conv_matches_hand_computation() {
        let dev = Device::Cpu;
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
        let conv = GraphConv::new(2, 1, vb.clone()).unwrap();
        // W_root = [1, 2], W_rel = [3, -1], b = 0.5.
        let mut m = map.clone();
        m.set_one("root.weight", Tensor::new(&[[1f32, 2.0]], &dev).unwrap())
            .unwrap();
        m.set_one("rel.weight", Tensor::new(&[[3f32, -1.0]], &dev).unwrap())
            .unwrap();
        m.set_one("rel.bias", Tensor::new(&[0.5f32], &dev).unwrap())
            .unwrap();
        let x = Tensor::new(&[[1f32, 0.0], [0.0, 1.0], [2.0, 3.0]], &dev).unwrap();
        let b = three_node_batch();
        let y = conv.forward(&x, &b).unwrap().flatten_all().unwrap();
        let y: Vec<f32> = y.to_vec1().unwrap();
        // node 0: root 1, no messages → 1 + 0.5 = 1.5
        // node 1: root 2, msg x0 = [1,0] → 3 → 2 + 3 + 0.5 = 5.5
        // node 2: root 2 + 6 = 8, msgs x0 + x1 = [1,1] → 3 - 1 = 2 → 8 + 2 + 0.5 = 10.5
        assert_eq!(y, vec![1.5, 5.5, 10.5]);
    }

    #[test]
    fn mean_and_sum_pooling() {
        let dev = Device::Cpu;
        let p = Packed {
            op: vec![1; 5],
            res: vec![0.0; 30],
            plain: vec![0, 1, 2, 3, 4],
            perm: vec![0, 1, 2, 3, 4],
            graph: vec![0, 0, 1, 1, 1],
            counts: vec![2.0, 3.0],
            ..Packed::default()
        };
        let b = Batch::from_packed(p, &dev).unwrap();
        let h = Tensor::new(
            &[[1f32, 2.0], [3.0, 4.0], [1.0, 1.0], [2.0, 2.0], [6.0, 0.0]],
            &dev,
        )
        .unwrap();
        let mean: Vec<Vec<f32>> = pool(&h, &b, Pooling::Mean).unwrap().to_vec2().unwrap();
        assert_eq!(mean, vec![vec![2.0, 3.0], vec![3.0, 1.0]]);
        let sum: Vec<Vec<f32>> = pool(&h, &b, Pooling::Sum).unwrap().to_vec2().unwrap();
        assert_eq!(sum, vec![vec![4.0, 6.0], vec![9.0, 3.0]]);
        // No edges: the neighbour sum is zero.
        let z: Vec<Vec<f32>> = neighbour_sum(&h, &b).unwrap().to_vec2().unwrap();
        assert!(z.iter().flatten().all(|&v| v == 0.0));
    }
}
