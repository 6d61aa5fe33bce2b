//! The newest checkpoint, as the daemon keeps it: where it came from
//! ([`Taken`]: the worker's loop, a copy-on-write child's sealed image, a
//! freeze, or read back at start), who waits for it (`checkpoint --wait`),
//! and its way to the disk and to systemd's fd store ([`crate::persist`],
//! [`crate::fdstore`]). Mid-handoff the file waits for the upgrade to end.

use std::os::fd::OwnedFd;
use std::time::Instant;

use handoff_protocol::ctl::CtlResponse;
use handoff_protocol::worker::CheckpointImage;
use handoff_protocol::Snapshot;
use tracing::warn;

use crate::daemon::Daemon;
use crate::persist::OnDisk;

/// The newest checkpoint.
#[derive(Debug)]
pub struct Stored {
    pub snapshot: Snapshot,
    pub summary: Option<String>,
    pub at: Instant,
    /// What the worker library carried with that snapshot (its timers…).
    pub carried: handoff_protocol::worker::Carried,
    pub taken: Taken,
}

/// How a stored checkpoint was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// In the worker's event loop, which stopped for it.
    InLoop,
    /// By a copy-on-write child of the worker (`handoff_protocol::image`):
    /// the event loop stopped only for the `fork`.
    ByChild,
    /// The snapshot of a freeze, mid-handoff.
    Frozen,
    /// Read back at start (the checkpoint file, systemd's fd store).
    Loaded,
}

impl Daemon {
    /// Write the stored checkpoint to the file now if it is newer.
    pub(crate) fn flush_checkpoint(&mut self) {
        if self.persist_pending {
            if let Some(c) = self.checkpoint.take() {
                self.persist(&c.snapshot, &c.summary, &c.carried);
                self.checkpoint = Some(c);
            }
        }
    }

    /// A periodic checkpoint written by the worker's copy-on-write child
    /// into a sealed memfd: read it (seals, length, envelope and CRC
    /// checked), or keep the previous checkpoint.
    pub(crate) fn on_checkpoint_image(&mut self, c: CheckpointImage, mut fds: Vec<OwnedFd>) {
        let pid = self.active.as_ref().map(|a| a.pid).unwrap_or(0);
        match (fds.pop(), fds.is_empty()) {
            (Some(fd), true) => match c.read(fd) {
                Ok(c) => {
                    self.store_checkpoint(c.snapshot, c.summary, Taken::ByChild, c.taken_at_ns)
                }
                Err(e) => {
                    warn!(
                        pid,
                        "checkpoint image refused, the previous checkpoint is kept: {e}"
                    );
                    self.carried_ahead = Default::default();
                }
            },
            _ => {
                warn!(
                    pid,
                    "a checkpoint image must carry exactly one descriptor; ignored"
                );
                self.carried_ahead = Default::default();
            }
        }
    }

    pub(crate) fn store_checkpoint(
        &mut self,
        snapshot: Snapshot,
        summary: Option<String>,
        taken: Taken,
        taken_at_ns: u64,
    ) {
        let bytes = snapshot.bytes.len() as u64;
        let schema = snapshot.schema;
        let carried = std::mem::take(&mut self.carried_ahead);
        // Mid-handoff (a Frozen snapshot) the file waits for the upgrade to
        // end: writing and syncing it would compete with the successor for
        // the CPU and the disk during the blackout. Until then the file
        // holds the previous checkpoint, which is what a restarted
        // supervisor would recover from anyway.
        if taken != Taken::Frozen && self.handoff.phase.is_idle() {
            self.persist(&snapshot, &summary, &carried);
        } else {
            self.persist_pending = true;
        }
        self.checkpoint = Some(Stored {
            snapshot,
            summary,
            at: Instant::now(),
            carried,
            taken,
        });
        self.checkpoint_waiters.retain(|(asked_ns, w)| {
            if *asked_ns > taken_at_ns {
                return true;
            }
            let _ = w.try_send(CtlResponse::CheckpointStored { bytes, schema });
            false
        });
    }

    pub(crate) fn persist(
        &mut self,
        snapshot: &Snapshot,
        summary: &Option<String>,
        carried: &handoff_protocol::worker::Carried,
    ) {
        self.persist_pending = false;
        let c = OnDisk {
            snapshot: snapshot.clone(),
            summary: summary.clone(),
            carried: carried.0.clone(),
        };
        if let Some(k) = &self.fdstore {
            k.checkpoint(c.clone());
        }
        if let Some(p) = &self.persister {
            p.save(c);
        }
    }
}
