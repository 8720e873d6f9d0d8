//! The AIO-P performance predictor (Mills et al., AAAI 2023): a GNN over a network's
//! computational graph that predicts its task performance, pretrained across spaces and tasks.
//!
//! Pipeline: [`features`] (node features of a [`crate::graph::Graph`], computed once and cached)
//! → [`batch`] (many graphs packed into constant tensors) → [`model`] (node embedding, k-GNN
//! [`gnn::GraphConv`] layers, pooling, MLP head) trained by [`train`] on labels scaled by
//! [`transform`] (FLOPs scaling then per-task standardisation), stored by [`checkpoint`].
//! [`data`] turns the shipped label tables into samples (ranked with [`crate::stats`]);
//! [`pretrain`] runs the whole pretraining; [`adapters`] (K-Adapters over a frozen encoder) and
//! [`transfer`] (zero-shot or fine-tuned on a few labelled networks) carry a pretrained model to
//! new tasks ([`align`], an unsupervised correction for a new space, is measured by `aiop eval`
//! and used by no default). On the CPU, training runs through the fused ops of [`ops`] (embedding, GraphConv
//! with activation, pooling; hand-written backward over the SIMD [`kernels`]) and inference
//! through the candle-free [`fast`] path.
//!
//! Invariants: every random choice (initial weights, dev split, batch order) comes from a
//! [`crate::rng::Rng`] seeded by the caller, so a run is repeatable from its seed on one machine;
//! inputs (features, indices) are plain tensors and never `Var`s, so no gradient is computed for
//! them; the generic (any-device) message passing and pooling use `index_select` + `index_add`
//! only (candle 0.11.1's `scatter_add` backward is wrong), the fused CPU ops have their own
//! backward, checked against finite differences and against the generic ops; results do not
//! depend on the number of threads.

pub mod adapters;
pub mod align;
pub mod base;
pub mod batch;
pub mod blend;
pub mod calibrate;
pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod fast;
pub mod features;
pub mod gnn;
pub mod heads;
pub mod init;
pub mod kernels;
pub mod model;
pub mod ops;
pub mod pretrain;
pub mod probe;
pub mod select;
pub mod shipped;
pub mod train;
pub mod transfer;
pub mod transform;

pub use candle_core::Device;

/// Errors of the predictor module.
#[derive(Debug, thiserror::Error)]
pub enum PredictorError {
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Data(String),
    #[error(transparent)]
    Space(#[from] crate::spaces::SpaceError),
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// A training step's loss or gradient norm is not finite (too large a learning rate, a
    /// label out of range): training stops before the weights take it.
    #[error(
        "training diverged at epoch {epoch}, step {step}: loss {loss}, gradient norm \
         {grad_norm} (lower lr, or set clip_norm)"
    )]
    Diverged {
        epoch: usize,
        step: usize,
        loss: f64,
        grad_norm: f64,
    },
    /// Training stopped by its [`train::Cancel`].
    #[error("training cancelled")]
    Cancelled,
}

/// The device to compute on: the first CUDA GPU when built with the `cuda` feature and one is
/// present, else the CPU.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        if let Ok(d) = Device::cuda_if_available(0) {
            return d;
        }
    }
    Device::Cpu
}

impl PredictorError {
    /// The message of a [`PredictorError::Config`] without its "invalid model configuration"
    /// prefix (any other error as it displays): what a caller naming the field's place adds to.
    pub fn into_message(self) -> String {
        match self {
            PredictorError::Config(m) => m,
            e => e.to_string(),
        }
    }
}
