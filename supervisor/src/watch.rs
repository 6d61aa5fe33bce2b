//! `--watch`: deploy by replacing the file at the `--worker` path. The watcher
//! polls the path's identity (device, inode, size, modification time); when it
//! changes and then holds still for [`WATCH_DEBOUNCE`] (a copy in progress is
//! not a build), it asks the daemon for an upgrade, once per new build. A
//! build that arrives while another upgrade runs is retried once that one
//! ends; a build that is refused (not executable, incompatible…) is not
//! retried: the next deploy replaces the file again.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// How long a replaced file must stay unchanged before it is deployed.
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(500);
/// How often the path is checked.
pub const WATCH_POLL: Duration = Duration::from_millis(200);

/// The identity of the file at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
}

fn identify(path: &Path) -> Option<FileId> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileId {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
    })
}

/// What the watcher asks of the daemon.
#[derive(Debug)]
pub struct WatchTrigger {
    /// `Ok` when the upgrade started; `Err(reason)`, with `busy` true when
    /// another upgrade runs (try again later).
    pub reply: oneshot::Sender<Result<(), (bool, String)>>,
}

/// Watch `path` until the receiver of `tx` goes away.
pub async fn watch(path: PathBuf, tx: mpsc::Sender<WatchTrigger>) {
    let mut deployed = identify(&path);
    let mut candidate: Option<(FileId, tokio::time::Instant)> = None;
    let mut tick = tokio::time::interval(WATCH_POLL);
    loop {
        tick.tick().await;
        let Some(now) = identify(&path) else { continue };
        if Some(now) == deployed {
            candidate = None;
            continue;
        }
        let since = match candidate {
            Some((id, since)) if id == now => since,
            _ => {
                candidate = Some((now, tokio::time::Instant::now()));
                continue;
            }
        };
        if since.elapsed() < WATCH_DEBOUNCE {
            continue;
        }
        let (reply, answer) = oneshot::channel();
        if tx.send(WatchTrigger { reply }).await.is_err() {
            return;
        }
        match answer.await {
            Ok(Ok(())) => {
                info!(path = %path.display(), "new build at the worker path: upgrading");
                deployed = Some(now);
            }
            Ok(Err((true, reason))) => info!(%reason, "new build waits for the running upgrade"),
            Ok(Err((false, reason))) => {
                warn!(%reason, "new build at the worker path refused; waiting for the next one");
                deployed = Some(now);
            }
            Err(_) => return,
        }
    }
}
