//! The phases the supervisor reports are exactly the handoff machine's
//! milestones, in order (`handoff::machine` drives them; its unit tests
//! cover every path): as `upgrade --wait` prints them and as `log` keeps them.

use std::time::Duration;

use crate::cluster;

/// The milestone names of `upgrade --wait`'s progress lines ("frozen  +1.2 ms").
fn printed(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?;
            words
                .next()
                .filter(|w| w.starts_with('+'))
                .map(|_| name.to_string())
        })
        .collect()
}

/// The milestone names of the newest upgrade in `log`.
fn logged(c: &handoff_testkit::Cluster) -> Vec<String> {
    let log = c.ctl(["log", "-n", "1"]).unwrap().stdout;
    printed(&log)
}

#[test]
fn each_upgrade_reports_the_exact_sequence_of_its_phases() {
    let c = cluster()
        .sim_args(["--rate", "300"])
        .supervisor_args(["--prepare-timeout", "1s"])
        .start()
        .expect("cluster");
    let check = |out: handoff_testkit::CtlOutput, want: &[&str]| {
        assert_eq!(printed(&out.stdout), want, "{}{}", out.stdout, out.stderr);
        assert_eq!(logged(&c), want);
    };

    // A new build: every step of a committed handoff.
    let other = c.worker_wrapper("another-build", &[]).unwrap();
    let out = c.upgrade(Some(&other)).unwrap();
    assert!(out.success(), "{}", out.stderr);
    check(
        out,
        &[
            "admitted",
            "spawned",
            "prepared",
            "frozen",
            "restored",
            "live",
            "old_stopped",
        ],
    );
    // The same content again: marked, between the restore and Go.
    let out = c.upgrade(Some(&other)).unwrap();
    assert!(out.success(), "{}", out.stderr);
    check(
        out,
        &[
            "admitted",
            "spawned",
            "prepared",
            "frozen",
            "restored",
            "same_build",
            "live",
            "old_stopped",
        ],
    );
    // Refused before the old worker was touched.
    let hang = c
        .worker_wrapper("hang-at-hello", &[("HANDOFF_FAULT", "hang-before-hello")])
        .unwrap();
    let out = c.upgrade(Some(&hang)).unwrap();
    assert!(!out.success());
    check(out, &["admitted", "spawned", "failed"]);
    // Rolled back after the freeze: the old worker thawed.
    let picky = c
        .worker_wrapper("reject-state", &[("HANDOFF_FAULT", "reject-restore")])
        .unwrap();
    let out = c.upgrade(Some(&picky)).unwrap();
    assert!(!out.success());
    check(
        out,
        &["admitted", "spawned", "prepared", "frozen", "rolled_back"],
    );
    // Not even admitted.
    let out = c
        .upgrade(Some(std::path::Path::new("/nonexistent/worker")))
        .unwrap();
    assert!(!out.success());
    check(out, &["failed"]);
    let s = c.wait_serving(Duration::from_secs(10)).unwrap();
    assert_eq!(s["handoffs"]["completed"], 2, "{s}");
    assert_eq!(s["handoffs"]["failed"], 3, "{s}");
}
