//! The gate against Binance's documented examples, each refusal with its
//! code, and the REST API behind it: what is answered, counted, recorded.

use super::*;
use crate::state::{unix_ms, Config, Shared};
use crate::Args;

/// Binance's documented example (SIGNED endpoint examples for
/// `POST /api/v3/order`, HMAC keys).
const KEY: &str = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A";
const SECRET: &str = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";
const PARAMS: &str = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1\
                      &recvWindow=5000&timestamp=1499827319559";
const SIGNATURE: &str = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71";
/// Example 3: `symbol…timeInForce=GTC` in the query, the rest in the body.
const MIXED_SIGNATURE: &str = "0fd168b8ddb4876a0358a8d14d0c9f3da0e9b20c5d52b2a00fcf7d1c602f9a77";
const TIMESTAMP: i128 = 1_499_827_319_559;

fn keys() -> Keys {
    Keys::new(KEY, SECRET.as_bytes()).expect("keys")
}

fn head(method: &str, path: &str, query: &str, key: Option<&str>) -> Head {
    Head {
        method: method.into(),
        path: path.into(),
        query: query.into(),
        upgrade: None,
        keep_alive: true,
        content_length: 0,
        expect_continue: false,
        api_key: key.map(str::to_owned),
    }
}

fn check(query: &str, body: &str, key: Option<&str>, now: i128) -> Result<(), ApiError> {
    let h = head("POST", "/api/v3/order", query, key);
    check_signed(&keys(), &h, body.as_bytes(), now)
}

fn sign(text: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = hmac::sign(&key, text.as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn binances_documented_examples_pass() {
    let signed = format!("{PARAMS}&signature={SIGNATURE}");
    let now = TIMESTAMP + 10;
    assert_eq!(check(&signed, "", Some(KEY), now), Ok(()), "query string");
    assert_eq!(check("", &signed, Some(KEY), now), Ok(()), "request body");
    let (query, body) = PARAMS.split_at(PARAMS.find("&quantity").expect("split"));
    let body = format!("{}&signature={MIXED_SIGNATURE}", &body[1..]);
    assert_eq!(check(query, &body, Some(KEY), now), Ok(()), "mixed");
    let upper = format!("{PARAMS}&signature={}", SIGNATURE.to_uppercase());
    assert_eq!(check(&upper, "", Some(KEY), now), Ok(()), "upper-case hex");
    assert_eq!(sign(PARAMS), SIGNATURE);
}

#[test]
fn each_kind_of_bad_request_gets_binances_code() {
    let signed = format!("{PARAMS}&signature={SIGNATURE}");
    let now = TIMESTAMP + 10;
    let code = |r: Result<(), ApiError>| r.map_err(|e| (e.status(), e.code()));
    // The key: none, not a key, another one.
    assert_eq!(code(check(&signed, "", None, now)), Err((401, -2014)));
    assert_eq!(code(check(&signed, "", Some(""), now)), Err((401, -2014)));
    assert_eq!(
        code(check(&signed, "", Some("a key"), now)),
        Err((401, -2014))
    );
    assert_eq!(
        code(check(&signed, "", Some("other"), now)),
        Err((401, -2015))
    );
    // Parameters missing, malformed, twice; JSON.
    let without = |name: &str| {
        let kept: Vec<&str> = signed
            .split('&')
            .filter(|p| !p.starts_with(&format!("{name}=")))
            .collect();
        kept.join("&")
    };
    for name in ["timestamp", "signature"] {
        let e = check(&without(name), "", Some(KEY), now).expect_err(name);
        assert_eq!(
            (e.code(), e.to_string().contains(name)),
            (-1102, true),
            "{e}"
        );
    }
    let e = check(&without("recvWindow"), "", Some(KEY), now).expect_err("re-signed");
    assert_eq!(e, ApiError::InvalidSignature, "recvWindow is signed too");
    let bad_ts = signed.replace("timestamp=1499827319559", "timestamp=soon");
    assert_eq!(code(check(&bad_ts, "", Some(KEY), now)), Err((400, -1102)));
    let twice = format!("{signed}&signature={SIGNATURE}");
    assert_eq!(code(check(&twice, "", Some(KEY), now)), Err((400, -1101)));
    let json = r#"{"symbol":"LTCBTC","timestamp":1499827319559}"#;
    assert_eq!(
        code(check(&signed, json, Some(KEY), now)),
        Err((400, -1102))
    );
    let wide = format!(
        "recvWindow=60001&timestamp=1&signature={}",
        sign("recvWindow=60001&timestamp=1")
    );
    assert_eq!(code(check(&wide, "", Some(KEY), 1)), Err((400, -1131)));
    // Signatures: another secret's, not hex, a parameter changed after signing.
    let other = Keys::new(KEY, b"another secret").expect("keys");
    let h = head("GET", "/api/v3/order", &signed, Some(KEY));
    let e = check_signed(&other, &h, b"", now).expect_err("wrong secret");
    assert_eq!((e.status(), e.code()), (400, -1022));
    let not_hex = signed.replace(SIGNATURE, &"zz".repeat(32));
    assert_eq!(code(check(&not_hex, "", Some(KEY), now)), Err((400, -1022)));
    let changed = signed.replace("quantity=1", "quantity=100");
    assert_eq!(code(check(&changed, "", Some(KEY), now)), Err((400, -1022)));
    // The timestamp: at most recvWindow behind, less than 1000 ms ahead.
    assert_eq!(check(&signed, "", Some(KEY), TIMESTAMP + 5_000), Ok(()));
    let e = check(&signed, "", Some(KEY), TIMESTAMP + 5_001).expect_err("late");
    assert_eq!((e.code(), e), (-1021, ApiError::OutsideRecvWindow));
    assert_eq!(check(&signed, "", Some(KEY), TIMESTAMP - 999), Ok(()));
    let e = check(&signed, "", Some(KEY), TIMESTAMP - 1_000).expect_err("early");
    assert_eq!((e.code(), e), (-1021, ApiError::TimestampAhead));
}

#[test]
fn secrets_are_never_shown_and_keys_must_be_keys() {
    let shown = format!("{:?}", keys());
    assert!(
        !shown.contains(SECRET) && shown.contains("<redacted>"),
        "{shown}"
    );
    assert!(Keys::new("a key", b"s").is_err());
    assert!(Keys::new(KEY, b"").is_err());
    assert!(Keys::load(None, None).expect("no key").is_none());
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("secret");
    std::fs::write(&path, format!("  {SECRET}\n")).expect("write");
    let k = Keys::load(Some(KEY), Some(&path))
        .expect("read")
        .expect("keys");
    assert_eq!(k.secret, SECRET.as_bytes());
    let e = Keys::load(Some(KEY), Some(&dir.path().join("absent"))).expect_err("absent");
    assert!(e.to_string().contains("--api-secret-file"), "{e}");
}

/// The REST API behind a gate with the example key, its clock skewed by `skew`.
fn shared(keys: Option<Keys>, skew: i64) -> Shared {
    let config = Config::from_args(&Args::default());
    Shared::new(config, None, Gate::new(keys, skew))
}

async fn call(s: &Shared, h: Head, body: &str) -> (u16, serde_json::Value) {
    let reply = crate::rest::route(s, &h, body.as_bytes()).await;
    let json = serde_json::from_str(&reply.body).unwrap_or_default();
    (reply.status, json)
}

fn audit(s: &Shared) -> serde_json::Value {
    serde_json::from_str(&s.orders_audit_json()).expect("audit")
}

fn order_params(id: &str) -> String {
    format!("symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.01&newClientOrderId={id}")
}

fn signed_now(params: &str) -> String {
    let text = format!("{params}&recvWindow=5000&timestamp={}", unix_ms());
    format!("{text}&signature={}", sign(&text))
}

#[tokio::test]
async fn refused_requests_are_answered_counted_and_never_recorded() {
    let s = shared(Some(keys()), 0);
    let order = "/api/v3/order";
    let body = signed_now(&order_params("ok-1"));
    let (status, placed) = call(&s, head("POST", order, "", Some(KEY)), &body).await;
    assert_eq!(
        (status, &placed["status"]),
        (200, &"FILLED".into()),
        "{placed}"
    );
    let query = signed_now("symbol=BTCUSDT&origClientOrderId=ok-1");
    let (status, got) = call(&s, head("GET", order, &query, Some(KEY)), "").await;
    assert_eq!(
        (status, &got["clientOrderId"]),
        (200, &"ok-1".into()),
        "{got}"
    );

    let refusals = [
        (
            None,
            signed_now(&order_params("r-1")),
            401,
            -2014,
            "API-key format invalid.",
        ),
        (
            Some("other"),
            signed_now(&order_params("r-2")),
            401,
            -2015,
            "Invalid API-key, IP, or permissions for action.",
        ),
        (
            Some(KEY),
            format!(
                "{}&recvWindow=5000&timestamp={}&signature={}",
                order_params("r-3"),
                unix_ms(),
                "ab".repeat(32)
            ),
            400,
            -1022,
            "Signature for this request is not valid.",
        ),
        (
            Some(KEY),
            order_params("r-4"),
            400,
            -1102,
            "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed: missing.",
        ),
    ];
    for (key, body, want_status, want_code, want_msg) in refusals {
        let (status, answer) = call(&s, head("POST", order, "", key), &body).await;
        let want = serde_json::json!({"code": want_code, "msg": want_msg});
        assert_eq!((status, answer), (want_status, want), "{body}");
    }
    let json = r#"{"symbol":"BTCUSDT","side":"BUY","type":"MARKET","quantity":"1","newClientOrderId":"j"}"#;
    let (status, answer) = call(&s, head("POST", order, "", Some(KEY)), json).await;
    assert_eq!(
        (status, &answer["code"]),
        (400, &(-1102).into()),
        "JSON refused: {answer}"
    );
    // A query and a cancel are checked the same way.
    let (status, _) = call(
        &s,
        head(
            "GET",
            order,
            "symbol=BTCUSDT&origClientOrderId=ok-1",
            Some(KEY),
        ),
        "",
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = call(&s, head("DELETE", order, &query, None), "").await;
    assert_eq!(status, 401);

    let a = audit(&s);
    assert_eq!(a["orders"], 1, "refused orders are not orders: {a}");
    assert_eq!(a["invalid"], 0, "{a}");
    assert_eq!(
        a["refused"],
        serde_json::json!({"no_key": 2, "unknown_key": 1, "malformed": 3, "bad_signature": 1,
                           "expired": 0, "ahead": 0}),
        "{a}"
    );
    // The ids of refused orders stay free.
    let (status, _) = call(
        &s,
        head("POST", order, "", Some(KEY)),
        &signed_now(&order_params("r-3")),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_skewed_clock_makes_timestamps_expire_or_run_ahead() {
    for (skew, kind) in [(60_000, "expired"), (-60_000, "ahead")] {
        let s = shared(Some(keys()), skew);
        let body = signed_now(&order_params("late"));
        let (status, answer) = call(&s, head("POST", "/api/v3/order", "", Some(KEY)), &body).await;
        assert_eq!(
            (status, &answer["code"]),
            (400, &(-1021).into()),
            "{answer}"
        );
        let a = audit(&s);
        assert_eq!(
            (&a["orders"], &a["refused"][kind]),
            (&0.into(), &1.into()),
            "{a}"
        );
    }
}

#[tokio::test]
async fn listen_keys_want_the_key_and_no_signature() {
    let s = shared(Some(keys()), 0);
    let path = crate::user_stream::rest::PATH;
    let (status, answer) = call(&s, head("POST", path, "", None), "").await;
    assert_eq!(
        (status, &answer["code"]),
        (401, &(-2014).into()),
        "{answer}"
    );
    let (status, answer) = call(&s, head("POST", path, "", Some(KEY)), "").await;
    assert_eq!(status, 200, "{answer}");
    let key = answer["listenKey"].as_str().expect("key").to_owned();
    let (status, _) = call(
        &s,
        head("PUT", path, &format!("listenKey={key}"), Some("x")),
        "",
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = call(
        &s,
        head("PUT", path, &format!("listenKey={key}"), Some(KEY)),
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(audit(&s)["refused"]["no_key"], 1);
    assert_eq!(audit(&s)["refused"]["unknown_key"], 1);
}

#[tokio::test]
async fn without_a_key_json_and_form_orders_are_both_taken() {
    let s = shared(None, 0);
    let order = "/api/v3/order";
    let json = r#"{"symbol":"BTCUSDT","side":"BUY","type":"MARKET","quantity":"1","newClientOrderId":"j"}"#;
    assert_eq!(call(&s, head("POST", order, "", None), json).await.0, 200);
    assert_eq!(
        call(&s, head("POST", order, "", None), &order_params("f"))
            .await
            .0,
        200
    );
    let garbage = format!("{}&timestamp=1&signature=nothex", order_params("g"));
    assert_eq!(
        call(&s, head("POST", order, "", Some("k")), &garbage)
            .await
            .0,
        200
    );
    let (status, dup) = call(&s, head("POST", order, "", None), &order_params("f")).await;
    assert_eq!((status, &dup["code"]), (400, &(-2010).into()));
    let a = audit(&s);
    assert_eq!(
        (&a["orders"], &a["refused"]["malformed"]),
        (&3.into(), &0.into()),
        "{a}"
    );
}
