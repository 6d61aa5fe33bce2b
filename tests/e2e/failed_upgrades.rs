//! A failed upgrade leaves the old worker serving, with nothing lost, and
//! tells the operator why.

use std::path::Path;
use std::time::Duration;

use crate::{assert_nothing_lost, cluster, HOSTILE_FEED};

/// Upgrade to `binary`, expect a refusal or rollback naming `why`, and check
/// that the same worker still serves.
pub(crate) fn expect_failed_upgrade(c: &handoff_testkit::Cluster, binary: &Path, why: &str) {
    let pid = c.worker_pid().unwrap();
    let before = c.status().unwrap()["handoffs"]["failed"].as_u64().unwrap();
    let out = c.upgrade(Some(binary)).unwrap();
    assert!(
        !out.success(),
        "upgrade to {} should fail: {}",
        binary.display(),
        out.stdout
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(why),
        "stderr does not say {why:?}: {}",
        out.stderr
    );
    let s = c.status().unwrap();
    assert_eq!(
        s["worker"]["pid"], pid,
        "another worker serves after a failed upgrade: {s}"
    );
    assert_eq!(s["worker"]["state"], "running", "{s}");
    assert_eq!(s["handoffs"]["failed"], before + 1, "{s}");
    assert!(
        s["handoffs"]["last"]["error"]
            .as_str()
            .unwrap_or("")
            .contains(why),
        "{s}"
    );
    assert_eq!(
        s["connections"].as_array().map(Vec::len),
        Some(c.connections)
    );
}

#[test]
fn bad_successors_leave_the_old_worker_serving_with_nothing_lost() {
    let c = cluster()
        .connections(2)
        .sim_args(HOSTILE_FEED)
        .supervisor_args(["--prepare-timeout", "1s", "--restore-timeout", "1s"])
        .start()
        .expect("cluster");
    let serving_pid = c.worker_pid().unwrap();

    // A binary that exits at once, before it says Hello.
    expect_failed_upgrade(&c, Path::new("/bin/false"), "exited");
    // One that hangs before Hello: refused at the prepare timeout.
    let hang = c
        .worker_wrapper("hang-at-hello", &[("HANDOFF_FAULT", "hang-before-hello")])
        .unwrap();
    expect_failed_upgrade(&c, &hang, "did not say Hello");
    // One that crashes after it received the descriptors and the snapshot:
    // the old worker had frozen and is thawed.
    let crash = c
        .worker_wrapper(
            "crash-after-fds",
            &[("HANDOFF_FAULT", "crash-after-restore")],
        )
        .unwrap();
    expect_failed_upgrade(&c, &crash, "the new worker");
    // One that hangs after the restore: rolled back at the restore timeout.
    let stuck = c
        .worker_wrapper(
            "hang-in-restore",
            &[("HANDOFF_FAULT", "hang-after-restore")],
        )
        .unwrap();
    expect_failed_upgrade(&c, &stuck, "not ready within");
    // One that rejects the state.
    let picky = c
        .worker_wrapper("reject-state", &[("HANDOFF_FAULT", "reject-restore")])
        .unwrap();
    expect_failed_upgrade(&c, &picky, "rejected the state");
    // A binary that is not executable is refused before anything starts.
    let not_exec = c.dir.path().join("not-executable");
    std::fs::write(&not_exec, b"#!/bin/sh\n").unwrap();
    expect_failed_upgrade(&c, &not_exec, "not executable");

    assert_eq!(c.worker_pid().unwrap(), serving_pid);
    // And the old worker still works: a real upgrade goes through afterwards.
    let out = c.upgrade(None).unwrap();
    assert!(out.success(), "{}", out.stderr);
    let s = c.status().unwrap();
    assert_eq!(s["handoffs"]["completed"], 1);
    assert_eq!(s["handoffs"]["failed"], 6);
    assert_nothing_lost(&c.sim, 2);
}

#[test]
fn a_second_upgrade_while_one_runs_is_refused_as_busy() {
    let c = cluster()
        .sim_args(["--rate", "300"])
        .supervisor_args(["--prepare-timeout", "3s"])
        .start()
        .expect("cluster");
    let hang = c
        .worker_wrapper("hang-at-hello", &[("HANDOFF_FAULT", "hang-before-hello")])
        .unwrap();
    // Without --wait: returns once the upgrade has started.
    let first = c
        .ctl(["upgrade".as_ref(), "--binary".as_ref(), hang.as_os_str()])
        .unwrap();
    assert!(first.success(), "{}", first.stderr);
    let second = c.upgrade(None).unwrap();
    assert_eq!(second.code, Some(1), "{}", second.stdout);
    assert!(second.stderr.contains("busy"), "{}", second.stderr);
    let s = c.wait_handoffs_ended(1, Duration::from_secs(20)).unwrap();
    assert_eq!(s["handoffs"]["failed"], 1, "{s}");
    assert_eq!(s["handoffs"]["completed"], 0, "{s}");
    assert_nothing_lost(&c.sim, 1);
}
