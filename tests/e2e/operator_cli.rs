//! The conventions an operator expects of the two binaries: a default
//! control socket in the state directory (or `HANDOFF_SOCKET`), usage
//! errors that stop before anything is contacted, a `stop` that returns once
//! the supervisor is gone, and completions and man pages from the flags.

use std::process::{Command, Stdio};
use std::time::Duration;

use handoff_testkit::{wait_for, Sim};
use serde_json::Value;

fn ctl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_supervisorctl"));
    c.env_remove("HANDOFF_SOCKET");
    c
}

fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_control_socket_defaults_to_the_state_directory_and_stop_waits_for_the_exit() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let sim = Sim::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_exchange-sim")),
        &["--rate".to_string(), "200".to_string()],
    )
    .unwrap();
    let mut supervisor = Command::new(env!("CARGO_BIN_EXE_supervisor"))
        .env_remove("HANDOFF_SOCKET")
        .arg("--state-dir")
        .arg(&state)
        .arg("--worker")
        .arg(env!("CARGO_BIN_EXE_trading-worker"))
        .args(["--", "--feed", &sim.ws_url(), "--ack"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        state.join("control.sock").exists() || {
            wait_for("the default socket", Duration::from_secs(20), || {
                Ok(state.join("control.sock").exists().then_some(()))
            })
            .is_ok()
        }
    );
    // --state-dir finds it.
    let status = wait_for("a serving worker", Duration::from_secs(20), || {
        let out = ctl()
            .arg("--state-dir")
            .arg(&state)
            .args(["status", "--json"])
            .output()
            .expect("run supervisorctl");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        Ok((v["connections"].as_array().map(Vec::len) == Some(1)).then_some(v))
    })
    .unwrap();
    assert_eq!(status["supervisor"]["pid"], supervisor.id(), "{status}");
    // So does HANDOFF_SOCKET.
    let out = ctl()
        .env("HANDOFF_SOCKET", state.join("control.sock"))
        .arg("status")
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("worker"));
    // `stop` returns once the supervisor process is gone.
    let out = ctl()
        .arg("--state-dir")
        .arg(&state)
        .arg("stop")
        .output()
        .unwrap();
    assert_ok(&out);
    let exited = supervisor.try_wait().unwrap();
    assert!(
        exited.is_some(),
        "supervisorctl stop returned while the supervisor still ran"
    );
    assert!(exited.unwrap().success());
}

#[test]
fn usage_errors_exit_2_with_one_line_before_anything_is_contacted() {
    // No supervisor anywhere: a usage error must not even try to connect.
    let missing = tempfile::tempdir().unwrap();
    let sock = missing.path().join("nothing.sock");
    let cases: [&[&str]; 4] = [
        &["upgrade", "--sha256", "abc"],
        &["upgrade-supervisor", "--sha256", "zz"],
        &["upgrade", "--wait", "--timeout", "soon"],
        &["frobnicate"],
    ];
    for args in cases {
        let out = ctl()
            .arg("--socket")
            .arg(&sock)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.starts_with("supervisorctl: "), "{stderr}");
        assert!(!stderr.contains("cannot connect"), "{stderr}");
    }
    let out = ctl().arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no control socket"));
    // The supervisor's own flags too, named.
    let out = Command::new(env!("CARGO_BIN_EXE_supervisor"))
        .args(["--state-dir", "/nonexistent", "--worker", "/bin/true"])
        .args(["--heartbeat-timeout", "often", "--start-attempts", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--heartbeat-timeout"), "{stderr}");
}

#[test]
fn completions_and_man_pages_come_from_the_flags() {
    let out = ctl().args(["completions", "bash"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("supervisorctl") && text.contains("upgrade-supervisor"),
        "{text}"
    );
    let out = ctl()
        .args(["completions", "zsh", "--supervisor"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--start-attempts"));
    let out = ctl().args(["man"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(".TH supervisorctl 1"), "{text}");
    let out = ctl().args(["man", "--supervisor"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(".TH supervisor 1") && text.contains("HANDOFF_SOCKET"),
        "{text}"
    );
}
