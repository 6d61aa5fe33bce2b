//! Planned upgrades under load lose, duplicate and reorder nothing.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::{assert_every_ping_answered, assert_nothing_lost, cluster, HOSTILE_FEED};

#[test]
fn hundred_upgrades_under_load_lose_nothing() {
    let c = cluster()
        .connections(3)
        .sim_args(HOSTILE_FEED)
        .start()
        .expect("cluster");
    let pids = crate::upgrade_n(&c, 100);
    let status = c.status().unwrap();
    assert_eq!(status["handoffs"]["completed"], 100, "{status}");
    assert_eq!(status["handoffs"]["failed"], 0, "{status}");
    assert_eq!(status["connections"].as_array().map(Vec::len), Some(3));
    for old in &pids[..pids.len() - 1] {
        assert!(!process_alive(*old), "old worker {old} still running");
    }
    assert_nothing_lost(&c.sim, 3);
    // Every connection saw traffic across the handoffs, fragmented and pinged.
    assert_every_ping_answered(&c.sim);
}

#[test]
fn sigusr2_upgrades_to_the_file_now_at_the_worker_path() {
    let c = cluster()
        .copy_worker()
        .sim_args(["--rate", "300"])
        .start()
        .expect("cluster");
    let before = c.status().unwrap();
    let v2 = c
        .worker_wrapper("worker-v2", &[("HANDOFF_BUILD_ID", "v2-from-ci")])
        .unwrap();
    c.replace_worker_with(&v2).unwrap();
    c.signal(Signal::SIGUSR2).unwrap();
    let after = c.wait_handoffs_ended(1, Duration::from_secs(30)).unwrap();
    assert_eq!(after["handoffs"]["completed"], 1, "{after}");
    assert_eq!(after["handoffs"]["last"]["trigger"], "SIGUSR2");
    assert_eq!(after["worker"]["build_id"], "v2-from-ci", "{after}");
    assert_ne!(after["worker"]["pid"], before["worker"]["pid"]);
    assert_nothing_lost(&c.sim, 1);
}

#[test]
fn status_json_reports_the_handoff_and_its_blackout() {
    let c = cluster()
        .sim_args(["--rate", "500"])
        .start()
        .expect("cluster");
    let out = c.upgrade(None).unwrap();
    assert!(out.success(), "{}", out.stderr);
    // The blackout ends at the new worker's first consumed message, which the
    // worker reports right after it: wait for that report.
    let s = handoff_testkit::wait_for("the blackout figure", Duration::from_secs(10), || {
        let s = c.status()?;
        Ok(s["handoffs"]["last"]["blackout_us"].is_u64().then_some(s))
    })
    .unwrap();
    assert!(s["worker"]["pid"].is_u64());
    assert_eq!(s["handoffs"]["completed"], 1);
    assert_eq!(s["handoffs"]["failed"], 0);
    assert_eq!(s["handoffs"]["last"]["outcome"], "completed");
    assert!(s["checkpoint"]["bytes"].as_u64().unwrap() > 0, "{s}");
    assert!(
        s["checkpoint"]["summary"]["trades_processed"]
            .as_u64()
            .unwrap()
            > 0,
        "{s}"
    );
}

#[test]
fn graceful_stop_closes_cleanly() {
    let mut c = cluster()
        .sim_args(["--rate", "200"])
        .start()
        .expect("cluster");
    let pid = c.worker_pid().unwrap();
    let status = c.stop().unwrap();
    assert!(status.success(), "supervisor exit: {status}");
    assert!(!process_alive(pid), "worker {pid} outlived a graceful stop");
    let audit = c.sim.audit().unwrap();
    assert_eq!(
        audit["connections"][0]["closed_by"], "close_frame",
        "{audit}"
    );
}

pub use handoff_testkit::process_alive;
