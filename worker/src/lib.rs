//! # handoff-worker
//!
//! Link this into a stateful tokio service and its websocket connections and
//! state survive a deploy: the `handoff` supervisor starts the new build, this
//! library freezes the old one at a message boundary, and the connections, the
//! bytes read but not yet consumed, and the app's state move to the new
//! process. The exchange never sees a disconnect.
//!
//! An app implements [`App`]: `snapshot`/`restore` for its state, and
//! `on_open`/`on_message` for its traffic. [`run`] does the rest:
//!
//! - **start**: under a supervisor (`HANDOFF_FD` in the environment) it says
//!   `Hello` (protocol, build, schema versions it reads) and either opens its
//!   feeds fresh, registering each socket with the supervisor, or takes over
//!   the handed-over sockets and snapshot ([`start`]); alone, it just serves;
//! - **serve**: one task consumes messages one at a time from all connections,
//!   fairly; heartbeats and periodic checkpoints go to the supervisor
//!   ([`serve`]);
//! - **freeze**: between two messages, flush every connection (pending pongs
//!   included), snapshot, and hand over each connection's leftovers; then wait
//!   to be thawed (a failed upgrade: resume exactly where it stopped) or told
//!   to exit (without touching the connections);
//! - **pre-copy** ([`precopy`]): an app with a large state says
//!   [`App::precopy`] (`Replay` or `Delta`) and the successor is warmed with
//!   it while this worker serves; the freeze then carries only what changed
//!   since, checked by [`App::digest`];
//! - **timers** ([`timers`]): the app sets named deadlines with
//!   [`Outbox::after`] / [`Outbox::at`] and gets [`App::on_timer`]; the
//!   library hands pending timers over with the state, so each fires once
//!   across handoffs, in the worker that serves when it is due;
//! - **connections at run time** ([`opened`]): [`Outbox::open`] and
//!   [`Outbox::close`] by name, handed over like configured feeds (matched
//!   by name: [`feeds`]); [`App::on_closed`] for every end;
//! - **orphaned**: should the supervisor go away, the worker serves on and
//!   waits on an orphan socket in the state directory for the next supervisor
//!   to adopt it ([`orphan`]); `serving.lock` there, held by the one worker
//!   that serves, makes two serving workers impossible whatever happens;
//! - **the stream** ([`stream::HandoffStream`]) sits below tungstenite and only
//!   ever takes whole websocket frames out of the kernel, so tungstenite's
//!   buffer is empty between messages and the leftovers are known exactly;
//! - **TLS** ([`tls`]): a `wss://` feed's session moves with its socket. rustls
//!   does the handshake; then either the kernel protects the records (kernel
//!   TLS: the descriptor carries keys and sequence numbers, and only the TLS
//!   1.3 traffic secrets travel beside it) or this crate's own record layer
//!   does, in every owner of the connection, and its keys and sequence
//!   numbers are handed over at a freeze beside the leftovers. Either way
//!   exactly one process ever writes records.
//!
//! ```no_run
//! use handoff_worker::{App, AppError, Outbox, Settings};
//! use handoff_worker::protocol::worker::{ConnInfo, RestoreMode};
//! use handoff_worker::Message;
//!
//! #[derive(Default)]
//! struct Counter { seen: u64 }
//!
//! impl App for Counter {
//!     const NAME: &'static str = "counter";
//!     const SCHEMA: u32 = 1;
//!     type Done = ();
//!     fn snapshot(&self) -> Result<Vec<u8>, AppError> { Ok(self.seen.to_le_bytes().to_vec()) }
//!     fn restore(&mut self, _schema: u32, bytes: &[u8], _mode: RestoreMode) -> Result<(), AppError> {
//!         self.seen = bytes.try_into().map(u64::from_le_bytes).map_err(AppError::new)?;
//!         Ok(())
//!     }
//!     fn on_open(&mut self, conn: &ConnInfo, out: &mut Outbox) {
//!         out.send(conn.id, Message::text(r#"{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}"#));
//!     }
//!     fn on_message(&mut self, _conn: &ConnInfo, _msg: Message, _out: &mut Outbox) { self.seen += 1; }
//! }
//!
//! // The whole `main`: logs to stderr (`RUST_LOG`, default `info`; colours
//! // only on a terminal), one feed per argument (`NAME=URL`, or a bare URL
//! // named `feed-0`, `feed-1`...), the build label `supervisorctl status`
//! // shows (`HANDOFF_BUILD_ID`), a single-threaded runtime, and the exit
//! // codes the supervisor reads (0 handed over or stopped, 1 failed, 2 bad
//! // feed list, 4 takeover refused). Alone it serves until SIGTERM; under
//! // `supervisor --worker` it is handed over on every deploy.
//! fn main() -> std::process::ExitCode {
//!     let feeds: Vec<String> = std::env::args().skip(1).collect();
//!     let settings = Settings {
//!         build_id: handoff_worker::launch::build_id(|| "counter 1".into()),
//!         ..Settings::default()
//!     };
//!     handoff_worker::launch::run_main("counter", &feeds, settings, Counter::default)
//! }
//! ```
//! Or, inside a runtime of your own: `handoff_worker::run(feeds, settings,
//! Counter::default).await` with `feeds: Vec<`[`Feed`]`>`.
//! A complete bot to start from (a feed, a timer, an order, a snapshot): `examples/minimal_bot.rs`.
#![forbid(unsafe_code)]

pub mod app;
mod carried;
pub mod checkpoint;
pub mod conn;
pub mod error;
pub mod fault;
pub mod feeds;
mod freeze;
pub mod launch;
pub mod link;
pub mod opened;
pub mod orphan;
pub mod precopy;
pub mod serve;
pub mod settings;
pub mod start;
pub mod stream;
pub mod timers;
pub mod tls;

pub use app::{App, AppError, Effect, Identity, Outbox};
pub use conn::Feed;
pub use error::{RestoreError, WorkerError};
pub use feeds::FeedSpecError;
pub use handoff_protocol as protocol;
pub use opened::Closed;
pub use settings::Settings;
pub use start::{run, Ended};
pub use timers::Timer;
pub use tungstenite::Message;
