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
    about = "Adversarial Binance-style websocket trade feed and REST order API, with audits"
)]
pub struct Args {
    /// Address to listen on (websocket and HTTP share the port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// Comma-separated symbols; each is served as the stream `<symbol>@trade`.
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
}

impl Default for Args {
    fn default() -> Self {
        <Args as clap::Parser>::parse_from(["exchange-sim"])
    }
}

impl Args {
    /// Stream names served, in flag order, without duplicates or empty entries.
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
