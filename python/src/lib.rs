//! `farcall._native`: the compiled core of the `farcall` Python package, a
//! thin layer over the Rust client. The public API is the plain Python
//! package around it; this module only moves values across the boundary.

use std::time::Duration;

use bytes::Bytes;
use farcall_client::{Client, ClientError, Hint, Remote, RemoteObject};
use farcall_core::RemoteException;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyComplex, PyDict, PyFloat, PyFrozenSet, PyInt, PyString, PyTuple};

/// `bytes` at least this long are sent without copying them.
const ZERO_COPY_MIN: usize = 16 * 1024;
/// Nesting beyond this is refused rather than overflowing a stack.
const MAX_DEPTH: usize = 32;

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

fn py_to_remote(obj: &Bound<'_, PyAny>, client: &Client, depth: usize) -> PyResult<Remote> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err("farcall: value nested too deeply to send"));
    }
    if obj.is_none() {
        return Ok(Remote::None);
    }
    if obj.is_exact_instance_of::<PyBool>() {
        return Ok(Remote::Bool(obj.extract()?));
    }
    if obj.is_exact_instance_of::<PyInt>() {
        return match obj.extract::<i64>() {
            Ok(i) => Ok(Remote::Int(i)),
            Err(_) => {
                let bits: usize = obj.call_method0("bit_length")?.extract()?;
                let b: Vec<u8> = obj
                    .call_method1("to_bytes", (bits / 8 + 1, "little"))
                    .or_else(|_| obj.call_method("to_bytes", (bits / 8 + 1, "little"), Some(&[("signed", true)].into_py_dict(obj.py())?)))?
                    .extract()?;
                Ok(Remote::BigInt(b.into()))
            }
        };
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
        return Ok(Remote::Tuple(t.iter().map(|x| py_to_remote(&x, client, depth + 1)).collect::<PyResult<_>>()?));
    }
    if let Ok(s) = obj.cast_exact::<PyFrozenSet>() {
        return Ok(Remote::FrozenSet(s.iter().map(|x| py_to_remote(&x, client, depth + 1)).collect::<PyResult<_>>()?));
    }
    if obj.is_exact_instance_of::<PyComplex>() {
        let c = obj.cast::<PyComplex>()?;
        return Ok(Remote::Complex(c.real(), c.imag()));
    }
    let py = obj.py();
    if obj.is_instance(hooks(py)?.proxy_class.bind(py))? {
        let handle = obj.getattr("_farcall_handle")?;
        let h = handle.cast::<Handle>()?.get();
        if !h.obj.client().same_connection(client) {
            return Err(PyValueError::new_err("farcall: a proxy can only be passed to the connection it came from"));
        }
        return Ok(Remote::Object(h.obj.clone()));
    }
    Err(PyTypeError::new_err(format!(
        "farcall: cannot send a local {} to the server: this version passes None, bool, int, float, complex, str, bytes, tuple and frozenset by value, and proxies of the same connection",
        obj.get_type().name()?
    )))
}

use pyo3::types::IntoPyDict;

fn value_to_py_plain(py: Python<'_>, v: farcall_core::Value) -> PyResult<Py<PyAny>> {
    use farcall_core::Value as V;
    Ok(match v {
        V::None => py.None(),
        V::Bool(b) => PyBool::new(py, b).to_owned().into_any().unbind(),
        V::Int(i) => i.into_pyobject(py)?.into_any().unbind(),
        V::Float(f) => PyFloat::new(py, f).into_any().unbind(),
        V::Str(s) => PyString::new(py, &s).into_any().unbind(),
        V::Bytes(b) => PyBytes::new(py, &b).into_any().unbind(),
        other => PyString::new(py, &format!("{other:?}")).into_any().unbind(),
    })
}

fn remote_to_py(py: Python<'_>, r: Remote) -> PyResult<Py<PyAny>> {
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
        Remote::Tuple(t) => {
            PyTuple::new(py, t.into_iter().map(|x| remote_to_py(py, x)).collect::<PyResult<Vec<_>>>()?)?.into_any().unbind()
        }
        Remote::FrozenSet(t) => {
            PyFrozenSet::new(py, t.into_iter().map(|x| remote_to_py(py, x)).collect::<PyResult<Vec<_>>>()?)?.into_any().unbind()
        }
        Remote::Object(obj) => {
            let handle = Py::new(py, Handle { obj })?;
            hooks(py)?.make_proxy.call1(py, (handle,))?
        }
        other => return Err(PyTypeError::new_err(format!("farcall: cannot receive a {} yet", other.kind()))),
    })
}

/// Runs a client operation with the interpreter detached, then converts its result.
fn run(py: Python<'_>, f: impl FnOnce() -> Result<Remote, ClientError> + Send) -> PyResult<Py<PyAny>> {
    match py.detach(f) {
        Ok(r) => remote_to_py(py, r),
        Err(e) => Err(to_pyerr(py, e)),
    }
}

#[pymethods]
impl Handle {
    /// `getattr(obj, name)` on the server (or a local lazy handle for a module's functions).
    fn getattr(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        run(py, || self.obj.getattr(name))
    }

    /// `obj(*args, **kwargs)` on the server.
    #[pyo3(signature = (args, kwargs=None))]
    fn call(&self, py: Python<'_>, args: &Bound<'_, PyTuple>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Py<PyAny>> {
        let client = self.obj.client();
        let a = args.iter().map(|x| py_to_remote(&x, client, 0)).collect::<PyResult<Vec<_>>>()?;
        let mut kw = Vec::new();
        if let Some(k) = kwargs {
            for (key, value) in k.iter() {
                kw.push((key.extract::<String>()?, py_to_remote(&value, client, 0)?));
            }
        }
        run(py, || self.obj.call_kw(a, kw))
    }

    /// `setattr(obj, name, value)` on the server (subject to its policy).
    fn setattr(&self, py: Python<'_>, name: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let v = py_to_remote(value, self.obj.client(), 0)?;
        run(py, || self.obj.setattr(name, v).map(|_| Remote::None)).map(drop)
    }

    /// `delattr(obj, name)` on the server (subject to its policy).
    fn delattr(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        run(py, || self.obj.delattr(name).map(|_| Remote::None)).map(drop)
    }

    /// `repr(obj)` computed on the server.
    fn repr(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        run(py, || self.obj.repr().map(Remote::Str))
    }

    /// `str(obj)` computed on the server.
    fn str(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        run(py, || self.obj.str().map(Remote::Str))
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
        let timeout = match timeout {
            Some(t) if !(t.is_finite() && t > 0.0) => return Err(PyValueError::new_err("timeout must be a positive number of seconds")),
            t => t.map(Duration::from_secs_f64),
        };
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
        match py.detach(|| Client::connect(&address, &options)) {
            Ok(client) => Ok(NativeClient { client }),
            Err(e) => Err(to_pyerr(py, e)),
        }
    }

    /// The server's module `name` (cached per connection).
    fn module(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        run(py, || self.client.module(name).map(Remote::Object))
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
        py.detach(|| self.client.flush_releases()).map_err(|e| to_pyerr(py, e))
    }

    /// Closes the connection (idempotent).
    fn close(&self) {
        self.client.close();
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
    Ok(())
}
