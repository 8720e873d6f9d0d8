//! Property tests: random graphs through the builder, JSON round trips, the canonical hash
//! (invariant under node order, sensitive to content), rejection of shape-inconsistent JSON with
//! the node named, and space mutations.

use aiop::graph::builder::Conv;
use aiop::graph::json::{from_json, to_json};
use aiop::graph::{Graph, GraphBuilder, NodeId};
use aiop::rng::Rng;
use aiop::spaces::{self, SpaceId};
use proptest::prelude::*;

/// Build a random shape-valid graph from a recipe: each step picks an op and its inputs among the
/// nodes so far; steps whose shapes do not fit are rejected by the builder and skipped.
fn random_graph(recipe: &[Step], c0: u32, hw: u32) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input(c0, hw, hw).unwrap();
    let mut ids: Vec<NodeId> = vec![x];
    for &(op, i, j, p) in recipe {
        let a = ids[i as usize % ids.len()];
        let bb = ids[j as usize % ids.len()];
        let c = b.shape(a).c;
        let r = match op % 14 {
            0 => b.conv(a, Conv::new(1 + p as u32 % 16, [1, 3, 5][p as usize % 3])),
            1 => b.conv(a, Conv::new(c * 2, 3).stride(2)),
            2 => b.depthwise(a, Conv::new(c, 3).dilation(1 + p as u32 % 2)),
            3 => b.batch_norm(a, p % 2 == 0),
            4 => b.relu(a),
            5 => b.add(&[a, bb]),
            6 => b.concat(&[a, bb]),
            7 => b.max_pool(a, 3, 1 + p as u32 % 2, 1),
            8 => b.avg_pool(a, 2, 2, 0),
            9 => b.zero(a, c, 1),
            10 => b.identity(a),
            11 => b.mul(&[a, bb]),
            12 => b.conv_transpose(a, Conv::new(c, 3).stride(2).pad(1).output_padding(1)),
            _ => b.slice(a, 1 + p as u32 % c),
        };
        if let Ok(id) = r {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    let last = *ids.last().unwrap();
    let p = b.global_avg_pool(last).unwrap();
    let l = b.linear(p, 10, true).unwrap();
    b.output(l).unwrap();
    b.finish()
}

/// One builder step: (op choice, input a, input b, parameter).
type Step = (u8, u16, u16, u8);

fn recipe() -> impl Strategy<Value = (Vec<Step>, u32, u32)> {
    (
        prop::collection::vec(any::<Step>(), 1..40),
        1u32..8,
        4u32..24,
    )
}

/// The JSON text with its node lines in a shuffled order (the reader must not care).
fn shuffled(text: &str, seed: u64) -> String {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let mut nodes = v["nodes"].as_array().unwrap().clone();
    Rng::new(seed).shuffle(&mut nodes);
    let mut v = v.clone();
    v["nodes"] = serde_json::Value::Array(nodes);
    v.to_string()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn built_graphs_round_trip_through_json_exactly((r, c, hw) in recipe()) {
        let g = random_graph(&r, c, hw);
        let text = to_json(&g);
        let back = from_json(&text).unwrap();
        prop_assert_eq!(back.nodes(), g.nodes());
        prop_assert_eq!(to_json(&back), text);
        prop_assert_eq!(back.flops(Default::default()), g.flops(Default::default()));
    }

    #[test]
    fn hash_ignores_node_order((r, c, hw) in recipe(), seed in any::<u64>()) {
        let g = random_graph(&r, c, hw);
        let other = from_json(&shuffled(&to_json(&g), seed)).unwrap();
        prop_assert_eq!(other.hash(), g.hash());
    }

    #[test]
    fn hash_sees_a_changed_node((r, c, hw) in recipe(), pick in any::<usize>()) {
        let g = random_graph(&r, c, hw);
        let mut v: serde_json::Value = serde_json::from_str(&to_json(&g)).unwrap();
        // Change one node so the network differs: flip a bias or affine flag where there is one,
        // else widen the final linear layer.
        let nodes = v["nodes"].as_array_mut().unwrap();
        let flippable: Vec<usize> = (0..nodes.len())
            .filter(|&i| nodes[i].get("bias").is_some() || nodes[i].get("affine").is_some())
            .collect();
        let i = flippable[pick % flippable.len()];
        for key in ["bias", "affine"] {
            if let Some(b) = nodes[i].get(key).and_then(|b| b.as_bool()) {
                nodes[i][key] = serde_json::Value::Bool(!b);
                break;
            }
        }
        let changed = from_json(&v.to_string()).unwrap();
        prop_assert_ne!(changed.hash(), g.hash());
    }

    #[test]
    fn shape_inconsistent_json_is_rejected_naming_the_node((r, c, hw) in recipe(), pick in any::<usize>()) {
        let g = random_graph(&r, c, hw);
        let mut v: serde_json::Value = serde_json::from_str(&to_json(&g)).unwrap();
        let nodes = v["nodes"].as_array_mut().unwrap();
        // Any node but the input: its height is derived from its inputs, so +1 is inconsistent.
        let i = 1 + pick % (nodes.len() - 1);
        let h = nodes[i]["out"][1].as_u64().unwrap();
        nodes[i]["out"][1] = serde_json::json!(h + 1);
        let id = nodes[i]["id"].as_str().unwrap().to_string();
        let err = from_json(&v.to_string()).unwrap_err().to_string();
        prop_assert!(err.contains(&format!("node '{id}'")), "{}", err);
    }

    #[test]
    fn mutations_are_valid_and_different(seed in any::<u64>(), space in 0usize..5) {
        let space = SpaceId::ALL[space];
        let mut rng = Rng::new(seed);
        let a = spaces::sample(space, &mut rng);
        let again = spaces::Arch::parse(space, &a.to_string()).unwrap();
        prop_assert_eq!(&again, &a);
        let ns = a.neighbours();
        prop_assert!(!ns.is_empty());
        let set: std::collections::HashSet<_> = ns.iter().collect();
        prop_assert_eq!(set.len(), ns.len());
        prop_assert!(!set.contains(&a));
        // Each neighbour prints, parses back and builds; check a few graphs fully.
        let task = space.tasks()[seed as usize % space.tasks().len()];
        for (k, n) in ns.iter().enumerate() {
            prop_assert_eq!(&spaces::Arch::parse(space, &n.to_string()).unwrap(), n);
            if k % 7 == 0 {
                let g = n.build(task).unwrap();
                prop_assert!(from_json(&to_json(&g)).is_ok());
            }
        }
    }
}

mod search_props {
    use std::sync::atomic::AtomicBool;

    use aiop::graph::json::{from_json, to_json};
    use aiop::search::{self, Algorithm, SearchSpec, SearchState, TableFitness};
    use aiop::spaces::{SpaceId, Task};
    use proptest::prelude::*;

    /// The NB-201 table, parsed once for all cases.
    fn table() -> TableFitness {
        static T: std::sync::OnceLock<TableFitness> = std::sync::OnceLock::new();
        T.get_or_init(|| TableFitness::load(SpaceId::Nb201, Task::Cifar10).unwrap())
            .clone()
    }

    fn spec(alg: Algorithm, seed: u64, max_mflops: Option<f64>) -> SearchSpec {
        SearchSpec {
            space: Some(SpaceId::Nb201),
            task: Some(Task::Cifar10),
            algorithm: alg,
            budget: 120,
            population: 16,
            sample: 4,
            batch: 8,
            seed,
            max_mflops,
            multi_objective: seed.is_multiple_of(2),
            start: (alg == Algorithm::Flops).then(|| {
                search::Start::Arch(
                    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|".into(),
                )
            }),
            ..SearchSpec::default()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn resumed_search_equals_uninterrupted(seed in any::<u64>(), cut in 0u64..12, alg in 0usize..3) {
            let alg = [Algorithm::Evolution, Algorithm::Random, Algorithm::Flops][alg];
            let mut fit = table();
            let no = AtomicBool::new(false);
            let mut whole = SearchState::new(spec(alg, seed, None)).unwrap();
            search::run(&mut whole, &mut fit, &no, |_| Ok(())).unwrap();
            let mut part = SearchState::new(spec(alg, seed, None)).unwrap();
            for _ in 0..cut {
                search::step(&mut part, &mut fit).unwrap();
            }
            let mut resumed: SearchState =
                serde_json::from_str(&serde_json::to_string(&part).unwrap()).unwrap();
            search::run(&mut resumed, &mut fit, &no, |_| Ok(())).unwrap();
            prop_assert_eq!(resumed.results(), whole.results());
            prop_assert_eq!(&resumed, &whole);
        }

        #[test]
        fn a_reduction_returns_its_start_and_cheaper_networks_within_the_tolerance(
            seed in any::<u64>(),
            tolerance in 0.0f64..3.0,
            offset in proptest::option::of(-2.0f64..2.0),
            two_sided in any::<bool>(),
        ) {
            let start = aiop::spaces::sample(SpaceId::Nb201, &mut aiop::rng::Rng::new(seed));
            let mut fit = table();
            let mut sp = spec(Algorithm::Flops, seed, None);
            sp.start = Some(search::Start::Arch(start.to_string()));
            sp.tolerance = tolerance;
            sp.two_sided = two_sided;
            let mut s = SearchState::new(sp.clone()).unwrap();
            search::step(&mut s, &mut fit).unwrap();
            let first = s.history[0].clone();
            // The reference: the start's own score, or a measured value beside it.
            s.spec.reference = offset.map(|o| first.score + o);
            search::run(&mut s, &mut fit, &AtomicBool::new(false), |_| Ok(())).unwrap();
            let line = s.spec.reference.unwrap_or(first.score);
            let results = s.results();
            prop_assert!(!results.is_empty());
            for r in &results {
                if r.hash == first.hash {
                    continue;
                }
                prop_assert!(r.mflops < first.mflops);
                prop_assert!(r.predicted >= line - tolerance - 1e-12);
                if two_sided {
                    prop_assert!(r.predicted <= line + tolerance + 1e-12);
                }
            }
        }

        #[test]
        fn results_satisfy_constraints_and_are_shape_valid(seed in any::<u64>(), limit in 20.0f64..120.0, alg in 0usize..2) {
            let alg = [Algorithm::Evolution, Algorithm::Random][alg];
            let mut fit = table();
            let mut s = SearchState::new(spec(alg, seed, Some(limit))).unwrap();
            search::run(&mut s, &mut fit, &AtomicBool::new(false), |_| Ok(())).unwrap();
            prop_assert!(s.evaluations <= 120);
            for e in &s.history {
                prop_assert!(e.mflops <= limit);
            }
            for r in s.results() {
                prop_assert!(r.mflops <= limit);
                let a = aiop::spaces::Arch::parse(SpaceId::Nb201, r.arch.as_deref().unwrap()).unwrap();
                let g = a.build(Task::Cifar10).unwrap();
                prop_assert_eq!(g.hash(), r.hash);
                prop_assert!(from_json(&to_json(&g)).is_ok());
            }
        }
    }
}
