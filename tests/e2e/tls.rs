//! `wss://` feeds hand over mid-session: the TLS session moves with the
//! socket, nothing is lost, duplicated or reordered, and the exchange never
//! sees a second handshake. The exchange (rustls) authenticates every record
//! the workers write, under one sequence of nonces: two processes writing on
//! one session, or a wrong key after a KeyUpdate, would end the connection
//! with a TLS error, which the audit counts.

use std::io::Write;
use std::time::Duration;

use handoff_testkit::{wait_for, Cluster, Sim};
use handoff_worker::tls::kernel::Rekey;
use handoff_worker::tls::KernelTls;
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::crashes::wait_replaced;
use crate::failed_upgrades::expect_failed_upgrade;
use crate::{
    assert_every_ping_answered, assert_nothing_lost, cluster, wait_for_more_acks, HOSTILE_FEED,
};

/// A TLS figure of the exchange's audit.
fn tls_total(audit: &Value, key: &str) -> u64 {
    audit["totals"][key]
        .as_u64()
        .or_else(|| audit[key].as_u64())
        .unwrap_or_else(|| panic!("audit has no {key}: {audit}"))
}

fn key_updates(sim: &Sim) -> u64 {
    tls_total(&sim.audit().unwrap(), "tls_key_updates")
}

/// Every connection is TLS, was set up by exactly one handshake each, and
/// no record failed.
fn assert_one_handshake_each(audit: &Value, connections: u64) {
    assert_eq!(
        tls_total(audit, "tls_handshakes"),
        connections,
        "a new TLS handshake happened: {audit}"
    );
    assert_eq!(tls_total(audit, "tls_errors"), 0, "{audit}");
    for conn in audit["connections"].as_array().unwrap() {
        assert!(conn["tls"].is_object(), "not a TLS connection: {conn}");
    }
}

/// Who protects each held connection's records, as the supervisor sees it
/// on the descriptor it holds.
fn assert_records(c: &Cluster, connections: usize, layer: &str) {
    let status = c.status().unwrap();
    let conns = status["connections"].as_array().unwrap();
    assert_eq!(conns.len(), connections, "{status}");
    for conn in conns {
        assert_eq!(conn["tls"], layer, "{conn}");
    }
}

/// The exchange's arguments for one TLS version and cipher, `rate` trades a
/// second, fragmented frames, and a KeyUpdate every `key_update_every`
/// trades if given.
fn suite_args<'a>(
    version: &'a str,
    cipher: &'a str,
    rate: &'a str,
    key_update_every: Option<&'a str>,
) -> Vec<&'a str> {
    let mut args = vec![
        "--rate",
        rate,
        "--fragment-every",
        "5",
        "--max-chunk",
        "300",
        "--tls-versions",
        version,
        "--tls-ciphers",
        cipher,
    ];
    if let Some(n) = key_update_every {
        args.extend(["--key-update-every", n]);
    }
    args
}

/// Every connection negotiated `version` and `cipher`.
fn assert_suite(audit: &Value, version: &str, cipher: &str) {
    let expect = match cipher {
        "aes128gcm" => "aes_128_gcm",
        "aes256gcm" => "aes_256_gcm",
        _ => "chacha20",
    };
    for conn in audit["connections"].as_array().unwrap() {
        let tls = &conn["tls"];
        assert_eq!(tls["version"], version, "{conn}");
        let name = tls["cipher"].as_str().unwrap_or("").to_ascii_lowercase();
        assert!(name.contains(expect), "{version} {cipher}: {tls}");
    }
}

fn upgrade_ok(c: &Cluster, i: usize) {
    let out = c.upgrade(None).unwrap();
    assert!(out.success(), "upgrade {i}: {}{}", out.stdout, out.stderr);
}

#[test]
fn hundred_wss_upgrades_under_load_with_key_updates_lose_nothing() {
    let c = cluster()
        .tls()
        .connections(3)
        .sim_args(HOSTILE_FEED)
        .sim_args(["--key-update-every", "40"])
        .start()
        .expect("cluster");
    // KeyUpdates before the first handoff: the session handed over is past
    // generation 0 in both directions.
    wait_for(
        "a KeyUpdate before the first handoff",
        Duration::from_secs(10),
        || Ok((key_updates(&c.sim) >= 3).then_some(())),
    )
    .unwrap();
    let mut pids = vec![c.worker_pid().unwrap()];
    for i in 0..100 {
        upgrade_ok(&c, i);
        let pid = c.worker_pid().unwrap();
        assert!(
            !pids.contains(&pid),
            "upgrade {i} did not replace the worker"
        );
        pids.push(pid);
    }
    // And after the last one: the new worker follows the server's KeyUpdate
    // and answers with its own, which the server then decrypts under.
    let after = key_updates(&c.sim);
    wait_for(
        "a KeyUpdate after the last handoff",
        Duration::from_secs(10),
        || Ok((key_updates(&c.sim) >= after + 3).then_some(())),
    )
    .unwrap();
    let status = c.status().unwrap();
    assert_eq!(status["handoffs"]["completed"], 100, "{status}");
    let audit = assert_nothing_lost(&c.sim, 3);
    assert_one_handshake_each(&audit, 3);
    for conn in audit["connections"].as_array().unwrap() {
        assert_eq!(conn["tls"]["version"], "1.3", "{conn}");
    }
    assert_every_ping_answered(&c.sim);
}

#[test]
fn every_tls_version_and_cipher_hands_over() {
    for version in ["1.3", "1.2"] {
        for cipher in ["aes128gcm", "aes256gcm", "chacha20"] {
            let key_updates = (version == "1.3").then_some("25");
            let sim = suite_args(version, cipher, "300", key_updates);
            // The user-space record layer, on every machine.
            let c = cluster()
                .tls()
                .sim_args(sim)
                .worker_args(["--kernel-tls", "off"])
                .start()
                .expect("cluster");
            for i in 0..3 {
                upgrade_ok(&c, i);
            }
            assert_records(&c, 1, "user-space");
            let audit = assert_nothing_lost(&c.sim, 1);
            assert_one_handshake_each(&audit, 1);
            assert_suite(&audit, version, cipher);
        }
    }
}

#[test]
fn a_handoff_right_after_the_handshake_loses_nothing() {
    // The worker is serving as soon as its connections are registered:
    // the server's session tickets may still be in flight, and are handed
    // over as records not yet read.
    let c = cluster()
        .tls()
        .connections(2)
        .sim_args(["--rate", "500"])
        .start()
        .expect("cluster");
    upgrade_ok(&c, 0);
    upgrade_ok(&c, 1);
    let audit = assert_nothing_lost(&c.sim, 2);
    assert_one_handshake_each(&audit, 2);
}

#[test]
fn failed_upgrades_never_let_two_processes_write_one_session() {
    // Successors that receive the TLS session and die, hang or refuse: the
    // old worker is thawed and goes on writing acks and pongs under the same
    // session. Had a successor sealed a single record, the server's next
    // record from the old worker would fail authentication.
    let c = cluster()
        .tls()
        .connections(2)
        .sim_args([
            "--rate",
            "400",
            "--ping-every",
            "5",
            "--key-update-every",
            "30",
        ])
        .supervisor_args(["--prepare-timeout", "2s", "--restore-timeout", "1s"])
        .start()
        .expect("cluster");
    for (name, fault, why) in [
        ("crash-after-fds", "crash-after-restore", "the new worker"),
        ("hang-in-restore", "hang-after-restore", "not ready within"),
        ("reject", "reject-restore", "fault injected"),
    ] {
        let bad = c.worker_wrapper(name, &[("HANDOFF_FAULT", fault)]).unwrap();
        expect_failed_upgrade(&c, &bad, why);
        // The thawed worker writes again before the next attempt.
        wait_for_more_acks(&c.sim, "acks after the thaw");
    }
    upgrade_ok(&c, 0);
    let audit = assert_nothing_lost(&c.sim, 2);
    assert_one_handshake_each(&audit, 2);
}

#[test]
fn after_a_crash_tls_connections_are_reestablished_never_continued() {
    // The dead worker's sequence numbers are unknown: continuing its session
    // could reuse a nonce. The recovering worker closes each TLS connection
    // and connects again (a new handshake), resubscribing.
    let c = cluster()
        .tls()
        .connections(2)
        .sim_args(["--rate", "300"])
        .start()
        .expect("cluster");
    let ids = |s: &Value| -> Vec<u64> {
        s["connections"]
            .as_array()
            .map(|cs| cs.iter().filter_map(|c| c["id"].as_u64()).collect())
            .unwrap_or_default()
    };
    let old_ids = ids(&c.status().unwrap());
    assert_eq!(old_ids.len(), 2);
    let dead = c.signal_worker(Signal::SIGKILL).unwrap();
    let s = wait_replaced(&c, dead, Duration::from_secs(10));
    assert_eq!(s["worker"]["restarts"], 1, "{s}");
    let audit = wait_for("two new TLS connections", Duration::from_secs(20), || {
        let a = c.sim.audit()?;
        let open = a["connections"]
            .as_array()
            .map(|cs| cs.iter().filter(|c| c["closed_by"].is_null()).count())
            .unwrap_or(0);
        Ok((a["connections_total"].as_u64() == Some(4) && open == 2).then_some(a))
    })
    .unwrap();
    assert_eq!(tls_total(&audit, "tls_handshakes"), 4, "{audit}");
    // The two old sessions ended at the TCP level: a FIN without
    // close_notify (none can be sealed without the sequence number), which
    // the exchange files as a TLS error, or a reset when unread trades were
    // still queued at the close. Never a record that failed authentication.
    let mut bare_ends = 0;
    for conn in audit["connections"].as_array().unwrap() {
        let Some(closed_by) = conn["closed_by"].as_str() else {
            continue;
        };
        let lower = closed_by.to_ascii_lowercase();
        assert!(
            !lower.contains("decrypt") && !lower.contains("mac"),
            "a record failed authentication: {conn}"
        );
        assert!(
            closed_by == "reset" || lower.contains("close_notify"),
            "an old session ended otherwise: {conn}"
        );
        bare_ends += u64::from(closed_by != "reset");
    }
    assert_eq!(tls_total(&audit, "tls_errors"), bare_ends, "{audit}");
    // The supervisor holds the two new sockets, not the old ones.
    wait_for(
        "the supervisor to hold the new connections",
        Duration::from_secs(10),
        || {
            let now = ids(&c.status()?);
            Ok((now.len() == 2 && now.iter().all(|id| !old_ids.contains(id))).then_some(()))
        },
    )
    .unwrap();
    // The new connections carry the feed: acks go on.
    wait_for_more_acks(&c.sim, "acks on the new connections");
}

/// Kernel TLS, where this kernel offers it (skipped with a message
/// elsewhere; `scripts/ktls-vm` runs it on a kernel that does): the kernel
/// protects the records from the handshake on, the descriptor alone carries
/// them across every handoff, and the exchange sees one session each. On a
/// kernel that can rekey, the server's KeyUpdates are followed too.
#[test]
fn kernel_tls_sessions_hand_over_with_the_descriptor() {
    let rekey = match handoff_worker::tls::kernel_tls() {
        KernelTls::Absent(why) => {
            // Past the harness's capture: a plain `cargo test` shows it.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: tls::kernel_tls_sessions_hand_over_with_the_descriptor: kernel TLS is not offered here: {why}"
            );
            return;
        }
        KernelTls::Available { rekey, .. } => *rekey,
    };
    for version in ["1.3", "1.2"] {
        for cipher in ["aes128gcm", "aes256gcm", "chacha20"] {
            // A modest rate: scripts/test-kernel-tls runs this in an
            // emulated VM, where the kernel's AES is slow.
            let key_updates = (version == "1.3" && rekey == Rekey::Supported).then_some("10");
            let sim = suite_args(version, cipher, "100", key_updates);
            let c = cluster()
                .tls()
                .connections(2)
                .sim_args(sim)
                .worker_args(["--kernel-tls", "require"])
                .start()
                .expect("cluster");
            assert_records(&c, 2, "kernel");
            for i in 0..5 {
                upgrade_ok(&c, i);
                assert_records(&c, 2, "kernel");
            }
            let audit = assert_nothing_lost(&c.sim, 2);
            assert_one_handshake_each(&audit, 2);
            assert_suite(&audit, version, cipher);
            if key_updates.is_some() {
                assert!(tls_total(&audit, "tls_key_updates") > 0, "{audit}");
            }
        }
    }
}
