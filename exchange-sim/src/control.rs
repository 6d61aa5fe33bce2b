//! Simulator-only control endpoints under `/control/` (`GET` or `POST`):
//! `depth_burst` (many diffs back to back) and `server_shutdown` (close
//! every websocket now, `serverShutdown` first).

use crate::depth::MAX_BURST;
use crate::http::{Head, Reply};
use crate::params::{query_pairs, single};
use crate::state::{unix_ms, Shared};

/// Whether `path` is a control endpoint.
pub fn serves(path: &str) -> bool {
    path.starts_with("/control/")
}

/// Answer a control request.
pub fn route(shared: &Shared, head: &Head) -> Reply {
    if head.method != "GET" && head.method != "POST" {
        return Reply::error(405, &format!("method {} not allowed", head.method));
    }
    match head.path.as_str() {
        "/control/depth_burst" => match burst_params(shared, &head.query) {
            Err(e) => Reply::bad_request(&e),
            Ok((index, n)) => match shared.depth.burst(index, n, unix_ms()) {
                None => Reply::bad_request("symbol not served"),
                Some((first, last)) => {
                    let symbol = shared.depth.symbol(index);
                    let body = serde_json::json!({
                        "ok": true, "symbol": symbol, "n": n, "U": first, "u": last,
                    });
                    Reply::json(200, body.to_string())
                }
            },
        },
        "/control/server_shutdown" => {
            let open = shared.audit(|a| a.open_connections());
            shared.kick_all();
            Reply::json(200, format!("{{\"ok\":true,\"connections\":{open}}}"))
        }
        other => Reply::error(404, &format!("no such path {other}")),
    }
}

/// `symbol` (any case) and `n` (1 to [`MAX_BURST`]) of a burst.
fn burst_params(shared: &Shared, query: &str) -> Result<(usize, u64), String> {
    let pairs = query_pairs(query);
    let one = |name: &str| {
        single(&pairs, name)
            .map_err(|_| format!("{name} sent twice"))?
            .ok_or_else(|| format!("{name} is missing"))
    };
    let symbol = one("symbol")?;
    let index = shared
        .depth
        .index_of_symbol(&symbol.to_ascii_uppercase())
        .ok_or_else(|| format!("symbol {symbol:?} is not served"))?;
    let n = one("n")?;
    match n.parse::<u64>() {
        Ok(n) if (1..=MAX_BURST).contains(&n) => Ok((index, n)),
        _ => Err(format!(
            "n must be a number from 1 to {MAX_BURST}, got {n:?}"
        )),
    }
}
