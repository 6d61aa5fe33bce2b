//! systemd's file descriptor store: the held sockets and the newest
//! checkpoint outlive a restart of the supervisor itself.
//!
//! The supervisor holds a duplicate of every connection ([`crate::held`]) so
//! that no worker exit closes one. Its own restart under systemd (a crash
//! with `Restart=`, `systemctl restart`, which with the default
//! `KillMode=control-group` kills the worker too) would close them all.
//! systemd can keep descriptors for a service (`FDSTORE=1` on
//! `$NOTIFY_SOCKET`): it holds a duplicate of each while the unit restarts
//! and hands them back to the next process the way socket activation does
//! (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`; descriptors from 3 on).
//! This module is that mechanism; when to call it is the daemon's business.
//!
//! # Names
//!
//! | `FDNAME` | descriptor |
//! |---|---|
//! | `conn-<id>` | the held socket of connection `ConnId(<id>)` (decimal) |
//! | `state-<seq>` | a sealed memfd: the state below; `<seq>` is when it was stored |
//!
//! `<seq>` is `CLOCK_MONOTONIC` in nanoseconds (above the previous one), which
//! is system-wide: states of two supervisors compare, and the store does not
//! outlive a boot. Anything else handed back (socket units' names, systemd's
//! `stored` or `unknown`) is returned as [`Received::stale`].
//!
//! # The state memfd
//!
//! ```text
//! magic  8 bytes  "HOFDST01"
//! body   bincode(Stored { checkpoint: Option<bytes>, conns: Vec<ConnInfo> })
//! crc    4 bytes  CRC-32 (little endian) of magic and body
//! ```
//!
//! `checkpoint` is byte for byte what [`crate::persist`] writes to
//! `checkpoint.bin` (its own magic, CRC and snapshot check) and is decoded
//! by the same code; `conns` is the [`ConnInfo`] of each held connection,
//! which a name has no room for. The memfd is sealed (no write, grow, shrink
//! or further seal), and a state that is not sealed is not trusted. Its file
//! offset is shared by every holder, so it is read with `pread` from 0.
//!
//! # Order and limits
//!
//! - Store `conn-<id>` before a state listing it; on unregistering, store a
//!   state without it, then remove `conn-<id>`. A socket with no entry comes
//!   back as `stale`, an entry with no socket as [`Received::missing`].
//! - [`Storer::store_state`] stores the new state *then* removes the previous
//!   one (`FDSTOREREMOVE` drops every descriptor with that name), so the
//!   store always holds a whole state; after a restart between the two, the
//!   newest one that decodes wins. A supervisor that started without
//!   `LISTEN_FDS` cannot remove its predecessor's: it is older, hence `stale`
//!   at the next restart.
//! - `FileDescriptorStoreMax=` must be at least connections + 2 (the state,
//!   and its successor for the instant of replacement); the default 0
//!   disables the store. systemd drops (and only logs) what it cannot keep:
//!   the sender is never told.
//! - systemd drops a stored socket on `EPOLLHUP`/`EPOLLERR` (a connection
//!   reset): it comes back `missing`. The store outlives restarts
//!   (`FileDescriptorStorePreserve=restart`, the default), not a stop.
//! - Handed-back descriptors stay in the store: do not store them again
//!   (systemd ignores an identical descriptor anyway), and remove the names of
//!   those not kept.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixDatagram;
use std::str::FromStr;
use std::time::Duration;

use handoff_protocol::fds::{send_with_fds, take_inherited};
use handoff_protocol::worker::{ConnId, ConnInfo};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::persist::{self, OnDisk};

/// `SD_LISTEN_FDS_START`.
const FIRST_FD: RawFd = 3;
/// systemd's limit on a descriptor name.
const FDNAME_MAX: usize = 255;
/// More inherited descriptors than this is a bad `LISTEN_FDS`.
const MAX_LISTEN_FDS: usize = 1 << 16;
const STATE_MAGIC: &[u8; 8] = b"HOFDST01";
/// A larger state memfd is refused rather than read.
const MAX_STATE_BYTES: u64 = 1 << 30;
/// A datagram to a stuck systemd fails after this instead of blocking on.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
const CONN_PREFIX: &str = "conn-";
const STATE_PREFIX: &str = "state-";

/// Why the store could not be read or written; one variant per step.
#[derive(Debug, Error)]
pub enum FdStoreError {
    #[error("LISTEN_PID={value:?} is not a process id")]
    ListenPid { value: String },
    #[error("LISTEN_FDS={value:?} is not a descriptor count (0 to {MAX_LISTEN_FDS})")]
    ListenFds { value: String },
    #[error("LISTEN_FDNAMES has {names} names for LISTEN_FDS={count}")]
    NameCount { count: usize, names: usize },
    #[error("descriptor name {name:?} is invalid: {why}")]
    BadName { name: String, why: &'static str },
    #[error("inherited descriptor {fd} ({name:?}) cannot be taken: {source}")]
    Inherited {
        fd: RawFd,
        name: String,
        source: io::Error,
    },
    #[error("NOTIFY_SOCKET {path:?} is unusable: {source}")]
    NotifySocket { path: String, source: io::Error },
    #[error("cannot send {what} for {name:?} to NOTIFY_SOCKET {path:?}: {source}")]
    Send {
        path: String,
        what: &'static str,
        name: String,
        source: io::Error,
    },
    #[error("cannot encode the stored state: {why}")]
    Encode { why: String },
    #[error("sealed memfd, {step}: {source}")]
    Memfd {
        step: &'static str,
        source: io::Error,
    },
    #[error("stored state {name:?} is unusable: {why}")]
    State { name: String, why: String },
}

/// What systemd handed this process, sorted out by name.
#[derive(Debug, Default)]
pub struct Received {
    /// Held connections with their metadata, in id order.
    pub conns: Vec<(ConnInfo, OwnedFd)>,
    /// The checkpoint stored with them, decoded and verified by `persist`.
    pub checkpoint: Option<OnDisk>,
    /// The highest `state-<seq>` handed back: give it to [`Storer::new`] so
    /// that the next state replaces it.
    pub state_seq: Option<u64>,
    /// Descriptors of no use: unknown names, a `conn-<id>` the state does not
    /// list (or a second one under the same name), older or unusable states;
    /// every `conn-<id>` when no state is usable. Still in systemd's store:
    /// remove their names, except a name also used by [`Received::conns`].
    pub stale: Vec<(String, OwnedFd)>,
    /// Connections the state lists whose socket systemd no longer had.
    pub missing: Vec<ConnInfo>,
    /// Why the newest state, or its checkpoint, could not be used.
    pub state_error: Option<FdStoreError>,
}

/// The receiving side (a namespace: see [`FdStore::from_env`]).
pub enum FdStore {}

impl FdStore {
    /// What systemd handed this process, or `None` when `LISTEN_PID` is not
    /// this process (or `LISTEN_PID` / `LISTEN_FDS` is unset).
    ///
    /// Call it once, first thing in `main`, before anything opens a
    /// descriptor or starts a thread: the environment is the only record, it
    /// is not cleared (`remove_var` is unsound once threads run), and a second
    /// call would make a second owner. When the names are bad, the
    /// descriptors are closed (systemd keeps its copies), so that no worker
    /// inherits them; when one is not open, those taken are closed too.
    pub fn from_env() -> Result<Option<Received>, FdStoreError> {
        let var = |k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
        let (pid, fds, names) = (var("LISTEN_PID"), var("LISTEN_FDS"), var("LISTEN_FDNAMES"));
        let (pid, fds, our_pid) = (pid.as_deref(), fds.as_deref(), std::process::id());
        let parsed = parse(pid, fds, names.as_deref(), our_pid).inspect_err(|_| {
            if let Ok(Some(count)) = parse_header(pid, fds, our_pid) {
                (FIRST_FD..)
                    .take(count)
                    .for_each(|raw| drop(take_inherited(raw)));
            }
        });
        let Some(list) = parsed? else {
            return Ok(None);
        };
        // Every number is taken (made close-on-exec) before an error returns.
        let taken: Vec<_> = list
            .into_iter()
            .map(|(name, raw)| match take_inherited(raw) {
                Ok(fd) => Ok((name, fd)),
                Err(source) => Err(FdStoreError::Inherited {
                    fd: raw,
                    name,
                    source,
                }),
            })
            .collect();
        let taken = taken.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(Some(assemble(taken)))
    }
}

/// The environment's part of [`FdStore::from_env`]: the names and numbers of
/// the descriptors handed to `our_pid`, `None` if none were.
/// `LISTEN_FDNAMES` unset names each `unknown`, as `sd_listen_fds_with_names`.
pub fn parse(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    names: Option<&str>,
    our_pid: u32,
) -> Result<Option<Vec<(String, RawFd)>>, FdStoreError> {
    match parse_header(listen_pid, listen_fds, our_pid)? {
        Some(count) => parse_names(count, names).map(Some),
        None => Ok(None),
    }
}

fn parse_header(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    our_pid: u32,
) -> Result<Option<usize>, FdStoreError> {
    let Some(value) = listen_pid else {
        return Ok(None);
    };
    let pid: u32 = decimal(value).ok_or_else(|| FdStoreError::ListenPid {
        value: value.into(),
    })?;
    let (true, Some(value)) = (pid == our_pid, listen_fds) else {
        return Ok(None);
    };
    decimal(value)
        .filter(|&n| n <= MAX_LISTEN_FDS)
        .map(Some)
        .ok_or_else(|| FdStoreError::ListenFds {
            value: value.into(),
        })
}

fn parse_names(count: usize, names: Option<&str>) -> Result<Vec<(String, RawFd)>, FdStoreError> {
    let names: Vec<&str> = match names {
        None => vec!["unknown"; count],
        Some("") if count == 0 => Vec::new(),
        Some(s) => s.split(':').collect(),
    };
    if names.len() != count {
        return Err(FdStoreError::NameCount {
            count,
            names: names.len(),
        });
    }
    names
        .into_iter()
        .zip(FIRST_FD..)
        .map(|(name, fd)| {
            check_name(name).map_err(|why| FdStoreError::BadName {
                name: name.into(),
                why,
            })?;
            Ok((name.to_string(), fd))
        })
        .collect()
}

/// Only ASCII digits: no sign, no spaces.
fn decimal<T: FromStr>(s: &str) -> Option<T> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| s.parse().ok()).flatten()
}

/// systemd's `fdname_is_valid`: printable ASCII but ':', at most 255 bytes.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.len() > FDNAME_MAX {
        return Err("longer than 255 bytes");
    }
    if name.chars().any(|c| !(' '..='~').contains(&c) || c == ':') {
        return Err("only printable ASCII other than ':' is allowed");
    }
    Ok(())
}

/// Name of a held connection's socket.
pub fn conn_name(id: ConnId) -> String {
    format!("{CONN_PREFIX}{}", id.0)
}

/// Name of the state memfd of generation `seq`.
pub fn state_name(seq: u64) -> String {
    format!("{STATE_PREFIX}{seq}")
}

/// `<prefix><n>` with `n` written the way [`conn_name`] / [`state_name`] do.
fn numbered<T: FromStr + ToString>(name: &str, prefix: &str) -> Option<T> {
    let n: T = decimal(name.strip_prefix(prefix)?)?;
    (n.to_string().len() + prefix.len() == name.len()).then_some(n)
}

/// Sort descriptors out by name and read the newest usable state.
fn assemble(fds: Vec<(String, OwnedFd)>) -> Received {
    let mut got = Received::default();
    let mut states = Vec::new();
    let mut sockets = BTreeMap::new();
    for (name, fd) in fds {
        if let Some(seq) = numbered::<u64>(&name, STATE_PREFIX) {
            states.push((seq, name, fd));
        } else if let Some(id) = numbered::<u32>(&name, CONN_PREFIX) {
            if let Some(dup) = sockets.insert(id, (name, fd)) {
                got.stale.push(dup);
            }
        } else {
            got.stale.push((name, fd));
        }
    }
    states.sort_by_key(|s| std::cmp::Reverse(s.0));
    got.state_seq = states.first().map(|s| s.0);
    let mut stored = None;
    for (_, name, fd) in states {
        if stored.is_some() {
            got.stale.push((name, fd));
            continue;
        }
        match read_sealed(&fd).and_then(|bytes| decode_state(&bytes)) {
            // Still in the store as `state-<seq>`: the next store replaces it.
            Ok(s) => stored = Some((name, s)),
            Err(why) => {
                let err = FdStoreError::State {
                    name: name.clone(),
                    why,
                };
                got.state_error.get_or_insert(err);
                got.stale.push((name, fd));
            }
        }
    }
    let Some((name, stored)) = stored else {
        got.stale.extend(sockets.into_values());
        return got;
    };
    match stored.checkpoint.as_deref().map(persist::decode) {
        Some(Ok(c)) => got.checkpoint = Some(c),
        Some(Err(why)) => {
            let why = format!("its checkpoint: {why}");
            got.state_error
                .get_or_insert(FdStoreError::State { name, why });
        }
        None => {}
    }
    for info in stored.conns {
        match sockets.remove(&info.id.0) {
            Some((_, fd)) => got.conns.push((info, fd)),
            None => got.missing.push(info),
        }
    }
    got.conns.sort_by_key(|(info, _)| info.id);
    got.stale.extend(sockets.into_values());
    got
}

/// The body of a state memfd.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    #[serde(with = "serde_bytes")]
    checkpoint: Option<Vec<u8>>,
    conns: Vec<ConnInfo>,
}

/// The bytes of a state memfd (layout in the module docs).
pub fn encode_state(
    checkpoint: Option<&OnDisk>,
    conns: &[ConnInfo],
) -> Result<Vec<u8>, FdStoreError> {
    let checkpoint = checkpoint
        .map(|c| {
            let mut file = Vec::new();
            persist::encode_into(c, &mut file).map(|()| file)
        })
        .transpose()
        .map_err(|e| FdStoreError::Encode { why: e.to_string() })?;
    encode_stored(&Stored {
        checkpoint,
        conns: conns.to_vec(),
    })
}

fn encode_stored(stored: &Stored) -> Result<Vec<u8>, FdStoreError> {
    let mut out = STATE_MAGIC.to_vec();
    bincode::serialize_into(&mut out, stored)
        .map_err(|e| FdStoreError::Encode { why: e.to_string() })?;
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn decode_state(bytes: &[u8]) -> Result<Stored, String> {
    if bytes.len() < STATE_MAGIC.len() + 4 || !bytes.starts_with(STATE_MAGIC) {
        return Err("not a stored state (bad magic)".into());
    }
    let (head, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(head).to_le_bytes() != crc {
        return Err("checksum mismatch".into());
    }
    bincode::deserialize(&head[STATE_MAGIC.len()..]).map_err(|e| format!("undecodable: {e}"))
}

/// The whole content of a memfd sealed against change.
fn read_sealed(fd: &OwnedFd) -> Result<Vec<u8>, String> {
    let seals = fcntl(fd, FcntlArg::F_GET_SEALS).map_err(|e| format!("no seals: {e}"))?;
    let needed = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK;
    if !SealFlag::from_bits_truncate(seals).contains(needed) {
        return Err("not sealed against writes".into());
    }
    let file = File::from(fd.try_clone().map_err(|e| e.to_string())?);
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len > MAX_STATE_BYTES {
        return Err(format!("{len} bytes, more than {MAX_STATE_BYTES}"));
    }
    let mut bytes = vec![0; len as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// A memfd holding `bytes`, close-on-exec and sealed: it can no longer be
/// written, grown, shrunk, or sealed differently, by anyone.
pub fn checkpoint_memfd(bytes: &[u8]) -> Result<OwnedFd, FdStoreError> {
    let fail = |step| move |source| FdStoreError::Memfd { step, source };
    let flags = MFdFlags::MFD_ALLOW_SEALING | MFdFlags::MFD_CLOEXEC;
    let fd = memfd_create("handoff-state", flags).map_err(|e| fail("memfd_create")(e.into()))?;
    let mut file = File::from(fd);
    file.write_all(bytes).map_err(fail("write"))?;
    let seals = SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_SEAL;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals)).map_err(|e| fail("F_ADD_SEALS")(e.into()))?;
    Ok(file.into())
}

/// Send `FDSTORE=1` / `FDNAME=<name>` with `fd` attached, one datagram to
/// the notify socket at `notify_socket` (a path, or `@` and an abstract name).
pub fn store(notify_socket: &str, name: &str, fd: BorrowedFd<'_>) -> Result<(), FdStoreError> {
    send(notify_socket, "FDSTORE", name, Some(fd))
}

/// Send `FDSTOREREMOVE=1` / `FDNAME=<name>`: systemd closes every descriptor
/// it keeps under `name`.
pub fn remove(notify_socket: &str, name: &str) -> Result<(), FdStoreError> {
    send(notify_socket, "FDSTOREREMOVE", name, None)
}

fn send(
    path: &str,
    what: &'static str,
    name: &str,
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), FdStoreError> {
    check_name(name).map_err(|why| FdStoreError::BadName {
        name: name.into(),
        why,
    })?;
    let unusable = |source| FdStoreError::NotifySocket {
        path: path.into(),
        source,
    };
    let addr = crate::notify::socket_addr(path).map_err(unusable)?;
    let sock = UnixDatagram::unbound().map_err(unusable)?;
    sock.set_write_timeout(Some(SEND_TIMEOUT))
        .map_err(unusable)?;
    sock.connect_addr(&addr).map_err(unusable)?;
    let message = format!("{what}=1\nFDNAME={name}");
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    let sent = send_with_fds(sock.as_fd(), message.as_bytes(), &fds);
    let whole = sent.and_then(|n| match n == message.len() {
        true => Ok(()),
        false => Err(io::Error::other("datagram cut short")),
    });
    whole.map_err(|source| FdStoreError::Send {
        path: path.into(),
        what,
        name: name.into(),
        source,
    })
}

/// The sending side: stores under this module's names. Each call is one
/// blocking datagram (given up after 2 s); a state also writes a memfd.
#[derive(Debug, Clone)]
pub struct Storer {
    notify_socket: String,
    state_seq: Option<u64>,
}

impl Storer {
    /// Store through `notify_socket`; `state_seq` is the state already in the
    /// store ([`Received::state_seq`]), replaced by the next one.
    pub fn new(notify_socket: impl Into<String>, state_seq: Option<u64>) -> Storer {
        Storer {
            notify_socket: notify_socket.into(),
            state_seq,
        }
    }

    /// Through `$NOTIFY_SOCKET`; `None` without it (not under systemd).
    pub fn from_env(state_seq: Option<u64>) -> Option<Storer> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        Some(Storer::new(path.to_string_lossy(), state_seq))
    }

    /// The generation of the last state stored (or handed back).
    pub fn state_seq(&self) -> Option<u64> {
        self.state_seq
    }

    pub fn store_conn(&self, id: ConnId, fd: BorrowedFd<'_>) -> Result<(), FdStoreError> {
        store(&self.notify_socket, &conn_name(id), fd)
    }

    pub fn remove_conn(&self, id: ConnId) -> Result<(), FdStoreError> {
        remove(&self.notify_socket, &conn_name(id))
    }

    /// Remove any name, e.g. one of [`Received::stale`].
    pub fn remove(&self, name: &str) -> Result<(), FdStoreError> {
        remove(&self.notify_socket, name)
    }

    /// Store the newest checkpoint and the held connections' metadata as a
    /// new `state-<seq>`, then remove the previous one. Nothing changes if the store
    /// fails; if the removal fails, the new state is stored all the same.
    pub fn store_state(
        &mut self,
        checkpoint: Option<&OnDisk>,
        conns: &[ConnInfo],
    ) -> Result<(), FdStoreError> {
        let memfd = checkpoint_memfd(&encode_state(checkpoint, conns)?)?;
        let now = handoff_protocol::monotonic_ns();
        let seq = self.state_seq.map_or(now, |s| now.max(s.saturating_add(1)));
        store(&self.notify_socket, &state_name(seq), memfd.as_fd())?;
        match self.state_seq.replace(seq) {
            Some(old) => remove(&self.notify_socket, &state_name(old)),
            None => Ok(()),
        }
    }
}

mod keeper;
pub use keeper::Keeper;

#[cfg(test)]
mod tests;
