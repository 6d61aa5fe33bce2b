//! Feeds by name: a worker's configured feeds are matched with the
//! connections it was handed *by name*, never by position, so a build whose
//! feed list changed gets what it asks for:
//!
//! - a handed connection whose name this build also configures, at the same
//!   URL, is kept;
//! - one whose URL changed is closed (close frame) and the feed opened at
//!   its new URL;
//! - one this build does not configure is closed with a close frame;
//! - a configured feed no connection was handed for is opened.
//!
//! The plan is made at `Restore`, reported to the supervisor before `Ready`
//! (`upgrade --wait` prints it, `log` keeps it: nothing changes silently),
//! and carried out only after `Go`: until then the old worker may be thawed
//! and carry on with every connection.

use handoff_protocol::worker::{ConnId, ConnInfo, FromWorker};
use thiserror::Error;
use tracing::{info, warn};

use crate::conn::Feed;

/// A bad `--feed` specification.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FeedSpecError {
    #[error("feed name {name:?}: use letters, digits, '-', '_' or '.' (as in market=wss://…)")]
    BadName { name: String },
    #[error("two feeds are named {name:?}")]
    Duplicate { name: String },
    #[error("feed {spec:?} has no URL")]
    NoUrl { spec: String },
}

impl Feed {
    /// Feeds from `--feed` specifications: `NAME=URL`, or a bare `URL`
    /// named `feed-<i>` by its position `i` in the list.
    pub fn from_specs(specs: &[String]) -> Result<Vec<Feed>, FeedSpecError> {
        let mut feeds: Vec<Feed> = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            // A URL has "://" before any '=' (which can only be in its query).
            let named = spec
                .split_once('=')
                .filter(|(name, _)| !name.contains(':') && !name.contains('/'));
            let feed = match named {
                Some((name, url)) => {
                    let ok = !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                    if !ok {
                        return Err(FeedSpecError::BadName { name: name.into() });
                    }
                    if url.is_empty() {
                        return Err(FeedSpecError::NoUrl { spec: spec.clone() });
                    }
                    Feed {
                        name: name.into(),
                        url: url.into(),
                    }
                }
                None => Feed {
                    name: format!("feed-{i}"),
                    url: spec.clone(),
                },
            };
            if feeds.iter().any(|f| f.name == feed.name) {
                return Err(FeedSpecError::Duplicate { name: feed.name });
            }
            feeds.push(feed);
        }
        Ok(feeds)
    }
}

/// What a successor (or a recovering worker) does about its feeds after
/// `Go`, and what it tells the supervisor.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct FeedPlan {
    /// Handed connections to close with a close frame, and why.
    pub close: Vec<(ConnId, String)>,
    /// One line per change, for the supervisor's log.
    pub changes: Vec<String>,
}

/// Compare this build's `mine` with the `handed` connections (the previous
/// build's feeds were `previous`, as it carried them).
pub(crate) fn plan(
    mine: &[Feed],
    previous: &[(String, String)],
    opened: &[(String, String)],
    handed: &[ConnInfo],
) -> FeedPlan {
    let mut p = FeedPlan::default();
    for c in handed {
        // Opened by the app at run time: the app's, not the configuration's.
        if opened.iter().any(|(name, _)| *name == c.name) {
            continue;
        }
        match mine.iter().find(|f| f.name == c.name) {
            Some(f) if f.url == c.url => {}
            Some(f) => {
                p.close
                    .push((c.id, format!("feed {} moved to {}", c.name, f.url)));
                p.changes.push(format!(
                    "feed {}: URL changed from {} to {}: reopened",
                    c.name, c.url, f.url
                ));
            }
            None => {
                p.close
                    .push((c.id, format!("feed {} is not configured any more", c.name)));
                p.changes.push(format!(
                    "feed {} ({}): not in this build's configuration: closed",
                    c.name, c.url
                ));
            }
        }
    }
    for f in mine {
        let handed_here = handed.iter().any(|c| c.name == f.name);
        let known_before = previous.iter().any(|(name, _)| *name == f.name);
        if !handed_here && !known_before {
            p.changes.push(format!(
                "feed {} ({}): new in this build: opened",
                f.name, f.url
            ));
        }
    }
    p
}

impl<A: crate::App> crate::serve::Worker<A> {
    /// Tell the supervisor what changes (before `Ready`).
    pub(crate) async fn report_feed_changes(&mut self, plan: &FeedPlan) {
        for line in &plan.changes {
            info!("{line}");
        }
        if !plan.changes.is_empty() {
            self.tell(&FromWorker::FeedChanges(plan.changes.clone()))
                .await;
        }
    }

    /// After `Go`: close what the plan closes (the caller then opens the
    /// feeds no connection is left for).
    pub(crate) async fn close_unwanted(&mut self, plan: FeedPlan) {
        for (id, why) in plan.close {
            let Some(idx) = self.conns.iter().position(|c| c.info.id == id) else {
                continue;
            };
            let mut conn = self.conns.remove(idx);
            if !conn.close_handshake(self.settings.close_timeout).await {
                warn!(conn = %id, "close handshake did not complete");
            }
            self.tell(&FromWorker::Unregister { id, reason: why }).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_protocol::worker::ConnKind;

    fn feed(name: &str, url: &str) -> Feed {
        Feed {
            name: name.into(),
            url: url.into(),
        }
    }

    fn conn(id: u32, name: &str, url: &str) -> ConnInfo {
        ConnInfo {
            id: ConnId(id),
            name: name.into(),
            kind: ConnKind::WebSocket,
            url: url.into(),
            peer: "127.0.0.1:1".into(),
        }
    }

    #[test]
    fn specs_name_feeds_or_number_them_by_position() {
        let specs = [
            "ws://a/ws".to_string(),
            "book=wss://b/ws?x=1".into(),
            "ws://c/ws?k=v".into(),
        ];
        let feeds = Feed::from_specs(&specs).unwrap();
        assert_eq!(feeds[0], feed("feed-0", "ws://a/ws"));
        assert_eq!(feeds[1], feed("book", "wss://b/ws?x=1"));
        assert_eq!(feeds[2], feed("feed-2", "ws://c/ws?k=v"));
        let bad = |s: &str| Feed::from_specs(&[s.to_string()]).unwrap_err();
        assert!(matches!(bad("b@d=ws://x"), FeedSpecError::BadName { .. }));
        assert!(matches!(bad("name="), FeedSpecError::NoUrl { .. }));
        let twice = ["a=ws://x".to_string(), "a=ws://y".into()];
        assert!(matches!(
            Feed::from_specs(&twice),
            Err(FeedSpecError::Duplicate { .. })
        ));
    }

    #[test]
    fn a_url_no_connection_can_be_opened_to_is_told_apart_without_the_network() {
        for ok in ["ws://a:1/ws", "wss://b/ws?x=1", "ws://[::1]:9/"] {
            assert!(feed("f", ok).check_url().is_ok(), "{ok}");
        }
        for (url, says) in [
            ("http://a/ws", "only ws:// and wss://"),
            ("not a url", "invalid uri"),
            ("ws:///path", "invalid format"),
        ] {
            match feed("f", url).check_url() {
                Err(crate::conn::ConnError::BadUrl {
                    name,
                    url: u,
                    reason,
                }) => {
                    assert_eq!((name.as_str(), u.as_str()), ("f", url));
                    assert!(reason.contains(says), "{url}: {reason}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn handed_connections_are_matched_by_name_and_every_change_is_said() {
        let mine = [
            feed("market", "ws://x/a"),
            feed("book", "ws://x/new"),
            feed("extra", "ws://x/e"),
        ];
        let previous = [
            ("market".to_string(), "ws://x/a".to_string()),
            ("book".into(), "ws://x/old".into()),
            ("gone".into(), "ws://x/g".into()),
        ];
        let handed = [
            conn(0, "market", "ws://x/a"),
            conn(1, "book", "ws://x/old"),
            conn(2, "gone", "ws://x/g"),
        ];
        let p = plan(&mine, &previous, &[], &handed);
        assert_eq!(
            p.close.iter().map(|(id, _)| id.0).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(p.changes.len(), 3, "{:?}", p.changes);
        assert!(p.changes[0].contains("book: URL changed from ws://x/old to ws://x/new"));
        assert!(p.changes[1].contains("gone (ws://x/g): not in this build's configuration"));
        assert!(p.changes[2].contains("extra (ws://x/e): new in this build"));
        // The same configuration on both sides: nothing to say or do.
        let same = plan(&mine[..1], &previous[..1], &[], &handed[..1]);
        assert_eq!(same, FeedPlan::default());
        // A feed the previous build had but whose connection is gone (a
        // crash tore it) is opened again without being called new.
        assert!(plan(&mine[..1], &previous[..1], &[], &[])
            .changes
            .is_empty());
        // A connection the app opened at run time is the app's: kept.
        let opened = [("user".to_string(), "ws://x/u".to_string())];
        let user = [conn(5, "user", "ws://x/u")];
        assert_eq!(
            plan(&mine[..1], &previous[..1], &opened, &user),
            FeedPlan::default()
        );
    }
}
