//! The REST order API: placement, query, cancel, duplicates, positions,
//! reference prices, and the latency and reject flags.

use crate::http_client::HttpConn;
use crate::support::{next_json, start, subscribe, tick, PATIENCE};
use exchange_sim::SimHandle;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn order(side: &str, kind: &str, qty: &str, price: Option<&str>, id: &str) -> String {
    let mut o = json!({
        "symbol": "BTCUSDT", "side": side, "type": kind, "quantity": qty, "newClientOrderId": id,
    });
    if let Some(p) = price {
        o["price"] = p.into();
    }
    o.to_string()
}

fn market(side: &str, qty: &str, id: &str) -> String {
    order(side, "MARKET", qty, None, id)
}

const ORDER: &str = "/api/v3/order";

fn by_client(id: &str) -> String {
    format!("{ORDER}?symbol=BTCUSDT&origClientOrderId={id}")
}

async fn orders_audit(c: &mut HttpConn) -> Value {
    let r = c.get("/orders/audit").await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn place_query_cancel_round_trips() {
    let (addr, _sim) = start(&[]).await;
    let mut c = HttpConn::connect(addr).await;

    let placed = c
        .post(ORDER, &market("BUY", "0.01000000", "w1-000042"))
        .await;
    assert_eq!(placed.status, 200, "{placed:?}");
    let o = placed.json();
    assert_eq!(o["symbol"], "BTCUSDT");
    assert_eq!(o["orderId"], 1);
    assert_eq!(o["clientOrderId"], "w1-000042");
    assert_eq!(o["status"], "FILLED");
    assert_eq!(o["side"], "BUY");
    assert_eq!(o["type"], "MARKET");
    assert_eq!(o["origQty"], "0.01000000");
    assert_eq!(o["executedQty"], "0.01000000");
    assert_eq!(o["price"], "0.00");
    // No feed connection yet: the generator's starting price.
    assert_eq!(o["avgPrice"], "42000.00");
    assert!(o["transactTime"]
        .as_u64()
        .is_some_and(|t| t > 1_600_000_000_000));

    assert_eq!(c.get(&by_client("w1-000042")).await.json(), o);
    let by_id = c.get(&format!("{ORDER}?symbol=BTCUSDT&orderId=1")).await;
    assert_eq!(by_id.json(), o);

    // A LIMIT buy below the market rests; a marketable LIMIT sell fills at the market.
    let rest = c
        .post(
            ORDER,
            &order("BUY", "LIMIT", "2", Some("41000.5"), "rest-1"),
        )
        .await;
    let r = rest.json();
    assert_eq!(
        (r["status"].clone(), r["orderId"].clone()),
        (json!("NEW"), json!(2))
    );
    assert_eq!(
        (r["executedQty"].clone(), r["avgPrice"].clone()),
        (json!("0.00000000"), json!("0.00"))
    );
    assert_eq!(r["price"], "41000.50");
    let cross = c
        .post(ORDER, &order("SELL", "LIMIT", "0.5", Some("1"), "cross-1"))
        .await;
    let x = cross.json();
    assert_eq!(
        (x["status"].clone(), x["avgPrice"].clone()),
        (json!("FILLED"), json!("42000.00"))
    );
    assert_eq!(x["price"], "1.00");

    let cancelled = c.request("DELETE", &by_client("rest-1"), None).await;
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    let k = cancelled.json();
    assert_eq!(
        (k["status"].clone(), k["orderId"].clone()),
        (json!("CANCELED"), json!(2))
    );
    assert_eq!(
        c.get(&by_client("rest-1")).await.json()["status"],
        "CANCELED"
    );

    // Cancelling twice, a filled order, or an unknown order: -2011.
    for id in ["rest-1", "w1-000042", "never"] {
        let again = c.request("DELETE", &by_client(id), None).await;
        assert_eq!(again.refusal(400, -2011), "Unknown order sent.");
    }
    assert_eq!(
        c.get(&by_client("never")).await.refusal(404, -2013),
        "Order does not exist."
    );
    // The right id under another symbol is not the order.
    let other = c
        .get(&format!(
            "{ORDER}?symbol=ETHUSDT&origClientOrderId=w1-000042"
        ))
        .await;
    other.refusal(404, -2013);
    let unserved = c
        .post(
            ORDER,
            &market("BUY", "1", "x").replace("BTCUSDT", "XRPUSDT"),
        )
        .await;
    assert_eq!(unserved.refusal(400, -1121), "Invalid symbol.");

    let a = orders_audit(&mut c).await;
    assert_eq!(
        [
            &a["orders"],
            &a["filled"],
            &a["canceled"],
            &a["open"],
            &a["invalid"]
        ],
        [&json!(3), &json!(2), &json!(1), &json!(0), &json!(1)]
    );
    let e = &a["by_client_id"]["w1-000042"];
    assert_eq!(
        (e["status"].clone(), e["side"].clone()),
        (json!("FILLED"), json!("BUY"))
    );
    assert_eq!(
        (e["qty"].clone(), e["price"].clone()),
        (json!("0.01000000"), json!("42000.00"))
    );
    assert!(e["received_ms"].as_u64().is_some_and(|t| t > 0));
    assert_eq!(a["by_client_id"]["rest-1"]["status"], "CANCELED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_client_ids_are_refused_across_connections() {
    let (addr, _sim) = start(&[]).await;
    let (mut a, mut b) = (HttpConn::connect(addr).await, HttpConn::connect(addr).await);
    assert_eq!(
        a.post(ORDER, &market("BUY", "1", "dup-1")).await.status,
        200
    );
    let dup = b.post(ORDER, &market("SELL", "2", "dup-1")).await;
    assert_eq!(dup.refusal(400, -2010), "Duplicate order sent.");
    // Even the id of a cancelled order stays used.
    let resting = order("BUY", "LIMIT", "1", Some("1"), "dup-2");
    assert_eq!(b.post(ORDER, &resting).await.status, 200);
    assert_eq!(
        a.request("DELETE", &by_client("dup-2"), None).await.status,
        200
    );
    a.post(ORDER, &market("BUY", "1", "dup-2"))
        .await
        .refusal(400, -2010);
    let audit = orders_audit(&mut b).await;
    assert_eq!(audit["duplicate_client_ids"], 2);
    assert_eq!(audit["orders"], 2);
    // The refused duplicate did not change the original order.
    assert_eq!(audit["by_client_id"]["dup-1"]["side"], "BUY");
    let positions = a.get("/api/v3/positions").await.json();
    assert_eq!(positions["BTCUSDT"]["qty"], "1.00000000");
}

/// Move BTCUSDT's reference price to `cents`, fill a MARKET order there,
/// and return the BTCUSDT position.
async fn step(
    c: &mut HttpConn,
    sim: &SimHandle,
    cents: u64,
    side: &str,
    qty: &str,
    id: &str,
) -> Value {
    assert!(sim.set_reference_price("BTCUSDT", cents));
    let r = c.post(ORDER, &market(side, qty, id)).await;
    assert_eq!(r.status, 200, "{r:?}");
    c.get("/api/v3/positions").await.json()["BTCUSDT"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_are_booked_at_average_cost() {
    let (addr, sim) = start(&[]).await;
    let mut c = HttpConn::connect(addr).await;
    let flat = c.get("/api/v3/positions").await.json();
    assert_eq!(
        flat,
        json!({
            "BTCUSDT": {"qty": "0.00000000", "avg_price": "0.00", "realized_pnl": "0.00", "fills": 0},
            "ETHUSDT": {"qty": "0.00000000", "avg_price": "0.00", "realized_pnl": "0.00", "fills": 0},
        })
    );
    step(&mut c, &sim, 10_000, "BUY", "2", "p1").await;
    let p = step(&mut c, &sim, 11_000, "SELL", "1", "p2").await;
    assert_eq!(
        p,
        json!({"qty": "1.00000000", "avg_price": "100.00", "realized_pnl": "10.00", "fills": 2})
    );
    // Through zero: close 1 at a loss of 10, open a short of 2 at 90.
    let p = step(&mut c, &sim, 9_000, "SELL", "3", "p3").await;
    assert_eq!(
        p,
        json!({"qty": "-2.00000000", "avg_price": "90.00", "realized_pnl": "0.00", "fills": 3})
    );
    let p = step(&mut c, &sim, 9_300, "SELL", "1", "p4").await;
    assert_eq!(
        (p["qty"].clone(), p["avg_price"].clone()),
        (json!("-3.00000000"), json!("91.00"))
    );
    let p = step(&mut c, &sim, 8_000, "BUY", "3", "p5").await;
    assert_eq!(
        p,
        json!({"qty": "0.00000000", "avg_price": "0.00", "realized_pnl": "33.00", "fills": 5})
    );
    assert!(!sim.set_reference_price("XRPUSDT", 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_price_is_the_latest_generated_trade() {
    let (addr, _sim) = start(&["--trades", "5", "--rate", "1000"]).await;
    let (mut ws, _) = subscribe(addr, "/ws", &["btcusdt@trade"]).await;
    let mut last = None;
    for _ in 0..5 {
        last = Some(tick(&next_json(&mut ws).await));
    }
    let last = last.expect("five trades");
    assert_eq!(last.t, 5);
    let mut c = HttpConn::connect(addr).await;
    let o = c.post(ORDER, &market("SELL", "0.5", "ref-1")).await.json();
    assert_eq!(o["avgPrice"], last.p.as_str());
    // ETHUSDT never traded on any connection: still its starting price.
    let eth = market("BUY", "1", "ref-2").replace("BTCUSDT", "ETHUSDT");
    assert_eq!(c.post(ORDER, &eth).await.json()["avgPrice"], "2200.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_answers_after_the_order_is_recorded() {
    const LATENCY: Duration = Duration::from_millis(400);
    let (addr, _sim) = start(&["--order-latency-ms", "400"]).await;
    let mut placer = HttpConn::connect(addr).await;
    let sent = Instant::now();
    let post = tokio::spawn(async move {
        let r = placer.post(ORDER, &market("BUY", "1", "slow-1")).await;
        (r, Instant::now())
    });
    // The audit is not delayed: poll it until the order shows up.
    let mut watcher = HttpConn::connect(addr).await;
    let seen = loop {
        let a = orders_audit(&mut watcher).await;
        if a["by_client_id"]["slow-1"]["status"] == "FILLED" {
            break Instant::now();
        }
        assert!(sent.elapsed() < PATIENCE, "order never recorded: {a}");
    };
    // A query sent while the placement is still in flight finds the order.
    let asked = Instant::now();
    let found = watcher.get(&by_client("slow-1")).await;
    assert_eq!(found.json()["status"], "FILLED");
    assert!(asked.elapsed() >= LATENCY, "GET answered without the delay");
    let (placed, answered) = post.await.expect("POST task");
    assert_eq!(placed.json()["status"], "FILLED");
    assert!(answered.duration_since(sent) >= LATENCY);
    assert!(
        seen < answered && asked < answered,
        "order not visible before the answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nth_placement_is_rejected() {
    let (addr, _sim) = start(&["--order-reject-every", "2"]).await;
    let mut c = HttpConn::connect(addr).await;
    assert_eq!(c.post(ORDER, &market("BUY", "1", "r1")).await.status, 200);
    // Duplicates and malformed requests do not count as placements.
    c.post(ORDER, &market("BUY", "1", "r1"))
        .await
        .refusal(400, -2010);
    c.post(ORDER, "{}").await.refusal(400, -1102);
    let rejected = c.post(ORDER, &market("BUY", "1", "r2")).await;
    assert_eq!(rejected.refusal(400, -2010), "Insufficient balance.");
    c.get(&by_client("r2")).await.refusal(404, -2013);
    // The rejected order never existed: its id may be used again.
    assert_eq!(c.post(ORDER, &market("BUY", "1", "r2")).await.status, 200);
    c.post(ORDER, &market("BUY", "1", "r3"))
        .await
        .refusal(400, -2010);
    let a = orders_audit(&mut c).await;
    assert_eq!(
        [
            &a["orders"],
            &a["rejected"],
            &a["duplicate_client_ids"],
            &a["invalid"]
        ],
        [&json!(2), &json!(2), &json!(1), &json!(1)]
    );
}
