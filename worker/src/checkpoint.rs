//! Checkpoints: taken in the event loop (`Worker::send_checkpoint`) or,
//! periodic ones, off the serving path: the snapshot is serialized by
//! a copy-on-write child of the worker ([`handoff_protocol::image`]), so
//! the event loop stops only for the `fork`, not for `snapshot()`, the
//! checksum and the transfer of the bytes to the supervisor, which takes
//! the sealed memfd the child wrote (`FromWorker::CheckpointImage`).
//!
//! One image at a time: a checkpoint due while the previous one is still
//! being written is skipped (never queued behind it). What the library
//! carries beside the snapshot and the app's summary are taken at the fork,
//! in the loop, so all three describe the same instant; they are sent with
//! the image when the child is done.
//!
//! An app opts out with [`crate::App::snapshot_in_child`] (the Python
//! package does: a child of a Python process may not run Python code
//! safely). A child that fails, or has not finished within
//! [`crate::Settings::checkpoint_image_timeout`], is killed and this worker
//! checkpoints in its event loop from then on, as before (logged once).
//! The final checkpoint of a graceful stop and the one for a supervisor
//! that adopts this worker are taken in the loop; a freeze drops an image
//! in progress (the `Frozen` state supersedes it).

use handoff_protocol::image::{self, Image, ImageError, Writer};
use handoff_protocol::worker::{Carried, Checkpoint, CheckpointImage, FromWorker};
use handoff_protocol::{monotonic_ns, Snapshot};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::app::App;
use crate::error::WorkerError;
use crate::serve::Worker;

/// Where periodic checkpoints are made.
#[derive(Debug, Default)]
pub(crate) enum Images {
    /// By a child, none in progress.
    #[default]
    Idle,
    /// A child is writing one.
    Writing(Box<Writing>),
    /// In the event loop, for good: why.
    InLoop(String),
}

/// An image being written, and what goes with it.
#[derive(Debug)]
pub(crate) struct Writing {
    writer: Writer,
    deadline: Instant,
    msg: CheckpointImage,
    carried: Carried,
    /// The supervisor asked for a checkpoint while this one was being
    /// written (it was forked before the request): another follows it.
    again: bool,
}

impl Images {
    /// Resolves when the image in progress is written, failed or late;
    /// pending forever when there is none. Cancel-safe.
    pub(crate) async fn done(&mut self) -> Result<(Image, Box<Writing>), ImageError> {
        let Images::Writing(w) = self else {
            return std::future::pending().await;
        };
        let pid = w.writer.pid();
        let deadline = w.deadline;
        let res = tokio::time::timeout_at(deadline, w.writer.finish()).await;
        let Images::Writing(w) = std::mem::take(self) else {
            unreachable!("matched above")
        };
        match res {
            Ok(Ok(img)) => Ok((img, w)),
            Ok(Err(e)) => Err(e),
            // Dropping the writer kills the child.
            Err(_) => Err(ImageError::Child {
                pid,
                how: "not finished within checkpoint_image_timeout".into(),
            }),
        }
    }

    /// Drop an image in progress (its child is killed).
    pub(crate) fn abandon(&mut self) {
        if let Images::Writing(w) = std::mem::take(self) {
            debug!(pid = w.writer.pid(), "checkpoint image abandoned");
        }
    }
}

impl<A: App> Worker<A> {
    pub(crate) fn seal(&self, schema: u32) -> Result<Snapshot, WorkerError> {
        let bytes = if schema == self.identity.schema {
            self.app.snapshot()
        } else {
            self.app.snapshot_as(schema)
        };
        Ok(Snapshot::seal(
            &self.identity.name,
            schema,
            bytes.map_err(WorkerError::Snapshot)?,
        ))
    }

    /// A checkpoint written by a copy-on-write child when it can be (see
    /// this module), else [`Worker::send_checkpoint`]. `asked`: the
    /// supervisor asked for it (one in progress is followed by another).
    pub(crate) async fn checkpoint_off_loop(&mut self, asked: bool) -> Result<(), WorkerError> {
        if !asked && self.source.is_some() {
            // A pre-copy's image is being written or was just taken: a
            // second copy of the state now would only double the work
            // beside the serving loop. The next tick takes it.
            debug!("periodic checkpoint skipped: a pre-copy is in progress");
            return Ok(());
        }
        let schema = self.checkpoint_schema.unwrap_or(self.identity.schema);
        if self.link.is_some() && self.start_image(schema, asked) {
            return Ok(());
        }
        self.send_checkpoint().await
    }

    /// A checkpoint taken in the event loop: the app's `snapshot()` and the
    /// transfer of the bytes stop it meanwhile.
    pub(crate) async fn send_checkpoint(&mut self) -> Result<(), WorkerError> {
        if self.link.is_none() {
            return Ok(());
        }
        // An app that cannot snapshot now (a Python exception, say) is not
        // stopped for it: the supervisor keeps the checkpoint it has.
        let snapshot = match self.seal(self.checkpoint_schema.unwrap_or(self.identity.schema)) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "checkpoint skipped: the app could not snapshot");
                return Ok(());
            }
        };
        let summary = self.app.summary();
        let taken_at_ns = monotonic_ns();
        self.tell(&FromWorker::Carried(self.carried())).await;
        self.tell(&FromWorker::Checkpoint(Checkpoint {
            snapshot,
            summary,
            taken_at_ns,
        }))
        .await;
        Ok(())
    }

    /// Start a checkpoint in a child. `false` when it must be taken in the
    /// loop instead (the app opted out, or children failed before); `true`
    /// when one is in progress or was skipped.
    pub(crate) fn start_image(&mut self, schema: u32, asked: bool) -> bool {
        match &mut self.images {
            Images::InLoop(why) => {
                debug!(%why, "checkpoint in the event loop");
                return false;
            }
            Images::Writing(w) => {
                debug!("checkpoint skipped: the previous image is still being written");
                w.again |= asked;
                return true;
            }
            Images::Idle if !self.app.snapshot_in_child() => {
                self.images = Images::InLoop("the app snapshots in its own process".into());
                return false;
            }
            Images::Idle => {}
        }
        let taken_at_ns = handoff_protocol::monotonic_ns();
        let carried = self.carried();
        let summary = self.app.summary();
        let app = &self.app;
        let own = self.identity.schema;
        let fail = crate::fault::image_fails();
        let made = image::fork_writer(|| {
            if fail {
                return Err("HANDOFF_FAULT=image-fails".into());
            }
            if schema == own {
                app.snapshot()
            } else {
                app.snapshot_as(schema)
            }
            .map_err(|e| e.0)
        });
        match made {
            Ok(writer) => {
                self.images = Images::Writing(Box::new(Writing {
                    writer,
                    deadline: Instant::now() + self.settings.checkpoint_image_timeout,
                    msg: CheckpointImage {
                        app: self.identity.name.clone(),
                        schema,
                        len: 0,
                        summary,
                        taken_at_ns,
                    },
                    carried,
                    again: false,
                }));
                true
            }
            Err(e) => {
                self.fall_back(&e);
                false
            }
        }
    }

    /// Send a finished image, or fall back to checkpoints in the loop.
    /// `true` when the supervisor asked for another checkpoint meanwhile.
    pub(crate) async fn image_done(
        &mut self,
        res: Result<(Image, Box<Writing>), ImageError>,
    ) -> bool {
        match res {
            Ok((img, w)) => {
                let Writing {
                    mut msg,
                    carried,
                    again,
                    ..
                } = *w;
                msg.len = img.len;
                self.tell(&FromWorker::Carried(carried)).await;
                if let Some(link) = self.link.as_mut() {
                    let msg = FromWorker::CheckpointImage(msg);
                    if let Err(e) = link.send_with_fd(&msg, &img.fd).await {
                        self.orphaned(&format!("cannot reach the supervisor ({e})"));
                    }
                }
                again
            }
            Err(e) => {
                self.fall_back(&e);
                // Whoever waits for a checkpoint gets one from the loop.
                true
            }
        }
    }

    fn fall_back(&mut self, e: &ImageError) {
        warn!(error = %e, "checkpoint images failed: checkpoints are taken in the event loop from now on");
        self.images = Images::InLoop(e.to_string());
    }
}
