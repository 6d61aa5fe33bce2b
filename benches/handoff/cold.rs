//! Section 2: cold restart of the same worker (kill -9, start again
//! standalone: reconnect, resubscribe), next to the handoff of the same
//! configuration: its gap and the messages it loses (never acked on the
//! killed connections, and broadcast while a feed had no subscription).
//! Section 9 (`coldnet.rs`) repeats it over a delayed path.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use handoff_protocol::monotonic_ns;
use handoff_testkit::wait_for;
use serde_json::{json, Value};

use crate::blackout::Cell;
use crate::rig::{AllBins, Rig};
use crate::stats::{max, mean, pct, ratio, round1, summary, trio, us};
use crate::tap;
use crate::{Jitter, Opts, SYMBOLS};

/// Cold restarts of one configuration: section 2's, and each cell's of
/// section 9 (`coldnet.rs`).
#[derive(Debug, Clone, Default)]
pub struct Cold {
    pub conns: usize,
    /// Aggregate ack silence: old worker's last ack → new worker's first.
    pub gap: Vec<f64>,
    /// Kill → the last connection's first ack (every feed back).
    pub all_back: Vec<f64>,
    /// Trades sent on the killed connections and never acked, per restart.
    pub unacked: Vec<f64>,
    /// Trades broadcast while a feed had no subscription, per restart.
    pub unsubscribed: Vec<f64>,
    /// Trades per second per stream.
    pub rate: u32,
}

impl Cold {
    /// One restart, as the relay saw it: `old` the killed worker's
    /// connections, `new` its replacement's, `t_kill` when the kill was
    /// sent. Records the ack gap (old's last ack to new's first), every
    /// feed back (kill to new's last first ack) and the trades broadcast
    /// while a feed had no subscription (old's close to new's SUBSCRIBE,
    /// at the feed's rate).
    pub fn record(
        &mut self,
        old: &[tap::ConnRec],
        new: &[tap::ConnRec],
        t_kill: u64,
    ) -> Result<()> {
        let old_last = old
            .iter()
            .filter_map(|c| c.last_ack_ns)
            .max()
            .context("no ack on the old connections")?;
        let new_first = new
            .iter()
            .filter_map(|c| c.first_ack_ns)
            .min()
            .context("no ack on the new connections")?;
        let back = new
            .iter()
            .filter_map(|c| c.first_ack_ns)
            .max()
            .unwrap_or(t_kill);
        self.gap
            .push(new_first.saturating_sub(old_last) as f64 / 1000.0);
        self.all_back
            .push(back.saturating_sub(t_kill) as f64 / 1000.0);
        let unsub_s: f64 = old
            .iter()
            .zip(new)
            .filter_map(|(o, n)| Some(n.subscribed_ns?.saturating_sub(o.closed_ns?) as f64 / 1e9))
            .sum();
        self.unsubscribed
            .push(unsub_s * f64::from(self.rate) * SYMBOLS.len() as f64);
        Ok(())
    }

    /// The restarts measured (one sample each).
    pub fn restarts(&self) -> usize {
        self.gap.len()
    }

    pub fn lost(&self) -> Vec<f64> {
        self.unacked
            .iter()
            .zip(&self.unsubscribed)
            .map(|(a, b)| a + b)
            .collect()
    }

    /// The restarts' figures (section 9 reports these for each cell).
    pub fn json(&self) -> Value {
        let lost = self.lost();
        json!({
            "restarts": self.restarts(),
            "gap_us": summary(&self.gap),
            "all_feeds_back_us": summary(&self.all_back),
            "lost_per_restart": summary(&lost),
            "unacked_per_restart": summary(&self.unacked),
            "unsubscribed_per_restart": summary(&self.unsubscribed),
            "samples": { "gap_us": self.gap, "lost": lost },
        })
    }

    /// Section 2's: [`Cold::json`] with the connections, the feed's rate
    /// and the gap against the handoff `h` of the same configuration.
    pub fn json_vs(&self, h: Option<&Cell>) -> Value {
        let mut v = self.json();
        v["connections"] = json!(self.conns);
        v["trades_per_s_per_stream"] = json!(self.rate);
        v["cold_over_handoff_gap_p50"] =
            json!(h.and_then(|h| round1(pct(&self.gap, 50.0) / pct(&h.feed, 50.0))));
        v
    }
}

pub fn spawn_standalone(rig: &Rig) -> Result<Child> {
    let mut cmd = Command::new(&rig.bins.testkit.worker);
    cmd.args(rig.worker_argv()).stdin(Stdio::null());
    if !rig.opts.verbose {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    cmd.spawn().context("spawn bench-worker")
}

/// Wait until relayed connections `from..from + n` all carry acks.
pub fn wait_acking(rig: &Rig, from: usize, n: usize) -> Result<Vec<tap::ConnRec>> {
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

pub fn cold_restarts(bins: &AllBins, o: &Opts, conns: usize, size: usize) -> Result<Cold> {
    let rig = o.feed_rig(
        bins,
        conns,
        vec!["--ballast-bytes".into(), size.to_string()],
    )?;
    let mut cold = Cold {
        conns,
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
        cold.record(
            &cs[new_from - conns..new_from],
            &cs[new_from..new_from + conns],
            t_kill,
        )?;
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
pub fn unacked_per_conn(audit: &Value) -> Vec<f64> {
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

pub fn cold_table(c: &Cold, h: Option<&Cell>) -> String {
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
        c.restarts(),
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
