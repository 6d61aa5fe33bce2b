//! The reference worker's local order book (issue #14): kept from the
//! simulator's depth diffs and REST snapshots Binance's way, part of the
//! handed-over state. Judged against the exchange's own book: the same
//! digest at the same update id.

use std::time::Duration;

use handoff_testkit::{wait_for, Cluster};
use serde_json::Value;

use crate::{cluster, HOSTILE_FEED};

const SYMBOLS: [&str; 2] = ["BTCUSDT", "ETHUSDT"];

/// The worker's book summary for `symbol` (from a fresh checkpoint).
fn worker_book(c: &Cluster, symbol: &str) -> (Value, u64) {
    let s = c.fresh_summary().unwrap();
    (
        s["book"][symbol].clone(),
        s["book_resyncs"].as_u64().unwrap_or(u64::MAX),
    )
}

/// Wait until every symbol's book follows the stream.
fn wait_synced(c: &Cluster) {
    wait_for("the books to sync", Duration::from_secs(20), || {
        let s = c.fresh_summary()?;
        Ok(SYMBOLS
            .iter()
            .all(|sym| s["book"][sym]["synced"] == true)
            .then_some(()))
    })
    .unwrap();
}

/// Pause the feed and wait until the worker's book is at the exchange's
/// update id; then both digests must be equal.
fn assert_books_equal(c: &Cluster) -> u64 {
    c.sim.pause().unwrap();
    let mut resyncs = 0;
    for symbol in SYMBOLS {
        let path = format!("/api/v3/depth/digest?symbol={symbol}");
        let theirs = c.sim.get(&path, Duration::from_secs(5)).unwrap();
        let ours = wait_for(
            &format!("{symbol}'s book at the exchange's id"),
            Duration::from_secs(30),
            || {
                let (b, r) = worker_book(c, symbol);
                resyncs = r;
                Ok(
                    (b["last_update_id"] == theirs["lastUpdateId"] && b["synced"] == true)
                        .then_some(b),
                )
            },
        )
        .unwrap();
        assert_eq!(
            ours["digest"], theirs["digest"],
            "{symbol}: worker {ours}, exchange {theirs}"
        );
        assert!(
            ours["bids"].as_u64() > Some(0) && ours["asks"].as_u64() > Some(0),
            "{ours}"
        );
    }
    resyncs
}

#[test]
fn the_local_book_equals_the_exchanges_after_a_hundred_handoffs() {
    let c = cluster()
        .rest()
        .sim_args(HOSTILE_FEED)
        .sim_args(["--depth-every-ms", "5"])
        .worker_args(["--book"])
        .start()
        .expect("cluster");
    wait_synced(&c);
    for i in 0..100 {
        let out = c.upgrade(None).unwrap();
        assert!(out.success(), "upgrade {i}: {}", out.stderr);
    }
    let resyncs = assert_books_equal(&c);
    assert_eq!(resyncs, 0, "a handoff made a gap in the diffs");
    let audit = c.sim.audit_when_acked(Duration::from_secs(20)).unwrap();
    let depth = &audit["totals"]["depth"];
    assert!(depth["acked"].as_u64() > Some(100), "{depth}");
    for k in ["gaps", "duplicates", "reordered", "unknown_acks"] {
        assert_eq!(depth[k], 0, "diff {k}: {depth}");
    }
    crate::assert_nothing_lost(&c.sim, 1);
}

#[test]
fn after_a_sigkill_in_a_burst_of_diffs_the_gap_is_found_and_the_book_resyncs() {
    let c = cluster()
        .rest()
        .sim_args(["--rate", "300", "--depth-every-ms", "20"])
        .worker_args(["--book", "--checkpoint-ms", "600000"])
        .start()
        .expect("cluster");
    wait_synced(&c);
    // The checkpoint a recovery will restore (no other comes before the kill).
    let (at_checkpoint, _) = worker_book(&c, "BTCUSDT");
    let checkpoint_u = at_checkpoint["last_update_id"].as_u64().unwrap();
    c.sim
        .get(
            "/control/depth_burst?symbol=BTCUSDT&n=20000",
            Duration::from_secs(5),
        )
        .unwrap();
    let consumed = |a: &Value| -> u64 {
        a["connections"][0]["streams"]["btcusdt@depth@100ms"]["last_acked_u"]
            .as_u64()
            .unwrap_or(0)
    };
    // In the middle of the burst: the worker has taken diffs past the checkpoint.
    wait_for("diffs past the checkpoint", Duration::from_secs(20), || {
        Ok((consumed(&c.sim.audit()?) > checkpoint_u + 100).then_some(()))
    })
    .unwrap();
    let dead = c.signal_worker(nix::sys::signal::Signal::SIGKILL).unwrap();
    let took = consumed(&c.sim.audit().unwrap());
    // A gap surely happened: the dead worker consumed diffs the restored
    // book never saw.
    assert!(
        took > checkpoint_u,
        "no diff past the checkpoint ({took} <= {checkpoint_u})"
    );
    crate::crashes::wait_replaced(&c, dead, Duration::from_secs(10));
    let resyncs = assert_books_equal(&c);
    assert!(resyncs >= 1, "the gap after the crash went unnoticed");
}
