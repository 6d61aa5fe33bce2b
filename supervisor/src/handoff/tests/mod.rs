//! The handoff's moves, driven without processes: every path through
//! [`step`], with the exact sequence of phases and the actions taken.

use handoff_protocol::ctl::Outcome;
use handoff_protocol::worker::{Frozen, Hello};
use handoff_protocol::{Snapshot, PROTOCOL_VERSION};
use tokio::time::Instant;

use super::machine::{step, Action, Event, Pair, Phase, Worker};
use super::{compatibility, Milestone, EXIT_STATUS_GRACE, FIRST_MESSAGE_GRACE};
use crate::config::{PreCopyLimits, Timeouts};

mod failures;
mod precopy;

const PAIR: Pair = Pair {
    old: Worker {
        generation: 1,
        pid: 100,
    },
    new: Worker {
        generation: 2,
        pid: 200,
    },
};

/// The phases of an upgrade without pre-copy that completes.
const COMPLETED: [&str; 6] = [
    "idle",
    "preparing",
    "freezing",
    "restoring",
    "committing",
    "idle",
];

fn hello(writes: u32, reads: &[u32]) -> Box<Hello> {
    Box::new(Hello {
        protocol: PROTOCOL_VERSION,
        pid: 1,
        build_id: "b".into(),
        app: "bot".into(),
        writes_schema: writes,
        can_write: vec![writes],
        reads_schemas: reads.to_vec(),
        precopy: handoff_protocol::worker::PreCopyMode::Off,
    })
}

fn frozen() -> Box<Frozen> {
    Box::new(Frozen {
        snapshot: Snapshot::seal("bot", 1, vec![7; 10]),
        conns: Vec::new(),
        frozen_at_ns: 5,
        summary: None,
        digest: None,
    })
}

fn good_hello() -> Event {
    Event::Hello {
        current: Some(hello(1, &[1])),
        successor: hello(1, &[1]),
    }
}

/// A run of the machine: each event in turn, recording every phase it
/// passes through and every action, from a fixed clock.
struct Run {
    phase: Phase,
    now: Instant,
    t: Timeouts,
    limits: PreCopyLimits,
    phases: Vec<&'static str>,
    actions: Vec<Action>,
}

impl Run {
    fn new() -> Self {
        Run {
            phase: Phase::Idle,
            now: Instant::now(),
            t: Timeouts::default(),
            limits: PreCopyLimits::default(),
            phases: vec!["idle"],
            actions: Vec::new(),
        }
    }

    /// Feed `event`; returns this step's actions.
    fn feed(&mut self, event: Event) -> &[Action] {
        let (next, actions) = step(
            std::mem::take(&mut self.phase),
            event,
            self.now,
            &self.t,
            &self.limits,
        );
        if next.name() != *self.phases.last().unwrap() {
            self.phases.push(next.name());
        }
        self.phase = next;
        let from = self.actions.len();
        self.actions.extend(actions);
        &self.actions[from..]
    }

    fn feed_all(&mut self, events: impl IntoIterator<Item = Event>) -> &mut Self {
        for e in events {
            self.feed(e);
        }
        self
    }

    /// The milestones marked so far, in order.
    fn milestones(&self) -> Vec<Milestone> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Mark(m, _) => Some(*m),
                _ => None,
            })
            .collect()
    }

    /// The upgrade's end, if it ended.
    fn finish(&self) -> Option<(Outcome, Option<String>)> {
        self.actions.iter().find_map(|a| match a {
            Action::Finish { outcome, error } => Some((*outcome, error.clone())),
            _ => None,
        })
    }

    fn count(&self, want: &Action) -> usize {
        self.actions.iter().filter(|a| *a == want).count()
    }

    /// Move the clock past the current deadline and tell the machine.
    fn expire(&mut self) -> &[Action] {
        let at = self.phase.deadline().expect("a deadline");
        self.now = at;
        self.feed(Event::Deadline)
    }

    fn up_to_restoring(&mut self) -> &mut Self {
        self.feed_all([
            Event::Spawned { pair: PAIR },
            good_hello(),
            Event::Frozen(frozen()),
        ])
    }

    fn up_to_committing(&mut self) -> &mut Self {
        self.up_to_restoring().feed_all([Event::Ready])
    }
}

use Milestone as M;

#[test]
fn a_successful_upgrade_passes_every_phase_in_order() {
    let mut r = Run::new();
    r.up_to_committing().feed_all([
        Event::OldExited("exit status: 0".into()),
        Event::FirstConsumed,
    ]);
    assert_eq!(r.phases, COMPLETED);
    assert_eq!(
        r.milestones(),
        [
            M::Spawned,
            M::Prepared,
            M::Frozen,
            M::Restored,
            M::Live,
            M::OldStopped
        ]
    );
    assert_eq!(r.finish(), Some((Outcome::Completed, None)));
    // A frozen (in its own schema), the progress held, B restored, then
    // Exit/Go; nobody killed or thawed.
    assert_eq!(
        r.count(&Action::Freeze {
            schema: None,
            catch_up: false
        }),
        1
    );
    assert_eq!(r.count(&Action::HoldProgress), 1);
    assert_eq!(r.count(&Action::Commit), 1);
    assert_eq!(r.count(&Action::KillSuccessor), 0);
    assert_eq!(r.count(&Action::Thaw), 0);
    assert_eq!(r.count(&Action::KillOld), 0);
    assert!(r.actions.iter().any(|a| matches!(a, Action::Restore(_))));
    // Commit comes after Restored and before Live: Go is what `live` marks.
    let pos = |want: &dyn Fn(&Action) -> bool| r.actions.iter().position(want).unwrap();
    let restored = pos(&|a| *a == Action::Mark(M::Restored, None));
    let commit = pos(&|a| *a == Action::Commit);
    let live = pos(&|a| matches!(a, Action::Mark(M::Live, _)));
    assert!(restored < commit && commit < live, "{:?}", r.actions);
}

#[test]
fn the_first_message_before_the_reap_completes_on_the_reap() {
    let mut r = Run::new();
    r.up_to_committing();
    assert_eq!(r.feed(Event::FirstConsumed), [Action::ReleaseProgress]);
    assert_eq!(r.phase.name(), "committing");
    r.feed(Event::OldExited("exit status: 0".into()));
    assert!(r.phase.is_idle());
    assert_eq!(r.finish(), Some((Outcome::Completed, None)));
    assert_eq!(r.count(&Action::ReleaseProgress), 2);
}

#[test]
fn a_quiet_feed_completes_a_grace_after_the_reap() {
    let mut r = Run::new();
    r.up_to_committing();
    let reaped_at = r.now;
    r.feed(Event::OldExited("exit status: 0".into()));
    assert_eq!(r.phase.deadline(), Some(reaped_at + FIRST_MESSAGE_GRACE));
    r.expire();
    assert!(r.phase.is_idle());
    assert_eq!(r.finish(), Some((Outcome::Completed, None)));
}

#[test]
fn an_old_worker_that_lingers_after_exit_is_killed_then_reaped() {
    let mut r = Run::new();
    r.up_to_committing();
    assert_eq!(r.phase.deadline(), Some(r.now + r.t.exit));
    assert_eq!(r.expire(), [Action::KillOld]);
    assert_eq!(r.phase.deadline(), None, "nothing more to time");
    r.feed_all([Event::OldExited("signal: 9".into()), Event::FirstConsumed]);
    assert_eq!(r.finish(), Some((Outcome::Completed, None)));
    assert_eq!(r.phases, COMPLETED);
}

#[test]
fn after_the_commit_the_new_workers_fate_is_no_longer_the_upgrades() {
    let mut r = Run::new();
    r.up_to_committing();
    for e in [
        Event::SuccessorExited("signal: 9".into()),
        Event::SuccessorChannelClosed(None),
        Event::Rejected("late".into()),
        Event::Stopping,
        Event::Ready,
    ] {
        assert_eq!(r.feed(e), []);
    }
    assert_eq!(r.phase.name(), "committing");
    assert_eq!(r.finish(), None);
}

#[test]
fn a_rollback_freezes_the_old_worker_in_the_schema_the_new_one_reads() {
    let mut r = Run::new();
    r.feed(Event::Spawned { pair: PAIR });
    let mut current = hello(2, &[1, 2]);
    current.can_write = vec![1, 2];
    r.feed(Event::Hello {
        current: Some(current),
        successor: hello(1, &[1]),
    });
    assert_eq!(
        r.count(&Action::Freeze {
            schema: Some(1),
            catch_up: false
        }),
        1
    );
    assert_eq!(r.phase.name(), "freezing");
}

/// Drive a run up to `phase` (preparing, freezing or restoring).
fn reach(r: &mut Run, phase: &str) {
    r.feed(Event::Spawned { pair: PAIR });
    if phase == "preparing" {
        return;
    }
    r.feed(good_hello());
    if phase == "freezing" {
        return;
    }
    r.feed(Event::Frozen(frozen()));
    assert_eq!(r.phase.name(), phase);
}

#[test]
fn a_late_frozen_snapshot_is_kept_as_a_checkpoint_and_moves_nothing() {
    for at in ["idle", "preparing", "restoring", "committing"] {
        let mut r = Run::new();
        match at {
            "idle" => {}
            "committing" => {
                r.up_to_committing();
            }
            _ => reach(&mut r, at),
        }
        let actions = r.feed(Event::Frozen(frozen()));
        assert!(
            matches!(actions, [Action::StoreCheckpoint(_)]),
            "{at}: {actions:?}"
        );
        assert_eq!(r.phase.name(), at);
    }
}

#[test]
fn out_of_order_events_are_ignored() {
    // Idle: nothing but a spawn starts anything.
    let mut r = Run::new();
    for e in [
        good_hello(),
        Event::Ready,
        Event::FirstConsumed,
        Event::Deadline,
        Event::Stopping,
        Event::OldExited("x".into()),
        Event::SuccessorExited("x".into()),
    ] {
        assert_eq!(r.feed(e), []);
    }
    assert_eq!(r.phases, ["idle"]);
    // A Ready before the Restore, a second Hello, a freeze failure after
    // Frozen: no move.
    let mut r = Run::new();
    reach(&mut r, "preparing");
    assert_eq!(r.feed(Event::Ready), []);
    assert_eq!(r.feed(Event::FirstConsumed), []);
    reach_from_preparing_up_to_restoring(&mut r);
    assert_eq!(r.feed(good_hello()), []);
    assert_eq!(r.feed(Event::FreezeFailed("late".into())), []);
    assert_eq!(r.phase.name(), "restoring");
}

fn reach_from_preparing_up_to_restoring(r: &mut Run) {
    r.feed_all([good_hello(), Event::Frozen(frozen())]);
}

#[test]
fn feed_changes_are_marked_in_any_phase_of_an_upgrade() {
    let mut r = Run::new();
    reach(&mut r, "restoring");
    assert_eq!(
        r.feed(Event::FeedChanges("opens feed-1".into())),
        [Action::Mark(M::Feeds, Some("opens feed-1".into()))]
    );
    assert_eq!(r.phase.name(), "restoring");
}

#[test]
fn the_phases_name_the_two_workers() {
    let mut r = Run::new();
    reach(&mut r, "freezing");
    assert_eq!(r.phase.successor(), Some(2));
    assert_eq!(r.phase.retiring(), None);
    assert_eq!(r.phase.pair(), Some(PAIR));
    r.feed_all([Event::Frozen(frozen()), Event::Ready]);
    assert_eq!(r.phase.successor(), None);
    assert_eq!(r.phase.retiring(), Some(1));
}

fn hello_of(writes: u32, can_write: &[u32], reads: &[u32]) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        pid: 1,
        build_id: "t".into(),
        app: "bot".into(),
        writes_schema: writes,
        can_write: can_write.to_vec(),
        reads_schemas: reads.to_vec(),
        precopy: Default::default(),
    }
}

#[test]
fn schema_negotiation() {
    let v1 = hello_of(1, &[1], &[1]);
    let v2 = hello_of(2, &[1, 2], &[1, 2]);
    assert_eq!(compatibility(&v1, &v2), Ok(None), "upgrade: v2 reads v1");
    assert_eq!(
        compatibility(&v2, &v1),
        Ok(Some(1)),
        "rollback: v2 writes v1 for it"
    );
    let v3_only = hello_of(3, &[3], &[3]);
    let err = compatibility(&v1, &v3_only).unwrap_err();
    assert!(err.contains("incompatible state"), "{err}");
    let mut other = v2.clone();
    other.app = "other".into();
    assert!(compatibility(&v1, &other).unwrap_err().contains("app"));
    let mut newer = v2;
    newer.protocol = PROTOCOL_VERSION + 1;
    assert!(compatibility(&v1, &newer).unwrap_err().contains("protocol"));
}
