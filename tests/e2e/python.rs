//! Python bots under the unchanged supervisor: the reference Python bot
//! (`python/examples/trading_bot.py`), packed by `python -m handoff.pack`
//! into one file that the build store admits, upgraded, crashed, refused
//! and rolled back like a Rust build, and judged by the same audits.
//!
//! They need the package built: `HANDOFF_PYTHON` names a Python that has
//! it (`scripts/test` sets it from `scripts/python-env`). Without it each
//! test says loudly that it did not run; under CI (`CI` set) that is a
//! failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use handoff_testkit::{Bins, Cluster, ClusterBuilder};

use crate::continuity::{deterministic, final_summary, schema1_view};
use crate::{assert_every_ping_answered, assert_nothing_lost, bins, HOSTILE_FEED};

/// The packed builds of the reference Python bot.
struct Builds {
    dir: tempfile::TempDir,
    python: PathBuf,
    v1: PathBuf,
    v2: PathBuf,
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/examples")
}

/// The modules of the reference bot, for an entry that imports it.
fn bot_modules() -> Vec<PathBuf> {
    vec![
        examples().join("trading_bot.py"),
        examples().join("trading_state.py"),
    ]
}

/// Pack `entry` (plus `add`) into `out` with `python -m handoff.pack`.
fn pack(python: &Path, entry: &Path, add: &[PathBuf], out: &Path) -> PathBuf {
    let mut cmd = Command::new(python);
    cmd.args(["-m", "handoff.pack"])
        .arg(entry)
        .arg("-o")
        .arg(out);
    for a in add {
        cmd.arg("--add").arg(a);
    }
    let done = cmd.output().expect("run python -m handoff.pack");
    assert!(
        done.status.success(),
        "handoff.pack {}: {}",
        entry.display(),
        String::from_utf8_lossy(&done.stderr)
    );
    out.to_path_buf()
}

fn builds() -> Option<&'static Builds> {
    static BUILDS: OnceLock<Option<Builds>> = OnceLock::new();
    BUILDS
        .get_or_init(|| {
            let Some(python) = std::env::var_os("HANDOFF_PYTHON").map(PathBuf::from) else {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "HANDOFF_PYTHON is not set under CI: run the tests with scripts/test"
                );
                return None;
            };
            let dir = tempfile::Builder::new()
                .prefix("handoff-py-")
                .tempdir()
                .expect("temp dir");
            let v1 = pack(
                &python,
                &examples().join("trading_bot.py"),
                &[examples().join("trading_state.py")],
                &dir.path().join("trading-bot.pyz"),
            );
            let v2 = pack(
                &python,
                &examples().join("trading_bot_v2.py"),
                &bot_modules(),
                &dir.path().join("trading-bot-v2.pyz"),
            );
            Some(Builds {
                dir,
                python,
                v1,
                v2,
            })
        })
        .as_ref()
}

/// A cluster running the packed Python bot, or `None` (said loudly) when
/// the package is not built.
fn py_cluster(test: &str) -> Option<ClusterBuilder> {
    let Some(b) = builds() else {
        eprintln!(
            "\n*** NOT RUN: {test}: the Python package is not built. \
             Run HANDOFF_PYTHON=$(scripts/python-env) cargo test, or scripts/test ***\n"
        );
        return None;
    };
    Some(ClusterBuilder::new(Bins {
        worker: b.v1.clone(),
        ..bins()
    }))
}

/// A build of the bot whose entry is `source`, a variant of the reference
/// bot (it imports `trading_bot`).
fn variant(name: &str, source: &str) -> PathBuf {
    let b = builds().expect("builds");
    let entry = b.dir.path().join(format!("{name}.py"));
    std::fs::write(&entry, source).expect("write entry");
    pack(
        &b.python,
        &entry,
        &bot_modules(),
        &b.dir.path().join(format!("{name}.pyz")),
    )
}

/// [`crate::upgrade_n`], then: no failure, and one bot process serves.
fn upgrade_n(c: &Cluster, n: usize) {
    let pids = crate::upgrade_n(c, n);
    let s = c.status().unwrap();
    assert_eq!(s["handoffs"]["completed"], n, "{s}");
    assert_eq!(s["handoffs"]["failed"], 0, "{s}");
    assert_eq!(
        c.worker_processes(),
        vec![pids[n]],
        "one bot process serves"
    );
}

fn hundred_upgrades(builder: ClusterBuilder) {
    let c = builder
        .connections(2)
        .sim_args(HOSTILE_FEED)
        .start()
        .expect("cluster");
    upgrade_n(&c, 100);
    let summary = c.fresh_summary().unwrap();
    for sym in ["BTCUSDT", "ETHUSDT"] {
        let p = &summary["positions"][sym];
        for k in ["qty", "avg_price", "realized_pnl"] {
            assert!(p[k].is_string(), "positions.{sym}.{k} missing: {summary}");
        }
    }
    assert_eq!(summary["callback_errors"], 0, "{summary}");
    assert_nothing_lost(&c.sim, 2);
    assert_every_ping_answered(&c.sim);
}

#[test]
fn a_python_bot_upgraded_100_times_over_ws_loses_nothing() {
    if let Some(b) = py_cluster("python over ws://") {
        hundred_upgrades(b);
    }
}

#[test]
fn a_python_bot_upgraded_100_times_over_wss_loses_nothing() {
    if let Some(b) = py_cluster("python over wss://") {
        hundred_upgrades(b.tls());
    }
}

#[test]
fn failed_python_successors_leave_the_old_one_serving() {
    let Some(b) = py_cluster("failed python successors") else {
        return;
    };
    let c = b
        .connections(2)
        .sim_args(HOSTILE_FEED)
        .supervisor_args(["--prepare-timeout", "3s", "--restore-timeout", "3s"])
        .start()
        .expect("cluster");
    let serving = c.worker_pid().unwrap();
    let raises = variant(
        "raises-in-restore",
        "import sys, trading_bot\n\
         def restore(self, schema, data, mode):\n    \
             raise RuntimeError('this build cannot read the state')\n\
         trading_bot.TradingBot.restore = restore\n\
         sys.exit(trading_bot.main())\n",
    );
    crate::failed_upgrades::expect_failed_upgrade(&c, &raises, "this build cannot read the state");
    let import_error = variant(
        "import-error",
        "import sys, trading_bot, no_such_module_anywhere\nsys.exit(trading_bot.main())\n",
    );
    crate::failed_upgrades::expect_failed_upgrade(&c, &import_error, "exited");
    let hangs = variant("hangs-at-start", "import time\ntime.sleep(3600)\n");
    crate::failed_upgrades::expect_failed_upgrade(&c, &hangs, "did not say Hello");
    let hangs_in_restore = variant(
        "hangs-in-restore",
        "import sys, time, trading_bot\n\
         def restore(self, schema, data, mode):\n    \
             time.sleep(3600)\n\
         trading_bot.TradingBot.restore = restore\n\
         sys.exit(trading_bot.main())\n",
    );
    crate::failed_upgrades::expect_failed_upgrade(&c, &hangs_in_restore, "not ready within");
    assert_eq!(c.worker_pid().unwrap(), serving);
    // The old bot still works: a real upgrade goes through afterwards.
    let out = c.upgrade(None).unwrap();
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(c.worker_processes().len(), 1);
    assert_nothing_lost(&c.sim, 2);
}

#[test]
fn a_sigkilled_python_bot_is_recovered_with_its_connections() {
    let Some(b) = py_cluster("python crash") else {
        return;
    };
    let c = b
        .connections(2)
        .sim_args(crate::CRASH_SAFE_FEED)
        .start()
        .expect("cluster");
    crate::crash_keeps_connections(&c, 2);
    let s = c.fresh_summary().unwrap();
    assert!(s["trades_processed"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(c.worker_processes().len(), 1);
}

#[test]
fn a_python_bot_never_sends_an_order_twice_across_30_upgrades() {
    if let Some(b) = py_cluster("python orders") {
        crate::orders::orders_across_upgrades(b, 30);
    }
}

#[test]
fn a_python_bot_recovered_from_a_crash_reuses_no_order_id_and_forgets_no_order() {
    if let Some(b) = py_cluster("python crash with orders") {
        crate::orders::crash_after_orders_since_the_checkpoint(b);
    }
}

#[test]
fn an_upgraded_python_bot_ends_with_the_positions_of_one_never_upgraded() {
    let Some(b) = py_cluster("python continuity") else {
        return;
    };
    let reference = final_summary(&deterministic(b.clone()));
    assert!(
        reference["orders_sent"].as_u64().unwrap() > 0,
        "the strategy never traded: {reference}"
    );
    let c = deterministic(b);
    upgrade_n(&c, 30);
    let upgraded = final_summary(&c);
    assert_eq!(schema1_view(&upgraded), schema1_view(&reference));
    assert_nothing_lost(&c.sim, 1);
    // And the Python bot trades as the Rust reference worker does, on the
    // same seeded feed: same positions, to the last decimal.
    let rust = final_summary(&deterministic(crate::cluster()));
    assert_eq!(upgraded["positions"], rust["positions"], "python vs rust");
    assert_eq!(upgraded["orders_sent"], rust["orders_sent"]);
}

#[test]
fn a_python_bot_upgrades_into_schema_2_and_rolls_back_keeping_the_state() {
    let Some(b) = py_cluster("python schema change") else {
        return;
    };
    let builds = builds().unwrap();
    let reference = final_summary(&deterministic(b.clone()));
    let c = deterministic(b);
    for (i, build) in [&builds.v2, &builds.v1, &builds.v2, &builds.v1]
        .into_iter()
        .enumerate()
    {
        let out = c.upgrade(Some(build)).unwrap();
        assert!(out.success(), "upgrade {i}: {}", out.stderr);
        let schema = if build == &builds.v2 { 2 } else { 1 };
        let summary = c.fresh_summary().unwrap();
        assert_eq!(summary["schema"], schema, "the new build runs: {summary}");
    }
    // `rollback` takes back the previous build (v2) and then, from it, v1.
    let out = c.ctl(["rollback", "--wait"]).unwrap();
    assert!(out.success(), "rollback: {}", out.stderr);
    assert_eq!(c.fresh_summary().unwrap()["schema"], 2);
    let out = c.ctl(["rollback", "--wait"]).unwrap();
    assert!(out.success(), "rollback: {}", out.stderr);
    let upgraded = final_summary(&c);
    assert_eq!(upgraded["schema"], 1);
    assert_eq!(schema1_view(&upgraded), schema1_view(&reference));
    assert_nothing_lost(&c.sim, 1);
}
