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
