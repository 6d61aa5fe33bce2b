//! State after N upgrades equals state after none, for the same input; and a
//! new snapshot schema can be upgraded into and rolled back out of.

use std::path::PathBuf;
use std::time::Duration;

use handoff_testkit::{wait_for, Cluster};
use serde_json::Value;

use crate::cluster;

/// Trades per stream of the finite, deterministic feed.
pub(crate) const TRADES: u64 = 3000;

fn v1() -> PathBuf {
    env!("CARGO_BIN_EXE_trading-worker").into()
}

fn v2() -> PathBuf {
    env!("CARGO_BIN_EXE_trading-worker-v2").into()
}

fn deterministic_cluster() -> Cluster {
    deterministic(cluster())
}

/// `builder` on the finite, deterministic feed (seeded, [`TRADES`] per
/// stream).
pub(crate) fn deterministic(builder: handoff_testkit::ClusterBuilder) -> Cluster {
    builder
        .sim_args([
            "--trades",
            &TRADES.to_string(),
            "--rate",
            "1000",
            "--seed",
            "7",
        ])
        .start()
        .expect("cluster")
}

/// Once the worker has processed the whole feed, its checkpoint summary.
pub(crate) fn final_summary(c: &Cluster) -> Value {
    let summary = wait_for(
        "the whole feed to be processed",
        Duration::from_secs(60),
        || {
            let out = c.ctl(["checkpoint", "--wait"])?;
            if !out.success() {
                return Ok(None);
            }
            let s = c.status()?;
            let summary = s["checkpoint"]["summary"].clone();
            Ok((summary["trades_processed"].as_u64() == Some(2 * TRADES)).then_some(summary))
        },
    )
    .expect("final summary");
    eprintln!("final summary: {summary}");
    summary
}

/// The parts of the state every build shares, field for field.
pub(crate) fn schema1_view(s: &Value) -> Value {
    let mut positions = s["positions"].clone();
    if let Value::Object(m) = &mut positions {
        for p in m.values_mut() {
            if let Value::Object(p) = p {
                p.remove("traded_notional");
            }
        }
    }
    serde_json::json!({
        "digest": s["digest"],
        "positions": positions,
        "orders_sent": s["orders_sent"],
        "orders_filled": s["orders_filled"],
        "open_orders": s["open_orders"],
        "streams": s["streams"],
    })
}

fn reference_run() -> Value {
    let c = deterministic_cluster();
    final_summary(&c)
}

#[test]
fn state_after_fifty_upgrades_equals_state_after_none() {
    let reference = reference_run();
    assert!(
        reference["orders_sent"].as_u64().unwrap() > 0,
        "the strategy never traded: {reference}"
    );
    assert!(!reference["positions"].as_object().unwrap().is_empty());

    let c = deterministic_cluster();
    for i in 0..50 {
        let out = c.upgrade(None).unwrap();
        assert!(out.success(), "upgrade {i}: {}", out.stderr);
    }
    let upgraded = final_summary(&c);
    assert_eq!(c.status().unwrap()["handoffs"]["completed"], 50);
    assert_eq!(schema1_view(&upgraded), schema1_view(&reference));
    crate::assert_nothing_lost(&c.sim, 1);
}

#[test]
fn upgrade_into_schema_v2_and_back_keeps_the_state() {
    let reference = reference_run();
    let c = deterministic_cluster();
    for (i, build) in [v2(), v1(), v2(), v2(), v1()].iter().enumerate() {
        let out = c.upgrade(Some(build)).unwrap();
        assert!(
            out.success(),
            "upgrade {i} to {}: {}",
            build.display(),
            out.stderr
        );
        let schema = if build == &v2() { 2 } else { 1 };
        let s = c.status().unwrap();
        let summary = c.fresh_summary().unwrap();
        assert_eq!(summary["schema"], schema, "the new build runs: {s}");
        // On probation after v1 -> v2, the v2 build checkpoints in schema 1
        // (what the previous build reads); otherwise in its own.
        let stored = c.status().unwrap()["checkpoint"]["schema"]
            .as_u64()
            .unwrap();
        assert!(
            stored <= schema,
            "checkpoint schema {stored} for a schema-{schema} build"
        );
    }
    let upgraded = final_summary(&c);
    assert_eq!(upgraded["schema"], 1);
    assert_eq!(schema1_view(&upgraded), schema1_view(&reference));
    crate::assert_nothing_lost(&c.sim, 1);
}

#[test]
fn a_successor_that_cannot_read_the_state_is_refused_before_the_freeze() {
    let c = cluster()
        .sim_args(["--rate", "300"])
        .start()
        .expect("cluster");
    let pid = c.worker_pid().unwrap();
    let blind = c
        .worker_wrapper("reads-nothing", &[("HANDOFF_FAULT", "reads-no-schema")])
        .unwrap();
    let out = c.upgrade(Some(&blind)).unwrap();
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(out.stderr.contains("incompatible state"), "{}", out.stderr);
    let s = c.status().unwrap();
    assert_eq!(s["worker"]["pid"], pid);
    assert_eq!(s["handoffs"]["last"]["outcome"], "refused");
    assert!(
        s["handoffs"]["last"]["phases"]["frozen_us"].is_null(),
        "the old worker was frozen: {s}"
    );
    crate::assert_nothing_lost(&c.sim, 1);
}
