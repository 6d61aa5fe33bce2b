//! Ack accounting, `wait_acked_ms`, pause/resume.

use crate::support::{ack, audit, conn, http_get, next_json, start, subscribe, tick};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_duplicate_and_unknown_acks_are_counted() {
    let (addr, _sim) = start(&["--rate", "1000", "--trades", "5"]).await;
    let s = "btcusdt@trade";
    let (mut ws, _) = subscribe(addr, "/ws", &[s]).await;
    for t in 1..=5 {
        assert_eq!(tick(&next_json(&mut ws).await).t, t);
    }
    for t in [1, 3, 2, 2, 99, 4, 5] {
        ack(&mut ws, s, t).await;
    }
    let a = audit(addr, Some(5_000)).await;
    let st = &conn(&a, 1)["streams"][s];
    assert_eq!(st["sent"], 5, "{a}");
    assert_eq!(st["acked"], 4, "{a}");
    assert_eq!(st["gaps"], 1, "{a}");
    assert_eq!(st["reordered"], 1, "{a}");
    assert_eq!(st["duplicates"], 1, "{a}");
    assert_eq!(st["unknown_acks"], 1, "{a}");
    assert_eq!(st["last_acked"], 5, "{a}");
    assert_eq!(a["totals"]["unacked"], 0, "{a}");
    let c = conn(&a, 1);
    assert!(c["first_ack_ms"].as_u64().is_some() && c["last_ack_ms"].as_u64().is_some());
    assert!(c["max_ack_gap_us"].as_u64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_acked_returns_once_acked_and_pause_loses_nothing() {
    let (addr, _sim) = start(&["--rate", "2000"]).await;
    let s = "ethusdt@trade";
    let (mut ws, _) = subscribe(addr, "/ws", &[s]).await;
    for t in 1..=20 {
        let got = tick(&next_json(&mut ws).await);
        assert_eq!(got.t, t);
    }
    assert_eq!(
        http_get(addr, "/pause").await,
        (200, r#"{"ok":true}"#.to_owned())
    );
    // A client task keeps reading and acking whatever was already in flight.
    let reader = tokio::spawn(async move {
        ack(&mut ws, s, 1).await;
        let mut last = 1;
        for t in 2..=20 {
            ack(&mut ws, s, t).await;
            last = t;
        }
        loop {
            let got = tick(&next_json(&mut ws).await);
            assert_eq!(got.t, last + 1, "contiguous across pause/resume");
            last = got.t;
            ack(&mut ws, s, got.t).await;
            if got.t >= 1_000_000 {
                return;
            }
        }
    });
    let started = Instant::now();
    let a = audit(addr, Some(8_000)).await;
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "wait_acked timed out: {a}"
    );
    assert_eq!(a["paused"], true);
    let st = &conn(&a, 1)["streams"][s];
    assert_eq!(st["sent"], st["acked"], "{a}");
    assert_eq!(a["totals"]["unacked"], 0, "{a}");
    let sent_while_paused = st["sent"].as_u64().expect("sent");

    // Resume: ids continue where they stopped.
    assert_eq!(http_get(addr, "/resume").await.0, 200);
    let a = crate::support::audit_until(addr, |a| {
        a["totals"]["acked"].as_u64() > Some(sent_while_paused + 10)
    })
    .await;
    assert_eq!(a["totals"]["gaps"], 0, "{a}");
    assert_eq!(a["totals"]["duplicates"], 0, "{a}");
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_acked_times_out_when_nobody_acks() {
    let (addr, _sim) = start(&["--rate", "1000", "--trades", "3"]).await;
    let (mut ws, _) = subscribe(addr, "/ws", &["btcusdt@trade"]).await;
    for _ in 0..3 {
        next_json(&mut ws).await;
    }
    let started = Instant::now();
    let a = audit(addr, Some(300)).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(a["totals"]["unacked"], 3, "{a}");
}
