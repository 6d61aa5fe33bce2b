//! The floor: what moving the same descriptors and a snapshot of the same
//! size into a bare, pre-spawned process costs, up to that process reading
//! its first byte (`bench-floor`).
//!
//! The benchmark plays the old process: it holds `n` subscribed websocket
//! connections to the same feed (through the same relay) and drains them;
//! at `t0` it stops reading, sends the descriptors (`SCM_RIGHTS`) and the
//! snapshot bytes over a Unix socket, and `bench-floor` answers when it read
//! its first byte. floor = first byte − t0, the same span as the blackout
//! (freeze → first message consumed), with nothing else in it.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use handoff_protocol::fds::send_with_fds;
use handoff_protocol::monotonic_ns;
use tokio::io::AsyncReadExt;

/// One trial's figures, in microseconds from `t0`.
#[derive(Debug, Clone, Copy)]
pub struct FloorTrial {
    pub fds_us: f64,
    pub snapshot_us: f64,
    pub first_byte_us: f64,
}

/// Open a websocket to `addr` by hand and subscribe to `symbols`; returns the
/// raw socket (the benchmark only drains bytes afterwards, it never parses).
pub fn raw_subscribed(addr: &str, symbols: &[&str]) -> Result<std::net::TcpStream> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            bail!("feed closed during the handshake");
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        bail!("handshake refused: {}", String::from_utf8_lossy(&head));
    }
    let params: Vec<String> = symbols.iter().map(|s| format!("\"{s}@trade\"")).collect();
    let text = format!(
        r#"{{"method":"SUBSCRIBE","params":[{}],"id":1}}"#,
        params.join(",")
    );
    // A masked text frame; a zero mask key leaves the payload as is.
    let mut frame = vec![0x81u8];
    if text.len() < 126 {
        frame.push(0x80 | text.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(text.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(text.as_bytes());
    s.write_all(&frame)?;
    Ok(s)
}

/// A pre-spawned `bench-floor` and the socket to it.
pub struct Floor {
    child: Child,
    sock: UnixStream,
}

impl Floor {
    pub fn spawn(bin: &std::path::Path, dir: &std::path::Path) -> Result<Floor> {
        let path = dir.join("floor.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        let child = Command::new(bin)
            .arg("--socket")
            .arg(&path)
            .stdin(Stdio::null())
            .spawn()
            .context("spawn bench-floor")?;
        let (sock, _) = listener.accept()?;
        sock.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Floor { child, sock })
    }

    /// Hand `fds` and `snapshot` over (after `t0`) and wait for the answer.
    fn trial(
        &mut self,
        trial: u32,
        t0: u64,
        fds: &[BorrowedFd<'_>],
        snapshot: &[u8],
    ) -> Result<FloorTrial> {
        let mut head = [0u8; 16];
        head[..4].copy_from_slice(b"BFLR");
        head[4..8].copy_from_slice(&trial.to_le_bytes());
        head[8..].copy_from_slice(&(snapshot.len() as u64).to_le_bytes());
        let mut sent = 0;
        while sent < head.len() {
            let attach = if sent == 0 { fds } else { &[] };
            sent += send_with_fds(self.sock.as_fd(), &head[sent..], attach)?;
        }
        self.sock.write_all(snapshot)?;
        let mut answer = [0u8; 24];
        self.sock.read_exact(&mut answer)?;
        let at = |i: usize| u64::from_le_bytes(answer[i..i + 8].try_into().expect("8 bytes"));
        let (fds_at, snap_at, first_at) = (at(0), at(8), at(16));
        if first_at == 0 {
            bail!("bench-floor saw no byte within its timeout");
        }
        let us = |t: u64| t.saturating_sub(t0) as f64 / 1000.0;
        Ok(FloorTrial {
            fds_us: us(fds_at),
            snapshot_us: us(snap_at),
            first_byte_us: us(first_at),
        })
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        let _ = self.child.wait();
    }
}

/// Run `trials` floor trials over `conns` fresh subscriptions to `addr`
/// (`symbols` each) with a snapshot of `snapshot_bytes`; between trials the
/// connections are drained for 10–30 ms, as a worker would consume them.
pub fn run(
    floor_bin: &std::path::Path,
    dir: &std::path::Path,
    addr: &str,
    symbols: &[&str],
    conns: usize,
    snapshot_bytes: usize,
    trials: usize,
) -> Result<Vec<FloorTrial>> {
    let streams: Vec<std::net::TcpStream> = (0..conns)
        .map(|_| raw_subscribed(addr, symbols))
        .collect::<Result<_>>()?;
    let mut floor = Floor::spawn(floor_bin, dir)?;
    let snapshot: Vec<u8> = (0..snapshot_bytes).map(|i| (i * 31 % 251) as u8).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut conns: Vec<tokio::net::TcpStream> = rt.block_on(async {
        streams
            .into_iter()
            .map(|s| {
                s.set_nonblocking(true)?;
                tokio::net::TcpStream::from_std(s)
            })
            .collect::<std::io::Result<_>>()
    })?;
    let mut out = Vec::with_capacity(trials);
    let mut rng: u64 = 0x2545_F491_4F6C_DD1D;
    for i in 0..trials {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let drain = Duration::from_millis(10 + rng % 21);
        rt.block_on(drain_for(&mut conns, drain));
        let t0 = monotonic_ns();
        let fds: Vec<BorrowedFd<'_>> = conns.iter().map(|c| c.as_fd()).collect();
        out.push(floor.trial(i as u32, t0, &fds, &snapshot)?);
    }
    Ok(out)
}

/// Read and discard everything the connections deliver for `d`.
async fn drain_for(conns: &mut [tokio::net::TcpStream], d: Duration) {
    let reads = conns.iter_mut().map(|c| async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => std::future::pending::<()>().await,
                Ok(_) => {}
            }
        }
    });
    let _ = tokio::time::timeout(d, futures_util::future::join_all(reads)).await;
}
