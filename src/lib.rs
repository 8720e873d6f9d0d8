//! aiop: the AIO-P performance predictor and the architecture searches built on it.
//!
//! Rooms, with imports pointing down only: [`graph`] (the computational graph, shapes, FLOPs,
//! hash, JSON) ← [`spaces`] (benchmark search spaces, architecture strings, mutations, labels)
//! ← [`predictor`] (the AIO-P GNN: features, training, checkpoints).
#![forbid(unsafe_code)]

pub mod graph;
pub mod predictor;
pub mod rng;
pub mod search;
pub mod spaces;
pub mod stats;
