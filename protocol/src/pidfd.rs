//! A process handle that cannot be fooled by pid reuse (`pidfd_open(2)`,
//! Linux 5.3+): the supervisor watches and signals a worker it did not spawn
//! (one it adopted from a previous supervisor) through it, so neither
//! `waitpid` (not its child) nor a bare `kill(pid)` (the pid may have been
//! reused) is needed. `nix` has no binding yet; the two system calls live
//! here, beside `fds.rs`, as the only other place that handles raw
//! descriptors.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;

/// An open handle on one process.
#[derive(Debug)]
pub struct PidFd {
    pid: u32,
    fd: AsyncFd<OwnedFd>,
}

impl PidFd {
    /// A handle on process `pid`. The caller must know that `pid` is the
    /// process it means *after* this call returns (for example: a message from
    /// that process arrives after it), since the pid could have been reused
    /// before. Must be called inside a tokio runtime.
    pub fn open(pid: u32) -> io::Result<PidFd> {
        let pid_t = libc::pid_t::try_from(pid)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("pid {pid}")))?;
        // SAFETY: pidfd_open takes a pid and a flags word and returns a new
        // descriptor or -1; no memory is passed.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid_t, 0 as libc::c_uint) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the call returned a fresh descriptor that nothing else owns
        // (pidfds are close-on-exec by default).
        let owned = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and is the
        // same descriptor until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(PidFd { pid, fd })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resolves once the process has exited (a pidfd turns readable then).
    pub async fn exited(&self) -> io::Result<()> {
        let _ready = self.fd.readable().await?;
        Ok(())
    }

    /// Whether the process has exited already (without waiting).
    pub fn has_exited(&self) -> bool {
        let mut fds = [nix::poll::PollFd::new(
            self.fd.get_ref().as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// Send `sig` to exactly this process (never to a process that reused
    /// its pid: that fails with `ESRCH` instead).
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        let fd: BorrowedFd<'_> = self.fd.get_ref().as_fd();
        // SAFETY: pidfd_send_signal(pidfd, sig, info, flags): a valid open
        // descriptor borrowed for the call, a signal number, a null siginfo
        // pointer (the kernel then fills it as kill(2) would) and no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                sig as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0 as libc::c_uint,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pidfd_sees_its_process_exit_and_signals_only_it() {
        let _g = crate::FORK_GUARD.lock();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pfd = PidFd::open(child.id()).unwrap();
        assert!(!pfd.has_exited());
        pfd.signal(Signal::SIGKILL).unwrap();
        pfd.exited().await.unwrap();
        assert!(pfd.has_exited());
        child.wait().unwrap();
        // Reaped: the pid is free for reuse, and the handle refuses to signal.
        assert!(pfd.signal(Signal::SIGTERM).is_err());
    }

    #[test]
    fn no_such_process_is_an_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        assert!(PidFd::open(u32::MAX).is_err());
    }
}
