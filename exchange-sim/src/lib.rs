//! `exchange-sim`: an adversarial market-data exchange for testing clients
//! that must not lose a message, in particular across zero-downtime process
//! handoffs.
//!
//! The simulator serves a websocket feed shaped like Binance's combined
//! stream: a client sends `{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}`
//! and then receives `{"stream":"btcusdt@trade","data":{"e":"trade",…,"t":1,…}}`
//! messages whose trade ids are contiguous from 1 on every connection and whose
//! prices/quantities follow a seeded random walk (same `--seed` ⇒ same
//! sequence, byte for byte, whatever the timing).
//!
//! To prove that a client's framing layer is robust, the feed can fragment
//! messages into continuation frames, put pings between fragments, pad
//! messages to ~70 kB, and write its byte stream in random small chunks so that
//! frames straddle TCP segments (see [`Args`]).
//!
//! Clients acknowledge each trade with `{"method":"ack","stream":…,"t":…}`.
//! The simulator audits those acks per connection and stream (gaps,
//! duplicates, reordering, unknown ids, the longest silence between acks) and
//! records protocol violations (unmasked or malformed frames). The audit is
//! served as JSON over HTTP (plain, or TLS with `--tls`) on the same port
//! (`GET /audit`, optionally `?wait_acked_ms=N` to wait until everything sent
//! has been acked), next to `GET /pause`, `GET /resume` and `GET /health`.
//!
//! # Order API
//!
//! The same port serves a Binance-like REST order API over HTTP/1.1 with
//! keep-alive (requests one at a time per connection, bodies framed by
//! `Content-Length`; an idle connection is closed after 120 s). Bodies are
//! JSON; amounts are decimal strings (quantities answered with 8 decimals,
//! prices with 2 to 8).
//!
//! - `POST /api/v3/order` with `{"symbol":"BTCUSDT","side":"BUY"|"SELL",
//!   "type":"MARKET"|"LIMIT","quantity":"0.01000000","newClientOrderId":"w1-000042"}`
//!   (`LIMIT` also needs `"price"`). A `MARKET` order, or a `LIMIT` order
//!   marketable against the reference price, fills in full at the reference
//!   price (`FILLED`); any other `LIMIT` order rests (`NEW`) until cancelled.
//!   The answer is the order: `symbol`, `orderId`, `clientOrderId`,
//!   `status`, `side`, `type`, `origQty`, `executedQty`, `price` (the limit,
//!   `0.00` for `MARKET`), `avgPrice` (the fill price, `0.00` if unfilled),
//!   `transactTime` (ms).
//! - `GET /api/v3/order?symbol=S&origClientOrderId=X` (or `&orderId=N`): the
//!   order, or 404 `-2013 Order does not exist.`
//! - `DELETE /api/v3/order?symbol=S&origClientOrderId=X`: cancels a `NEW`
//!   order and answers it `CANCELED`; unknown, filled or already cancelled
//!   orders get 400 `-2011 Unknown order sent.`
//! - `GET /api/v3/positions`: per served symbol, the net `qty`, the average
//!   entry `avg_price` of the open position, `realized_pnl` and `fills`,
//!   booked at average cost.
//! - `GET /orders/audit`: counters (`orders`, `filled`, `canceled`, `open`,
//!   `duplicate_client_ids`, `rejected`, `invalid`) and the most recent 100 000
//!   orders by client id (`by_client_id`, with `by_client_id_omitted`).
//!
//! Refusals are HTTP 400 with `{"code":…,"msg":…}` (see [`ApiError`]): a
//! client order id used before by any order, even a cancelled one, gets
//! `-2010 Duplicate order sent.`; a missing or malformed field gets `-1102`
//! naming it; an unserved symbol `-1121`. The reference price of a symbol is
//! the price of the latest trade the feed generated for it on any connection
//! (the generator's starting price before the first). `--order-latency-ms`
//! holds back every `/api/v3/order` answer after the book is updated, so an
//! order can be on the exchange while its placement is still in flight;
//! `--order-reject-every N` refuses every Nth placement (duplicates and
//! malformed requests not counted) with `-2010 Insufficient balance.`, and a
//! rejected order's client id stays free.
//!
//! # TLS (`--tls`)
//!
//! With `--tls` the same port also serves `wss://` and `https://`. At start
//! the simulator generates (rcgen, ECDSA P-256) a self-signed CA and a server
//! certificate for `localhost`, `127.0.0.1` and `::1` signed by it; the keys
//! stay in memory and only the CA certificate is written, as PEM, to
//! `--tls-ca-out PATH` (through a temporary file and a rename, before
//! `listening` is printed; stdout then says `tls-ca PATH` on the next line).
//! In-process, [`SimHandle::tls_ca_pem`] gives the same text.
//!
//! Each accepted socket is told apart by its first byte: `0x16` (a TLS
//! handshake record) is handed to rustls, anything else is served as plain
//! HTTP exactly as without `--tls`, so `/audit` and the other endpoints keep
//! working over plain HTTP. After the handshake, a TLS stream gets the very
//! same HTTP and websocket handling; `--max-chunk` then turns every chunk
//! into a TLS record of its own (adversarial record boundaries).
//!
//! `--tls-versions 1.2,1.3` and `--tls-ciphers aes128gcm,aes256gcm,chacha20`
//! restrict what the server negotiates (TLS 1.2 uses the ECDHE-ECDSA suite of
//! each AEAD). `--key-update-every N` makes the server send a TLS 1.3
//! KeyUpdate requesting the client's own after every Nth websocket message
//! of a connection (TLS 1.2 connections are left alone).
//!
//! The audit shows per connection `tls` (`null`, or `{"version":"1.3",
//! "cipher":"TLS13_AES_128_GCM_SHA256"}`) and `tls_key_updates`, and in its
//! totals `tls_handshakes`, `tls_handshake_failures`, `tls_key_updates` and
//! `tls_errors`. A connection ended by a TLS failure (a record that does not
//! decrypt, a fatal alert, a TCP FIN without `close_notify` before any
//! websocket close) is closed by `error: tls: …` and counted in
//! `tls_errors`; `close_notify` is a clean `eof`. A hostile or garbage
//! ClientHello is logged and counted as a handshake failure, never a panic.
//!
//! Entry points: [`cli_main`] for the binary, [`run`] to run with flags until
//! SIGINT/SIGTERM, and [`Sim`] / [`bind`] to embed the simulator in tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), exchange_sim::SimError> {
//! use clap::Parser;
//! let args = exchange_sim::Args::parse_from([
//!     "exchange-sim", "--tls", "--tls-ca-out", "ca.pem", "--key-update-every", "100",
//! ]);
//! let sim = exchange_sim::Sim::bind(args).await?;
//! println!("wss://localhost:{}/ws", sim.local_addr().port());
//! let ca_pem = sim.handle().tls_ca_pem(); // also in ca.pem
//! # let _ = ca_pem;
//! sim.serve().await
//! # }
//! ```

#![forbid(unsafe_code)]

mod args;
pub mod audit;
mod client_reader;
mod connection;
mod error;
pub mod feed;
mod frames;
mod http;
mod money;
mod orders;
mod params;
mod positions;
mod prices;
mod requests;
mod rest;
mod rng;
mod server;
mod state;
mod tls;

pub use args::Args;
pub use error::{ApiError, SimError};
pub use tls::{TlsCipher, TlsInfo, TlsVersion, SERVER_NAMES as TLS_SERVER_NAMES};

use state::{Config, Shared};
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tls::TlsServer;
use tokio::net::TcpListener;

/// A bound, not yet serving simulator.
#[derive(Debug)]
pub struct Sim {
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
}

/// Controls a running simulator from the same process.
#[derive(Debug, Clone)]
pub struct SimHandle {
    shared: Arc<Shared>,
}

impl SimHandle {
    /// Stop accepting, send close frames (1001) on every connection, and make
    /// [`Sim::serve`] return.
    pub fn shutdown(&self) {
        self.shared.shut_down();
    }

    /// Same as `GET /pause`.
    pub fn pause(&self) {
        self.shared.pause();
    }

    /// Same as `GET /resume`.
    pub fn resume(&self) {
        self.shared.resume();
    }

    /// Same as `GET /audit`.
    pub fn audit_json(&self) -> String {
        self.shared.audit_json()
    }

    /// Same as `GET /orders/audit`.
    pub fn orders_audit_json(&self) -> String {
        self.shared.orders_audit_json()
    }

    /// The CA certificate (PEM) the TLS server certificate chains to, if
    /// `--tls` is on (the same text `--tls-ca-out` writes).
    pub fn tls_ca_pem(&self) -> Option<String> {
        self.shared.tls.as_ref().map(|t| t.ca_pem().to_owned())
    }

    /// Set the reference price of `symbol` (upper case, e.g. `BTCUSDT`) to
    /// `cents` hundredths, as if the feed had just traded there; the next
    /// generated trade of the symbol replaces it. False if the symbol is not
    /// served.
    pub fn set_reference_price(&self, symbol: &str, cents: u64) -> bool {
        self.shared.prices.record(symbol, cents)
    }
}

fn validate(args: &Args) -> Result<(), SimError> {
    let streams = args.stream_names();
    if streams.is_empty() {
        return Err(SimError::InvalidArgs("--symbols names no symbol".into()));
    }
    if let Some(bad) = streams
        .iter()
        .find(|s| !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'@'))
    {
        return Err(SimError::InvalidArgs(format!(
            "symbols must be ASCII letters and digits, got {bad:?}"
        )));
    }
    Ok(())
}

/// Write `pem` to `path` through a temporary file in the same directory, so
/// a reader never sees a partial certificate.
fn write_ca(path: &Path, pem: &str) -> Result<(), SimError> {
    let err = |source| SimError::WriteCa {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, pem).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

impl Sim {
    /// Validate `args`, generate the TLS certificates (`--tls`), bind the
    /// listening socket, and write the CA certificate to `--tls-ca-out`.
    pub async fn bind(args: Args) -> Result<Self, SimError> {
        validate(&args)?;
        let tls = if args.tls {
            let tls = TlsServer::new(&args.tls_versions, &args.tls_ciphers, args.key_update_every)?;
            Some(tls)
        } else {
            None
        };
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|source| SimError::Bind {
                addr: args.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: args.listen,
            source,
        })?;
        if let (Some(tls), Some(path)) = (&tls, &args.tls_ca_out) {
            write_ca(path, tls.ca_pem())?;
        }
        let shared = Arc::new(Shared::new(Config::from_args(&args), tls));
        Ok(Self {
            listener,
            addr,
            shared,
        })
    }

    /// The address actually bound (with the real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle to shut down, pause or inspect the simulator.
    pub fn handle(&self) -> SimHandle {
        SimHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serve until [`SimHandle::shutdown`].
    pub async fn serve(self) -> Result<(), SimError> {
        server::accept_loop(self.shared, self.listener).await;
        Ok(())
    }
}

/// Bind and return the bound address plus the future that serves forever
/// (spawn it; dropping it stops accepting).
pub async fn bind(
    args: Args,
) -> Result<
    (
        SocketAddr,
        impl Future<Output = Result<(), SimError>> + Send + 'static,
    ),
    SimError,
> {
    let sim = Sim::bind(args).await?;
    Ok((sim.local_addr(), sim.serve()))
}

/// Bind, print `listening ADDR` on stdout (then, with `--tls-ca-out`,
/// `tls-ca PATH`), and serve until SIGINT or SIGTERM.
pub async fn run(args: Args) -> Result<(), SimError> {
    let ca_out = args.tls_ca_out.clone().filter(|_| args.tls);
    let sim = Sim::bind(args).await?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening {}", sim.local_addr()).map_err(SimError::Stdout)?;
        if let Some(path) = ca_out {
            writeln!(stdout, "tls-ca {}", path.display()).map_err(SimError::Stdout)?;
        }
        stdout.flush().map_err(SimError::Stdout)?;
    }
    let handle = sim.handle();
    let signals = shutdown_signal()?;
    tokio::spawn(async move {
        signals.await;
        tracing::info!("shutting down");
        handle.shutdown();
    });
    sim.serve().await
}

#[cfg(unix)]
fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, SimError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(SimError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(SimError::Runtime)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, SimError> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// The `exchange-sim` binary: parse flags, log to stderr (`RUST_LOG`, default
/// `warn`), run on a multi-thread runtime.
pub fn cli_main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("exchange-sim: {}", SimError::Runtime(e));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("exchange-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
