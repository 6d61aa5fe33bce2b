//! The build store: every worker binary the supervisor runs is first admitted
//! here. Admission checks the file (absolute path, regular, executable, not
//! writable by others), then reads it **once**, through one open descriptor,
//! hashing the bytes while it copies them into `STATE_DIR/builds/<sha256>`, a
//! 0700 directory only the supervisor writes. The worker is executed from
//! that copy, so replacing or editing the file at the original path after the
//! check (or while `--sha256` is verified) cannot change what runs. The store
//! keeps the current and the previous build, which is what `rollback` and
//! probation go back to even when a deploy replaced the original path.
//!
//! Re-admitting an unchanged file (same device, inode, size and modification
//! time) reuses its copy without reading it again.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::binary::{check, BinaryError};

/// An admitted build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    /// Where the operator pointed (for status and logs).
    pub source: PathBuf,
    /// The private copy that is executed.
    pub exec: PathBuf,
    pub sha256: String,
    /// When this content was first admitted (its deploy).
    pub admitted: std::time::SystemTime,
}

type FileId = (u64, u64, u64, i64, i64);

/// The store. See the module docs.
#[derive(Debug)]
pub struct BuildStore {
    dir: PathBuf,
    /// The last build admitted from each path, by file identity.
    known: HashMap<PathBuf, (FileId, String)>,
    /// The path each stored build was first admitted from.
    names: HashMap<String, PathBuf>,
    /// When each stored build was first admitted.
    admitted: HashMap<String, std::time::SystemTime>,
}

impl BuildStore {
    /// The store under `state_dir/builds` (created 0700).
    pub fn open(state_dir: &Path) -> Result<BuildStore, BinaryError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = state_dir.join("builds");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| BinaryError::Unreadable {
                path: dir.clone(),
                source,
            })?;
        Ok(BuildStore {
            dir,
            known: HashMap::new(),
            names: HashMap::new(),
            admitted: HashMap::new(),
        })
    }

    /// Check `source`, copy it into the store (verifying `expected_sha256`
    /// against the bytes copied), and return the build to execute.
    pub fn admit(
        &mut self,
        source: &Path,
        expected_sha256: Option<&str>,
    ) -> Result<Build, BinaryError> {
        if let Some(b) = self.already_stored(source, expected_sha256)? {
            return Ok(b);
        }
        check(source)?;
        let unreadable = |e| BinaryError::Unreadable {
            path: source.to_path_buf(),
            source: e,
        };
        let mut file = std::fs::File::open(source).map_err(unreadable)?;
        let m = file.metadata().map_err(unreadable)?;
        let id: FileId = (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec());
        if let Some((known_id, sha)) = self.known.get(source).cloned() {
            let exec = self.dir.join(&sha);
            if known_id == id && exec.exists() {
                let build = Build {
                    source: source.to_path_buf(),
                    exec,
                    admitted: self.admitted_at(&sha),
                    sha256: sha.clone(),
                };
                return verify(build, expected_sha256);
            }
        }
        let tmp = self.dir.join(format!(".incoming-{}", std::process::id()));
        let mut head = Vec::new();
        let stored = (|| {
            let mut out = std::fs::File::create(&tmp)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                if head.len() < HEAD {
                    let take = (HEAD - head.len()).min(n);
                    head.extend_from_slice(&buf[..take]);
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])?;
            }
            out.sync_all()?;
            Ok::<_, std::io::Error>(hex(&hasher.finalize()))
        })();
        let sha = match stored {
            Ok(sha) => sha,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(unreadable(e));
            }
        };
        if let Some(expected) = expected_sha256 {
            if !expected.trim().eq_ignore_ascii_case(&sha) {
                let _ = std::fs::remove_file(&tmp);
                return Err(BinaryError::Checksum {
                    path: source.to_path_buf(),
                    expected: expected.trim().to_lowercase(),
                    actual: sha,
                });
            }
        }
        let exec = self.dir.join(&sha);
        let place = || {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o500))?;
            std::fs::rename(&tmp, &exec)
        };
        if let Err(e) = place() {
            let _ = std::fs::remove_file(&tmp);
            return Err(unreadable(e));
        }
        note_script(source, &head);
        self.known.insert(source.to_path_buf(), (id, sha.clone()));
        self.names
            .entry(sha.clone())
            .or_insert_with(|| source.to_path_buf());
        Ok(Build {
            source: source.to_path_buf(),
            exec,
            admitted: self.admitted_at(&sha),
            sha256: sha,
        })
    }

    /// When `sha` was first admitted (now, if this is the first time).
    fn admitted_at(&mut self, sha: &str) -> std::time::SystemTime {
        *self
            .admitted
            .entry(sha.to_owned())
            .or_insert_with(std::time::SystemTime::now)
    }

    /// A path inside the store (a rollback to a stored build) is its own copy.
    fn already_stored(
        &self,
        source: &Path,
        expected: Option<&str>,
    ) -> Result<Option<Build>, BinaryError> {
        if source.parent() != Some(self.dir.as_path()) || !source.exists() {
            return Ok(None);
        }
        let sha = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Name it as the operator first did.
        let original = self
            .names
            .get(&sha)
            .cloned()
            .unwrap_or_else(|| source.to_path_buf());
        let build = Build {
            source: original,
            exec: source.to_path_buf(),
            admitted: self
                .admitted
                .get(&sha)
                .copied()
                .unwrap_or_else(std::time::SystemTime::now),
            sha256: sha,
        };
        verify(build, expected).map(Some)
    }

    /// Whether `path` is a build in this store.
    pub fn holds(&self, path: &Path) -> bool {
        path.parent() == Some(self.dir.as_path()) && path.is_file()
    }

    /// Delete stored builds other than `keep` (by SHA-256).
    pub fn prune(&mut self, keep: &[&str]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && !keep.contains(&name.as_str()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        self.known
            .retain(|_, (_, sha)| keep.contains(&sha.as_str()));
        self.names.retain(|sha, _| keep.contains(&sha.as_str()));
        self.admitted.retain(|sha, _| keep.contains(&sha.as_str()));
    }
}

/// How much of a build's start [`note_script`] reads.
const HEAD: usize = 4096;

/// A build that is a script (`#!`) is run by an interpreter the store does
/// not hold, and may import files it does not hold either: say so, unless
/// it is a zipapp (what `python -m handoff.pack` writes, with the bot's
/// modules and the handoff package inside: the digest covers them).
fn note_script(source: &Path, head: &[u8]) {
    let Some(rest) = head.strip_prefix(b"#!") else {
        return;
    };
    let line_end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    let interpreter = String::from_utf8_lossy(&rest[..line_end]).trim().to_owned();
    if rest.get(line_end + 1..line_end + 5) == Some(b"PK\x03\x04".as_slice()) {
        tracing::info!(
            build = %source.display(),
            %interpreter,
            "a zipapp: its code and packed packages are in the stored copy; the interpreter is not"
        );
        return;
    }
    tracing::warn!(
        build = %source.display(),
        %interpreter,
        "a script: the stored copy and its SHA-256 cover this file only, not the interpreter \
         or what it imports (a Python bot: pack it with `python -m handoff.pack`)"
    );
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of the file at `path`, in hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

fn verify(build: Build, expected: Option<&str>) -> Result<Build, BinaryError> {
    match expected {
        Some(e) if !e.trim().eq_ignore_ascii_case(&build.sha256) => Err(BinaryError::Checksum {
            path: build.source,
            expected: e.trim().to_lowercase(),
            actual: build.sha256,
        }),
        _ => Ok(build),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn the_stored_copy_is_what_runs_even_if_the_path_changes() {
        let state = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let mut store = BuildStore::open(state.path()).unwrap();
        let p = script(src.path(), "w", "#!/bin/sh\necho one\n");
        let one = store.admit(&p, None).unwrap();
        assert_ne!(one.exec, p);
        assert_eq!(std::fs::read(&one.exec).unwrap(), b"#!/bin/sh\necho one\n");
        // Replace the file at the path: the admitted build is untouched, and
        // admitting again yields a different build.
        let tmp = script(src.path(), "w.new", "#!/bin/sh\necho two\n");
        std::fs::rename(&tmp, &p).unwrap();
        assert_eq!(std::fs::read(&one.exec).unwrap(), b"#!/bin/sh\necho one\n");
        let two = store.admit(&p, None).unwrap();
        assert_ne!(two.sha256, one.sha256);
        // The previous build can be admitted again from the store (rollback).
        let back = store.admit(&one.exec, Some(&one.sha256)).unwrap();
        assert_eq!(back.exec, one.exec);
        assert_eq!(back.source, p, "a stored build keeps the name it came with");
        store.prune(&[&two.sha256]);
        assert!(!one.exec.exists() && two.exec.exists());
    }

    #[test]
    fn a_wrong_checksum_is_refused_and_nothing_is_stored() {
        let state = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let mut store = BuildStore::open(state.path()).unwrap();
        let p = script(src.path(), "w", "#!/bin/sh\n");
        let err = store.admit(&p, Some("00ff")).unwrap_err().to_string();
        assert!(err.contains("sha256 mismatch"), "{err}");
        assert_eq!(
            std::fs::read_dir(state.path().join("builds"))
                .unwrap()
                .count(),
            0
        );
    }
}
