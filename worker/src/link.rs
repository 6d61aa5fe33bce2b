//! The worker's end of its supervisor socket.

use std::os::fd::{AsFd, OwnedFd};

use handoff_protocol::frame::MAX_WORKER_FRAME;
use handoff_protocol::worker::{FromWorker, ToWorker};
use handoff_protocol::{fds, Channel, ChannelError, ENV_CHANNEL_FD};
use thiserror::Error;

/// Why the supervisor socket could not be set up.
#[derive(Debug, Error)]
pub enum LinkError {
    #[error("{ENV_CHANNEL_FD}={value:?} is not a descriptor number")]
    BadEnv { value: String },
    #[error("cannot adopt the supervisor socket {fd}: {source}")]
    Adopt {
        fd: i32,
        #[source]
        source: std::io::Error,
    },
}

/// The channel to the supervisor.
pub struct Link {
    ch: Channel<FromWorker, ToWorker>,
}

impl Link {
    /// The supervisor socket named by `HANDOFF_FD`, or `None` when the worker
    /// was started by hand (standalone mode).
    pub fn from_env() -> Result<Option<Link>, LinkError> {
        let Ok(value) = std::env::var(ENV_CHANNEL_FD) else {
            return Ok(None);
        };
        let fd: i32 = value.trim().parse().map_err(|_| LinkError::BadEnv {
            value: value.clone(),
        })?;
        let owned = fds::take_inherited(fd).map_err(|source| LinkError::Adopt { fd, source })?;
        let ch = Channel::from_fd(owned, MAX_WORKER_FRAME)
            .map_err(|source| LinkError::Adopt { fd, source })?;
        Ok(Some(Link { ch }))
    }

    /// A channel over a connection a supervisor made to this worker's orphan
    /// socket (see [`crate::orphan`]).
    pub fn from_stream(stream: tokio::net::UnixStream) -> Link {
        Link {
            ch: Channel::new(stream, MAX_WORKER_FRAME),
        }
    }

    pub async fn send(&mut self, msg: &FromWorker) -> Result<(), ChannelError> {
        self.ch.send(msg, &[]).await
    }

    /// Send a message with one descriptor attached (connection registration).
    pub async fn send_with_fd(
        &mut self,
        msg: &FromWorker,
        fd: impl AsFd,
    ) -> Result<(), ChannelError> {
        self.ch.send(msg, &[fd.as_fd()]).await
    }

    /// Write raw bytes that are no frame at all (fault injection only).
    pub async fn send_garbage(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let sock = self.ch.socket();
        sock.writable().await?;
        let mut written = 0;
        while written < bytes.len() {
            match sock.try_write(&bytes[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => sock.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Next command; `None` when the supervisor has gone. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<(ToWorker, Vec<OwnedFd>)>, ChannelError> {
        self.ch.recv().await
    }
}

/// `link.recv()` when there is a link, pending forever when there is none (for
/// use in `select!`).
pub async fn recv_opt(
    link: &mut Option<Link>,
) -> Result<Option<(ToWorker, Vec<OwnedFd>)>, ChannelError> {
    match link {
        Some(link) => link.recv().await,
        None => std::future::pending().await,
    }
}
