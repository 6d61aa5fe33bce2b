//! A supervisor killed (`kill -9`, at an exact point by a fault hook) in the
//! middle of its work: during an upgrade's freeze, between the successor's
//! Ready and Exit, between Exit and Go, and while writing a checkpoint. Once
//! a supervisor is back on the state directory exactly one worker serves,
//! the exchange saw nothing lost, duplicated or reordered and no new
//! connection, and with orders none was sent twice.

use std::time::Duration;

use handoff_testkit::{wait_for, Cluster};
use serde_json::Value;

use crate::supervisor_loss::{assert_one_worker, with_orders};
use crate::{assert_nothing_lost, cluster, wait_for_more_acks, HOSTILE_FEED};

const FAULT: &str = "HANDOFF_SUPERVISOR_FAULT";

/// A cluster whose first supervisor dies at `fault` during an upgrade; it
/// is started again (without the fault). Returns the cluster, the status
/// after the restart, the old worker's pid and the successor's (if it was
/// spawned).
fn dies_mid_upgrade(fault: &str, orders: bool) -> (Cluster, Value, u32, Option<u32>) {
    let mut b = cluster().sim_args(HOSTILE_FEED).env(FAULT, fault);
    if orders {
        b = with_orders(b);
    }
    let mut c = b.start().expect("cluster");
    let old = c.worker_pid().unwrap();
    let out = c.upgrade(None).unwrap();
    assert!(
        !out.success(),
        "the upgrade ended though the supervisor died: {}",
        out.stdout
    );
    let status = c.wait_exit().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the supervisor did not die of the fault: {status}"
    );
    let successor = c.worker_processes().into_iter().find(|p| *p != old);
    c.forget_env(FAULT);
    let s = c.restart_supervisor().unwrap();
    (c, s, old, successor)
}

/// Wait until `pid` is the only worker process of the state directory.
fn wait_only_worker(c: &Cluster, pid: u32) {
    wait_for("one worker process", Duration::from_secs(10), || {
        Ok((c.worker_processes() == vec![pid]).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", c.worker_processes()));
    assert_one_worker(c, pid);
}

fn log(c: &Cluster) -> String {
    c.ctl(["log"]).unwrap().stdout
}

#[test]
fn a_supervisor_killed_during_the_freeze_leaves_the_old_worker_serving_and_adopted() {
    let (c, s, old, _) = dies_mid_upgrade("die-in-freeze", false);
    assert_eq!(s["worker"]["pid"].as_u64(), Some(old as u64), "{s}");
    assert_eq!(s["worker"]["adopted"], true, "{s}");
    // The successor never had the sockets: it left when its supervisor did.
    wait_only_worker(&c, old);
    wait_for_more_acks(&c.sim, "acks after the restart");
    assert_nothing_lost(&c.sim, 1);
}

#[test]
fn a_supervisor_killed_between_ready_and_exit_keeps_the_thawed_old_worker() {
    let (c, s, old, successor) = dies_mid_upgrade("die-after-ready", true);
    assert!(successor.is_some(), "no successor was running");
    assert_eq!(s["worker"]["pid"].as_u64(), Some(old as u64), "{s}");
    assert_eq!(s["worker"]["adopted"], true, "{s}");
    // The restored successor was told to exit, untouched connections and all.
    wait_only_worker(&c, old);
    let log = log(&c);
    assert!(log.contains("told to exit"), "{log}");
    wait_for_more_acks(&c.sim, "acks after the restart");
    c.sim.pause().unwrap();
    crate::assert_no_order_twice(&c);
    assert_nothing_lost(&c.sim, 1);
}

#[test]
fn a_supervisor_killed_between_exit_and_go_leaves_the_successor_to_go_live() {
    let (c, s, old, successor) = dies_mid_upgrade("die-after-exit", true);
    let successor = successor.expect("no successor was running");
    assert_eq!(s["worker"]["pid"].as_u64(), Some(successor as u64), "{s}");
    assert_eq!(s["worker"]["adopted"], true, "{s}");
    assert!(
        !handoff_testkit::process_alive(old),
        "the old worker runs on"
    );
    wait_only_worker(&c, successor);
    let log = log(&c);
    assert!(log.contains("told to go"), "{log}");
    wait_for_more_acks(&c.sim, "acks from the successor");
    c.sim.pause().unwrap();
    crate::assert_no_order_twice(&c);
    assert_nothing_lost(&c.sim, 1);
}

#[test]
fn a_supervisor_killed_while_writing_a_checkpoint_loses_neither_file_nor_worker() {
    let mut c = cluster()
        .sim_args(HOSTILE_FEED)
        .env(FAULT, "die-in-checkpoint-write")
        .worker_args(["--checkpoint-ms", "600000"])
        .start()
        .expect("cluster");
    let worker = c.worker_pid().unwrap();
    // The first write dies half-way (the new copy written, not renamed). The
    // checkpoint is stored in memory, and answered, before the file is
    // written.
    let _ = c.ctl(["checkpoint", "--wait"]).unwrap();
    let status = c.wait_exit().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status}"
    );
    assert!(
        c.state_dir().join("checkpoint.bin.tmp").exists(),
        "the fault hit elsewhere"
    );
    assert!(!c.state_dir().join("checkpoint.bin").exists());
    c.forget_env(FAULT);
    let s = c.restart_supervisor().unwrap();
    assert_eq!(s["worker"]["pid"].as_u64(), Some(worker as u64), "{s}");
    assert!(s["worker"]["notice"].is_null(), "{s}");
    // The adopted worker's checkpoint reaches the file this time.
    let summary = c.fresh_summary().unwrap();
    assert!(
        summary["trades_processed"].as_u64().unwrap() > 0,
        "{summary}"
    );
    wait_for("the checkpoint file", Duration::from_secs(10), || {
        Ok(c.state_dir().join("checkpoint.bin").exists().then_some(()))
    })
    .unwrap();
    wait_only_worker(&c, worker);
    assert_nothing_lost(&c.sim, 1);
}
