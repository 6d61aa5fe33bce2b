//! What the workers tell the daemon: each worker's messages, channel
//! losses and exits, routed by generation to the active worker, the
//! successor of an upgrade or the retiring one (those two in
//! [`crate::upgrade`]); the active worker's messages (hello, registrations,
//! checkpoints, the handoff's replies) and its first consumed message after
//! a handoff, which ends the blackout.

use std::time::Instant;

use handoff_protocol::worker::{ConnKind, FromWorker, ToWorker};
use tracing::{error, info, warn};

use crate::checkpoints::Taken;
use crate::daemon::{Daemon, Stopping};
use crate::handoff::machine::{Event, Phase};
use crate::proc::{Lifecycle, Tagged, WorkerEvent};
use crate::recovery::StartPlan;

impl Daemon {
    // ---- worker events ----------------------------------------------------

    pub(crate) fn on_worker_event(&mut self, ev: Tagged) {
        let Tagged { generation, event } = ev;
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.generation == generation)
        {
            self.on_active_event(event);
        } else if self
            .handoff
            .successor
            .as_ref()
            .is_some_and(|s| s.generation == generation)
        {
            self.on_successor_event(event);
        } else if self
            .handoff
            .retiring
            .as_ref()
            .is_some_and(|o| o.generation == generation)
        {
            self.on_retiring_event(event);
        } else if let WorkerEvent::Message(msg, fds) = event {
            // A killed successor's last words, or similar: descriptors are
            // closed as `fds` drops.
            if !fds.is_empty() {
                warn!(
                    generation,
                    n = fds.len(),
                    "descriptors from a retired worker closed"
                );
            }
            tracing::debug!(generation, ?msg, "message from a retired worker ignored");
        }
    }

    fn on_active_event(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Message(msg, fds) => self.on_active_message(msg, fds),
            WorkerEvent::ChannelClosed { error } => {
                // A worker the supervisor cannot talk to cannot be frozen,
                // checkpointed or stopped: replace it (its exit starts a
                // recovery on the held sockets). Usually it is exiting anyway.
                // It is given `EXIT_STATUS_GRACE` to exit by itself, so that
                // its own exit status is what is reported; past it,
                // `check_heartbeat` kills it.
                if matches!(self.stopping, Stopping::Running) {
                    if let Some(a) = self.active.as_mut() {
                        warn!(
                            pid = a.pid,
                            error = error.as_deref().unwrap_or("closed"),
                            "lost the channel to the active worker; it is replaced once it exits"
                        );
                        a.channel_closed = Some(Instant::now());
                    }
                }
            }
            WorkerEvent::Exited(status) => {
                let Some(mut a) = self.active.take() else {
                    return;
                };
                a.life = Lifecycle::Exited {
                    status: status.to_string(),
                };
                if matches!(self.stopping, Stopping::Draining { .. }) {
                    info!(pid = a.pid, %status, "worker stopped");
                    self.stopping = Stopping::Done;
                    return;
                }
                if self.handoff.phase.successor().is_some() {
                    self.drive(Event::OldExited(status.to_string()));
                }
                self.on_unplanned_exit(&a, status.to_string());
            }
        }
    }

    fn on_active_message(&mut self, msg: FromWorker, fds: Vec<std::os::fd::OwnedFd>) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        match msg {
            FromWorker::Hello(hello) => {
                if !matches!(a.life, Lifecycle::Starting) {
                    return;
                }
                match a.plan.clone() {
                    StartPlan::Recover { reason, after } => {
                        self.send_recovery(hello, reason, after)
                    }
                    StartPlan::Fresh | StartPlan::Successor => {
                        info!(pid = a.pid, build = %hello.build_id, "worker said hello; starting fresh");
                        a.life = Lifecycle::Running { hello };
                        a.send(ToWorker::StartFresh, Vec::new());
                        let status = format!("serving: worker pid {}", a.pid);
                        self.serving(&status);
                    }
                }
            }
            FromWorker::Ready => {
                if let Lifecycle::Recovering { hello } = &a.life {
                    info!(pid = a.pid, "recovered worker ready; serving");
                    let status = format!("serving: worker pid {} (recovered)", a.pid);
                    a.life = Lifecycle::Running {
                        hello: hello.clone(),
                    };
                    a.send(ToWorker::Go, Vec::new());
                    self.serving(&status);
                }
            }
            FromWorker::Rejected { reason } => {
                error!(pid = a.pid, %reason, "the recovering worker refused the checkpoint");
            }
            FromWorker::Register(info) => {
                let mut fds = fds;
                if fds.len() != 1 {
                    warn!(conn = %info.id, n = fds.len(), "registration must carry exactly one descriptor; ignored");
                    return;
                }
                if info.kind == ConnKind::WebSocketTls {
                    // Its sessions will pass through this process at every
                    // handoff (and, under kernel TLS, the socket holds keys).
                    if let Err(e) = handoff_protocol::tls::keep_keys_out_of_core_dumps() {
                        warn!("cannot keep TLS keys out of core dumps (PR_SET_DUMPABLE): {e}");
                    }
                }
                if let Some(fd) = fds.pop() {
                    info!(conn = %info.id, name = %info.name, peer = %info.peer, "holding connection");
                    if let Some(k) = &self.fdstore {
                        k.conn(&info, &fd);
                    }
                    self.held.insert(info, fd);
                }
            }
            FromWorker::Unregister { id, reason } => {
                info!(conn = %id, %reason, "connection released");
                if self.held.remove(id).is_some() {
                    if let Some(k) = &self.fdstore {
                        k.unconn(id);
                    }
                }
            }
            FromWorker::Checkpoint(c) => {
                self.store_checkpoint(c.snapshot, c.summary, Taken::InLoop, c.taken_at_ns)
            }
            FromWorker::CheckpointImage(c) => self.on_checkpoint_image(c, fds),
            FromWorker::Frozen(f) => {
                crate::fault::hit(crate::fault::Point::InFreeze);
                self.drive(Event::Frozen(Box::new(f)));
            }
            FromWorker::FreezeFailed { reason } => self.drive(Event::FreezeFailed(reason)),
            FromWorker::PreCopied(part) => self.on_precopied(part, fds),
            FromWorker::PreCopyFailed { reason } => self.drive(Event::PreCopyFailed(reason)),
            FromWorker::FirstConsumed { at_ns } => self.on_first_consumed(at_ns),
            FromWorker::Heartbeat => {}
            FromWorker::Adoptable(_) => {
                warn!("Adoptable from a worker that has a supervisor; ignored")
            }
            FromWorker::Carried(c) => self.carried_ahead = c,
            FromWorker::FeedChanges(lines) => {
                for line in lines {
                    warn!(pid = a.pid, "{line}");
                    self.history.push(format!("worker pid {}: {line}", a.pid));
                }
            }
            FromWorker::Serving => self.first_start.served(),
            FromWorker::Failed { reason } => {
                error!(pid = a.pid, %reason, "the worker failed");
                self.history
                    .push(format!("worker pid {} failed: {reason}", a.pid));
                self.first_start.last_words(reason);
            }
            FromWorker::Warmed { .. } => {
                warn!(pid = a.pid, "Warmed from the serving worker; ignored")
            }
        }
    }

    fn on_first_consumed(&mut self, at_ns: u64) {
        self.handed_leftovers = None;
        let gen = self.active.as_ref().map(|a| a.generation);
        let Some((pending_gen, frozen_at)) = self.stats.blackout_pending else {
            return;
        };
        if Some(pending_gen) != gen {
            return;
        }
        let blackout = at_ns.saturating_sub(frozen_at) / 1000;
        self.stats.blackout_pending = None;
        if let (Phase::Committing(_), Some(up)) = (&self.handoff.phase, self.handoff.up.as_mut()) {
            up.first_consumed_ns = Some(at_ns);
            self.drive(Event::FirstConsumed);
        } else if let Some(last) = self.stats.last.as_mut() {
            last.blackout_us = Some(blackout);
            self.metrics.blackout.observe_us(blackout);
        }
        info!(
            blackout_us = blackout,
            "new worker consumed its first message"
        );
    }
}
