//! The control socket: a Unix socket (mode 0600) that `supervisorctl` talks
//! to. Each connection's peer credentials are checked (same uid as the
//! supervisor, or root); each carries one request, answered with zero or more
//! progress lines and one final response. Bad input gets an error answer and
//! a closed connection; it never reaches the daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use handoff_protocol::ctl::{CtlRequest, CtlResponse};
use handoff_protocol::frame::MAX_CTL_FRAME;
use handoff_protocol::Channel;
use thiserror::Error;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Why the control socket could not be set up.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("another supervisor is already listening on {path:?}")]
    InUse { path: std::path::PathBuf },
    #[error("cannot bind the control socket {path:?}: {source}")]
    Bind {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A request on its way to the daemon, with where to send the answers.
#[derive(Debug)]
pub struct CtlCommand {
    pub req: CtlRequest,
    pub reply: mpsc::Sender<CtlResponse>,
}

/// Bind `path` (replacing a stale socket file nobody listens on) with mode
/// 0600, inside a parent directory created 0700 if missing.
/// Who besides the supervisor's own uid and root may use the control socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub allow_uids: Vec<u32>,
    pub allow_gids: Vec<u32>,
}

impl Access {
    /// Whether a peer with these credentials may send commands.
    pub fn permits(&self, own_uid: u32, uid: u32, gid: u32) -> bool {
        uid == own_uid
            || uid == 0
            || self.allow_uids.contains(&uid)
            || self.allow_gids.contains(&gid)
    }
}

/// Bind `path`. With no allow list the socket is 0600 in a 0700 directory;
/// with allowed uids it must be reachable by them (directory 0711, socket
/// 0666) and with allowed gids only (socket 0660, owned by the first group):
/// the peer-credential check then decides.
pub fn bind(path: &Path, access: &Access) -> Result<UnixListener, ControlError> {
    use std::os::unix::fs::DirBuilderExt;
    let bind_err = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            let mode = if access == &Access::default() {
                0o700
            } else {
                0o711
            };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(parent)
                .map_err(bind_err)?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    bind_at(path, path, access)
}

/// For a supervisor taking over from another (see
/// [`handoff_protocol::succession`]): bind beside `path`, which the running
/// supervisor still serves; [`put_in_place`] makes it the control socket.
/// Returns the listener and the path it is bound at.
pub fn bind_beside(
    path: &Path,
    access: &Access,
) -> Result<(UnixListener, std::path::PathBuf), ControlError> {
    let beside = path.with_extension(format!("next-{}", std::process::id()));
    let _ = std::fs::remove_file(&beside);
    Ok((bind_at(path, &beside, access)?, beside))
}

/// Rename the socket bound by [`bind_beside`] over the control socket: from
/// this instant, new clients reach this supervisor.
pub fn put_in_place(beside: &Path, path: &Path) -> Result<(), ControlError> {
    std::fs::rename(beside, path).map_err(|source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// Bind at `at` (the control socket `path`, or beside it), with the mode the
/// access list asks for.
fn bind_at(path: &Path, at: &Path, access: &Access) -> Result<UnixListener, ControlError> {
    let bind_err = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(at).map_err(bind_err)?;
    let mode = if !access.allow_uids.is_empty() {
        0o666
    } else if let Some(&gid) = access.allow_gids.first() {
        nix::unistd::chown(at, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| bind_err(std::io::Error::from(e)))?;
        0o660
    } else {
        0o600
    };
    std::fs::set_permissions(at, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
    Ok(listener)
}

/// Accept connections forever, one task each.
pub async fn serve(
    listener: UnixListener,
    daemon: mpsc::Sender<CtlCommand>,
    read_timeout: Duration,
    audit_log: std::path::PathBuf,
    access: Access,
) {
    let access = std::sync::Arc::new(access);
    let own_uid = nix::unistd::geteuid().as_raw();
    let audit_log = std::sync::Arc::new(audit_log);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let policy = Policy {
            access: access.clone(),
            own_uid,
            read_timeout,
            audit_log: audit_log.clone(),
        };
        tokio::spawn(handle(stream, daemon.clone(), policy));
    }
}

/// What every control connection is held to.
struct Policy {
    access: std::sync::Arc<Access>,
    own_uid: u32,
    read_timeout: Duration,
    /// Every accepted command is appended here.
    audit_log: std::sync::Arc<std::path::PathBuf>,
}

async fn handle(stream: UnixStream, daemon: mpsc::Sender<CtlCommand>, policy: Policy) {
    let Policy {
        access,
        own_uid,
        read_timeout,
        audit_log,
    } = policy;
    let cred = stream.peer_cred().ok();
    let mut ch: Channel<CtlResponse, CtlRequest> = Channel::new(stream, MAX_CTL_FRAME);
    let (uid, gid, pid) =
        cred.map(|c| (c.uid(), c.gid(), c.pid()))
            .unwrap_or((u32::MAX, u32::MAX, None));
    if !access.permits(own_uid, uid, gid) {
        warn!(uid, gid, pid = ?pid, "control connection refused: peer is neither the supervisor's uid, root, nor allowed");
        let message =
            format!("permission denied: uid {uid} may not control this supervisor (uid {own_uid})");
        let _ = ch.send(&CtlResponse::Error { message }, &[]).await;
        return;
    }
    let req = match tokio::time::timeout(read_timeout, ch.recv()).await {
        Ok(Ok(Some((req, _fds)))) => req,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            debug!(error = %e, "bad control request");
            let _ = ch
                .send(
                    &CtlResponse::Error {
                        message: format!("bad request: {e}"),
                    },
                    &[],
                )
                .await;
            return;
        }
        Err(_) => {
            let message = format!("no request within {read_timeout:?}");
            let _ = ch.send(&CtlResponse::Error { message }, &[]).await;
            return;
        }
    };
    debug!(uid, pid = ?pid, ?req, "control request");
    crate::audit_log::record(&audit_log, uid, pid, &req);
    let (tx, mut rx) = mpsc::channel(32);
    if daemon.send(CtlCommand { req, reply: tx }).await.is_err() {
        let _ = ch
            .send(
                &CtlResponse::Error {
                    message: "the supervisor is shutting down".into(),
                },
                &[],
            )
            .await;
        return;
    }
    while let Some(resp) = rx.recv().await {
        let last = !matches!(resp, CtlResponse::Progress(_));
        if ch.send(&resp, &[]).await.is_err() || last {
            return;
        }
    }
}
