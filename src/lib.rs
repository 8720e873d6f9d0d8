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
//! [`pool`] runs independent jobs on worker threads; [`names`] is the one rule for names that
//! become keys and folders. [`config`] is the daemon's settings, read by `main` and handed down; [`client`] talks HTTP
//! to a running daemon.
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod config;
pub mod graph;
pub mod jobs;
pub mod names;
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

/// The rooms of the house, lowest first: a module may name (`crate::x`) only rooms of its own
/// rank or below. `main` and `cmd` (the binary's wiring) sit above all of them.
#[cfg(test)]
const ROOMS: &[&[&str]] = &[
    &["rng", "names", "pool", "client"],
    &["stats"],
    &["graph"],
    &["spaces"],
    &["predictor"],
    &["search"],
    &["taskfile"],
    &["tuned"],
    &["store"],
    &["service"],
    &["searches"],
    &["jobs"],
    &["watch", "api", "config"],
    &["serve"],
];

#[cfg(test)]
mod layering {
    use super::ROOMS;
    use std::path::Path;

    fn rank(room: &str) -> Option<usize> {
        ROOMS.iter().position(|r| r.contains(&room))
    }

    /// Every `crate::room` a source file names outside comments.
    fn named_rooms(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            let mut rest = code;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
        }
        out
    }

    /// Every `.rs` file under `src/`, with its path relative to `src/`.
    fn sources() -> Vec<(std::path::PathBuf, String)> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        let mut dirs = vec![src.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    files.push((p.strip_prefix(&src).unwrap().to_path_buf(), text));
                }
            }
        }
        files.sort();
        files
    }

    /// The binary's wiring (`main.rs`, `cmd/`), where `anyhow` may be used.
    fn in_binary(rel: &Path) -> bool {
        rel == Path::new("main.rs") || rel.starts_with("cmd")
    }

    #[test]
    fn every_module_opens_with_its_purpose_and_anyhow_stays_in_the_binary() {
        let files = sources();
        assert!(files.len() > 30);
        for (rel, text) in &files {
            assert!(
                text.starts_with("//!"),
                "{} does not open with a //! paragraph",
                rel.display()
            );
            // Spelled in two halves so that this file does not match itself.
            let crate_name = concat!("any", "how");
            let uses_anyhow = text.lines().any(|l| {
                let code = l.split("//").next().unwrap_or("");
                code.contains(&format!("{crate_name}::"))
                    || code.contains(&format!("{crate_name}!"))
            });
            assert!(
                !uses_anyhow || in_binary(rel),
                "{} uses anyhow outside the binary",
                rel.display()
            );
        }
    }

    #[test]
    fn imports_point_down_only() {
        let files = sources();
        let mut checked = 0;
        let mut wrong = Vec::new();
        for (rel, text) in &files {
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let room = first.trim_end_matches(".rs").to_string();
            if matches!(room.as_str(), "main" | "cmd" | "lib") {
                continue;
            }
            let own = rank(&room).unwrap_or_else(|| panic!("{room} is in no room of ROOMS"));
            checked += 1;
            for named in named_rooms(text) {
                match rank(&named) {
                    Some(r) if r <= own => {}
                    _ => wrong.push(format!("{} names crate::{named}", rel.display())),
                }
            }
        }
        assert!(checked > 30, "only {checked} files checked");
        assert!(wrong.is_empty(), "imports pointing up: {wrong:#?}");
    }

    #[test]
    fn the_check_sees_an_upward_import() {
        let text = "use crate::graph::Graph;\n// crate::serve in a comment\nlet x = crate::tuned::id_dir(p);";
        assert_eq!(named_rooms(text), ["graph", "tuned"]);
        assert!(rank("tuned") > rank("predictor"));
    }
}
