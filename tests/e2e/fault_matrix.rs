//! Every failure point of an upgrade: which worker ends up serving, that the
//! exchange saw no close, and what was lost (nothing before commit; after
//! commit, nothing either when the new worker dies before consuming, since
//! the supervisor still holds the frozen state and its leftovers).

use std::process::{Command, Stdio};
use std::time::Duration;

use handoff_testkit::{wait_for, Cluster};
use serde_json::Value;

use crate::{assert_nothing_lost, cluster};

fn busy_cluster() -> handoff_testkit::ClusterBuilder {
    cluster()
        .connections(2)
        .sim_args([
            "--rate",
            "500",
            "--fragment-every",
            "5",
            "--ping-every",
            "9",
        ])
        .supervisor_args(["--heartbeat-timeout", "3s", "--freeze-timeout", "2s"])
}

fn wait_serving_other_than(c: &Cluster, pids: &[u64]) -> Value {
    wait_for("a worker to serve", Duration::from_secs(10), || {
        let s = c.status()?;
        let pid = s["worker"]["pid"].as_u64().unwrap_or(0);
        let ok = s["worker"]["state"] == "running"
            && !pids.contains(&pid)
            && s["handoffs"]["in_progress"].is_null();
        Ok(ok.then_some(s))
    })
    .expect("a serving worker")
}

/// The successor dies at `fault`, after the commit: the supervisor recovers
/// from the frozen state with the frozen worker's leftovers (the successor
/// consumed nothing), on the previous build (it died on probation).
fn successor_dies_after_commit(fault: &str) {
    let c = busy_cluster().start().expect("cluster");
    let old = c.worker_pid().unwrap() as u64;
    let bad = c
        .worker_wrapper(fault, &[("HANDOFF_FAULT", fault)])
        .unwrap();
    let out = c.upgrade(Some(&bad)).unwrap();
    // The supervisor committed on Ready; the old worker was retired.
    assert!(out.success(), "{}", out.stderr);
    let new = c.status().unwrap()["handoffs"]["last"]["to_pid"]
        .as_u64()
        .unwrap();
    let s = wait_serving_other_than(&c, &[old, new]);
    assert_eq!(s["worker"]["restarts"], 1, "{s}");
    assert_nothing_lost(&c.sim, 2);
}

#[test]
fn successor_dies_after_ready_before_go_nothing_lost() {
    successor_dies_after_commit("crash-after-ready");
}

#[test]
fn successor_dies_right_after_go_nothing_lost() {
    successor_dies_after_commit("crash-after-go");
}

#[test]
fn old_worker_crashes_during_freeze_successor_killed_and_state_recovered() {
    let c = busy_cluster().copy_worker().start().expect("cluster");
    // Make the running build crash when asked to freeze: start from a wrapper.
    let fragile = c
        .worker_wrapper("crash-in-freeze", &[("HANDOFF_FAULT", "crash-in-freeze")])
        .unwrap();
    c.replace_worker_with(&fragile).unwrap();
    // Roll the fragile build in (its predecessor freezes fine).
    assert!(c.upgrade(None).unwrap().success());
    let fragile_pid = c.worker_pid().unwrap() as u64;
    let good: std::path::PathBuf = env!("CARGO_BIN_EXE_trading-worker").into();
    let out = c.upgrade(Some(&good)).unwrap();
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        out.stderr.contains("exited during the handoff"),
        "{}",
        out.stderr
    );
    let s = wait_serving_other_than(&c, &[fragile_pid]);
    assert_eq!(s["worker"]["restarts"], 1, "{s}");
    assert_eq!(s["handoffs"]["last"]["outcome"], "rolled_back", "{s}");
    // Recovery after a crash: the exchange saw no close and no malformed or
    // duplicated ack; ack gaps would be the loss recovery reports.
    crate::assert_connections_survived(&c, 2);
}

#[test]
fn old_worker_hangs_during_freeze_is_replaced() {
    // The freeze timeout (1 s) fires before the hang is caught by the
    // heartbeat check (3 s): the upgrade is rolled back first, then the hung
    // worker is killed and replaced.
    let c = cluster()
        .connections(2)
        .sim_args([
            "--rate",
            "500",
            "--fragment-every",
            "5",
            "--ping-every",
            "9",
        ])
        .supervisor_args(["--heartbeat-timeout", "4s", "--freeze-timeout", "1s"])
        .copy_worker()
        .start()
        .expect("cluster");
    let stuck = c
        .worker_wrapper("hang-in-freeze", &[("HANDOFF_FAULT", "hang-in-freeze")])
        .unwrap();
    c.replace_worker_with(&stuck).unwrap();
    assert!(c.upgrade(None).unwrap().success());
    let stuck_pid = c.worker_pid().unwrap() as u64;
    let good: std::path::PathBuf = env!("CARGO_BIN_EXE_trading-worker").into();
    let out = c.upgrade(Some(&good)).unwrap();
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(out.stderr.contains("did not freeze"), "{}", out.stderr);
    // Thawing a hung worker does nothing; its missed heartbeats get it killed.
    let s = wait_serving_other_than(&c, &[stuck_pid]);
    assert_eq!(s["worker"]["restarts"], 1, "{s}");
    crate::assert_connections_survived(&c, 2);
}

#[test]
fn control_client_disconnecting_mid_upgrade_changes_nothing() {
    let c = busy_cluster()
        .supervisor_args(["--prepare-timeout", "2s"])
        .start()
        .expect("cluster");
    let pid = c.worker_pid().unwrap();
    let slow = c
        .worker_wrapper("hang-at-hello", &[("HANDOFF_FAULT", "hang-before-hello")])
        .unwrap();
    let mut client = Command::new(&c.bins.supervisorctl)
        .arg("--socket")
        .arg(&c.socket)
        .args(["upgrade", "--wait", "--binary"])
        .arg(&slow)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the upgrade to start", Duration::from_secs(10), || {
        Ok((!c.status()?["handoffs"]["in_progress"].is_null()).then_some(()))
    })
    .unwrap();
    client.kill().unwrap();
    let _ = client.wait();
    let s = c.wait_handoffs_ended(1, Duration::from_secs(20)).unwrap();
    assert_eq!(s["handoffs"]["failed"], 1, "{s}");
    assert_eq!(s["worker"]["pid"], pid, "{s}");
    // And the supervisor still takes upgrades.
    assert!(c.upgrade(None).unwrap().success());
    assert_nothing_lost(&c.sim, 2);
}
