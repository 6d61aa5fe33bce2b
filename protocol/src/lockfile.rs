//! Exclusive locks on files of the state directory, held with `flock(2)`:
//! the kernel releases one the instant its holder dies, whatever way it dies,
//! so a lock says who is alive and entitled to something, never a guess from
//! timing. The holder writes its pid into the file, for the error an
//! operator reads when the lock is taken.
//!
//! Two are used (see [`crate::state_dir`]): `supervisor.lock`, held by the one
//! supervisor of a state directory, and `serving.lock`, held by the one
//! worker that consumes market data and sends orders.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why a lock was not taken.
#[derive(Debug, Error)]
pub enum LockError {
    #[error("{path:?} is locked by {}", holder.map(|p| format!("pid {p}")).unwrap_or_else(|| "another process".into()))]
    Held { path: PathBuf, holder: Option<u32> },
    #[error("cannot lock {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A held lock; dropping it (or the process dying) releases it.
///
/// It is `std`'s `File::lock` (`flock(2)` on Linux) on an open file that
/// only closing releases: nothing unlocks it explicitly, so a copy passed
/// down to a child keeps the lock held after this process lets go of it.
#[derive(Debug)]
pub struct LockFile {
    path: PathBuf,
    file: File,
}

/// How to wait for a lock.
#[derive(Debug, Clone, Copy)]
enum Wait {
    No,
    AsLongAsItTakes,
}

impl LockFile {
    /// Take the lock on `path` (created 0600) now, or fail with
    /// [`LockError::Held`] naming its holder.
    pub fn try_lock(path: &Path) -> Result<LockFile, LockError> {
        Self::lock(path, Wait::No)
    }

    /// Take the lock on `path`, waiting as long as another process holds it.
    /// Blocks the thread: call it from `spawn_blocking`.
    pub fn lock_blocking(path: &Path) -> Result<LockFile, LockError> {
        Self::lock(path, Wait::AsLongAsItTakes)
    }

    fn lock(path: &Path, how: Wait) -> Result<LockFile, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        match how {
            Wait::No => lock_now(&file, path)?,
            Wait::AsLongAsItTakes => file.lock().map_err(io)?,
        }
        record(&file, &std::process::id().to_string()).map_err(io)?;
        Ok(LockFile {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The lock on `path` that a parent passed down as `fd` (the same open
    /// file, so the same lock: it stays held when the parent exits). Checks
    /// that `fd` is that file and that the lock is indeed ours.
    pub fn inherited(fd: std::os::fd::OwnedFd, path: &Path) -> Result<LockFile, LockError> {
        use std::os::unix::fs::MetadataExt;
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::from(fd);
        let (ours, named) = (
            file.metadata().map_err(io)?,
            std::fs::metadata(path).map_err(io)?,
        );
        if (ours.dev(), ours.ino()) != (named.dev(), named.ino()) {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the inherited descriptor is another file",
            )));
        }
        // Taking a lock this open file already holds succeeds at once; one
        // held through another open file (not passed down) fails.
        lock_now(&file, path)?;
        Ok(LockFile {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Let go of the lock for a successor: record in the file that this
    /// holder handed over (at `Exit`), then release it. Until another
    /// worker takes the lock, [`handed_over`] says so.
    pub fn hand_over(self) {
        let _ = record(&self.file, &format!("{HANDED_OVER} {}", std::process::id()));
    }

    /// Whether `path` is free right now (taken and released at once,
    /// leaving the file's record of its last holder as it was).
    pub fn is_free(path: &Path) -> Result<bool, LockError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
            Err(source) => {
                return Err(LockError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        match lock_now(&file, path) {
            Ok(()) => Ok(true),
            Err(LockError::Held { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The locked file itself (for passing the lock on by inheritance: a
    /// child that inherits the descriptor shares the lock).
    pub fn file(&self) -> &File {
        &self.file
    }
}

fn lock_now(file: &File, path: &Path) -> Result<(), LockError> {
    file.try_lock().map_err(|e| match e {
        std::fs::TryLockError::WouldBlock => LockError::Held {
            path: path.to_path_buf(),
            holder: holder(path),
        },
        std::fs::TryLockError::Error(source) => LockError::Io {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Every record is written over the previous one at offset 0, padded to
/// this length, and never by truncating the file: on ext4 a truncation to
/// zero of a file with data marks it for a flush at close
/// (`auto_da_alloc`), and the next truncation then waits for that disk
/// write. Taking `serving.lock` after a handoff did exactly that, and it
/// cost the new worker about half a millisecond of its blackout.
const RECORD_LEN: usize = 32;

/// Write `text` as the file's record (see [`RECORD_LEN`]).
fn record(file: &File, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(format!("{text:<RECORD_LEN$}\n").as_bytes(), 0)
}

/// The record in `path`: its first line, trimmed.
fn read_record(path: &Path) -> Option<String> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    Some(s.lines().next().unwrap_or("").trim().to_string())
}

/// What a holder that handed over writes in the file.
const HANDED_OVER: &str = "handed-over-by";

/// Whether the last holder of `path` let go of it by handing over (rather
/// than dying or stopping): no worker has taken it since.
pub fn handed_over(path: &Path) -> bool {
    read_record(path).is_some_and(|s| s.starts_with(HANDED_OVER))
}

/// The pid the last holder of `path` wrote, if any.
pub fn holder(path: &Path) -> Option<u32> {
    read_record(path)?
        .trim_start_matches(HANDED_OVER)
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_the_error_names_it() {
        let _g = crate::FORK_GUARD.lock();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serving.lock");
        let held = LockFile::try_lock(&path).unwrap();
        assert!(!LockFile::is_free(&path).unwrap());
        match LockFile::try_lock(&path) {
            Err(LockError::Held { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        assert!(!handed_over(&path));
        held.hand_over();
        assert!(LockFile::is_free(&path).unwrap());
        assert!(
            handed_over(&path),
            "the hand-over is on record, even after a look"
        );
        let again = LockFile::lock_blocking(&path).unwrap();
        assert_eq!(again.path(), path);
        assert!(!handed_over(&path), "a new holder replaces the record");
    }

    #[test]
    fn a_record_is_written_over_the_last_one_whatever_was_there() {
        let _g = crate::FORK_GUARD.lock();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serving.lock");
        // A longer record than any this code writes, and a line after it.
        std::fs::write(&path, "handed-over-by 4294967295 and more\nold junk\n").unwrap();
        assert!(handed_over(&path));
        let held = LockFile::try_lock(&path).unwrap();
        assert!(!handed_over(&path), "the new holder's record comes first");
        // Written over, never truncated (a truncation to zero on ext4 makes
        // the next one wait for a disk write): the old tail is still there.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("old junk\n"), "{text:?}");
        drop(held);
        assert_eq!(holder(&path), Some(std::process::id()));
        let held = LockFile::try_lock(&path).unwrap();
        held.hand_over();
        assert!(handed_over(&path));
        assert_eq!(holder(&path), Some(std::process::id()));
    }

    #[test]
    fn a_lock_passed_down_stays_held_and_another_file_is_refused() {
        let _g = crate::FORK_GUARD.lock();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("supervisor.lock");
        let held = LockFile::try_lock(&path).unwrap();
        let dup = held.file().try_clone().unwrap();
        let inherited = LockFile::inherited(dup.into(), &path).unwrap();
        drop(held);
        assert!(
            !LockFile::is_free(&path).unwrap(),
            "the passed-down lock went"
        );
        let other = dir.path().join("other");
        std::fs::write(&other, b"").unwrap();
        let wrong = File::open(&other).unwrap();
        assert!(LockFile::inherited(wrong.into(), &path).is_err());
        drop(inherited);
        assert!(LockFile::is_free(&path).unwrap());
    }

    #[test]
    fn a_lock_dies_with_its_holder() {
        let _g = crate::FORK_GUARD.lock();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        // flock(1) holds the lock while the shell it runs lives (`-o`: the
        // shell itself does not inherit it).
        let mut child = std::process::Command::new("flock")
            .arg("-o")
            .arg(&path)
            .args(["sh", "-c", "echo locked; read x"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = [0u8; 7];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut line)
            .unwrap();
        assert!(!LockFile::is_free(&path).unwrap());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(LockFile::is_free(&path).unwrap());
    }
}
