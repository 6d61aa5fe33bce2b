//! Error types.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors that stop the simulator as a whole. Per-connection problems never
/// surface here: they are recorded in the audit instead.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The flags make no sense (e.g. no symbols).
    #[error("invalid arguments: {0}")]
    InvalidArgs(String),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Accepting connections failed irrecoverably.
    #[error("accept failed: {0}")]
    Accept(#[source] std::io::Error),
    /// Writing the `listening` line to stdout failed.
    #[error("cannot write to stdout: {0}")]
    Stdout(#[source] std::io::Error),
    /// Installing signal handlers or building the runtime failed.
    #[error("runtime setup failed: {0}")]
    Runtime(#[source] std::io::Error),
    /// Generating the CA or the server certificate failed (`--tls`).
    #[error("cannot generate the TLS certificates: {0}")]
    Certificate(#[source] rcgen::Error),
    /// rustls refused the server configuration (`--tls`).
    #[error("cannot configure TLS: {0}")]
    TlsConfig(#[source] tokio_rustls::rustls::Error),
    /// The CA certificate could not be written to `--tls-ca-out`.
    #[error("cannot write the CA certificate to {}: {source}", path.display())]
    WriteCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why the REST order API refused a request. Each variant maps to a
/// Binance-style `{"code":…,"msg":…}` answer (see [`ApiError::code`] and
/// [`ApiError::status`]); the message is the `Display` text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A parameter is missing or malformed (`-1102`).
    #[error("Mandatory parameter '{name}' was not sent, was empty/null, or malformed: {why}.")]
    Param {
        /// The parameter's name as the client spells it.
        name: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The request body is not a JSON object (`-1102`).
    #[error("Malformed request body: {0}.")]
    Body(String),
    /// `price` sent with a `MARKET` order (`-1106`).
    #[error("Parameter 'price' sent when not required.")]
    PriceNotRequired,
    /// A symbol the simulator does not trade (`-1121`).
    #[error("Invalid symbol.")]
    InvalidSymbol,
    /// The client order id was used before, by any order (`-2010`).
    #[error("Duplicate order sent.")]
    Duplicate,
    /// Rejected by `--order-reject-every` (`-2010`).
    #[error("Insufficient balance.")]
    Rejected,
    /// `GET` of an order that does not exist (`-2013`, HTTP 404).
    #[error("Order does not exist.")]
    NoSuchOrder,
    /// `DELETE` of an order that does not exist or is no longer open (`-2011`).
    #[error("Unknown order sent.")]
    UnknownOrder,
    /// A parameter with characters outside its legal range (`-1100`).
    #[error("Illegal characters found in parameter '{name}'; legal range is '{legal}'.")]
    IllegalChars {
        /// The parameter's name as the client spells it.
        name: &'static str,
        /// The legal range, as a regular expression.
        legal: &'static str,
    },
    /// The same parameter sent twice (`-1101`).
    #[error("Duplicate values for a parameter detected.")]
    DuplicateParam,
    /// A listen key that was never issued, expired or was closed (`-1125`).
    #[error("This listenKey does not exist.")]
    InvalidListenKey,
    /// No `X-MBX-APIKEY` header, or one that cannot be a key (`-2014`,
    /// HTTP 401).
    #[error("API-key format invalid.")]
    ApiKeyFormat,
    /// An API key the simulator does not know (`-2015`, HTTP 401).
    #[error("Invalid API-key, IP, or permissions for action.")]
    InvalidApiKey,
    /// A signature that does not match the request (`-1022`).
    #[error("Signature for this request is not valid.")]
    InvalidSignature,
    /// A timestamp more than `recvWindow` ms behind the simulator's clock
    /// (`-1021`).
    #[error("Timestamp for this request is outside of the recvWindow.")]
    OutsideRecvWindow,
    /// A timestamp more than 1000 ms ahead of the simulator's clock (`-1021`).
    #[error("Timestamp for this request was 1000ms ahead of the server's time.")]
    TimestampAhead,
    /// A `recvWindow` over 60000 (`-1131`).
    #[error("recvWindow must be less than 60000")]
    BadRecvWindow,
    /// Unknown path under the API (`-1000`, HTTP 404).
    #[error("No such endpoint {0}.")]
    NoSuchPath(String),
    /// Method not supported on an API path (`-1000`, HTTP 405).
    #[error("Method {method} not allowed on {path}.")]
    Method {
        /// The method used.
        method: String,
        /// The path asked for.
        path: String,
    },
}

impl ApiError {
    /// The Binance-style error code.
    pub fn code(&self) -> i32 {
        match self {
            Self::IllegalChars { .. } => -1100,
            Self::DuplicateParam => -1101,
            Self::Param { .. } | Self::Body(_) => -1102,
            Self::InvalidListenKey => -1125,
            Self::PriceNotRequired => -1106,
            Self::InvalidSymbol => -1121,
            Self::Duplicate | Self::Rejected => -2010,
            Self::NoSuchOrder => -2013,
            Self::UnknownOrder => -2011,
            Self::NoSuchPath(_) | Self::Method { .. } => -1000,
            Self::ApiKeyFormat => -2014,
            Self::InvalidApiKey => -2015,
            Self::InvalidSignature => -1022,
            Self::OutsideRecvWindow | Self::TimestampAhead => -1021,
            Self::BadRecvWindow => -1131,
        }
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            Self::NoSuchOrder | Self::NoSuchPath(_) => 404,
            Self::Method { .. } => 405,
            Self::ApiKeyFormat | Self::InvalidApiKey => 401,
            _ => 400,
        }
    }

    /// The JSON body `{"code":…,"msg":…}`.
    pub fn body(&self) -> String {
        serde_json::json!({ "code": self.code(), "msg": self.to_string() }).to_string()
    }

    /// Shorthand for [`ApiError::Param`].
    pub fn param(name: &'static str, why: impl Into<String>) -> Self {
        Self::Param {
            name,
            why: why.into(),
        }
    }
}
