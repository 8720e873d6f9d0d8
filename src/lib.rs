//! aiop: the AIO-P performance predictor and the architecture searches built on it.
//!
//! Rooms, with imports pointing down only: [`graph`] (the computational graph, shapes, FLOPs,
//! hash, JSON) ← [`spaces`] (benchmark search spaces, architecture strings, mutations, labels)
//! ← [`predictor`] (the AIO-P GNN: features, training, checkpoints) and [`search`] (architecture
//! searches; [`stats`] their rank statistics) ← [`taskfile`] (user task definitions) ←
//! [`tuned`] (task models: the predictor fine-tuned to a task file, on disk) ← [`store`] (the
//! daemon's sled database) ← [`service`] (the predictor service: one thread, batched forward
//! passes, the prediction cache) ← [`searches`] (the daemon's searches on worker threads,
//! checkpointed as they go) ← [`jobs`] (fine-tuning work on dedicated threads) ←
//! [`watch`] (the task folder watcher) and [`api`] (HTTP) ← [`serve`] (the daemon's wiring).
//! [`pool`] runs independent jobs on worker threads; [`show`] writes numbers for messages; [`names`] is the one rule for names that
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
pub mod show;
pub mod spaces;
pub mod stats;
pub mod store;
pub mod taskfile;
pub mod tuned;
pub mod watch;

#[cfg(test)]
mod layering {
    use std::path::Path;

    /// The rooms of the house, lowest first: a module may name (`crate::x`) only rooms of its own
    /// rank or below. `main` and `cmd` (the binary's wiring) sit above all of them.
    const ROOMS: &[&[&str]] = &[
        &["rng", "names", "pool", "client", "show"],
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

    fn rank(room: &str) -> Option<usize> {
        ROOMS.iter().position(|r| r.contains(&room))
    }

    /// The code of a Rust source: comments dropped and the insides of string and character
    /// literals (raw ones included) blanked, newlines kept.
    fn code_only(text: &str) -> String {
        let c: Vec<char> = text.chars().collect();
        let at = |i: usize, s: &str| s.chars().enumerate().all(|(k, x)| c.get(i + k) == Some(&x));
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        while i < c.len() {
            if at(i, "//") {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            } else if at(i, "/*") {
                let mut depth = 0;
                while i < c.len() {
                    if at(i, "/*") {
                        depth += 1;
                        i += 2;
                    } else if at(i, "*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            } else if c[i] == 'r'
                && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_') || c[i - 1] == 'b')
                && matches!(c.get(i + 1), Some('#') | Some('"'))
            {
                let mut j = i + 1;
                while c.get(j) == Some(&'#') {
                    j += 1;
                }
                if c.get(j) != Some(&'"') {
                    out.push(c[i]);
                    i += 1;
                    continue;
                }
                let close: String = std::iter::once('"')
                    .chain(c[i + 1..j].iter().copied())
                    .collect();
                i = j + 1;
                while i < c.len() && !at(i, &close) {
                    if c[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
                i += close.chars().count();
                out.push_str("\"\"");
            } else if c[i] == '"' {
                i += 1;
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' {
                        i += 1;
                    }
                    if c.get(i) == Some(&'\n') {
                        out.push('\n');
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            } else if c[i] == '\'' && c.get(i + 1) == Some(&'\\') {
                // An escaped character literal: skip to its closing quote.
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c[i]);
                i += 1;
            }
        }
        out
    }

    /// Every `crate::room` a source file names in its code (not in comments or strings).
    fn named_rooms(text: &str) -> Vec<String> {
        let code = code_only(text);
        let mut out = Vec::new();
        let mut rest = code.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
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
            let code = code_only(text);
            let uses_anyhow = code.contains("anyhow::") || code.contains("anyhow!");
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
        let mut named_total = 0;
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
                named_total += 1;
                match rank(&named) {
                    Some(r) if r <= own => {}
                    _ => wrong.push(format!("{} names crate::{named}", rel.display())),
                }
            }
        }
        assert!(checked > 30, "only {checked} files checked");
        // The scanner reads real code: the library names its rooms hundreds of times.
        assert!(named_total > 200, "only {named_total} crate:: paths seen");
        assert!(wrong.is_empty(), "imports pointing up: {wrong:#?}");
    }

    #[test]
    fn comments_and_literals_are_not_code() {
        let text = concat!(
            "let a = \"// crate::tuned in a string\"; let l: &'a str = crate::graph::X;\n",
            "let q = '\"'; let e = '\\''; /* crate::serve */ let r = r#\"a \"q\" crate::jobs\"#;\n",
            "let s = \"multi\n// crate::api\n\"; crate::spaces::Y // crate::store\n",
        );
        assert_eq!(named_rooms(text), ["graph", "spaces"]);
        assert_eq!(code_only(text).lines().count(), text.lines().count());
        assert!(!code_only("let s = \"anyhow::Error\";").contains("anyhow"));
    }

    #[test]
    fn the_check_sees_an_upward_import() {
        let text = "use crate::graph::Graph;\n// crate::serve in a comment\nlet x = crate::tuned::id_dir(p);";
        assert_eq!(named_rooms(text), ["graph", "tuned"]);
        assert!(rank("tuned") > rank("predictor"));
    }
}
