//! Adopting the worker a previous supervisor left serving.
//!
//! A supervisor that dies (`kill -9`, a crash, or its own replacement by
//! `upgrade-supervisor`) leaves its worker serving: the worker holds its
//! connections and `serving.lock`, and listens on
//! `STATE_DIR/orphans/<pid>.sock` (see `handoff_worker::orphan`). A
//! supervisor starting on that state directory looks there before it starts
//! anything ([`find`]):
//!
//! 1. it knocks on every orphan socket (a socket nobody listens on any more
//!    is a dead orphan's: removed); one of our uid (or root) answers
//!    `Adoptable` with its Hello, generation and state; its pidfd is opened
//!    before that answer is read, so the handle is that process's;
//! 2. exactly one serving orphan: it is adopted (`Daemon::adopt`): told
//!    `Adopt`, it registers its connections again and sends a checkpoint. No
//!    freeze, no handoff: the exchange sees nothing. A successor left
//!    *awaiting Go* by a supervisor that died mid-handoff (its predecessor
//!    thawed and serves: it is the serving orphan) is told `Exit`;
//! 3. none serves but `serving.lock` is held: some worker still serves but
//!    cannot be adopted yet (its socket may be moments away). The search
//!    repeats until `timeouts.adopt`; then the supervisor starts nothing and
//!    exits non-zero, naming the holder: never a second serving worker;
//! 4. the lock is free and one successor awaits Go: the supervisor died
//!    mid-handoff and the old worker is gone. If it let go of the lock by
//!    handing over (it got `Exit`: [`lockfile::handed_over`]), the successor
//!    holds exactly what it handed over and is told `Go`. Otherwise the old
//!    worker may have served on after the freeze and then died: the
//!    successor's state and TLS sessions may be stale, so it only gives its
//!    sockets back (registers them) and exits, and a recovery follows;
//! 5. nobody answers and the lock is free: nobody serves; start as usual.
//!
//! The kernel enforces the rule, not this search: a worker starts serving
//! only once it holds `serving.lock`, and a fresh worker that finds it held
//! exits instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use handoff_protocol::frame::MAX_WORKER_FRAME;
use handoff_protocol::lockfile::{self, LockError, LockFile};
use handoff_protocol::pidfd::PidFd;
use handoff_protocol::state_dir;
use handoff_protocol::worker::{Adoptable, FromWorker, OrphanState, ToWorker};
use handoff_protocol::{Channel, PROTOCOL_VERSION};
use thiserror::Error;
use tokio::net::UnixStream;
use tracing::{info, warn};

/// Longest an orphan may take to answer a knock on its socket: it answers
/// from its event loop, between two messages. Protects the start-up from a
/// socket whose owner is stuck; such an orphan counts as not answering.
pub const ORPHAN_ANSWER: Duration = Duration::from_secs(2);

/// How often the orphan sockets are searched again while `serving.lock` is
/// held and nobody answered (until `timeouts.adopt`).
pub const ORPHAN_SEARCH_EVERY: Duration = Duration::from_millis(50);

/// Why the supervisor will not start.
#[derive(Debug, Error)]
pub enum AdoptError {
    #[error(
        "a worker still serves this state directory ({} holds {lock:?}) but none could be adopted from {dir:?} within {waited:?}{}; \
         not starting a second worker beside it. Stop that worker (SIGTERM stops an orphan cleanly), or raise --adopt-timeout",
        holder.map(|p| format!("pid {p}")).unwrap_or_else(|| "a process".into()),
        if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) }
    )]
    Unadoptable {
        lock: PathBuf,
        holder: Option<u32>,
        dir: PathBuf,
        waited: Duration,
        notes: Vec<String>,
    },
    #[error("{n} orphaned workers say they serve this state directory (pids {pids:?}); refusing to pick one")]
    Several { n: usize, pids: Vec<u32> },
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// An orphan that answered, ready to be adopted.
pub struct Orphan {
    pub pidfd: PidFd,
    pub channel: Channel<ToWorker, FromWorker>,
    pub offer: Adoptable,
}

/// What a starting supervisor found in the state directory.
pub enum Found {
    /// Nobody serves: start a worker as usual.
    Nobody,
    /// A serving orphan to adopt, and successors awaiting Go to dismiss.
    Serving(Orphan, Vec<Orphan>),
    /// A successor awaiting Go, and whether it may go live.
    Successor(Orphan, Verdict),
}

/// What becomes of a successor found awaiting Go (step 4 of the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Its predecessor handed over: it goes live.
    Go,
    /// Its predecessor may have served on: it gives its sockets back and
    /// exits; a recovery follows.
    Retire,
}

/// What to do about the state directory's orphans. See the module docs.
pub async fn find(dir: &Path, wait: Duration) -> Result<Found, AdoptError> {
    let deadline = tokio::time::Instant::now() + wait;
    let lock = state_dir::serving_lock(dir);
    loop {
        let mut notes = Vec::new();
        let (mut serving, mut waiting): (Vec<_>, Vec<_>) = knock_all(dir, &mut notes)
            .await
            .into_iter()
            .partition(|o| o.offer.state == OrphanState::Serving);
        let several = |orphans: &[Orphan]| AdoptError::Several {
            n: orphans.len(),
            pids: orphans.iter().map(|o| o.pidfd.pid()).collect(),
        };
        match serving.len() {
            0 => {}
            1 => return Ok(Found::Serving(serving.remove(0), waiting)),
            _ => return Err(several(&serving)),
        }
        if LockFile::is_free(&lock)? {
            let handed = lockfile::handed_over(&lock);
            let early = tokio::time::Instant::now() < deadline;
            return match waiting.len() {
                // The last holder handed over to a successor that has not
                // taken the lock: it may be moments from its orphan socket.
                0 if handed && early => {
                    tokio::time::sleep(ORPHAN_SEARCH_EVERY).await;
                    continue;
                }
                0 => Ok(Found::Nobody),
                1 => {
                    let verdict = if handed { Verdict::Go } else { Verdict::Retire };
                    Ok(Found::Successor(waiting.remove(0), verdict))
                }
                _ => Err(several(&waiting)),
            };
        }
        for w in &waiting {
            notes.push(format!(
                "pid {} is a restored successor awaiting Go",
                w.pidfd.pid()
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AdoptError::Unadoptable {
                holder: lockfile::holder(&lock),
                lock,
                dir: state_dir::orphans(dir),
                waited: wait,
                notes,
            });
        }
        tokio::time::sleep(ORPHAN_SEARCH_EVERY).await;
    }
}

/// Knock on every orphan socket; the orphans that answered.
async fn knock_all(dir: &Path, notes: &mut Vec<String>) -> Vec<Orphan> {
    let Ok(entries) = std::fs::read_dir(state_dir::orphans(dir)) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("sock") {
            continue;
        }
        match knock(&path).await {
            Ok(Some(o)) => found.push(o),
            Ok(None) => {}
            Err(note) => {
                warn!(socket = %path.display(), "{note}");
                notes.push(note);
            }
        }
    }
    found
}

/// Knock on one orphan socket. `Ok(None)`: nobody there (the file was a dead
/// orphan's and is gone now); `Err`: why the one there cannot be adopted.
async fn knock(path: &Path) -> Result<Option<Orphan>, String> {
    let name = path.display();
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            // Named by its worker's pid: removed once that process is gone.
            let pid = path
                .file_stem()
                .and_then(|s| s.to_str()?.parse::<u32>().ok());
            if pid.is_some_and(|p| PidFd::open(p).is_err()) {
                info!(socket = %name, "removing the socket of an orphan that is gone");
                let _ = std::fs::remove_file(path);
            }
            return Ok(None);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{name}: cannot connect: {e}")),
    };
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("{name}: no peer credentials: {e}"))?;
    let own = nix::unistd::getuid().as_raw();
    if cred.uid() != own && cred.uid() != 0 {
        return Err(format!(
            "{name}: listened on by uid {}, not ours",
            cred.uid()
        ));
    }
    let pid = cred
        .pid()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| format!("{name}: the peer has no pid"))?;
    // Opened before the answer is read: an answer that arrives after it
    // proves the pid was not reused in between.
    let pidfd = PidFd::open(pid).map_err(|e| format!("{name}: pid {pid}: {e}"))?;
    let mut channel = Channel::<ToWorker, FromWorker>::new(stream, MAX_WORKER_FRAME);
    let answer = tokio::time::timeout(ORPHAN_ANSWER, channel.recv())
        .await
        .map_err(|_| format!("{name}: pid {pid} did not answer within {ORPHAN_ANSWER:?}"))?;
    let offer = match answer {
        Ok(Some((FromWorker::Adoptable(offer), fds))) if fds.is_empty() => offer,
        Ok(Some((other, _))) => {
            return Err(format!(
                "{name}: pid {pid} answered {} instead of Adoptable",
                kind(&other)
            ))
        }
        Ok(None) => return Err(format!("{name}: pid {pid} hung up")),
        Err(e) => return Err(format!("{name}: pid {pid}: {e}")),
    };
    if offer.hello.pid != pid {
        return Err(format!(
            "{name}: the answer says pid {} but the socket is pid {pid}'s",
            offer.hello.pid
        ));
    }
    if offer.hello.protocol != PROTOCOL_VERSION {
        return Err(format!(
            "{name}: pid {pid} speaks protocol {}, this supervisor {PROTOCOL_VERSION}",
            offer.hello.protocol
        ));
    }
    Ok(Some(Orphan {
        pidfd,
        channel,
        offer,
    }))
}

/// A message's name, for errors (its contents may hold secrets).
fn kind(m: &FromWorker) -> &'static str {
    match m {
        FromWorker::Hello(_) => "Hello",
        FromWorker::Register(_) => "Register",
        FromWorker::Unregister { .. } => "Unregister",
        FromWorker::Checkpoint(_) => "Checkpoint",
        FromWorker::Frozen(_) => "Frozen",
        FromWorker::FreezeFailed { .. } => "FreezeFailed",
        FromWorker::Ready => "Ready",
        FromWorker::Rejected { .. } => "Rejected",
        FromWorker::FirstConsumed { .. } => "FirstConsumed",
        FromWorker::Heartbeat => "Heartbeat",
        FromWorker::Adoptable(_) => "Adoptable",
        FromWorker::Carried(_) => "Carried",
        FromWorker::FeedChanges(_) => "FeedChanges",
        FromWorker::Serving => "Serving",
        FromWorker::Failed { .. } => "Failed",
        FromWorker::CheckpointImage(_) => "CheckpointImage",
        FromWorker::PreCopied(_) => "PreCopied",
        FromWorker::PreCopyFailed { .. } => "PreCopyFailed",
        FromWorker::Warmed { .. } => "Warmed",
    }
}

mod daemon_side {
    use handoff_protocol::worker::ToWorker;
    use tracing::{info, warn};

    use super::{dismiss, Found, Orphan, Verdict};
    use crate::daemon::Daemon;
    use crate::proc::WorkerProc;

    impl Daemon {
        /// Act on what [`super::find`] found. `Ok(false)`: nobody serves and
        /// nothing was adopted (start a worker).
        pub(crate) fn take_over_orphans(
            &mut self,
            found: Found,
        ) -> Result<bool, crate::binary::BinaryError> {
            match found {
                Found::Nobody => Ok(false),
                Found::Serving(orphan, waiting) => {
                    let serving = orphan.pidfd.pid();
                    self.adopt(orphan)?;
                    for w in waiting {
                        let line = format!(
                            "the supervisor had died mid-handoff: the old worker pid {serving} thawed and serves; restored successor pid {} told to exit",
                            w.pidfd.pid()
                        );
                        warn!("{line}");
                        self.history.push(line);
                        dismiss(w);
                    }
                    Ok(true)
                }
                Found::Successor(orphan, verdict) => {
                    let pid = orphan.pidfd.pid();
                    self.adopt(orphan)?;
                    let Some(a) = self.active.as_ref() else {
                        return Ok(true);
                    };
                    let line = match verdict {
                        Verdict::Go => {
                            a.send(ToWorker::Go, Vec::new());
                            format!("the supervisor had died mid-handoff after the old worker exited: restored successor pid {pid} told to go")
                        }
                        Verdict::Retire => {
                            // It registers its sockets (Adopt, queued
                            // first), then exits: its exit starts a
                            // recovery on them.
                            a.send(ToWorker::Exit, Vec::new());
                            format!("the supervisor had died mid-handoff and the old worker is gone without handing over: restored successor pid {pid} gives its sockets back and exits; recovering from the newest checkpoint")
                        }
                    };
                    warn!("{line}");
                    self.history.push(line);
                    Ok(true)
                }
            }
        }

        /// Take `orphan` on as the active worker (step 2 of the module docs).
        pub(crate) fn adopt(&mut self, orphan: Orphan) -> Result<(), crate::binary::BinaryError> {
            let Orphan {
                pidfd,
                channel,
                offer,
            } = orphan;
            let pid = pidfd.pid();
            let build = self.adopted_build(pid)?;
            // Its generation goes on; later workers are numbered after it.
            let generation = offer.generation.max(1);
            self.next_generation = self.next_generation.max(generation + 1);
            let proc = WorkerProc::adopt(
                generation,
                pidfd,
                &build,
                offer.hello,
                channel,
                self.events.clone(),
            );
            let line = format!(
                "adopted worker pid {pid} (generation {generation}), serving {} connections alone for {:.1} s after its supervisor went away",
                offer.conns,
                offer.orphaned_ms as f64 / 1000.0
            );
            info!(
                pid,
                generation,
                conns = offer.conns,
                orphaned_ms = offer.orphaned_ms,
                "adopted a serving worker"
            );
            self.history.push(line);
            self.current = Some(build);
            self.active = Some(proc);
            // It was serving when its supervisor went.
            self.first_start.served();
            self.serving(&format!("serving: worker pid {pid} (adopted)"));
            Ok(())
        }

        /// The build an adopted worker runs: its stored copy when it was
        /// started from the build store (the usual case), else the
        /// `--worker` file.
        fn adopted_build(
            &mut self,
            pid: u32,
        ) -> Result<crate::builds::Build, crate::binary::BinaryError> {
            // Cheap either way: a stored build is named by its hash, and the
            // `--worker` file was admitted before the search (see
            // `Daemon::take_office`): an orphan that answered must be told
            // Adopt before its adoption_timeout.
            match std::fs::read_link(format!("/proc/{pid}/exe")) {
                Ok(exe) if self.store.holds(&exe) => self.store.admit(&exe, None),
                _ => self.store.admit(&self.cfg.worker.clone(), None),
            }
        }
    }
}

/// Tell a successor awaiting Go that it will not go live: it exits without
/// touching the connections (the serving worker has them).
fn dismiss(mut w: Orphan) {
    tokio::spawn(async move {
        let _ = w.channel.send(&ToWorker::Exit, &[]).await;
        // Hold the channel until it is gone, so it reads the Exit rather
        // than a hang-up.
        let _ = tokio::time::timeout(ORPHAN_ANSWER, w.pidfd.exited()).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket file nobody listens on: bound, then its listener closed.
    fn dead_socket(path: &Path) {
        drop(std::os::unix::net::UnixListener::bind(path).unwrap());
        assert!(path.exists());
    }

    #[tokio::test]
    async fn a_refused_socket_goes_only_once_the_pid_it_names_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        // pid_max is at most 2^22: this pid cannot exist.
        let gone = dir.path().join("4194305.sock");
        dead_socket(&gone);
        assert!(matches!(knock(&gone).await, Ok(None)));
        assert!(!gone.exists(), "a dead orphan's socket stays");
        // Named for a live process (this one): refused for now, but kept.
        let live = dir.path().join(format!("{}.sock", std::process::id()));
        dead_socket(&live);
        assert!(matches!(knock(&live).await, Ok(None)));
        assert!(live.exists(), "a live process's socket was removed");
    }

    #[tokio::test]
    async fn nobody_serving_and_no_orphan_means_start_as_usual() {
        let dir = tempfile::tempdir().unwrap();
        let found = find(dir.path(), Duration::from_millis(200)).await.unwrap();
        assert!(matches!(found, Found::Nobody));
    }

    #[tokio::test]
    async fn a_held_serving_lock_without_an_orphan_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let _held = LockFile::try_lock(&state_dir::serving_lock(dir.path())).unwrap();
        match find(dir.path(), Duration::from_millis(200)).await {
            Err(AdoptError::Unadoptable { holder, .. }) => {
                assert_eq!(holder, Some(std::process::id()))
            }
            Ok(_) => panic!("found something to adopt"),
            Err(e) => panic!("{e}"),
        }
    }
}
