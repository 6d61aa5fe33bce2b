//! A supervisor handing over to a new supervisor binary
//! (`supervisorctl upgrade-supervisor`, or SIGUSR1), while the worker serves
//! on and sees no freeze.
//!
//! The old supervisor starts the new binary with its own arguments and two
//! inherited descriptors: one end of a socketpair (number in
//! [`ENV_SUCCESSION_FD`]) and its `supervisor.lock` (number in
//! [`ENV_LOCK_FD`]: the same open file, so the lock is the successor's too
//! and stays held when the old one exits). Then:
//!
//! ```text
//!  old supervisor                               new supervisor
//!      | <---------------- Started { pid, sha256 } ---- |  lock adopted, control
//!      |                                                 |  socket bound beside the old
//!  checks sha256; closes the worker's channel:           |
//!  the worker becomes an orphan (it serves on)           |
//!      | -- WorkerReleased ----------------------------> |
//!      |                                                 |  adopts the orphan, renames
//!      | <-------------------------------- Serving ----- |  its socket over the old one
//!  answers the operator, exits                           |
//! ```
//!
//! Should the new supervisor fail (exit, hang past the old one's limit, run
//! another binary than `--sha256` names), the old one kills it and, if it had
//! released the worker, adopts it back the same way.

use serde::{Deserialize, Serialize};

/// The environment variable naming the inherited succession socket.
pub const ENV_SUCCESSION_FD: &str = "HANDOFF_SUCCESSION_FD";

/// The environment variable naming the inherited `supervisor.lock`.
pub const ENV_LOCK_FD: &str = "HANDOFF_SUPERVISOR_LOCK_FD";

/// The environment variable carrying the path the operator named for the
/// new supervisor binary (its status shows it).
pub const ENV_BINARY: &str = "HANDOFF_SUPERVISOR_BINARY";

/// New supervisor → old.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromSuccessor {
    /// Set up and ready to adopt: `sha256` is that of the file it runs.
    Started { pid: u32, sha256: String },
    /// It adopted the worker and serves the control socket.
    Serving,
    /// It gave up (the old supervisor carries on).
    Failed { reason: String },
}

/// Old supervisor → new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToSuccessor {
    /// The worker's channel is closed: adopt it from its orphan socket.
    WorkerReleased,
}

impl crate::frame::Message for ToSuccessor {}
impl crate::frame::Message for FromSuccessor {}
