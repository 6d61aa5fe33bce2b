//! systemd's notify protocol (`Type=notify`): one datagram per state change to
//! the socket named in `$NOTIFY_SOCKET` (read once at start). Without that
//! variable every call is a no-op.
//!
//! - `READY=1` once the first worker serves;
//! - `RELOADING=1` with `MONOTONIC_USEC` when an upgrade starts (a reload, to
//!   systemd: `ExecReload=kill -USR2 $MAINPID`), `READY=1` when it ends;
//! - `STOPPING=1` on a graceful stop;
//! - `STATUS=` lines saying what the supervisor is doing.

use std::os::unix::net::{SocketAddr, UnixDatagram};

use tracing::warn;

/// The address `$NOTIFY_SOCKET` names: a path, or, after a leading `@`, an
/// abstract socket name. Also used by [`crate::fdstore`].
pub(crate) fn socket_addr(path: &str) -> std::io::Result<SocketAddr> {
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else {
        SocketAddr::from_pathname(path)
    }
}

/// A handle on `$NOTIFY_SOCKET`.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From the environment; a missing or unusable socket disables it.
    pub fn from_env() -> Notifier {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { target: None };
        };
        let path = path.to_string_lossy().into_owned();
        let target = match (UnixDatagram::unbound(), socket_addr(&path)) {
            (Ok(sock), Ok(addr)) => Some((sock, addr)),
            (Err(e), _) | (_, Err(e)) => {
                warn!(%path, error = %e, "NOTIFY_SOCKET unusable; not notifying systemd");
                None
            }
        };
        Notifier { target }
    }

    /// Send `lines` (e.g. `"READY=1\nSTATUS=serving"`).
    pub fn send(&self, lines: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(lines.as_bytes(), addr) {
                warn!(error = %e, "cannot notify systemd");
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn reloading(&self, status: &str) {
        let usec = handoff_protocol::monotonic_ns() / 1000;
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS={status}"
        ));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// The unit's main process is now `pid` (a new supervisor took over).
    pub fn main_pid(&self, pid: u32) {
        self.send(&format!(
            "MAINPID={pid}\nSTATUS=handed over to supervisor pid {pid}"
        ));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }
}
