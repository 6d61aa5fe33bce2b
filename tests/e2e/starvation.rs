//! A worker that always has a message ready still heartbeats and
//! checkpoints (the regression fixed in 57e7701: the event loop polled the
//! connections before its timers, so under a flood the supervisor heard
//! nothing, took the busy worker for hung and killed it every
//! `--heartbeat-timeout`, losing what it had read).

use std::time::Duration;

use handoff_testkit::wait_for;

use crate::{assert_nothing_lost, cluster};

/// Feed connections of the flood.
const FEEDS: usize = 16;
/// Trades per stream: the worker (a debug build under `cargo test`) takes
/// several heartbeat timeouts to work through 16 × 2 × this many.
const TRADES: u64 = 4000;

#[test]
fn a_flooded_worker_keeps_heartbeating_and_is_never_killed() {
    // `--rate 1000000`: the simulator writes far faster than the worker
    // reads, so from the first trade on a message is always ready.
    let c = cluster()
        .connections(FEEDS)
        .sim_args(["--rate", "1000000", "--trades", &TRADES.to_string()])
        .supervisor_args(["--heartbeat-timeout", "2s"])
        .worker_args(["--checkpoint-ms", "100"])
        .start()
        .expect("cluster");
    let pid = c.worker_pid().expect("pid");
    let total = FEEDS as u64 * 2 * TRADES;

    // The proof that the timers run while messages are waiting: a checkpoint
    // taken in the middle of the flood reaches the supervisor. Before the fix
    // none came until the feed ran dry (or the worker was killed).
    let mid = wait_for(
        "a checkpoint taken during the flood",
        Duration::from_secs(60),
        || {
            let s = c.status()?;
            let done = s["checkpoint"]["summary"]["trades_processed"].as_u64();
            match done {
                Some(n) if n > 0 && n < total => Ok(Some(n)),
                Some(n) if n >= total => Err(handoff_testkit::TestkitError::Protocol(format!(
                    "no checkpoint arrived while the worker was flooded \
                     (the first one already counts all {n} trades): {s}"
                ))),
                _ => Ok(None),
            }
        },
    )
    .expect("mid-flood checkpoint");
    eprintln!("checkpoint mid-flood: {mid} of {total} trades");

    let audit = assert_nothing_lost(&c.sim, FEEDS);
    assert_eq!(audit["totals"]["sent"].as_u64(), Some(total), "{audit}");
    let s = c.status().expect("status");
    assert_eq!(s["worker"]["restarts"], 0, "the worker was replaced: {s}");
    assert_eq!(
        s["worker"]["pid"].as_u64(),
        Some(pid as u64),
        "another process serves: {s}"
    );
}
