//! Checks on a worker binary before it is started.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Why a binary is refused.
#[derive(Debug, Error)]
pub enum BinaryError {
    #[error("worker binary {path:?} is not an absolute path")]
    NotAbsolute { path: PathBuf },
    #[error("worker binary {path:?} cannot be read: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("worker binary {path:?} is not a regular file")]
    NotRegular { path: PathBuf },
    #[error("worker binary {path:?} is not executable (mode {mode:o})")]
    NotExecutable { path: PathBuf, mode: u32 },
    #[error("worker binary {path:?} is writable by others (mode {mode:o}); refusing to run it")]
    WorldWritable { path: PathBuf, mode: u32 },
    #[error("worker binary {path:?} sha256 mismatch: expected {expected}, found {actual}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

/// A binary that passed [`check`].
#[derive(Debug, Clone)]
pub struct CheckedBinary {
    pub path: PathBuf,
    /// Present when a checksum was asked for (and matched).
    pub sha256: Option<String>,
}

/// Absolute path, regular file, executable, not world-writable, and, when
/// `expected_sha256` is given, with that SHA-256.
pub fn check(path: &Path, expected_sha256: Option<&str>) -> Result<CheckedBinary, BinaryError> {
    let p = path.to_path_buf();
    if !path.is_absolute() {
        return Err(BinaryError::NotAbsolute { path: p });
    }
    let meta = std::fs::metadata(path).map_err(|source| BinaryError::Unreadable {
        path: p.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(BinaryError::NotRegular { path: p });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o111 == 0 {
        return Err(BinaryError::NotExecutable { path: p, mode });
    }
    if mode & 0o002 != 0 {
        return Err(BinaryError::WorldWritable { path: p, mode });
    }
    let Some(expected) = expected_sha256 else {
        return Ok(CheckedBinary {
            path: p,
            sha256: None,
        });
    };
    let actual = sha256_file(path).map_err(|source| BinaryError::Unreadable {
        path: p.clone(),
        source,
    })?;
    if !expected.trim().eq_ignore_ascii_case(&actual) {
        return Err(BinaryError::Checksum {
            path: p,
            expected: expected.trim().to_lowercase(),
            actual,
        });
    }
    Ok(CheckedBinary {
        path: p,
        sha256: Some(actual),
    })
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn refusals_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("w");
        fs::write(&f, b"#!/bin/sh\n").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            check(&f, None),
            Err(BinaryError::NotExecutable { .. })
        ));
        fs::set_permissions(&f, fs::Permissions::from_mode(0o757)).unwrap();
        assert!(matches!(
            check(&f, None),
            Err(BinaryError::WorldWritable { .. })
        ));
        fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check(&f, None).unwrap().sha256.is_none());
        let sum = sha256_file(&f).unwrap();
        assert_eq!(
            check(&f, Some(&sum)).unwrap().sha256.as_deref(),
            Some(sum.as_str())
        );
        let e = check(&f, Some("00")).unwrap_err().to_string();
        assert!(e.contains("sha256 mismatch"), "{e}");
        assert!(matches!(
            check(Path::new("rel/w"), None),
            Err(BinaryError::NotAbsolute { .. })
        ));
        assert!(matches!(
            check(dir.path(), None),
            Err(BinaryError::NotRegular { .. })
        ));
    }
}
