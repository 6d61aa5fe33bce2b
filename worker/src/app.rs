//! What an application implements to become handoff-capable.

use std::future::Future;
use std::pin::Pin;

use handoff_protocol::worker::{ConnId, ConnInfo, PreCopyMode, RestoreMode};
use thiserror::Error;
use tungstenite::Message;

use crate::timers::{Timer, TimerOp};

/// An app-level failure to snapshot or restore state.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct AppError(pub String);

impl AppError {
    pub fn new(msg: impl std::fmt::Display) -> Self {
        AppError(msg.to_string())
    }
}

/// An asynchronous request of the app (a REST order, say), run by the
/// runtime; its output comes back through [`App::on_done`].
pub type Effect<D> = Pin<Box<dyn Future<Output = D> + Send + 'static>>;

/// Which connection a queued message goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Id(ConnId),
    /// The connection with this name (`feed-0`, say), whichever id it has
    /// in this worker.
    Name(String),
}

/// What an app wants done after a callback returns: messages to write, in
/// order, effects to start, and timers to set or cancel.
pub struct Outbox<D = ()> {
    pub(crate) queued: Vec<(Target, Message)>,
    pub(crate) effects: Vec<Effect<D>>,
    pub(crate) timers: Vec<TimerOp>,
    pub(crate) conns: Vec<crate::opened::ConnOp>,
}

impl<D> Default for Outbox<D> {
    fn default() -> Self {
        Outbox {
            queued: Vec::new(),
            effects: Vec::new(),
            timers: Vec::new(),
            conns: Vec::new(),
        }
    }
}

impl<D> Outbox<D> {
    /// Queue `msg` for the connection `conn`.
    pub fn send(&mut self, conn: ConnId, msg: Message) {
        self.queued.push((Target::Id(conn), msg));
    }

    /// Queue `msg` for the connection named `name` (as the feed was named),
    /// for a callback that has no connection at hand ([`App::on_timer`]).
    pub fn send_named(&mut self, name: &str, msg: Message) {
        self.queued.push((Target::Name(name.to_owned()), msg));
    }

    /// Call [`App::on_timer`] once with `key` at `due_unix_ms` (milliseconds
    /// since the Unix epoch), in whichever worker serves then: the timer is
    /// handed over with the state (see [`crate::timers`]). Setting a key
    /// that is pending moves it.
    pub fn at(&mut self, due_unix_ms: u64, key: impl Into<String>) {
        self.timers.push(TimerOp::Set {
            key: key.into(),
            due_unix_ms,
        });
    }

    /// [`Outbox::at`] `delay` from now.
    pub fn after(&mut self, delay: std::time::Duration, key: impl Into<String>) {
        let due = crate::timers::now_unix_ms().saturating_add(delay.as_millis() as u64);
        self.at(due, key);
    }

    /// Open a connection named `name` to `url` (`ws://` or `wss://`) once
    /// the callback returns: registered with the supervisor and handed over
    /// like a configured feed; [`App::on_open`] follows once it is open. A
    /// name already in use is refused (logged). A URL no connection can
    /// ever be opened to (not `ws://` or `wss://`, no host) is refused too:
    /// [`App::on_closed`] follows with [`crate::Closed::Refused`]. One that
    /// cannot be reached now is tried again every `reconnect_interval`.
    pub fn open(&mut self, name: impl Into<String>, url: impl Into<String>) {
        self.conns.push(crate::opened::ConnOp::Open(crate::Feed {
            name: name.into(),
            url: url.into(),
        }));
    }

    /// Close the connection named `name` with a close frame (it is not
    /// opened again); [`App::on_closed`] follows.
    pub fn close(&mut self, name: impl Into<String>) {
        self.conns.push(crate::opened::ConnOp::Close(name.into()));
    }

    /// Forget the pending timer `key`, if any.
    pub fn cancel(&mut self, key: impl Into<String>) {
        self.timers.push(TimerOp::Cancel { key: key.into() });
    }

    /// Start `effect` once the callback returns. Effects run only while this
    /// worker is the one serving: a successor starts none before it is told
    /// to go, and a freezing worker settles its own first (see
    /// [`crate::Settings::freeze_settle_timeout`]). So at any instant one
    /// generation at most sends orders. Record an effect in the state
    /// *before* starting it (e.g. an order "in flight"): if it is cut short,
    /// that record is what [`App::on_takeover`] reconciles.
    pub fn spawn(&mut self, effect: impl Future<Output = D> + Send + 'static) {
        self.effects.push(Box::pin(effect));
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
            && self.effects.is_empty()
            && self.timers.is_empty()
            && self.conns.is_empty()
    }
}

/// How an app names itself and its schemas: in `Hello` (so the supervisor
/// refuses an incompatible successor before anything freezes) and in every
/// snapshot envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// [`App::NAME`]: a snapshot of another app is refused.
    pub name: String,
    /// [`App::SCHEMA`]: what [`App::snapshot`] writes.
    pub schema: u32,
    /// [`App::reads_schemas`].
    pub reads: Vec<u32>,
    /// [`App::writes_schemas`].
    pub writes: Vec<u32>,
}

/// A stateful service driven by the worker runtime.
///
/// The runtime owns the connections and the loop; the app owns its state and
/// says how to turn it into bytes and back. Callbacks are synchronous and run
/// one at a time on the runtime's task, so the state is always consistent
/// with the messages consumed when a freeze comes: a freeze happens only
/// between two callbacks.
pub trait App: Sized + Send + 'static {
    /// Written into every snapshot envelope; a snapshot of another app is refused.
    const NAME: &'static str;
    /// Schema version of what [`App::snapshot`] writes.
    const SCHEMA: u32;
    /// What the app's effects ([`Outbox::spawn`]) produce; `()` for an app
    /// without any.
    type Done: Send + 'static;

    /// Schema versions [`App::restore`] can read (announced in `Hello`, so the
    /// supervisor refuses an incompatible successor before anything freezes).
    fn reads_schemas() -> Vec<u32> {
        vec![Self::SCHEMA]
    }

    /// Schema versions [`App::snapshot_as`] can write: the current one and
    /// older ones a previous build reads, so a rollback keeps the state.
    fn writes_schemas() -> Vec<u32> {
        vec![Self::SCHEMA]
    }

    /// The name and schemas the runtime uses: the constants above. An app
    /// that learns them only at run time (a Python bot, whose class says
    /// them) overrides this; the runtime asks once, when the app is built.
    fn identity(&self) -> Identity {
        Identity {
            name: Self::NAME.to_owned(),
            schema: Self::SCHEMA,
            reads: Self::reads_schemas(),
            writes: Self::writes_schemas(),
        }
    }

    /// Serialize the whole state in schema [`App::SCHEMA`].
    fn snapshot(&self) -> Result<Vec<u8>, AppError>;

    /// Serialize the state in `schema`, one of [`App::writes_schemas`].
    fn snapshot_as(&self, schema: u32) -> Result<Vec<u8>, AppError> {
        if schema == Self::SCHEMA {
            self.snapshot()
        } else {
            Err(AppError::new(format!(
                "cannot write schema {schema} (writes {})",
                Self::SCHEMA
            )))
        }
    }

    /// Replace the state of this freshly built app (its settings come from
    /// this build's configuration) with the state in `bytes`, of schema
    /// `schema`. `mode` says whether input may have been missed since the
    /// snapshot (after a crash). An error refuses the takeover: the old worker
    /// is thawed and nothing is lost.
    fn restore(&mut self, schema: u32, bytes: &[u8], mode: RestoreMode) -> Result<(), AppError>;

    /// Whether periodic checkpoints may serialize the state in a
    /// copy-on-write child of this process (see [`crate::checkpoint`]), so that
    /// the event loop stops only for a `fork`. The child runs
    /// [`App::snapshot`] (or [`App::snapshot_as`]) on its own copy of the
    /// memory with only the forking thread: say `false` if they take a lock
    /// another thread of the process may hold, or cannot run without other
    /// threads (an embedded interpreter).
    fn snapshot_in_child(&self) -> bool {
        true
    }

    /// A small JSON object for operators (`supervisorctl status`).
    fn summary(&self) -> Option<String> {
        None
    }

    /// A connection was opened fresh (not handed over): subscribe here.
    fn on_open(&mut self, conn: &ConnInfo, out: &mut Outbox<Self::Done>);

    /// One message consumed from `conn`.
    fn on_message(&mut self, conn: &ConnInfo, msg: Message, out: &mut Outbox<Self::Done>);

    /// An effect started with [`Outbox::spawn`] finished.
    fn on_done(&mut self, done: Self::Done, out: &mut Outbox<Self::Done>) {
        let _ = (done, out);
    }

    /// A timer set with [`Outbox::at`] or [`Outbox::after`] came due. It
    /// fires once across handoffs; after a crash, one that came due while no
    /// worker served fires at once with [`Timer::late`] set.
    fn on_timer(&mut self, timer: &Timer, out: &mut Outbox<Self::Done>) {
        let _ = (timer, out);
    }

    /// A connection ended (see [`crate::opened::Closed`] for why, and
    /// whether it is opened again).
    fn on_closed(
        &mut self,
        conn: &ConnInfo,
        why: &crate::opened::Closed,
        out: &mut Outbox<Self::Done>,
    ) {
        let _ = (conn, why, out);
    }

    /// How this app lets a successor be warmed before the freeze (see
    /// [`crate::precopy`]): [`PreCopyMode::Replay`] if its callbacks are
    /// deterministic functions of its state and their input (and, if it
    /// spawns effects, [`App::encode_done`] and [`App::decode_done`] say
    /// how to journal their results), [`PreCopyMode::Delta`] if it
    /// implements [`App::delta_mark`], [`App::delta`] and
    /// [`App::apply_delta`]. `Off` (the default): the whole state moves in
    /// the freeze, as before.
    fn precopy(&self) -> PreCopyMode {
        PreCopyMode::Off
    }

    /// A digest of the whole state: after a pre-copy's catch-up the
    /// successor's must equal the frozen worker's, or the upgrade is
    /// refused and the old worker thawed. The default hashes
    /// [`App::snapshot`], which costs a whole snapshot on both sides of the
    /// freeze: an app with a large state keeps a digest up to date as it
    /// changes (an XOR of per-entry hashes, say) and returns it here.
    fn digest(&self) -> Result<u64, AppError> {
        let bytes = self.snapshot()?;
        Ok(crate::precopy::hash_bytes(&bytes))
    }

    /// [`PreCopyMode::Delta`]: from now on, record what changes, for
    /// [`App::delta`]. Called between two callbacks, at the instant the
    /// pre-copy image is taken.
    fn delta_mark(&mut self) {}

    /// [`PreCopyMode::Delta`]: what changed since the last mark (or the
    /// last call), as bytes [`App::apply_delta`] reads; marks anew.
    fn delta(&mut self) -> Result<Vec<u8>, AppError> {
        Err(AppError::new("this app writes no deltas"))
    }

    /// [`PreCopyMode::Delta`]: apply what [`App::delta`] wrote (in the
    /// successor, to the state it was warmed with).
    fn apply_delta(&mut self, bytes: &[u8]) -> Result<(), AppError> {
        let _ = bytes;
        Err(AppError::new("this app applies no deltas"))
    }

    /// [`PreCopyMode::Delta`]: the pre-copy ended (given up): stop
    /// recording changes.
    fn delta_end(&mut self) {}

    /// [`PreCopyMode::Replay`]: an effect's result as bytes, to journal it
    /// for the successor. `None` (the default): effect results cannot be
    /// journaled, and a pre-copy during which one comes back is given up.
    fn encode_done(&self, done: &Self::Done) -> Option<Vec<u8>> {
        let _ = done;
        None
    }

    /// [`PreCopyMode::Replay`]: what [`App::encode_done`] wrote.
    fn decode_done(&self, bytes: &[u8]) -> Result<Self::Done, AppError> {
        let _ = bytes;
        Err(AppError::new("this app decodes no effect results"))
    }

    /// This worker took over (after `Go`) in `mode`: reconcile what the
    /// restored state records as in flight (e.g. query orders by client id),
    /// and, in `Recovery` mode, whatever input may have been missed.
    fn on_takeover(&mut self, mode: RestoreMode, out: &mut Outbox<Self::Done>) {
        let _ = (mode, out);
    }
}
