//! # trading-worker
//!
//! The reference trading worker, built on [`handoff_worker`]: it connects to
//! one or more Binance-style feeds, subscribes to `<symbol>@trade` streams,
//! keeps per-stream cursors in its state and, with `--ack`, acknowledges each
//! trade it processed on the same connection (the exchange simulator audits
//! those acks for gaps, duplicates and reordering).
//!
//! Under the `handoff` supervisor its connections and state survive upgrades;
//! started by hand it runs standalone.
#![forbid(unsafe_code)]

pub mod app;
pub mod book;
pub mod depth;
pub use handoff_worker::launch;
pub mod market;
pub mod probe;
pub mod rest;
pub mod schema;
pub mod signing;
pub mod state;

#[cfg(test)]
mod fixture_tests;

use std::process::ExitCode;

use clap::Parser;
use handoff_worker::Settings;

pub use app::Trader;

/// A trading worker that survives upgrades with its connections and state.
#[derive(Debug, Parser)]
#[command(name = "trading-worker", version)]
pub struct Args {
    /// A websocket feed, `NAME=URL` or a bare URL (named `feed-<i>` by its
    /// position); ws://… or wss://…, one connection per flag. Connections
    /// are matched by name between builds: a new build that drops, adds or
    /// moves a feed closes, opens or reopens just that one.
    #[arg(long = "feed", required = true)]
    pub feeds: Vec<String>,
    /// PEM file of CA certificates trusted for wss:// feeds and an https://
    /// --rest API, besides the public roots (a private CA, or the exchange
    /// simulator's `--tls-ca-out`).
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Who protects wss:// records: `auto` (the kernel where it can carry
    /// the whole session: TLS 1.2, or TLS 1.3 on a kernel that can rekey;
    /// this process otherwise), `off` (always this process) or `require`
    /// (the kernel, or the connection fails). Each connection logs which.
    #[arg(long, value_name = "auto|off|require", default_value = "auto")]
    pub kernel_tls: handoff_worker::tls::KernelTlsMode,
    /// Symbols to subscribe to, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "btcusdt,ethusdt")]
    pub symbols: Vec<String>,
    /// Acknowledge each processed trade on its connection.
    #[arg(long)]
    pub ack: bool,
    /// Paper trading (the default without --rest): orders fill at the next
    /// trade price, deterministically.
    #[arg(long, conflicts_with = "rest")]
    pub paper: bool,
    /// Send orders to this exchange REST API (e.g. http://127.0.0.1:9443).
    /// With an API key (--api-key-file, or HANDOFF_API_KEY and
    /// HANDOFF_API_SECRET in the environment) orders are signed as Binance
    /// documents (X-MBX-APIKEY, timestamp, recvWindow, HMAC-SHA256
    /// signature); without one they go unsigned.
    #[arg(long)]
    pub rest: Option<String>,
    /// The API key and secret that sign --rest orders, from this file: two
    /// lines `KEY=<api key>` and `SECRET=<secret key>` (blank lines and
    /// `#` comments ignored). Refused unless only its owner may read it
    /// (chmod 600). Takes precedence over HANDOFF_API_KEY and
    /// HANDOFF_API_SECRET. Keys are never taken from the command line, and
    /// never logged.
    #[arg(long, value_name = "PATH", requires = "rest")]
    pub api_key_file: Option<std::path::PathBuf>,
    /// How long after its timestamp a signed order request stays valid
    /// (Binance's recvWindow, at most 60000).
    #[arg(long, value_name = "MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub recv_window_ms: u64,
    /// Longest an order request may take; past it the order's status is
    /// unknown and it is reconciled by querying its client order id.
    #[arg(long, value_parser = parse_ms, default_value = "5000")]
    pub order_timeout_ms: std::time::Duration,
    /// Trades to wait after acting on a crossover before acting again.
    #[arg(long, default_value = "25")]
    pub cooldown_trades: u32,
    /// How often the state is checkpointed to the supervisor.
    #[arg(long, value_parser = parse_ms, default_value = "1000")]
    pub checkpoint_ms: std::time::Duration,
    /// Fire a timer every so many milliseconds and report each one to the
    /// exchange on feed-0 (`{"method":"timer","key":"tick-<n>"}`): the
    /// simulator counts them, so a timer fired twice or lost across
    /// handoffs shows in its audit.
    #[arg(long, value_parser = parse_ms)]
    pub timer_every: Option<std::time::Duration>,
    /// A connection the app opens itself once it starts fresh, `NAME=URL`
    /// (as a bot opens a user-data stream whose URL it learnt at run time):
    /// not part of the configuration, handed over by name all the same.
    #[arg(long = "runtime-feed")]
    pub runtime_feeds: Vec<String>,
    /// Close and reopen a connection once it is this old, without an
    /// upgrade (Binance cuts connections at 24 h).
    #[arg(long, value_parser = parse_ms)]
    pub max_conn_age_ms: Option<std::time::Duration>,
    /// Keep a Binance user-data stream open (needs --rest): a listen key
    /// from the REST API, the stream as connection `user` (opened at run
    /// time), and a keep-alive every --listen-key-keepalive-ms.
    #[arg(long, requires = "rest")]
    pub user_stream: bool,
    /// How often the listen key is kept alive (Binance: at least hourly;
    /// it suggests every 30 minutes).
    #[arg(long, value_parser = parse_ms, default_value = "1800000")]
    pub listen_key_keepalive_ms: std::time::Duration,
    /// Keep a local order book per symbol from `<symbol>@depth@100ms` diffs
    /// and REST snapshots (needs --rest), Binance's way: a gap is detected,
    /// counted (`book_resyncs`) and repaired from a fresh snapshot.
    #[arg(long, requires = "rest")]
    pub book: bool,
}

fn parse_ms(s: &str) -> Result<std::time::Duration, String> {
    s.parse::<u64>()
        .map(std::time::Duration::from_millis)
        .map_err(|e| format!("{s:?}: {e}"))
}

/// `client`, signing with the API key of `--api-key-file` or the
/// environment, if there is one; and a line for the log saying which.
fn signed(
    client: rest::RestClient,
    args: &Args,
) -> Result<(rest::RestClient, String), signing::CredentialsError> {
    Ok(
        match signing::Credentials::load(args.api_key_file.as_deref())? {
            Some(keys) => {
                let note = format!("REST orders are signed (API key from {})", keys.origin());
                (
                    client.signed(signing::Signer::new(keys, args.recv_window_ms)),
                    note,
                )
            }
            None => {
                let note = format!(
                    "REST orders are unsigned: no API key ({} and {}, or --api-key-file)",
                    signing::KEY_ENV,
                    signing::SECRET_ENV
                );
                (client, note)
            }
        },
    )
}

/// `main` of the `trading-worker` binary (writes schema 1).
pub fn main() -> ExitCode {
    main_with::<1>()
}

/// `main` of `trading-worker-v2`, the next build: its state has one more
/// field (schema 2), it reads schema 1 and writes it for a rollback.
pub fn main_v2() -> ExitCode {
    main_with::<2>()
}

fn main_with<const S: u32>() -> ExitCode {
    let args = Args::parse();
    let settings = Settings {
        build_id: launch::build_id(|| {
            format!(
                "trading-worker {} (schema {})",
                env!("CARGO_PKG_VERSION"),
                S
            )
        }),
        checkpoint_interval: args.checkpoint_ms,
        ca_file: args.ca_file.clone(),
        kernel_tls: args.kernel_tls,
        max_conn_age: args.max_conn_age_ms,
        ..Settings::default()
    };
    let mut strategy = state::Strategy::default();
    strategy.signal.cooldown = args.cooldown_trades;
    let rest = match args
        .rest
        .as_deref()
        .map(|url| rest::RestClient::new(url, args.order_timeout_ms, args.ca_file.as_deref()))
    {
        None => None,
        Some(Ok(client)) => Some(client),
        Some(Err(e)) => {
            eprintln!("trading-worker: cannot set up the REST client: {e}");
            return ExitCode::from(2);
        }
    };
    let (rest, signing_note) = match rest.map(|client| signed(client, &args)) {
        None => (None, None),
        Some(Ok((client, note))) => (Some(client), Some(note)),
        Some(Err(e)) => {
            eprintln!("trading-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime_feeds = match handoff_worker::Feed::from_specs(&args.runtime_feeds) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("trading-worker: --runtime-feed: {e}");
            return ExitCode::from(2);
        }
    };
    let (symbols, ack, timer_every) = (args.symbols.clone(), args.ack, args.timer_every);
    let user_stream = args.user_stream.then_some(args.listen_key_keepalive_ms);
    let book = args.book;
    let fresh = move || {
        if let Some(note) = signing_note {
            tracing::info!("{note}");
        }
        let mut t = Trader::<S>::new(symbols, ack, strategy, rest);
        t.timer_every = timer_every;
        t.runtime_feeds = runtime_feeds;
        t.user_stream = user_stream;
        t.books = book.then(crate::depth::Books::default);
        t
    };
    launch::run_main("trading-worker", &args.feeds, settings, fresh)
}
