//! Signed orders (issue #17): the worker signs its REST calls as Binance
//! documents (`X-MBX-APIKEY`, `timestamp`, `recvWindow`, HMAC-SHA256
//! `signature`) with a key from its environment or a key file, and the
//! simulator, run with `--api-key`, checks them. Judged by the exchange's
//! audit: signed orders are all taken, none twice, across upgrades; each
//! kind of bad request is refused and counted, never recorded as an order,
//! and never sent again by the worker.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use handoff_testkit::{wait_for, Cluster, ClusterBuilder};
use serde_json::Value;

use crate::{bins, cluster};

/// The simulator's account.
const KEY: &str = "handoff-e2e-key";
const SECRET: &str = "handoff-e2e-secret";
/// Every kind of refusal the simulator counts.
const KINDS: [&str; 6] = [
    "no_key",
    "unknown_key",
    "malformed",
    "bad_signature",
    "expired",
    "ahead",
];

/// Write `text` to `name` in `dir` with `mode`.
fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

/// A cluster trading over REST against a simulator that wants orders
/// signed with [`KEY`] and [`SECRET`] (its secret in a file in `dir`).
fn signed_exchange(dir: &Path) -> ClusterBuilder {
    let secret = write(dir, "sim-secret", SECRET, 0o600);
    cluster().rest().sim_args([
        "--rate".into(),
        "600".into(),
        "--api-key".into(),
        KEY.into(),
        "--api-secret-file".into(),
        secret.display().to_string(),
    ])
}

fn orders_audit(c: &Cluster) -> Value {
    c.sim.get("/orders/audit", Duration::from_secs(5)).unwrap()
}

/// The refusal counts, each kind checked against `want` (0 for kinds not in it).
fn assert_refused(exchange: &Value, want: &[(&str, u64)]) {
    for kind in KINDS {
        let expected = want.iter().find(|(k, _)| *k == kind).map_or(0, |(_, n)| *n);
        assert_eq!(
            exchange["refused"][kind].as_u64(),
            Some(expected),
            "refused.{kind}: {exchange}"
        );
    }
}

#[test]
fn signed_orders_are_taken_none_twice_across_upgrades() {
    let dir = tempfile::tempdir().unwrap();
    let c = signed_exchange(dir.path())
        .connections(2)
        .also_held(1)
        // Orders take 15 ms to answer, so upgrades find some in flight and
        // their successors query them (signed GETs).
        .sim_args(["--order-latency-ms", "15"])
        .env("HANDOFF_API_KEY", KEY)
        .env("HANDOFF_API_SECRET", SECRET)
        .worker_args(["--cooldown-trades", "3", "--user-stream"])
        .start()
        .expect("cluster");
    // The user-data stream is held: its listen key came with the API key.
    assert_eq!(
        crate::held_names(&c.status().unwrap()),
        ["feed-0", "feed-1", "user"]
    );
    // Orders flowing before the upgrades, and on through them.
    wait_for("20 orders taken", Duration::from_secs(30), || {
        Ok((orders_audit(&c)["orders"].as_u64() >= Some(20)).then_some(()))
    })
    .unwrap();
    for i in 0..5 {
        let out = c.upgrade(None).unwrap();
        assert!(out.success(), "upgrade {i}: {}", out.stderr);
    }
    let (summary, exchange) = crate::assert_no_order_twice(&c);
    eprintln!(
        "worker: {summary}\nexchange refused: {}",
        exchange["refused"]
    );
    let sent = summary["orders_sent"].as_u64().unwrap();
    assert!(sent >= 20, "too few orders to prove anything: {summary}");
    assert_eq!(exchange["filled"], summary["orders_filled"], "{exchange}");
    assert_eq!(exchange["invalid"], 0, "{exchange}");
    assert_refused(&exchange, &[]);
    let audit = c.sim.audit().unwrap();
    assert_eq!(
        audit["listen_keys"].as_object().map(|k| k.len()),
        Some(1),
        "{audit}"
    );
}

/// Start a cluster from `builder`, let the worker send orders until the
/// exchange has refused `kind` a few times, stop the feed, and judge: every
/// order the worker sent was refused as `kind` exactly once (never sent
/// again), none was recorded or filled, and the worker holds none open.
fn refused_and_never_sent_again(builder: ClusterBuilder, kind: &str) {
    let c = builder
        .worker_args(["--cooldown-trades", "3"])
        .start()
        .expect("cluster");
    wait_for(
        &format!("orders refused as {kind}"),
        Duration::from_secs(30),
        || Ok((orders_audit(&c)["refused"][kind].as_u64() >= Some(5)).then_some(())),
    )
    .unwrap();
    // No more trades, so no more orders; then every answer is in.
    c.sim.pause().unwrap();
    c.sim.audit_when_acked(Duration::from_secs(20)).unwrap();
    let summary = wait_for(
        "refusals to reach the worker",
        Duration::from_secs(30),
        || {
            let s = c.fresh_summary()?;
            Ok((s["open_orders"] == 0).then_some(s))
        },
    )
    .unwrap();
    let exchange = orders_audit(&c);
    eprintln!("{kind}: worker {summary}\nexchange {exchange}");
    let sent = summary["orders_sent"].as_u64().unwrap();
    assert_eq!(
        exchange["orders"], 0,
        "a refused order was recorded: {exchange}"
    );
    assert_eq!(summary["orders_filled"], 0, "{summary}");
    assert_eq!(summary["orders_rejected"], sent, "{summary}");
    // Each order refused once: the worker took the refusal as final.
    assert_refused(&exchange, &[(kind, sent)]);
}

#[test]
fn orders_signed_with_the_wrong_secret_are_refused_and_never_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let keys = write(
        dir.path(),
        "keys",
        &format!("# the right key, another secret\nKEY={KEY}\nSECRET=not-{SECRET}\n"),
        0o600,
    );
    let builder = signed_exchange(dir.path())
        .worker_args(["--api-key-file".into(), keys.display().to_string()]);
    refused_and_never_sent_again(builder, "bad_signature");
}

#[test]
fn orders_with_an_unknown_key_are_refused_and_never_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let builder = signed_exchange(dir.path())
        .env("HANDOFF_API_KEY", "someone-elses-key")
        .env("HANDOFF_API_SECRET", SECRET);
    refused_and_never_sent_again(builder, "unknown_key");
}

#[test]
fn unsigned_orders_are_refused_and_never_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    refused_and_never_sent_again(signed_exchange(dir.path()), "no_key");
}

#[test]
fn orders_outside_the_recv_window_are_refused_and_never_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    // The exchange's clock a minute ahead: every timestamp is 60 s old.
    let builder = signed_exchange(dir.path())
        .sim_args(["--clock-skew-ms", "60000"])
        .env("HANDOFF_API_KEY", KEY)
        .env("HANDOFF_API_SECRET", SECRET);
    refused_and_never_sent_again(builder, "expired");
}

#[test]
fn a_key_file_others_can_read_stops_the_worker_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let keys = write(
        dir.path(),
        "keys",
        &format!("KEY={KEY}\nSECRET={SECRET}\n"),
        0o644,
    );
    let out = std::process::Command::new(bins().worker)
        .args([
            "--feed",
            "ws://127.0.0.1:1/ws",
            "--rest",
            "http://127.0.0.1:1",
        ])
        .arg("--api-key-file")
        .arg(&keys)
        .env_remove("HANDOFF_API_KEY")
        .output()
        .expect("run trading-worker");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("permissions 0644 are too open") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert!(!stderr.contains(SECRET), "the secret was printed: {stderr}");
}
