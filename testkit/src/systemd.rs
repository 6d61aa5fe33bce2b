//! A stand-in for systemd's side of a `Type=notify` service with a file
//! descriptor store: a notify socket that records the messages and keeps
//! the descriptors stored with `FDSTORE=1` (dropping those named by
//! `FDSTOREREMOVE=1`), and, for a restart, hands them back the way systemd
//! does: from descriptor 3 on, with `LISTEN_FDS`, `LISTEN_FDNAMES` and
//! `LISTEN_PID` (see [`crate::Cluster::restart_supervisor_with_fds`]).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::TestkitError;

#[derive(Default)]
struct Store {
    fds: Vec<(String, OwnedFd)>,
    messages: Vec<String>,
}

/// The fake systemd. Dropping it stops its thread and closes what it kept.
pub struct FakeSystemd {
    path: PathBuf,
    store: Arc<Mutex<Store>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeSystemd {
    /// Listen at `dir/notify.sock`.
    pub fn start(dir: &Path) -> Result<FakeSystemd, TestkitError> {
        let path = dir.join("notify.sock");
        let err = |source| TestkitError::File {
            path: path.clone(),
            source,
        };
        let sock = UnixDatagram::bind(&path).map_err(err)?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(err)?;
        let store = Arc::new(Mutex::new(Store::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (store.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !sp.load(Ordering::Relaxed) {
                let Ok(got) = handoff_protocol::fds::recv_with_fds(sock.as_fd(), &mut buf) else {
                    continue;
                };
                let text = String::from_utf8_lossy(&buf[..got.bytes]).into_owned();
                let Ok(mut s) = st.lock() else { return };
                apply(&mut s, &text, got.fds);
            }
        });
        Ok(FakeSystemd {
            path,
            store,
            stop,
            thread: Some(thread),
        })
    }

    /// The path to give the service as `NOTIFY_SOCKET`.
    pub fn notify_socket(&self) -> &Path {
        &self.path
    }

    /// The names stored now, in store order.
    pub fn names(&self) -> Vec<String> {
        self.store
            .lock()
            .map(|s| s.fds.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default()
    }

    /// Every message received that stored or removed nothing (`READY=1`,
    /// `STATUS=`, …).
    pub fn messages(&self) -> Vec<String> {
        self.store
            .lock()
            .map(|s| s.messages.clone())
            .unwrap_or_default()
    }

    /// Copies of the stored descriptors with their names, to hand to the
    /// restarted service (the store keeps its own, as systemd does).
    pub fn handed_back(&self) -> Result<Vec<(String, OwnedFd)>, TestkitError> {
        let s = self
            .store
            .lock()
            .map_err(|_| TestkitError::Protocol("fake systemd poisoned".into()))?;
        s.fds
            .iter()
            .map(|(n, fd)| {
                fd.try_clone()
                    .map(|d| (n.clone(), d))
                    .map_err(|e| TestkitError::Protocol(format!("dup {n}: {e}")))
            })
            .collect()
    }
}

/// One notify datagram: `FDSTORE=1` keeps the descriptors under `FDNAME`
/// (one already kept under that name that is the same file is not kept
/// twice), `FDSTOREREMOVE=1` drops every descriptor of that name.
fn apply(s: &mut Store, text: &str, fds: Vec<OwnedFd>) {
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let name = field("FDNAME").unwrap_or_else(|| "stored".into());
    if field("FDSTORE").as_deref() == Some("1") {
        for fd in fds {
            let id = |f: &OwnedFd| {
                std::fs::File::from(f.try_clone().ok()?)
                    .metadata()
                    .ok()
                    .map(|m| (m.dev(), m.ino()))
            };
            let same = s
                .fds
                .iter()
                .any(|(n, kept)| *n == name && id(kept).is_some() && id(kept) == id(&fd));
            if !same {
                s.fds.push((name.clone(), fd));
            }
        }
    } else if field("FDSTOREREMOVE").as_deref() == Some("1") {
        s.fds.retain(|(n, _)| *n != name);
    } else {
        s.messages.push(text.to_owned());
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
