//! `--metrics ADDR`: an HTTP endpoint serving `GET /metrics` in the Prometheus
//! text format. The daemon publishes a [`MetricsView`] after every event
//! through a `watch` channel; the HTTP task only reads it, so a slow scraper
//! never touches the daemon. The bound address is logged and written to
//! `STATE_DIR/metrics.addr` (handy with port 0).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{info, warn};

/// Longest a scraper may take to send its request line and headers.
pub const SCRAPE_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;

/// Why the endpoint could not start.
#[derive(Debug, Error)]
#[error("cannot serve metrics on {addr}: {source}")]
pub struct MetricsError {
    addr: String,
    #[source]
    source: std::io::Error,
}

/// A cumulative histogram with fixed bounds, in seconds.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Bounds for blackouts and phases: 50 µs … 10 s.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe_us(&mut self, us: u64) {
        let secs = us as f64 / 1e6;
        for (i, b) in self.bounds.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Everything `/metrics` shows.
#[derive(Debug, Clone)]
pub struct MetricsView {
    pub completed: u64,
    pub refused: u64,
    pub rolled_back: u64,
    pub restarts: u64,
    pub held_sockets: usize,
    pub worker_up: bool,
    pub checkpoint: Option<(u64, Instant)>,
    pub blackout: Histogram,
    pub pause: Histogram,
    pub upgrade: Histogram,
    /// Per phase: prepare (spawn → Hello), freeze, restore, exit.
    pub phases: Vec<(&'static str, Histogram)>,
}

impl Default for MetricsView {
    fn default() -> Self {
        MetricsView {
            completed: 0,
            refused: 0,
            rolled_back: 0,
            restarts: 0,
            held_sockets: 0,
            worker_up: false,
            checkpoint: None,
            blackout: Histogram::new(LATENCY_BOUNDS),
            pause: Histogram::new(LATENCY_BOUNDS),
            upgrade: Histogram::new(LATENCY_BOUNDS),
            phases: ["prepare", "freeze", "restore", "exit"]
                .into_iter()
                .map(|p| (p, Histogram::new(LATENCY_BOUNDS)))
                .collect(),
        }
    }
}

impl MetricsView {
    /// Record the phases of one ended handoff (microseconds since trigger).
    pub fn observe_phases(&mut self, t: &handoff_protocol::ctl::PhaseTimings) {
        let steps = [
            ("prepare", t.spawned_us, t.prepared_us),
            ("freeze", t.prepared_us, t.frozen_us),
            ("restore", t.frozen_us, t.restored_us),
            ("exit", t.live_us, t.old_stopped_us),
        ];
        for (name, from, to) in steps {
            if let (Some(a), Some(b)) = (from, to) {
                if let Some((_, h)) = self.phases.iter_mut().find(|(n, _)| *n == name) {
                    h.observe_us(b.saturating_sub(a));
                }
            }
        }
        if let Some(total) = t.old_stopped_us {
            self.upgrade.observe_us(total);
        }
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP handoff_handoffs_total Handoffs (upgrades) by outcome."
        );
        let _ = writeln!(o, "# TYPE handoff_handoffs_total counter");
        for (outcome, n) in [
            ("completed", self.completed),
            ("refused", self.refused),
            ("rolled_back", self.rolled_back),
        ] {
            let _ = writeln!(o, "handoff_handoffs_total{{outcome=\"{outcome}\"}} {n}");
        }
        let _ = writeln!(o, "# HELP handoff_blackout_seconds Old worker's freeze to the new worker's first consumed message.");
        let _ = writeln!(o, "# TYPE handoff_blackout_seconds histogram");
        self.blackout.render(&mut o, "handoff_blackout_seconds", "");
        let _ = writeln!(
            o,
            "# HELP handoff_pause_seconds Old worker's freeze to the new worker told to go."
        );
        let _ = writeln!(o, "# TYPE handoff_pause_seconds histogram");
        self.pause.render(&mut o, "handoff_pause_seconds", "");
        let _ = writeln!(
            o,
            "# HELP handoff_upgrade_duration_seconds Trigger to the old worker reaped."
        );
        let _ = writeln!(o, "# TYPE handoff_upgrade_duration_seconds histogram");
        self.upgrade
            .render(&mut o, "handoff_upgrade_duration_seconds", "");
        let _ = writeln!(
            o,
            "# HELP handoff_phase_duration_seconds Duration of each phase of an upgrade."
        );
        let _ = writeln!(o, "# TYPE handoff_phase_duration_seconds histogram");
        for (name, h) in &self.phases {
            h.render(
                &mut o,
                "handoff_phase_duration_seconds",
                &format!("phase=\"{name}\""),
            );
        }
        let gauge = |o: &mut String, name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} {kind}");
            let _ = writeln!(o, "{name} {v}");
        };
        gauge(
            &mut o,
            "handoff_worker_restarts_total",
            "Unplanned worker restarts (crashes, hangs).",
            "counter",
            self.restarts.to_string(),
        );
        gauge(
            &mut o,
            "handoff_worker_up",
            "1 while a worker serves.",
            "gauge",
            u8::from(self.worker_up).to_string(),
        );
        gauge(
            &mut o,
            "handoff_held_sockets",
            "Connections whose socket the supervisor holds.",
            "gauge",
            self.held_sockets.to_string(),
        );
        let (bytes, age) = match self.checkpoint {
            Some((b, at)) => (b.to_string(), format!("{:.3}", at.elapsed().as_secs_f64())),
            None => ("0".into(), "NaN".into()),
        };
        gauge(
            &mut o,
            "handoff_checkpoint_bytes",
            "Size of the newest checkpoint.",
            "gauge",
            bytes,
        );
        gauge(
            &mut o,
            "handoff_checkpoint_age_seconds",
            "Age of the newest checkpoint.",
            "gauge",
            age,
        );
        gauge(
            &mut o,
            "handoff_supervisor_resident_memory_bytes",
            "Resident set size of the supervisor.",
            "gauge",
            rss_bytes().to_string(),
        );
        o
    }
}

/// This process's resident set size, from /proc/self/status.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Bind `addr`, record it in `state_dir/metrics.addr`, and serve forever.
pub async fn bind(addr: &str, state_dir: &std::path::Path) -> Result<TcpListener, MetricsError> {
    let err = |source| MetricsError {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local: SocketAddr = listener.local_addr().map_err(err)?;
    info!(%local, "metrics endpoint listening");
    std::fs::write(state_dir.join("metrics.addr"), local.to_string()).map_err(err)?;
    Ok(listener)
}

pub async fn serve(listener: TcpListener, view: watch::Receiver<MetricsView>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let view = view.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, view).await {
                        warn!(error = %e, "metrics request failed");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, view: watch::Receiver<MetricsView>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(SCRAPE_READ_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if read.is_err() {
        return Ok(());
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (status, ctype, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => (
            "200 OK",
            "text/plain; version=0.0.4",
            view.borrow().render(),
        ),
        (Some(_), Some(_)) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".to_string(),
        ),
        _ => ("400 Bad Request", "text/plain", "bad request\n".to_string()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(LATENCY_BOUNDS);
        h.observe_us(80);
        h.observe_us(3_000);
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.0001\"} 1"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 2"), "{out}");
        assert!(out.contains("x_count 2"));
    }
}
