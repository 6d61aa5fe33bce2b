//! Every way an upgrade fails before the commit, driven without
//! processes: each failure in each phase (the successor killed, a frozen
//! old worker thawed before the end is told), each phase's own timeout,
//! and a successor lost or failing.

use super::*;

/// Each way of failing before the commit: the phase it happens in, the
/// outcome, the words of the error, and whether the old worker is thawed.
struct Failure {
    at: &'static str,
    event: fn() -> Event,
    outcome: Outcome,
    says: &'static str,
    thaws: bool,
}

fn check(f: &Failure) {
    let mut r = Run::new();
    reach(&mut r, f.at);
    let before = r.phases.clone();
    r.feed((f.event)());
    let mut want = before.clone();
    want.push("idle");
    assert_eq!(r.phases, want, "{}: {:?}", f.says, r.actions);
    let (outcome, error) = r.finish().unwrap_or_else(|| panic!("{}: no end", f.says));
    assert_eq!(outcome, f.outcome, "{}", f.says);
    let error = error.unwrap();
    assert!(error.contains(f.says), "{}: {error}", f.says);
    assert_eq!(r.count(&Action::KillSuccessor), 1, "{}", f.says);
    assert_eq!(r.count(&Action::Thaw), usize::from(f.thaws), "{}", f.says);
    assert_eq!(r.count(&Action::Commit), 0, "{}", f.says);
    let last = *r.milestones().last().unwrap();
    let want = if f.outcome == Outcome::Refused {
        M::Failed
    } else {
        M::RolledBack
    };
    assert_eq!(last, want, "{}", f.says);
    // Thaw comes before the end is told: A serves again when clients hear.
    if f.thaws {
        let thaw = r.actions.iter().position(|a| *a == Action::Thaw).unwrap();
        let end = r
            .actions
            .iter()
            .position(|a| matches!(a, Action::Finish { .. }))
            .unwrap();
        assert!(thaw < end);
    }
}

#[test]
fn every_failure_before_the_commit_kills_the_successor_and_thaws_a_frozen_old_worker() {
    let all = [
        // Preparing: nothing touched A; refused.
        Failure {
            at: "preparing",
            event: || Event::SuccessorExited("exit status: 3".into()),
            outcome: Outcome::Refused,
            says: "the new worker exited (exit status: 3)",
            thaws: false,
        },
        Failure {
            at: "preparing",
            event: || Event::Rejected("bad".into()),
            outcome: Outcome::Refused,
            says: "rejected the state: bad",
            thaws: false,
        },
        Failure {
            at: "preparing",
            event: || Event::OldExited("signal: 9".into()),
            outcome: Outcome::RolledBack,
            says: "the old worker exited during the handoff (signal: 9)",
            thaws: false,
        },
        Failure {
            at: "preparing",
            event: || Event::Stopping,
            outcome: Outcome::RolledBack,
            says: "the supervisor is stopping",
            thaws: false,
        },
        Failure {
            at: "preparing",
            event: || Event::Hello {
                current: Some(hello(1, &[1])),
                successor: hello(3, &[3]),
            },
            outcome: Outcome::Refused,
            says: "incompatible state",
            thaws: false,
        },
        Failure {
            at: "preparing",
            event: || Event::Hello {
                current: None,
                successor: hello(1, &[1]),
            },
            outcome: Outcome::Refused,
            says: "never said Hello",
            thaws: false,
        },
        // Freezing: A was asked to freeze; thawed.
        Failure {
            at: "freezing",
            event: || Event::FreezeFailed("disk full".into()),
            outcome: Outcome::RolledBack,
            says: "could not freeze: disk full",
            thaws: true,
        },
        Failure {
            at: "freezing",
            event: || Event::SuccessorExited("signal: 6".into()),
            outcome: Outcome::RolledBack,
            says: "the new worker exited (signal: 6)",
            thaws: true,
        },
        Failure {
            at: "freezing",
            event: || Event::OldExited("signal: 9".into()),
            outcome: Outcome::RolledBack,
            says: "the old worker exited",
            thaws: false,
        },
        Failure {
            at: "freezing",
            event: || Event::Stopping,
            outcome: Outcome::RolledBack,
            says: "stopping",
            thaws: true,
        },
        // Restoring: thawed.
        Failure {
            at: "restoring",
            event: || Event::Rejected("schema 9".into()),
            outcome: Outcome::RolledBack,
            says: "rejected the state: schema 9",
            thaws: true,
        },
        Failure {
            at: "restoring",
            event: || Event::RestoreFailed("EMFILE".into()),
            outcome: Outcome::RolledBack,
            says: "cannot hand the held sockets over: EMFILE",
            thaws: true,
        },
        Failure {
            at: "restoring",
            event: || Event::SuccessorExited("signal: 9".into()),
            outcome: Outcome::RolledBack,
            says: "the new worker exited (signal: 9)",
            thaws: true,
        },
        Failure {
            at: "restoring",
            event: || Event::OldExited("signal: 9".into()),
            outcome: Outcome::RolledBack,
            says: "the old worker exited",
            thaws: false,
        },
        Failure {
            at: "restoring",
            event: || Event::Stopping,
            outcome: Outcome::RolledBack,
            says: "stopping",
            thaws: true,
        },
    ];
    for f in &all {
        check(f);
    }
}

#[test]
fn each_phase_before_the_commit_times_out_with_its_own_words() {
    for (at, outcome, says, thaws) in [
        (
            "preparing",
            Outcome::Refused,
            "did not say Hello within",
            false,
        ),
        (
            "freezing",
            Outcome::RolledBack,
            "did not freeze within",
            true,
        ),
        (
            "restoring",
            Outcome::RolledBack,
            "was not ready within",
            true,
        ),
    ] {
        let mut r = Run::new();
        reach(&mut r, at);
        let limit = match at {
            "preparing" => r.t.prepare,
            "freezing" => r.t.freeze,
            _ => r.t.restore,
        };
        assert_eq!(r.phase.deadline(), Some(r.now + limit), "{at}");
        r.expire();
        assert!(r.phase.is_idle(), "{at}");
        let (o, e) = r.finish().unwrap();
        assert_eq!(o, outcome, "{at}");
        assert!(e.unwrap().contains(says), "{at}");
        assert_eq!(r.count(&Action::Thaw), usize::from(thaws), "{at}");
        assert_eq!(r.count(&Action::KillSuccessor), 1, "{at}");
    }
}

#[test]
fn a_successor_that_loses_its_channel_is_given_up_with_its_exit_status_or_the_loss() {
    for at in ["preparing", "freezing", "restoring"] {
        // Its exit status comes within the grace: that is the reason given.
        let mut r = Run::new();
        reach(&mut r, at);
        let lost_at = r.now;
        assert_eq!(
            r.feed(Event::SuccessorChannelClosed(Some("EOF".into()))),
            []
        );
        assert_eq!(r.phase.name(), at, "waits for the exit status");
        assert_eq!(r.phase.deadline(), Some(lost_at + EXIT_STATUS_GRACE));
        r.feed(Event::SuccessorExited("exit status: 1".into()));
        let e = r.finish().unwrap().1.unwrap();
        assert!(e.contains("exit status: 1"), "{at}: {e}");

        // It does not: the loss is the reason.
        let mut r = Run::new();
        reach(&mut r, at);
        r.feed(Event::SuccessorChannelClosed(Some("EOF".into())));
        r.expire();
        let e = r.finish().unwrap().1.unwrap();
        assert!(e.contains("closed its channel: EOF"), "{at}: {e}");
    }
}

#[test]
fn a_successor_that_says_it_failed_is_given_up_at_the_deadline_with_its_words() {
    let mut r = Run::new();
    reach(&mut r, "restoring");
    let deadline = r.phase.deadline();
    assert_eq!(r.feed(Event::SuccessorFailed("no route".into())), []);
    assert_eq!(
        r.phase.deadline(),
        deadline,
        "its exit may still come first"
    );
    r.expire();
    let e = r.finish().unwrap().1.unwrap();
    assert!(e.contains("the new worker failed: no route"), "{e}");
}
