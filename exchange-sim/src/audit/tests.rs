//! Unit tests of the audit bookkeeping.

use super::stream::{MissingIds, MAX_MISSING_RANGES};
use super::*;

fn stream_with_sent(n: u64) -> StreamAudit {
    let mut s = StreamAudit::new();
    s.sent = n;
    s.last_sent = n;
    s
}

#[test]
fn in_order_acks_are_clean() {
    let mut s = stream_with_sent(3);
    for t in 1..=3 {
        assert_eq!(s.ack(t), AckOutcome::InOrder);
    }
    assert_eq!((s.acked, s.last_acked, s.unacked()), (3, 3, 0));
}

#[test]
fn gaps_reorders_duplicates_unknowns() {
    let mut s = stream_with_sent(10);
    assert_eq!(s.ack(1), AckOutcome::InOrder);
    assert_eq!(s.ack(4), AckOutcome::Gap);
    assert_eq!(s.gaps, 2);
    assert_eq!(s.ack(3), AckOutcome::Reordered);
    assert_eq!(s.ack(3), AckOutcome::Duplicate);
    assert_eq!(s.ack(2), AckOutcome::Reordered);
    assert_eq!(s.ack(4), AckOutcome::Duplicate);
    assert_eq!(s.ack(11), AckOutcome::Unknown);
    assert_eq!(s.ack(0), AckOutcome::Unknown);
    assert_eq!(s.ack(5), AckOutcome::InOrder);
    assert_eq!(
        (s.acked, s.gaps, s.reordered, s.duplicates, s.unknown_acks),
        (3, 2, 2, 2, 2)
    );
    assert_eq!(s.unacked(), 5);
}

#[test]
fn missing_ranges_split_and_stay_bounded() {
    let mut m = MissingIds::default();
    m.insert(10, 20);
    assert!(m.remove(15));
    assert!(!m.remove(15));
    assert!(m.remove(10) && m.remove(20) && m.remove(14) && m.remove(16));
    assert!(!m.remove(21) && !m.remove(9));
    for i in 0..(MAX_MISSING_RANGES as u64 + 10) {
        m.insert(100 + 2 * i, 100 + 2 * i);
    }
    assert_eq!(m.ranges.len(), MAX_MISSING_RANGES);
}

#[test]
fn ack_gap_excludes_paused_time_and_json_has_contract_fields() {
    let t0 = Instant::now();
    let mut a = Audit::new(t0);
    let id = a.open("127.0.0.1:1".into(), "/ws".into());
    a.subscribe(id, &["btcusdt@trade".into()]);
    a.sent(id, "btcusdt@trade", 2, 2);
    a.ack(id, "btcusdt@trade", 1, t0 + Duration::from_millis(10), 1);
    a.pause(t0 + Duration::from_millis(20));
    a.resume(t0 + Duration::from_millis(1020));
    assert!(!a.all_acked());
    a.ack(id, "btcusdt@trade", 2, t0 + Duration::from_millis(1030), 2);
    assert!(a.all_acked());
    let c = a.conn_ref(id).expect("registered");
    assert_eq!(c.max_ack_gap_us, 20_000);
    let v: serde_json::Value = serde_json::from_str(&a.to_json()).expect("json");
    assert_eq!(v["connections_total"], 1);
    assert_eq!(v["connections_open"], 1);
    let c = &v["connections"][0];
    for key in [
        "id",
        "peer",
        "closed_by",
        "subscribed",
        "frames_received",
        "malformed",
        "unmasked",
        "pings_sent",
        "pongs_received",
        "max_ack_gap_us",
        "errors",
    ] {
        assert!(c.get(key).is_some(), "missing {key}");
    }
    assert!(c["closed_by"].is_null());
    let s = &c["streams"]["btcusdt@trade"];
    assert_eq!(s["sent"], 2);
    assert_eq!(s["last_acked"], 2);
    for key in [
        "sent",
        "acked",
        "unacked",
        "gaps",
        "duplicates",
        "reordered",
        "unknown_acks",
        "malformed",
        "unmasked",
        "closed",
        "tls_handshakes",
        "tls_handshake_failures",
        "tls_key_updates",
        "tls_errors",
    ] {
        assert!(v["totals"].get(key).is_some(), "missing totals.{key}");
    }
    assert!(c["tls"].is_null(), "plain connection: {c}");
    a.close(id, "eof");
    a.close(id, "reset");
    assert_eq!(
        a.conn_ref(id).and_then(|c| c.closed_by.clone()),
        Some("eof".into())
    );
}

#[test]
fn tls_parameters_and_counters() {
    use crate::tls::TlsVersion;
    let mut a = Audit::new(Instant::now());
    let id = a.open("127.0.0.1:1".into(), "/ws".into());
    a.tls_handshake(true);
    a.tls_handshake(false);
    let info = TlsInfo {
        version: TlsVersion::V1_3,
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
    };
    a.set_tls(id, info);
    a.key_updates(id, 3);
    a.close(id, "error: tls: cannot decrypt peer's message");
    a.close(id, "error: tls: again");
    let other = a.open("127.0.0.1:2".into(), "/ws".into());
    a.close(other, "eof");
    a.tls_error();
    let v: serde_json::Value = serde_json::from_str(&a.to_json()).expect("json");
    let c = &v["connections"][0];
    assert_eq!(
        c["tls"],
        serde_json::json!({"version": "1.3", "cipher": "TLS13_AES_128_GCM_SHA256"})
    );
    assert_eq!(c["tls_key_updates"], 3);
    let t = &v["totals"];
    assert_eq!(t["tls_handshakes"], 1);
    assert_eq!(t["tls_handshake_failures"], 1);
    assert_eq!(t["tls_key_updates"], 3);
    assert_eq!(t["tls_errors"], 2, "one connection, one HTTP request: {t}");
}

#[test]
fn diff_streams_count_events_and_keep_update_ids() {
    let t0 = Instant::now();
    let mut a = Audit::new(t0);
    let id = a.open("127.0.0.1:1".into(), "/ws".into());
    let s = "btcusdt@depth@100ms";
    a.subscribe(id, &[s.into(), "btcusdt@trade".into()]);
    // Exchange-wide events 7..=9 then 10..=11, update ids 1050..=1090.
    a.depth_sent(id, s, 7, 3, (1050, 1070));
    a.depth_sent(id, s, 10, 2, (1071, 1090));
    a.sent(id, "btcusdt@trade", 1, 1);
    assert!(!a.all_acked(), "the trade is unacked");
    a.ack(id, "btcusdt@trade", 1, t0, 1);
    assert!(a.all_acked(), "diffs nobody acks are not waited for");
    let ack = |a: &mut Audit, seq, u| a.depth_ack(id, s, (seq, u), t0, 2);
    assert_eq!(ack(&mut a, Some(7), 1055), Some(AckOutcome::InOrder));
    assert!(!a.all_acked(), "acked once: now waited for");
    assert_eq!(ack(&mut a, Some(9), 1070), Some(AckOutcome::Gap));
    assert_eq!(ack(&mut a, Some(8), 1062), Some(AckOutcome::Reordered));
    assert_eq!(
        ack(&mut a, Some(6), 1049),
        Some(AckOutcome::Unknown),
        "before this connection's first"
    );
    assert_eq!(
        ack(&mut a, None, 1000),
        Some(AckOutcome::Unknown),
        "no diff ends there"
    );
    assert_eq!(
        ack(&mut a, Some(12), 1099),
        Some(AckOutcome::Unknown),
        "not sent yet"
    );
    assert_eq!(ack(&mut a, Some(11), 1090), Some(AckOutcome::Gap));
    assert!(a.all_acked());
    let v: serde_json::Value = serde_json::from_str(&a.to_json()).expect("json");
    let d = &v["connections"][0]["streams"][s];
    assert_eq!(
        (d["sent"].as_u64(), d["last_sent"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(
        (
            d["acked"].as_u64(),
            d["gaps"].as_u64(),
            d["reordered"].as_u64()
        ),
        (Some(3), Some(2), Some(1))
    );
    assert_eq!(d["unknown_acks"], 3);
    assert_eq!(
        (
            d["first_u"].as_u64(),
            d["last_u"].as_u64(),
            d["last_acked_u"].as_u64()
        ),
        (Some(1050), Some(1090), Some(1090))
    );
    let t = &v["connections"][0]["streams"]["btcusdt@trade"];
    assert!(
        t.get("first_u").is_none() && t.get("last_acked_u").is_none(),
        "{t}"
    );
    assert_eq!(v["totals"]["sent"], 1, "trades only");
    assert_eq!(v["totals"]["depth"]["sent"], 5);
    assert_eq!(v["totals"]["depth"]["unacked"], 0);
    a.listen_keys.created("k", 1);
    a.listen_keys.kept_alive("k", 2);
    let user = a.open("127.0.0.1:2".into(), "/ws/k".into());
    a.set_listen_key(user, "k");
    a.user_events_sent(user, 4);
    a.listen_keys.closed("k", "expired");
    a.listen_keys.closed("k", "deleted");
    let v: serde_json::Value = serde_json::from_str(&a.to_json()).expect("json");
    let k = &v["listen_keys"]["k"];
    assert_eq!(
        (
            k["keepalives"].as_u64(),
            k["events_sent"].as_u64(),
            k["streams_opened"].as_u64()
        ),
        (Some(1), Some(4), Some(1))
    );
    assert_eq!(k["closed_by"], "expired");
    assert_eq!(v["connections"][1]["listen_key"], "k");
    assert!(v["connections"][0]["listen_key"].is_null());
}
