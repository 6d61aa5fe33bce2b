//! The control socket: locked down, and never taken down by bad input.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use crate::{assert_nothing_lost, cluster};

#[test]
fn control_socket_is_0600_and_survives_garbage() {
    let c = cluster()
        .sim_args(["--rate", "300"])
        .start()
        .expect("cluster");
    let mode = std::fs::metadata(&c.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode {mode:o}");
    let pid = c.worker_pid().unwrap();
    let garbage: [&[u8]; 5] = [
        b"GET / HTTP/1.1\r\n\r\n",
        b"HF\x00\x00\xff\xff\xff\xff",     // oversized length
        b"HF\x00\x00\x00\x00\x00\x10\x01", // truncated frame
        b"HF\x00\x00\x00\x00\x00\x04\xff\xff\xff\xff", // undecodable request
        &[0u8; 4096],
    ];
    for g in garbage {
        let mut s = std::os::unix::net::UnixStream::connect(&c.socket).unwrap();
        let _ = s.write_all(g);
        drop(s);
    }
    let s = c.status().unwrap();
    assert_eq!(s["worker"]["pid"], pid);
    assert_nothing_lost(&c.sim, 1);
}

#[test]
fn standalone_worker_runs_without_a_supervisor() {
    let sim = handoff_testkit::Sim::start(
        &crate::bins().sim,
        &[
            "--rate".into(),
            "300".into(),
            "--trades".into(),
            "50".into(),
        ],
    )
    .unwrap();
    let mut worker = std::process::Command::new(crate::bins().worker)
        .args(["--feed", &sim.ws_url(), "--symbols", "btcusdt", "--ack"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let audit = handoff_testkit::wait_for("50 acks", std::time::Duration::from_secs(20), || {
        let a = sim.audit()?;
        Ok((a["totals"]["acked"].as_u64() == Some(50)).then_some(a))
    })
    .unwrap();
    assert_eq!(audit["totals"]["gaps"], 0);
    let _ = worker.kill();
    let _ = worker.wait();
}

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn thousands_of_garbage_connections_during_upgrades_leak_nothing() {
    use std::os::fd::AsFd;

    let c = cluster()
        .connections(2)
        .sim_args(["--rate", "300"])
        .start()
        .expect("cluster");
    let sup = c.status().unwrap()["supervisor"]["pid"].as_u64().unwrap() as u32;
    let before = open_fds(sup);
    let socket = c.socket.clone();
    let attacker = std::thread::spawn(move || {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (spare, _keep) = std::os::unix::net::UnixStream::pair().unwrap();
        for i in 0..2000u32 {
            let Ok(mut s) = std::os::unix::net::UnixStream::connect(&socket) else {
                continue;
            };
            let len = (next() % 64) as usize;
            let mut junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let prefix: &[u8] = match i % 4 {
                // A valid header declaring descriptors that do not come.
                0 => b"HF\x00\x05\x00\x00\x00\x02",
                // A huge length prefix.
                1 => b"HF\x00\x00\xff\xff\xff\xf0",
                _ => b"",
            };
            junk.splice(0..0, prefix.iter().copied());
            if i % 8 == 3 {
                // Descriptors nobody asked for, attached to garbage.
                let fds = [spare.as_fd(), spare.as_fd(), spare.as_fd()];
                let _ = handoff_protocol::fds::send_with_fds(s.as_fd(), &junk, &fds);
            } else {
                let _ = s.write_all(&junk);
            }
        }
    });
    for i in 0..10 {
        let out = c.upgrade(None).unwrap();
        assert!(
            out.success(),
            "upgrade {i} during the attack: {}",
            out.stderr
        );
    }
    attacker.join().unwrap();
    // Every garbage connection has been answered and closed: the descriptor
    // count settles back where it was (the same held sockets, one worker).
    let after = handoff_testkit::wait_for(
        "descriptors to settle",
        std::time::Duration::from_secs(10),
        || {
            let n = open_fds(sup);
            Ok((n <= before).then_some(n))
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {} open before, {} now", before, open_fds(sup)));
    eprintln!("supervisor descriptors: {before} before, {after} after");
    assert_eq!(c.status().unwrap()["handoffs"]["completed"], 10);
    assert_nothing_lost(&c.sim, 2);
}
