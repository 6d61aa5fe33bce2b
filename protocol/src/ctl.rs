//! Messages between `supervisorctl` and the supervisor's control socket.
//!
//! One request per connection; the supervisor answers with zero or more
//! [`CtlResponse::Progress`] lines and exactly one final response.

use serde::{Deserialize, Serialize};

/// A command from `supervisorctl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtlRequest {
    Status,
    /// Upgrade to `binary` (default: the configured worker path).
    Upgrade(UpgradeRequest),
    /// Ask the worker for a checkpoint now; with `wait`, answer once stored.
    Checkpoint {
        wait: bool,
    },
    /// Stop the worker cleanly and the supervisor with it.
    Stop,
    /// Hand over to the previous build (a normal upgrade, back).
    Rollback {
        wait: bool,
    },
    /// The most recent events (phases, outcomes, crashes), oldest first.
    Log {
        last: u32,
    },
    /// Replace the supervisor process by a new supervisor binary while the
    /// worker serves on (see [`crate::succession`]).
    UpgradeSupervisor(SupervisorUpgradeRequest),
}

/// Parameters of `upgrade-supervisor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorUpgradeRequest {
    /// The new supervisor binary (default: the path this one was started
    /// from, where a deploy has put the new build).
    pub binary: Option<String>,
    /// Expected SHA-256 of the binary, lowercase hex: checked against the
    /// file the new supervisor actually runs.
    pub sha256: Option<String>,
    /// Answer once the new supervisor serves (else once it is started).
    pub wait: bool,
}

/// The outcome of `upgrade-supervisor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorUpgraded {
    pub old_pid: u32,
    pub new_pid: u32,
    pub binary: String,
    pub sha256: String,
}

/// Parameters of an upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeRequest {
    pub binary: Option<String>,
    /// Download the build from here (requires `sha256`).
    pub url: Option<String>,
    /// Expected SHA-256 of the binary, lowercase hex.
    pub sha256: Option<String>,
    /// Stream progress and answer only when the upgrade has ended.
    pub wait: bool,
}

/// An answer from the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CtlResponse {
    Status(Box<StatusReport>),
    /// An upgrade went through a phase (only with `wait`).
    Progress(PhaseEvent),
    /// The upgrade was accepted (without `wait`) or has ended (with `wait`).
    Upgrade(HandoffReport),
    /// A checkpoint was stored.
    CheckpointStored {
        bytes: u64,
        schema: u32,
    },
    /// Recent events, oldest first.
    Log(Vec<LogLine>),
    /// The request was understood but refused (busy, bad binary, …).
    Refused {
        reason: String,
    },
    /// The request could not be read.
    Error {
        message: String,
    },
    Ok,
    /// `upgrade-supervisor`: the new supervisor serves; this one exits now.
    SupervisorUpgraded(SupervisorUpgraded),
}

/// One step of an upgrade, as it completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseEvent {
    pub handoff_id: u64,
    /// `spawned`, `prepared`, `frozen`, `restored`, `live`, `old_stopped`,
    /// `rolled_back`, `failed`.
    pub phase: String,
    /// Microseconds since the trigger.
    pub at_us: u64,
    pub detail: Option<String>,
}

/// How a handoff ended (or that it is still running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    InProgress,
    Completed,
    /// Refused before anything was frozen (bad binary, incompatible, busy…).
    Refused,
    /// Failed after the old worker froze; it was thawed and serves on.
    RolledBack,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::InProgress => "in_progress",
            Outcome::Completed => "completed",
            Outcome::Refused => "refused",
            Outcome::RolledBack => "rolled_back",
        }
    }
}

/// Timings of one handoff, in microseconds from its trigger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTimings {
    pub spawned_us: Option<u64>,
    pub prepared_us: Option<u64>,
    pub frozen_us: Option<u64>,
    pub restored_us: Option<u64>,
    pub live_us: Option<u64>,
    pub old_stopped_us: Option<u64>,
}

/// One handoff, for status and for `upgrade --wait`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffReport {
    pub id: u64,
    pub trigger: String,
    pub binary: String,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub from_pid: Option<u32>,
    pub to_pid: Option<u32>,
    /// Old worker's freeze to new worker's first consumed message.
    pub blackout_us: Option<u64>,
    /// Old worker's freeze to the new worker being told to go.
    pub pause_us: Option<u64>,
    pub phases: PhaseTimings,
}

/// Lifecycle of the active worker, as shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub pid: Option<u32>,
    pub generation: u64,
    /// `starting`, `running`, `frozen`, `down`.
    pub state: String,
    pub build_id: Option<String>,
    /// The binary as the operator named it.
    pub binary: String,
    /// SHA-256 of the build that runs (its private copy).
    pub sha256: Option<String>,
    pub uptime_ms: u64,
    pub restarts: u64,
    /// Time left on probation after an upgrade, if any.
    pub probation_ms_left: Option<u64>,
    /// Adopted from a previous supervisor (which went away while it served)
    /// rather than started by this one.
    pub adopted: bool,
    /// The last thing an operator should know about this worker (e.g. an
    /// automatic rollback after the new build died on probation); cleared
    /// by the next completed upgrade.
    pub notice: Option<String>,
    /// Why the last worker that died unplanned went (its exit status or
    /// signal as the kernel reported it, or what it said before).
    pub last_exit: Option<String>,
    /// How long ago the running build was first admitted to the build
    /// store (its deploy).
    pub build_age_ms: Option<u64>,
}

/// A held connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnStatus {
    pub id: u32,
    pub name: String,
    pub url: String,
    pub peer: String,
    /// For `wss://`: who protects the records, as the held descriptor shows
    /// it: `"kernel"` (kernel TLS installed on the socket) or
    /// `"user-space"`.
    pub tls: Option<String>,
}

/// The newest stored checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointStatus {
    pub age_ms: u64,
    pub bytes: u64,
    pub schema: u32,
    /// The app's JSON summary, as the worker wrote it.
    pub summary: Option<String>,
    /// Written by a copy-on-write child of the worker: its event loop
    /// stopped only for the `fork` (`handoff_protocol::image`).
    #[serde(default)]
    pub off_loop: bool,
}

/// Counters of handoffs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffStats {
    pub completed: u64,
    pub failed: u64,
    /// The running handoff's phase, if one runs.
    pub in_progress: Option<String>,
    pub last: Option<HandoffReport>,
}

/// Everything `supervisorctl status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub supervisor_pid: u32,
    pub uptime_ms: u64,
    pub supervisor: SupervisorStatus,
    pub worker: WorkerStatus,
    pub connections: Vec<ConnStatus>,
    pub checkpoint: Option<CheckpointStatus>,
    pub handoffs: HandoffStats,
}

/// The supervisor process itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorStatus {
    pub pid: u32,
    /// The executable it runs (after `upgrade-supervisor`, the new one).
    pub binary: String,
    /// SHA-256 of that executable (`None` for a moment after start, while
    /// it is hashed).
    pub sha256: Option<String>,
    /// How long ago this process started.
    pub started_ms_ago: u64,
    /// The same, under its first name.
    pub uptime_ms: u64,
}

/// One event of the supervisor's recent history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    pub line: String,
}

impl crate::frame::Message for CtlRequest {}
impl crate::frame::Message for CtlResponse {}
