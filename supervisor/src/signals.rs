//! Signals become intents. `run` takes the intent stream as an argument, so
//! tests drive the daemon with a channel and production with real signals.
//!
//! | signal  | intent                                            |
//! |---------|---------------------------------------------------|
//! | SIGUSR2 | upgrade to the file now at the `--worker` path     |
//! | SIGUSR1 | replace the supervisor by the file at its own path |
//! | SIGTERM | graceful stop (worker checkpoints, closes, exits)  |
//! | SIGINT  | graceful stop                                      |
//! | SIGHUP  | re-read configuration (nothing to re-read yet)     |

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// What an operator asked for by signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Upgrade,
    /// `upgrade-supervisor` to the file at the path this one started from.
    UpgradeSupervisor,
    GracefulStop,
    Reload,
}

/// Install the handlers and forward intents until the receiver is dropped.
pub fn forward_signals() -> std::io::Result<mpsc::Receiver<Intent>> {
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let intent = tokio::select! {
                Some(()) = usr2.recv() => Intent::Upgrade,
                Some(()) = usr1.recv() => Intent::UpgradeSupervisor,
                Some(()) = term.recv() => Intent::GracefulStop,
                Some(()) = int.recv() => Intent::GracefulStop,
                Some(()) = hup.recv() => Intent::Reload,
                else => return,
            };
            if tx.send(intent).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
