//! Life without a supervisor, and being adopted by the next one.
//!
//! A worker whose supervisor goes away (killed, crashed, or replaced by a
//! new supervisor binary) keeps serving: it holds its connections and
//! `serving.lock`, and the connections never notice. It then listens on
//! `STATE_DIR/orphans/<pid>.sock` (0600 in a 0700 directory; a peer of
//! another uid than its own or root is turned away). A supervisor starting
//! on that state directory connects there, and the worker answers
//! [`FromWorker::Adoptable`]; on [`ToWorker::Adopt`] it registers every
//! connection again (the new supervisor holds none), sends a checkpoint,
//! removes the socket and carries on as before. No freeze, no handoff: the
//! exchange sees nothing.
//!
//! Without a supervisor a stop signal stops the worker (it closes its
//! connections cleanly), as it does a worker started by hand.

use std::path::{Path, PathBuf};
use std::time::Instant;

use handoff_protocol::lockfile::{LockError, LockFile};
use handoff_protocol::state_dir;
use handoff_protocol::worker::{Adoptable, FromWorker, OrphanState, ToWorker};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use crate::app::App;
use crate::error::WorkerError;
use crate::link::Link;
use crate::serve::Worker;

/// The orphan socket, listening; the file goes when this is dropped.
pub(crate) struct Orphanage {
    listener: UnixListener,
    path: PathBuf,
    since: Instant,
}

impl Orphanage {
    fn open(dir: &Path) -> std::io::Result<Orphanage> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let orphans = state_dir::orphans(dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&orphans)?;
        let path = state_dir::orphan_socket(dir, std::process::id());
        // Bound under another name and renamed into place once it listens:
        // a supervisor never finds the path without a listener behind it
        // (it takes a refused connection for a dead orphan's socket).
        let fresh = path.with_extension("binding");
        let _ = std::fs::remove_file(&fresh);
        let listener = UnixListener::bind(&fresh)?;
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&fresh, &path)?;
        Ok(Orphanage {
            listener,
            path,
            since: Instant::now(),
        })
    }

    /// The next connection from a process of our uid (or root).
    async fn accept(&self) -> UnixStream {
        let own = nix::unistd::getuid().as_raw();
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => match stream.peer_cred() {
                    Ok(c) if c.uid() == own || c.uid() == 0 => return stream,
                    Ok(c) => warn!(
                        uid = c.uid(),
                        "orphan socket: a peer of another uid turned away"
                    ),
                    Err(e) => warn!(error = %e, "orphan socket: no peer credentials; turned away"),
                },
                Err(e) => warn!(error = %e, "orphan socket: accept failed"),
            }
        }
    }
}

impl Drop for Orphanage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A connection on the orphan socket, when there is an orphanage; pending
/// forever when there is none (for use in `select!`).
pub(crate) async fn accept_opt(orphanage: &Option<Orphanage>) -> UnixStream {
    match orphanage {
        Some(o) => o.accept().await,
        None => std::future::pending().await,
    }
}

/// Resolves at `deadline` (pending forever without one; for `select!`).
pub(crate) async fn adoption_stalled(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Take `serving.lock` now: a worker told to start fresh must be the only one
/// serving its state directory, or not start at all.
pub(crate) fn serving_lock_now(dir: &Path) -> Result<LockFile, WorkerError> {
    LockFile::try_lock(&state_dir::serving_lock(dir)).map_err(WorkerError::Fenced)
}

/// Take `serving.lock` after `Go`, waiting for the previous worker to let go
/// of it: it releases it on `Exit` (sent before our `Go`), or the kernel does
/// when it dies (the supervisor kills one that does not exit).
pub(crate) async fn serving_lock_after_go(dir: &Path) -> Result<LockFile, WorkerError> {
    let path = state_dir::serving_lock(dir);
    if let Ok(lock) = LockFile::try_lock(&path) {
        return Ok(lock);
    }
    info!("waiting for the previous worker to release serving.lock");
    tokio::task::spawn_blocking(move || LockFile::lock_blocking(&path))
        .await
        .map_err(|e| {
            WorkerError::Fenced(LockError::Io {
                path: PathBuf::from("serving.lock"),
                source: std::io::Error::other(e),
            })
        })?
        .map_err(WorkerError::Fenced)
}

impl<A: App> Worker<A> {
    /// A successor restored and `Ready`: wait for `Go` (true) or to be let
    /// go (false) without consuming anything. Should the supervisor go away
    /// meanwhile, wait for the next one as an orphan: it decides whether
    /// this worker goes live (its predecessor handed over) or exits (its
    /// predecessor serves on).
    pub(crate) async fn await_go(&mut self) -> Result<bool, WorkerError> {
        self.awaiting_go = true;
        let go = loop {
            tokio::select! {
                cmd = crate::link::recv_opt(&mut self.link) => match cmd {
                    Ok(Some((ToWorker::Go, _))) => break true,
                    Ok(Some((ToWorker::Exit | ToWorker::Stop, _))) => break false,
                    Ok(Some((ToWorker::CheckpointNow, _))) => {}
                    Ok(Some((ToWorker::Adopt { supervisor_pid }, _))) => {
                        self.adopted(supervisor_pid).await?
                    }
                    Ok(Some((other, _))) => {
                        return Err(WorkerError::Unexpected {
                            when: "waiting for Go",
                            what: format!("{other:?}"),
                        })
                    }
                    Ok(None) | Err(_) if self.state_dir.is_none() => break false,
                    Ok(None) => self.orphaned("supervisor went away before Go"),
                    Err(e) => self.orphaned(&format!("supervisor channel broken before Go ({e})")),
                },
                stream = accept_opt(&self.orphanage), if self.link.is_none() => {
                    self.offer_adoption(stream).await
                }
                _ = adoption_stalled(self.adoption_deadline) => self.drop_silent_adopter(),
            }
        };
        self.awaiting_go = false;
        Ok(go)
    }

    /// The supervisor is gone: serve on, and wait to be adopted.
    pub(crate) fn orphaned(&mut self, why: &str) {
        self.link = None;
        // Nobody will ask for the next round: stop recording.
        self.precopy_end();
        self.adoption_deadline = None;
        if self.orphanage.is_some() {
            return;
        }
        let Some(dir) = self.state_dir.clone() else {
            warn!("{why}; serving on standalone");
            return;
        };
        match Orphanage::open(&dir) {
            Ok(o) => {
                warn!(socket = %o.path.display(), "{why}; serving on, waiting to be adopted");
                self.orphanage = Some(o);
            }
            Err(e) => warn!(error = %e, "{why}; serving on standalone (no orphan socket)"),
        }
    }

    /// A supervisor connected to the orphan socket: tell it who we are. It
    /// answers `Adopt` (see [`Worker::adopted`]) or hangs up.
    pub(crate) async fn offer_adoption(&mut self, stream: UnixStream) {
        let since = self.orphanage.as_ref().map(|o| o.since);
        let mut link = Link::from_stream(stream);
        let offer = FromWorker::Adoptable(Adoptable {
            hello: crate::start::hello(&self.identity, self.app.precopy(), &self.settings),
            generation: self.generation,
            state: if self.awaiting_go {
                OrphanState::AwaitingGo
            } else {
                OrphanState::Serving
            },
            conns: self.conns().len() as u32,
            orphaned_ms: since.map_or(0, |s| s.elapsed().as_millis() as u64),
        });
        match link.send(&offer).await {
            Ok(()) => {
                info!("a supervisor connected to the orphan socket");
                self.link = Some(link);
                self.adoption_deadline =
                    Some(tokio::time::Instant::now() + self.settings.adoption_timeout);
            }
            Err(e) => warn!(error = %e, "a supervisor connected but could not be answered"),
        }
    }

    /// The peer on the orphan socket said nothing in time: hang up on it and
    /// listen again.
    pub(crate) fn drop_silent_adopter(&mut self) {
        let limit = self.settings.adoption_timeout;
        warn!("the peer on the orphan socket did not say Adopt within {limit:?}; listening again");
        self.orphaned("no adoption");
    }

    /// `Adopt`: register every connection with the new supervisor, give it
    /// a checkpoint, and stop listening as an orphan.
    pub(crate) async fn adopted(&mut self, supervisor_pid: u32) -> Result<(), WorkerError> {
        if self.orphanage.is_none() {
            warn!(
                supervisor_pid,
                "Adopt ignored: this worker has a supervisor"
            );
            return Ok(());
        }
        let conns = std::mem::take(&mut self.conns);
        let mut all = true;
        for conn in &conns {
            all = all && self.register(conn).await;
        }
        self.conns = conns;
        if !all {
            return Ok(());
        }
        self.send_checkpoint().await?;
        if self.link.is_none() {
            return Ok(());
        }
        self.orphanage = None;
        self.adoption_deadline = None;
        info!(
            supervisor_pid,
            conns = self.conns().len(),
            "adopted by a new supervisor"
        );
        Ok(())
    }
}
