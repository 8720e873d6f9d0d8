//! `aiop spaces` and `aiop graph`: the search spaces and the computational graphs they build.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;

use aiop::graph::{dot, json, Convention, Graph};
use aiop::spaces::{labels, Arch, SpaceId};

use super::{numbered_lines, DataError};

#[derive(Debug, Args)]
pub struct SpacesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// One JSON object per graph: arch, nodes, edges, mflops, mparams, hash.
    Json,
    /// Graphviz DOT.
    Dot,
    /// The graph interchange format (docs/graph-format.md).
    Graph,
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    /// Search space: nb201, tnb101_micro, tnb101_macro, nb101, darts.
    #[arg(long, required_unless_present = "file", value_parser = super::space_parser())]
    pub space: Option<SpaceId>,
    /// Task whose network (head) to build, e.g. cifar10, segmentsemantic.
    #[arg(long, required_unless_present = "file")]
    pub task: Option<String>,
    /// One architecture string instead of reading stdin.
    #[arg(long, conflicts_with = "file")]
    pub arch: Option<String>,
    /// A graph in the interchange format instead of a space architecture.
    #[arg(long, conflicts_with_all = ["space", "task", "arch"])]
    pub file: Option<PathBuf>,
    /// FLOPs convention for `mflops`.
    #[arg(long, default_value = "macs", value_parser = parse_convention)]
    pub flops_convention: Convention,
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
}

fn parse_convention(s: &str) -> Result<Convention, String> {
    s.parse()
}

#[derive(Serialize)]
struct SpaceRow {
    space: &'static str,
    tasks: Vec<&'static str>,
    labelled: usize,
    size: Option<usize>,
}

pub fn spaces(a: SpacesArgs) -> anyhow::Result<()> {
    let rows: Vec<SpaceRow> = SpaceId::ALL
        .into_iter()
        .map(|s| SpaceRow {
            space: s.name(),
            tasks: s.tasks().iter().map(|t| t.name()).collect(),
            labelled: labels::count(s),
            size: aiop::spaces::enumerate(s).map(|v| v.len()),
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if a.json {
        for r in &rows {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<14} {:>9} {:>9}  tasks",
        "space", "labelled", "size"
    )?;
    for r in &rows {
        let size = r.size.map_or("-".to_string(), |n| n.to_string());
        writeln!(
            out,
            "{:<14} {:>9} {:>9}  {}",
            r.space,
            r.labelled,
            size,
            r.tasks.join(", ")
        )?;
    }
    Ok(())
}

#[derive(Serialize)]
struct GraphLine<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    arch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    graph: Option<&'a str>,
    nodes: usize,
    edges: usize,
    mflops: f64,
    mparams: f64,
    hash: String,
}

fn emit(
    out: &mut impl Write,
    g: &Graph,
    arch: Option<&str>,
    file: Option<&str>,
    a: &GraphArgs,
) -> anyhow::Result<()> {
    match a.format {
        Format::Json => {
            let line = GraphLine {
                arch,
                graph: file,
                nodes: g.len(),
                edges: g.num_edges(),
                mflops: g.flops(a.flops_convention) as f64 / 1e6,
                mparams: g.params() as f64 / 1e6,
                hash: g.hash().to_string(),
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        }
        Format::Dot => {
            out.write_all(dot::to_dot(g, arch.or(file).unwrap_or("graph")).as_bytes())?
        }
        Format::Graph => out.write_all(json::to_json(g).as_bytes())?,
    }
    Ok(())
}

pub fn graph(a: GraphArgs) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if let Some(path) = &a.file {
        let text = super::read_input(path, "--file")?;
        let g = json::from_json(&text).with_context(|| format!("{}", path.display()))?;
        emit(&mut out, &g, None, Some(&path.display().to_string()), &a)?;
        return Ok(out.flush()?);
    }
    let space = a.space.expect("clap requires --space without --file");
    let task = super::task_arg(space, a.task.as_deref().unwrap_or_default())?;
    if let Some(s) = &a.arch {
        let arch = Arch::parse(space, s)?;
        let g = arch.build(task)?;
        emit(&mut out, &g, Some(&arch.to_string()), None, &a)?;
        return Ok(out.flush()?);
    }
    let mut failed = 0usize;
    for line in numbered_lines(std::io::stdin().lock()) {
        let (n, line) = line.context("reading stdin")?;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                failed += 1;
                eprintln!("aiop: stdin line {n}: {e}");
                continue;
            }
        };
        let s = line.trim();
        if s.is_empty() {
            continue;
        }
        match Arch::parse(space, s).and_then(|arch| Ok((arch.build(task)?, arch))) {
            Ok((g, arch)) => emit(&mut out, &g, Some(&arch.to_string()), None, &a)?,
            Err(e) => {
                failed += 1;
                eprintln!("aiop: stdin line {n}: {e}");
            }
        }
    }
    out.flush()?;
    if failed > 0 {
        return Err(DataError(format!("{failed} line(s) of stdin failed")).into());
    }
    Ok(())
}
