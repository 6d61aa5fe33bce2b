//! The supervisor is no single point of failure (issue #13): a supervisor
//! killed with `kill -9` leaves its worker serving; the next supervisor on
//! the state directory adopts that worker instead of starting a second one;
//! a second supervisor on a live state directory is refused; and whatever
//! happens, never two workers hold `serving.lock`. Judged by what the
//! exchange saw: nothing lost, duplicated or reordered, no new connection,
//! no order sent twice.

use std::time::{Duration, Instant};

use handoff_testkit::{wait_for, Cluster, ClusterBuilder};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{assert_nothing_lost, cluster, wait_for_more_acks, HOSTILE_FEED};

/// Exactly one worker process of the state directory runs, and it is the
/// only holder of `serving.lock`.
pub(crate) fn assert_one_worker(c: &Cluster, pid: u32) {
    assert_eq!(c.worker_processes(), vec![pid], "worker processes");
    assert_eq!(c.serving_lock_holders(), vec![pid], "serving.lock holders");
}

/// `kill -9` the supervisor; the path of the socket on which `worker`, now
/// an orphan serving alone, waits to be adopted (once it is there).
fn orphaned(c: &mut Cluster, worker: u32) -> std::path::PathBuf {
    c.kill_supervisor().unwrap();
    let socket = c.state_dir().join("orphans").join(format!("{worker}.sock"));
    wait_for("the orphan socket", Duration::from_secs(10), || {
        Ok(socket.exists().then_some(()))
    })
    .unwrap();
    socket
}

/// `b` with REST orders, slow enough to answer that a freeze or an adoption
/// often finds one in flight.
pub(crate) fn with_orders(b: ClusterBuilder) -> ClusterBuilder {
    b.rest()
        .sim_args(["--order-latency-ms", "15"])
        .worker_args(["--cooldown-trades", "3"])
}

#[test]
fn kill_9_of_an_idle_supervisor_and_a_restart_adopt_the_serving_worker() {
    let mut c = with_orders(cluster().sim_args(HOSTILE_FEED))
        .start()
        .expect("cluster");
    let before = c.status().unwrap();
    let worker = before["worker"]["pid"].as_u64().unwrap() as u32;
    let generation = before["worker"]["generation"].clone();
    assert_eq!(before["worker"]["adopted"], false, "{before}");
    c.kill_supervisor().unwrap();
    // Alone, it serves on: acks keep coming.
    wait_for_more_acks(&c.sim, "acks from the orphaned worker");
    assert_one_worker(&c, worker);
    let restarted = Instant::now();
    let s = c.restart_supervisor().unwrap();
    let took = restarted.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "serving again after {took:?}: {s}"
    );
    assert_eq!(s["worker"]["pid"].as_u64(), Some(worker as u64), "{s}");
    assert_eq!(s["worker"]["adopted"], true, "{s}");
    assert_eq!(s["worker"]["generation"], generation, "{s}");
    assert_ne!(s["supervisor"]["pid"], before["supervisor"]["pid"], "{s}");
    assert_one_worker(&c, worker);
    let log = c.ctl(["log"]).unwrap().stdout;
    assert!(
        log.contains(&format!(
            "adopted worker pid {worker} (generation {generation})"
        )),
        "{log}"
    );
    // The adopted worker is supervised for real: it checkpoints to its new
    // supervisor, and an upgrade hands it over as usual.
    c.fresh_summary().unwrap();
    let out = c.upgrade(None).unwrap();
    assert!(out.success(), "upgrade after adoption: {}", out.stderr);
    let after = c.status().unwrap();
    let successor = after["worker"]["pid"].as_u64().unwrap() as u32;
    assert_ne!(successor, worker, "{after}");
    assert_eq!(after["worker"]["adopted"], false, "{after}");
    assert_one_worker(&c, successor);
    wait_for_more_acks(&c.sim, "acks after the upgrade");
    c.sim.pause().unwrap();
    let (summary, _) = crate::assert_no_order_twice(&c);
    assert!(summary["orders_sent"].as_u64().unwrap() > 0, "{summary}");
    assert_nothing_lost(&c.sim, 1);
}

#[test]
fn a_second_supervisor_on_a_live_state_dir_is_refused_and_disturbs_nothing() {
    let c = cluster().sim_args(HOSTILE_FEED).start().expect("cluster");
    let worker = c.worker_pid().unwrap();
    let other_socket = c.dir.path().join("other.sock");
    let (status, stderr) = c
        .run_another_supervisor(
            &["--socket", other_socket.to_str().unwrap()],
            Duration::from_secs(20),
        )
        .unwrap();
    assert!(!status.success(), "the second supervisor ran: {stderr}");
    assert!(
        stderr.contains("another supervisor runs on this state directory"),
        "{stderr}"
    );
    assert_one_worker(&c, worker);
    let s = c.status().unwrap();
    assert_eq!(s["worker"]["pid"].as_u64(), Some(worker as u64), "{s}");
    wait_for_more_acks(&c.sim, "acks after the refusal");
    assert_nothing_lost(&c.sim, 1);
}

#[test]
fn a_supervisor_that_cannot_adopt_a_serving_worker_starts_none() {
    let mut c = cluster()
        .sim_args(["--rate", "300"])
        .start()
        .expect("cluster");
    let worker = c.worker_pid().unwrap();
    c.kill_supervisor().unwrap();
    wait_for_more_acks(&c.sim, "acks from the orphaned worker");
    // Stopped, it holds serving.lock but cannot answer on its socket.
    kill(Pid::from_raw(worker as i32), Signal::SIGSTOP).unwrap();
    let (status, stderr) = c
        .run_another_supervisor(&["--adopt-timeout", "1s"], Duration::from_secs(20))
        .unwrap();
    kill(Pid::from_raw(worker as i32), Signal::SIGCONT).unwrap();
    assert!(!status.success(), "it started: {stderr}");
    assert!(stderr.contains("not starting a second worker"), "{stderr}");
    assert!(stderr.contains(&format!("pid {worker}")), "{stderr}");
    assert_one_worker(&c, worker);
    // The orphan was not disturbed, and the next supervisor adopts it.
    wait_for_more_acks(&c.sim, "acks once the orphan runs again");
    let s = c.restart_supervisor().unwrap();
    assert_eq!(s["worker"]["pid"].as_u64(), Some(worker as u64), "{s}");
    assert_eq!(s["worker"]["adopted"], true, "{s}");
    assert_nothing_lost(&c.sim, 1);
}

#[test]
fn an_orphan_whose_supervisor_never_returns_serves_on_and_stops_cleanly() {
    let mut c = cluster().sim_args(HOSTILE_FEED).start().expect("cluster");
    let worker = c.worker_pid().unwrap();
    let socket = orphaned(&mut c, worker);
    wait_for_more_acks(&c.sim, "acks from the orphaned worker");
    // Everything sent so far is acked, then SIGTERM: a clean stop.
    c.sim.pause().unwrap();
    let audit = c.sim.audit_when_acked(Duration::from_secs(20)).unwrap();
    assert_eq!(audit["totals"]["gaps"], 0, "{audit}");
    kill(Pid::from_raw(worker as i32), Signal::SIGTERM).unwrap();
    wait_for("the orphan to exit", Duration::from_secs(20), || {
        Ok((!handoff_testkit::process_alive(worker)).then_some(()))
    })
    .unwrap();
    let audit = c.sim.audit().unwrap();
    let conn = &audit["connections"][0];
    assert_eq!(
        conn["closed_by"], "close_frame",
        "not a clean close: {audit}"
    );
    assert_eq!(audit["connections_total"], 1, "{audit}");
    let t = &audit["totals"];
    for k in ["gaps", "duplicates", "reordered", "unacked", "malformed"] {
        assert_eq!(t[k], 0, "{k}: {audit}");
    }
    assert!(!socket.exists(), "the orphan socket outlived its worker");
    assert!(c.worker_processes().is_empty());
}

#[test]
fn twenty_supervisor_upgrades_in_a_row_keep_the_worker_serving() {
    let mut c = with_orders(cluster().sim_args(HOSTILE_FEED))
        .start()
        .expect("cluster");
    let worker = c.worker_pid().unwrap();
    let mut supervisor = c.status().unwrap()["supervisor"]["pid"].as_u64().unwrap() as u32;
    for i in 0..20 {
        let out = c.ctl(["upgrade-supervisor", "--wait"]).unwrap();
        assert!(out.success(), "supervisor upgrade {i}: {}", out.stderr);
        assert!(out.stdout.contains("supervisor upgraded"), "{}", out.stdout);
        let s = c.status().unwrap();
        let now = s["supervisor"]["pid"].as_u64().unwrap() as u32;
        assert_ne!(
            now, supervisor,
            "upgrade {i}: still the old supervisor: {s}"
        );
        assert!(
            !handoff_testkit::process_alive(supervisor),
            "upgrade {i}: the old one runs on"
        );
        assert_eq!(s["worker"]["pid"].as_u64(), Some(worker as u64), "{s}");
        assert_eq!(s["worker"]["adopted"], true, "{s}");
        assert_eq!(s["connections"].as_array().map(Vec::len), Some(1), "{s}");
        assert_one_worker(&c, worker);
        supervisor = now;
    }
    // The first supervisor was our child: reap it.
    c.wait_exit().unwrap();
    // The last supervisor supervises for real: a worker upgrade goes through.
    let out = c.upgrade(None).unwrap();
    assert!(
        out.success(),
        "worker upgrade after 20 supervisor upgrades: {}",
        out.stderr
    );
    wait_for_more_acks(&c.sim, "acks after the upgrades");
    c.sim.pause().unwrap();
    let (summary, _) = crate::assert_no_order_twice(&c);
    assert!(summary["orders_sent"].as_u64().unwrap() > 0, "{summary}");
    assert_nothing_lost(&c.sim, 1);
}

#[test]
fn a_new_supervisor_that_dies_holding_the_released_worker_gives_it_back() {
    // Every supervisor of this cluster has the hook, but only one started
    // by upgrade-supervisor reaches it: after the old one let the worker go.
    let c = cluster()
        .sim_args(HOSTILE_FEED)
        .env("HANDOFF_SUPERVISOR_FAULT", "die-after-release")
        .start()
        .expect("cluster");
    let worker = c.worker_pid().unwrap();
    let before = c.status().unwrap()["supervisor"]["pid"].clone();
    let out = c.ctl(["upgrade-supervisor", "--wait"]).unwrap();
    assert!(!out.success(), "{}", out.stdout);
    assert!(
        out.stderr.contains("the new supervisor exited"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("this supervisor carries on"),
        "{}",
        out.stderr
    );
    // The old supervisor took the worker back, from its orphan socket.
    let s = wait_for(
        "the worker back under the old supervisor",
        Duration::from_secs(20),
        || {
            let s = c.status()?;
            Ok((s["worker"]["state"] == "running" && s["worker"]["adopted"] == true).then_some(s))
        },
    )
    .unwrap();
    assert_eq!(s["supervisor"]["pid"], before, "{s}");
    assert_eq!(s["worker"]["pid"].as_u64(), Some(worker as u64), "{s}");
    assert_one_worker(&c, worker);
    let log = c.ctl(["log"]).unwrap().stdout;
    assert!(log.contains("upgrade-supervisor to"), "{log}");
    assert!(
        log.contains(&format!("adopted worker pid {worker}")),
        "{log}"
    );
    // And it supervises for real: an upgrade goes through.
    let out = c.upgrade(None).unwrap();
    assert!(out.success(), "{}", out.stderr);
    wait_for_more_acks(&c.sim, "acks after taking the worker back");
    assert_nothing_lost(&c.sim, 1);
}

#[test]
fn a_wss_worker_is_adopted_with_its_tls_sessions_and_hands_them_over_later() {
    let mut c = cluster()
        .tls()
        .connections(2)
        .sim_args(HOSTILE_FEED)
        .start()
        .expect("cluster");
    let worker = c.worker_pid().unwrap();
    c.kill_supervisor().unwrap();
    wait_for_more_acks(&c.sim, "acks from the orphaned worker");
    let s = c.restart_supervisor().unwrap();
    assert_eq!(s["worker"]["pid"].as_u64(), Some(worker as u64), "{s}");
    assert_eq!(s["worker"]["adopted"], true, "{s}");
    for conn in s["connections"].as_array().unwrap() {
        assert!(conn["tls"].is_string(), "not held as TLS: {s}");
    }
    // The sessions live in the worker; the next upgrade carries them on.
    for i in 0..3 {
        let out = c.upgrade(None).unwrap();
        assert!(out.success(), "upgrade {i} after adoption: {}", out.stderr);
    }
    let successor = c.worker_pid().unwrap();
    assert_one_worker(&c, successor);
    wait_for_more_acks(&c.sim, "acks after the upgrades");
    assert_nothing_lost(&c.sim, 2);
    crate::assert_every_ping_answered(&c.sim);
}

#[test]
fn a_supervisor_upgrade_to_the_wrong_build_is_refused_and_the_old_one_carries_on() {
    let c = cluster().sim_args(HOSTILE_FEED).start().expect("cluster");
    let worker = c.worker_pid().unwrap();
    let before = c.status().unwrap()["supervisor"]["pid"].clone();
    let wrong = "0".repeat(64);
    let out = c
        .ctl(["upgrade-supervisor", "--wait", "--sha256", &wrong])
        .unwrap();
    assert!(!out.success(), "{}", out.stdout);
    assert!(out.stderr.contains("not 0000"), "{}", out.stderr);
    assert!(
        out.stderr.contains("this supervisor carries on"),
        "{}",
        out.stderr
    );
    let s = c.status().unwrap();
    assert_eq!(s["supervisor"]["pid"], before, "{s}");
    assert_eq!(s["worker"]["pid"].as_u64(), Some(worker as u64), "{s}");
    assert_eq!(
        s["worker"]["adopted"], false,
        "the worker was never let go: {s}"
    );
    assert_one_worker(&c, worker);
    wait_for_more_acks(&c.sim, "acks after the refusal");
    assert_nothing_lost(&c.sim, 1);
}

#[test]
fn a_peer_that_connects_to_an_orphan_and_says_nothing_delays_adoption_only() {
    use std::io::Read;
    let mut c = cluster().sim_args(HOSTILE_FEED).start().expect("cluster");
    let worker = c.worker_pid().unwrap();
    let socket = orphaned(&mut c, worker);
    // Connect, hear the worker's offer, and say nothing.
    let mut silent = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let mut first = [0u8; 1];
    silent.read_exact(&mut first).unwrap();
    wait_for_more_acks(&c.sim, "acks while a silent peer holds the orphan socket");
    // The worker gives up on it (adoption_timeout) and a supervisor adopts it.
    let s = c
        .restart_supervisor_with(&["--adopt-timeout", "30s"])
        .unwrap();
    assert_eq!(s["worker"]["pid"].as_u64(), Some(worker as u64), "{s}");
    assert_eq!(s["worker"]["adopted"], true, "{s}");
    assert_one_worker(&c, worker);
    drop(silent);
    // A graceful stop stops the adopted worker too: close frames, nothing
    // left running, nothing lost.
    c.sim.pause().unwrap();
    let audit = c.sim.audit_when_acked(Duration::from_secs(20)).unwrap();
    assert_eq!(audit["totals"]["gaps"], 0, "{audit}");
    assert!(c.stop().unwrap().success());
    wait_for(
        "the adopted worker to exit",
        Duration::from_secs(20),
        || Ok((!handoff_testkit::process_alive(worker)).then_some(())),
    )
    .unwrap();
    let audit = c.sim.audit().unwrap();
    assert_eq!(
        audit["connections"][0]["closed_by"], "close_frame",
        "{audit}"
    );
    assert_eq!(audit["connections_total"], 1, "{audit}");
    for k in ["gaps", "duplicates", "reordered", "unacked", "malformed"] {
        assert_eq!(audit["totals"][k], 0, "{k}: {audit}");
    }
}
