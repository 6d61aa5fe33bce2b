//! `STATE_DIR/audit.log`: who asked the supervisor to do what, one JSON
//! object per line. Every line has `ts` (RFC 3339, UTC, milliseconds),
//! `event` (the command: `upgrade`, `rollback`, `checkpoint`, `stop`,
//! `upgrade-supervisor`), `uid` and `pid` (the peer's credentials, checked
//! by the kernel; `pid` is null when unknown), and the command's own
//! parameters under stable names. Read-only calls (`status`, `log`) are not
//! recorded: the file says what changed, not who looked.

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use handoff_protocol::ctl::CtlRequest;
use serde_json::{json, Map, Value};
use tracing::warn;

/// The line for `req` from `uid`/`pid` at `at`, or `None` for a read-only
/// request.
pub fn line(at: SystemTime, uid: u32, pid: Option<i32>, req: &CtlRequest) -> Option<String> {
    let (event, params) = match req {
        CtlRequest::Status | CtlRequest::Log { .. } => return None,
        CtlRequest::Upgrade(u) => (
            "upgrade",
            json!({"binary": u.binary, "url": u.url, "sha256": u.sha256, "wait": u.wait}),
        ),
        CtlRequest::Checkpoint { wait } => ("checkpoint", json!({ "wait": wait })),
        CtlRequest::Stop => ("stop", json!({})),
        CtlRequest::Rollback { wait } => ("rollback", json!({ "wait": wait })),
        CtlRequest::UpgradeSupervisor(u) => (
            "upgrade-supervisor",
            json!({"binary": u.binary, "sha256": u.sha256, "wait": u.wait}),
        ),
    };
    let mut obj = Map::new();
    obj.insert(
        "ts".into(),
        humantime::format_rfc3339_millis(at).to_string().into(),
    );
    obj.insert("event".into(), event.into());
    obj.insert("uid".into(), uid.into());
    obj.insert("pid".into(), pid.map_or(Value::Null, Value::from));
    if let Value::Object(p) = params {
        obj.extend(p);
    }
    Some(Value::Object(obj).to_string())
}

/// Append `req`'s line to the audit log at `path` (nothing for read-only
/// requests); a failure to write is logged, never fatal.
pub fn record(path: &Path, uid: u32, pid: Option<i32>, req: &CtlRequest) {
    let Some(mut line) = line(SystemTime::now(), uid, pid, req) else {
        return;
    };
    line.push('\n');
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        warn!(path = %path.display(), error = %e, "cannot write the audit log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_protocol::ctl::UpgradeRequest;

    #[test]
    fn one_json_object_per_command_and_none_for_reads() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let req = CtlRequest::Upgrade(UpgradeRequest {
            binary: Some("/opt/w".into()),
            url: None,
            sha256: None,
            wait: true,
        });
        let l = line(at, 1000, Some(42), &req).unwrap();
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["ts"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["event"], "upgrade");
        assert_eq!(
            (v["uid"].as_u64(), v["pid"].as_u64()),
            (Some(1000), Some(42))
        );
        assert_eq!(v["binary"], "/opt/w");
        assert!(!l.contains('\n'));
        assert!(line(at, 0, None, &CtlRequest::Status).is_none());
        assert!(line(at, 0, None, &CtlRequest::Log { last: 5 }).is_none());
        let stop: Value =
            serde_json::from_str(&line(at, 0, None, &CtlRequest::Stop).unwrap()).unwrap();
        assert_eq!(stop["pid"], Value::Null);
    }
}
