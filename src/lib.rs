//! aiop: the AIO-P performance predictor and the architecture searches built on it.
//!
//! Rooms, with imports pointing down only: [`graph`] (the computational graph, shapes, FLOPs,
//! hash, JSON) ← [`spaces`] (benchmark search spaces, architecture strings, mutations, labels)
//! ← [`predictor`] (the AIO-P GNN: features, training, checkpoints) and [`search`] (architecture
//! searches; [`stats`] their rank statistics) ← [`taskfile`] (user task definitions) ←
//! [`tuned`] (task models: the predictor fine-tuned to a task file, on disk) ← [`store`] (the
//! daemon's sled database) ← [`service`] (the predictor service: one thread, batched forward
//! passes, the prediction cache) ← [`searches`] (the daemon's searches on worker threads,
//! checkpointed every generation) ← [`jobs`] (fine-tuning work on dedicated threads) ←
//! [`watch`] (the task folder watcher) and [`api`] (HTTP) ← [`serve`] (the daemon's wiring).
//! [`pool`] runs independent jobs on worker threads. [`config`] is the daemon's settings, read by `main` and handed down; [`client`] talks HTTP
//! to a running daemon.
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod config;
pub mod graph;
pub mod jobs;
pub mod pool;
pub mod predictor;
pub mod rng;
pub mod search;
pub mod searches;
pub mod serve;
pub mod service;
pub mod spaces;
pub mod stats;
pub mod store;
pub mod taskfile;
pub mod tuned;
pub mod watch;
