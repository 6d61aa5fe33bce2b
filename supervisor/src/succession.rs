//! `upgrade-supervisor`: this supervisor hands over to a new supervisor
//! binary while the worker serves on. The sequence is in
//! [`handoff_protocol::succession`]; this file holds both ends: the old
//! supervisor's ([`Succession`], driven by [`Daemon`] events) and the new
//! one's ([`Inheritance`], used by `run` before it serves).
//!
//! The worker is moved by the same path as after a supervisor crash: the
//! old supervisor closes its channel, the worker (serving all along) opens
//! its orphan socket, and the new supervisor adopts it ([`crate::adopt`]).
//! The old supervisor keeps its copies of the sockets until the new one
//! serves, so no connection depends on either alone.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use handoff_protocol::ctl::{CtlResponse, SupervisorUpgraded};
use handoff_protocol::frame::MAX_CTL_FRAME;
use handoff_protocol::lockfile::{LockError, LockFile};
use handoff_protocol::succession::{
    FromSuccessor, ToSuccessor, ENV_BINARY, ENV_LOCK_FD, ENV_SUCCESSION_FD,
};
use handoff_protocol::{fds, Channel};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::daemon::Daemon;

/// Why a succession could not start or go on.
#[derive(Debug, Error)]
pub enum SuccessionError {
    #[error(transparent)]
    Binary(#[from] crate::binary::BinaryError),
    #[error("cannot start the new supervisor {path:?}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{var}={value:?}: {source}")]
    Inherited {
        var: &'static str,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot hash this supervisor's own binary: {0}")]
    SelfHash(#[source] std::io::Error),
    #[error("the inherited supervisor.lock: {0}")]
    Lock(#[from] LockError),
    #[error("the old supervisor's channel: {0}")]
    Channel(#[from] handoff_protocol::ChannelError),
}

/// What the successor's tasks report to the daemon.
#[derive(Debug)]
pub enum SuccessionEvent {
    Message(FromSuccessor),
    /// Its channel closed (it may still run).
    Closed,
    /// It exited.
    Exited(String),
}

/// Where a succession stands, in the old supervisor.
#[derive(Debug)]
pub enum Stage {
    /// Started; its `Started` not yet in.
    Starting,
    /// The worker's channel is closed: the successor adopts it.
    Released { sha256: String },
    /// Given up: the successor is killed; once it is gone the worker (if
    /// it was released) is adopted back.
    Failing {
        reason: String,
        released: bool,
        /// It failed by closing its channel: its exit status, which comes
        /// next, says more.
        hung_up: bool,
    },
}

/// The old supervisor's side of a running succession.
#[derive(Debug)]
pub struct Succession {
    pub pid: u32,
    pub binary: PathBuf,
    pub expected_sha256: Option<String>,
    pub stage: Stage,
    pub deadline: tokio::time::Instant,
    /// The operator waiting with `--wait`.
    pub waiter: Option<mpsc::Sender<CtlResponse>>,
    to_successor: mpsc::UnboundedSender<ToSuccessor>,
}

impl Succession {
    /// Start `binary` with this supervisor's own arguments, the succession
    /// socket and `lock` inherited.
    pub fn start(
        binary: &Path,
        lock: &LockFile,
        events: mpsc::UnboundedSender<SuccessionEvent>,
    ) -> Result<(Succession, tokio::process::Child), SuccessionError> {
        crate::binary::check(binary)?;
        let spawn_err = |source| SuccessionError::Spawn {
            path: binary.to_path_buf(),
            source,
        };
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(spawn_err)?;
        let mut cmd = tokio::process::Command::new(binary);
        cmd.args(std::env::args_os().skip(1))
            .stdin(std::process::Stdio::null());
        let n = fds::inherit_in_child(&mut cmd, theirs.as_fd());
        let l = fds::inherit_in_child(&mut cmd, lock.file().as_fd());
        cmd.env(ENV_SUCCESSION_FD, n.to_string())
            .env(ENV_LOCK_FD, l.to_string())
            .env(ENV_BINARY, binary);
        let child = cmd.spawn().map_err(spawn_err)?;
        drop(theirs);
        ours.set_nonblocking(true).map_err(spawn_err)?;
        let sock = tokio::net::UnixStream::from_std(ours).map_err(spawn_err)?;
        let channel = Channel::<ToSuccessor, FromSuccessor>::new(sock, MAX_CTL_FRAME);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(pump(channel, rx, events));
        let succession = Succession {
            pid: child.id().unwrap_or(0),
            binary: binary.to_path_buf(),
            expected_sha256: None,
            stage: Stage::Starting,
            deadline: tokio::time::Instant::now(),
            waiter: None,
            to_successor: tx,
        };
        Ok((succession, child))
    }
}

async fn pump(
    mut channel: Channel<ToSuccessor, FromSuccessor>,
    mut outbox: mpsc::UnboundedReceiver<ToSuccessor>,
    events: mpsc::UnboundedSender<SuccessionEvent>,
) {
    loop {
        tokio::select! {
            out = outbox.recv() => {
                let Some(msg) = out else { return };
                if channel.send(&msg, &[]).await.is_err() {
                    let _ = events.send(SuccessionEvent::Closed);
                    return;
                }
            }
            inc = channel.recv() => match inc {
                Ok(Some((msg, _fds))) => { let _ = events.send(SuccessionEvent::Message(msg)); }
                _ => {
                    let _ = events.send(SuccessionEvent::Closed);
                    return;
                }
            }
        }
    }
}

/// What a supervisor started by `upgrade-supervisor` inherits.
pub struct Inheritance {
    /// Taken by the daemon, which holds it from then on.
    pub lock: Option<LockFile>,
    pub channel: Channel<FromSuccessor, ToSuccessor>,
    /// The path the operator named (status shows it).
    pub binary: Option<PathBuf>,
}

impl Inheritance {
    /// `None` for an ordinary start. Call once: it takes the descriptors.
    pub fn from_env(state_dir: &Path) -> Result<Option<Inheritance>, SuccessionError> {
        let Ok(chan) = std::env::var(ENV_SUCCESSION_FD) else {
            return Ok(None);
        };
        let take = |var: &'static str, value: String| {
            let bad = |source| SuccessionError::Inherited {
                var,
                value: value.clone(),
                source,
            };
            let raw: i32 = value.trim().parse().map_err(|_| {
                bad(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a descriptor number",
                ))
            })?;
            fds::take_inherited(raw).map_err(bad)
        };
        let chan = take(ENV_SUCCESSION_FD, chan)?;
        let lock_fd = take(ENV_LOCK_FD, std::env::var(ENV_LOCK_FD).unwrap_or_default())?;
        let lock = LockFile::inherited(
            lock_fd,
            &handoff_protocol::state_dir::supervisor_lock(state_dir),
        )?;
        let channel =
            Channel::from_fd(chan, MAX_CTL_FRAME).map_err(|source| SuccessionError::Inherited {
                var: ENV_SUCCESSION_FD,
                value: String::new(),
                source,
            })?;
        Ok(Some(Inheritance {
            lock: Some(lock),
            channel,
            binary: std::env::var_os(ENV_BINARY).map(PathBuf::from),
        }))
    }

    /// Tell the old supervisor this one is set up (`sha256` of the file it
    /// runs), and wait until it has let the worker go (or is gone itself).
    pub async fn announce(&mut self, sha256: String) -> Result<(), SuccessionError> {
        let pid = std::process::id();
        self.channel
            .send(&FromSuccessor::Started { pid, sha256 }, &[])
            .await?;
        // WorkerReleased, or the old supervisor is gone (its worker is an
        // orphan now): either way, adopt.
        let _ = self.channel.recv().await;
        crate::fault::hit(crate::fault::Point::AfterRelease);
        Ok(())
    }

    /// Report the outcome to the old supervisor.
    pub async fn report(&mut self, msg: FromSuccessor) {
        let _ = self.channel.send(&msg, &[]).await;
    }
}

impl Daemon {
    /// `upgrade-supervisor`: start the new supervisor, or say why not.
    pub(crate) fn begin_succession(
        &mut self,
        req: handoff_protocol::ctl::SupervisorUpgradeRequest,
        reply: mpsc::Sender<CtlResponse>,
    ) {
        let refuse = |reason: String| {
            let _ = reply.try_send(CtlResponse::Refused { reason });
        };
        if let Some(reason) = self.busy_for_succession() {
            return refuse(reason);
        }
        let binary = req
            .binary
            .map(PathBuf::from)
            .unwrap_or_else(|| self.image.binary.clone());
        let started = Succession::start(&binary, &self.lock, self.succession_events.clone());
        let (mut s, child) = match started {
            Ok(s) => s,
            Err(e) => return refuse(e.to_string()),
        };
        info!(pid = s.pid, binary = %binary.display(), "upgrade-supervisor: new supervisor started");
        self.history.push(format!(
            "upgrade-supervisor: started {} as pid {}",
            binary.display(),
            s.pid
        ));
        s.expected_sha256 = req.sha256.map(|h| h.trim().to_lowercase());
        s.deadline = tokio::time::Instant::now() + self.cfg.timeouts.succession;
        if req.wait {
            s.waiter = Some(reply);
        } else {
            let _ = reply.try_send(CtlResponse::Ok);
        }
        let events = self.succession_events.clone();
        let mut child = child;
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("cannot wait for it: {e}"),
            };
            let _ = events.send(SuccessionEvent::Exited(status));
        });
        self.succession = Some(s);
    }

    fn busy_for_succession(&self) -> Option<String> {
        if self.succession.is_some() {
            return Some("busy: a supervisor upgrade is running".into());
        }
        if !self.is_running() {
            return Some("busy: the supervisor is stopping".into());
        }
        if let Some(busy) = self.handoff.busy() {
            return Some(busy);
        }
        match &self.active {
            Some(a) if matches!(a.life, crate::proc::Lifecycle::Running { .. }) => None,
            Some(a) => Some(format!(
                "the worker is {}: try again once it serves",
                a.state_name()
            )),
            None => Some("no worker is running: try again once one serves".into()),
        }
    }

    pub(crate) fn on_succession_event(&mut self, ev: SuccessionEvent) {
        let Some(mut s) = self.succession.take() else {
            return;
        };
        let failing = matches!(s.stage, Stage::Failing { .. });
        match ev {
            SuccessionEvent::Message(FromSuccessor::Started { pid, sha256 })
                if matches!(s.stage, Stage::Starting) =>
            {
                if let Some(want) = s.expected_sha256.clone().filter(|w| *w != sha256) {
                    self.succession = Some(s);
                    return self.fail_succession(format!(
                        "the new supervisor (pid {pid}) runs a binary with SHA-256 {sha256}, not {want}"
                    ));
                }
                // Let the worker go: it serves on as an orphan, and the new
                // supervisor adopts it. Our copies of its sockets stay.
                self.flush_checkpoint();
                if let Some(a) = self.active.take() {
                    info!(pid = a.pid, "releasing the worker to the new supervisor");
                    self.released = Some(a.pid);
                }
                s.stage = Stage::Released { sha256 };
                let _ = s.to_successor.send(ToSuccessor::WorkerReleased);
            }
            SuccessionEvent::Message(FromSuccessor::Serving) => {
                if let Stage::Released { sha256 } = &s.stage {
                    let done = SupervisorUpgraded {
                        old_pid: std::process::id(),
                        new_pid: s.pid,
                        binary: s.binary.display().to_string(),
                        sha256: sha256.clone(),
                    };
                    info!(new_pid = s.pid, "the new supervisor serves; this one exits");
                    self.systemd.main_pid(s.pid);
                    if let Some(w) = s.waiter.take() {
                        let _ = w.try_send(CtlResponse::SupervisorUpgraded(done));
                        self.last_reply = Some(w);
                    }
                    self.handed_over();
                    return;
                }
                warn!("the new supervisor says it serves before it was given the worker");
            }
            SuccessionEvent::Message(FromSuccessor::Failed { reason }) => {
                self.succession = Some(s);
                return self.fail_succession(format!("the new supervisor gave up: {reason}"));
            }
            SuccessionEvent::Message(other) => {
                warn!(
                    ?other,
                    "unexpected message from the new supervisor; ignored"
                )
            }
            SuccessionEvent::Exited(status) => {
                let (reason, released) = match &s.stage {
                    Stage::Failing {
                        hung_up: true,
                        released,
                        ..
                    } => (format!("the new supervisor exited ({status})"), *released),
                    Stage::Failing {
                        reason, released, ..
                    } => (reason.clone(), *released),
                    Stage::Released { .. } => {
                        (format!("the new supervisor exited ({status})"), true)
                    }
                    Stage::Starting => (format!("the new supervisor exited ({status})"), false),
                };
                self.succession = Some(s);
                return self.succession_failed(reason, released);
            }
            SuccessionEvent::Closed if failing => {}
            SuccessionEvent::Closed => {
                self.succession = Some(s);
                self.fail_succession("the new supervisor closed its channel".into());
                if let Some(Stage::Failing { hung_up, .. }) =
                    self.succession.as_mut().map(|s| &mut s.stage)
                {
                    *hung_up = true;
                }
                return;
            }
        }
        self.succession = Some(s);
    }

    /// The new supervisor did not serve in time.
    pub(crate) fn on_succession_deadline(&mut self) {
        let limit = self.cfg.timeouts.succession;
        self.fail_succession(format!("the new supervisor did not serve within {limit:?}"));
    }

    /// Kill the new supervisor; its exit finishes the failure.
    fn fail_succession(&mut self, reason: String) {
        let Some(s) = self.succession.as_mut() else {
            return;
        };
        if matches!(s.stage, Stage::Failing { .. }) {
            return;
        }
        error!(pid = s.pid, %reason, "upgrade-supervisor failed; killing the new supervisor");
        let released = matches!(s.stage, Stage::Released { .. });
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(s.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        s.deadline = crate::daemon::far_future();
        s.stage = Stage::Failing {
            reason,
            released,
            hung_up: false,
        };
    }

    /// The failed successor is gone: answer the operator and, if the worker
    /// was let go, adopt it back.
    fn succession_failed(&mut self, reason: String, released: bool) {
        let Some(mut s) = self.succession.take() else {
            return;
        };
        self.history.push(format!(
            "upgrade-supervisor to {} failed: {reason}",
            s.binary.display()
        ));
        if let Some(w) = s.waiter.take() {
            let _ = w.try_send(CtlResponse::Refused {
                reason: format!("{reason}; this supervisor carries on"),
            });
        }
        if released {
            self.readopt();
        }
    }
}
