//! The values a Python callback reads: the connection a message came on, and
//! a timer that came due. Both are read-only.

use handoff_worker::protocol::worker::{ConnInfo, ConnKind};
use pyo3::prelude::*;

/// A connection, as `on_open`, `on_message` and `on_closed` see it. Pass it
/// to `out.send` to answer on it.
#[pyclass(frozen, module = "handoff._native")]
pub struct Conn {
    /// The connection's id: stable across handoffs, never reused by a worker.
    #[pyo3(get)]
    pub id: u32,
    /// Its name: `feed-0` for the first bare `--feed`, or the name given.
    #[pyo3(get)]
    pub name: String,
    /// The URL it was opened with.
    #[pyo3(get)]
    pub url: String,
    /// The remote address, for logs.
    #[pyo3(get)]
    pub peer: String,
    /// Whether it is `wss://`.
    #[pyo3(get)]
    pub tls: bool,
}

impl Conn {
    pub fn from_info(info: &ConnInfo) -> Conn {
        Conn {
            id: info.id.0,
            name: info.name.clone(),
            url: info.url.clone(),
            peer: info.peer.clone(),
            tls: info.kind == ConnKind::WebSocketTls,
        }
    }
}

#[pymethods]
impl Conn {
    fn __repr__(&self) -> String {
        format!(
            "Conn(id={}, name={:?}, url={:?})",
            self.id, self.name, self.url
        )
    }
}

/// A timer set with `out.after` or `out.at` that came due.
#[pyclass(frozen, module = "handoff._native")]
pub struct Timer {
    #[pyo3(get)]
    pub key: String,
    /// When it was due, in milliseconds since the Unix epoch.
    #[pyo3(get)]
    pub due_unix_ms: u64,
    /// It came due while no worker served (a crash): it fires late.
    #[pyo3(get)]
    pub late: bool,
}

impl Timer {
    pub fn from_timer(t: &handoff_worker::Timer) -> Timer {
        Timer {
            key: t.key.clone(),
            due_unix_ms: t.due_unix_ms,
            late: t.late,
        }
    }
}

#[pymethods]
impl Timer {
    fn __repr__(&self) -> String {
        format!(
            "Timer(key={:?}, due_unix_ms={}, late={})",
            self.key, self.due_unix_ms, self.late
        )
    }
}
