//! # handoff for Python: the native part of the `handoff` package
//!
//! A Python bot gets the worker runtime of `handoff-worker` unchanged: the
//! connections, the frame-boundary reads and leftovers, TLS and kernel TLS,
//! freeze and thaw, heartbeats, checkpoints, timers and the effects gate all
//! stay in Rust. Python only holds the app. The parts:
//!
//! - [`app::PyApp`] is the [`handoff_worker::App`] that calls into the
//!   Python object: the interpreter is attached once per callback, never per
//!   byte; an exception is logged with its traceback and, in `restore`,
//!   refuses the takeover (the old worker thaws);
//! - [`outbox::PyOutbox`] is what a callback gets as `out`: it records
//!   sends, timers, connections and effects, which are handed to the
//!   runtime's [`handoff_worker::Outbox`] once the callback returns;
//! - [`effects`] runs a Python awaitable (an order over httpx, say) as a
//!   runtime effect on the asyncio loop `handoff._effects` keeps in a thread
//!   of its own: it is submitted only when the runtime first polls it, so
//!   the gate holds exactly as for Rust effects (none before `Go`, settled
//!   before a freeze);
//! - [`types`] holds the small values a callback reads: `Conn`, `Timer`.
//!
//! `run` is the entry point; `handoff/__init__.py` wraps it.
// Not `forbid`: PyO3's macros expand to `unsafe` blocks that they mark
// `#[allow(unsafe_code)]`, which `forbid` would refuse. Nothing in this
// crate's own code is unsafe.
#![deny(unsafe_code)]

mod app;
mod effects;
mod outbox;
mod types;

use std::path::PathBuf;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use handoff_worker::tls::KernelTlsMode;
use handoff_worker::Settings;

/// Run `app` on `feeds` until it hands over, stops or fails, and return the
/// exit code (0 handed over or stopped, 1 failed, 2 bad feed list, 4 takeover
/// refused). `effect_loop` is a `handoff._effects.EffectLoop`.
#[pyfunction]
#[pyo3(signature = (app, feeds, effect_loop, *, build_id, checkpoint_ms, ca_file, kernel_tls, max_conn_age_ms))]
#[allow(clippy::too_many_arguments)]
fn run(
    py: Python<'_>,
    app: Py<PyAny>,
    feeds: Vec<String>,
    effect_loop: Py<PyAny>,
    build_id: String,
    checkpoint_ms: u64,
    ca_file: Option<PathBuf>,
    kernel_tls: &str,
    max_conn_age_ms: Option<u64>,
) -> PyResult<u8> {
    let kernel_tls: KernelTlsMode = kernel_tls
        .parse()
        .map_err(|e| PyValueError::new_err(format!("kernel_tls: {e}")))?;
    if checkpoint_ms == 0 {
        return Err(PyValueError::new_err("checkpoint_ms must be above 0"));
    }
    let settings = Settings {
        build_id,
        checkpoint_interval: Duration::from_millis(checkpoint_ms),
        ca_file,
        kernel_tls,
        max_conn_age: max_conn_age_ms.map(Duration::from_millis),
        ..Settings::default()
    };
    let app = app::PyApp::new(py, app, effect_loop)?;
    let bin = app.identity_name();
    // The runtime runs on this thread, detached from the interpreter: each
    // callback attaches, and the effect loop's thread runs in between.
    Ok(py.detach(move || handoff_worker::launch::run_to_code(&bin, &feeds, settings, move || app)))
}

/// The native module, imported as `handoff._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_class::<types::Conn>()?;
    m.add_class::<types::Timer>()?;
    m.add_class::<outbox::PyOutbox>()?;
    m.add_class::<effects::Done>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
