//! STUB: to be implemented (helper in progress).
use super::{SearchSpace, SpaceError, SpaceId, Task};
use crate::graph::Graph;
use crate::rng::Rng;
pub struct Darts;
impl SearchSpace for Darts {
    type Arch = String;
    const ID: SpaceId = SpaceId::Darts;
    const FORMAT_HELP: &'static str = "stub";
    fn parse(s: &str) -> Result<String, SpaceError> {
        Ok(s.to_string())
    }
    fn format(a: &String) -> String {
        a.clone()
    }
    fn naslib(a: &String) -> String {
        a.clone()
    }
    fn sample(_rng: &mut Rng) -> String {
        unimplemented!()
    }
    fn enumerate() -> Option<Vec<String>> {
        None
    }
    fn neighbours(_a: &String) -> Vec<String> {
        vec![]
    }
    fn build(_a: &String, _task: Task) -> Result<Graph, SpaceError> {
        unimplemented!()
    }
}
