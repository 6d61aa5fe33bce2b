//! The HTTP side of the port: request-head parsing, the websocket upgrade
//! answer, rendering of (keep-alive) answers, and the control/audit endpoints
//! (`/audit`, `/pause`, `/resume`, `/health`); the REST API lives in
//! [`crate::rest`], `/control/…` in [`crate::control`].

use crate::state::Shared;
use crate::{control, rest};
use std::time::Duration;

/// Largest request head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest `wait_acked_ms` honoured.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Method (`GET`, …).
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query string without `?` (empty if none).
    pub query: String,
    /// `Sec-WebSocket-Key` if the request asks for a websocket upgrade.
    pub upgrade: Option<Option<String>>,
    /// Whether the client lets the connection stay open after the answer
    /// (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
    /// `Connection: keep-alive`).
    pub keep_alive: bool,
    /// Body length from `Content-Length` (0 without it).
    pub content_length: usize,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// The `X-MBX-APIKEY` header (the API key of a signed or `USER_STREAM`
    /// request), if sent.
    pub api_key: Option<String>,
}

/// The framing headers of a request: its body length, refusing what this
/// server does not read (`Transfer-Encoding`, conflicting or oversized
/// `Content-Length`).
fn body_length(headers: &[httparse::Header<'_>]) -> Result<usize, String> {
    if headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
    {
        return Err("Transfer-Encoding is not supported: send Content-Length".into());
    }
    let mut length = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let value = std::str::from_utf8(h.value)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .ok_or("invalid Content-Length")?;
        if length.is_some_and(|l| l != value) {
            return Err("conflicting Content-Length headers".into());
        }
        length = Some(value);
    }
    let length = length.unwrap_or(0);
    if length > MAX_BODY {
        return Err(format!("request body larger than {MAX_BODY} bytes"));
    }
    Ok(length)
}

/// Parse a request head from the front of `buf`: `Ok(None)` if incomplete,
/// otherwise the head and its length in bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(format!("request head larger than {MAX_HEAD} bytes"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad request: {e}")),
    };
    let method = req.method.unwrap_or_default().to_owned();
    let target = req.path.unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let wants_ws = header("upgrade").is_some_and(|v| {
        v.split(',')
            .any(|token| token.trim().eq_ignore_ascii_case("websocket"))
    });
    let upgrade = wants_ws.then(|| header("sec-websocket-key").map(str::to_owned));
    let connection_has = |token: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let keep_alive = if req.version == Some(1) {
        !connection_has("close")
    } else {
        connection_has("keep-alive") && !connection_has("close")
    };
    let expect_continue = header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let head = Head {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        upgrade,
        keep_alive,
        content_length: body_length(req.headers)?,
        expect_continue,
        api_key: header(crate::auth::API_KEY_HEADER).map(str::to_owned),
    };
    Ok(Some((head, len)))
}

/// The `101 Switching Protocols` answer for `key`.
pub fn upgrade_response(key: &str) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// A JSON answer before framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: String,
}

impl Reply {
    /// `status` with `body`.
    pub fn json(status: u16, body: String) -> Self {
        Self { status, body }
    }

    /// `status` with `{"error":msg}` (the control endpoints' error shape).
    pub fn error(status: u16, msg: &str) -> Self {
        Self::json(status, serde_json::json!({ "error": msg }).to_string())
    }

    /// A `400` carrying `msg`.
    pub fn bad_request(msg: &str) -> Self {
        Self::error(400, msg)
    }

    /// The response bytes; `keep_alive` says whether the connection stays open.
    pub fn render(&self, keep_alive: bool) -> Vec<u8> {
        let status = self.status;
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Error",
        };
        let connection = if keep_alive { "keep-alive" } else { "close" };
        format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: {connection}\r\n\r\n{}",
            self.body.len(),
            self.body
        )
        .into_bytes()
    }
}

/// The `wait_acked_ms` query parameter, if present.
fn wait_acked(query: &str) -> Result<Option<Duration>, String> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "wait_acked_ms" {
            let ms: u64 = value.parse().map_err(|_| {
                format!("wait_acked_ms must be a number of milliseconds, got {value:?}")
            })?;
            return Ok(Some(Duration::from_millis(ms).min(MAX_WAIT)));
        }
    }
    Ok(None)
}

/// Answer a plain HTTP request whose body is `body`.
pub async fn route(shared: &Shared, head: &Head, body: &[u8]) -> Reply {
    if rest::serves(&head.path) {
        return rest::route(shared, head, body).await;
    }
    if control::serves(&head.path) {
        return control::route(shared, head);
    }
    if head.method != "GET" {
        return Reply::error(405, &format!("method {} not allowed", head.method));
    }
    const OK: &str = "{\"ok\":true}";
    match head.path.as_str() {
        "/health" => Reply::json(200, OK.into()),
        "/pause" => {
            shared.pause();
            Reply::json(200, OK.into())
        }
        "/resume" => {
            shared.resume();
            Reply::json(200, OK.into())
        }
        "/audit" => match wait_acked(&head.query) {
            Err(e) => Reply::bad_request(&e),
            Ok(wait) => {
                if let Some(timeout) = wait {
                    shared.wait_all_acked(timeout).await;
                }
                Reply::json(200, shared.audit_json())
            }
        },
        other => Reply::error(404, &format!("no such path {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upgrade_and_plain_requests() {
        let req = b"GET /stream?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\n\
                    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nrest";
        let (head, len) = parse_head(req).expect("valid").expect("complete");
        assert_eq!(&req[len..], b"rest");
        assert_eq!(head.path, "/stream");
        assert_eq!(head.query, "x=1");
        assert_eq!(
            head.upgrade,
            Some(Some("dGhlIHNhbXBsZSBub25jZQ==".to_owned()))
        );
        let (plain, _) = parse_head(b"GET /audit HTTP/1.1\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(plain.upgrade, None);
        assert!(plain.keep_alive);
        assert_eq!(plain.content_length, 0);
        assert_eq!(parse_head(b"GET /aud"), Ok(None));
        assert!(parse_head(b"\x00\x01 nonsense\r\n\r\n").is_err());
    }

    #[test]
    fn keep_alive_and_body_framing() {
        let head = |req: &[u8]| parse_head(req).map(|h| h.map(|(h, _)| h));
        let close = head(b"GET / HTTP/1.1\r\nConnection: Keep-Alive, close\r\n\r\n");
        assert_eq!(close.map(|h| h.map(|h| h.keep_alive)), Ok(Some(false)));
        let old = head(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(old.map(|h| h.map(|h| h.keep_alive)), Ok(Some(false)));
        let old_ka = head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(old_ka.map(|h| h.map(|h| h.keep_alive)), Ok(Some(true)));
        let post = head(
            b"POST /x HTTP/1.1\r\ncontent-length: 12\r\nContent-Length: 12\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .expect("valid")
        .expect("complete");
        assert_eq!((post.content_length, post.expect_continue), (12, true));
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err());
        }
        let r = String::from_utf8(Reply::json(200, "{}".into()).render(true)).expect("ascii");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r.contains("Content-Length: 2\r\nConnection: keep-alive\r\n\r\n{}"));
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        let r = String::from_utf8(upgrade_response("dGhlIHNhbXBsZSBub25jZQ==")).expect("ascii");
        assert!(r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn wait_parameter_parsing() {
        assert_eq!(wait_acked(""), Ok(None));
        assert_eq!(
            wait_acked("a=b&wait_acked_ms=5000"),
            Ok(Some(Duration::from_millis(5000)))
        );
        assert!(wait_acked("wait_acked_ms=soon").is_err());
    }
}
