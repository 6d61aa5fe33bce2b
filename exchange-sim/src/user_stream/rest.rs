//! `POST`/`PUT`/`DELETE /api/v3/userDataStream`: issue, keep alive and
//! close listen keys. The key of `PUT` and `DELETE` comes as the
//! `listenKey` query parameter (or, as some clients send it, in a
//! form-encoded body).

use super::well_formed;
use crate::error::ApiError;
use crate::params::{query_pairs, single};
use crate::state::{unix_ms, Shared};
use tokio::time::Instant;

/// The endpoint.
pub const PATH: &str = "/api/v3/userDataStream";

/// The `listenKey` parameter.
fn listen_key(query: &str, body: &[u8]) -> Result<String, ApiError> {
    let mut pairs = query_pairs(query);
    if let Ok(text) = std::str::from_utf8(body) {
        if !text.trim_start().starts_with('{') {
            pairs.extend(query_pairs(text.trim()));
        }
    }
    match single(&pairs, "listenKey")? {
        None | Some("") => Err(ApiError::param("listenKey", "missing")),
        Some(key) if !well_formed(key) => Err(ApiError::InvalidListenKey),
        Some(key) => Ok(key.to_owned()),
    }
}

/// Answer a request to [`PATH`] with `method`.
pub fn route(shared: &Shared, method: &str, query: &str, body: &[u8]) -> Result<String, ApiError> {
    let now = Instant::now();
    match method {
        "POST" => {
            let key = shared.users.create(now);
            shared.audit(|a| a.listen_keys.created(&key, unix_ms()));
            Ok(serde_json::json!({ "listenKey": key }).to_string())
        }
        "PUT" => {
            let key = listen_key(query, body)?;
            if !shared.users.keep_alive(&key, now) {
                return Err(ApiError::InvalidListenKey);
            }
            shared.audit(|a| a.listen_keys.kept_alive(&key, unix_ms()));
            Ok("{}".into())
        }
        "DELETE" => {
            let key = listen_key(query, body)?;
            if !shared.users.close(&key, now) {
                return Err(ApiError::InvalidListenKey);
            }
            shared.audit(|a| a.listen_keys.closed(&key, "deleted"));
            Ok("{}".into())
        }
        other => Err(ApiError::Method {
            method: other.to_owned(),
            path: PATH.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parameter() {
        let key = "k".repeat(60);
        assert_eq!(
            listen_key(&format!("listenKey={key}"), b""),
            Ok(key.clone())
        );
        assert_eq!(
            listen_key("", format!("listenKey={key}\r\n").as_bytes()),
            Ok(key.clone())
        );
        assert_eq!(listen_key("", b"").map_err(|e| e.code()), Err(-1102));
        assert_eq!(
            listen_key("listenKey=", b"").map_err(|e| e.code()),
            Err(-1102)
        );
        assert_eq!(
            listen_key("listenKey=short", b"").map_err(|e| e.code()),
            Err(-1125)
        );
        let twice = format!("listenKey={key}&listenKey={key}");
        assert_eq!(listen_key(&twice, b"").map_err(|e| e.code()), Err(-1101));
        assert_eq!(
            listen_key("", b"{\"listenKey\":1}").map_err(|e| e.code()),
            Err(-1102)
        );
    }
}
