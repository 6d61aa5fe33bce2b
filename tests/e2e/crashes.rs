//! A worker crash or hang never closes a held connection: the supervisor
//! starts a new worker in recovery mode on the same sockets.

use std::time::Duration;

use handoff_testkit::{wait_for, Cluster};

use crate::assert_connections_survived;
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::cluster;

/// Wait for a worker other than `dead` to serve, and return the status.
pub(crate) fn wait_replaced(c: &Cluster, dead: u32, within: Duration) -> Value {
    wait_for("a new worker to serve", within, || {
        let s = c.status()?;
        let serving =
            s["worker"]["state"] == "running" && s["worker"]["pid"].as_u64() != Some(dead as u64);
        Ok(serving.then_some(s))
    })
    .expect("replacement worker")
}

#[test]
fn sigkill_of_the_worker_keeps_every_connection_open() {
    // Fragmented messages with pings between fragments, but no frame too big
    // to take out of the kernel whole: a crash then always leaves the kernel
    // on a frame boundary. (A frame above the whole-frame limit that a crash
    // tears is detected, and only that connection is re-opened: see the
    // stream's own crash test.)
    let c = cluster()
        .connections(3)
        .sim_args(crate::CRASH_SAFE_FEED)
        .start()
        .expect("cluster");
    let dead = c.signal_worker(Signal::SIGKILL).unwrap();
    let s = wait_replaced(&c, dead, Duration::from_secs(2));
    assert_eq!(s["worker"]["restarts"], 1, "{s}");
    assert_eq!(s["connections"].as_array().map(Vec::len), Some(3), "{s}");
    assert_connections_survived(&c, 3);
}

#[test]
fn a_hung_worker_is_killed_and_replaced() {
    let c = cluster()
        .sim_args(["--rate", "300"])
        .supervisor_args(["--heartbeat-timeout", "2s"])
        .start()
        .expect("cluster");
    // SIGSTOP: the process lives but its event loop no longer runs.
    let hung = c.signal_worker(Signal::SIGSTOP).unwrap();
    let s = wait_replaced(&c, hung, Duration::from_secs(10));
    assert_eq!(s["worker"]["restarts"], 1, "{s}");
    assert!(
        !crate::upgrades::process_alive(hung),
        "the hung worker was not killed"
    );
    assert_connections_survived(&c, 1);
}

#[test]
fn repeated_crashes_keep_the_connections_and_the_state() {
    let c = cluster()
        .sim_args(["--rate", "400"])
        .start()
        .expect("cluster");
    // A state far from cold (a cold worker would count from 0 again).
    let trades = |c: &handoff_testkit::Cluster| {
        c.fresh_summary().unwrap()["trades_processed"]
            .as_u64()
            .unwrap()
    };
    let first = wait_for(
        "1000 trades in a checkpoint",
        Duration::from_secs(20),
        || {
            let n = trades(&c);
            Ok((n >= 1000).then_some(n))
        },
    )
    .unwrap();
    for i in 1..=3u64 {
        let dead = c.signal_worker(Signal::SIGKILL).unwrap();
        let s = wait_replaced(&c, dead, Duration::from_secs(10));
        assert_eq!(s["worker"]["restarts"], i, "{s}");
    }
    // The state came back from checkpoints, each at least as new as
    // `first`: it counts on from there (it may not have consumed anything
    // new yet when the checkpoint is taken), and then it counts on.
    let after = trades(&c);
    assert!(after >= first, "state restarted cold: {first} then {after}");
    wait_for(
        "the recovered worker counting on",
        Duration::from_secs(20),
        || Ok((trades(&c) > first).then_some(())),
    )
    .unwrap();
    assert_connections_survived(&c, 1);
}

#[test]
fn a_restarted_supervisor_resumes_from_its_checkpoint_file() {
    let mut c = cluster()
        .sim_args(["--rate", "400"])
        .start()
        .expect("cluster");
    let before = c.fresh_summary().unwrap()["trades_processed"]
        .as_u64()
        .unwrap();
    assert!(before > 0);
    assert!(c.stop().unwrap().success());
    assert!(
        c.state_dir().join("checkpoint.bin").exists(),
        "no checkpoint file written"
    );
    let s = c.restart_supervisor().unwrap();
    assert_eq!(s["checkpoint"]["schema"], 1, "{s}");
    let after = c.fresh_summary().unwrap()["trades_processed"]
        .as_u64()
        .unwrap();
    assert!(
        after >= before,
        "state restarted cold: {before} then {after}"
    );
}

#[test]
fn a_corrupt_checkpoint_file_is_reported_and_never_trusted() {
    let mut c = cluster()
        .sim_args(["--rate", "400"])
        .start()
        .expect("cluster");
    c.fresh_summary().unwrap();
    assert!(c.stop().unwrap().success());
    let file = c.state_dir().join("checkpoint.bin");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    let s = c.restart_supervisor().unwrap();
    let notice = s["worker"]["notice"].as_str().unwrap_or("");
    assert!(notice.contains("corrupt"), "{s}");
    assert!(c.state_dir().join("checkpoint.bin.corrupt").exists());
    // Started fresh, and serving.
    let fresh = c.fresh_summary().unwrap();
    assert!(fresh["trades_processed"].as_u64().is_some(), "{fresh}");
}

#[test]
fn a_worker_writing_garbage_on_its_channel_is_replaced() {
    // The first worker (from a wrapper) writes junk on its supervisor socket
    // once it serves. The supervisor cannot talk to it any more: it kills it
    // and recovers on the held connection; later workers run the clean build
    // (the junk-writing one is the one that died).
    let c = cluster()
        .sim_args(["--rate", "300"])
        .copy_worker()
        .start()
        .expect("cluster");
    let junk = c
        .worker_wrapper("garbage", &[("HANDOFF_FAULT", "garbage-on-channel")])
        .unwrap();
    let out = c.upgrade(Some(&junk)).unwrap();
    assert!(out.success(), "{}", out.stderr);
    let bad = c.status().unwrap()["handoffs"]["last"]["to_pid"]
        .as_u64()
        .unwrap();
    let s = wait_for(
        "the junk writer to be replaced",
        Duration::from_secs(10),
        || {
            let s = c.status()?;
            let ok = s["worker"]["state"] == "running" && s["worker"]["pid"].as_u64() != Some(bad);
            Ok((ok && s["worker"]["restarts"] == 1).then_some(s))
        },
    )
    .unwrap();
    assert!(!crate::upgrades::process_alive(bad as u32), "{s}");
    assert_connections_survived(&c, 1);
}
