//! What `supervisorctl` prints: the status table (or its JSON), and times.

use handoff_protocol::ctl::StatusReport;
use serde_json::Value;

pub(super) fn fmt_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The JSON form of a status report: the report's fields, with the
/// checkpoint summary (JSON written by the worker) inlined as an object.
pub fn status_json(report: &StatusReport) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(report)?;
    if let Some(Value::Object(cp)) = v.get_mut("checkpoint") {
        if let Some(Value::String(s)) = cp.get("summary") {
            let parsed = serde_json::from_str(s).unwrap_or(Value::String(s.clone()));
            cp.insert("summary".into(), parsed);
        }
    }
    Ok(v)
}

pub(super) fn print_status(report: &StatusReport, json: bool) -> anyhow::Result<()> {
    if json {
        out!("{}", serde_json::to_string(&status_json(report)?)?);
        return Ok(());
    }
    let w = &report.worker;
    let s = &report.supervisor;
    out!(
        "supervisor  pid {}  up {}  binary {}{}",
        s.pid,
        fmt_ms(s.started_ms_ago),
        s.binary,
        s.sha256
            .as_deref()
            .map(|h| format!(" (sha256 {})", &h[..h.len().min(16)]))
            .unwrap_or_default()
    );
    out!(
        "worker      pid {}  {}{}  generation {}  up {}  build {}",
        fmt_opt(w.pid),
        w.state,
        if w.adopted { " (adopted)" } else { "" },
        w.generation,
        fmt_ms(w.uptime_ms),
        w.build_id.as_deref().unwrap_or("-")
    );
    if let Some(ms) = w.probation_ms_left {
        out!("            on probation for {} more", fmt_ms(ms));
    }
    if let Some(n) = &w.notice {
        out!("            NOTE: {n}");
    }
    let sha = w
        .sha256
        .as_deref()
        .map(|s| {
            let age = w
                .build_age_ms
                .map(|ms| format!(", deployed {} ago", fmt_ms(ms)))
                .unwrap_or_default();
            format!(" (sha256 {}{age})", &s[..s.len().min(12)])
        })
        .unwrap_or_default();
    out!("            binary {}{sha}", w.binary);
    if w.restarts > 0 || w.last_exit.is_some() {
        out!(
            "            restarts {}{}",
            w.restarts,
            w.last_exit
                .as_deref()
                .map(|e| format!(", last exit: {e}"))
                .unwrap_or_default()
        );
    }
    out!("connections {}", report.connections.len());
    for c in &report.connections {
        let tls = c
            .tls
            .as_deref()
            .map(|t| format!("  (TLS records: {t})"))
            .unwrap_or_default();
        out!(
            "  #{:<3} {:<10} {:<22} {}{tls}",
            c.id,
            c.name,
            c.peer,
            c.url
        );
    }
    match &report.checkpoint {
        Some(c) => out!(
            "checkpoint  {} bytes, schema {}, {} old",
            c.bytes,
            c.schema,
            fmt_ms(c.age_ms)
        ),
        None => out!("checkpoint  none yet"),
    }
    if let Some(summary) = report
        .checkpoint
        .as_ref()
        .and_then(|c| c.summary.as_deref())
    {
        print_positions(summary);
    }
    let h = &report.handoffs;
    out!(
        "handoffs    {} completed, {} failed{}",
        h.completed,
        h.failed,
        h.in_progress
            .as_ref()
            .map(|p| format!(", one {p}"))
            .unwrap_or_default()
    );
    if let Some(l) = &h.last {
        out!(
            "  last #{} {} via {}: pause {} us, blackout {} us{}",
            l.id,
            l.outcome.as_str(),
            l.trigger,
            fmt_opt(l.pause_us),
            fmt_opt(l.blackout_us),
            l.error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        let p = &l.phases;
        let ms =
            |v: Option<u64>| v.map_or("-".to_string(), |us| format!("{:.3}", us as f64 / 1000.0));
        out!(
            "  phases (ms from trigger): spawned {}, prepared {}, frozen {}, restored {}, live {}, old stopped {}",
            ms(p.spawned_us),
            ms(p.prepared_us),
            ms(p.frozen_us),
            ms(p.restored_us),
            ms(p.live_us),
            ms(p.old_stopped_us)
        );
    }
    Ok(())
}

fn fmt_ms(ms: u64) -> String {
    if ms >= 60_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// The `positions` of a worker's checkpoint summary, as a table (apps that
/// report none print nothing).
fn print_positions(summary: &str) {
    let Ok(Value::Object(v)) = serde_json::from_str::<Value>(summary) else {
        return;
    };
    let Some(Value::Object(positions)) = v.get("positions") else {
        return;
    };
    let text = |p: &Value, k: &str| p.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    out!(
        "positions   {:<10} {:>16} {:>16} {:>16}",
        "SYMBOL",
        "QTY",
        "AVG PRICE",
        "REALIZED PNL"
    );
    for (symbol, p) in positions {
        out!(
            "            {:<10} {:>16} {:>16} {:>16}",
            symbol,
            text(p, "qty"),
            text(p, "avg_price"),
            text(p, "realized_pnl")
        );
    }
}

/// One event of `log`: its time and first line, the rest indented below;
/// or with `json` one object (`ts`, `unix_ms`, `event`, `detail`).
pub(super) fn print_event(e: &handoff_protocol::ctl::LogLine, json: bool) {
    let mut lines = e.line.lines();
    let first = lines.next().unwrap_or_default();
    if json {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.unix_ms);
        let detail: Vec<&str> = lines.map(str::trim).collect();
        let v = serde_json::json!({
            "ts": humantime::format_rfc3339_millis(at).to_string(),
            "unix_ms": e.unix_ms,
            "event": first,
            "detail": detail,
        });
        out!("{v}");
        return;
    }
    let when = fmt_unix_ms(e.unix_ms);
    out!("{when} {first}");
    for l in lines {
        out!("{:width$} {l}", "", width = when.len());
    }
}

/// `HH:MM:SS.mmmZ` (UTC) of a Unix time in milliseconds.
fn fmt_unix_ms(ms: u64) -> String {
    let secs = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        ms % 1000
    )
}
