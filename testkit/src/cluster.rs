//! A supervisor running a trading worker against a simulator, in a temp dir.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

use crate::sim::Sim;
use crate::{wait_for, TestkitError};

/// Paths of the four binaries.
#[derive(Debug, Clone)]
pub struct Bins {
    pub supervisor: PathBuf,
    pub supervisorctl: PathBuf,
    pub worker: PathBuf,
    pub sim: PathBuf,
}

impl Bins {
    /// The binaries next to the running executable (for `handoff-demo` and
    /// other binaries of the same build).
    pub fn beside_current_exe() -> Result<Bins, TestkitError> {
        let exe = std::env::current_exe()
            .map_err(|e| TestkitError::Protocol(format!("current_exe: {e}")))?;
        let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let bins = Bins {
            supervisor: dir.join("supervisor"),
            supervisorctl: dir.join("supervisorctl"),
            worker: dir.join("trading-worker"),
            sim: dir.join("exchange-sim"),
        };
        for p in [
            &bins.supervisor,
            &bins.supervisorctl,
            &bins.worker,
            &bins.sim,
        ] {
            if !p.exists() {
                return Err(TestkitError::Protocol(format!(
                    "{} is missing: build the workspace first (cargo build --release)",
                    p.display()
                )));
            }
        }
        Ok(bins)
    }
}

/// How to start a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    bins: Bins,
    connections: usize,
    runtime_feeds: Vec<String>,
    also_held: usize,
    symbols: String,
    sim_args: Vec<String>,
    supervisor_args: Vec<String>,
    worker_args: Vec<String>,
    /// Run the worker from a copy inside the temp dir (so a test can replace
    /// the file at the `--worker` path).
    copy_worker: bool,
    /// Trade over the simulator's REST API instead of on paper.
    rest: bool,
    /// Feeds over `wss://` (the simulator's own CA passed to the worker).
    tls: bool,
    /// Extra environment for the supervisor (and so its workers).
    env: Vec<(String, String)>,
    quiet: bool,
}

impl ClusterBuilder {
    pub fn new(bins: Bins) -> Self {
        ClusterBuilder {
            bins,
            connections: 1,
            runtime_feeds: Vec::new(),
            also_held: 0,
            symbols: "btcusdt,ethusdt".into(),
            sim_args: Vec::new(),
            supervisor_args: Vec::new(),
            worker_args: Vec::new(),
            copy_worker: false,
            rest: false,
            tls: false,
            env: Vec::new(),
            // HANDOFF_TEST_VERBOSE=1: every cluster logs (debugging a run).
            quiet: std::env::var_os("HANDOFF_TEST_VERBOSE").is_none(),
        }
    }

    /// Number of feed connections the worker opens.
    /// A connection the worker's app opens itself at start, named `name`, to
    /// the simulator (`--runtime-feed name=URL`): counted among the
    /// connections the worker must hold to be serving.
    pub fn runtime_feed(mut self, name: &str) -> Self {
        self.runtime_feeds.push(name.to_owned());
        self
    }

    /// `n` more connections the worker opens on its own at run time (a
    /// user-data stream, say): counted among those it must hold to be
    /// serving.
    pub fn also_held(mut self, n: usize) -> Self {
        self.also_held += n;
        self
    }

    pub fn connections(mut self, n: usize) -> Self {
        self.connections = n;
        self
    }

    pub fn symbols(mut self, s: &str) -> Self {
        self.symbols = s.into();
        self
    }

    /// Extra simulator flags (rate, fragmentation, …).
    pub fn sim_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.sim_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Extra supervisor flags (timeouts, …).
    pub fn supervisor_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.supervisor_args
            .extend(args.into_iter().map(Into::into));
        self
    }

    /// Extra worker flags.
    pub fn worker_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.worker_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Set an environment variable for the supervisor.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Send orders to the simulator's REST API (`--rest http://ADDR`).
    pub fn rest(mut self) -> Self {
        self.rest = true;
        self
    }

    /// Feeds over `wss://`: the simulator serves TLS with a CA it makes at
    /// start (`--tls --tls-ca-out`), which the worker trusts (`--ca-file`).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    pub fn copy_worker(mut self) -> Self {
        self.copy_worker = true;
        self
    }

    /// Let the processes log to this process's stderr.
    pub fn verbose(mut self) -> Self {
        self.quiet = false;
        self
    }

    /// Start the simulator, then the supervisor and its worker, and wait until
    /// the worker holds all its connections.
    pub fn start(self) -> Result<Cluster, TestkitError> {
        let dir = tempfile::Builder::new()
            .prefix("handoff-")
            .tempdir()
            .map_err(|e| TestkitError::File {
                path: std::env::temp_dir(),
                source: e,
            })?;
        let ca_file = dir.path().join("sim-ca.pem");
        let mut sim_args = self.sim_args.clone();
        if self.tls {
            sim_args.extend([
                "--tls".to_string(),
                "--tls-ca-out".to_string(),
                ca_file.display().to_string(),
            ]);
        }
        let sim = Sim::start(&self.bins.sim, &sim_args)?;
        let feed_url = if self.tls {
            sim.wss_url()
        } else {
            sim.ws_url()
        };
        let worker_path = if self.copy_worker {
            let p = dir.path().join("trading-worker");
            copy_exec(&self.bins.worker, &p)?;
            p
        } else {
            self.bins.worker.clone()
        };
        let socket = dir.path().join("run").join("ctl.sock");
        let mut args: Vec<std::ffi::OsString> = vec![
            "--socket".into(),
            socket.clone().into(),
            "--state-dir".into(),
            dir.path().join("state").into(),
            "--worker".into(),
            worker_path.clone().into(),
        ];
        args.extend(self.supervisor_args.iter().map(Into::into));
        args.push("--".into());
        for _ in 0..self.connections {
            args.push("--feed".into());
            args.push(feed_url.clone().into());
        }
        args.extend([
            "--symbols".into(),
            self.symbols.clone().into(),
            "--ack".into(),
        ]);
        for name in &self.runtime_feeds {
            args.push("--runtime-feed".into());
            args.push(format!("{name}={feed_url}").into());
        }
        args.extend(self.worker_args.iter().map(Into::into));
        if self.tls {
            args.push("--ca-file".into());
            args.push(ca_file.into());
        }
        if self.rest {
            args.push("--rest".into());
            args.push(
                if self.tls {
                    // Same port: the simulator tells TLS from plain by the first byte.
                    sim.https_url()
                } else {
                    format!("http://{}", sim.addr)
                }
                .into(),
            );
        }
        let supervisor = spawn_supervisor(&self.bins.supervisor, &args, &self.env, self.quiet)?;
        let cluster = Cluster {
            bins: self.bins,
            dir,
            sim,
            groups: vec![supervisor.id()],
            supervisor: Some(supervisor),
            socket,
            worker_path,
            connections: self.connections + self.runtime_feeds.len() + self.also_held,
            supervisor_args: args,
            env: self.env,
            quiet: self.quiet,
        };
        cluster.wait_serving(Duration::from_secs(30))?;
        Ok(cluster)
    }
}

pub(crate) fn spawn_supervisor(
    bin: &Path,
    args: &[std::ffi::OsString],
    env: &[(String, String)],
    quiet: bool,
) -> Result<Child, TestkitError> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .process_group(0);
    if quiet {
        cmd.stderr(Stdio::null()).stdout(Stdio::null());
    }
    cmd.spawn().map_err(|e| TestkitError::Spawn {
        what: "supervisor",
        source: e,
    })
}

/// Write an executable shell script at `path`.
fn write_script(path: &Path, script: &str) -> Result<PathBuf, TestkitError> {
    let err = |source| TestkitError::File {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(path, script).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
    Ok(path.to_path_buf())
}

fn copy_exec(from: &Path, to: &Path) -> Result<(), TestkitError> {
    let err = |source| TestkitError::File {
        path: to.to_path_buf(),
        source,
    };
    std::fs::copy(from, to).map_err(err)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).map_err(err)
}

/// The output of one `supervisorctl` run.
#[derive(Debug)]
pub struct CtlOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl From<Output> for CtlOutput {
    fn from(o: Output) -> Self {
        CtlOutput {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A running supervisor + worker + simulator. Dropping it kills them all.
pub struct Cluster {
    pub bins: Bins,
    pub dir: TempDir,
    pub sim: Sim,
    pub(crate) supervisor: Option<Child>,
    /// Every supervisor's process group: a worker stays in the group of the
    /// supervisor that started it, even after another one adopted it.
    pub(crate) groups: Vec<u32>,
    pub socket: PathBuf,
    /// The supervisor's `--worker` path.
    pub worker_path: PathBuf,
    pub connections: usize,
    pub(crate) supervisor_args: Vec<std::ffi::OsString>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) quiet: bool,
}

impl Cluster {
    /// Run `supervisorctl --socket S ARGS...`.
    pub fn ctl<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(
        &self,
        args: I,
    ) -> Result<CtlOutput, TestkitError> {
        Command::new(&self.bins.supervisorctl)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map(CtlOutput::from)
            .map_err(|e| TestkitError::Spawn {
                what: "supervisorctl",
                source: e,
            })
    }

    /// `status --json`, parsed.
    pub fn status(&self) -> Result<Value, TestkitError> {
        let out = self.ctl(["status", "--json"])?;
        if !out.success() {
            return Err(TestkitError::Protocol(format!(
                "status failed: {}",
                out.stderr
            )));
        }
        serde_json::from_str(&out.stdout)
            .map_err(|e| TestkitError::Protocol(format!("status JSON: {e}: {}", out.stdout)))
    }

    /// `upgrade --wait [--binary PATH]`.
    pub fn upgrade(&self, binary: Option<&Path>) -> Result<CtlOutput, TestkitError> {
        let mut args: Vec<std::ffi::OsString> = vec!["upgrade".into(), "--wait".into()];
        if let Some(b) = binary {
            args.push("--binary".into());
            args.push(b.into());
        }
        self.ctl(args)
    }

    /// Wait until the worker runs and holds every connection; returns status.
    pub fn wait_serving(&self, timeout: Duration) -> Result<Value, TestkitError> {
        let want = self.connections;
        wait_for("the worker to hold all its connections", timeout, || {
            let out = self.ctl(["status", "--json"])?;
            if !out.success() {
                return Ok(None);
            }
            let v: Value = serde_json::from_str(&out.stdout)
                .map_err(|e| TestkitError::Protocol(e.to_string()))?;
            let running = v["worker"]["state"] == "running";
            let held = v["connections"].as_array().map_or(0, Vec::len);
            Ok((running && held == want && v["handoffs"]["in_progress"].is_null()).then_some(v))
        })
    }

    /// The active worker's pid.
    pub fn worker_pid(&self) -> Result<u32, TestkitError> {
        self.status()?["worker"]["pid"]
            .as_u64()
            .map(|p| p as u32)
            .ok_or_else(|| TestkitError::Protocol("status has no worker.pid".into()))
    }

    /// Send a signal to the active worker.
    pub fn signal_worker(&self, sig: Signal) -> Result<u32, TestkitError> {
        let pid = self.worker_pid()?;
        kill(Pid::from_raw(pid as i32), sig)
            .map_err(|e| TestkitError::Protocol(format!("kill {sig} {pid}: {e}")))?;
        Ok(pid)
    }

    /// The checkpoint summary once the worker has stored a fresh checkpoint.
    pub fn fresh_summary(&self) -> Result<Value, TestkitError> {
        let out = self.ctl(["checkpoint", "--wait"])?;
        if !out.success() {
            return Err(TestkitError::Protocol(format!(
                "checkpoint failed: {}",
                out.stderr
            )));
        }
        Ok(self.status()?["checkpoint"]["summary"].clone())
    }

    /// Send a signal to the supervisor.
    pub fn signal(&self, sig: Signal) -> Result<(), TestkitError> {
        let pid = self.supervisor.as_ref().map(|c| c.id()).unwrap_or(0);
        kill(Pid::from_raw(pid as i32), sig)
            .map_err(|e| TestkitError::Protocol(format!("kill {sig}: {e}")))
    }

    /// Wait until `handoffs.completed + handoffs.failed` reaches `n`.
    pub fn wait_handoffs_ended(&self, n: u64, timeout: Duration) -> Result<Value, TestkitError> {
        wait_for(&format!("{n} handoffs to end"), timeout, || {
            let v = self.status()?;
            let h = &v["handoffs"];
            let ended = h["completed"].as_u64().unwrap_or(0) + h["failed"].as_u64().unwrap_or(0);
            Ok((ended >= n && h["in_progress"].is_null()).then_some(v))
        })
    }

    /// Write an executable wrapper script in the temp dir that runs the worker
    /// binary with `env` set (fault hooks, build ids).
    pub fn worker_wrapper(
        &self,
        name: &str,
        env: &[(&str, &str)],
    ) -> Result<PathBuf, TestkitError> {
        let path = self.dir.path().join(name);
        let mut script = String::from("#!/bin/sh\n");
        for (k, v) in env {
            script.push_str(&format!("export {k}='{v}'\n"));
        }
        script.push_str(&format!("exec '{}' \"$@\"\n", self.bins.worker.display()));
        write_script(&path, &script)
    }

    /// Write an executable wrapper that runs the worker binary with the
    /// arguments the supervisor passes and then `more` (a build that differs
    /// by a flag).
    pub fn worker_wrapper_more(&self, name: &str, more: &[&str]) -> Result<PathBuf, TestkitError> {
        let path = self.dir.path().join(name);
        let mut script = format!("#!/bin/sh\nexec '{}' \"$@\"", self.bins.worker.display());
        for a in more {
            script.push_str(&format!(" '{}'", a.replace('\'', "'\\''")));
        }
        script.push('\n');
        write_script(&path, &script)
    }

    /// Write an executable wrapper that runs the worker binary with `args`
    /// *instead of* those the supervisor passes (a build configured
    /// differently, e.g. with another feed list).
    pub fn worker_wrapper_args(
        &self,
        name: &str,
        args: &[String],
    ) -> Result<PathBuf, TestkitError> {
        let path = self.dir.path().join(name);
        let mut script = format!("#!/bin/sh\nexec '{}'", self.bins.worker.display());
        for a in args {
            script.push_str(&format!(" '{}'", a.replace('\'', "'\\''")));
        }
        script.push('\n');
        write_script(&path, &script)
    }

    /// Replace the file at the `--worker` path atomically (write beside it,
    /// rename over it), as a CI job does.
    pub fn replace_worker_with(&self, new: &Path) -> Result<(), TestkitError> {
        let tmp = self.worker_path.with_extension("new");
        copy_exec(new, &tmp)?;
        std::fs::rename(&tmp, &self.worker_path)
            .map_err(|source| TestkitError::File { path: tmp, source })
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Wait for the supervisor to exit (after `supervisorctl stop`, say).
    pub fn wait_exit(&mut self) -> Result<std::process::ExitStatus, TestkitError> {
        let child = self
            .supervisor
            .as_mut()
            .ok_or(TestkitError::Protocol("already stopped".into()))?;
        let status = child
            .wait()
            .map_err(|e| TestkitError::Protocol(format!("wait: {e}")))?;
        self.supervisor = None;
        Ok(status)
    }

    /// Graceful stop (SIGTERM) and wait for the supervisor to exit.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus, TestkitError> {
        self.signal(Signal::SIGTERM)?;
        self.wait_exit()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Each supervisor and the workers it started share a process group
        // of their own; orphans stay in theirs.
        for g in &self.groups {
            let _ = killpg(Pid::from_raw(*g as i32), Signal::SIGKILL);
        }
        if let Some(mut child) = self.supervisor.take() {
            let _ = child.wait();
        }
    }
}
