//! Section 6: the supervisor's footprint (RSS, CPU, page faults) idle and
//! during 10 upgrades/s.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::rig::{proc_sample, AllBins, CLOCK_TICKS_PER_S};
use crate::stats::{bytes, round1, yes};
use crate::Opts;

#[derive(Debug, Clone, Default)]
pub struct Footprint {
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
    pub fn json(&self) -> Value {
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

pub fn footprint(bins: &AllBins, o: &Opts, conns: usize, size: usize) -> Result<Footprint> {
    let mut rig = o.feed_rig(
        bins,
        conns,
        vec!["--ballast-bytes".into(), size.to_string()],
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

pub fn footprint_table(f: &Footprint) -> String {
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
