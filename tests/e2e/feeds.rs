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
    let s = c.wait_serving(std::time::Duration::from_secs(10)).unwrap();
    let names: Vec<_> = s["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, ["feed-0", "extra"], "{s}");
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
    let s = c.wait_serving(std::time::Duration::from_secs(10)).unwrap();
    let mut names: Vec<_> = s["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["feed-0", "feed-1"], "{s}");
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
