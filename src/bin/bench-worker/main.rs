//! The benchmark worker (issue #6): a minimal handoff app whose state size is
//! a knob. It subscribes and acks like `trading-worker`, keeps a counter per
//! stream, and carries `--ballast-bytes N` opaque bytes and/or `--positions N`
//! decimal positions (binary decimals: schema 2; schema 1, decimals as
//! strings, is still read) in its snapshot, so the benchmarks can hand over 1 KiB,
//! 1 MiB, 64 MiB or a million positions.
//!
//! ```text
//! bench-worker --feed ws://127.0.0.1:9443/ws [--feed …] [--symbols btcusdt,ethusdt]
//!              [--ack] [--ballast-bytes N] [--positions N] [--checkpoint-ms MS]
//!              [--timings FILE] [--ca-file PEM] [--precopy off|replay|delta]
//!              [--diverge]
//! ```
//!
//! `--timings FILE` appends one line per event, with `CLOCK_MONOTONIC`
//! nanoseconds (comparable across processes):
//! `snapshot PID START_NS DUR_NS BYTES`, `restore PID START_NS DUR_NS BYTES`
//! and `first PID NS` (first message consumed after a restore).
//!
//! Each trade also moves one position (`qty`) and one 8-byte word of the
//! ballast, picked by the trade id, so that a large state changes as a
//! bot's would. `--precopy replay|delta` lets an upgrade pre-copy the
//! state ([`live`]: the digest it keeps and the deltas it writes);
//! `--diverge` makes a build whose catch-up does not reproduce the state
//! (it counts replayed trades twice, and one trade more per delta), for
//! the tests that a diverging successor is refused.
//!
//! Runs under the supervisor exactly like `trading-worker`
//! (`supervisor --worker …/bench-worker -- --feed …`), or standalone.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use handoff_worker::protocol::monotonic_ns;
use handoff_worker::protocol::worker::{ConnInfo, PreCopyMode, RestoreMode};
use handoff_worker::{App, AppError, Message, Outbox, Settings};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use trading_worker::launch;

mod live;

const USAGE: &str = "bench-worker --feed URL [--feed URL…] [--symbols a,b] [--ack] \
[--ballast-bytes N] [--positions N] [--checkpoint-ms MS] [--timings FILE] [--ca-file PEM] \
[--precopy off|replay|delta] [--diverge]";

#[derive(Debug)]
struct Args {
    feeds: Vec<String>,
    symbols: Vec<String>,
    ack: bool,
    ballast_bytes: usize,
    positions: usize,
    checkpoint_ms: u64,
    timings: Option<PathBuf>,
    /// Certificates trusted for `wss://` feeds besides the public roots
    /// (the simulator's own CA, `exchange-sim --tls --tls-ca-out`).
    ca_file: Option<PathBuf>,
    precopy: PreCopyMode,
    diverge: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        feeds: Vec::new(),
        symbols: vec!["btcusdt".into(), "ethusdt".into()],
        ack: false,
        ballast_bytes: 0,
        positions: 0,
        checkpoint_ms: 1000,
        timings: None,
        ca_file: None,
        precopy: PreCopyMode::Off,
        diverge: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| {
            v.parse::<u64>()
                .map_err(|e| format!("{flag}: {v:?} is not a number: {e}"))
        };
        match flag.as_str() {
            "--feed" => a.feeds.push(value()?),
            "--symbols" => {
                a.symbols = value()?
                    .split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect()
            }
            "--ack" => a.ack = true,
            "--ballast-bytes" => a.ballast_bytes = num(value()?)? as usize,
            "--positions" => a.positions = num(value()?)? as usize,
            "--checkpoint-ms" => a.checkpoint_ms = num(value()?)?.max(1),
            "--timings" => a.timings = Some(PathBuf::from(value()?)),
            "--ca-file" => a.ca_file = Some(PathBuf::from(value()?)),
            "--precopy" => {
                a.precopy = match value()?.as_str() {
                    "off" => PreCopyMode::Off,
                    "replay" => PreCopyMode::Replay,
                    "delta" => PreCopyMode::Delta,
                    other => {
                        return Err(format!("--precopy: {other:?} is not off, replay or delta"))
                    }
                }
            }
            "--diverge" => a.diverge = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\nusage: {USAGE}")),
        }
    }
    if a.feeds.is_empty() {
        return Err(format!("at least one --feed is required\nusage: {USAGE}"));
    }
    Ok(a)
}

/// One position: three decimals, as a trading book would hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    qty: Decimal,
    avg_price: Decimal,
    realized_pnl: Decimal,
}

/// Trades seen on one stream of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counter {
    trades: u64,
    last_id: u64,
}

/// The whole snapshot, schema 2 (bincode 1.3, varint integers): each
/// decimal is its binary form, the 96-bit mantissa and the scale, which the
/// varint encoding packs into a few bytes (see [`positions_bin`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    /// Ballast and positions have been generated (a fresh start does it once).
    seeded: bool,
    /// `feed-0/btcusdt@trade` → counter.
    counters: BTreeMap<String, Counter>,
    #[serde(with = "serde_bytes")]
    ballast: Vec<u8>,
    #[serde(with = "positions_bin")]
    positions: BTreeMap<u64, Position>,
}

/// Schema 1 (earlier builds): fixint bincode, decimals as strings. Still
/// read, so a build of either schema can take over from the other.
mod v1 {
    use super::*;

    #[derive(Serialize, Deserialize)]
    pub struct Position {
        #[serde(with = "rust_decimal::serde::str")]
        pub qty: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        pub avg_price: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        pub realized_pnl: Decimal,
    }

    #[derive(Serialize, Deserialize)]
    pub struct State {
        pub seeded: bool,
        pub counters: BTreeMap<String, Counter>,
        #[serde(with = "serde_bytes")]
        pub ballast: Vec<u8>,
        pub positions: BTreeMap<u64, Position>,
    }

    pub fn codec() -> impl bincode::Options + Copy {
        use bincode::Options;
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .reject_trailing_bytes()
    }

    impl From<State> for super::State {
        fn from(s: State) -> Self {
            super::State {
                seeded: s.seeded,
                counters: s.counters,
                ballast: s.ballast,
                positions: s
                    .positions
                    .into_iter()
                    .map(|(k, p)| {
                        let p = super::Position {
                            qty: p.qty,
                            avg_price: p.avg_price,
                            realized_pnl: p.realized_pnl,
                        };
                        (k, p)
                    })
                    .collect(),
            }
        }
    }

    impl From<&super::State> for State {
        fn from(s: &super::State) -> Self {
            State {
                seeded: s.seeded,
                counters: s.counters.clone(),
                ballast: s.ballast.clone(),
                positions: s
                    .positions
                    .iter()
                    .map(|(k, p)| {
                        let p = Position {
                            qty: p.qty,
                            avg_price: p.avg_price,
                            realized_pnl: p.realized_pnl,
                        };
                        (*k, p)
                    })
                    .collect(),
            }
        }
    }
}

mod positions_bin;

fn codec() -> impl bincode::Options + Copy {
    use bincode::Options;
    bincode::DefaultOptions::new().reject_trailing_bytes()
}

/// Deterministic, incompressible-looking filler (so the bytes are real pages).
fn ballast(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let take = (n - v.len()).min(8);
        v.extend_from_slice(&x.to_le_bytes()[..take]);
    }
    v
}

fn positions(n: usize) -> BTreeMap<u64, Position> {
    (0..n as u64)
        .map(|i| {
            let p = Position {
                qty: Decimal::new((i * 7919 % 1_000_000) as i64 - 500_000, 5),
                avg_price: Decimal::new(420_000_000 + (i * 131 % 1_000_000) as i64, 4),
                realized_pnl: Decimal::new(-((i * 37 % 100_000) as i64), 6),
            };
            (i, p)
        })
        .collect()
}

/// Appends timing lines to `--timings FILE` (one `write` per line).
struct Timings {
    file: Option<std::fs::File>,
    path: Option<PathBuf>,
    pid: u32,
}

impl Timings {
    fn open(path: Option<&PathBuf>) -> Self {
        let file = path.and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| eprintln!("bench-worker: cannot open {}: {e}", p.display()))
                .ok()
        });
        Timings {
            file,
            path: path.cloned(),
            pid: std::process::id(),
        }
    }

    /// One line, under the serving worker's pid. In a checkpoint's
    /// copy-on-write child (`handoff_protocol::image`), which closed the
    /// parent's descriptors, the file is opened again.
    fn line(&self, what: &str, fields: &[u64]) {
        let reopened;
        let file = if std::process::id() == self.pid {
            self.file.as_ref()
        } else {
            reopened = self
                .path
                .as_ref()
                .and_then(|p| std::fs::OpenOptions::new().append(true).open(p).ok());
            reopened.as_ref()
        };
        if let Some(mut f) = file {
            let mut s = format!("{what} {}", self.pid);
            for v in fields {
                s.push(' ');
                s.push_str(&v.to_string());
            }
            s.push('\n');
            let _ = f.write_all(s.as_bytes());
        }
    }
}

struct Bench {
    state: State,
    symbols: Vec<String>,
    ack: bool,
    ballast_bytes: usize,
    positions: usize,
    timings: Timings,
    /// Waiting for the first message after a takeover (for the `first` line).
    restored: bool,
    precopy: PreCopyMode,
    diverge: bool,
    live: live::Live,
}

/// One trade on stream `key`: its counter, one position and one word of
/// ballast, all picked by the id, so that replaying the same trades on the
/// same state gives the same state.
fn trade(live: &mut live::Live, state: &mut State, key: &str, id: u64) {
    let mut c = state.counters.get(key).cloned().unwrap_or_default();
    c.trades += 1;
    c.last_id = id;
    live.counter(state, key, c);
    let n = state.positions.len() as u64;
    if n > 0 {
        let k = id.wrapping_mul(0x9E37_79B9) % n;
        if let Some(mut p) = state.positions.get(&k).copied() {
            p.qty += Decimal::new(1, 5);
            live.position(state, k, p);
        }
    }
    let words = (state.ballast.len() / 8) as u64;
    if words > 0 {
        let i = (id.wrapping_mul(7919) % words) as u32;
        let w = live::word(&state.ballast, i) ^ id;
        live.word(state, i, w);
    }
}

impl App for Bench {
    const NAME: &'static str = "bench-worker";
    const SCHEMA: u32 = 2;
    type Done = ();

    fn reads_schemas() -> Vec<u32> {
        vec![1, 2]
    }

    fn writes_schemas() -> Vec<u32> {
        vec![1, 2]
    }

    fn snapshot(&self) -> Result<Vec<u8>, AppError> {
        self.snapshot_as(Self::SCHEMA)
    }

    fn snapshot_as(&self, schema: u32) -> Result<Vec<u8>, AppError> {
        use bincode::Options;
        let start = monotonic_ns();
        // One pass into a buffer sized from an estimate (`serialize` would
        // size it exactly first, walking the state twice).
        let estimate = 4096
            + self.state.ballast.len()
            + 64 * self.state.counters.len()
            + 24 * self.state.positions.len();
        let mut bytes = Vec::with_capacity(estimate);
        match schema {
            1 => v1::codec().serialize_into(&mut bytes, &v1::State::from(&self.state)),
            2 => codec().serialize_into(&mut bytes, &self.state),
            other => return Err(AppError::new(format!("cannot write schema {other}"))),
        }
        .map_err(AppError::new)?;
        let end = monotonic_ns();
        self.timings
            .line("snapshot", &[start, end - start, bytes.len() as u64]);
        Ok(bytes)
    }

    fn restore(&mut self, schema: u32, bytes: &[u8], _mode: RestoreMode) -> Result<(), AppError> {
        use bincode::Options;
        let start = monotonic_ns();
        self.state = match schema {
            1 => v1::codec().deserialize::<v1::State>(bytes).map(State::from),
            _ => codec().deserialize(bytes),
        }
        .map_err(AppError::new)?;
        if self.precopy != PreCopyMode::Off {
            self.live = live::Live::default();
            self.live.keep(&self.state);
        }
        let end = monotonic_ns();
        self.timings
            .line("restore", &[start, end - start, bytes.len() as u64]);
        Ok(())
    }

    fn on_takeover(&mut self, _mode: RestoreMode, _out: &mut Outbox) {
        self.restored = true;
    }

    fn precopy(&self) -> PreCopyMode {
        self.precopy
    }

    fn digest(&self) -> Result<u64, AppError> {
        Ok(self.live.digest.unwrap_or_else(|| live::full(&self.state)))
    }

    fn delta_mark(&mut self) {
        self.live.mark();
    }

    fn delta(&mut self) -> Result<Vec<u8>, AppError> {
        use bincode::Options;
        codec()
            .serialize(&self.live.delta(&self.state))
            .map_err(AppError::new)
    }

    fn apply_delta(&mut self, bytes: &[u8]) -> Result<(), AppError> {
        use bincode::Options;
        let delta: live::Delta = codec()
            .with_limit(bytes.len() as u64 + 64)
            .deserialize(bytes)
            .map_err(AppError::new)?;
        self.live
            .apply(&mut self.state, delta)
            .map_err(AppError::new)?;
        if self.diverge {
            trade(&mut self.live, &mut self.state, "diverged", 0);
        }
        Ok(())
    }

    fn delta_end(&mut self) {
        self.live.unmark();
    }

    fn summary(&self) -> Option<String> {
        let trades: u64 = self.state.counters.values().map(|c| c.trades).sum();
        Some(
            serde_json::json!({
                "trades": trades,
                "streams": self.state.counters.len(),
                "ballast_bytes": self.state.ballast.len(),
                "positions": self.state.positions.len(),
            })
            .to_string(),
        )
    }

    fn on_open(&mut self, conn: &ConnInfo, out: &mut Outbox) {
        if !self.state.seeded {
            self.state.seeded = true;
            self.state.ballast = ballast(self.ballast_bytes);
            self.state.positions = positions(self.positions);
            if self.precopy != PreCopyMode::Off {
                self.live.keep(&self.state);
            }
        }
        out.send(
            conn.id,
            Message::text(trading_worker::market::subscribe(&self.symbols, false)),
        );
    }

    fn on_message(&mut self, conn: &ConnInfo, msg: Message, out: &mut Outbox) {
        if self.restored {
            self.restored = false;
            self.timings.line("first", &[monotonic_ns()]);
        }
        let Message::Text(text) = msg else { return };
        let Some((stream, id)) = trading_worker::market::trade_id(text.as_str()) else {
            return;
        };
        let key = format!("{}/{stream}", conn.name);
        trade(&mut self.live, &mut self.state, &key, id);
        if self.diverge {
            trade(&mut self.live, &mut self.state, &key, id);
        }
        if self.ack {
            let ack = trading_worker::market::ack(stream, id);
            out.send(conn.id, Message::text(ack));
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-worker: {e}");
            return ExitCode::from(2);
        }
    };
    // Logs, runtime and exit codes like trading-worker's (`launch`); the
    // benchmark discards the logs unless run with --verbose.
    let settings = Settings {
        build_id: launch::build_id(|| format!("bench-worker {}", env!("CARGO_PKG_VERSION"))),
        checkpoint_interval: Duration::from_millis(args.checkpoint_ms),
        ca_file: args.ca_file.clone(),
        ..Settings::default()
    };
    let fresh = move || Bench {
        state: State::default(),
        symbols: args.symbols,
        ack: args.ack,
        ballast_bytes: args.ballast_bytes,
        positions: args.positions,
        timings: Timings::open(args.timings.as_ref()),
        restored: false,
        precopy: args.precopy,
        diverge: args.diverge,
        live: live::Live::default(),
    };
    launch::run_main("bench-worker", &args.feeds, settings, fresh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bincode::Options;

    #[test]
    fn state_round_trips_through_bincode() {
        let s = State {
            seeded: true,
            counters: [(
                "feed-0/btcusdt@trade".to_string(),
                Counter {
                    trades: 3,
                    last_id: 3,
                },
            )]
            .into_iter()
            .collect(),
            ballast: ballast(1000),
            positions: positions(100),
        };
        let bytes = codec().serialize(&s).unwrap();
        let back: State = codec().deserialize(&bytes).unwrap();
        assert_eq!(s, back);
        assert_eq!(back.ballast.len(), 1000);
        // Schema 1 (decimals as strings) still reads, into the same state.
        let old = v1::codec().serialize(&v1::State::from(&s)).unwrap();
        let back1: State = v1::codec()
            .deserialize::<v1::State>(&old)
            .map(State::from)
            .unwrap();
        assert_eq!(s, back1);
        assert!(
            bytes.len() < old.len() / 2,
            "{} vs {}",
            bytes.len(),
            old.len()
        );
    }

    #[test]
    fn bad_positions_are_errors_not_panics() {
        let good = positions_bin::pack(&positions(3));
        assert_eq!(positions_bin::unpack(&good).unwrap(), positions(3));
        assert!(positions_bin::unpack(&good[..good.len() - 1]).is_err());
        // A decimal whose scale (200) no decimal has.
        assert!(positions_bin::unpack(&[1, 2, 200, 2, 0, 2, 0]).is_err());
        assert!(positions_bin::unpack(&[0xff; 40]).is_err());
    }
}
