//! Diff streams: Binance's shape and contiguity, the REST snapshot and
//! the digest agreeing with them, shaping, bursts, pause, and diff acks.

use crate::http_client::HttpConn;
use crate::raw::RawClient;
use crate::support::{audit, audit_until, conn, http_get, next_json, start, subscribe};
use futures_util::SinkExt;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const BTC: &str = "btcusdt@depth@100ms";

/// A client-side book, kept as Binance documents (strings parsed as decimals).
#[derive(Debug, Default, PartialEq)]
struct LocalBook {
    last: u64,
    bids: BTreeMap<Decimal, Decimal>,
    asks: BTreeMap<Decimal, Decimal>,
}

fn dec(v: &Value) -> Decimal {
    let text = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    let (_, frac) = text.split_once('.').expect("decimal point");
    assert_eq!(frac.len(), 8, "8 decimals: {text}");
    Decimal::from_str(text).expect("decimal")
}

fn levels(v: &Value) -> Vec<(Decimal, Decimal)> {
    let list = v.as_array().unwrap_or_else(|| panic!("not a list: {v}"));
    list.iter()
        .map(|l| {
            assert_eq!(l.as_array().map(Vec::len), Some(2), "{l}");
            (dec(&l[0]), dec(&l[1]))
        })
        .collect()
}

impl LocalBook {
    fn from_snapshot(snap: &Value) -> Self {
        let bids = levels(&snap["bids"]);
        let asks = levels(&snap["asks"]);
        assert!(bids.windows(2).all(|w| w[0].0 > w[1].0), "bids descending");
        assert!(asks.windows(2).all(|w| w[0].0 < w[1].0), "asks ascending");
        Self {
            last: snap["lastUpdateId"].as_u64().expect("lastUpdateId"),
            bids: bids.into_iter().collect(),
            asks: asks.into_iter().collect(),
        }
    }

    /// Apply a diff, checking it continues the book.
    fn apply(&mut self, data: &Value) {
        let (first, last) = (data["U"].as_u64(), data["u"].as_u64());
        let (Some(first), Some(last)) = (first, last) else {
            panic!("no U/u in {data}");
        };
        assert_eq!(first, self.last + 1, "U continues the book: {data}");
        for (side, key) in [(&mut self.bids, "b"), (&mut self.asks, "a")] {
            for (price, qty) in levels(&data[key]) {
                if qty.is_zero() {
                    side.remove(&price);
                } else {
                    side.insert(price, qty);
                }
            }
        }
        self.last = last;
    }

    /// The digest, implemented from the crate doc's description alone.
    fn digest(&self) -> String {
        let mut text = String::new();
        for (p, q) in self.bids.iter().rev() {
            text.push_str(&format!("{}:{};", p.normalize(), q.normalize()));
        }
        text.push('|');
        for (p, q) in &self.asks {
            text.push_str(&format!("{}:{};", p.normalize(), q.normalize()));
        }
        format!("{:08x}", crc32fast::hash(text.as_bytes()))
    }
}

async fn get_json(c: &mut HttpConn, path: &str) -> Value {
    let r = c.get(path).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

/// The next diff on `ws` (its `data`), checking the envelope.
async fn next_diff<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, stream: &str) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let msg = next_json(ws).await;
    assert_eq!(msg["stream"], stream, "{msg}");
    let d = &msg["data"];
    assert_eq!(d["e"], "depthUpdate", "{msg}");
    assert!(
        d["E"].as_u64().is_some_and(|e| e > 1_600_000_000_000),
        "{msg}"
    );
    msg["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diffs_rebuild_the_snapshot_and_match_the_digest() {
    let (addr, _sim) = start(&["--depth-every-ms", "5"]).await;
    let (mut ws, answer) = subscribe(addr, "/ws", &[BTC]).await;
    assert_eq!(answer, json!({"result": null, "id": 1}));
    // Binance's procedure: buffer, snapshot, drop what it covers, apply the rest.
    let mut buffered = Vec::new();
    for _ in 0..5 {
        let d = next_diff(&mut ws, BTC).await;
        assert_eq!(d["s"], "BTCUSDT");
        if let Some(prev) = buffered.last() {
            let prev: &Value = prev;
            assert_eq!(d["U"].as_u64(), prev["u"].as_u64().map(|u| u + 1), "{d}");
        }
        buffered.push(d);
    }
    let mut http = HttpConn::connect(addr).await;
    let snap = get_json(&mut http, "/api/v3/depth?symbol=BTCUSDT&limit=5000").await;
    let mut book = LocalBook::from_snapshot(&snap);
    assert!(
        book.bids.len() >= 20 && book.asks.len() >= 20,
        "a few dozen levels: {snap}"
    );
    let best_bid = book.bids.keys().next_back().copied();
    assert!(best_bid < book.asks.keys().next().copied(), "not crossed");
    assert!(buffered[0]["U"].as_u64() <= Some(book.last + 1), "{snap}");
    let mut applied = 0;
    let mut prev_u = buffered.last().and_then(|d| d["u"].as_u64());
    for d in &buffered {
        if d["u"].as_u64() > Some(book.last) {
            book.apply(d);
            applied += 1;
        }
    }
    while applied < 40 {
        let d = next_diff(&mut ws, BTC).await;
        assert_eq!(d["U"].as_u64(), prev_u.map(|u| u + 1), "contiguous: {d}");
        prev_u = d["u"].as_u64();
        if d["u"].as_u64() > Some(book.last) {
            book.apply(&d);
            applied += 1;
        }
    }
    // Paused: the books stop; everything made before reaches the client.
    assert_eq!(http.get("/pause").await.status, 200);
    let digest = get_json(&mut http, "/api/v3/depth/digest?symbol=BTCUSDT").await;
    let last = digest["lastUpdateId"].as_u64().expect("lastUpdateId");
    while book.last < last {
        book.apply(&next_diff(&mut ws, BTC).await);
    }
    assert_eq!(book.last, last);
    let hex = digest["digest"].as_str().expect("digest");
    assert!(
        hex.len() == 8
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(book.digest(), hex, "{digest}");
    let whole = get_json(&mut http, "/api/v3/depth?symbol=BTCUSDT&limit=5000").await;
    assert_eq!(LocalBook::from_snapshot(&whole), book);
    let top = get_json(&mut http, "/api/v3/depth?symbol=BTCUSDT&limit=5").await;
    assert_eq!(levels(&top["bids"]), levels(&whole["bids"])[..5].to_vec());
    assert_eq!(levels(&top["asks"]), levels(&whole["asks"])[..5].to_vec());
    let default = get_json(&mut http, "/api/v3/depth?symbol=BTCUSDT").await;
    assert_eq!(default, whole, "default limit 100 covers the whole book");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_sees_the_same_ids_and_shaping_applies_to_diffs() {
    let (addr, _sim) = start(&[
        "--depth-every-ms",
        "5",
        "--rate",
        "200",
        "--fragment-every",
        "2",
        "--ping-every",
        "3",
        "--big-every",
        "7",
        "--big-size",
        "5000",
        "--max-chunk",
        "300",
    ])
    .await;
    // A tungstenite client on BTC diffs and trades, first.
    let (mut first, _) = subscribe(addr, "/stream", &[BTC, "btcusdt@trade"]).await;
    // A raw client on both symbols, sees every frame.
    let mut raw = RawClient::connect(addr, "/ws").await;
    raw.send_text(
        r#"{"method":"SUBSCRIBE","params":["btcusdt@depth@100ms","ethusdt@depth"],"id":7}"#,
    )
    .await;
    assert_eq!(raw.message().await.0, r#"{"result":null,"id":7}"#);
    let (mut fragmented, mut padded, mut interleaved) = (0, 0, 0);
    let mut from_raw: BTreeMap<u64, Value> = BTreeMap::new();
    let mut last_u: BTreeMap<String, u64> = BTreeMap::new();
    while from_raw.len() < 60 {
        let (text, between, fragments) = raw.message().await;
        fragmented += usize::from(fragments > 1);
        interleaved += between.iter().filter(|f| f.opcode == 9).count();
        let msg: Value = serde_json::from_str(&text).expect("json");
        padded += usize::from(msg.get("pad").is_some());
        let stream = msg["stream"].as_str().expect("stream").to_owned();
        let d = msg["data"].clone();
        if let Some(prev) = last_u.get(&stream) {
            assert_eq!(d["U"].as_u64(), Some(prev + 1), "contiguous on {stream}");
        }
        last_u.insert(stream.clone(), d["u"].as_u64().expect("u"));
        match stream.as_str() {
            BTC => {
                from_raw.insert(d["U"].as_u64().expect("U"), d);
            }
            "ethusdt@depth" => assert_eq!(d["s"], "ETHUSDT"),
            other => panic!("unexpected stream {other}"),
        }
    }
    assert!(
        fragmented >= 20 && interleaved >= 5 && padded >= 5,
        "{fragmented} {interleaved} {padded}"
    );
    // The first client, subscribed earlier, got the very same BTC diffs.
    let last = *from_raw.keys().next_back().expect("diffs");
    let (mut trades, mut diffs) = (0u64, 0);
    loop {
        let msg = next_json(&mut first).await;
        if msg["stream"] == "btcusdt@trade" {
            trades += 1;
            assert_eq!(msg["data"]["t"], trades, "trades contiguous beside diffs");
            continue;
        }
        let d = &msg["data"];
        let u = d["U"].as_u64().expect("U");
        if let Some(seen) = from_raw.get(&u) {
            assert_eq!(seen, d);
            diffs += 1;
        }
        if u >= last {
            break;
        }
    }
    assert_eq!(diffs, from_raw.len(), "every diff of the later connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_come_back_to_back_and_pause_stops_the_cadence() {
    let (addr, _sim) = start(&["--depth-every-ms", "5"]).await;
    let (mut ws, _) = subscribe(addr, "/ws", &[BTC]).await;
    let mut last = next_diff(&mut ws, BTC).await["u"].as_u64().expect("u");
    let mut http = HttpConn::connect(addr).await;
    assert_eq!(http.get("/pause").await.status, 200);
    let paused_at = get_json(&mut http, "/api/v3/depth/digest?symbol=BTCUSDT").await;
    while last < paused_at["lastUpdateId"].as_u64().expect("id") {
        last = next_diff(&mut ws, BTC).await["u"].as_u64().expect("u");
    }
    // 200 ms is 40 periods: nothing comes while paused.
    let quiet = tokio::time::timeout(Duration::from_millis(200), next_json(&mut ws)).await;
    assert!(quiet.is_err(), "a diff while paused: {quiet:?}");
    assert_eq!(
        get_json(&mut http, "/api/v3/depth/digest?symbol=BTCUSDT").await,
        paused_at
    );

    // A burst goes out even while paused, back to back.
    let r = http
        .request(
            "POST",
            "/control/depth_burst?symbol=BTCUSDT&n=500",
            Some(""),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let b = r.json();
    assert_eq!(
        (b["ok"].clone(), b["symbol"].clone(), b["n"].clone()),
        (json!(true), json!("BTCUSDT"), json!(500))
    );
    assert_eq!(b["U"].as_u64(), Some(last + 1));
    let end = b["u"].as_u64().expect("u");
    let mut count = 0;
    while last < end {
        let d = next_diff(&mut ws, BTC).await;
        assert_eq!(d["U"].as_u64(), Some(last + 1));
        last = d["u"].as_u64().expect("u");
        count += 1;
    }
    assert_eq!((count, last), (500, end));
    let small = get_json(&mut http, "/control/depth_burst?symbol=btcusdt&n=3").await;
    assert_eq!(small["U"].as_u64(), Some(end + 1));
    for _ in 0..3 {
        let d = next_diff(&mut ws, BTC).await;
        assert_eq!(d["U"].as_u64(), Some(last + 1));
        last = d["u"].as_u64().expect("u");
    }
    assert_eq!(small["u"].as_u64(), Some(last));
    for bad in [
        "/control/depth_burst?symbol=BTCUSDT&n=0",
        "/control/depth_burst?symbol=BTCUSDT&n=lots",
        "/control/depth_burst?symbol=BTCUSDT&n=50001",
        "/control/depth_burst?symbol=XRPUSDT&n=1",
        "/control/depth_burst?n=1",
        "/control/depth_burst?symbol=BTCUSDT",
        "/control/depth_burst?symbol=BTCUSDT&n=1&n=2",
    ] {
        let r = http.get(bad).await;
        assert_eq!(r.status, 400, "{bad}: {r:?}");
        assert!(r.json()["error"].is_string(), "{r:?}");
    }
    assert_eq!(
        http.request("PUT", "/control/depth_burst", None)
            .await
            .status,
        405
    );
    assert_eq!(http.get("/control/nope").await.status, 404);

    // Resumed: the cadence continues the same sequence.
    assert_eq!(http.get("/resume").await.status, 200);
    let d = next_diff(&mut ws, BTC).await;
    assert_eq!(d["U"].as_u64(), Some(last + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_acks_are_audited_in_diff_events() {
    // No cadence to speak of: only bursts make diffs.
    let (addr, sim) = start(&["--depth-every-ms", "3600000"]).await;
    let (mut acker, _) = subscribe(addr, "/ws", &[BTC]).await;
    // A second connection takes diffs and never acks: wait_acked ignores it.
    let (mut silent, _) = subscribe(addr, "/ws", &["btcusdt@depth"]).await;
    let (first, last) = sim.depth_burst("BTCUSDT", 10).expect("served");
    let mut ids = Vec::new();
    for _ in 0..10 {
        let d = next_diff(&mut acker, BTC).await;
        ids.push((d["U"].as_u64().expect("U"), d["u"].as_u64().expect("u")));
        next_diff(&mut silent, "btcusdt@depth").await;
    }
    assert_eq!((ids[0].0, ids[9].1), (first, last));
    let u = |i: usize| ids[i].1;
    // In order, a gap, the late one, a duplicate, a number no diff ends at.
    let mut acks = vec![u(0), u(2), u(1), u(1), last + 1_000_000];
    acks.extend((3..10).map(u));
    for a in acks {
        let msg = json!({"method": "ack", "stream": BTC, "u": a}).to_string();
        acker.send(Message::text(msg)).await.expect("ack");
    }
    let started = Instant::now();
    let a = audit(addr, Some(5_000)).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "wait_acked waited on the silent one: {a}"
    );
    // wait_acked follows trades, not diff acks: wait until the simulator has
    // read every frame sent on the acking connection (the subscription and
    // the 12 acks) before judging them.
    let a = audit_until(addr, |a| conn(a, 1)["frames_received"].as_u64() >= Some(13)).await;
    let s = &conn(&a, 1)["streams"][BTC];
    assert_eq!(s["sent"], 10, "{a}");
    assert_eq!(
        (s["first_u"].as_u64(), s["last_u"].as_u64()),
        (Some(first), Some(last)),
        "{a}"
    );
    assert_eq!(s["acked"], 9, "{a}");
    assert_eq!(s["gaps"], 1, "{a}");
    assert_eq!(s["reordered"], 1, "{a}");
    assert_eq!(s["duplicates"], 1, "{a}");
    assert_eq!(s["unknown_acks"], 1, "{a}");
    assert_eq!(
        (s["last_acked"].as_u64(), s["last_acked_u"].as_u64()),
        (Some(10), Some(last)),
        "{a}"
    );
    let quiet = &conn(&a, 2)["streams"]["btcusdt@depth"];
    assert_eq!(
        (quiet["sent"].as_u64(), quiet["acked"].as_u64()),
        (Some(10), Some(0)),
        "{a}"
    );
    let t = &a["totals"];
    assert_eq!(t["sent"], 0, "trade totals hold trades only: {a}");
    assert_eq!(t["depth"]["sent"], 20, "{a}");
    assert_eq!(t["depth"]["acked"], 9, "{a}");
    assert_eq!(t["depth"]["unacked"], 10, "the silent connection's: {a}");
    // Trade streams keep their shape: no update-id fields.
    let (_t, _) = subscribe(addr, "/ws", &["ethusdt@trade"]).await;
    let a = crate::support::audit_until(addr, |a| a["connections_total"] == 3).await;
    assert!(
        conn(&a, 3)["streams"]["ethusdt@trade"]
            .get("first_u")
            .is_none(),
        "{a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_digest_refuse_bad_parameters() {
    let (addr, _sim) = start(&["--symbols", "btcusdt"]).await;
    let mut c = HttpConn::connect(addr).await;
    for (path, code) in [
        ("/api/v3/depth", -1102),
        ("/api/v3/depth?symbol=", -1102),
        ("/api/v3/depth?symbol=btcusdt", -1102),
        ("/api/v3/depth?symbol=ETHUSDT", -1121),
        ("/api/v3/depth?symbol=BTCUSDT&limit=ten", -1100),
        ("/api/v3/depth?symbol=BTCUSDT&limit=-5", -1100),
        ("/api/v3/depth?symbol=BTCUSDT&limit=0", -1102),
        ("/api/v3/depth?symbol=BTCUSDT&symbol=BTCUSDT", -1101),
        ("/api/v3/depth/digest", -1102),
        ("/api/v3/depth/digest?symbol=XRPUSDT", -1121),
        ("/api/v3/depth/digest?symbol=%FF%FE", -1102),
    ] {
        let msg = c.get(path).await.refusal(400, code);
        assert!(!msg.is_empty(), "{path}");
    }
    let big = get_json(&mut c, "/api/v3/depth?symbol=BTCUSDT&limit=100000").await;
    assert!(big["bids"].as_array().is_some_and(|b| !b.is_empty()));
    let one = get_json(&mut c, "/api/v3/depth?symbol=BTCUSDT&limit=1").await;
    assert_eq!(one["bids"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["asks"].as_array().map(Vec::len), Some(1));
    let keys: BTreeSet<&str> = one
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, BTreeSet::from(["lastUpdateId", "bids", "asks"]));
    c.request("POST", "/api/v3/depth?symbol=BTCUSDT", Some(""))
        .await
        .refusal(405, -1000);
    // Subscribing to an unserved symbol's diffs is refused like any stream.
    let (_ws, answer) = subscribe(addr, "/ws", &["ethusdt@depth"]).await;
    assert_eq!(answer["error"]["msg"], "unknown stream ethusdt@depth");
    // A bad diff ack is recorded, not fatal.
    let (mut ws, _) = subscribe(addr, "/ws", &["btcusdt@depth"]).await;
    ws.send(Message::text(
        r#"{"method":"ack","stream":"btcusdt@depth","t":3}"#,
    ))
    .await
    .expect("send");
    let a = crate::support::audit_until(addr, |a| {
        a["connections"][1]["errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    })
    .await;
    assert!(a["connections"][1]["closed_by"].is_null(), "{a}");
    assert_eq!(http_get(addr, "/health").await.0, 200);
}
