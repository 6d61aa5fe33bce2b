//! The floor of a handoff (issue #6 benchmarks): a bare, pre-spawned process
//! that receives the connections' descriptors and a snapshot of the same size
//! over a Unix socket and reads the first byte any of them delivers. No
//! runtime, no supervisor, no serialization: the least any handoff design
//! pays to move the same sockets and state into another process.
//!
//! `bench-floor --socket PATH` connects to the benchmark at `PATH` and then,
//! for each trial until the benchmark closes the socket:
//!
//! 1. receives a 16-byte header `"BFLR" | trial u32 LE | snapshot length u64 LE`
//!    with the descriptors attached (`SCM_RIGHTS`), then the snapshot bytes;
//! 2. waits (`poll`) until one descriptor is readable and reads one byte;
//! 3. answers 24 bytes: `CLOCK_MONOTONIC` nanoseconds when the descriptors
//!    arrived, when the snapshot was complete, and when the first byte was
//!    read (u64 LE each); then closes its copies of the descriptors.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use handoff_protocol::fds::recv_with_fds;
use handoff_protocol::monotonic_ns;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

const MAGIC: &[u8; 4] = b"BFLR";
/// Longest wait for a first byte before the trial is reported failed (0).
const FIRST_BYTE_TIMEOUT_MS: u16 = 10_000;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let path = match (args.next().as_deref(), args.next()) {
        (Some("--socket"), Some(p)) => p,
        _ => {
            eprintln!("usage: bench-floor --socket PATH");
            return ExitCode::from(2);
        }
    };
    match run(&path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-floor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &str) -> std::io::Result<()> {
    let mut sock = UnixStream::connect(path)?;
    loop {
        let mut head = [0u8; 16];
        let got = recv_with_fds(sock.as_fd(), &mut head)?;
        if got.bytes == 0 {
            return Ok(()); // the benchmark is done
        }
        let fds_at = monotonic_ns();
        let fds: Vec<OwnedFd> = got.fds;
        sock.read_exact(&mut head[got.bytes..])?;
        if &head[..4] != MAGIC {
            return Err(std::io::Error::other("bad header magic"));
        }
        let len = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes")) as usize;
        let mut snapshot = Vec::with_capacity(len);
        (&mut sock).take(len as u64).read_to_end(&mut snapshot)?;
        if snapshot.len() != len {
            return Err(std::io::Error::other("snapshot cut short"));
        }
        let snap_at = monotonic_ns();
        let first_at = first_byte(&fds)?;
        let mut answer = [0u8; 24];
        answer[..8].copy_from_slice(&fds_at.to_le_bytes());
        answer[8..16].copy_from_slice(&snap_at.to_le_bytes());
        answer[16..].copy_from_slice(&first_at.to_le_bytes());
        sock.write_all(&answer)?;
        drop(snapshot);
        drop(fds);
    }
}

/// Wait for any descriptor to be readable, read one byte from it and return
/// when (0 if nothing arrived in time).
fn first_byte(fds: &[OwnedFd]) -> std::io::Result<u64> {
    if fds.is_empty() {
        return Ok(monotonic_ns());
    }
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
        .collect();
    loop {
        let n = poll(&mut polled, PollTimeout::from(FIRST_BYTE_TIMEOUT_MS))
            .map_err(std::io::Error::from)?;
        if n == 0 {
            return Ok(0);
        }
        for (i, p) in polled.iter().enumerate() {
            if p.any().unwrap_or(false) {
                let mut byte = [0u8; 1];
                match nix::unistd::read(fds[i].as_fd(), &mut byte) {
                    Ok(1) => return Ok(monotonic_ns()),
                    Ok(_) => return Err(std::io::Error::other("a connection closed")),
                    Err(nix::errno::Errno::EAGAIN) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}
