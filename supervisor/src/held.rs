//! The held sockets: the supervisor's own duplicate of every connection a
//! worker registered. While the supervisor holds them, no worker exit can
//! close a connection.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

use handoff_protocol::worker::{ConnId, ConnInfo};

/// One held connection.
#[derive(Debug)]
pub struct Held {
    pub info: ConnInfo,
    pub fd: OwnedFd,
}

/// Held connections by id, in id order.
#[derive(Debug, Default)]
pub struct HeldSockets {
    conns: BTreeMap<ConnId, Held>,
}

impl HeldSockets {
    /// Hold `fd` for `info`, replacing (and closing) any earlier copy under the
    /// same id.
    pub fn insert(&mut self, info: ConnInfo, fd: OwnedFd) {
        self.conns.insert(info.id, Held { info, fd });
    }

    pub fn remove(&mut self, id: ConnId) -> Option<Held> {
        self.conns.remove(&id)
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Held> {
        self.conns.values()
    }

    /// A fresh duplicate of every held descriptor, with its info, in id order:
    /// what a successor is handed. The held copies stay.
    pub fn duplicate_all(&self) -> std::io::Result<Vec<(ConnInfo, OwnedFd)>> {
        self.conns
            .values()
            .map(|h| Ok((h.info.clone(), h.fd.try_clone()?)))
            .collect()
    }
}
