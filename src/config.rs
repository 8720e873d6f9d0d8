//! Daemon configuration: every setting of `aiop serve` in one [`Config`], and where it comes from.
//!
//! Load order, later sources overriding earlier ones field by field: embedded defaults
//! ([`Config::default`]) < a TOML file (`--config FILE`, else `config/aiop.toml` when it exists
//! in the working directory) < `AIOP_*` environment variables < command-line flags (applied by
//! the caller through [`Overrides`]). Invariants: an unknown key in a file is an error naming the
//! key, the file and the line; a malformed `AIOP_*` value is an error naming the variable; a
//! loaded [`Config`] has passed [`Config::validate`] (positive limits, a known log format).
//! `config/aiop.toml` documents every key with its default and must parse to [`Config::default`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The file read when no `--config` is given, relative to the working directory.
pub const DEFAULT_FILE: &str = "config/aiop.toml";

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line, for journald or log shippers.
    Json,
}

/// Every setting of the daemon. Field names are the TOML keys; `AIOP_<KEY>` (upper case) is the
/// environment variable of each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the store (sled) and the address file live.
    pub state_dir: PathBuf,
    /// The watched folder of task files; `<state_dir>/tasks` when unset.
    pub tasks_dir: Option<PathBuf>,
    /// Address the HTTP API listens on (port 0 picks a free port; see `<state_dir>/aiop.addr`).
    pub listen: SocketAddr,
    /// Fine-tuning jobs run at once.
    pub max_concurrent_jobs: usize,
    /// Searches run at once (each on its own thread; queued ones wait).
    pub max_concurrent_searches: usize,
    /// The pretrained base model: a checkpoint directory written by `aiop pretrain`; the model
    /// embedded in the binary when unset.
    pub model: Option<PathBuf>,
    /// Most graphs the predictor service puts in one forward pass.
    pub max_batch_graphs: usize,
    /// Largest accepted HTTP request body, in bytes.
    pub body_limit_bytes: usize,
    /// Most graphs (and later predictions) one request may ask for.
    pub max_predictions_per_request: usize,
    /// When set, mutating and compute endpoints require `Authorization: Bearer <token>`.
    pub token: Option<String>,
    pub log_format: LogFormat,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    pub shutdown_grace_secs: u64,
    /// Quiet time before a changed task file is read, in milliseconds.
    pub watch_debounce_ms: u64,
    /// Largest task definition (TOML) file, in bytes.
    pub max_task_file_bytes: u64,
    /// Largest samples CSV (and each JSON graph file), in bytes.
    pub max_samples_file_bytes: u64,
    /// Seconds a single HTTP request may take before it is answered 408.
    pub request_timeout_secs: u64,
    /// Least time between two checkpoints of a running search, in milliseconds (0: after
    /// every generation). A search of fast generations would otherwise spend most of its time
    /// flushing the store; a crash loses at most this much of a search's work, which the
    /// resumed search redoes exactly. Ends, cancellations and stops are always checkpointed.
    pub checkpoint_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            state_dir: PathBuf::from("state"),
            tasks_dir: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 9187)),
            max_concurrent_jobs: 1,
            max_concurrent_searches: 2,
            model: None,
            max_batch_graphs: 4096,
            body_limit_bytes: 1 << 20,
            max_predictions_per_request: 1000,
            token: None,
            log_format: LogFormat::Text,
            shutdown_grace_secs: 10,
            watch_debounce_ms: 300,
            max_task_file_bytes: 1 << 20,
            max_samples_file_bytes: 16 << 20,
            request_timeout_secs: 30,
            checkpoint_interval_ms: 1000,
        }
    }
}

/// Command-line values, which win over every other source.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub tasks_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
}

/// Errors of loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {error}")]
    Read { file: String, error: std::io::Error },
    #[error("{file}:{line}: {message}")]
    Parse {
        file: String,
        line: usize,
        message: String,
    },
    #[error("environment variable {var}='{value}': {message}")]
    Env {
        var: String,
        value: String,
        message: String,
    },
    #[error("environment variable {0} is not a known setting (known: {known})", known = ENV_KEYS.join(", "))]
    UnknownEnv(String),
    #[error("setting '{key}': {message}")]
    Invalid { key: &'static str, message: String },
    /// [`ConfigError::Invalid`] with where the value came from: the file, the variable.
    #[error("{origin}: setting '{key}' = {value}: {message}")]
    InvalidAt {
        origin: String,
        key: &'static str,
        value: String,
        message: String,
    },
}

use crate::taskfile::line_of;

/// The environment variables read, one per [`Config`] field.
pub const ENV_KEYS: [&str; 17] = [
    "AIOP_STATE_DIR",
    "AIOP_TASKS_DIR",
    "AIOP_LISTEN",
    "AIOP_MAX_CONCURRENT_JOBS",
    "AIOP_MAX_CONCURRENT_SEARCHES",
    "AIOP_MODEL",
    "AIOP_MAX_BATCH_GRAPHS",
    "AIOP_BODY_LIMIT_BYTES",
    "AIOP_MAX_PREDICTIONS_PER_REQUEST",
    "AIOP_TOKEN",
    "AIOP_LOG_FORMAT",
    "AIOP_SHUTDOWN_GRACE_SECS",
    "AIOP_WATCH_DEBOUNCE_MS",
    "AIOP_MAX_TASK_FILE_BYTES",
    "AIOP_MAX_SAMPLES_FILE_BYTES",
    "AIOP_REQUEST_TIMEOUT_SECS",
    "AIOP_CHECKPOINT_INTERVAL_MS",
];

/// `AIOP_*` variables that belong to other parts of aiop (not settings of the daemon).
const ENV_OTHER: [&str; 1] = ["AIOP_LOG"];

impl Config {
    /// Parse a TOML document; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            line: e.span().map_or(1, |s| line_of(text, s.start)),
            message: e.message().trim().to_string(),
        })
    }

    /// Everything but the flags' values: defaults < file < environment, validated. A value out
    /// of its range is reported with where it was set (the file, the variable); an existing
    /// state or tasks path that is not a folder, or a `model` that is not one, is refused here,
    /// before anything is created.
    pub fn load(
        ov: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let file = match &ov.config_file {
            Some(f) => Some(f.clone()),
            None if Path::new(DEFAULT_FILE).is_file() => Some(PathBuf::from(DEFAULT_FILE)),
            None => None,
        };
        let (mut cfg, file_text) = match &file {
            Some(f) => {
                let (c, text) = Config::from_file(f)?;
                (c, Some(text))
            }
            None => (Config::default(), None),
        };
        let env: Vec<(String, String)> = env.into_iter().collect();
        cfg.apply_env(env.iter().cloned())?;
        if let Some(s) = &ov.state_dir {
            cfg.state_dir = s.clone();
        }
        if let Some(t) = &ov.tasks_dir {
            cfg.tasks_dir = Some(t.clone());
        }
        if let Some(l) = ov.listen {
            cfg.listen = l;
        }
        cfg.validate().map_err(|e| match e {
            ConfigError::Invalid { key, message } => {
                let var = format!("AIOP_{}", key.to_uppercase());
                // A secret is not written to the log, even a wrong one.
                let value = match key {
                    "token" => "(hidden)".to_string(),
                    _ => serde_json::to_value(&cfg)
                        .ok()
                        .and_then(|v| v.get(key).map(|v| v.to_string()))
                        .unwrap_or_default(),
                };
                let origin = if env.iter().any(|(k, _)| *k == var) {
                    Some(format!("environment variable {var}"))
                } else {
                    file.as_ref()
                        .zip(file_text.as_deref())
                        .filter(|(_, text)| {
                            toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key(key))
                        })
                        .map(|(f, _)| f.display().to_string())
                };
                match origin {
                    Some(origin) => ConfigError::InvalidAt {
                        origin,
                        key,
                        value,
                        message,
                    },
                    None => ConfigError::Invalid { key, message },
                }
            }
            e => e,
        })?;
        cfg.check_paths()?;
        Ok(cfg)
    }

    /// The `AIOP_*` variables of `vars` (as `std::env::vars_os` gives them) as text; other
    /// variables are skipped whatever their bytes, so that an unrelated variable that is not
    /// UTF-8 cannot stop the daemon, while an `AIOP_*` one that is not is an error naming it.
    pub fn env_vars(
        vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    ) -> Result<Vec<(String, String)>, ConfigError> {
        let mut out = Vec::new();
        for (k, v) in vars {
            let Some(k) = k.to_str().filter(|k| k.starts_with("AIOP_")) else {
                continue;
            };
            let v = v.into_string().map_err(|v| ConfigError::Env {
                var: k.to_string(),
                value: v.to_string_lossy().into_owned(),
                message: "not UTF-8 text".into(),
            })?;
            out.push((k.to_string(), v));
        }
        Ok(out)
    }

    /// Paths that exist but cannot be what they are set to be: the state folder, the tasks
    /// folder and the base model's checkpoint folder. (Missing state and tasks folders are
    /// created at start; a missing model is refused.)
    pub fn check_paths(&self) -> Result<(), ConfigError> {
        // The path, or the first of its ancestors that exists, must be a folder (what is
        // missing is created at the start); a symlink to nothing cannot be one either.
        let not_dir = |key: &'static str, p: &Path| {
            let invalid = |message: String| Err(ConfigError::Invalid { key, message });
            for a in p.ancestors().filter(|a| !a.as_os_str().is_empty()) {
                match (a.symlink_metadata(), a.metadata()) {
                    (Err(_), _) => continue,
                    (Ok(_), Err(_)) => {
                        return invalid(format!("{} is a symlink to nothing", a.display()))
                    }
                    (Ok(_), Ok(m)) if m.is_dir() => return Ok(()),
                    (Ok(_), Ok(_)) if a == p => {
                        return invalid(format!("{} exists and is not a folder", p.display()))
                    }
                    (Ok(_), Ok(_)) => {
                        return invalid(format!(
                            "{} is a file: {} cannot be a folder",
                            a.display(),
                            p.display()
                        ))
                    }
                }
            }
            Ok(())
        };
        not_dir("state_dir", &self.state_dir)?;
        not_dir("tasks_dir", &self.tasks_dir())?;
        if let Some(m) = &self.model {
            if !m.is_dir() {
                return Err(ConfigError::Invalid {
                    key: "model",
                    message: format!(
                        "{} is not a folder (a checkpoint folder written by `aiop pretrain`; \
                         unset the key for the embedded model)",
                        m.display()
                    ),
                });
            }
            if let Some(task) = crate::tuned::task_model_of(m) {
                return Err(ConfigError::Invalid {
                    key: "model",
                    message: format!(
                        "{} is task '{task}''s fine-tuned model, not a pretrained checkpoint \
                         (one written by `aiop pretrain`; unset the key for the embedded model)",
                        m.display()
                    ),
                });
            }
        }
        Ok(())
    }

    fn from_file(path: &Path) -> Result<(Config, String), ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            error: source,
        })?;
        Ok((Config::from_toml(&text, &file)?, text))
    }

    /// Apply `AIOP_*` variables; other variables are ignored, unknown `AIOP_*` ones are errors.
    pub fn apply_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (var, value) in env {
            let Some(_) = var.strip_prefix("AIOP_") else {
                continue;
            };
            let bad = |message: String| ConfigError::Env {
                var: var.clone(),
                value: value.clone(),
                message,
            };
            fn num<T: std::str::FromStr>(v: &str) -> Result<T, String>
            where
                T::Err: std::fmt::Display,
            {
                v.trim().parse::<T>().map_err(|e| e.to_string())
            }
            match var.as_str() {
                "AIOP_STATE_DIR" => self.state_dir = PathBuf::from(&value),
                "AIOP_TASKS_DIR" => self.tasks_dir = Some(PathBuf::from(&value)),
                "AIOP_LISTEN" => self.listen = num(&value).map_err(bad)?,
                "AIOP_MAX_CONCURRENT_JOBS" => {
                    self.max_concurrent_jobs = num(&value).map_err(bad)?
                }
                "AIOP_MAX_CONCURRENT_SEARCHES" => {
                    self.max_concurrent_searches = num(&value).map_err(bad)?
                }
                "AIOP_MODEL" => {
                    self.model = Some(PathBuf::from(&value)).filter(|p| !p.as_os_str().is_empty())
                }
                "AIOP_MAX_BATCH_GRAPHS" => self.max_batch_graphs = num(&value).map_err(bad)?,
                "AIOP_BODY_LIMIT_BYTES" => self.body_limit_bytes = num(&value).map_err(bad)?,
                "AIOP_MAX_PREDICTIONS_PER_REQUEST" => {
                    self.max_predictions_per_request = num(&value).map_err(bad)?
                }
                // An empty variable (`Environment=AIOP_TOKEN=`, a credential that did not
                // expand) must not open the API: refused, as an empty `token` in a file is.
                "AIOP_TOKEN" if value.trim().is_empty() => {
                    return Err(bad(
                        "an empty token would accept any request: unset the variable instead"
                            .into(),
                    ))
                }
                "AIOP_TOKEN" => self.token = Some(value.clone()),
                "AIOP_LOG_FORMAT" => {
                    self.log_format = match value.trim() {
                        "text" => LogFormat::Text,
                        "json" => LogFormat::Json,
                        _ => return Err(bad("expected 'text' or 'json'".into())),
                    }
                }
                "AIOP_SHUTDOWN_GRACE_SECS" => {
                    self.shutdown_grace_secs = num(&value).map_err(bad)?
                }
                "AIOP_WATCH_DEBOUNCE_MS" => self.watch_debounce_ms = num(&value).map_err(bad)?,
                "AIOP_MAX_TASK_FILE_BYTES" => {
                    self.max_task_file_bytes = num(&value).map_err(bad)?
                }
                "AIOP_MAX_SAMPLES_FILE_BYTES" => {
                    self.max_samples_file_bytes = num(&value).map_err(bad)?
                }
                "AIOP_REQUEST_TIMEOUT_SECS" => {
                    self.request_timeout_secs = num(&value).map_err(bad)?
                }
                "AIOP_CHECKPOINT_INTERVAL_MS" => {
                    self.checkpoint_interval_ms = num(&value).map_err(bad)?
                }
                v if ENV_OTHER.contains(&v) => {}
                _ => return Err(ConfigError::UnknownEnv(var.clone())),
            }
        }
        Ok(())
    }

    /// Check the limits are usable: each numeric setting within [`LIMITS`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        let values = [
            self.max_concurrent_jobs as u64,
            self.max_concurrent_searches as u64,
            self.max_batch_graphs as u64,
            self.body_limit_bytes as u64,
            self.max_predictions_per_request as u64,
            self.shutdown_grace_secs,
            self.watch_debounce_ms,
            self.max_task_file_bytes,
            self.max_samples_file_bytes,
            self.request_timeout_secs,
            self.checkpoint_interval_ms,
        ];
        for (&(key, min, max, why), v) in LIMITS.iter().zip(values) {
            if v < min {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("must be at least {min}"),
                });
            }
            if v > max {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("at most {max} ({why})"),
                });
            }
        }
        if self.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(ConfigError::Invalid {
                key: "token",
                message: "an empty token would accept any request: remove the key instead".into(),
            });
        }
        // A token no client can send would lock every mutating request out: HTTP drops the
        // spaces around a header's value and carries visible ASCII only.
        if let Some(t) = &self.token {
            if t.trim() != t {
                return Err(ConfigError::Invalid {
                    key: "token",
                    message: "has spaces around it, which no request can carry".into(),
                });
            }
            if let Some(c) = t.chars().find(|c| !c.is_ascii_graphic()) {
                return Err(ConfigError::Invalid {
                    key: "token",
                    message: format!(
                        "holds {c:?}: a token is visible ASCII only (it travels in an HTTP header)"
                    ),
                });
            }
        }
        // An empty path would be the working directory (`/` under systemd), never meant.
        for (key, p) in [
            ("state_dir", Some(&self.state_dir)),
            ("tasks_dir", self.tasks_dir.as_ref()),
        ] {
            if p.is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(ConfigError::Invalid {
                    key,
                    message: "is empty: unset it for the default".into(),
                });
            }
        }
        Ok(())
    }

    /// The watched folder: `tasks_dir`, else `<state_dir>/tasks`.
    pub fn tasks_dir(&self) -> PathBuf {
        self.tasks_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("tasks"))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    pub fn watch_debounce(&self) -> Duration {
        Duration::from_millis(self.watch_debounce_ms)
    }

    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_millis(self.checkpoint_interval_ms)
    }
}

/// The longest accepted `checkpoint_interval_ms`.
pub const MAX_CHECKPOINT_INTERVAL_MS: u64 = 3_600_000;

const GIB: u64 = 1 << 30;

/// Each numeric setting's accepted range and why its ceiling is there, in the order
/// [`Config::validate`] checks them. Ceilings keep a mistyped value from turning into
/// something else at run time: a time past what `Instant` can add (a panic at the first
/// request or at shutdown), a thread per slot spawned at start (an abort), a size whose
/// doubled sum overflows.
pub const LIMITS: [(&str, u64, u64, &str); 11] = [
    ("max_concurrent_jobs", 1, 64, "each is a fine-tuning thread"),
    (
        "max_concurrent_searches",
        1,
        1024,
        "each is a search thread",
    ),
    ("max_batch_graphs", 1, 1 << 20, "graphs in one forward pass"),
    ("body_limit_bytes", 1, GIB, "1 GiB"),
    (
        "max_predictions_per_request",
        1,
        1 << 20,
        "graphs in one request",
    ),
    (
        "shutdown_grace_secs",
        0,
        3600,
        "an hour; keep systemd's TimeoutStopSec above it",
    ),
    ("watch_debounce_ms", 1, 3_600_000, "an hour"),
    ("max_task_file_bytes", 1, GIB, "1 GiB"),
    ("max_samples_file_bytes", 1, GIB, "1 GiB"),
    ("request_timeout_secs", 1, 86_400, "a day"),
    (
        "checkpoint_interval_ms",
        0,
        MAX_CHECKPOINT_INTERVAL_MS,
        "an hour: a crash loses up to this much of every running search",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn shipped_file_documents_the_defaults() {
        let text = include_str!("../config/aiop.toml");
        let cfg = Config::from_toml(text, "config/aiop.toml").unwrap();
        assert_eq!(cfg, Config::default());
        // Every field appears in the shipped file, commented out or not.
        let json = serde_json::to_value(Config::default()).unwrap();
        for key in json.as_object().unwrap().keys() {
            assert!(text.contains(&format!("{key} =")), "{key} undocumented");
        }
        assert_eq!(json.as_object().unwrap().len(), ENV_KEYS.len());
    }

    #[test]
    fn unknown_key_names_key_file_and_line() {
        let e = Config::from_toml("listen = \"127.0.0.1:1\"\nlisten_adr = 3\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.toml:2:"), "{e}");
        assert!(e.contains("listen_adr"), "{e}");
    }

    #[test]
    fn precedence_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.toml");
        std::fs::write(&f, "state_dir = \"/from/file\"\nwatch_debounce_ms = 7\n").unwrap();
        let ov = Overrides {
            config_file: Some(f.clone()),
            ..Overrides::default()
        };
        let c = Config::load(&ov, env(&[("AIOP_WATCH_DEBOUNCE_MS", "9"), ("HOME", "/x")])).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/from/file"));
        assert_eq!(c.watch_debounce_ms, 9);
        assert_eq!(c.tasks_dir(), PathBuf::from("/from/file/tasks"));
        let ov = Overrides {
            config_file: Some(f),
            state_dir: Some("/flag".into()),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Overrides::default()
        };
        let c = Config::load(&ov, env(&[("AIOP_STATE_DIR", "/env")])).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/flag"));
        assert_eq!(c.listen.port(), 0);
    }

    #[test]
    fn bad_env_is_named() {
        let mut c = Config::default();
        let e = c
            .apply_env(env(&[("AIOP_LISTEN", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("AIOP_LISTEN"), "{e}");
        let e = c
            .apply_env(env(&[("AIOP_LISEN", "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("AIOP_LISEN"), "{e}");
        c.apply_env(env(&[("AIOP_LOG_FORMAT", "json")])).unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn zero_limits_rejected() {
        let c = Config {
            body_limit_bytes: 0,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("body_limit_bytes"));
        // 0 is a valid checkpoint interval (every generation); more than an hour is not.
        let every = Config {
            checkpoint_interval_ms: 0,
            ..Config::default()
        };
        assert!(every.validate().is_ok());
        let huge = Config {
            checkpoint_interval_ms: MAX_CHECKPOINT_INTERVAL_MS + 1,
            ..Config::default()
        };
        let e = huge.validate().unwrap_err().to_string();
        assert!(
            e.contains("checkpoint_interval_ms") && e.contains("3600000"),
            "{e}"
        );
    }

    #[test]
    fn every_limit_is_checked_under_its_own_name() {
        let default = serde_json::to_value(Config::default()).unwrap();
        for &(key, min, max, _) in &LIMITS {
            let mut over = default.clone();
            over[key] = serde_json::json!(max + 1);
            let c: Config = serde_json::from_value(over).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.contains(key) && e.contains(&max.to_string()),
                "{key}: {e}"
            );
            let mut top = default.clone();
            top[key] = serde_json::json!(max);
            let c: Config = serde_json::from_value(top).unwrap();
            assert!(c.validate().is_ok(), "{key} at its ceiling");
            if min > 0 {
                let mut under = default.clone();
                under[key] = serde_json::json!(min - 1);
                let c: Config = serde_json::from_value(under).unwrap();
                let e = c.validate().unwrap_err().to_string();
                assert!(e.contains(key), "{key}: {e}");
            }
        }
    }

    #[test]
    fn a_value_out_of_range_names_where_it_was_set() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.toml");
        std::fs::write(&f, "max_batch_graphs = 0\n").unwrap();
        let ov = Overrides {
            config_file: Some(f.clone()),
            ..Overrides::default()
        };
        let e = Config::load(&ov, env(&[])).unwrap_err().to_string();
        assert!(
            e.starts_with(&f.display().to_string()) && e.contains("'max_batch_graphs' = 0"),
            "{e}"
        );
        let e = Config::load(&ov, env(&[("AIOP_MAX_BATCH_GRAPHS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("environment variable AIOP_MAX_BATCH_GRAPHS"),
            "{e}"
        );
        let e = Config::load(
            &Overrides::default(),
            env(&[("AIOP_SHUTDOWN_GRACE_SECS", "9223372036854775807")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("AIOP_SHUTDOWN_GRACE_SECS") && e.contains("at most 3600"),
            "{e}"
        );
    }

    #[test]
    fn a_token_no_request_can_carry_is_refused_unshown() {
        for (t, says) in [
            ("secret ", "spaces around it"),
            (" secret", "spaces around it"),
            ("s\u{e9}cret", "visible ASCII only"),
            ("sec ret", "visible ASCII only"),
        ] {
            let e = Config::load(&Overrides::default(), env(&[("AIOP_TOKEN", t)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says) && e.contains("(hidden)"), "{t:?}: {e}");
            assert!(
                !e.contains("secret") && !e.contains("sec ret"),
                "the token is not shown: {e}"
            );
        }
        assert!(Config::load(&Overrides::default(), env(&[("AIOP_TOKEN", "s3cr3t_-.~")])).is_ok());
    }

    #[test]
    fn paths_that_cannot_be_folders_or_are_empty_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("afile");
        std::fs::write(&file, "").unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join("dangling"))
            .unwrap();
        for (state, tasks, says) in [
            (file.join("S"), None, "is a file"),
            (dir.path().join("S"), Some(file.join("tasks")), "is a file"),
            (
                dir.path().join("S"),
                Some(dir.path().join("dangling")),
                "a symlink to nothing",
            ),
            (dir.path().join("S"), Some(PathBuf::new()), "is empty"),
            (PathBuf::new(), None, "is empty"),
        ] {
            let ov = Overrides {
                state_dir: Some(state),
                tasks_dir: tasks,
                ..Overrides::default()
            };
            let e = Config::load(&ov, env(&[])).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        assert!(!dir.path().join("S").exists(), "nothing is created");
    }

    #[test]
    fn an_empty_token_variable_is_refused_not_taken_as_no_token() {
        let mut c = Config {
            token: Some("s3cret".into()),
            ..Config::default()
        };
        let e = c
            .apply_env(env(&[("AIOP_TOKEN", "")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("AIOP_TOKEN") && e.contains("empty token"), "{e}");
        assert_eq!(c.token.as_deref(), Some("s3cret"));
        c.apply_env(env(&[("AIOP_TOKEN", "other")])).unwrap();
        assert_eq!(c.token.as_deref(), Some("other"));
    }

    #[cfg(unix)]
    #[test]
    fn variables_that_are_not_utf8_stop_nothing_unless_they_are_ours() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(b"\xff".to_vec());
        let vars = vec![
            (OsString::from("UNRELATED"), bad()),
            (OsString::from_vec(b"X\xff".to_vec()), OsString::from("1")),
            (OsString::from("AIOP_LISTEN"), OsString::from("127.0.0.1:0")),
        ];
        assert_eq!(
            Config::env_vars(vars).unwrap(),
            env(&[("AIOP_LISTEN", "127.0.0.1:0")])
        );
        let e = Config::env_vars(vec![(OsString::from("AIOP_MODEL"), bad())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("AIOP_MODEL") && e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn paths_that_cannot_be_folders_are_refused_before_anything_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        for (var, key) in [
            ("AIOP_STATE_DIR", "state_dir"),
            ("AIOP_TASKS_DIR", "tasks_dir"),
            ("AIOP_MODEL", "model"),
        ] {
            let e = Config::load(&Overrides::default(), env(&[(var, file.to_str().unwrap())]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("a-file"), "{key}: {e}");
        }
        let missing = dir.path().join("no-model");
        let e = Config::load(
            &Overrides::default(),
            env(&[("AIOP_MODEL", missing.to_str().unwrap())]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no-model") && e.contains("not a folder"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A task model (a version folder, its companion, the task's folder) is no base model:
        // the daemon started on it and fine-tuned every task from another task's model.
        let models = tempfile::tempdir().unwrap();
        let version = models.path().join("seg").join("v1");
        std::fs::create_dir_all(version.join(crate::tuned::COMPANION_DIR)).unwrap();
        std::fs::write(version.join(crate::tuned::SIDECAR), "{}").unwrap();
        for m in [
            version.clone(),
            version.join(crate::tuned::COMPANION_DIR),
            models.path().join("seg"),
        ] {
            let e = Config::load(
                &Overrides::default(),
                env(&[("AIOP_MODEL", m.to_str().unwrap())]),
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("model") && e.contains("task 'seg''s fine-tuned model"),
                "{}: {e}",
                m.display()
            );
        }
    }

    #[test]
    fn the_unit_sets_known_variables_and_no_flags() {
        // Flags win over the environment: a flag in ExecStart would silently override every
        // drop-in's Environment= line.
        let unit = include_str!("../systemd/aiop.service");
        let exec: Vec<&str> = unit
            .lines()
            .filter(|l| l.starts_with("ExecStart="))
            .collect();
        assert_eq!(exec, ["ExecStart=/usr/local/bin/aiop serve"]);
        let vars: Vec<&str> = unit
            .lines()
            .filter_map(|l| l.strip_prefix("Environment=AIOP_"))
            .map(|kv| kv.split('=').next().unwrap())
            .collect();
        assert!(
            vars.contains(&"STATE_DIR") && vars.contains(&"LISTEN"),
            "{vars:?}"
        );
        let pairs: Vec<(String, String)> = unit
            .lines()
            .filter_map(|l| l.strip_prefix("Environment="))
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut c = Config::default();
        c.apply_env(pairs).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/aiop"));
        assert_eq!(c.listen, "127.0.0.1:9187".parse().unwrap());
    }
}
