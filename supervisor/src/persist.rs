//! The newest checkpoint on disk, so that a restarted supervisor finds the
//! state it had. One file, `checkpoint.bin` in `--state-dir`, replaced
//! atomically: written to a temporary file, fsync'd, renamed over the old one,
//! and the directory fsync'd. The file carries a magic, a format version and a
//! CRC-32 of everything before it; a file that fails any check is reported,
//! moved aside (`checkpoint.bin.corrupt`) and never trusted.
//!
//! Writing happens on a blocking thread fed through a `watch` channel: a
//! slow disk delays only the file, never the daemon, and when checkpoints
//! come faster than the disk takes them the newest one wins.

use std::io::Write;
use std::path::{Path, PathBuf};

use handoff_protocol::Snapshot;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::watch;
use tracing::{info, warn};

/// First bytes of a checkpoint file (format 2: with what the worker library
/// carried beside the snapshot).
const MAGIC: &[u8; 8] = b"HOCKPT02";
/// First bytes of a format 1 file (nothing carried), still read.
const MAGIC_V1: &[u8; 8] = b"HOCKPT01";
/// Name of the file in the state directory.
pub const FILE: &str = "checkpoint.bin";

/// Why a checkpoint file could not be read or written.
#[derive(Debug, Error)]
pub enum PersistError {
    #[error("checkpoint file {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint file {path:?} is corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
}

/// What is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OnDisk {
    pub snapshot: Snapshot,
    pub summary: Option<String>,
    /// What the worker library carried with that snapshot (opaque here).
    #[serde(with = "serde_bytes")]
    pub carried: Vec<u8>,
}

/// A format 1 file's body.
#[derive(Deserialize)]
struct OnDiskV1 {
    snapshot: Snapshot,
    summary: Option<String>,
}

/// Write `c` to `out` as a checkpoint file: the magic, the bincode body and
/// a CRC-32 of both, computed as the bytes go out (the snapshot is written
/// from its own memory, never copied into a file image first).
pub(crate) fn encode_into(c: &OnDisk, out: &mut impl Write) -> std::io::Result<()> {
    struct Hashing<'a, W: Write> {
        out: &'a mut W,
        crc: crc32fast::Hasher,
    }
    impl<W: Write> Write for Hashing<'_, W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.out.write(buf)?;
            self.crc.update(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.out.flush()
        }
    }
    let mut w = Hashing {
        out,
        crc: crc32fast::Hasher::new(),
    };
    w.write_all(MAGIC)?;
    bincode::serialize_into(&mut w, c).map_err(|e| match *e {
        bincode::ErrorKind::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    })?;
    let crc = w.crc.finalize();
    out.write_all(&crc.to_le_bytes())
}

pub(crate) fn decode(bytes: &[u8]) -> Result<OnDisk, String> {
    let magic = bytes.get(..MAGIC.len());
    if bytes.len() < MAGIC.len() + 4 || (magic != Some(MAGIC) && magic != Some(MAGIC_V1)) {
        return Err("not a checkpoint file (bad magic)".into());
    }
    let (head, tail) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    if crc32fast::hash(head) != stored {
        return Err("file checksum mismatch".into());
    }
    let body = &head[MAGIC.len()..];
    let undecodable = |e: bincode::Error| format!("undecodable: {e}");
    let c: OnDisk = if magic == Some(MAGIC_V1) {
        let v1: OnDiskV1 = bincode::deserialize(body).map_err(undecodable)?;
        OnDisk {
            snapshot: v1.snapshot,
            summary: v1.summary,
            carried: Vec::new(),
        }
    } else {
        bincode::deserialize(body).map_err(undecodable)?
    };
    c.snapshot
        .verify(&c.snapshot.app, &[c.snapshot.schema])
        .map_err(|e| e.to_string())?;
    Ok(c)
}

/// Write `c` to `dir/checkpoint.bin` atomically and durably.
pub fn write(dir: &Path, c: &OnDisk) -> Result<(), PersistError> {
    let path = dir.join(FILE);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let io = |source| PersistError::Io {
        path: path.clone(),
        source,
    };
    let f = std::fs::File::create(&tmp).map_err(io)?;
    let mut w = std::io::BufWriter::new(f);
    encode_into(c, &mut w).map_err(io)?;
    let f = w.into_inner().map_err(|e| io(e.into_error()))?;
    f.sync_all().map_err(io)?;
    drop(f);
    crate::fault::hit(crate::fault::Point::CheckpointWrite);
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

/// The checkpoint in `dir`, if there is a sound one. A corrupt file is moved
/// aside and reported as an error (the caller starts without it).
pub fn load(dir: &Path) -> Result<Option<OnDisk>, PersistError> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PersistError::Io { path, source }),
    };
    decode(&bytes).map(Some).map_err(|why| {
        let aside = dir.join(format!("{FILE}.corrupt"));
        let _ = std::fs::rename(&path, &aside);
        PersistError::Corrupt { path, why }
    })
}

/// The writer task's handle: send it checkpoints; join it at shutdown.
pub struct Persister {
    tx: watch::Sender<Option<OnDisk>>,
    task: tokio::task::JoinHandle<()>,
}

impl Persister {
    pub fn start(dir: PathBuf) -> Persister {
        let (tx, mut rx) = watch::channel::<Option<OnDisk>>(None);
        let task = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let Some(c) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let dir = dir.clone();
                match tokio::task::spawn_blocking(move || write(&dir, &c)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(error = %e, "cannot persist the checkpoint"),
                    Err(e) => warn!(error = %e, "checkpoint writer panicked"),
                }
            }
        });
        Persister { tx, task }
    }

    /// Persist `c` (replacing any not yet written).
    pub fn save(&self, c: OnDisk) {
        let _ = self.tx.send(Some(c));
    }

    /// Write what is pending and stop.
    pub async fn finish(self) {
        drop(self.tx);
        let _ = self.task.await;
        info!("checkpoint file up to date");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OnDisk {
        OnDisk {
            snapshot: Snapshot::seal("bot", 3, vec![1, 2, 3, 4]),
            summary: Some("{}".into()),
            carried: br#"{"timers":[["tick-7",1700000000000]]}"#.to_vec(),
        }
    }

    #[test]
    fn a_format_1_file_still_reads_with_nothing_carried() {
        #[derive(Serialize)]
        struct V1<'a> {
            snapshot: &'a Snapshot,
            summary: &'a Option<String>,
        }
        let c = sample();
        let mut file = MAGIC_V1.to_vec();
        bincode::serialize_into(
            &mut file,
            &V1 {
                snapshot: &c.snapshot,
                summary: &c.summary,
            },
        )
        .unwrap();
        let crc = crc32fast::hash(&file);
        file.extend_from_slice(&crc.to_le_bytes());
        let read = decode(&file).unwrap();
        assert_eq!(read.snapshot, c.snapshot);
        assert_eq!(read.summary, c.summary);
        assert!(read.carried.is_empty());
    }

    #[test]
    fn round_trip_and_corruption_is_detected_and_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        write(dir.path(), &sample()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(sample()));
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
        assert!(!path.exists() && dir.path().join("checkpoint.bin.corrupt").exists());
        assert!(
            load(dir.path()).unwrap().is_none(),
            "the corrupt file is never read again"
        );
        std::fs::write(&path, b"garbage").unwrap();
        assert!(load(dir.path()).is_err());
    }
}
