//! Errors of the worker runtime.

use handoff_protocol::snapshot::SnapshotError;
use handoff_protocol::ChannelError;
use thiserror::Error;

use crate::app::AppError;
use crate::conn::ConnError;
use crate::link::LinkError;

/// Why the runtime stopped with an error.
#[derive(Debug, Error)]
pub enum WorkerError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("supervisor channel: {0}")]
    Channel(#[from] ChannelError),
    #[error("the supervisor went away {when}")]
    SupervisorGone { when: &'static str },
    #[error("unexpected message from the supervisor {when}: {what}")]
    Unexpected { when: &'static str, what: String },
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("the app could not snapshot its state: {0}")]
    Snapshot(AppError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("not serving: another worker serves this state directory ({0})")]
    Fenced(handoff_protocol::lockfile::LockError),
    #[error("cannot keep TLS keys out of core dumps (PR_SET_DUMPABLE): {0}")]
    Undumpable(nix::Error),
}

/// Why a restore was refused (sent to the supervisor as `Rejected`).
#[derive(Debug, Error)]
pub enum RestoreError {
    #[error(transparent)]
    Envelope(#[from] SnapshotError),
    #[error("the app refused the snapshot: {0}")]
    App(AppError),
    #[error("restore names {conns} connections but {fds} descriptors came with it")]
    FdCount { conns: usize, fds: usize },
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("{0}")]
    Carried(String),
    #[error("fault injected: reject-restore")]
    Injected,
    #[error("pre-copy: {0}")]
    PreCopy(crate::precopy::PreCopyError),
    #[error("the state diverged in the pre-copy's catch-up: digest {ours:#x} here, {theirs:#x} in the frozen worker")]
    Diverged { ours: u64, theirs: u64 },
}
