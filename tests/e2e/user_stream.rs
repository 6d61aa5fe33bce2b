//! A Binance user-data stream, as a bot keeps one (issue #14): a listen key
//! from the REST API, the stream opened at run time under the name `user`,
//! a keep-alive timer whose key names the listen key. All of it is the
//! library's to hand over: the connection by name, the timer with the
//! state. Judged by the exchange: the key never expired (keep-alives kept
//! coming, from whichever worker served), the stream never closed, every
//! order came back on it as an executionReport.

use std::time::Duration;

use handoff_testkit::{wait_for, Cluster};
use serde_json::Value;

use crate::{cluster, HOSTILE_FEED};

/// The simulator's one listen key and the connection streaming it.
fn listen_key(c: &Cluster) -> (Value, Value) {
    let audit = c.sim.audit().unwrap();
    let keys = audit["listen_keys"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert_eq!(keys.len(), 1, "one listen key: {audit}");
    let (key, stats) = keys.into_iter().next().unwrap();
    let conn = audit["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["listen_key"] == key.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    (stats, conn)
}

#[test]
fn a_user_data_stream_and_its_keepalives_survive_a_hundred_handoffs_and_a_crash() {
    let c = cluster()
        .rest()
        .also_held(1)
        .sim_args(HOSTILE_FEED)
        .sim_args(["--listen-key-ttl-ms", "3000"])
        .worker_args([
            "--cooldown-trades",
            "3",
            "--user-stream",
            "--listen-key-keepalive-ms",
            "500",
        ])
        .start()
        .expect("cluster");
    let s = c.status().unwrap();
    let names = crate::held_names(&s);
    assert_eq!(names, ["feed-0", "user"], "{s}");
    for i in 0..100 {
        let out = c.upgrade(None).unwrap();
        assert!(out.success(), "upgrade {i}: {}", out.stderr);
    }
    // Past the key's 3 s life: only keep-alives from the serving workers
    // kept it, across every handoff.
    let before = listen_key(&c).0["keepalives"].as_u64().unwrap_or(0);
    wait_for(
        "keep-alives past the key's life",
        Duration::from_secs(20),
        || {
            let (stats, _) = listen_key(&c);
            Ok((stats["keepalives"].as_u64().unwrap_or(0) >= before + 8).then_some(()))
        },
    )
    .unwrap();
    let (stats, conn) = listen_key(&c);
    assert!(
        stats["closed_by"].is_null(),
        "the listen key expired: {stats}"
    );
    assert!(
        conn["closed_by"].is_null(),
        "the user-data stream closed: {conn}"
    );
    assert!(
        conn["user_events_sent"].as_u64().unwrap_or(0) > 0,
        "no executionReport: {conn}"
    );
    crate::assert_no_order_twice(&c);
    c.sim.resume().unwrap();
    // And a crash: the recovering worker gets the stream with the feed.
    let audit = crate::crash_at_rest_keeps_connections(&c, 2);
    let (stats, _) = listen_key(&c);
    assert!(stats["closed_by"].is_null(), "{stats}: {audit}");
}
