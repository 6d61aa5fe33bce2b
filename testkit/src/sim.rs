//! The exchange simulator as a child process, and its HTTP audit.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::TestkitError;

/// A running `exchange-sim`.
pub struct Sim {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    _stdout: BufReader<ChildStdout>,
}

impl Sim {
    /// Start the simulator on port 0 with extra `args`; returns once it listens.
    pub fn start(bin: &Path, args: &[String]) -> Result<Sim, TestkitError> {
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| TestkitError::Spawn {
                what: "exchange-sim",
                source: e,
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or(TestkitError::Protocol("sim has no stdout".into()))?;
        let mut reader = BufReader::new(stdout);
        // `listening ADDR` comes first; later lines (the CA file of --tls)
        // are not needed here.
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| TestkitError::Protocol(format!("sim stdout: {e}")))?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .ok_or_else(|| {
                TestkitError::Protocol(format!("sim said {line:?} instead of `listening ADDR`"))
            })?
            .to_string();
        Ok(Sim {
            child,
            addr,
            _stdout: reader,
        })
    }

    /// The websocket URL of the feed.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The `wss://` URL of the feed (the simulator's certificate names
    /// `localhost`); needs `--tls`.
    pub fn wss_url(&self) -> String {
        format!("wss://{}/ws", self.tls_authority())
    }

    /// The `https://` base URL of the REST API (same port); needs `--tls`.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.tls_authority())
    }

    /// `localhost:PORT`: the name the simulator's certificate carries.
    fn tls_authority(&self) -> String {
        let port = self.addr.rsplit(':').next().unwrap_or_default();
        format!("localhost:{port}")
    }

    /// `GET path` on the simulator, parsed as JSON.
    pub fn get(&self, path: &str, timeout: Duration) -> Result<Value, TestkitError> {
        let err = |e: std::io::Error| TestkitError::Protocol(format!("sim GET {path}: {e}"));
        let mut s = TcpStream::connect(&self.addr).map_err(err)?;
        s.set_read_timeout(Some(timeout + Duration::from_secs(5)))
            .map_err(err)?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n"
        )
        .map_err(err)?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).map_err(err)?;
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).ok_or_else(|| {
            TestkitError::Protocol(format!("sim GET {path}: no HTTP body in {resp:?}"))
        })?;
        serde_json::from_str(body)
            .map_err(|e| TestkitError::Protocol(format!("sim GET {path}: {e}: {body}")))
    }

    /// The audit, right now.
    pub fn audit(&self) -> Result<Value, TestkitError> {
        self.get("/audit", Duration::from_secs(5))
    }

    /// The audit once every trade sent has been acked (or `timeout` passed).
    pub fn audit_when_acked(&self, timeout: Duration) -> Result<Value, TestkitError> {
        self.get(
            &format!("/audit?wait_acked_ms={}", timeout.as_millis()),
            timeout,
        )
    }

    /// Stop sending trades (nothing is skipped; `resume` continues).
    pub fn pause(&self) -> Result<(), TestkitError> {
        self.get("/pause", Duration::from_secs(5)).map(|_| ())
    }

    pub fn resume(&self) -> Result<(), TestkitError> {
        self.get("/resume", Duration::from_secs(5)).map(|_| ())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
