//! Raw descriptor handling: with [`crate::ktls`], the only module of the
//! workspace with `unsafe`.
//!
//! - [`send_with_fds`] / [`recv_with_fds`]: one `sendmsg`/`recvmsg` with
//!   `SCM_RIGHTS`. Received descriptors are created close-on-exec
//!   (`MSG_CMSG_CLOEXEC`), so they never leak into a child by accident, and a
//!   truncated control message (`MSG_CTRUNC`: the kernel dropped descriptors
//!   for lack of room) is an error: the descriptors that did arrive are closed
//!   and the caller is told, rather than the loss going unnoticed. The `sendfd`
//!   crate does neither, so this uses `nix` directly.
//! - [`inherit_in_child`]: clears close-on-exec on one descriptor *in the child
//!   only*, between fork and exec, so exactly the descriptors meant for a child
//!   reach it.
//! - [`take_inherited`]: the child's side: adopt the descriptor named in the
//!   environment, once.
#![allow(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::frame::MAX_FDS;

/// What one `recvmsg` brought in.
#[derive(Debug)]
pub struct Received {
    /// Bytes written at the start of the caller's buffer; 0 means end of stream.
    pub bytes: usize,
    /// Descriptors that came with those bytes, owned and close-on-exec.
    pub fds: Vec<OwnedFd>,
}

/// Send `data` (or a prefix of it: the return value says how much) with `fds`
/// attached as `SCM_RIGHTS`. Non-blocking sockets return `WouldBlock` as usual.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} descriptors in one message, more than the {MAX_FDS} allowed",
                fds.len()
            ),
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let iov = [IoSlice::new(data)];
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(io::Error::from)
}

/// Receive into `buf`, collecting any descriptors that arrive.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    if let Ok(cmsgs) = msg.cmsgs() {
        for cmsg in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                for fd in raw {
                    // SAFETY: the kernel just installed `fd` in this process's
                    // table for this message; nothing else owns it yet, so taking
                    // ownership here is the only way it will ever be closed.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        // `fds` is dropped here: what arrived is closed, not leaked.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "control message truncated (MSG_CTRUNC): the peer sent more descriptors than the {MAX_FDS} accepted; {} received were closed",
                fds.len()
            ),
        ));
    }
    Ok(Received {
        bytes: msg.bytes,
        fds,
    })
}

/// Arrange for `fd` to be inherited by the child that `cmd` spawns, under the
/// same number. Close-on-exec is cleared in the child only, after `fork`, so a
/// concurrently spawned child never inherits it. Returns the number the child
/// will see; pass it to the child (e.g. in [`crate::ENV_CHANNEL_FD`]).
///
/// The caller must keep `fd` open until the child has been spawned.
pub fn inherit_in_child(cmd: &mut tokio::process::Command, fd: BorrowedFd<'_>) -> RawFd {
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes one fcntl(2) call on a
    // descriptor number and allocates nothing (nix's fcntl wraps the libc call
    // and an errno read).
    unsafe {
        cmd.pre_exec(move || {
            let fd = BorrowedFd::borrow_raw(raw);
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )
            .map(|_| ())
            .map_err(io::Error::from)
        });
    }
    raw
}

/// Arrange for `fds[i]` to be descriptor `first + i` in the child that `cmd`
/// spawns (the layout socket activation uses: systemd hands descriptors
/// over from 3 on), close-on-exec cleared on them in the child only.
///
/// The caller must keep `fds` open until the child has been spawned.
pub fn place_in_child(cmd: &mut std::process::Command, fds: &[BorrowedFd<'_>], first: RawFd) {
    use std::os::unix::process::CommandExt;
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let n = raw.len() as RawFd;
    // SAFETY: the closure runs in the child between fork and exec and makes
    // only fcntl(2) and dup2(2) calls on descriptor numbers (async-signal-
    // safe); `raw` was allocated before the fork and is only read. Sources
    // are first copied above the target range, so placing one never
    // overwrites another that is still to be placed.
    unsafe {
        cmd.pre_exec(move || {
            let high = first + n;
            let mut moved = [0 as RawFd; 64];
            if raw.len() > moved.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "more than 64 descriptors",
                ));
            }
            for (i, &fd) in raw.iter().enumerate() {
                let r = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, high);
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
                moved[i] = r;
            }
            for (i, &fd) in moved[..raw.len()].iter().enumerate() {
                // dup2 clears close-on-exec on the new number.
                if libc::dup2(fd, first + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Adopt the descriptor the parent handed over under number `raw`, making it
/// close-on-exec again so it does not leak into this process's own children.
///
/// Fails if `raw` is not an open descriptor. Call it once per number: the
/// environment is the only record, so a second call would produce a second
/// owner.
pub fn take_inherited(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("inherited descriptor {raw} is a standard stream, not a supervisor socket"),
        ));
    }
    // SAFETY: the borrow lives only for this fcntl(F_GETFD) probe, which fails
    // with EBADF rather than touching anything if `raw` is not open.
    let probe = unsafe { BorrowedFd::borrow_raw(raw) };
    nix::fcntl::fcntl(probe, nix::fcntl::FcntlArg::F_GETFD).map_err(|e| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("inherited descriptor {raw} is not open: {e}"),
        )
    })?;
    nix::fcntl::fcntl(
        probe,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(io::Error::from)?;
    // SAFETY: `raw` is open (checked above) and was handed to this process by its
    // parent for it alone; the contract of this function (once per number) makes
    // this the single owner.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn fds_arrive_close_on_exec() {
        let (a, b) = UnixStream::pair().unwrap();
        let (x, _y) = UnixStream::pair().unwrap();
        let n = send_with_fds(a.as_fd(), b"hi", &[x.as_fd()]).unwrap();
        assert_eq!(n, 2);
        let mut buf = [0u8; 16];
        let got = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(got.bytes, 2);
        assert_eq!(got.fds.len(), 1);
        let flags = nix::fcntl::fcntl(got.fds[0].as_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert!(
            nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC)
        );
    }

    #[test]
    fn too_many_fds_refused_before_sending() {
        let (a, _b) = UnixStream::pair().unwrap();
        let fds: Vec<BorrowedFd<'_>> = (0..MAX_FDS + 1).map(|_| a.as_fd()).collect();
        assert!(send_with_fds(a.as_fd(), b"x", &fds).is_err());
    }
}
