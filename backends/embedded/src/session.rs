//! [`EmbeddedSession`]: one client's object table and the requests performed on it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use farcall_core::{flags, EvalSession, ExportTable, RefDesc, RefId, Release, RemoteException, Request, Target, Value};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyComplex, PyDict, PyFloat, PyFrozenSet, PyInt, PyModule, PyString, PyTuple, PyType};

use crate::convert::{Failure, Helpers, MAX_DEPTH, MAX_INPUT_DEPTH};
use crate::interpreter;

/// The objects a session handed out by reference, keyed by their Python `id()`.
type ObjectTable = ExportTable<Py<PyAny>, usize>;

/// The evaluation state of one client session in the embedded interpreter:
/// its object table. Created by
/// [`EmbeddedEvaluator::open`](farcall_core::Evaluator::open).
///
/// Requests may be performed from several threads at once. The table's lock
/// is held only to look up, add or remove entries, never while Python code
/// runs, so a slow call (one that releases the GIL, as `time.sleep` does)
/// does not hold up other calls of the same session. Dropping the session
/// drops every object it still holds.
///
/// Each thread that performs requests keeps a Python thread state until it
/// exits (attaching is then a plain GIL acquisition); freeing it at thread
/// exit takes the GIL briefly, so do not join such a thread while attached
/// to Python yourself.
pub struct EmbeddedSession {
    id: u64,
    helpers: Arc<Helpers>,
    table: Mutex<ObjectTable>,
}

impl std::fmt::Debug for EmbeddedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let table = self.lock();
        f.debug_struct("EmbeddedSession")
            .field("id", &self.id)
            .field("live_objects", &table.len())
            .field("exported_total", &table.exported_total())
            .finish()
    }
}

impl EmbeddedSession {
    pub(crate) fn new(id: u64, helpers: Arc<Helpers>) -> Self {
        EmbeddedSession { id, helpers, table: Mutex::new(ExportTable::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, ObjectTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `(live objects, objects ever exported)` of the table.
    fn stats(&self) -> Value {
        let table = self.lock();
        Value::Tuple(vec![
            Value::Int(i64::try_from(table.len()).unwrap_or(i64::MAX)),
            Value::Int(i64::try_from(table.exported_total()).unwrap_or(i64::MAX)),
        ])
    }

    /// Performs `request`, describing every failure as data.
    fn perform(&self, request: Request) -> Result<Value, RemoteException> {
        if let Request::Stats = request {
            return Ok(self.stats());
        }
        interpreter::keep_thread_state();
        Python::attach(|py| {
            self.run(py, request).map_err(|failure| match failure {
                Failure::Python(err) => self.helpers.describe(py, err),
                Failure::Remote(exc) => exc,
            })
        })
    }

    fn run(&self, py: Python<'_>, request: Request) -> Result<Value, Failure> {
        Ok(match request {
            Request::GetModule { name } => self.to_value(&self.helpers.import(py, &name)?, 0),
            Request::GetAttr { target, name } => self.to_value(&self.resolve(py, &target)?.getattr(name.as_str())?, 0),
            Request::SetAttr { target, name, value } => {
                let object = self.resolve(py, &target)?;
                object.setattr(name.as_str(), self.to_python(py, value, 0)?)?;
                Value::None
            }
            Request::DelAttr { target, name } => {
                self.resolve(py, &target)?.delattr(name.as_str())?;
                Value::None
            }
            Request::Call { target, args, kwargs } => {
                let function = self.resolve(py, &target)?;
                let args = args.into_iter().map(|a| self.to_python(py, a, 0)).collect::<Result<Vec<_>, _>>()?;
                let args = PyTuple::new(py, args)?;
                let result = if kwargs.is_empty() {
                    function.call(args, None)?
                } else {
                    let dict = PyDict::new(py);
                    for (name, value) in kwargs {
                        dict.set_item(name, self.to_python(py, value, 0)?)?;
                    }
                    function.call(args, Some(&dict))?
                };
                self.to_value(&result, 0)
            }
            Request::Repr { target } => Value::Str(self.resolve(py, &target)?.repr()?.to_string_lossy().into_owned()),
            Request::Str { target } => Value::Str(self.resolve(py, &target)?.str()?.to_string_lossy().into_owned()),
            Request::Stats => self.stats(),
        })
    }

    /// The object a target designates: the table's entry, then each attribute of the path.
    fn resolve<'py>(&self, py: Python<'py>, target: &Target) -> Result<Bound<'py, PyAny>, Failure> {
        let mut object = self.lookup(py, target.id)?;
        for name in &target.path {
            object = object.getattr(name.as_str())?;
        }
        Ok(object)
    }

    /// The table's entry `id` (a new reference, taken under the lock).
    fn lookup<'py>(&self, py: Python<'py>, id: RefId) -> Result<Bound<'py, PyAny>, RemoteException> {
        let table = self.lock();
        match table.get(id) {
            Some(object) => Ok(object.clone_ref(py).into_bound(py)),
            None => Err(RemoteException::protocol(format!(
                "reference {id} is not (or no longer) valid in this session: the object was released or never existed"
            ))),
        }
    }

    /// A Python result as a wire value: by value for the exact simple types,
    /// tuples of anything (elements that are not values become references)
    /// and frozensets of values; a reference for everything else.
    fn to_value(&self, object: &Bound<'_, PyAny>, depth: usize) -> Value {
        if let Some(v) = self.helpers.scalar(object) {
            return v;
        }
        if depth < MAX_DEPTH {
            if let Ok(t) = object.cast_exact::<PyTuple>() {
                return Value::Tuple(t.iter().map(|item| self.to_value(&item, depth + 1)).collect());
            }
            if object.is_exact_instance_of::<PyFrozenSet>() {
                if let Some(v) = self.helpers.plain(object, depth) {
                    return v;
                }
            }
        }
        Value::SenderObject(self.export(object))
    }

    /// Records one more sending of `object` in the table and describes it.
    fn export(&self, object: &Bound<'_, PyAny>) -> RefDesc {
        let ty = object.get_type();
        let type_name = format!(
            "{}.{}",
            ty.module().map(|m| m.to_string_lossy().into_owned()).unwrap_or_else(|_| "builtins".into()),
            ty.qualname().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|_| "?".into()),
        );
        let mut bits = 0;
        let mut attrs = Vec::new();
        if object.is_callable() {
            bits |= flags::CALLABLE;
        }
        if let Ok(module) = object.cast::<PyModule>() {
            bits |= flags::MODULE;
            attrs = self.helpers.module_attrs(module);
        }
        if object.is_instance_of::<PyType>() {
            bits |= flags::CLASS;
        }
        // Only an incref happens under the lock: no Python code runs there.
        let id = self.lock().export(object.as_ptr() as usize, || object.clone().unbind());
        RefDesc { id, type_name, flags: bits, attrs }
    }

    /// A wire value as a Python object.
    fn to_python<'py>(&self, py: Python<'py>, value: Value, depth: usize) -> Result<Bound<'py, PyAny>, Failure> {
        if depth >= MAX_INPUT_DEPTH {
            return Err(RemoteException::protocol(format!("values nested deeper than {MAX_INPUT_DEPTH} levels")).into());
        }
        Ok(match value {
            Value::None => py.None().into_bound(py),
            Value::Bool(b) => PyBool::new(py, b).to_owned().into_any(),
            Value::Int(i) => PyInt::new(py, i).into_any(),
            Value::BigInt(b) => self.helpers.int_from_bytes(py, &b)?,
            Value::Float(f) => PyFloat::new(py, f).into_any(),
            Value::Complex(re, im) => PyComplex::from_doubles(py, re, im).into_any(),
            Value::Str(s) => PyString::new(py, &s).into_any(),
            Value::Bytes(b) => PyBytes::new(py, &b).into_any(),
            Value::Tuple(items) => {
                let items = items.into_iter().map(|v| self.to_python(py, v, depth + 1)).collect::<Result<Vec<_>, _>>()?;
                PyTuple::new(py, items)?.into_any()
            }
            Value::FrozenSet(items) => {
                let items = items.into_iter().map(|v| self.to_python(py, v, depth + 1)).collect::<Result<Vec<_>, _>>()?;
                PyFrozenSet::new(py, items)?.into_any()
            }
            Value::ReceiverObject(target) => self.resolve(py, &target)?,
            Value::SenderObject(desc) => {
                return Err(RemoteException::protocol(format!(
                    "passing local objects by reference is not supported yet (got a reference to a {})",
                    desc.type_name
                ))
                .into())
            }
        })
    }
}

impl EvalSession for EmbeddedSession {
    fn evaluate(&self, request: Request) -> Result<Value, RemoteException> {
        let op = request.name();
        catch_unwind(AssertUnwindSafe(|| self.perform(request))).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(session = self.id, op, panic = %what, "the embedded evaluator panicked");
            Err(RemoteException::new("farcall", "InternalError", format!("the server's evaluator failed on {op}: {what}")))
        })
    }

    fn release(&self, refs: &[Release]) {
        let dropped: Vec<Py<PyAny>> = {
            let mut table = self.lock();
            refs.iter().filter_map(|r| table.release(r.id, r.count)).collect()
        };
        drop_attached(dropped);
    }
}

impl Drop for EmbeddedSession {
    fn drop(&mut self) {
        let objects = self.table.get_mut().unwrap_or_else(PoisonError::into_inner).drain();
        tracing::debug!(session = self.id, objects = objects.len(), "embedded session closed");
        drop_attached(objects);
    }
}

/// Drops Python objects with the interpreter attached (their finalizers may
/// run Python code), outside any lock of ours.
fn drop_attached(objects: Vec<Py<PyAny>>) {
    if objects.is_empty() {
        return;
    }
    interpreter::keep_thread_state();
    Python::attach(move |_py| drop(objects));
}
