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
//!    descriptors and bytes) and the messages lost (the simulator's audit);
//! 2. cold restart of the same worker (kill, start again standalone): its
//!    gap and the messages it loses;
//! 3. upgrade latency (trigger → old worker reaped);
//! 4. steady-state throughput under the supervisor vs a bare client;
//! 5. snapshot scale (10 k and 1 M decimal positions): serialize, transfer,
//!    restore;
//! 6. supervisor footprint (RSS, CPU) idle and during 10 upgrades/s;
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
mod checkpoint;
mod coldnet;
mod delay;
mod floor;
mod precopy;
mod python;
mod rig;
mod stats;
mod tap;

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use handoff_protocol::monotonic_ns;
use handoff_testkit::{wait_for, ClusterBuilder, Sim};
use serde_json::{json, Value};

use rig::{proc_sample, AllBins, Rig, RigOpts, CLOCK_TICKS_PER_S};
use stats::{bytes, max, mean, pct, ratio, round1, summary, trio, us, yes};

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
        report["cold_restart"] = cold.json(headline_blackout.as_ref());
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

// ---------------------------------------------------------------------------
// 1. Blackout, floor, loss, upgrade latency

#[derive(Debug, Clone, Default)]
struct Cell {
    conns: usize,
    size: usize,
    snapshot_bytes: u64,
    blackout: Vec<f64>,
    pause: Vec<f64>,
    feed: Vec<f64>,
    sim_max_ack_gap: f64,
    upgrade_latency: Vec<f64>,
    /// Phase spans per upgrade: prepare (trigger → Hello checked), freeze
    /// (Freeze sent → Frozen in: flush + serialize + transfer to the
    /// supervisor), restore (→ Ready: transfer to B + decode + adopt),
    /// retire (Go → old worker reaped).
    phase_prepare: Vec<f64>,
    phase_freeze: Vec<f64>,
    phase_restore: Vec<f64>,
    phase_retire: Vec<f64>,
    go_to_first: Vec<f64>,
    /// The old worker's `snapshot()` and the new one's `restore()`.
    serialize: Vec<f64>,
    decode: Vec<f64>,
    floor: Vec<f64>,
    floor_fds: Vec<f64>,
    floor_snapshot: Vec<f64>,
    lost: u64,
    gaps: u64,
    unacked: u64,
    /// Unplanned worker restarts the supervisor counted (crash, hang kill).
    restarts: u64,
    /// Upgrades whose old worker was not the previous upgrade's new one.
    unplanned: u64,
    duplicates: u64,
    reordered: u64,
    closed: u64,
    reconnects: u64,
    sent: u64,
}

impl Cell {
    fn json(&self) -> Value {
        json!({
            "connections": self.conns,
            "ballast_bytes": self.size,
            "snapshot_bytes": self.snapshot_bytes,
            "upgrades": self.blackout.len(),
            "blackout_us": summary(&self.blackout),
            "pause_us": summary(&self.pause),
            "feed_blackout_us": summary(&self.feed),
            "sim_max_ack_gap_us": self.sim_max_ack_gap,
            "floor_us": summary(&self.floor),
            "floor_fds_received_us": summary(&self.floor_fds),
            "floor_snapshot_received_us": summary(&self.floor_snapshot),
            "blackout_over_floor_p50": round1(pct(&self.blackout, 50.0) / pct(&self.floor, 50.0) * 100.0).map(|x| x / 100.0),
            "upgrade_latency_us": summary(&self.upgrade_latency),
            "phases_us": {
                "prepare": summary(&self.phase_prepare),
                "freeze": summary(&self.phase_freeze),
                "restore": summary(&self.phase_restore),
                "retire": summary(&self.phase_retire),
                "go_to_first_message": summary(&self.go_to_first),
                "serialize_in_old_worker": summary(&self.serialize),
                "decode_in_new_worker": summary(&self.decode),
            },
            "audit": {
                "sent": self.sent,
                "lost": self.lost,
                "skipped_by_acks": self.gaps,
                "never_acked": self.unacked,
                "unplanned_worker_restarts": self.restarts,
                "worker_replaced_between_upgrades": self.unplanned,
                "duplicates": self.duplicates,
                "reordered": self.reordered,
                "closed": self.closed,
                "reconnects": self.reconnects,
            },
            "samples": {
                "blackout_us": self.blackout,
                "pause_us": self.pause,
                "feed_blackout_us": self.feed,
                "floor_us": self.floor,
                "upgrade_latency_us": self.upgrade_latency,
            },
        })
    }
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// The phases of one handoff (`handoffs.last.phases`, microseconds since
/// the trigger) as spans.
struct Phases {
    prepare: f64,
    freeze: f64,
    restore: f64,
    retire: f64,
    latency: f64,
}

impl Phases {
    fn of(rep: &Value) -> Phases {
        let at = |k: &str| num(&rep["phases"][k]);
        Phases {
            prepare: at("prepared_us"),
            freeze: at("frozen_us") - at("prepared_us"),
            restore: at("restored_us") - at("frozen_us"),
            retire: at("old_stopped_us") - at("live_us"),
            latency: at("old_stopped_us"),
        }
    }
}

fn blackout_cell(bins: &AllBins, o: &Opts, conns: usize, size: usize) -> Result<Cell> {
    let args = vec!["--ballast-bytes".into(), size.to_string()];
    blackout_cell_with(bins, o, conns, size, args)
}

/// [`blackout_cell`] with the worker's state (and pre-copy) given as its
/// arguments; `size` labels the cell.
fn blackout_cell_with(
    bins: &AllBins,
    o: &Opts,
    conns: usize,
    size: usize,
    worker_args: Vec<String>,
) -> Result<Cell> {
    let mut rig = Rig::feed(
        bins,
        RigOpts {
            conns,
            sim_args: o.sim_rate_args(conns),
            worker_args,
            verbose: o.verbose,
        },
    )?;
    rig.start_supervisor()?;
    let mut cell = Cell {
        conns,
        size,
        ..Cell::default()
    };
    let mut jitter = Jitter(0x9E37_79B9_7F4A_7C15 ^ (conns as u64) << 20 ^ size as u64);
    let mut prev_to: Option<u64> = None;
    std::thread::sleep(Duration::from_millis(200));
    for i in 1..=o.upgrades as u64 {
        // Each upgrade starts from a steady state: the backlog of the
        // previous blackout worked off, then a random 10–30 ms.
        if !o.back_to_back {
            caught_up(&rig.sim, o.feed_rate)?;
        }
        std::thread::sleep(jitter.ms(10, 30));
        let rep = rig.upgrade(i)?;
        if prev_to.is_some_and(|p| rep["from_pid"].as_u64() != Some(p)) {
            // The worker was replaced between two upgrades: a crash or a
            // kill, and a recovery.
            cell.unplanned += 1;
        }
        prev_to = rep["to_pid"].as_u64();
        let blackout = num(&rep["blackout_us"]);
        let pause = num(&rep["pause_us"]);
        cell.blackout.push(blackout);
        cell.pause.push(pause);
        cell.go_to_first.push(blackout - pause);
        let p = Phases::of(&rep);
        cell.upgrade_latency.push(p.latency);
        cell.phase_prepare.push(p.prepare);
        cell.phase_freeze.push(p.freeze);
        cell.phase_restore.push(p.restore);
        cell.phase_retire.push(p.retire);
        let w = worker_times(&rig, &rep)?;
        cell.serialize.push(w.serialize_us);
        cell.decode.push(w.decode_us);
        cell.snapshot_bytes = w.snapshot_bytes;
        // The longest silence of the acks from the old worker's freeze (or,
        // with a pre-copy, its image: it serves on meanwhile) to the new
        // worker's first ack.
        let (before, after) = wait_for(
            "the new worker's first ack",
            Duration::from_secs(10),
            || Ok(rig.tap.longest_gap(w.freeze_ns, w.first_ns)),
        )?;
        cell.feed.push(after.saturating_sub(before) as f64 / 1000.0);
    }
    cell.restarts = rig.status()?["worker"]["restarts"].as_u64().unwrap_or(0);
    // What the exchange saw: stop the feed, let every trade sent be acked.
    rig.sim.pause()?;
    let audit = rig.sim.audit_when_acked(Duration::from_secs(60))?;
    let t = &audit["totals"];
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    cell.sent = n("sent");
    cell.lost = n("gaps") + n("unacked");
    cell.gaps = n("gaps");
    cell.unacked = n("unacked");
    if cell.lost + cell.restarts + cell.unplanned > 0 {
        // Keep the simulator's own record of the loss for whoever looks
        // into it, next to the report.
        let path = bins.target_dir().join("bench").join(format!(
            "audit-loss-{conns}conns-{}bytes.json",
            cell.snapshot_bytes
        ));
        let _ = std::fs::create_dir_all(path.parent().unwrap_or(&path));
        let _ = std::fs::write(&path, serde_json::to_string_pretty(&audit)?);
        let log = rig.ctl(["log", "-n", "1000"])?;
        let log_path = path.with_extension("supervisor-log.txt");
        let _ = std::fs::write(&log_path, format!("{}{}", log.stdout, log.stderr));
        progress(format!(
            "  LOSS: {} trades skipped by acks, {} never acked; {} unplanned worker restarts \
             ({} replaced between upgrades); the audit is in {}, the supervisor's log in {}",
            cell.gaps,
            cell.unacked,
            cell.restarts,
            cell.unplanned,
            path.display(),
            log_path.display()
        ));
    }
    cell.duplicates = n("duplicates");
    cell.reordered = n("reordered");
    cell.closed = n("closed");
    cell.reconnects = audit["connections_total"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(conns as u64);
    cell.sim_max_ack_gap = audit["connections"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| num(&c["max_ack_gap_us"]))
                .fold(0.0, f64::max)
        })
        .unwrap_or(f64::NAN);
    rig.stop_supervisor();
    rig.sim.resume()?;
    // The floor, on the same feed, with the same number of connections and
    // a snapshot of the same size.
    let floor = floor::run(
        &bins.floor,
        rig.dir.path(),
        &rig.tap.addr.to_string(),
        &SYMBOLS,
        conns,
        cell.snapshot_bytes as usize,
        o.upgrades,
    )?;
    cell.floor = floor.iter().map(|f| f.first_byte_us).collect();
    cell.floor_fds = floor.iter().map(|f| f.fds_us).collect();
    cell.floor_snapshot = floor.iter().map(|f| f.snapshot_us).collect();
    Ok(cell)
}

/// Wait until the worker has worked off its backlog: at most 10 ms of the
/// feed sent and not yet acked. Without this, upgrades that take longer than
/// the gap between them (64 MiB states) would stack backlogs, and the run
/// would measure a worker that never catches up.
fn caught_up(sim: &Sim, feed_rate: u32) -> Result<()> {
    caught_up_over(sim, feed_rate, Duration::ZERO)
}

/// The same over a path with this round trip: the trades sent in the last
/// round trip cannot have been acked yet, so they are allowed on top.
fn caught_up_over(sim: &Sim, feed_rate: u32, rtt: Duration) -> Result<()> {
    let in_flight = (f64::from(feed_rate) * rtt.as_secs_f64()).ceil() as u64;
    let most = u64::from(feed_rate / 100).max(50) + in_flight;
    wait_for(
        "the worker to catch up with the feed",
        Duration::from_secs(60),
        || {
            let a = sim.audit()?;
            Ok((a["totals"]["unacked"].as_u64().unwrap_or(u64::MAX) <= most).then_some(()))
        },
    )?;
    Ok(())
}

/// What bench-worker's timing file says about one handoff.
struct WorkerTimes {
    /// The old worker's freeze snapshot started (its writes are flushed);
    /// with a pre-copy, its image (it serves on until the freeze).
    freeze_ns: u64,
    /// The new worker consumed its first message.
    first_ns: u64,
    serialize_us: f64,
    decode_us: f64,
    snapshot_bytes: u64,
}

/// From bench-worker's timing file: the old worker of handoff `rep`
/// serializing its state (its last snapshot before the new worker's
/// restore) and the new one restoring it and consuming its first message.
fn worker_times(rig: &Rig, rep: &Value) -> Result<WorkerTimes> {
    let from = rep["from_pid"].as_u64().unwrap_or(0) as u32;
    let to = rep["to_pid"].as_u64().unwrap_or(0) as u32;
    Ok(wait_for(
        "the workers' timings",
        Duration::from_secs(10),
        || {
            let lines = rig.timing_lines();
            let find = |kind: &str| lines.iter().find(|l| l.kind == kind && l.pid == to);
            let (Some(restore), Some(first)) = (find("restore"), find("first")) else {
                return Ok(None);
            };
            let snap = lines
                .iter()
                .rfind(|l| l.kind == "snapshot" && l.pid == from && l.nums[0] < restore.nums[0]);
            Ok(snap.map(|snap| WorkerTimes {
                freeze_ns: snap.nums[0],
                first_ns: first.nums[0],
                serialize_us: snap.nums[1] as f64 / 1000.0,
                decode_us: restore.nums[1] as f64 / 1000.0,
                snapshot_bytes: snap.nums[2],
            }))
        },
    )?)
}

fn blackout_table(o: &Opts, cells: &[Cell]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "### 1. Blackout per upgrade ({} upgrades per row; a steady feed of {} msg/s shared by the connections, {} streams each)\n\n",
        o.upgrades,
        o.feed_rate,
        SYMBOLS.len()
    ));
    s.push_str("| conns | snapshot | blackout p50 / p99 / max | pause p50 / p99 | feed-side p50 / p99 / max | sim max ack gap | floor p50 / p99 | blackout ÷ floor (p50) | lost / sent |\n");
    s.push_str("|---:|---:|---|---|---|---:|---|---:|---|\n");
    for c in cells {
        s.push_str(&format!(
            "| {} | {} | {} | {} / {} | {} | {} | {} / {} | {} | {} / {} |\n",
            c.conns,
            bytes(c.snapshot_bytes),
            trio(&c.blackout),
            us(pct(&c.pause, 50.0)),
            us(pct(&c.pause, 99.0)),
            trio(&c.feed),
            us(c.sim_max_ack_gap),
            us(pct(&c.floor, 50.0)),
            us(pct(&c.floor, 99.0)),
            ratio(pct(&c.blackout, 50.0), pct(&c.floor, 50.0)),
            c.lost,
            c.sent,
        ));
    }
    let (hc, hs) = o.headline();
    if let Some(h) = cells.iter().find(|c| c.conns == hc && c.size == hs) {
        let p50 = pct(&h.blackout, 50.0);
        let p99 = pct(&h.blackout, 99.0);
        let fl = pct(&h.floor, 50.0);
        let lost_all: u64 = cells.iter().map(|c| c.lost).sum();
        let dup_all: u64 = cells.iter().map(|c| c.duplicates + c.reordered).sum();
        let closed_all: u64 = cells.iter().map(|c| c.closed + c.reconnects).sum();
        let restarts_all: u64 = cells.iter().map(|c| c.restarts).sum();
        s.push_str(&format!(
            "\nTargets at {hc} connections, {} snapshot: blackout p50 {} (≤ 150 µs: {}), p99 {} (≤ 1 ms: {}), \
             {} the floor (≤ 3×: {}); lost {lost_all} over all rows (0: {}), duplicated/reordered {dup_all}, \
             connections closed or reopened {closed_all}, unplanned worker restarts {restarts_all}.\n\n",
            bytes(hs as u64),
            us(p50),
            yes(p50 <= 150.0),
            us(p99),
            yes(p99 <= 1000.0),
            ratio(p50, fl),
            yes(p50 <= 3.0 * fl),
            yes(lost_all == 0),
        ));
    }
    s.push_str(&phase_table(cells));
    s
}

fn phase_table(cells: &[Cell]) -> String {
    let mut s = String::from(
        "Where the time goes (p50 per row; prepare = trigger → successor's Hello checked; freeze = Freeze sent → \
         Frozen received (flush, serialize, to the supervisor); restore = → Ready (to the successor, decode, adopt); \
         go → first = Go → first message consumed; retire = Go → old worker reaped; serialize and decode are \
         the app's own `snapshot()` and `restore()`, parts of freeze and restore):\n\n\
         | conns | snapshot | prepare | freeze | of which serialize | restore | of which decode | go → first | retire | floor: fds in | floor: snapshot in |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in cells {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            c.conns,
            bytes(c.snapshot_bytes),
            us(pct(&c.phase_prepare, 50.0)),
            us(pct(&c.phase_freeze, 50.0)),
            us(pct(&c.serialize, 50.0)),
            us(pct(&c.phase_restore, 50.0)),
            us(pct(&c.decode, 50.0)),
            us(pct(&c.go_to_first, 50.0)),
            us(pct(&c.phase_retire, 50.0)),
            us(pct(&c.floor_fds, 50.0)),
            us(pct(&c.floor_snapshot, 50.0)),
        ));
    }
    s.push('\n');
    s
}

fn latency_table(h: &Cell) -> String {
    let p50 = pct(&h.upgrade_latency, 50.0);
    format!(
        "### 3. Upgrade latency (trigger → old worker reaped; {} connections, {} snapshot)\n\n\
         | p50 | p99 | max | target p50 ≤ 20 ms |\n|---:|---:|---:|---|\n| {} | {} | {} | {} |\n\n",
        h.conns,
        bytes(h.snapshot_bytes),
        us(p50),
        us(pct(&h.upgrade_latency, 99.0)),
        us(max(&h.upgrade_latency)),
        yes(p50 <= 20_000.0)
    )
}

// ---------------------------------------------------------------------------
// 2. Cold restart

#[derive(Debug, Clone, Default)]
struct Cold {
    conns: usize,
    restarts: usize,
    /// Aggregate ack silence: old worker's last ack → new worker's first.
    gap: Vec<f64>,
    /// Kill → the last connection's first ack (every feed back).
    all_back: Vec<f64>,
    /// Trades sent on the killed connections and never acked, per restart.
    unacked: Vec<f64>,
    /// Trades broadcast while a feed had no subscription, per restart.
    unsubscribed: Vec<f64>,
    rate: u32,
}

impl Cold {
    fn lost(&self) -> Vec<f64> {
        self.unacked
            .iter()
            .zip(&self.unsubscribed)
            .map(|(a, b)| a + b)
            .collect()
    }

    fn json(&self, h: Option<&Cell>) -> Value {
        let lost = self.lost();
        json!({
            "connections": self.conns,
            "restarts": self.restarts,
            "gap_us": summary(&self.gap),
            "all_feeds_back_us": summary(&self.all_back),
            "lost_per_restart": summary(&lost),
            "unacked_per_restart": summary(&self.unacked),
            "unsubscribed_per_restart": summary(&self.unsubscribed),
            "trades_per_s_per_stream": self.rate,
            "cold_over_handoff_gap_p50": h.and_then(|h| round1(pct(&self.gap, 50.0) / pct(&h.feed, 50.0))),
            "samples": { "gap_us": self.gap, "lost": lost },
        })
    }
}

fn spawn_standalone(rig: &Rig) -> Result<Child> {
    let mut cmd = Command::new(&rig.bins.testkit.worker);
    cmd.args(rig.worker_argv()).stdin(Stdio::null());
    if !rig.opts.verbose {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    cmd.spawn().context("spawn bench-worker")
}

/// Wait until relayed connections `from..from + n` all carry acks.
fn wait_acking(rig: &Rig, from: usize, n: usize) -> Result<Vec<tap::ConnRec>> {
    Ok(wait_for(
        "the worker's feeds to be acked",
        Duration::from_secs(30),
        || {
            let cs = rig.tap.conns();
            let ok = cs.len() >= from + n && cs[from..from + n].iter().all(|c| c.acks > 0);
            Ok(ok.then_some(cs))
        },
    )?)
}

fn cold_restarts(bins: &AllBins, o: &Opts, conns: usize, size: usize) -> Result<Cold> {
    let rig = Rig::feed(
        bins,
        RigOpts {
            conns,
            sim_args: o.sim_rate_args(conns),
            worker_args: vec!["--ballast-bytes".into(), size.to_string()],
            verbose: o.verbose,
        },
    )?;
    let mut cold = Cold {
        conns,
        restarts: o.cold_restarts,
        rate: o.rate_per_stream(conns),
        ..Cold::default()
    };
    let mut child = spawn_standalone(&rig)?;
    wait_acking(&rig, 0, conns)?;
    let mut jitter = Jitter(0xC01D);
    for k in 0..o.cold_restarts {
        std::thread::sleep(jitter.ms(200, 400));
        let t_kill = monotonic_ns();
        child.kill()?;
        child.wait()?;
        child = spawn_standalone(&rig)?;
        let new_from = (k + 1) * conns;
        let cs = wait_acking(&rig, new_from, conns)?;
        // The old connections' last ack to the new ones' first.
        let old_last = cs[new_from - conns..new_from]
            .iter()
            .filter_map(|c| c.last_ack_ns)
            .max()
            .context("no ack on the old connections")?;
        let new_first = cs[new_from..new_from + conns]
            .iter()
            .filter_map(|c| c.first_ack_ns)
            .min()
            .context("no ack on the new connections")?;
        cold.gap
            .push(new_first.saturating_sub(old_last) as f64 / 1000.0);
        let back = cs[new_from..new_from + conns]
            .iter()
            .filter_map(|c| c.first_ack_ns)
            .max()
            .unwrap_or(t_kill);
        cold.all_back
            .push(back.saturating_sub(t_kill) as f64 / 1000.0);
        // Trades broadcast on feed i while it had no subscription: from the
        // old connection's end to the new one's SUBSCRIBE, at the feed's rate.
        let mut unsub_s = 0.0;
        for i in 0..conns {
            let old = &cs[new_from - conns + i];
            let new = &cs[new_from + i];
            if let (Some(end), Some(sub)) = (old.closed_ns, new.subscribed_ns) {
                unsub_s += sub.saturating_sub(end) as f64 / 1e9;
            }
        }
        cold.unsubscribed
            .push(unsub_s * f64::from(o.rate_per_stream(conns)) * SYMBOLS.len() as f64);
    }
    let _ = child.kill();
    let _ = child.wait();
    // The killed connections' unacked trades, from the simulator's audit
    // (connections are numbered in accept order, as the relay's are).
    let audit = wait_for(
        "the audit to see the last close",
        Duration::from_secs(10),
        || {
            let a = rig.sim.audit()?;
            let closed = a["totals"]["closed"].as_u64().unwrap_or(0);
            Ok((closed as usize >= (o.cold_restarts + 1) * conns).then_some(a))
        },
    )?;
    let per_conn = unacked_per_conn(&audit);
    for k in 0..o.cold_restarts {
        let gen = per_conn.get(k * conns..(k + 1) * conns).unwrap_or(&[]);
        cold.unacked.push(gen.iter().sum());
    }
    Ok(cold)
}

/// Per connection of the audit (in accept order): trades sent and neither
/// acked nor skipped by an ack.
fn unacked_per_conn(audit: &Value) -> Vec<f64> {
    audit["connections"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    c["streams"]
                        .as_object()
                        .map(|ss| {
                            ss.values()
                                .map(|s| {
                                    let g = |k: &str| s[k].as_u64().unwrap_or(0);
                                    g("sent").saturating_sub(g("acked") + g("gaps")) as f64
                                })
                                .sum()
                        })
                        .unwrap_or(0.0)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn cold_table(c: &Cold, h: Option<&Cell>) -> String {
    let lost = c.lost();
    let (feed_p50, feed_max) =
        h.map_or((f64::NAN, f64::NAN), |h| (pct(&h.feed, 50.0), max(&h.feed)));
    let handoff_lost = h.map_or(0, |h| h.lost);
    format!(
        "### 2. Cold restart vs handoff ({} connections; kill -9, start again standalone: reconnect, resubscribe; {} restarts)\n\n\
         | | gap p50 / p99 / max (feed side) | every feed back p50 | lost per restart (mean; unacked + unsubscribed) | lost, all runs |\n\
         |---|---|---|---|---:|\n\
         | cold restart | {} | {} | {:.1} ({:.1} + {:.1}) | {:.0} |\n\
         | handoff (same config, row above) | {} / – / {} | – | 0 | {} |\n\
         | cold ÷ handoff (p50) | {} | | | |\n\n",
        c.conns,
        c.restarts,
        trio(&c.gap),
        us(pct(&c.all_back, 50.0)),
        mean(&lost),
        mean(&c.unacked),
        mean(&c.unsubscribed),
        lost.iter().sum::<f64>(),
        us(feed_p50),
        us(feed_max),
        handoff_lost,
        ratio(pct(&c.gap, 50.0), feed_p50),
    )
}

// ---------------------------------------------------------------------------
// 4. Steady state

/// One pass of a finite feed through one kind of client.
#[derive(Debug, Clone, Copy)]
struct Pass {
    messages: u64,
    /// Acked trades per second (the simulator's first to last ack).
    rate: f64,
    cpu_us_per_msg: f64,
    /// Trades of the finite feed never acked (skipped by the acks).
    lost: u64,
    /// Unplanned worker restarts during the pass (supervised only).
    restarts: u64,
}

#[derive(Debug, Clone)]
struct Steady {
    conns: usize,
    passes: usize,
    supervised: Pass,
    standalone: Pass,
    bare: Pass,
    supervisor_cpu_s: f64,
    /// Over all supervised passes.
    supervised_lost: u64,
    supervised_restarts: u64,
}

impl Steady {
    fn json(&self) -> Value {
        let pass = |p: &Pass| {
            json!({
                "messages": p.messages,
                "msgs_per_s": p.rate.round(),
                "cpu_us_per_msg": round1(p.cpu_us_per_msg * 100.0).map(|x| x / 100.0),
                "lost": p.lost,
            })
        };
        json!({
            "connections": self.conns,
            "best_of": self.passes,
            "worker_under_supervisor": pass(&self.supervised),
            "worker_standalone": pass(&self.standalone),
            "bare_tokio_tungstenite": pass(&self.bare),
            "ratio": round1(self.supervised.rate / self.bare.rate * 100.0).map(|x| x / 100.0),
            "supervisor_cpu_s": round1(self.supervisor_cpu_s * 100.0).map(|x| x / 100.0),
            "supervised_passes_lost": self.supervised_lost,
            "supervised_passes_worker_restarts": self.supervised_restarts,
        })
    }
}

/// Acked trades per second, from the audit's first and last ack times.
fn audit_rate(audit: &Value) -> (u64, f64) {
    let cs = audit["connections"].as_array().cloned().unwrap_or_default();
    let first = cs.iter().filter_map(|c| c["first_ack_ms"].as_u64()).min();
    let last = cs.iter().filter_map(|c| c["last_ack_ms"].as_u64()).max();
    let acked = audit["totals"]["acked"].as_u64().unwrap_or(0);
    match (first, last) {
        (Some(f), Some(l)) if l > f => (acked, acked as f64 / ((l - f) as f64 / 1000.0)),
        _ => (acked, f64::NAN),
    }
}

/// The audit once `expected` trades have been acked (a finite feed can be
/// momentarily all acked between two batches, so `wait_acked_ms` alone is
/// not enough).
fn audit_done(sim: &Sim, expected: u64) -> Result<Value> {
    Ok(wait_for(
        "the ack cursor to pass every trade of the finite feed",
        Duration::from_secs(300),
        || {
            let a = sim.audit()?;
            let t = &a["totals"];
            let passed = t["acked"].as_u64().unwrap_or(0) + t["gaps"].as_u64().unwrap_or(0);
            Ok((passed >= expected).then_some(a))
        },
    )?)
}

/// The worker under the supervisor (the testkit's cluster); returns the
/// pass and the supervisor's CPU seconds.
fn pass_supervised(
    bins: &AllBins,
    sim_args: &[String],
    conns: usize,
    expected: u64,
) -> Result<(Pass, f64)> {
    let cluster = ClusterBuilder::new(bins.testkit.clone())
        .connections(conns)
        .sim_args(sim_args.iter().cloned())
        .start()?;
    let st = cluster.status()?;
    let wpid = st["worker"]["pid"].as_u64().unwrap_or(0) as u32;
    let spid = st["supervisor_pid"].as_u64().unwrap_or(0) as u32;
    let audit = audit_done(&cluster.sim, expected)?;
    // NaN if the worker is gone (the supervisor replaced it).
    let cpu =
        |pid: u32| proc_sample(pid).map_or(f64::NAN, |p| p.cpu_ticks as f64 / CLOCK_TICKS_PER_S);
    let (wcpu, scpu) = (cpu(wpid), cpu(spid));
    let restarts = cluster.status()?["worker"]["restarts"]
        .as_u64()
        .unwrap_or(0);
    let (messages, rate) = audit_rate(&audit);
    let mut cluster = cluster;
    let _ = cluster.stop();
    let pass = Pass {
        messages,
        rate,
        cpu_us_per_msg: wcpu * 1e6 / messages.max(1) as f64,
        lost: expected.saturating_sub(messages),
        restarts,
    };
    Ok((pass, scpu))
}

/// The same worker binary started by hand, without a supervisor.
fn pass_standalone(
    bins: &AllBins,
    sim_args: &[String],
    conns: usize,
    expected: u64,
) -> Result<Pass> {
    let sim = Sim::start(&bins.testkit.sim, sim_args)?;
    let mut cmd = Command::new(&bins.testkit.worker);
    for _ in 0..conns {
        cmd.arg("--feed").arg(sim.ws_url());
    }
    cmd.args(["--symbols", &SYMBOLS.join(","), "--ack"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().context("spawn bench-worker")?;
    let audit = audit_done(&sim, expected);
    let cpu = proc_sample(child.id()).map(|p| p.cpu_ticks as f64 / CLOCK_TICKS_PER_S);
    let _ = child.kill();
    let _ = child.wait();
    let audit = audit?;
    let (messages, rate) = audit_rate(&audit);
    Ok(Pass {
        messages,
        rate,
        cpu_us_per_msg: cpu? * 1e6 / messages.max(1) as f64,
        lost: expected.saturating_sub(messages),
        restarts: 0,
    })
}

fn pass_bare(bins: &AllBins, sim_args: &[String], conns: usize, last_id: u64) -> Result<Pass> {
    let sim = Sim::start(&bins.testkit.sim, sim_args)?;
    let bare = bare::run(&sim.ws_url(), conns, &SYMBOLS, last_id)?;
    let audit = audit_done(&sim, conns as u64 * SYMBOLS.len() as u64 * last_id)?;
    let (messages, rate) = audit_rate(&audit);
    Ok(Pass {
        messages,
        rate,
        cpu_us_per_msg: bare.cpu_s * 1e6 / bare.messages.max(1) as f64,
        lost: (conns as u64 * SYMBOLS.len() as u64 * last_id).saturating_sub(messages),
        restarts: 0,
    })
}

fn steady(bins: &AllBins, o: &Opts, conns: usize) -> Result<Steady> {
    let per_stream = (o.steady_messages / (conns * SYMBOLS.len()) as u64).max(1);
    let sim_args = [
        "--trades".to_string(),
        per_stream.to_string(),
        "--rate".into(),
        "1000000".into(),
    ];
    let expected = per_stream * (conns * SYMBOLS.len()) as u64;
    let mut sup = Vec::new();
    let mut alone = Vec::new();
    let mut bare = Vec::new();
    let mut sup_cpu = f64::NAN;
    // Interleaved passes, best of each: other load on the machine only ever
    // slows a pass down.
    for _ in 0..o.steady_passes {
        let (p, c) = pass_supervised(bins, &sim_args, conns, expected)?;
        sup.push(p);
        sup_cpu = c;
        alone.push(pass_standalone(bins, &sim_args, conns, expected)?);
        bare.push(pass_bare(bins, &sim_args, conns, per_stream)?);
    }
    let best = |v: &[Pass]| {
        v.iter()
            .copied()
            .max_by(|a, b| a.rate.total_cmp(&b.rate))
            .expect("at least one pass")
    };
    Ok(Steady {
        conns,
        passes: o.steady_passes,
        supervised: best(&sup),
        standalone: best(&alone),
        bare: best(&bare),
        supervisor_cpu_s: sup_cpu,
        supervised_lost: sup.iter().map(|p| p.lost).sum(),
        supervised_restarts: sup.iter().map(|p| p.restarts).sum(),
    })
}

fn steady_table(rows: &[Steady]) -> String {
    let mut s = String::from(
        "### 4. Steady-state cost (a finite feed as fast as the client takes it, every trade acked; best of interleaved passes)\n\n\
         | conns | messages | worker under supervisor | same worker standalone | bare tokio-tungstenite | ratio supervised ÷ bare (target ≥ 0.95) | CPU per message: supervised / standalone / bare | supervisor CPU in the pass | supervised: lost (worker restarts), all passes |\n\
         |---:|---:|---:|---:|---:|---|---|---:|---|\n",
    );
    for r in rows {
        let q = r.supervised.rate / r.bare.rate;
        s.push_str(&format!(
            "| {} | {} | {:.0} msg/s | {:.0} msg/s | {:.0} msg/s | {:.2} ({}) | {:.2} / {:.2} / {:.2} µs | {:.2} s | {} ({}) |\n",
            r.conns,
            r.supervised.messages,
            r.supervised.rate,
            r.standalone.rate,
            r.bare.rate,
            q,
            yes(q >= 0.95),
            r.supervised.cpu_us_per_msg,
            r.standalone.cpu_us_per_msg,
            r.bare.cpu_us_per_msg,
            r.supervisor_cpu_s,
            r.supervised_lost,
            r.supervised_restarts,
        ));
    }
    s.push('\n');
    s
}

// ---------------------------------------------------------------------------
// 5. Snapshot scale

#[derive(Debug, Clone, Default)]
struct Scale {
    positions: usize,
    snapshot_bytes: u64,
    pause: Vec<f64>,
    blackout: Vec<f64>,
    serialize: Vec<f64>,
    restore: Vec<f64>,
    freeze_phase: Vec<f64>,
    restore_phase: Vec<f64>,
}

impl Scale {
    /// pause − serialize − decode: envelope (checksum), framing, the two
    /// Unix-socket transfers and the supervisor's handling.
    fn transfer(&self) -> Vec<f64> {
        self.pause
            .iter()
            .zip(&self.serialize)
            .zip(&self.restore)
            .map(|((p, s), r)| p - s - r)
            .collect()
    }

    fn json(&self) -> Value {
        json!({
            "positions": self.positions,
            "snapshot_bytes": self.snapshot_bytes,
            "upgrades": self.pause.len(),
            "pause_us": summary(&self.pause),
            "blackout_us": summary(&self.blackout),
            "serialize_us": summary(&self.serialize),
            "transfer_us": summary(&self.transfer()),
            "restore_us": summary(&self.restore),
            "freeze_phase_us": summary(&self.freeze_phase),
            "restore_phase_us": summary(&self.restore_phase),
        })
    }
}

fn snapshot_scale(bins: &AllBins, o: &Opts, positions: usize) -> Result<Scale> {
    let mut rig = Rig::feed(
        bins,
        RigOpts {
            conns: 1,
            sim_args: o.sim_rate_args(1),
            worker_args: vec!["--positions".into(), positions.to_string()],
            verbose: o.verbose,
        },
    )?;
    rig.start_supervisor()?;
    let mut sc = Scale {
        positions,
        ..Scale::default()
    };
    let mut jitter = Jitter(0x5CA1E);
    for i in 1..=o.snapshot_upgrades as u64 {
        caught_up(&rig.sim, o.feed_rate)?;
        std::thread::sleep(jitter.ms(50, 150));
        let rep = rig.upgrade(i)?;
        sc.pause.push(num(&rep["pause_us"]));
        sc.blackout.push(num(&rep["blackout_us"]));
        let p = Phases::of(&rep);
        sc.freeze_phase.push(p.freeze);
        sc.restore_phase.push(p.restore);
        let w = worker_times(&rig, &rep)?;
        sc.serialize.push(w.serialize_us);
        sc.restore.push(w.decode_us);
        sc.snapshot_bytes = w.snapshot_bytes;
    }
    Ok(sc)
}

fn snapshot_table(rows: &[Scale]) -> String {
    let mut s = String::from(
        "### 5. Snapshot scale (1 connection; bincode, positions packed as binary decimals in varints; p50 over the upgrades)\n\n\
         | positions | snapshot | serialize (old worker) | transfer (envelope, 2 socket hops, supervisor) | restore (decode, new worker) | pause (freeze → go) | blackout | dominant | target < 150 ms |\n\
         |---:|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    for r in rows {
        let (se, tr, re) = (
            pct(&r.serialize, 50.0),
            pct(&r.transfer(), 50.0),
            pct(&r.restore, 50.0),
        );
        let dominant = if se >= tr && se >= re {
            "serialize"
        } else if re >= tr {
            "restore"
        } else {
            "transfer"
        };
        let bo = pct(&r.blackout, 50.0);
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {dominant} | {} |\n",
            r.positions,
            bytes(r.snapshot_bytes),
            us(se),
            us(tr),
            us(re),
            us(pct(&r.pause, 50.0)),
            us(bo),
            if r.positions >= 1_000_000 {
                yes(bo < 150_000.0)
            } else {
                "–"
            },
        ));
    }
    s.push('\n');
    s
}

// ---------------------------------------------------------------------------
// 6. Supervisor footprint

#[derive(Debug, Clone, Default)]
struct Footprint {
    conns: usize,
    snapshot_bytes: u64,
    idle_rss_kib: u64,
    idle_cpu_pct: f64,
    busy_rss_kib: u64,
    busy_cpu_pct: f64,
    hwm_kib: u64,
    upgrades: usize,
    upgrades_per_s: f64,
    /// Minor page faults of the supervisor per upgrade (fresh memory it
    /// touched: receive buffers, decoded and re-encoded snapshots).
    faults_per_upgrade: f64,
}

impl Footprint {
    fn json(&self) -> Value {
        json!({
            "connections": self.conns,
            "snapshot_bytes": self.snapshot_bytes,
            "idle": { "rss_kib": self.idle_rss_kib, "cpu_pct": round1(self.idle_cpu_pct) },
            "upgrading": {
                "rss_kib_max": self.busy_rss_kib,
                "cpu_pct": round1(self.busy_cpu_pct),
                "upgrades": self.upgrades,
                "upgrades_per_s": round1(self.upgrades_per_s),
                "page_faults_per_upgrade": self.faults_per_upgrade.round(),
            },
            "peak_rss_kib": self.hwm_kib,
        })
    }
}

fn footprint(bins: &AllBins, o: &Opts, conns: usize, size: usize) -> Result<Footprint> {
    let mut rig = Rig::feed(
        bins,
        RigOpts {
            conns,
            sim_args: o.sim_rate_args(conns),
            worker_args: vec!["--ballast-bytes".into(), size.to_string()],
            verbose: o.verbose,
        },
    )?;
    rig.start_supervisor()?;
    let pid = rig.supervisor_pid().context("no supervisor")?;
    let window = Duration::from_secs_f64(o.footprint_secs);
    std::thread::sleep(Duration::from_millis(1500)); // a checkpoint or two in
    let s0 = proc_sample(pid)?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let s1 = proc_sample(pid)?;
    let idle_s = t0.elapsed().as_secs_f64();
    let mut f = Footprint {
        conns,
        idle_rss_kib: s1.rss_kib,
        idle_cpu_pct: (s1.cpu_ticks - s0.cpu_ticks) as f64 / CLOCK_TICKS_PER_S / idle_s * 100.0,
        ..Footprint::default()
    };
    let t0 = Instant::now();
    let s0 = proc_sample(pid)?;
    let mut rss_max = s0.rss_kib;
    while t0.elapsed() < window {
        let tick = Instant::now();
        let out = rig.ctl(["upgrade", "--wait"])?;
        if !out.success() {
            bail!("upgrade failed: {}", out.stderr.trim());
        }
        f.upgrades += 1;
        rss_max = rss_max.max(proc_sample(pid)?.rss_kib);
        if let Some(rest) = Duration::from_millis(100).checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let s1 = proc_sample(pid)?;
    let busy_s = t0.elapsed().as_secs_f64();
    f.busy_rss_kib = rss_max.max(s1.rss_kib);
    f.busy_cpu_pct = (s1.cpu_ticks - s0.cpu_ticks) as f64 / CLOCK_TICKS_PER_S / busy_s * 100.0;
    f.upgrades_per_s = f.upgrades as f64 / busy_s;
    f.hwm_kib = s1.hwm_kib;
    f.faults_per_upgrade = (s1.minflt - s0.minflt) as f64 / f.upgrades.max(1) as f64;
    f.snapshot_bytes = rig.status()?["checkpoint"]["bytes"].as_u64().unwrap_or(0);
    Ok(f)
}

fn footprint_table(f: &Footprint) -> String {
    let mib = |k: u64| k as f64 / 1024.0;
    format!(
        "### 6. Supervisor footprint ({} connections, {} checkpoints)\n\n\
         | | RSS | CPU | target RSS < 10 MiB |\n|---|---:|---:|---|\n\
         | idle (feed running, checkpoint every 1 s) | {:.1} MiB | {:.1} % | {} |\n\
         | {} upgrades at {:.1}/s | {:.1} MiB (max) | {:.1} % | {} |\n\
         | peak (VmHWM) | {:.1} MiB | | |\n\n\
         The supervisor took {:.0} minor page faults per upgrade ({:.1} MiB of freshly touched memory).\n\n",
        f.conns,
        bytes(f.snapshot_bytes),
        mib(f.idle_rss_kib),
        f.idle_cpu_pct,
        yes(mib(f.idle_rss_kib) < 10.0),
        f.upgrades,
        f.upgrades_per_s,
        mib(f.busy_rss_kib),
        f.busy_cpu_pct,
        yes(mib(f.busy_rss_kib) < 10.0),
        mib(f.hwm_kib),
        f.faults_per_upgrade,
        f.faults_per_upgrade * 4.0 / 1024.0,
    )
}
