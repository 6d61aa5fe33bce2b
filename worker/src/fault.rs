//! Fault hooks for the end-to-end tests, compiled only with the
//! `fault-injection` feature (which only the test build enables).
//!
//! `HANDOFF_FAULT=<point>` makes the worker misbehave at that point:
//! `exit-at-start`, `hang-before-hello`, `crash-after-restore`,
//! `hang-after-restore`, `reject-restore`, `crash-after-ready` (before Go),
//! `crash-after-go` (before consuming anything), `crash-in-freeze`,
//! `hang-in-freeze` (the event loop stops: no heartbeats), `reads-no-schema`
//! (the Hello claims to read no schema at all: an incompatible build),
//! `garbage-on-channel` (once serving, write junk on the supervisor socket),
//! `image-fails` (every checkpoint image's child fails).

/// Points in a worker's life where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    Start,
    BeforeHello,
    AfterRestore,
    AfterReady,
    AfterGo,
    Freeze,
    /// Once the serve loop runs.
    Serving,
}

/// What a hook asks the runtime to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    None,
    Reject,
    /// Write junk bytes on the supervisor socket.
    Garbage,
}

#[cfg(feature = "fault-injection")]
pub async fn hit(point: FaultPoint) -> FaultAction {
    let Ok(fault) = std::env::var("HANDOFF_FAULT") else {
        return FaultAction::None;
    };
    match (point, fault.as_str()) {
        (FaultPoint::Start, "exit-at-start") => std::process::exit(3),
        (FaultPoint::BeforeHello, "hang-before-hello")
        | (FaultPoint::AfterRestore, "hang-after-restore")
        | (FaultPoint::Freeze, "hang-in-freeze") => {
            std::future::pending::<()>().await;
            FaultAction::None
        }
        (FaultPoint::AfterRestore, "crash-after-restore")
        | (FaultPoint::AfterReady, "crash-after-ready")
        | (FaultPoint::AfterGo, "crash-after-go")
        | (FaultPoint::Freeze, "crash-in-freeze") => std::process::abort(),
        (FaultPoint::AfterRestore, "reject-restore") => FaultAction::Reject,
        (FaultPoint::Serving, "garbage-on-channel") => FaultAction::Garbage,
        _ => FaultAction::None,
    }
}

#[cfg(not(feature = "fault-injection"))]
pub async fn hit(_point: FaultPoint) -> FaultAction {
    FaultAction::None
}

/// Schema versions to announce instead of the app's own (`reads-no-schema`).
#[cfg(feature = "fault-injection")]
pub fn reads_schemas_override() -> Option<Vec<u32>> {
    (std::env::var("HANDOFF_FAULT").ok()?.as_str() == "reads-no-schema").then(Vec::new)
}

#[cfg(not(feature = "fault-injection"))]
pub fn reads_schemas_override() -> Option<Vec<u32>> {
    None
}

/// Whether checkpoint images must fail (`image-fails`).
#[cfg(feature = "fault-injection")]
pub fn image_fails() -> bool {
    std::env::var("HANDOFF_FAULT").is_ok_and(|f| f == "image-fails")
}

#[cfg(not(feature = "fault-injection"))]
pub fn image_fails() -> bool {
    false
}
