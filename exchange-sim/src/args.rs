//! Command-line flags of the simulator.

use std::net::SocketAddr;

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

    /// Write the outgoing byte stream in random chunks of 1..=N bytes (0 = whole batches).
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
    }

    #[test]
    fn symbols_are_normalised_and_rate_zero_rejected() {
        let a = Args::parse_from(["x", "--symbols", "BTCUSDT, solusdt,,btcusdt"]);
        assert_eq!(a.stream_names(), vec!["btcusdt@trade", "solusdt@trade"]);
        assert!(Args::try_parse_from(["x", "--rate", "0"]).is_err());
    }
}
