//! End-to-end tests: the real `supervisor`, `trading-worker` and
//! `exchange-sim` processes over real sockets, driven like an operator would
//! (`supervisorctl`, signals) and judged by what the exchange saw (the
//! simulator's audit of every ack, frame and close).

mod book;
mod checkpoints;
mod continuity;
mod control;
mod crashes;
mod example;
mod failed_upgrades;
mod fault_matrix;
mod fd_store;
mod feeds;
mod first_run;
mod operator;
mod operator_cli;
mod orders;
mod phases;
mod precopy;
mod probation;
mod python;
mod signed_orders;
mod starvation;
mod supervisor_crash;
mod supervisor_loss;
mod timers;
mod tls;
mod upgrades;
mod user_stream;

use std::time::Duration;

use handoff_testkit::{wait_for, Bins, ClusterBuilder};
use serde_json::Value;

pub fn bins() -> Bins {
    Bins {
        supervisor: env!("CARGO_BIN_EXE_supervisor").into(),
        supervisorctl: env!("CARGO_BIN_EXE_supervisorctl").into(),
        worker: env!("CARGO_BIN_EXE_trading-worker").into(),
        sim: env!("CARGO_BIN_EXE_exchange-sim").into(),
    }
}

pub fn cluster() -> ClusterBuilder {
    ClusterBuilder::new(bins())
}

/// The adversarial feed: fragmented messages with pings between fragments,
/// large messages, and writes split at arbitrary bytes across TCP segments.
pub const HOSTILE_FEED: [&str; 10] = [
    "--rate",
    "400",
    "--fragment-every",
    "7",
    "--ping-every",
    "11",
    "--big-every",
    "53",
    "--max-chunk",
    "700",
];

/// A feed that fragments messages and puts pings between fragments but sends
/// no frame too big to take out of the kernel whole, so that a crash at any
/// moment leaves the kernel on a frame boundary.
pub const CRASH_SAFE_FEED: [&str; 6] = [
    "--rate",
    "400",
    "--fragment-every",
    "5",
    "--ping-every",
    "7",
];

/// Stop the feed, wait for the worker to ack everything, and assert that the
/// exchange saw nothing lost, duplicated, reordered or malformed, and no
/// connection closed or re-opened.
pub fn assert_nothing_lost(sim: &handoff_testkit::Sim, connections: usize) -> Value {
    sim.pause().expect("pause feed");
    let audit = sim
        .audit_when_acked(Duration::from_secs(20))
        .expect("audit");
    let t = &audit["totals"];
    eprintln!("exchange audit totals: {t}");
    let n = |k: &str| t[k].as_u64().unwrap_or(u64::MAX);
    assert!(n("sent") > 0, "the feed sent nothing: {audit}");
    assert_eq!(n("gaps"), 0, "acks skipped trades (lost): {audit}");
    assert_eq!(n("duplicates"), 0, "trades acked twice: {audit}");
    assert_eq!(n("reordered"), 0, "trades acked out of order: {audit}");
    assert_eq!(n("unknown_acks"), 0, "acks of trades never sent: {audit}");
    assert_eq!(
        n("malformed"),
        0,
        "the exchange received malformed frames (interleaved writes?): {audit}"
    );
    assert_eq!(n("unmasked"), 0, "unmasked client frames: {audit}");
    assert_eq!(n("closed"), 0, "a connection was closed: {audit}");
    assert_eq!(n("unacked"), 0, "trades never acked (lost): {audit}");
    assert_eq!(n("acked"), n("sent"), "{audit}");
    assert_eq!(
        audit["connections_total"].as_u64(),
        Some(connections as u64),
        "the worker re-connected: {audit}"
    );
    audit
}

/// After [`assert_nothing_lost`]: every connection saw pings, and the
/// exchange has a pong for each one. A ping can follow the last trade, so
/// its pong may reach the exchange after the last ack: wait for the pongs
/// to catch up rather than compare at the moment of the last ack. A pong
/// lost in a handoff never arrives, and the wait fails naming the
/// connection.
pub fn assert_every_ping_answered(sim: &handoff_testkit::Sim) {
    let unanswered = |audit: &Value| -> Option<Value> {
        audit["connections"]
            .as_array()?
            .iter()
            .find(|c| c["pings_sent"] != c["pongs_received"])
            .cloned()
    };
    let mut last = Value::Null;
    let settled = wait_for("a pong for every ping", Duration::from_secs(20), || {
        let audit = sim.audit()?;
        let done = unanswered(&audit).is_none();
        last = audit.clone();
        Ok(done.then_some(audit))
    });
    let audit = settled.unwrap_or_else(|e| {
        panic!(
            "a ping went unanswered ({e}): {}",
            unanswered(&last).unwrap_or(last)
        )
    });
    for conn in audit["connections"].as_array().unwrap() {
        assert!(conn["pings_sent"].as_u64().unwrap() > 0, "no pings: {conn}");
    }
}

/// The orders the exchange took match what the worker sent: none twice.
/// Pauses the feed and waits until every trade sent was processed (acked),
/// so that no order is still to come from one, then for orders to settle.
pub fn assert_no_order_twice(c: &handoff_testkit::Cluster) -> (Value, Value) {
    c.sim.pause().unwrap();
    c.sim.audit_when_acked(Duration::from_secs(20)).unwrap();
    let summary = wait_for("orders to settle", Duration::from_secs(30), || {
        let s = c.fresh_summary()?;
        Ok((s["open_orders"] == 0).then_some(s))
    })
    .unwrap();
    let exchange = c.sim.get("/orders/audit", Duration::from_secs(5)).unwrap();
    assert_eq!(
        exchange["duplicate_client_ids"], 0,
        "an order was sent twice: {exchange}"
    );
    assert_eq!(
        exchange["orders"].as_u64(),
        summary["orders_sent"].as_u64(),
        "orders lost or invented: worker {summary}, exchange {exchange}"
    );
    (summary, exchange)
}

/// Upgrade `n` times, each one successful, its phases printed, and a new
/// worker process serving after it; the worker pids, first to last.
pub fn upgrade_n(c: &handoff_testkit::Cluster, n: usize) -> Vec<u32> {
    let mut pids = vec![c.worker_pid().unwrap()];
    for i in 0..n {
        let out = c.upgrade(None).unwrap();
        assert!(
            out.success(),
            "upgrade {i} failed: {}{}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stdout.contains("old_stopped"),
            "phases not printed: {}",
            out.stdout
        );
        let pid = c.worker_pid().unwrap();
        assert!(
            !pids.contains(&pid),
            "upgrade {i} did not replace the worker"
        );
        pids.push(pid);
    }
    pids
}

/// The names of the connections a status report says are held, in order.
pub fn held_names(status: &Value) -> Vec<String> {
    status["connections"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILL the worker while the feed flows, wait for its replacement, and
/// check the exchange kept all `n` connections through it. The feed must send
/// no frame above the worker's whole-frame limit ([`CRASH_SAFE_FEED`]): a
/// crash half-way through reading one tears that connection by design (the
/// kernel is mid-frame; the stream module's docs), and it is re-opened.
pub fn crash_keeps_connections(c: &handoff_testkit::Cluster, n: usize) -> Value {
    let dead = c.signal_worker(nix::sys::signal::Signal::SIGKILL).unwrap();
    let s = crashes::wait_replaced(c, dead, Duration::from_secs(10));
    assert_eq!(held_names(&s).len(), n, "{s}");
    assert_connections_survived(c, n)
}

/// [`crash_keeps_connections`] for a feed that sends big frames (such as
/// [`HOSTILE_FEED`]): the feed is paused and everything acked first, so the
/// worker is killed between frames, then resumed for the recovered worker.
pub fn crash_at_rest_keeps_connections(c: &handoff_testkit::Cluster, n: usize) -> Value {
    c.sim.pause().unwrap();
    let audit = c.sim.audit_when_acked(Duration::from_secs(20)).unwrap();
    assert_eq!(audit["totals"]["unacked"], 0, "not drained: {audit}");
    let dead = c.signal_worker(nix::sys::signal::Signal::SIGKILL).unwrap();
    let s = crashes::wait_replaced(c, dead, Duration::from_secs(10));
    assert_eq!(held_names(&s).len(), n, "{s}");
    c.sim.resume().unwrap();
    assert_connections_survived(c, n)
}

/// Wait until the exchange has received acks beyond those it has now.
pub fn wait_for_more_acks(sim: &handoff_testkit::Sim, what: &str) {
    let acked = |a: &Value| a["totals"]["acked"].as_u64().unwrap_or(0);
    let before = acked(&sim.audit().unwrap());
    wait_for(what, Duration::from_secs(10), || {
        Ok((acked(&sim.audit()?) > before).then_some(()))
    })
    .unwrap();
}

/// After a crash: the exchange saw no close, no malformed frame (the new
/// worker parsed the stream from a frame boundary), no duplicate or
/// reordered ack, and acks went on. Trades the dead worker had taken from the
/// kernel but not acked are the loss recovery reports (ack gaps).
pub fn assert_connections_survived(c: &handoff_testkit::Cluster, connections: usize) -> Value {
    wait_for_more_acks(&c.sim, "acks to resume");
    c.sim.pause().unwrap();
    let audit = c.sim.audit_when_acked(Duration::from_secs(10)).unwrap();
    let t = &audit["totals"];
    eprintln!("after recovery: {t}");
    assert_eq!(t["closed"], 0, "a connection closed: {audit}");
    assert_eq!(t["malformed"], 0, "{audit}");
    assert_eq!(t["unmasked"], 0, "{audit}");
    assert_eq!(t["duplicates"], 0, "{audit}");
    assert_eq!(t["reordered"], 0, "{audit}");
    assert_eq!(t["unacked"], 0, "{audit}");
    assert_eq!(
        audit["connections_total"].as_u64(),
        Some(connections as u64),
        "reconnected: {audit}"
    );
    audit
}
