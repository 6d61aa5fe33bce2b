//! Flags of the `supervisor` binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::config::{Config, Timeouts};

/// Zero-downtime handoff supervisor: runs a worker, holds its sockets, and
/// upgrades it to a new binary without dropping a connection.
///
/// Every flag can also come from a TOML file (`--config`), under the same
/// name with underscores (`state_dir`, `prepare_timeout = "10s"`,
/// `worker_args = [..]`); flags override the file.
#[derive(Debug, Parser)]
#[command(name = "supervisor", version)]
pub struct Args {
    /// A TOML file with any of the settings below.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Control socket path (created with mode 0600) [default:
    /// STATE_DIR/control.sock].
    #[arg(long, env = "HANDOFF_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Directory for the supervisor's state (created 0700).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Worker binary. SIGUSR2 upgrades to whatever file is at this path then.
    #[arg(long)]
    pub worker: Option<PathBuf>,
    /// Longest wait for a new worker's Hello [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub prepare_timeout: Option<Duration>,
    /// Longest wait for the old worker to freeze [default: 5s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub freeze_timeout: Option<Duration>,
    /// Longest wait for the new worker to be ready after the restore [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub restore_timeout: Option<Duration>,
    /// Longest wait for the old worker to exit before it is killed [default: 5s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub exit_timeout: Option<Duration>,
    /// Longest wait for the worker to stop on a graceful stop [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub stop_timeout: Option<Duration>,
    /// Longest the worker may miss heartbeats before it is killed and
    /// recovered [default: 5s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Option<Duration>,
    /// Longest wait at start for a worker that still serves this state
    /// directory (its supervisor went away) to be adopted; past it the
    /// supervisor exits non-zero rather than start a second worker
    /// [default: 5s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub adopt_timeout: Option<Duration>,
    /// How long a new build is on probation after an upgrade: if it dies
    /// within it, the previous build takes over automatically [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub probation: Option<Duration>,
    /// Failed starts of a worker that has never served (every feed open)
    /// before the supervisor gives up and exits non-zero with the worker's
    /// last error; once a worker has served, crashes are recovered with
    /// backoff as always [default: 3].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub start_attempts: Option<u32>,
    /// Pre-copy the state to the new worker before the freeze, when both
    /// builds can (`on`), or move it whole in the freeze (`off`) [default: on].
    #[arg(long, value_enum)]
    pub precopy: Option<OnOff>,
    /// Most pre-copy rounds of changes before the freeze, 0 to 64 (0: the
    /// state alone, then what changed since, in the freeze) [default: 4].
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=MAX_PRECOPY_ROUNDS as i64))]
    pub precopy_rounds: Option<u32>,
    /// A pre-copy round that took no longer than this to make and apply
    /// ends the rounds: the freeze follows [default: 1ms].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub precopy_target_pause: Option<Duration>,
    /// Longest a pre-copy round may take, the whole state's included; past
    /// it the upgrade is refused and the old worker serves on [default: 60s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub precopy_timeout: Option<Duration>,
    /// Upgrade by itself when the file at the --worker path is replaced (after
    /// a short debounce, once per new build).
    #[arg(long)]
    pub watch: bool,
    /// Keep every held socket and the newest checkpoint in systemd's file
    /// descriptor store (the unit needs FileDescriptorStoreMax= above the
    /// connection count + 2): a restart of the supervisor under systemd then
    /// recovers on the same connections.
    #[arg(long)]
    pub fd_store: bool,
    /// Also let this uid use the control socket (repeatable).
    #[arg(long = "allow-uid")]
    pub allow_uids: Vec<u32>,
    /// Also let members of this gid use the control socket (repeatable).
    #[arg(long = "allow-gid")]
    pub allow_gids: Vec<u32>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9187).
    #[arg(long)]
    pub metrics: Option<String>,
    /// Log format [default: human].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Arguments passed to every worker.
    #[arg(last = true)]
    pub worker_args: Vec<String>,
}

/// A setting that is on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOff {
    On,
    Off,
}

/// How logs are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// The settings a `--config` file may hold (the flags' names).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub worker: Option<PathBuf>,
    pub worker_args: Option<Vec<String>>,
    pub prepare_timeout: Option<String>,
    pub freeze_timeout: Option<String>,
    pub restore_timeout: Option<String>,
    pub exit_timeout: Option<String>,
    pub stop_timeout: Option<String>,
    pub heartbeat_timeout: Option<String>,
    pub adopt_timeout: Option<String>,
    pub probation: Option<String>,
    pub start_attempts: Option<u32>,
    pub precopy: Option<OnOff>,
    pub precopy_rounds: Option<u32>,
    pub precopy_target_pause: Option<String>,
    pub precopy_timeout: Option<String>,
    pub watch: Option<bool>,
    pub fd_store: Option<bool>,
    pub allow_uid: Option<Vec<u32>>,
    pub allow_gid: Option<Vec<u32>>,
    pub metrics: Option<String>,
    pub log_format: Option<LogFormat>,
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path:?}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path:?}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file: {key} = {value:?} is not a duration (try \"5s\", \"250ms\")")]
    Duration { key: &'static str, value: String },
    #[error("{key} = {value}: {why}")]
    OutOfRange {
        key: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("--{0} is required (as a flag or in the config file)")]
    Missing(&'static str),
    #[error("cannot make {path:?} absolute: {source}")]
    Path {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FileConfig {
    /// Read and parse `path`. Unknown keys are errors (a typo must not be
    /// silently ignored on a trading host).
    pub fn load(path: &std::path::Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })
    }
}

/// Most pre-copy rounds of changes a flag or the file may ask for.
pub const MAX_PRECOPY_ROUNDS: u32 = 64;

/// Longest duration a setting may hold: deadlines are `now` plus a
/// setting, and must not overflow the clock.
const MAX_SETTING: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration setting: the flag, else the file's value, else `default`;
/// at most [`MAX_SETTING`].
fn duration(
    flag: Option<Duration>,
    file: &Option<String>,
    key: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = match (flag, file) {
        (Some(d), _) => d,
        (None, Some(v)) => humantime::parse_duration(v).map_err(|_| ConfigError::Duration {
            key,
            value: v.clone(),
        })?,
        (None, None) => default,
    };
    if d > MAX_SETTING {
        return Err(ConfigError::OutOfRange {
            key,
            value: humantime::format_duration(d).to_string(),
            why: "longer than a year",
        });
    }
    Ok(d)
}

/// A timeout: a [`duration`] above zero (a zero timeout would fail what it
/// times, every time).
fn timeout(
    flag: Option<Duration>,
    file: &Option<String>,
    key: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = duration(flag, file, key, default)?;
    if d.is_zero() {
        return Err(ConfigError::OutOfRange {
            key,
            value: "0s".into(),
            why: "a timeout must be above zero",
        });
    }
    Ok(d)
}

fn absolute(path: PathBuf) -> Result<PathBuf, ConfigError> {
    std::path::absolute(&path).map_err(|source| ConfigError::Path { path, source })
}

impl Args {
    /// The log format: flag, else file, else human.
    pub fn log_format(&self, file: &FileConfig) -> LogFormat {
        self.log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Human)
    }

    /// Build the daemon's configuration from the flags over `file`; relative
    /// paths are made absolute against the current directory.
    pub fn config(&self, file: FileConfig) -> Result<Config, ConfigError> {
        let d = Timeouts::default();
        let dp = crate::config::PreCopyLimits::default();
        let path = |flag: &Option<PathBuf>, file: Option<PathBuf>, key| {
            flag.clone()
                .or(file)
                .ok_or(ConfigError::Missing(key))
                .and_then(absolute)
        };
        let state_dir = path(&self.state_dir, file.state_dir.clone(), "state-dir")?;
        let worker_args = if self.worker_args.is_empty() {
            file.worker_args.clone().unwrap_or_default()
        } else {
            self.worker_args.clone()
        };
        let either = |flag: &Vec<u32>, file: &Option<Vec<u32>>| {
            if flag.is_empty() {
                file.clone().unwrap_or_default()
            } else {
                flag.clone()
            }
        };
        Ok(Config {
            state_dir: state_dir.clone(),
            socket: match self.socket.clone().or(file.socket.clone()) {
                Some(s) => absolute(s)?,
                None => default_socket(&state_dir),
            },
            worker: path(&self.worker, file.worker.clone(), "worker")?,
            worker_args,
            probation: duration(
                self.probation,
                &file.probation,
                "probation",
                Duration::from_secs(30),
            )?,
            metrics: self.metrics.clone().or(file.metrics.clone()),
            start_attempts: self
                .start_attempts
                .or(file.start_attempts)
                .unwrap_or(3)
                .max(1),
            precopy: crate::config::PreCopyLimits {
                enabled: self.precopy.or(file.precopy) != Some(OnOff::Off),
                max_rounds: match self.precopy_rounds.or(file.precopy_rounds) {
                    Some(n) if n > MAX_PRECOPY_ROUNDS => {
                        return Err(ConfigError::OutOfRange {
                            key: "precopy_rounds",
                            value: n.to_string(),
                            why: "at most 64",
                        })
                    }
                    n => n.unwrap_or(dp.max_rounds),
                },
                target_pause: duration(
                    self.precopy_target_pause,
                    &file.precopy_target_pause,
                    "precopy_target_pause",
                    dp.target_pause,
                )?,
            },
            watch: self.watch || file.watch.unwrap_or(false),
            fd_store: self.fd_store || file.fd_store.unwrap_or(false),
            access: crate::control::Access {
                allow_uids: either(&self.allow_uids, &file.allow_uid),
                allow_gids: either(&self.allow_gids, &file.allow_gid),
            },
            timeouts: Timeouts {
                prepare: timeout(
                    self.prepare_timeout,
                    &file.prepare_timeout,
                    "prepare_timeout",
                    d.prepare,
                )?,
                freeze: timeout(
                    self.freeze_timeout,
                    &file.freeze_timeout,
                    "freeze_timeout",
                    d.freeze,
                )?,
                restore: timeout(
                    self.restore_timeout,
                    &file.restore_timeout,
                    "restore_timeout",
                    d.restore,
                )?,
                exit: timeout(
                    self.exit_timeout,
                    &file.exit_timeout,
                    "exit_timeout",
                    d.exit,
                )?,
                stop: timeout(
                    self.stop_timeout,
                    &file.stop_timeout,
                    "stop_timeout",
                    d.stop,
                )?,
                heartbeat: timeout(
                    self.heartbeat_timeout,
                    &file.heartbeat_timeout,
                    "heartbeat_timeout",
                    d.heartbeat,
                )?,
                adopt: timeout(
                    self.adopt_timeout,
                    &file.adopt_timeout,
                    "adopt_timeout",
                    d.adopt,
                )?,
                precopy_round: timeout(
                    self.precopy_timeout,
                    &file.precopy_timeout,
                    "precopy_timeout",
                    d.precopy_round,
                )?,
                ..d
            },
        })
    }
}

/// The control socket when none is given: `control.sock` in the state
/// directory (what `supervisorctl --state-dir` looks for).
pub fn default_socket(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// Parse the command line; a usage error is one line on stderr naming what
/// was wrong, and exit code 2, before anything starts (`--help` and
/// `--version` print as usual).
pub fn parse_or_exit<A: clap::Parser>(bin: &str) -> A {
    match A::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.to_string();
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("bad usage")
                .trim_start_matches("error: ");
            eprintln!("{bin}: {line} (see --help)");
            std::process::exit(2);
        }
    }
}

/// Set up tracing on stderr (RUST_LOG overrides the default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal, and never with NO_COLOR set.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// `main` of the `supervisor` binary.
pub fn supervisor_main() -> ExitCode {
    // First, before anything opens a descriptor: what systemd handed back
    // from its file descriptor store, if anything.
    let stored = crate::fdstore::FdStore::from_env();
    let args: Args = parse_or_exit("supervisor");
    let file = match args.config.as_deref().map(FileConfig::load).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => {
            eprintln!("supervisor: {e}");
            return ExitCode::from(2);
        }
    };
    let log_format = args.log_format(&file);
    init_logging(log_format);
    let cfg = match args.config(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("supervisor: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("supervisor: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let intents = crate::signals::forward_signals()
            .map_err(|e| anyhow::anyhow!("cannot install signal handlers: {e}"))?;
        let stored = stored.unwrap_or_else(|e| {
            tracing::error!("ignoring systemd's file descriptor store: {e}");
            None
        });
        crate::daemon::run_with(cfg, intents, stored)
            .await
            .map_err(anyhow::Error::from)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Said once: as a log event in JSON logs, else as the last line.
        Err(e) => {
            match log_format {
                LogFormat::Json => tracing::error!(error = %format!("{e:#}"), "supervisor failed"),
                LogFormat::Human => eprintln!("supervisor: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).expect("valid config")
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let f = file(
            r#"
            socket = "/run/handoff/ctl.sock"
            state_dir = "/var/lib/handoff"
            worker = "/opt/handoff/bin/trading-worker"
            worker_args = ["--feed", "ws://x/ws"]
            prepare_timeout = "3s"
            probation = "2m"
            allow_gid = [1001]
            "#,
        );
        let args =
            Args::try_parse_from(["supervisor", "--prepare-timeout", "500ms", "--watch"]).unwrap();
        let c = args.config(f).unwrap();
        assert_eq!(c.socket, PathBuf::from("/run/handoff/ctl.sock"));
        assert_eq!(c.worker_args, ["--feed", "ws://x/ws"]);
        assert_eq!(
            c.timeouts.prepare,
            Duration::from_millis(500),
            "the flag wins"
        );
        assert_eq!(c.probation, Duration::from_secs(120), "the file fills in");
        assert_eq!(
            c.timeouts.freeze,
            Timeouts::default().freeze,
            "defaults last"
        );
        assert!(c.watch);
        assert_eq!(c.access.allow_gids, [1001]);
    }

    #[test]
    fn mistakes_are_named() {
        let err = toml::from_str::<FileConfig>("sokcet = \"/x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sokcet"), "{err}");
        let args = Args::try_parse_from(["supervisor"]).unwrap();
        let err = args
            .config(file("socket = \"/s\"\nstate_dir = \"/d\""))
            .unwrap_err();
        assert!(matches!(err, ConfigError::Missing("worker")), "{err}");
        let args = Args::try_parse_from([
            "supervisor",
            "--socket",
            "/s",
            "--state-dir",
            "/d",
            "--worker",
            "/w",
        ])
        .unwrap();
        let err = args
            .config(file("probation = \"soon\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("probation") && err.contains("soon"), "{err}");
    }

    #[test]
    fn settings_out_of_range_are_refused_by_name() {
        let base = [
            "supervisor",
            "--socket",
            "/s",
            "--state-dir",
            "/d",
            "--worker",
            "/w",
        ];
        let refused = |extra: &[&str], text: &str| {
            let args = Args::try_parse_from(base.iter().chain(extra)).unwrap();
            args.config(file(text)).unwrap_err().to_string()
        };
        let err = refused(&["--precopy-timeout", "0s"], "");
        assert!(
            err.contains("precopy_timeout") && err.contains("above zero"),
            "{err}"
        );
        let err = refused(&[], "freeze_timeout = \"0ms\"");
        assert!(err.contains("freeze_timeout"), "{err}");
        let err = refused(&["--exit-timeout", "500000000000s"], "");
        assert!(
            err.contains("exit_timeout") && err.contains("year"),
            "{err}"
        );
        let err = refused(&[], "precopy_rounds = 65");
        assert!(
            err.contains("precopy_rounds") && err.contains("64"),
            "{err}"
        );
        let flag = base.iter().chain(&["--precopy-rounds", "65"]);
        assert!(Args::try_parse_from(flag).is_err(), "the flag too");
        // Zero rounds and a zero target pause are settings, not mistakes.
        let args = Args::try_parse_from(base.iter().chain(&["--precopy-rounds", "0"])).unwrap();
        let c = args.config(file("precopy_target_pause = \"0s\"")).unwrap();
        assert_eq!(
            (c.precopy.max_rounds, c.precopy.target_pause),
            (0, Duration::ZERO)
        );
    }

    #[test]
    fn the_shipped_example_parses() {
        let f = file(include_str!("../../deploy/handoff.toml"));
        assert_eq!(f.log_format, Some(LogFormat::Json));
        let c = Args::try_parse_from(["supervisor"])
            .unwrap()
            .config(f)
            .unwrap();
        assert_eq!(c.worker, PathBuf::from("/opt/handoff/bin/trading-worker"));
    }
}
