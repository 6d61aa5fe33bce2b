//! Under systemd (`deploy/handoff.service`), a supervisor that dies takes
//! its worker with it (`KillMode=mixed`), but not the connections: with
//! `--fd-store` the supervisor keeps every held socket and the newest
//! checkpoint in systemd's file descriptor store, and the restarted
//! supervisor recovers on them. Tested without systemd: a fake notify socket
//! keeps what is stored, and the restart gets it back the way systemd hands
//! it over (`LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`, descriptors 3…).

use std::time::Duration;

use handoff_testkit::{wait_for, FakeSystemd};

use crate::supervisor_loss::assert_one_worker;
use crate::{assert_nothing_lost, cluster, wait_for_more_acks, HOSTILE_FEED};

#[test]
fn a_unit_killed_whole_recovers_on_the_connections_systemd_kept() {
    let dir = tempfile::tempdir().unwrap();
    let systemd = FakeSystemd::start(dir.path()).unwrap();
    let mut c = cluster()
        .connections(2)
        .sim_args(HOSTILE_FEED)
        .env("NOTIFY_SOCKET", systemd.notify_socket().to_str().unwrap())
        .supervisor_args(["--fd-store"])
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
