//! How a supervisor takes office on its state directory, before its event
//! loop runs: it claims the directory (`supervisor.lock`, or the lock a
//! predecessor passed down in `upgrade-supervisor`) and the control socket,
//! then finds its worker: one a previous supervisor left serving is adopted
//! ([`crate::adopt`]), sockets systemd kept are recovered on
//! ([`crate::fdstore`]), else a worker is started (fresh, or recovering from
//! the checkpoint file). Also the worker spawns and re-adoption the daemon
//! does later.

use std::path::PathBuf;
use std::time::Instant;

use handoff_protocol::lockfile::LockFile;
use handoff_protocol::succession::FromSuccessor;
use tokio::net::UnixListener;
use tracing::{error, info};

use crate::builds::Build;
use crate::checkpoints::Stored;
use crate::config::Config;
use crate::control;
use crate::daemon::{Daemon, DaemonError};
use crate::persist::Persister;
use crate::proc::{Generation, SpawnError, WorkerProc};
use crate::recovery::StartPlan;
use crate::succession::Inheritance;

/// The state directory's lock and the control socket: inherited and bound
/// beside the old one (started by `upgrade-supervisor`: `put_in_place` at
/// the end of [`Daemon::take_office`]), or taken and bound in place.
pub(crate) fn claim(
    cfg: &Config,
) -> Result<(LockFile, Option<Inheritance>, UnixListener, Option<PathBuf>), DaemonError> {
    let mut heir = Inheritance::from_env(&cfg.state_dir)?;
    let lock = match heir.as_mut().and_then(|h| h.lock.take()) {
        Some(l) => l,
        None => LockFile::try_lock(&handoff_protocol::state_dir::supervisor_lock(
            &cfg.state_dir,
        ))
        .map_err(DaemonError::Locked)?,
    };
    let (listener, beside) = match &heir {
        Some(_) => {
            let (l, at) = control::bind_beside(&cfg.socket, &cfg.access)?;
            (l, Some(at))
        }
        None => (control::bind(&cfg.socket, &cfg.access)?, None),
    };
    Ok((lock, heir, listener, beside))
}

impl Daemon {
    /// Find or start the worker (see the module docs); for a supervisor
    /// started by `upgrade-supervisor`, tell the old one how it went and
    /// take over the control socket.
    pub(crate) async fn take_office(
        &mut self,
        mut heir: Option<Inheritance>,
        beside: Option<PathBuf>,
        stored: Option<crate::fdstore::Received>,
    ) -> Result<(), DaemonError> {
        // Everything slow comes first: admitting the --worker file hashes
        // and copies it, and the checkpoint file is read and checked. Then
        // an orphan that answers the search is told Adopt at once (it hangs
        // up on a supervisor that says nothing for its adoption_timeout),
        // and a predecessor lets the worker go only once this one is ready.
        if let Err(e) = self.store.admit(&self.cfg.worker.clone(), None) {
            tracing::warn!("cannot admit the --worker file (yet): {e}");
        }
        let mut plan = self.load_persisted();
        self.persister = Some(Persister::start(self.cfg.state_dir.clone()));
        if let Some(b) = heir.as_ref().and_then(|h| h.binary.clone()) {
            self.image.binary = b;
        }
        if let Some(h) = heir.as_mut() {
            let sha = tokio::task::spawn_blocking(|| {
                crate::builds::sha256_file(std::path::Path::new("/proc/self/exe"))
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(crate::succession::SuccessionError::SelfHash)?;
            let _ = self.image.sha256.set(sha.clone());
            h.announce(sha).await?;
        }
        // A worker a previous supervisor left serving is adopted, never
        // doubled (see `adopt`).
        let orphan = match crate::adopt::find(&self.cfg.state_dir, self.cfg.timeouts.adopt).await {
            Ok(o) => o,
            Err(e) => {
                if let Some(h) = heir.as_mut() {
                    let reason = e.to_string();
                    h.report(FromSuccessor::Failed { reason }).await;
                }
                return Err(e.into());
            }
        };
        if let Some(stored) = stored {
            // A live orphan registers its own sockets.
            let adopting = !matches!(orphan, crate::adopt::Found::Nobody);
            plan = self.restore_from_fd_store(stored, adopting).unwrap_or(plan);
        } else if self.cfg.fd_store {
            self.keep_fd_store(None, Vec::new(), None);
        }
        if !self.take_over_orphans(orphan)? {
            self.start_first(plan)?;
        }
        if let (Some(mut h), Some(at)) = (heir.take(), beside) {
            control::put_in_place(&at, &self.cfg.socket)?;
            h.report(FromSuccessor::Serving).await;
            self.history.push(format!(
                "took over from the previous supervisor (upgrade-supervisor to {})",
                self.image.binary.display()
            ));
        }
        Ok(())
    }

    /// Adopt the worker back (after a failed succession), off the daemon
    /// task: the search may wait for its orphan socket.
    pub(crate) fn readopt(&mut self) {
        let (dir, wait, tx) = (
            self.cfg.state_dir.clone(),
            self.cfg.timeouts.adopt,
            self.readoptions.clone(),
        );
        tokio::spawn(async move {
            let _ = tx.send(crate::adopt::find(&dir, wait).await);
        });
    }

    pub(crate) fn on_readopted(
        &mut self,
        found: Result<crate::adopt::Found, crate::adopt::AdoptError>,
    ) {
        let released = self.released.take();
        let outcome = match found.map(|f| self.take_over_orphans(f)) {
            Ok(Ok(true)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(false)) => {
                let reason = format!(
                    "worker pid {} was gone when taken back from a failed supervisor upgrade",
                    released.unwrap_or(0)
                );
                let plan = StartPlan::Recover { reason, after: 0 };
                self.start_first(plan).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = outcome {
            error!(error = %e, "cannot take the worker back");
            self.notice = Some(format!("cannot take the worker back: {e}"));
        }
    }

    /// Start the first worker, in recovery mode when a checkpoint file was
    /// found (`plan`).
    pub(crate) fn start_first(&mut self, plan: StartPlan) -> Result<(), DaemonError> {
        let first = self.cfg.worker.clone();
        let build = self.store.admit(&first, None)?;
        let gen = self.take_generation();
        let proc = self.spawn_worker(gen, &build, plan)?;
        self.current = Some(build);
        info!(generation = gen, pid = proc.pid, binary = %first.display(), "worker started");
        self.active = Some(proc);
        Ok(())
    }

    /// Start `build` as worker `gen` with the configured arguments, its
    /// events coming to this daemon.
    pub(crate) fn spawn_worker(
        &self,
        gen: Generation,
        build: &Build,
        plan: StartPlan,
    ) -> Result<WorkerProc, SpawnError> {
        WorkerProc::spawn(
            gen,
            build,
            &self.cfg.worker_args,
            &self.cfg.state_dir,
            plan,
            self.events.clone(),
        )
    }

    /// The checkpoint a previous supervisor left in the state directory:
    /// with one, the first worker starts in recovery mode from it.
    fn load_persisted(&mut self) -> StartPlan {
        match crate::persist::load(&self.cfg.state_dir) {
            Ok(Some(c)) => {
                info!(
                    bytes = c.snapshot.bytes.len(),
                    schema = c.snapshot.schema,
                    "found the previous checkpoint; the worker resumes from it"
                );
                self.checkpoint = Some(Stored {
                    snapshot: c.snapshot,
                    summary: c.summary,
                    at: Instant::now(),
                    carried: handoff_protocol::worker::Carried(c.carried),
                    taken: crate::checkpoints::Taken::Loaded,
                });
                StartPlan::Recover {
                    reason: "the supervisor restarted; state from its checkpoint file".into(),
                    after: 0,
                }
            }
            Ok(None) => StartPlan::Fresh,
            Err(e) => {
                error!(error = %e, "starting without the checkpoint file");
                self.notice = Some(format!(
                    "{e}; it was moved aside and the worker started fresh"
                ));
                StartPlan::Fresh
            }
        }
    }
}
