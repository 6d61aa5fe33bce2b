//! Kernel TLS calls that `nix` does not wrap: raw descriptor handling, so
//! this module and [`crate::fds`] are the only ones with `unsafe`.
//!
//! - [`send_record`]: one record of a given content type (a KeyUpdate, an
//!   alert) on a socket whose sending side the kernel protects
//!   (`TLS_SET_RECORD_TYPE` control message);
//! - [`tcp_ulp`]: the upper-layer protocol installed on a TCP socket (`"tls"`
//!   once kernel TLS is), to check that a descriptor really carries what a
//!   handed-over manifest says.
//!
//! Installing keys (`TCP_ULP`, `TLS_TX`, `TLS_RX`) and reading a record's
//! content type (`TLS_GET_RECORD_TYPE`) go through `nix`, which wraps them.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::libc;

/// Longest upper-layer protocol name the kernel reports (`TCP_ULP_NAME_MAX`).
const ULP_NAME_MAX: usize = 16;

/// Send `data` as one record of content type `content_type`, sealed by the
/// kernel. Never blocks (`MSG_DONTWAIT`): a full socket is `WouldBlock`.
/// Returns how many bytes the kernel took (all of them, for the small
/// control records this is meant for, or an error).
///
/// Plain TCP ignores the record-type control message and would send `data`
/// in the clear, so a socket without the TLS upper-layer protocol is
/// refused before anything is sent.
pub fn send_record(sock: BorrowedFd<'_>, content_type: u8, data: &[u8]) -> io::Result<usize> {
    let ulp = tcp_ulp(sock)?;
    if ulp != "tls" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to send a TLS record in the clear: the socket's upper-layer protocol is {ulp:?}, not \"tls\""),
        ));
    }
    // u64 words keep the control buffer aligned for `cmsghdr`.
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(1) } as usize;
    assert!(
        space <= mem::size_of_val(&control),
        "cmsg space for one byte"
    );
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is the documented empty value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    loop {
        // SAFETY: `msg` points at `iov` and `control`, both alive for this
        // block; `control` holds at least CMSG_SPACE(1) bytes, so the first
        // header and its one data byte are inside it. The kernel only reads
        // `data` (sendmsg does not write through iov_base).
        let sent = unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if cmsg.is_null() {
                return Err(io::Error::other("no room for the record type"));
            }
            (*cmsg).cmsg_level = libc::SOL_TLS;
            (*cmsg).cmsg_type = libc::TLS_SET_RECORD_TYPE;
            (*cmsg).cmsg_len = libc::CMSG_LEN(1) as _;
            *libc::CMSG_DATA(cmsg) = content_type;
            libc::sendmsg(
                sock.as_raw_fd(),
                &msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The upper-layer protocol on a TCP socket: `""` for none (or a kernel
/// without them), `"tls"` once kernel TLS is installed.
pub fn tcp_ulp(sock: BorrowedFd<'_>) -> io::Result<String> {
    let mut name = [0u8; ULP_NAME_MAX];
    let mut len = name.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `name` and stores
    // the length it wrote in `len`.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_ULP,
            name.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        let err = io::Error::last_os_error();
        // A kernel without upper-layer protocols (before Linux 4.13) has
        // none on this socket either.
        if err.raw_os_error() == Some(libc::ENOPROTOOPT) {
            return Ok(String::new());
        }
        return Err(err);
    }
    let name = &name[..(len as usize).min(ULP_NAME_MAX)];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    #[test]
    fn a_plain_socket_has_no_upper_layer_protocol() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(tcp_ulp(client.as_fd()).unwrap(), "");
    }

    #[test]
    fn a_record_is_never_sent_in_the_clear() {
        // Plain TCP would ignore the record type and send the bytes as they
        // are: refused before sending, and the peer receives nothing.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let err = send_record(client.as_fd(), 21, &[1, 0]).unwrap_err();
        assert!(err.to_string().contains("in the clear"), "{err}");
        drop(client);
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut &server, &mut got).unwrap();
        assert!(got.is_empty(), "{got:?}");
    }
}
