//! Sections 1 and 3: the blackout per upgrade (the supervisor's figure and
//! the feed's, from the ack stream), for 1/16/64 connections × 1 KiB/1 MiB/
//! 64 MiB snapshots, next to the floor (a bare pre-spawned process getting
//! the same descriptors and bytes) and the messages lost (the simulator's
//! audit); where the time goes (the handoff's phases); and the upgrade
//! latency (trigger → old worker reaped), from the same upgrades.
//!
//! The cell ([`blackout_cell_with`]) and its helpers ([`caught_up`],
//! [`worker_times`], [`Phases`]) serve the later sections too.

use std::time::Duration;

use anyhow::Result;
use handoff_testkit::{wait_for, Sim};
use serde_json::{json, Value};

use crate::floor;
use crate::rig::{AllBins, Rig};
use crate::stats::{bytes, max, pct, ratio, round1, summary, trio, us, yes};
use crate::{progress, Jitter, Opts, SYMBOLS};

#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub conns: usize,
    pub size: usize,
    pub snapshot_bytes: u64,
    pub blackout: Vec<f64>,
    pub pause: Vec<f64>,
    pub feed: Vec<f64>,
    pub sim_max_ack_gap: f64,
    pub upgrade_latency: Vec<f64>,
    /// Phase spans per upgrade: prepare (trigger → Hello checked), freeze
    /// (Freeze sent → Frozen in: flush + serialize + transfer to the
    /// supervisor), restore (→ Ready: transfer to B + decode + adopt),
    /// retire (Go → old worker reaped).
    pub phase_prepare: Vec<f64>,
    pub phase_freeze: Vec<f64>,
    pub phase_restore: Vec<f64>,
    pub phase_retire: Vec<f64>,
    pub go_to_first: Vec<f64>,
    /// The old worker's `snapshot()` and the new one's `restore()`.
    pub serialize: Vec<f64>,
    pub decode: Vec<f64>,
    pub floor: Vec<f64>,
    pub floor_fds: Vec<f64>,
    pub floor_snapshot: Vec<f64>,
    pub lost: u64,
    pub gaps: u64,
    pub unacked: u64,
    /// Unplanned worker restarts the supervisor counted (crash, hang kill).
    pub restarts: u64,
    /// Upgrades whose old worker was not the previous upgrade's new one.
    pub unplanned: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub closed: u64,
    pub reconnects: u64,
    pub sent: u64,
}

impl Cell {
    pub fn json(&self) -> Value {
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

pub fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// The phases of one handoff (`handoffs.last.phases`, microseconds since
/// the trigger) as spans.
pub struct Phases {
    pub prepare: f64,
    pub freeze: f64,
    pub restore: f64,
    pub retire: f64,
    pub latency: f64,
}

impl Phases {
    pub fn of(rep: &Value) -> Phases {
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

pub fn blackout_cell(bins: &AllBins, o: &Opts, conns: usize, size: usize) -> Result<Cell> {
    let args = vec!["--ballast-bytes".into(), size.to_string()];
    blackout_cell_with(bins, o, conns, size, args)
}

/// [`blackout_cell`] with the worker's state (and pre-copy) given as its
/// arguments; `size` labels the cell.
pub fn blackout_cell_with(
    bins: &AllBins,
    o: &Opts,
    conns: usize,
    size: usize,
    worker_args: Vec<String>,
) -> Result<Cell> {
    let mut rig = o.feed_rig(bins, conns, worker_args)?;
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
pub fn caught_up(sim: &Sim, feed_rate: u32) -> Result<()> {
    caught_up_over(sim, feed_rate, Duration::ZERO)
}

/// The same over a path with this round trip: the trades sent in the last
/// round trip cannot have been acked yet, so they are allowed on top.
pub fn caught_up_over(sim: &Sim, feed_rate: u32, rtt: Duration) -> Result<()> {
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
pub struct WorkerTimes {
    /// The old worker's freeze snapshot started (its writes are flushed);
    /// with a pre-copy, its image (it serves on until the freeze).
    pub freeze_ns: u64,
    /// The new worker consumed its first message.
    pub first_ns: u64,
    pub serialize_us: f64,
    pub decode_us: f64,
    pub snapshot_bytes: u64,
}

/// From bench-worker's timing file: the old worker of handoff `rep`
/// serializing its state (its last snapshot before the new worker's
/// restore) and the new one restoring it and consuming its first message.
pub fn worker_times(rig: &Rig, rep: &Value) -> Result<WorkerTimes> {
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

pub fn blackout_table(o: &Opts, cells: &[Cell]) -> String {
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

pub fn latency_table(h: &Cell) -> String {
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
