//! A websocket's lifetime: `--max-conn-age-ms`, the timed pings of
//! `--ping-every-ms` and their pong timeout (`--pong-timeout-ms`), and the
//! kicks of `/control/server_shutdown`.
//!
//! As on Binance, only a pong that echoes one of the server's pings counts
//! (payload `ping-<n>`, whether the ping was timed or `--ping-every`'s);
//! unsolicited pongs do not keep a connection alive.

use crate::state::Config;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Pongs echoing a server ping, counted by the reader, read by the writer.
#[derive(Debug, Default)]
pub struct Pongs(AtomicU64);

impl Pongs {
    /// The client sent a pong with `payload`; counted if it echoes a ping.
    pub fn received(&self, payload: &[u8]) {
        if payload.starts_with(b"ping-") {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the lifetime asks of the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifeEvent {
    /// Time for a timed ping.
    Ping,
    /// A timed ping went unanswered for `--pong-timeout-ms`.
    PongTimeout,
    /// The connection reached `--max-conn-age-ms`.
    MaxAge,
    /// `/control/server_shutdown`.
    Kicked,
    /// Nothing (a deadline moved): wait again.
    Recheck,
}

impl LifeEvent {
    /// The audit's `closed_by` for an event that closes the connection.
    pub fn close_reason(self) -> &'static str {
        match self {
            Self::PongTimeout => "pong_timeout",
            Self::MaxAge => "max_age",
            Self::Kicked => "server_shutdown",
            Self::Ping | Self::Recheck => "",
        }
    }
}

/// The deadlines of one connection.
#[derive(Debug)]
pub struct Lifetime {
    max_age_at: Option<Instant>,
    ping_every: Option<Duration>,
    next_ping: Option<Instant>,
    pong_timeout: Duration,
    /// The first timed ping since the last echoing pong: when, and the
    /// pong count then.
    unanswered: Option<(Instant, u64)>,
    kicks: watch::Receiver<u64>,
    kicks_alive: bool,
}

impl Lifetime {
    /// The lifetime of a connection upgraded at `opened`.
    pub fn new(config: &Config, opened: Instant, kicks: watch::Receiver<u64>) -> Self {
        Self {
            max_age_at: config.max_conn_age.map(|age| opened + age),
            ping_every: config.ping_every,
            next_ping: config.ping_every.map(|every| opened + every),
            pong_timeout: config.pong_timeout,
            unanswered: None,
            kicks,
            kicks_alive: true,
        }
    }

    /// A timed ping was just sent.
    pub fn pinged(&mut self, pongs: &Pongs) {
        let now = Instant::now();
        self.next_ping = self.ping_every.map(|every| now + every);
        if self.unanswered.is_none() {
            self.unanswered = Some((now, pongs.count()));
        }
    }

    /// When an unanswered timed ping times out.
    fn pong_deadline(&mut self, pongs: &Pongs) -> Option<Instant> {
        if self
            .unanswered
            .is_some_and(|(_, then)| pongs.count() > then)
        {
            self.unanswered = None;
        }
        self.unanswered.map(|(sent, _)| sent + self.pong_timeout)
    }

    /// The next event; `pings` says whether timed pings are wanted now.
    pub async fn next(&mut self, pongs: &Pongs, pings: bool) -> LifeEvent {
        let pong_deadline = self.pong_deadline(pongs);
        let far = Instant::now() + Duration::from_secs(86_400);
        let next_ping = self.next_ping.filter(|_| pings);
        tokio::select! {
            biased;
            changed = self.kicks.changed(), if self.kicks_alive => {
                if changed.is_ok() {
                    LifeEvent::Kicked
                } else {
                    self.kicks_alive = false;
                    LifeEvent::Recheck
                }
            }
            () = tokio::time::sleep_until(self.max_age_at.unwrap_or(far)),
                if self.max_age_at.is_some() => LifeEvent::MaxAge,
            () = tokio::time::sleep_until(pong_deadline.unwrap_or(far)),
                if pong_deadline.is_some() => {
                if self.pong_deadline(pongs).is_some_and(|d| d <= Instant::now()) {
                    LifeEvent::PongTimeout
                } else {
                    LifeEvent::Recheck
                }
            }
            () = tokio::time::sleep_until(next_ping.unwrap_or(far)),
                if next_ping.is_some() => LifeEvent::Ping,
            else => {
                std::future::pending::<()>().await;
                LifeEvent::Recheck
            }
        }
    }

    /// The next event that ends the connection (pings are not sent while
    /// waiting for this: the writer is busy).
    pub async fn fatal(&mut self, pongs: &Pongs) -> LifeEvent {
        loop {
            match self.next(pongs, false).await {
                LifeEvent::Recheck | LifeEvent::Ping => continue,
                ended => return ended,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Args;
    use clap::Parser;

    fn config(flags: &[&str]) -> Config {
        let mut argv = vec!["x"];
        argv.extend_from_slice(flags);
        Config::from_args(&Args::parse_from(argv))
    }

    // Real timers: only lower bounds are asserted, so a loaded machine
    // cannot fail it.
    #[tokio::test]
    async fn pings_pong_timeouts_and_max_age() {
        let cfg = config(&["--ping-every-ms", "10", "--pong-timeout-ms", "25"]);
        let kicks = watch::Sender::new(0u64);
        let pongs = Pongs::default();
        let mut life = Lifetime::new(&cfg, Instant::now(), kicks.subscribe());
        let start = Instant::now();
        assert_eq!(life.next(&pongs, true).await, LifeEvent::Ping);
        assert!(start.elapsed() >= Duration::from_millis(10));
        life.pinged(&pongs);
        // Answered at once, so however late the next poll comes (a loaded
        // machine), no pong deadline can pass before the next ping.
        pongs.received(b"unsolicited");
        pongs.received(b"ping-0");
        assert_eq!(life.next(&pongs, true).await, LifeEvent::Ping);
        life.pinged(&pongs);
        pongs.received(b"ping-1");
        // Answered: the next unanswered ping starts a new clock.
        assert_eq!(life.next(&pongs, true).await, LifeEvent::Ping);
        life.pinged(&pongs);
        let pinged = Instant::now();
        assert_eq!(life.fatal(&pongs).await, LifeEvent::PongTimeout);
        assert!(pinged.elapsed() >= Duration::from_millis(25));

        let cfg = config(&["--max-conn-age-ms", "40"]);
        let mut life = Lifetime::new(&cfg, Instant::now(), kicks.subscribe());
        let start = Instant::now();
        assert_eq!(life.next(&pongs, true).await, LifeEvent::MaxAge);
        assert!(start.elapsed() >= Duration::from_millis(40));

        let mut life = Lifetime::new(&config(&[]), Instant::now(), kicks.subscribe());
        kicks.send_modify(|v| *v += 1);
        assert_eq!(life.fatal(&pongs).await, LifeEvent::Kicked);
    }
}
