//! The object semantics of `farcall_semantics.py` (shared with the subprocess
//! backend's worker), loaded once into the embedded interpreter, and the
//! mechanical conversions between wire [`Value`]s and the Python objects
//! that module takes and returns (its host contract: see its docstring).
//!
//! Nothing here decides anything: what travels by value or by reference,
//! ids, counts, module hints and how an exception is described all come from
//! the Python module.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use farcall_core::{flags, LazyAttr, LazyKind, RefDesc, RemoteException, Request, Target, Value};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyComplex, PyDict, PyFloat, PyFrozenSet, PyInt, PyModule, PySlice, PyString, PyTuple, PyType};
use pyo3::{intern, PyErr};

/// `farcall_semantics.py`: the one definition of the object semantics.
pub(crate) const SEMANTICS_PY: &str = include_str!("../../python/farcall_semantics.py");

/// `bytes` results at least this long are shared with Python, not copied.
pub(crate) const ZERO_COPY_MIN: usize = 16 * 1024;

/// The module, loaded once per process.
static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// Loads `farcall_semantics` into the interpreter (once per process).
fn module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    MODULE
        .get_or_try_init(py, || {
            let code = CString::new(SEMANTICS_PY).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
            PyModule::from_code(py, &code, c"farcall_semantics.py", c"farcall_semantics").map(Bound::unbind)
        })
        .map(|m| m.bind(py))
}

/// What the module provides, looked up once per evaluator.
pub(crate) struct Semantics {
    session_class: Py<PyAny>,
    describe: Py<PyAny>,
    target_class: Py<PyType>,
    ref_class: Py<PyType>,
    /// `ListValue`, `DictValue`, `SetValue`: the boxed forms of copies.
    copies: Option<[Py<PyType>; 3]>,
    exception_data: Py<PyAny>,
    farcall_error: Py<PyAny>,
    protocol_error: Py<PyAny>,
    /// `PeerError`, raised for an exception of the client.
    peer_error: Option<Py<PyAny>>,
    /// `BUILTIN`, the opcode of `Builtin` requests.
    builtin_op: u8,
    lazy_attr_class: Py<PyAny>,
    lazy_module: u8,
    lazy_class: u8,
    lazy_callable: u8,
    int_to_bytes: Py<PyAny>,
    int_from_bytes: Py<PyAny>,
    /// Module hints already converted, by the identity of the module's
    /// tuple of `LazyAttr` (the module hands out the same tuple until the
    /// hints change); each entry holds its tuple, so the key is not reused.
    hints: Mutex<HintsCache>,
}

/// Converted module hints by tuple identity, each with the tuple it came from.
type HintsCache = HashMap<usize, (Py<PyAny>, Vec<LazyAttr>)>;

/// Converted module hints kept at most (the cache starts over beyond).
const HINTS_CACHED: usize = 512;

impl Semantics {
    /// Loads the module (the first time) and looks up what the host needs.
    pub(crate) fn new(py: Python<'_>) -> PyResult<Self> {
        let m = module(py)?;
        let constant = |name: &str| -> PyResult<u8> { m.getattr(name)?.extract() };
        // The module's flag bits are the wire's.
        for (name, bit) in
            [("CALLABLE", flags::CALLABLE), ("MODULE", flags::MODULE), ("CLASS", flags::CLASS), ("ITERATOR", flags::ITERATOR)]
        {
            if constant(name)? != bit {
                return Err(pyo3::exceptions::PyValueError::new_err(format!("farcall_semantics.{name} is not the wire's flag {bit}")));
            }
        }
        let class = |name: &str| -> PyResult<Py<PyType>> { Ok(m.getattr(name)?.cast_into::<PyType>()?.unbind()) };
        let copies = match (class("ListValue"), class("DictValue"), class("SetValue")) {
            (Ok(l), Ok(d), Ok(s)) => Some([l, d, s]),
            _ => None,
        };
        Ok(Semantics {
            session_class: m.getattr("Session")?.unbind(),
            describe: m.getattr("describe")?.unbind(),
            target_class: class("Target")?,
            ref_class: class("Ref")?,
            copies,
            exception_data: m.getattr("ExceptionData")?.unbind(),
            farcall_error: m.getattr("FarcallError")?.unbind(),
            protocol_error: m.getattr("ProtocolError")?.unbind(),
            peer_error: m.getattr("PeerError").ok().map(Bound::unbind),
            builtin_op: m.getattr("BUILTIN").and_then(|b| b.extract()).unwrap_or(9),
            lazy_attr_class: m.getattr("LazyAttr")?.unbind(),
            lazy_module: constant("LAZY_MODULE")?,
            lazy_class: constant("LAZY_CLASS")?,
            lazy_callable: constant("LAZY_CALLABLE")?,
            int_to_bytes: m.getattr("int_to_bytes")?.unbind(),
            int_from_bytes: m.getattr("int_from_bytes")?.unbind(),
            hints: Mutex::new(HashMap::new()),
        })
    }

    /// `BUILTIN`: the opcode of `Builtin` requests.
    pub(crate) fn builtin_op(&self) -> u8 {
        self.builtin_op
    }

    /// A new `farcall_semantics.Session`.
    pub(crate) fn new_session<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.session_class.bind(py).call0()
    }

    /// A wire target as a `farcall_semantics.Target`.
    pub(crate) fn target<'py>(&self, py: Python<'py>, target: &Target) -> PyResult<Bound<'py, PyAny>> {
        let path = if target.path.is_empty() {
            PyTuple::empty(py)
        } else {
            PyTuple::new(py, target.path.iter().map(|name| PyString::new(py, name)))?
        };
        self.target_class.bind(py).call1((target.id, path))
    }

    /// A wire value as the Python object the module expects: scalars as
    /// themselves, tuples, frozensets, [`Value::ReceiverObject`] as a
    /// `Target`, [`Value::SenderObject`] as a `Ref`.
    pub(crate) fn to_python<'py>(&self, py: Python<'py>, value: Value) -> PyResult<Bound<'py, PyAny>> {
        Ok(match value {
            Value::None => py.None().into_bound(py),
            Value::Bool(b) => PyBool::new(py, b).to_owned().into_any(),
            Value::Int(i) => PyInt::new(py, i).into_any(),
            Value::BigInt(b) => self.int_from_bytes.bind(py).call1((PyBytes::new(py, &b),))?,
            Value::Float(f) => PyFloat::new(py, f).into_any(),
            Value::Complex(re, im) => PyComplex::from_doubles(py, re, im).into_any(),
            Value::Str(s) => PyString::new(py, &s).into_any(),
            Value::Bytes(b) => PyBytes::new(py, &b).into_any(),
            Value::Tuple(items) => {
                let items = items.into_iter().map(|v| self.to_python(py, v)).collect::<PyResult<Vec<_>>>()?;
                PyTuple::new(py, items)?.into_any()
            }
            Value::FrozenSet(items) => {
                let items = items.into_iter().map(|v| self.to_python(py, v)).collect::<PyResult<Vec<_>>>()?;
                PyFrozenSet::new(py, items)?.into_any()
            }
            Value::ReceiverObject(target) => self.target(py, &target)?,
            Value::SenderObject(desc) => {
                let attrs = if desc.attrs.is_empty() {
                    PyTuple::empty(py)
                } else {
                    let lazy = self.lazy_attr_class.bind(py);
                    let attrs = desc
                        .attrs
                        .iter()
                        .map(|a| match &a.kind {
                            LazyKind::Module(module) => lazy.call1((a.name.as_str(), self.lazy_module, module.as_str())),
                            LazyKind::Class => lazy.call1((a.name.as_str(), self.lazy_class)),
                            LazyKind::Callable => lazy.call1((a.name.as_str(), self.lazy_callable)),
                        })
                        .collect::<PyResult<Vec<_>>>()?;
                    PyTuple::new(py, attrs)?
                };
                self.ref_class.bind(py).call1((desc.id, desc.type_name, desc.flags, attrs))?
            }
            Value::List(items) => {
                let items = items.into_iter().map(|v| self.to_python(py, v)).collect::<PyResult<Vec<_>>>()?;
                self.copy_classes()?[0].bind(py).call1((PyTuple::new(py, items)?,))?
            }
            Value::Set(items) => {
                let items = items.into_iter().map(|v| self.to_python(py, v)).collect::<PyResult<Vec<_>>>()?;
                self.copy_classes()?[2].bind(py).call1((PyTuple::new(py, items)?,))?
            }
            Value::Dict(pairs) => {
                let [_, dict, _] = self.copy_classes()?;
                let pairs = pairs
                    .into_iter()
                    .map(|(k, v)| PyTuple::new(py, [self.to_python(py, k)?, self.to_python(py, v)?]))
                    .collect::<PyResult<Vec<_>>>()?;
                dict.bind(py).call1((PyTuple::new(py, pairs)?,))?
            }
            Value::Slice(parts) => {
                let [start, stop, step] = *parts;
                let parts = (self.to_python(py, start)?, self.to_python(py, stop)?, self.to_python(py, step)?);
                py.get_type::<PySlice>().call1(parts)?
            }
            Value::Ellipsis => py.Ellipsis().into_bound(py),
        })
    }

    /// `ListValue`, `DictValue` and `SetValue`, or an error saying the module lacks them.
    fn copy_classes(&self) -> PyResult<&[Py<PyType>; 3]> {
        self.copies.as_ref().ok_or_else(|| {
            pyo3::exceptions::PyNotImplementedError::new_err(
                "this farcall_semantics has no ListValue/DictValue/SetValue: copies are not supported",
            )
        })
    }

    /// A `farcall_semantics.Target` (a request field naming the peer's object) as a wire [`Target`].
    fn wire_target(&self, obj: &Bound<'_, PyAny>) -> PyResult<Target> {
        let py = obj.py();
        if !obj.is_exact_instance(self.target_class.bind(py)) {
            return Err(self.protocol_error(
                py,
                format!(
                    "the target of a request to the client must be a Target, not {}",
                    obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                ),
            ));
        }
        let path = obj.getattr(intern!(py, "path"))?;
        let path = if path.is_empty()? { Vec::new() } else { path.try_iter()?.map(|p| p?.extract()).collect::<PyResult<_>>()? };
        Ok(Target { id: obj.getattr(intern!(py, "id"))?.extract()?, path })
    }

    /// A `farcall_semantics.FarcallError`.
    pub(crate) fn farcall_error(&self, py: Python<'_>, message: String) -> PyErr {
        match self.farcall_error.bind(py).call1((message,)) {
            Ok(e) => PyErr::from_value(e),
            Err(e) => e,
        }
    }

    /// A `farcall_semantics.ProtocolError`.
    pub(crate) fn protocol_error(&self, py: Python<'_>, message: String) -> PyErr {
        match self.protocol_error.bind(py).call1((message,)) {
            Ok(e) => PyErr::from_value(e),
            Err(e) => e,
        }
    }

    /// The request `session.peer.request(op, *fields)` asks for: `fields`
    /// in boxed form (`Target` for the peer's objects).
    pub(crate) fn peer_request(&self, op: u8, fields: &Bound<'_, PyTuple>) -> PyResult<Request> {
        let py = fields.py();
        let want = match op {
            8 => 0,
            1 | 6 | 7 => 1,
            2 | 4 => 2,
            3 | 5 => 3,
            _ if op == self.builtin_op => 2,
            _ => return Err(self.protocol_error(py, format!("cannot send unknown operation {op} to the client"))),
        };
        if fields.len() != want {
            return Err(self.protocol_error(py, format!("operation {op} takes {want} fields, got {}", fields.len())));
        }
        let f = |i: usize| fields.get_item(i);
        let values = |seq: Bound<'_, PyAny>| -> PyResult<Vec<Value>> { seq.try_iter()?.map(|v| self.to_value(&v?)).collect() };
        Ok(match op {
            1 => Request::GetModule { name: f(0)?.extract()? },
            2 => Request::GetAttr { target: self.wire_target(&f(0)?)?, name: f(1)?.extract()? },
            3 => Request::SetAttr { target: self.wire_target(&f(0)?)?, name: f(1)?.extract()?, value: self.to_value(&f(2)?)? },
            4 => Request::DelAttr { target: self.wire_target(&f(0)?)?, name: f(1)?.extract()? },
            5 => {
                let kwargs = f(2)?;
                let kwargs = if kwargs.is_none() {
                    Vec::new()
                } else {
                    let items = match kwargs.cast::<PyDict>() {
                        Ok(d) => d.items().into_any(),
                        Err(_) => kwargs,
                    };
                    items
                        .try_iter()?
                        .map(|pair| {
                            let (name, value): (String, Bound<'_, PyAny>) = pair?.extract()?;
                            Ok((name, self.to_value(&value)?))
                        })
                        .collect::<PyResult<_>>()?
                };
                Request::Call { target: self.wire_target(&f(0)?)?, args: values(f(1)?)?, kwargs }
            }
            6 => Request::Repr { target: self.wire_target(&f(0)?)? },
            7 => Request::Str { target: self.wire_target(&f(0)?)? },
            8 => Request::Stats,
            _ => Request::Builtin { name: f(0)?.extract()?, args: values(f(1)?)? },
        })
    }

    /// What `session.peer.request` raises for the client's exception: a
    /// `PeerError` holding its `ExceptionData`, or `FarcallError` when the
    /// connection is gone.
    pub(crate) fn peer_error(&self, py: Python<'_>, e: RemoteException) -> PyErr {
        let made = (|| -> PyResult<PyErr> {
            if e.type_module == "farcall" && e.type_name == "ConnectionLost" {
                return Ok(PyErr::from_value(self.farcall_error.bind(py).call1((e.message,))?));
            }
            let args = e.args.into_iter().map(|a| self.to_python(py, a)).collect::<PyResult<Vec<_>>>()?;
            let data = self.exception_data.bind(py).call1((e.type_module, e.type_name, PyTuple::new(py, args)?, e.message, e.traceback))?;
            let Some(peer_error) = &self.peer_error else {
                return Ok(PyErr::from_value(self.farcall_error.bind(py).call1((format!("the client raised {data:?}"),))?));
            };
            Ok(PyErr::from_value(peer_error.bind(py).call1((data,))?))
        })();
        made.unwrap_or_else(|err| err)
    }

    /// A boxed value (what the module returns) as a wire value: the exact
    /// simple types, tuples, frozensets and `Ref`s.
    pub(crate) fn to_value(&self, obj: &Bound<'_, PyAny>) -> PyResult<Value> {
        let py = obj.py();
        Ok(if obj.is_none() {
            Value::None
        } else if obj.is_exact_instance_of::<PyInt>() {
            match obj.extract::<i64>() {
                Ok(i) => Value::Int(i),
                Err(_) => {
                    let b = self.int_to_bytes.bind(py).call1((obj,))?;
                    Value::BigInt(Bytes::copy_from_slice(b.cast::<PyBytes>()?.as_bytes()))
                }
            }
        } else if let Ok(f) = obj.cast_exact::<PyFloat>() {
            Value::Float(f.value())
        } else if let Ok(s) = obj.cast_exact::<PyString>() {
            Value::Str(s.to_str()?.to_owned())
        } else if let Ok(b) = obj.cast_exact::<PyBool>() {
            Value::Bool(b.is_true())
        } else if let Ok(b) = obj.cast_exact::<PyBytes>() {
            Value::Bytes(bytes_value(b))
        } else if let Ok(t) = obj.cast_exact::<PyTuple>() {
            Value::Tuple(t.iter().map(|item| self.to_value(&item)).collect::<PyResult<_>>()?)
        } else if let Ok(s) = obj.cast_exact::<PyFrozenSet>() {
            Value::FrozenSet(s.iter().map(|item| self.to_value(&item)).collect::<PyResult<_>>()?)
        } else if obj.is_exact_instance(self.ref_class.bind(py)) {
            Value::SenderObject(self.ref_desc(obj)?)
        } else if let Ok(c) = obj.cast_exact::<PyComplex>() {
            Value::Complex(c.real(), c.imag())
        } else if let Some(v) = self.copy_to_value(obj)? {
            v
        } else if obj.is_exact_instance(self.target_class.bind(py)) {
            Value::ReceiverObject(self.wire_target(obj)?)
        } else if let Ok(s) = obj.cast_exact::<PySlice>() {
            let part = |name: &Bound<'_, PyString>| s.getattr(name).and_then(|p| self.to_value(&p));
            Value::Slice(Box::new([part(intern!(py, "start"))?, part(intern!(py, "stop"))?, part(intern!(py, "step"))?]))
        } else if obj.is(py.Ellipsis()) {
            Value::Ellipsis
        } else {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "farcall_semantics returned a {}, which is not a boxed value",
                obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
            )));
        })
    }

    /// A `ListValue`, `DictValue` or `SetValue` as a wire copy.
    fn copy_to_value(&self, obj: &Bound<'_, PyAny>) -> PyResult<Option<Value>> {
        let Some([list, dict, set]) = &self.copies else { return Ok(None) };
        let py = obj.py();
        let items = |obj: &Bound<'_, PyAny>| -> PyResult<Vec<Value>> { obj.cast::<PyTuple>()?.iter().map(|i| self.to_value(&i)).collect() };
        Ok(if obj.is_exact_instance(list.bind(py)) {
            Some(Value::List(items(obj)?))
        } else if obj.is_exact_instance(dict.bind(py)) {
            let pairs = obj
                .cast::<PyTuple>()?
                .iter()
                .map(|pair| {
                    let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) = pair.extract()?;
                    Ok((self.to_value(&k)?, self.to_value(&v)?))
                })
                .collect::<PyResult<_>>()?;
            Some(Value::Dict(pairs))
        } else if obj.is_exact_instance(set.bind(py)) {
            Some(Value::Set(items(obj)?))
        } else {
            None
        })
    }

    /// A `farcall_semantics.Ref` as a [`RefDesc`].
    fn ref_desc(&self, obj: &Bound<'_, PyAny>) -> PyResult<RefDesc> {
        let py = obj.py();
        let attrs = obj.getattr(intern!(py, "attrs"))?;
        let attrs = if attrs.is_empty()? { Vec::new() } else { self.hints(&attrs)? };
        Ok(RefDesc {
            id: obj.getattr(intern!(py, "id"))?.extract()?,
            type_name: obj.getattr(intern!(py, "type_name"))?.extract()?,
            flags: obj.getattr(intern!(py, "flags"))?.extract()?,
            attrs,
        })
    }

    /// A `Ref`'s module hints (a sequence of `LazyAttr`) as [`LazyAttr`]s.
    fn hints(&self, attrs: &Bound<'_, PyAny>) -> PyResult<Vec<LazyAttr>> {
        let py = attrs.py();
        let key = attrs.as_ptr() as usize;
        if let Some((_, cached)) = self.hints.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Ok(cached.clone());
        }
        let converted: Vec<LazyAttr> = attrs
            .try_iter()?
            .map(|attr| {
                let attr = attr?;
                let name: String = attr.getattr(intern!(py, "name"))?.extract()?;
                let kind: u8 = attr.getattr(intern!(py, "kind"))?.extract()?;
                let kind = if kind == self.lazy_module {
                    LazyKind::Module(attr.getattr(intern!(py, "module"))?.extract()?)
                } else if kind == self.lazy_class {
                    LazyKind::Class
                } else {
                    LazyKind::Callable
                };
                Ok(LazyAttr { name, kind })
            })
            .collect::<PyResult<_>>()?;
        let dropped = {
            let mut hints = self.hints.lock().unwrap_or_else(PoisonError::into_inner);
            let dropped = if hints.len() >= HINTS_CACHED { std::mem::take(&mut *hints) } else { HashMap::new() };
            hints.insert(key, (attrs.clone().unbind(), converted.clone()));
            dropped
        };
        // Dropped outside the lock (attached: the caller is).
        drop(dropped);
        Ok(converted)
    }

    /// Describes what a request raised, with the module's `describe`.
    pub(crate) fn describe(&self, py: Python<'_>, err: PyErr) -> RemoteException {
        // `into_value` attaches the traceback to the exception object.
        let exc = err.into_value(py);
        let described = self.describe.bind(py).call1((exc,)).and_then(|data| {
            let data = data.cast_into::<PyTuple>()?;
            let (type_module, type_name, args, message, traceback): (String, String, Bound<'_, PyTuple>, String, String) =
                data.as_any().extract()?;
            let args = args.iter().map(|a| self.to_value(&a)).collect::<PyResult<_>>()?;
            Ok(RemoteException { type_module, type_name, args, message, traceback })
        });
        described.unwrap_or_else(|e| {
            RemoteException::new("farcall", "InternalError", format!("the server's evaluator could not describe an exception: {e}"))
        })
    }
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
