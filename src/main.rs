//! The `aiop` binary: parses arguments, wires components, and turns errors into exit codes in
//! one place ([`exit_code`]). Command bodies live in `cmd/`, one file per command family.
#![forbid(unsafe_code)]

mod cmd;

/// mimalloc: candle's CPU path churns large buffers, which glibc malloc serves 2-3x slower.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

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
    /// Remove a task from a running daemon: its task file leaves the watched folder, its
    /// searches are cancelled, its record, model and results are kept.
    Remove(cmd::serve::RemoveArgs),
    /// Export, import or compact the daemon's store (with the daemon stopped).
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
/// or line; also what a daemon refused as such), 66 an input named on the command line is not
/// there (EX_NOINPUT: a missing or unreadable file, folder or task model; [`cmd::NoInput`], and
/// any cause that is a missing file), 69 no daemon answers (EX_UNAVAILABLE), 75 the
/// daemon is stopping or did not answer in time (EX_TEMPFAIL: try again), 77 the daemon wants
/// another token (EX_NOPERM), 78 bad configuration (EX_CONFIG). A closed standard output
/// (`aiop status | head`) is not a failure: see [`broken_pipe`].
fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(r) = cause.downcast_ref::<cmd::serve::Refused>() {
            return match r.status {
                400 | 413 | 415 | 422 => 65,
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
        if cause.is::<cmd::UsageError>()
            // `store import --state` naming a store in use: the argument, not the file.
            || matches!(
                cause.downcast_ref::<aiop::store::StoreError>(),
                Some(aiop::store::StoreError::NotEmpty)
            )
        {
            return 2;
        }
        if cause.is::<cmd::NoDaemon>() {
            return 69;
        }
        if cause.is::<cmd::NoInput>()
            || matches!(
                cause.downcast_ref::<aiop::tuned::TunedError>(),
                Some(aiop::tuned::TunedError::NotFound { .. })
            )
            || cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
        {
            return 66;
        }
        if let Some(e) = cause.downcast_ref::<aiop::search::SearchError>() {
            return search_exit_code(e);
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
            // A malformed line of an export.
            || matches!(
                cause.downcast_ref::<aiop::store::StoreError>(),
                Some(aiop::store::StoreError::Import { .. })
            )
            || cause
                .downcast_ref::<aiop::predictor::PredictorError>()
                .is_some_and(is_bad_predictor_data)
        {
            return 65;
        }
    }
    1
}

/// The exit code of a search's own error (each variant decided here, so a new one must be):
/// a spec that cannot be searched (invalid, constraints nothing meets, an option its algorithm
/// does not read) is bad usage, 2; a start network or architecture that is malformed is bad
/// data, 65; the predictor's error as the predictor's; a failing fitness, 1.
fn search_exit_code(e: &aiop::search::SearchError) -> u8 {
    use aiop::search::SearchError;
    match e {
        SearchError::Invalid(_) | SearchError::Infeasible { .. } | SearchError::Unread { .. } => 2,
        SearchError::Space(_) | SearchError::Graph(_) => 65,
        SearchError::Predictor(p) if is_bad_predictor_data(p) => 65,
        SearchError::Predictor(_) | SearchError::Fitness(_) => 1,
    }
}

/// Whether the predictor's error is bad input data (65): its data, a space, or a malformed
/// checkpoint file (its sidecar, weights or base.json).
fn is_bad_predictor_data(p: &aiop::predictor::PredictorError) -> bool {
    matches!(
        p,
        aiop::predictor::PredictorError::Data(_)
            | aiop::predictor::PredictorError::Space(_)
            | aiop::predictor::PredictorError::Checkpoint { .. }
            | aiop::predictor::PredictorError::Json { .. }
    )
}

/// The ids of subcommand `name`'s arguments given on the command line (not defaults): what an
/// argument struct cannot tell for options with defaults.
fn given_on_command_line(m: &ArgMatches, name: &str) -> Vec<String> {
    let Some(sub) = m.subcommand_matches(name) else {
        return Vec::new();
    };
    sub.ids()
        .filter(|id| sub.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.to_string())
        .collect()
}

/// Whether `e` is a write to a closed pipe: the reader (`head`, a pager) has all it wants, so the
/// command ends quietly with success, as when nothing had been left to write.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    // candle's own pool for large element-wise ops spin-waits on its workers, which stalls
    // everything on a busy machine; the predictor's heavy work runs in rayon (its fused ops), so
    // candle's element-wise ops stay on the calling thread unless the user asks otherwise.
    // Set before any thread exists.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Spaces(a) => cmd::graph::spaces(a),
        Command::Graph(a) => cmd::graph::graph(a),
        Command::Search(a) => cmd::search::search(cmd::search::SearchArgs {
            given: given_on_command_line(&matches, "search"),
            ..a
        }),
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
        Command::Remove(a) => cmd::serve::remove(a),
        Command::Store(c) => cmd::store::store(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if e.is::<cmd::Logged>() => ExitCode::from(exit_code(&e)),
        Err(e) => {
            // Not `eprintln!`: it panics when standard error is a closed pipe, and the exit
            // code is what must come out.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("aiop: {}\n", cmd::error_message(&e)).as_bytes(),
            );
            ExitCode::from(exit_code(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_specific_option_is_an_argument_of_aiop_search() {
        // `refuse_unread_options` asks about them by these ids: a name that is no argument's id
        // would never be refused.
        let cli = Cli::command();
        let search = cli.find_subcommand("search").unwrap();
        for (o, _) in aiop::search::Algorithm::SPECIFIC {
            assert!(
                search.get_arguments().any(|a| a.get_id() == o),
                "{o} is not an argument of aiop search"
            );
        }
        let m = Cli::command()
            .try_get_matches_from(["aiop", "search", "--tolerance", "1", "--budget", "5"])
            .unwrap();
        let given = given_on_command_line(&m, "search");
        assert!(given.contains(&"tolerance".to_string()), "{given:?}");
        assert!(given.contains(&"budget".to_string()), "{given:?}");
        assert!(!given.contains(&"two_sided".to_string()), "{given:?}");
        assert!(
            !given.contains(&"top".to_string()),
            "a default is not given: {given:?}"
        );
    }

    #[test]
    fn search_errors_map_to_usage_or_data_exit_codes() {
        use aiop::search::{Algorithm, SearchError};
        let space = aiop::spaces::SpaceId::from_name("nb999").unwrap_err();
        let graph = aiop::graph::json::from_json("{").unwrap_err();
        for (e, code) in [
            (SearchError::Invalid("budget".into()), 2),
            (
                SearchError::Infeasible {
                    tries: 1,
                    constraints: "max_mflops 1".into(),
                },
                2,
            ),
            (
                SearchError::Unread {
                    option: "radius",
                    algorithm: Algorithm::Random,
                },
                2,
            ),
            (SearchError::Space(space), 65),
            (SearchError::Graph(graph), 65),
            (SearchError::Fitness("down".into()), 1),
        ] {
            assert_eq!(search_exit_code(&e), code, "{e}");
            // Through anyhow, with context, as commands return them.
            let any = anyhow::Error::from(e).context("searching");
            assert_eq!(exit_code(&any), code, "{any:#}");
        }
    }
}
