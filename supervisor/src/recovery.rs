//! Unplanned exits. The supervisor holds every socket, so a worker that
//! crashed, was OOM-killed or was killed for missing its heartbeats is
//! replaced by a new process in recovery mode: the newest checkpoint and the
//! held connections, which never closed. Restarts back off exponentially
//! while the worker keeps dying, and the streak resets once a worker has
//! lived for a while.

use std::time::Duration;

use tokio::time::Instant;

/// How a worker process is to start once it says Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPlan {
    /// Open its own connections, empty state.
    Fresh,
    /// Take over the held connections and the newest checkpoint; `reason` is
    /// why the previous worker (generation `after`) is gone.
    Recover { reason: String, after: u64 },
    /// A successor in an upgrade (the handoff phases drive it).
    Successor,
}

/// The restart policy. Every duration says what it protects.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    /// Delay before the second restart in a streak (the first is immediate:
    /// the market does not wait). Doubles with each further crash.
    pub base: Duration,
    /// Longest delay between restarts: bounds how long the connections sit
    /// unread while a broken build keeps crashing.
    pub cap: Duration,
    /// A worker that lived this long ends the crash streak.
    pub stable_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            stable_after: Duration::from_secs(10),
        }
    }
}

/// Consecutive crashes and when the next restart may happen.
#[derive(Debug, Default)]
pub struct CrashStreak {
    pub crashes: u32,
}

impl CrashStreak {
    /// Record a crash of a worker that lived `lived`; returns the delay
    /// before the next start.
    pub fn on_crash(&mut self, lived: Duration, policy: &RestartPolicy) -> Duration {
        if lived >= policy.stable_after {
            self.crashes = 0;
        }
        self.crashes += 1;
        if self.crashes == 1 {
            return Duration::ZERO;
        }
        let exp = (self.crashes - 2).min(16);
        policy.base.saturating_mul(1 << exp).min(policy.cap)
    }
}

/// A pending restart.
#[derive(Debug, Clone)]
pub struct PendingRestart {
    pub at: Instant,
    pub reason: String,
    /// Generation of the worker that died.
    pub after: u64,
}

/// Restarting's state: the policy, the crash streak, the restart waiting
/// out its backoff, the count. Pure: its moves say what to start and when;
/// the daemon's side (below) starts it.
#[derive(Debug, Default)]
pub struct Recovery {
    pub policy: RestartPolicy,
    pub streak: CrashStreak,
    /// A restart waiting for its time.
    pub waiting: Option<PendingRestart>,
    /// Unplanned restarts since the supervisor started.
    pub restarts: u64,
}

impl Recovery {
    /// Worker `after` died for `reason` after living `lived`; `new_build`:
    /// the next start runs another build (a probation fallback), whose
    /// streak starts afresh. Returns the restart to start now, or `None`
    /// when it waits out a backoff (see [`Recovery::next_at`]).
    pub fn on_crash(
        &mut self,
        after: u64,
        reason: String,
        lived: Duration,
        new_build: bool,
        now: Instant,
    ) -> Option<PendingRestart> {
        if new_build {
            self.streak = CrashStreak::default();
        }
        let delay = self.streak.on_crash(lived, &self.policy);
        let restart = PendingRestart {
            at: now + delay,
            reason,
            after,
        };
        if delay.is_zero() {
            self.waiting = None;
            return Some(restart);
        }
        self.waiting = Some(restart);
        None
    }

    /// When the waiting restart is due.
    pub fn next_at(&self) -> Option<Instant> {
        self.waiting.as_ref().map(|r| r.at)
    }

    /// Its time came: the restart to start.
    pub fn due(&mut self) -> Option<PendingRestart> {
        self.waiting.take()
    }

    /// A recovery worker runs.
    pub fn started(&mut self) {
        self.restarts += 1;
    }

    /// The recovery worker could not be started: try again after the
    /// longest backoff.
    pub fn retry_later(&mut self, restart: PendingRestart, now: Instant) {
        self.waiting = Some(PendingRestart {
            at: now + self.policy.cap,
            ..restart
        });
    }
}

/// The leftovers a frozen worker handed to successor `generation`, kept until
/// that successor consumes its first message. Should it die before, its
/// recovery gets them too (with the frozen snapshot, the newest checkpoint
/// then): a successor that crashes right after commit loses nothing.
#[derive(Debug, Clone)]
pub struct HandedLeftovers {
    pub generation: u64,
    pub conns: Vec<handoff_protocol::worker::ConnLeftovers>,
}

impl HandedLeftovers {
    /// Keep `conns`' leftovers for successor `generation`, but not their TLS
    /// sessions: those are never reused after a crash, so the supervisor
    /// holds no key longer than the handoff that carries it.
    pub fn without_secrets(
        generation: u64,
        conns: &[handoff_protocol::worker::ConnLeftovers],
    ) -> Self {
        let conns = conns
            .iter()
            .map(|c| handoff_protocol::worker::ConnLeftovers {
                id: c.id,
                leftovers: c.leftovers.clone(),
                tls: None,
            })
            .collect();
        HandedLeftovers { generation, conns }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_stable_run() {
        let p = RestartPolicy::default();
        let mut s = CrashStreak::default();
        let short = Duration::from_millis(10);
        let delays: Vec<_> = (0..9).map(|_| s.on_crash(short, &p)).collect();
        assert_eq!(delays[0], Duration::ZERO);
        assert_eq!(delays[1], Duration::from_millis(100));
        assert_eq!(delays[2], Duration::from_millis(200));
        assert_eq!(delays[3], Duration::from_millis(400));
        assert_eq!(*delays.last().unwrap(), p.cap);
        assert_eq!(
            s.on_crash(p.stable_after, &p),
            Duration::ZERO,
            "a stable run resets the streak"
        );
    }

    #[test]
    fn a_crash_restarts_at_once_then_waits_and_a_new_build_starts_afresh() {
        let mut r = Recovery::default();
        let now = Instant::now();
        let short = Duration::from_millis(10);
        let first = r.on_crash(3, "exit 1".into(), short, false, now);
        assert_eq!(first.as_ref().map(|p| p.after), Some(3), "at once");
        assert_eq!(r.next_at(), None);
        r.started();
        assert!(r.on_crash(4, "exit 1".into(), short, false, now).is_none());
        assert_eq!(r.next_at(), Some(now + r.policy.base), "backs off");
        let due = r.due().unwrap();
        assert_eq!((due.after, due.reason.as_str()), (4, "exit 1"));
        assert_eq!(r.next_at(), None);
        r.retry_later(due, now);
        assert_eq!(
            r.next_at(),
            Some(now + r.policy.cap),
            "spawn failed: retried"
        );
        // A probation fallback runs another build: at once again.
        assert!(r.on_crash(5, "signal 9".into(), short, true, now).is_some());
        assert_eq!(r.next_at(), None, "the waiting restart is superseded");
        assert_eq!(r.restarts, 1);
    }
}

/// How often the daemon checks the active worker's heartbeats.
pub const HEARTBEAT_CHECK_EVERY: Duration = Duration::from_millis(250);

mod daemon_side {
    use handoff_protocol::worker::{ConnRestore, Hello, Restore, RestoreMode, ToWorker};
    use tracing::{error, info, warn};

    use super::{PendingRestart, StartPlan};
    use crate::daemon::Daemon;
    use crate::proc::{Lifecycle, WorkerProc};

    impl Daemon {
        /// The active worker `gone` exited while nobody asked it to.
        pub(crate) fn on_unplanned_exit(&mut self, gone: &WorkerProc, status: String) {
            let reason = format!("worker pid {} exited unexpectedly ({status})", gone.pid);
            error!(
                held = self.held.len(),
                "{reason}; the connections are still held"
            );
            self.history.push(format!("{reason}; connections held"));
            self.last_exit = Some(match self.first_start.last_words_of_exit() {
                Some(words) => format!("pid {} {status}: {words}", gone.pid),
                None => format!("pid {} {status}", gone.pid),
            });
            if let crate::first_start::AfterExit::GiveUp(why) = self.first_start.on_exit(&status) {
                error!("{why}: giving up (--start-attempts)");
                self.history.push(format!("gave up: {why}"));
                self.give_up(why);
                return;
            }
            let new_build = self.fall_back_if_on_probation(gone, &status);
            let now = tokio::time::Instant::now();
            let lived = gone.started.elapsed();
            match self
                .recovery
                .on_crash(gone.generation, reason, lived, new_build, now)
            {
                Some(restart) => self.start_recovery(restart),
                None => warn!(
                    delay = ?self.recovery.next_at().map(|at| at - now),
                    crashes = self.recovery.streak.crashes,
                    "crash loop: backing off before the next start"
                ),
            }
        }

        /// The backoff delay has passed.
        pub(crate) fn restart_now(&mut self) {
            if let Some(p) = self.recovery.due() {
                self.start_recovery(p);
            }
        }

        fn start_recovery(&mut self, restart: PendingRestart) {
            let gen = self.take_generation();
            let Some(build) = self.current.clone() else {
                return;
            };
            let plan = StartPlan::Recover {
                reason: restart.reason.clone(),
                after: restart.after,
            };
            match self.spawn_worker(gen, &build, plan) {
                Ok(proc) => {
                    info!(pid = proc.pid, generation = gen, reason = %restart.reason, "starting a worker in recovery mode");
                    self.recovery.started();
                    self.history.push(format!(
                        "recovery: worker pid {} started from {} ({})",
                        proc.pid,
                        build.source.display(),
                        restart.reason
                    ));
                    self.active = Some(proc);
                }
                Err(e) => {
                    error!(error = %e, "cannot start a recovery worker; retrying");
                    let now = tokio::time::Instant::now();
                    self.recovery.retry_later(restart, now);
                }
            }
        }

        /// A recovery worker said Hello: hand it the newest checkpoint and
        /// every held connection. The dead worker could not hand leftovers
        /// over (the kernel sits at a frame boundary), unless it was a
        /// successor that died before consuming anything: then its
        /// predecessor's leftovers, still held, go along.
        pub(crate) fn send_recovery(&mut self, hello: Hello, reason: String, after: u64) {
            let dups = match self.held.duplicate_all() {
                Ok(d) => d,
                Err(e) => {
                    error!(error = %e, "cannot duplicate held sockets for recovery");
                    Vec::new()
                }
            };
            let snapshot = self.checkpoint.as_ref().map(|c| c.snapshot.clone());
            let handed = self
                .handed_leftovers
                .take()
                .filter(|h| h.generation == after);
            if handed.is_some() {
                info!("the dead worker consumed nothing: its predecessor's leftovers go with the recovery");
            }
            let mut conns = Vec::with_capacity(dups.len());
            let mut fds = Vec::with_capacity(dups.len());
            for (info, fd) in dups {
                let leftovers = handed
                    .as_ref()
                    .and_then(|h| h.conns.iter().find(|c| c.id == info.id))
                    .map(|c| c.leftovers.clone())
                    .unwrap_or_default();
                // A TLS session is never continued after a crash: the dead
                // worker may have written records past any sequence number
                // known here, and a reused nonce breaks the cipher.
                conns.push(ConnRestore {
                    info,
                    leftovers,
                    tls: None,
                });
                fds.push(fd);
            }
            let Some(a) = self.active.as_mut() else {
                return;
            };
            info!(pid = a.pid, conns = conns.len(), checkpoint = snapshot.is_some(), %reason, "recovering");
            a.life = Lifecycle::Recovering { hello };
            let carried = self
                .checkpoint
                .as_ref()
                .map(|c| c.carried.clone())
                .unwrap_or_default();
            a.send(ToWorker::Carried(carried), Vec::new());
            let restore = Restore {
                mode: RestoreMode::Recovery,
                snapshot,
                conns,
                digest: None,
            };
            a.send(ToWorker::Restore(restore), fds);
        }

        /// Kill the active worker if it has been silent too long (its event
        /// loop is stuck); its exit then starts a recovery.
        pub(crate) fn check_heartbeat(&mut self) {
            let limit = self.cfg.timeouts.heartbeat;
            let Some(a) = self.active.as_mut() else {
                return;
            };
            let watched = matches!(
                a.life,
                Lifecycle::Running { .. } | Lifecycle::Frozen { .. } | Lifecycle::Recovering { .. }
            );
            if let Some(closed) = a.channel_closed {
                if closed.elapsed() > crate::handoff::EXIT_STATUS_GRACE {
                    let line = format!(
                        "worker pid {} closed its channel and did not exit: killed",
                        a.pid
                    );
                    error!("{line}");
                    a.kill();
                    a.channel_closed = None;
                    self.history.push(line);
                }
                return;
            }
            let silent = a.silent_for();
            if watched && silent > limit {
                error!(
                    pid = a.pid,
                    ?silent,
                    "worker missed its heartbeats; killing it to recover"
                );
                let line = format!("worker pid {} silent for {silent:?}: killed", a.pid);
                a.kill();
                a.mark_heard();
                self.history.push(line);
            }
        }
    }
}
