//! Command bodies of the `aiop` binary, one file per command family. They parse nothing
//! themselves (clap does, in `main`), read and write the standard streams, and return
//! `anyhow::Result` so that `main` maps every failure to an exit code in one place.

pub mod bench;
pub mod bench_predictor;
pub mod bench_search;
pub mod eval;
pub mod experiment;
pub mod graph;
pub mod predictor;
pub mod search;
pub mod serve;
pub mod store;

/// Input that could not be processed (some lines of a batch failed); maps to exit code 65.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DataError(pub String);
