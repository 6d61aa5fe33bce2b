//! # handoff-supervisor
//!
//! The thin supervisor of a handoff-capable worker, and `supervisorctl`.
//!
//! It never reads market data. It starts the worker with an inherited
//! socketpair ([`proc`]), keeps a duplicate of every socket the worker
//! registers ([`held`]) and the newest checkpoint, and drives upgrades through
//! the phases of [`handoff::Phase`]: the successor is spawned and prepared
//! *before* the old worker freezes; the old worker is thawed if anything fails
//! before the successor is ready; it exits only after the successor is live.
//!
//! All state lives in one task ([`daemon`]) fed by worker events, control
//! requests ([`control`], a 0600 Unix socket with peer-credential checks) and
//! operator intents ([`signals`]: SIGUSR2 upgrade, SIGTERM/SIGINT graceful
//! stop). [`status`] turns that state into the report `supervisorctl status`
//! prints; [`ctl`] is `supervisorctl` itself.
//!
//! The supervisor is no single point of failure. It holds
//! `STATE_DIR/supervisor.lock` (one supervisor per state directory), and the
//! serving worker holds `STATE_DIR/serving.lock` (one serving worker, which
//! the kernel enforces). A worker whose supervisor dies serves on and waits
//! to be adopted; the next supervisor on the state directory adopts it
//! instead of starting another ([`adopt`]). Under systemd, the held sockets
//! and the newest checkpoint can also outlive the supervisor's own restart in
//! systemd's file descriptor store ([`fdstore`]).
#![forbid(unsafe_code)]

pub mod adopt;
pub mod audit_log;
pub mod binary;
pub mod builds;
pub mod checkpoints;
pub mod cli;
pub mod config;
pub mod control;
pub mod ctl;
pub mod ctl_docs;
pub mod daemon;
pub mod download;
pub mod fault;
pub mod fdstore;
pub mod first_start;
pub mod handoff;
pub mod held;
pub mod history;
pub mod metrics;
pub mod notify;
pub mod persist;
pub mod probation;
pub mod proc;
pub mod recovery;
pub mod requests;
pub mod signals;
pub mod startup;
pub mod status;
pub mod succession;
pub mod upgrade;
pub mod watch;
pub mod worker_events;

pub use config::{Config, Timeouts};
pub use daemon::run;
