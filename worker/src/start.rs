//! How a worker starts: standalone, fresh under a supervisor, or by taking
//! over from a previous worker (handoff or recovery).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use handoff_protocol::worker::{
    ConnId, ConnKind, FromWorker, Hello, Restore, RestoreMode, ToWorker,
};
use handoff_protocol::PROTOCOL_VERSION;
use tracing::{info, warn};

use crate::app::{App, Identity, Outbox};
use crate::conn::{Conn, Feed};
use crate::error::{RestoreError, WorkerError};
use crate::fault::{self, FaultAction, FaultPoint};
use crate::link::Link;
use crate::serve::{Awaiting, Worker};
use crate::settings::Settings;

/// How the runtime ended, for the binary's exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Handed everything to a successor and exited without touching the
    /// connections.
    HandedOver,
    /// Stopped on request; connections closed cleanly.
    Stopped,
    /// A takeover was refused (the reason went to the supervisor).
    Rejected(String),
    /// The supervisor abandoned this (not yet live) successor.
    Abandoned,
}

/// Run `app` until it hands over, stops or fails.
///
/// Under a supervisor (`HANDOFF_FD` set) the worker says Hello and is told
/// whether to start fresh (open `feeds` itself) or to take over connections
/// and state. Without one it opens `feeds` and serves alone, stopping on
/// SIGTERM or SIGINT.
pub async fn run<A: App>(
    feeds: Vec<Feed>,
    settings: Settings,
    fresh: impl FnOnce() -> A,
) -> Result<Ended, WorkerError> {
    fault::hit(FaultPoint::Start).await;
    keep_tls_keys_out_of_core_dumps(&feeds)?;
    // Built first: its identity is what Hello says.
    let mut app = fresh();
    let Some(mut link) = Link::from_env()? else {
        info!("no supervisor: running standalone");
        let mut worker = Worker::new(app, settings, None);
        worker.configured = feeds.clone();
        worker.open_feeds(&feeds).await?;
        return worker.serve(Awaiting::Nothing).await;
    };
    fault::hit(FaultPoint::BeforeHello).await;
    link.send(&FromWorker::Hello(hello(
        &app.identity(),
        app.precopy(),
        &settings,
    )))
    .await?;
    // What the library carried with a state to restore comes first; before
    // it, a pre-copy may warm the app.
    let mut carried = Default::default();
    let mut sink = crate::precopy::Sink::default();
    let (first, fds) = loop {
        match link.recv().await? {
            Some((ToWorker::Carried(c), _)) => carried = c,
            Some((ToWorker::Warm(part), fds)) => {
                let round = part.round;
                // The whole state is bulk work beside a serving worker:
                // it yields every core that worker (and the feed) wants.
                let warmed = if round == 0 {
                    handoff_protocol::image::run_idle(|| sink.warm(&mut app, part, fds))
                } else {
                    sink.warm(&mut app, part, fds)
                };
                match warmed {
                    Ok(took_ns) => link.send(&FromWorker::Warmed { round, took_ns }).await?,
                    Err(e) => {
                        let reason = RestoreError::PreCopy(e).to_string();
                        warn!(%reason, "refusing the pre-copy");
                        link.send(&FromWorker::Rejected {
                            reason: reason.clone(),
                        })
                        .await?;
                        return Ok(Ended::Rejected(reason));
                    }
                }
            }
            Some(first) => break first,
            None => {
                return Err(WorkerError::SupervisorGone {
                    when: "before the start command",
                })
            }
        }
    };
    match first {
        ToWorker::StartFresh => {
            info!("starting fresh");
            let mut worker = Worker::new(app, settings, Some(link));
            worker.configured = feeds.clone();
            if let Some(dir) = worker.state_dir.clone() {
                worker.serving = Some(crate::orphan::serving_lock_now(&dir)?);
            }
            if let Err(e) = worker.open_feeds(&feeds).await {
                return Err(worker.failed(e).await);
            }
            worker.serve(Awaiting::Nothing).await
        }
        ToWorker::Restore(restore) => {
            let parts = Parts {
                app,
                restore,
                fds,
                sink,
            };
            take_over(parts, carried, feeds, settings, link).await
        }
        ToWorker::Exit | ToWorker::Stop => Ok(Ended::Abandoned),
        other => Err(WorkerError::Unexpected {
            when: "before start",
            what: format!("{other:?}"),
        }),
    }
}

/// What this build says to a supervisor.
pub(crate) fn hello(
    id: &Identity,
    precopy: handoff_protocol::worker::PreCopyMode,
    settings: &Settings,
) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        pid: std::process::id(),
        build_id: settings.build_id.clone(),
        app: id.name.clone(),
        writes_schema: id.schema,
        can_write: id.writes.clone(),
        reads_schemas: fault::reads_schemas_override().unwrap_or_else(|| id.reads.clone()),
        precopy,
    }
}

/// A worker with `wss://` feeds will hold TLS keys: from its handshakes, or
/// from the sessions that arrive with its first command in a handoff. It
/// stops being dumpable before either (handshakes and takeovers see to it
/// again for connections opened otherwise).
fn keep_tls_keys_out_of_core_dumps(feeds: &[Feed]) -> Result<(), WorkerError> {
    if feeds.iter().any(Feed::is_tls) {
        handoff_protocol::tls::keep_keys_out_of_core_dumps().map_err(WorkerError::Undumpable)?;
    }
    Ok(())
}

/// What a takeover restores from: the app (warmed by a pre-copy, or
/// fresh), the `Restore` and its descriptors.
struct Parts<A> {
    app: A,
    restore: Restore,
    fds: Vec<OwnedFd>,
    sink: crate::precopy::Sink,
}

async fn take_over<A: App>(
    parts: Parts<A>,
    carried: handoff_protocol::worker::Carried,
    feeds: Vec<Feed>,
    settings: Settings,
    mut link: Link,
) -> Result<Ended, WorkerError> {
    let mode = parts.restore.mode;
    let warmed = parts.restore.digest.is_some();
    let restored = match crate::carried::CarriedState::decode(&carried) {
        Ok(c) => restore_parts(parts).await.map(|parts| (parts, c)),
        Err(why) => Err(RestoreError::Carried(why)),
    };
    let restored = match (restored, fault::hit(FaultPoint::AfterRestore).await) {
        (Ok(_), FaultAction::Reject) => Err(RestoreError::Injected),
        (r, _) => r,
    };
    let ((app, conns, stale), carried) = match restored {
        Ok(parts) => parts,
        Err(e) => {
            let reason = e.to_string();
            warn!(%reason, "refusing the takeover");
            link.send(&FromWorker::Rejected {
                reason: reason.clone(),
            })
            .await?;
            return Ok(Ended::Rejected(reason));
        }
    };
    // Feeds by name: what changes after Go is said now (see `feeds`).
    let handed: Vec<_> = conns.iter().map(|c| c.info.clone()).collect();
    let feed_plan = crate::feeds::plan(&feeds, &carried.feeds, &carried.opened, &handed);
    info!(?mode, conns = conns.len(), "restored; ready");
    let mut worker = Worker::new(app, settings, Some(link));
    worker.configured = feeds.clone();
    worker.checkpoint_soon = warmed;
    worker.report_feed_changes(&feed_plan).await;
    let Some(link) = worker.link.as_mut() else {
        return Err(WorkerError::SupervisorGone {
            when: "before Ready",
        });
    };
    link.send(&FromWorker::Ready).await?;
    fault::hit(FaultPoint::AfterReady).await;
    worker.adopt(conns);
    worker.timers = crate::timers::Timers::from_pairs(carried.timers);
    worker.opened.feeds = carried
        .opened
        .into_iter()
        .map(|(name, url)| Feed { name, url })
        .collect();
    worker.opened.since = carried.since.into_iter().collect();
    // Nothing is consumed (or written) before Go: until then the old worker
    // may still be thawed and carry on.
    if !worker.await_go().await? {
        return Ok(Ended::Abandoned);
    }
    fault::hit(FaultPoint::AfterGo).await;
    // Nothing is consumed, and no effect starts, before this worker is the
    // only one serving: the previous one lets go at Exit (or by dying).
    if let Some(dir) = worker.state_dir.clone() {
        worker.serving = Some(crate::orphan::serving_lock_after_go(&dir).await?);
    }
    worker.drop_stale(stale).await?;
    worker.close_unwanted(feed_plan).await;
    // Feeds this build wants, and connections the app opened, that no
    // connection is held for (a crash tore it, or it is new).
    let opened = worker.opened.feeds.clone();
    let missing: Vec<Feed> = feeds
        .into_iter()
        .chain(opened)
        .filter(|f| !worker.conns().iter().any(|c| c.info.name == f.name))
        .collect();
    if let Err(e) = worker.open_feeds(&missing).await {
        return Err(worker.failed(e).await);
    }
    if mode == RestoreMode::Recovery {
        // Deadlines that passed while no worker served fire now, late.
        worker.timers.late_before(crate::timers::now_unix_ms());
    }
    worker.took_over(mode).await;
    let awaiting = match mode {
        RestoreMode::Handoff => Awaiting::FirstMessage,
        RestoreMode::Recovery => Awaiting::Nothing,
    };
    worker.serve(awaiting).await
}

/// A handed-over connection that cannot be continued: a TLS session after a
/// crash (its record sequence numbers died with the worker). It is closed
/// and its feed opened again.
pub(crate) struct Stale {
    id: ConnId,
    name: String,
}

async fn restore_parts<A: App>(
    parts: Parts<A>,
) -> Result<(A, Vec<Conn>, Vec<Stale>), RestoreError> {
    let Parts {
        mut app,
        restore,
        fds,
        mut sink,
    } = parts;
    if fds.len() != restore.conns.len() {
        return Err(RestoreError::FdCount {
            conns: restore.conns.len(),
            fds: fds.len(),
        });
    }
    match (&restore.snapshot, restore.digest) {
        // After a pre-copy: the catch-up, onto the warmed state.
        (Some(part), Some(digest)) => sink.finish(&mut app, part, digest)?,
        (None, Some(_)) => {
            return Err(RestoreError::App(crate::app::AppError::new(
                "a pre-copy's catch-up without its bytes",
            )))
        }
        (Some(snap), None) => {
            let id = app.identity();
            snap.verify(&id.name, &id.reads)?;
            app.restore(snap.schema, &snap.bytes, restore.mode)
                .map_err(RestoreError::App)?;
        }
        // A crash before the first checkpoint: the app starts empty on the
        // connections that were kept open.
        (None, None) if restore.mode == RestoreMode::Recovery => {}
        (None, None) => {
            return Err(RestoreError::App(crate::app::AppError::new(
                "no snapshot to restore from",
            )))
        }
    }
    let mut conns = Vec::with_capacity(fds.len());
    let mut stale = Vec::new();
    for (c, fd) in restore.conns.into_iter().zip(fds) {
        // Only a recovery may drop a connection: in a handoff the previous
        // worker may yet be thawed and carry on with it (a TLS connection
        // without its session is refused below, and so is the takeover).
        let recovery = restore.mode == RestoreMode::Recovery;
        if recovery && c.info.kind == ConnKind::WebSocketTls && c.tls.is_none() {
            // FIN to the server now (the supervisor's copy would keep the
            // socket open): the feed is opened again after Go.
            let _ = nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
            stale.push(Stale {
                id: c.info.id,
                name: c.info.name,
            });
            continue;
        }
        conns.push(Conn::resume(c.info, fd, c.leftovers, c.tls.as_ref()).await?);
    }
    Ok((app, conns, stale))
}

impl<A: App> Worker<A> {
    /// Open `feeds` fresh, let the app subscribe, and register each with the
    /// supervisor.
    pub(crate) async fn open_feeds(&mut self, feeds: &[Feed]) -> Result<(), WorkerError> {
        for feed in feeds {
            let id = self.next_conn_id();
            let conn = Conn::open(id, feed, &self.settings).await?;
            info!(conn = %conn.info.id, name = %conn.info.name, peer = %conn.info.peer, "connected");
            self.opened_now(&conn.info.name);
            self.register(&conn).await;
            if let Some(j) = self.source.as_mut().and_then(|s| s.journal()) {
                j.open(&conn.info);
            }
            let mut out = Outbox::default();
            self.app.on_open(&conn.info, &mut out);
            self.push_conn(conn);
            self.write_outbox(out).await;
        }
        Ok(())
    }

    /// Tell the supervisor to drop the connections that cannot be continued;
    /// their feeds count as missing and are opened fresh.
    pub(crate) async fn drop_stale(&mut self, stale: Vec<Stale>) -> Result<(), WorkerError> {
        for s in stale {
            self.id_floor = self.id_floor.max(s.id.0.saturating_add(1));
            warn!(conn = %s.id, name = %s.name, "TLS session not continued after a crash: connecting again");
            self.tell(&FromWorker::Unregister {
                id: s.id,
                reason: "TLS session cannot be continued after a crash; re-established".into(),
            })
            .await;
        }
        Ok(())
    }

    /// Give the supervisor its copy of `conn`'s socket. Returns false when
    /// the supervisor is gone (this worker is an orphan from then on).
    pub(crate) async fn register(&mut self, conn: &Conn) -> bool {
        let Some(link) = self.link.as_mut() else {
            return false;
        };
        let sent = link
            .send_with_fd(
                &FromWorker::Register(conn.info.clone()),
                conn.ws.get_ref().as_fd(),
            )
            .await;
        match sent {
            Ok(()) => true,
            Err(e) => {
                self.orphaned(&format!("cannot reach the supervisor ({e})"));
                false
            }
        }
    }

    pub(crate) fn next_conn_id(&mut self) -> ConnId {
        let id = self
            .conns()
            .iter()
            .map(|c| c.info.id.0.saturating_add(1))
            .max()
            .unwrap_or(0)
            .max(self.id_floor);
        // Ids come from a predecessor's Restore too: never overflow on one.
        self.id_floor = id.saturating_add(1);
        ConnId(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_with_wss_feeds_is_not_dumpable_from_its_start() {
        let feed = |url: &str| Feed {
            name: "feed-0".into(),
            url: url.into(),
        };
        assert!(!feed("ws://x/ws").is_tls());
        assert!(feed("wss://x/ws").is_tls());
        assert!(!feed("not a url").is_tls());
        // Other tests in this process only ever clear the flag, so this one
        // cannot fail through them.
        nix::sys::prctl::set_dumpable(true).unwrap();
        keep_tls_keys_out_of_core_dumps(&[feed("ws://a/ws"), feed("wss://b/ws")]).unwrap();
        assert!(!nix::sys::prctl::get_dumpable().unwrap());
    }
}
