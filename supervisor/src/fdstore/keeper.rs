//! Keeping systemd's store in step with the daemon, off the daemon task.
//!
//! Every store is a blocking datagram (and a state, a sealed memfd holding
//! the whole checkpoint), so one thread does them, in the order the daemon
//! asked: a connection's socket is stored before a state that lists it, and
//! a state without a connection is stored before its socket is removed (the
//! rules in [`super`]). Checkpoints queued while the thread was busy are
//! coalesced: only the newest is stored.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;

use handoff_protocol::worker::{ConnId, ConnInfo};
use tracing::warn;

use super::Storer;
use crate::persist::OnDisk;

/// What the daemon tells the keeper.
enum Change {
    /// A connection is held (its own duplicate of the socket).
    Conn(ConnInfo, OwnedFd),
    /// A connection is released.
    Unconn(ConnId),
    /// A newer checkpoint.
    Checkpoint(OnDisk),
    /// A name to drop from the store (left over from before).
    Forget(String),
}

/// The daemon's handle on the keeper thread.
#[derive(Debug)]
pub struct Keeper {
    tx: mpsc::Sender<Change>,
}

impl Keeper {
    /// Start the thread. `conns` and `checkpoint` are what the store already
    /// holds (handed back by systemd): not stored again, only listed in the
    /// next state.
    pub fn start(storer: Storer, conns: Vec<ConnInfo>, checkpoint: Option<OnDisk>) -> Keeper {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("fdstore".into())
            .spawn(move || run(storer, conns, checkpoint, rx))
            .map_or_else(
                |e| warn!(error = %e, "cannot start the fd store thread; nothing is stored"),
                drop,
            );
        Keeper { tx }
    }

    /// `info`'s socket is held: store a duplicate of it.
    pub fn conn(&self, info: &ConnInfo, fd: &OwnedFd) {
        match fd.as_fd().try_clone_to_owned() {
            Ok(dup) => {
                let _ = self.tx.send(Change::Conn(info.clone(), dup));
            }
            Err(e) => {
                warn!(conn = %info.id, error = %e, "cannot duplicate a socket for the fd store")
            }
        }
    }

    pub fn unconn(&self, id: ConnId) {
        let _ = self.tx.send(Change::Unconn(id));
    }

    pub fn checkpoint(&self, c: OnDisk) {
        let _ = self.tx.send(Change::Checkpoint(c));
    }

    pub fn forget(&self, name: String) {
        let _ = self.tx.send(Change::Forget(name));
    }
}

fn run(
    mut storer: Storer,
    mut conns: Vec<ConnInfo>,
    mut checkpoint: Option<OnDisk>,
    rx: mpsc::Receiver<Change>,
) {
    let report = |what: &str, r: Result<(), super::FdStoreError>| {
        if let Err(e) = r {
            warn!(error = %e, "fd store: {what}");
        }
    };
    while let Ok(first) = rx.recv() {
        // Everything queued now, in order; one state at the end.
        let mut state_due = false;
        for change in std::iter::once(first).chain(rx.try_iter()) {
            match change {
                Change::Conn(info, fd) => {
                    report("storing a socket", storer.store_conn(info.id, fd.as_fd()));
                    conns.retain(|c| c.id != info.id);
                    conns.push(info);
                    state_due = true;
                }
                Change::Unconn(id) => {
                    conns.retain(|c| c.id != id);
                    report(
                        "storing the state",
                        storer.store_state(checkpoint.as_ref(), &conns),
                    );
                    report("removing a socket", storer.remove_conn(id));
                    state_due = false;
                }
                Change::Checkpoint(c) => {
                    checkpoint = Some(c);
                    state_due = true;
                }
                Change::Forget(name) => report("removing a stale name", storer.remove(&name)),
            }
        }
        if state_due {
            conns.sort_by_key(|c| c.id);
            report(
                "storing the state",
                storer.store_state(checkpoint.as_ref(), &conns),
            );
        }
    }
}

mod daemon_side {
    use std::time::Instant;

    use tracing::{error, info, warn};

    use super::Keeper;
    use crate::checkpoints::Stored;
    use crate::daemon::Daemon;
    use crate::fdstore::{Received, Storer};
    use crate::persist::OnDisk;
    use crate::recovery::StartPlan;

    impl Daemon {
        /// Take what systemd handed back: the held sockets (unless a live
        /// orphan is `adopting`: it registers its own) and the newest
        /// checkpoint. Returns how the first worker starts, if that changes.
        pub(crate) fn restore_from_fd_store(
            &mut self,
            r: Received,
            adopting: bool,
        ) -> Option<StartPlan> {
            let Received {
                conns,
                checkpoint,
                state_seq,
                stale,
                missing,
                state_error,
            } = r;
            if let Some(e) = &state_error {
                error!("systemd's file descriptor store: {e}");
                self.notice = Some(format!("the fd store's state was unusable: {e}"));
            }
            for info in &missing {
                warn!(conn = %info.id, name = %info.name, "systemd no longer had this connection (it hung up?)");
            }
            let n = conns.len();
            let mut kept = Vec::new();
            if !adopting {
                for (info, fd) in conns {
                    kept.push(info.clone());
                    self.held.insert(info, fd);
                }
            }
            if let Some(c) = &checkpoint {
                self.checkpoint = Some(Stored {
                    snapshot: c.snapshot.clone(),
                    summary: c.summary.clone(),
                    at: Instant::now(),
                    carried: handoff_protocol::worker::Carried(c.carried.clone()),
                    taken: crate::checkpoints::Taken::Loaded,
                });
            }
            if self.cfg.fd_store {
                self.keep_fd_store(state_seq, kept.clone(), checkpoint);
                if let Some(k) = &self.fdstore {
                    for (name, _fd) in stale {
                        if !kept.iter().any(|c| crate::fdstore::conn_name(c.id) == name) {
                            k.forget(name);
                        }
                    }
                }
            }
            if adopting || kept.is_empty() {
                return None;
            }
            let line = format!(
                "restarted with {n} connections and {} from systemd's file descriptor store",
                if self.checkpoint.is_some() {
                    "the newest checkpoint"
                } else {
                    "no checkpoint"
                }
            );
            info!("{line}");
            self.history.push(line.clone());
            Some(StartPlan::Recover {
                reason: line,
                after: 0,
            })
        }

        /// Start mirroring into systemd's store (`--fd-store`).
        pub(crate) fn keep_fd_store(
            &mut self,
            state_seq: Option<u64>,
            conns: Vec<handoff_protocol::worker::ConnInfo>,
            checkpoint: Option<OnDisk>,
        ) {
            match Storer::from_env(state_seq) {
                Some(storer) => self.fdstore = Some(Keeper::start(storer, conns, checkpoint)),
                None => warn!(
                    "--fd-store, but no NOTIFY_SOCKET (not under systemd?): nothing is stored"
                ),
            }
        }
    }
}
