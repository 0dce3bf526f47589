//! What travels by value, and how: Python objects to wire [`Value`]s and
//! back, exceptions described as data, and the Python helpers this needs
//! (looked up once per evaluator).
//!
//! Conversions that need the session's object table (exporting references,
//! resolving the client's references) live in `session.rs`; everything here
//! is free of side effects on the table.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use farcall_core::{LazyAttr, LazyKind, RemoteException, Value};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyComplex, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PyModule, PyString, PyTuple, PyType};
use pyo3::{intern, PyErr};

/// Deepest nesting of tuples and frozensets sent by value; deeper ones travel
/// as references.
pub(crate) const MAX_DEPTH: usize = 32;

/// `bytes` results at least this long are shared with Python, not copied.
pub(crate) const ZERO_COPY_MIN: usize = 16 * 1024;

/// Deepest nesting of values accepted from the client (the codec allows 64).
pub(crate) const MAX_INPUT_DEPTH: usize = 64;

/// Why a request failed, before it is described as data.
pub(crate) enum Failure {
    /// Python raised.
    Python(PyErr),
    /// farcall refused (bad reference, unsupported value).
    Remote(RemoteException),
}

impl From<PyErr> for Failure {
    fn from(e: PyErr) -> Self {
        Failure::Python(e)
    }
}

impl From<RemoteException> for Failure {
    fn from(e: RemoteException) -> Self {
        Failure::Remote(e)
    }
}

/// The attribute hints of one module object, valid while its `__dict__`
/// keeps the same size.
struct CachedAttrs {
    module: Py<PyAny>,
    dict_len: usize,
    attrs: Vec<LazyAttr>,
}

/// Python objects looked up once per evaluator, and the module attribute cache.
pub(crate) struct Helpers {
    import_module: Py<PyAny>,
    format_exception: Py<PyAny>,
    int_to_bytes: Py<PyAny>,
    int_from_bytes: Py<PyAny>,
    module_attrs: Mutex<HashMap<String, CachedAttrs>>,
}

impl Helpers {
    /// Looks the helpers up.
    pub(crate) fn new(py: Python<'_>) -> PyResult<Self> {
        let ints = PyDict::new(py);
        let eval = |code: &std::ffi::CStr| py.eval(code, Some(&ints), None).map(Bound::unbind);
        Ok(Helpers {
            import_module: py.import("importlib")?.getattr("import_module")?.unbind(),
            format_exception: py.import("traceback")?.getattr("format_exception")?.unbind(),
            int_to_bytes: eval(c"lambda x: x.to_bytes((x.bit_length() + 8) // 8, 'little', signed=True)")?,
            int_from_bytes: eval(c"lambda b: int.from_bytes(b, 'little', signed=True)")?,
            module_attrs: Mutex::new(HashMap::new()),
        })
    }

    /// `importlib.import_module(name)`, answered from `sys.modules` when the
    /// module is there (as `import_module` would, without running importlib).
    pub(crate) fn import<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let key = PyString::new(py, name);
        // SAFETY: `key` is a valid str; `PyImport_GetModule` returns a new
        // reference, or NULL with or without an exception set.
        let found = unsafe { Bound::from_owned_ptr_or_opt(py, pyo3::ffi::PyImport_GetModule(key.as_ptr())) };
        match found {
            Some(m) if !m.is_none() => Ok(m),
            _ => {
                // A pending error (if any) is superseded by the import's own.
                drop(PyErr::take(py));
                self.import_module.bind(py).call1((key,))
            }
        }
    }

    /// A Python `int` from little-endian two's complement bytes.
    pub(crate) fn int_from_bytes<'py>(&self, py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        self.int_from_bytes.bind(py).call1((PyBytes::new(py, bytes),))
    }

    /// The value of an exact `int`, `float`, `str`, ... (not a container);
    /// `None` when `obj` is not one or cannot travel by value (a `str` with
    /// lone surrogates).
    pub(crate) fn scalar(&self, obj: &Bound<'_, PyAny>) -> Option<Value> {
        let py = obj.py();
        if obj.is_none() {
            Some(Value::None)
        } else if obj.is_exact_instance_of::<PyInt>() {
            Some(match obj.extract::<i64>() {
                Ok(i) => Value::Int(i),
                Err(_) => {
                    let b = self.int_to_bytes.bind(py).call1((obj,)).ok()?;
                    Value::BigInt(Bytes::copy_from_slice(b.cast::<PyBytes>().ok()?.as_bytes()))
                }
            })
        } else if let Ok(f) = obj.cast_exact::<PyFloat>() {
            Some(Value::Float(f.value()))
        } else if let Ok(s) = obj.cast_exact::<PyString>() {
            s.to_str().ok().map(|s| Value::Str(s.to_owned()))
        } else if let Ok(b) = obj.cast_exact::<PyBool>() {
            Some(Value::Bool(b.is_true()))
        } else if let Ok(b) = obj.cast_exact::<PyBytes>() {
            Some(Value::Bytes(bytes_value(b)))
        } else if let Ok(c) = obj.cast_exact::<PyComplex>() {
            Some(Value::Complex(c.real(), c.imag()))
        } else {
            None
        }
    }

    /// `obj` entirely by value (scalars, tuples and frozensets of them), or
    /// `None`. Never records anything in an object table.
    pub(crate) fn plain(&self, obj: &Bound<'_, PyAny>, depth: usize) -> Option<Value> {
        if let Some(v) = self.scalar(obj) {
            return Some(v);
        }
        if depth >= MAX_DEPTH {
            return None;
        }
        if let Ok(t) = obj.cast_exact::<PyTuple>() {
            t.iter().map(|item| self.plain(&item, depth + 1)).collect::<Option<Vec<_>>>().map(Value::Tuple)
        } else if let Ok(s) = obj.cast_exact::<PyFrozenSet>() {
            s.iter().map(|item| self.plain(&item, depth + 1)).collect::<Option<Vec<_>>>().map(Value::FrozenSet)
        } else {
            None
        }
    }

    /// The attribute hints of a module: its attributes that hold a module, a
    /// class or another callable. Computed once per module object (again if
    /// its namespace grows or shrinks, as when a submodule is imported).
    pub(crate) fn module_attrs(&self, module: &Bound<'_, PyModule>) -> Vec<LazyAttr> {
        let dict = module.dict();
        let dict_len = dict.len();
        let name = module.name().ok().and_then(|n| n.to_str().ok().map(str::to_owned));
        if let Some(name) = &name {
            let cache = self.module_attrs.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = cache.get(name) {
                if c.module.is(module) && c.dict_len == dict_len {
                    return c.attrs.clone();
                }
            }
        }
        let attrs = describe_namespace(&dict);
        if let Some(name) = name {
            let entry = CachedAttrs { module: module.clone().into_any().unbind(), dict_len, attrs: attrs.clone() };
            // The replaced entry (another module object of that name) is
            // dropped here, after the lock is released, while attached.
            let _replaced = self.module_attrs.lock().unwrap_or_else(PoisonError::into_inner).insert(name, entry);
        }
        attrs
    }

    /// Describes a Python exception as data.
    pub(crate) fn describe(&self, py: Python<'_>, err: PyErr) -> RemoteException {
        let value = err.value(py);
        let ty = value.get_type();
        let type_module = ty.module().map(|m| m.to_string_lossy().into_owned()).unwrap_or_else(|_| "builtins".to_owned());
        let type_name = ty.qualname().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|_| "BaseException".to_owned());
        let args = value
            .getattr(intern!(py, "args"))
            .ok()
            .and_then(|a| a.cast_into::<PyTuple>().ok())
            .map(|args| {
                args.iter()
                    .map(|a| {
                        self.plain(&a, 0)
                            .unwrap_or_else(|| Value::Str(a.repr().map(|r| r.to_string_lossy().into_owned()).unwrap_or_default()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let message = value.str().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("<unprintable {type_name} object>"));
        let frames = err.traceback(py);
        let mut traceback = self
            .format_exception
            .bind(py)
            .call1((&ty, value, &frames))
            .and_then(|lines| PyString::new(py, "").call_method1(intern!(py, "join"), (lines,)))
            .map(|text| text.to_string())
            .unwrap_or_default();
        if frames.is_none() {
            // Raised by C code the server called directly: there is no Python
            // frame, but the reader still deserves to see where it came from.
            traceback.insert_str(
                0,
                "Traceback (most recent call last):\n  [farcall server] raised by C code called directly (no Python frames)\n",
            );
        }
        RemoteException { type_module, type_name, args, message, traceback }
    }
}

/// The hints for the names of a module's namespace.
fn describe_namespace(dict: &Bound<'_, PyDict>) -> Vec<LazyAttr> {
    // Iterate over a snapshot: reading a submodule's `__name__` may run
    // Python code that changes the namespace.
    let items: Bound<'_, PyList> = dict.items();
    let mut attrs = Vec::with_capacity(items.len());
    for item in items.iter() {
        let Ok((name, value)) = item.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>() else {
            continue;
        };
        let Some(name) = name.cast::<PyString>().ok().and_then(|n| n.to_str().ok().map(str::to_owned)) else {
            continue;
        };
        let kind = if let Ok(m) = value.cast::<PyModule>() {
            match m.name() {
                Ok(full) => LazyKind::Module(full.to_string_lossy().into_owned()),
                Err(_) => continue,
            }
        } else if value.is_instance_of::<PyType>() {
            LazyKind::Class
        } else if value.is_callable() {
            LazyKind::Callable
        } else {
            continue;
        };
        attrs.push(LazyAttr { name, kind });
    }
    attrs
}

/// Keeps a Python `bytes` object alive for as long as a [`Bytes`] shares its buffer.
struct PyBytesOwner {
    /// Holds the buffer alive. Dropped without being attached (the last
    /// `Bytes` may go away on a network thread), pyo3 defers the decref to
    /// the next time any thread attaches, so this never blocks on the GIL.
    _object: Py<PyBytes>,
    data: *const u8,
    len: usize,
}

// SAFETY: `data` points into the immutable buffer of `_object`, which this
// owner keeps alive; `bytes` objects are never mutated once shared (CPython
// only resizes a `bytes` whose sole reference its creator holds), and objects
// never move, so the slice may be read from any thread without the GIL.
unsafe impl Send for PyBytesOwner {}

impl AsRef<[u8]> for PyBytesOwner {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: see the `Send` impl; `data`/`len` were taken from the
        // object while attached.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }
}

/// The content of a `bytes` object: shared with Python when large, copied otherwise.
fn bytes_value(b: &Bound<'_, PyBytes>) -> Bytes {
    let data = b.as_bytes();
    if data.len() < ZERO_COPY_MIN {
        return Bytes::copy_from_slice(data);
    }
    Bytes::from_owner(PyBytesOwner { data: data.as_ptr(), len: data.len(), _object: b.clone().unbind() })
}
