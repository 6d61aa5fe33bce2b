//! `out`, as a Python callback sees it: it records what the callback asks
//! for, and [`PyOutbox::drain_into`] hands it to the runtime's
//! [`Outbox`] once the callback returns. It is valid only during its
//! callback: one kept and used later raises, rather than losing the request
//! silently.

use std::sync::Arc;

use handoff_worker::protocol::worker::ConnId;
use handoff_worker::{Message, Outbox};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};

use crate::effects::{self, EffectLoop};
use crate::types::Conn;

/// Where a message goes.
enum To {
    Id(u32),
    Name(String),
}

/// One request of a callback, in the order it was made.
enum Op {
    Send(To, Message),
    At(u64, String),
    After(f64, String),
    Cancel(String),
    Open(String, String),
    Close(String),
    Spawn(Py<PyAny>),
}

/// What a callback asks the runtime to do once it returns.
#[pyclass(module = "handoff._native", name = "Outbox")]
pub struct PyOutbox {
    ops: Vec<Op>,
    live: bool,
}

impl PyOutbox {
    pub fn new() -> PyOutbox {
        PyOutbox {
            ops: Vec::new(),
            live: true,
        }
    }

    fn push(&mut self, op: Op) -> PyResult<()> {
        if !self.live {
            return Err(PyRuntimeError::new_err(
                "this outbox belongs to a callback that has returned: use the `out` of the current callback",
            ));
        }
        self.ops.push(op);
        Ok(())
    }

    /// Close this outbox and give what it recorded to `out`.
    pub fn drain_into(&mut self, out: &mut Outbox<Py<PyAny>>, effect_loop: &Arc<EffectLoop>) {
        self.live = false;
        for op in self.ops.drain(..) {
            match op {
                Op::Send(To::Id(id), msg) => out.send(ConnId(id), msg),
                Op::Send(To::Name(name), msg) => out.send_named(&name, msg),
                Op::At(due, key) => out.at(due, key),
                Op::After(secs, key) => out.after(std::time::Duration::from_secs_f64(secs), key),
                Op::Cancel(key) => out.cancel(key),
                Op::Open(name, url) => out.open(name, url),
                Op::Close(name) => out.close(name),
                Op::Spawn(awaitable) => out.spawn(effects::run(effect_loop.clone(), awaitable)),
            }
        }
    }
}

/// A message from Python: `str` is a text frame, `bytes` (or `bytearray`) a
/// binary one, anything else is turned into compact JSON text.
fn message(msg: &Bound<'_, PyAny>) -> PyResult<Message> {
    if let Ok(s) = msg.cast::<PyString>() {
        return Ok(Message::text(s.to_cow()?.into_owned()));
    }
    if let Ok(b) = msg.cast::<PyBytes>() {
        return Ok(Message::binary(b.as_bytes().to_vec()));
    }
    if let Ok(b) = msg.cast::<PyByteArray>() {
        return Ok(Message::binary(b.to_vec()));
    }
    let json = msg.py().import("json")?;
    let kwargs = pyo3::types::PyDict::new(msg.py());
    kwargs.set_item("separators", (",", ":"))?;
    let text: String = json
        .call_method("dumps", (msg,), Some(&kwargs))
        .map_err(|e| {
            PyTypeError::new_err(format!(
                "out.send: a message is str, bytes, or JSON-serializable: {e}"
            ))
        })?
        .extract()?;
    Ok(Message::text(text))
}

/// `conn` of `out.send`: a `Conn`, a connection id, or a connection name.
fn target(conn: &Bound<'_, PyAny>) -> PyResult<To> {
    if let Ok(c) = conn.cast::<Conn>() {
        return Ok(To::Id(c.get().id));
    }
    if let Ok(name) = conn.cast::<PyString>() {
        return Ok(To::Name(name.to_cow()?.into_owned()));
    }
    if let Ok(id) = conn.extract::<u32>() {
        return Ok(To::Id(id));
    }
    Err(PyTypeError::new_err(format!(
        "out.send: the connection is a Conn, an id or a name, not {}",
        conn.get_type().name()?
    )))
}

#[pymethods]
impl PyOutbox {
    /// Queue `msg` for `conn` (a `Conn`, its id, or its name such as
    /// `"feed-0"`): written in order once the callback returns.
    fn send(&mut self, conn: &Bound<'_, PyAny>, msg: &Bound<'_, PyAny>) -> PyResult<()> {
        let op = Op::Send(target(conn)?, message(msg)?);
        self.push(op)
    }

    /// Call `on_timer` with `key` in `seconds`, in whichever worker serves
    /// then (timers are handed over with the state). Setting a pending key
    /// moves it.
    fn after(&mut self, seconds: f64, key: String) -> PyResult<()> {
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(PyValueError::new_err(format!(
                "out.after: seconds must be finite and not negative, not {seconds}"
            )));
        }
        self.push(Op::After(seconds, key))
    }

    /// Call `on_timer` with `key` at `unix_ms` (milliseconds since the
    /// Unix epoch).
    fn at(&mut self, unix_ms: u64, key: String) -> PyResult<()> {
        self.push(Op::At(unix_ms, key))
    }

    /// Forget the pending timer `key`, if any.
    fn cancel(&mut self, key: String) -> PyResult<()> {
        self.push(Op::Cancel(key))
    }

    /// Open a connection named `name` to `url` (`ws://` or `wss://`); it is
    /// handed over like a configured feed, and `on_open` follows.
    fn open(&mut self, name: String, url: String) -> PyResult<()> {
        self.push(Op::Open(name, url))
    }

    /// Close the connection named `name` (it is not opened again);
    /// `on_closed` follows.
    fn close(&mut self, name: String) -> PyResult<()> {
        self.push(Op::Close(name))
    }

    /// Run `awaitable` (an order over HTTP, say) on the package's asyncio
    /// loop; its result, or the exception it raised, comes back through
    /// `on_done`. Effects run only in the worker that serves: a successor
    /// starts none before it is told to go, and a freezing worker waits for
    /// its own first. Record the effect in the state before spawning it.
    fn spawn(&mut self, awaitable: &Bound<'_, PyAny>) -> PyResult<()> {
        let inspect = awaitable.py().import("inspect")?;
        if !inspect
            .call_method1("isawaitable", (awaitable,))?
            .extract::<bool>()?
        {
            return Err(PyTypeError::new_err(format!(
                "out.spawn takes an awaitable (a coroutine: call the async function), not {}",
                awaitable.get_type().name()?
            )));
        }
        self.push(Op::Spawn(awaitable.clone().unbind()))
    }

    fn __repr__(&self) -> String {
        format!("Outbox({} queued, live={})", self.ops.len(), self.live)
    }
}
