//! A first start that can never succeed fails fast, saying why in the
//! worker's own words, instead of restarting forever.

use std::process::{Command, Stdio};
use std::time::Duration;

use handoff_testkit::wait_for;

/// Run a supervisor on a fresh state directory with `worker` and
/// `worker_args`; wait (at most 30 s) for it to exit. Its exit code and
/// stderr.
fn supervise(worker: &std::path::Path, worker_args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_supervisor"))
        .arg("--socket")
        .arg(dir.path().join("ctl.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--worker")
        .arg(worker)
        .arg("--")
        .args(worker_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let status = wait_for("the supervisor to give up", Duration::from_secs(30), || {
        Ok(child.try_wait().ok().flatten())
    });
    let status = status.unwrap_or_else(|e| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{e}: {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        )
    });
    (status.code(), std::fs::read_to_string(&stderr).unwrap())
}

fn last_line(stderr: &str) -> &str {
    stderr.lines().last().unwrap_or_default()
}

#[test]
fn an_unreachable_feed_ends_the_supervisor_naming_the_address_and_the_reason() {
    let worker = std::path::Path::new(env!("CARGO_BIN_EXE_trading-worker"));
    let (code, stderr) = supervise(worker, &["--feed", "ws://127.0.0.1:1/ws"]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(code.is_some(), "killed by a signal: {stderr}");
    let last = last_line(&stderr);
    assert!(
        last.starts_with("supervisor: the worker failed 3 times before it ever served"),
        "{stderr}"
    );
    assert!(last.contains("127.0.0.1:1"), "the address: {last}");
    assert!(last.contains("refused"), "the reason: {last}");
    assert!(
        last.contains("exit status: 1"),
        "the exit as it was: {last}"
    );
    assert!(
        !stderr.contains("SIGKILL"),
        "an exit reported as a kill: {stderr}"
    );
}

#[test]
fn a_host_that_does_not_resolve_and_a_bad_url_are_named() {
    let worker = std::path::Path::new(env!("CARGO_BIN_EXE_trading-worker"));
    let (code, stderr) = supervise(worker, &["--feed", "ws://no-such-host.invalid:9/ws"]);
    assert_ne!(code, Some(0));
    let last = last_line(&stderr);
    assert!(
        last.contains("cannot resolve no-such-host.invalid:9"),
        "{last}"
    );
    let (code, stderr) = supervise(worker, &["--feed", "http://127.0.0.1:1/ws"]);
    assert_ne!(code, Some(0));
    assert!(
        last_line(&stderr).contains("only ws:// and wss:// URLs are supported"),
        "{stderr}"
    );
}

#[test]
fn a_build_that_exits_at_once_is_given_up_with_its_exit_status() {
    let (code, stderr) = supervise(std::path::Path::new("/bin/false"), &[]);
    assert_ne!(code, Some(0));
    let last = last_line(&stderr);
    assert!(
        last.contains("failed 3 times before it ever served") && last.contains("exit status: 1"),
        "{stderr}"
    );
}
