//! Messages between the supervisor and a worker, over the worker's inherited
//! socketpair. See the crate docs for the sequence of a handoff.

use serde::{Deserialize, Serialize};

use crate::frame::Message;
use crate::snapshot::Snapshot;
use crate::tls::TlsSession;

/// A connection's identity, chosen by the worker that opened it and kept by
/// every later worker it is handed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConnId(pub u32);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// What kind of stream a held descriptor carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnKind {
    /// A websocket client connection over plain TCP.
    WebSocket,
    /// A websocket client connection over TLS (`wss://`). Its session moves
    /// only in a planned handoff; after a crash it is re-established.
    WebSocketTls,
}

/// Description of a connection, as registered by the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnInfo {
    pub id: ConnId,
    /// Name the app gave it (e.g. `feed-0`).
    pub name: String,
    pub kind: ConnKind,
    /// The URL it was opened with.
    pub url: String,
    /// Remote address, for operators.
    pub peer: String,
}

/// First message of every worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub pid: u32,
    /// Free-form build identity (version, git hash) for operators.
    pub build_id: String,
    /// App name (snapshot envelopes carry it).
    pub app: String,
    /// Schema version this build writes by default.
    pub writes_schema: u32,
    /// Every schema version this build can write when asked (for a rollback
    /// to an older build), `writes_schema` included.
    pub can_write: Vec<u32>,
    /// Schema versions this build can read.
    pub reads_schemas: Vec<u32>,
    /// How this build can catch a successor up before a freeze, and be
    /// caught up (see [`PreCopyMode`]).
    pub precopy: PreCopyMode,
}

/// How a worker's state reaches its successor *before* the freeze, so
/// that the freeze carries only what changed since (pre-copy). Both
/// workers of an upgrade must say the same mode, and the successor must
/// write the same schema; otherwise the whole state moves in the freeze.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PreCopyMode {
    /// The whole snapshot moves in the freeze.
    #[default]
    Off,
    /// The library journals every input it delivers to the app after the
    /// pre-copy image was taken; the successor delivers them again to its
    /// app, discarding what the callbacks send and spawn. Needs callbacks
    /// that are deterministic functions of the state and the input.
    Replay,
    /// The app writes what changed since a mark and applies it.
    Delta,
}

/// One round of a pre-copy, from the serving worker (`PreCopied`) and, as
/// it is, to the successor (`Warm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreCopyPart {
    /// 0: the state itself; then what changed since the previous round.
    pub round: u32,
    /// Round 0 with a descriptor attached (a sealed memfd written by a
    /// copy-on-write child, [`crate::image`]): how many state bytes it
    /// holds, its checksum excluded; `part`'s bytes are then empty.
    pub image_len: Option<u64>,
    /// The state (round 0 without an image) or the catch-up. Its bytes are
    /// the frame's blob ([`crate::frame::Message`]).
    #[serde(with = "crate::snapshot::envelope")]
    pub part: Snapshot,
    /// How long the serving worker's loop stopped to make it (nanoseconds).
    pub took_ns: u64,
}

/// Whether a restore continues a live handoff or follows a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestoreMode {
    /// The previous worker froze at a message boundary: nothing is missing.
    Handoff,
    /// The previous worker died: input since the checkpoint may be missing and
    /// the app should reconcile.
    Recovery,
}

/// One connection handed to a new worker; its descriptor travels in the same
/// frame, at the same index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnRestore {
    pub info: ConnInfo,
    /// Bytes the previous owner had taken from the kernel but not consumed
    /// (plaintext, for a TLS connection).
    #[serde(with = "serde_bytes")]
    pub leftovers: Vec<u8>,
    /// The TLS session to continue. `None` on a TLS connection means the
    /// session cannot be continued (after a crash, its record sequence
    /// numbers are unknown): the worker closes it and connects again.
    pub tls: Option<TlsSession>,
}

/// Everything a new worker needs to take over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    pub mode: RestoreMode,
    /// Its bytes are the frame's blob ([`crate::frame::Message`]).
    #[serde(with = "crate::snapshot::envelope_opt")]
    pub snapshot: Option<Snapshot>,
    pub conns: Vec<ConnRestore>,
    /// `Some`: `snapshot` is not a whole state but the catch-up of a
    /// pre-copy, applied to the state the successor was warmed with; once
    /// applied, the app's digest must be this one (the frozen worker's).
    pub digest: Option<u64>,
}

/// A connection's part of a frozen worker's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnLeftovers {
    pub id: ConnId,
    #[serde(with = "serde_bytes")]
    pub leftovers: Vec<u8>,
    /// The TLS session, for a TLS connection.
    pub tls: Option<TlsSession>,
}

/// A frozen worker's answer to [`ToWorker::Freeze`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frozen {
    /// Its bytes are the frame's blob ([`crate::frame::Message`]).
    #[serde(with = "crate::snapshot::envelope")]
    pub snapshot: Snapshot,
    pub conns: Vec<ConnLeftovers>,
    /// When the worker stopped consuming ([`crate::monotonic_ns`]).
    pub frozen_at_ns: u64,
    /// The app's JSON summary of its state, if it has one.
    pub summary: Option<String>,
    /// `Some` after a pre-copy: `snapshot` holds only the catch-up since
    /// its last round, and this is the app's digest of the frozen state.
    /// Not a checkpoint.
    pub digest: Option<u64>,
}

impl Frozen {
    /// Whether `snapshot` is a pre-copy's catch-up rather than a state.
    pub fn is_catch_up(&self) -> bool {
        self.digest.is_some()
    }
}

/// A periodic (or requested) copy of the worker's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Its bytes are the frame's blob ([`crate::frame::Message`]).
    #[serde(with = "crate::snapshot::envelope")]
    pub snapshot: Snapshot,
    pub summary: Option<String>,
    /// When it was taken ([`crate::monotonic_ns`]).
    pub taken_at_ns: u64,
}

/// A [`Checkpoint`] whose bytes are in a memfd (see [`crate::image`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointImage {
    /// The app that wrote it (as in [`Snapshot::app`]).
    pub app: String,
    /// The schema of the bytes.
    pub schema: u32,
    /// How many snapshot bytes the image holds (its checksum excluded).
    pub len: u64,
    pub summary: Option<String>,
    /// When the image was taken: the instant of the `fork`
    /// ([`crate::monotonic_ns`]).
    pub taken_at_ns: u64,
}

impl CheckpointImage {
    /// The checkpoint, read from the image `fd` that came with this message
    /// (at most [`crate::frame::MAX_WORKER_FRAME`] bytes, like a checkpoint
    /// that travels in its frame).
    pub fn read(self, fd: impl std::os::fd::AsFd) -> Result<Checkpoint, crate::image::ImageError> {
        let (bytes, checksum) = crate::image::read(fd, crate::frame::MAX_WORKER_FRAME as u64)?;
        if bytes.len() as u64 != self.len {
            return Err(crate::image::ImageError::Length {
                said: self.len,
                holds: bytes.len() as u64,
            });
        }
        Ok(Checkpoint {
            snapshot: Snapshot {
                app: self.app,
                schema: self.schema,
                checksum,
                bytes,
            },
            summary: self.summary,
            taken_at_ns: self.taken_at_ns,
        })
    }
}

/// The worker library's own state beside the app's snapshot (its timers,
/// the feeds it was configured with, the connections the app opened at run
/// time): opaque to the supervisor, which keeps it with the checkpoint or
/// `Frozen` it came before and hands it back before a `Restore`. The
/// library encodes it so that it can grow without a protocol change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// Where an orphaned worker stands when a supervisor connects to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrphanState {
    /// Consuming and answering on its connections, holding `serving.lock`.
    Serving,
    /// A successor restored in a handoff whose supervisor went away after
    /// its `Ready` and before any `Go`: it holds the connections and the
    /// handed-over state, consumes nothing and holds no lock. The next
    /// supervisor tells it `Go` (its predecessor handed over: see
    /// [`crate::lockfile::handed_over`]) or `Exit`.
    AwaitingGo,
}

/// An orphaned worker's first message to a supervisor that connected to its
/// orphan socket (see [`crate::state_dir`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adoptable {
    /// What it said to its first supervisor.
    pub hello: Hello,
    /// The generation its first supervisor gave it.
    pub generation: u64,
    pub state: OrphanState,
    /// Connections it holds (each is registered again once adopted).
    pub conns: u32,
    /// How long it has been without a supervisor.
    pub orphaned_ms: u64,
}

/// Supervisor → worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Answer to `Hello` for a first start: open your own connections.
    StartFresh,
    /// Take over (descriptors attached, one per `conns` entry, in order).
    /// Answer `Ready` without consuming anything, or `Rejected`.
    Restore(Restore),
    /// Start consuming (only after `Ready`).
    Go,
    /// Stop consuming at a message boundary, flush, answer `Frozen` with the
    /// state written in `schema` (default: the worker's own); with
    /// `catch_up`, after a pre-copy, with only what changed since its last
    /// round and the state's digest.
    Freeze { schema: Option<u32>, catch_up: bool },
    /// Pre-copy round `round`: 0 takes the state (a copy-on-write image)
    /// and starts recording what changes; later rounds send what changed
    /// since the previous one. Answered by `PreCopied` or `PreCopyFailed`;
    /// the worker serves on throughout.
    PreCopy { round: u32 },
    /// The pre-copy was given up: stop recording changes.
    PreCopyEnd,
    /// To a successor before its `Restore`: a pre-copy round to apply (the
    /// image's descriptor attached to round 0). Answered by `Warmed`, or
    /// `Rejected` (and the successor exits).
    Warm(PreCopyPart),
    /// The upgrade was abandoned: resume exactly where you froze.
    Thaw,
    /// Exit without touching the connections (no close frame, no shutdown).
    Exit,
    /// Stop for good: close the connections cleanly and exit.
    Stop,
    /// Send a `Checkpoint` now.
    CheckpointNow,
    /// Write checkpoints in `schema` until told otherwise (`None`: the
    /// worker's own). Sent during probation so that, should the new build
    /// die, the previous build can read the newest checkpoint.
    CheckpointIn { schema: Option<u32> },
    /// Answer to [`FromWorker::Adoptable`]: this supervisor is yours now.
    /// Register every connection again (this supervisor holds none), send a
    /// checkpoint, and carry on as before.
    Adopt { supervisor_pid: u32 },
    /// What the library carried with the state of the `Restore` that
    /// follows (see [`FromWorker::Carried`]).
    Carried(Carried),
}

/// Worker → supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromWorker {
    Hello(Hello),
    /// A new connection (its descriptor attached): the supervisor keeps a copy.
    Register(ConnInfo),
    /// The connection is gone for good; the supervisor drops its copy.
    Unregister {
        id: ConnId,
        reason: String,
    },
    Checkpoint(Checkpoint),
    Frozen(Frozen),
    /// Could not freeze (e.g. a peer would not take the pending writes); the
    /// worker carries on as if never asked.
    FreezeFailed {
        reason: String,
    },
    /// Restored and ready to consume.
    Ready,
    /// Refused the restore; the worker exits after sending it.
    Rejected {
        reason: String,
    },
    /// The first message consumed after `Go`, ([`crate::monotonic_ns`]).
    FirstConsumed {
        at_ns: u64,
    },
    /// Liveness, from the app's event loop.
    Heartbeat,
    /// An orphan's first message to a supervisor that connected to it.
    Adoptable(Adoptable),
    /// The library's own state, sent right before each `Checkpoint` and
    /// `Frozen`: it belongs to that state, and goes wherever it goes.
    Carried(Carried),
    /// A restored worker's configured feeds differ from the connections it
    /// was handed (matched by name): one line per change it will make after
    /// `Go`. Sent before `Ready`; the supervisor logs them with the upgrade.
    FeedChanges(Vec<String>),
    /// The worker holds every feed it was configured with and serves: sent
    /// once, when its event loop starts (fresh or recovered), or, after
    /// `Go`, once its first message is through (or at its first heartbeat,
    /// on a quiet feed), so that the supervisor's wake-up does not fall in
    /// the blackout.
    /// Until a worker has said it, the supervisor counts its exits as
    /// failed starts.
    Serving,
    /// The worker cannot go on and exits: why, in its own words (a feed it
    /// cannot open names the address and the reason). Sent right before it
    /// exits, so the supervisor can report it.
    Failed {
        reason: String,
    },
    /// A checkpoint whose bytes are in the attached descriptor: a sealed
    /// memfd written by a copy-on-write image of the worker
    /// ([`crate::image`]), so that its serving loop never stops for the
    /// snapshot. Comes right after its `Carried`, like a `Checkpoint`.
    CheckpointImage(CheckpointImage),
    /// A pre-copy round (round 0's image descriptor attached).
    PreCopied(PreCopyPart),
    /// No pre-copy round could be made; the worker serves on and records
    /// nothing.
    PreCopyFailed {
        reason: String,
    },
    /// A successor applied pre-copy round `round` in `took_ns`.
    Warmed {
        round: u32,
        took_ns: u64,
    },
}

/// A restore's snapshot travels as the frame's blob.
impl Message for ToWorker {
    fn blob(&self) -> Option<&bytes::Bytes> {
        match self {
            ToWorker::Restore(r) => r.snapshot.as_ref().map(|s| &s.bytes),
            ToWorker::Warm(w) => Some(&w.part.bytes),
            _ => None,
        }
    }

    fn blob_mut(&mut self) -> Option<&mut bytes::Bytes> {
        match self {
            ToWorker::Restore(r) => r.snapshot.as_mut().map(|s| &mut s.bytes),
            ToWorker::Warm(w) => Some(&mut w.part.bytes),
            _ => None,
        }
    }
}

/// A frozen worker's and a checkpoint's snapshot travel as the frame's blob.
impl Message for FromWorker {
    fn blob(&self) -> Option<&bytes::Bytes> {
        match self {
            FromWorker::Frozen(f) => Some(&f.snapshot.bytes),
            FromWorker::Checkpoint(c) => Some(&c.snapshot.bytes),
            FromWorker::PreCopied(p) => Some(&p.part.bytes),
            _ => None,
        }
    }

    fn blob_mut(&mut self) -> Option<&mut bytes::Bytes> {
        match self {
            FromWorker::Frozen(f) => Some(&mut f.snapshot.bytes),
            FromWorker::Checkpoint(c) => Some(&mut c.snapshot.bytes),
            FromWorker::PreCopied(p) => Some(&mut p.part.bytes),
            _ => None,
        }
    }
}
