//! Under systemd (`deploy/handoff.service`), a supervisor that dies takes
//! its worker with it (`KillMode=mixed`), but not the connections: with
//! `--fd-store` the supervisor keeps every held socket and the newest
//! checkpoint in systemd's file descriptor store, and the restarted
//! supervisor recovers on them. Tested without systemd: a fake notify socket
//! keeps what is stored, and the restart gets it back the way systemd hands
//! it over (`LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`, descriptors 3…).

use std::time::Duration;

use handoff_testkit::{wait_for, ClusterBuilder, FakeSystemd};

use crate::supervisor_loss::assert_one_worker;
use crate::{assert_nothing_lost, cluster, wait_for_more_acks, HOSTILE_FEED};

/// `b` on the hostile feed, its supervisor notifying `systemd` and keeping
/// its sockets in that store, as `deploy/handoff.service` runs it.
fn under(systemd: &FakeSystemd, b: ClusterBuilder) -> ClusterBuilder {
    b.sim_args(HOSTILE_FEED)
        .env("NOTIFY_SOCKET", systemd.notify_socket().to_str().unwrap())
        .supervisor_args(["--fd-store"])
}

#[test]
fn a_unit_killed_whole_recovers_on_the_connections_systemd_kept() {
    let dir = tempfile::tempdir().unwrap();
    let systemd = FakeSystemd::start(dir.path()).unwrap();
    let mut c = under(&systemd, cluster().connections(2))
        .start()
        .expect("cluster");
    let worker = c.worker_pid().unwrap();
    // Both sockets and a state with the newest checkpoint reach the store.
    c.sim.pause().unwrap();
    c.sim.audit_when_acked(Duration::from_secs(20)).unwrap();
    let before = c.fresh_summary().unwrap()["trades_processed"]
        .as_u64()
        .unwrap();
    let stored = wait_for(
        "the store to hold both sockets and a state",
        Duration::from_secs(10),
        || {
            let names = systemd.names();
            let conns = names.iter().filter(|n| n.starts_with("conn-")).count();
            let states = names.iter().filter(|n| n.starts_with("state-")).count();
            Ok((conns == 2 && states == 1).then_some(names))
        },
    )
    .unwrap();
    assert!(systemd.messages().iter().any(|m| m.contains("READY=1")));
    // The unit dies whole: supervisor and worker, SIGKILL. Only the store
    // (and the kernel's socket buffers) keep the connections open.
    c.kill_unit().unwrap();
    assert!(!handoff_testkit::process_alive(worker));
    // The checkpoint file is not what brings the state back.
    let _ = std::fs::remove_file(c.state_dir().join("checkpoint.bin"));
    let s = c
        .restart_supervisor_with_fds(systemd.handed_back().unwrap())
        .unwrap();
    let recovered = s["worker"]["pid"].as_u64().unwrap() as u32;
    assert_ne!(recovered, worker, "{s}");
    assert_eq!(s["connections"].as_array().map(Vec::len), Some(2), "{s}");
    assert_one_worker(&c, recovered);
    let log = c.ctl(["log"]).unwrap().stdout;
    assert!(
        log.contains("from systemd's file descriptor store"),
        "{log}"
    );
    let after = c.fresh_summary().unwrap()["trades_processed"]
        .as_u64()
        .unwrap();
    assert_eq!(
        after, before,
        "the state did not come back from the store: {stored:?}"
    );
    // The feed goes on over the same connections; the store follows.
    c.sim.resume().unwrap();
    wait_for_more_acks(&c.sim, "acks after the recovery");
    assert_nothing_lost(&c.sim, 2);
    let names = systemd.names();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("state-")).count(),
        1,
        "{names:?}"
    );
}

#[test]
fn sigusr1_replaces_the_supervisor_and_systemd_hears_the_new_main_pid() {
    let dir = tempfile::tempdir().unwrap();
    let systemd = FakeSystemd::start(dir.path()).unwrap();
    let c = under(&systemd, cluster()).start().expect("cluster");
    let worker = c.worker_pid().unwrap();
    let old = c.status().unwrap()["supervisor"]["pid"].as_u64().unwrap();
    c.signal(nix::sys::signal::Signal::SIGUSR1).unwrap();
    let s = wait_for("a new supervisor", Duration::from_secs(20), || {
        let s = c.status()?;
        Ok((s["supervisor"]["pid"].as_u64() != Some(old)).then_some(s))
    })
    .unwrap();
    let new = s["supervisor"]["pid"].as_u64().unwrap();
    let said = wait_for(
        "MAINPID from the old supervisor",
        Duration::from_secs(10),
        || {
            let m = systemd.messages();
            Ok(m.iter()
                .any(|m| m.contains(&format!("MAINPID={new}")))
                .then_some(m))
        },
    )
    .unwrap();
    assert!(said.iter().any(|m| m.contains("READY=1")), "{said:?}");
    assert_eq!(s["worker"]["pid"].as_u64(), Some(worker as u64), "{s}");
    assert_one_worker(&c, worker);
    // The new supervisor keeps the store: the worker's socket is there.
    wait_for("the socket in the store", Duration::from_secs(10), || {
        Ok(systemd.names().iter().any(|n| n == "conn-0").then_some(()))
    })
    .unwrap();
    wait_for_more_acks(&c.sim, "acks after the supervisor upgrade");
    assert_nothing_lost(&c.sim, 1);
}
