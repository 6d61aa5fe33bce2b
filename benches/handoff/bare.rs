//! The baseline of the steady-state cost: a bare tokio-tungstenite client,
//! no supervisor, no handoff stream underneath. It does what bench-worker
//! does per message (parse the trade, count it, ack it on the same
//! connection, one `send` per ack, `TCP_NODELAY`) on a single-threaded
//! runtime, like the worker.

use std::collections::BTreeMap;

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// What the bare client did.
#[derive(Debug, Clone, Copy)]
pub struct BareRun {
    pub messages: u64,
    /// CPU time of the client's thread (user + system), seconds.
    pub cpu_s: f64,
}

/// CPU time of the calling thread, from `/proc/thread-self/stat` (USER_HZ).
fn thread_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|s| s.parse::<u64>().ok()))
        .sum();
    ticks as f64 / crate::rig::CLOCK_TICKS_PER_S
}

/// Connect `conns` times to `url`, subscribe to `symbols` and consume until
/// each connection has seen trade `last_id` on every stream.
pub fn run(url: &str, conns: usize, symbols: &[&str], last_id: u64) -> Result<BareRun> {
    let url = url.to_string();
    let symbols: Vec<String> = symbols.iter().map(|s| s.to_string()).collect();
    std::thread::spawn(move || -> Result<BareRun> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let cpu0 = thread_cpu_s();
        let messages = rt.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..conns {
                let (url, symbols) = (url.clone(), symbols.clone());
                tasks.push(tokio::spawn(async move {
                    one_connection(i, &url, &symbols, last_id).await
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await??;
            }
            anyhow::Ok(total)
        })?;
        Ok(BareRun {
            messages,
            cpu_s: thread_cpu_s() - cpu0,
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("bare client thread panicked"))?
}

async fn one_connection(i: usize, url: &str, symbols: &[String], last_id: u64) -> Result<u64> {
    // TCP_NODELAY like the worker's connections (`Conn::open`): with Nagle
    // on, acks would coalesce into fewer segments and the comparison would
    // measure that instead.
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
    ws.send(Message::text(trading_worker::market::subscribe(
        symbols, false,
    )))
    .await?;
    let name = format!("feed-{i}");
    let mut counters: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut done_streams = 0;
    let mut messages = 0;
    while done_streams < symbols.len() {
        let Some(msg) = ws.next().await else {
            anyhow::bail!("feed closed early");
        };
        let Message::Text(text) = msg? else { continue };
        let Some((stream, id)) = trading_worker::market::trade_id(text.as_str()) else {
            continue;
        };
        messages += 1;
        let c = counters.entry(format!("{name}/{stream}")).or_default();
        c.0 += 1;
        c.1 = id;
        let ack = trading_worker::market::ack(stream, id);
        ws.send(Message::text(ack)).await?;
        if id == last_id {
            done_streams += 1;
        }
    }
    let _ = ws.close(None).await;
    Ok(messages)
}
