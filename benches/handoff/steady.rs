//! Section 4: steady-state throughput and CPU per message of the worker
//! under the supervisor, the same worker standalone, and a bare
//! tokio-tungstenite client, on a finite feed as fast as the client takes
//! it (best of interleaved passes).

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use handoff_testkit::{wait_for, ClusterBuilder, Sim};
use serde_json::{json, Value};

use crate::bare;
use crate::rig::{proc_sample, AllBins, CLOCK_TICKS_PER_S};
use crate::stats::{round1, yes};
use crate::{Opts, SYMBOLS};

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
pub struct Steady {
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
    pub fn json(&self) -> Value {
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
pub fn audit_rate(audit: &Value) -> (u64, f64) {
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

pub fn steady(bins: &AllBins, o: &Opts, conns: usize) -> Result<Steady> {
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

pub fn steady_table(rows: &[Steady]) -> String {
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
