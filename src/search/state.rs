//! The search as a value: [`SearchSpec`] (what to search), [`SearchState`] (where it stands) and
//! [`step`], one generation of evolution, random search or FLOP reduction.
//!
//! Invariants (see also the room's documentation in `search/mod.rs`): the state serialises to JSON
//! and back exactly (floats round-trip; graphs travel in the interchange format); [`step`] on a
//! deserialised state does exactly what it would have done on the original; all randomness comes
//! from the state's own [`Rng`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::fitness::Candidate;
use super::{pareto, Fitness, SearchError};
use crate::graph::hash::GraphHash;
use crate::graph::{edit, json, Convention, Graph};
use crate::rng::Rng;
use crate::spaces::{self, Arch, SpaceId, Task};

/// Which search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Regularized (aging) evolution.
    Evolution,
    /// Uniform random sampling: the baseline.
    Random,
    /// FLOP reduction from a start network within a score tolerance.
    Flops,
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Algorithm, String> {
        match s {
            "evolution" => Ok(Algorithm::Evolution),
            "random" => Ok(Algorithm::Random),
            "flops" => Ok(Algorithm::Flops),
            _ => Err(format!(
                "unknown algorithm '{s}' (expected evolution, random or flops)"
            )),
        }
    }
}

impl Algorithm {
    /// The options only some algorithms read, by their names in a search request (`aiop search`
    /// spells them with `-` for `_`), each with the algorithms that read it: the one table by
    /// which the command line, the daemon's API and task files refuse an option the search it
    /// is given to would ignore without a word.
    pub const SPECIFIC: [(&'static str, &'static [Algorithm]); 9] = [
        ("population", &[Algorithm::Evolution]),
        ("sample", &[Algorithm::Evolution]),
        (
            "multi_objective",
            &[Algorithm::Evolution, Algorithm::Random],
        ),
        ("start", &[Algorithm::Flops]),
        ("start_graph", &[Algorithm::Flops]),
        ("tolerance", &[Algorithm::Flops]),
        ("reference", &[Algorithm::Flops]),
        ("radius", &[Algorithm::Flops]),
        ("two_sided", &[Algorithm::Flops]),
    ];

    /// The algorithms that read `option` (all of them for an option outside
    /// [`Algorithm::SPECIFIC`]).
    pub fn readers(option: &str) -> &'static [Algorithm] {
        const ALL: &[Algorithm] = &[Algorithm::Evolution, Algorithm::Random, Algorithm::Flops];
        Algorithm::SPECIFIC
            .iter()
            .find(|(o, _)| *o == option)
            .map_or(ALL, |(_, r)| r)
    }

    /// Whether a search of this algorithm reads `option`.
    pub fn reads(self, option: &str) -> bool {
        Algorithm::readers(option).contains(&self)
    }

    /// Who reads `option`, for an error: `a FLOP reduction (algorithm flops)`, with `choose`
    /// saying how the user picks an algorithm (`algorithm flops`, `--algorithm flops`).
    pub fn readers_phrase(option: &str, choose: impl Fn(Algorithm) -> String) -> String {
        let r = Algorithm::readers(option);
        let what: Vec<&str> = r.iter().map(|a| a.describe()).collect();
        let how: Vec<String> = r.iter().map(|&a| choose(a)).collect();
        format!("{} ({})", what.join(" or "), how.join(" or "))
    }

    /// The algorithm in words.
    pub fn describe(self) -> &'static str {
        match self {
            Algorithm::Evolution => "evolution",
            Algorithm::Random => "random search",
            Algorithm::Flops => "a FLOP reduction",
        }
    }

    /// Refuse an option of [`Algorithm::SPECIFIC`] this algorithm does not read (it would be
    /// ignored without a word): `given` says whether the option of that name was given; the
    /// error names the first that was, in the table's order. For submissions only: a spec
    /// stored before this check existed still loads and resumes ([`SearchSpec::validate`] does
    /// not refuse them, and a spec cannot tell a default from a given value).
    pub fn refuse_unread_options(self, given: impl Fn(&str) -> bool) -> Result<(), SearchError> {
        match Algorithm::SPECIFIC
            .into_iter()
            .find(|(o, r)| !r.contains(&self) && given(o))
        {
            Some((option, _)) => Err(SearchError::Unread {
                option,
                algorithm: self,
            }),
            None => Ok(()),
        }
    }

    /// The algorithm's name, as `from_str` reads it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Evolution => "evolution",
            Algorithm::Random => "random",
            Algorithm::Flops => "flops",
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a FLOP-reducing search starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// An architecture string of the spec's space.
    Arch(String),
    /// A graph in the interchange format (JSON text).
    Graph(String),
}

/// What to search. Every field has a default so specs can be partial in files and requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchSpec {
    /// Built-in space (absent only for a FLOP reduction of a free graph).
    pub space: Option<SpaceId>,
    /// The task whose network head architectures are built with.
    pub task: Option<Task>,
    pub algorithm: Algorithm,
    /// Fitness evaluations allowed (cache hits are free).
    pub budget: usize,
    /// Evolution: population size P.
    pub population: usize,
    /// Evolution: tournament size S.
    pub sample: usize,
    /// New candidates per generation (one fitness call each).
    pub batch: usize,
    pub max_mflops: Option<f64>,
    pub max_mparams: Option<f64>,
    /// Keep and return the Pareto front of score vs MFLOPs instead of a ranking.
    pub multi_objective: bool,
    pub seed: u64,
    /// FLOP reduction: the start network.
    pub start: Option<Start>,
    /// FLOP reduction: the score may drop by at most this much (task units).
    pub tolerance: f64,
    /// FLOP reduction: the start's measured score, in the fitness's units (higher is better),
    /// when it is known. The tolerance is then measured from it instead of from the start's
    /// predicted score. Why: the start of a reduction is usually a network chosen for being
    /// good, and a predictor fitted to a few labels shrinks an extreme network's score towards
    /// the labels' mean, so a drop measured from the start's prediction is measured from too
    /// low a line (BENCHMARKS.md: the predicted drops were 0.1–0.3 points for true drops of
    /// 0.5–2.9). The start itself always clears the floor (a result is never empty). Left out
    /// of the JSON when unset, so specs and states stored before it existed serialise as they
    /// did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<f64>,
    /// FLOP reduction: the predicted score must also stay at most the tolerance *above* the
    /// reference (or the start's prediction), so "within the tolerance" holds on both sides.
    /// Why: a cheaper network predicted clearly better than the start, a network chosen for
    /// being good, is the fitted predictor extrapolating. True by default since session 11:
    /// on five validation tasks it harmed fewer reductions (true drop > 0.5 in 25 of 100
    /// seeds instead of 28) and reached both ≥ 15 % fewer FLOPs and a true drop ≤ 0.5 as
    /// often (BENCHMARKS.md). A state stored without the field reads it as false, so a search
    /// resumed across versions goes on as it began; left out of the JSON when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub two_sided: bool,
    /// FLOP reduction: networks expanded per generation.
    pub beam: usize,
    /// FLOP reduction: at most this many moves from the start (a trust region: the predictor
    /// is fine-tuned on networks near the start and is trusted only there); none: unlimited.
    pub radius: Option<usize>,
    /// Results returned by single-objective searches.
    pub top_k: usize,
    /// Reuse the score of a network seen before (same graph hash) instead of scoring it
    /// again. Off only to measure what scoring every candidate costs (`aiop bench search`).
    pub cache: bool,
}

impl Default for SearchSpec {
    fn default() -> SearchSpec {
        SearchSpec {
            space: None,
            task: None,
            algorithm: Algorithm::Evolution,
            budget: 1000,
            population: 64,
            sample: 16,
            batch: 16,
            max_mflops: None,
            max_mparams: None,
            multi_objective: false,
            seed: 0,
            start: None,
            tolerance: 0.5,
            reference: None,
            two_sided: true,
            beam: 8,
            radius: None,
            top_k: 10,
            cache: true,
        }
    }
}

impl SearchSpec {
    /// Check the spec is complete and sensible.
    pub fn validate(&self) -> Result<(), SearchError> {
        let bad = |m: &str| Err(SearchError::Invalid(m.to_string()));
        if self.budget == 0 {
            return bad("budget must be at least 1 evaluation");
        }
        if self.batch == 0 {
            return bad("batch must be at least 1 candidate per generation");
        }
        if self.budget > super::MAX_BUDGET {
            return bad(&format!(
                "budget {} is over the limit of {} evaluations",
                self.budget,
                super::MAX_BUDGET
            ));
        }
        for (name, v, max) in [
            ("batch", self.batch, super::MAX_BATCH),
            ("population", self.population, super::MAX_POPULATION),
            ("sample", self.sample, super::MAX_POPULATION),
        ] {
            if v > max {
                return bad(&format!("{name} {v} is over the limit of {max}"));
            }
        }
        for (name, limit) in [
            ("max_mflops", self.max_mflops),
            ("max_mparams", self.max_mparams),
        ] {
            // NaN admits nothing, infinity everything, zero or less nothing: all are mistakes.
            if limit.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                return bad(&format!("{name} must be a positive number"));
            }
        }
        match self.algorithm {
            Algorithm::Evolution | Algorithm::Random => {
                if self.space.is_none() || self.task.is_none() {
                    return bad("evolution and random search need a space and a task");
                }
                if self.algorithm == Algorithm::Evolution
                    && (self.population < 2 || self.sample == 0 || self.sample > self.population)
                {
                    return bad("evolution needs population >= 2 and 1 <= sample <= population");
                }
            }
            Algorithm::Flops => match &self.start {
                None => return bad("a FLOP-reducing search needs a start network"),
                Some(Start::Arch(_)) if self.space.is_none() || self.task.is_none() => {
                    return bad("a start architecture needs a space and a task")
                }
                _ => {}
            },
        }
        if let (Some(space), Some(task)) = (self.space, self.task) {
            if !space.tasks().contains(&task) {
                return bad(&format!("space {space} has no task {task}"));
            }
        }
        if self.radius == Some(0) {
            return bad("radius must be at least 1 (leave it out for no limit)");
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return bad("tolerance must be a non-negative number");
        }
        if self.reference.is_some_and(|r| !r.is_finite()) {
            return bad("reference must be a finite number");
        }
        Ok(())
    }

    /// The constraints, for people: `max_mflops 20, max_mparams 1.5` (`none` without any).
    pub fn constraints(&self) -> String {
        let parts: Vec<String> = [
            ("max_mflops", self.max_mflops),
            ("max_mparams", self.max_mparams),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.map(|v| format!("{name} {}", crate::show::num(v))))
        .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A candidate network: an architecture of a space, or a free graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "GenomeRepr", try_from = "GenomeRepr")]
pub enum Genome {
    Arch(Arch),
    Graph(Arc<Graph>),
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum GenomeRepr {
    Arch { space: SpaceId, arch: String },
    Graph { graph: String },
}

impl From<Genome> for GenomeRepr {
    fn from(g: Genome) -> GenomeRepr {
        match g {
            Genome::Arch(a) => GenomeRepr::Arch {
                space: a.space(),
                arch: a.to_string(),
            },
            Genome::Graph(g) => GenomeRepr::Graph {
                graph: json::to_json(&g),
            },
        }
    }
}

impl TryFrom<GenomeRepr> for Genome {
    type Error = String;
    fn try_from(r: GenomeRepr) -> Result<Genome, String> {
        match r {
            GenomeRepr::Arch { space, arch } => Arch::parse(space, &arch)
                .map(Genome::Arch)
                .map_err(|e| e.to_string()),
            GenomeRepr::Graph { graph } => json::from_json(&graph)
                .map(|g| Genome::Graph(Arc::new(g)))
                .map_err(|e| e.to_string()),
        }
    }
}

/// One evaluated candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluated {
    pub genome: Genome,
    pub hash: GraphHash,
    pub mflops: f64,
    pub mparams: f64,
    /// Fitness (higher is better).
    pub score: f64,
    pub generation: u64,
    /// FLOP reduction: moves from the start along the path that reached it (0 elsewhere).
    #[serde(default)]
    pub moves: u32,
}

/// A search in progress or finished.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchState {
    pub spec: SearchSpec,
    pub rng: Rng,
    pub generation: u64,
    /// Fitness evaluations used.
    pub evaluations: usize,
    /// Candidates proposed, re-proposals the cache served included (a throughput figure; a
    /// checkpoint written before it existed resumes counting from zero).
    #[serde(default)]
    pub proposed: usize,
    /// Consecutive generations that found nothing new.
    pub stalled: u32,
    /// Evolution: history indices of the population, oldest first.
    pub population: VecDeque<usize>,
    /// Every candidate evaluated, in order. With the cache, each (network, genome) appears
    /// once, where it was first proposed: a re-proposal is served the entry's score and joins
    /// the population by the entry's index, so a converged search does not grow its history
    /// (nor its checkpoints). Without the cache every evaluation is an entry of its own.
    pub history: Vec<Evaluated>,
    /// FLOP reduction: history indices to expand next.
    pub frontier: Vec<usize>,
    /// FLOP reduction: history index of the start network.
    pub start: Option<usize>,
    pub done: bool,
    /// Index from graph hash to the history entries with it, first first (derived, rebuilt on
    /// demand; more than one where different genomes build the same network).
    #[serde(skip)]
    seen: Option<HashMap<GraphHash, Vec<usize>>>,
    /// What [`SearchState::best`] found over the first entries of the history, kept by
    /// [`step`] so that reading the best after every generation costs only the entries added
    /// since, not the whole history (derived, like `seen`: rebuilt from the history).
    #[serde(skip)]
    best_so_far: Option<BestSoFar>,
}

/// [`SearchState::best`] over `history[..scanned]`, valid while the rules that decide it (the
/// spec's and the start's, in `key`) stay as they were.
#[derive(Debug, Clone, Copy, PartialEq)]
struct BestSoFar {
    scanned: usize,
    best: Option<usize>,
    key: BestKey,
}

/// Everything [`SearchState::best`]'s order and eligibility read besides the entries.
type BestKey = (Algorithm, bool, Option<usize>, Option<u64>, Option<u64>);

impl PartialEq for SearchState {
    fn eq(&self, o: &SearchState) -> bool {
        self.spec == o.spec
            && self.rng == o.rng
            && self.generation == o.generation
            && self.evaluations == o.evaluations
            && self.proposed == o.proposed
            && self.stalled == o.stalled
            && self.population == o.population
            && self.history == o.history
            && self.frontier == o.frontier
            && self.start == o.start
            && self.done == o.done
    }
}

/// Generations in a row without a new evaluation after which a search stops (space exhausted).
const MAX_STALLED: u32 = 100;
/// Tries to draw a candidate within the constraints.
const MAX_TRIES: usize = 10_000;

/// A move of a FLOP reduction: a neighbouring architecture, or an edit of history entry
/// `.0`'s graph.
enum Move {
    Arch(Arch),
    Edit(usize, edit::GraphEdit),
}

impl Move {
    /// The network the move makes; `None` for an edit that does not apply (it leaves the
    /// graph inconsistent).
    fn genome(&self, s: &SearchState) -> Option<Genome> {
        match self {
            Move::Arch(a) => Some(Genome::Arch(a.clone())),
            Move::Edit(from, e) => edit::apply(s.graph_of(*from), e)
                .ok()
                .map(|g| Genome::Graph(Arc::new(g))),
        }
    }
}

/// A built candidate before scoring.
struct Built {
    genome: Genome,
    graph: Arc<Graph>,
    hash: GraphHash,
    mflops: f64,
    mparams: f64,
    moves: u32,
}

impl SearchState {
    /// Why the search ended; `None` while it has not (a cancelled search has not).
    pub fn end_reason(&self) -> Option<EndReason> {
        if !self.done {
            None
        } else if self.evaluations >= self.spec.budget {
            Some(EndReason::Budget)
        } else if self.stalled >= MAX_STALLED {
            Some(EndReason::Stalled)
        } else {
            Some(EndReason::NoCandidates)
        }
    }

    /// Whether a state read back (a checkpoint, an import) can be stepped: its spec valid and
    /// every history index it holds (population, frontier, start) inside its history.
    pub fn check(&self) -> Result<(), SearchError> {
        self.spec.validate()?;
        let n = self.history.len();
        let bad = self
            .population
            .iter()
            .chain(&self.frontier)
            .chain(&self.start)
            .find(|&&i| i >= n);
        match bad {
            Some(i) => Err(SearchError::Invalid(format!(
                "the state names history entry {i}, of {n}"
            ))),
            None => Ok(()),
        }
    }

    pub fn new(spec: SearchSpec) -> Result<SearchState, SearchError> {
        spec.validate()?;
        Ok(SearchState {
            rng: Rng::new(spec.seed),
            spec,
            generation: 0,
            evaluations: 0,
            proposed: 0,
            stalled: 0,
            population: VecDeque::new(),
            history: Vec::new(),
            frontier: Vec::new(),
            start: None,
            done: false,
            seen: None,
            best_so_far: None,
        })
    }

    fn seen(&mut self) -> &mut HashMap<GraphHash, Vec<usize>> {
        let history = &self.history;
        self.seen.get_or_insert_with(|| {
            let mut m: HashMap<GraphHash, Vec<usize>> = HashMap::with_capacity(history.len());
            for (i, e) in history.iter().enumerate() {
                m.entry(e.hash).or_default().push(i);
            }
            m
        })
    }

    /// The first history entry with this network, if any.
    fn first_seen(&mut self, hash: &GraphHash) -> Option<usize> {
        self.seen().get(hash).map(|v| v[0])
    }

    /// The history entry of this very candidate (same network and same genome), if any.
    fn entry_of(&mut self, b: &Built) -> Option<usize> {
        self.seen();
        let ids = self.seen.as_ref()?.get(&b.hash)?;
        ids.iter()
            .copied()
            .find(|&j| self.history[j].genome == b.genome)
    }

    fn build(&self, genome: Genome) -> Result<Built, SearchError> {
        let graph = match &genome {
            Genome::Arch(a) => {
                let task = self.spec.task.ok_or_else(|| {
                    SearchError::Invalid("an architecture needs a task to build".into())
                })?;
                Arc::new(a.build(task)?)
            }
            Genome::Graph(g) => g.clone(),
        };
        Ok(Built {
            hash: graph.hash(),
            mflops: graph.flops(Convention::Macs) as f64 / 1e6,
            mparams: graph.params() as f64 / 1e6,
            genome,
            graph,
            moves: 0,
        })
    }

    fn feasible(&self, b: &Built) -> bool {
        self.within_constraints(b.mflops, b.mparams)
    }

    fn within_constraints(&self, mflops: f64, mparams: f64) -> bool {
        self.spec.max_mflops.is_none_or(|m| mflops <= m)
            && self.spec.max_mparams.is_none_or(|m| mparams <= m)
    }

    /// Whether history entry `i` meets the constraints. Every entry of an evolution or a
    /// random search does (nothing else is proposed); a FLOP reduction from a start that
    /// breaks them walks through networks that break them too, on its way down.
    fn entry_feasible(&self, i: usize) -> bool {
        let e = &self.history[i];
        self.within_constraints(e.mflops, e.mparams)
    }

    /// Whether some network evaluated meets the constraints. Only a FLOP reduction can end
    /// without one: its start is always evaluated (and a result, the reference of the rest),
    /// within them or not, and from a start that breaks them it walks through networks that
    /// break them too. One that meets them but not the tolerance still counts: the constraints
    /// were met, the tolerance was what no cheaper network kept. False before any evaluation.
    pub fn found_within_constraints(&self) -> bool {
        (0..self.history.len()).any(|i| self.entry_feasible(i))
    }

    fn space(&self) -> Result<SpaceId, SearchError> {
        self.spec
            .space
            .ok_or_else(|| SearchError::Invalid("this search needs a space".into()))
    }

    fn random_feasible(&mut self) -> Result<Built, SearchError> {
        let space = self.space()?;
        for _ in 0..MAX_TRIES {
            let a = spaces::sample(space, &mut self.rng);
            let b = self.build(Genome::Arch(a))?;
            if self.feasible(&b) {
                return Ok(b);
            }
        }
        Err(SearchError::Infeasible {
            tries: MAX_TRIES,
            constraints: self.spec.constraints(),
        })
    }

    /// A random feasible neighbour of history entry `parent`, if any.
    fn mutate(&mut self, parent: usize) -> Result<Option<Built>, SearchError> {
        let Genome::Arch(a) = &self.history[parent].genome else {
            return Err(SearchError::Invalid(
                "evolution mutates architectures only".into(),
            ));
        };
        let mut ns = a.neighbours();
        self.rng.shuffle(&mut ns);
        for n in ns {
            let b = self.build(Genome::Arch(n))?;
            if self.feasible(&b) {
                return Ok(Some(b));
            }
        }
        Ok(None)
    }

    /// Tournament selection over the population: S distinct members, the best wins (in
    /// multi-objective mode, a member no other sampled member dominates; ties by score, then age).
    /// Members are drawn by position in the population (a re-proposed network may stand at
    /// several), and ties go to the younger position.
    fn tournament(&mut self) -> usize {
        let mut pool: Vec<usize> = (0..self.population.len()).collect();
        let s = self.spec.sample.min(pool.len());
        for i in 0..s {
            let j = i + self.rng.index(pool.len() - i);
            pool.swap(i, j);
        }
        let contenders = &pool[..s];
        let h = &self.history;
        let pop = &self.population;
        let score = |p: usize| h[pop[p]].score;
        let key = |p: usize| (h[pop[p]].score, -h[pop[p]].mflops);
        let eligible: Vec<usize> = if self.spec.multi_objective {
            contenders
                .iter()
                .copied()
                .filter(|&i| {
                    !contenders
                        .iter()
                        .any(|&j| pareto::dominates(key(j), key(i)))
                })
                .collect()
        } else {
            contenders.to_vec()
        };
        let winner = eligible
            .into_iter()
            .max_by(|&p, &q| score(p).total_cmp(&score(q)).then(p.cmp(&q)))
            .expect("a tournament has contenders");
        pop[winner]
    }

    /// Score the new ones among `cands` in one fitness call and append them to the history.
    /// Misses beyond the remaining budget are dropped. Returns each kept candidate's history
    /// index, in order: with the cache, a candidate already in the history (same network, same
    /// genome) keeps its entry's index and adds nothing; a known network of another genome is
    /// appended with the known score.
    fn evaluate(
        &mut self,
        cands: Vec<Built>,
        fitness: &mut dyn Fitness,
    ) -> Result<Vec<usize>, SearchError> {
        let remaining = self.spec.budget.saturating_sub(self.evaluations);
        let mut keep: Vec<(Built, Option<f64>)> = Vec::with_capacity(cands.len());
        let mut batch_hashes: HashSet<GraphHash> = HashSet::new();
        let mut misses = 0usize;
        for b in cands {
            let cached = self.spec.cache.then(|| self.first_seen(&b.hash)).flatten();
            if let Some(i) = cached {
                let s = self.history[i].score;
                keep.push((b, Some(s)));
            } else if self.spec.cache && batch_hashes.contains(&b.hash) {
                keep.push((b, None)); // duplicate within the batch: scored once, below
            } else if misses < remaining {
                misses += 1;
                batch_hashes.insert(b.hash);
                keep.push((b, None));
            }
        }
        // One fitness call for the distinct misses, in order.
        let mut first: HashMap<GraphHash, usize> = HashMap::new();
        let mut to_score: Vec<usize> = Vec::new();
        for (k, (b, s)) in keep.iter().enumerate() {
            if s.is_none() && (!self.spec.cache || !first.contains_key(&b.hash)) {
                first.insert(b.hash, to_score.len());
                to_score.push(k);
            }
        }
        let scores = if to_score.is_empty() {
            Vec::new()
        } else {
            let view: Vec<Candidate<'_>> = to_score
                .iter()
                .map(|&k| Candidate {
                    genome: &keep[k].0.genome,
                    graph: &keep[k].0.graph,
                })
                .collect();
            let s = fitness.score(&view)?;
            if s.len() != view.len() {
                return Err(SearchError::Fitness(format!(
                    "{} scores for {} candidates",
                    s.len(),
                    view.len()
                )));
            }
            if let Some(bad) = s.iter().find(|x| !x.is_finite()) {
                return Err(SearchError::Fitness(format!("non-finite score {bad}")));
            }
            s
        };
        self.evaluations += scores.len();
        if scores.is_empty() {
            self.stalled += 1;
        } else {
            self.stalled = 0;
        }
        self.proposed += keep.len();
        let mut added = Vec::with_capacity(keep.len());
        for (b, s) in keep {
            if self.spec.cache {
                if let Some(j) = self.entry_of(&b) {
                    added.push(j);
                    continue;
                }
            }
            let score = s.unwrap_or_else(|| scores[first[&b.hash]]);
            let idx = self.history.len();
            self.seen().entry(b.hash).or_default().push(idx);
            self.history.push(Evaluated {
                genome: b.genome,
                hash: b.hash,
                mflops: b.mflops,
                mparams: b.mparams,
                score,
                generation: self.generation,
                moves: b.moves,
            });
            added.push(idx);
        }
        Ok(added)
    }

    fn step_evolution(&mut self, fitness: &mut dyn Fitness) -> Result<(), SearchError> {
        let p = self.spec.population;
        let mut cands = Vec::with_capacity(self.spec.batch);
        if self.population.len() < p {
            let n = self.spec.batch.min(p - self.population.len());
            for _ in 0..n {
                cands.push(self.random_feasible()?);
            }
        } else if self.stalled > 0 {
            // The last generation found nothing new: a converged population re-proposes what
            // it has seen, so this one brings random immigrants instead of mutants (they join
            // the population and age out like any child). The search stops as stalled only
            // when [`MAX_STALLED`] generations in a row, immigrants included, find nothing new.
            for _ in 0..self.spec.batch {
                cands.push(self.random_feasible()?);
            }
        } else {
            for _ in 0..self.spec.batch {
                let parent = self.tournament();
                match self.mutate(parent)? {
                    Some(c) => cands.push(c),
                    None => cands.push(self.random_feasible()?),
                }
            }
        }
        for idx in self.evaluate(cands, fitness)? {
            self.population.push_back(idx);
            if self.population.len() > p {
                self.population.pop_front();
            }
        }
        Ok(())
    }

    fn step_random(&mut self, fitness: &mut dyn Fitness) -> Result<(), SearchError> {
        let mut cands = Vec::with_capacity(self.spec.batch);
        for _ in 0..self.spec.batch {
            cands.push(self.random_feasible()?);
        }
        self.evaluate(cands, fitness)?;
        Ok(())
    }

    fn start_genome(&self) -> Result<Genome, SearchError> {
        match &self.spec.start {
            Some(Start::Arch(s)) => Ok(Genome::Arch(Arch::parse(self.space()?, s)?)),
            Some(Start::Graph(text)) => {
                let g = json::from_json(text)?;
                super::check_start_graph(&g)?;
                Ok(Genome::Graph(Arc::new(g)))
            }
            None => Err(SearchError::Invalid("no start network".into())),
        }
    }

    /// The score a FLOP-reduced network must keep: the tolerance below the start's measured
    /// score when the spec gives it, else below the start's predicted score.
    pub fn floor(&self) -> Option<f64> {
        self.tolerance_line().map(|l| l - self.spec.tolerance)
    }

    /// The score a FLOP-reduced network may not exceed: the tolerance above the same line,
    /// when the spec is two-sided.
    pub fn ceiling(&self) -> Option<f64> {
        self.tolerance_line()
            .filter(|_| self.spec.two_sided)
            .map(|l| l + self.spec.tolerance)
    }

    /// The line the tolerance is measured from: the start's measured score when the spec
    /// gives it, else its predicted score (none before the start is scored).
    fn tolerance_line(&self) -> Option<f64> {
        self.start
            .map(|s| self.spec.reference.unwrap_or(self.history[s].score))
    }

    /// Whether a FLOP-reduced network's score is within the tolerance.
    fn within_tolerance(&self, score: f64) -> bool {
        self.floor().is_none_or(|f| score >= f) && self.ceiling().is_none_or(|c| score <= c)
    }

    /// The moves of history entry `from`: its neighbours, or the edits of its graph (as
    /// edits: each is a whole graph once applied, see [`Move::genome`]).
    fn moves(&self, from: usize) -> Vec<Move> {
        match &self.history[from].genome {
            Genome::Arch(a) => a.neighbours().into_iter().map(Move::Arch).collect(),
            Genome::Graph(_) => edit::edits(self.graph_of(from))
                .into_iter()
                .map(|e| Move::Edit(from, e))
                .collect(),
        }
    }

    /// The graph of history entry `i`, which holds a free graph.
    fn graph_of(&self, i: usize) -> &Graph {
        match &self.history[i].genome {
            Genome::Graph(g) => g,
            Genome::Arch(_) => unreachable!("entry {i} holds an architecture"),
        }
    }

    fn step_flops(&mut self, fitness: &mut dyn Fitness) -> Result<(), SearchError> {
        let Some(_) = self.start else {
            let b = self.build(self.start_genome()?)?;
            let idx = self.evaluate(vec![b], fitness)?;
            self.start = idx.first().copied();
            self.frontier = idx;
            return Ok(());
        };
        // All cheaper, unseen, feasible moves of the frontier. From a network that breaks
        // the constraints (a start above `max_mflops`, and the networks on the way down from
        // it) a cheaper move is taken even if it breaks them too: the way to a network within
        // them goes through such moves. No infeasible network is a result.
        // Each candidate is kept as its move, its graph dropped once checked: a free graph's
        // moves are whole copies of it, thousands for a large one; the batch's few are built
        // again below.
        let mut cands: Vec<(Move, u32)> = Vec::new();
        let mut batch_seen: HashSet<GraphHash> = HashSet::new();
        for f in self.frontier.clone() {
            let fl = self.history[f].mflops;
            let from_feasible = self.entry_feasible(f);
            let moves = self.history[f].moves + 1;
            if self.spec.radius.is_some_and(|r| moves as usize > r) {
                continue;
            }
            for m in self.moves(f) {
                let Some(genome) = m.genome(self) else {
                    continue;
                };
                let b = self.build(genome)?;
                if b.mflops < fl
                    && (self.feasible(&b) || !from_feasible)
                    && self.first_seen(&b.hash).is_none()
                    && batch_seen.insert(b.hash)
                {
                    cands.push((m, moves));
                }
            }
        }
        if cands.is_empty() {
            self.done = true;
            return Ok(());
        }
        self.rng.shuffle(&mut cands);
        cands.truncate(self.spec.batch);
        let cands = cands
            .into_iter()
            .map(|(m, moves)| {
                let genome = m.genome(self).expect("it applied a moment ago");
                let mut b = self.build(genome)?;
                b.moves = moves;
                Ok(b)
            })
            .collect::<Result<Vec<Built>, SearchError>>()?;
        let added = self.evaluate(cands, fitness)?;
        let mut accepted: Vec<usize> = added
            .into_iter()
            .filter(|&i| self.within_tolerance(self.history[i].score))
            .collect();
        if !accepted.is_empty() {
            let h = &self.history;
            accepted.sort_by(|&i, &j| {
                h[i].mflops
                    .total_cmp(&h[j].mflops)
                    .then(h[j].score.total_cmp(&h[i].score))
                    .then(i.cmp(&j))
            });
            accepted.truncate(self.spec.beam.max(1));
            self.frontier = accepted;
        }
        Ok(())
    }

    /// Indices of the result set: ranking, Pareto front, or the FLOPs/score front of a reduction.
    pub fn result_indices(&self) -> Vec<usize> {
        // First occurrence of each network.
        let mut firsts: Vec<usize> = Vec::new();
        let mut seen: HashSet<GraphHash> = HashSet::new();
        for (i, e) in self.history.iter().enumerate() {
            if seen.insert(e.hash) {
                firsts.push(i);
            }
        }
        let h = &self.history;
        match self.spec.algorithm {
            Algorithm::Flops => {
                // The start always clears the floor: keeping it loses nothing, whatever its
                // prediction (it leaves the front only when a cheaper network scores higher).
                // It is kept even when it breaks the constraints, as the reference of the
                // rest; no other network that breaks them is a result.
                let ok: Vec<usize> = firsts
                    .into_iter()
                    .filter(|&i| {
                        Some(i) == self.start
                            || (self.within_tolerance(h[i].score) && self.entry_feasible(i))
                    })
                    .collect();
                let pts: Vec<(f64, f64)> = ok.iter().map(|&i| (h[i].score, h[i].mflops)).collect();
                pareto::front(&pts).into_iter().map(|k| ok[k]).collect()
            }
            _ if self.spec.multi_objective => {
                let pts: Vec<(f64, f64)> =
                    firsts.iter().map(|&i| (h[i].score, h[i].mflops)).collect();
                pareto::front(&pts).into_iter().map(|k| firsts[k]).collect()
            }
            _ => {
                let mut v = firsts;
                v.sort_by(|&i, &j| h[j].score.total_cmp(&h[i].score).then(i.cmp(&j)));
                v.truncate(self.spec.top_k.max(1));
                v
            }
        }
    }

    /// The results as rows (oracle left empty: the caller fills it for experiments).
    pub fn results(&self) -> Vec<ResultRow> {
        self.result_indices()
            .into_iter()
            .map(|i| {
                let e = &self.history[i];
                let (arch, graph) = match &e.genome {
                    Genome::Arch(a) => (Some(a.to_string()), None),
                    Genome::Graph(g) => (None, serde_json::from_str(&json::to_json(g)).ok()),
                };
                ResultRow {
                    arch,
                    graph,
                    predicted: e.score,
                    mflops: e.mflops,
                    mparams: e.mparams,
                    hash: e.hash,
                    oracle: None,
                }
            })
            .collect()
    }

    /// The search's best result so far, the one definition of it (the daemon's record and
    /// `aiop_search_best_score`, the command line's progress bar and experiments all read
    /// this): for evolution and random search the highest score (ties: the earliest found, and
    /// in multi-objective mode the cheaper first), which is the first entry of a ranking's
    /// [`SearchState::results`] and the last of a front's; for a FLOP reduction the cheapest
    /// network within the tolerance and the constraints (ties: the higher score, then the earliest), or the start
    /// when none is, which is the first entry of its results. `None` before any evaluation.
    /// Read after every generation, so no sort and no pass over the whole history: [`step`]
    /// keeps the best of the entries so far, and only those added since are looked at.
    pub fn best(&self) -> Option<&Evaluated> {
        let (from, best) = self.best_recorded(&self.best_key());
        self.best_from(from, best).map(|i| &self.history[i])
    }

    /// How many entries the record of the best covers and the best among them (none when
    /// it was kept under other rules than `key`).
    fn best_recorded(&self, key: &BestKey) -> (usize, Option<usize>) {
        match self.best_so_far {
            Some(b) if b.key == *key && b.scanned <= self.history.len() => (b.scanned, b.best),
            _ => (0, None),
        }
    }

    /// The rules [`SearchState::best`] follows, as they stand.
    fn best_key(&self) -> BestKey {
        (
            self.spec.algorithm,
            self.spec.multi_objective,
            self.start,
            self.floor().map(f64::to_bits),
            self.ceiling().map(f64::to_bits),
        )
    }

    /// The best of `best` (an index below `from`, or none) and the entries from `from` on.
    fn best_from(&self, from: usize, mut best: Option<usize>) -> Option<usize> {
        let h = &self.history;
        let better = |i: usize, j: usize| -> bool {
            let (a, b) = (&h[i], &h[j]);
            let order = match self.spec.algorithm {
                Algorithm::Flops => b
                    .mflops
                    .total_cmp(&a.mflops)
                    .then(a.score.total_cmp(&b.score)),
                _ if self.spec.multi_objective => a
                    .score
                    .total_cmp(&b.score)
                    .then(b.mflops.total_cmp(&a.mflops)),
                _ => a.score.total_cmp(&b.score),
            };
            // Strictly better only: on a tie the earlier entry stays.
            order == std::cmp::Ordering::Greater
        };
        let eligible = |i: usize| {
            self.spec.algorithm != Algorithm::Flops
                || Some(i) == self.start
                || (self.within_tolerance(h[i].score) && self.entry_feasible(i))
        };
        for i in (from..h.len()).filter(|&i| eligible(i)) {
            if best.is_none_or(|b| better(i, b)) {
                best = Some(i);
            }
        }
        best
    }

    /// Bring [`SearchState::best`]'s record up to the end of the history.
    fn keep_best(&mut self) {
        let key = self.best_key();
        let (from, best) = self.best_recorded(&key);
        self.best_so_far = Some(BestSoFar {
            scanned: self.history.len(),
            best: self.best_from(from, best),
            key,
        });
    }
}

/// One row of a search's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph: Option<serde_json::Value>,
    pub predicted: f64,
    pub mflops: f64,
    pub mparams: f64,
    pub hash: GraphHash,
    /// The benchmark's true label, where the table has it (experiments only; never searched on).
    pub oracle: Option<f64>,
}

/// Advance a search by one generation (no-op once done).
pub fn step(state: &mut SearchState, fitness: &mut dyn Fitness) -> Result<(), SearchError> {
    if state.done {
        return Ok(());
    }
    match state.spec.algorithm {
        Algorithm::Evolution => state.step_evolution(fitness)?,
        Algorithm::Random => state.step_random(fitness)?,
        Algorithm::Flops => state.step_flops(fitness)?,
    }
    state.generation += 1;
    if state.evaluations >= state.spec.budget || state.stalled >= MAX_STALLED {
        state.done = true;
    }
    state.keep_best();
    Ok(())
}

/// Why a finished search ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Its budget of evaluations is spent.
    Budget,
    /// [`MAX_STALLED`] generations in a row proposed only networks it had already evaluated,
    /// an evolution's random immigrants included: the space within the constraints is (nearly)
    /// exhausted.
    Stalled,
    /// FLOP reduction: no cheaper feasible network is left within reach.
    NoCandidates,
}

impl EndReason {
    /// A sentence for people.
    pub fn describe(self) -> String {
        match self {
            EndReason::Budget => "its budget of evaluations is spent".into(),
            EndReason::Stalled => format!(
                "{MAX_STALLED} generations in a row, random draws included, found no network \
                 it had not evaluated: the space within its constraints is (nearly) exhausted"
            ),
            EndReason::NoCandidates => "no cheaper feasible network is left within reach".into(),
        }
    }
}

/// How a [`run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    Cancelled,
}

/// Run generations until done or cancelled; `after_generation` sees the state after each one
/// (checkpoint it there). The cancellation flag is checked before every generation.
pub fn run(
    state: &mut SearchState,
    fitness: &mut dyn Fitness,
    cancel: &AtomicBool,
    mut after_generation: impl FnMut(&SearchState) -> Result<(), SearchError>,
) -> Result<Outcome, SearchError> {
    while !state.done {
        if cancel.load(Ordering::Relaxed) {
            return Ok(Outcome::Cancelled);
        }
        step(state, fitness)?;
        after_generation(state)?;
    }
    Ok(Outcome::Finished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::TableFitness;

    fn spec(alg: Algorithm) -> SearchSpec {
        SearchSpec {
            space: Some(SpaceId::Nb201),
            task: Some(Task::Cifar10),
            algorithm: alg,
            budget: 300,
            population: 32,
            sample: 8,
            batch: 8,
            seed: 7,
            ..SearchSpec::default()
        }
    }

    #[test]
    fn without_the_cache_every_candidate_is_scored() {
        let cancel = AtomicBool::new(false);
        let mut runs = Vec::new();
        for cache in [true, false] {
            let mut fit = TableFitness::load(SpaceId::Nb201, Task::Cifar10).unwrap();
            let mut s = SearchState::new(SearchSpec {
                cache,
                population: 8,
                sample: 4,
                ..spec(Algorithm::Evolution)
            })
            .unwrap();
            run(&mut s, &mut fit, &cancel, |_| Ok(())).unwrap();
            assert_eq!(s.evaluations, 300);
            assert_eq!(fit.queries, 300);
            runs.push(s);
        }
        // A small population re-proposes networks: the cache serves them without a new history
        // entry (each genome once); without it each one is scored again, to the same score.
        assert!(runs[0].proposed > 300, "{}", runs[0].proposed);
        assert!(runs[0].history.len() < runs[0].proposed);
        let genomes: std::collections::HashSet<String> = runs[0]
            .history
            .iter()
            .map(|e| serde_json::to_string(&e.genome).unwrap())
            .collect();
        assert_eq!(genomes.len(), runs[0].history.len());
        assert!(runs[0]
            .population
            .iter()
            .all(|&i| i < runs[0].history.len()));
        assert_eq!(runs[1].history.len(), 300);
        assert_eq!(runs[1].proposed, 300);
        let hashes: std::collections::HashSet<_> = runs[1].history.iter().map(|e| e.hash).collect();
        assert!(hashes.len() < 300);
        for e in &runs[1].history {
            let first = runs[1].history.iter().find(|f| f.hash == e.hash).unwrap();
            assert_eq!(first.score, e.score);
        }
    }

    #[test]
    fn evolution_respects_budget_and_beats_its_start() {
        let mut fit = TableFitness::load(SpaceId::Nb201, Task::Cifar10).unwrap();
        let mut s = SearchState::new(spec(Algorithm::Evolution)).unwrap();
        let cancel = AtomicBool::new(false);
        run(&mut s, &mut fit, &cancel, |_| Ok(())).unwrap();
        assert_eq!(s.evaluations, 300);
        assert_eq!(fit.queries, 300);
        let best = s.best().unwrap().score;
        let first_pop_best = s.history[..32]
            .iter()
            .map(|e| e.score)
            .fold(f64::MIN, f64::max);
        assert!(best >= first_pop_best);
        let r = s.results();
        assert_eq!(r.len(), 10);
        assert!(r.windows(2).all(|w| w[0].predicted >= w[1].predicted));
    }

    #[test]
    fn checkpoint_and_resume_is_bit_for_bit() {
        let cancel = AtomicBool::new(false);
        let mut fit = TableFitness::load(SpaceId::Nb201, Task::Cifar10).unwrap();
        let mut whole = SearchState::new(spec(Algorithm::Evolution)).unwrap();
        run(&mut whole, &mut fit, &cancel, |_| Ok(())).unwrap();

        let mut part = SearchState::new(spec(Algorithm::Evolution)).unwrap();
        for _ in 0..9 {
            step(&mut part, &mut fit).unwrap();
        }
        let saved = serde_json::to_string(&part).unwrap();
        let mut resumed: SearchState = serde_json::from_str(&saved).unwrap();
        assert_eq!(resumed, part);
        run(&mut resumed, &mut fit, &cancel, |_| Ok(())).unwrap();
        assert_eq!(resumed, whole);
        assert_eq!(
            serde_json::to_string(&resumed).unwrap(),
            serde_json::to_string(&whole).unwrap()
        );
    }

    #[test]
    fn a_history_with_repeated_entries_resumes_the_same_search() {
        // Checkpoints written before re-proposals were folded into their first entry hold a
        // history entry per proposal, the population pointing at the latest: such a state must
        // go on exactly as the folded one does.
        let cancel = AtomicBool::new(false);
        let small = || SearchSpec {
            population: 24,
            sample: 12,
            batch: 4,
            ..spec(Algorithm::Evolution)
        };
        let mut fit = TableFitness::load(SpaceId::Nb201, Task::Cifar10).unwrap();
        let mut folded = SearchState::new(small()).unwrap();
        for _ in 0..40 {
            step(&mut folded, &mut fit).unwrap();
        }
        let mut unfolded = folded.clone();
        unfolded.seen = None;
        for k in 0..unfolded.population.len() {
            let i = unfolded.population[k];
            let copy = Evaluated {
                generation: folded.generation,
                ..unfolded.history[i].clone()
            };
            unfolded.history.push(copy);
            unfolded.population[k] = unfolded.history.len() - 1;
        }
        let fork = folded.history.len();
        assert!(
            folded.population.iter().any(|&i| i < folded.population[0]),
            "no re-proposal in the population: nothing to check"
        );
        // Ties (here every tournament is one: all scores flattened) go to the youngest
        // contender by its place in the population, not by the history entry it stands for.
        let (mut a, mut b) = (folded.clone(), unfolded.clone());
        for e in a.history.iter_mut().chain(b.history.iter_mut()) {
            e.score = 1.0;
        }
        for _ in 0..200 {
            let (i, j) = (a.tournament(), b.tournament());
            assert_eq!(a.history[i].genome, b.history[j].genome);
        }
        run(&mut folded, &mut fit, &cancel, |_| Ok(())).unwrap();
        run(&mut unfolded, &mut fit, &cancel, |_| Ok(())).unwrap();
        let mut rest: Vec<Evaluated> = unfolded.history[..fork].to_vec();
        rest.extend_from_slice(&unfolded.history[fork + 24..]);
        assert_eq!(folded.history, rest);
        assert!(
            folded.proposed > folded.history.len(),
            "the search re-proposed nothing"
        );
        assert_eq!(folded.results(), unfolded.results());
        assert_eq!(
            (folded.evaluations, folded.generation, folded.proposed),
            (unfolded.evaluations, unfolded.generation, unfolded.proposed)
        );
        let genomes = |s: &SearchState| -> Vec<Genome> {
            s.population
                .iter()
                .map(|&i| s.history[i].genome.clone())
                .collect()
        };
        assert_eq!(genomes(&folded), genomes(&unfolded));
        assert_eq!(unfolded.history.len(), folded.history.len() + 24);
    }

    #[test]
    fn constraints_are_never_violated() {
        let mut fit = TableFitness::load(SpaceId::Nb201, Task::Cifar10).unwrap();
        let mut sp = spec(Algorithm::Evolution);
        sp.max_mflops = Some(60.0);
        let mut s = SearchState::new(sp).unwrap();
        run(&mut s, &mut fit, &AtomicBool::new(false), |_| Ok(())).unwrap();
        assert!(s.history.iter().all(|e| e.mflops <= 60.0));
    }

    #[test]
    fn a_flop_reduction_walks_down_from_a_start_above_its_constraint() {
        // 86.4 MFLOPs; networks under 50 lie a few moves down.
        let start = "|skip_connect~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_1x1~0|nor_conv_1x1~1|none~2|";
        let s = reduce_on_table(start, 300, |sp| {
            sp.tolerance = 100.0;
            sp.max_mflops = Some(50.0);
        });
        let st = &s.history[s.start.unwrap()];
        assert!(st.mflops > 50.0, "the start must break the constraint");
        let r = s.results();
        // The start may stay on the front (as the reference); no other network above 50 is
        // a result.
        let others: Vec<&ResultRow> = r.iter().filter(|x| x.hash != st.hash).collect();
        assert!(!others.is_empty(), "{:?}", s.end_reason());
        assert!(others.iter().all(|x| x.mflops <= 50.0), "{others:?}");
        let best = s.best().unwrap();
        assert!(best.mflops <= 50.0 && best.hash == r[0].hash);
        // It walked through networks above 50 on the way (no one move gets there).
        assert!(s
            .history
            .iter()
            .any(|e| e.mflops > 50.0 && e.hash != st.hash));
        // From a start within the constraint nothing above it is ever evaluated.
        let s = reduce_on_table(start, 300, |sp| {
            sp.tolerance = 100.0;
            sp.max_mflops = Some(90.0);
        });
        assert!(s.history.iter().all(|e| e.mflops <= 90.0));
    }

    #[test]
    fn flop_reduction_stays_within_tolerance() {
        let mut fit = TableFitness::load(SpaceId::Nb201, Task::Cifar10).unwrap();
        let sp = SearchSpec {
            algorithm: Algorithm::Flops,
            start: Some(Start::Arch(
                "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|".into(),
            )),
            tolerance: 0.5,
            budget: 200,
            ..spec(Algorithm::Flops)
        };
        let mut s = SearchState::new(sp).unwrap();
        run(&mut s, &mut fit, &AtomicBool::new(false), |_| Ok(())).unwrap();
        let start = &s.history[s.start.unwrap()];
        let r = s.results();
        assert!(r.iter().all(|x| x.predicted >= start.score - 0.5));
        assert!(r.iter().any(|x| x.mflops < start.mflops));
        assert!(r.windows(2).all(|w| w[0].mflops <= w[1].mflops));
    }

    #[test]
    fn a_finished_search_says_why_it_ended() {
        let cancel = AtomicBool::new(false);
        let ended = |sp: SearchSpec| {
            let mut fit = TableFitness::load(SpaceId::Nb201, Task::Cifar10).unwrap();
            let mut s = SearchState::new(sp).unwrap();
            assert_eq!(s.end_reason(), None, "not before it ends");
            run(&mut s, &mut fit, &cancel, |_| Ok(())).unwrap();
            s
        };
        let s = ended(spec(Algorithm::Evolution));
        assert_eq!(s.end_reason(), Some(EndReason::Budget));
        // A budget beyond the space's 15,625 networks: the default population converges after
        // about a thousand, then immigrants carry the search on until the space is nearly
        // exhausted.
        let s = ended(SearchSpec {
            population: 64,
            sample: 16,
            batch: 16,
            budget: 100_000,
            ..spec(Algorithm::Evolution)
        });
        assert!(s.evaluations > 14_000, "{}", s.evaluations);
        assert!(s.evaluations <= 15_625, "{}", s.evaluations);
        assert_eq!(s.end_reason(), Some(EndReason::Stalled));
        assert!(EndReason::Stalled.describe().contains("100 generations"));
        // A FLOP reduction that runs out of cheaper networks within its tolerance.
        let s = reduce_on_table(
            "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
            100_000,
            |_| {},
        );
        assert!(s.evaluations < 100_000);
        assert_eq!(s.end_reason(), Some(EndReason::NoCandidates));
        // The reason serialises as the record and the results file carry it.
        assert_eq!(
            serde_json::to_string(&EndReason::NoCandidates).unwrap(),
            "\"no_candidates\""
        );
    }

    /// A FLOP reduction of the NB-201 CIFAR-10 architecture `start` with tolerance 0.5, scored
    /// by the table, run to its end; `tweak` sets what a test varies.
    fn reduce_on_table(
        start: &str,
        budget: usize,
        tweak: impl FnOnce(&mut SearchSpec),
    ) -> SearchState {
        let mut fit = TableFitness::load(SpaceId::Nb201, Task::Cifar10).unwrap();
        let mut sp = SearchSpec {
            start: Some(Start::Arch(start.into())),
            tolerance: 0.5,
            budget,
            ..spec(Algorithm::Flops)
        };
        tweak(&mut sp);
        let mut s = SearchState::new(sp).unwrap();
        run(&mut s, &mut fit, &AtomicBool::new(false), |_| Ok(())).unwrap();
        s
    }

    #[test]
    fn a_reference_moves_the_floor_and_the_start_stays() {
        let start = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|";
        let reduce = |reference: Option<f64>| {
            let s = reduce_on_table(start, 200, |sp| sp.reference = reference);
            let st = s.history[s.start.unwrap()].clone();
            (s.floor().unwrap(), st, s.results())
        };
        let (floor, st, plain) = reduce(None);
        assert_eq!(floor, st.score - 0.5);
        // A measured score 0.3 above the start's own: the floor rises by as much, and every
        // result but the start keeps it.
        let (floor, st2, anchored) = reduce(Some(st.score + 0.3));
        assert_eq!(floor, st.score - 0.2);
        assert_eq!(st2.hash, st.hash);
        assert!(anchored
            .iter()
            .all(|r| r.predicted >= floor || r.hash == st.hash));
        let cheapest = |rs: &[ResultRow]| rs.iter().map(|r| r.mflops).fold(f64::MAX, f64::min);
        assert!(cheapest(&anchored) >= cheapest(&plain));
        assert!(anchored.len() > 1, "some cheaper network stays within 0.2");
        // Out of reach: the start alone.
        let (_, _, alone) = reduce(Some(st.score + 100.0));
        assert_eq!(alone.len(), 1);
        assert_eq!(alone[0].hash, st.hash);
        assert!(SearchState::new(SearchSpec {
            start: Some(Start::Arch(start.into())),
            reference: Some(f64::NAN),
            ..spec(Algorithm::Flops)
        })
        .is_err());
    }

    #[test]
    fn a_two_sided_tolerance_also_caps_the_score() {
        // A poor start: cheaper networks one or two moves away score far above it.
        let start = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|nor_conv_3x3~2|";
        let reduce = |two_sided: bool| {
            let s = reduce_on_table(start, 300, |sp| sp.two_sided = two_sided);
            let st = s.history[s.start.unwrap()].clone();
            (s.ceiling(), st, s.results(), s.history.clone())
        };
        let (ceiling, st, one, _) = reduce(false);
        assert_eq!(ceiling, None);
        assert!(
            one.iter().any(|r| r.predicted > st.score + 0.5),
            "the one-sided reduction keeps networks scored above the band"
        );
        let (ceiling, st2, two, history) = reduce(true);
        assert_eq!(ceiling, Some(st.score + 0.5));
        assert_eq!(st2.hash, st.hash);
        assert!(two
            .iter()
            .all(|r| r.hash == st.hash || (r.predicted - st.score).abs() <= 0.5));
        assert!(
            history.iter().any(|e| e.score > st.score + 0.5),
            "networks above the band were seen, and left out"
        );
        assert!(two.iter().any(|r| r.mflops < st.mflops), "{two:?}");
    }

    #[test]
    fn a_reduction_s_best_is_its_cheapest_network_within_the_tolerance() {
        // A poor start: cheaper networks one or two moves away score far above it, so the
        // highest score seen is outside the two-sided band and is not the reduction's best.
        let start = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|nor_conv_3x3~2|";
        let s = reduce_on_table(start, 300, |_| {});
        let st = s.history[s.start.unwrap()].clone();
        let best = s.best().unwrap();
        let r = s.results();
        assert_eq!(best.hash, r[0].hash);
        assert!(
            best.mflops < st.mflops,
            "a cheaper network is within the band"
        );
        assert!((best.score - st.score).abs() <= 0.5);
        let cheapest = s
            .history
            .iter()
            .filter(|e| (e.score - st.score).abs() <= 0.5)
            .map(|e| e.mflops)
            .fold(f64::MAX, f64::min);
        assert_eq!(best.mflops, cheapest);
        let top = s.history.iter().map(|e| e.score).fold(f64::MIN, f64::max);
        assert!(top > best.score, "the highest score is not the best here");
        // None within the tolerance (a measured value far above every score): the start.
        let s = reduce_on_table(start, 300, |sp| sp.reference = Some(st.score + 100.0));
        assert!(s.history.len() > 1);
        assert_eq!(s.best().unwrap().hash, st.hash);
        assert_eq!(s.results()[0].hash, st.hash);
        // Evolution: the highest score, the first of the ranking (ties: the earliest), and the
        // last of a multi-objective front.
        for multi_objective in [false, true] {
            let mut fit = TableFitness::load(SpaceId::Nb201, Task::Cifar10).unwrap();
            let mut e = SearchState::new(SearchSpec {
                multi_objective,
                ..spec(Algorithm::Evolution)
            })
            .unwrap();
            run(&mut e, &mut fit, &AtomicBool::new(false), |_| Ok(())).unwrap();
            let r = e.results();
            let want = if multi_objective { r.last() } else { r.first() };
            assert_eq!(e.best().unwrap().hash, want.unwrap().hash);
        }
        // Before anything is evaluated there is none.
        assert!(SearchState::new(spec(Algorithm::Random))
            .unwrap()
            .best()
            .is_none());
    }

    #[test]
    fn the_best_kept_generation_by_generation_is_a_whole_scan_s() {
        let start = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|nor_conv_3x3~2|";
        let specs = [
            spec(Algorithm::Evolution),
            SearchSpec {
                multi_objective: true,
                ..spec(Algorithm::Evolution)
            },
            spec(Algorithm::Random),
            SearchSpec {
                start: Some(Start::Arch(start.into())),
                tolerance: 0.5,
                budget: 300,
                ..spec(Algorithm::Flops)
            },
        ];
        for sp in specs {
            let mut fit = TableFitness::load(SpaceId::Nb201, Task::Cifar10).unwrap();
            let mut s = SearchState::new(sp).unwrap();
            let mut generations = 0;
            run(&mut s, &mut fit, &AtomicBool::new(false), |s| {
                generations += 1;
                let record = s.best_so_far.expect("kept by every step");
                assert_eq!(record.scanned, s.history.len());
                assert_eq!(
                    s.best().map(|b| b.hash),
                    s.best_from(0, None).map(|i| s.history[i].hash)
                );
                Ok(())
            })
            .unwrap();
            assert!(generations > 3, "{generations}");
            // A resumed state (no record) finds the same best.
            let back: SearchState =
                serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
            assert!(back.best_so_far.is_none());
            assert_eq!(back.best().unwrap().hash, s.best().unwrap().hash);
            // A record kept under other rules is not used.
            let mut other = s.clone();
            other.spec.tolerance += 100.0;
            if other.spec.algorithm == Algorithm::Flops {
                assert_ne!(other.best_key(), s.best_key());
                assert_eq!(
                    other.best().map(|b| b.hash),
                    other.best_from(0, None).map(|i| other.history[i].hash)
                );
            }
        }
    }

    #[test]
    fn constraints_that_admit_nothing_or_everything_are_refused_by_name() {
        for (mflops, mparams, name) in [
            (Some(f64::NAN), None, "max_mflops"),
            (Some(f64::INFINITY), None, "max_mflops"),
            (Some(0.0), None, "max_mflops"),
            (None, Some(-1.0), "max_mparams"),
            (None, Some(f64::NAN), "max_mparams"),
        ] {
            let e = SearchState::new(SearchSpec {
                max_mflops: mflops,
                max_mparams: mparams,
                ..spec(Algorithm::Evolution)
            })
            .unwrap_err();
            assert!(matches!(e, SearchError::Invalid(_)), "{e}");
            assert!(e.to_string().contains(name), "{e}");
        }
        // Zero budget and zero batch are told apart.
        let e = |sp: SearchSpec| SearchState::new(sp).unwrap_err().to_string();
        let budget = e(SearchSpec {
            budget: 0,
            ..spec(Algorithm::Random)
        });
        let batch = e(SearchSpec {
            batch: 0,
            ..spec(Algorithm::Random)
        });
        assert!(
            budget.contains("budget") && !budget.contains("batch"),
            "{budget}"
        );
        assert!(
            batch.contains("batch") && !batch.contains("budget"),
            "{batch}"
        );
        // Positive but too tight: the search says which constraints it could not meet.
        let mut s = SearchState::new(SearchSpec {
            max_mflops: Some(0.001),
            ..spec(Algorithm::Random)
        })
        .unwrap();
        let mut fit = TableFitness::load(SpaceId::Nb201, Task::Cifar10).unwrap();
        let e = step(&mut s, &mut fit).unwrap_err();
        assert!(
            matches!(&e, SearchError::Infeasible { tries: MAX_TRIES, constraints }
                if constraints == "max_mflops 0.001"),
            "{e:?}"
        );
        assert!(e.to_string().contains("(max_mflops 0.001)"), "{e}");
    }

    #[test]
    fn options_an_algorithm_does_not_read_are_refused_at_submission_only() {
        let given = |names: &'static [&'static str]| move |o: &str| names.contains(&o);
        let all = [Algorithm::Evolution, Algorithm::Random, Algorithm::Flops];
        for alg in all {
            // What every algorithm reads is never refused.
            assert!(alg.refuse_unread_options(given(&[])).is_ok());
            assert!(alg
                .refuse_unread_options(given(&["budget", "batch", "seed", "max_mflops"]))
                .is_ok());
        }
        for alg in [Algorithm::Evolution, Algorithm::Random] {
            let e = alg
                .refuse_unread_options(given(&["radius", "tolerance"]))
                .unwrap_err();
            // The first of the table that is given, and the algorithm.
            assert!(
                matches!(e, SearchError::Unread { option: "tolerance", algorithm } if algorithm == alg),
                "{e:?}"
            );
            assert_eq!(
                e.to_string(),
                format!("tolerance: only a FLOP reduction (algorithm flops) reads it, not {alg}")
            );
        }
        // Each option of the table: refused exactly for the algorithms that do not read it.
        let mut refused = 0;
        for (o, readers) in Algorithm::SPECIFIC {
            for alg in all {
                let r = alg.refuse_unread_options(|x| x == o);
                assert_eq!(r.is_ok(), readers.contains(&alg), "{o} {alg}");
                refused += usize::from(r.is_err());
            }
        }
        // population, sample (evolution only): 2 each; multi_objective: 1; six FLOP options: 2 each.
        assert_eq!(refused, 2 * 2 + 1 + 6 * 2);
        let e = Algorithm::Random
            .refuse_unread_options(given(&["sample", "population"]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "population: only evolution (algorithm evolution) reads it, not random"
        );
        let e = Algorithm::Flops
            .refuse_unread_options(given(&["multi_objective"]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "multi_objective: only evolution or random search (algorithm evolution or algorithm \
             random) reads it, not flops"
        );
        // A spec stored with such options before the check existed still starts (resumes).
        let stored = SearchSpec {
            start: Some(Start::Arch(
                "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|nor_conv_3x3~2|".into(),
            )),
            tolerance: 2.0,
            radius: Some(3),
            ..spec(Algorithm::Evolution)
        };
        assert!(SearchState::new(stored).is_ok());
    }

    #[test]
    fn a_spec_stored_before_two_sided_reads_as_one_sided() {
        let sp = SearchSpec {
            start: Some(Start::Arch(
                "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|nor_conv_3x3~2|".into(),
            )),
            two_sided: false,
            ..spec(Algorithm::Flops)
        };
        assert!(SearchSpec::default().two_sided, "two-sided by default");
        let text = serde_json::to_string(&sp).unwrap();
        assert!(!text.contains("two_sided"), "{text}");
        let back: SearchSpec = serde_json::from_str(&text).unwrap();
        assert!(!back.two_sided);
        let on = SearchSpec {
            two_sided: true,
            ..sp
        };
        let text = serde_json::to_string(&on).unwrap();
        assert!(text.contains("\"two_sided\":true"), "{text}");
        assert_eq!(serde_json::from_str::<SearchSpec>(&text).unwrap(), on);
    }

    #[test]
    fn flop_reduction_stays_inside_its_radius() {
        let start = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|";
        let a = Arch::parse(SpaceId::Nb201, start).unwrap();
        let build = |x: &Arch| x.build(Task::Cifar10).unwrap().hash();
        let mut deepest = Vec::new();
        for radius in [1usize, 2] {
            let mut fit = TableFitness::load(SpaceId::Nb201, Task::Cifar10).unwrap();
            let sp = SearchSpec {
                algorithm: Algorithm::Flops,
                start: Some(Start::Arch(start.into())),
                tolerance: 5.0,
                budget: 400,
                radius: Some(radius),
                ..spec(Algorithm::Flops)
            };
            let mut s = SearchState::new(sp).unwrap();
            run(&mut s, &mut fit, &AtomicBool::new(false), |_| Ok(())).unwrap();
            let region: HashSet<GraphHash> = spaces::within(&a, radius)
                .iter()
                .chain([&a])
                .map(build)
                .collect();
            assert!(s.history.iter().all(|e| region.contains(&e.hash)));
            assert!(s.history.iter().all(|e| e.moves as usize <= radius));
            deepest.push(s.history.iter().map(|e| e.moves).max().unwrap());
        }
        assert_eq!(deepest, vec![1, 2], "the region is walked to its edge");
        let zero = SearchSpec {
            algorithm: Algorithm::Flops,
            start: Some(Start::Arch(start.into())),
            radius: Some(0),
            ..spec(Algorithm::Flops)
        };
        assert!(SearchState::new(zero).is_err());
    }

    #[test]
    fn cancellation_stops_before_the_next_generation() {
        let mut fit = TableFitness::load(SpaceId::Nb201, Task::Cifar10).unwrap();
        let mut s = SearchState::new(spec(Algorithm::Random)).unwrap();
        let cancel = AtomicBool::new(false);
        let out = run(&mut s, &mut fit, &cancel, |st| {
            if st.generation == 3 {
                cancel.store(true, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(out, Outcome::Cancelled);
        assert_eq!(s.generation, 3);
        assert!(!s.done);
    }
}
