//! The daemon: one task that owns every piece of state (the active worker, the
//! handoff phase, the held sockets, the newest checkpoint, the counters) and
//! reacts to three streams: worker events, control requests and intents.
//! Nothing blocks it: each worker's channel has its own task, so `status` and
//! "busy" answers are immediate even mid-upgrade.
//!
//! The loop (`run_with`) and the state are here; what it does with each
//! stream lives beside it: the workers' messages and exits in
//! [`crate::worker_events`], the operator's signals and requests in
//! [`crate::requests`], the newest checkpoint and its way to the disk in
//! [`crate::checkpoints`], an upgrade's steps in [`crate::upgrade`], unplanned
//! exits in [`crate::recovery`].

use std::path::PathBuf;
use std::time::Instant;

use handoff_protocol::ctl::{CtlResponse, HandoffReport, Outcome, UpgradeRequest};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::time::sleep_until;
use tracing::{info, warn};

use crate::binary;
use crate::builds::{Build, BuildStore};
use crate::checkpoints::Stored;
use crate::config::Config;
use crate::control;
use crate::handoff::machine::Event;
use crate::handoff::{Trigger, Upgrade};
use crate::held::HeldSockets;
use crate::history::History;
use crate::metrics::{MetricsError, MetricsView};
use crate::notify::Notifier;
use crate::persist::Persister;
use crate::probation::Probation;
use crate::proc::{Generation, Lifecycle, SpawnError, Tagged};
use crate::recovery::{HandedLeftovers, Recovery, HEARTBEAT_CHECK_EVERY};
use crate::signals::Intent;
use crate::upgrade::InFlight;
use crate::watch::WatchTrigger;

/// Why the daemon could not run.
#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("cannot prepare state directory {path:?}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error(transparent)]
    Binary(#[from] binary::BinaryError),
    #[error("cannot start the first worker: {0}")]
    FirstSpawn(#[from] SpawnError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("another supervisor runs on this state directory: {0}")]
    Locked(#[source] handoff_protocol::lockfile::LockError),
    #[error(transparent)]
    Adopt(#[from] crate::adopt::AdoptError),
    #[error("taking over from the previous supervisor: {0}")]
    Succession(#[from] crate::succession::SuccessionError),
    #[error("{0}")]
    NeverServed(String),
}

/// Handoff counters.
#[derive(Debug, Default)]
pub struct Stats {
    pub completed: u64,
    pub failed: u64,
    pub last: Option<HandoffReport>,
    /// (generation, A's freeze time) of the last completed handoff, to fill
    /// in its blackout when the new worker reports its first message.
    pub blackout_pending: Option<(Generation, u64)>,
}

/// How the daemon is winding down.
#[derive(Debug)]
pub(crate) enum Stopping {
    Running,
    /// Stop sent to the worker; killed at the deadline.
    Draining {
        deadline: tokio::time::Instant,
    },
    Done,
    /// A new supervisor serves the control socket and the worker: exit
    /// without touching either (see [`crate::succession`]).
    HandedOver,
    /// No worker ever served (see [`crate::first_start`]): exit non-zero
    /// with this reason.
    GaveUp(String),
}

/// All the daemon's state. See the module docs.
pub struct Daemon {
    pub(crate) cfg: Config,
    pub(crate) events: mpsc::UnboundedSender<Tagged>,
    pub(crate) active: Option<crate::proc::WorkerProc>,
    /// The running upgrade (see [`crate::upgrade`]).
    pub(crate) handoff: InFlight,
    pub(crate) held: HeldSockets,
    pub(crate) checkpoint: Option<Stored>,
    pub(crate) stats: Stats,
    pub(crate) started: Instant,
    pub(crate) next_generation: Generation,
    pub(crate) next_handoff: u64,
    /// `checkpoint --wait` clients, with when they asked: each is answered
    /// by the first checkpoint taken after that.
    pub(crate) checkpoint_waiters: Vec<(u64, mpsc::Sender<CtlResponse>)>,
    pub(crate) stopping: Stopping,
    /// The build the active worker runs (changes when an upgrade commits).
    pub(crate) current: Option<Build>,
    /// Every binary run is admitted here first (see [`crate::builds`]).
    pub(crate) store: BuildStore,
    /// Why the last worker that died unplanned went.
    pub(crate) last_exit: Option<String>,
    /// Unplanned restarts: the streak, the backoff, the count (see
    /// [`crate::recovery`]).
    pub(crate) recovery: Recovery,
    pub(crate) handed_leftovers: Option<HandedLeftovers>,
    /// The build before the last committed upgrade (for rollback), and
    /// whether the running one is on trial (see [`crate::probation`]).
    pub(crate) probation: Probation,
    /// Shown in status: the last automatic decision an operator should know.
    pub(crate) notice: Option<String>,
    /// Writes each checkpoint to the state directory.
    pub(crate) persister: Option<Persister>,
    /// The stored checkpoint is newer than the file (see `store_checkpoint`).
    pub(crate) persist_pending: bool,
    /// systemd's notify socket.
    pub(crate) systemd: Notifier,
    /// Whether systemd has been told READY=1 yet.
    pub(crate) ready_sent: bool,
    /// Counters and histograms for `/metrics`, published after every event.
    pub(crate) metrics: MetricsView,
    pub(crate) metrics_tx: watch::Sender<MetricsView>,
    /// Recent events for `supervisorctl log`.
    pub(crate) history: History,
    /// Finished downloads of `upgrade --url` come back here.
    pub(crate) downloads: mpsc::Sender<Downloaded>,
    /// `STATE_DIR/supervisor.lock`: this is the one supervisor of the state
    /// directory for as long as it lives (or passes it on).
    pub(crate) lock: handoff_protocol::lockfile::LockFile,
    /// A new supervisor binary taking over (`upgrade-supervisor`).
    pub(crate) succession: Option<crate::succession::Succession>,
    pub(crate) succession_events: mpsc::UnboundedSender<crate::succession::SuccessionEvent>,
    /// The worker let go to a new supervisor (its pid), for the record.
    pub(crate) released: Option<u32>,
    /// The final answer of `upgrade-supervisor --wait`: the process exits
    /// once it is written.
    pub(crate) last_reply: Option<mpsc::Sender<CtlResponse>>,
    /// What the active worker's library sent ahead of its next checkpoint
    /// or `Frozen`, which it belongs to.
    pub(crate) carried_ahead: handoff_protocol::worker::Carried,
    /// Whether a worker has served yet, and the failed starts until then.
    pub(crate) first_start: crate::first_start::FirstStart,
    /// Mirrors the held sockets and checkpoints into systemd's store.
    pub(crate) fdstore: Option<crate::fdstore::Keeper>,
    /// Results of adopting the worker back after a failed succession.
    pub(crate) readoptions:
        mpsc::UnboundedSender<Result<crate::adopt::Found, crate::adopt::AdoptError>>,
    /// This process's own executable, for `status`.
    pub(crate) image: crate::status::SelfImage,
}

/// A finished `upgrade --url` download, on its way back to the daemon.
#[derive(Debug)]
pub struct Downloaded {
    pub(crate) req: UpgradeRequest,
    pub(crate) result: Result<PathBuf, String>,
    pub(crate) reply: mpsc::Sender<CtlResponse>,
}

/// Run the supervisor until a graceful stop completes. `intents` are the
/// operator's signals (see [`crate::signals`]); tests pass a channel.
pub async fn run(cfg: Config, intents: mpsc::Receiver<Intent>) -> Result<(), DaemonError> {
    run_with(cfg, intents, None).await
}

/// [`run`], with what systemd handed back from its file descriptor store
/// (see [`crate::fdstore`]): the held sockets and the newest checkpoint of
/// the supervisor it restarted, recovered on as after a worker crash.
pub async fn run_with(
    cfg: Config,
    mut intents: mpsc::Receiver<Intent>,
    stored: Option<crate::fdstore::Received>,
) -> Result<(), DaemonError> {
    prepare_state_dir(&cfg)?;
    let (lock, heir, listener, beside) = crate::startup::claim(&cfg)?;
    let (ctl_tx, mut ctl_rx) = mpsc::channel(64);
    let (watch_tx, mut watch_rx) = mpsc::channel::<WatchTrigger>(1);
    if cfg.watch {
        tokio::spawn(crate::watch::watch(cfg.worker.clone(), watch_tx));
    } else {
        drop(watch_tx);
    }
    let audit_log = cfg.state_dir.join("audit.log");
    let ctl_task = tokio::spawn(control::serve(
        listener,
        ctl_tx,
        cfg.timeouts.ctl_read,
        audit_log,
        cfg.access.clone(),
    ));
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let socket = cfg.socket.clone();
    let (metrics_tx, metrics_rx) = watch::channel(MetricsView::default());
    let cfg_state_dir = cfg.state_dir.clone();
    let cfg_start_attempts = cfg.start_attempts;
    let (dl_tx, mut dl_rx) = mpsc::channel::<Downloaded>(4);
    let (succ_tx, mut succ_rx) = mpsc::unbounded_channel();
    let (readopt_tx, mut readopt_rx) = mpsc::unbounded_channel();
    let mut d = Daemon {
        cfg,
        events: ev_tx,
        active: None,
        handoff: InFlight::default(),
        held: HeldSockets::default(),
        checkpoint: None,
        stats: Stats::default(),
        started: Instant::now(),
        next_generation: 1,
        next_handoff: 1,
        checkpoint_waiters: Vec::new(),
        stopping: Stopping::Running,
        current: None,
        store: BuildStore::open(&cfg_state_dir)?,
        last_exit: None,
        recovery: Recovery::default(),
        handed_leftovers: None,
        probation: Probation::default(),
        notice: None,
        persister: None,
        persist_pending: false,
        systemd: Notifier::from_env(),
        ready_sent: false,
        metrics: MetricsView::default(),
        metrics_tx,
        history: History::default(),
        downloads: dl_tx,
        lock,
        image: crate::status::SelfImage::of_this_process(),
        succession: None,
        succession_events: succ_tx,
        released: None,
        last_reply: None,
        readoptions: readopt_tx,
        fdstore: None,
        carried_ahead: Default::default(),
        first_start: crate::first_start::FirstStart::new(cfg_start_attempts),
    };
    if let Some(addr) = d.cfg.metrics.clone() {
        let listener = crate::metrics::bind(&addr, &d.cfg.state_dir).await?;
        tokio::spawn(crate::metrics::serve(listener, metrics_rx));
    }
    d.take_office(heir, beside, stored).await?;

    let mut heartbeat_check = tokio::time::interval(HEARTBEAT_CHECK_EVERY);
    heartbeat_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let phase_deadline = d.handoff.phase.deadline();
        let restart_at = d.recovery.next_at();
        let probation_end = d.probation.until();
        let succession_deadline = d.succession.as_ref().map(|s| s.deadline);
        let stop_deadline = match d.stopping {
            Stopping::Draining { deadline } => Some(deadline),
            _ => None,
        };
        tokio::select! {
            Some(ev) = ev_rx.recv() => d.on_worker_event(ev),
            Some(cmd) = ctl_rx.recv() => d.on_ctl(cmd),
            Some(intent) = intents.recv() => d.on_intent(intent),
            Some(done) = dl_rx.recv() => d.on_downloaded(done),
            Some(ev) = succ_rx.recv() => d.on_succession_event(ev),
            Some(found) = readopt_rx.recv() => d.on_readopted(found),
            _ = sleep_until(succession_deadline.unwrap_or_else(far_future)), if succession_deadline.is_some() => d.on_succession_deadline(),
            Some(trigger) = watch_rx.recv() => {
                let req = UpgradeRequest { binary: None, url: None, sha256: None, wait: false };
                let started = d.start_upgrade(Trigger::Watch, &req, None).map(|_| ());
                let _ = trigger.reply.send(started.map_err(|r| (r.starts_with("busy"), r)));
            }
            _ = sleep_until(restart_at.unwrap_or_else(far_future)), if restart_at.is_some() => d.restart_now(),
            _ = heartbeat_check.tick() => d.check_heartbeat(),
            _ = sleep_until(probation_end.unwrap_or_else(far_future)), if probation_end.is_some() => d.end_probation(),
            _ = sleep_until(phase_deadline.unwrap_or_else(far_future)), if phase_deadline.is_some() => d.drive(Event::Deadline),
            _ = sleep_until(stop_deadline.unwrap_or_else(far_future)), if stop_deadline.is_some() => {
                warn!("worker did not stop in time; killing it");
                if let Some(a) = d.active.as_mut() { a.kill(); }
                d.stopping = Stopping::Done;
            }
        }
        d.publish_metrics();
        if matches!(
            d.stopping,
            Stopping::Done | Stopping::HandedOver | Stopping::GaveUp(_)
        ) {
            break;
        }
    }
    if let Some(reply) = d.last_reply.take() {
        // Let the control task write the final answer before the process
        // (and its connection) goes.
        let _ = tokio::time::timeout(d.cfg.timeouts.ctl_read, reply.closed()).await;
    }
    ctl_task.abort();
    if d.persist_pending {
        if let Some(c) = d.checkpoint.take() {
            d.persist(&c.snapshot, &c.summary, &c.carried);
        }
    }
    if let Some(p) = d.persister.take() {
        p.finish().await;
    }
    if matches!(d.stopping, Stopping::HandedOver) {
        info!("supervisor handed over to its successor");
        return Ok(());
    }
    let _ = std::fs::remove_file(&socket);
    if let Stopping::GaveUp(why) = std::mem::replace(&mut d.stopping, Stopping::Done) {
        return Err(DaemonError::NeverServed(why));
    }
    info!("supervisor stopped");
    Ok(())
}

/// The first 12 hex digits of a SHA-256, as status and logs show it.
pub(crate) fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(12)]
}

pub(crate) fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(86400 * 365)
}

fn prepare_state_dir(cfg: &Config) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| DaemonError::StateDir {
        path: cfg.state_dir.clone(),
        source,
    };
    if !cfg.state_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cfg.state_dir)
            .map_err(err)?;
    }
    Ok(())
}

impl Daemon {
    pub(crate) fn is_running(&self) -> bool {
        matches!(self.stopping, Stopping::Running)
    }

    /// A new supervisor serves: exit without touching the worker or the
    /// control socket.
    pub(crate) fn handed_over(&mut self) {
        self.stopping = Stopping::HandedOver;
    }

    pub(crate) fn take_handoff_id(&mut self) -> u64 {
        let id = self.next_handoff;
        self.next_handoff += 1;
        id
    }

    pub(crate) fn take_generation(&mut self) -> Generation {
        let g = self.next_generation;
        self.next_generation += 1;
        g
    }

    /// Refresh the gauges and hand the view to the metrics endpoint.
    fn publish_metrics(&mut self) {
        self.metrics.restarts = self.recovery.restarts;
        self.metrics.held_sockets = self.held.len();
        self.metrics.worker_up = self.active.as_ref().is_some_and(|a| {
            matches!(a.life, Lifecycle::Running { .. } | Lifecycle::Frozen { .. })
        });
        self.metrics.checkpoint = self
            .checkpoint
            .as_ref()
            .map(|c| (c.snapshot.bytes.len() as u64, c.at));
        if self.metrics_tx.receiver_count() > 0 {
            self.metrics_tx.send_replace(self.metrics.clone());
        }
    }

    /// A completed upgrade: what the notices said of the build that ran is
    /// history now (`log` keeps it).
    pub(crate) fn clear_notice(&mut self) {
        self.notice = None;
    }

    /// Stop the supervisor, non-zero, because no worker ever served.
    pub(crate) fn give_up(&mut self, why: String) {
        self.systemd.stopping();
        self.stopping = Stopping::GaveUp(why);
    }

    /// Tell systemd the worker serves (READY=1 the first time).
    pub(crate) fn serving(&mut self, status: &str) {
        self.ready_sent = true;
        self.systemd.ready(status);
    }

    /// An upgrade ended (its last milestone marked): report it to its
    /// waiters, `log`, the metrics and systemd.
    pub(crate) fn finish(
        &mut self,
        mut up: Upgrade,
        outcome: Outcome,
        error: Option<String>,
        to_pid: Option<u32>,
    ) {
        up.release_progress();
        match outcome {
            Outcome::Completed => {
                self.stats.completed += 1;
                self.clear_notice();
                info!(handoff = up.id, "handoff completed");
            }
            _ => {
                self.stats.failed += 1;
                warn!(
                    handoff = up.id,
                    outcome = outcome.as_str(),
                    error = error.as_deref().unwrap_or(""),
                    "handoff failed; the old worker serves on"
                );
            }
        }
        let report = up.report(outcome, error, to_pid);
        up.span.record("outcome", outcome.as_str());
        if let Some(p) = report.pause_us {
            up.span.record("pause_us", p);
        }
        up.span.record("total_us", up.elapsed_us());
        tracing::info!(parent: &up.span, phases = ?report.phases, error = report.error.as_deref().unwrap_or(""), "upgrade ended");
        // One event: the outcome, then its phases on the lines below.
        let mut event = format!(
            "upgrade #{} via {} to {}: {}{}",
            report.id,
            report.trigger,
            report.binary,
            report.outcome.as_str(),
            report
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        for e in &up.events {
            let detail = e
                .detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            event.push_str(&format!(
                "\n  {:<12} +{:.3} ms{detail}",
                e.phase,
                e.at_us as f64 / 1000.0
            ));
        }
        self.history.push(event);
        for w in up.waiters.drain(..) {
            let _ = w.try_send(CtlResponse::Upgrade(report.clone()));
        }
        match outcome {
            Outcome::Completed => self.metrics.completed += 1,
            Outcome::Refused => self.metrics.refused += 1,
            Outcome::RolledBack | Outcome::InProgress => self.metrics.rolled_back += 1,
        }
        if let Some(p) = report.pause_us {
            self.metrics.pause.observe_us(p);
        }
        if let Some(b) = report.blackout_us {
            self.metrics.blackout.observe_us(b);
        }
        self.metrics.observe_phases(&report.phases);
        let pid = self.active.as_ref().map(|a| a.pid).unwrap_or(0);
        let status = format!(
            "serving: worker pid {pid}; upgrade #{} {}",
            report.id,
            report.outcome.as_str()
        );
        // Keep the builds rollback and probation may need; drop the rest.
        let keep: Vec<String> = [
            self.current.as_ref(),
            self.probation.previous.as_ref().map(|p| &p.build),
        ]
        .into_iter()
        .flatten()
        .map(|b| b.sha256.clone())
        .collect();
        self.store
            .prune(&keep.iter().map(String::as_str).collect::<Vec<_>>());
        self.stats.last = Some(report);
        self.serving(&status);
        self.flush_checkpoint();
    }
}
