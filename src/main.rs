//! The `aiop` binary: parses arguments, wires components, and turns errors into exit codes in
//! one place ([`exit_code`]). Command bodies live in `cmd/`, one file per command family.
#![forbid(unsafe_code)]

mod cmd;

/// mimalloc: candle's CPU path churns large buffers, which glibc malloc serves 2-3x slower.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// aiop: AIO-P performance prediction and architecture search.
#[derive(Debug, Parser)]
#[command(name = "aiop", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the built-in search spaces, their tasks and how many labelled architectures each has.
    Spaces(cmd::graph::SpacesArgs),
    /// Build computational graphs: architecture strings on stdin (or --arch, or --file G.json),
    /// one JSON line per graph out (or DOT, or the graph interchange format).
    Graph(cmd::graph::GraphArgs),
    /// Search a space (evolution, random) or reduce a network's FLOPs, scored by a fitness.
    Search(cmd::search::SearchArgs),
    /// Write a result of `aiop search --json` as an architecture string and a JSON graph.
    Export(cmd::search::ExportArgs),
    /// Experiments against the benchmark tables (see BENCHMARKS.md).
    #[command(subcommand)]
    Experiment(ExperimentCommand),
    /// Pretrain the AIO-P predictor on the shipped labels and write a checkpoint.
    Pretrain(cmd::predictor::PretrainArgs),
    /// Fine-tune (or fit zero-shot) the predictor on a task file; writes a task model under
    /// <STATE>/models and prints a JSON summary.
    Finetune(cmd::predictor::FinetuneArgs),
    /// Predict the performance of architecture strings (or JSON graph files, --graphs) on
    /// stdin, one JSON line each.
    Predict(cmd::predictor::PredictArgs),
    /// Evaluate the predictor: unseen-task, unseen-space or sample-efficiency protocol, with
    /// baselines (FLOPs rank, params rank, no label transform, from scratch).
    Eval(cmd::eval::EvalArgs),
    /// Measure speed (release builds; see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the daemon: watch the tasks folder, serve the HTTP API.
    Serve(cmd::serve::ServeArgs),
    /// Ask a running daemon for its health and tasks.
    Status(cmd::serve::StatusArgs),
    /// List a running daemon's searches, show one, or cancel one.
    Searches(cmd::serve::SearchesArgs),
    /// Send a search spec (JSON) or a task file (TOML, with its samples) to a running daemon.
    Submit(cmd::serve::SubmitArgs),
    /// Export or import the daemon's store as JSON lines (with the daemon stopped).
    #[command(subcommand)]
    Store(cmd::store::StoreCommand),
}

#[derive(Debug, Subcommand)]
enum ExperimentCommand {
    /// Sample efficiency of searches: true label of the returned architecture after k queries.
    Search(cmd::experiment::ExperimentArgs),
    /// FLOP reduction from the table's best architecture, scored by the predictor fine-tuned on
    /// 20 labelled networks: FLOPs saved, predicted and TRUE drop.
    Flops(cmd::experiment::FlopsExperimentArgs),
    /// Base predictions of the shipped pair on networks neither pretraining drew: per task, the
    /// member that ranks better and its calibration (fitted on one seeded sample, reported on
    /// another); `--write` saves the selection the binary embeds.
    Base(cmd::experiment::BaseExperimentArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Graphs built per second on one core (plain, and with hash and FLOPs).
    Graph(cmd::bench::BenchGraphArgs),
    /// Predictor inference graphs/s at batch 1, 256, 4096 and training graphs/s at batch 32.
    Predictor(cmd::bench_predictor::BenchPredictorArgs),
    /// Load test of a running daemon: concurrent clients sending POST /v1/predict.
    Api(cmd::bench::BenchApiArgs),
    /// Candidates scored per second by evolution with the predictor, score cache on and off.
    Search(cmd::bench_search::BenchSearchArgs),
}

/// Exit codes: 0 success, 1 failure at run time, 2 bad usage (clap's, and [`cmd::UsageError`]:
/// an argument that does not fit the input), 65 bad input data (EX_DATAERR: a malformed file
/// or line; also what a daemon refused as such), 69 no daemon answers (EX_UNAVAILABLE), 75 the
/// daemon is stopping or did not answer in time (EX_TEMPFAIL: try again), 77 the daemon wants
/// another token (EX_NOPERM), 78 bad configuration (EX_CONFIG). A closed standard output
/// (`aiop status | head`) is not a failure: see [`broken_pipe`].
fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(r) = cause.downcast_ref::<cmd::serve::Refused>() {
            return match r.status {
                400 | 413 | 422 => 65,
                401 | 403 => 77,
                503 => 75,
                _ => 1,
            };
        }
        match cause.downcast_ref::<aiop::client::ClientError>() {
            Some(aiop::client::ClientError::Timeout { .. }) => return 75,
            Some(aiop::client::ClientError::Io { error, .. })
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                return 69
            }
            _ => {}
        }
        if cause.is::<aiop::config::ConfigError>()
            // The configured base model cannot be loaded: restarting will not fix it either.
            || matches!(
                cause.downcast_ref::<aiop::serve::ServeError>(),
                Some(aiop::serve::ServeError::Service(
                    aiop::service::ServiceError::Base { .. }
                ))
            )
        {
            return 78;
        }
        if cause.is::<cmd::UsageError>() {
            return 2;
        }
        if cause.is::<aiop::spaces::SpaceError>()
            || cause.is::<aiop::graph::GraphError>()
            || cause.is::<aiop::taskfile::TaskFileError>()
            || matches!(
                cause.downcast_ref::<aiop::tuned::TunedError>(),
                Some(aiop::tuned::TunedError::Sample { .. })
            )
            || cause.is::<cmd::DataError>()
            // A task model's sidecar that cannot be read or used.
            || matches!(
                cause.downcast_ref::<aiop::tuned::TunedError>(),
                Some(aiop::tuned::TunedError::Sidecar { .. })
            )
            // A malformed line of an export (line 0 is the store, not the file: not empty).
            || matches!(
                cause.downcast_ref::<aiop::store::StoreError>(),
                Some(aiop::store::StoreError::Import { line: 1.., .. })
            )
            || matches!(
                predictor_error(cause),
                Some(
                    aiop::predictor::PredictorError::Data(_)
                        | aiop::predictor::PredictorError::Space(_)
                        // A malformed checkpoint file (its sidecar, weights or base.json).
                        | aiop::predictor::PredictorError::Checkpoint { .. }
                        | aiop::predictor::PredictorError::Json { .. }
                )
            )
        {
            return 65;
        }
    }
    1
}

/// Whether `e` is a write to a closed pipe: the reader (`head`, a pager) has all it wants, so the
/// command ends quietly with success, as when nothing had been left to write.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The predictor's error in `cause`, on its own or carried by a search's.
fn predictor_error<'a>(
    cause: &'a (dyn std::error::Error + 'static),
) -> Option<&'a aiop::predictor::PredictorError> {
    match cause.downcast_ref::<aiop::search::SearchError>() {
        Some(aiop::search::SearchError::Predictor(p)) => Some(p),
        _ => cause.downcast_ref(),
    }
}

fn main() -> ExitCode {
    // candle's own pool for large element-wise ops spin-waits on its workers, which stalls
    // everything on a busy machine; the predictor's heavy work runs in rayon (its fused ops), so
    // candle's element-wise ops stay on the calling thread unless the user asks otherwise.
    // Set before any thread exists.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Spaces(a) => cmd::graph::spaces(a),
        Command::Graph(a) => cmd::graph::graph(a),
        Command::Search(a) => cmd::search::search(a),
        Command::Export(a) => cmd::search::export(a),
        Command::Experiment(ExperimentCommand::Search(a)) => cmd::experiment::experiment(a),
        Command::Experiment(ExperimentCommand::Flops(a)) => cmd::experiment::flops_experiment(a),
        Command::Experiment(ExperimentCommand::Base(a)) => cmd::experiment::base_experiment(a),
        Command::Bench(BenchCommand::Graph(a)) => cmd::bench::graph(a),
        Command::Bench(BenchCommand::Predictor(a)) => cmd::bench_predictor::bench(a),
        Command::Bench(BenchCommand::Api(a)) => cmd::bench::api(a),
        Command::Bench(BenchCommand::Search(a)) => cmd::bench_search::bench(a),
        Command::Pretrain(a) => cmd::predictor::pretrain(a),
        Command::Finetune(a) => cmd::predictor::finetune(a),
        Command::Predict(a) => cmd::predictor::predict(a),
        Command::Eval(a) => cmd::eval::eval(a),
        Command::Serve(a) => cmd::serve::serve(a, prometheus::Registry::new()),
        Command::Status(a) => cmd::serve::status(a),
        Command::Searches(a) => cmd::serve::searches(a),
        Command::Submit(a) => cmd::serve::submit(a),
        Command::Store(c) => cmd::store::store(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if e.is::<cmd::Logged>() => ExitCode::from(exit_code(&e)),
        Err(e) => {
            eprintln!("aiop: {}", cmd::error_message(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}
