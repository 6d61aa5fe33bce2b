//! Error types.

use std::net::SocketAddr;

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
}
