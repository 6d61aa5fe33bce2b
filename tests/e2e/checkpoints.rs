//! Periodic checkpoints are written by a copy-on-write child of the worker
//! (`handoff_protocol::image`): the serving loop stops only for a `fork`.
//! What they hold is what a crash recovers, and a worker whose children
//! fail checkpoints in its loop instead.

use std::time::Duration;

use handoff_testkit::{parent_of, wait_for, Cluster};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::crashes::wait_replaced;
use crate::{assert_connections_survived, cluster};

fn trades(summary: &Value) -> u64 {
    summary["trades_processed"].as_u64().unwrap_or(0)
}

/// A fresh checkpoint, which `status` says was written `off_loop` or not;
/// then SIGKILL: the recovered worker goes on from that state, not from
/// zero, on the same connections.
fn checkpoint_then_crash(c: &Cluster, off_loop: bool, conns: usize) {
    let before = c.fresh_summary().unwrap();
    let s = c.status().unwrap();
    assert_eq!(s["checkpoint"]["off_loop"], off_loop, "{s}");
    assert!(trades(&before) > 0, "{s}");
    let dead = c.signal_worker(Signal::SIGKILL).unwrap();
    wait_replaced(c, dead, Duration::from_secs(10));
    let after = c.fresh_summary().unwrap();
    assert!(
        trades(&after) >= trades(&before),
        "state restarted cold: {before} then {after}"
    );
    assert_eq!(c.status().unwrap()["checkpoint"]["off_loop"], off_loop);
    assert_connections_survived(c, conns);
}

#[test]
fn checkpoints_are_written_by_a_child_and_a_crash_recovers_from_one() {
    let c = cluster()
        .connections(2)
        .sim_args(crate::CRASH_SAFE_FEED)
        .start()
        .expect("cluster");
    checkpoint_then_crash(&c, true, 2);
    // No writer outlives its worker (they die with it): every one alive is
    // a child of the one worker, which alone counts as a worker.
    wait_for("no orphaned image writer", Duration::from_secs(10), || {
        let workers = c.worker_processes();
        let orphans = c
            .image_writers()
            .into_iter()
            .filter(|w| !parent_of(*w).is_some_and(|p| workers.contains(&p)))
            .count();
        Ok((workers.len() == 1 && orphans == 0).then_some(()))
    })
    .unwrap();
}

#[test]
fn a_worker_whose_image_writers_fail_checkpoints_in_its_loop() {
    let c = cluster()
        .env("HANDOFF_FAULT", "image-fails")
        .sim_args(crate::CRASH_SAFE_FEED)
        .start()
        .expect("cluster");
    // The first image fails; the checkpoint asked for comes from the loop.
    checkpoint_then_crash(&c, false, 1);
}
