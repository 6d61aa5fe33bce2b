//! `status`: the daemon's state as one report.

use handoff_protocol::ctl::{
    CheckpointStatus, ConnStatus, HandoffStats, StatusReport, WorkerStatus,
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
                restarts: self.restarts,
                probation_ms_left: self
                    .probation
                    .as_ref()
                    .filter(|p| p.generation == a.generation)
                    .map(|p| {
                        p.until
                            .saturating_duration_since(tokio::time::Instant::now())
                            .as_millis() as u64
                    }),
                notice: self.notice.clone(),
            },
            None => WorkerStatus {
                pid: None,
                generation: 0,
                state: "down".into(),
                build_id: None,
                binary: self.cfg.worker.display().to_string(),
                sha256: None,
                uptime_ms: 0,
                restarts: self.restarts,
                probation_ms_left: None,
                notice: self.notice.clone(),
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
        });
        let handoffs = HandoffStats {
            completed: self.stats.completed,
            failed: self.stats.failed,
            in_progress: self.phase.upgrade().map(|_| self.phase.name().to_string()),
            last: self.stats.last.clone(),
        };
        StatusReport {
            supervisor_pid: std::process::id(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            worker,
            connections,
            checkpoint,
            handoffs,
        }
    }
}
