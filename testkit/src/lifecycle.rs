//! The supervisor's own life in a cluster: killed (alone, or with its whole
//! process group as systemd's `KillMode=mixed` does), started again (with
//! extra flags, or with descriptors handed over the way systemd's file
//! descriptor store does), and a second supervisor run beside it.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::cluster::{spawn_supervisor, Cluster};
use crate::{wait_for, TestkitError};

impl Cluster {
    /// The cluster's supervisor flags with `extra` before the `--` that
    /// starts the worker's: added, or (`replace`) taking the place of a
    /// flag's value the cluster sets already (`--socket`, say), as pairs.
    fn args_with(&self, extra: &[&str], replace: bool) -> Vec<std::ffi::OsString> {
        let split = self
            .supervisor_args
            .iter()
            .position(|a| a == "--")
            .unwrap_or(self.supervisor_args.len());
        let mut args: Vec<std::ffi::OsString> = self.supervisor_args[..split].to_vec();
        for pair in extra.chunks(2) {
            match args.iter().position(|a| a == pair[0]) {
                Some(i) if replace && pair.len() == 2 && i + 1 < args.len() => {
                    args[i + 1] = pair[1].into()
                }
                _ => args.extend(pair.iter().map(Into::into)),
            }
        }
        args.extend(self.supervisor_args[split..].iter().cloned());
        args
    }

    /// Start the supervisor again (after [`Cluster::stop`]) with the same
    /// flags and state directory; waits until its worker serves.
    pub fn restart_supervisor(&mut self) -> Result<Value, TestkitError> {
        self.restart_supervisor_with(&[])
    }

    /// [`Cluster::restart_supervisor`] with `extra` supervisor flags.
    pub fn restart_supervisor_with(&mut self, extra: &[&str]) -> Result<Value, TestkitError> {
        let args = self.args_with(extra, false);
        let child = spawn_supervisor(&self.bins.supervisor, &args, &self.env, self.quiet)?;
        self.groups.push(child.id());
        self.supervisor = Some(child);
        self.wait_serving(Duration::from_secs(30))
    }

    /// Leave `key` out of the environment of supervisors started from now on
    /// (a fault hook meant for the first one only, say).
    pub fn forget_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    /// `kill -9` the supervisor and every worker it started (its process
    /// group), as systemd's `KillMode=mixed` does once the main process is
    /// gone; reap the supervisor and wait until no worker process is left.
    pub fn kill_unit(&mut self) -> Result<(), TestkitError> {
        let pid = self.supervisor.as_ref().map(|c| c.id()).unwrap_or(0);
        killpg(Pid::from_raw(pid as i32), Signal::SIGKILL)
            .map_err(|e| TestkitError::Protocol(format!("killpg {pid}: {e}")))?;
        self.wait_exit()?;
        wait_for("the unit's workers to die", Duration::from_secs(10), || {
            Ok(self.worker_processes().is_empty().then_some(()))
        })
    }

    /// Start the supervisor again the way systemd restarts a unit with a
    /// file descriptor store: `fds` as descriptors 3, 4, …, named in
    /// `LISTEN_FDNAMES`, with `LISTEN_FDS` and `LISTEN_PID` (set by a shell
    /// that then execs the supervisor, so the pid is its own). Waits until
    /// its worker serves.
    pub fn restart_supervisor_with_fds(
        &mut self,
        fds: Vec<(String, std::os::fd::OwnedFd)>,
    ) -> Result<Value, TestkitError> {
        use std::os::fd::AsFd;
        let names: Vec<&str> = fds.iter().map(|(n, _)| n.as_str()).collect();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("export LISTEN_PID=$$; exec \"$0\" \"$@\"")
            .arg(&self.bins.supervisor)
            .args(&self.supervisor_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("LISTEN_FDS", fds.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .stdin(Stdio::null())
            .process_group(0);
        if self.quiet {
            cmd.stderr(Stdio::null()).stdout(Stdio::null());
        }
        let borrowed: Vec<_> = fds.iter().map(|(_, fd)| fd.as_fd()).collect();
        handoff_protocol::fds::place_in_child(&mut cmd, &borrowed, 3);
        let child = cmd.spawn().map_err(|e| TestkitError::Spawn {
            what: "supervisor",
            source: e,
        })?;
        drop(fds);
        self.groups.push(child.id());
        self.supervisor = Some(child);
        self.wait_serving(Duration::from_secs(30))
    }

    /// `kill -9` the supervisor (its workers live on) and reap it.
    pub fn kill_supervisor(&mut self) -> Result<(), TestkitError> {
        self.signal(Signal::SIGKILL)?;
        self.wait_exit().map(|_| ())
    }

    /// Run one more supervisor with this cluster's flags and state directory
    /// and `extra` flags (`--flag value` pairs; one the cluster sets already,
    /// `--socket` say, takes the new value),
    /// and wait up to `within` for it to exit: its exit status and stderr.
    /// One that is still running then is killed, and that is an error.
    pub fn run_another_supervisor(
        &self,
        extra: &[&str],
        within: Duration,
    ) -> Result<(std::process::ExitStatus, String), TestkitError> {
        let args = self.args_with(extra, true);
        let mut child = Command::new(&self.bins.supervisor)
            .args(&args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| TestkitError::Spawn {
                what: "supervisor",
                source: e,
            })?;
        let waited = wait_for("the other supervisor to exit", within, || {
            child
                .try_wait()
                .map_err(|e| TestkitError::Protocol(format!("wait: {e}")))
        });
        let status = match waited {
            Ok(s) => s,
            Err(e) => {
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
                return Err(e);
            }
        };
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        Ok((status, stderr))
    }
}
