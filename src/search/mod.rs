//! Architecture searches with a surrogate fitness: regularized evolution (Real et al. 2019),
//! random search, and the FLOP-reducing search of AIO-P, over built-in spaces or free graphs.
//!
//! Invariants:
//! - a search is a plain serialisable value ([`SearchState`]: spec, RNG, population, history,
//!   counters); [`step`] advances it by one generation, so it can be checkpointed after any
//!   generation and resumed bit for bit (nothing depends on hash-map iteration order);
//! - each generation's new candidates are scored in ONE [`Fitness::score`] call; a candidate whose
//!   graph hash was scored before is not sent again and does not count against the budget, and
//!   (with the cache) one whose genome is already in the history adds no entry to it, so the
//!   history holds each evaluated genome once however often a converged search re-proposes it;
//! - `budget` counts fitness evaluations and is never exceeded; a search ends when it is spent
//!   or when 100 generations in a row find nothing new; an evolution whose generation found
//!   nothing new (a converged population re-proposes what it has seen) draws random immigrants
//!   for the next, so a budget larger than what convergence needs is still spent exploring;
//! - a candidate over the FLOPs or parameter limit is never evaluated nor returned;
//! - the fitness is "higher is better" in the task's units (a fitness for a lower-is-better
//!   metric negates it); the search never reads true labels (the oracle column of results is
//!   filled by the caller, for experiments only).

pub mod active;
pub mod fitness;
pub mod pareto;
pub mod state;
pub mod surrogate;

pub use fitness::{Fitness, PredictorFitness, TableFitness};
pub use state::{
    run, step, Algorithm, EndReason, Evaluated, Genome, Outcome, ResultRow, SearchSpec,
    SearchState, Start,
};

/// Most evaluations one search may ask for.
///
/// These three limits are the daemon's: `searches::build_spec` refuses a search over them, and
/// the task-file check (`taskfile`) refuses a `[search]` table over them, so that a task file
/// is never accepted whose search would then fail (`searches` re-exports these).
pub const MAX_BUDGET: usize = 1_000_000;
/// Most candidates per generation (see [`MAX_BUDGET`]).
pub const MAX_BATCH: usize = 4096;
/// Largest evolution population, and tournament sample (see [`MAX_BUDGET`]).
pub const MAX_POPULATION: usize = 100_000;

/// Most nodes of a free graph a FLOP reduction starts from: each generation tries every edit
/// of its frontier's graphs (about 4 per conv), each a whole copy, so the work of one grows
/// with the square of the size. About 8 times the largest graph of the shipped spaces (a DARTS
/// network, about 500 nodes).
pub const MAX_START_NODES: usize = 4096;

/// Refuse a free start graph over [`MAX_START_NODES`].
pub fn check_start_graph(g: &crate::graph::Graph) -> Result<(), SearchError> {
    if g.len() > MAX_START_NODES {
        return Err(SearchError::Invalid(format!(
            "the start graph has {} nodes, over the limit of {MAX_START_NODES} for a FLOP reduction",
            g.len()
        )));
    }
    Ok(())
}

/// Errors of the search room.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Space(#[from] crate::spaces::SpaceError),
    #[error(transparent)]
    Graph(#[from] crate::graph::GraphError),
    #[error("fitness: {0}")]
    Fitness(String),
    /// The predictor refused the search's task (its statistics are missing, say).
    #[error("fitness: {0}")]
    Predictor(crate::predictor::PredictorError),
    #[error("invalid search: {0}")]
    Invalid(String),
    /// No network drawn satisfies the constraints (they are too tight for the space).
    #[error("no candidate satisfies the constraints ({constraints}) after {tries} tries")]
    Infeasible { tries: usize, constraints: String },
    /// An option the search's algorithm does not read, given to it
    /// ([`Algorithm::refuse_unread_options`]).
    #[error("{option}: only {} reads it, not {algorithm}",
            Algorithm::readers_phrase(.option, |a| format!("algorithm {a}")))]
    Unread {
        option: &'static str,
        algorithm: Algorithm,
    },
}
