//! # handoff-testkit
//!
//! Starts the real binaries (`exchange-sim`, `supervisor` with a
//! `trading-worker`) in a temp dir on port 0, and drives them the way an
//! operator would: `supervisorctl`, signals, and the simulator's audit. Used by
//! the end-to-end tests, the benchmarks and the demo.
//!
//! Waiting is always on a state (a status field, an audit condition) with a
//! deadline, never a fixed sleep.
#![forbid(unsafe_code)]

pub mod cluster;
mod lifecycle;
mod procs;
pub mod sim;
pub mod systemd;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use thiserror::Error;

pub use cluster::{Bins, Cluster, ClusterBuilder, CtlOutput};
pub use procs::{parent_of, process_alive};
pub use sim::Sim;
pub use systemd::FakeSystemd;

/// What went wrong driving the processes.
#[derive(Debug, Error)]
pub enum TestkitError {
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Protocol(String),
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("file {path:?}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Poll `cond` until it yields `Some` or `timeout` passes. The pause between
/// polls grows from 1 ms to 50 ms: this waits for a state, it does not sleep
/// for a time to pass.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Result<Option<T>, TestkitError>,
) -> Result<T, TestkitError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = cond()? {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(TestkitError::Timeout {
                what: what.to_string(),
                after: timeout,
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
