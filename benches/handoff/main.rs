//! The handoff benchmarks (issue #6): the real binaries against the exchange
//! simulator, one table (markdown on stdout) and the same figures as JSON.
//!
//! ```sh
//! cargo bench --bench handoff                         # the full run (a few minutes)
//! cargo test --bench handoff                         # CI smoke (also part of `cargo test --workspace`):
//!                                                     # debug build, a handful of upgrades,
//!                                                     # fails only if a handoff lost a message
//! ```
//!
//! Sections (all in one run):
//! 1. blackout per upgrade (supervisor's figure and the feed's, from the
//!    ack stream), for 1/16/64 connections × 1 KiB/1 MiB/64 MiB snapshots,
//!    next to the floor (a bare pre-spawned process getting the same
//!    descriptors and bytes) and the messages lost (the simulator's audit)
//!    (`blackout.rs`);
//! 2. cold restart of the same worker (kill, start again standalone): its
//!    gap and the messages it loses (`cold.rs`);
//! 3. upgrade latency (trigger → old worker reaped; `blackout.rs`);
//! 4. steady-state throughput under the supervisor vs a bare client
//!    (`steady.rs`);
//! 5. snapshot scale (10 k and 1 M decimal positions): serialize, transfer,
//!    restore (`scale.rs`);
//! 6. supervisor footprint (RSS, CPU) idle and during 10 upgrades/s
//!    (`footprint.rs`);
//! 7. the Python path (`python.rs`; needs `HANDOFF_PYTHON`): per-message
//!    cost vs a plain `websockets` client, blackout vs the Rust worker;
//! 8. the serving worker's stall at a periodic checkpoint, as the feed sees
//!    it, checkpoints every 200 ms vs off (`checkpoint.rs`);
//! 9. a cold restart over a delayed path (5 and 25 ms one-way, `ws://` and
//!    `wss://`) against the handoff over the same path, and the path's own
//!    gaps with neither (`coldnet.rs`; the delay line is `delay.rs`);
//! 10. pre-copy handoffs (replay and delta) beside full-snapshot ones, at
//!     16 and 64 connections, for 2 KiB, 1 MiB, 64 MiB and a million
//!     positions, with the fds-only floor (`precopy.rs`).
//!
//! Flags: `--smoke`, `--upgrades N`, `--conns 1,16,64`,
//! `--sizes 1024,1048576,67108864`, `--feed-rate N` (messages/s over all
//! connections: each connection's streams get an equal share, so the load
//! on the 2 cores does not grow with the connection count),
//! `--only blackout,cold,steady,snapshot,footprint,python,checkpoint,coldnet,precopy`,
//! `--checkpoint-ms MS`, `--checkpoint-secs S`, `--checkpoint-rounds N`,
//! `--checkpoint-positions N,..` (section 8), `--delays-ms 5,25`,
//! `--coldnet-restarts N`, `--coldnet-conns N`, `--coldnet-sizes BYTES,..`
//! (section 9), `--precopy-upgrades N`, `--precopy-conns N,..` (section 10),
//! `--out FILE`, `--verbose`
//! (the processes' logs on stderr), `--back-to-back` (upgrade again without
//! waiting for the worker to work off the previous blackout's backlog).
//! Targets are reported, never asserted.

mod bare;
mod blackout;
mod checkpoint;
mod cold;
mod coldnet;
mod delay;
mod floor;
mod footprint;
mod precopy;
mod python;
mod rig;
mod scale;
mod stats;
mod steady;
mod tap;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use blackout::{blackout_cell, blackout_table, latency_table, Cell};
use cold::{cold_restarts, cold_table};
use footprint::{footprint, footprint_table};
use rig::{AllBins, CLOCK_TICKS_PER_S};
use scale::{snapshot_scale, snapshot_table, Scale};
use stats::{bytes, pct, round1, trio, us};
use steady::{steady, steady_table, Steady};

const SYMBOLS: [&str; 2] = ["btcusdt", "ethusdt"];
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

#[derive(Debug, Clone)]
struct Opts {
    smoke: bool,
    upgrades: usize,
    conns: Vec<usize>,
    sizes: Vec<usize>,
    /// Trades per second over all connections and streams.
    feed_rate: u32,
    cold_restarts: usize,
    steady_messages: u64,
    steady_conns: Vec<usize>,
    steady_passes: usize,
    positions: Vec<usize>,
    snapshot_upgrades: usize,
    footprint_secs: f64,
    /// Section 8: the checkpointing passes' interval, length and rounds, and
    /// the position counts measured beside the ballast sizes.
    checkpoint_ms: u64,
    checkpoint_secs: f64,
    checkpoint_rounds: usize,
    checkpoint_positions: Vec<usize>,
    /// Section 9: the one-way delays, the rounds (one cold restart and one
    /// upgrade per state each), the connections and the handoff's states.
    coldnet_delays_ms: Vec<u64>,
    coldnet_restarts: usize,
    coldnet_conns: usize,
    coldnet_sizes: Vec<usize>,
    /// Section 10: upgrades per row and the connection counts.
    precopy_upgrades: usize,
    precopy_conns: Vec<usize>,
    only: Option<Vec<String>>,
    out: Option<PathBuf>,
    verbose: bool,
    /// Do not wait for the worker to catch up between upgrades.
    back_to_back: bool,
}

impl Opts {
    fn parse() -> Result<Opts> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        // `cargo bench` passes --bench; `cargo test` (which runs this target
        // too, `test = true`) does not: then it is the CI smoke run.
        let smoke = args.iter().any(|a| a == "--smoke") || !args.iter().any(|a| a == "--bench");
        let mut o = if smoke {
            Opts {
                smoke,
                upgrades: 5,
                conns: vec![1, 4],
                sizes: vec![KIB, MIB],
                feed_rate: 16_000,
                cold_restarts: 2,
                steady_messages: 20_000,
                steady_conns: vec![1, 4],
                steady_passes: 1,
                positions: vec![10_000],
                snapshot_upgrades: 2,
                footprint_secs: 0.5,
                checkpoint_ms: 200,
                checkpoint_secs: 1.0,
                checkpoint_rounds: 1,
                checkpoint_positions: Vec::new(),
                coldnet_delays_ms: vec![5],
                coldnet_restarts: 1,
                coldnet_conns: 4,
                coldnet_sizes: vec![KIB],
                precopy_upgrades: 2,
                precopy_conns: vec![1],
                only: None,
                out: None,
                verbose: false,
                back_to_back: false,
            }
        } else {
            Opts {
                smoke,
                upgrades: 200,
                conns: vec![1, 16, 64],
                sizes: vec![KIB, MIB, 64 * MIB],
                feed_rate: 16_000,
                cold_restarts: 20,
                steady_messages: 300_000,
                steady_conns: vec![1, 16],
                steady_passes: 3,
                positions: vec![10_000, 1_000_000],
                snapshot_upgrades: 10,
                footprint_secs: 3.0,
                checkpoint_ms: 200,
                checkpoint_secs: 10.0,
                checkpoint_rounds: 2,
                checkpoint_positions: vec![1_000_000],
                coldnet_delays_ms: vec![5, 25],
                coldnet_restarts: 5,
                coldnet_conns: 4,
                coldnet_sizes: vec![KIB, MIB],
                precopy_upgrades: 30,
                precopy_conns: vec![16, 64],
                only: None,
                out: None,
                verbose: false,
                back_to_back: false,
            }
        };
        // An empty list is allowed (`--checkpoint-positions ''`: none).
        let list = |v: &str| -> Result<Vec<usize>> {
            v.split(',')
                .filter(|x| !x.trim().is_empty())
                .map(|x| x.trim().parse::<usize>().context("a number"))
                .collect()
        };
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().with_context(|| format!("{a} needs a value"));
            match a.as_str() {
                "--smoke" | "--bench" => {}
                "--upgrades" => o.upgrades = val()?.parse()?,
                "--conns" => o.conns = list(&val()?)?,
                "--sizes" => o.sizes = list(&val()?)?,
                "--feed-rate" => o.feed_rate = val()?.parse()?,
                "--cold-restarts" => o.cold_restarts = val()?.parse()?,
                "--positions" => o.positions = list(&val()?)?,
                "--checkpoint-ms" => o.checkpoint_ms = val()?.parse::<u64>()?.max(1),
                "--checkpoint-secs" => o.checkpoint_secs = val()?.parse()?,
                "--checkpoint-rounds" => o.checkpoint_rounds = val()?.parse()?,
                "--checkpoint-positions" => o.checkpoint_positions = list(&val()?)?,
                "--delays-ms" => {
                    o.coldnet_delays_ms = list(&val()?)?.into_iter().map(|d| d as u64).collect()
                }
                "--coldnet-restarts" => o.coldnet_restarts = val()?.parse::<usize>()?.max(1),
                "--coldnet-conns" => o.coldnet_conns = val()?.parse::<usize>()?.clamp(1, 16),
                "--coldnet-sizes" => o.coldnet_sizes = list(&val()?)?,
                "--precopy-upgrades" => o.precopy_upgrades = val()?.parse::<usize>()?.max(1),
                "--precopy-conns" => o.precopy_conns = list(&val()?)?,
                "--only" => o.only = Some(val()?.split(',').map(str::to_string).collect()),
                "--out" => o.out = Some(val()?.into()),
                "--verbose" => o.verbose = true,
                "--back-to-back" => o.back_to_back = true,
                "-h" | "--help" => {
                    println!(
                        "cargo bench --bench handoff -- [--smoke] [--upgrades N] [--conns 1,16,64] \
                         [--sizes BYTES,..] [--feed-rate MSGS_PER_S] [--cold-restarts N] [--positions N,..] \
                         [--checkpoint-ms MS] [--checkpoint-secs S] [--checkpoint-rounds N] \
                         [--checkpoint-positions N,..] [--delays-ms 5,25] [--coldnet-restarts N] \
                         [--coldnet-conns N] [--coldnet-sizes BYTES,..] \
                         [--precopy-upgrades N] [--precopy-conns N,..] \
                         [--only blackout,cold,steady,snapshot,footprint,python,checkpoint,coldnet,precopy] [--out FILE] \
                         [--verbose] [--back-to-back]"
                    );
                    std::process::exit(0);
                }
                other if other.starts_with("--") => bail!("unknown flag {other} (try --help)"),
                _ => {} // a test-name filter from `cargo test`: ignored
            }
        }
        Ok(o)
    }

    fn runs(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|v| v.iter().any(|s| s == section))
    }

    /// The cell the targets talk about (16 connections, 1 MiB), or the
    /// nearest one this run has.
    fn headline(&self) -> (usize, usize) {
        let near = |v: &[usize], want: usize| {
            v.iter()
                .copied()
                .min_by_key(|&x| x.abs_diff(want))
                .unwrap_or(want)
        };
        (near(&self.conns, 16), near(&self.sizes, MIB))
    }

    /// The simulator's `--rate` (trades/s per stream per connection) that
    /// makes `feed_rate` messages/s over `conns` connections.
    fn rate_per_stream(&self, conns: usize) -> u32 {
        (self.feed_rate / (conns * SYMBOLS.len()).max(1) as u32).max(1)
    }

    fn sim_rate_args(&self, conns: usize) -> Vec<String> {
        vec!["--rate".into(), self.rate_per_stream(conns).to_string()]
    }

    /// A rig of `conns` connections fed at this run's rate, its worker run
    /// with `worker_args` (the supervisor not started yet).
    fn feed_rig(&self, bins: &AllBins, conns: usize, worker_args: Vec<String>) -> Result<rig::Rig> {
        rig::Rig::feed(
            bins,
            rig::RigOpts {
                conns,
                sim_args: self.sim_rate_args(conns),
                worker_args,
                verbose: self.verbose,
            },
        )
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handoff bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

/// A small deterministic PRNG for pacing jitter.
struct Jitter(u64);

impl Jitter {
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(lo + self.0 % (hi - lo + 1))
    }
}

fn run() -> Result<()> {
    let o = Opts::parse()?;
    let bins = AllBins::from_cargo();
    let started = Instant::now();
    let cpu0 = rig::CpuAccount::now();
    let out_path = o.out.clone().unwrap_or_else(|| {
        bins.target_dir().join("bench").join(if o.smoke {
            "handoff-smoke.json"
        } else {
            "handoff.json"
        })
    });
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    progress(format!(
        "{} run, {profile} binaries in {}",
        if o.smoke { "smoke" } else { "full" },
        bins.target_dir().display()
    ));
    // Which sources were measured (`-dirty`: with uncommitted changes).
    let commit = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let mut report = json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "commit": commit,
        "profile": profile,
        "smoke": o.smoke,
        "machine": machine(),
        "feed": {
            "messages_per_s_all_connections": o.feed_rate,
            "rate_rule": "each connection's streams get feed_rate / (connections × streams) trades/s",
            "streams_per_connection": SYMBOLS.len(),
        },
    });
    let mut md = String::new();

    let mut headline_blackout: Option<Cell> = None;
    if o.runs("blackout") {
        let mut cells = Vec::new();
        for &c in &o.conns {
            for &s in &o.sizes {
                progress(format!(
                    "blackout: {c} connections, {} snapshot, {} upgrades",
                    bytes(s as u64),
                    o.upgrades
                ));
                let cell = blackout_cell(&bins, &o, c, s)?;
                progress(format!(
                    "  blackout {}  pause p50 {}  feed {}  floor p50 {}  lost {}",
                    trio(&cell.blackout),
                    us(pct(&cell.pause, 50.0)),
                    trio(&cell.feed),
                    us(pct(&cell.floor, 50.0)),
                    cell.lost
                ));
                cells.push(cell);
            }
        }
        let (hc, hs) = o.headline();
        headline_blackout = cells
            .iter()
            .find(|c| c.conns == hc && c.size == hs)
            .cloned();
        md.push_str(&blackout_table(&o, &cells));
        report["blackout"] = Value::Array(cells.iter().map(Cell::json).collect());
        // The smoke run checks what CI can rely on (no timing): every
        // handoff kept every message and every connection.
        if o.smoke {
            for c in &cells {
                if c.lost + c.duplicates + c.reordered + c.closed + c.reconnects > 0 {
                    bail!(
                        "smoke: a handoff lost messages or connections ({} connections, {}): {}",
                        c.conns,
                        bytes(c.snapshot_bytes),
                        c.json()["audit"]
                    );
                }
            }
        }
    }

    if o.runs("cold") {
        let (hc, hs) = o.headline();
        progress(format!(
            "cold restart: {hc} connections, {} restarts",
            o.cold_restarts
        ));
        let cold = cold_restarts(&bins, &o, hc, hs)?;
        md.push_str(&cold_table(&cold, headline_blackout.as_ref()));
        report["cold_restart"] = cold.json_vs(headline_blackout.as_ref());
    }

    if o.runs("blackout") {
        if let Some(h) = &headline_blackout {
            md.push_str(&latency_table(h));
        }
    }

    if o.runs("steady") {
        let mut rows = Vec::new();
        for &c in &o.steady_conns {
            progress(format!("steady state: {c} connections"));
            rows.push(steady(&bins, &o, c)?);
        }
        md.push_str(&steady_table(&rows));
        report["steady_state"] = Value::Array(rows.iter().map(Steady::json).collect());
    }

    if o.runs("snapshot") {
        let mut rows = Vec::new();
        for &n in &o.positions {
            progress(format!(
                "snapshot scale: {n} positions, {} upgrades",
                o.snapshot_upgrades
            ));
            rows.push(snapshot_scale(&bins, &o, n)?);
        }
        md.push_str(&snapshot_table(&rows));
        report["snapshot_scale"] = Value::Array(rows.iter().map(Scale::json).collect());
    }

    if o.runs("footprint") {
        let (hc, hs) = o.headline();
        progress("supervisor footprint");
        let f = footprint(&bins, &o, hc, hs)?;
        md.push_str(&footprint_table(&f));
        report["footprint"] = f.json();
    }

    if o.runs("python") {
        python::section(&bins, &o, &mut md, &mut report)?;
    }

    if o.runs("checkpoint") {
        checkpoint::section(&bins, &o, &mut md, &mut report)?;
    }

    if o.runs("coldnet") {
        coldnet::section(&bins, &o, &mut md, &mut report)?;
    }

    if o.runs("precopy") {
        precopy::section(&bins, &o, &mut md, &mut report)?;
    }

    let elapsed = started.elapsed().as_secs_f64();
    report["elapsed_s"] = json!(round1(elapsed));
    let cpu1 = rig::CpuAccount::now();
    let wall = cpu1.at.duration_since(cpu0.at).as_secs_f64();
    let cores = |ticks: u64| ticks as f64 / CLOCK_TICKS_PER_S / wall;
    let busy = cores(cpu1.machine_busy.saturating_sub(cpu0.machine_busy));
    let ours = cores(cpu1.ours.saturating_sub(cpu0.ours));
    let others = (busy - ours).max(0.0);
    report["machine"]["busy_cores_avg"] = json!(round1(busy * 100.0).map(|x| x / 100.0));
    report["machine"]["this_benchmark_cores_avg"] = json!(round1(ours * 100.0).map(|x| x / 100.0));
    report["machine"]["other_processes_cores_avg"] =
        json!(round1(others * 100.0).map(|x| x / 100.0));
    report["machine"]["loadavg_at_end"] = json!(std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim());
    md.push_str(&format!(
        "Commit {commit}, {profile} build. Machine: {} cores; over the run's {:.0} s they were busy {:.2} \
         cores on average: this benchmark's processes {:.2}, other processes (not part of the benchmark) {:.2}.\n",
        report["machine"]["cpus"], wall, busy, ours, others
    ));
    println!("{md}");
    println!("(finished in {elapsed:.0} s; JSON: {})", out_path.display());
    if let Some(dir) = out_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out_path, serde_json::to_string_pretty(&report)? + "\n")?;
    Ok(())
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({ "cpus": cpus, "cpu_model": model, "loadavg_at_start": load.trim() })
}
