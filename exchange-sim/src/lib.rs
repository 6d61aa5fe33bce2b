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
//! The simulator-only controls `/control/depth_burst` and
//! `/control/server_shutdown` take `GET` or `POST` (below).
//!
//! # Order API
//!
//! The same port serves a Binance-like REST order API over HTTP/1.1 with
//! keep-alive (requests one at a time per connection, bodies framed by
//! `Content-Length`; an idle connection is closed after 120 s). Parameters
//! come as on Binance, in the query string and/or an
//! `application/x-www-form-urlencoded` body, or, from an unsigned client
//! while the simulator runs without `--api-key`, as a JSON object body
//! (string values); answers are JSON; amounts are decimal strings
//! (quantities answered with 8 decimals, prices with 2 to 8).
//!
//! - `POST /api/v3/order` with `symbol=BTCUSDT&side=BUY|SELL&type=MARKET|LIMIT
//!   &quantity=0.01000000&newClientOrderId=w1-000042` (`LIMIT` also needs
//!   `price`), or the same fields as JSON. A `MARKET` order, or a `LIMIT` order
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
//!   `duplicate_client_ids`, `rejected`, `invalid`), the requests refused by
//!   the API key and signature checks (`refused`, below) and the most recent
//!   100 000 orders by client id (`by_client_id`, with
//!   `by_client_id_omitted`).
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
//! # API keys and signatures (`--api-key`)
//!
//! With `--api-key KEY` and its secret (`--api-secret-file PATH`: the file's
//! text, trimmed; or `SIM_API_SECRET`) the simulator has one account and
//! checks requests as Binance does:
//!
//! - `/api/v3/order` (every method; Binance's `SIGNED` types `TRADE` and
//!   `USER_DATA`): header `X-MBX-APIKEY: KEY`; parameters `timestamp` (Unix
//!   ms), `signature` and optionally `recvWindow` (default 5000, at most
//!   60000), in the query string or a form body (JSON is refused here);
//!   `signature` is the hex (either case) HMAC-SHA256, keyed by the secret,
//!   of the query string followed directly by the body, both as sent but
//!   for their `signature` parameter (Binance's examples pass); the
//!   timestamp must satisfy `timestamp < now + 1000` and `now - timestamp
//!   <= recvWindow`, `now` being this host's clock moved by
//!   `--clock-skew-ms` (for tests).
//! - `/api/v3/userDataStream` (`USER_STREAM`): the header only.
//! - Refusals: no header or one that cannot be a key (1 to 256 visible
//!   ASCII characters), HTTP 401 `-2014 API-key format invalid.`; another
//!   key, 401 `-2015 Invalid API-key, IP, or permissions for action.`; no
//!   or a malformed `timestamp`/`signature`, or a JSON body, 400 `-1102`
//!   naming it (`-1101` for a parameter sent twice, `-1131` for a
//!   `recvWindow` over 60000); a wrong signature, 400 `-1022 Signature for
//!   this request is not valid.`; a timestamp outside the window, 400
//!   `-1021 Timestamp for this request is outside of the recvWindow.` (or
//!   `… was 1000ms ahead of the server's time.`). The order audit counts
//!   them in `refused`: `no_key`, `unknown_key`, `malformed`,
//!   `bad_signature`, `expired`, `ahead`. A refused request changes
//!   nothing else: a refused order is not an order, its client id stays
//!   free.
//!
//! Without `--api-key` nothing is checked (signature parameters are
//! ignored) and `refused` stays at zero. `GET /api/v3/depth` (public on
//! Binance) and the simulator's own endpoints never want a key.
//!
//! # Depth: order book diffs (Binance's diff. depth stream)
//!
//! The simulator keeps one order book per served symbol, shared by every
//! connection: at most 48 price levels per side (never fewer than 24) on a
//! grid around a mid price that walks on its own seeded path from the trade
//! feed's starting price (grid step 0.01 × max(1, ⌊start price in cents /
//! 100 000⌋): 0.42 for BTCUSDT, 0.02 for ETHUSDT). The book and every
//! change to it follow from `--seed` alone: the k-th diff of a symbol is the
//! same on every run, whatever the timing. The book is never crossed.
//!
//! - **Streams.** `SUBSCRIBE` to `<symbol>@depth@100ms` and/or
//!   `<symbol>@depth` (besides or instead of `<symbol>@trade`). Both carry
//!   the same events every `--depth-every-ms` (default 100; Binance sends
//!   `@depth` every 1000 ms). A subscription starts with the first event
//!   made after the writer handles it; each message is
//!   `{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":<ms>,
//!   "s":"BTCUSDT","U":<first update id>,"u":<final update id>,
//!   "b":[["42000.42000000","0.12345678"],…],"a":[…]}}` with prices and
//!   quantities as strings with 8 decimals, bids best (highest) first, asks
//!   best (lowest) first, and quantity `"0.00000000"` removing the level (a
//!   level may be added and removed within one event: it then comes as a
//!   removal). Update ids are per symbol and exchange-wide (the same on
//!   every connection): an event spans one update id per level it lists, so
//!   `u - U + 1` = `b.len() + a.len()`, and each event's `U` is the
//!   previous event's `u + 1`. The book starts at update id 1000 (the
//!   first event has `U` 1001). `--fragment-every`, `--ping-every`,
//!   `--big-every` (a `"pad"` field beside `stream` and `data`),
//!   `--max-chunk` and `--key-update-every` count and shape diff messages
//!   like trades.
//! - **Pause.** `/pause` stops the diffs of every book (and the trades);
//!   `/resume` continues the same sequence. Diffs made before the pause
//!   still reach every subscriber.
//! - **Snapshot.** `GET /api/v3/depth?symbol=BTCUSDT&limit=N` answers
//!   `{"lastUpdateId":…,"bids":[["price","qty"],…],"asks":[…]}` (bids
//!   descending, asks ascending, at most N levels each; `limit` default
//!   100, a larger one than 5000 gives 5000 as on Binance; the whole book
//!   is under 100 levels a side). It is taken at an event boundary:
//!   applying every diff with `u > lastUpdateId` to it gives the book the
//!   simulator has (Binance's "how to manage a local order book" procedure
//!   works as documented). Refusals, HTTP 400: no or an empty `symbol`, or
//!   one not of upper-case letters and digits, `-1102`; an unserved symbol
//!   `-1121 Invalid symbol.`; `limit` not 1 to 20 digits `-1100 Illegal
//!   characters found in parameter 'limit'; legal range is
//!   '^[0-9]{1,20}$'.`; `limit=0` `-1102`; a parameter sent twice `-1101`.
//! - **Digest** (simulator-only). `GET /api/v3/depth/digest?symbol=BTCUSDT`
//!   answers `{"lastUpdateId":…,"digest":"<8 hex>"}` (same refusals as the
//!   snapshot): the CRC-32 of the whole book at `lastUpdateId`, computed as
//!   follows. Build a text: for each bid from best (highest price) to worst,
//!   `"<price>:<qty>;"`; then `"|"`; then for each ask from best (lowest
//!   price) to worst, `"<price>:<qty>;"`. Each price and quantity is the
//!   `rust_decimal::Decimal` parsed from its 8-decimal string, written with
//!   `Decimal::normalize()` then `to_string()`: trailing zeros and a bare
//!   decimal point dropped, never an exponent (`"100.50000000"` → `100.5`,
//!   `"42000.00000000"` → `42000`, `"0.00000001"` → `0.00000001`). The
//!   digest is the CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320,
//!   initial value and final XOR 0xFFFFFFFF: `crc32fast::hash`) of the
//!   text's UTF-8 (ASCII) bytes, written as 8 lower-case hex digits with
//!   leading zeros. Example: bids 100.50 × 1.5 and 100.00 × 0.00000001, one
//!   ask 101.00 × 1 give the text `100.5:1.5;100:0.00000001;|101:1;`; an
//!   empty book gives `|`.
//! - **Bursts** (simulator-only). `POST` (or `GET`)
//!   `/control/depth_burst?symbol=BTCUSDT&n=N` (symbol in any case, N from
//!   1 to 50 000) makes N events of that symbol at once, delivered back to
//!   back to every subscriber as fast as its socket takes them (even while
//!   paused), and answers `{"ok":true,"symbol":"BTCUSDT","n":N,"U":<first
//!   U>,"u":<last u>}`; bad parameters get 400 `{"error":…}`.
//! - **Slow consumers.** The last 65 536 events of each symbol are kept for
//!   connections that are behind; one further behind is closed (close code
//!   1008, `closed_by` `error: slow consumer: …`).
//! - **Acks and audit.** A client may ack diffs with
//!   `{"method":"ack","stream":"btcusdt@depth@100ms","u":<u>}` (the `u` of
//!   the diff). Each connection's diffs of a stream are numbered from 1 and
//!   the audit counts in those numbers exactly as for trade ids: in the
//!   stream's entry `sent`, `last_sent`, `acked`, `last_acked`, `gaps`
//!   (diff events skipped), `duplicates`, `reordered`, `unknown_acks` (a
//!   `u` that ends no diff sent on this connection), plus `first_u` (`U` of
//!   the first diff sent), `last_u` and `last_acked_u`. Acking is optional:
//!   `wait_acked_ms` waits for a diff stream only once its client acked one
//!   of its diffs. The audit's `totals` keep counting trades only; their
//!   `depth` object sums the diff streams (`sent`, `acked`, `unacked`,
//!   `gaps`, `duplicates`, `reordered`, `unknown_acks`).
//!
//! # User-data streams (listen keys)
//!
//! - `POST /api/v3/userDataStream` (no parameters; the API key with
//!   `--api-key`) →
//!   `{"listenKey":"<60 letters and digits>"}`: a new key each time.
//! - `PUT /api/v3/userDataStream?listenKey=K` → 200 `{}` and the key lives
//!   `--listen-key-ttl-ms` (default 3 600 000, Binance's 60 minutes) from
//!   now. `DELETE` (same parameter) → 200 `{}`: its streams get a close
//!   frame (1000, `closed_by` `listen_key_closed`) and the key is gone.
//!   The key may also come in a form-encoded body (`listenKey=K`). An
//!   unknown, expired or closed key: 400 `{"code":-1125,"msg":"This
//!   listenKey does not exist."}`; none: 400 `-1102`; twice: `-1101`.
//! - A websocket to `/ws/<listenKey>` (any path `/ws/<segment>` without
//!   `@` or `/`) on a live key receives, raw (no `stream` wrapper), an
//!   `executionReport` for every order placed, filled or cancelled through
//!   `/api/v3/order` from its upgrade on, in the order the book changed;
//!   every stream of every live key gets every report (one account). A dead
//!   key's upgrade is refused: HTTP 400 with the `-1125` body.
//! - Reports carry Binance's fields in Binance's order: `e`
//!   (`executionReport`), `E`, `s`, `c` (client order id), `S`, `o`, `f`
//!   (`GTC`), `q`, `p` (the limit price, `0.00000000` for `MARKET`), `P`,
//!   `F`, `g` (-1), `C` (`""`, or on a cancel the cancelled order's client
//!   id), `x`, `X`, `r` (`NONE`), `i` (order id), `l`, `z`, `L`, `n` (`"0"`),
//!   `N` (`null`), `T` (when the order last changed), `t` (-1, or the order
//!   id on the trade), `I` (an increasing execution id), `w`, `m` (false),
//!   `M`, `O` (creation time), `Z` (`z × L`), `Y` (`l × L`), `Q`, `W` (only
//!   while on the book), `V` (`NONE`); amounts with 8 decimals. A placement
//!   sends `x`/`X` `NEW`/`NEW` (`w` true if it rests), then, if it filled,
//!   `TRADE`/`FILLED` with `l` = `z` = the quantity and `L` the fill price;
//!   a cancel sends `CANCELED`/`CANCELED` with `c` = `cancel-<orderId>` and
//!   `C` the order's client id. Refused placements send nothing.
//! - A key not kept alive within the TTL expires: its streams get
//!   `{"e":"listenKeyExpired","E":<ms>,"listenKey":"<K>"}` and a close frame
//!   (1000, `closed_by` `listen_key_expired`).
//! - The audit's `listen_keys` maps each key to `created_ms`, `keepalives`,
//!   `last_keepalive_ms`, `closed_by` (`null`, `expired`, `deleted`),
//!   `streams_opened` and `events_sent`; each connection has `listen_key`
//!   (`null` on market data) and `user_events_sent`.
//!
//! # Connection lifetime
//!
//! - `--max-conn-age-ms N`: every websocket is closed N ms after its
//!   upgrade with a close frame 1001 (`closed_by` `max_age`); a user-data
//!   stream first gets `{"e":"serverShutdown","E":<ms>}`.
//! - `POST` (or `GET`) `/control/server_shutdown` closes every websocket
//!   open now (1001, `closed_by` `server_shutdown`) after a
//!   `serverShutdown` event: raw on user-data streams, as Binance's combined
//!   stream `{"stream":"!serverShutdown","data":{"e":"serverShutdown",
//!   "E":<ms>}}` on market data. It answers `{"ok":true,"connections":N}`
//!   and the simulator serves on (keys stay alive).
//! - `--ping-every-ms N` (default off; Binance: 20 s) sends a ping every N
//!   ms, besides `--ping-every`'s pings every Nth message. Every ping's
//!   payload is `ping-<n>`; only a pong echoing such a payload counts, as on
//!   Binance (unsolicited pongs do not). A timed ping unanswered for
//!   `--pong-timeout-ms` (default 60 000) closes the connection with 1008
//!   (`closed_by` `pong_timeout`).
//! - After any such close frame the client gets 5 s to answer it; a
//!   connection whose write is blocked (a client that stopped reading) when
//!   one of these deadlines passes gets 5 s more, then is dropped without
//!   a close frame.
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
mod auth;
mod cli;
mod client_reader;
mod connection;
mod control;
mod depth;
mod error;
pub mod feed;
mod frames;
mod http;
mod lifetime;
mod money;
mod orders;
mod pacer;
mod params;
mod positions;
mod prices;
mod requests;
mod rest;
mod rng;
mod server;
mod state;
mod tls;
mod user_stream;

pub use args::Args;
pub use cli::{cli_main, run};
pub use error::{ApiError, SimError};
pub use tls::{TlsCipher, TlsInfo, TlsVersion, SERVER_NAMES as TLS_SERVER_NAMES};

use state::{Config, Shared};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

    /// Same as `/control/server_shutdown`: every open websocket gets
    /// `serverShutdown` and is closed; the simulator serves on.
    pub fn server_shutdown(&self) {
        self.shared.kick_all();
    }

    /// Same as `/control/depth_burst`: `n` diffs of `symbol` (upper case)
    /// back to back; the first `U` and the last `u`, or `None` if the
    /// symbol is not served.
    pub fn depth_burst(&self, symbol: &str, n: u64) -> Option<(u64, u64)> {
        let index = self.shared.depth.index_of_symbol(symbol)?;
        self.shared.depth.burst(index, n, state::unix_ms())
    }

    /// Same as `GET /api/v3/depth/digest`: `symbol`'s (upper case)
    /// `lastUpdateId` and the CRC-32 of its whole book.
    pub fn depth_digest(&self, symbol: &str) -> Option<(u64, u32)> {
        let index = self.shared.depth.index_of_symbol(symbol)?;
        self.shared.depth.digest(index)
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
    /// Validate `args`, read the API secret (`--api-key`), generate the TLS
    /// certificates (`--tls`), bind the
    /// listening socket, and write the CA certificate to `--tls-ca-out`.
    pub async fn bind(args: Args) -> Result<Self, SimError> {
        validate(&args)?;
        let keys = auth::Keys::load(args.api_key.as_deref(), args.api_secret_file.as_deref())?;
        let gate = auth::Gate::new(keys, args.clock_skew_ms);
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
        let shared = Arc::new(Shared::new(Config::from_args(&args), tls, gate));
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

    /// Serve until [`SimHandle::shutdown`] (the depth books change and
    /// listen keys expire from now on).
    pub async fn serve(self) -> Result<(), SimError> {
        let every = self.shared.config.depth_every;
        let _background = AbortOnDrop(vec![
            tokio::spawn(depth::run(self.shared.clone(), every)),
            tokio::spawn(user_stream::reap(self.shared.clone())),
        ]);
        server::accept_loop(self.shared, self.listener).await;
        Ok(())
    }
}

/// Background tasks of a serving simulator, stopped with it (also when its
/// `serve` future is dropped).
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
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
