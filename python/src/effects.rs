//! A Python awaitable as a runtime effect.
//!
//! The runtime decides when an effect starts (only in the serving worker,
//! never before `Go`) and waits for it to settle before a freeze, by polling
//! a Rust future. [`run`] is that future: nothing happens until it is first
//! polled, and then it submits the awaitable to the asyncio loop of
//! `handoff._effects.EffectLoop` (a thread of its own) and waits for the
//! loop to call back with the result, or the exception it raised. A future
//! dropped before it ran closes the coroutine (so Python does not warn that
//! it was never awaited); one dropped while running cancels its task.

use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::sync::oneshot;

/// The package's effect loop (a `handoff._effects.EffectLoop`).
pub struct EffectLoop(pub Py<PyAny>);

/// The callback the effect loop calls, once, with an effect's result or
/// exception.
#[pyclass(frozen, module = "handoff._native")]
pub struct Done {
    tx: Mutex<Option<oneshot::Sender<Py<PyAny>>>>,
}

#[pymethods]
impl Done {
    fn __call__(&self, result: Py<PyAny>) {
        let tx = match self.tx.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(tx) = tx {
            // The effect was dropped (its worker exits): nobody wants it.
            let _ = tx.send(result);
        }
    }
}

/// What a dropped effect leaves to clean up.
struct Pending {
    /// The awaitable, until it is submitted.
    awaitable: Option<Py<PyAny>>,
    /// The `concurrent.futures.Future` of the submitted task.
    task: Option<Py<PyAny>>,
}

impl Pending {
    fn submitted(&mut self, task: Py<PyAny>) {
        self.task = Some(task);
    }

    /// Settled: nothing left to cancel.
    fn settled(&mut self) {
        self.task = None;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.awaitable.is_none() && self.task.is_none() {
            return;
        }
        Python::attach(|py| {
            if let Some(aw) = self.awaitable.take() {
                let aw = aw.bind(py);
                if aw.hasattr("close").unwrap_or(false) {
                    let _ = aw.call_method0("close");
                }
            }
            if let Some(task) = self.task.take() {
                let _ = task.bind(py).call_method0("cancel");
            }
        });
    }
}

/// The effect of `awaitable`: its output is what `on_done` gets.
pub fn run(
    effect_loop: Arc<EffectLoop>,
    awaitable: Py<PyAny>,
) -> impl std::future::Future<Output = Py<PyAny>> + Send + 'static {
    let mut pending = Pending {
        awaitable: Some(awaitable),
        task: None,
    };
    async move {
        let (tx, rx) = oneshot::channel();
        let submitted = Python::attach(|py| {
            let Some(aw) = pending.awaitable.take() else {
                return Err(PyRuntimeError::new_err("effect submitted twice")
                    .into_value(py)
                    .into_any());
            };
            let done = Done {
                tx: Mutex::new(Some(tx)),
            };
            effect_loop
                .0
                .bind(py)
                .call_method1("submit", (aw, done))
                .map(Bound::unbind)
                .map_err(|e| e.into_value(py).into_any())
        });
        match submitted {
            Ok(task) => pending.submitted(task),
            Err(exception) => return exception,
        }
        let result = rx.await;
        pending.settled();
        match result {
            Ok(r) => r,
            Err(_) => Python::attach(|py| {
                PyRuntimeError::new_err("the effect loop stopped before the effect finished")
                    .into_value(py)
                    .into_any()
            }),
        }
    }
}
