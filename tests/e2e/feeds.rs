//! Feeds by name (issue #14): connections are matched with a build's
//! configured feeds by name, so a build whose feed list changed is upgraded
//! into (and rolled back from) by closing, opening or reopening exactly the
//! feeds that changed, never by pairing the wrong feed with the wrong
//! connection. What changes is said by `upgrade --wait` and kept in `log`.

use serde_json::Value;

use crate::{cluster, wait_for_more_acks};

/// The simulator's connections (in the order they were opened), each with
/// `closed_by`, and no stream of any with a gap, a duplicate or a reordered
/// ack.
fn connections(c: &handoff_testkit::Cluster) -> Vec<Value> {
    let audit = c.sim.audit().unwrap();
    let conns = audit["connections"].as_array().unwrap().clone();
    for conn in &conns {
        for (name, s) in conn["streams"].as_object().unwrap() {
            for k in ["gaps", "duplicates", "reordered", "unknown_acks"] {
                assert_eq!(
                    s[k], 0,
                    "{k} on {name} of connection {}: {audit}",
                    conn["id"]
                );
            }
        }
    }
    conns
}

/// Wait until the worker serves holding exactly the connections `names`
/// (sorted).
fn wait_held(c: &handoff_testkit::Cluster, names: &[&str]) {
    handoff_testkit::wait_for(
        "the connections held",
        std::time::Duration::from_secs(10),
        || {
            let s = c.status()?;
            let mut held = crate::held_names(&s);
            held.sort();
            Ok((s["worker"]["state"] == "running" && held == names).then_some(()))
        },
    )
    .unwrap();
}

#[test]
fn a_build_with_another_feed_list_is_upgraded_into_and_rolled_back_from() {
    let c = cluster()
        .connections(2)
        .sim_args(["--rate", "300"])
        .copy_worker()
        .start()
        .expect("cluster");
    let url = c.sim.ws_url();
    // Build B: feed-0 as it was, feed-1 dropped, a new feed "extra".
    let b = c
        .worker_wrapper_args(
            "feeds-b",
            &[
                "--feed".into(),
                format!("feed-0={url}"),
                "--feed".into(),
                format!("extra={url}"),
                "--symbols".into(),
                "btcusdt,ethusdt".into(),
                "--ack".into(),
            ],
        )
        .unwrap();
    let out = c.upgrade(Some(&b)).unwrap();
    assert!(out.success(), "{}", out.stderr);
    assert!(out.stdout.contains("feed feed-1 ("), "{}", out.stdout);
    assert!(
        out.stdout.contains("not in this build's configuration"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("feed extra ("), "{}", out.stdout);
    assert!(out.stdout.contains("new in this build"), "{}", out.stdout);
    // The new worker closes and opens after Go: wait for it.
    wait_held(&c, &["extra", "feed-0"]);
    wait_for_more_acks(&c.sim, "acks in build B");
    let conns = connections(&c);
    assert_eq!(conns.len(), 3, "one connection opened, for extra");
    assert!(conns[0]["closed_by"].is_null(), "feed-0 was closed");
    assert_eq!(
        conns[1]["closed_by"], "close_frame",
        "feed-1 not closed cleanly"
    );
    assert!(conns[2]["closed_by"].is_null());
    // Back to the first build: feed-1 again, extra closed.
    let out = c.ctl(["rollback", "--wait"]).unwrap();
    assert!(out.success(), "{}", out.stderr);
    assert!(out.stdout.contains("feed extra ("), "{}", out.stdout);
    wait_held(&c, &["feed-0", "feed-1"]);
    wait_for_more_acks(&c.sim, "acks after the rollback");
    let conns = connections(&c);
    assert_eq!(conns.len(), 4, "one connection opened, for feed-1");
    assert!(
        conns[0]["closed_by"].is_null(),
        "feed-0 was closed across two upgrades"
    );
    assert_eq!(
        conns[2]["closed_by"], "close_frame",
        "extra not closed cleanly"
    );
    assert!(conns[3]["closed_by"].is_null());
    let log = c.ctl(["log"]).unwrap().stdout;
    assert!(log.contains("feeds"), "{log}");
    // feed-0's stream went on through both: every trade sent was acked.
    c.sim.pause().unwrap();
    let audit = c.sim.audit_when_acked(std::time::Duration::from_secs(20));
    let first = &c.sim.audit().unwrap()["connections"][0];
    for (name, s) in first["streams"].as_object().unwrap() {
        assert_eq!(s["acked"], s["sent"], "{name} on feed-0: {audit:?}");
    }
}

#[test]
fn connections_the_app_opened_survive_a_hundred_handoffs_and_a_crash() {
    let c = cluster()
        .runtime_feed("user")
        .sim_args(crate::HOSTILE_FEED)
        .start()
        .expect("cluster");
    let s = c.status().unwrap();
    let names = crate::held_names(&s);
    assert_eq!(
        names,
        ["feed-0", "user"],
        "the app's connection is held: {s}"
    );
    for i in 0..100 {
        let out = c.upgrade(None).unwrap();
        assert!(out.success(), "upgrade {i}: {}", out.stderr);
        assert!(
            !out.stdout.contains("feeds "),
            "upgrade {i} changed feeds: {}",
            out.stdout
        );
    }
    // Kept by name through every handoff: no new connection, nothing lost.
    crate::assert_nothing_lost(&c.sim, 2);
    c.sim.resume().unwrap();
    // And through a crash: the recovery worker gets it with the others.
    crate::crash_at_rest_keeps_connections(&c, 2);
}

#[test]
fn a_connection_past_its_maximum_age_is_reopened_without_an_upgrade() {
    let c = cluster()
        .sim_args(["--rate", "300"])
        .worker_args(["--max-conn-age-ms", "1500"])
        .start()
        .expect("cluster");
    let audit = handoff_testkit::wait_for(
        "a second connection",
        std::time::Duration::from_secs(20),
        || {
            let a = c.sim.audit()?;
            Ok((a["connections_total"].as_u64() >= Some(2)).then_some(a))
        },
    )
    .unwrap();
    assert_eq!(
        audit["connections"][0]["closed_by"], "close_frame",
        "{audit}"
    );
    let s = c.wait_serving(std::time::Duration::from_secs(10)).unwrap();
    assert_eq!(s["handoffs"]["completed"], 0, "an upgrade was needed: {s}");
    wait_for_more_acks(&c.sim, "acks on the new connection");
    connections(&c);
}

#[test]
fn a_server_shutdown_is_followed_by_a_reconnect_without_an_upgrade() {
    let c = cluster()
        .connections(2)
        .sim_args(["--rate", "300"])
        .start()
        .expect("cluster");
    let worker = c.worker_pid().unwrap();
    c.sim
        .get(
            "/control/server_shutdown",
            std::time::Duration::from_secs(5),
        )
        .unwrap();
    // Both feeds come back by themselves, in the same worker.
    handoff_testkit::wait_for(
        "both feeds again",
        std::time::Duration::from_secs(20),
        || {
            let a = c.sim.audit()?;
            let open = a["connections_open"].as_u64().unwrap_or(0);
            Ok((a["connections_total"] == 4 && open == 2).then_some(()))
        },
    )
    .unwrap();
    wait_held(&c, &["feed-0", "feed-1"]);
    let s = c.status().unwrap();
    assert_eq!(s["worker"]["pid"].as_u64(), Some(worker as u64), "{s}");
    assert_eq!(s["worker"]["restarts"], 0, "{s}");
    assert_eq!(s["handoffs"]["completed"], 0, "{s}");
    wait_for_more_acks(&c.sim, "acks on the new connections");
    connections(&c);
}

#[test]
fn a_connection_the_app_opens_to_a_url_it_can_never_reach_is_refused_and_the_app_told() {
    // `http://` is a URL, but no websocket connection can be opened to it:
    // the library refuses it at once, and does not try it again.
    let c = cluster()
        .worker_args(["--runtime-feed", "bad=http://127.0.0.1:9/"])
        .start()
        .expect("cluster");
    let summary = handoff_testkit::wait_for(
        "the app to hear of the refusal",
        std::time::Duration::from_secs(10),
        || {
            let s = c.fresh_summary()?;
            Ok(s["refused_connections"]["bad"].is_string().then_some(s))
        },
    )
    .unwrap();
    let why = summary["refused_connections"]["bad"].as_str().unwrap();
    assert!(
        why.contains("only ws:// and wss:// URLs are supported"),
        "{why}"
    );
    // Never held, never carried: an upgrade opens nothing of it either.
    wait_held(&c, &["feed-0"]);
    let out = c.upgrade(None).unwrap();
    assert!(out.success(), "{}", out.stderr);
    assert!(!out.stdout.contains("feeds "), "{}", out.stdout);
    wait_held(&c, &["feed-0"]);
    wait_for_more_acks(&c.sim, "acks after the upgrade");
    crate::assert_nothing_lost(&c.sim, 1);
}
