//! A snapshot serialized from a copy-on-write image of the process, as Redis
//! writes its RDB file from a `fork`: the worker's event loop stops only for
//! the `fork(2)` (the page tables are copied, not the memory), and the copy,
//! a child that never serves, runs the app's `snapshot()` and writes its
//! bytes into a memfd, while the parent goes on reading the market. The
//! parent hands the sealed memfd to the supervisor over the socketpair
//! (`SCM_RIGHTS`), which reads it from there: the bytes never cross the
//! event loop of the serving worker.
//!
//! The image's layout: the snapshot bytes, then their CRC-32 (IEEE,
//! little-endian): written by the child, checked nowhere on the serving
//! path, carried into the snapshot envelope by the reader.
//!
//! The child:
//! - dies with its parent (`PR_SET_PDEATHSIG`), so a SIGKILLed worker
//!   leaves no writer behind;
//! - closes every descriptor but stdio and the memfd at once, so it holds
//!   neither a connection nor the worker's `serving.lock`;
//! - runs under `SCHED_IDLE`, so that it takes no core the serving parent
//!   wants;
//! - is named [`IMAGE_COMM`] (`/proc/<pid>/comm`), so that tools and tests
//!   counting the worker processes of a state directory can tell it apart
//!   (it inherits the worker's environment);
//! - seals the memfd itself once written: `F_SEAL_WRITE` may wait in the
//!   kernel (for the last pages written to reach the LRU, up to about
//!   150 ms under load), and that wait belongs in the child, never in the
//!   serving parent, which only checks the seals are there;
//! - runs only the closure it was given, and ends with `_exit` (no
//!   destructor, no atexit handler, no flush of buffers it shares with the
//!   parent), its exit code saying how it went.
//!
//! After a `fork` of a process that has other threads only the forking
//! thread exists in the child: a lock another thread held at that instant
//! stays held. glibc's allocator takes its locks around the `fork`, so
//! allocating is safe; the closure must not take a lock of its own that
//! another thread may hold (log, say). A child that hangs anyway is the
//! caller's to kill (dropping the [`Writer`] does it).
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use bytes::{Bytes, BytesMut};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use thiserror::Error;

use crate::pidfd::PidFd;

/// The child's name in `/proc/<pid>/comm` (at most 15 bytes).
pub const IMAGE_COMM: &str = "handoff-image";

/// The seals an image carries once written: its size and bytes are fixed.
fn sealed() -> SealFlag {
    SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL
}

/// Exit codes of the child.
const EXIT_OK: i32 = 0;
const EXIT_CLOSURE_FAILED: i32 = 3;
const EXIT_WRITE_FAILED: i32 = 4;
const EXIT_PANICKED: i32 = 5;
const EXIT_ORPHANED: i32 = 6;
const EXIT_SEAL_FAILED: i32 = 7;

/// Why an image could not be made or read.
#[derive(Debug, Error)]
pub enum ImageError {
    #[error("cannot create the image's memfd: {0}")]
    Memfd(#[source] nix::Error),
    #[error("cannot fork the image writer: {0}")]
    Fork(#[source] nix::Error),
    #[error("cannot watch the image writer (pid {pid}): {source}")]
    Watch {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("the image writer (pid {pid}) failed: {how}")]
    Child { pid: u32, how: String },
    #[error("the image descriptor is not a memfd (seals unavailable: {0})")]
    NotMemfd(#[source] nix::Error),
    #[error("the image is not sealed against writes (seals {seals:#x})")]
    NotSealed { seals: i32 },
    #[error("the image holds {len} bytes: shorter than its checksum")]
    TooShort { len: u64 },
    #[error("the image holds {len} bytes, over the limit of {max}")]
    TooLarge { len: u64, max: u64 },
    #[error("the image holds {holds} bytes, its message said {said}")]
    Length { said: u64, holds: u64 },
    #[error("cannot read the image: {0}")]
    Io(#[from] io::Error),
}

/// A child writing an image; dropping it kills and reaps the child.
#[derive(Debug)]
pub struct Writer {
    pid: Pid,
    /// `None` once reaped.
    watch: Option<PidFd>,
    memfd: Option<OwnedFd>,
    /// Reaped, having written (and sealed) its image: it is there to take.
    written: bool,
}

/// A finished image: a sealed memfd to send, and the size of the bytes it
/// holds (the checksum excluded).
#[derive(Debug)]
pub struct Image {
    pub fd: OwnedFd,
    pub len: u64,
}

/// Fork a child that calls `make` and writes what it returns, followed by
/// its CRC-32, into a new memfd. Returns at once in the parent; the child
/// never returns. Must be called inside a tokio runtime (the child is
/// watched through a pidfd).
pub fn fork_writer<F>(make: F) -> Result<Writer, ImageError>
where
    F: FnOnce() -> Result<Vec<u8>, String>,
{
    let name: &CStr = c"handoff-image";
    let memfd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
        .map_err(ImageError::Memfd)?;
    let parent = nix::unistd::getpid();
    // SAFETY: fork() is unsafe in a process with other threads because the
    // child holds only the forking thread, and locks the others held stay
    // held. The child below runs only `make` (the caller's promise: no lock
    // another thread may hold; glibc's allocator is fork-safe) and raw
    // system calls, and leaves by `_exit`, never returning into the
    // parent's runtime.
    match unsafe { nix::unistd::fork() }.map_err(ImageError::Fork)? {
        ForkResult::Child => child(parent, memfd.as_raw_fd(), make),
        ForkResult::Parent { child } => {
            let pid = child.as_raw() as u32;
            match PidFd::open(pid) {
                Ok(watch) => Ok(Writer {
                    pid: child,
                    watch: Some(watch),
                    memfd: Some(memfd),
                    written: false,
                }),
                Err(source) => {
                    // Our own unreaped child: its pid cannot have been reused.
                    let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    Err(ImageError::Watch { pid, source })
                }
            }
        }
    }
}

/// The child's whole life.
fn child<F>(parent: Pid, memfd: i32, make: F) -> !
where
    F: FnOnce() -> Result<Vec<u8>, String>,
{
    // Die with the parent; if it died before this line, nobody wants the
    // image.
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || nix::unistd::getppid() != parent
    {
        exit_now(EXIT_ORPHANED);
    }
    let _ = nix::sys::prctl::set_name(c"handoff-image");
    idle_priority();
    close_all_but(memfd);
    let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(make)) {
        Ok(Ok(bytes)) => {
            // SAFETY: `memfd` is this process's own open descriptor (the
            // child's copy of the parent's), and nothing else in the child
            // uses it; the File is never dropped (the process `_exit`s).
            let mut out = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(memfd) });
            let crc = crc32fast::hash(&bytes);
            match out
                .write_all(&bytes)
                .and_then(|()| out.write_all(&crc.to_le_bytes()))
            {
                Ok(()) => match seal_waiting(out.as_fd()) {
                    Ok(()) => EXIT_OK,
                    Err(_) => EXIT_SEAL_FAILED,
                },
                Err(_) => EXIT_WRITE_FAILED,
            }
        }
        Ok(Err(_)) => EXIT_CLOSURE_FAILED,
        Err(_) => EXIT_PANICKED,
    };
    exit_now(code)
}

/// End the child: no destructor, no atexit handler, no flush.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) ends the process with `code`; it takes no pointer
    // and runs nothing of the parent's (the point of using it here).
    unsafe { libc::_exit(code) }
}

/// Run the calling thread only on a core nothing else wants
/// (`SCHED_IDLE`) from now on: the serving parent, the feed and the
/// supervisor come first, so on a busy machine the image takes longer
/// instead of taking the parent's core. Also for a worker that has handed
/// over, for its teardown (see `handoff_worker`'s freeze). An unprivileged
/// thread cannot go back.
pub fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler(0, …) changes the calling thread's own
    // policy; `param` is a valid sched_param that outlives the call.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
}

/// Run `work` on a thread of its own under `SCHED_IDLE` (see the image
/// child) and wait for it: for bulk work of a process that must not take
/// a core from a serving one (a successor restoring a pre-copy's state).
/// The calling thread keeps its own policy (an unprivileged thread could
/// not return from `SCHED_IDLE`).
pub fn run_idle<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            idle_priority();
            work()
        });
        match worker.join() {
            Ok(out) => out,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Close every descriptor above stderr except `keep`.
fn close_all_but(keep: i32) {
    let ranges = [(3u32, keep as u32 - 1), (keep as u32 + 1, u32::MAX)];
    for (lo, hi) in ranges {
        if lo <= hi {
            // SAFETY: close_range(2) takes two descriptor numbers and flags
            // and touches no memory; in the child nothing uses the
            // descriptors it closes (the parent's runtime never runs here).
            unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0 as libc::c_uint) };
        }
    }
}

impl Writer {
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Wait for the child to finish, reap it and take its image, checking
    /// the seals the child put on it. Cancel-safe: dropped before it
    /// resolves, the child is killed.
    pub async fn finish(&mut self) -> Result<Image, ImageError> {
        if !self.written {
            self.reap().await?;
        }
        let memfd = self.memfd.take().ok_or_else(|| ImageError::Child {
            pid: self.pid(),
            how: "finished already".into(),
        })?;
        // The child sealed it (F_GET_SEALS does not wait).
        check_sealed(&memfd, sealed())?;
        let len = File::from(memfd.try_clone()?).metadata()?.len();
        let len = len.checked_sub(4).ok_or(ImageError::TooShort { len })?;
        Ok(Image { fd: memfd, len })
    }

    /// Wait for the child to exit and reap it; an error unless it wrote
    /// its image. Cancel-safe until the reap, which does not wait.
    async fn reap(&mut self) -> Result<(), ImageError> {
        let pid = self.pid();
        if let Some(w) = &self.watch {
            w.exited()
                .await
                .map_err(|source| ImageError::Watch { pid, source })?;
        }
        self.watch = None;
        let how = match waitpid(self.pid, None) {
            Ok(WaitStatus::Exited(_, EXIT_OK)) => {
                self.written = true;
                return Ok(());
            }
            Ok(WaitStatus::Exited(_, code)) => match code {
                EXIT_CLOSURE_FAILED => "the snapshot failed".to_string(),
                EXIT_WRITE_FAILED => "the memfd write failed".to_string(),
                EXIT_PANICKED => "the snapshot panicked".to_string(),
                EXIT_ORPHANED => "its parent was gone".to_string(),
                EXIT_SEAL_FAILED => "the seal failed".to_string(),
                c => format!("exit code {c}"),
            },
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("waitpid: {e}"),
        };
        self.memfd = None;
        Err(ImageError::Child { pid, how })
    }
}

/// How many times the child tries a seal refused as busy again, the first
/// after [`SEAL_RETRY_FIRST`], each wait twice the last (about a second in
/// all). The kernel refuses `F_SEAL_WRITE` while a page of the file has a
/// reference it cannot account for (the pages written last, on their way
/// to the LRU in another CPU's batch: seen under load as `EBUSY`), after
/// waiting for them up to about 150 ms itself. Only the child waits.
const SEAL_RETRIES: u32 = 7;
/// The first wait of [`SEAL_RETRIES`].
const SEAL_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(8);

/// In the child: seal the written image, waiting as long as it takes.
fn seal_waiting(memfd: std::os::fd::BorrowedFd<'_>) -> nix::Result<()> {
    let mut wait = SEAL_RETRY_FIRST;
    for _ in 0..SEAL_RETRIES {
        match fcntl(memfd, FcntlArg::F_ADD_SEALS(sealed())) {
            Err(nix::errno::Errno::EBUSY) => {
                std::thread::sleep(wait);
                wait *= 2;
            }
            done => return done.map(drop),
        }
    }
    fcntl(memfd, FcntlArg::F_ADD_SEALS(sealed())).map(drop)
}

/// Whether `fd` carries the seals `need`, checked without waiting.
fn check_sealed(fd: impl AsFd, need: SealFlag) -> Result<(), ImageError> {
    let seals = fcntl(fd.as_fd(), FcntlArg::F_GET_SEALS).map_err(ImageError::NotMemfd)?;
    let need = need.bits();
    if seals & need != need {
        return Err(ImageError::NotSealed { seals });
    }
    Ok(())
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(w) = self.watch.take() {
            let _ = w.signal(Signal::SIGKILL);
            // Killed: the wait is for a process that is already dying.
            let _ = waitpid(self.pid, None);
        }
    }
}

/// Read an image received from a worker: a sealed memfd of at most `max`
/// snapshot bytes. Returns the bytes and the checksum the writer computed
/// (checked by whoever restores them, as every snapshot's).
pub fn read(fd: impl AsFd, max: u64) -> Result<(Bytes, u32), ImageError> {
    let need = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE;
    check_sealed(fd.as_fd(), need)?;
    let mut file = File::from(fd.as_fd().try_clone_to_owned()?);
    let total = file.metadata()?.len();
    let len = total
        .checked_sub(4)
        .ok_or(ImageError::TooShort { len: total })?;
    if len > max {
        return Err(ImageError::TooLarge { len, max });
    }
    // The descriptor's offset is shared with the sender's copy: read from
    // the start whatever it says.
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(0))?;
    let mut buf = BytesMut::zeroed(total as usize);
    file.read_exact(&mut buf)?;
    let crc = buf.split_off(len as usize);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    Ok((buf.freeze(), crc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn the_child_writes_what_the_closure_made_and_the_reader_gets_it_whole() {
        let _g = crate::FORK_GUARD.lock();
        let rt = rt();
        let state: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let img = rt.block_on(async {
            let mut w = fork_writer(|| Ok(state.clone())).unwrap();
            w.finish().await.unwrap()
        });
        assert_eq!(img.len, state.len() as u64);
        let (bytes, crc) = read(&img.fd, 1 << 30).unwrap();
        assert_eq!(&bytes[..], &state[..]);
        assert_eq!(crc, crc32fast::hash(&state));
        // Sealed: nobody can change it under the reader.
        let mut f = File::from(img.fd.try_clone().unwrap());
        assert!(f.write_all(b"x").is_err());
    }

    #[test]
    fn the_child_sees_the_state_as_it_was_at_the_fork() {
        let _g = crate::FORK_GUARD.lock();
        let rt = rt();
        let mut state = vec![1u8; 4096 * 64];
        let img = rt.block_on(async {
            let mut w = fork_writer(|| Ok(state.clone())).unwrap();
            // The parent writes on after the fork; the child must not see it.
            state.iter_mut().for_each(|b| *b = 2);
            w.finish().await.unwrap()
        });
        let (bytes, _) = read(&img.fd, 1 << 30).unwrap();
        assert!(bytes.iter().all(|&b| b == 1));
        assert!(state.iter().all(|&b| b == 2));
    }

    #[test]
    fn a_failing_or_panicking_closure_is_an_error_naming_it() {
        let _g = crate::FORK_GUARD.lock();
        let rt = rt();
        rt.block_on(async {
            let mut w = fork_writer(|| Err("no state".into())).unwrap();
            let e = w.finish().await.unwrap_err();
            assert!(e.to_string().contains("the snapshot failed"), "{e}");
            let mut w = fork_writer(|| panic!("boom")).unwrap();
            let e = w.finish().await.unwrap_err();
            assert!(e.to_string().contains("panicked"), "{e}");
        });
    }

    #[test]
    fn a_dropped_writer_kills_its_child() {
        let _g = crate::FORK_GUARD.lock();
        let rt = rt();
        rt.block_on(async {
            let w = fork_writer(|| loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            })
            .unwrap();
            let pid = w.pid();
            // Named as soon as it runs (waited for, not assumed).
            let comm = || std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while comm().trim() != IMAGE_COMM && std::time::Instant::now() < until {
                std::thread::yield_now();
            }
            assert_eq!(comm().trim(), IMAGE_COMM);
            drop(w);
            // Reaped: no such process any more.
            assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        });
    }

    #[test]
    fn the_reader_refuses_what_is_not_a_sealed_image() {
        let file = tempfile::tempfile().unwrap();
        assert!(matches!(read(&file, 1 << 20), Err(ImageError::NotMemfd(_))));
        let unsealed =
            memfd_create(c"t", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
        assert!(matches!(
            read(&unsealed, 1 << 20),
            Err(ImageError::NotSealed { .. })
        ));
        let mut f = File::from(unsealed.try_clone().unwrap());
        f.write_all(&[0u8; 100]).unwrap();
        fcntl(&unsealed, FcntlArg::F_ADD_SEALS(sealed())).unwrap();
        assert!(matches!(
            read(&unsealed, 10),
            Err(ImageError::TooLarge { len: 96, max: 10 })
        ));
        let short =
            memfd_create(c"t", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
        File::from(short.try_clone().unwrap())
            .write_all(&[1, 2])
            .unwrap();
        fcntl(&short, FcntlArg::F_ADD_SEALS(sealed())).unwrap();
        assert!(matches!(
            read(&short, 10),
            Err(ImageError::TooShort { len: 2 })
        ));
    }
}
