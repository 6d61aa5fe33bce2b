//! Probation: after a committed upgrade the new build is on trial. If it
//! dies within the probation period, the previous build is started in
//! recovery mode with the newest checkpoint and the held sockets — and so
//! that it can read that checkpoint, the new build is asked to write its
//! checkpoints in a schema the previous build reads until probation ends.
//! `supervisorctl rollback` hands over to the previous build on request.
//!
//! [`Probation`] is the state (the build to go back to, and the trial) with
//! pure moves that say what to do; the daemon's side, at the end, carries
//! them out.

use handoff_protocol::worker::{Hello, ToWorker};
use tokio::time::Instant;
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

/// Where the running build stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Standing {
    /// The first build, or one whose probation passed.
    #[default]
    Trusted,
    /// Worker `generation` of a new build is on trial until `until`.
    OnTrial {
        generation: Generation,
        until: Instant,
    },
}

/// The build to go back to, and whether the running one is on trial.
#[derive(Debug, Default)]
pub struct Probation {
    /// `rollback`'s target, and probation's fallback.
    pub previous: Option<PreviousBuild>,
    pub standing: Standing,
}

/// What a commit means for probation.
#[derive(Debug, PartialEq, Eq)]
pub enum OnCommit {
    /// The same content as the build it replaces: no trial, and the
    /// rollback target is unchanged.
    SameBuild,
    /// On trial. `checkpoint_in`: the schema to checkpoint in meanwhile so
    /// the previous build can read it; `unreadable`: the previous build
    /// reads nothing the new one writes (a fallback would start without
    /// state).
    OnTrial {
        checkpoint_in: Option<u32>,
        unreadable: bool,
    },
}

impl Probation {
    /// When the trial ends, if one runs.
    pub fn until(&self) -> Option<Instant> {
        match self.standing {
            Standing::OnTrial { until, .. } => Some(until),
            Standing::Trusted => None,
        }
    }

    /// An upgrade from `old` to worker `generation` of `new_build` committed
    /// at `now`.
    pub fn on_commit(
        &mut self,
        old: PreviousBuild,
        new_build: &Build,
        new_hello: Option<&Hello>,
        generation: Generation,
        until: Instant,
    ) -> OnCommit {
        if old.build.sha256 == new_build.sha256 {
            return OnCommit::SameBuild;
        }
        let (checkpoint_in, unreadable) = match (&old.hello, new_hello) {
            (Some(prev), Some(new)) => {
                let schema = schema_for_previous(prev, new);
                let readable = schema.is_some() || prev.reads_schemas.contains(&new.writes_schema);
                (schema, !readable)
            }
            _ => (None, false),
        };
        self.previous = Some(old);
        self.standing = Standing::OnTrial { generation, until };
        OnCommit::OnTrial {
            checkpoint_in,
            unreadable,
        }
    }

    /// The trial's deadline passed: the worker whose trial ended, which
    /// goes back to its own schema.
    pub fn on_deadline(&mut self) -> Option<Generation> {
        match std::mem::take(&mut self.standing) {
            Standing::OnTrial { generation, .. } => Some(generation),
            Standing::Trusted => None,
        }
    }

    /// Worker `generation` died: the build to fall back to, if it was on
    /// trial. The previous build stays the rollback target.
    pub fn on_death(&mut self, generation: Generation) -> Option<PreviousBuild> {
        match self.standing {
            Standing::OnTrial { generation: g, .. } if g == generation => {
                self.standing = Standing::Trusted;
                self.previous.clone()
            }
            _ => None,
        }
    }
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
        let old = PreviousBuild {
            build: old_build.clone(),
            hello: old_hello,
        };
        let until = Instant::now() + self.cfg.probation;
        match self
            .probation
            .on_commit(old, &new.build, new.hello(), new.generation, until)
        {
            OnCommit::SameBuild => {
                info!(
                    sha256 = %new.build.sha256,
                    "the same build as the one it replaces: no probation; rollback's target is unchanged"
                );
                true
            }
            OnCommit::OnTrial {
                checkpoint_in,
                unreadable,
            } => {
                if let Some(schema) = checkpoint_in {
                    info!(
                        schema,
                        "new build checkpoints in the previous build's schema while on probation"
                    );
                    let schema = Some(schema);
                    new.send(ToWorker::CheckpointIn { schema }, Vec::new());
                }
                if unreadable {
                    warn!("the previous build cannot read any schema the new build writes: a rollback on probation would start it without state");
                }
                false
            }
        }
    }

    /// The probation period passed: the new build is trusted.
    pub(crate) fn end_probation(&mut self) {
        let Some(generation) = self.probation.on_deadline() else {
            return;
        };
        if let Some(a) = self.active.as_ref().filter(|a| a.generation == generation) {
            info!(pid = a.pid, "probation over");
            a.send(ToWorker::CheckpointIn { schema: None }, Vec::new());
        }
    }

    /// `gone` died. If it was on probation, the previous build takes over:
    /// returns true when the recovery will run the previous build.
    pub(crate) fn fall_back_if_on_probation(&mut self, gone: &WorkerProc, status: &str) -> bool {
        let Some(previous) = self.probation.on_death(gone.generation) else {
            return false;
        };
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
            precopy: Default::default(),
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

    fn build(sha: &str) -> Build {
        Build {
            source: format!("/deploy/{sha}").into(),
            exec: format!("/state/builds/{sha}").into(),
            sha256: sha.into(),
            admitted: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    fn from(sha: &str, hello: Hello) -> PreviousBuild {
        PreviousBuild {
            build: build(sha),
            hello: Some(hello),
        }
    }

    #[test]
    fn a_new_build_is_on_trial_until_its_deadline_then_trusted() {
        let v1 = hello(1, &[1], &[1]);
        let v2 = hello(2, &[1, 2], &[1, 2]);
        let until = Instant::now() + std::time::Duration::from_secs(30);
        let mut p = Probation::default();
        assert_eq!(p.until(), None);
        let said = p.on_commit(from("aaa", v1), &build("bbb"), Some(&v2), 7, until);
        assert_eq!(
            said,
            OnCommit::OnTrial {
                checkpoint_in: Some(1),
                unreadable: false
            },
            "v2 writes v1 for the build it may fall back to"
        );
        assert_eq!(p.until(), Some(until));
        assert!(
            p.on_death(6).is_none(),
            "another worker's death is no fallback"
        );
        assert_eq!(p.on_deadline(), Some(7));
        assert_eq!(p.standing, Standing::Trusted);
        assert!(
            p.on_death(7).is_none(),
            "trusted now: a crash is recovered as is"
        );
        assert_eq!(
            p.previous.as_ref().unwrap().build.sha256,
            "aaa",
            "still rollback's target"
        );
    }

    #[test]
    fn a_death_on_trial_falls_back_to_the_previous_build_once() {
        let v1 = hello(1, &[1], &[1]);
        let mut p = Probation::default();
        let until = Instant::now();
        p.on_commit(from("aaa", v1.clone()), &build("bbb"), Some(&v1), 7, until);
        let back = p.on_death(7).expect("falls back");
        assert_eq!(back.build.sha256, "aaa");
        assert_eq!(p.standing, Standing::Trusted);
        assert!(p.on_death(7).is_none());
        assert_eq!(p.on_deadline(), None, "the trial is over");
    }

    #[test]
    fn the_same_build_is_no_trial_and_keeps_the_rollback_target() {
        let v1 = hello(1, &[1], &[1]);
        let mut p = Probation::default();
        let until = Instant::now();
        p.on_commit(from("aaa", v1.clone()), &build("bbb"), Some(&v1), 7, until);
        p.on_deadline();
        let said = p.on_commit(from("bbb", v1.clone()), &build("bbb"), Some(&v1), 8, until);
        assert_eq!(said, OnCommit::SameBuild);
        assert_eq!(p.standing, Standing::Trusted);
        assert_eq!(p.previous.unwrap().build.sha256, "aaa");
    }

    #[test]
    fn a_previous_build_that_reads_nothing_new_is_said() {
        let v1 = hello(1, &[1], &[1]);
        let v3 = hello(3, &[3], &[3]);
        let mut p = Probation::default();
        let said = p.on_commit(from("aaa", v1), &build("ccc"), Some(&v3), 2, Instant::now());
        assert_eq!(
            said,
            OnCommit::OnTrial {
                checkpoint_in: None,
                unreadable: true
            }
        );
    }
}
