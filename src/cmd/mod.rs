//! Command bodies of the `aiop` binary, one file per command family. They parse nothing
//! themselves (clap does, in `main`), read and write the standard streams, and return
//! `anyhow::Result` so that `main` maps every failure to an exit code in one place.

pub mod bench;
pub mod bench_predictor;
pub mod bench_search;
pub mod eval;
pub mod experiment;
pub mod graph;
pub mod predictor;
pub mod search;
pub mod serve;
pub mod store;

/// Input that could not be processed (some lines of a batch failed); maps to exit code 65.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DataError(pub String);

/// An argument clap cannot check (it depends on the input, such as `aiop export --rank` past
/// the results); maps to exit code 2, as clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The task `--task NAME` names in `space`: one the space lacks is a usage error (2), as a
/// mistyped `--space` is, listing the space's tasks.
pub fn task_arg(
    space: aiop::spaces::SpaceId,
    name: &str,
) -> Result<aiop::spaces::Task, UsageError> {
    space
        .task(name)
        .map_err(|e| UsageError(format!("--task: {e}")))
}

/// clap's parser of a `--space` name: its possible values are [`aiop::spaces::SpaceId::ALL`]'s
/// names, so a typo is a usage error (2) that lists them.
pub fn space_parser() -> impl clap::builder::TypedValueParser<Value = aiop::spaces::SpaceId> {
    use aiop::spaces::SpaceId;
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(SpaceId::ALL.map(SpaceId::name))
        .map(|s| SpaceId::from_name(&s).expect("a possible value is a space's name"))
}

/// Standard output for a command that prints as it goes and writes a file at the end
/// (`aiop experiment`'s tables beside `--json`): once the reader has gone (`| head`), what is
/// printed is dropped and the work goes on to its file, where a plain `stdout()` would end the
/// command at the next line, quietly and without the file. Other errors are kept.
pub fn report_out() -> ReportOut {
    ReportOut {
        inner: std::io::stdout(),
        closed: false,
    }
}

/// See [`report_out`].
pub struct ReportOut {
    inner: std::io::Stdout,
    /// The reader has gone: everything after is dropped.
    closed: bool,
}

impl std::io::Write for ReportOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.closed {
            return Ok(buf.len());
        }
        match self.inner.write(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(buf.len())
            }
            r => r,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.closed {
            return Ok(());
        }
        match self.inner.flush() {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            r => r,
        }
    }
}

/// No daemon to talk to: its state folder holds no address file (it is not running there);
/// maps to exit code 69 (EX_UNAVAILABLE), as a refused connection does.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoDaemon(pub String);

/// An input file or folder named on the command line that is not there to read: missing, of
/// the wrong kind (a folder for a file, a file for a folder) or not readable; maps to exit code
/// 66 (EX_NOINPUT). What it holds, once read, is [`DataError`]'s (65) when malformed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoInput(pub String);

/// Check that `path`, the input file of `option` (a flag, or a positional argument's name),
/// is a file this process can open, before any work is done for it.
pub fn check_input(path: &std::path::Path, option: &str) -> Result<(), NoInput> {
    let fail = |why: String| NoInput(format!("{option} {}: {why}", path.display()));
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(fail(match path.symlink_metadata() {
                Ok(_) => "a symlink to nothing".into(),
                Err(_) => "no such file".into(),
            }))
        }
        Err(e) => Err(fail(format!("cannot be read: {e}"))),
        Ok(m) if m.is_dir() => Err(fail("is a folder, not a file".into())),
        Ok(_) => std::fs::File::open(path)
            .map(drop)
            .map_err(|e| fail(format!("cannot be read: {e}"))),
    }
}

/// Check that `path`, the input folder of `option`, is a folder, before any work is done.
pub fn check_input_dir(path: &std::path::Path, option: &str) -> Result<(), NoInput> {
    let fail = |why: &str| NoInput(format!("{option} {}: {why}", path.display()));
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(fail("no such folder")),
        Err(e) => Err(fail(&format!("cannot be read: {e}"))),
        Ok(m) if !m.is_dir() => Err(fail("is a file, not a folder")),
        Ok(_) => Ok(()),
    }
}

/// The text of `path`, the input file of `option`: [`check_input`]'s errors, then text that
/// is not UTF-8 as bad data ([`DataError`]). A leading UTF-8 byte-order mark (what some
/// Windows editors write) is dropped: no JSON, TOML or CSV reader here takes one.
pub fn read_input(path: &std::path::Path, option: &str) -> anyhow::Result<String> {
    check_input(path, option)?;
    let bytes = std::fs::read(path)
        .map_err(|e| NoInput(format!("{option} {}: cannot be read: {e}", path.display())))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        DataError(format!(
            "{}: not UTF-8 text (byte {} is not valid UTF-8)",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// Check that `path`, the destination of `option`, can be written, before any work is done
/// for it (a [`UsageError`] naming both otherwise). An existing file is opened for writing and
/// left as it is; a missing one is created and removed again.
pub fn check_writable(path: &std::path::Path, option: &str) -> Result<(), UsageError> {
    let fail = |why: String| UsageError(format!("{option} {}: {why}", path.display()));
    if path.is_dir() {
        return Err(fail("is a folder".into()));
    }
    let existed = path.symlink_metadata().is_ok();
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| fail(format!("cannot be written: {e}")))?;
    if !existed {
        // Nothing is left behind should the command fail before it writes.
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Context of an error already written to the log (`aiop serve` with `log_format = "json"`,
/// whose every line must be a JSON object): `main` maps it to its exit code without printing
/// it again as text.
#[derive(Debug, thiserror::Error)]
#[error("(logged)")]
pub struct Logged;

/// `e` and its causes in one line, outermost first, joined by `": "` as `{:#}` joins them,
/// except that a cause whose text the message so far already holds is left out: many error
/// types name their inner error in their own text (so that logs, which print one level, keep
/// it) and also expose it as their source, and `{:#}` would say it twice.
pub fn error_message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let m = cause.to_string();
        if m.is_empty() || out.contains(&m) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&m);
    }
    out
}

/// The lines of `r` numbered from 1, without their `\n` (or `\r\n`), as `BufRead::lines` gives
/// them, except that a line that is not UTF-8 is an `Err` with the reason instead of ending the
/// stream: batch commands report such a line and answer the others. A read error still ends it.
pub fn numbered_lines(
    r: impl std::io::BufRead,
) -> impl Iterator<Item = std::io::Result<(usize, Result<String, String>)>> {
    r.split(b'\n').enumerate().map(|(k, bytes)| {
        let mut bytes = bytes?;
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        // A byte-order mark opening the input (a file saved by a Windows editor) is no part
        // of its first line.
        if k == 0 && bytes.starts_with(b"\xef\xbb\xbf") {
            bytes.drain(..3);
        }
        let line = String::from_utf8(bytes).map_err(|e| {
            format!(
                "not UTF-8 text (invalid byte at column {})",
                e.utf8_error().valid_up_to() + 1
            )
        });
        Ok((k + 1, line))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_destination_is_checked_without_being_changed() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.json");
        super::check_writable(&new, "--json").unwrap();
        assert!(!new.exists(), "a missing file is not left behind");
        let old = dir.path().join("old.json");
        std::fs::write(&old, "keep").unwrap();
        super::check_writable(&old, "--json").unwrap();
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "keep");
        for bad in [dir.path().to_path_buf(), dir.path().join("no/such/x.json")] {
            let e = super::check_writable(&bad, "--graph")
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("--graph {}: ", bad.display())),
                "{e}"
            );
        }
    }

    #[test]
    fn error_message_says_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("store: {0}")]
        struct Store(#[from] std::io::Error);
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::from(Store(io)).context("opening state/db");
        assert_eq!(
            super::error_message(&e),
            "opening state/db: store: disk on fire"
        );
        // Causes the outer text does not name are all kept, in order.
        let e = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(super::error_message(&e), "outer: middle: inner");
        assert_eq!(format!("{e:#}"), "outer: middle: inner");
    }

    #[test]
    fn numbered_lines_report_bad_utf8_and_go_on() {
        let lines: Vec<_> = super::numbered_lines(&b"\xef\xbb\xbfa\r\nb\xff\n\nc"[..])
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            lines,
            [
                (1, Ok("a".to_string())),
                (
                    2,
                    Err("not UTF-8 text (invalid byte at column 2)".to_string())
                ),
                (3, Ok(String::new())),
                (4, Ok("c".to_string())),
            ]
        );
    }
}
