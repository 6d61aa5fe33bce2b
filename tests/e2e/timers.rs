//! Timers of the worker library (issue #14): a deadline set before a
//! handoff fires once, in whichever worker serves when it is due. The
//! reference worker's `--timer-every` sets `tick-<n>` timers in a chain and
//! reports each one to the exchange; the simulator counts each key, so a
//! tick fired twice or never shows in its audit, not in the bot's word.

use std::collections::BTreeMap;
use std::time::Duration;

use handoff_testkit::{wait_for, Sim};
use nix::sys::signal::Signal;

use crate::{assert_connections_survived, assert_nothing_lost, cluster, HOSTILE_FEED};

/// Each tick key the exchange saw, and how often.
fn ticks(sim: &Sim) -> BTreeMap<u64, u64> {
    let audit = sim.audit().unwrap();
    audit["timers"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.strip_prefix("tick-")?.parse().ok()?, v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until the exchange has seen ticks up to `n` at least.
fn wait_ticks(sim: &Sim, n: u64) -> BTreeMap<u64, u64> {
    wait_for(&format!("tick-{n}"), Duration::from_secs(30), || {
        let t = ticks(sim);
        Ok(t.keys()
            .next_back()
            .is_some_and(|&max| max >= n)
            .then_some(t))
    })
    .unwrap()
}

/// Ticks 0..=max, none missing.
fn assert_no_gap(t: &BTreeMap<u64, u64>) {
    let max = *t.keys().next_back().unwrap();
    let missing: Vec<u64> = (0..=max).filter(|n| !t.contains_key(n)).collect();
    assert!(missing.is_empty(), "ticks never fired: {missing:?}");
}

#[test]
fn a_hundred_handoffs_fire_each_deadline_exactly_once() {
    let c = cluster()
        .sim_args(HOSTILE_FEED)
        // Dense enough that deadlines fall inside handoffs' blackouts.
        .worker_args(["--timer-every", "5"])
        .start()
        .expect("cluster");
    wait_ticks(&c.sim, 5);
    for i in 0..100 {
        let out = c.upgrade(None).unwrap();
        assert!(out.success(), "upgrade {i}: {}", out.stderr);
    }
    let after = *ticks(&c.sim).keys().next_back().unwrap();
    // The chain goes on in the last worker.
    let t = wait_ticks(&c.sim, after + 10);
    assert_no_gap(&t);
    let twice: Vec<_> = t.iter().filter(|(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "ticks fired more than once: {twice:?}");
    eprintln!("{} ticks across 100 handoffs, each once", t.len());
    assert!(t.len() > 100, "fewer ticks than handoffs: {}", t.len());
    assert_nothing_lost(&c.sim, 1);
}

#[test]
fn after_a_crash_the_timers_come_back_from_the_checkpoint() {
    let c = cluster()
        .sim_args(["--rate", "300"])
        .worker_args(["--timer-every", "50", "--checkpoint-ms", "200"])
        .start()
        .expect("cluster");
    wait_ticks(&c.sim, 5);
    let dead = c.signal_worker(Signal::SIGKILL).unwrap();
    crate::crashes::wait_replaced(&c, dead, Duration::from_secs(10));
    let before = *ticks(&c.sim).keys().next_back().unwrap();
    let t = wait_ticks(&c.sim, before + 10);
    // Never lost: the recovered worker had the pending tick from the
    // newest checkpoint. (Ticks fired after that checkpoint by the dead
    // worker may fire again: its state went back to the checkpoint too.)
    assert_no_gap(&t);
    assert_connections_survived(&c, 1);
}
