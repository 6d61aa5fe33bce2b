//! What the kernel says about a cluster's processes: which workers of its
//! state directory are alive (whoever supervises them, if anyone), and which
//! hold `serving.lock`. Tests assert "one worker serves" from these, not
//! from what the supervisor reports.

use crate::cluster::Cluster;

impl Cluster {
    /// Every live worker process of this cluster's state directory (found
    /// by the `HANDOFF_STATE_DIR` its supervisor gave it), whoever supervises
    /// it, if anyone.
    pub fn worker_processes(&self) -> Vec<u32> {
        let want = format!("HANDOFF_STATE_DIR={}", self.state_dir().display());
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = procs
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| process_alive(*pid))
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()))
            })
            .collect();
        // A checkpoint's copy-on-write writer (`handoff_protocol::image`) is
        // a fork of a worker, with its environment, that holds no connection
        // and no lock and never serves: named so once it runs, and a child
        // of a worker from its first instant.
        let all = pids.clone();
        pids.retain(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            comm.trim() != handoff_protocol::image::IMAGE_COMM
                && !parent_of(*pid).is_some_and(|pp| all.contains(&pp))
        });
        pids.sort_unstable();
        pids
    }

    /// Live checkpoint writers (`handoff_protocol::image`) of this cluster:
    /// processes named `handoff-image` with its state directory in their
    /// environment.
    pub fn image_writers(&self) -> Vec<u32> {
        let want = format!("HANDOFF_STATE_DIR={}", self.state_dir().display());
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        procs
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| process_alive(*pid))
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == handoff_protocol::image::IMAGE_COMM)
            })
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()))
            })
            .collect()
    }

    /// The processes holding `serving.lock` (from `/proc/locks`): the
    /// workers that may serve. Never more than one.
    pub fn serving_lock_holders(&self) -> Vec<u32> {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(self.state_dir().join("serving.lock")) else {
            return Vec::new();
        };
        let inode = format!(":{}", meta.ino());
        let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
        // "1: FLOCK  ADVISORY  WRITE 1234 00:2f:5678 0 EOF"
        let mut pids: Vec<u32> = locks
            .lines()
            .filter(|l| !l.contains("->"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(1) == Some(&"FLOCK") && f.get(5).is_some_and(|d| d.ends_with(&inode)))
                    .then(|| f.get(4)?.parse().ok())
                    .flatten()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

/// The parent of `pid` (field 4 of `/proc/<pid>/stat`).
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Whether `pid` is a live process (a zombie is not).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}
