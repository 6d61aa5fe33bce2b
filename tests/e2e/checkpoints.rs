//! Periodic checkpoints are written by a copy-on-write child of the worker
//! (`handoff_protocol::image`): the serving loop stops only for a `fork`.
//! What they hold is what a crash recovers, and a worker whose children
//! fail checkpoints in its loop instead.

use std::time::Duration;

use handoff_testkit::{wait_for, Cluster};
use nix::sys::signal::Signal;

use crate::crashes::wait_replaced;
use crate::{assert_connections_survived, cluster};

/// Live checkpoint writers of this cluster (children named `handoff-image`
/// with its state directory in their environment).
fn image_writers(c: &Cluster) -> Vec<u32> {
    let want = format!("HANDOFF_STATE_DIR={}", c.state_dir().display());
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| handoff_testkit::process_alive(*pid))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == handoff_protocol::image::IMAGE_COMM)
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()))
        })
        .collect()
}

/// The parent of `pid` (field 4 of `/proc/<pid>/stat`).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn trades(summary: &serde_json::Value) -> u64 {
    summary["trades_processed"].as_u64().unwrap_or(0)
}

#[test]
fn checkpoints_are_written_by_a_child_and_a_crash_recovers_from_one() {
    let c = cluster()
        .connections(2)
        .sim_args(crate::CRASH_SAFE_FEED)
        .start()
        .expect("cluster");
    let before = c.fresh_summary().unwrap();
    let s = c.status().unwrap();
    assert_eq!(s["checkpoint"]["off_loop"], true, "{s}");
    assert!(trades(&before) > 0, "{s}");
    // Only the worker serves: its image writers are not counted as workers.
    assert_eq!(c.worker_processes().len(), 1);

    let dead = c.signal_worker(Signal::SIGKILL).unwrap();
    wait_replaced(&c, dead, Duration::from_secs(10));
    // The recovered worker went on from the image's state, not from zero.
    let after = c.fresh_summary().unwrap();
    assert!(
        trades(&after) >= trades(&before),
        "state restarted cold: {before} then {after}"
    );
    assert_eq!(c.status().unwrap()["checkpoint"]["off_loop"], true);
    // No writer outlives its worker (they die with it): every one alive is
    // a child of the one worker.
    wait_for("no orphaned image writer", Duration::from_secs(10), || {
        let workers = c.worker_processes();
        let orphans = image_writers(&c)
            .into_iter()
            .filter(|w| !parent_of(*w).is_some_and(|p| workers.contains(&p)))
            .count();
        Ok((workers.len() == 1 && orphans == 0).then_some(()))
    })
    .unwrap();
    assert_connections_survived(&c, 2);
}

#[test]
fn a_worker_whose_image_writers_fail_checkpoints_in_its_loop() {
    let c = cluster()
        .env("HANDOFF_FAULT", "image-fails")
        .sim_args(crate::CRASH_SAFE_FEED)
        .start()
        .expect("cluster");
    // The first image fails; the checkpoint asked for comes from the loop.
    let before = c.fresh_summary().unwrap();
    let s = c.status().unwrap();
    assert_eq!(s["checkpoint"]["off_loop"], false, "{s}");
    assert!(trades(&before) > 0, "{s}");
    let dead = c.signal_worker(Signal::SIGKILL).unwrap();
    wait_replaced(&c, dead, Duration::from_secs(10));
    let after = c.fresh_summary().unwrap();
    assert!(
        trades(&after) >= trades(&before),
        "state restarted cold: {before} then {after}"
    );
    assert_connections_survived(&c, 1);
}
