//! What a search optimises: the [`Fitness`] trait, and [`TableFitness`], the benchmark's own
//! labels as a fitness (the "true evaluation" baseline and the oracle of experiments).
//!
//! Invariant: a fitness scores a batch in one call and returns one finite score per candidate,
//! higher is better, in the task's units.

use std::collections::HashMap;

use super::{Genome, ResultRow, SearchError};
use crate::graph::Graph;
use crate::spaces::{labels, Arch, SpaceId, Task};

/// A candidate as a fitness sees it: its genome and its built graph.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub genome: &'a Genome,
    pub graph: &'a Graph,
}

/// Scores candidates, higher is better.
pub trait Fitness {
    fn score(&mut self, batch: &[Candidate<'_>]) -> Result<Vec<f64>, SearchError>;
}

/// The benchmark table's labels as a fitness (every call is a "true query").
#[derive(Debug, Clone)]
pub struct TableFitness {
    values: HashMap<Arch, f64>,
    sign: f64,
    /// How many architectures were looked up (true queries made).
    pub queries: usize,
}

impl TableFitness {
    pub fn load(space: SpaceId, task: Task) -> Result<TableFitness, SearchError> {
        let t = labels::load(space, task)?;
        let sign = if t.higher_is_better { 1.0 } else { -1.0 };
        Ok(TableFitness {
            values: t.rows.into_iter().map(|r| (r.arch, r.value)).collect(),
            sign,
            queries: 0,
        })
    }

    /// The table as the oracle of a search, which may propose any network of the space: refused
    /// (an invalid spec) for a space whose table labels a sample of it only (NB-101, DARTS),
    /// where a search fails at the first network the table lacks.
    pub fn load_complete(space: SpaceId, task: Task) -> Result<TableFitness, SearchError> {
        let t = TableFitness::load(space, task)?;
        if crate::spaces::enumerate(space).is_none_or(|all| all.len() > t.values.len()) {
            let whole: Vec<&str> = SpaceId::ALL
                .into_iter()
                .filter(|s| crate::spaces::enumerate(*s).is_some())
                .map(SpaceId::name)
                .collect();
            return Err(SearchError::Invalid(format!(
                "the benchmark table of {} labels a sample of its networks ({} rows), not all: \
                 a search there would propose networks it cannot score (the true labels serve \
                 as a fitness in {} only; use the predictor or a task model)",
                space.name(),
                t.values.len(),
                whole.join(", ")
            )));
        }
        Ok(t)
    }

    /// The label of an architecture, if the table has it (task units).
    pub fn lookup(&self, arch: &Arch) -> Option<f64> {
        self.values.get(arch).copied()
    }

    /// Fill the `oracle` column of result rows of `space` with the table's labels (a report:
    /// no search reads it); a row without an architecture, or one the table lacks, gets None.
    pub fn fill_oracle(&self, space: SpaceId, rows: &mut [ResultRow]) {
        for r in rows {
            r.oracle = r
                .arch
                .as_deref()
                .and_then(|s| Arch::parse(space, s).ok())
                .and_then(|a| self.lookup(&a));
        }
    }
}

impl Fitness for TableFitness {
    fn score(&mut self, batch: &[Candidate<'_>]) -> Result<Vec<f64>, SearchError> {
        self.queries += batch.len();
        batch
            .iter()
            .map(|c| match c.genome {
                Genome::Arch(a) => self
                    .lookup(a)
                    .map(|v| v * self.sign)
                    .ok_or_else(|| SearchError::Fitness(format!("the table has no label for {a}"))),
                Genome::Graph(_) => Err(SearchError::Fitness(
                    "a label table cannot score a free graph".into(),
                )),
            })
            .collect()
    }
}

/// The AIO-P predictor as a fitness: predicted performance in the task's units (higher is
/// better for every shipped metric; the checkpoint's label statistics carry the direction),
/// by the base predictor ([`crate::predictor::base::Base`]: a checkpoint alone, or the shipped
/// pair with its per-task selection).
pub struct PredictorFitness {
    model: crate::predictor::base::Base,
    key: crate::predictor::data::TaskKey,
    features: crate::predictor::features::FeatureConfig,
    /// Graphs per forward pass.
    pub batch_size: usize,
}

impl PredictorFitness {
    /// A fitness for (space, task) from a trained checkpoint that has that task's statistics.
    pub fn new(
        model: crate::predictor::checkpoint::Trained,
        space: SpaceId,
        task: Task,
    ) -> Result<PredictorFitness, SearchError> {
        PredictorFitness::from_base(crate::predictor::base::Base::single(model), space, task)
    }

    /// A fitness for (space, task) from a base predictor that has that task's statistics.
    pub fn from_base(
        model: crate::predictor::base::Base,
        space: SpaceId,
        task: Task,
    ) -> Result<PredictorFitness, SearchError> {
        let key = crate::predictor::data::TaskKey::new(space, task);
        let features = model.features_for(key).map_err(SearchError::Predictor)?;
        Ok(PredictorFitness {
            model,
            key,
            features,
            batch_size: 256,
        })
    }
}

/// Each candidate's predictor features (under `fc`) and GFLOPs, as the predictors take them.
pub fn featurise(
    batch: &[Candidate<'_>],
    fc: &crate::predictor::features::FeatureConfig,
) -> Vec<(crate::predictor::features::GraphFeatures, f64)> {
    use crate::predictor::{features::extract, transform::gflops};
    batch
        .iter()
        .map(|c| (extract(c.graph, fc), gflops(c.graph)))
        .collect()
}

impl Fitness for PredictorFitness {
    fn score(&mut self, batch: &[Candidate<'_>]) -> Result<Vec<f64>, SearchError> {
        let feats = featurise(batch, &self.features);
        let inputs: Vec<_> = feats.iter().map(|(f, g)| (f, *g)).collect();
        self.model
            .predict(self.key, &inputs, self.batch_size)
            .map_err(|e| SearchError::Fitness(e.to_string()))
    }
}
