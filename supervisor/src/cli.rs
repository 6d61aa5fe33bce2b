//! Flags of the `supervisor` binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::config::{Config, Timeouts};

/// Zero-downtime handoff supervisor: runs a worker, holds its sockets, and
/// upgrades it to a new binary without dropping a connection.
#[derive(Debug, Parser)]
#[command(name = "supervisor", version)]
pub struct Args {
    /// Control socket path (created with mode 0600).
    #[arg(long)]
    pub socket: PathBuf,
    /// Directory for the supervisor's state (created 0700).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Worker binary. SIGUSR2 upgrades to whatever file is at this path then.
    #[arg(long)]
    pub worker: PathBuf,
    /// Longest wait for a new worker's Hello.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub prepare_timeout: Duration,
    /// Longest wait for the old worker to freeze.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub freeze_timeout: Duration,
    /// Longest wait for the new worker to be ready after the restore.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub restore_timeout: Duration,
    /// Longest wait for the old worker to exit before it is killed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub exit_timeout: Duration,
    /// Longest wait for the worker to stop on a graceful stop.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub stop_timeout: Duration,
    /// Longest the worker may miss heartbeats before it is killed and
    /// recovered.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub heartbeat_timeout: Duration,
    /// How long a new build is on probation after an upgrade: if it dies
    /// within it, the previous build takes over automatically.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub probation: Duration,
    /// Upgrade by itself when the file at the --worker path is replaced (after
    /// a short debounce, once per new build).
    #[arg(long)]
    pub watch: bool,
    /// Also let this uid use the control socket (repeatable).
    #[arg(long = "allow-uid")]
    pub allow_uids: Vec<u32>,
    /// Also let members of this gid use the control socket (repeatable).
    #[arg(long = "allow-gid")]
    pub allow_gids: Vec<u32>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9187).
    #[arg(long)]
    pub metrics: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Arguments passed to every worker.
    #[arg(last = true)]
    pub worker_args: Vec<String>,
}

/// How logs are written (to stderr).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

impl Args {
    /// Build the daemon's configuration; relative paths are made absolute
    /// against the current directory.
    pub fn config(&self) -> std::io::Result<Config> {
        Ok(Config {
            socket: std::path::absolute(&self.socket)?,
            state_dir: std::path::absolute(&self.state_dir)?,
            worker: std::path::absolute(&self.worker)?,
            worker_args: self.worker_args.clone(),
            probation: self.probation,
            metrics: self.metrics.clone(),
            watch: self.watch,
            access: crate::control::Access {
                allow_uids: self.allow_uids.clone(),
                allow_gids: self.allow_gids.clone(),
            },
            timeouts: Timeouts {
                prepare: self.prepare_timeout,
                freeze: self.freeze_timeout,
                restore: self.restore_timeout,
                exit: self.exit_timeout,
                stop: self.stop_timeout,
                heartbeat: self.heartbeat_timeout,
                ..Timeouts::default()
            },
        })
    }
}

/// Set up tracing on stderr (RUST_LOG overrides the default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// `main` of the `supervisor` binary.
pub fn supervisor_main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    let cfg = match args.config() {
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
        crate::daemon::run(cfg, intents)
            .await
            .map_err(anyhow::Error::from)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("supervisor: {e:#}");
            ExitCode::FAILURE
        }
    }
}
