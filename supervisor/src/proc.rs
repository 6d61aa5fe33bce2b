//! A worker process as the supervisor sees it: spawned with its own
//! socketpair (or adopted from a previous supervisor, over the connection
//! made to its orphan socket), a task that owns the channel, a task that
//! reaps it (or, for an adopted worker, which is no child of ours, watches
//! its pidfd), and a lifecycle enum.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use handoff_protocol::frame::MAX_WORKER_FRAME;
use handoff_protocol::pidfd::PidFd;
use handoff_protocol::state_dir::{ENV_GENERATION, ENV_STATE_DIR};
use handoff_protocol::worker::{FromWorker, Hello, ToWorker};
use handoff_protocol::{fds, Channel, ENV_CHANNEL_FD};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use thiserror::Error;

use crate::builds::Build;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Number given to each worker process, in start order.
pub type Generation = u64;

/// Why a worker could not be started.
#[derive(Debug, Error)]
pub enum SpawnError {
    #[error("cannot create the worker socketpair: {0}")]
    Socketpair(#[source] std::io::Error),
    #[error("cannot start worker {path:?}: {source}")]
    Exec {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a worker's tasks report to the daemon.
#[derive(Debug)]
pub enum WorkerEvent {
    Message(FromWorker, Vec<OwnedFd>),
    /// The channel ended (cleanly or not); the process may still run.
    ChannelClosed {
        error: Option<String>,
    },
    /// The process was reaped (or, adopted, seen to exit).
    Exited(Exit),
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Reaped: its exit code or signal.
    Status(ExitStatus),
    /// An adopted worker (no child of this process): seen to exit through
    /// its pidfd, but its status went to whoever reaps it.
    Unobserved,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Status(s) => s.fmt(f),
            Exit::Unobserved => f.write_str("exited; status unknown (an adopted worker)"),
        }
    }
}

/// A worker event tagged with its generation.
#[derive(Debug)]
pub struct Tagged {
    pub generation: Generation,
    pub event: WorkerEvent,
}

/// Where a worker is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    /// Spawned, no Hello yet.
    Starting,
    /// Said Hello; serving (or, for a successor, waiting to be restored).
    Running { hello: Hello },
    /// Said Hello after a crash of its predecessor; restoring from the
    /// newest checkpoint, not serving until it is told to go.
    Recovering { hello: Hello },
    /// Told to freeze (or frozen).
    Frozen { hello: Hello },
    /// Told to exit or stop; waiting to reap it.
    Exiting,
    /// Reaped.
    Exited { status: String },
}

/// The daemon's handle on one worker process.
#[derive(Debug)]
pub struct WorkerProc {
    pub generation: Generation,
    pub pid: u32,
    /// The build it runs (its private copy is what was executed).
    pub build: Build,
    pub started: Instant,
    pub life: Lifecycle,
    /// What it does once it says Hello.
    pub plan: crate::recovery::StartPlan,
    /// Adopted from a previous supervisor (see [`crate::adopt`]): watched
    /// and signalled through its pidfd.
    pub adopted: Option<Arc<PidFd>>,
    /// When its channel closed, if it did: it is given a moment to exit on
    /// its own (its exit status is the truer report) before it is killed.
    pub channel_closed: Option<std::time::Instant>,
    /// When a frame from it last *arrived* (monotonic ns), stamped by the
    /// channel's reader task: a daemon busy with a backlog must not mistake
    /// queued heartbeats for silence.
    activity: Arc<AtomicU64>,
    /// When `Go` was written to its socket (monotonic ns; 0 until then),
    /// stamped by the channel's task: the end of a handoff's pause.
    go_sent: Arc<AtomicU64>,
    outbox: mpsc::UnboundedSender<(ToWorker, Vec<OwnedFd>)>,
}

impl WorkerProc {
    /// Start `binary` with `args`, its end of a fresh socketpair inherited
    /// (number in `HANDOFF_FD`). Events go to `events`.
    pub fn spawn(
        generation: Generation,
        build: &Build,
        args: &[String],
        state_dir: &Path,
        plan: crate::recovery::StartPlan,
        events: mpsc::UnboundedSender<Tagged>,
    ) -> Result<WorkerProc, SpawnError> {
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(SpawnError::Socketpair)?;
        let mut cmd = tokio::process::Command::new(&build.exec);
        cmd.args(args).stdin(std::process::Stdio::null());
        let n = fds::inherit_in_child(&mut cmd, theirs.as_fd());
        cmd.env(ENV_CHANNEL_FD, n.to_string());
        cmd.env(ENV_GENERATION, generation.to_string());
        cmd.env(ENV_STATE_DIR, state_dir);
        let mut child = cmd.spawn().map_err(|source| SpawnError::Exec {
            path: build.exec.clone(),
            source,
        })?;
        drop(theirs);
        let pid = child.id().unwrap_or(0);
        ours.set_nonblocking(true).map_err(SpawnError::Socketpair)?;
        let sock = tokio::net::UnixStream::from_std(ours).map_err(SpawnError::Socketpair)?;
        let channel = Channel::<ToWorker, FromWorker>::new(sock, MAX_WORKER_FRAME);
        let mut proc = WorkerProc::watch(generation, pid, build, plan, channel, events.clone());
        proc.life = Lifecycle::Starting;
        tokio::spawn(async move {
            let event = match child.wait().await {
                Ok(status) => WorkerEvent::Exited(Exit::Status(status)),
                Err(e) => {
                    warn!(generation, error = %e, "cannot wait for worker");
                    return;
                }
            };
            let _ = events.send(Tagged { generation, event });
        });
        Ok(proc)
    }

    /// A serving worker adopted from a previous supervisor: `channel` is the
    /// connection to its orphan socket, `pidfd` a handle opened on it before
    /// its `Adoptable` was read (so it is this process, not a reuse of its
    /// pid). It is told `Adopt` now and registers its connections.
    pub fn adopt(
        generation: Generation,
        pidfd: PidFd,
        build: &Build,
        hello: Hello,
        channel: Channel<ToWorker, FromWorker>,
        events: mpsc::UnboundedSender<Tagged>,
    ) -> WorkerProc {
        let pidfd = Arc::new(pidfd);
        let plan = crate::recovery::StartPlan::Fresh;
        let mut proc = WorkerProc::watch(
            generation,
            pidfd.pid(),
            build,
            plan,
            channel,
            events.clone(),
        );
        proc.life = Lifecycle::Running { hello };
        proc.adopted = Some(pidfd.clone());
        proc.send(
            ToWorker::Adopt {
                supervisor_pid: std::process::id(),
            },
            Vec::new(),
        );
        tokio::spawn(async move {
            if let Err(e) = pidfd.exited().await {
                warn!(generation, error = %e, "cannot watch the adopted worker");
                return;
            }
            let event = WorkerEvent::Exited(Exit::Unobserved);
            let _ = events.send(Tagged { generation, event });
        });
        proc
    }

    /// The handle and the channel task shared by spawned and adopted workers.
    fn watch(
        generation: Generation,
        pid: u32,
        build: &Build,
        plan: crate::recovery::StartPlan,
        channel: Channel<ToWorker, FromWorker>,
        events: mpsc::UnboundedSender<Tagged>,
    ) -> WorkerProc {
        let activity = Arc::new(AtomicU64::new(handoff_protocol::monotonic_ns()));
        let go_sent = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(pump(
            generation,
            channel,
            rx,
            events,
            activity.clone(),
            go_sent.clone(),
        ));
        WorkerProc {
            generation,
            pid,
            build: build.clone(),
            started: Instant::now(),
            life: Lifecycle::Starting,
            plan,
            adopted: None,
            channel_closed: None,
            activity,
            go_sent,
            outbox: tx,
        }
    }

    /// Queue a message (and descriptors) for the worker. Lost silently if the
    /// channel is gone: the daemon learns that from `ChannelClosed`.
    pub fn send(&self, msg: ToWorker, fds: Vec<OwnedFd>) {
        let _ = self.outbox.send((msg, fds));
    }

    /// SIGKILL the process unless it has been reaped (a reaped pid may be
    /// reused, so it is never signalled).
    pub fn kill(&mut self) {
        if matches!(self.life, Lifecycle::Exited { .. }) || self.pid == 0 {
            return;
        }
        debug!(generation = self.generation, pid = self.pid, "SIGKILL");
        match &self.adopted {
            Some(pidfd) => {
                let _ = pidfd.signal(Signal::SIGKILL);
            }
            None => {
                let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            }
        }
        if !matches!(self.life, Lifecycle::Exited { .. }) {
            self.life = Lifecycle::Exiting;
        }
    }

    /// When `Go` was written to the worker's socket, if it was.
    pub fn go_sent_ns(&self) -> Option<u64> {
        Some(self.go_sent.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }

    /// How long since a frame from this worker last arrived.
    pub fn silent_for(&self) -> std::time::Duration {
        let last = self.activity.load(Ordering::Relaxed);
        std::time::Duration::from_nanos(handoff_protocol::monotonic_ns().saturating_sub(last))
    }

    /// Count the worker as heard from now (e.g. right after killing it, so
    /// the kill is not repeated while its exit is on the way).
    pub fn mark_heard(&self) {
        self.activity
            .store(handoff_protocol::monotonic_ns(), Ordering::Relaxed);
    }

    pub fn hello(&self) -> Option<&Hello> {
        match &self.life {
            Lifecycle::Running { hello }
            | Lifecycle::Frozen { hello }
            | Lifecycle::Recovering { hello } => Some(hello),
            _ => None,
        }
    }

    pub fn state_name(&self) -> &'static str {
        match self.life {
            Lifecycle::Starting => "starting",
            Lifecycle::Running { .. } => "running",
            Lifecycle::Recovering { .. } => "recovering",
            Lifecycle::Frozen { .. } => "frozen",
            Lifecycle::Exiting => "exiting",
            Lifecycle::Exited { .. } => "exited",
        }
    }
}

/// Own the channel: write what the daemon queues, forward what arrives.
async fn pump(
    generation: Generation,
    mut channel: Channel<ToWorker, FromWorker>,
    mut outbox: mpsc::UnboundedReceiver<(ToWorker, Vec<OwnedFd>)>,
    events: mpsc::UnboundedSender<Tagged>,
    activity: Arc<AtomicU64>,
    go_sent: Arc<AtomicU64>,
) {
    let report = |event| {
        let _ = events.send(Tagged { generation, event });
    };
    loop {
        tokio::select! {
            out = outbox.recv() => {
                let Some((msg, fds)) = out else { return };
                let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
                if let Err(e) = channel.send(&msg, &borrowed).await {
                    report(WorkerEvent::ChannelClosed { error: Some(format!("send failed: {e}")) });
                    return;
                }
                if matches!(msg, ToWorker::Go) {
                    go_sent.store(handoff_protocol::monotonic_ns(), Ordering::Relaxed);
                }
                if matches!(msg, ToWorker::Exit) {
                    crate::fault::hit(crate::fault::Point::ExitWritten);
                }
            }
            inc = channel.recv() => match inc.inspect(|_| activity.store(handoff_protocol::monotonic_ns(), Ordering::Relaxed)) {
                Ok(Some((msg, fds))) => report(WorkerEvent::Message(msg, fds)),
                Ok(None) => {
                    report(WorkerEvent::ChannelClosed { error: None });
                    return;
                }
                Err(e) => {
                    report(WorkerEvent::ChannelClosed { error: Some(e.to_string()) });
                    return;
                }
            }
        }
    }
}
