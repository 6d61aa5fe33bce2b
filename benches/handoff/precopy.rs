//! Section 10: pre-copy handoffs beside full-snapshot ones, in one run.
//!
//! For each connection count and state, three rows of `--precopy-upgrades`
//! upgrades each, one after the other on fresh rigs: `off` (the whole state
//! in the freeze), `replay` (the journal of inputs since the pre-copy
//! image) and `delta` (bench-worker's own delta). Every trade changes the
//! state (a counter, a position and a word of ballast), so the catch-up is
//! never empty. Each row is section 1's cell
//! ([`crate::blackout::blackout_cell_with`]): the supervisor's blackout
//! (A's freeze to B's first message), the feed-side longest ack gap around
//! the handoff (from the relay's kernel timestamps; for a pre-copy the
//! window starts at the pre-copy image, so it includes the `fork`), the
//! floor beside it (a bare process given the same descriptors and, for
//! `floor`, the bytes of the whole state; for `fds-only`, none), and what
//! the exchange saw lost.

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::blackout::{blackout_cell_with, Cell};
use crate::checkpoint::State;
use crate::rig::AllBins;
use crate::stats::{pct, ratio, summary, trio, us};
use crate::{progress, Opts, KIB, MIB};

const MODES: [&str; 3] = ["off", "replay", "delta"];

struct Row {
    state: State,
    mode: &'static str,
    cell: Cell,
}

pub fn section(bins: &AllBins, o: &Opts, md: &mut String, report: &mut Value) -> Result<()> {
    let states = if o.smoke {
        vec![State::Ballast(KIB)]
    } else {
        vec![
            State::Ballast(2 * KIB),
            State::Ballast(MIB),
            State::Ballast(64 * MIB),
            State::Positions(1_000_000),
        ]
    };
    let per = Opts {
        upgrades: o.precopy_upgrades,
        ..o.clone()
    };
    let mut rows = Vec::new();
    for &conns in &o.precopy_conns {
        for &state in &states {
            for mode in MODES {
                progress(format!(
                    "pre-copy: {conns} connections, {}, --precopy {mode}, {} upgrades",
                    state.label(),
                    per.upgrades
                ));
                let mut args = state.worker_args();
                args.extend(["--precopy".to_string(), mode.to_string()]);
                let size = match state {
                    State::Ballast(n) => n,
                    State::Positions(_) => 0,
                };
                let cell = blackout_cell_with(bins, &per, conns, size, args)?;
                progress(format!(
                    "  blackout {}  feed {}  fds-only floor p50 {}  lost {}",
                    trio(&cell.blackout),
                    trio(&cell.feed),
                    us(pct(&cell.floor_fds, 50.0)),
                    cell.lost
                ));
                if o.smoke && cell.lost + cell.duplicates + cell.reordered + cell.closed > 0 {
                    bail!(
                        "smoke: a pre-copy handoff ({mode}) lost messages or connections: {}",
                        cell.json()["audit"]
                    );
                }
                rows.push(Row { state, mode, cell });
            }
        }
    }
    md.push_str(&table(&per, &rows));
    report["precopy"] = Value::Array(
        rows.iter()
            .map(|r| {
                let mut v = r.cell.json();
                v["state"] = json!(r.state.label());
                v["precopy"] = json!(r.mode);
                v["fds_only_floor_us"] = summary(&r.cell.floor_fds);
                v
            })
            .collect(),
    );
    Ok(())
}

fn table(o: &Opts, rows: &[Row]) -> String {
    let mut s = format!(
        "### 10. Pre-copy beside the whole state in the freeze ({} upgrades per row, {} msg/s shared by the connections)\n\n",
        o.upgrades, o.feed_rate
    );
    s.push_str("| conns | state | pre-copy | blackout p50 / p99 / max | feed-side gap p50 / p99 / max | floor p50 (state) | fds-only floor p50 | blackout ÷ fds-only (p50) | lost / sent |\n");
    s.push_str("|---:|---|---|---|---|---:|---:|---:|---|\n");
    for r in rows {
        let c = &r.cell;
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |\n",
            c.conns,
            r.state.label(),
            r.mode,
            trio(&c.blackout),
            trio(&c.feed),
            us(pct(&c.floor, 50.0)),
            us(pct(&c.floor_fds, 50.0)),
            ratio(pct(&c.blackout, 50.0), pct(&c.floor_fds, 50.0)),
            c.lost,
            c.sent,
        ));
    }
    s.push('\n');
    s
}
