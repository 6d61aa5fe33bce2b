//! What the operator asks of the daemon: signals turned into intents
//! ([`crate::signals`]) and control requests ([`crate::control`]): upgrade,
//! `upgrade --url` (downloaded in a task of its own), checkpoint, rollback,
//! log, status, stop.

use handoff_protocol::ctl::{CtlRequest, CtlResponse, UpgradeRequest};
use handoff_protocol::worker::ToWorker;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::control::CtlCommand;
use crate::daemon::{Daemon, Downloaded, Stopping};
use crate::handoff::machine::Event;
use crate::handoff::Trigger;
use crate::proc::Lifecycle;
use crate::signals::Intent;

impl Daemon {
    // ---- intents and control requests -------------------------------------

    pub(crate) fn on_intent(&mut self, intent: Intent) {
        match intent {
            Intent::Upgrade => {
                let req = UpgradeRequest {
                    binary: None,
                    url: None,
                    sha256: None,
                    wait: false,
                };
                if let Err(reason) = self.start_upgrade(Trigger::Signal, &req, None) {
                    warn!(%reason, "SIGUSR2 upgrade not started");
                }
            }
            Intent::GracefulStop => self.begin_stop(),
            Intent::UpgradeSupervisor => {
                let (tx, mut rx) = mpsc::channel(1);
                let req = handoff_protocol::ctl::SupervisorUpgradeRequest {
                    binary: None,
                    sha256: None,
                    wait: false,
                };
                self.begin_succession(req, tx);
                if let Ok(CtlResponse::Refused { reason }) = rx.try_recv() {
                    warn!(%reason, "SIGUSR1 supervisor upgrade not started");
                }
            }
            Intent::Reload => info!("SIGHUP: nothing to reload (configuration comes from flags)"),
        }
    }

    pub(crate) fn on_ctl(&mut self, cmd: CtlCommand) {
        let CtlCommand { req, reply } = cmd;
        match req {
            CtlRequest::Status => {
                let _ = reply.try_send(CtlResponse::Status(Box::new(self.status())));
            }
            CtlRequest::Upgrade(u) if u.url.is_some() => self.begin_download(u, reply),
            CtlRequest::Upgrade(u) => {
                let waiter = u.wait.then(|| reply.clone());
                match self.start_upgrade(Trigger::Control, &u, waiter) {
                    Err(reason) => {
                        let _ = reply.try_send(CtlResponse::Refused { reason });
                    }
                    Ok(report) if !u.wait => {
                        let _ = reply.try_send(CtlResponse::Upgrade(report));
                    }
                    Ok(_) => {}
                }
            }
            CtlRequest::Checkpoint { wait } => match self.active.as_ref() {
                Some(a) if a.hello().is_some() => {
                    a.send(ToWorker::CheckpointNow, Vec::new());
                    if wait {
                        self.checkpoint_waiters
                            .push((handoff_protocol::monotonic_ns(), reply));
                    } else {
                        let _ = reply.try_send(CtlResponse::Ok);
                    }
                }
                _ => {
                    let _ = reply.try_send(CtlResponse::Refused {
                        reason: "no worker is running".into(),
                    });
                }
            },
            CtlRequest::Stop => {
                let _ = reply.try_send(CtlResponse::Ok);
                self.begin_stop();
            }
            CtlRequest::UpgradeSupervisor(req) => self.begin_succession(req, reply),
            CtlRequest::Log { last } => {
                let _ = reply.try_send(CtlResponse::Log(self.history.last(last as usize)));
            }
            CtlRequest::Rollback { wait } => {
                let Some(previous) = self.probation.previous.clone() else {
                    let reason = "no previous build to roll back to".to_string();
                    let _ = reply.try_send(CtlResponse::Refused { reason });
                    return;
                };
                let req = UpgradeRequest {
                    binary: Some(previous.build.exec.display().to_string()),
                    url: None,
                    sha256: None,
                    wait,
                };
                let waiter = wait.then(|| reply.clone());
                match self.start_upgrade(Trigger::Rollback, &req, waiter) {
                    Err(reason) => {
                        let _ = reply.try_send(CtlResponse::Refused { reason });
                    }
                    Ok(report) if !wait => {
                        let _ = reply.try_send(CtlResponse::Upgrade(report));
                    }
                    Ok(_) => {}
                }
            }
        }
    }

    /// `upgrade --url`: refuse at once if it cannot start, else download in
    /// a task of its own; the upgrade starts when the file is in.
    fn begin_download(&mut self, req: UpgradeRequest, reply: mpsc::Sender<CtlResponse>) {
        let refuse = |reason: String| {
            let _ = reply.try_send(CtlResponse::Refused { reason });
        };
        if req.sha256.is_none() {
            return refuse(crate::download::DownloadError::NoChecksum.to_string());
        }
        if let Some(busy) = self.handoff.busy() {
            return refuse(busy);
        }
        let url = req.url.clone().unwrap_or_default();
        info!(%url, "downloading a build");
        let (state_dir, tx) = (self.cfg.state_dir.clone(), self.downloads.clone());
        tokio::spawn(async move {
            let result = crate::download::fetch(&url, &state_dir)
                .await
                .map_err(|e| e.to_string());
            let _ = tx.send(Downloaded { req, result, reply }).await;
        });
    }

    pub(crate) fn on_downloaded(&mut self, done: Downloaded) {
        let Downloaded {
            mut req,
            result,
            reply,
        } = done;
        let path = match result {
            Ok(p) => p,
            Err(reason) => {
                let _ = reply.try_send(CtlResponse::Refused { reason });
                return;
            }
        };
        req.binary = Some(path.display().to_string());
        req.url = None;
        let waiter = req.wait.then(|| reply.clone());
        match self.start_upgrade(Trigger::Control, &req, waiter) {
            Err(reason) => {
                let _ = reply.try_send(CtlResponse::Refused { reason });
            }
            Ok(report) if !req.wait => {
                let _ = reply.try_send(CtlResponse::Upgrade(report));
            }
            Ok(_) => {}
        }
        // Admitted into the build store (or refused): the download is done with.
        let _ = std::fs::remove_file(&path);
    }

    fn begin_stop(&mut self) {
        if !matches!(self.stopping, Stopping::Running) {
            return;
        }
        info!("graceful stop");
        self.systemd.stopping();
        self.drive(Event::Stopping);
        match self.active.as_mut() {
            Some(a) if !matches!(a.life, Lifecycle::Exited { .. }) => {
                a.send(ToWorker::Stop, Vec::new());
                a.life = Lifecycle::Exiting;
                let deadline = tokio::time::Instant::now() + self.cfg.timeouts.stop;
                self.stopping = Stopping::Draining { deadline };
            }
            _ => self.stopping = Stopping::Done,
        }
    }
}
