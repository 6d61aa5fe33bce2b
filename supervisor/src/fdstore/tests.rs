use super::*;
use std::io::Read;
use std::os::unix::net::{SocketAddr, UnixStream};

use handoff_protocol::fds::recv_with_fds;
use handoff_protocol::worker::ConnKind;
use handoff_protocol::Snapshot;
use nix::errno::Errno;

fn info(id: u32) -> ConnInfo {
    ConnInfo {
        id: ConnId(id),
        name: format!("feed-{id}"),
        kind: ConnKind::WebSocketTls,
        url: format!("wss://127.0.0.1:9/feed/{id}"),
        peer: "127.0.0.1:9".into(),
    }
}

fn checkpoint() -> OnDisk {
    OnDisk {
        snapshot: Snapshot::seal("bot", 3, vec![7; 300]),
        summary: Some("{\"orders\":2}".into()),
        carried: Vec::new(),
    }
}

/// A fake systemd: a datagram socket bound in a temp dir.
fn fake_systemd() -> (tempfile::TempDir, String, UnixDatagram) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify").to_str().unwrap().to_string();
    let sock = UnixDatagram::bind(&path).unwrap();
    (dir, path, sock)
}

/// One datagram: its text and the descriptors that came with it.
fn recv(systemd: &UnixDatagram) -> (String, Vec<OwnedFd>) {
    let mut buf = [0u8; 512];
    let got = recv_with_fds(systemd.as_fd(), &mut buf).unwrap();
    (
        String::from_utf8(buf[..got.bytes].to_vec()).unwrap(),
        got.fds,
    )
}

fn inode(fd: BorrowedFd<'_>) -> u64 {
    nix::sys::stat::fstat(fd).unwrap().st_ino
}

fn errno(e: &io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw)
}

#[test]
fn a_stored_socket_reaches_systemd_as_the_same_socket() {
    let (_dir, path, systemd) = fake_systemd();
    // `held` stands for the supervisor's copy of a connection, `peer` for
    // the exchange at its other end.
    let (held, mut peer) = UnixStream::pair().unwrap();
    Storer::new(&path, None)
        .store_conn(ConnId(7), held.as_fd())
        .unwrap();
    let (text, mut fds) = recv(&systemd);
    assert_eq!(text, "FDSTORE=1\nFDNAME=conn-7");
    assert_eq!(fds.len(), 1);
    assert_eq!(inode(fds[0].as_fd()), inode(held.as_fd()));
    drop(held);
    let mut kept = UnixStream::from(fds.pop().unwrap());
    kept.write_all(b"still open").unwrap();
    let mut buf = [0u8; 10];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still open");

    remove(&path, "conn-7").unwrap();
    let (text, fds) = recv(&systemd);
    assert_eq!(text, "FDSTOREREMOVE=1\nFDNAME=conn-7");
    assert!(fds.is_empty());
}

#[test]
fn an_abstract_notify_socket_is_reached() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("handoff-fdstore-test-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let systemd = UnixDatagram::bind_addr(&addr).unwrap();
    let memfd = checkpoint_memfd(b"x").unwrap();
    store(&format!("@{name}"), "state-9", memfd.as_fd()).unwrap();
    let (text, fds) = recv(&systemd);
    assert_eq!(text, "FDSTORE=1\nFDNAME=state-9");
    assert_eq!(inode(fds[0].as_fd()), inode(memfd.as_fd()));
}

#[test]
fn bad_names_and_absent_sockets_are_refused_before_sending() {
    let (_dir, path, _systemd) = fake_systemd();
    let (a, _b) = UnixStream::pair().unwrap();
    for name in [
        "a:b",
        "new\nline",
        "caf\u{e9}",
        "del\u{7f}",
        &"x".repeat(256),
    ] {
        match store(&path, name, a.as_fd()) {
            Err(FdStoreError::BadName { name: n, .. }) => assert_eq!(n, name),
            other => panic!("{name:?}: {other:?}"),
        }
    }
    assert!(store(&path, &"x".repeat(255), a.as_fd()).is_ok());
    let err = remove("/nonexistent/notify", "conn-1").unwrap_err();
    assert!(matches!(err, FdStoreError::NotifySocket { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/notify"), "{err}");
}

#[test]
fn the_memfd_is_sealed_and_reads_back() {
    let fd = checkpoint_memfd(b"the newest checkpoint").unwrap();
    let seals = SealFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GET_SEALS).unwrap());
    assert!(seals.contains(
        SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_WRITE
            | SealFlag::F_SEAL_SEAL
    ));
    let flags = fcntl(&fd, FcntlArg::F_GETFD).unwrap();
    assert!(nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC));
    assert_eq!(read_sealed(&fd).unwrap(), b"the newest checkpoint");

    let mut file = File::from(fd);
    assert_eq!(
        errno(&file.write_at(b"T", 0).unwrap_err()),
        Some(Errno::EPERM)
    );
    assert_eq!(errno(&file.write(b"more").unwrap_err()), Some(Errno::EPERM));
    assert_eq!(errno(&file.set_len(3).unwrap_err()), Some(Errno::EPERM));
    let reseal = fcntl(&file, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE));
    assert_eq!(reseal, Err(Errno::EPERM));
    // The offset is at the end (shared with every holder): reads use pread.
    let mut rest = Vec::new();
    assert_eq!(file.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn an_unsealed_memfd_is_not_trusted() {
    let flags = MFdFlags::MFD_ALLOW_SEALING | MFdFlags::MFD_CLOEXEC;
    let mut file = File::from(memfd_create("unsealed", flags).unwrap());
    file.write_all(&encode_state(None, &[info(1)]).unwrap())
        .unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    let got = assemble(vec![
        ("state-1".into(), file.into()),
        ("conn-1".into(), a.into()),
    ]);
    assert!(got.conns.is_empty());
    let err = got.state_error.unwrap().to_string();
    assert!(
        err.contains("state-1") && err.contains("not sealed"),
        "{err}"
    );
    let mut stale: Vec<_> = got.stale.iter().map(|(n, _)| n.as_str()).collect();
    stale.sort();
    assert_eq!(stale, ["conn-1", "state-1"]);
}

#[test]
fn the_checkpoint_is_the_bytes_of_the_checkpoint_file() {
    let dir = tempfile::tempdir().unwrap();
    persist::write(dir.path(), &checkpoint()).unwrap();
    let file = std::fs::read(dir.path().join(persist::FILE)).unwrap();
    let state = encode_state(Some(&checkpoint()), &[info(1)]).unwrap();
    let stored = decode_state(&state).unwrap();
    assert_eq!(stored.checkpoint, Some(file));
    assert_eq!(stored.conns, [info(1)]);
}

#[test]
fn corrupt_states_are_reported() {
    let good = encode_state(Some(&checkpoint()), &[info(1)]).unwrap();
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 1;
    assert!(decode_state(&flipped).unwrap_err().contains("checksum"));
    assert!(decode_state(b"HOFDST0").unwrap_err().contains("magic"));
    assert!(decode_state(&good[4..]).unwrap_err().contains("magic"));
}

/// The `state-<seq>` name of an `FDSTORE` datagram, and its descriptor.
fn stored_state(systemd: &UnixDatagram) -> (String, u64, OwnedFd) {
    let (text, mut fds) = recv(systemd);
    let name = text.strip_prefix("FDSTORE=1\nFDNAME=").unwrap().to_string();
    let seq = numbered(&name, STATE_PREFIX).unwrap();
    assert_eq!(fds.len(), 1);
    (name, seq, fds.pop().unwrap())
}

/// A store where systemd kept two state generations (a restart fell between
/// storing the new one and removing the old one), a socket the newest state
/// does not list, and a name of someone else's.
#[test]
fn received_descriptors_are_sorted_out_by_name() {
    let (_dir, path, systemd) = fake_systemd();
    let mut storer = Storer::new(&path, None);
    storer
        .store_state(Some(&checkpoint()), &[info(1), info(2)])
        .unwrap();
    let (name1, seq1, state1) = stored_state(&systemd);
    storer
        .store_state(Some(&checkpoint()), &[info(2), info(3)])
        .unwrap();
    let (name2, seq2, state2) = stored_state(&systemd);
    assert!(seq2 > seq1, "{seq2} after {seq1}");
    let (text, fds) = recv(&systemd);
    assert_eq!(
        (text, fds.len()),
        (format!("FDSTOREREMOVE=1\nFDNAME={name1}"), 0)
    );
    assert_eq!(storer.state_seq(), Some(seq2));

    let (c2, mut p2) = UnixStream::pair().unwrap();
    let (c9, _p9) = UnixStream::pair().unwrap();
    let (other, _) = UnixStream::pair().unwrap();
    let c2_inode = inode(c2.as_fd());
    let got = assemble(vec![
        ("conn-9".into(), c9.into()),
        (name1.clone(), state1),
        ("conn-2".into(), c2.into()),
        (name2.clone(), state2),
        ("sockets.socket".into(), other.into()),
    ]);
    assert_eq!(got.state_seq, Some(seq2));
    assert!(got.state_error.is_none(), "{:?}", got.state_error);
    assert_eq!(got.checkpoint, Some(checkpoint()));
    assert_eq!(got.conns.len(), 1);
    assert_eq!(got.conns[0].0, info(2));
    assert_eq!(inode(got.conns[0].1.as_fd()), c2_inode);
    assert_eq!(got.missing, [info(3)], "systemd dropped conn-3 (a hang-up)");
    let mut stale: Vec<_> = got.stale.iter().map(|(n, _)| n.clone()).collect();
    stale.sort();
    assert_eq!(
        stale,
        ["conn-9".to_string(), "sockets.socket".into(), name1]
    );
    let mut kept = UnixStream::from(got.conns.into_iter().next().unwrap().1);
    kept.write_all(b"!").unwrap();
    let mut buf = [0u8; 1];
    p2.read_exact(&mut buf).unwrap();

    // A restarted supervisor replaces the newest generation, even one
    // stamped ahead of its clock.
    for after in [seq2, u64::MAX / 2] {
        let mut resumed = Storer::new(&path, Some(after));
        resumed.store_state(None, &[]).unwrap();
        let (_, seq, _) = stored_state(&systemd);
        assert!(seq > after);
        let removal = format!("FDSTOREREMOVE=1\nFDNAME={}", state_name(after));
        assert_eq!(recv(&systemd).0, removal);
    }
}

#[test]
fn a_corrupt_newest_state_falls_back_and_a_bad_checkpoint_keeps_the_sockets() {
    let older = checkpoint_memfd(&encode_state(None, &[info(1)]).unwrap()).unwrap();
    let garbage = checkpoint_memfd(b"garbage").unwrap();
    let (c1, _p1) = UnixStream::pair().unwrap();
    let got = assemble(vec![
        ("state-4".into(), older),
        ("state-5".into(), garbage),
        ("conn-1".into(), c1.into()),
    ]);
    assert_eq!(got.state_seq, Some(5));
    assert_eq!(got.conns.len(), 1);
    assert!(got.checkpoint.is_none());
    assert!(got.state_error.unwrap().to_string().contains("state-5"));
    assert_eq!(got.stale.len(), 1);
    assert_eq!(got.stale[0].0, "state-5");

    let junk = Stored {
        checkpoint: Some(b"not a checkpoint file".to_vec()),
        conns: vec![info(1)],
    };
    let state = checkpoint_memfd(&encode_stored(&junk).unwrap()).unwrap();
    let (c1, _p1) = UnixStream::pair().unwrap();
    let got = assemble(vec![
        ("conn-1".into(), c1.into()),
        ("state-1".into(), state),
    ]);
    assert_eq!(got.conns.len(), 1, "the sockets do not depend on it");
    assert!(got.checkpoint.is_none());
    let err = got.state_error.unwrap().to_string();
    assert!(err.contains("checkpoint") && err.contains("magic"), "{err}");
}

#[test]
fn names_that_merely_look_like_ours_are_stale() {
    let fds = [
        "conn-01",
        "conn-+1",
        "conn-",
        "conn-4294967296",
        "state-x",
        "state",
    ]
    .map(|n| (n.to_string(), checkpoint_memfd(b"").unwrap()));
    let got = assemble(fds.into());
    assert_eq!(got.stale.len(), 6);
    assert_eq!(got.state_seq, None);
}

#[test]
fn parse_reads_what_systemd_sets() {
    let me = 4242;
    let p = |pid, fds, names| parse(pid, fds, names, me);
    let list = |v: &[(&str, RawFd)]| Some(v.iter().map(|&(n, f)| (n.to_string(), f)).collect());
    // Not for us: nothing.
    assert_eq!(p(None, Some("2"), Some("a:b")).unwrap(), None);
    assert_eq!(p(Some("1"), Some("2"), Some("a:b")).unwrap(), None);
    assert_eq!(p(Some("1"), Some("junk"), Some("a\nb")).unwrap(), None);
    assert_eq!(p(Some("4242"), None, Some("a")).unwrap(), None);
    // For us.
    assert_eq!(
        p(Some("4242"), Some("2"), Some("conn-1:state-3")).unwrap(),
        list(&[("conn-1", 3), ("state-3", 4)])
    );
    assert_eq!(p(Some("4242"), Some("0"), Some("")).unwrap(), list(&[]));
    assert_eq!(p(Some("4242"), Some("0"), None).unwrap(), list(&[]));
    assert_eq!(
        p(Some("4242"), Some("1"), Some("")).unwrap(),
        list(&[("", 3)])
    );
    assert_eq!(
        p(Some("4242"), Some("2"), None).unwrap(),
        list(&[("unknown", 3), ("unknown", 4)])
    );
}

#[test]
fn parse_names_what_is_wrong() {
    fn p(pid: &str, fds: &str, names: Option<&str>) -> FdStoreError {
        parse(Some(pid), Some(fds), names, 4242).unwrap_err()
    }
    for bad in ["", "abc", "-1", "+4242", " 4242", "4242 ", "99999999999"] {
        match p(bad, "1", Some("a")) {
            FdStoreError::ListenPid { value } => assert_eq!(value, bad),
            other => panic!("LISTEN_PID={bad:?}: {other}"),
        }
    }
    for bad in [
        "",
        "x",
        "-1",
        "+2",
        "2 ",
        "65537",
        "99999999999999999999999",
    ] {
        match p("4242", bad, Some("a")) {
            FdStoreError::ListenFds { value } => assert_eq!(value, bad),
            other => panic!("LISTEN_FDS={bad:?}: {other}"),
        }
    }
    for (fds, names, want) in [
        ("2", "a", 1),
        ("1", "a:b", 2),
        ("0", "a", 1),
        ("2", "a:b:", 3),
    ] {
        match p("4242", fds, Some(names)) {
            FdStoreError::NameCount { count, names: n } => {
                assert_eq!((count.to_string().as_str(), n), (fds, want))
            }
            other => panic!("{fds} {names:?}: {other}"),
        }
    }
    let long = "x".repeat(256);
    for bad in ["a\nb", "tab\t", "caf\u{e9}", "del\u{7f}", long.as_str()] {
        let names = format!("ok:{bad}");
        match p("4242", "2", Some(names.as_str())) {
            FdStoreError::BadName { name, .. } => assert_eq!(name, bad),
            other => panic!("{bad:?}: {other}"),
        }
    }
    let err = p("4242", "2", Some("a")).to_string();
    assert!(
        err.contains("LISTEN_FDNAMES has 1 names for LISTEN_FDS=2"),
        "{err}"
    );
}

/// The real `from_env`: a child (bash, then this test binary, exec'd so that
/// `$$` stays its pid) gets a held socket and a state at 3 and 4, as from
/// systemd, and runs [`from_env_in_a_child`].
#[tokio::test]
async fn from_env_takes_what_a_parent_hands_over() {
    let (held, mut peer) = UnixStream::pair().unwrap();
    let state = encode_state(Some(&checkpoint()), &[info(1)]).unwrap();
    let state = checkpoint_memfd(&state).unwrap();
    let mut cmd = tokio::process::Command::new("bash");
    let a = handoff_protocol::fds::inherit_in_child(&mut cmd, held.as_fd());
    let b = handoff_protocol::fds::inherit_in_child(&mut cmd, state.as_fd());
    let (x, y) = (a.max(b) + 1, a.max(b) + 2);
    let script = format!(
        "exec {x}<&{a} {y}<&{b} {a}<&- {b}<&-; exec 3<&{x} 4<&{y} {x}<&- {y}<&-; \
         LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=conn-1:state-1 exec \"$0\" \
         --exact fdstore::tests::from_env_in_a_child --ignored --test-threads=1"
    );
    cmd.arg("-c")
        .arg(script)
        .arg(std::env::current_exe().unwrap());
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(held);
    let mut buf = [0u8; 14];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"from the child");
}

/// Run by [`from_env_takes_what_a_parent_hands_over`] in its own process.
#[test]
#[ignore = "run in a child process by from_env_takes_what_a_parent_hands_over"]
fn from_env_in_a_child() {
    if std::env::var_os("LISTEN_FDS").is_none() {
        return; // run by hand (--ignored), not by the test above
    }
    let got = FdStore::from_env()
        .unwrap()
        .expect("LISTEN_PID names this process");
    assert!(got.state_error.is_none(), "{:?}", got.state_error);
    assert_eq!((got.stale.len(), got.missing.len()), (0, 0));
    assert_eq!(got.checkpoint, Some(checkpoint()));
    assert_eq!(got.state_seq, Some(1));
    let (conn, fd) = got.conns.into_iter().next().unwrap();
    assert_eq!(conn, info(1));
    let flags = fcntl(&fd, FcntlArg::F_GETFD).unwrap();
    assert!(nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC));
    UnixStream::from(fd).write_all(b"from the child").unwrap();
}
