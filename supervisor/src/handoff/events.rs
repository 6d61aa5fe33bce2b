//! What goes into the handoff's state machine and what comes out of it:
//! the [`Event`]s the daemon feeds [`super::machine::step`] (worker
//! messages, exits, deadlines) and the [`Action`]s it carries out, in
//! order.

use handoff_protocol::ctl::Outcome;
use handoff_protocol::worker::{Frozen, Hello};

use super::machine::Pair;
use super::Milestone;

/// What happened, as the daemon tells the machine.
#[derive(Debug)]
pub enum Event {
    /// Step 2 done: B runs (A is `old`).
    Spawned { pair: Pair },
    /// B said Hello; `current` is A's Hello, if it gave one.
    Hello {
        current: Option<Box<Hello>>,
        successor: Box<Hello>,
    },
    /// A made pre-copy round `round` (the daemon keeps the part for
    /// [`Action::Warm`]).
    PreCopied {
        round: u32,
        bytes: u64,
        took_ns: u64,
    },
    /// A could not make a pre-copy round; it serves on.
    PreCopyFailed(String),
    /// B applied pre-copy round `round`.
    Warmed { round: u32, took_ns: u64 },
    /// A froze: its snapshot and leftovers.
    Frozen(Box<Frozen>),
    /// A could not freeze and serves on.
    FreezeFailed(String),
    /// The held sockets could not be handed to B ([`Action::Restore`]).
    RestoreFailed(String),
    /// B restored and waits for Go.
    Ready,
    /// B refused A's snapshot.
    Rejected(String),
    /// B said it failed.
    SuccessorFailed(String),
    /// B's channel closed (with the error, if any).
    SuccessorChannelClosed(Option<String>),
    /// B was reaped.
    SuccessorExited(String),
    /// A was reaped.
    OldExited(String),
    /// B consumed its first message.
    FirstConsumed,
    /// B said which feeds the new build opens or closes.
    FeedChanges(String),
    /// The supervisor is stopping.
    Stopping,
    /// [`super::machine::Phase::deadline`] passed.
    Deadline,
}

/// What the daemon must do, in the order given.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Record a milestone of the upgrade (and tell `--wait` clients).
    Mark(Milestone, Option<String>),
    /// Tell A to freeze, in `schema` (`None`: the one it writes); with
    /// `catch_up`, sending only what changed since the last pre-copy round.
    Freeze { schema: Option<u32>, catch_up: bool },
    /// Ask A for pre-copy round `round`.
    PreCopy { round: u32 },
    /// Hand B the part A made for round `round`.
    Warm { round: u32 },
    /// Tell A the pre-copy is over: stop recording changes.
    EndPreCopy,
    /// From the freeze on, hold the `--wait` clients' progress until B
    /// consumes (see the parent module).
    HoldProgress,
    /// Hand B the snapshot, the leftovers and the held sockets, and keep the
    /// snapshot as the newest checkpoint.
    Restore(Box<Frozen>),
    /// A frozen snapshot that came after the upgrade gave up on it: still a
    /// valid checkpoint.
    StoreCheckpoint(Box<Frozen>),
    /// Tell A to exit and B to go; B becomes the active worker and A the one
    /// retiring.
    Commit,
    /// Tell the held progress to the `--wait` clients.
    ReleaseProgress,
    /// SIGKILL B.
    KillSuccessor,
    /// Tell A to thaw: it resumes exactly where it stopped.
    Thaw,
    /// SIGKILL A, which did not exit in time.
    KillOld,
    /// The upgrade ended.
    Finish {
        outcome: Outcome,
        error: Option<String>,
    },
}
