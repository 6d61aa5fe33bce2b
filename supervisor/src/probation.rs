//! Probation: after a committed upgrade the new build is on trial. If it
//! dies within the probation period, the previous build is started in
//! recovery mode with the newest checkpoint and the held sockets — and so
//! that it can read that checkpoint, the new build is asked to write its
//! checkpoints in a schema the previous build reads until probation ends.
//! `supervisorctl rollback` hands over to the previous build on request.

use handoff_protocol::worker::{Hello, ToWorker};
use tracing::{info, warn};

use crate::builds::Build;
use crate::daemon::Daemon;
use crate::proc::{Generation, WorkerProc};

/// The build that served before the last committed upgrade.
#[derive(Debug, Clone)]
pub struct PreviousBuild {
    pub build: Build,
    pub hello: Option<Hello>,
}

/// The new build on trial.
#[derive(Debug, Clone)]
pub struct Probation {
    pub generation: Generation,
    pub until: tokio::time::Instant,
}

/// The newest schema `new` can write that `previous` reads, if `previous`
/// cannot read what `new` writes by default.
pub fn schema_for_previous(previous: &Hello, new: &Hello) -> Option<u32> {
    if previous.reads_schemas.contains(&new.writes_schema) {
        return None;
    }
    new.can_write
        .iter()
        .filter(|s| previous.reads_schemas.contains(s))
        .max()
        .copied()
}

impl Daemon {
    /// Step 6 done: `old` retires, `new` (just told to go) is on probation.
    /// An upgrade to the very same content (same SHA-256) is no new build:
    /// no probation, and `rollback` keeps going to the build that ran
    /// before, by content. Returns whether it was the same build.
    pub(crate) fn begin_probation(
        &mut self,
        old_build: &Build,
        old_hello: Option<Hello>,
        new: &WorkerProc,
    ) -> bool {
        if old_build.sha256 == new.build.sha256 {
            info!(
                sha256 = %new.build.sha256,
                "the same build as the one it replaces: no probation; rollback's target is unchanged"
            );
            return true;
        }
        let previous = PreviousBuild {
            build: old_build.clone(),
            hello: old_hello,
        };
        if let (Some(prev), Some(new_hello)) = (&previous.hello, new.hello()) {
            match schema_for_previous(prev, new_hello) {
                Some(schema) => {
                    info!(
                        schema,
                        "new build checkpoints in the previous build's schema while on probation"
                    );
                    new.send(
                        ToWorker::CheckpointIn {
                            schema: Some(schema),
                        },
                        Vec::new(),
                    );
                }
                None if !prev.reads_schemas.contains(&new_hello.writes_schema) => {
                    warn!("the previous build cannot read any schema the new build writes: a rollback on probation would start it without state");
                }
                None => {}
            }
        }
        self.previous = Some(previous);
        self.probation = Some(Probation {
            generation: new.generation,
            until: tokio::time::Instant::now() + self.cfg.probation,
        });
        false
    }

    /// The probation period passed: the new build is trusted.
    pub(crate) fn end_probation(&mut self) {
        let Some(p) = self.probation.take() else {
            return;
        };
        if let Some(a) = self
            .active
            .as_ref()
            .filter(|a| a.generation == p.generation)
        {
            info!(pid = a.pid, "probation over");
            a.send(ToWorker::CheckpointIn { schema: None }, Vec::new());
        }
    }

    /// `gone` died. If it was on probation, the previous build takes over:
    /// returns true when the recovery will run the previous build.
    pub(crate) fn fall_back_if_on_probation(&mut self, gone: &WorkerProc, status: &str) -> bool {
        let on_probation = self
            .probation
            .as_ref()
            .is_some_and(|p| p.generation == gone.generation);
        let Some(previous) = self.previous.clone().filter(|_| on_probation) else {
            return false;
        };
        self.probation = None;
        let notice = format!(
            "pid {} of {} died on probation ({status}); rolled back to the previous build {}",
            gone.pid,
            gone.build.source.display(),
            previous.build.source.display()
        );
        warn!("{notice}");
        self.history.push(notice.clone());
        self.notice = Some(notice);
        self.current = Some(previous.build);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_protocol::PROTOCOL_VERSION;

    fn hello(writes: u32, can: &[u32], reads: &[u32]) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            pid: 1,
            build_id: String::new(),
            app: "a".into(),
            writes_schema: writes,
            can_write: can.to_vec(),
            reads_schemas: reads.to_vec(),
        }
    }

    #[test]
    fn a_v2_build_checkpoints_in_v1_for_a_v1_predecessor() {
        let v1 = hello(1, &[1], &[1]);
        let v2 = hello(2, &[1, 2], &[1, 2]);
        assert_eq!(schema_for_previous(&v1, &v2), Some(1));
        assert_eq!(schema_for_previous(&v2, &v1), None, "v2 reads v1 already");
        assert_eq!(schema_for_previous(&v1, &v1), None);
    }
}
