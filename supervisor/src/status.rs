//! `status`: the daemon's state as one report.

use handoff_protocol::ctl::{
    CheckpointStatus, ConnStatus, HandoffStats, StatusReport, SupervisorStatus, WorkerStatus,
};

use std::os::fd::AsFd;

use handoff_protocol::worker::ConnKind;

use crate::daemon::Daemon;

impl Daemon {
    pub(crate) fn status(&self) -> StatusReport {
        let worker = match &self.active {
            Some(a) => WorkerStatus {
                pid: Some(a.pid),
                generation: a.generation,
                state: a.state_name().to_string(),
                build_id: a.hello().map(|h| h.build_id.clone()),
                binary: a.build.source.display().to_string(),
                sha256: Some(a.build.sha256.clone()),
                uptime_ms: a.started.elapsed().as_millis() as u64,
                restarts: self.recovery.restarts,
                adopted: a.adopted.is_some(),
                probation_ms_left: match self.probation.standing {
                    crate::probation::Standing::OnTrial { generation, until }
                        if generation == a.generation =>
                    {
                        Some(
                            until
                                .saturating_duration_since(tokio::time::Instant::now())
                                .as_millis() as u64,
                        )
                    }
                    _ => None,
                },
                notice: self.notice.clone(),
                last_exit: self.last_exit.clone(),
                build_age_ms: a
                    .build
                    .admitted
                    .elapsed()
                    .ok()
                    .map(|d| d.as_millis() as u64),
            },
            None => WorkerStatus {
                pid: None,
                generation: 0,
                state: "down".into(),
                build_id: None,
                binary: self.cfg.worker.display().to_string(),
                sha256: None,
                uptime_ms: 0,
                restarts: self.recovery.restarts,
                probation_ms_left: None,
                adopted: false,
                notice: self.notice.clone(),
                last_exit: self.last_exit.clone(),
                build_age_ms: None,
            },
        };
        let connections = self
            .held
            .iter()
            .map(|h| ConnStatus {
                id: h.info.id.0,
                name: h.info.name.clone(),
                url: h.info.url.clone(),
                peer: h.info.peer.clone(),
                tls: (h.info.kind == ConnKind::WebSocketTls).then(|| {
                    match handoff_protocol::ktls::tcp_ulp(h.fd.as_fd()) {
                        Ok(ulp) if ulp == "tls" => "kernel".to_string(),
                        Ok(_) => "user-space".to_string(),
                        Err(e) => format!("unknown ({e})"),
                    }
                }),
            })
            .collect();
        let checkpoint = self.checkpoint.as_ref().map(|c| CheckpointStatus {
            age_ms: c.at.elapsed().as_millis() as u64,
            bytes: c.snapshot.bytes.len() as u64,
            schema: c.snapshot.schema,
            summary: c.summary.clone(),
            off_loop: c.taken == crate::checkpoints::Taken::ByChild,
        });
        let handoffs = HandoffStats {
            completed: self.stats.completed,
            failed: self.stats.failed,
            in_progress: self
                .handoff
                .up
                .as_ref()
                .map(|_| self.handoff.phase.name().to_string()),
            last: self.stats.last.clone(),
        };
        let up = self.started.elapsed().as_millis() as u64;
        StatusReport {
            supervisor_pid: std::process::id(),
            uptime_ms: up,
            supervisor: SupervisorStatus {
                pid: std::process::id(),
                binary: self.image.binary.display().to_string(),
                sha256: self.image.sha256.get().cloned(),
                started_ms_ago: up,
                uptime_ms: up,
            },
            worker,
            connections,
            checkpoint,
            handoffs,
        }
    }
}

/// The supervisor's own executable, for `status`.
#[derive(Debug, Clone)]
pub struct SelfImage {
    pub binary: std::path::PathBuf,
    /// Filled in by a background task at start (hashing takes a moment).
    pub sha256: std::sync::Arc<std::sync::OnceLock<String>>,
}

impl SelfImage {
    /// This process's executable; its hash is computed off the daemon task.
    pub fn of_this_process() -> SelfImage {
        let binary = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
        let sha256 = std::sync::Arc::new(std::sync::OnceLock::new());
        let (cell, exe) = (sha256.clone(), binary.clone());
        tokio::task::spawn_blocking(move || {
            // /proc/self/exe: the file that runs, even if the path was
            // replaced since.
            match crate::builds::sha256_file(std::path::Path::new("/proc/self/exe")) {
                Ok(h) => {
                    let _ = cell.set(h);
                }
                Err(e) => {
                    tracing::warn!(binary = %exe.display(), error = %e, "cannot hash the supervisor's own binary")
                }
            }
        });
        SelfImage { binary, sha256 }
    }
}
