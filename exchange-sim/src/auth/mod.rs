//! API keys and signed requests, Binance's way (`--api-key`).
//!
//! Without `--api-key` every request is taken as it comes (and the order
//! API still reads the JSON bodies of old clients). With it, the simulator
//! has one account, that key and its secret (`--api-secret-file` or
//! `SIM_API_SECRET`), and checks:
//!
//! - `/api/v3/order`, every method (`SIGNED`: Binance's `TRADE` and
//!   `USER_DATA`): the `X-MBX-APIKEY` header, then `timestamp`, `signature`
//!   and the optional `recvWindow` (default 5000, at most 60000) among the
//!   parameters of the query string and of an
//!   `application/x-www-form-urlencoded` body (a JSON body is refused), then
//!   the signature: the lower- or upper-case hex HMAC-SHA256, keyed by the
//!   secret, of the query string followed by the body, both exactly as sent
//!   but for their `signature` parameter; then the timestamp, against the
//!   simulator's clock (`--clock-skew-ms` moves it): refused unless
//!   `timestamp < now + 1000` and `now - timestamp <= recvWindow`.
//! - `/api/v3/userDataStream` (`USER_STREAM`): the header only.
//!
//! A refusal is answered as Binance answers it (see [`ApiError`]) and
//! counted by kind ([`Refusals`], the order audit's `refused`); a refused
//! order is never recorded as an order.

#[cfg(test)]
mod tests;

use crate::error::{ApiError, SimError};
use crate::http::Head;
use crate::params::{query_pairs, single};
use ring::hmac;
use serde::Serialize;
use std::fmt;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

/// The header carrying the API key.
pub const API_KEY_HEADER: &str = "X-MBX-APIKEY";
/// The environment variable `--api-key` takes its secret from without
/// `--api-secret-file`.
pub const SECRET_ENV: &str = "SIM_API_SECRET";
/// `recvWindow` when the request names none.
const DEFAULT_RECV_WINDOW_MS: u64 = 5_000;
/// Largest `recvWindow` accepted.
const MAX_RECV_WINDOW_MS: u64 = 60_000;
/// How far ahead of the simulator's clock a timestamp may be.
const MAX_AHEAD_MS: i128 = 1_000;
/// Longest API key accepted.
const MAX_KEY_LEN: usize = 256;
/// A secret file larger than this is not one.
const MAX_SECRET_FILE: u64 = 16 * 1024;

/// The account's API key and secret.
pub struct Keys {
    key: String,
    secret: Vec<u8>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Keys {
    /// `key` (1 to 256 visible ASCII characters) and its non-empty `secret`.
    pub fn new(key: &str, secret: &[u8]) -> Result<Self, SimError> {
        if !well_formed(key) {
            return Err(SimError::InvalidArgs(
                "--api-key must be 1 to 256 visible ASCII characters".into(),
            ));
        }
        if secret.is_empty() {
            return Err(SimError::InvalidArgs("the API secret is empty".into()));
        }
        Ok(Self {
            key: key.to_owned(),
            secret: secret.to_vec(),
        })
    }

    /// `--api-key` with its secret from `secret_file` (the whole file,
    /// surrounding whitespace trimmed) or else from [`SECRET_ENV`];
    /// `None` without `--api-key`.
    pub fn load(key: Option<&str>, secret_file: Option<&Path>) -> Result<Option<Self>, SimError> {
        let Some(key) = key else {
            return Ok(None);
        };
        let secret = match secret_file {
            Some(path) => read_secret(path)?,
            None => std::env::var(SECRET_ENV).map_err(|_| {
                SimError::InvalidArgs(format!(
                    "--api-key needs its secret: --api-secret-file PATH or {SECRET_ENV}"
                ))
            })?,
        };
        Self::new(key, secret.trim().as_bytes()).map(Some)
    }
}

fn read_secret(path: &Path) -> Result<String, SimError> {
    let bad =
        |why: String| SimError::InvalidArgs(format!("--api-secret-file {}: {why}", path.display()));
    let len = std::fs::metadata(path)
        .map_err(|e| bad(e.to_string()))?
        .len();
    if len > MAX_SECRET_FILE {
        return Err(bad(format!("larger than {MAX_SECRET_FILE} bytes")));
    }
    std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))
}

/// Whether `key` can be an API key: 1 to 256 visible ASCII characters.
fn well_formed(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic())
}

/// Refused requests, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Refusals {
    /// No `X-MBX-APIKEY`, or one that cannot be a key (`-2014`).
    pub no_key: u64,
    /// A key other than the account's (`-2015`).
    pub unknown_key: u64,
    /// No or a malformed `timestamp`, `signature` or `recvWindow`, a
    /// parameter sent twice, or a JSON body (`-1102`, `-1101`, `-1131`).
    pub malformed: u64,
    /// A signature that does not match (`-1022`).
    pub bad_signature: u64,
    /// A timestamp more than `recvWindow` behind the clock (`-1021`).
    pub expired: u64,
    /// A timestamp 1000 ms or more ahead of the clock (`-1021`).
    pub ahead: u64,
}

impl Refusals {
    fn count(&mut self, e: &ApiError) {
        let n = match e {
            ApiError::ApiKeyFormat => &mut self.no_key,
            ApiError::InvalidApiKey => &mut self.unknown_key,
            ApiError::InvalidSignature => &mut self.bad_signature,
            ApiError::OutsideRecvWindow => &mut self.expired,
            ApiError::TimestampAhead => &mut self.ahead,
            _ => &mut self.malformed,
        };
        *n += 1;
    }
}

/// Where requests are checked for a key and a signature.
#[derive(Debug)]
pub struct Gate {
    keys: Option<Keys>,
    clock_skew_ms: i64,
    refused: Mutex<Refusals>,
}

impl Gate {
    /// A gate for `keys` (`None`: everything passes) whose clock runs
    /// `clock_skew_ms` ahead of the host's (behind, if negative).
    pub fn new(keys: Option<Keys>, clock_skew_ms: i64) -> Self {
        Self {
            keys,
            clock_skew_ms,
            refused: Mutex::new(Refusals::default()),
        }
    }

    /// The refusals so far.
    pub fn refusals(&self) -> Refusals {
        *self.refused.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Check a `SIGNED` request (`head` and its `body`) at host time
    /// `now_ms`; a refusal is counted.
    pub fn signed(&self, head: &Head, body: &[u8], now_ms: u64) -> Result<(), ApiError> {
        let Some(keys) = &self.keys else {
            return Ok(());
        };
        let now = i128::from(now_ms) + i128::from(self.clock_skew_ms);
        self.counted(check_signed(keys, head, body, now))
    }

    /// Check a `USER_STREAM` request: its API key only.
    pub fn keyed(&self, head: &Head) -> Result<(), ApiError> {
        let Some(keys) = &self.keys else {
            return Ok(());
        };
        self.counted(check_key(keys, head.api_key.as_deref()))
    }

    fn counted(&self, checked: Result<(), ApiError>) -> Result<(), ApiError> {
        if let Err(e) = &checked {
            let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
            refused.count(e);
        }
        checked
    }
}

fn check_key(keys: &Keys, sent: Option<&str>) -> Result<(), ApiError> {
    match sent {
        Some(key) if key == keys.key => Ok(()),
        Some(key) if well_formed(key) => Err(ApiError::InvalidApiKey),
        _ => Err(ApiError::ApiKeyFormat),
    }
}

/// Whether `body` is JSON (an old client's order), not form parameters.
pub fn is_json(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// The parameters of a request: its query string's, then those of its
/// form body (none if the body is JSON).
pub fn params(query: &str, body: &[u8]) -> Vec<(String, String)> {
    let mut pairs = query_pairs(query);
    if !is_json(body) {
        pairs.extend(query_pairs(&String::from_utf8_lossy(body)));
    }
    pairs
}

/// `now` is the simulator's clock (host time plus skew), in Unix ms.
fn check_signed(keys: &Keys, head: &Head, body: &[u8], now: i128) -> Result<(), ApiError> {
    check_key(keys, head.api_key.as_deref())?;
    if is_json(body) {
        return Err(ApiError::Body(
            "a signed request takes its parameters in the query string or an \
             application/x-www-form-urlencoded body, not JSON"
                .into(),
        ));
    }
    let pairs = params(&head.query, body);
    let number = |name: &'static str| -> Result<Option<u64>, ApiError> {
        match single(&pairs, name)? {
            None => Ok(None),
            Some(v) if !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::param(name, "too large")),
            Some(_) => Err(ApiError::param(name, "must be a number of milliseconds")),
        }
    };
    let timestamp = number("timestamp")?.ok_or_else(|| ApiError::param("timestamp", "missing"))?;
    let signature = match single(&pairs, "signature")? {
        None | Some("") => return Err(ApiError::param("signature", "missing")),
        Some(s) => s,
    };
    let recv_window = number("recvWindow")?.unwrap_or(DEFAULT_RECV_WINDOW_MS);
    if recv_window > MAX_RECV_WINDOW_MS {
        return Err(ApiError::BadRecvWindow);
    }
    let tag = decode_hex(signature).ok_or(ApiError::InvalidSignature)?;
    let mut payload = without_signature(head.query.as_bytes());
    payload.extend(without_signature(body));
    let key = hmac::Key::new(hmac::HMAC_SHA256, &keys.secret);
    hmac::verify(&key, &payload, &tag).map_err(|_| ApiError::InvalidSignature)?;
    let timestamp = i128::from(timestamp);
    if timestamp >= now + MAX_AHEAD_MS {
        return Err(ApiError::TimestampAhead);
    }
    if now - timestamp > i128::from(recv_window) {
        return Err(ApiError::OutsideRecvWindow);
    }
    Ok(())
}

/// `params` (`a=1&b=2`, raw) without its `signature` parameters: what the
/// signature covers.
fn without_signature(params: &[u8]) -> Vec<u8> {
    let kept: Vec<&[u8]> = params
        .split(|&b| b == b'&')
        .filter(|p| *p != b"signature" && !p.starts_with(b"signature="))
        .collect();
    kept.join(&b'&')
}

/// Hex text (either case) as bytes; `None` if it is not hex.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}
