//! The supervisor's state directory, as far as its workers see it. The
//! supervisor tells each worker where it is ([`ENV_STATE_DIR`]); a worker
//! started by hand has none and uses none of this.
//!
//! | path | who | what |
//! |---|---|---|
//! | `supervisor.lock` | the supervisor | one supervisor per state directory |
//! | `serving.lock` | the serving worker | one worker consumes and sends orders |
//! | `orphans/<pid>.sock` | a worker whose supervisor went away | where the next supervisor adopts it |
//!
//! Both locks are [`crate::lockfile::LockFile`]s: held by a live process, or
//! by nobody.

use std::path::{Path, PathBuf};

/// The environment variable naming the state directory for a worker.
pub const ENV_STATE_DIR: &str = "HANDOFF_STATE_DIR";

/// The environment variable carrying a worker's generation number.
pub const ENV_GENERATION: &str = "HANDOFF_GENERATION";

/// Held by the supervisor that owns the directory.
pub fn supervisor_lock(dir: &Path) -> PathBuf {
    dir.join("supervisor.lock")
}

/// Held by the worker that serves: at no instant do two workers hold it.
pub fn serving_lock(dir: &Path) -> PathBuf {
    dir.join("serving.lock")
}

/// Where orphaned workers listen for their next supervisor.
pub fn orphans(dir: &Path) -> PathBuf {
    dir.join("orphans")
}

/// The orphan socket of worker `pid`.
pub fn orphan_socket(dir: &Path, pid: u32) -> PathBuf {
    orphans(dir).join(format!("{pid}.sock"))
}
