//! The pre-copy phases, driven without processes: the rounds, when they
//! stop, and every way they fail.

use handoff_protocol::worker::PreCopyMode;

use super::*;
use crate::handoff::machine::{RoundFigures, Rounds};

fn hello_precopy(mode: PreCopyMode) -> Box<Hello> {
    let mut h = hello(1, &[1]);
    h.precopy = mode;
    h
}

fn precopy_hello() -> Event {
    Event::Hello {
        current: Some(hello_precopy(PreCopyMode::Replay)),
        successor: hello_precopy(PreCopyMode::Replay),
    }
}

fn catch_up() -> Box<Frozen> {
    let mut f = frozen();
    f.digest = Some(42);
    f
}

/// A round A made and B applied, taking `made_us` and `applied_us`.
fn round(r: &mut Run, n: u32, bytes: u64, made_us: u64, applied_us: u64) {
    r.feed(Event::PreCopied {
        round: n,
        bytes,
        took_ns: made_us * 1000,
    });
    assert_eq!(r.phase.name(), "warming", "{:?}", r.actions);
    r.feed(Event::Warmed {
        round: n,
        took_ns: applied_us * 1000,
    });
}

fn start(r: &mut Run) {
    r.feed_all([Event::Spawned { pair: PAIR }, precopy_hello()]);
    assert_eq!(r.phase.name(), "pre_copying");
}

#[test]
fn a_pre_copy_warms_the_successor_then_freezes_for_the_catch_up() {
    let mut r = Run::new();
    start(&mut r);
    assert_eq!(r.count(&Action::PreCopy { round: 0 }), 1);
    // The whole state: slow to make and apply, so one round of changes.
    round(&mut r, 0, 64 << 20, 2_000, 90_000);
    assert_eq!(r.count(&Action::Warm { round: 0 }), 1);
    assert_eq!(r.count(&Action::PreCopy { round: 1 }), 1);
    // What changed meanwhile fits in the target pause: freeze now.
    round(&mut r, 1, 3_000, 200, 300);
    assert_eq!(
        r.count(&Action::Freeze {
            schema: None,
            catch_up: true
        }),
        1
    );
    r.feed_all([
        Event::Frozen(catch_up()),
        Event::Ready,
        Event::OldExited("exit status: 0".into()),
        Event::FirstConsumed,
    ]);
    assert_eq!(
        r.phases,
        [
            "idle",
            "preparing",
            "pre_copying",
            "warming",
            "pre_copying",
            "warming",
            "freezing",
            "restoring",
            "committing",
            "idle"
        ]
    );
    assert_eq!(
        r.milestones(),
        [
            M::Spawned,
            M::Prepared,
            M::PreCopied,
            M::Warmed,
            M::PreCopied,
            M::Warmed,
            M::Frozen,
            M::Restored,
            M::Live,
            M::OldStopped
        ]
    );
    assert_eq!(r.finish(), Some((Outcome::Completed, None)));
    // The catch-up is said as such.
    assert!(r.actions.iter().any(|a| matches!(
        a,
        Action::Mark(M::Frozen, Some(d)) if d.contains("catch-up")
    )));
    assert_eq!(r.count(&Action::EndPreCopy), 0);
}

#[test]
fn rounds_go_on_while_they_shrink_and_stop_at_the_limit() {
    let limits = PreCopyLimits::default();
    let mut r = Rounds::default();
    let fig = |bytes, us: u64| RoundFigures {
        bytes,
        made_ns: us * 1000,
        applied_ns: us * 1000,
    };
    r.done.push(fig(1 << 20, 50_000));
    assert_eq!(r.next(&limits), Some(1), "after the state, always a round");
    r.round = 1;
    r.done.push(fig(50_000, 5_000));
    assert_eq!(r.next(&limits), Some(2), "too slow: another round");
    r.round = 2;
    r.done.push(fig(60_000, 5_000));
    assert_eq!(r.next(&limits), None, "not shrinking: freeze");
    r.done.pop();
    r.done.push(fig(10_000, 2_000));
    assert_eq!(r.next(&limits), Some(3), "shrinking: go on");
    r.round = limits.max_rounds;
    assert_eq!(r.next(&limits), None, "the round limit");
    r.round = 1;
    r.done.push(fig(100, 100));
    assert_eq!(r.next(&limits), None, "within the target pause");
    let none = PreCopyLimits {
        max_rounds: 0,
        ..limits
    };
    let mut first = Rounds::default();
    first.done.push(fig(1, 1));
    assert_eq!(first.next(&none), None, "no rounds of changes at all");
}

#[test]
fn a_pre_copy_needs_both_builds_the_same_mode_the_same_schema_and_leave() {
    let cases = [
        (PreCopyMode::Replay, PreCopyMode::Delta, true, 1),
        (PreCopyMode::Off, PreCopyMode::Off, true, 1),
        (PreCopyMode::Delta, PreCopyMode::Delta, false, 1),
        (PreCopyMode::Delta, PreCopyMode::Delta, true, 2),
    ];
    for (a, b, enabled, b_writes) in cases {
        let mut r = Run::new();
        r.limits.enabled = enabled;
        let mut succ = hello(b_writes, &[1, 2]);
        succ.precopy = b;
        r.feed_all([
            Event::Spawned { pair: PAIR },
            Event::Hello {
                current: Some(hello_precopy(a)),
                successor: succ,
            },
        ]);
        assert_eq!(r.phase.name(), "freezing", "{a:?} {b:?} {enabled}");
        assert_eq!(
            r.count(&Action::Freeze {
                schema: None,
                catch_up: false
            }),
            1
        );
    }
}

#[test]
fn a_first_round_that_fails_moves_the_whole_state_in_the_freeze() {
    let mut r = Run::new();
    start(&mut r);
    r.feed(Event::PreCopyFailed("image: fork failed".into()));
    assert_eq!(r.phase.name(), "freezing");
    assert_eq!(
        r.count(&Action::Freeze {
            schema: None,
            catch_up: false
        }),
        1
    );
    assert_eq!(r.milestones().last(), Some(&M::PreCopyFailed));
    r.feed_all([Event::Frozen(frozen()), Event::Ready]);
    assert_eq!(r.phase.name(), "committing");
}

/// Every failure while A serves on: refused, B killed, A told to stop
/// recording, never thawed (it never froze).
#[test]
fn failures_during_a_pre_copy_refuse_the_upgrade_and_leave_a_serving() {
    type Make = fn() -> Event;
    let warming: [(Make, &str); 5] = [
        (
            || Event::Rejected("pre-copy: the app: bad delta".into()),
            "rejected the state",
        ),
        (
            || Event::SuccessorExited("signal: 9".into()),
            "new worker exited",
        ),
        (|| Event::OldExited("signal: 9".into()), "old worker exited"),
        (|| Event::Stopping, "supervisor is stopping"),
        (|| Event::Deadline, "did not apply pre-copy round 1"),
    ];
    let copying: [(Make, &str); 3] = [
        (
            || Event::PreCopyFailed("journal".into()),
            "could not go on with the pre-copy",
        ),
        (
            || Event::SuccessorExited("signal: 9".into()),
            "new worker exited",
        ),
        (|| Event::Deadline, "did not make pre-copy round 1"),
    ];
    let run = |phase: &str, make: Make, says: &str| {
        let mut r = Run::new();
        start(&mut r);
        round(&mut r, 0, 1 << 20, 1_000, 50_000);
        if phase == "warming" {
            r.feed(Event::PreCopied {
                round: 1,
                bytes: 10,
                took_ns: 1,
            });
        }
        assert_eq!(r.phase.name(), phase);
        let event = make();
        let deadline = matches!(event, Event::Deadline);
        if deadline {
            r.expire();
        } else {
            r.feed(event);
        }
        assert!(r.phase.is_idle(), "{says}: {:?}", r.phases);
        let (outcome, error) = r.finish().unwrap();
        let error = error.unwrap();
        assert!(error.contains(says), "{says}: {error}");
        // As in every phase, a stop or A's exit rolls back.
        let rolled = says.contains("old worker exited") || says.contains("stopping");
        let want = if rolled {
            Outcome::RolledBack
        } else {
            Outcome::Refused
        };
        assert_eq!(outcome, want, "{says}");
        assert_eq!(r.count(&Action::KillSuccessor), 1, "{says}");
        assert_eq!(r.count(&Action::Thaw), 0, "{says}: A never froze");
        assert_eq!(r.count(&Action::Commit), 0, "{says}");
        assert_eq!(r.count(&Action::EndPreCopy), 1, "{says}");
        assert!(r
            .actions
            .iter()
            .all(|a| !matches!(a, Action::Freeze { .. })));
    };
    for (make, says) in warming {
        run("warming", make, says);
    }
    for (make, says) in copying {
        run("pre_copying", make, says);
    }
}

#[test]
fn a_catch_up_that_diverges_thaws_the_old_worker() {
    let mut r = Run::new();
    start(&mut r);
    round(&mut r, 0, 100, 10, 10);
    round(&mut r, 1, 10, 10, 10);
    assert_eq!(r.phase.name(), "freezing");
    r.feed(Event::Frozen(catch_up()));
    assert_eq!(r.phase.name(), "restoring");
    r.feed(Event::Rejected(
        "the state diverged in the pre-copy's catch-up".into(),
    ));
    let (outcome, error) = r.finish().unwrap();
    assert_eq!(outcome, Outcome::RolledBack);
    assert!(error.unwrap().contains("diverged"));
    assert_eq!(r.count(&Action::Thaw), 1);
    assert_eq!(r.count(&Action::KillSuccessor), 1);
    assert_eq!(r.milestones().last(), Some(&M::RolledBack));
}

#[test]
fn parts_of_other_rounds_and_late_parts_change_nothing() {
    let mut r = Run::new();
    start(&mut r);
    // A round not asked for.
    assert_eq!(
        r.feed(Event::PreCopied {
            round: 3,
            bytes: 1,
            took_ns: 1
        }),
        []
    );
    assert_eq!(r.phase.name(), "pre_copying");
    round(&mut r, 0, 100, 10, 10);
    // While B applies round 1, a Warmed for another round.
    r.feed(Event::PreCopied {
        round: 1,
        bytes: 50,
        took_ns: 5,
    });
    assert_eq!(r.phase.name(), "warming");
    assert_eq!(
        r.feed(Event::Warmed {
            round: 0,
            took_ns: 1
        }),
        []
    );
    assert_eq!(r.phase.name(), "warming");
    // After the upgrade: ignored.
    r.feed(Event::Stopping);
    assert!(r.phase.is_idle());
    assert_eq!(r.feed(Event::PreCopyFailed("late".into())), []);
    assert_eq!(
        r.feed(Event::PreCopied {
            round: 1,
            bytes: 1,
            took_ns: 1
        }),
        []
    );
    // A late catch-up is no checkpoint: only a difference.
    assert_eq!(r.feed(Event::Frozen(catch_up())), []);
}
