//! Connections the app opens and closes at run time
//! ([`Outbox::open`](crate::Outbox::open),
//! [`Outbox::close`](crate::Outbox::close)): a user-data stream whose URL a
//! REST call returned, a feed for a symbol added on the fly. Each is
//! registered with the supervisor and handed over like a configured feed,
//! and the library carries their names and URLs (and every connection's
//! age) beside the snapshot, so a successor keeps them and a recovering
//! worker opens again those a crash tore.
//!
//! Whoever ends a connection, the app hears of it through
//! [`crate::App::on_closed`]: the exchange closed it or it
//! failed (it is opened again, and `on_open` follows), the app closed it,
//! or it reached [`Settings::max_conn_age`](crate::Settings::max_conn_age)
//! (closed with a close frame and opened again, without an upgrade:
//! Binance cuts every connection after 24 h). An open whose URL can never
//! be connected to is refused at once, and the app hears that too
//! ([`Closed::Refused`]); one that fails to connect is tried again.

use std::collections::BTreeMap;

use handoff_protocol::worker::{ConnInfo, ConnKind, FromWorker};
use tracing::{info, warn};

use crate::app::{App, Outbox};
use crate::conn::Feed;
use crate::serve::Worker;
use crate::timers::now_unix_ms;

/// Why a connection ended, as the app hears it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// The exchange closed it, or reading or writing failed: it is opened
    /// again (its `on_open` follows once it is).
    Lost(String),
    /// The app closed it ([`Outbox::close`]).
    ByApp,
    /// It reached [`crate::Settings::max_conn_age`]: closed with a close
    /// frame and opened again.
    MaxAge,
    /// It was never opened and never will be: its URL cannot be connected
    /// to (not a URL, not `ws://` or `wss://`, no host), why in the words
    /// of [`crate::conn::ConnError::BadUrl`]. The [`ConnInfo`] carries the
    /// name and URL the app gave, an id no connection has, and no peer.
    Refused(String),
}

/// A connection change an app asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnOp {
    Open(Feed),
    Close(String),
}

/// The app's run-time connections and the age of every connection.
#[derive(Debug, Default)]
pub(crate) struct Opened {
    /// Opened by the app, by name (open, or lost and being reopened).
    pub feeds: Vec<Feed>,
    /// Asked for, not opened yet.
    pub pending: Vec<Feed>,
    /// Ends the app has not heard of yet.
    pub notices: Vec<(ConnInfo, Closed)>,
    /// When each connection was opened (ms since the Unix epoch), by name.
    pub since: BTreeMap<String, u64>,
}

impl<A: App> Worker<A> {
    /// Apply what a callback asked: opens wait for the serve loop (never a
    /// connect inside a callback's aftermath, never while frozen), closes
    /// happen now.
    pub(crate) async fn apply_conn_ops(&mut self, ops: Vec<ConnOp>) {
        for op in ops {
            match op {
                ConnOp::Open(feed) => {
                    let taken = self.configured.iter().any(|f| f.name == feed.name)
                        || self.opened.feeds.iter().any(|f| f.name == feed.name);
                    if taken {
                        warn!(name = %feed.name, "open: a connection of that name exists; ignored");
                        continue;
                    }
                    if let Err(e) = feed.check_url() {
                        self.refuse(feed, e.to_string());
                        continue;
                    }
                    info!(name = %feed.name, url = %feed.url, "the app opens a connection");
                    self.opened.feeds.push(feed.clone());
                    self.opened.pending.push(feed);
                }
                ConnOp::Close(name) => {
                    self.opened.feeds.retain(|f| f.name != name);
                    self.opened.pending.retain(|f| f.name != name);
                    self.lost.retain(|f| f.name != name);
                    if let Some(idx) = self.conns.iter().position(|c| c.info.name == name) {
                        self.close_conn(idx, Closed::ByApp).await;
                    }
                }
            }
        }
    }

    /// Open what the app asked for; a failure is retried like a lost feed.
    pub(crate) async fn open_pending(&mut self) {
        for feed in std::mem::take(&mut self.opened.pending) {
            if let Err(e) = self.open_feeds(std::slice::from_ref(&feed)).await {
                self.open_failed(feed, e);
            }
        }
    }

    /// A feed that could not be opened: retried at the next
    /// `reconnect_interval`, unless its URL can never be connected to
    /// (then the app is told, and it is dropped).
    pub(crate) fn open_failed(&mut self, feed: Feed, e: crate::error::WorkerError) {
        match e {
            crate::error::WorkerError::Conn(e @ crate::conn::ConnError::BadUrl { .. }) => {
                self.refuse(feed, e.to_string())
            }
            e => {
                warn!(name = %feed.name, error = %e, "cannot open; will retry");
                self.lost.push(feed);
            }
        }
    }

    /// Drop `feed` for good and queue the app's `on_closed` with
    /// [`Closed::Refused`].
    fn refuse(&mut self, feed: Feed, why: String) {
        warn!(name = %feed.name, url = %feed.url, error = %why, "cannot ever open this connection; the app is told");
        self.opened.feeds.retain(|f| f.name != feed.name);
        self.opened.pending.retain(|f| f.name != feed.name);
        let info = ConnInfo {
            id: self.next_conn_id(),
            kind: if feed.is_tls() {
                ConnKind::WebSocketTls
            } else {
                ConnKind::WebSocket
            },
            name: feed.name,
            url: feed.url,
            peer: String::new(),
        };
        self.opened.notices.push((info, Closed::Refused(why)));
    }

    /// Close connection `idx` with a close frame, unregister it, and queue
    /// the app's `on_closed`.
    pub(crate) async fn close_conn(&mut self, idx: usize, why: Closed) {
        let mut conn = self.conns.remove(idx);
        if !conn.close_handshake(self.settings.close_timeout).await {
            warn!(conn = %conn.info.id, "close handshake did not complete");
        }
        self.opened.since.remove(&conn.info.name);
        let reason = format!("{why:?}");
        self.tell(&FromWorker::Unregister {
            id: conn.info.id,
            reason,
        })
        .await;
        self.opened.notices.push((conn.info, why));
    }

    /// Tell the app of every connection that ended.
    pub(crate) fn tell_app_closed(&mut self) -> Vec<Outbox<A::Done>> {
        std::mem::take(&mut self.opened.notices)
            .into_iter()
            .map(|(info, why)| {
                if let Some(j) = self.source.as_mut().and_then(|s| s.journal()) {
                    j.closed(&info, &why);
                }
                let mut out = Outbox::default();
                self.app.on_closed(&info, &why, &mut out);
                out
            })
            .collect()
    }

    /// Close and open again every connection older than `max_conn_age`.
    pub(crate) async fn rotate_aged(&mut self) {
        let Some(max) = self.settings.max_conn_age else {
            return;
        };
        let limit = now_unix_ms().saturating_sub(max.as_millis() as u64);
        while let Some(idx) = self.conns.iter().position(|c| {
            self.opened
                .since
                .get(&c.info.name)
                .is_some_and(|&t| t <= limit)
        }) {
            let feed = Feed {
                name: self.conns[idx].info.name.clone(),
                url: self.conns[idx].info.url.clone(),
            };
            info!(name = %feed.name, ?max, "connection reached its maximum age: reconnecting");
            self.close_conn(idx, Closed::MaxAge).await;
            self.opened.pending.push(feed);
        }
    }

    /// A connection named `name` was (re)opened now.
    pub(crate) fn opened_now(&mut self, name: &str) {
        self.opened.since.insert(name.to_owned(), now_unix_ms());
    }
}
