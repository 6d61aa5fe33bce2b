//! The handoff: its steps, the record of one upgrade, and the compatibility
//! check. The moves between the steps are one pure function,
//! [`machine::step`]; the daemon feeds it worker events and deadlines and
//! carries out the actions it returns ([`crate::upgrade`]). Every move is
//! recorded as a [`Milestone`] and published as a [`PhaseEvent`] to
//! `upgrade --wait` clients, in `status` and in `log`.
//!
//! 1. **Trigger**: SIGUSR2, `supervisorctl upgrade`. One at a time: a trigger
//!    while a phase other than [`Phase::Idle`] runs is refused as busy.
//! 2. **Admit and spawn** ([`Phase::Preparing`]): the binary is admitted into
//!    the build store and the successor B runs with its own socketpair; it
//!    prepares and says Hello. The old worker A has not been touched: giving
//!    up here loses nothing.
//! 3. **Prepare**: B's Hello is checked (protocol version, and that B reads
//!    the schema A writes). Incompatible: refused, B killed.
//!    3a. **Pre-copy** ([`Phase::PreCopying`], [`Phase::Warming`]), when
//!    both builds say the same
//!    [`PreCopyMode`](handoff_protocol::worker::PreCopyMode) (not `Off`), B writes A's
//!    schema and the supervisor allows it ([`crate::config::PreCopyLimits`]):
//!    A, serving on, makes round 0 (its state, written by a copy-on-write
//!    child) and starts recording changes; B restores it (`Warm`, `Warmed`);
//!    then rounds of what changed since the previous one, until one fits in
//!    the target pause, stops shrinking, or the round limit is reached
//!    ([`machine::Rounds::next`]). A failing round 0 falls back to a whole
//!    state in the freeze; any later failure refuses the upgrade (A never
//!    stopped). A lost nothing either way.
//! 4. **Freeze** ([`Phase::Freezing`]): A is told to freeze; it answers with
//!    its snapshot (after a pre-copy: the changes since the last round and a
//!    digest of its state) and each connection's leftovers. The blackout
//!    starts.
//! 5. **Restore** ([`Phase::Restoring`]): B gets the snapshot, the manifest and
//!    the held descriptors, and answers Ready without consuming anything (after
//!    a pre-copy: once its digest matches A's). A rejection (a catch-up that
//!    diverged among them), crash or timeout here thaws A and kills B.
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

mod events;
pub mod machine;
mod rounds;
#[cfg(test)]
mod tests;

pub use machine::Phase;

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

/// A step of an upgrade, as `upgrade --wait`, `status` and `log` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Milestone {
    /// The binary passed its checks and is in the build store.
    Admitted,
    /// B runs.
    Spawned,
    /// B said Hello.
    Prepared,
    /// A made a pre-copy round (A serves on).
    PreCopied,
    /// B applied a pre-copy round.
    Warmed,
    /// A could not make the first pre-copy round: the whole state moves in
    /// the freeze.
    PreCopyFailed,
    /// A froze: the blackout started.
    Frozen,
    /// B restored A's state.
    Restored,
    /// The new build has the same content as the running one (no new
    /// build: no probation, the rollback target is unchanged).
    SameBuild,
    /// B was told to go.
    Live,
    /// A was reaped.
    OldStopped,
    /// The new build opens or closes feeds.
    Feeds,
    /// Given up before A was touched.
    Failed,
    /// Given up after A was frozen: A thawed.
    RolledBack,
}

impl Milestone {
    /// The name on the wire (`PhaseEvent::phase`) and in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Milestone::Admitted => "admitted",
            Milestone::Spawned => "spawned",
            Milestone::Prepared => "prepared",
            Milestone::PreCopied => "pre_copied",
            Milestone::Warmed => "warmed",
            Milestone::PreCopyFailed => "pre_copy_failed",
            Milestone::Frozen => "frozen",
            Milestone::Restored => "restored",
            Milestone::SameBuild => "same_build",
            Milestone::Live => "live",
            Milestone::OldStopped => "old_stopped",
            Milestone::Feeds => "feeds",
            Milestone::Failed => "failed",
            Milestone::RolledBack => "rolled_back",
        }
    }
}

/// The record of one upgrade: what it reports, whom it tells, and when.
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
    /// Every phase event so far (for `supervisorctl log`).
    pub events: Vec<PhaseEvent>,
    /// The upgrade's tracing span: every phase is logged inside it, and it
    /// carries the outcome and the timings when the upgrade ends.
    pub span: tracing::Span,
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

    /// Record that `milestone` was reached now and tell the waiters.
    pub fn mark(&mut self, milestone: Milestone, detail: Option<String>) {
        let at = self.elapsed_us();
        let t = &mut self.timings;
        let slot = match milestone {
            Milestone::Spawned => Some(&mut t.spawned_us),
            Milestone::Prepared => Some(&mut t.prepared_us),
            Milestone::Frozen => Some(&mut t.frozen_us),
            Milestone::Restored => Some(&mut t.restored_us),
            Milestone::Live => Some(&mut t.live_us),
            Milestone::OldStopped => Some(&mut t.old_stopped_us),
            _ => None,
        };
        if let Some(slot) = slot {
            *slot = Some(at);
        }
        let phase = milestone.as_str();
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
