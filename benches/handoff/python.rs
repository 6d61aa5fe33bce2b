//! Section 7: the Python path (issue #15 item 6), side by side in one run.
//!
//! 1. **Per-message cost.** `python/benches/bench_bot.py` (a `handoff.App`
//!    on the Rust runtime) against `python/benches/plain_client.py`
//!    (asyncio + `websockets`, no handoff), both standalone, doing the same
//!    work per trade (`json.loads`, a counter, the ack sent on the same
//!    connection), with `bench-worker` standalone as the Rust reference.
//!    Each pass is its own simulator with a finite feed (`--trades N`, no
//!    rate limit), paused until the client has subscribed: the client's
//!    CPU (utime + stime of the whole process, `/proc/PID/stat`) is read
//!    then and again once the audit has every trade acked, just before the
//!    client is killed, so interpreter start-up is not counted. Wall time
//!    is the audit's first to last ack. Passes interleave (A, B, ref; A, B,
//!    ref; …); the table gives the median and the range.
//! 2. **Blackout.** The harness's blackout cell (`blackout_cell`: the
//!    supervisor's figure, the feed's from the relay, the floor, the audit)
//!    for `bench-worker` and for the packed `bench_bot.py`, which takes the
//!    same flags and writes the same `--timings` lines; 1 connection, 1 KiB
//!    of ballast, the same upgrades.
//!
//! The interpreter is `HANDOFF_PYTHON` (a Python with the `handoff`
//! package and `websockets`: `scripts/python-env`); without it the section
//! says so loudly and is skipped. Smoke mode: a few hundred messages, one
//! pair, 2 upgrades; it fails only if something was lost, never on a timing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use handoff_testkit::{wait_for, Bins, Sim, TestkitError};
use serde_json::{json, Value};

use crate::blackout::{blackout_cell, Cell};
use crate::rig::{proc_sample, AllBins, CLOCK_TICKS_PER_S};
use crate::stats::{bytes, pct, ratio, trio, us};
use crate::steady::audit_rate;
use crate::{progress, Opts, KIB, SYMBOLS};

const NOT_RUN: &str = "NOT RUN: HANDOFF_PYTHON unset (HANDOFF_PYTHON=$(scripts/python-env))";

/// Where the Python programs are.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python/benches")
        .join(name)
}

/// The three clients of the per-message passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// `bench_bot.py` on the handoff runtime, standalone.
    Handoff,
    /// `plain_client.py`: asyncio + websockets.
    Plain,
    /// `bench-worker` standalone: the same runtime, the app in Rust.
    Rust,
}

impl Client {
    const ALL: [Client; 3] = [Client::Handoff, Client::Plain, Client::Rust];

    fn label(self) -> &'static str {
        match self {
            Client::Handoff => "Python, handoff (bench_bot.py, standalone)",
            Client::Plain => "Python, plain websockets (plain_client.py)",
            Client::Rust => "Rust, handoff (bench-worker, standalone; reference)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Client::Handoff => "python_handoff",
            Client::Plain => "python_plain_websockets",
            Client::Rust => "rust_bench_worker",
        }
    }

    fn command(self, python: &Path, bins: &AllBins) -> Command {
        let mut cmd = match self {
            Client::Handoff => {
                let mut c = Command::new(python);
                c.arg(script("bench_bot.py")).arg("--ack");
                c
            }
            Client::Plain => {
                let mut c = Command::new(python);
                c.arg(script("plain_client.py"));
                c
            }
            Client::Rust => {
                let mut c = Command::new(&bins.testkit.worker);
                c.arg("--ack");
                c
            }
        };
        cmd.args(["--symbols", &SYMBOLS.join(",")]);
        cmd
    }
}

/// One pass of one client over the finite feed.
#[derive(Debug, Clone, Copy)]
struct Pass {
    expected: u64,
    acked: u64,
    cpu_us: f64,
    wall_us: f64,
    rate: f64,
    /// Context switches of the client during the pass: it waited
    /// (voluntary), it was preempted (involuntary).
    waited: u64,
    preempted: u64,
}

impl Pass {
    fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.acked)
    }
}

fn run_pass(bins: &AllBins, o: &Opts, mut cmd: Command, per_stream: u64) -> Result<Pass> {
    let sim_args = [
        "--trades".to_string(),
        per_stream.to_string(),
        "--rate".into(),
        "1000000".into(),
    ];
    let sim = Sim::start(&bins.testkit.sim, &sim_args)?;
    sim.pause()?;
    cmd.arg("--feed").arg(sim.ws_url()).stdin(Stdio::null());
    cmd.stdout(Stdio::null());
    if !o.verbose {
        cmd.stderr(Stdio::null());
    }
    let mut child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
    let expected = per_stream * SYMBOLS.len() as u64;
    let measured = measure(&sim, &mut child, expected);
    let _ = child.kill();
    let _ = child.wait();
    measured
}

/// `(voluntary, nonvoluntary)` context switches of `pid` so far.
fn ctx_switches(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((
        field("voluntary_ctxt_switches:"),
        field("nonvoluntary_ctxt_switches:"),
    ))
}

/// `Err` if the client has exited (it serves until stopped).
fn alive(child: &mut Child) -> Result<(), TestkitError> {
    match child.try_wait() {
        Ok(None) => Ok(()),
        Ok(Some(st)) => Err(TestkitError::Protocol(format!("the client exited: {st}"))),
        Err(e) => Err(TestkitError::Protocol(e.to_string())),
    }
}

fn measure(sim: &Sim, child: &mut Child, expected: u64) -> Result<Pass> {
    let pid = child.id();
    wait_for("the client to subscribe", Duration::from_secs(60), || {
        alive(child)?;
        let a = sim.audit()?;
        let subscribed = a["connections"][0]["subscribed"]
            .as_array()
            .map_or(0, Vec::len);
        Ok((subscribed >= SYMBOLS.len()).then_some(()))
    })?;
    let cpu0 = proc_sample(pid)?.cpu_ticks;
    let (vol0, invol0) = ctx_switches(pid)?;
    sim.resume()?;
    let audit = wait_for(
        "every trade of the finite feed acked",
        Duration::from_secs(300),
        || {
            alive(child)?;
            let a = sim.audit()?;
            let t = &a["totals"];
            let passed = t["acked"].as_u64().unwrap_or(0) + t["gaps"].as_u64().unwrap_or(0);
            Ok((passed >= expected).then_some(a))
        },
    )?;
    let cpu1 = proc_sample(pid)?.cpu_ticks;
    let (vol1, invol1) = ctx_switches(pid)?;
    let (acked, rate) = audit_rate(&audit);
    let n = acked.max(1) as f64;
    Ok(Pass {
        expected,
        acked,
        cpu_us: (cpu1 - cpu0) as f64 / CLOCK_TICKS_PER_S * 1e6 / n,
        wall_us: 1e6 / rate,
        rate,
        waited: vol1.saturating_sub(vol0),
        preempted: invol1.saturating_sub(invol0),
    })
}

/// `python plain_client.py --parse-cost N`: the per-message Python work
/// alone, µs.
fn parse_cost(python: &Path, n: u64) -> Result<f64> {
    let out = Command::new(python)
        .arg(script("plain_client.py"))
        .args(["--parse-cost", &n.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("run plain_client.py --parse-cost")?;
    if !out.status.success() {
        bail!(
            "plain_client.py --parse-cost: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// Python handoff ÷ plain websockets, pass by pass.
fn pair_ratio(passes: &[Vec<Pass>], g: fn(&Pass) -> f64) -> Vec<f64> {
    let (a, b) = (&passes[0], &passes[1]);
    a.iter().zip(b).map(|(a, b)| g(a) / g(b)).collect()
}

/// Median and range of a sample, as `median (min–max)`.
fn spread(v: &[f64], digits: usize) -> String {
    let lo = v.iter().copied().fold(f64::NAN, f64::min);
    let hi = v.iter().copied().fold(f64::NAN, f64::max);
    let mid = pct(v, 50.0);
    if !(mid.is_finite() && lo.is_finite() && hi.is_finite()) {
        return "–".into();
    }
    format!("{mid:.digits$} ({lo:.digits$}–{hi:.digits$})")
}

fn spread_json(v: &[f64]) -> Value {
    // Two decimals (one division: no 0.39799999999999996 in the JSON).
    let r = |x: f64| x.is_finite().then(|| (x * 100.0).round() / 100.0);
    json!({
        "median": r(pct(v, 50.0)),
        "min": r(v.iter().copied().fold(f64::NAN, f64::min)),
        "max": r(v.iter().copied().fold(f64::NAN, f64::max)),
        "samples": v.iter().map(|&x| r(x)).collect::<Vec<_>>(),
    })
}

/// The versions of the interpreter and the two libraries (and a clear
/// error if `websockets` is missing).
fn versions(python: &Path) -> Result<String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import sys, handoff, websockets; \
             print(sys.version.split()[0], handoff.__version__, websockets.__version__)",
        ])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run HANDOFF_PYTHON={}", python.display()))?;
    if !out.status.success() {
        bail!(
            "HANDOFF_PYTHON={} cannot import handoff and websockets (scripts/python-env installs both): {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Ok(format!(
        "Python {}, handoff {}, websockets {}",
        v.first().map_or("?", String::as_str),
        v.get(1).map_or("?", String::as_str),
        v.get(2).map_or("?", String::as_str)
    ))
}

/// Pack `bench_bot.py` into `dir/bench-bot.pyz` (the supervisor's
/// `--worker` is one executable file).
fn pack(python: &Path, dir: &Path) -> Result<PathBuf> {
    let pyz = dir.join("bench-bot.pyz");
    let out = Command::new(python)
        .args(["-m", "handoff.pack"])
        .arg(script("bench_bot.py"))
        .arg("-o")
        .arg(&pyz)
        .stdin(Stdio::null())
        .output()
        .context("run python -m handoff.pack")?;
    if !out.status.success() {
        bail!(
            "python -m handoff.pack: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(pyz)
}

/// Run the section and append its table and JSON to `md` and `report`.
pub fn section(bins: &AllBins, o: &Opts, md: &mut String, report: &mut Value) -> Result<()> {
    let Some(python) = std::env::var_os("HANDOFF_PYTHON").map(PathBuf::from) else {
        eprintln!("\n*** [bench] python section {NOT_RUN} ***\n");
        md.push_str(&format!("### 7. Python\n\n**{NOT_RUN}**\n\n"));
        report["python"] = json!({ "not_run": NOT_RUN });
        return Ok(());
    };
    let versions = versions(&python)?;
    let (per_stream, pairs, parse_n) = if o.smoke {
        (150, 1, 2_000)
    } else {
        (100_000, 5, 200_000)
    };
    let upgrades = if o.smoke {
        o.upgrades.min(2)
    } else {
        o.upgrades
    };

    // 1. Per-message cost, interleaved.
    let mut passes: Vec<Vec<Pass>> = vec![Vec::new(); Client::ALL.len()];
    let mut parse = Vec::new();
    for k in 1..=pairs {
        for (i, c) in Client::ALL.into_iter().enumerate() {
            let p = run_pass(bins, o, c.command(&python, bins), per_stream)?;
            progress(format!(
                "python pass {k}/{pairs}: {}: {:.2} µs CPU, {:.2} µs wall per message, lost {}",
                c.key(),
                p.cpu_us,
                p.wall_us,
                p.lost()
            ));
            passes[i].push(p);
        }
        parse.push(parse_cost(&python, parse_n)?);
    }

    // 2. Blackout: the Rust worker's cell, then the packed Python bot's.
    let dir = tempfile::Builder::new()
        .prefix("handoff-bench-py-")
        .tempdir()?;
    let pyz = pack(&python, dir.path())?;
    let ob = Opts {
        upgrades,
        ..o.clone()
    };
    progress(format!(
        "python blackout: bench-worker, 1 connection, 1 KiB, {upgrades} upgrades"
    ));
    let rust = blackout_cell(bins, &ob, 1, KIB)?;
    progress(format!(
        "python blackout: packed bench_bot.py, 1 connection, 1 KiB, {upgrades} upgrades"
    ));
    let py_bins = AllBins {
        testkit: Bins {
            worker: pyz,
            ..bins.testkit.clone()
        },
        floor: bins.floor.clone(),
    };
    let py = blackout_cell(&py_bins, &ob, 1, KIB)?;

    md.push_str(&tables(&versions, &passes, &parse, &rust, &py, o));
    let per_message: serde_json::Map<String, Value> = Client::ALL
        .iter()
        .zip(&passes)
        .map(|(c, ps)| {
            let f = |g: fn(&Pass) -> f64| ps.iter().map(g).collect::<Vec<_>>();
            let v = json!({
                "cpu_us_per_msg": spread_json(&f(|p| p.cpu_us)),
                "wall_us_per_msg": spread_json(&f(|p| p.wall_us)),
                "msgs_per_s": spread_json(&f(|p| p.rate)),
                "context_switches_voluntary": spread_json(&f(|p| p.waited as f64)),
                "context_switches_involuntary": spread_json(&f(|p| p.preempted as f64)),
                "lost": ps.iter().map(Pass::lost).sum::<u64>(),
            });
            (c.key().to_string(), v)
        })
        .collect();
    report["python"] = json!({
        "versions": versions,
        "per_message": {
            "messages_per_pass": per_stream * SYMBOLS.len() as u64,
            "pairs": pairs,
            "clients": per_message,
            "ratio_handoff_over_plain": {
                "cpu": spread_json(&pair_ratio(&passes, |p| p.cpu_us)),
                "wall": spread_json(&pair_ratio(&passes, |p| p.wall_us)),
            },
            "python_work_alone_us": spread_json(&parse),
        },
        "blackout": { "rust_bench_worker": rust.json(), "python_bench_bot": py.json() },
    });

    if o.smoke {
        let lost: u64 = passes.iter().flatten().map(Pass::lost).sum();
        for (who, c) in [("bench-worker", &rust), ("bench_bot.py", &py)] {
            if c.lost + c.duplicates + c.reordered + c.closed + c.reconnects > 0 {
                bail!(
                    "smoke: a handoff of {who} lost messages or connections: {}",
                    c.json()["audit"]
                );
            }
        }
        if lost > 0 {
            bail!("smoke: {lost} trades of the finite feeds were never acked");
        }
    }
    Ok(())
}

fn tables(
    versions: &str,
    passes: &[Vec<Pass>],
    parse: &[f64],
    rust: &Cell,
    py: &Cell,
    o: &Opts,
) -> String {
    let n = passes[0].first().map_or(0, |p| p.expected);
    let mut s = format!(
        "### 7. Python ({versions})\n\n\
         #### 7a. Per-message cost (1 connection, {n} trades as fast as the client takes them, each parsed \
         and acked; {} interleaved passes per client; median (min–max); CPU: the client process's utime + \
         stime from subscribed to all acked; wall: the simulator's first to last ack)\n\n\
         | client | CPU per message | wall per message | messages/s | context switches in the pass: waited / preempted | lost |\n\
         |---|---:|---:|---:|---|---:|\n",
        passes[0].len()
    );
    for (c, ps) in Client::ALL.iter().zip(passes) {
        let f = |g: fn(&Pass) -> f64| ps.iter().map(g).collect::<Vec<_>>();
        s.push_str(&format!(
            "| {} | {} µs | {} µs | {} | {} / {} | {} |\n",
            c.label(),
            spread(&f(|p| p.cpu_us), 2),
            spread(&f(|p| p.wall_us), 2),
            spread(&f(|p| p.rate), 0),
            spread(&f(|p| p.waited as f64), 0),
            spread(&f(|p| p.preempted as f64), 0),
            ps.iter().map(Pass::lost).sum::<u64>(),
        ));
    }
    s.push_str(&format!(
        "\nPython handoff ÷ plain websockets, per pair: CPU {}, wall {}. The Python work alone \
         (the same `json.loads`, counter and ack `json` encoding, timed in a loop in the same interpreter): {} µs \
         per message.\n\n",
        spread(&pair_ratio(passes, |p| p.cpu_us), 2),
        spread(&pair_ratio(passes, |p| p.wall_us), 2),
        spread(parse, 2),
    ));
    s.push_str(&format!(
        "#### 7b. Blackout of a handoff, Python bot vs Rust worker (1 connection, ~1 KiB snapshot, {} upgrades \
         each, a steady feed of {} msg/s; supervisor's figure: freeze → first message consumed; feed side: the \
         relay's last ack before the freeze → first ack after)\n\n\
         | worker | snapshot | blackout p50 / p99 / max | pause p50 / p99 | go → first p50 | serialize / decode p50 | \
         feed-side p50 / p99 / max | floor p50 | lost / sent |\n\
         |---|---:|---|---|---:|---|---|---:|---|\n",
        rust.blackout.len(),
        o.feed_rate
    ));
    for (who, c) in [
        ("Rust (bench-worker)", rust),
        ("Python (bench_bot.py, packed)", py),
    ] {
        s.push_str(&format!(
            "| {who} | {} | {} | {} / {} | {} | {} / {} | {} | {} | {} / {} |\n",
            bytes(c.snapshot_bytes),
            trio(&c.blackout),
            us(pct(&c.pause, 50.0)),
            us(pct(&c.pause, 99.0)),
            us(pct(&c.go_to_first, 50.0)),
            us(pct(&c.serialize, 50.0)),
            us(pct(&c.decode, 50.0)),
            trio(&c.feed),
            us(pct(&c.floor, 50.0)),
            c.lost,
            c.sent,
        ));
    }
    s.push_str(&format!(
        "\nPython ÷ Rust (p50): blackout {}, feed side {}. Where the time goes (p50; prepare = trigger → \
         successor's Hello, outside the blackout; freeze = Freeze sent → Frozen in; restore = → Ready; retire = \
         Go → old worker reaped; upgrade latency = trigger → old worker reaped):\n\n\
         | worker | prepare | freeze | restore | go → first | retire | upgrade latency p50 / p99 |\n\
         |---|---:|---:|---:|---:|---:|---|\n",
        ratio(pct(&py.blackout, 50.0), pct(&rust.blackout, 50.0)),
        ratio(pct(&py.feed, 50.0), pct(&rust.feed, 50.0)),
    ));
    for (who, c) in [("Rust", rust), ("Python", py)] {
        s.push_str(&format!(
            "| {who} | {} | {} | {} | {} | {} | {} / {} |\n",
            us(pct(&c.phase_prepare, 50.0)),
            us(pct(&c.phase_freeze, 50.0)),
            us(pct(&c.phase_restore, 50.0)),
            us(pct(&c.go_to_first, 50.0)),
            us(pct(&c.phase_retire, 50.0)),
            us(pct(&c.upgrade_latency, 50.0)),
            us(pct(&c.upgrade_latency, 99.0)),
        ));
    }
    s.push('\n');
    s
}
