//! Running an upgrade: the daemon's side of the handoff. It starts one
//! (admission, spawn), turns what the two workers say and do into
//! [`Event`]s for the pure state machine ([`crate::handoff::machine`]), and
//! carries out the [`Action`]s the machine returns: the only code that
//! touches the processes, the held sockets and the `--wait` clients on the
//! handoff's behalf. The record of the running upgrade ([`Upgrade`]) and the
//! two processes live in [`InFlight`].

use std::path::PathBuf;
use std::time::Instant;

use handoff_protocol::ctl::{CtlResponse, HandoffReport, Outcome, UpgradeRequest};
use handoff_protocol::worker::{
    ConnRestore, FromWorker, Frozen, PreCopyPart, Restore, RestoreMode, ToWorker,
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::daemon::{short, Daemon};
use crate::handoff::machine::{self, Action, Event, Pair, Phase, Worker};
use crate::handoff::{Milestone, Trigger, Upgrade};
use crate::proc::{Lifecycle, WorkerEvent, WorkerProc};
use crate::recovery::{HandedLeftovers, StartPlan};

/// The running upgrade, if any: its phase (moved only by
/// [`machine::step`]), its record, and the processes it moves between
/// besides the active worker.
#[derive(Debug, Default)]
pub struct InFlight {
    pub phase: Phase,
    /// Present exactly while `phase` is not idle.
    pub up: Option<Upgrade>,
    /// B, until the commit makes it the active worker.
    pub successor: Option<WorkerProc>,
    /// A, from the commit until it is reaped.
    pub retiring: Option<WorkerProc>,
    /// The pre-copy part A made last (round 0's image descriptor with it),
    /// until it is handed to B ([`Action::Warm`]).
    pub part: Option<(PreCopyPart, Vec<std::os::fd::OwnedFd>)>,
}

impl InFlight {
    /// Why a new upgrade cannot start now, if one runs.
    pub fn busy(&self) -> Option<String> {
        let up = self.up.as_ref()?;
        Some(format!("busy: upgrade #{} is {}", up.id, self.phase.name()))
    }
}

impl Daemon {
    /// Steps 1–2: refuse, or admit the build and spawn the successor.
    /// Returns the in-progress report.
    pub(crate) fn start_upgrade(
        &mut self,
        trigger: Trigger,
        req: &UpgradeRequest,
        waiter: Option<mpsc::Sender<CtlResponse>>,
    ) -> Result<HandoffReport, String> {
        if !self.is_running() {
            return Err("busy: the supervisor is stopping".into());
        }
        if let Some(busy) = self.handoff.busy() {
            return Err(busy);
        }
        let old = match self.active.as_ref() {
            Some(a) if matches!(a.life, Lifecycle::Running { .. }) => Worker {
                generation: a.generation,
                pid: a.pid,
            },
            Some(a) => {
                return Err(format!(
                    "the worker is {}, not running: nothing to upgrade from",
                    a.state_name()
                ))
            }
            None => return Err("no worker is running: nothing to upgrade from".into()),
        };
        let id = self.take_handoff_id();
        let binary = req
            .binary
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(|| self.cfg.worker.clone());
        let mut up = Upgrade {
            id,
            trigger,
            binary: binary.clone(),
            started: Instant::now(),
            timings: Default::default(),
            from_pid: Some(old.pid),
            to_pid: None,
            frozen_at_ns: None,
            go_at_ns: None,
            first_consumed_ns: None,
            held: None,
            events: Vec::new(),
            span: tracing::info_span!(
                "upgrade",
                id,
                trigger = trigger.as_str(),
                binary = %binary.display(),
                outcome = tracing::field::Empty,
                pause_us = tracing::field::Empty,
                total_us = tracing::field::Empty,
            ),
            waiters: waiter.into_iter().collect(),
        };
        info!(handoff = id, trigger = trigger.as_str(), binary = %binary.display(), "upgrade triggered");
        let admitting = Instant::now();
        let spawned = self
            .store
            .admit(&binary, req.sha256.as_deref())
            .map_err(|e| e.to_string())
            .inspect(|build| {
                // Hashing and copying a large build takes time of its own.
                up.mark(
                    Milestone::Admitted,
                    Some(format!(
                        "sha256 {} in {:.1} ms",
                        short(&build.sha256),
                        admitting.elapsed().as_secs_f64() * 1000.0
                    )),
                );
            })
            .and_then(|build| {
                let gen = self.take_generation();
                self.spawn_worker(gen, &build, StartPlan::Successor)
                    .map_err(|e| e.to_string())
            });
        match spawned {
            Ok(succ) => {
                let pair = Pair {
                    old,
                    new: Worker {
                        generation: succ.generation,
                        pid: succ.pid,
                    },
                };
                self.systemd
                    .reloading(&format!("upgrade #{id} to {}", binary.display()));
                let report = up.report(Outcome::InProgress, None, Some(succ.pid));
                self.handoff.up = Some(up);
                self.handoff.successor = Some(succ);
                self.drive(Event::Spawned { pair });
                Ok(report)
            }
            Err(reason) => {
                up.mark(Milestone::Failed, Some(reason.clone()));
                self.finish(up, Outcome::Refused, Some(reason.clone()), None);
                Err(reason)
            }
        }
    }

    /// Move the machine on `event` and carry out what it says, and the
    /// events those actions give rise to.
    pub(crate) fn drive(&mut self, event: Event) {
        let mut next = Some(event);
        while let Some(event) = next.take() {
            let phase = std::mem::take(&mut self.handoff.phase);
            let (phase, actions) = machine::step(
                phase,
                event,
                tokio::time::Instant::now(),
                &self.cfg.timeouts,
                &self.cfg.precopy,
            );
            self.handoff.phase = phase;
            for action in actions {
                if let Some(follow) = self.execute(action) {
                    next = Some(follow);
                }
            }
        }
    }

    /// Carry out one action; an action that fails here is told back to the
    /// machine as the event returned.
    fn execute(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Mark(milestone, detail) => {
                if let Some(up) = self.handoff.up.as_mut() {
                    up.mark(milestone, detail);
                }
            }
            Action::Freeze { schema, catch_up } => {
                if let Some(a) = self.active.as_mut() {
                    if let Lifecycle::Running { hello } = &a.life {
                        a.life = Lifecycle::Frozen {
                            hello: hello.clone(),
                        };
                    }
                    a.send(ToWorker::Freeze { schema, catch_up }, Vec::new());
                }
            }
            Action::PreCopy { round } => {
                if let Some(a) = self.active.as_ref() {
                    a.send(ToWorker::PreCopy { round }, Vec::new());
                }
            }
            Action::EndPreCopy => {
                self.handoff.part = None;
                if let Some(a) = self.active.as_ref() {
                    a.send(ToWorker::PreCopyEnd, Vec::new());
                }
            }
            Action::Warm { round } => {
                let part = self.handoff.part.take();
                match (part, self.handoff.successor.as_ref()) {
                    (Some((part, fds)), Some(succ)) if part.round == round => {
                        succ.send(ToWorker::Warm(part), fds)
                    }
                    // Cannot happen: the machine asks only for the part it
                    // was told of.
                    _ => warn!(round, "no pre-copy part to hand over"),
                }
            }
            Action::HoldProgress => {
                if let Some(up) = self.handoff.up.as_mut() {
                    up.held = Some(Vec::new());
                }
            }
            Action::Restore(f) => return self.restore_successor(*f),
            Action::StoreCheckpoint(f) => self.store_checkpoint(
                f.snapshot,
                f.summary,
                crate::checkpoints::Taken::InLoop,
                f.frozen_at_ns,
            ),
            Action::Commit => return self.commit(),
            Action::ReleaseProgress => {
                if let Some(up) = self.handoff.up.as_mut() {
                    up.release_progress();
                }
            }
            Action::KillSuccessor => {
                if let Some(mut s) = self.handoff.successor.take() {
                    s.kill();
                }
            }
            Action::Thaw => {
                // The old worker resumes exactly where it stopped, with its
                // own leftovers.
                self.handed_leftovers = None;
                if let Some(a) = self.active.as_mut() {
                    if !matches!(a.life, Lifecycle::Exited { .. }) {
                        a.send(ToWorker::Thaw, Vec::new());
                        if let Lifecycle::Frozen { hello } = &a.life {
                            a.life = Lifecycle::Running {
                                hello: hello.clone(),
                            };
                        }
                    }
                }
            }
            Action::KillOld => {
                if let Some(old) = self.handoff.retiring.as_mut() {
                    warn!(
                        pid = old.pid,
                        "old worker did not exit within {:?}; killing it", self.cfg.timeouts.exit
                    );
                    old.kill();
                }
            }
            Action::Finish { outcome, error } => {
                let mut up = self.handoff.up.take()?;
                self.handoff.retiring = None;
                let to_pid = if outcome == Outcome::Completed {
                    up.go_at_ns = self
                        .active
                        .as_ref()
                        .filter(|a| Some(a.pid) == up.to_pid)
                        .and_then(WorkerProc::go_sent_ns);
                    up.to_pid
                } else {
                    self.handed_leftovers = None;
                    None
                };
                self.finish(up, outcome, error, to_pid);
            }
        }
        None
    }

    /// Step 4 → 5: hand A's snapshot, leftovers and the held sockets to B.
    fn restore_successor(&mut self, f: Frozen) -> Option<Event> {
        if let Some(up) = self.handoff.up.as_mut() {
            up.frozen_at_ns = Some(f.frozen_at_ns);
        }
        let dups = match self.held.duplicate_all() {
            Ok(d) => d,
            Err(e) if f.is_catch_up() => return Some(Event::RestoreFailed(e.to_string())),
            Err(e) => {
                // A thaws and carries on from this very state.
                self.store_checkpoint(
                    f.snapshot,
                    f.summary,
                    crate::checkpoints::Taken::InLoop,
                    f.frozen_at_ns,
                );
                return Some(Event::RestoreFailed(e.to_string()));
            }
        };
        let succ = self.handoff.successor.as_mut()?;
        let mut conns = Vec::with_capacity(dups.len());
        let mut fds = Vec::with_capacity(dups.len());
        for (info, fd) in dups {
            let (leftovers, tls) = f
                .conns
                .iter()
                .find(|c| c.id == info.id)
                .map(|c| (c.leftovers.clone(), c.tls.clone()))
                .unwrap_or_default();
            conns.push(ConnRestore {
                info,
                leftovers,
                tls,
            });
            fds.push(fd);
        }
        let restore = Restore {
            mode: RestoreMode::Handoff,
            snapshot: Some(f.snapshot.clone()),
            conns,
            digest: f.digest,
        };
        self.handed_leftovers = Some(HandedLeftovers::without_secrets(succ.generation, &f.conns));
        // What the library carried with the frozen state goes first.
        succ.send(ToWorker::Carried(self.carried_ahead.clone()), Vec::new());
        succ.send(ToWorker::Restore(restore), fds);
        if f.is_catch_up() {
            // Not a state: B's first checkpoint after Go replaces the one
            // before the upgrade.
            return None;
        }
        // The snapshot is a slice of the received frame, whose other bytes
        // (the TLS sessions among them) were wiped when it was decoded: the
        // checkpoint keeps nothing of the sessions alive.
        let at = f.frozen_at_ns;
        self.store_checkpoint(f.snapshot, f.summary, crate::checkpoints::Taken::Frozen, at);
        None
    }

    /// Step 6: B is ready. A exits first, then B goes; B is the active
    /// worker from here on.
    fn commit(&mut self) -> Option<Event> {
        crate::fault::hit(crate::fault::Point::AfterReady);
        let succ = self.handoff.successor.take()?;
        let Some(mut old) = self.active.take() else {
            // Cannot happen (A's exit gives the upgrade up first); should it,
            // there is nobody to retire.
            self.active = Some(succ);
            return Some(Event::OldExited("gone before the commit".into()));
        };
        let old_hello = old.hello().cloned();
        old.send(ToWorker::Exit, Vec::new());
        old.life = Lifecycle::Exiting;
        self.current = Some(succ.build.clone());
        // (The fault dies once Exit is written: Go must not race it.)
        if !crate::fault::armed(crate::fault::Point::ExitWritten) {
            succ.send(ToWorker::Go, Vec::new());
        }
        if self.begin_probation(&old.build, old_hello, &succ) {
            let target = self.probation.previous.as_ref().map_or_else(
                || "none".to_string(),
                |p| format!("{} ({})", p.build.source.display(), short(&p.build.sha256)),
            );
            if let Some(up) = self.handoff.up.as_mut() {
                up.mark(
                    Milestone::SameBuild,
                    Some(format!(
                        "same SHA-256 as the running build; rollback target: {target}"
                    )),
                );
            }
        }
        if let Some(up) = self.handoff.up.as_mut() {
            up.to_pid = Some(succ.pid);
            if let Some(frozen) = up.frozen_at_ns {
                self.stats.blackout_pending = Some((succ.generation, frozen));
            }
            info!(
                handoff = up.id,
                old = old.pid,
                new = succ.pid,
                "committed: new worker live"
            );
        }
        self.active = Some(succ);
        self.handoff.retiring = Some(old);
        None
    }

    /// What the successor says and does, for the machine.
    pub(crate) fn on_successor_event(&mut self, event: WorkerEvent) {
        let event = match event {
            WorkerEvent::Message(FromWorker::Hello(hello), _) => {
                if let Some(s) = self.handoff.successor.as_mut() {
                    s.life = Lifecycle::Running {
                        hello: hello.clone(),
                    };
                }
                let current = self.active.as_ref().and_then(|a| a.hello().cloned());
                Event::Hello {
                    current: current.map(Box::new),
                    successor: Box::new(hello),
                }
            }
            WorkerEvent::Message(FromWorker::Ready, _) => Event::Ready,
            WorkerEvent::Message(FromWorker::Warmed { round, took_ns }, _) => {
                Event::Warmed { round, took_ns }
            }
            WorkerEvent::Message(FromWorker::Rejected { reason }, _) => Event::Rejected(reason),
            WorkerEvent::Message(FromWorker::Heartbeat, _) => return,
            WorkerEvent::Message(FromWorker::Serving, _) => {
                self.first_start.served();
                return;
            }
            WorkerEvent::Message(FromWorker::Failed { reason }, _) => {
                warn!(%reason, "the new worker failed");
                Event::SuccessorFailed(reason)
            }
            // Said before Ready, done after Go: `upgrade --wait` and `log`
            // show it with the upgrade's phases.
            WorkerEvent::Message(FromWorker::FeedChanges(lines), _) => {
                Event::FeedChanges(lines.join("; "))
            }
            WorkerEvent::Message(other, fds) => {
                drop(fds);
                warn!(?other, "unexpected message from the successor; ignored");
                return;
            }
            WorkerEvent::ChannelClosed { error } => Event::SuccessorChannelClosed(error),
            WorkerEvent::Exited(status) => {
                if let Some(s) = self.handoff.successor.as_mut() {
                    s.life = Lifecycle::Exited {
                        status: status.to_string(),
                    };
                }
                Event::SuccessorExited(status.to_string())
            }
        };
        self.drive(event);
    }

    /// A pre-copy part from A: kept for B, and told to the machine.
    pub(crate) fn on_precopied(&mut self, part: PreCopyPart, fds: Vec<std::os::fd::OwnedFd>) {
        // Only while a pre-copy waits for a part (a late or stray one is
        // dropped, its descriptors closed, and fails nothing).
        if !matches!(self.handoff.phase, Phase::PreCopying(..)) {
            tracing::debug!(
                round = part.round,
                "a pre-copy part nobody waits for; dropped"
            );
            return;
        }
        // Round 0 may come as an image (one memfd); every part else comes
        // in the message, with no descriptor.
        let well_formed = match (part.image_len, fds.len()) {
            (Some(_), 1) => part.round == 0,
            (None, 0) => true,
            _ => false,
        };
        if !well_formed {
            let why = format!(
                "pre-copy round {} came {} and with {} descriptors",
                part.round,
                if part.image_len.is_some() {
                    "as an image"
                } else {
                    "in the message"
                },
                fds.len()
            );
            warn!("{why}");
            return self.drive(Event::PreCopyFailed(why));
        }
        let event = Event::PreCopied {
            round: part.round,
            bytes: part.image_len.unwrap_or(part.part.bytes.len() as u64),
            took_ns: part.took_ns,
        };
        self.handoff.part = Some((part, fds));
        self.drive(event);
    }

    /// What the old worker does once told to exit: only its reaping matters.
    pub(crate) fn on_retiring_event(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Exited(status) => {
                if let Some(old) = self.handoff.retiring.as_mut() {
                    old.life = Lifecycle::Exited {
                        status: status.to_string(),
                    };
                }
                self.drive(Event::OldExited(status.to_string()));
            }
            WorkerEvent::Message(_, fds) => drop(fds),
            WorkerEvent::ChannelClosed { .. } => {}
        }
    }
}
