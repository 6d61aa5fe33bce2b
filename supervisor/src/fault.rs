//! Fault hooks for the end-to-end tests, compiled in only with the
//! `fault-injection` feature (which only the test build enables).
//!
//! `HANDOFF_SUPERVISOR_FAULT=<point>` kills the supervisor with SIGKILL at
//! that point, exactly as `kill -9` would: `die-in-freeze` (the old worker
//! answered Frozen; the successor has not been restored), `die-after-ready`
//! (the successor is Ready; nothing sent since), `die-after-exit` (`Exit` is
//! written to the old worker; `Go` is never sent), `die-in-checkpoint-write`
//! (the checkpoint file's new copy is written, not yet renamed into place),
//! `die-after-release` (a supervisor started by `upgrade-supervisor`, once
//! the old one has released the worker to it, before it adopts it).

/// Points in a supervisor's work where it can be made to die.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    InFreeze,
    AfterReady,
    ExitWritten,
    CheckpointWrite,
    AfterRelease,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::InFreeze => "die-in-freeze",
            Point::AfterReady => "die-after-ready",
            Point::ExitWritten => "die-after-exit",
            Point::CheckpointWrite => "die-in-checkpoint-write",
            Point::AfterRelease => "die-after-release",
        }
    }
}

/// Whether the fault at `point` is armed.
#[cfg(feature = "fault-injection")]
pub fn armed(point: Point) -> bool {
    std::env::var("HANDOFF_SUPERVISOR_FAULT").is_ok_and(|f| f == point.name())
}

#[cfg(not(feature = "fault-injection"))]
pub fn armed(point: Point) -> bool {
    let _ = point.name();
    false
}

/// Die here if the fault at `point` is armed.
pub fn hit(point: Point) {
    if armed(point) {
        tracing::error!(fault = point.name(), "fault injected: SIGKILL to self");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    }
}
