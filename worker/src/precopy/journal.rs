//! The replay journal: every input the library delivered to the app since
//! a pre-copy round, and its replay in the successor (see the parent
//! module).

use handoff_protocol::worker::{ConnId, ConnInfo};
use serde::{Deserialize, Serialize};
use tungstenite::Message;

use super::PreCopyError;
use crate::app::{App, Outbox};
use crate::timers::Timer;

/// A message, as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Payload {
    Text(String),
    Binary(#[serde(with = "serde_bytes")] Vec<u8>),
    Ping(#[serde(with = "serde_bytes")] Vec<u8>),
    Pong(#[serde(with = "serde_bytes")] Vec<u8>),
    Close(Option<(u16, String)>),
}

impl Payload {
    fn of(msg: &Message) -> Payload {
        match msg {
            Message::Text(t) => Payload::Text(t.as_str().to_owned()),
            Message::Binary(b) => Payload::Binary(b.to_vec()),
            Message::Ping(b) => Payload::Ping(b.to_vec()),
            Message::Pong(b) => Payload::Pong(b.to_vec()),
            Message::Close(c) => Payload::Close(
                c.as_ref()
                    .map(|c| (u16::from(c.code), c.reason.as_str().to_owned())),
            ),
            // Reading never yields a raw frame.
            Message::Frame(f) => Payload::Binary(f.payload().to_vec()),
        }
    }

    fn message(self) -> Message {
        use tungstenite::protocol::frame::CloseFrame;
        match self {
            Payload::Text(t) => Message::text(t),
            Payload::Binary(b) => Message::binary(b),
            Payload::Ping(b) => Message::Ping(b.into()),
            Payload::Pong(b) => Message::Pong(b.into()),
            Payload::Close(c) => Message::Close(c.map(|(code, reason)| CloseFrame {
                code: code.into(),
                reason: reason.into(),
            })),
        }
    }
}

/// Why a connection ended, as journaled ([`crate::opened::Closed`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Ended {
    Lost(String),
    ByApp,
    MaxAge,
    Refused(String),
}

/// One input delivered to the app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Entry {
    Open(ConnId),
    Message(ConnId, Payload),
    Done(#[serde(with = "serde_bytes")] Vec<u8>),
    Timer {
        key: String,
        due_unix_ms: u64,
        late: bool,
    },
    Closed(ConnId, Ended),
}

/// The most a journal may hold between two rounds (about: the payloads
/// and a little per entry). Protects the serving worker's memory should
/// rounds stop coming (a supervisor that hangs, a successor that never
/// applies round 0 before `--precopy-timeout`): past it the journal is
/// given up, the next round fails and the upgrade is refused.
pub const JOURNAL_LIMIT: usize = 256 << 20;

/// Every input the library delivered to the app since a round, in order,
/// with the connections they name.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Journal {
    conns: Vec<ConnInfo>,
    entries: Vec<Entry>,
    /// About how many bytes the entries hold ([`JOURNAL_LIMIT`]).
    #[serde(skip)]
    pub(super) bytes: usize,
}

impl Journal {
    fn push(&mut self, entry: Entry, bytes: usize) {
        self.bytes += bytes + 16;
        self.entries.push(entry);
    }

    fn conn(&mut self, info: &ConnInfo) -> ConnId {
        if !self.conns.iter().any(|c| c == info) {
            self.conns.retain(|c| c.id != info.id);
            self.conns.push(info.clone());
        }
        info.id
    }

    /// An effect's result, as the app encoded it.
    pub(super) fn done(&mut self, bytes: Vec<u8>) {
        let n = bytes.len();
        self.push(Entry::Done(bytes), n);
    }

    pub(crate) fn open(&mut self, info: &ConnInfo) {
        let id = self.conn(info);
        self.push(Entry::Open(id), 0);
    }

    pub(crate) fn message(&mut self, info: &ConnInfo, msg: &Message) {
        let id = self.conn(info);
        self.push(Entry::Message(id, Payload::of(msg)), msg.len());
    }

    pub(crate) fn timer(&mut self, t: &Timer) {
        let entry = Entry::Timer {
            key: t.key.clone(),
            due_unix_ms: t.due_unix_ms,
            late: t.late,
        };
        self.push(entry, t.key.len());
    }

    pub(crate) fn closed(&mut self, info: &ConnInfo, why: &crate::opened::Closed) {
        use crate::opened::Closed;
        let id = self.conn(info);
        let why = match why {
            Closed::Lost(r) => Ended::Lost(r.clone()),
            Closed::ByApp => Ended::ByApp,
            Closed::MaxAge => Ended::MaxAge,
            Closed::Refused(r) => Ended::Refused(r.clone()),
        };
        self.push(Entry::Closed(id, why), 0);
    }

    pub(super) fn encode(&self) -> Result<Vec<u8>, PreCopyError> {
        bincode::serialize(self).map_err(|e| PreCopyError::Journal(e.to_string()))
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Journal, PreCopyError> {
        use bincode::Options;
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .with_limit(bytes.len() as u64)
            .deserialize(bytes)
            .map_err(|e| PreCopyError::Decode(e.to_string()))
    }

    /// Deliver every entry to `app` again, discarding whatever the
    /// callbacks ask for: the source already did it.
    pub(super) fn replay<A: App>(self, app: &mut A) -> Result<(), PreCopyError> {
        let Journal { conns, entries, .. } = self;
        let conn = |id: ConnId| {
            conns
                .iter()
                .find(|c| c.id == id)
                .ok_or_else(|| PreCopyError::Decode(format!("an entry names unknown {id}")))
        };
        for entry in entries {
            let mut out = Outbox::<A::Done>::default();
            match entry {
                Entry::Open(id) => app.on_open(conn(id)?, &mut out),
                Entry::Message(id, p) => app.on_message(conn(id)?, p.message(), &mut out),
                Entry::Done(bytes) => {
                    let done = app.decode_done(&bytes).map_err(PreCopyError::App)?;
                    app.on_done(done, &mut out);
                }
                Entry::Timer {
                    key,
                    due_unix_ms,
                    late,
                } => app.on_timer(
                    &Timer {
                        key,
                        due_unix_ms,
                        late,
                    },
                    &mut out,
                ),
                Entry::Closed(id, why) => {
                    use crate::opened::Closed;
                    let why = match why {
                        Ended::Lost(r) => Closed::Lost(r),
                        Ended::ByApp => Closed::ByApp,
                        Ended::MaxAge => Closed::MaxAge,
                        Ended::Refused(r) => Closed::Refused(r),
                    };
                    app.on_closed(conn(id)?, &why, &mut out);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_protocol::worker::ConnKind;

    fn info(id: u32) -> ConnInfo {
        ConnInfo {
            id: ConnId(id),
            name: format!("feed-{id}"),
            kind: ConnKind::WebSocket,
            url: "ws://x/ws".into(),
            peer: "127.0.0.1:1".into(),
        }
    }

    #[test]
    fn a_journal_round_trips_every_kind_of_input() {
        let mut j = Journal::default();
        j.open(&info(0));
        j.message(&info(0), &Message::text("t"));
        j.message(&info(1), &Message::binary(vec![1, 2]));
        j.message(&info(1), &Message::Ping(vec![3].into()));
        j.message(&info(1), &Message::Pong(vec![5].into()));
        j.message(&info(1), &Message::Close(None));
        j.message(
            &info(1),
            &Message::Close(Some(tungstenite::protocol::CloseFrame {
                code: tungstenite::protocol::frame::coding::CloseCode::Away,
                reason: "bye".into(),
            })),
        );
        j.timer(&Timer {
            key: "k".into(),
            due_unix_ms: 9,
            late: true,
        });
        j.done(vec![4]);
        use crate::opened::Closed;
        for why in [
            Closed::MaxAge,
            Closed::ByApp,
            Closed::Lost("reset".into()),
            Closed::Refused("no host".into()),
        ] {
            j.closed(&info(0), &why);
        }
        let mut back = Journal::decode(&j.encode().unwrap()).unwrap();
        back.bytes = j.bytes;
        assert_eq!(back, j);
        assert_eq!(back.conns.len(), 2);
    }

    #[test]
    fn a_bad_journal_is_an_error_not_a_panic() {
        let mut j = Journal::default();
        j.message(&info(0), &Message::text("hello"));
        let bytes = j.encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(Journal::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Journal::decode(&[0xff; 64]).is_err());
    }
}
