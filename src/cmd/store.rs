//! `aiop store export|import|compact`: the daemon's store as JSON lines, for backups and moves,
//! and rewritten in place to give back the space sled keeps. Each opens the store itself, so
//! the daemon using that state directory must be stopped (the state's lock says so otherwise).

use std::io::BufReader;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use aiop::store::Store;

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Write every record of the store as JSON lines (stdout, or --output FILE).
    Export(ExportArgs),
    /// Load an export into an empty store.
    Import(ImportArgs),
    /// Rewrite the store without the space of deleted and overwritten records (sled never
    /// gives it back), in place; the daemon must be stopped.
    Compact(CompactArgs),
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// State directory of the (stopped) daemon.
    #[arg(long, value_name = "DIR", default_value = "state")]
    pub state: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// State directory of the (stopped) daemon.
    #[arg(long, value_name = "DIR", default_value = "state")]
    pub state: PathBuf,
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// State directory to create or fill (its store must be empty).
    #[arg(long, value_name = "DIR", default_value = "state")]
    pub state: PathBuf,
    /// The export file.
    pub file: PathBuf,
}

/// Opening creates a store; a state directory without one is a mistyped --state, not an empty
/// store: refused as an input that is not there (exit 66). (`db` is where `Store::open` keeps
/// it.)
fn existing_store(state: &std::path::Path, outcome: &str) -> Result<(), super::NoInput> {
    let db = state.join("db");
    if db.is_dir() {
        return Ok(());
    }
    Err(super::NoInput(format!(
        "no store at {}: --state {} is not the state directory of a daemon ({outcome})",
        db.display(),
        state.display()
    )))
}

pub fn store(c: StoreCommand) -> anyhow::Result<()> {
    match c {
        StoreCommand::Export(a) => {
            existing_store(&a.state, "nothing exported")?;
            let store = Store::open(&a.state)?;
            let n = match &a.output {
                Some(f) => {
                    let file = std::fs::File::create(f)
                        .with_context(|| format!("creating {}", f.display()))?;
                    store.export(std::io::BufWriter::new(file))?
                }
                None => store.export(std::io::BufWriter::new(std::io::stdout().lock()))?,
            };
            eprintln!("aiop: exported {n} record(s) from {}", a.state.display());
        }
        StoreCommand::Import(a) => {
            // The whole input is read and checked first: a missing, empty or malformed file
            // creates no store.
            super::check_input(&a.file, "FILE")?;
            let file = std::fs::File::open(&a.file)
                .with_context(|| format!("reading {}", a.file.display()))?;
            let export = aiop::store::Export::read(BufReader::new(file))
                .with_context(|| format!("{}", a.file.display()))?;
            std::fs::create_dir_all(&a.state)
                .with_context(|| format!("creating {}", a.state.display()))?;
            let store = Store::open(&a.state)?;
            let n = store.import_records(export)?;
            eprintln!("aiop: imported {n} record(s) into {}", a.state.display());
        }
        StoreCommand::Compact(a) => {
            existing_store(&a.state, "nothing compacted")?;
            let c = Store::compact(&a.state)?;
            let kib = |b: u64| b.div_ceil(1024);
            if c.kept {
                println!(
                    "{}: {} record(s), {} KiB, already compact (a copy was no smaller): kept as it was",
                    a.state.join("db").display(),
                    c.records,
                    kib(c.bytes_before)
                );
                return Ok(());
            }
            println!(
                "compacted {}: {} record(s), {} KiB -> {} KiB",
                a.state.join("db").display(),
                c.records,
                kib(c.bytes_before),
                kib(c.bytes_after)
            );
        }
    }
    Ok(())
}
