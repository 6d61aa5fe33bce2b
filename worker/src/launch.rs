//! What a worker binary's `main` does around [`crate::run`], shared by
//! `trading-worker`, the benchmark's `bench-worker` and the Python package: logs to stderr
//! (`RUST_LOG`, default `info`), one feed per URL, the build label from
//! `HANDOFF_BUILD_ID`, a single-threaded runtime, and the exit code.

use std::process::ExitCode;

use crate::{App, Ended, Feed, Settings};

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
    ExitCode::from(run_to_code(bin, specs, settings, fresh))
}

/// [`run_main`], its exit code as a number (for a caller that is not
/// `main`: the Python package returns it to the script).
pub fn run_to_code<A: App>(
    bin: &str,
    specs: &[String],
    settings: Settings,
    fresh: impl FnOnce() -> A,
) -> u8 {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal (not in journald or a log file), and
        // never with NO_COLOR set.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .try_init();
    let feeds = match Feed::from_specs(specs) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{bin}: --feed: {e}");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{bin}: cannot start the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(crate::run(feeds, settings, fresh)) {
        Ok(Ended::HandedOver | Ended::Stopped | Ended::Abandoned) => 0,
        Ok(Ended::Rejected(reason)) => {
            eprintln!("{bin}: takeover refused: {reason}");
            4
        }
        // Said once (the supervisor has it too, from `Failed`).
        Err(e) => {
            eprintln!("{bin}: {e}");
            1
        }
    }
}
