//! Searches on free graphs: FLOP reduction of a ResNet-18 given in the JSON format returns only
//! shape-valid, cheaper networks within the tolerance of the start's score.

use std::sync::atomic::AtomicBool;

use aiop::graph::json::{from_json, to_json};
use aiop::graph::{Convention, Graph};
use aiop::search::fitness::Candidate;
use aiop::search::{self, Algorithm, Fitness, SearchError, SearchSpec, SearchState, Start};

/// A stand-in score for a free graph: grows with parameters (log scale), so pruning costs score
/// and the tolerance decides how far the reduction may go. Not a predictor; it exercises the moves.
struct LogParams;

impl Fitness for LogParams {
    fn score(&mut self, batch: &[Candidate<'_>]) -> Result<Vec<f64>, SearchError> {
        Ok(batch
            .iter()
            .map(|c| (c.graph.params() as f64).ln())
            .collect())
    }
}

fn resnet() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/search_spaces/graphs/resnet18_cifar10.json"
    ))
    .unwrap()
}

#[test]
fn resnet18_flop_reduction_returns_valid_cheaper_graphs() {
    let start: Graph = from_json(&resnet()).unwrap();
    assert_eq!(start.params(), 11_173_962);
    let spec = SearchSpec {
        algorithm: Algorithm::Flops,
        start: Some(Start::Graph(resnet())),
        tolerance: 0.3,
        budget: 120,
        batch: 24,
        beam: 4,
        seed: 1,
        ..SearchSpec::default()
    };
    let mut s = SearchState::new(spec).unwrap();
    search::run(&mut s, &mut LogParams, &AtomicBool::new(false), |_| Ok(())).unwrap();
    let start_score = (start.params() as f64).ln();
    let results = s.results();
    assert!(
        results.len() >= 2,
        "a front with the start and cheaper graphs"
    );
    let start_mflops = start.flops(Convention::Macs) as f64 / 1e6;
    let cheapest = &results[0];
    assert!(
        cheapest.mflops < 0.85 * start_mflops,
        "{} vs {start_mflops}",
        cheapest.mflops
    );
    for r in &results {
        assert!(r.arch.is_none());
        let g = from_json(&r.graph.as_ref().unwrap().to_string()).unwrap();
        assert_eq!(g.hash(), r.hash);
        assert!(r.predicted >= start_score - 0.3 - 1e-12);
        assert!(r.mflops <= start_mflops);
        // Interface unchanged: same input and output shapes.
        let io = |g: &Graph| {
            g.nodes()
                .iter()
                .filter(|n| n.op.name() == "input" || n.op.name() == "output")
                .map(|n| n.output)
                .collect::<Vec<_>>()
        };
        assert_eq!(io(&g), io(&start));
        assert_eq!(from_json(&to_json(&g)).unwrap().nodes(), g.nodes());
    }
}
