//! The main job on the bundled exchange simulator. Three supervised trading
//! workers run side by side against adversarial feeds (fragmented messages,
//! pings between fragments, 70 KB messages, writes split at random bytes):
//!
//! - **live**: paper trading on a finite, seeded feed, upgraded several times
//!   under load, one upgrade into the schema-2 build and one back out of it;
//! - **reference**: the same feed and build, never upgraded;
//! - **orders**: trading over the simulator's REST API, upgraded as often,
//!   with orders in flight.
//!
//! It then prints what the exchanges saw (messages lost, duplicated,
//! reordered; orders lost or sent twice) and whether the live worker's final
//! positions equal the reference's. Run it with `scripts/demo`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use handoff_testkit::{wait_for, Bins, Cluster, ClusterBuilder};
use serde_json::Value;

struct Opts {
    upgrades: usize,
    connections: usize,
    rate: u32,
    trades: u64,
    interval: Duration,
    /// Feeds over wss:// (the simulator's TLS, KeyUpdates included).
    tls: bool,
}

fn parse() -> anyhow::Result<Opts> {
    let mut o = Opts {
        upgrades: 6,
        connections: 4,
        rate: 1000,
        trades: 8000,
        interval: Duration::from_millis(700),
        tls: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--upgrades" => o.upgrades = val()?.parse()?,
            "--connections" => o.connections = val()?.parse()?,
            "--rate" => o.rate = val()?.parse()?,
            "--trades" => o.trades = val()?.parse()?,
            "--interval-ms" => o.interval = Duration::from_millis(val()?.parse()?),
            "--tls" => o.tls = true,
            "-h" | "--help" => {
                println!("handoff-demo [--upgrades N] [--connections N] [--rate TRADES_PER_S] [--trades PER_STREAM] [--interval-ms MS] [--tls]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if o.upgrades < 3 {
        bail!("--upgrades must be at least 3 (one goes into schema 2 and one back)");
    }
    Ok(o)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("handoff-demo: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Which build each upgrade goes to: the second goes into schema 2, the
/// second-to-last back to schema 1.
fn build_for(i: usize, n: usize, v1: &Path, v2: &Path) -> PathBuf {
    if (2..n - 1).contains(&i) {
        v2.to_path_buf()
    } else {
        v1.to_path_buf()
    }
}

fn run() -> anyhow::Result<bool> {
    let o = parse()?;
    let bins = Bins::beside_current_exe()?;
    let v1 = bins.worker.clone();
    let v2 = v1.with_file_name("trading-worker-v2");
    let (rate, trades) = (o.rate.to_string(), o.trades.to_string());
    let feed = |finite: bool| {
        let mut a: Vec<String> = [
            "--rate",
            &rate,
            "--seed",
            "42",
            "--fragment-every",
            "7",
            "--ping-every",
            "11",
            "--big-every",
            "97",
            "--max-chunk",
            "900",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if finite {
            a.extend(["--trades".to_string(), trades.clone()]);
        }
        a
    };
    let start = |finite: bool, rest: bool| {
        let mut b = ClusterBuilder::new(bins.clone())
            .connections(o.connections)
            .sim_args(feed(finite));
        if o.tls {
            b = b.tls().sim_args(["--key-update-every", "500"]);
        }
        if rest {
            b = b
                .rest()
                .sim_args(["--order-latency-ms", "5"])
                .worker_args(["--cooldown-trades", "5"]);
        }
        b.start()
    };
    let reference = start(true, false)?;
    let live = start(true, false)?;
    let orders = start(false, true)?;
    println!(
        "three supervised trading workers, {} connections each, {} trades/s per stream on adversarial feeds",
        o.connections, o.rate
    );
    println!(
        "  live       paper trading, upgraded {} times (one upgrade into schema 2, one back)",
        o.upgrades
    );
    println!("  reference  the same feed and build, never upgraded");
    println!("  orders     trading over the exchange's REST API, upgraded as often");
    println!();
    for i in 1..=o.upgrades {
        std::thread::sleep(o.interval);
        let build = build_for(i, o.upgrades, &v1, &v2);
        for c in [&live, &orders] {
            let out = c.upgrade(Some(&build))?;
            if !out.success() {
                bail!("upgrade {i} failed: {}", out.stderr.trim());
            }
        }
        let last = last_handoff(&live)?;
        let schema = if build == v2 { 2 } else { 1 };
        println!(
            "upgrade {i}: pid {} -> {} (schema {schema})   blackout {:>5} us   handoff {:>4} us",
            last["from_pid"],
            last["to_pid"],
            last["blackout_us"]
                .as_u64()
                .map_or_else(|| "-".to_string(), |us| us.to_string()),
            last["pause_us"]
        );
    }
    let ref_summary = final_summary(&reference, o.trades)?;
    let live_summary = final_summary(&live, o.trades)?;
    let mut clean = true;
    println!();
    for (name, c) in [("live", &live), ("orders", &orders)] {
        clean &= report_feed(name, c, o.connections)?;
    }
    clean &= report_orders(&orders)?;
    println!();
    println!("final positions, live (upgraded) vs reference (never upgraded):");
    println!(
        "  {:<10} {:>14} {:>14} {:>14}",
        "SYMBOL", "QTY", "AVG PRICE", "REALIZED PNL"
    );
    if let Some(positions) = live_summary["positions"].as_object() {
        for (symbol, p) in positions {
            let f = |k: &str| p[k].as_str().unwrap_or("-").to_string();
            println!(
                "  {symbol:<10} {:>14} {:>14} {:>14}",
                f("qty"),
                f("avg_price"),
                f("realized_pnl")
            );
        }
    }
    let same = live_summary["digest"] == ref_summary["digest"]
        && live_summary["positions"] == ref_summary["positions"];
    println!(
        "  trades processed {} vs {}, orders {} vs {}, state digest {} vs {}: {}",
        live_summary["trades_processed"],
        ref_summary["trades_processed"],
        live_summary["orders_sent"],
        ref_summary["orders_sent"],
        live_summary["digest"],
        ref_summary["digest"],
        if same { "identical" } else { "DIFFERENT" }
    );
    clean &= same;
    for mut c in [reference, live, orders] {
        let _ = c.stop();
    }
    println!();
    println!(
        "{}",
        if clean {
            "nothing lost."
        } else {
            "SOMETHING WAS LOST: see above."
        }
    );
    Ok(clean)
}

/// The last handoff's record, with its blackout once the new worker has
/// consumed a message. A finite feed may have ended before a late upgrade
/// (a slow or busy machine): then there is no blackout to show, and the
/// record is returned without it rather than failing the demo.
fn last_handoff(c: &Cluster) -> anyhow::Result<Value> {
    let blackout = wait_for("the blackout figure", Duration::from_secs(10), || {
        let s = c.status()?;
        let l = &s["handoffs"]["last"];
        Ok(l["blackout_us"].is_u64().then(|| l.clone()))
    });
    match blackout {
        Ok(l) => Ok(l),
        Err(_) => Ok(c.status()?["handoffs"]["last"].clone()),
    }
}

fn final_summary(c: &Cluster, trades: u64) -> anyhow::Result<Value> {
    let streams = 2 * c.connections as u64;
    Ok(wait_for(
        "the whole feed to be processed",
        Duration::from_secs(120),
        || {
            let s = c.fresh_summary()?;
            Ok((s["trades_processed"].as_u64() == Some(streams * trades)).then_some(s))
        },
    )?)
}

fn report_feed(name: &str, c: &Cluster, connections: usize) -> anyhow::Result<bool> {
    c.sim.pause()?;
    let audit = c.sim.audit_when_acked(Duration::from_secs(30))?;
    let t = &audit["totals"];
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    let reconnects = audit["connections_total"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(connections as u64);
    let lost = n("gaps") + n("unacked");
    println!(
        "{name:<7} exchange saw: {} trades sent, {} acked; lost {lost}, duplicated {}, reordered {}, malformed {}, closed {}, reconnects {reconnects}",
        n("sent"),
        n("acked"),
        n("duplicates"),
        n("reordered"),
        n("malformed") + n("unmasked"),
        n("closed"),
    );
    Ok(lost == 0
        && n("duplicates") == 0
        && n("reordered") == 0
        && n("malformed") == 0
        && n("unmasked") == 0
        && n("closed") == 0
        && reconnects == 0
        && n("sent") > 0)
}

fn report_orders(c: &Cluster) -> anyhow::Result<bool> {
    let worker = wait_for("orders to settle", Duration::from_secs(30), || {
        let s = c.fresh_summary()?;
        Ok((s["open_orders"] == 0).then_some(s))
    })?;
    let exchange = c.sim.get("/orders/audit", Duration::from_secs(5))?;
    let sent = worker["orders_sent"].as_u64().unwrap_or(0);
    let recorded = exchange["orders"].as_u64().unwrap_or(u64::MAX);
    let dups = exchange["duplicate_client_ids"]
        .as_u64()
        .unwrap_or(u64::MAX);
    println!(
        "orders  worker sent {sent}, exchange recorded {recorded} ({} filled); lost {}, sent twice {dups}",
        exchange["filled"],
        sent.abs_diff(recorded)
    );
    Ok(sent == recorded && dups == 0)
}
