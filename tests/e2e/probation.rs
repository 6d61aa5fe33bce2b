//! After an upgrade the new build is on probation: if it dies, the previous
//! build takes over with the newest state, in a schema it reads.

use std::path::PathBuf;
use std::time::Duration;

use handoff_testkit::wait_for;
use nix::sys::signal::Signal;

use crate::cluster;

fn v1() -> PathBuf {
    env!("CARGO_BIN_EXE_trading-worker").into()
}

fn v2() -> PathBuf {
    env!("CARGO_BIN_EXE_trading-worker-v2").into()
}

#[test]
fn a_new_build_dying_on_probation_hands_back_to_the_previous_build_with_its_state() {
    let c = cluster()
        .sim_args(["--rate", "400"])
        .supervisor_args(["--probation", "60s"])
        .start()
        .expect("cluster");
    let out = c.upgrade(Some(&v2())).unwrap();
    assert!(out.success(), "{}", out.stderr);
    // On probation, the schema-2 build checkpoints in schema 1, which the
    // previous build reads.
    let before = wait_for(
        "a schema-1 checkpoint from the new build",
        Duration::from_secs(10),
        || {
            let s = c.fresh_summary()?;
            let st = c.status()?;
            let ok = st["checkpoint"]["schema"] == 1 && st["worker"]["probation_ms_left"].is_u64();
            Ok(ok.then_some(s))
        },
    )
    .unwrap();
    let dead = c.signal_worker(Signal::SIGKILL).unwrap();
    let s = wait_for(
        "the previous build to serve",
        Duration::from_secs(10),
        || {
            let s = c.status()?;
            let ok = s["worker"]["state"] == "running"
                && s["worker"]["pid"].as_u64() != Some(dead as u64);
            Ok(ok.then_some(s))
        },
    )
    .unwrap();
    assert_eq!(s["worker"]["binary"], v1().display().to_string(), "{s}");
    assert!(
        s["worker"]["notice"]
            .as_str()
            .unwrap_or("")
            .contains("died on probation"),
        "{s}"
    );
    let after = c.fresh_summary().unwrap();
    assert_eq!(after["schema"], 1, "{after}");
    assert!(
        after["trades_processed"].as_u64() >= before["trades_processed"].as_u64(),
        "state went back: {before} then {after}"
    );
    // The notice describes the build that serves; a completed upgrade ends
    // it (`log` keeps it).
    assert!(c.upgrade(Some(&v2())).unwrap().success());
    let s = c.status().unwrap();
    assert!(s["worker"]["notice"].is_null(), "a stale notice: {s}");
    assert!(c.ctl(["log"]).unwrap().stdout.contains("died on probation"));
    crate::assert_connections_survived(&c, 1);
}

#[test]
fn rollback_goes_to_the_build_that_ran_before_by_content() {
    let c = cluster()
        .sim_args(["--rate", "400"])
        .start()
        .expect("cluster");
    assert!(c.upgrade(Some(&v2())).unwrap().success());
    // The same content again: a handoff, but no new build.
    let out = c
        .ctl([
            "upgrade".as_ref(),
            "--wait".as_ref(),
            "--binary".as_ref(),
            v2().as_os_str(),
        ])
        .unwrap();
    assert!(out.success(), "{}", out.stderr);
    assert!(out.stdout.contains("same_build"), "{}", out.stdout);
    assert!(
        c.status().unwrap()["worker"]["probation_ms_left"].is_null(),
        "the same build put on probation"
    );
    let out = c.ctl(["rollback", "--wait"]).unwrap();
    assert!(out.success(), "{}", out.stderr);
    let s = c.status().unwrap();
    assert_eq!(s["worker"]["binary"], v1().display().to_string(), "{s}");
    assert_eq!(c.fresh_summary().unwrap()["schema"], 1);
    crate::assert_nothing_lost(&c.sim, 1);
}

#[test]
fn rollback_hands_over_to_the_previous_build() {
    let c = cluster()
        .sim_args(["--rate", "400"])
        .start()
        .expect("cluster");
    let refused = c.ctl(["rollback", "--wait"]).unwrap();
    assert_eq!(refused.code, Some(1));
    assert!(
        refused.stderr.contains("no previous build"),
        "{}",
        refused.stderr
    );
    assert!(c.upgrade(Some(&v2())).unwrap().success());
    assert_eq!(c.fresh_summary().unwrap()["schema"], 2);
    let out = c.ctl(["rollback", "--wait"]).unwrap();
    assert!(out.success(), "{}", out.stderr);
    let s = c.status().unwrap();
    assert_eq!(s["worker"]["binary"], v1().display().to_string(), "{s}");
    assert_eq!(s["handoffs"]["last"]["trigger"], "rollback");
    assert_eq!(c.fresh_summary().unwrap()["schema"], 1);
    crate::assert_nothing_lost(&c.sim, 1);
}

#[test]
fn rollback_after_a_deploy_over_the_same_path_runs_the_old_build() {
    // CI replaces the file at --worker and signals: the previous build's file
    // is gone from that path, but the supervisor kept its own copy.
    let c = cluster()
        .copy_worker()
        .sim_args(["--rate", "400"])
        .start()
        .expect("cluster");
    let old = c.status().unwrap()["worker"]["sha256"].clone();
    let v2 = c
        .worker_wrapper("worker-v2", &[("HANDOFF_BUILD_ID", "v2-same-path")])
        .unwrap();
    c.replace_worker_with(&v2).unwrap();
    c.signal(nix::sys::signal::Signal::SIGUSR2).unwrap();
    let s = c.wait_handoffs_ended(1, Duration::from_secs(20)).unwrap();
    assert_eq!(s["worker"]["build_id"], "v2-same-path", "{s}");
    assert_ne!(s["worker"]["sha256"], old);
    let out = c.ctl(["rollback", "--wait"]).unwrap();
    assert!(out.success(), "{}", out.stderr);
    let s = c.status().unwrap();
    assert_eq!(
        s["worker"]["sha256"], old,
        "rolled back to the wrong build: {s}"
    );
    assert_ne!(s["worker"]["build_id"], "v2-same-path", "{s}");
    crate::assert_nothing_lost(&c.sim, 1);
}
