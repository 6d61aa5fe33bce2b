//! What a worker binary's `main` does around [`handoff_worker::run`], shared
//! by `trading-worker` and the benchmark's `bench-worker`: logs to stderr
//! (`RUST_LOG`, default `info`), one feed per URL, the build label from
//! `HANDOFF_BUILD_ID`, a single-threaded runtime, and the exit code.

use std::process::ExitCode;

use handoff_worker::{App, Ended, Feed, Settings};

/// The build label `supervisorctl status` shows: `HANDOFF_BUILD_ID` if a
/// deploy pipeline set it, else `default`.
pub fn build_id(default: impl FnOnce() -> String) -> String {
    std::env::var("HANDOFF_BUILD_ID").unwrap_or_else(|_| default())
}

/// Run `fresh`'s app on the feeds `specs` name (`NAME=URL`, or a bare URL
/// named `feed-<i>` by its position: [`Feed::from_specs`]) with `settings`
/// until it hands over, stops or fails. Exit codes: 0 handed over or
/// stopped, 1 failed, 2 bad feed list, 4 takeover refused. `bin` prefixes
/// what goes to stderr.
pub fn run_main<A: App>(
    bin: &str,
    specs: &[String],
    settings: Settings,
    fresh: impl FnOnce() -> A,
) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let feeds = match Feed::from_specs(specs) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{bin}: --feed: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{bin}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(handoff_worker::run(feeds, settings, fresh)) {
        Ok(Ended::HandedOver | Ended::Stopped | Ended::Abandoned) => ExitCode::SUCCESS,
        Ok(Ended::Rejected(reason)) => {
            eprintln!("{bin}: takeover refused: {reason}");
            ExitCode::from(4)
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("{bin}: {e}");
            ExitCode::FAILURE
        }
    }
}
