//! The handoff's moves, as one pure function: [`step`] takes the current
//! [`Phase`] and an [`Event`] and returns the next phase and the
//! [`Action`]s the daemon must carry out, in order. It reads no clock (the
//! time comes with the call), touches no process and sends nothing, so
//! every path can be driven and checked without processes (`tests/`). Its
//! inputs and outputs, [`Event`] and [`Action`], are in `events.rs`.
//!
//! The daemon ([`crate::upgrade`]) owns the processes and the upgrade's
//! record; it turns worker messages, exits and deadlines into events and
//! executes the actions. An action that can fail on the daemon's side
//! (handing the held sockets to the successor) is answered by a further
//! event ([`Event::RestoreFailed`]).

use handoff_protocol::ctl::Outcome;
use handoff_protocol::worker::{Frozen, PreCopyMode};
use tokio::time::Instant;

pub use super::events::{Action, Event};
pub use super::rounds::{RoundFigures, Rounds};
use super::{compatibility, Milestone, EXIT_STATUS_GRACE, FIRST_MESSAGE_GRACE};
use crate::config::{PreCopyLimits, Timeouts};
use crate::proc::Generation;

/// A worker process as the machine knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Worker {
    pub generation: Generation,
    pub pid: u32,
}

/// The two workers of one upgrade: A, serving when it began, and B.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    pub old: Worker,
    pub new: Worker,
}

/// What every phase before the commit carries besides the pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub pair: Pair,
    /// When the phase gives up.
    pub deadline: Instant,
    /// The successor's channel closed or it said it failed: the reason to
    /// give when the deadline (brought forward to at most
    /// [`EXIT_STATUS_GRACE`]) passes without its exit status.
    pub lost: Option<String>,
}

/// Where the upgrade is. See the parent module for the steps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Phase {
    /// No upgrade runs.
    #[default]
    Idle,
    /// Steps 2–3: B spawned, waiting for its Hello. A untouched.
    Preparing(Pending),
    /// Step 3a, pre-copy: A (serving on) asked for a round, waiting for it.
    PreCopying(Pending, Rounds),
    /// Step 3b, pre-copy: B applying the round A made, waiting for Warmed.
    Warming(Pending, Rounds),
    /// Step 4: A told to freeze (in `schema`, or its own), waiting for Frozen.
    Freezing(Pending),
    /// Step 5: B restoring from A's snapshot, waiting for Ready.
    Restoring(Pending),
    /// Step 6: B told to go, A to exit; waiting to reap A and for B's first
    /// message.
    Committing(Committing),
}

/// Step 6's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committing {
    pub pair: Pair,
    /// A is killed at this deadline if not reaped; once it is, the upgrade
    /// completes at this deadline even if B has consumed nothing (a quiet
    /// feed). `None`: A was killed, its exit is awaited.
    pub deadline: Option<Instant>,
    /// A was reaped.
    pub old_exited: bool,
    /// B consumed its first message.
    pub consumed: bool,
}

impl Phase {
    /// The name `status` shows for an upgrade in progress.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Preparing(_) => "preparing",
            Phase::PreCopying(..) => "pre_copying",
            Phase::Warming(..) => "warming",
            Phase::Freezing(_) => "freezing",
            Phase::Restoring(_) => "restoring",
            Phase::Committing(_) => "committing",
        }
    }

    pub fn is_idle(&self) -> bool {
        matches!(self, Phase::Idle)
    }

    /// The two workers, while an upgrade runs.
    pub fn pair(&self) -> Option<Pair> {
        match self {
            Phase::Idle => None,
            Phase::Preparing(p) | Phase::Freezing(p) | Phase::Restoring(p) => Some(p.pair),
            Phase::PreCopying(p, _) | Phase::Warming(p, _) => Some(p.pair),
            Phase::Committing(c) => Some(c.pair),
        }
    }

    /// The successor, while it is not yet the active worker.
    pub fn successor(&self) -> Option<Generation> {
        match self {
            Phase::Preparing(p)
            | Phase::PreCopying(p, _)
            | Phase::Warming(p, _)
            | Phase::Freezing(p)
            | Phase::Restoring(p) => Some(p.pair.new.generation),
            _ => None,
        }
    }

    /// The old worker, once it is being retired.
    pub fn retiring(&self) -> Option<Generation> {
        match self {
            Phase::Committing(c) => Some(c.pair.old.generation),
            _ => None,
        }
    }

    /// When [`Event::Deadline`] is due.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Phase::Idle => None,
            Phase::Preparing(p) | Phase::Freezing(p) | Phase::Restoring(p) => Some(p.deadline),
            Phase::PreCopying(p, _) | Phase::Warming(p, _) => Some(p.deadline),
            Phase::Committing(c) => c.deadline,
        }
    }

    /// Whether A has been asked to freeze and not yet to exit: giving up
    /// now must thaw it.
    fn old_frozen(&self) -> bool {
        matches!(self, Phase::Freezing(_) | Phase::Restoring(_))
    }

    /// Whether A records changes for a pre-copy: giving up now must tell
    /// it to stop.
    fn precopying(&self) -> bool {
        matches!(self, Phase::PreCopying(..) | Phase::Warming(..))
    }
}

/// One move: the next phase and what to do.
pub fn step(
    phase: Phase,
    event: Event,
    now: Instant,
    t: &Timeouts,
    limits: &PreCopyLimits,
) -> (Phase, Vec<Action>) {
    use Event as E;
    match (phase, event) {
        (Phase::Idle, E::Spawned { pair }) => (
            Phase::Preparing(Pending {
                pair,
                deadline: now + t.prepare,
                lost: None,
            }),
            vec![Action::Mark(
                Milestone::Spawned,
                Some(format!("pid {}", pair.new.pid)),
            )],
        ),
        (Phase::Idle, E::Frozen(f)) => (Phase::Idle, late_frozen(f)),
        (Phase::Idle, _) => (Phase::Idle, Vec::new()),

        // ---- before the commit -------------------------------------------
        (Phase::Preparing(p), E::Hello { current, successor }) => {
            let mark = Action::Mark(
                Milestone::Prepared,
                Some(format!("build {}", successor.build_id)),
            );
            let verdict = match &current {
                Some(cur) => compatibility(cur, &successor),
                None => Err("the running worker never said Hello".to_string()),
            };
            let precopy = match (&current, &verdict) {
                (Some(cur), Ok(None)) => {
                    limits.enabled
                        && cur.precopy != PreCopyMode::Off
                        && cur.precopy == successor.precopy
                        && cur.writes_schema == successor.writes_schema
                }
                _ => false,
            };
            match verdict {
                Ok(None) if precopy => (
                    Phase::PreCopying(
                        Pending {
                            deadline: now + t.precopy_round,
                            ..p
                        },
                        Rounds::default(),
                    ),
                    vec![mark, Action::PreCopy { round: 0 }],
                ),
                Ok(schema) => freeze(p, schema, false, now, t, vec![mark]),
                Err(reason) => {
                    let (phase, mut actions) =
                        give_up(Phase::Preparing(p), Outcome::Refused, reason);
                    actions.insert(0, mark);
                    (phase, actions)
                }
            }
        }
        (
            Phase::PreCopying(p, mut r),
            E::PreCopied {
                round,
                bytes,
                took_ns,
            },
        ) if round == r.round => {
            r.done.push(RoundFigures {
                bytes,
                made_ns: took_ns,
                applied_ns: 0,
            });
            let what = if round == 0 { "the state" } else { "changes" };
            let detail = format!(
                "round {round}: {bytes} bytes of {what}, made in {} µs",
                took_ns / 1000
            );
            (
                Phase::Warming(
                    Pending {
                        deadline: now + t.precopy_round,
                        ..p
                    },
                    r,
                ),
                vec![
                    Action::Mark(Milestone::PreCopied, Some(detail)),
                    Action::Warm { round },
                ],
            )
        }
        // Nothing applied yet: the whole state moves in the freeze.
        (Phase::PreCopying(p, r), E::PreCopyFailed(why)) if r.round == 0 => {
            let mark = Action::Mark(
                Milestone::PreCopyFailed,
                Some(format!("{why}; the whole state moves in the freeze")),
            );
            freeze(p, None, false, now, t, vec![mark])
        }
        (phase @ Phase::PreCopying(..), E::PreCopyFailed(why)) => give_up(
            phase,
            Outcome::Refused,
            format!("the old worker could not go on with the pre-copy: {why}"),
        ),
        (Phase::Warming(p, mut r), E::Warmed { round, took_ns }) if round == r.round => {
            if let Some(last) = r.done.last_mut() {
                last.applied_ns = took_ns;
            }
            let mark = Action::Mark(
                Milestone::Warmed,
                Some(format!("round {round} applied in {} µs", took_ns / 1000)),
            );
            match r.next(limits) {
                Some(next) => {
                    r.round = next;
                    (
                        Phase::PreCopying(
                            Pending {
                                deadline: now + t.precopy_round,
                                ..p
                            },
                            r,
                        ),
                        vec![mark, Action::PreCopy { round: next }],
                    )
                }
                None => freeze(p, None, true, now, t, vec![mark]),
            }
        }
        (Phase::Freezing(p), E::Frozen(f)) => {
            let detail = if f.is_catch_up() {
                format!(
                    "{} bytes of catch-up, {} connections",
                    f.snapshot.bytes.len(),
                    f.conns.len()
                )
            } else {
                format!(
                    "{} bytes of state, {} connections",
                    f.snapshot.bytes.len(),
                    f.conns.len()
                )
            };
            (
                Phase::Restoring(Pending {
                    deadline: now + t.restore,
                    ..p
                }),
                vec![
                    Action::Mark(Milestone::Frozen, Some(detail)),
                    Action::Restore(f),
                ],
            )
        }
        (Phase::Freezing(p), E::FreezeFailed(why)) => give_up(
            Phase::Freezing(p),
            Outcome::RolledBack,
            format!("the old worker could not freeze: {why}"),
        ),
        (Phase::Restoring(p), E::RestoreFailed(why)) => give_up(
            Phase::Restoring(p),
            Outcome::RolledBack,
            format!("cannot hand the held sockets over: {why}"),
        ),
        (Phase::Restoring(p), E::Ready) => {
            let live = Action::Mark(Milestone::Live, Some(format!("pid {}", p.pair.new.pid)));
            (
                Phase::Committing(Committing {
                    pair: p.pair,
                    deadline: Some(now + t.exit),
                    old_exited: false,
                    consumed: false,
                }),
                vec![
                    Action::Mark(Milestone::Restored, None),
                    Action::Commit,
                    live,
                ],
            )
        }
        (
            phase @ (Phase::Preparing(_)
            | Phase::PreCopying(..)
            | Phase::Warming(..)
            | Phase::Freezing(_)
            | Phase::Restoring(_)),
            event,
        ) => before_commit(phase, event, now, t),

        // ---- after it ----------------------------------------------------
        (Phase::Committing(mut c), E::OldExited(status)) => {
            c.old_exited = true;
            let mut actions = vec![Action::Mark(Milestone::OldStopped, Some(status))];
            if c.consumed {
                actions.extend(complete());
                return (Phase::Idle, actions);
            }
            c.deadline = Some(now + FIRST_MESSAGE_GRACE);
            (Phase::Committing(c), actions)
        }
        (Phase::Committing(mut c), E::FirstConsumed) => {
            c.consumed = true;
            if c.old_exited {
                return (Phase::Idle, complete());
            }
            (Phase::Committing(c), vec![Action::ReleaseProgress])
        }
        (Phase::Committing(c), E::Deadline) if c.old_exited => (Phase::Idle, complete()),
        (Phase::Committing(mut c), E::Deadline) => {
            c.deadline = None;
            (Phase::Committing(c), vec![Action::KillOld])
        }
        (Phase::Committing(c), E::Frozen(f)) => (Phase::Committing(c), late_frozen(f)),
        (Phase::Committing(c), E::FeedChanges(lines)) => (
            Phase::Committing(c),
            vec![Action::Mark(Milestone::Feeds, Some(lines))],
        ),
        // B is the active worker now: its exit is a crash, recovered as any
        // other; the stop drains it. Nothing of the upgrade changes.
        (phase @ Phase::Committing(_), _) => (phase, Vec::new()),
    }
}

/// The events every phase before the commit answers alike.
fn before_commit(phase: Phase, event: Event, now: Instant, t: &Timeouts) -> (Phase, Vec<Action>) {
    use Event as E;
    // Nothing was frozen before the freeze: the old worker served on.
    let outcome = match phase {
        Phase::Preparing(_) | Phase::PreCopying(..) | Phase::Warming(..) => Outcome::Refused,
        _ => Outcome::RolledBack,
    };
    match event {
        E::SuccessorExited(status) => {
            give_up(phase, outcome, format!("the new worker exited ({status})"))
        }
        E::SuccessorChannelClosed(error) => {
            let why = error.map(|e| format!(": {e}")).unwrap_or_default();
            let lost = format!("the new worker closed its channel{why}");
            // Most likely it is exiting: its exit status is the better reason.
            (lose(phase, lost, Some(now + EXIT_STATUS_GRACE)), Vec::new())
        }
        E::SuccessorFailed(why) => (
            lose(phase, format!("the new worker failed: {why}"), None),
            Vec::new(),
        ),
        E::Rejected(why) => give_up(
            phase,
            outcome,
            format!("the new worker rejected the state: {why}"),
        ),
        E::OldExited(status) => {
            let reason = format!("the old worker exited during the handoff ({status})");
            let (phase, mut actions) = give_up(phase, Outcome::RolledBack, reason);
            // Nobody is left to thaw.
            actions.retain(|a| *a != Action::Thaw);
            (phase, actions)
        }
        E::Stopping => give_up(
            phase,
            Outcome::RolledBack,
            "the supervisor is stopping".into(),
        ),
        E::Deadline => {
            let reason = lost(&phase).unwrap_or_else(|| match phase {
                Phase::Preparing(_) => {
                    format!("the new worker did not say Hello within {:?}", t.prepare)
                }
                Phase::PreCopying(_, ref r) => format!(
                    "the old worker did not make pre-copy round {} within {:?}",
                    r.round, t.precopy_round
                ),
                Phase::Warming(_, ref r) => format!(
                    "the new worker did not apply pre-copy round {} within {:?}",
                    r.round, t.precopy_round
                ),
                Phase::Freezing(_) => {
                    format!("the old worker did not freeze within {:?}", t.freeze)
                }
                _ => format!("the new worker was not ready within {:?}", t.restore),
            });
            give_up(phase, outcome, reason)
        }
        E::FeedChanges(lines) => (phase, vec![Action::Mark(Milestone::Feeds, Some(lines))]),
        // A late answer to a freeze this upgrade no longer waits for.
        E::Frozen(f) => (phase, late_frozen(f)),
        // Out of order (a Ready before Restore, a second Hello…): ignored.
        E::Spawned { .. }
        | E::PreCopied { .. }
        | E::PreCopyFailed(_)
        | E::Warmed { .. }
        | E::Hello { .. }
        | E::FreezeFailed(_)
        | E::RestoreFailed(_)
        | E::Ready
        | E::FirstConsumed => (phase, Vec::new()),
    }
}

/// Tell A to freeze (after `marks`); the blackout starts.
fn freeze(
    p: Pending,
    schema: Option<u32>,
    catch_up: bool,
    now: Instant,
    t: &Timeouts,
    mut marks: Vec<Action>,
) -> (Phase, Vec<Action>) {
    marks.extend([Action::Freeze { schema, catch_up }, Action::HoldProgress]);
    (
        Phase::Freezing(Pending {
            deadline: now + t.freeze,
            ..p
        }),
        marks,
    )
}

/// Give up before the commit: kill B, thaw A if it was frozen.
fn give_up(phase: Phase, outcome: Outcome, reason: String) -> (Phase, Vec<Action>) {
    let mut actions = vec![Action::KillSuccessor];
    if phase.old_frozen() {
        actions.push(Action::Thaw);
    }
    if phase.precopying() {
        actions.push(Action::EndPreCopy);
    }
    let milestone = match outcome {
        Outcome::Refused => Milestone::Failed,
        _ => Milestone::RolledBack,
    };
    actions.push(Action::Mark(milestone, Some(reason.clone())));
    actions.push(Action::Finish {
        outcome,
        error: Some(reason),
    });
    (Phase::Idle, actions)
}

/// A `Frozen` no upgrade waits for: the whole state is still a valid
/// checkpoint; a catch-up is only a difference, and is dropped.
fn late_frozen(f: Box<Frozen>) -> Vec<Action> {
    if f.is_catch_up() {
        return Vec::new();
    }
    vec![Action::StoreCheckpoint(f)]
}

fn complete() -> Vec<Action> {
    vec![
        Action::ReleaseProgress,
        Action::Finish {
            outcome: Outcome::Completed,
            error: None,
        },
    ]
}

/// The phase with the successor's loss noted and its deadline brought
/// forward to `by`, if that is sooner.
fn lose(phase: Phase, reason: String, by: Option<Instant>) -> Phase {
    let note = |mut p: Pending| {
        p.lost = Some(reason);
        if let Some(by) = by {
            p.deadline = p.deadline.min(by);
        }
        p
    };
    match phase {
        Phase::Preparing(p) => Phase::Preparing(note(p)),
        Phase::Freezing(p) => Phase::Freezing(note(p)),
        Phase::Restoring(p) => Phase::Restoring(note(p)),
        Phase::PreCopying(p, r) => Phase::PreCopying(note(p), r),
        Phase::Warming(p, r) => Phase::Warming(note(p), r),
        other => other,
    }
}

fn lost(phase: &Phase) -> Option<String> {
    match phase {
        Phase::Preparing(p) | Phase::Freezing(p) | Phase::Restoring(p) => p.lost.clone(),
        Phase::PreCopying(p, _) | Phase::Warming(p, _) => p.lost.clone(),
        _ => None,
    }
}
