//! Processes under test: the simulator (from `handoff_testkit`), the relay
//! that timestamps acks, and a supervisor running `bench-worker` whose feeds
//! go through the relay. Like `handoff_testkit::Cluster`, but with the feed
//! URLs pointing at the relay, and the worker's timing file at hand. The
//! relay can emulate a network ([`Net`]: a one-way delay, `wss://`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use handoff_testkit::{wait_for, Bins, CtlOutput, Sim};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

use crate::tap::{Net, Tap};

/// Paths of every binary the benchmarks run (cargo builds them for benches).
#[derive(Debug, Clone)]
pub struct AllBins {
    pub testkit: Bins,
    pub floor: PathBuf,
}

impl AllBins {
    /// The binaries cargo built for this bench, or, with
    /// `HANDOFF_BENCH_BINS=DIR`, the ones in `DIR` (a copy of another
    /// build's `target/release`, to compare two builds in the same
    /// conditions without rebuilding).
    pub fn from_cargo() -> AllBins {
        if let Some(dir) = std::env::var_os("HANDOFF_BENCH_BINS").map(PathBuf::from) {
            return AllBins {
                testkit: Bins {
                    supervisor: dir.join("supervisor"),
                    supervisorctl: dir.join("supervisorctl"),
                    worker: dir.join("bench-worker"),
                    sim: dir.join("exchange-sim"),
                },
                floor: dir.join("bench-floor"),
            };
        }
        AllBins {
            testkit: Bins {
                supervisor: env!("CARGO_BIN_EXE_supervisor").into(),
                supervisorctl: env!("CARGO_BIN_EXE_supervisorctl").into(),
                worker: env!("CARGO_BIN_EXE_bench-worker").into(),
                sim: env!("CARGO_BIN_EXE_exchange-sim").into(),
            },
            floor: env!("CARGO_BIN_EXE_bench-floor").into(),
        }
    }

    /// `target/` (the parent of the profile directory holding the binaries).
    pub fn target_dir(&self) -> PathBuf {
        let mut p = self.testkit.worker.clone();
        p.pop(); // the binary
        p.pop(); // debug / release
        p
    }
}

/// How to start a [`Rig`].
#[derive(Debug, Clone)]
pub struct RigOpts {
    pub conns: usize,
    pub sim_args: Vec<String>,
    pub worker_args: Vec<String>,
    pub verbose: bool,
}

/// Simulator + relay + (optionally) supervisor with a bench-worker.
pub struct Rig {
    pub bins: AllBins,
    pub dir: TempDir,
    pub sim: Sim,
    pub tap: Tap,
    pub opts: RigOpts,
    pub timings: PathBuf,
    /// The simulator's CA (`wss://` only), which the worker trusts.
    ca_file: Option<PathBuf>,
    socket: PathBuf,
    supervisor: Option<Child>,
}

impl Rig {
    /// Start the simulator and the relay (no supervisor yet).
    pub fn feed(bins: &AllBins, opts: RigOpts) -> Result<Rig> {
        Rig::feed_over(bins, opts, Net::default())
    }

    /// The same over the path `net`: with `net.tls` the simulator serves
    /// `wss://` (TLS 1.3 only, with a CA it makes at start) and the worker
    /// trusts that CA.
    pub fn feed_over(bins: &AllBins, opts: RigOpts, net: Net) -> Result<Rig> {
        let dir = tempfile::Builder::new()
            .prefix("handoff-bench-")
            .tempdir()?;
        let mut sim_args = opts.sim_args.clone();
        let ca_file = net.tls.then(|| dir.path().join("sim-ca.pem"));
        if let Some(ca) = &ca_file {
            sim_args.extend([
                "--tls".into(),
                "--tls-ca-out".into(),
                ca.display().to_string(),
                // The relay tells acks apart by TLS 1.3's record sequence.
                "--tls-versions".into(),
                "1.3".into(),
            ]);
        }
        let sim = Sim::start(&bins.testkit.sim, &sim_args)?;
        let upstream = sim.addr.parse().context("sim address")?;
        let tap = Tap::start(upstream, net)?;
        let timings = dir.path().join("timings");
        let socket = dir.path().join("ctl.sock");
        Ok(Rig {
            bins: bins.clone(),
            dir,
            sim,
            tap,
            opts,
            timings,
            ca_file,
            socket,
            supervisor: None,
        })
    }

    /// The worker's own arguments: one feed per connection through the relay.
    pub fn worker_argv(&self) -> Vec<String> {
        let mut v = Vec::new();
        for _ in 0..self.opts.conns {
            v.push("--feed".to_string());
            v.push(self.tap.url());
        }
        if let Some(ca) = &self.ca_file {
            v.push("--ca-file".into());
            v.push(ca.display().to_string());
        }
        v.push("--ack".into());
        v.push("--timings".into());
        v.push(self.timings.display().to_string());
        v.extend(self.opts.worker_args.iter().cloned());
        v
    }

    /// Start the supervisor with its worker and wait until it serves.
    pub fn start_supervisor(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bins.testkit.supervisor);
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--worker")
            .arg(&self.bins.testkit.worker)
            .arg("--")
            .args(self.worker_argv())
            .stdin(Stdio::null())
            .process_group(0);
        if !self.opts.verbose {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        self.supervisor = Some(cmd.spawn().context("spawn supervisor")?);
        self.wait_serving(Duration::from_secs(60))?;
        Ok(())
    }

    pub fn supervisor_pid(&self) -> Option<u32> {
        self.supervisor.as_ref().map(Child::id)
    }

    /// Stop the supervisor gracefully (SIGTERM: it stops its worker and
    /// reaps it, so their CPU time is accounted to this process), killing
    /// the whole process group if that takes longer than 15 s.
    pub fn stop_supervisor(&mut self) {
        let Some(mut child) = self.supervisor.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = child.wait();
    }

    pub fn ctl<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(
        &self,
        args: I,
    ) -> Result<CtlOutput> {
        let out = Command::new(&self.bins.testkit.supervisorctl)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run supervisorctl")?;
        Ok(CtlOutput::from(out))
    }

    pub fn status(&self) -> Result<Value> {
        let out = self.ctl(["status", "--json"])?;
        if !out.success() {
            bail!("status failed: {}", out.stderr.trim());
        }
        Ok(serde_json::from_str(&out.stdout)?)
    }

    pub fn wait_serving(&self, timeout: Duration) -> Result<Value> {
        let want = self.opts.conns;
        Ok(wait_for(
            "the worker to hold its connections",
            timeout,
            || {
                let out = self
                    .ctl(["status", "--json"])
                    .map_err(|e| handoff_testkit::TestkitError::Protocol(e.to_string()))?;
                if !out.success() {
                    return Ok(None);
                }
                let v: Value = serde_json::from_str(&out.stdout)
                    .map_err(|e| handoff_testkit::TestkitError::Protocol(e.to_string()))?;
                let held = v["connections"].as_array().map_or(0, Vec::len);
                let ok = v["worker"]["state"] == "running"
                    && held == want
                    && v["handoffs"]["in_progress"].is_null();
                Ok(ok.then_some(v))
            },
        )?)
    }

    /// `upgrade --wait`, then the handoff's report once the new worker has
    /// consumed its first message (that is when `blackout_us` is known).
    pub fn upgrade(&self, expect_id: u64) -> Result<Value> {
        let out = self.ctl(["upgrade", "--wait"])?;
        if !out.success() {
            bail!(
                "upgrade {expect_id} failed: {}{}",
                out.stderr.trim(),
                out.stdout.trim()
            );
        }
        Ok(wait_for(
            "the handoff's blackout figure",
            Duration::from_secs(20),
            || {
                let v = self
                    .status()
                    .map_err(|e| handoff_testkit::TestkitError::Protocol(e.to_string()))?;
                let last = &v["handoffs"]["last"];
                let ready = last["id"].as_u64() == Some(expect_id) && last["blackout_us"].is_u64();
                Ok(ready.then(|| last.clone()))
            },
        )?)
    }

    /// Lines of the worker's timing file, parsed as `(kind, pid, numbers)`.
    pub fn timing_lines(&self) -> Vec<TimingLine> {
        read_timings(&self.timings)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut child) = self.supervisor.take() {
            // The supervisor and its workers share a process group.
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// One line of bench-worker's `--timings` file.
#[derive(Debug, Clone)]
pub struct TimingLine {
    pub kind: String,
    pub pid: u32,
    pub nums: Vec<u64>,
}

pub fn read_timings(path: &Path) -> Vec<TimingLine> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let kind = it.next()?.to_string();
            let pid = it.next()?.parse().ok()?;
            let nums = it.map(|x| x.parse().ok()).collect::<Option<Vec<u64>>>()?;
            Some(TimingLine { kind, pid, nums })
        })
        .collect()
}

/// Resident set size and CPU time of a process, from `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// utime + stime, in clock ticks (USER_HZ, 100 per second on Linux).
    pub cpu_ticks: u64,
    /// Minor page faults (first touches of fresh memory, mostly).
    pub minflt: u64,
}

pub fn proc_sample(pid: u32) -> Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ")".
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); minflt is field 10, utime 14, stime 15.
    let minflt: u64 = f.get(7).and_then(|s| s.parse().ok()).unwrap_or(0);
    let utime: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(ProcSample {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        cpu_ticks: utime + stime,
        minflt,
    })
}

/// CPU time in clock ticks: the whole machine's busy time (from
/// `/proc/stat`) and this process's with its reaped descendants
/// (`/proc/self/stat`: utime, stime, cutime, cstime).
#[derive(Debug, Clone, Copy)]
pub struct CpuAccount {
    pub machine_busy: u64,
    pub ours: u64,
    pub at: std::time::Instant,
}

impl CpuAccount {
    pub fn now() -> CpuAccount {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cpu: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let busy = cpu.iter().take(8).sum::<u64>()
            - cpu.get(3).copied().unwrap_or(0)
            - cpu.get(4).copied().unwrap_or(0);
        let me = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let rest = me.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ours = (11..15)
            .filter_map(|i| f.get(i).and_then(|s| s.parse::<u64>().ok()))
            .sum();
        CpuAccount {
            machine_busy: busy,
            ours,
            at: std::time::Instant::now(),
        }
    }
}

/// USER_HZ: the unit of utime/stime in `/proc/PID/stat` (100 on Linux).
pub const CLOCK_TICKS_PER_S: f64 = 100.0;
