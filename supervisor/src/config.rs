//! The supervisor's configuration. Every timeout says what it protects.

use std::path::PathBuf;
use std::time::Duration;

/// Everything the daemon needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Path of the control socket (mode 0600).
    pub socket: PathBuf,
    /// Directory for the supervisor's own files (created 0700 if missing).
    pub state_dir: PathBuf,
    /// The worker binary. SIGUSR2 upgrades to whatever file is at this path.
    pub worker: PathBuf,
    /// Arguments for every worker generation.
    pub worker_args: Vec<String>,
    pub timeouts: Timeouts,
    /// How long a newly committed build is on probation: if it dies within
    /// it, the previous build takes over (newest checkpoint, held sockets).
    pub probation: Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics: Option<String>,
    /// Upgrade by itself when the file at `worker` is replaced.
    pub watch: bool,
    /// Keep every held socket and the newest checkpoint in systemd's file
    /// descriptor store (`FDSTORE=1`; see [`crate::fdstore`]).
    pub fd_store: bool,
    /// Who else may use the control socket.
    pub access: crate::control::Access,
    /// Failed starts of a worker that never served before the supervisor
    /// gives up and exits non-zero (see [`crate::first_start`]).
    pub start_attempts: u32,
    /// Whether and how far an upgrade pre-copies the state.
    pub precopy: PreCopyLimits,
}

/// How an upgrade pre-copies the state to the successor before the freeze
/// (see [`crate::handoff`]), like a live migration's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreCopyLimits {
    /// Pre-copy when both builds can (`--precopy on`, the default); off,
    /// the whole state moves in the freeze.
    pub enabled: bool,
    /// Rounds of changes after the state itself before the freeze, at
    /// most. Bounds how long a pre-copy chases a state that changes as
    /// fast as it is copied.
    pub max_rounds: u32,
    /// A round that took no longer than this to make and apply ends the
    /// rounds: what is left then is caught up in about as long, in the
    /// freeze. Like QEMU's downtime limit.
    pub target_pause: Duration,
}

impl Default for PreCopyLimits {
    fn default() -> Self {
        PreCopyLimits {
            enabled: true,
            max_rounds: 4,
            target_pause: Duration::from_millis(1),
        }
    }
}

/// The named limits of each phase.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// From spawning a successor to its `Hello`. Protects against a new build
    /// that hangs at start: the old worker has not been touched yet, so
    /// nothing is lost by giving up.
    pub prepare: Duration,
    /// Longest a pre-copy round may take: the old worker making it, or the
    /// new one applying it (round 0 is the whole state). Protects against
    /// a pre-copy that never ends; past it the upgrade is refused, and the
    /// old worker, which never stopped serving, loses nothing.
    pub precopy_round: Duration,
    /// From `Freeze` to the old worker's `Frozen`. Protects against an old
    /// worker stuck in its loop; past it, it is told to thaw.
    pub freeze: Duration,
    /// From `Restore` to the successor's `Ready`. Bounds the blackout a bad
    /// successor can cause before the old worker is thawed.
    pub restore: Duration,
    /// From `Exit` to the old worker being reaped; past it, it is killed. It
    /// no longer serves, so this only bounds how long two processes exist.
    pub exit: Duration,
    /// From `Stop` to the worker's exit on a graceful stop; past it, killed.
    pub stop: Duration,
    /// How long a control client may take to send its request.
    pub ctl_read: Duration,
    /// Longest the active worker may stay silent (it heartbeats from its
    /// event loop) before it is taken as hung, killed and recovered.
    pub heartbeat: Duration,
    /// How long a starting supervisor waits for a worker that still holds
    /// `serving.lock` (its supervisor went away) to answer on its orphan
    /// socket. Protects against starting a second worker beside one that
    /// serves: past it the supervisor starts nothing and exits non-zero.
    pub adopt: Duration,
    /// From starting a new supervisor binary (`upgrade-supervisor`) to it
    /// serving with the worker adopted. Protects against a new supervisor
    /// that hangs: past it, it is killed and this one carries on, adopting
    /// the worker back if it had let it go.
    pub succession: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            prepare: Duration::from_secs(10),
            precopy_round: Duration::from_secs(60),
            freeze: Duration::from_secs(5),
            restore: Duration::from_secs(10),
            exit: Duration::from_secs(5),
            stop: Duration::from_secs(10),
            ctl_read: Duration::from_secs(5),
            heartbeat: Duration::from_secs(5),
            adopt: Duration::from_secs(5),
            succession: Duration::from_secs(20),
        }
    }
}
