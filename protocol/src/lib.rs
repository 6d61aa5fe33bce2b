//! The wire protocol of `handoff`: the only crate the supervisor, the worker
//! library and `supervisorctl` share.
//!
//! It holds mechanism, never policy:
//!
//! - [`frame`]: the length-prefixed frame (magic, descriptor count, payload
//!   length), whose size limit is checked *before* anything is allocated;
//! - [`fds`]: passing descriptors over a Unix socket with `SCM_RIGHTS`
//!   (received descriptors are close-on-exec; a truncated control message is an
//!   error, never a silent loss) and handing a descriptor to a child process;
//! - [`channel`]: [`Channel<Tx, Rx>`](channel::Channel), an async, typed,
//!   direction-checked endpoint over a Unix stream socket: the supervisor holds a
//!   `Channel<ToWorker, FromWorker>`, the worker the mirror image, so a worker
//!   message can never be sent to the CLI;
//! - [`worker`]: every message between supervisor and worker;
//! - [`ctl`]: every message between `supervisorctl` and the supervisor;
//! - [`tls`]: the TLS session state (keys, sequence numbers) of a `wss://`
//!   connection handed over mid-session, or only its TLS 1.3 traffic secrets
//!   where kernel TLS carries the rest in the descriptor;
//! - [`ktls`]: the kernel TLS calls `nix` lacks (a record of a given content
//!   type; which upper-layer protocol a socket has);
//! - [`state_dir`]: the files of the state directory that the supervisor and
//!   its workers both use, [`lockfile`] for the two `flock(2)` locks among
//!   them, and [`pidfd`] for watching a process that is not one's child;
//! - [`succession`]: the messages of a supervisor handing over to a new
//!   supervisor binary;
//! - [`image`]: a snapshot written by a copy-on-write child of the worker
//!   into a sealed memfd, so that a checkpoint never stops the serving loop
//!   for more than a `fork`;
//! - [`snapshot`]: the envelope around a worker's opaque state (app name,
//!   schema version, CRC-32 checksum, bytes).
//!
//! # The handoff, as seen on the wire
//!
//! ```text
//!  supervisor            old worker A                 new worker B
//!      | ---- spawn B (socketpair inherited, HANDOFF_FD=n) ----> |
//!      | <--------------------------------------- Hello -------- |   prepare
//!      | -- Freeze --> |                                          |
//!      | <- Frozen{snapshot, leftovers} --                        |   blackout starts
//!      | ---------------------- Restore{snapshot, conns} + fds -> |
//!      | <--------------------------------------- Ready -------- |
//!      | -- Exit ----> |                                          |
//!      | ----------------------------------------------- Go ----> |
//!      |               exits, reaped        first message consumed |   blackout ends
//! ```
//!
//! A failure before `Ready` is answered with `Thaw` to A and a kill of B.
#![deny(unsafe_code)]

pub mod channel;
pub mod ctl;
pub mod fds;
pub mod frame;
pub mod image;
pub mod ktls;
pub mod lockfile;
pub mod pidfd;
pub mod snapshot;
pub mod state_dir;
pub mod succession;
pub mod tls;
pub mod worker;

pub use channel::{Channel, ChannelError};

/// Held by the tests that fork or that check a lock is free: a child forked
/// by one test holds copies of another test's descriptors until it execs,
/// which would keep that test's lock held for a moment.
#[cfg(test)]
pub(crate) static FORK_GUARD: std::sync::Mutex<()> = std::sync::Mutex::new(());
pub use snapshot::Snapshot;

/// Version of the supervisor ⇄ worker protocol. A worker whose `Hello` names
/// another version is refused before anything is frozen.
pub const PROTOCOL_VERSION: u32 = 6;

/// Name of the environment variable through which a worker learns the number of
/// its inherited supervisor socket.
pub const ENV_CHANNEL_FD: &str = "HANDOFF_FD";

/// Monotonic clock in nanoseconds (`CLOCK_MONOTONIC`), which is system-wide on
/// Linux: timestamps taken in different processes can be subtracted. Used for
/// the blackout (A's freeze to B's first consumed message).
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec() as u64),
        // CLOCK_MONOTONIC cannot fail on Linux; 0 makes any derived figure
        // obviously wrong rather than crashing a worker.
        Err(_) => 0,
    }
}
