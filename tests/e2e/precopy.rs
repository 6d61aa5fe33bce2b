//! Pre-copy handoffs (issue #16): the successor is warmed with the state
//! while the old worker serves, and the freeze carries only what changed
//! since (a journal replayed, or the app's delta), checked by digest.
//! Judged by what the exchange saw (nothing lost, duplicated or
//! reordered, no reconnect), by the milestones each upgrade printed (it did
//! pre-copy), and by the state the last worker holds.

use std::time::Duration;

use handoff_testkit::{Cluster, ClusterBuilder};
use serde_json::Value;

use crate::{assert_every_ping_answered, assert_nothing_lost, bins, HOSTILE_FEED};

const STATE_64_MIB: &str = "67108864";
const A_MILLION: &str = "1000000";

/// `bench-worker` (whose trades move a position and a word of ballast
/// each) with `--precopy mode`, and `args`.
fn precopy_cluster(mode: &str, args: &[&str]) -> ClusterBuilder {
    let mut bins = bins();
    bins.worker = env!("CARGO_BIN_EXE_bench-worker").into();
    ClusterBuilder::new(bins)
        .worker_args(["--precopy", mode])
        .worker_args(args.iter().copied())
}

/// One upgrade that pre-copied: its milestones say so.
fn precopy_upgrade(c: &Cluster, i: usize) -> String {
    let out = c.upgrade(None).unwrap();
    assert!(out.success(), "upgrade {i}: {}{}", out.stdout, out.stderr);
    for want in ["pre_copied", "warmed", "bytes of catch-up", "old_stopped"] {
        assert!(
            out.stdout.contains(want),
            "upgrade {i} did not pre-copy ({want} missing): {}",
            out.stdout
        );
    }
    out.stdout
}

fn summary(c: &Cluster) -> Value {
    handoff_testkit::wait_for("a checkpoint summary", Duration::from_secs(20), || {
        Ok(c.fresh_summary().ok())
    })
    .unwrap()
}

/// A hundred pre-copy upgrades under the adversarial feed, with 64 MiB of
/// ballast and a million positions that every trade changes.
fn hundred_precopy_upgrades(mode: &str, tls: bool) {
    let mut b = precopy_cluster(
        mode,
        &[
            "--ballast-bytes",
            STATE_64_MIB,
            "--positions",
            A_MILLION,
            "--checkpoint-ms",
            "5000",
        ],
    )
    .connections(3)
    .sim_args(HOSTILE_FEED);
    if tls {
        b = b.tls();
    }
    let c = b.start().expect("cluster");
    let mut pids = vec![c.worker_pid().unwrap()];
    for i in 0..100 {
        precopy_upgrade(&c, i);
        let pid = c.worker_pid().unwrap();
        assert!(
            !pids.contains(&pid),
            "upgrade {i} did not replace the worker"
        );
        pids.push(pid);
    }
    let status = c.status().unwrap();
    assert_eq!(status["handoffs"]["completed"], 100, "{status}");
    assert_eq!(status["handoffs"]["failed"], 0, "{status}");
    assert_nothing_lost(&c.sim, 3);
    assert_every_ping_answered(&c.sim);
    // The state came through whole: the last worker's own checkpoint.
    let s = summary(&c);
    assert_eq!(s["positions"], 1_000_000, "{s}");
    assert_eq!(s["ballast_bytes"], 67_108_864, "{s}");
    assert!(s["trades"].as_u64().unwrap() > 0, "{s}");
}

#[test]
fn hundred_replay_precopy_upgrades_of_a_large_state_lose_nothing() {
    hundred_precopy_upgrades("replay", false);
}

#[test]
fn hundred_delta_precopy_upgrades_of_a_large_state_lose_nothing() {
    hundred_precopy_upgrades("delta", false);
}

#[test]
fn hundred_replay_precopy_upgrades_over_wss_lose_nothing() {
    hundred_precopy_upgrades("replay", true);
}

#[test]
fn hundred_delta_precopy_upgrades_over_wss_lose_nothing() {
    hundred_precopy_upgrades("delta", true);
}

/// A successor whose catch-up does not reproduce the state (`--diverge`)
/// is refused once its digest differs, after the freeze: the old worker is
/// thawed and serves on, and nothing is lost; the next good build goes
/// through.
#[test]
fn a_successor_whose_catch_up_diverges_is_refused_and_the_old_worker_thawed() {
    for mode in ["replay", "delta"] {
        let c = precopy_cluster(
            mode,
            &["--ballast-bytes", "1048576", "--positions", "10000"],
        )
        .connections(2)
        .sim_args(HOSTILE_FEED)
        .start()
        .expect("cluster");
        let before = c.worker_pid().unwrap();
        let diverging = c.worker_wrapper_more("diverging", &["--diverge"]).unwrap();
        let out = c.upgrade(Some(&diverging)).unwrap();
        assert!(!out.success(), "{mode}: {}{}", out.stdout, out.stderr);
        let said = format!("{}{}", out.stdout, out.stderr);
        assert!(said.contains("warmed"), "{mode}: pre-copied first: {said}");
        assert!(said.contains("diverged"), "{mode}: {said}");
        assert!(said.contains("rolled_back"), "{mode}: {said}");
        let s = c.status().unwrap();
        assert_eq!(s["worker"]["pid"], before, "{mode}: A serves on: {s}");
        assert_eq!(s["handoffs"]["completed"], 0, "{s}");
        // The old worker was thawed and consumes: a good build follows.
        precopy_upgrade(&c, 1);
        assert_nothing_lost(&c.sim, 2);
    }
}
