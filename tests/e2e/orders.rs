//! No order is sent twice or lost across handoffs: the exchange's own records
//! of orders and fills match what the worker believes, client id for client id.

use std::time::Duration;

use crate::cluster;

#[test]
fn hundred_upgrades_with_orders_in_flight_lose_and_duplicate_no_order() {
    orders_across_upgrades(cluster(), 100);
}

#[test]
fn over_tls_feeds_and_https_orders_neither_lose_nor_duplicate_an_order() {
    // wss:// feeds and the REST API over https://, both trusting the
    // exchange's CA through --ca-file.
    orders_across_upgrades(cluster().tls(), 30);
}

pub(crate) fn orders_across_upgrades(builder: handoff_testkit::ClusterBuilder, upgrades: usize) {
    let c = builder
        .connections(2)
        .rest()
        // Orders take 15 ms to answer, so upgrades regularly find one in flight.
        .sim_args(["--rate", "600", "--order-latency-ms", "15"])
        .worker_args(["--cooldown-trades", "3"])
        .start()
        .expect("cluster");
    for i in 0..upgrades {
        let out = c.upgrade(None).unwrap();
        assert!(out.success(), "upgrade {i}: {}", out.stderr);
    }
    assert_eq!(c.status().unwrap()["handoffs"]["completed"], upgrades);
    // Every trade processed, every order settled, none twice, none lost.
    let (summary, exchange) = crate::assert_no_order_twice(&c);
    eprintln!(
        "worker: {summary}\nexchange: orders {} filled {} dup ids {}",
        exchange["orders"], exchange["filled"], exchange["duplicate_client_ids"]
    );
    let sent = summary["orders_sent"].as_u64().unwrap();
    assert!(sent >= 20, "too few orders to prove anything: {summary}");
    assert_eq!(exchange["filled"], summary["orders_filled"], "{exchange}");
    assert_same_positions(&c, &summary);
    crate::assert_nothing_lost(&c.sim, 2);
}

/// The exchange's positions (from its own fills) equal the worker's.
fn assert_same_positions(c: &handoff_testkit::Cluster, summary: &serde_json::Value) {
    let positions = c
        .sim
        .get("/api/v3/positions", Duration::from_secs(5))
        .unwrap();
    for (symbol, p) in summary["positions"].as_object().unwrap() {
        let theirs: rust_decimal::Decimal =
            positions[symbol]["qty"].as_str().unwrap().parse().unwrap();
        let ours: rust_decimal::Decimal = p["qty"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            theirs, ours,
            "{symbol}: exchange {positions}, worker {summary}"
        );
    }
}

/// Orders the exchange has recorded.
fn orders_at_exchange(c: &handoff_testkit::Cluster) -> u64 {
    let audit = c.sim.get("/orders/audit", Duration::from_secs(5)).unwrap();
    audit["orders"].as_u64().unwrap()
}

/// Wait until the exchange has recorded `n` orders.
fn wait_orders(c: &handoff_testkit::Cluster, n: u64, what: &str) {
    handoff_testkit::wait_for(what, Duration::from_secs(60), || {
        Ok((orders_at_exchange(c) >= n).then_some(()))
    })
    .unwrap();
}

#[test]
fn a_crash_after_orders_since_the_checkpoint_reuses_no_id_and_forgets_no_order() {
    crash_after_orders_since_the_checkpoint(cluster());
}

/// Orders before and after a checkpoint, a kill -9, orders after the
/// recovery: the exchange refused no id as a duplicate, and what the
/// worker believes (orders, fills, positions) is what the exchange has.
pub(crate) fn crash_after_orders_since_the_checkpoint(builder: handoff_testkit::ClusterBuilder) {
    let c = builder
        .connections(2)
        .rest()
        .sim_args(["--rate", "600", "--order-latency-ms", "15"])
        // Checkpoints only when asked: the crash comes well after the last.
        .worker_args(["--cooldown-trades", "3", "--checkpoint-ms", "600000"])
        .start()
        .expect("cluster");
    wait_orders(&c, 5, "orders before the checkpoint");
    let at_checkpoint = c.fresh_summary().unwrap()["orders_sent"].as_u64().unwrap();
    // The dead worker's orders after its checkpoint: the recovery starts
    // from a state that knows none of them.
    wait_orders(&c, at_checkpoint + 5, "orders after the checkpoint");
    let dead = c.signal_worker(nix::sys::signal::Signal::SIGKILL).unwrap();
    crate::crashes::wait_replaced(&c, dead, Duration::from_secs(10));
    // The recovered worker trades again, under ids nobody used.
    let before = orders_at_exchange(&c);
    wait_orders(&c, before + 5, "orders after the recovery");
    // What it believes is what the exchange has: every order counted (the
    // dead worker's too), none refused as a duplicate, the same positions.
    let (summary, exchange) = crate::assert_no_order_twice(&c);
    assert_eq!(exchange["filled"], summary["orders_filled"], "{exchange}");
    assert_same_positions(&c, &summary);
}
