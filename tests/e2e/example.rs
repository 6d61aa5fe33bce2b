//! The bot a developer starts from (`examples/minimal_bot.rs`) runs under
//! the supervisor as it is: ten upgrades on the adversarial feed lose no
//! trade, its order timer keeps firing across them, and the exchange never
//! sees a client order id twice.
//!
//! The example is not a `[[bin]]`, so it has no `CARGO_BIN_EXE_*`: it is
//! found in `target/<profile>/examples/`, beside this test's `deps/`.
//! `cargo test` builds examples before it runs any test; `cargo test --test
//! e2e` alone does not, and this test then says so.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use handoff_testkit::{wait_for, Bins, Cluster, ClusterBuilder};
use rust_decimal::Decimal;
use serde_json::Value;

/// `target/<profile>/examples/minimal_bot`, checked to be there and not
/// older than its source.
fn example_bot() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("the test binary's directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bot = dir.join("examples").join("minimal_bot");
    let built = std::fs::metadata(&bot).and_then(|m| m.modified());
    let Ok(built) = built else {
        panic!(
            "{} is missing: `cargo test` builds the examples, `cargo test --test e2e` does not; \
             run `cargo build --example minimal_bot` first",
            bot.display()
        );
    };
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/minimal_bot.rs");
    let edited = std::fs::metadata(source).and_then(|m| m.modified());
    assert!(
        edited.is_ok_and(|e| e <= built),
        "{} is older than {source}: run `cargo build --example minimal_bot` (or plain `cargo test`)",
        bot.display()
    );
    bot
}

/// The orders the exchange recorded.
fn exchange_orders(c: &Cluster) -> Value {
    c.sim.get("/orders/audit", Duration::from_secs(5)).unwrap()
}

/// Wait until the exchange has recorded more than `n` orders; their count.
fn wait_for_order_after(c: &Cluster, n: u64, what: &str) -> u64 {
    wait_for(what, Duration::from_secs(10), || {
        let now = exchange_orders(c)["orders"].as_u64().unwrap_or(0);
        Ok((now > n).then_some(now))
    })
    .unwrap()
}

#[test]
fn example_bot_under_the_supervisor_loses_no_trade_and_sends_no_order_twice() {
    let c = ClusterBuilder::new(Bins {
        worker: example_bot(),
        ..crate::bins()
    })
    // The bot subscribes to btcusdt@trade only; it ignores --symbols and
    // --ack, and takes the REST base URL from --rest.
    .symbols("btcusdt")
    .rest()
    .sim_args(crate::HOSTILE_FEED)
    .start()
    .expect("cluster");
    let first = c.worker_pid().unwrap();
    // Its timer places an order every 2 s: upgrades are spread over a few
    // of them (waiting for the next order after every third), so the timer
    // crosses handoffs at every point of its period.
    let mut orders = wait_for_order_after(&c, 0, "the first order");
    for i in 0..10 {
        let out = c.upgrade(None).unwrap();
        assert!(out.success(), "upgrade {i}: {}{}", out.stdout, out.stderr);
        if i % 3 == 2 {
            orders = wait_for_order_after(&c, orders, "an order after an upgrade");
        }
    }
    let status = c.status().unwrap();
    assert_eq!(status["handoffs"]["completed"], 10, "{status}");
    assert_ne!(status["worker"]["pid"].as_u64(), Some(u64::from(first)));
    // The timer survived the last handoff too.
    wait_for_order_after(&c, orders, "an order after the last upgrade");

    // The bot's own account (its checkpoint summary) and the exchange's
    // agree, once no order is in flight: every id the bot took reached the
    // exchange once, ex-1 to ex-N, and every fill is in its position.
    let (summary, exchange) =
        wait_for("bot and exchange to agree", Duration::from_secs(20), || {
            let s = c.fresh_summary()?;
            let e = exchange_orders(&c);
            let p = c.sim.get("/api/v3/positions", Duration::from_secs(5))?;
            let qty = |v: &Value| v.as_str().and_then(|q| q.parse::<Decimal>().ok());
            let agree = s["orders_sent"] == e["orders"]
                && qty(&s["position"]).is_some()
                && qty(&s["position"]) == qty(&p["BTCUSDT"]["qty"]);
            Ok(agree.then_some((s, e)))
        })
        .unwrap();
    eprintln!(
        "bot: {summary}\nexchange: orders {} filled {} duplicate ids {}",
        exchange["orders"], exchange["filled"], exchange["duplicate_client_ids"]
    );
    let n = summary["orders_sent"].as_u64().unwrap();
    assert!(n >= 5, "too few orders to prove anything: {summary}");
    assert_eq!(
        exchange["duplicate_client_ids"], 0,
        "an order was sent twice: {exchange}"
    );
    assert_eq!(exchange["filled"].as_u64(), Some(n), "{exchange}");
    let ids: BTreeSet<String> = exchange["by_client_id"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let want: BTreeSet<String> = (1..=n).map(|i| format!("ex-{i}")).collect();
    assert_eq!(ids, want, "client ids: {exchange}");
    crate::assert_nothing_lost(&c.sim, 1);
}
