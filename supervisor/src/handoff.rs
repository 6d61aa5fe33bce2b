//! The handoff state machine: one enum whose variants carry the data of their
//! phase. The daemon ([`crate::daemon`]) moves it on worker events and
//! deadlines; every move is published as a [`PhaseEvent`] to `upgrade --wait`
//! clients and in `status`.
//!
//! 1. **Trigger**: SIGUSR2, `supervisorctl upgrade`. One at a time: a trigger
//!    while a phase other than [`Phase::Idle`] runs is refused as busy.
//! 2. **Spawn** ([`Phase::Preparing`]): the binary passed its checks and the
//!    successor B runs with its own socketpair; it prepares and says Hello.
//!    The old worker A has not been touched: giving up here loses nothing.
//! 3. **Prepare**: B's Hello is checked (protocol version, and that B reads
//!    the schema A writes). Incompatible: refused, B killed.
//! 4. **Freeze** ([`Phase::Freezing`]): A is told to freeze; it answers with
//!    its snapshot and each connection's leftovers. The blackout starts.
//! 5. **Restore** ([`Phase::Restoring`]): B gets the snapshot, the manifest and
//!    the held descriptors, and answers Ready without consuming anything. A
//!    rejection, crash or timeout here thaws A and kills B.
//! 6. **Commit** ([`Phase::Committing`]): A is told to exit, then B to go (in
//!    that order: should the supervisor die in between, nobody serves rather
//!    than two). The handoff completes when A is reaped (killed if it lingers)
//!    and B has consumed its first message (or [`FIRST_MESSAGE_GRACE`] after
//!    the reap, on a quiet feed). From the freeze until then `upgrade --wait`
//!    clients hear nothing (the phase events are held, with their times):
//!    waking them, and whatever they start, would compete with A, B and the
//!    supervisor for the CPU during the blackout.

use std::path::PathBuf;
use std::time::Instant;

use handoff_protocol::ctl::{HandoffReport, Outcome, PhaseEvent, PhaseTimings};
use handoff_protocol::worker::Hello;
use handoff_protocol::PROTOCOL_VERSION;
use tokio::sync::mpsc;

use crate::proc::WorkerProc;

/// What started an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    Control,
    Rollback,
    Watch,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGUSR2",
            Trigger::Control => "supervisorctl",
            Trigger::Rollback => "rollback",
            Trigger::Watch => "watch",
        }
    }
}

/// What every phase of one upgrade carries.
#[derive(Debug)]
pub struct Upgrade {
    pub id: u64,
    pub trigger: Trigger,
    pub binary: PathBuf,
    pub started: Instant,
    pub timings: PhaseTimings,
    pub from_pid: Option<u32>,
    /// The successor, once committed.
    pub to_pid: Option<u32>,
    /// When A stopped consuming (its clock: CLOCK_MONOTONIC, system-wide).
    pub frozen_at_ns: Option<u64>,
    /// When B was told to go (supervisor's clock).
    pub go_at_ns: Option<u64>,
    /// When B consumed its first message (B's clock).
    pub first_consumed_ns: Option<u64>,
    /// Clients of `upgrade --wait`, told of each phase and of the end.
    pub waiters: Vec<mpsc::Sender<handoff_protocol::ctl::CtlResponse>>,
    /// Deadline of the current phase.
    pub deadline: tokio::time::Instant,
    /// Every phase event so far (for `supervisorctl log`).
    pub events: Vec<PhaseEvent>,
    /// The upgrade's tracing span: every phase is logged inside it, and it
    /// carries the outcome and the timings when the upgrade ends.
    pub span: tracing::Span,
    /// The successor's channel closed; the reason to give if its exit status
    /// does not arrive within [`EXIT_STATUS_GRACE`].
    pub successor_lost: Option<String>,
    /// Phase events not yet told to the waiters (held while committing, see
    /// the module docs); `None`: told as they happen.
    pub held: Option<Vec<PhaseEvent>>,
}

/// After the old worker is reaped, how long a committed upgrade waits for
/// the new worker's first message before it is reported complete anyway (a
/// quiet feed). It bounds how much later `upgrade --wait` returns; nothing
/// else waits on it.
pub const FIRST_MESSAGE_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// After a successor's channel closes, how long to wait for its exit status
/// before giving up the upgrade without it: the status ("exit status: 1",
/// "signal: 6") is what tells the operator why.
pub const EXIT_STATUS_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

impl Upgrade {
    pub fn elapsed_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Record that `phase` completed now and tell the waiters.
    pub fn mark(&mut self, phase: &'static str, detail: Option<String>) {
        let at = self.elapsed_us();
        let t = &mut self.timings;
        let slot = match phase {
            "spawned" => Some(&mut t.spawned_us),
            "prepared" => Some(&mut t.prepared_us),
            "frozen" => Some(&mut t.frozen_us),
            "restored" => Some(&mut t.restored_us),
            "live" => Some(&mut t.live_us),
            "old_stopped" => Some(&mut t.old_stopped_us),
            _ => None,
        };
        if let Some(slot) = slot {
            *slot = Some(at);
        }
        let event = PhaseEvent {
            handoff_id: self.id,
            phase: phase.to_string(),
            at_us: at,
            detail,
        };
        tracing::info!(parent: &self.span, phase, at_us = at, detail = event.detail.as_deref().unwrap_or(""), "upgrade phase");
        self.events.push(event.clone());
        match self.held.as_mut() {
            Some(held) => held.push(event),
            None => self.tell_waiters(event),
        }
    }

    fn tell_waiters(&mut self, event: PhaseEvent) {
        self.waiters.retain(|w| {
            w.try_send(handoff_protocol::ctl::CtlResponse::Progress(event.clone()))
                .is_ok()
        });
    }

    /// Tell the waiters the phase events held back so far, and the next ones
    /// as they happen.
    pub fn release_progress(&mut self) {
        for event in self.held.take().unwrap_or_default() {
            self.tell_waiters(event);
        }
    }

    /// The report of this upgrade with `outcome`.
    ///
    /// All three clocks are CLOCK_MONOTONIC, which Linux keeps system-wide, so
    /// A's freeze and B's first message can be subtracted.
    pub fn report(
        &self,
        outcome: Outcome,
        error: Option<String>,
        to_pid: Option<u32>,
    ) -> HandoffReport {
        let since_freeze = |t: Option<u64>| Some(t?.saturating_sub(self.frozen_at_ns?) / 1000);
        HandoffReport {
            id: self.id,
            trigger: self.trigger.as_str().to_string(),
            binary: self.binary.display().to_string(),
            outcome,
            error,
            from_pid: self.from_pid,
            to_pid,
            blackout_us: since_freeze(self.first_consumed_ns),
            pause_us: since_freeze(self.go_at_ns),
            phases: self.timings.clone(),
        }
    }
}

/// Where the upgrade is. See the module docs for the steps.
#[derive(Debug, Default)]
pub enum Phase {
    /// No upgrade runs.
    #[default]
    Idle,
    /// Steps 2–3: B spawned, waiting for its Hello.
    Preparing { up: Upgrade, succ: WorkerProc },
    /// Step 4: A told to freeze, waiting for Frozen.
    Freezing { up: Upgrade, succ: WorkerProc },
    /// Step 5: B restoring, waiting for Ready.
    Restoring { up: Upgrade, succ: WorkerProc },
    /// Step 6: B live, A told to exit, waiting to reap A and for B's first
    /// message.
    Committing { up: Upgrade, old: WorkerProc },
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Preparing { .. } => "preparing",
            Phase::Freezing { .. } => "freezing",
            Phase::Restoring { .. } => "restoring",
            Phase::Committing { .. } => "committing",
        }
    }

    pub fn upgrade(&self) -> Option<&Upgrade> {
        match self {
            Phase::Idle => None,
            Phase::Preparing { up, .. }
            | Phase::Freezing { up, .. }
            | Phase::Restoring { up, .. }
            | Phase::Committing { up, .. } => Some(up),
        }
    }

    pub fn upgrade_mut(&mut self) -> Option<&mut Upgrade> {
        match self {
            Phase::Idle => None,
            Phase::Preparing { up, .. }
            | Phase::Freezing { up, .. }
            | Phase::Restoring { up, .. }
            | Phase::Committing { up, .. } => Some(up),
        }
    }

    /// The successor, while it is not yet the active worker.
    pub fn successor_mut(&mut self) -> Option<&mut WorkerProc> {
        match self {
            Phase::Preparing { succ, .. }
            | Phase::Freezing { succ, .. }
            | Phase::Restoring { succ, .. } => Some(succ),
            _ => None,
        }
    }

    /// The old worker while it is being retired.
    pub fn retiring_mut(&mut self) -> Option<&mut WorkerProc> {
        match self {
            Phase::Committing { old, .. } => Some(old),
            _ => None,
        }
    }

    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.upgrade().map(|u| u.deadline)
    }
}

/// Step 3's check: can the successor take over from the running worker? The
/// answer is the schema the old worker must freeze in (`None`: its own), or
/// why not. Refusing here costs nothing: the old worker has not been touched.
pub fn compatibility(current: &Hello, successor: &Hello) -> Result<Option<u32>, String> {
    if successor.protocol != PROTOCOL_VERSION {
        return Err(format!(
            "the new worker speaks protocol {}, this supervisor {PROTOCOL_VERSION}",
            successor.protocol
        ));
    }
    if current.app != successor.app {
        return Err(format!(
            "the new worker is app {:?}, the running one {:?}",
            successor.app, current.app
        ));
    }
    if successor.reads_schemas.contains(&current.writes_schema) {
        return Ok(None);
    }
    // An older build: ask the running worker for the newest schema both share.
    let shared = current
        .can_write
        .iter()
        .filter(|s| successor.reads_schemas.contains(s))
        .max();
    match shared {
        Some(&s) => Ok(Some(s)),
        None => Err(format!(
            "incompatible state: the new worker reads schemas {:?}, the running worker writes {:?}",
            successor.reads_schemas, current.can_write
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(writes: u32, can_write: &[u32], reads: &[u32]) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            pid: 1,
            build_id: "t".into(),
            app: "bot".into(),
            writes_schema: writes,
            can_write: can_write.to_vec(),
            reads_schemas: reads.to_vec(),
        }
    }

    #[test]
    fn schema_negotiation() {
        let v1 = hello(1, &[1], &[1]);
        let v2 = hello(2, &[1, 2], &[1, 2]);
        assert_eq!(compatibility(&v1, &v2), Ok(None), "upgrade: v2 reads v1");
        assert_eq!(
            compatibility(&v2, &v1),
            Ok(Some(1)),
            "rollback: v2 writes v1 for it"
        );
        let v3_only = hello(3, &[3], &[3]);
        let err = compatibility(&v1, &v3_only).unwrap_err();
        assert!(err.contains("incompatible state"), "{err}");
        let mut other = v2.clone();
        other.app = "other".into();
        assert!(compatibility(&v1, &other).unwrap_err().contains("app"));
        let mut newer = v2;
        newer.protocol = PROTOCOL_VERSION + 1;
        assert!(compatibility(&v1, &newer).unwrap_err().contains("protocol"));
    }
}
