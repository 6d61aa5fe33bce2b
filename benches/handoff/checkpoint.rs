//! Section 8: what a periodic checkpoint costs the feed (issue #16, items
//! 3–4). The serving worker's event loop stops for every checkpoint: the
//! app's `snapshot()`, the envelope, and the write of the whole frame to
//! the supervisor (`worker/src/serve.rs`, `send_checkpoint`), while the
//! feed keeps sending.
//!
//! For each state (ballast of each `--sizes`, and `--checkpoint-positions`
//! decimal positions), the supervised `bench-worker` serves the usual steady
//! feed through the relay (`tap.rs`) for `--checkpoint-secs`, once with
//! `--checkpoint-ms` (200 ms by default) and once with checkpoints off (an
//! interval of a day), on the same feed and the same number of connections
//! (the headline's, 16), interleaved over `--checkpoint-rounds` (each round
//! reverses the order), each pass with fresh processes. Per row:
//!
//! - **checkpoints** taken in the window and the worker's own `snapshot()`
//!   duration: `snapshot` lines of `bench-worker --timings`, by the serving
//!   worker's pid (the periodic checkpoints are the only snapshots while
//!   nothing is upgraded);
//! - **stall at a checkpoint**: the longest silence of the aggregate ack
//!   stream (every connection's acks as the relay reads them, as for the
//!   blackout's feed-side figure) overlapping that checkpoint's
//!   `snapshot()`; it also holds the envelope and the transfer to the
//!   supervisor, which the loop waits for too, and the idle wait before the
//!   timer fired;
//! - **ack gaps** over the whole window, in both modes: the longest, the
//!   p99 of every gap between two ack-carrying reads, and, per window of
//!   the checkpoint interval, the longest gap touching it (p50 / p99 over
//!   the windows), which compares the checkpointing worker with the one that
//!   does not take any.
//!
//! Smoke mode: the smallest ballast, one round of about a second each; it
//! fails only if a pass produced no numbers (no ack, or no checkpoint in
//! the checkpointing pass).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use handoff_protocol::monotonic_ns;
use handoff_testkit::wait_for;
use serde_json::{json, Value};

use crate::blackout::caught_up;
use crate::rig::AllBins;
use crate::stats::{bytes, max, pct, round1, summary, trio, us};
use crate::{progress, Opts};

/// An interval no pass lasts: checkpoints off.
const OFF_MS: u64 = 24 * 3600 * 1000;

/// What the worker carries besides its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ballast(usize),
    Positions(usize),
}

impl State {
    pub fn worker_args(self) -> Vec<String> {
        match self {
            State::Ballast(n) => vec!["--ballast-bytes".into(), n.to_string()],
            State::Positions(n) => vec!["--positions".into(), n.to_string()],
        }
    }

    pub fn label(self) -> String {
        match self {
            State::Ballast(n) => format!("{} ballast", bytes(n as u64)),
            State::Positions(n) => format!("{n} positions"),
        }
    }
}

/// One pass: a fresh rig, one interval, one window.
struct Pass {
    /// `(start_ns, duration_ns, bytes)` of each `snapshot()` that started in
    /// the window.
    snapshots: Vec<(u64, u64, u64)>,
    /// Ack-carrying reads covering the window (and the silences at its ends).
    reads: Vec<u64>,
    t0: u64,
    t1: u64,
}

/// Both modes of one state, over every round.
struct Row {
    state: State,
    /// `None`: checkpoints off.
    interval_ms: Option<u64>,
    window_s: f64,
    snapshot_bytes: u64,
    checkpoints: usize,
    /// Checkpoints with no ack since the previous one.
    back_to_back: usize,
    snapshot_us: Vec<f64>,
    stall_us: Vec<f64>,
    gaps_us: Vec<f64>,
    window_max_us: Vec<f64>,
}

impl Row {
    fn new(state: State, interval_ms: Option<u64>) -> Row {
        Row {
            state,
            interval_ms,
            window_s: 0.0,
            snapshot_bytes: 0,
            checkpoints: 0,
            back_to_back: 0,
            snapshot_us: Vec::new(),
            stall_us: Vec::new(),
            gaps_us: Vec::new(),
            window_max_us: Vec::new(),
        }
    }

    /// Fold one pass in; `slot_ns` is the width of the windows of
    /// `window_max_us`.
    fn add(&mut self, p: &Pass, slot_ns: u64) {
        self.window_s += (p.t1 - p.t0) as f64 / 1e9;
        let gaps: Vec<(u64, u64)> = p.reads.windows(2).map(|w| (w[0], w[1])).collect();
        let gap_us = |(a, b): (u64, u64)| (b - a) as f64 / 1000.0;
        self.gaps_us.extend(gaps.iter().copied().map(gap_us));
        let mut prev_gap = None;
        for &(start, dur, size) in &p.snapshots {
            let end = start + dur;
            self.checkpoints += 1;
            self.snapshot_bytes = size;
            self.snapshot_us.push(dur as f64 / 1000.0);
            let stall = gaps
                .iter()
                .enumerate()
                .filter(|(_, &(a, b))| a < end && b > start)
                .max_by_key(|(_, &(a, b))| b - a);
            // The same silence as the previous checkpoint's: no ack between
            // the two (a checkpoint that outlasts the interval has the next
            // one due at once, and timers go before the connections).
            if let Some((i, _)) = stall {
                if prev_gap == Some(i) {
                    self.back_to_back += 1;
                }
                prev_gap = Some(i);
            }
            self.stall_us
                .push(stall.map_or(f64::NAN, |(_, &g)| gap_us(g)));
        }
        let slots = ((p.t1 - p.t0) / slot_ns).max(1) as usize;
        let mut longest = vec![0.0f64; slots];
        for &(a, b) in &gaps {
            let first = a.saturating_sub(p.t0) / slot_ns;
            let last = b.saturating_sub(p.t0) / slot_ns;
            for k in first..=last.min(slots as u64 - 1) {
                longest[k as usize] = longest[k as usize].max(gap_us((a, b)));
            }
        }
        self.window_max_us.extend(longest);
    }

    fn mode(&self) -> String {
        match self.interval_ms {
            Some(ms) => format!("every {ms} ms"),
            None => "off".into(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "state": self.state.label(),
            "checkpoint_interval_ms": self.interval_ms,
            "window_s": round1(self.window_s),
            "snapshot_bytes": self.snapshot_bytes,
            "checkpoints": self.checkpoints,
            "checkpoints_with_no_ack_since_the_previous": self.back_to_back,
            "worker_snapshot_us": summary(&self.snapshot_us),
            "feed_stall_at_checkpoint_us": summary(&self.stall_us),
            "ack_gap_us": summary(&self.gaps_us),
            "ack_gaps": self.gaps_us.len(),
            "longest_ack_gap_per_window_us": summary(&self.window_max_us),
            "samples": {
                "worker_snapshot_us": self.snapshot_us,
                "feed_stall_at_checkpoint_us": self.stall_us,
            },
        })
    }
}

/// Run the section and append its table and JSON.
pub fn section(bins: &AllBins, o: &Opts, md: &mut String, report: &mut Value) -> Result<()> {
    let (conns, _) = o.headline();
    let mut states: Vec<State> = if o.smoke {
        o.sizes.iter().copied().min().into_iter().collect()
    } else {
        o.sizes.clone()
    }
    .into_iter()
    .map(State::Ballast)
    .collect();
    states.extend(o.checkpoint_positions.iter().map(|&n| State::Positions(n)));
    let modes = [Some(o.checkpoint_ms), None];
    let mut rows = Vec::new();
    for &state in &states {
        let mut pair: Vec<Row> = modes.iter().map(|&m| Row::new(state, m)).collect();
        for round in 0..o.checkpoint_rounds {
            // Each round reverses the order: neither mode always goes first.
            let order: Vec<usize> = if round % 2 == 0 {
                vec![0, 1]
            } else {
                vec![1, 0]
            };
            for i in order {
                let row = &mut pair[i];
                progress(format!(
                    "checkpoint: {}, checkpoints {}, {conns} connections, {} s (round {}/{})",
                    state.label(),
                    row.mode(),
                    o.checkpoint_secs,
                    round + 1,
                    o.checkpoint_rounds
                ));
                let p = pass(bins, o, conns, state, row.interval_ms)?;
                let mut one = Row::new(state, row.interval_ms);
                one.add(&p, o.checkpoint_ms * 1_000_000);
                progress(format!(
                    "  {} checkpoints ({} with no ack since the previous), snapshot() p50 {}, \
                     stall {}, longest ack gap {}",
                    one.checkpoints,
                    one.back_to_back,
                    us(pct(&one.snapshot_us, 50.0)),
                    trio(&one.stall_us),
                    us(max(&one.gaps_us))
                ));
                row.add(&p, o.checkpoint_ms * 1_000_000);
                if o.smoke
                    && (p.reads.len() < 2 || (row.interval_ms.is_some() && p.snapshots.is_empty()))
                {
                    bail!(
                        "smoke: the checkpoint pass ({}, checkpoints {}) produced no numbers: \
                         {} ack reads, {} checkpoints",
                        state.label(),
                        row.mode(),
                        p.reads.len(),
                        p.snapshots.len()
                    );
                }
            }
        }
        // The state's size is what the checkpointing pass measured.
        let size = pair[0].snapshot_bytes;
        for mut r in pair {
            r.snapshot_bytes = size;
            rows.push(r);
        }
    }
    md.push_str(&table(o, conns, &rows));
    report["checkpoint"] = json!({
        "connections": conns,
        "feed_messages_per_s": o.feed_rate,
        "rounds": o.checkpoint_rounds,
        "seconds_per_pass": o.checkpoint_secs,
        "off_interval_ms": OFF_MS,
        "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
    });
    Ok(())
}

/// One window of one mode, with processes of its own.
fn pass(
    bins: &AllBins,
    o: &Opts,
    conns: usize,
    state: State,
    interval_ms: Option<u64>,
) -> Result<Pass> {
    let mut worker_args = state.worker_args();
    worker_args.push("--checkpoint-ms".into());
    worker_args.push(interval_ms.unwrap_or(OFF_MS).to_string());
    let mut rig = o.feed_rig(bins, conns, worker_args)?;
    rig.start_supervisor()?;
    let pid = rig.status()?["worker"]["pid"]
        .as_u64()
        .context("no worker pid in status")?;
    // From a steady state: start-up's backlog worked off, then a moment.
    caught_up(&rig.sim, o.feed_rate)?;
    std::thread::sleep(Duration::from_millis(500));
    let t0 = monotonic_ns();
    std::thread::sleep(Duration::from_secs_f64(o.checkpoint_secs));
    let snapshots_since = |t0: u64| {
        rig.timing_lines()
            .into_iter()
            .filter(|l| l.kind == "snapshot" && u64::from(l.pid) == pid && l.nums.len() >= 3)
            .filter(|l| l.nums[0] >= t0)
            .map(|l| (l.nums[0], l.nums[1], l.nums[2]))
            .collect::<Vec<_>>()
    };
    if interval_ms.is_some() && o.smoke {
        // A slow debug build still gets one checkpoint into the window.
        wait_for("a checkpoint", Duration::from_secs(10), || {
            Ok((!snapshots_since(t0).is_empty()).then_some(()))
        })?;
    }
    let t1 = monotonic_ns();
    // A checkpoint under way at t1 writes its line when its snapshot() ends.
    std::thread::sleep(Duration::from_millis(500));
    let snapshots: Vec<_> = snapshots_since(t0)
        .into_iter()
        .filter(|s| s.0 < t1)
        .collect();
    // The last stall over: an ack read after the last snapshot ended.
    let end = snapshots
        .iter()
        .map(|s| s.0 + s.1)
        .max()
        .unwrap_or(0)
        .max(t1);
    wait_for("an ack after the window", Duration::from_secs(30), || {
        Ok(rig.tap.silence(end, end).map(|_| ()))
    })?;
    let reads = rig.tap.ack_reads_around(t0, end);
    rig.stop_supervisor();
    Ok(Pass {
        snapshots,
        reads,
        t0,
        t1,
    })
}

fn table(o: &Opts, conns: usize, rows: &[Row]) -> String {
    let w = o.checkpoint_ms;
    let mut s = format!(
        "### 8. Checkpoint stall ({conns} connections, a steady feed of {} msg/s; checkpoints every {w} ms vs off, \
         the same feed, {} interleaved round{} of {} s each)\n\n\
         | state | snapshot | checkpoints | worker's snapshot() p50 / max | feed-side stall at a checkpoint p50 / p99 / max \
         | longest ack gap | ack gap p99 (every gap) | longest ack gap per {w} ms window p50 / p99 |\n\
         |---|---:|---|---|---|---:|---:|---|\n",
        o.feed_rate,
        o.checkpoint_rounds,
        if o.checkpoint_rounds == 1 { "" } else { "s" },
        o.checkpoint_secs,
    );
    for r in rows {
        let on = r.interval_ms.is_some();
        let dash = || "–".to_string();
        s.push_str(&format!(
            "| {} | {} | {} ({}, {:.0} s){} | {} | {} | {} | {} | {} / {} |\n",
            r.state.label(),
            bytes(r.snapshot_bytes),
            r.checkpoints,
            r.mode(),
            r.window_s,
            if r.back_to_back > 0 {
                format!("; {} with no ack since the previous", r.back_to_back)
            } else {
                String::new()
            },
            if on {
                format!(
                    "{} / {}",
                    us(pct(&r.snapshot_us, 50.0)),
                    us(max(&r.snapshot_us))
                )
            } else {
                dash()
            },
            if on { trio(&r.stall_us) } else { dash() },
            us(max(&r.gaps_us)),
            us(pct(&r.gaps_us, 99.0)),
            us(pct(&r.window_max_us, 50.0)),
            us(pct(&r.window_max_us, 99.0)),
        ));
    }
    s.push_str(
        "\nAck gaps are the aggregate ack stream of every connection as the relay reads it; a stall is the \
         longest such gap overlapping a checkpoint's snapshot() (it also holds the envelope and the write to \
         the supervisor, which the event loop waits for).\n\n",
    );
    s
}
