//! `farcall._native`: the compiled core of the `farcall` Python package, a
//! thin layer over the Rust client. The public API is the plain Python
//! package around it; this module only moves values across the boundary.
//!
//! It also creates `farcall._semantics` from the same `farcall_semantics.py`
//! the servers run, and uses one `_semantics.Session` per connection for the
//! client's own objects: arguments that are neither values nor proxies of
//! the connection are exported through it, and the server's requests on
//! them (callbacks) are performed by it, on the thread that waits for a reply.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use farcall_client::{Client, ClientError, Handler, Hint, Remote, RemoteObject};
use farcall_core::{LazyAttr, LazyKind, RefDesc, Release, RemoteException, Request, Target, Value};
use pyo3::exceptions::{PyTimeoutError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    IntoPyDict, PyBool, PyBytes, PyComplex, PyDict, PyEllipsis, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PySlice, PyString, PyTuple,
};

/// `bytes` at least this long are sent without copying them.
const ZERO_COPY_MIN: usize = 16 * 1024;
/// Nesting beyond this is refused rather than overflowing a stack.
const MAX_DEPTH: usize = 32;
/// The object semantics shared with the servers.
const SEMANTICS_PY: &str = include_str!("../../backends/python/farcall_semantics.py");

/// Python callables registered by the package at import.
struct Hooks {
    proxy_class: Py<PyAny>,
    make_proxy: Py<PyAny>,
    remote_error: Py<PyAny>,
    client_error: Py<PyAny>,
    int_from_bytes: Py<PyAny>,
}

static HOOKS: PyOnceLock<Hooks> = PyOnceLock::new();

fn hooks(py: Python<'_>) -> PyResult<&Hooks> {
    HOOKS.get(py).ok_or_else(|| PyTypeError::new_err("farcall._native used before farcall registered its hooks"))
}

/// What the native module uses of `farcall._semantics`.
struct Semantics {
    module: Py<PyModule>,
    session: Py<PyAny>,
    target: Py<PyAny>,
    reference: Py<PyAny>,
    list_value: Py<PyAny>,
    dict_value: Py<PyAny>,
    set_value: Py<PyAny>,
    describe: Py<PyAny>,
}

static SEMANTICS: PyOnceLock<Semantics> = PyOnceLock::new();

fn semantics(py: Python<'_>) -> PyResult<&Semantics> {
    SEMANTICS.get_or_try_init(py, || {
        let code = CString::new(SEMANTICS_PY).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let module = PyModule::from_code(py, &code, c"farcall_semantics.py", c"farcall._semantics")?;
        py.import("sys")?.getattr("modules")?.set_item("farcall._semantics", &module)?;
        let get = |name: &str| module.getattr(name).map(Bound::unbind);
        Ok(Semantics {
            session: get("Session")?,
            target: get("Target")?,
            reference: get("Ref")?,
            list_value: get("ListValue")?,
            dict_value: get("DictValue")?,
            set_value: get("SetValue")?,
            describe: get("describe")?,
            module: module.unbind(),
        })
    })
}

/// Called once by `farcall/__init__.py`.
#[pyfunction]
fn _register(
    py: Python<'_>,
    proxy_class: Py<PyAny>,
    make_proxy: Py<PyAny>,
    remote_error: Py<PyAny>,
    client_error: Py<PyAny>,
) -> PyResult<()> {
    let int_from_bytes = py.get_type::<PyInt>().getattr("from_bytes")?.unbind();
    let _ = HOOKS.set(py, Hooks { proxy_class, make_proxy, remote_error, client_error, int_from_bytes });
    let sem = semantics(py)?;
    if let Ok(package) = py.import("farcall") {
        package.setattr("_semantics", sem.module.bind(py))?;
    }
    // A proxy sent back by a callback goes home as the server's own object
    // (`_semantics.Session.box` asks `_farcall_home`), unless the package
    // defines that itself.
    let proxy_class = HOOKS.get(py).map(|h| h.proxy_class.bind(py).clone());
    if let Some(cls) = proxy_class {
        if !cls.getattr("__dict__")?.contains("_farcall_home")? {
            let home = py.eval(c"lambda self, session: self._farcall_handle.home(session)", None, None)?;
            cls.setattr("_farcall_home", home)?;
        }
    }
    Ok(())
}

/// Turns a client error into the matching Python exception.
fn to_pyerr(py: Python<'_>, e: ClientError) -> PyErr {
    let h = match hooks(py) {
        Ok(h) => h,
        Err(err) => return err,
    };
    let built = match e {
        ClientError::Remote(x) => remote_exception(py, h, x),
        ClientError::Type { .. } => return PyTypeError::new_err(e.to_string()),
        ClientError::Usage(m) => return PyValueError::new_err(m),
        ClientError::Timeout(_) => {
            // farcall may define its own TimeoutError subclass for "timeout";
            // whatever it builds must be a TimeoutError.
            let message = e.to_string();
            match h.client_error.call1(py, ("timeout", &message)) {
                Ok(exc) if exc.bind(py).is_instance_of::<PyTimeoutError>() => Ok(exc),
                _ => return PyTimeoutError::new_err(message),
            }
        }
        other => {
            let kind = match &other {
                ClientError::Address { .. } => "address",
                ClientError::Connect { .. } | ClientError::Tls(_) => "connect",
                ClientError::Handshake(_) => "handshake",
                ClientError::ConnectionLost(_) => "lost",
                _ => "protocol",
            };
            h.client_error.call1(py, (kind, other.to_string()))
        }
    };
    match built {
        Ok(exc) => PyErr::from_value(exc.into_bound(py)),
        Err(err) => err,
    }
}

fn remote_exception(py: Python<'_>, h: &Hooks, x: RemoteException) -> PyResult<Py<PyAny>> {
    let args = PyTuple::new(py, x.args.into_iter().map(|a| value_to_py_plain(py, a)).collect::<PyResult<Vec<_>>>()?)?;
    h.remote_error.call1(py, (x.type_module, x.type_name, args, x.message, x.traceback))
}

/// A handle on one server object (a `farcall.Proxy` holds one).
#[pyclass(frozen, module = "farcall._native")]
struct Handle {
    obj: RemoteObject,
}

/// Keeps a Python `bytes` alive while the Rust side sends it without a copy.
struct PyBytesOwner {
    _obj: Py<PyBytes>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the pointer is into an immutable `bytes` object kept alive by `_obj`;
// reading immutable memory from any thread is sound. The `Py` is dropped
// through pyo3's deferred reference pool when the thread is not attached.
unsafe impl Send for PyBytesOwner {}
unsafe impl Sync for PyBytesOwner {}

impl AsRef<[u8]> for PyBytesOwner {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: see the Send impl; `len` bytes at `ptr` live as long as `_obj`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// How Python objects that are not plain values are sent.
#[derive(Clone, Copy)]
enum Mode<'a> {
    /// Call arguments: the connection's proxies go home, everything else is
    /// exported through the connection's session (sent by reference).
    Args,
    /// Copies (`Client.builtin(..., copy=True)`): lists, dicts and sets are
    /// copied (subclasses as their base type); proxies of the connection go
    /// home; anything else is a TypeError that starts with the operation's name.
    Copy(&'a str),
    /// A result boxed by `_semantics.Session` (the reply to a callback):
    /// `Ref` is one of the client's objects, `Target` (or a `Handle`) a
    /// server object going home.
    Boxed,
}

/// Where a value that cannot be copied sits, built while unwinding.
struct CopyFailure {
    reason: String,
    segments: Vec<String>,
}

enum SendError {
    Py(PyErr),
    Copy(CopyFailure),
}

impl From<PyErr> for SendError {
    fn from(e: PyErr) -> Self {
        SendError::Py(e)
    }
}

impl SendError {
    fn at(self, segment: impl FnOnce() -> String) -> Self {
        match self {
            SendError::Copy(mut c) => {
                c.segments.push(segment());
                SendError::Copy(c)
            }
            other => other,
        }
    }

    fn into_pyerr(self, what: &str) -> PyErr {
        match self {
            SendError::Py(e) => e,
            SendError::Copy(c) => {
                let at: String = c.segments.iter().rev().map(String::as_str).collect();
                let at = if at.is_empty() { String::new() } else { format!(" at {at}") };
                PyTypeError::new_err(format!("{what}: {}{at}", c.reason))
            }
        }
    }
}

fn cannot_copy(obj: &Bound<'_, PyAny>) -> SendError {
    let name = type_name(obj);
    SendError::Copy(CopyFailure { reason: format!("cannot copy a {name}"), segments: Vec::new() })
}

/// `module.qualname` of the object's type.
fn type_name(obj: &Bound<'_, PyAny>) -> String {
    let t = obj.get_type();
    match (t.module(), t.qualname()) {
        (Ok(m), Ok(q)) => format!("{m}.{q}"),
        _ => "?".into(),
    }
}

fn key_segment(key: &Bound<'_, PyAny>) -> String {
    match key.repr() {
        Ok(r) => format!("[{r}]"),
        Err(_) => "[?]".into(),
    }
}

/// The connection's local state, for conversions that need it (looked up
/// on first use: plain values never need it).
struct Ctx<'a> {
    client: &'a Client,
    local: std::cell::OnceCell<Option<Arc<Local>>>,
}

impl<'a> Ctx<'a> {
    fn new(client: &'a Client) -> Self {
        Ctx { client, local: std::cell::OnceCell::new() }
    }

    fn local_opt(&self) -> Option<&Arc<Local>> {
        self.local.get_or_init(|| local_of(self.client)).as_ref()
    }

    fn local(&self) -> PyResult<&Local> {
        self.local_opt().map(|l| &**l).ok_or_else(|| PyTypeError::new_err("farcall: this connection has no local session"))
    }
}

fn py_to_remote(obj: &Bound<'_, PyAny>, ctx: &Ctx<'_>, mode: Mode<'_>, depth: usize) -> Result<Remote, SendError> {
    if depth > MAX_DEPTH {
        return match mode {
            Mode::Copy(_) => Err(SendError::Copy(CopyFailure {
                reason: format!("cannot copy values nested deeper than {MAX_DEPTH} levels"),
                segments: Vec::new(),
            })),
            _ => Err(PyValueError::new_err("farcall: value nested too deeply to send").into()),
        };
    }
    if obj.is_none() {
        return Ok(Remote::None);
    }
    if obj.is_exact_instance_of::<PyBool>() {
        return Ok(Remote::Bool(obj.extract()?));
    }
    if obj.is_exact_instance_of::<PyInt>() {
        return int_to_remote(obj).map_err(Into::into);
    }
    if obj.is_exact_instance_of::<PyFloat>() {
        return Ok(Remote::Float(obj.extract()?));
    }
    if obj.is_exact_instance_of::<PyString>() {
        return Ok(Remote::Str(obj.extract()?));
    }
    if let Ok(b) = obj.cast_exact::<PyBytes>() {
        let data = b.as_bytes();
        if data.len() < ZERO_COPY_MIN {
            return Ok(Remote::Bytes(Bytes::copy_from_slice(data)));
        }
        return Ok(Remote::Bytes(Bytes::from_owner(PyBytesOwner { ptr: data.as_ptr(), len: data.len(), _obj: b.clone().unbind() })));
    }
    if let Ok(t) = obj.cast_exact::<PyTuple>() {
        return Ok(Remote::Tuple(items_to_remote(t.iter(), ctx, mode, depth)?));
    }
    if let Ok(s) = obj.cast_exact::<PyFrozenSet>() {
        return Ok(Remote::FrozenSet(items_to_remote(s.iter(), ctx, mode, depth)?));
    }
    if obj.is_exact_instance_of::<PyComplex>() {
        let c = obj.cast::<PyComplex>().map_err(PyErr::from)?;
        return Ok(Remote::Complex(c.real(), c.imag()));
    }
    let py = obj.py();
    if let Ok(s) = obj.cast_exact::<PySlice>() {
        let part = |name: &str| -> Result<Remote, SendError> { py_to_remote(&s.getattr(name)?, ctx, mode, depth + 1) };
        return Ok(Remote::Slice(Box::new([part("start")?, part("stop")?, part("step")?])));
    }
    if obj.is(PyEllipsis::get(py)) {
        return Ok(Remote::Ellipsis);
    }
    // Boxed copies (a teleport payload, a callback's result).
    let sem = semantics(py)?;
    let t = obj.get_type();
    if t.is(sem.list_value.bind(py)) {
        return Ok(Remote::List(items_to_remote(obj.try_iter()?.flatten(), ctx, mode, depth)?));
    }
    if t.is(sem.set_value.bind(py)) {
        return Ok(Remote::Set(items_to_remote(obj.try_iter()?.flatten(), ctx, mode, depth)?));
    }
    if t.is(sem.dict_value.bind(py)) {
        let mut pairs = Vec::new();
        for pair in obj.try_iter()? {
            let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) = pair?.extract()?;
            pairs.push((py_to_remote(&k, ctx, mode, depth + 1)?, py_to_remote(&v, ctx, mode, depth + 1)?));
        }
        return Ok(Remote::Dict(pairs));
    }
    if let Ok(h) = obj.cast_exact::<Handle>() {
        return handle_to_remote(h.get(), ctx, obj, mode);
    }
    if obj.is_instance(hooks(py)?.proxy_class.bind(py))? {
        let handle = obj.getattr("_farcall_handle")?;
        return handle_to_remote(handle.cast::<Handle>().map_err(PyErr::from)?.get(), ctx, obj, mode);
    }
    match mode {
        Mode::Args => export(obj, ctx),
        Mode::Copy(_) => copy_to_remote(obj, ctx, mode, depth),
        Mode::Boxed => {
            if t.is(sem.reference.bind(py)) {
                return Ok(Remote::Export(ref_to_desc(obj)?));
            }
            if t.is(sem.target.bind(py)) {
                let target = target_of(obj)?;
                return match ctx.client.object_for(&target) {
                    Some(o) => Ok(Remote::Object(o)),
                    None => Err(PyValueError::new_err(format!(
                        "farcall: server object {} cannot be sent back: this connection no longer holds it",
                        target.id
                    ))
                    .into()),
                };
            }
            Err(PyTypeError::new_err(format!("farcall: a callback's result holds a {} that is not boxed", type_name(obj))).into())
        }
    }
}

fn items_to_remote<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    ctx: &Ctx<'_>,
    mode: Mode<'_>,
    depth: usize,
) -> Result<Vec<Remote>, SendError> {
    items.enumerate().map(|(i, x)| py_to_remote(&x, ctx, mode, depth + 1).map_err(|e| e.at(|| format!("[{i}]")))).collect()
}

fn int_to_remote(obj: &Bound<'_, PyAny>) -> PyResult<Remote> {
    match obj.extract::<i64>() {
        Ok(i) => Ok(Remote::Int(i)),
        Err(_) => {
            let bits: usize = obj.call_method0("bit_length")?.extract()?;
            let b: Vec<u8> =
                obj.call_method("to_bytes", (bits / 8 + 1, "little"), Some(&[("signed", true)].into_py_dict(obj.py())?))?.extract()?;
            Ok(Remote::BigInt(b.into()))
        }
    }
}

/// A proxy's handle as an argument: its object goes home when it belongs to
/// this connection; a proxy of another connection is exported like any
/// local object (calls on it are forwarded), except in a copy.
fn handle_to_remote(h: &Handle, ctx: &Ctx<'_>, obj: &Bound<'_, PyAny>, mode: Mode<'_>) -> Result<Remote, SendError> {
    if h.obj.client().same_connection(ctx.client) {
        return Ok(Remote::Object(h.obj.clone()));
    }
    match mode {
        Mode::Args => export(obj, ctx),
        Mode::Copy(_) => {
            Err(SendError::Copy(CopyFailure { reason: "cannot copy a proxy of another connection".into(), segments: Vec::new() }))
        }
        Mode::Boxed => Err(PyValueError::new_err("farcall: a proxy can only be passed to the connection it came from").into()),
    }
}

/// A local object sent by reference: recorded in the connection's session.
fn export(obj: &Bound<'_, PyAny>, ctx: &Ctx<'_>) -> Result<Remote, SendError> {
    let local = ctx.local()?;
    let reference = local.session.bind(obj.py()).call_method1("export", (obj,))?;
    Ok(Remote::Export(ref_to_desc(&reference)?))
}

/// A copy of a list, dict, set or a subclass of a scalar type.
fn copy_to_remote(obj: &Bound<'_, PyAny>, ctx: &Ctx<'_>, mode: Mode<'_>, depth: usize) -> Result<Remote, SendError> {
    if let Ok(list) = obj.cast::<PyList>() {
        return Ok(Remote::List(items_to_remote(list.iter(), ctx, mode, depth)?));
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return Ok(Remote::Tuple(items_to_remote(t.iter(), ctx, mode, depth)?));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut pairs = Vec::with_capacity(d.len());
        for (k, v) in d.iter() {
            let key = py_to_remote(&k, ctx, mode, depth + 1).map_err(|e| e.at(|| " (a dict key)".into()))?;
            let value = py_to_remote(&v, ctx, mode, depth + 1).map_err(|e| e.at(|| key_segment(&k)))?;
            pairs.push((key, value));
        }
        return Ok(Remote::Dict(pairs));
    }
    if let Ok(s) = obj.cast::<PySet>() {
        return Ok(Remote::Set(set_items(s.iter(), ctx, mode, depth)?));
    }
    if let Ok(s) = obj.cast::<PyFrozenSet>() {
        return Ok(Remote::FrozenSet(set_items(s.iter(), ctx, mode, depth)?));
    }
    if obj.is_instance_of::<PyBool>() {
        return Ok(Remote::Bool(obj.is_truthy()?));
    }
    if obj.is_instance_of::<PyInt>() {
        return int_to_remote(&obj.py().get_type::<PyInt>().call1((obj,))?).map_err(Into::into);
    }
    if obj.is_instance_of::<PyFloat>() {
        return Ok(Remote::Float(obj.extract()?));
    }
    if obj.is_instance_of::<PyString>() {
        return Ok(Remote::Str(obj.cast::<PyString>().map_err(PyErr::from)?.to_str()?.to_owned()));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Remote::Bytes(Bytes::copy_from_slice(b.as_bytes())));
    }
    if let Ok(c) = obj.cast::<PyComplex>() {
        return Ok(Remote::Complex(c.real(), c.imag()));
    }
    Err(cannot_copy(obj))
}

fn set_items<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    ctx: &Ctx<'_>,
    mode: Mode<'_>,
    depth: usize,
) -> Result<Vec<Remote>, SendError> {
    items
        .map(|x| {
            let segment = || format!("{{{}}}", x.repr().map(|r| r.to_string()).unwrap_or_else(|_| "?".into()));
            match py_to_remote(&x, ctx, mode, depth + 1) {
                Ok(r @ (Remote::List(_) | Remote::Dict(_) | Remote::Set(_))) => {
                    drop(r);
                    Err(SendError::Copy(CopyFailure {
                        reason: format!("cannot copy a {} inside a set", type_name(&x)),
                        segments: vec![segment()],
                    }))
                }
                Ok(r) => Ok(r),
                Err(e) => Err(e.at(segment)),
            }
        })
        .collect()
}

/// A `_semantics.Ref` as the descriptor sent on the wire.
fn ref_to_desc(r: &Bound<'_, PyAny>) -> PyResult<RefDesc> {
    let mut attrs = Vec::new();
    for a in r.getattr("attrs")?.try_iter()? {
        let a = a?;
        let kind = match a.getattr("kind")?.extract::<i64>()? {
            0 => LazyKind::Callable,
            1 => LazyKind::Class,
            _ => LazyKind::Module(a.getattr("module")?.extract()?),
        };
        attrs.push(LazyAttr { name: a.getattr("name")?.extract()?, kind });
    }
    Ok(RefDesc {
        id: r.getattr("id")?.extract()?,
        type_name: r.getattr("type_name")?.extract()?,
        flags: r.getattr("flags")?.extract()?,
        attrs,
    })
}

fn target_of(t: &Bound<'_, PyAny>) -> PyResult<Target> {
    Ok(Target { id: t.getattr("id")?.extract()?, path: t.getattr("path")?.extract()? })
}

fn value_to_py_plain(py: Python<'_>, v: Value) -> PyResult<Py<PyAny>> {
    Ok(match v {
        Value::None => py.None(),
        Value::Bool(b) => PyBool::new(py, b).to_owned().into_any().unbind(),
        Value::Int(i) => i.into_pyobject(py)?.into_any().unbind(),
        Value::Float(f) => PyFloat::new(py, f).into_any().unbind(),
        Value::Str(s) => PyString::new(py, &s).into_any().unbind(),
        Value::Bytes(b) => PyBytes::new(py, &b).into_any().unbind(),
        other => PyString::new(py, &format!("{other:?}")).into_any().unbind(),
    })
}

/// A plain Python value (an exception's argument) as a wire value; anything
/// else as its repr.
fn py_plain_value(obj: &Bound<'_, PyAny>, depth: usize) -> Value {
    if obj.is_none() {
        return Value::None;
    }
    if obj.is_exact_instance_of::<PyBool>() {
        return Value::Bool(obj.is_truthy().unwrap_or(false));
    }
    if obj.is_exact_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Value::Int(i);
        }
    }
    if obj.is_exact_instance_of::<PyFloat>() {
        if let Ok(f) = obj.extract::<f64>() {
            return Value::Float(f);
        }
    }
    if obj.is_exact_instance_of::<PyString>() {
        if let Ok(s) = obj.extract::<String>() {
            return Value::Str(s);
        }
    }
    if let Ok(b) = obj.cast_exact::<PyBytes>() {
        return Value::Bytes(Bytes::copy_from_slice(b.as_bytes()));
    }
    if let Ok(t) = obj.cast_exact::<PyTuple>() {
        if depth < MAX_DEPTH {
            return Value::Tuple(t.iter().map(|x| py_plain_value(&x, depth + 1)).collect());
        }
    }
    Value::Str(obj.repr().map(|r| r.to_string_lossy().into_owned()).unwrap_or_default())
}

/// A received value as Python: the server's objects become proxies, copies
/// new lists, dicts and sets, this client's own objects the objects themselves.
fn remote_to_py(py: Python<'_>, r: Remote, ctx: &Ctx<'_>) -> PyResult<Py<PyAny>> {
    Ok(match r {
        Remote::None => py.None(),
        Remote::Bool(b) => PyBool::new(py, b).to_owned().into_any().unbind(),
        Remote::Int(i) => i.into_pyobject(py)?.into_any().unbind(),
        Remote::BigInt(b) => {
            hooks(py)?.int_from_bytes.bind(py).call((PyBytes::new(py, &b), "little"), Some(&[("signed", true)].into_py_dict(py)?))?.unbind()
        }
        Remote::Float(f) => PyFloat::new(py, f).into_any().unbind(),
        Remote::Complex(a, b) => PyComplex::from_doubles(py, a, b).into_any().unbind(),
        Remote::Str(s) => PyString::new(py, &s).into_any().unbind(),
        Remote::Bytes(b) => PyBytes::new(py, &b).into_any().unbind(),
        Remote::Tuple(t) => PyTuple::new(py, all_to_py(py, t, ctx)?)?.into_any().unbind(),
        Remote::FrozenSet(t) => PyFrozenSet::new(py, all_to_py(py, t, ctx)?)?.into_any().unbind(),
        Remote::Object(obj) => {
            let handle = Py::new(py, Handle { obj })?;
            hooks(py)?.make_proxy.call1(py, (handle,))?
        }
        Remote::List(t) => PyList::new(py, all_to_py(py, t, ctx)?)?.into_any().unbind(),
        Remote::Set(t) => PySet::new(py, all_to_py(py, t, ctx)?)?.into_any().unbind(),
        Remote::Dict(pairs) => {
            let d = PyDict::new(py);
            for (k, v) in pairs {
                d.set_item(remote_to_py(py, k, ctx)?, remote_to_py(py, v, ctx)?)?;
            }
            d.into_any().unbind()
        }
        Remote::Slice(parts) => slice_to_py(py, *parts, |py, r| remote_to_py(py, r, ctx))?,
        Remote::Ellipsis => PyEllipsis::get(py).to_owned().into_any().unbind(),
        Remote::Local(t) => {
            let sem = semantics(py)?;
            let target = sem.target.call1(py, (t.id, PyTuple::new(py, t.path)?))?;
            ctx.local()?.session.call_method1(py, "resolve", (target,))?
        }
        Remote::Export(d) => return Err(PyTypeError::new_err(format!("farcall: received a client object {} as sent", d.id))),
    })
}

fn all_to_py(py: Python<'_>, items: Vec<Remote>, ctx: &Ctx<'_>) -> PyResult<Vec<Py<PyAny>>> {
    items.into_iter().map(|x| remote_to_py(py, x, ctx)).collect()
}

fn slice_to_py(py: Python<'_>, parts: [Remote; 3], mut f: impl FnMut(Python<'_>, Remote) -> PyResult<Py<PyAny>>) -> PyResult<Py<PyAny>> {
    let [a, b, c] = parts;
    let builtins = py.import("builtins")?;
    Ok(builtins.getattr("slice")?.call1((f(py, a)?, f(py, b)?, f(py, c)?))?.unbind())
}

/// A request field as the boxed form `_semantics.Session.handle` takes: the
/// server's objects as proxies, this client's as `Target`, copies as
/// `ListValue`/`DictValue`/`SetValue`.
fn field_to_py(py: Python<'_>, r: Remote, ctx: &Ctx<'_>) -> PyResult<Py<PyAny>> {
    let sem = semantics(py)?;
    let items = |t: Vec<Remote>| -> PyResult<Py<PyTuple>> {
        Ok(PyTuple::new(py, t.into_iter().map(|x| field_to_py(py, x, ctx)).collect::<PyResult<Vec<_>>>()?)?.unbind())
    };
    Ok(match r {
        Remote::Local(t) => sem.target.call1(py, (t.id, PyTuple::new(py, t.path)?))?,
        Remote::Tuple(t) => items(t)?.into_any(),
        Remote::FrozenSet(t) => PyFrozenSet::new(py, items(t)?.bind(py).iter())?.into_any().unbind(),
        Remote::List(t) => sem.list_value.call1(py, (items(t)?,))?,
        Remote::Set(t) => sem.set_value.call1(py, (items(t)?,))?,
        Remote::Dict(pairs) => {
            let pairs = pairs
                .into_iter()
                .map(|(k, v)| Ok(PyTuple::new(py, [field_to_py(py, k, ctx)?, field_to_py(py, v, ctx)?])?.into_any().unbind()))
                .collect::<PyResult<Vec<_>>>()?;
            sem.dict_value.call1(py, (PyTuple::new(py, pairs)?,))?
        }
        Remote::Slice(parts) => slice_to_py(py, *parts, |py, r| field_to_py(py, r, ctx))?,
        other => remote_to_py(py, other, ctx)?,
    })
}

/// The client's objects and the handler that serves the server's requests
/// on them: one per connection.
struct Local {
    /// A `farcall._semantics.Session`.
    session: Py<PyAny>,
    /// Releases from the server, applied the next time Python is at hand
    /// (they arrive on threads that must not wait for the interpreter).
    releases: Mutex<Vec<Release>>,
    has_releases: AtomicBool,
}

impl Local {
    fn apply_releases(&self, py: Python<'_>) {
        if !self.has_releases.swap(false, Ordering::Acquire) {
            return;
        }
        PENDING_RELEASES.fetch_sub(1, Ordering::Relaxed);
        let batch = std::mem::take(&mut *self.releases.lock().unwrap_or_else(|p| p.into_inner()));
        let pairs: Vec<(u64, u32)> = batch.into_iter().map(|r| (r.id, r.count)).collect();
        if let Err(e) = self.session.call_method1(py, "release", (pairs,)) {
            e.write_unraisable(py, None);
        }
    }

    /// Performs one request of the server with the session.
    fn perform(&self, py: Python<'_>, client: &Client, op: Request) -> Result<Remote, RemoteException> {
        if let Some(refused) = refused_to_the_server(&op) {
            return Err(RemoteException::policy(refused));
        }
        self.perform_allowed(py, client, op).map_err(|e| describe(py, e))
    }

    fn perform_allowed(&self, py: Python<'_>, client: &Client, op: Request) -> PyResult<Remote> {
        let ctx = Ctx::new(client);
        let sem = semantics(py)?;
        let target = |t: Target| sem.target.call1(py, (t.id, PyTuple::new(py, t.path)?));
        let field = |v: Value| -> PyResult<Py<PyAny>> {
            let r = client.import(v).map_err(|e| to_pyerr(py, e))?;
            field_to_py(py, r, &ctx)
        };
        let str_ = |s: String| PyString::new(py, &s).into_any().unbind();
        let (code, fields): (u8, Vec<Py<PyAny>>) = match op {
            Request::GetModule { name } => (1, vec![str_(name)]),
            Request::GetAttr { target: t, name } => (2, vec![target(t)?, str_(name)]),
            Request::SetAttr { target: t, name, value } => (3, vec![target(t)?, str_(name), field(value)?]),
            Request::DelAttr { target: t, name } => (4, vec![target(t)?, str_(name)]),
            Request::Call { target: t, args, kwargs } => {
                let args = args.into_iter().map(field).collect::<PyResult<Vec<_>>>()?;
                let kwargs = kwargs
                    .into_iter()
                    .map(|(k, v)| Ok(PyTuple::new(py, [str_(k), field(v)?])?.into_any().unbind()))
                    .collect::<PyResult<Vec<_>>>()?;
                (5, vec![target(t)?, PyTuple::new(py, args)?.into_any().unbind(), PyTuple::new(py, kwargs)?.into_any().unbind()])
            }
            Request::Repr { target: t } => (6, vec![target(t)?]),
            Request::Str { target: t } => (7, vec![target(t)?]),
            Request::Stats => (8, Vec::new()),
            Request::Builtin { name, args } => {
                let args = args.into_iter().map(field).collect::<PyResult<Vec<_>>>()?;
                (9, vec![str_(name), PyTuple::new(py, args)?.into_any().unbind()])
            }
        };
        let mut all = Vec::with_capacity(fields.len() + 1);
        all.push(code.into_pyobject(py)?.into_any().unbind());
        all.extend(fields);
        let result = self.session.bind(py).call_method1("handle", PyTuple::new(py, all)?)?;
        py_to_remote(&result, &ctx, Mode::Boxed, 0).map_err(|e| e.into_pyerr("farcall"))
    }
}

/// Why the client refuses a request of the server, if it does: the server
/// works on the objects the client handed it (callbacks), it does not import
/// modules or run code of its own choosing in the client.
fn refused_to_the_server(op: &Request) -> Option<String> {
    const CODE: [&str; 4] = ["eval", "execute", "namespace", "teleport"];
    match op {
        Request::GetModule { name } => {
            Some(format!("the client does not let the server import modules (GetModule {name:?}): pass the objects it needs as arguments"))
        }
        Request::Builtin { name, .. } if CODE.contains(&name.as_str()) => {
            Some(format!("the client does not let the server run code in it (Builtin {name:?}): pass a function as an argument"))
        }
        _ => None,
    }
}

/// Describes a Python exception for the server.
fn describe(py: Python<'_>, e: PyErr) -> RemoteException {
    let text = e.to_string();
    // `into_value` attaches the traceback to the exception, where `describe` reads it.
    let value = e.into_value(py);
    let described = semantics(py).and_then(|sem| sem.describe.bind(py).call1((value,)));
    let Ok(data) = described else {
        return RemoteException::new("farcall", "InternalError", format!("the client could not describe its exception: {text}"));
    };
    let get = |i: usize| data.get_item(i).ok();
    let text = |i: usize| get(i).and_then(|x| x.extract::<String>().ok()).unwrap_or_default();
    let args =
        get(2).and_then(|a| a.cast_into::<PyTuple>().ok()).map(|t| t.iter().map(|x| py_plain_value(&x, 0)).collect()).unwrap_or_default();
    RemoteException { type_module: text(0), type_name: text(1), args, message: text(3), traceback: text(4) }
}

/// Connections with releases waiting for `Local::apply_releases`: plain calls
/// skip looking for their connection's `Local` while there are none.
static PENDING_RELEASES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Serves the server's requests with the connection's `Local`.
struct PyHandler {
    local: Arc<Local>,
}

impl Handler for PyHandler {
    fn handle(&self, client: &Client, op: Request) -> Result<Remote, RemoteException> {
        Python::attach(|py| {
            self.local.apply_releases(py);
            self.local.perform(py, client, op)
        })
    }

    fn release(&self, refs: &[Release]) {
        self.local.releases.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(refs);
        if !self.local.has_releases.swap(true, Ordering::Release) {
            PENDING_RELEASES.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// The connection's `Local`, found through its handler.
fn local_of(client: &Client) -> Option<Arc<Local>> {
    let h = client.handler()?;
    h.as_any()?.downcast_ref::<PyHandler>().map(|p| p.local.clone())
}

/// Runs a client operation with the interpreter detached, then converts its result.
fn run(py: Python<'_>, client: &Client, f: impl FnOnce() -> Result<Remote, ClientError> + Send) -> PyResult<Py<PyAny>> {
    let result = py.detach(f);
    let ctx = Ctx::new(client);
    let converted = match result {
        Ok(r) => remote_to_py(py, r, &ctx),
        Err(e) => Err(to_pyerr(py, e)),
    };
    // After the reply is converted: the server may release an object of
    // ours ahead of the reply that names it.
    if PENDING_RELEASES.load(Ordering::Relaxed) > 0 {
        if let Some(local) = ctx.local_opt() {
            local.apply_releases(py);
        }
    }
    converted
}

/// Seconds as a timeout (`None`: the connection's default).
fn timeout_arg(seconds: Option<f64>) -> PyResult<Option<Duration>> {
    match seconds {
        None => Ok(None),
        Some(t) if t.is_finite() && t > 0.0 => Ok(Some(Duration::from_secs_f64(t))),
        Some(_) => Err(PyValueError::new_err("timeout must be a positive number of seconds")),
    }
}

fn args_to_remote(args: &Bound<'_, PyTuple>, ctx: &Ctx<'_>, mode: Mode<'_>) -> PyResult<Vec<Remote>> {
    let what = match mode {
        Mode::Copy(what) => what,
        _ => "farcall",
    };
    args.iter().map(|x| py_to_remote(&x, ctx, mode, 0).map_err(|e| e.into_pyerr(what))).collect()
}

#[pymethods]
impl Handle {
    /// `getattr(obj, name)` on the server (or a local lazy handle for a module's functions).
    fn getattr(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        run(py, self.obj.client(), || self.obj.getattr(name))
    }

    /// `obj(*args, **kwargs)` on the server, waiting at most `timeout` seconds
    /// (`None`: the connection's default).
    #[pyo3(signature = (args, kwargs=None, timeout=None))]
    fn call(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        let client = self.obj.client();
        let timeout = timeout_arg(timeout)?;
        let ctx = Ctx::new(client);
        let a = args_to_remote(args, &ctx, Mode::Args)?;
        let mut kw = Vec::new();
        if let Some(k) = kwargs {
            for (key, value) in k.iter() {
                kw.push((key.extract::<String>()?, py_to_remote(&value, &ctx, Mode::Args, 0).map_err(|e| e.into_pyerr("farcall"))?));
            }
        }
        run(py, client, || self.obj.call_with_timeout(a, kw, timeout))
    }

    /// `setattr(obj, name, value)` on the server (subject to its policy).
    fn setattr(&self, py: Python<'_>, name: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let ctx = Ctx::new(self.obj.client());
        let v = py_to_remote(value, &ctx, Mode::Args, 0).map_err(|e| e.into_pyerr("farcall"))?;
        run(py, self.obj.client(), || self.obj.setattr(name, v).map(|_| Remote::None)).map(drop)
    }

    /// `delattr(obj, name)` on the server (subject to its policy).
    fn delattr(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        run(py, self.obj.client(), || self.obj.delattr(name).map(|_| Remote::None)).map(drop)
    }

    /// `repr(obj)` computed on the server.
    fn repr(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        run(py, self.obj.client(), || self.obj.repr().map(Remote::Str))
    }

    /// `str(obj)` computed on the server.
    fn str(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        run(py, self.obj.client(), || self.obj.str().map(Remote::Str))
    }

    /// This handle when `session` is the local session of its connection
    /// (the proxy goes home when that session sends it), else `None`: what
    /// `ProxyBase._farcall_home` returns for a `farcall.Proxy`.
    fn home(slf: &Bound<'_, Self>, session: &Bound<'_, PyAny>) -> Option<Py<Handle>> {
        let local = local_of(slf.get().obj.client())?;
        session.is(local.session.bind(slf.py())).then(|| slf.clone().unbind())
    }

    /// The root object's type name on the server.
    #[getter]
    fn type_name(&self) -> String {
        self.obj.type_name().to_owned()
    }

    /// What is known locally: "module", "class", "callable" or "object".
    #[getter]
    fn hint(&self) -> &'static str {
        match self.obj.hint() {
            Hint::Module => "module",
            Hint::Class => "class",
            Hint::Callable => "callable",
            Hint::Object => "object",
        }
    }

    /// Whether the server flagged the object as an iterator (only those
    /// proxies get `__next__`).
    #[getter]
    fn iterator(&self) -> bool {
        self.obj.is_iterator()
    }

    /// The server-side designator `(id, path)`, for debugging.
    #[getter]
    fn target(&self) -> (u64, Vec<String>) {
        let t = self.obj.target();
        (t.id, t.path)
    }

    /// The connection this handle belongs to.
    #[getter]
    fn connection(&self) -> NativeClient {
        NativeClient { client: self.obj.client().clone() }
    }
}

/// A connection (the Rust client).
#[pyclass(frozen, name = "Client", module = "farcall._native")]
struct NativeClient {
    client: Client,
}

#[pymethods]
impl NativeClient {
    /// Connects and performs the handshake.
    #[staticmethod]
    #[pyo3(signature = (address, timeout=None, ca=None, cert=None, key=None, server_name=None))]
    fn connect(
        py: Python<'_>,
        address: String,
        timeout: Option<f64>,
        ca: Option<std::path::PathBuf>,
        cert: Option<std::path::PathBuf>,
        key: Option<std::path::PathBuf>,
        server_name: Option<String>,
    ) -> PyResult<NativeClient> {
        let timeout = timeout_arg(timeout)?;
        let tls = match (ca, cert, key, server_name) {
            (None, None, None, None) => None,
            (Some(ca), cert, key, server_name) => Some(farcall_client::TlsOptions { ca, cert, key, server_name }),
            _ => return Err(PyValueError::new_err("TLS options need `ca`: the CA certificate that signed the server's certificate")),
        };
        let version = py.version_info();
        let options = farcall_client::Options {
            timeout,
            client_name: format!("farcall-python {} / Python {}.{}", env!("CARGO_PKG_VERSION"), version.major, version.minor),
            tls,
            ..Default::default()
        };
        let session = semantics(py)?.session.call0(py)?;
        match py.detach(|| Client::connect(&address, &options)) {
            Ok(client) => {
                let local = Arc::new(Local { session, releases: Mutex::new(Vec::new()), has_releases: AtomicBool::new(false) });
                client.set_handler(Arc::new(PyHandler { local }));
                Ok(NativeClient { client })
            }
            Err(e) => Err(to_pyerr(py, e)),
        }
    }

    /// Sets the default timeout of every request of this connection, in
    /// seconds (`None`: none).
    #[pyo3(signature = (seconds))]
    fn set_call_timeout(&self, seconds: Option<f64>) -> PyResult<()> {
        self.client.set_call_timeout(timeout_arg(seconds)?);
        Ok(())
    }

    /// The server's builtin operation `name` on `args` (see `BUILTINS`);
    /// with `copy=True` lists, dicts and sets among `args` are sent as copies
    /// (anything that cannot be copied is a TypeError naming it).
    #[pyo3(signature = (name, args, copy=false, timeout=None))]
    fn builtin(&self, py: Python<'_>, name: &str, args: &Bound<'_, PyTuple>, copy: bool, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        let timeout = timeout_arg(timeout)?;
        let ctx = Ctx::new(&self.client);
        let a = args_to_remote(args, &ctx, if copy { Mode::Copy(name) } else { Mode::Args })?;
        run(py, &self.client, || self.client.builtin_with_timeout(name, a, timeout))
    }

    /// Waits up to `timeout` seconds (`None`: without limit) for requests of
    /// the server (callbacks invoked while no call is in flight) and serves
    /// them; returns how many it served (0 when none came in time).
    #[pyo3(signature = (timeout=None))]
    fn serve(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<usize> {
        let timeout = match timeout {
            Some(0.0) => Some(Duration::ZERO),
            t => timeout_arg(t)?,
        };
        let served = py.detach(|| self.client.serve(timeout)).map_err(|e| to_pyerr(py, e))?;
        if let Some(local) = local_of(&self.client) {
            local.apply_releases(py);
        }
        Ok(served)
    }

    /// The `farcall._semantics.Session` holding this connection's local
    /// objects (exported arguments, callbacks).
    fn local_session(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let local = local_of(&self.client).ok_or_else(|| PyTypeError::new_err("farcall: this connection has no local session"))?;
        local.apply_releases(py);
        Ok(local.session.clone_ref(py))
    }

    /// The server's module `name` (cached per connection).
    fn module(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        run(py, &self.client, || self.client.module(name).map(Remote::Object))
    }

    /// What the server said of itself in the handshake.
    fn server_info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.client.server();
        let d = PyDict::new(py);
        d.set_item("protocol", s.protocol)?;
        d.set_item("farcall_version", &s.farcall_version)?;
        d.set_item("backend", &s.backend)?;
        d.set_item("python_version", &s.python_version)?;
        d.set_item("python_prefix", &s.python_prefix)?;
        d.set_item("python_executable", &s.python_executable)?;
        d.set_item("session", s.session)?;
        Ok(d)
    }

    /// `(live objects, objects ever exported)` in this session's table on the server.
    fn stats(&self, py: Python<'_>) -> PyResult<(i64, i64)> {
        py.detach(|| self.client.stats()).map_err(|e| to_pyerr(py, e))
    }

    /// Sends queued reference releases now.
    fn flush_releases(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.client.flush_releases()).map_err(|e| to_pyerr(py, e))?;
        if let Some(local) = local_of(&self.client) {
            local.apply_releases(py);
        }
        Ok(())
    }

    /// Closes the connection (idempotent) and drops the local objects the
    /// server held.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.client.close();
        if let Some(local) = local_of(&self.client) {
            self.client.clear_handler();
            local.session.call_method0(py, "close")?;
        }
        Ok(())
    }

    /// Whether the connection is closed.
    #[getter]
    fn closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Whether two clients are the same connection.
    fn same(&self, other: &NativeClient) -> bool {
        self.client.same_connection(&other.client)
    }
}

/// Reads a client TOML file into the keyword arguments of `farcall.connect`
/// (relative paths resolved against the file's folder).
#[pyfunction]
fn read_client_config<'py>(py: Python<'py>, path: std::path::PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let c = farcall_config::ClientConfig::from_file(&path).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let d = PyDict::new(py);
    d.set_item("address", c.address)?;
    d.set_item("timeout", c.timeout_s)?;
    d.set_item("ca", c.ca)?;
    d.set_item("cert", c.cert)?;
    d.set_item("key", c.key)?;
    d.set_item("server_name", c.server_name)?;
    Ok(d)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeClient>()?;
    m.add_class::<Handle>()?;
    m.add_function(wrap_pyfunction!(_register, m)?)?;
    m.add_function(wrap_pyfunction!(read_client_config, m)?)?;
    m.add("FARCALL_VERSION", farcall_core::handshake::FARCALL_VERSION)?;
    // `farcall._semantics` exists from here on (the package imports it next).
    let py = m.py();
    let sem = semantics(py)?;
    if let Ok(package) = py.import("sys")?.getattr("modules")?.get_item("farcall") {
        package.setattr("_semantics", sem.module.bind(py))?;
    }
    Ok(())
}
