//! Section 9: a cold restart over a realistic network, against the handoff
//! over the same path (issue #16, item 4).
//!
//! On loopback (section 2) a cold restart costs only the processes' own
//! work. Over a network every step of opening a feed again costs round
//! trips: the TCP handshake, TLS's, the websocket upgrade, the SUBSCRIBE
//! and the first trade; a handoff costs none, since the connections never
//! close. The kernel here has no `netem`, so the relay between the worker
//! and the simulator (`tap.rs`) holds every byte for the one-way delay in
//! each direction (`delay.rs`; the TCP handshake's round trip is emulated
//! too), and takes its instants where the exchange sees the bytes.
//!
//! For each one-way delay of `--delays-ms` (5 and 25 ms) and each scheme
//! (`ws://`, and `wss://`: the simulator's TLS 1.3 with a CA it makes at
//! start, which the worker trusts), with `--coldnet-conns` connections (4)
//! on the usual steady feed (`--feed-rate`, shared by the connections), and
//! `--coldnet-restarts` rounds (5), each round visiting every cell, each
//! pass with fresh processes (the passes of a cell in reverse order every
//! other round):
//!
//! - **cold restart**: the standalone `bench-worker` killed (SIGKILL) and
//!   started again at once, as in section 2. Gap = the old connections'
//!   last ack → the new connections' first ack, at the exchange side of the
//!   delay. Lost = the trades sent on the killed connections and never
//!   acked (the simulator's audit) + the trades broadcast while a feed had
//!   no subscription (rate × (new SUBSCRIBE − old close), per feed);
//! - **handoff**: the supervised `bench-worker` upgraded, for each state of
//!   `--coldnet-sizes` (1 KiB and 1 MiB of ballast). Gap = the longest
//!   silence of the aggregate ack stream overlapping the 100 ms either side
//!   of the handoff (the old worker's freeze to the new one's first
//!   message, shifted by the delay to the exchange's side); it is the
//!   handoff's own silence unless the path had a longer one nearby. Lost =
//!   the audit after the pass (feed paused, every trade sent acked):
//!   skipped + never acked;
//! - **no restart, no upgrade**: the longest silence of the ack stream in a
//!   quiet 200 ms window taken before each kill and each upgrade, once the
//!   worker had caught up with the feed: the path's ordinary gaps.
//!
//! Over `wss://` the relay counts TLS records instead of parsing frames
//! (see `tap.rs`). Smoke mode: one round, one delay, the smallest state; it
//! fails if a handoff lost a trade or a connection.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use handoff_protocol::monotonic_ns;
use handoff_testkit::wait_for;
use serde_json::{json, Value};

use crate::blackout::{caught_up_over, num, worker_times};
use crate::cold::{spawn_standalone, unacked_per_conn, wait_acking, Cold};
use crate::rig::{AllBins, Rig, RigOpts};
use crate::stats::{bytes, max, mean, pct, ratio, round1, summary, trio, us, yes};
use crate::tap::Net;
use crate::{progress, Jitter, Opts};

/// A quiet window: its longest ack gap is the baseline, and the handoff's
/// figure is the longest gap within half of it either side of the handoff.
const WINDOW: Duration = Duration::from_millis(200);

/// What the cold and headline figures are compared at (the issue's).
const HEADLINE_DELAY_MS: u64 = 5;
const TARGET_RATIO: f64 = 20.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Ws,
    Wss,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Ws => "ws://",
            Scheme::Wss => "wss://",
        }
    }
}

/// The upgrades of one cell with one state.
#[derive(Debug, Default)]
struct HandoffRow {
    ballast: usize,
    snapshot_bytes: u64,
    /// Longest ack gap overlapping the handoff ± WINDOW / 2.
    gap_us: Vec<f64>,
    /// The silence bracketing freeze → first message (section 1's
    /// feed-side blackout), for reference.
    silence_us: Vec<f64>,
    /// The supervisor's `blackout_us`.
    blackout_us: Vec<f64>,
    sent: u64,
    lost: u64,
    duplicates: u64,
    reordered: u64,
    closed: u64,
    reconnects: u64,
}

impl HandoffRow {
    fn spoiled(&self) -> u64 {
        self.lost + self.duplicates + self.reordered + self.closed + self.reconnects
    }

    fn json(&self) -> Value {
        json!({
            "ballast_bytes": self.ballast,
            "snapshot_bytes": self.snapshot_bytes,
            "upgrades": self.gap_us.len(),
            "gap_us": summary(&self.gap_us),
            "feed_silence_us": summary(&self.silence_us),
            "blackout_us": summary(&self.blackout_us),
            "audit": {
                "sent": self.sent,
                "lost": self.lost,
                "duplicates": self.duplicates,
                "reordered": self.reordered,
                "closed": self.closed,
                "reconnects": self.reconnects,
            },
            "samples": { "gap_us": self.gap_us, "feed_silence_us": self.silence_us },
        })
    }
}

/// One delay and scheme: every row, over every round.
#[derive(Debug)]
struct Cell {
    delay_ms: u64,
    scheme: Scheme,
    /// The cell's cold restarts.
    cold: Cold,
    handoffs: Vec<HandoffRow>,
    /// The longest ack gap of each quiet window.
    baseline_us: Vec<f64>,
    /// How late chunks left the delay line (release − due), every pass.
    late_us: Vec<f64>,
}

impl Cell {
    fn net(&self) -> Net {
        Net {
            delay: Duration::from_millis(self.delay_ms),
            tls: self.scheme == Scheme::Wss,
        }
    }

    fn label(&self) -> String {
        format!("{} ms, {}", self.delay_ms, self.scheme.name())
    }

    fn json(&self) -> Value {
        let cold = pct(&self.cold.gap, 50.0);
        json!({
            "one_way_delay_ms": self.delay_ms,
            "scheme": self.scheme.name(),
            "cold_restart": self.cold.json(),
            "handoffs": self.handoffs.iter().map(|h| {
                let mut v = h.json();
                v["cold_over_handoff_gap_p50"] = json!(round1(cold / pct(&h.gap_us, 50.0)));
                v
            }).collect::<Vec<_>>(),
            "delay_line_lateness_us": summary(&self.late_us),
            "no_restart_no_upgrade": {
                "window_ms": WINDOW.as_millis() as u64,
                "longest_gap_us": summary(&self.baseline_us),
                "samples": self.baseline_us,
            },
        })
    }
}

/// Run the section and append its table and JSON.
pub fn section(bins: &AllBins, o: &Opts, md: &mut String, report: &mut Value) -> Result<()> {
    let conns = o.coldnet_conns;
    let mut cells = Vec::new();
    for &delay_ms in &o.coldnet_delays_ms {
        for scheme in [Scheme::Ws, Scheme::Wss] {
            cells.push(Cell {
                delay_ms,
                scheme,
                cold: Cold {
                    conns,
                    rate: o.rate_per_stream(conns),
                    ..Cold::default()
                },
                handoffs: o
                    .coldnet_sizes
                    .iter()
                    .map(|&ballast| HandoffRow {
                        ballast,
                        ..HandoffRow::default()
                    })
                    .collect(),
                baseline_us: Vec::new(),
                late_us: Vec::new(),
            });
        }
    }
    let mut jitter = Jitter(0x0C01_D0E7);
    let rounds = o.coldnet_restarts;
    for round in 0..rounds {
        for cell in &mut cells {
            let net = cell.net();
            // Pass 0 is the cold restart, pass k the k-th state's upgrade.
            let mut order: Vec<usize> = (0..=cell.handoffs.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for k in order {
                let what = match k {
                    0 => "cold restart".to_string(),
                    k => format!(
                        "upgrade, {} ballast",
                        bytes(cell.handoffs[k - 1].ballast as u64)
                    ),
                };
                progress(format!(
                    "coldnet: {}, {conns} connections, {what} (round {}/{rounds})",
                    cell.label(),
                    round + 1
                ));
                let (base, late) = if k == 0 {
                    cold_pass(bins, o, net, conns, &mut cell.cold, &mut jitter)?
                } else {
                    handoff_pass(bins, o, net, conns, &mut cell.handoffs[k - 1], &mut jitter)?
                };
                let gap = match k {
                    0 => cell.cold.gap.last(),
                    k => cell.handoffs[k - 1].gap_us.last(),
                };
                progress(format!(
                    "  feed-side gap {}, quiet window's longest gap {}",
                    us(gap.copied().unwrap_or(f64::NAN)),
                    us(base)
                ));
                cell.baseline_us.push(base);
                cell.late_us.extend(late);
            }
        }
    }
    if o.smoke {
        for c in &cells {
            for h in &c.handoffs {
                if h.spoiled() > 0 {
                    bail!(
                        "smoke: a handoff over {} lost messages or connections: {}",
                        c.label(),
                        h.json()["audit"]
                    );
                }
            }
        }
    }
    md.push_str(&table(o, conns, &cells));
    report["coldnet"] = json!({
        "connections": conns,
        "feed_messages_per_s": o.feed_rate,
        "rounds": rounds,
        "tls_versions": "1.3",
        "cells": cells.iter().map(Cell::json).collect::<Vec<_>>(),
    });
    Ok(())
}

/// The standalone worker, killed (and reaped) when dropped.
struct Standalone(std::process::Child);

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The longest ack gap of a quiet window starting now.
fn quiet_window(rig: &Rig) -> Result<f64> {
    let t0 = monotonic_ns();
    std::thread::sleep(WINDOW);
    let t1 = monotonic_ns();
    let (a, b) = wait_for(
        "an ack after the quiet window",
        Duration::from_secs(30),
        || Ok(rig.tap.longest_gap(t0, t1)),
    )?;
    Ok((b - a) as f64 / 1000.0)
}

/// One cold restart with processes of its own; returns the quiet window's
/// gap taken before it and the delay line's lateness.
fn cold_pass(
    bins: &AllBins,
    o: &Opts,
    net: Net,
    conns: usize,
    row: &mut Cold,
    jitter: &mut Jitter,
) -> Result<(f64, Vec<f64>)> {
    let rig = Rig::feed_over(
        bins,
        RigOpts {
            conns,
            sim_args: o.sim_rate_args(conns),
            worker_args: Vec::new(),
            verbose: o.verbose,
        },
        net,
    )?;
    let mut worker = Standalone(spawn_standalone(&rig)?);
    wait_acking(&rig, 0, conns)?;
    caught_up_over(&rig.sim, o.feed_rate, 2 * net.delay)?;
    std::thread::sleep(jitter.ms(100, 300));
    let base = quiet_window(&rig)?;
    std::thread::sleep(jitter.ms(10, 30));
    let t_kill = monotonic_ns();
    worker.0.kill().context("kill bench-worker")?;
    worker.0.wait().context("reap bench-worker")?;
    worker = Standalone(spawn_standalone(&rig)?);
    let cs = wait_acking(&rig, conns, conns)?;
    row.record(&cs[..conns], &cs[conns..2 * conns], t_kill)?;
    // The killed connections' unacked trades, once the simulator has seen
    // them close (it numbers connections in accept order, as the relay does).
    let audit = wait_for(
        "the audit to see the killed connections close",
        Duration::from_secs(30),
        || {
            let a = rig.sim.audit()?;
            let closed = a["totals"]["closed"].as_u64().unwrap_or(0);
            Ok((closed as usize >= conns).then_some(a))
        },
    )?;
    row.unacked
        .push(unacked_per_conn(&audit).iter().take(conns).sum());
    drop(worker);
    Ok((base, rig.tap.lateness_us()))
}

/// One upgrade of the supervised worker with processes of its own; returns
/// the quiet window's gap taken before it and the delay line's lateness.
fn handoff_pass(
    bins: &AllBins,
    o: &Opts,
    net: Net,
    conns: usize,
    row: &mut HandoffRow,
    jitter: &mut Jitter,
) -> Result<(f64, Vec<f64>)> {
    let mut rig = Rig::feed_over(
        bins,
        RigOpts {
            conns,
            sim_args: o.sim_rate_args(conns),
            worker_args: vec!["--ballast-bytes".into(), row.ballast.to_string()],
            verbose: o.verbose,
        },
        net,
    )?;
    rig.start_supervisor()?;
    caught_up_over(&rig.sim, o.feed_rate, 2 * net.delay)?;
    std::thread::sleep(jitter.ms(100, 300));
    let base = quiet_window(&rig)?;
    caught_up_over(&rig.sim, o.feed_rate, 2 * net.delay)?;
    std::thread::sleep(jitter.ms(10, 30));
    let rep = rig.upgrade(1)?;
    let w = worker_times(&rig, &rep)?;
    // The freeze and the first message as the exchange sees their effect:
    // the acks written around them arrive one delay later.
    let d = u64::try_from(net.delay.as_nanos()).unwrap_or(0);
    let (from, to) = (w.freeze_ns + d, w.first_ns + d);
    let half = u64::try_from(WINDOW.as_nanos() / 2).unwrap_or(0);
    let (a, b) = wait_for(
        "an ack after the upgrade's window",
        Duration::from_secs(30),
        || Ok(rig.tap.longest_gap(from.saturating_sub(half), to + half)),
    )?;
    row.gap_us.push((b - a) as f64 / 1000.0);
    let (s0, s1) = wait_for(
        "the new worker's first ack",
        Duration::from_secs(30),
        || Ok(rig.tap.silence(from, to)),
    )?;
    row.silence_us.push(s1.saturating_sub(s0) as f64 / 1000.0);
    row.blackout_us.push(num(&rep["blackout_us"]));
    row.snapshot_bytes = w.snapshot_bytes;
    // What the exchange saw: stop the feed, let every trade sent be acked.
    rig.sim.pause()?;
    let audit = rig.sim.audit_when_acked(Duration::from_secs(60))?;
    let t = &audit["totals"];
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    row.sent += n("sent");
    row.lost += n("gaps") + n("unacked");
    row.duplicates += n("duplicates");
    row.reordered += n("reordered");
    row.closed += n("closed");
    row.reconnects += audit["connections_total"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(conns as u64);
    rig.stop_supervisor();
    Ok((base, rig.tap.lateness_us()))
}

fn table(o: &Opts, conns: usize, cells: &[Cell]) -> String {
    let mut s = format!(
        "### 9. Cold restart vs handoff over a delayed path ({conns} connections, a steady feed of {} msg/s; \
         the relay delays every byte by the one-way delay in each direction; {} interleaved round{}, \
         each a cold restart and an upgrade per state, in fresh processes)\n\n\
         | one-way delay | scheme | | feed-side gap p50 / max | every feed back p50 | lost per event (mean) | lost / sent, all | cold ÷ this (p50) |\n\
         |---:|---|---|---|---:|---|---|---:|\n",
        o.feed_rate,
        o.coldnet_restarts,
        if o.coldnet_restarts == 1 { "" } else { "s" },
    );
    let pair = |v: &[f64]| format!("{} / {}", us(pct(v, 50.0)), us(max(v)));
    for c in cells {
        let cold = pct(&c.cold.gap, 50.0);
        let lost = c.cold.lost();
        s.push_str(&format!(
            "| {} ms | {} | cold restart (kill -9, start again) | {} | {} | {:.1} ({:.1} unacked + {:.1} unsubscribed) | {:.0} / – | – |\n",
            c.delay_ms,
            c.scheme.name(),
            pair(&c.cold.gap),
            us(pct(&c.cold.all_back, 50.0)),
            mean(&lost),
            mean(&c.cold.unacked),
            mean(&c.cold.unsubscribed),
            lost.iter().sum::<f64>(),
        ));
        for h in &c.handoffs {
            s.push_str(&format!(
                "| | | handoff, {} state | {} | – | {:.1} | {} / {} | {} |\n",
                bytes(h.snapshot_bytes),
                pair(&h.gap_us),
                h.lost as f64 / h.gap_us.len().max(1) as f64,
                h.lost,
                h.sent,
                ratio(cold, pct(&h.gap_us, 50.0)),
            ));
        }
        s.push_str(&format!(
            "| | | no restart, no upgrade (longest gap in {} ms) | {} | – | – | – | {} |\n",
            WINDOW.as_millis(),
            pair(&c.baseline_us),
            ratio(cold, pct(&c.baseline_us, 50.0)),
        ));
    }
    // The figure: at 5 ms (or the nearest delay run) over wss://.
    let near = o
        .coldnet_delays_ms
        .iter()
        .copied()
        .min_by_key(|d| d.abs_diff(HEADLINE_DELAY_MS));
    if let Some(c) = cells
        .iter()
        .find(|c| Some(c.delay_ms) == near && c.scheme == Scheme::Wss)
    {
        let cold = pct(&c.cold.gap, 50.0);
        let figures: Vec<String> = c
            .handoffs
            .iter()
            .map(|h| {
                let r = cold / pct(&h.gap_us, 50.0);
                format!(
                    "{} with a {} state ({})",
                    ratio(cold, pct(&h.gap_us, 50.0)),
                    bytes(h.snapshot_bytes),
                    yes(r >= TARGET_RATIO)
                )
            })
            .collect();
        let lost: u64 = cells
            .iter()
            .flat_map(|c| &c.handoffs)
            .map(HandoffRow::spoiled)
            .sum();
        s.push_str(&format!(
            "\nTarget at {} ms one-way over wss://: cold restart ÷ handoff feed-side gap (p50) ≥ {TARGET_RATIO:.0}×: {}; \
             lost, duplicated or reordered by the handoffs, connections closed or reopened, over every cell: {lost} (0: {}).\n",
            c.delay_ms,
            figures.join(", "),
            yes(lost == 0),
        ));
    }
    s.push_str(
        "\nGaps are silences of the aggregate ack stream at the exchange's side of the delay: cold = the old \
         connections' last ack → the new ones' first; handoff = the longest overlapping the handoff ± 100 ms; \
         the last row = the longest in a quiet window before each kill and upgrade. Over wss:// the relay \
         counts the worker's TLS records (see tap.rs).",
    );
    let late: Vec<f64> = cells
        .iter()
        .flat_map(|c| c.late_us.iter().copied())
        .collect();
    s.push_str(&format!(
        " The delay line's own error (release − due, {} chunks): {}.\n\n",
        late.len(),
        trio(&late)
    ));
    s
}
