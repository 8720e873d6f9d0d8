//! `aiop eval`: the predictor's evaluation protocols (unseen task, unseen space, sample
//! efficiency) with their baselines, as a table on stdout and a JSON report.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use aiop::predictor::checkpoint::Trained;
use aiop::predictor::eval::{self, EvalConfig, Pretrained, Protocol};

use super::{DataError, UsageError};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// unseen-task, unseen-space or sample-efficiency.
    #[arg(long)]
    pub protocol: String,
    /// Seeds (default 5; 1 with --quick).
    #[arg(long)]
    pub seeds: Option<usize>,
    /// The small version (one seed, small pretraining, short fine-tuning, two targets); not
    /// with --config, whose file sets every setting (its missing fields the full run's).
    #[arg(long, conflicts_with = "config")]
    pub quick: bool,
    /// A JSON EvalConfig (every field optional) instead of the defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Write the report here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Reuse the protocol's pretrained models from this folder (`aio/`, `plain/`, and each of
    /// the config's `members` under its name) when present,
    /// and save them there when not. They are checked never to have seen a target.
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// Worker threads for independent runs (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let protocol: Protocol = a
        .protocol
        .parse()
        .map_err(|e: aiop::predictor::PredictorError| UsageError(format!("--protocol: {e}")))?;
    if let Some(n) = a
        .seeds
        .filter(|n| !(1..=aiop::predictor::eval::MAX_SEEDS).contains(n))
    {
        return Err(UsageError(format!(
            "--seeds: {n} is not in 1..={}",
            aiop::predictor::eval::MAX_SEEDS
        ))
        .into());
    }
    // Checked before hours of work, not after.
    if let Some(p) = &a.json {
        super::check_writable(p, "--json")?;
    }
    // A malformed or invalid file is bad data (exit 65), named.
    let mut cfg = match &a.config {
        Some(p) => {
            let text = super::read_input(p, "--config")?;
            let cfg = serde_json::from_str::<EvalConfig>(&text).map_err(|e| {
                DataError(format!("{}: not an evaluation config: {e}", p.display()))
            })?;
            cfg.validate()
                .map_err(|e| DataError(format!("{}: {}", p.display(), e.into_message())))?;
            cfg
        }
        None if a.quick => EvalConfig::quick(protocol),
        None => EvalConfig::default(),
    };
    if let Some(s) = a.seeds {
        cfg.seeds = s;
    }
    if let Some(t) = a.threads {
        cfg.threads = t;
    }
    let device = aiop::predictor::default_device();
    let mut given = Pretrained::default();
    if let Some(dir) = &a.pretrained {
        // The model saved under `name`, checked, when there is one.
        let load = |name: &str| -> anyhow::Result<Option<Trained>> {
            let d = dir.join(name);
            if !d.join(aiop::predictor::checkpoint::META_FILE).exists() {
                return Ok(None);
            }
            let t = Trained::load(&d, &device)?;
            eval::check_pretrained(&t, protocol, &cfg)?;
            Ok(Some(t))
        };
        given.aio = load("aio")?;
        given.plain = load("plain")?;
        for m in &cfg.members {
            if let Some(t) = load(&m.name)? {
                given.members.insert(m.name.clone(), t);
            }
        }
    }
    let log = |s: &str| eprintln!("aiop eval: {s}");
    let (report, models) = eval::run(protocol, &cfg, given, &device, &log)?;
    if let Some(dir) = &a.pretrained {
        for (name, t) in [("aio", &models.aio), ("plain", &models.plain)] {
            if let Some(t) = t {
                t.save(&dir.join(name))?;
            }
        }
        for (name, t) in &models.members {
            t.save(&dir.join(name))?;
        }
    }
    // The report is written before the table is printed: a closed pipe on stdout (`| head`)
    // must not lose a long run's results.
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(p, text + "\n").with_context(|| format!("writing {}", p.display()))?;
    }
    use std::io::Write;
    write!(std::io::stdout().lock(), "{}", eval::table(&report))?;
    Ok(())
}
