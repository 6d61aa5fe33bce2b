//! The operator's surface: Prometheus metrics, systemd notifications, and a
//! control socket only its owner (or root) can use.

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use crate::cluster;

#[test]
fn metrics_endpoint_speaks_prometheus_and_counts_handoffs() {
    let c = cluster()
        .sim_args(["--rate", "300"])
        .supervisor_args(["--metrics", "127.0.0.1:0"])
        .start()
        .expect("cluster");
    for _ in 0..2 {
        assert!(c.upgrade(None).unwrap().success());
    }
    let addr = std::fs::read_to_string(c.state_dir().join("metrics.addr")).unwrap();
    let mut s = std::net::TcpStream::connect(addr.trim()).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("text/plain; version=0.0.4"), "{resp}");
    assert!(
        resp.contains("handoff_handoffs_total{outcome=\"completed\"} 2"),
        "{resp}"
    );
    assert!(
        resp.contains("# TYPE handoff_blackout_seconds histogram"),
        "{resp}"
    );
    assert!(
        resp.contains("handoff_phase_duration_seconds_count{phase=\"freeze\"} 2"),
        "{resp}"
    );
    assert!(resp.contains("handoff_held_sockets 1"), "{resp}");
    assert!(
        resp.contains("handoff_supervisor_resident_memory_bytes "),
        "{resp}"
    );
}

#[test]
fn systemd_is_told_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut c = cluster()
        .sim_args(["--rate", "300"])
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .start()
        .expect("cluster");
    let next = || {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert!(first.starts_with("READY=1\nSTATUS=serving"), "{first}");
    assert!(c.upgrade(None).unwrap().success());
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let ready = next();
    assert!(
        ready.starts_with("READY=1\n") && ready.contains("completed"),
        "{ready}"
    );
    assert!(c.stop().unwrap().success());
    assert!(next().starts_with("STOPPING=1"));
}

#[test]
fn a_client_of_another_uid_is_refused_and_the_supervisor_serves_on() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run a client as another uid");
        return;
    }
    let c = cluster()
        .sim_args(["--rate", "300"])
        .start()
        .expect("cluster");
    let pid = c.worker_pid().unwrap();
    let out = std::process::Command::new(&c.bins.supervisorctl)
        .arg("--socket")
        .arg(&c.socket)
        .args(["upgrade", "--wait"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("ermission denied"), "{stderr}");
    let s = c.status().unwrap();
    assert_eq!(s["worker"]["pid"], pid);
    assert_eq!(s["handoffs"]["completed"], 0);
    crate::assert_nothing_lost(&c.sim, 1);
}

#[test]
fn replacing_the_worker_file_deploys_the_new_build_with_watch() {
    let c = cluster()
        .copy_worker()
        .sim_args(["--rate", "300"])
        .supervisor_args(["--watch"])
        .start()
        .expect("cluster");
    let v2 = c
        .worker_wrapper("worker-v2", &[("HANDOFF_BUILD_ID", "v2-watched")])
        .unwrap();
    c.replace_worker_with(&v2).unwrap();
    let s = c.wait_handoffs_ended(1, Duration::from_secs(20)).unwrap();
    assert_eq!(s["handoffs"]["completed"], 1, "{s}");
    assert_eq!(s["handoffs"]["last"]["trigger"], "watch", "{s}");
    assert_eq!(s["worker"]["build_id"], "v2-watched", "{s}");
    crate::assert_nothing_lost(&c.sim, 1);
}

#[test]
fn every_accepted_command_is_in_the_audit_log_as_a_json_line() {
    let c = cluster()
        .sim_args(["--rate", "300"])
        .start()
        .expect("cluster");
    assert!(c.upgrade(None).unwrap().success());
    assert!(c.ctl(["checkpoint", "--wait"]).unwrap().success());
    c.status().unwrap();
    assert!(c.ctl(["log"]).unwrap().success());
    let log = std::fs::read_to_string(c.state_dir().join("audit.log")).unwrap();
    let me = nix::unistd::geteuid().as_raw();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for e in &events {
        let ts = e["ts"].as_str().unwrap_or_else(|| panic!("no ts: {e}"));
        assert!(
            humantime::parse_rfc3339(ts).is_ok() && ts.ends_with('Z'),
            "ts is not RFC 3339 UTC: {e}"
        );
        assert_eq!(e["uid"], me, "{e}");
        assert!(e["pid"].as_u64().is_some(), "{e}");
    }
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    // Read-only calls (status, log) are not recorded.
    assert_eq!(names, ["upgrade", "checkpoint"], "{log}");
    assert_eq!(events[1]["wait"], true, "{log}");
}

#[test]
fn the_ci_deploy_script_pushes_a_build_and_reports_the_outcome() {
    let c = cluster()
        .sim_args(["--rate", "300"])
        .start()
        .expect("cluster");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ci-deploy");
    let builds = c.dir.path().join("builds");
    let deploy = |build: &std::path::Path| {
        std::process::Command::new(script)
            .arg("--socket")
            .arg(&c.socket)
            .arg("--dir")
            .arg(&builds)
            .arg("--supervisorctl")
            .arg(&c.bins.supervisorctl)
            .arg(build)
            .output()
            .unwrap()
    };
    let good = deploy(&c.bins.worker);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("completed"));
    let bad = c
        .worker_wrapper("bad-build", &[("HANDOFF_FAULT", "reject-restore")])
        .unwrap();
    let refused = deploy(&bad);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "a rolled-back deploy must fail the pipeline"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("rolled_back"));
    let s = c.status().unwrap();
    assert_eq!(s["handoffs"]["completed"], 1, "{s}");
    assert_eq!(s["handoffs"]["failed"], 1, "{s}");
    crate::assert_nothing_lost(&c.sim, 1);
}

#[test]
fn log_tells_the_story_of_upgrades_and_crashes() {
    let c = cluster()
        .sim_args(["--rate", "300"])
        .start()
        .expect("cluster");
    assert!(c.upgrade(None).unwrap().success());
    let dead = c.signal_worker(nix::sys::signal::Signal::SIGKILL).unwrap();
    handoff_testkit::wait_for("the recovery", Duration::from_secs(10), || {
        let s = c.status()?;
        Ok((s["worker"]["restarts"] == 1 && s["worker"]["state"] == "running").then_some(()))
    })
    .unwrap();
    let out = c.ctl(["log", "-n", "100"]).unwrap();
    assert!(out.success(), "{}", out.stderr);
    let log = out.stdout;
    for expected in [
        "upgrade #1 via supervisorctl",
        ": completed",
        "  admitted ",
        "  spawned ",
        "  old_stopped ",
        &format!("worker pid {dead} exited unexpectedly"),
        "recovery: worker pid",
    ] {
        assert!(log.contains(expected), "log lacks {expected:?}:\n{log}");
    }
    // -n counts events: an upgrade is one, its phases under it.
    let all = c.ctl(["log", "--json", "-n", "100"]).unwrap().stdout;
    let events: Vec<serde_json::Value> = all
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let upgrade = events
        .iter()
        .find(|e| {
            e["event"]
                .as_str()
                .unwrap_or("")
                .starts_with("upgrade #1 via")
        })
        .unwrap_or_else(|| panic!("{all}"));
    let phases: Vec<&str> = upgrade["detail"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d.as_str()?.split_whitespace().next())
        .collect();
    assert_eq!(
        phases,
        [
            "admitted",
            "spawned",
            "prepared",
            "frozen",
            "restored",
            "same_build",
            "live",
            "old_stopped"
        ],
        "{upgrade}"
    );
    let two = c.ctl(["log", "--json", "-n", "2"]).unwrap().stdout;
    assert_eq!(two.lines().count(), 2, "{two}");
    assert_eq!(
        two.lines().last(),
        all.lines().last(),
        "-n 2 is the newest two"
    );
    // The human status says how many restarts, and the last exit's cause.
    let status = c.ctl(["status"]).unwrap().stdout;
    assert!(
        status.contains(&format!("restarts 1, last exit: pid {dead} signal: 9")),
        "{status}"
    );
}

/// Serve `file` to every GET on 127.0.0.1:0 from a thread; returns the URL.
fn serve_file(file: std::path::PathBuf) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut head = [0u8; 4096];
            let _ = conn.read(&mut head);
            let body = std::fs::read(&file).unwrap_or_default();
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(&body);
        }
    });
    format!("http://{addr}/builds/worker")
}

fn sha256_of(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn upgrade_from_a_url_is_verified_before_it_runs() {
    let c = cluster()
        .sim_args(["--rate", "300"])
        .start()
        .expect("cluster");
    let build = c
        .worker_wrapper("downloaded", &[("HANDOFF_BUILD_ID", "from-url")])
        .unwrap();
    let url = serve_file(build.clone());
    let sum = sha256_of(&build);
    // Without a checksum: refused by the CLI itself.
    let refused = c.ctl(["upgrade", "--url", &url, "--wait"]).unwrap();
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    // With the wrong one: downloaded, refused, the old worker serves on.
    let wrong = c
        .ctl([
            "upgrade",
            "--url",
            &url,
            "--sha256",
            &"0".repeat(64),
            "--wait",
        ])
        .unwrap();
    assert_eq!(wrong.code, Some(1), "{}", wrong.stdout);
    assert!(wrong.stderr.contains("sha256 mismatch"), "{}", wrong.stderr);
    // With the right one: live.
    let ok = c
        .ctl(["upgrade", "--url", &url, "--sha256", &sum, "--wait"])
        .unwrap();
    assert!(ok.success(), "{}", ok.stderr);
    let s = c.status().unwrap();
    assert_eq!(s["worker"]["build_id"], "from-url", "{s}");
    assert_eq!(s["worker"]["sha256"], sum.as_str(), "{s}");
    assert_eq!(s["handoffs"]["failed"], 1, "{s}");
    crate::assert_nothing_lost(&c.sim, 1);
}

#[test]
fn a_wrong_sha256_for_a_local_binary_is_refused() {
    let c = cluster()
        .sim_args(["--rate", "300"])
        .start()
        .expect("cluster");
    let pid = c.worker_pid().unwrap();
    let out = c
        .ctl([
            "upgrade".as_ref(),
            "--binary".as_ref(),
            c.bins.worker.as_os_str(),
            "--sha256".as_ref(),
            // Well-formed, but not this binary's (a malformed one is a
            // usage error: operator_cli.rs).
            "00".repeat(32).as_ref(),
            "--wait".as_ref(),
        ])
        .unwrap();
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("sha256 mismatch"), "{}", out.stderr);
    assert_eq!(c.worker_pid().unwrap(), pid);
    crate::assert_nothing_lost(&c.sim, 1);
}

#[test]
fn allowed_uids_may_control_and_others_are_refused_by_peer_credentials() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run clients as other uids");
        return;
    }
    let c = cluster()
        .sim_args(["--rate", "300"])
        .supervisor_args(["--allow-uid", "65534"])
        .start()
        .expect("cluster");
    // Let other users reach the socket's directory (the supervisor made it
    // 0711 for the allow list; the test's temp dir is ours to open).
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let as_uid = |uid: u32| {
        std::process::Command::new(&c.bins.supervisorctl)
            .arg("--socket")
            .arg(&c.socket)
            .args(["status", "--json"])
            .uid(uid)
            .gid(uid)
            .output()
            .unwrap()
    };
    let allowed = as_uid(65534);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    // Another uid connects (the socket is 0666 now) and is refused by
    // SO_PEERCRED, with a clear error; the supervisor serves on.
    let other = as_uid(65533);
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert_eq!(other.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("uid 65533 may not control"), "{stderr}");
    assert!(c.status().unwrap()["worker"]["state"] == "running");
}

#[test]
fn upgrade_timeout_gives_up_waiting_but_not_the_upgrade() {
    let c = cluster()
        .sim_args(["--rate", "300"])
        .supervisor_args(["--prepare-timeout", "2s"])
        .start()
        .expect("cluster");
    let slow = c
        .worker_wrapper("slow", &[("HANDOFF_FAULT", "hang-before-hello")])
        .unwrap();
    let out = c
        .ctl([
            "upgrade".as_ref(),
            "--wait".as_ref(),
            "--timeout".as_ref(),
            "300ms".as_ref(),
            "--binary".as_ref(),
            slow.as_os_str(),
        ])
        .unwrap();
    assert_eq!(out.code, Some(4), "{}", out.stderr);
    assert!(out.stderr.contains("the upgrade goes on"), "{}", out.stderr);
    let s = c.wait_handoffs_ended(1, Duration::from_secs(20)).unwrap();
    assert_eq!(s["handoffs"]["failed"], 1, "{s}");
    crate::assert_nothing_lost(&c.sim, 1);
}

#[test]
fn a_config_file_sets_what_the_flags_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("handoff.toml");
    std::fs::write(&cfg, "probation = \"77s\"\nheartbeat_timeout = \"9s\"\n").unwrap();
    let c = cluster()
        .sim_args(["--rate", "300"])
        .supervisor_args(["--config", cfg.to_str().unwrap()])
        .start()
        .expect("cluster");
    // A build of other content: the same one again is no new build and
    // goes on no probation.
    let v2 = std::path::Path::new(env!("CARGO_BIN_EXE_trading-worker-v2"));
    assert!(c.upgrade(Some(v2)).unwrap().success());
    let left = c.status().unwrap()["worker"]["probation_ms_left"]
        .as_u64()
        .unwrap();
    assert!(
        left > 30_000 && left <= 77_000,
        "probation from the file: {left} ms left"
    );
}

#[test]
fn status_table_and_stop_for_humans() {
    let mut c = cluster()
        .sim_args(["--rate", "400"])
        .start()
        .expect("cluster");
    assert!(c.upgrade(None).unwrap().success());
    c.fresh_summary().unwrap();
    let out = c.ctl(["status"]).unwrap();
    assert!(out.success(), "{}", out.stderr);
    for expected in [
        "worker      pid",
        "sha256",
        "connections 1",
        "checkpoint ",
        "positions   SYMBOL",
        "BTCUSDT",
        "handoffs    1 completed, 0 failed",
        "phases (ms from trigger): spawned",
    ] {
        assert!(
            out.stdout.contains(expected),
            "status lacks {expected:?}:\n{}",
            out.stdout
        );
    }
    let stop = c.ctl(["stop"]).unwrap();
    assert!(stop.success(), "{}", stop.stderr);
    let status = c.wait_exit().unwrap();
    assert!(status.success(), "supervisor exit: {status}");
    let audit = c.sim.audit().unwrap();
    assert_eq!(
        audit["connections"][0]["closed_by"], "close_frame",
        "{audit}"
    );
}
