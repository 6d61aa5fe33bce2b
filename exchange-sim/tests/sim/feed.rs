//! The feed: contiguity under every adversarial knob, determinism, finite feeds.

use crate::support::{ack, audit, next_json, subscribe, tick, Tick, Ws};
use std::collections::BTreeMap;
use std::time::Duration;

/// Read (and ack) trades until every stream in `streams` reached `last`.
async fn drain(ws: &mut Ws, streams: &[&str], last: u64, do_ack: bool) -> Vec<(Tick, usize)> {
    let mut next: BTreeMap<String, u64> = streams.iter().map(|s| (s.to_string(), 1)).collect();
    let mut got = Vec::new();
    while next.values().any(|n| *n <= last) {
        let msg = next_json(ws).await;
        let size = msg.to_string().len();
        let t = tick(&msg);
        let expected = next.get_mut(&t.stream).expect("subscribed stream");
        assert_eq!(t.t, *expected, "ids must be contiguous on {}", t.stream);
        *expected += 1;
        if do_ack {
            ack(ws, &t.stream, t.t).await;
        }
        got.push((t, size));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_feed_is_contiguous_and_audit_is_clean() {
    let (addr, _sim) = crate::support::start(&[
        "--rate",
        "5000",
        "--trades",
        "600",
        "--fragment-every",
        "3",
        "--ping-every",
        "4",
        "--big-every",
        "50",
        "--max-chunk",
        "700",
    ])
    .await;
    let streams = ["btcusdt@trade", "ethusdt@trade"];
    let (mut ws, answer) = subscribe(addr, "/stream", &streams).await;
    assert_eq!(answer, serde_json::json!({"result": null, "id": 1}));
    let got = drain(&mut ws, &streams, 600, true).await;
    assert_eq!(got.len(), 1200);
    let big = got.iter().filter(|(_, size)| *size >= 69_000).count();
    assert!(big >= 20, "expected padded messages, got {big}");

    let a = audit(addr, Some(5_000)).await;
    let totals = &a["totals"];
    assert_eq!(totals["sent"], 1200, "{a}");
    assert_eq!(totals["acked"], 1200, "{a}");
    for key in [
        "unacked",
        "gaps",
        "duplicates",
        "reordered",
        "unknown_acks",
        "malformed",
        "unmasked",
    ] {
        assert_eq!(totals[key], 0, "totals.{key} in {a}");
    }
    let c = &a["connections"][0];
    assert!(c["closed_by"].is_null());
    assert_eq!(c["subscribed"], serde_json::json!(streams));
    let pings = c["pings_sent"].as_u64().expect("pings_sent");
    let pongs = c["pongs_received"].as_u64().expect("pongs_received");
    assert!(pings >= 300, "{c}");
    assert!(pongs > 0 && pongs <= pings, "{c}");
    assert!(c["frames_received"].as_u64() >= Some(1201));
    for s in streams {
        assert_eq!(c["streams"][s]["last_sent"], 600);
        assert_eq!(c["streams"][s]["last_acked"], 600);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_gives_same_sequence_and_finite_feed_stops() {
    let flags = ["--rate", "2000", "--trades", "200", "--seed", "42"];
    let (addr, _sim) = crate::support::start(&flags).await;
    let streams = ["btcusdt@trade", "ethusdt@trade"];
    let (mut a, _) = subscribe(addr, "/ws", &streams).await;
    let (mut b, _) = subscribe(addr, "/", &streams).await;
    let per_stream = |got: Vec<(Tick, usize)>| {
        let mut m: BTreeMap<String, Vec<Tick>> = BTreeMap::new();
        for (t, _) in got {
            m.entry(t.stream.clone()).or_default().push(t);
        }
        m
    };
    let from_a = per_stream(drain(&mut a, &streams, 200, true).await);
    let from_b = per_stream(drain(&mut b, &streams, 200, true).await);
    assert_eq!(from_a, from_b);
    assert_eq!(from_a["btcusdt@trade"][0].p, "42000.00");
    assert_eq!(from_a["ethusdt@trade"][0].p, "2200.00");
    // Nothing follows trade 200.
    let extra = tokio::time::timeout(Duration::from_millis(200), next_json(&mut a)).await;
    assert!(extra.is_err(), "feed went past --trades: {extra:?}");
    let audit = audit(addr, Some(5_000)).await;
    assert_eq!(audit["totals"]["sent"], 800, "{audit}");
    assert_eq!(audit["totals"]["unacked"], 0, "{audit}");

    // A different seed walks differently (same start price, different path).
    let (addr2, _sim2) =
        crate::support::start(&["--rate", "2000", "--trades", "20", "--seed", "43"]).await;
    let (mut c, _) = subscribe(addr2, "/ws", &["btcusdt@trade"]).await;
    let from_c = per_stream(drain(&mut c, &["btcusdt@trade"], 20, false).await);
    let prices = |v: &[Tick]| {
        v.iter()
            .map(|t| (t.p.clone(), t.q.clone()))
            .collect::<Vec<_>>()
    };
    assert_ne!(
        prices(&from_c["btcusdt@trade"]),
        prices(&from_a["btcusdt@trade"][..20])
    );
}
