//! The main job on the bundled exchange simulator: a supervisor runs the
//! trading worker against an adversarial feed, a few upgrades happen under
//! load, and the exchange's own audit says what was lost (nothing).
//!
//! Run it with `scripts/demo` (which builds the release binaries first).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use handoff_testkit::{wait_for, Bins, ClusterBuilder};

struct Opts {
    upgrades: usize,
    connections: usize,
    rate: u32,
    interval: Duration,
}

fn parse() -> anyhow::Result<Opts> {
    let mut o = Opts {
        upgrades: 5,
        connections: 4,
        rate: 1000,
        interval: Duration::from_millis(1000),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--upgrades" => o.upgrades = val()?.parse()?,
            "--connections" => o.connections = val()?.parse()?,
            "--rate" => o.rate = val()?.parse()?,
            "--interval-ms" => o.interval = Duration::from_millis(val()?.parse()?),
            "-h" | "--help" => {
                println!("handoff-demo [--upgrades N] [--connections N] [--rate TRADES_PER_S] [--interval-ms MS]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
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

fn run() -> anyhow::Result<bool> {
    let o = parse()?;
    let bins = Bins::beside_current_exe()?;
    let rate = o.rate.to_string();
    let mut c = ClusterBuilder::new(bins)
        .connections(o.connections)
        .sim_args([
            "--rate",
            &rate,
            "--fragment-every",
            "7",
            "--ping-every",
            "11",
            "--big-every",
            "97",
            "--max-chunk",
            "900",
        ])
        .start()?;
    let s = c.status()?;
    println!(
        "exchange simulator  {} (fragmented messages, pings between fragments, 70 KB messages,",
        c.sim.ws_url()
    );
    println!(
        "                    writes split at random bytes; {} trades/s per stream)",
        o.rate
    );
    println!(
        "supervisor          pid {}, worker pid {}, {} connections held",
        s["supervisor"]["pid"], s["worker"]["pid"], o.connections
    );
    println!();
    for i in 1..=o.upgrades {
        std::thread::sleep(o.interval);
        let out = c.upgrade(None)?;
        if !out.success() {
            bail!("upgrade {i} failed: {}", out.stderr.trim());
        }
        let last = wait_for("the blackout figure", Duration::from_secs(10), || {
            let s = c.status()?;
            let l = &s["handoffs"]["last"];
            Ok(l["blackout_us"].is_u64().then(|| l.clone()))
        })?;
        println!(
            "upgrade {i}: pid {} -> {}   blackout {:>6} us   (old worker frozen -> new worker live: {} us)",
            last["from_pid"], last["to_pid"], last["blackout_us"], last["pause_us"]
        );
    }
    std::thread::sleep(o.interval);
    c.sim.pause()?;
    let audit = c.sim.audit_when_acked(Duration::from_secs(30))?;
    let t = &audit["totals"];
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    let reconnects = audit["connections_total"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(o.connections as u64);
    let lost = n("gaps") + n("unacked");
    println!();
    println!(
        "what the exchange saw ({} connections, {} upgrades):",
        o.connections, o.upgrades
    );
    println!("  trades sent          {}", n("sent"));
    println!("  trades acked         {}", n("acked"));
    println!("  lost                 {lost}");
    println!("  duplicated           {}", n("duplicates"));
    println!("  reordered            {}", n("reordered"));
    println!("  malformed frames     {}", n("malformed") + n("unmasked"));
    println!("  connections closed   {}", n("closed"));
    println!("  reconnects           {reconnects}");
    let clean = lost == 0
        && n("duplicates") == 0
        && n("reordered") == 0
        && n("malformed") == 0
        && n("unmasked") == 0
        && n("closed") == 0
        && reconnects == 0
        && n("sent") > 0;
    let _ = c.stop();
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
