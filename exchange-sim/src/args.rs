//! Command-line flags of the simulator.

use crate::tls::{TlsCipher, TlsVersion};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags of `exchange-sim`. Construct programmatically with
/// `Args::parse_from(["exchange-sim", "--rate", "5000"])` (see [`clap::Parser`])
/// or start from [`Args::default`].
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "exchange-sim",
    about = "Adversarial Binance-style websocket trade feed and REST order API, with audits",
    after_help = AFTER_HELP
)]
pub struct Args {
    /// Address to listen on (websocket and HTTP share the port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// Comma-separated symbols; each is served as the trade stream
    /// `<symbol>@trade` and the diff streams `<symbol>@depth@100ms` and
    /// `<symbol>@depth`.
    #[arg(long, value_delimiter = ',', default_value = "btcusdt,ethusdt")]
    pub symbols: Vec<String>,

    /// Trades per second per stream per connection (at least 1).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,

    /// Seed of the deterministic price/quantity sequences.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// End each stream after this trade id (finite, deterministic feed).
    #[arg(long)]
    pub trades: Option<u64>,

    /// Send every Nth message of a connection as 2-4 fragments (0 = never).
    #[arg(long, default_value_t = 0)]
    pub fragment_every: u64,

    /// Send a ping after every Nth message (0 = never); with fragmentation on,
    /// pings are also placed between fragments of fragmented messages.
    #[arg(long, default_value_t = 0)]
    pub ping_every: u64,

    /// Pad every Nth message with a `"pad"` field to about `--big-size` bytes (0 = never).
    #[arg(long, default_value_t = 0)]
    pub big_every: u64,

    /// Approximate size in bytes of padded messages.
    #[arg(long, default_value_t = 70_000)]
    pub big_size: usize,

    /// Write the outgoing byte stream in random chunks of 1..=N bytes (0 = whole
    /// batches); over TLS every chunk is a record of its own.
    #[arg(long, default_value_t = 0)]
    pub max_chunk: usize,

    /// Delay every answer of `/api/v3/order` (POST, GET, DELETE) by this many
    /// milliseconds, after the order has been recorded.
    #[arg(long, default_value_t = 0)]
    pub order_latency_ms: u64,

    /// Reject every Nth order placement (not counting duplicates and invalid
    /// requests) with `-2010 Insufficient balance.` (0 = never).
    #[arg(long, default_value_t = 0)]
    pub order_reject_every: u64,

    /// Milliseconds between two diff events of each symbol's order book
    /// (both `@depth@100ms` and `@depth` follow it; paused by `/pause`).
    #[arg(long, value_name = "MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub depth_every_ms: u64,

    /// A listen key not kept alive (`PUT /api/v3/userDataStream`) within
    /// this many milliseconds expires (Binance: 60 minutes).
    #[arg(long, value_name = "MS", default_value_t = 3_600_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub listen_key_ttl_ms: u64,

    /// Close every websocket this many milliseconds after its upgrade
    /// (user-data streams get a `serverShutdown` event first; Binance: 24 h).
    /// 0 = never.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub max_conn_age_ms: u64,

    /// Send a ping every this many milliseconds on every websocket, besides
    /// `--ping-every` (Binance: 20 s). 0 = never.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub ping_every_ms: u64,

    /// With `--ping-every-ms`: close a websocket that has not answered a ping
    /// with its pong within this many milliseconds (Binance: 1 minute).
    #[arg(long, value_name = "MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub pong_timeout_ms: u64,

    /// Also serve TLS (wss:// and https://) on the same port, with a
    /// self-signed CA and a `localhost`/`127.0.0.1`/`::1` certificate generated
    /// at start (keys stay in memory). A connection whose first byte is a TLS
    /// handshake record (0x16) gets TLS, any other plain HTTP/websocket.
    #[arg(long, requires = "tls_ca_out")]
    pub tls: bool,

    /// Write the generated CA certificate (PEM) to this file before printing
    /// `listening` (stdout then also says `tls-ca PATH`); clients trust it to
    /// verify the server. Required with `--tls`.
    #[arg(long, value_name = "PATH", requires = "tls")]
    pub tls_ca_out: Option<PathBuf>,

    /// TLS versions the server negotiates, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "1.2,1.3",
        requires = "tls"
    )]
    pub tls_versions: Vec<TlsVersion>,

    /// AEADs the server negotiates, comma-separated (ECDHE-ECDSA suites for
    /// TLS 1.2, the matching TLS 1.3 suites).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "aes128gcm,aes256gcm,chacha20",
        requires = "tls"
    )]
    pub tls_ciphers: Vec<TlsCipher>,

    /// On TLS 1.3 connections, send a KeyUpdate (requesting the client's
    /// own) after every Nth websocket message (0 = never).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "tls")]
    pub key_update_every: u64,

    /// The account's API key: `/api/v3/order` then takes only signed
    /// requests (X-MBX-APIKEY, timestamp, recvWindow, HMAC-SHA256
    /// signature, as on Binance) and `/api/v3/userDataStream` only requests
    /// with the key; refusals get Binance's codes and are counted in
    /// `/orders/audit`'s `refused`. Its secret comes from --api-secret-file
    /// or SIM_API_SECRET. Without it every request is taken unsigned.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,

    /// File holding the secret of --api-key (its whole text, surrounding
    /// whitespace trimmed).
    #[arg(long, value_name = "PATH", requires = "api_key")]
    pub api_secret_file: Option<PathBuf>,

    /// Milliseconds the clock signed requests are checked against runs
    /// ahead of this host's (negative: behind), to test timestamps outside
    /// the recvWindow.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    pub clock_skew_ms: i64,
}

/// What `--help` says after the flags: the endpoints (details in the crate
/// documentation).
const AFTER_HELP: &str = "\
Websocket (any path; /ws/<listenKey> is a user-data stream):
  SUBSCRIBE <symbol>@trade, <symbol>@depth@100ms, <symbol>@depth (diffs every
  --depth-every-ms, Binance's depthUpdate shape, update ids per symbol and
  exchange-wide); ack with {\"method\":\"ack\",\"stream\":S,\"t\":T} (trades) or
  {\"method\":\"ack\",\"stream\":S,\"u\":U} (diffs).
HTTP on the same port:
  GET  /audit[?wait_acked_ms=N]  /pause  /resume  /health
  POST/GET/DELETE /api/v3/order   GET /api/v3/positions   GET /orders/audit
  GET  /api/v3/depth?symbol=S[&limit=N]      snapshot (default 100, max 5000)
  GET  /api/v3/depth/digest?symbol=S         {lastUpdateId, digest}: CRC-32 of
       \"<price>:<qty>;\"... bids best first, \"|\", asks best first, amounts as
       rust_decimal normalize().to_string()
  POST /api/v3/userDataStream  PUT|DELETE /api/v3/userDataStream?listenKey=K
       user-data websocket /ws/<listenKey>: executionReport per order event,
       listenKeyExpired after --listen-key-ttl-ms without a keep-alive
  With --api-key: /api/v3/order SIGNED, /api/v3/userDataStream the key only;
       refusals 401 -2014/-2015, 400 -1022/-1021/-1102, counted by kind
  POST|GET /control/depth_burst?symbol=S&n=N  N diffs back to back
  POST|GET /control/server_shutdown  serverShutdown + close every websocket";

impl Default for Args {
    fn default() -> Self {
        <Args as clap::Parser>::parse_from(["exchange-sim"])
    }
}

impl Args {
    /// Trade stream names served, in flag order, without duplicates or
    /// empty entries.
    pub fn stream_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for symbol in &self.symbols {
            let symbol = symbol.trim().to_ascii_lowercase();
            if symbol.is_empty() {
                continue;
            }
            let name = format!("{symbol}@trade");
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_match_the_contract() {
        let a = Args::default();
        assert_eq!(a.listen.to_string(), "127.0.0.1:0");
        assert_eq!(a.stream_names(), vec!["btcusdt@trade", "ethusdt@trade"]);
        assert_eq!(a.rate, 200);
        assert_eq!(a.seed, 1);
        assert_eq!(a.trades, None);
        assert_eq!(a.big_size, 70_000);
        assert_eq!(a.order_latency_ms, 0);
        assert_eq!(a.order_reject_every, 0);
        assert!(!a.tls && a.tls_ca_out.is_none());
        assert_eq!(a.tls_versions, vec![TlsVersion::V1_2, TlsVersion::V1_3]);
        assert_eq!(
            a.tls_ciphers,
            vec![
                TlsCipher::Aes128Gcm,
                TlsCipher::Aes256Gcm,
                TlsCipher::Chacha20
            ]
        );
        assert_eq!(a.key_update_every, 0);
        assert_eq!(a.depth_every_ms, 100);
        assert_eq!(a.listen_key_ttl_ms, 3_600_000);
        assert_eq!((a.max_conn_age_ms, a.ping_every_ms), (0, 0));
        assert_eq!(a.pong_timeout_ms, 60_000);
        assert_eq!(
            (a.api_key, a.api_secret_file, a.clock_skew_ms),
            (None, None, 0)
        );
    }

    #[test]
    fn api_key_flags() {
        let a = Args::parse_from([
            "x",
            "--api-key",
            "k",
            "--api-secret-file",
            "s",
            "--clock-skew-ms",
            "-60000",
        ]);
        assert_eq!(a.api_key.as_deref(), Some("k"));
        assert_eq!(a.api_secret_file, Some(PathBuf::from("s")));
        assert_eq!(a.clock_skew_ms, -60_000);
        assert!(Args::try_parse_from(["x", "--api-secret-file", "s"]).is_err());
        assert!(Args::try_parse_from(["x", "--clock-skew-ms", "soon"]).is_err());
    }

    #[test]
    fn help_lists_the_endpoints() {
        let help = <Args as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for needle in [
            "--depth-every-ms",
            "--listen-key-ttl-ms",
            "--max-conn-age-ms",
            "--ping-every-ms",
            "--pong-timeout-ms",
            "@depth@100ms",
            "/api/v3/depth?symbol=S",
            "/api/v3/depth/digest",
            "/api/v3/userDataStream",
            "/ws/<listenKey>",
            "/control/depth_burst",
            "/control/server_shutdown",
        ] {
            assert!(help.contains(needle), "--help lacks {needle}");
        }
    }

    #[test]
    fn depth_and_lifetime_flags() {
        let a = Args::parse_from([
            "x",
            "--depth-every-ms",
            "5",
            "--listen-key-ttl-ms",
            "300",
            "--max-conn-age-ms",
            "1000",
            "--ping-every-ms",
            "20",
            "--pong-timeout-ms",
            "200",
        ]);
        assert_eq!((a.depth_every_ms, a.listen_key_ttl_ms), (5, 300));
        assert_eq!(
            (a.max_conn_age_ms, a.ping_every_ms, a.pong_timeout_ms),
            (1000, 20, 200)
        );
        for bad in [
            ["--depth-every-ms", "0"],
            ["--listen-key-ttl-ms", "0"],
            ["--pong-timeout-ms", "0"],
            ["--ping-every-ms", "soon"],
        ] {
            assert!(
                Args::try_parse_from(["x", bad[0], bad[1]]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tls_flags_parse_and_bad_values_are_refused() {
        let a = Args::parse_from([
            "x",
            "--tls",
            "--tls-ca-out",
            "ca.pem",
            "--tls-versions",
            "1.3",
            "--tls-ciphers",
            "chacha20,aes256gcm",
            "--key-update-every",
            "5",
        ]);
        assert!(a.tls);
        assert_eq!(a.tls_ca_out, Some(PathBuf::from("ca.pem")));
        assert_eq!(a.tls_versions, vec![TlsVersion::V1_3]);
        assert_eq!(
            a.tls_ciphers,
            vec![TlsCipher::Chacha20, TlsCipher::Aes256Gcm]
        );
        assert_eq!(a.key_update_every, 5);
        let tls = ["x", "--tls", "--tls-ca-out", "ca.pem"];
        for bad in [
            &["--tls-versions", "1.1"][..],
            &["--tls-versions", ""],
            &["--tls-ciphers", "rc4"],
            &["--tls-ciphers", "aes128gcm,des"],
            &["--key-update-every", "-1"],
        ] {
            let argv = tls.iter().chain(bad).copied();
            assert!(Args::try_parse_from(argv).is_err(), "{bad:?} accepted");
        }
        // TLS knobs need --tls, and --tls needs somewhere to put the CA.
        assert!(Args::try_parse_from(["x", "--tls"]).is_err());
        assert!(Args::try_parse_from(["x", "--tls-ca-out", "ca.pem"]).is_err());
        assert!(Args::try_parse_from(["x", "--key-update-every", "3"]).is_err());
        assert!(Args::try_parse_from(["x", "--tls-versions", "1.2"]).is_err());
    }

    #[test]
    fn symbols_are_normalised_and_rate_zero_rejected() {
        let a = Args::parse_from(["x", "--symbols", "BTCUSDT, solusdt,,btcusdt"]);
        assert_eq!(a.stream_names(), vec!["btcusdt@trade", "solusdt@trade"]);
        assert!(Args::try_parse_from(["x", "--rate", "0"]).is_err());
    }
}
