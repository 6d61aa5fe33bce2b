//! The binary's side: [`run`] with flags until SIGINT/SIGTERM, and
//! [`cli_main`].

use crate::{Args, Sim, SimError};
use std::future::Future;
use std::io::Write as _;
use std::process::ExitCode;

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
