//! The computational graph (CG): a whole network, body and task head, as a DAG of primitive ops.
//!
//! Invariants every [`Graph`] upholds, whoever built it (the builder or the JSON reader):
//! - nodes are stored in a topological order: every input of node `i` has an index below `i`;
//! - every node's shapes satisfy its op's rule ([`shape::infer`]) given its inputs' shapes;
//! - attributes an op does not read are at their defaults, so equal networks compare equal and
//!   hash equal ([`Graph::hash`]) whatever order their nodes were inserted in.
//!
//! FLOPs and parameters ([`flops`]) are computed from the nodes alone. The graph is the network
//! as the benchmark runs it: nothing is pruned, a conv whose output only feeds `none` edges stays.

pub mod builder;
pub mod dot;
pub mod edit;
pub mod flops;
pub mod hash;
pub mod json;
pub mod op;
pub mod shape;

pub use builder::GraphBuilder;
pub use flops::Convention;
pub use op::Op;
pub use shape::{Attrs, Shape};

/// Index of a node in its graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl NodeId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// One operation of the network with its shapes and attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Node {
    pub op: Op,
    /// Input shape as a feature: the (common) input shape; channels summed for concat.
    pub input: Shape,
    pub output: Shape,
    pub attrs: Attrs,
    /// Times the node runs per network input (9 for the jigsaw encoder's tiles, else 1).
    pub batch: u32,
    /// Range of this node's inputs in [`Graph::preds`] (CSR layout: one allocation per graph).
    first_input: u32,
    num_inputs: u32,
}

/// Errors of building, reading or validating a graph. Each names the node at fault.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("node {node}: {message}")]
    Shape { node: String, message: String },
    #[error("node {node}: field '{field}': {message}")]
    Field {
        node: String,
        field: &'static str,
        message: String,
    },
    #[error("node {node}: input '{input}' is not a node of the graph")]
    UnknownInput { node: String, input: String },
    #[error("node {node}: unknown op '{op}' (expected one of: {expected})")]
    UnknownOp {
        node: String,
        op: String,
        expected: String,
    },
    #[error("node id '{0}' is used twice")]
    DuplicateId(String),
    #[error("the graph has a cycle through node {0}")]
    Cycle(String),
    #[error("{0}")]
    Invalid(String),
    /// A count of the graph, summed up to this node, past `u64::MAX`.
    #[error(
        "node {node}: the graph's {what} overflow 64 bits at this node (over {})",
        u64::MAX
    )]
    Overflow { node: String, what: &'static str },
    /// The serde message is in the text, so it is not also a `source` (an error chain printed
    /// whole, `{:#}`, would say it twice).
    #[error("JSON graph: {0}")]
    Json(serde_json::Error),
}

impl From<serde_json::Error> for GraphError {
    fn from(e: serde_json::Error) -> GraphError {
        GraphError::Json(e)
    }
}

/// A computational graph. Build one with [`GraphBuilder`] or read one with [`json::from_json`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    /// Inputs of all nodes, node after node, each node's in its stated order.
    preds: Vec<u32>,
    /// Node ids from a JSON file, kept so a file round-trips; `None` for built graphs.
    names: Option<Vec<String>>,
}

impl Graph {
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    /// Inputs of a node, in order (the order matters for concat).
    pub fn inputs(&self, id: NodeId) -> &[u32] {
        let n = &self.nodes[id.index()];
        &self.preds[n.first_input as usize..(n.first_input + n.num_inputs) as usize]
    }

    /// All edges (src, dst) in node order.
    pub fn edges(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        (0..self.nodes.len() as u32)
            .flat_map(move |i| self.inputs(NodeId(i)).iter().map(move |&s| (s, i)))
    }

    pub fn num_edges(&self) -> usize {
        self.preds.len()
    }

    /// The display name of a node: its JSON id when read from a file, else `n<index>`.
    pub fn name(&self, id: NodeId) -> String {
        match &self.names {
            Some(names) => names[id.index()].clone(),
            None => format!("n{}", id.0),
        }
    }

    /// Node ids as read from JSON, if any.
    pub fn names(&self) -> Option<&[String]> {
        self.names.as_deref()
    }

    /// Output batch of a node: how many times consumers see its result per network input.
    pub fn out_batch(&self, id: NodeId) -> u32 {
        let n = self.node(id);
        if n.op == Op::BatchToDepth {
            1
        } else {
            n.batch
        }
    }

    /// Nodes with op [`Op::Output`] (or, when there is none, nodes nobody consumes).
    pub fn outputs(&self) -> Vec<NodeId> {
        let outs: Vec<NodeId> = (0..self.nodes.len() as u32)
            .map(NodeId)
            .filter(|&i| self.node(i).op == Op::Output)
            .collect();
        if !outs.is_empty() {
            return outs;
        }
        let mut used = vec![false; self.nodes.len()];
        for &p in &self.preds {
            used[p as usize] = true;
        }
        (0..self.nodes.len() as u32)
            .filter(|&i| !used[i as usize])
            .map(NodeId)
            .collect()
    }

    /// Successor lists, computed on demand (CSR: offsets and targets).
    pub fn successors(&self) -> (Vec<u32>, Vec<u32>) {
        let n = self.nodes.len();
        let mut deg = vec![0u32; n + 1];
        for &p in &self.preds {
            deg[p as usize + 1] += 1;
        }
        for i in 0..n {
            deg[i + 1] += deg[i];
        }
        let mut fill = deg.clone();
        let mut out = vec![0u32; self.preds.len()];
        for (s, d) in self.edges() {
            out[fill[s as usize] as usize] = d;
            fill[s as usize] += 1;
        }
        (deg, out)
    }

    /// Total FLOPs of the network under a convention (see [`flops`]).
    pub fn flops(&self, convention: Convention) -> u64 {
        self.nodes
            .iter()
            .map(|n| flops::node_flops(n, convention))
            .fold(0u64, u64::saturating_add)
    }

    /// Total learned parameters.
    pub fn params(&self) -> u64 {
        self.nodes
            .iter()
            .map(flops::node_params)
            .fold(0u64, u64::saturating_add)
    }

    /// Canonical content hash (see [`hash`]).
    pub fn hash(&self) -> hash::GraphHash {
        hash::graph_hash(self)
    }
}
