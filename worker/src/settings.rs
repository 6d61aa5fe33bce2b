//! Settings of the worker runtime. Every timeout says what it protects.

use std::time::Duration;

use crate::tls::KernelTlsMode;

/// How the runtime paces itself.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Build identity reported in `Hello` (version, git hash).
    pub build_id: String,
    /// How often the state is checkpointed to the supervisor: bounds what a
    /// crash can lose (recovery restarts from the newest checkpoint).
    pub checkpoint_interval: Duration,
    /// How often the event loop tells the supervisor it is alive; the
    /// supervisor's hang detection counts missed heartbeats.
    pub heartbeat_interval: Duration,
    /// Longest a freeze waits for pending writes (acks, pongs) to reach the
    /// kernel. Past it the freeze fails and this worker carries on serving:
    /// a peer that stopped reading must not stall the worker forever, and
    /// writes are never split between two processes.
    pub freeze_flush_timeout: Duration,
    /// Longest a freeze waits for the app's in-flight effects (REST orders)
    /// to settle before it snapshots. Past it the freeze fails and this
    /// worker carries on with its requests intact: during a planned handoff
    /// no order is ever left half-known between two processes.
    pub freeze_settle_timeout: Duration,
    /// Longest a fresh TCP connect plus TLS and websocket handshakes may
    /// take.
    pub connect_timeout: Duration,
    /// PEM certificates trusted for `wss://` besides the public roots (a
    /// private CA, or a test exchange's).
    pub ca_file: Option<std::path::PathBuf>,
    /// Whether `wss://` records are protected by the kernel (kernel TLS) or
    /// in this process: see [`KernelTlsMode`].
    pub kernel_tls: KernelTlsMode,
    /// Longest a graceful stop waits for each close handshake.
    pub close_timeout: Duration,
    /// How often a lost connection is re-opened (and re-subscribed): bounds
    /// how long a feed stays dark after its peer closed it or a crash tore a
    /// frame in it.
    pub reconnect_interval: Duration,
    /// How long a supervisor that connected to this worker's orphan socket
    /// (see [`crate::orphan`]) may take to say `Adopt`. Protects the
    /// worker's adoptability from a peer that connects and says nothing:
    /// past it the connection is dropped and the socket listens again. The
    /// worker serves on throughout.
    pub adoption_timeout: Duration,
    /// Close and reopen a connection once it is this old (with a close
    /// frame, the app told through `on_closed` and `on_open`), without an
    /// upgrade: Binance cuts every connection after 24 h, and a planned
    /// reconnect is better than a cut. `None`: never.
    pub max_conn_age: Option<Duration>,
    /// Longest the copy-on-write child that writes a checkpoint (see
    /// [`crate::checkpoint`]) may take. Protects the crash-loss bound from a
    /// child that hangs (a snapshot waiting on a lock another thread held
    /// at the fork): past it the child is killed and checkpoints are taken
    /// in the event loop from then on.
    pub checkpoint_image_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            build_id: concat!("handoff-worker ", env!("CARGO_PKG_VERSION")).to_string(),
            checkpoint_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_millis(500),
            freeze_flush_timeout: Duration::from_secs(2),
            freeze_settle_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
            ca_file: None,
            kernel_tls: KernelTlsMode::Auto,
            close_timeout: Duration::from_secs(2),
            reconnect_interval: Duration::from_secs(1),
            adoption_timeout: Duration::from_secs(5),
            max_conn_age: None,
            checkpoint_image_timeout: Duration::from_secs(60),
        }
    }
}
