//! Signed REST requests, as Binance documents its `SIGNED` endpoints
//! (security types `TRADE` and `USER_DATA`: placing and querying orders).
//!
//! A signed request carries the API key in the `X-MBX-APIKEY` header and,
//! after its own parameters, `recvWindow=<ms>&timestamp=<unix ms>` and
//! `signature=<hex HMAC-SHA256 of everything before it, keyed by the secret>`.
//! The parameters go where Binance reads them: the query string of a `GET`
//! or `DELETE`, the `application/x-www-form-urlencoded` body of a `POST`.
//! The signature covers the exact bytes sent, so [`encode_params`] builds
//! the text once and the same text is signed and sent. Listen-key calls
//! (`USER_STREAM`) carry the header only.
//!
//! The key and secret come from a file (`--api-key-file`: `KEY=…` and
//! `SECRET=…` lines, owner-only permissions) or from the environment
//! (`HANDOFF_API_KEY`, `HANDOFF_API_SECRET`), never from the command line.
//! Neither is ever logged: [`Credentials`] and [`Signer`] redact both in
//! `Debug`, the header value is marked sensitive, and the secret's bytes are
//! zeroed when dropped.
//!
//! HMAC-SHA256 is `ring::hmac`: ring is already in the tree (rustls, the
//! worker library's record layer), so no new crate.

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use reqwest::header::HeaderValue;
use ring::hmac;
use zeroize::Zeroizing;

/// The environment variable holding the API key.
pub const KEY_ENV: &str = "HANDOFF_API_KEY";
/// The environment variable holding the API secret.
pub const SECRET_ENV: &str = "HANDOFF_API_SECRET";
/// The header carrying the API key (Binance's name).
pub const API_KEY_HEADER: &str = "X-MBX-APIKEY";
/// A key file larger than this is not a key file.
const MAX_KEY_FILE: u64 = 16 * 1024;
/// Longest API key accepted (Binance's are 64 characters).
const MAX_KEY_LEN: usize = 256;

/// Why the API key and secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("--api-key-file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--api-key-file {}: permissions {mode:04o} are too open: it holds a secret, so \
         only its owner may have access (chmod 600 {})",
        path.display(),
        path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("--api-key-file {}: larger than {MAX_KEY_FILE} bytes: not a key file", path.display())]
    TooLarge { path: PathBuf },
    #[error("--api-key-file {}: line {line}: {why}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("--api-key-file {}: no {name}= line", path.display())]
    Missing { path: PathBuf, name: &'static str },
    #[error("{set} is set but {unset} is not: set both (or neither, for unsigned orders)")]
    HalfSet {
        set: &'static str,
        unset: &'static str,
    },
    #[error("{name} is not valid UTF-8")]
    NotUnicode { name: &'static str },
    #[error("the API key from {from} {why}")]
    BadKey { from: String, why: &'static str },
    #[error("the API secret from {from} is empty")]
    EmptySecret { from: String },
}

/// An API key and its secret.
pub struct Credentials {
    key: String,
    secret: Zeroizing<Vec<u8>>,
    /// Where they came from (the file's path, or the variables' names).
    from: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("key", &"<redacted>")
            .field("secret", &"<redacted>")
            .field("from", &self.from)
            .finish()
    }
}

impl Credentials {
    /// `key` and `secret`, checked: the key is 1 to 256 visible ASCII
    /// characters (it goes in a header), the secret is not empty.
    pub fn new(key: &str, secret: &[u8], from: &str) -> Result<Self, CredentialsError> {
        let bad = |why| CredentialsError::BadKey {
            from: from.to_owned(),
            why,
        };
        if key.is_empty() {
            return Err(bad("is empty"));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(bad("is longer than 256 characters"));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("has characters other than visible ASCII"));
        }
        if secret.is_empty() {
            return Err(CredentialsError::EmptySecret {
                from: from.to_owned(),
            });
        }
        Ok(Credentials {
            key: key.to_owned(),
            secret: Zeroizing::new(secret.to_vec()),
            from: from.to_owned(),
        })
    }

    /// Where the key came from, for a log line (never the key itself).
    pub fn origin(&self) -> &str {
        &self.from
    }

    /// From `file` if given, else from [`KEY_ENV`] and [`SECRET_ENV`];
    /// `None` if neither is set (orders go unsigned).
    pub fn load(file: Option<&Path>) -> Result<Option<Self>, CredentialsError> {
        match file {
            Some(path) => Self::from_file(path).map(Some),
            None => Self::from_vars(std::env::var_os(KEY_ENV), std::env::var_os(SECRET_ENV)),
        }
    }

    /// From the values of [`KEY_ENV`] and [`SECRET_ENV`] (`None`: unset).
    pub fn from_vars(
        key: Option<OsString>,
        secret: Option<OsString>,
    ) -> Result<Option<Self>, CredentialsError> {
        let text = |v: OsString, name| {
            v.into_string()
                .map(Zeroizing::new)
                .map_err(|_| CredentialsError::NotUnicode { name })
        };
        match (key, secret) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(CredentialsError::HalfSet {
                set: KEY_ENV,
                unset: SECRET_ENV,
            }),
            (None, Some(_)) => Err(CredentialsError::HalfSet {
                set: SECRET_ENV,
                unset: KEY_ENV,
            }),
            (Some(key), Some(secret)) => {
                let (key, secret) = (text(key, KEY_ENV)?, text(secret, SECRET_ENV)?);
                let from = format!("{KEY_ENV}/{SECRET_ENV}");
                Self::new(key.trim(), secret.trim().as_bytes(), &from).map(Some)
            }
        }
    }

    /// From a key file: lines `KEY=<api key>` and `SECRET=<secret>` in any
    /// order, blank lines and `#` comments ignored, spaces around names
    /// and values trimmed. The file must give no access to group or others
    /// (as ssh asks of a private key); checked on the opened file.
    pub fn from_file(path: &Path) -> Result<Self, CredentialsError> {
        let read = |source| CredentialsError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let meta = file.metadata().map_err(read)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(CredentialsError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
        if meta.len() > MAX_KEY_FILE {
            return Err(CredentialsError::TooLarge {
                path: path.to_owned(),
            });
        }
        // Sized up front so the secret is never left behind in a buffer
        // given back by a reallocation; zeroed when dropped.
        let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE as usize + 1));
        file.take(MAX_KEY_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        if bytes.len() as u64 > MAX_KEY_FILE {
            return Err(CredentialsError::TooLarge {
                path: path.to_owned(),
            });
        }
        let syntax = |line, why: &str| CredentialsError::Syntax {
            path: path.to_owned(),
            line,
            why: why.to_owned(),
        };
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            let line = 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            syntax(line, "not valid UTF-8")
        })?;
        let (mut key, mut secret) = (None, None);
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                return Err(syntax(i + 1, "expected KEY=<api key> or SECRET=<secret>"));
            };
            let slot = match name.trim() {
                "KEY" => &mut key,
                "SECRET" => &mut secret,
                _ => return Err(syntax(i + 1, "unknown name: only KEY and SECRET")),
            };
            if slot.replace(value.trim()).is_some() {
                return Err(syntax(i + 1, "given twice"));
            }
        }
        let missing = |name| CredentialsError::Missing {
            path: path.to_owned(),
            name,
        };
        let key = key.ok_or_else(|| missing("KEY"))?;
        let secret = secret.ok_or_else(|| missing("SECRET"))?;
        Self::new(key, secret.as_bytes(), &path.display().to_string())
    }
}

/// Signs requests with one API key.
pub struct Signer {
    /// `X-MBX-APIKEY`'s value, marked sensitive.
    key: HeaderValue,
    secret: Zeroizing<Vec<u8>>,
    recv_window_ms: u64,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("key", &"<redacted>")
            .field("secret", &"<redacted>")
            .field("recv_window_ms", &self.recv_window_ms)
            .finish()
    }
}

impl Signer {
    /// A signer whose requests are valid for `recv_window_ms` after their
    /// timestamp (Binance's `recvWindow`: at most 60000).
    pub fn new(credentials: Credentials, recv_window_ms: u64) -> Signer {
        // `Credentials::new` let only visible ASCII through: a valid header value.
        let mut key = HeaderValue::from_str(&credentials.key)
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        key.set_sensitive(true);
        Signer {
            key,
            secret: credentials.secret,
            recv_window_ms,
        }
    }

    /// The `X-MBX-APIKEY` header's value.
    pub fn api_key(&self) -> HeaderValue {
        self.key.clone()
    }

    /// `params` (already encoded) followed by `recvWindow`, `timestamp` and
    /// `signature`: the text to send, as is.
    pub fn sign(&self, params: &str, timestamp_ms: u64) -> String {
        let sep = if params.is_empty() { "" } else { "&" };
        let mut text = format!(
            "{params}{sep}recvWindow={}&timestamp={timestamp_ms}",
            self.recv_window_ms
        );
        let signature = hmac_sha256_hex(&self.secret, text.as_bytes());
        text.push_str("&signature=");
        text.push_str(&signature);
        text
    }
}

/// The HMAC-SHA256 of `payload` keyed by `secret`, in lower-case hex.
pub fn hmac_sha256_hex(secret: &[u8], payload: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, payload);
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `name=value` pairs joined by `&`, each name and value percent-encoded
/// but for the unreserved characters (`A-Z a-z 0-9 - . _ ~`): the same text
/// whether it goes in a query string or a form body.
pub fn encode_params(pairs: &[(&str, &str)]) -> String {
    fn encode(out: &mut String, text: &str) {
        for b in text.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode(&mut out, name);
        out.push('=');
        encode(&mut out, value);
    }
    out
}

/// What an operator should know about an exchange refusal with Binance
/// code `code`, if it concerns the API key or the signature.
pub fn hint(code: i64, signed: bool) -> Option<&'static str> {
    match code {
        -2014 | -2015 | -1102 if !signed => Some(
            "orders are unsigned: give the worker its API key \
             (HANDOFF_API_KEY and HANDOFF_API_SECRET, or --api-key-file)",
        ),
        -2014 | -2015 => Some("the exchange does not take this API key (or not for this)"),
        -1022 => Some("the API secret does not belong to the API key"),
        -1021 => Some(
            "this host's clock is off from the exchange's, \
             or the request took longer than --recv-window-ms",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// Binance's documented example (SIGNED endpoint examples for
    /// `POST /api/v3/order`, HMAC keys).
    const DOC_SECRET: &str = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";
    const DOC_KEY: &str = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A";
    const DOC_PARAMS: &str =
        "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1";
    const DOC_SIGNATURE: &str = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71";

    #[test]
    fn signs_binances_documented_example() {
        let payload = format!("{DOC_PARAMS}&recvWindow=5000&timestamp=1499827319559");
        assert_eq!(
            hmac_sha256_hex(DOC_SECRET.as_bytes(), payload.as_bytes()),
            DOC_SIGNATURE
        );
        let creds = Credentials::new(DOC_KEY, DOC_SECRET.as_bytes(), "test").expect("valid");
        let signer = Signer::new(creds, 5000);
        assert_eq!(
            signer.sign(DOC_PARAMS, 1_499_827_319_559),
            format!("{payload}&signature={DOC_SIGNATURE}")
        );
        assert_eq!(signer.api_key(), DOC_KEY);
        assert!(signer.api_key().is_sensitive());
        assert!(signer
            .sign("", 1)
            .starts_with("recvWindow=5000&timestamp=1&signature="));
    }

    #[test]
    fn debug_never_shows_the_key_or_the_secret() {
        let creds = Credentials::new(DOC_KEY, DOC_SECRET.as_bytes(), "test").expect("valid");
        let shown = format!("{creds:?}");
        let signer = format!("{:?}", Signer::new(creds, 5000));
        for text in [shown, signer] {
            assert!(
                !text.contains(DOC_KEY) && !text.contains(DOC_SECRET),
                "{text}"
            );
            assert!(text.contains("<redacted>"), "{text}");
        }
    }

    #[test]
    fn params_are_percent_encoded_but_for_unreserved_characters() {
        assert_eq!(
            encode_params(&[
                ("symbol", "BTCUSDT"),
                ("newClientOrderId", "a:b/c.d_e-f~g h&=")
            ]),
            "symbol=BTCUSDT&newClientOrderId=a%3Ab%2Fc.d_e-f~g%20h%26%3D"
        );
        assert_eq!(encode_params(&[]), "");
        assert_eq!(encode_params(&[("q", "0.01000000")]), "q=0.01000000");
    }

    fn key_file(text: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keys");
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(text.as_bytes()).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        (dir, path)
    }

    #[test]
    fn reads_a_key_file_and_refuses_one_others_can_read() {
        let text = format!("# exchange keys\n\n  KEY = {DOC_KEY}\nSECRET={DOC_SECRET}  \n");
        let (_dir, path) = key_file(&text, 0o600);
        let c = Credentials::from_file(&path).expect("read");
        assert_eq!(
            (c.key.as_str(), &c.secret[..]),
            (DOC_KEY, DOC_SECRET.as_bytes())
        );
        assert_eq!(c.origin(), path.display().to_string());
        for mode in [0o640, 0o604, 0o620, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let e = Credentials::from_file(&path).expect_err("too open");
            assert!(matches!(e, CredentialsError::TooOpen { .. }), "{e}");
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        let (_dir, path) = key_file(&text, 0o400);
        assert!(Credentials::from_file(&path).is_ok());
    }

    #[test]
    fn bad_key_files_are_refused_naming_the_line() {
        let cases = [
            ("KEY=k\n", "no SECRET= line"),
            ("SECRET=s\n", "no KEY= line"),
            ("KEY=k\nSECRET=s\nKEY=k2\n", "line 3: given twice"),
            ("KEY=k\nsecret s\n", "line 2: expected KEY="),
            ("KEY=k\nPASSWORD=s\n", "line 2: unknown name"),
            ("KEY=k\nSECRET=\n", "is empty"),
            ("KEY=\nSECRET=s\n", "is empty"),
            ("KEY=a b\nSECRET=s\n", "visible ASCII"),
            ("KEY=k\u{7f}\nSECRET=s\n", "visible ASCII"),
        ];
        for (text, want) in cases {
            let (_dir, path) = key_file(text, 0o600);
            let e = Credentials::from_file(&path).expect_err(text);
            assert!(e.to_string().contains(want), "{text:?}: {e}");
        }
        let (_dir, path) = key_file("", 0o600);
        std::fs::write(&path, b"KEY=k\n\xff\n").expect("write");
        let e = Credentials::from_file(&path).expect_err("binary");
        assert!(e.to_string().contains("line 2: not valid UTF-8"), "{e}");
        let e = Credentials::from_file(Path::new("/nonexistent/keys")).expect_err("absent");
        assert!(matches!(e, CredentialsError::Read { .. }), "{e}");
    }

    #[test]
    fn environment_needs_both_variables() {
        let v = |s: &str| Some(OsString::from(s));
        assert!(Credentials::from_vars(None, None).expect("none").is_none());
        let c = Credentials::from_vars(v(" key "), v("secret\n"))
            .expect("both")
            .expect("some");
        assert_eq!((c.key.as_str(), &c.secret[..]), ("key", &b"secret"[..]));
        for (k, s, names) in [
            (
                v("k"),
                None,
                "HANDOFF_API_KEY is set but HANDOFF_API_SECRET",
            ),
            (
                None,
                v("s"),
                "HANDOFF_API_SECRET is set but HANDOFF_API_KEY",
            ),
        ] {
            let e = Credentials::from_vars(k, s).expect_err("half");
            assert!(e.to_string().contains(names), "{e}");
        }
        let e = Credentials::from_vars(v(""), v("s")).expect_err("empty");
        assert!(e.to_string().contains("is empty"), "{e}");
    }

    #[test]
    fn hints_name_the_fix() {
        assert!(hint(-2014, false).is_some_and(|h| h.contains("HANDOFF_API_KEY")));
        assert!(hint(-1022, true).is_some_and(|h| h.contains("secret")));
        assert!(hint(-1021, true).is_some_and(|h| h.contains("clock")));
        assert_eq!(hint(-2010, true), None);
        assert_eq!(hint(-1102, true), None);
    }
}
