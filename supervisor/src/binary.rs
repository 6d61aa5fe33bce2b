//! Checks on a worker binary before it is started.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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

/// Absolute path, regular file, executable, not world-writable. (The
/// checksum is verified by [`crate::builds`] on the bytes it copies.)
pub fn check(path: &Path) -> Result<(), BinaryError> {
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
    Ok(())
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
        assert!(matches!(check(&f), Err(BinaryError::NotExecutable { .. })));
        fs::set_permissions(&f, fs::Permissions::from_mode(0o757)).unwrap();
        assert!(matches!(check(&f), Err(BinaryError::WorldWritable { .. })));
        fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check(&f).is_ok());
        assert!(matches!(
            check(Path::new("rel/w")),
            Err(BinaryError::NotAbsolute { .. })
        ));
        assert!(matches!(
            check(dir.path()),
            Err(BinaryError::NotRegular { .. })
        ));
    }
}
