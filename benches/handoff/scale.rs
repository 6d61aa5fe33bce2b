//! Section 5: snapshot scale (10 k and 1 M decimal positions): the old
//! worker's serialize, the transfer (envelope, two socket hops, the
//! supervisor) and the new worker's restore, against the blackout.

use anyhow::Result;
use serde_json::{json, Value};

use crate::blackout::{caught_up, num, worker_times, Phases};
use crate::rig::AllBins;
use crate::stats::{bytes, pct, summary, us, yes};
use crate::{Jitter, Opts};

#[derive(Debug, Clone, Default)]
pub struct Scale {
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

    pub fn json(&self) -> Value {
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

pub fn snapshot_scale(bins: &AllBins, o: &Opts, positions: usize) -> Result<Scale> {
    let mut rig = o.feed_rig(bins, 1, vec!["--positions".into(), positions.to_string()])?;
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

pub fn snapshot_table(rows: &[Scale]) -> String {
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
