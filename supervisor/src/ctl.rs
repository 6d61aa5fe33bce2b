//! `supervisorctl`: the operator's client for the control socket.
//!
//! Exit codes: 0 success; 1 the supervisor refused the request or the upgrade
//! was refused or rolled back (the reason is on stderr); 2 bad usage; 3 the
//! supervisor could not be reached or answered nonsense.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use handoff_protocol::ctl::{
    CtlRequest, CtlResponse, HandoffReport, Outcome, SupervisorUpgradeRequest, SupervisorUpgraded,
    UpgradeRequest,
};
use handoff_protocol::frame::MAX_CTL_FRAME;
use handoff_protocol::Channel;

/// `println!` for the command's output, except that a reader who stopped
/// reading (`supervisorctl status | head -1`: EPIPE) ends the process
/// quietly, as a closed pipe is the reader's choice and not an error.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::ctl::stdout_failed(e)
        }
    }};
}

mod print;
pub use print::status_json;
use print::{fmt_opt, print_status};

/// Stdout cannot be written: exit 0 without a word if the reader went away
/// (broken pipe), else say why and exit 3.
pub(crate) fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("supervisorctl: cannot write the output: {e}");
    std::process::exit(3);
}

/// Control a running handoff supervisor.
#[derive(Debug, Parser)]
#[command(
    name = "supervisorctl",
    version,
    after_help = "The control socket: --socket, else $HANDOFF_SOCKET, else control.sock in --state-dir.\n\nExit codes: 0 done; 1 refused or rolled back (reason on stderr); 2 usage; 3 supervisor unreachable; 4 gave up waiting (--timeout: the upgrade goes on in the supervisor)."
)]
pub struct Args {
    /// The supervisor's control socket.
    #[arg(long, env = "HANDOFF_SOCKET")]
    pub socket: Option<PathBuf>,
    /// The supervisor's state directory: its control socket is
    /// `control.sock` there (the supervisor's default).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

impl Args {
    /// The control socket this invocation names (see `after_help`).
    pub fn socket(&self) -> Option<PathBuf> {
        self.socket
            .clone()
            .or_else(|| self.state_dir.as_deref().map(crate::cli::default_socket))
    }
}

/// `--sha256`: 64 hex digits, or a usage error before anything is sent.
fn sha256_hex(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "a SHA-256 is 64 hex digits, not {:?} ({} characters)",
            s,
            s.len()
        ))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the worker, held connections, checkpoint and handoffs.
    Status {
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Upgrade the worker to a new binary without dropping a connection.
    Upgrade {
        /// The new binary (default: the supervisor's --worker path).
        #[arg(long, conflicts_with = "url")]
        binary: Option<PathBuf>,
        /// Download the new build from this URL (requires --sha256).
        #[arg(long, requires = "sha256")]
        url: Option<String>,
        /// Refuse unless the binary has this SHA-256 (hex).
        #[arg(long, value_parser = sha256_hex)]
        sha256: Option<String>,
        /// Print each phase and exit only when the upgrade has ended.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this long (e.g. 30s); the
        /// upgrade itself goes on.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Ask the worker for a checkpoint now.
    Checkpoint {
        /// Return once the checkpoint is stored.
        #[arg(long)]
        wait: bool,
    },
    /// Hand over to the build that ran before the last upgrade.
    Rollback {
        /// Print each phase and exit only when the rollback has ended.
        #[arg(long)]
        wait: bool,
    },
    /// Show recent events: upgrades (with their phases), crashes,
    /// recoveries, rollbacks.
    Log {
        /// How many events.
        #[arg(long, short = 'n', default_value = "50")]
        last: u32,
        /// One JSON object per event: `ts` (RFC 3339), `unix_ms`, `event`
        /// (its first line), `detail` (the lines under it, e.g. phases).
        #[arg(long)]
        json: bool,
    },
    /// Stop the worker cleanly, then the supervisor; returns once the
    /// supervisor process is gone.
    Stop {
        /// Return as soon as the supervisor has accepted the stop.
        #[arg(long)]
        no_wait: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell) for supervisorctl, or with --supervisor for supervisor.
    Completions {
        shell: clap_complete::Shell,
        #[arg(long)]
        supervisor: bool,
    },
    /// Print the man page (roff) of supervisorctl, or with --supervisor of
    /// supervisor: `supervisorctl man | man -l -`.
    Man {
        #[arg(long)]
        supervisor: bool,
    },
    /// Replace the supervisor process by a new supervisor binary; the worker
    /// serves on and sees no freeze.
    UpgradeSupervisor {
        /// The new supervisor binary (default: the path the running one was
        /// started from).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Refuse unless the new supervisor runs a file with this SHA-256.
        #[arg(long, value_parser = sha256_hex)]
        sha256: Option<String>,
        /// Exit only once the new supervisor serves and the old one is gone.
        #[arg(long)]
        wait: bool,
    },
}

/// Failure classes, mapped to exit codes.
enum Failure {
    Refused(String),
    Unreachable(anyhow::Error),
    /// `--timeout` passed before the upgrade ended.
    GaveUp(std::time::Duration),
}

/// `main` of the `supervisorctl` binary.
pub fn ctl_main() -> ExitCode {
    let args: Args = crate::cli::parse_or_exit("supervisorctl");
    if let Some(code) = crate::ctl_docs::offline(&args.command) {
        return code;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("supervisorctl: cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(reason)) => {
            eprintln!("supervisorctl: {reason}");
            ExitCode::from(1)
        }
        Err(Failure::Unreachable(e)) => {
            eprintln!("supervisorctl: {e:#}");
            ExitCode::from(3)
        }
        Err(Failure::GaveUp(after)) => {
            eprintln!("supervisorctl: no outcome within {after:?}; the upgrade goes on (see `status` and `log`)");
            ExitCode::from(4)
        }
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    let req = match &args.command {
        Command::Status { .. } => CtlRequest::Status,
        Command::Upgrade {
            binary,
            url,
            sha256,
            wait,
            ..
        } => {
            let binary = absolute(binary)?;
            CtlRequest::Upgrade(UpgradeRequest {
                binary,
                url: url.clone(),
                sha256: sha256.clone(),
                wait: *wait,
            })
        }
        Command::Checkpoint { wait } => CtlRequest::Checkpoint { wait: *wait },
        Command::Stop { .. } => CtlRequest::Stop,
        Command::Completions { .. } | Command::Man { .. } => return Ok(()),
        Command::Log { last, .. } => CtlRequest::Log { last: *last },
        Command::Rollback { wait } => CtlRequest::Rollback { wait: *wait },
        Command::UpgradeSupervisor {
            binary,
            sha256,
            wait,
        } => CtlRequest::UpgradeSupervisor(SupervisorUpgradeRequest {
            binary: absolute(binary)?,
            sha256: sha256.clone(),
            wait: *wait,
        }),
    };
    let Some(socket) = args.socket() else {
        eprintln!("supervisorctl: no control socket: give --socket PATH, --state-dir DIR, or HANDOFF_SOCKET (see --help)");
        std::process::exit(2);
    };
    // `stop` waits for the supervisor process itself: a handle on it first
    // (a pidfd: immune to the pid being reused while we wait).
    let stopping = match &args.command {
        Command::Stop { no_wait: false } => Some(supervisor_handle(&socket).await?),
        _ => None,
    };
    let mut ch = connect(&socket).await.map_err(Failure::Unreachable)?;
    if let Err(e) = ch.send(&req, &[]).await {
        // A supervisor that refuses a peer answers and closes without reading:
        // its answer is still in our socket, and it is the better message.
        return match ch.recv().await {
            Ok(Some((
                CtlResponse::Error { message } | CtlResponse::Refused { reason: message },
                _,
            ))) => Err(Failure::Refused(message)),
            _ => Err(Failure::Unreachable(e.into())),
        };
    }
    let limit = match &args.command {
        Command::Upgrade {
            timeout: Some(t), ..
        } => *t,
        _ => std::time::Duration::MAX,
    };
    match tokio::time::timeout(limit, answers(&args, &socket, &mut ch)).await {
        Ok(Ok(())) => match stopping {
            Some(pidfd) => pidfd.exited().await.map_err(|e| {
                Failure::Unreachable(anyhow::anyhow!("waiting for the supervisor to exit: {e}"))
            }),
            None => Ok(()),
        },
        Ok(result) => result,
        Err(_) => Err(Failure::GaveUp(limit)),
    }
}

/// A pidfd on the supervisor serving `socket` (from its status).
async fn supervisor_handle(
    socket: &std::path::Path,
) -> Result<handoff_protocol::pidfd::PidFd, Failure> {
    let mut ch = connect(socket).await.map_err(Failure::Unreachable)?;
    ch.send(&CtlRequest::Status, &[])
        .await
        .map_err(|e| Failure::Unreachable(e.into()))?;
    match ch.recv().await {
        Ok(Some((CtlResponse::Status(s), _))) => {
            handoff_protocol::pidfd::PidFd::open(s.supervisor.pid).map_err(|e| {
                Failure::Unreachable(anyhow::anyhow!(
                    "cannot watch the supervisor (pid {}): {e}",
                    s.supervisor.pid
                ))
            })
        }
        Ok(Some((
            CtlResponse::Error { message } | CtlResponse::Refused { reason: message },
            _,
        ))) => Err(Failure::Refused(message)),
        other => Err(Failure::Unreachable(anyhow::anyhow!(
            "no status from the supervisor: {other:?}"
        ))),
    }
}

/// A `--binary` as the supervisor must see it: absolute (it runs elsewhere).
fn absolute(binary: &Option<PathBuf>) -> Result<Option<String>, Failure> {
    binary
        .as_ref()
        .map(|b| {
            std::path::absolute(b)
                .map(|p| p.display().to_string())
                .map_err(|e| Failure::Unreachable(e.into()))
        })
        .transpose()
}

/// Print progress and act on the final answer.
async fn answers(
    args: &Args,
    socket: &std::path::Path,
    ch: &mut Channel<CtlRequest, CtlResponse>,
) -> Result<(), Failure> {
    loop {
        let resp = match ch.recv().await {
            Ok(Some((resp, _))) => resp,
            Ok(None) => {
                return Err(Failure::Unreachable(anyhow::anyhow!(
                    "the supervisor closed the connection without answering"
                )))
            }
            Err(e) => return Err(Failure::Unreachable(e.into())),
        };
        match resp {
            CtlResponse::Progress(p) => {
                let detail = p.detail.map(|d| format!("  {d}")).unwrap_or_default();
                out!(
                    "{:<12} +{:>9.3} ms{detail}",
                    p.phase,
                    p.at_us as f64 / 1000.0
                );
            }
            CtlResponse::Status(report) => {
                let json = matches!(args.command, Command::Status { json: true });
                return print_status(&report, json).map_err(Failure::Unreachable);
            }
            CtlResponse::Upgrade(report) => return upgrade_result(&report),
            CtlResponse::CheckpointStored { bytes, schema } => {
                out!("checkpoint stored: {bytes} bytes, schema {schema}");
                return Ok(());
            }
            CtlResponse::Log(events) => {
                let json = matches!(args.command, Command::Log { json: true, .. });
                for e in events {
                    print::print_event(&e, json);
                }
                return Ok(());
            }
            CtlResponse::Ok => return Ok(()),
            CtlResponse::SupervisorUpgraded(done) => {
                return supervisor_upgraded(socket, &done).await
            }
            CtlResponse::Refused { reason } => return Err(Failure::Refused(reason)),
            CtlResponse::Error { message } => return Err(Failure::Refused(message)),
        }
    }
}

/// The new supervisor serves: wait until the old one is gone, then check
/// the new one answers on the control socket.
async fn supervisor_upgraded(
    socket: &std::path::Path,
    done: &SupervisorUpgraded,
) -> Result<(), Failure> {
    let gone = |pid: u32| match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie has exited: only its parent's reaping is left.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    };
    let limit = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !gone(done.old_pid) {
        if tokio::time::Instant::now() > limit {
            return Err(Failure::Refused(format!(
                "the new supervisor (pid {}) serves, but the old one (pid {}) is still running",
                done.new_pid, done.old_pid
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut ch = connect(socket).await.map_err(Failure::Unreachable)?;
    ch.send(&CtlRequest::Status, &[])
        .await
        .map_err(|e| Failure::Unreachable(e.into()))?;
    match ch.recv().await {
        Ok(Some((CtlResponse::Status(s), _))) if s.supervisor.pid == done.new_pid => {
            out!(
                "supervisor upgraded: pid {} -> {} ({}, sha256 {}); the worker served throughout",
                done.old_pid,
                done.new_pid,
                done.binary,
                &done.sha256[..done.sha256.len().min(16)]
            );
            Ok(())
        }
        Ok(Some((CtlResponse::Status(s), _))) => Err(Failure::Refused(format!(
            "the control socket is served by pid {}, not the new supervisor {}",
            s.supervisor.pid, done.new_pid
        ))),
        other => Err(Failure::Unreachable(anyhow::anyhow!(
            "no status from the new supervisor: {other:?}"
        ))),
    }
}

async fn connect(path: &std::path::Path) -> anyhow::Result<Channel<CtlRequest, CtlResponse>> {
    let sock = tokio::net::UnixStream::connect(path)
        .await
        .with_context(|| format!("cannot connect to the supervisor at {}", path.display()))?;
    Ok(Channel::new(sock, MAX_CTL_FRAME))
}

fn upgrade_result(r: &HandoffReport) -> Result<(), Failure> {
    match r.outcome {
        Outcome::InProgress => {
            out!(
                "upgrade #{} started (new worker pid {})",
                r.id,
                fmt_opt(r.to_pid)
            );
            Ok(())
        }
        Outcome::Completed => {
            out!(
                "upgrade #{} completed: pid {} -> {}, pause {} us, blackout {} us",
                r.id,
                fmt_opt(r.from_pid),
                fmt_opt(r.to_pid),
                fmt_opt(r.pause_us),
                fmt_opt(r.blackout_us)
            );
            Ok(())
        }
        Outcome::Refused | Outcome::RolledBack => Err(Failure::Refused(format!(
            "upgrade #{} {}: {}; the old worker (pid {}) serves on",
            r.id,
            r.outcome.as_str(),
            r.error.as_deref().unwrap_or("no reason given"),
            fmt_opt(r.from_pid)
        ))),
    }
}
