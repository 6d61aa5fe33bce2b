//! Pre-copy: the successor is warmed with the state while this worker
//! serves, so that the freeze carries only what changed since.
//!
//! The serving worker (the *source*, `Source`) is asked for rounds:
//!
//! - **round 0** takes the state, in a copy-on-write child when the app
//!   allows it ([`crate::App::snapshot_in_child`]; the loop stops only for
//!   the `fork`), and at that same instant, between two callbacks, starts
//!   recording what changes: the app's own mark
//!   ([`crate::App::delta_mark`]) for [`PreCopyMode::Delta`], or the
//!   library's journal of every input it delivers (`Journal`) for
//!   [`PreCopyMode::Replay`];
//! - **round k** sends what changed since round k−1 (the journal so far,
//!   or [`crate::App::delta`]) and records anew;
//! - **the freeze** (`Freeze { catch_up: true }`) sends the rest, with the
//!   app's [`crate::App::digest`] of the frozen state.
//!
//! The successor (the *sink*, `Sink`) restores round 0, applies each
//! round as it comes (replaying a journal with everything the callbacks
//! send, spawn, set or open discarded: the source did all that), and after
//! the last part, in the freeze, compares its digest with the source's: a
//! mismatch refuses the takeover, and the supervisor thaws the source,
//! which lost nothing. The supervisor decides how many rounds there are
//! (`handoff::machine` in the supervisor).

use std::os::fd::OwnedFd;

use handoff_protocol::image::{self, Image, ImageError, Writer};
use handoff_protocol::worker::{FromWorker, PreCopyMode, PreCopyPart};
use handoff_protocol::{monotonic_ns, Snapshot};
use thiserror::Error;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::app::{App, AppError};
use crate::serve::Worker;

mod journal;

pub(crate) use journal::Journal;
pub use journal::JOURNAL_LIMIT;

/// Why a pre-copy part could not be made or applied.
#[derive(Debug, Error)]
pub enum PreCopyError {
    #[error("this build does not pre-copy")]
    Off,
    #[error("round {got} out of order (after round {after:?})")]
    OutOfOrder { got: u32, after: Option<u32> },
    #[error("no pre-copy in progress here")]
    NotStarted,
    #[error("a catch-up came before any pre-copy round")]
    NotWarmed,
    #[error("round 0's image is still being written")]
    ImagePending,
    #[error("the pre-copy image: {0}")]
    Image(#[from] ImageError),
    #[error("round 0 names an image but {0} descriptors came with it")]
    ImageFd(usize),
    #[error(transparent)]
    Envelope(#[from] handoff_protocol::snapshot::SnapshotError),
    #[error("the app: {0}")]
    App(AppError),
    #[error("the journal cannot be kept: {0}")]
    Journal(String),
    #[error("the journal is unreadable: {0}")]
    Decode(String),
}

/// A 64-bit digest of `bytes`: their length and CRC-32 (the default
/// [`crate::App::digest`]).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    ((bytes.len() as u64) << 32) | u64::from(crc32fast::hash(bytes))
}

/// Round 0's image, while its child writes it.
#[derive(Debug)]
pub(crate) struct PendingImage {
    writer: Writer,
    deadline: Instant,
    schema: u32,
    took_ns: u64,
}

/// The serving worker's side of a pre-copy in progress.
#[derive(Debug)]
pub(crate) struct Source {
    mode: PreCopyMode,
    /// The last round sent (or, while `image` is written, being made).
    round: u32,
    /// [`PreCopyMode::Replay`]: what was delivered since that round.
    journal: Journal,
    /// Why the journal cannot be kept (an effect result the app cannot
    /// encode): the next round or the freeze fails with it.
    broken: Option<String>,
    image: Option<Box<PendingImage>>,
}

impl Source {
    /// The journal, when inputs are to be recorded.
    pub(crate) fn journal(&mut self) -> Option<&mut Journal> {
        if self.mode != PreCopyMode::Replay || self.broken.is_some() {
            return None;
        }
        if self.journal.bytes > JOURNAL_LIMIT {
            self.broken = Some(format!(
                "the journal outgrew {JOURNAL_LIMIT} bytes between two rounds"
            ));
            self.journal = Journal::default();
            return None;
        }
        Some(&mut self.journal)
    }

    /// An effect's result, as [`crate::App::encode_done`] wrote it.
    pub(crate) fn done(&mut self, encoded: Option<Vec<u8>>) {
        if self.mode != PreCopyMode::Replay || self.broken.is_some() {
            return;
        }
        match encoded {
            Some(bytes) => self.journal.done(bytes),
            None => self.broken = Some(
                "an effect's result came back and the app does not encode them (App::encode_done)"
                    .into(),
            ),
        }
    }

    /// Whether `encode_done` is worth calling.
    pub(crate) fn wants_done(&self) -> bool {
        self.mode == PreCopyMode::Replay && self.broken.is_none()
    }
}

/// Resolves when round 0's image is written, failed or late; pending
/// forever when none is. Cancel-safe.
pub(crate) async fn image_done(
    source: &mut Option<Source>,
) -> Result<(Image, u32, u64), ImageError> {
    let Some(img) = source.as_mut().and_then(|s| s.image.as_mut()) else {
        return std::future::pending().await;
    };
    let pid = img.writer.pid();
    let res = tokio::time::timeout_at(img.deadline, img.writer.finish()).await;
    let img = source
        .as_mut()
        .and_then(|s| s.image.take())
        .expect("matched above");
    match res {
        Ok(Ok(done)) => Ok((done, img.schema, img.took_ns)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ImageError::Child {
            pid,
            how: "not finished within checkpoint_image_timeout".into(),
        }),
    }
}

impl<A: App> Worker<A> {
    /// `PreCopy { round }`: make the round and send it, or say why not.
    pub(crate) async fn precopy_round(&mut self, round: u32) {
        let made = if round == 0 {
            self.precopy_start().await
        } else {
            self.precopy_next(round).await
        };
        if let Err(e) = made {
            warn!(round, error = %e, "no pre-copy round; serving on");
            self.precopy_end();
            self.tell(&FromWorker::PreCopyFailed {
                reason: e.to_string(),
            })
            .await;
        }
    }

    async fn precopy_start(&mut self) -> Result<(), PreCopyError> {
        let mode = self.app.precopy();
        if mode == PreCopyMode::Off {
            return Err(PreCopyError::Off);
        }
        self.precopy_end();
        let schema = self.identity.schema;
        let start = monotonic_ns();
        let mut image = None;
        let mut whole = None;
        match self.fork_image(schema) {
            Some(Ok(writer)) => {
                image = Some(Box::new(PendingImage {
                    writer,
                    deadline: Instant::now() + self.settings.checkpoint_image_timeout,
                    schema,
                    took_ns: monotonic_ns() - start,
                }))
            }
            Some(Err(e)) => {
                warn!(error = %e, "pre-copy image failed: the state is taken in the loop");
                whole = Some(self.seal(schema).map_err(app_error)?);
            }
            None => whole = Some(self.seal(schema).map_err(app_error)?),
        }
        // The same instant as the image: between two callbacks.
        if mode == PreCopyMode::Delta {
            self.app.delta_mark();
        }
        self.source = Some(Source {
            mode,
            round: 0,
            journal: Journal::default(),
            broken: None,
            image,
        });
        if let Some(part) = whole {
            let took_ns = monotonic_ns() - start;
            self.send_part(0, None, part, took_ns, None).await;
        }
        info!(?mode, "pre-copy started");
        Ok(())
    }

    /// A copy-on-write child writing the state, if the app allows one.
    fn fork_image(&self, schema: u32) -> Option<Result<Writer, ImageError>> {
        if !self.app.snapshot_in_child() || crate::fault::image_fails() {
            return None;
        }
        let app = &self.app;
        Some(
            image::fork_writer(|| app.snapshot().map_err(|e| e.0)).inspect(|_| {
                debug!(schema, "pre-copy image forked");
            }),
        )
    }

    async fn precopy_next(&mut self, round: u32) -> Result<(), PreCopyError> {
        let after = self
            .source
            .as_ref()
            .filter(|s| s.image.is_none())
            .map(|s| s.round);
        if after != Some(round.wrapping_sub(1)) {
            return Err(PreCopyError::OutOfOrder { got: round, after });
        }
        let start = monotonic_ns();
        let bytes = self.catch_up()?;
        let part = Snapshot::seal(&self.identity.name, self.identity.schema, bytes);
        if let Some(s) = self.source.as_mut() {
            s.round = round;
        }
        let took_ns = monotonic_ns() - start;
        self.send_part(round, None, part, took_ns, None).await;
        Ok(())
    }

    /// What changed since the last round, and record anew.
    fn catch_up(&mut self) -> Result<Vec<u8>, PreCopyError> {
        let Some(s) = self.source.as_mut() else {
            return Err(PreCopyError::NotStarted);
        };
        if s.image.is_some() {
            // Round 0's image is still being written: nothing to catch up on.
            return Err(PreCopyError::ImagePending);
        }
        if let Some(why) = &s.broken {
            return Err(PreCopyError::Journal(why.clone()));
        }
        match s.mode {
            PreCopyMode::Replay => {
                let bytes = s.journal.encode()?;
                s.journal = Journal::default();
                Ok(bytes)
            }
            PreCopyMode::Delta => self.app.delta().map_err(PreCopyError::App),
            PreCopyMode::Off => Err(PreCopyError::Off),
        }
    }

    /// The freeze after a pre-copy: the rest of the changes and the
    /// state's digest (the freeze ends the pre-copy, whatever follows).
    pub(crate) fn final_catch_up(&mut self) -> Result<(Snapshot, u64), PreCopyError> {
        let bytes = self.catch_up()?;
        let digest = self.app.digest().map_err(PreCopyError::App)?;
        let part = Snapshot::seal(&self.identity.name, self.identity.schema, bytes);
        Ok((part, digest))
    }

    /// Round 0's image is written: send it (or say it failed).
    pub(crate) async fn precopy_image_done(&mut self, res: Result<(Image, u32, u64), ImageError>) {
        match res {
            Ok((img, schema, took_ns)) => {
                let part = Snapshot {
                    app: self.identity.name.clone(),
                    schema,
                    checksum: 0,
                    bytes: Default::default(),
                };
                self.send_part(0, Some(img.len), part, took_ns, Some(img.fd))
                    .await;
            }
            Err(e) => {
                warn!(error = %e, "pre-copy image failed");
                self.precopy_end();
                self.tell(&FromWorker::PreCopyFailed {
                    reason: format!("the pre-copy image: {e}"),
                })
                .await;
            }
        }
    }

    async fn send_part(
        &mut self,
        round: u32,
        image_len: Option<u64>,
        part: Snapshot,
        took_ns: u64,
        fd: Option<OwnedFd>,
    ) {
        debug!(round, bytes = part.bytes.len(), ?image_len, "pre-copy part");
        let msg = FromWorker::PreCopied(PreCopyPart {
            round,
            image_len,
            part,
            took_ns,
        });
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let sent = match &fd {
            Some(fd) => link.send_with_fd(&msg, fd).await,
            None => link.send(&msg).await,
        };
        if let Err(e) = sent {
            self.orphaned(&format!("cannot reach the supervisor ({e})"));
        }
    }

    /// Stop recording changes (given up, or done with the freeze).
    pub(crate) fn precopy_end(&mut self) {
        if let Some(s) = self.source.take() {
            debug!(round = s.round, "pre-copy ended");
            if s.mode == PreCopyMode::Delta {
                self.app.delta_end();
            }
        }
    }
}

fn app_error(e: crate::error::WorkerError) -> PreCopyError {
    match e {
        crate::error::WorkerError::Snapshot(e) => PreCopyError::App(e),
        other => PreCopyError::App(AppError::new(other)),
    }
}

/// The successor's side: how far it has been warmed.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    /// The last round applied.
    round: Option<u32>,
}

impl Sink {
    /// Apply one round to `app` (freshly built for round 0); the time it
    /// took, in nanoseconds.
    pub(crate) fn warm<A: App>(
        &mut self,
        app: &mut A,
        warm: PreCopyPart,
        fds: Vec<OwnedFd>,
    ) -> Result<u64, PreCopyError> {
        let start = monotonic_ns();
        let expected = self.round.map_or(0, |r| r + 1);
        if warm.round != expected {
            return Err(PreCopyError::OutOfOrder {
                got: warm.round,
                after: self.round,
            });
        }
        let id = app.identity();
        if warm.round == 0 {
            let snap = match warm.image_len {
                Some(len) => {
                    let [fd] = <[OwnedFd; 1]>::try_from(fds)
                        .map_err(|fds| PreCopyError::ImageFd(fds.len()))?;
                    let (bytes, checksum) =
                        image::read(&fd, handoff_protocol::frame::MAX_WORKER_FRAME as u64)?;
                    if bytes.len() as u64 != len {
                        return Err(ImageError::Length {
                            said: len,
                            holds: bytes.len() as u64,
                        }
                        .into());
                    }
                    Snapshot {
                        checksum,
                        bytes,
                        ..warm.part
                    }
                }
                None => warm.part,
            };
            snap.verify(&id.name, &id.reads)?;
            app.restore(
                snap.schema,
                &snap.bytes,
                handoff_protocol::worker::RestoreMode::Handoff,
            )
            .map_err(PreCopyError::App)?;
        } else {
            apply(app, &warm.part)?;
        }
        self.round = Some(warm.round);
        Ok(monotonic_ns() - start)
    }

    /// The freeze's catch-up: apply it, then compare digests.
    pub(crate) fn finish<A: App>(
        &mut self,
        app: &mut A,
        part: &Snapshot,
        digest: u64,
    ) -> Result<(), crate::error::RestoreError> {
        use crate::error::RestoreError;
        if self.round.is_none() {
            return Err(RestoreError::PreCopy(PreCopyError::NotWarmed));
        }
        apply(app, part).map_err(RestoreError::PreCopy)?;
        let ours = app.digest().map_err(RestoreError::App)?;
        if ours != digest {
            return Err(RestoreError::Diverged {
                ours,
                theirs: digest,
            });
        }
        Ok(())
    }
}

/// A catch-up, in the app's mode.
fn apply<A: App>(app: &mut A, part: &Snapshot) -> Result<(), PreCopyError> {
    let id = app.identity();
    part.verify(&id.name, &[id.schema])?;
    match app.precopy() {
        PreCopyMode::Replay => Journal::decode(&part.bytes)?.replay(app),
        PreCopyMode::Delta => app.apply_delta(&part.bytes).map_err(PreCopyError::App),
        PreCopyMode::Off => Err(PreCopyError::Off),
    }
}
