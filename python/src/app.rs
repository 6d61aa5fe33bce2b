//! [`PyApp`]: the runtime's [`App`], calling into a Python object.
//!
//! Every callback attaches to the interpreter once, builds its arguments,
//! calls the method, and hands what `out` recorded to the runtime. A Python
//! exception never reaches the runtime as a panic: it is logged with its
//! traceback and counted (`callback_errors` in the summary); in `restore`
//! it refuses the takeover, and in `snapshot` it refuses the freeze (the old
//! worker carries on) or skips that checkpoint.

use std::collections::HashMap;
use std::sync::Arc;

use handoff_worker::protocol::worker::{ConnId, ConnInfo, RestoreMode};
use handoff_worker::{App, AppError, Closed, Identity, Message, Outbox, Timer};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use tracing::error;

use crate::effects::EffectLoop;
use crate::outbox::PyOutbox;
use crate::types::{self, Conn};

/// What an effect hands back: the awaitable's result, or its exception.
pub type Done = Py<PyAny>;

/// A Python app object, driven by the runtime.
pub struct PyApp {
    obj: Py<PyAny>,
    identity: Identity,
    effect_loop: Arc<EffectLoop>,
    /// One `Conn` per connection, made once (ids are never reused).
    conns: HashMap<ConnId, Py<Conn>>,
    /// Exceptions raised by callbacks so far.
    errors: u64,
}

/// A schema list attribute (`READS_SCHEMAS`, `WRITES_SCHEMAS`): `None` or
/// absent means `[SCHEMA]`.
fn schemas(obj: &Bound<'_, PyAny>, attr: &str, schema: u32) -> PyResult<Vec<u32>> {
    match obj.getattr(attr) {
        Ok(v) if !v.is_none() => v.extract::<Vec<u32>>().map_err(|e| {
            PyTypeError::new_err(format!("{attr} must be a list of schema numbers: {e}"))
        }),
        _ => Ok(vec![schema]),
    }
}

/// `err` as the log shows it: the traceback, then the exception.
fn describe(py: Python<'_>, err: &PyErr) -> String {
    let tb = err
        .traceback(py)
        .and_then(|t| t.format().ok())
        .unwrap_or_default();
    let kind = err
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    format!("{tb}{kind}: {}", err.value(py))
}

fn mode_str(mode: RestoreMode) -> &'static str {
    match mode {
        RestoreMode::Handoff => "handoff",
        RestoreMode::Recovery => "recovery",
    }
}

impl PyApp {
    /// Read the app's identity (`NAME`, `SCHEMA`, `READS_SCHEMAS`,
    /// `WRITES_SCHEMAS`): a bad one is a `TypeError` before anything runs.
    pub fn new(py: Python<'_>, obj: Py<PyAny>, effect_loop: Py<PyAny>) -> PyResult<PyApp> {
        let b = obj.bind(py);
        let name: String = b
            .getattr("NAME")
            .and_then(|n| n.extract())
            .map_err(|e| PyTypeError::new_err(format!("the app's NAME must be a str: {e}")))?;
        let schema: u32 = b.getattr("SCHEMA").and_then(|n| n.extract()).map_err(|e| {
            PyTypeError::new_err(format!(
                "the app's SCHEMA must be a schema number (an int from 0): {e}"
            ))
        })?;
        let identity = Identity {
            reads: schemas(b, "READS_SCHEMAS", schema)?,
            writes: schemas(b, "WRITES_SCHEMAS", schema)?,
            name,
            schema,
        };
        Ok(PyApp {
            obj,
            identity,
            effect_loop: Arc::new(EffectLoop(effect_loop)),
            conns: HashMap::new(),
            errors: 0,
        })
    }

    /// What stderr lines are prefixed with.
    pub fn identity_name(&self) -> String {
        self.identity.name.clone()
    }

    fn conn(&mut self, py: Python<'_>, info: &ConnInfo) -> PyResult<Py<Conn>> {
        if let Some(c) = self.conns.get(&info.id) {
            return Ok(c.clone_ref(py));
        }
        let c = Py::new(py, Conn::from_info(info))?;
        self.conns.insert(info.id, c.clone_ref(py));
        Ok(c)
    }

    /// Call `method` if the app has it, with the arguments `args` builds
    /// and a fresh `out` last; then hand what `out` recorded to the runtime
    /// (also when the method raised: what it asked for before it raised
    /// matches what it changed in the state).
    fn callback(
        &mut self,
        method: &'static str,
        out: &mut Outbox<Done>,
        args: impl for<'py> FnOnce(Python<'py>, &mut Self) -> PyResult<Vec<Bound<'py, PyAny>>>,
    ) {
        Python::attach(|py| {
            let outbox = match Py::new(py, PyOutbox::new()) {
                Ok(o) => o,
                Err(e) => return self.failed(py, method, &e),
            };
            let called = args(py, self).and_then(|mut a| {
                a.push(outbox.bind(py).clone().into_any());
                let a = pyo3::types::PyTuple::new(py, a)?;
                let obj = self.obj.bind(py);
                if obj.hasattr(method)? {
                    obj.call_method1(method, a)?;
                }
                Ok(())
            });
            outbox.borrow_mut(py).drain_into(out, &self.effect_loop);
            if let Err(e) = called {
                self.failed(py, method, &e);
            }
        });
    }

    fn failed(&mut self, py: Python<'_>, method: &str, err: &PyErr) {
        self.errors += 1;
        error!(
            callback = method,
            "the Python app raised; the runtime carries on:\n{}",
            describe(py, err)
        );
    }

    fn bytes_of<'py>(
        &self,
        py: Python<'py>,
        method: &str,
        args: impl pyo3::call::PyCallArgs<'py>,
    ) -> Result<Vec<u8>, AppError> {
        let result = self
            .obj
            .bind(py)
            .call_method1(method, args)
            .map_err(|e| AppError::new(format!("{method}() raised:\n{}", describe(py, &e))))?;
        let bytes = result.cast::<PyBytes>().map_err(|_| {
            AppError::new(format!(
                "{method}() must return bytes, not {}",
                result
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        Ok(bytes.as_bytes().to_vec())
    }
}

impl App for PyApp {
    // Placeholders: the runtime asks `identity()`, which the Python class
    // says (see `PyApp::new`).
    const NAME: &'static str = "python";
    const SCHEMA: u32 = 0;
    type Done = Done;

    fn identity(&self) -> Identity {
        self.identity.clone()
    }

    fn snapshot(&self) -> Result<Vec<u8>, AppError> {
        Python::attach(|py| self.bytes_of(py, "snapshot", ()))
    }

    fn snapshot_as(&self, schema: u32) -> Result<Vec<u8>, AppError> {
        Python::attach(|py| {
            if self.obj.bind(py).hasattr("snapshot_as").unwrap_or(false) {
                self.bytes_of(py, "snapshot_as", (schema,))
            } else if schema == self.identity.schema {
                self.bytes_of(py, "snapshot", ())
            } else {
                Err(AppError::new(format!(
                    "cannot write schema {schema}: the app has no snapshot_as()"
                )))
            }
        })
    }

    fn restore(&mut self, schema: u32, bytes: &[u8], mode: RestoreMode) -> Result<(), AppError> {
        Python::attach(|py| {
            let data = PyBytes::new(py, bytes);
            self.obj
                .bind(py)
                .call_method1("restore", (schema, data, mode_str(mode)))
                .map(drop)
                .map_err(|e| AppError::new(format!("restore() raised:\n{}", describe(py, &e))))
        })
    }

    /// A child of a Python process cannot run Python code safely (the
    /// interpreter's other threads, the GIL): checkpoints stay in the loop.
    fn snapshot_in_child(&self) -> bool {
        false
    }

    fn summary(&self) -> Option<String> {
        Python::attach(|py| {
            let obj = self.obj.bind(py);
            let got = if obj.hasattr("summary").ok()? {
                match obj.call_method0("summary") {
                    Ok(v) if v.is_none() => PyDict::new(py).into_any(),
                    Ok(v) => v,
                    Err(e) => {
                        error!("summary() raised:\n{}", describe(py, &e));
                        return None;
                    }
                }
            } else {
                PyDict::new(py).into_any()
            };
            if let Ok(d) = got.cast::<PyDict>() {
                let d = d.copy().ok()?;
                d.set_item("callback_errors", self.errors).ok()?;
                return dumps(py, d.as_any());
            }
            dumps(py, &got)
        })
    }

    fn on_open(&mut self, conn: &ConnInfo, out: &mut Outbox<Done>) {
        self.callback("on_open", out, |py, me| {
            Ok(vec![me.conn(py, conn)?.into_bound(py).into_any()])
        });
    }

    fn on_message(&mut self, conn: &ConnInfo, msg: Message, out: &mut Outbox<Done>) {
        // Pings are answered by the runtime; pongs and closes are its own.
        if !matches!(msg, Message::Text(_) | Message::Binary(_)) {
            return;
        }
        self.callback("on_message", out, |py, me| {
            let m = match &msg {
                Message::Text(t) => PyString::new(py, t.as_str()).into_any(),
                Message::Binary(b) => PyBytes::new(py, b).into_any(),
                other => {
                    return Err(PyTypeError::new_err(format!(
                        "not a data message: {other:?}"
                    )))
                }
            };
            Ok(vec![me.conn(py, conn)?.into_bound(py).into_any(), m])
        });
    }

    fn on_done(&mut self, done: Done, out: &mut Outbox<Done>) {
        self.callback("on_done", out, |py, _| Ok(vec![done.into_bound(py)]));
    }

    fn on_timer(&mut self, timer: &Timer, out: &mut Outbox<Done>) {
        self.callback("on_timer", out, |py, _| {
            Ok(vec![Py::new(py, types::Timer::from_timer(timer))?
                .into_bound(py)
                .into_any()])
        });
    }

    fn on_closed(&mut self, conn: &ConnInfo, why: &Closed, out: &mut Outbox<Done>) {
        let why = match why {
            Closed::Lost(_) => "lost",
            Closed::ByApp => "by_app",
            Closed::MaxAge => "max_age",
            Closed::Refused(_) => "refused",
        };
        self.callback("on_closed", out, |py, me| {
            Ok(vec![
                me.conn(py, conn)?.into_bound(py).into_any(),
                PyString::new(py, why).into_any(),
            ])
        });
        self.conns.remove(&conn.id);
    }

    fn on_takeover(&mut self, mode: RestoreMode, out: &mut Outbox<Done>) {
        self.callback("on_takeover", out, |py, _| {
            Ok(vec![PyString::new(py, mode_str(mode)).into_any()])
        });
    }
}

/// `json.dumps(v, default=str)`: `Decimal` and other values become strings.
fn dumps(py: Python<'_>, v: &Bound<'_, PyAny>) -> Option<String> {
    let json = py.import("json").ok()?;
    let kwargs = PyDict::new(py);
    let builtins = py.import("builtins").ok()?;
    kwargs
        .set_item("default", builtins.getattr("str").ok()?)
        .ok()?;
    match json.call_method("dumps", (v,), Some(&kwargs)) {
        Ok(s) => s.extract().ok(),
        Err(e) => {
            error!("summary() is not JSON-serializable:\n{}", describe(py, &e));
            None
        }
    }
}
