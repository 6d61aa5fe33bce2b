//! The HTTP side of the port: request-head parsing, the websocket upgrade
//! answer, and the control/audit endpoints (`/audit`, `/pause`, `/resume`,
//! `/health`).

use crate::state::Shared;
use std::time::Duration;

/// Largest request head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
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
    let head = Head {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        upgrade,
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

/// A complete `Connection: close` JSON response.
pub fn response(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn error_body(msg: &str) -> String {
    serde_json::json!({ "error": msg }).to_string()
}

/// A `400` response carrying `msg`.
pub fn bad_request(msg: &str) -> Vec<u8> {
    response(400, &error_body(msg))
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

/// Answer a plain HTTP request.
pub async fn route(shared: &Shared, head: &Head) -> Vec<u8> {
    if head.method != "GET" {
        return response(
            405,
            &error_body(&format!("method {} not allowed", head.method)),
        );
    }
    const OK: &str = "{\"ok\":true}";
    match head.path.as_str() {
        "/health" => response(200, OK),
        "/pause" => {
            shared.pause();
            response(200, OK)
        }
        "/resume" => {
            shared.resume();
            response(200, OK)
        }
        "/audit" => match wait_acked(&head.query) {
            Err(e) => bad_request(&e),
            Ok(wait) => {
                if let Some(timeout) = wait {
                    shared.wait_all_acked(timeout).await;
                }
                response(200, &shared.audit_json())
            }
        },
        other => response(404, &error_body(&format!("no such path {other}"))),
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
        assert_eq!(parse_head(b"GET /aud"), Ok(None));
        assert!(parse_head(b"\x00\x01 nonsense\r\n\r\n").is_err());
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
