//! A delay line for one direction of a relayed TCP connection: what
//! `tc qdisc … netem delay D` would do to the path, on a kernel without
//! netem (section 9, `coldnet.rs`).
//!
//! Every chunk read is held until its arrival time plus the one-way delay,
//! then written, in order: a timestamped queue between a reading and a
//! writing task. The release instant is fixed when the chunk arrives, so the
//! delay never accumulates: chunks read 1 ms apart leave 1 ms apart, `D`
//! later, and a chunk that is overdue (the writer was blocked) leaves at
//! once. Each direction of a connection has its own line, so a handshake's
//! request and answer each pay `D`: a TLS 1.3 and websocket handshake and
//! the SUBSCRIBE cost their real round trips. The connection's own round
//! trip (SYN, SYN-ACK) is paid too: the relay accepts locally at once, so
//! the client's first bytes are held as if they had been sent `2 D` after
//! the connect (`not_before_ns`), and reach the other side `3 D` after it,
//! as over a real path.
//!
//! The queue is unbounded: a chunk is in flight for `D`, and what the
//! benchmark's feed puts in flight in 25 ms is tens of KiB. No loss, no
//! jitter, no bandwidth limit: only the delay.
//!
//! Release instants come from a clock thread of the relay's own
//! (`Clock`): tokio's timer wheel rounds every deadline up to the next
//! millisecond, and a `timerfd` in tokio's reactor needs `unsafe`
//! (`AsyncFd::register`). The clock thread keeps the pending deadlines in
//! order, sleeps until the earliest (`CLOCK_MONOTONIC`, the clock of
//! `monotonic_ns`, with a timer slack of 1 ns instead of 50 µs) and wakes
//! the waiting task. What is left is two thread wake-ups, tens of
//! microseconds on this VM.
//!
//! With no delay line the copy is the plain relay of `tap.rs`: no queue,
//! no clock, the read instant is the release instant.

use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use handoff_protocol::monotonic_ns;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// What reaches the far side of the line.
pub enum Release<T> {
    /// A chunk, with what `on_read` made of it.
    Data(T),
    /// The end of the stream (EOF or an error on the near side).
    End,
}

/// A one-way delay and the clock that times it; cheap to clone (one
/// clock thread per line, shared by every connection of a relay).
#[derive(Clone)]
pub struct Line {
    delay_ns: u64,
    clock: Clock,
    /// How late each chunk left, in µs (the first `MAX_LATE` chunks).
    late_us: Arc<Mutex<Vec<u32>>>,
}

/// Lateness samples kept per line.
const MAX_LATE: usize = 2_000_000;

impl Line {
    pub fn start(delay: Duration) -> io::Result<Line> {
        Ok(Line {
            delay_ns: u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX),
            clock: Clock::start()?,
            late_us: Arc::default(),
        })
    }

    pub fn delay_ns(&self) -> u64 {
        self.delay_ns
    }

    /// How late each chunk so far left the line (release − due), in µs:
    /// the line's own error.
    pub fn lateness_us(&self) -> Vec<f64> {
        let late = self.late_us.lock().unwrap_or_else(PoisonError::into_inner);
        late.iter().map(|&x| f64::from(x)).collect()
    }
}

/// Copy `rd` into `wr`, every chunk held until the line's delay after it
/// was read (and after `not_before_ns`, a `CLOCK_MONOTONIC` instant); with
/// no line, at once. `on_read` sees each chunk as it is read; `on_release`
/// gets its result, and the instant, just before the chunk is written: when
/// the far side gets it. Ends (and shuts `wr` down) once `rd` ends and its
/// end has been delivered, or when `wr` fails.
pub async fn copy<R, W, T>(
    mut rd: R,
    mut wr: W,
    line: Option<Line>,
    not_before_ns: u64,
    mut on_read: impl FnMut(&[u8]) -> T + Send,
    mut on_release: impl FnMut(Release<T>, u64) + Send,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
    T: Send,
{
    let mut buf = vec![0u8; 64 * 1024];
    let Some(line) = line else {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let now = monotonic_ns();
                    on_release(Release::Data(on_read(&buf[..n])), now);
                    if wr.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        // As the relay always did: the end of the copy, however it ended.
        on_release(Release::End, monotonic_ns());
        let _ = wr.shutdown().await;
        return;
    };
    // (release instant, chunk and what on_read made of it; None: the end)
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Option<(Vec<u8>, T)>)>();
    let delay_ns = line.delay_ns;
    let reader = async move {
        loop {
            let read = rd.read(&mut buf).await;
            let due = monotonic_ns().max(not_before_ns).saturating_add(delay_ns);
            let item = match read {
                Ok(0) | Err(_) => None,
                Ok(n) => Some((buf[..n].to_vec(), on_read(&buf[..n]))),
            };
            let end = item.is_none();
            if tx.send((due, item)).is_err() || end {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, item)) = rx.recv().await {
            line.clock.until(due).await;
            let now = monotonic_ns();
            {
                let mut late = line.late_us.lock().unwrap_or_else(PoisonError::into_inner);
                if late.len() < MAX_LATE {
                    late.push(u32::try_from(now.saturating_sub(due) / 1000).unwrap_or(u32::MAX));
                }
            }
            let Some((bytes, seen)) = item else {
                on_release(Release::End, now);
                break;
            };
            on_release(Release::Data(seen), now);
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        // Dropping `rx` here stops the reader at its next chunk.
        drop(rx);
        let _ = wr.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// A wake-up at a `CLOCK_MONOTONIC` instant, and whom to tell.
type Alarm = (u64, oneshot::Sender<()>);

/// A thread that wakes tasks at nanosecond deadlines.
#[derive(Clone)]
struct Clock(std_mpsc::Sender<Alarm>);

impl Clock {
    fn start() -> io::Result<Clock> {
        let (tx, rx) = std_mpsc::channel::<Alarm>();
        std::thread::Builder::new()
            .name("tap-clock".into())
            .spawn(move || {
                // The kernel's default slack would add up to 50 µs.
                let _ = nix::sys::prctl::set_timerslack(1);
                // (due, arrival order) → waiter: due order, FIFO on ties.
                let mut pending: BTreeMap<(u64, u64), oneshot::Sender<()>> = BTreeMap::new();
                let mut seq = 0u64;
                let mut open = true;
                while open || !pending.is_empty() {
                    let now = monotonic_ns();
                    while let Some(e) = pending.first_entry().filter(|e| e.key().0 <= now) {
                        let _ = e.remove().send(());
                    }
                    let next = match pending.first_key_value() {
                        None if open => rx.recv().ok(),
                        None => break,
                        Some((&(due, _), _)) if open => {
                            let wait = Duration::from_nanos(due.saturating_sub(monotonic_ns()));
                            match rx.recv_timeout(wait) {
                                Ok(a) => Some(a),
                                Err(std_mpsc::RecvTimeoutError::Timeout) => continue,
                                Err(std_mpsc::RecvTimeoutError::Disconnected) => None,
                            }
                        }
                        Some((&(due, _), _)) => {
                            std::thread::sleep(Duration::from_nanos(
                                due.saturating_sub(monotonic_ns()),
                            ));
                            continue;
                        }
                    };
                    match next {
                        Some((due, waiter)) => {
                            pending.insert((due, seq), waiter);
                            seq += 1;
                        }
                        None => open = false,
                    }
                }
            })?;
        Ok(Clock(tx))
    }

    /// Return at `due_ns` (`CLOCK_MONOTONIC`), at once if it has passed.
    async fn until(&self, due_ns: u64) {
        if monotonic_ns() >= due_ns {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self.0.send((due_ns, tx)).is_ok() {
            let _ = rx.await;
        }
    }
}
