//! [`EmbeddedSession`]: one client's `farcall_semantics.Session` and the
//! requests performed on it.

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use farcall_core::{Callbacks, EvalSession, Release, RemoteException, Request, RequestId, Value};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};

use crate::interpreter;
use crate::semantics::Semantics;

/// The bound methods of one `farcall_semantics.Session`, looked up once.
struct Methods {
    session: Py<PyAny>,
    /// `builtin(name, args)`, or `None` for a module without it (then `handle(BUILTIN, ...)`).
    builtin: Option<Py<PyAny>>,
    handle: Py<PyAny>,
    get_module: Py<PyAny>,
    get_attr: Py<PyAny>,
    set_attr: Py<PyAny>,
    del_attr: Py<PyAny>,
    call: Py<PyAny>,
    get_repr: Py<PyAny>,
    get_str: Py<PyAny>,
    stats: Py<PyAny>,
    release: Py<PyAny>,
    close: Py<PyAny>,
}

impl Methods {
    fn new(session: &Bound<'_, PyAny>) -> PyResult<Self> {
        let m = |name: &str| session.getattr(name).map(Bound::unbind);
        Ok(Methods {
            session: session.clone().unbind(),
            builtin: m("builtin").ok(),
            handle: m("handle")?,
            get_module: m("get_module")?,
            get_attr: m("get_attr")?,
            set_attr: m("set_attr")?,
            del_attr: m("del_attr")?,
            call: m("call")?,
            get_repr: m("get_repr")?,
            get_str: m("get_str")?,
            stats: m("stats")?,
            release: m("release")?,
            close: m("close")?,
        })
    }
}

/// The evaluation state of one client session in the embedded interpreter:
/// a `farcall_semantics.Session` (its object table and namespace). Created
/// by [`EmbeddedEvaluator::open`](farcall_core::Evaluator::open).
///
/// Requests may be performed from several threads at once. The table's lock
/// is held only to look up, add or remove entries, never while Python code
/// of the user runs, so a slow call (one that releases the GIL, as
/// `time.sleep` does) does not hold up other calls of the same session.
/// Dropping the session drops every object it still holds.
///
/// Each thread that performs requests keeps a Python thread state until it
/// exits (attaching is then a plain GIL acquisition); freeing it at thread
/// exit takes the GIL briefly, so do not join such a thread while attached
/// to Python yourself.
pub struct EmbeddedSession {
    id: u64,
    semantics: Arc<Semantics>,
    /// `None` when the session could not be created; every request then fails.
    methods: Result<Methods, RemoteException>,
    /// The client's requests being performed, for [`EvalSession::cancel`].
    /// Changed and read only while attached to Python: the GIL orders a
    /// cancellation against the end of the request it names.
    running: Mutex<Running>,
}

/// The requests of a session being performed, and on which Python thread.
#[derive(Default)]
struct Running {
    /// Request id → the Python thread performing it, and whether a
    /// cancellation was raised there for it.
    threads: HashMap<RequestId, (std::ffi::c_ulong, bool)>,
    /// Python thread → the request it performs innermost (a thread waiting
    /// for a callback's reply may perform a nested request meanwhile).
    innermost: HashMap<std::ffi::c_ulong, RequestId>,
}

/// A request registered in [`Running`] while it is performed.
struct Started {
    id: RequestId,
    thread: std::ffi::c_ulong,
    /// The request the thread was performing before (this one is nested in it).
    outer: Option<RequestId>,
}

impl EmbeddedSession {
    fn running(&self) -> MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that request `id` runs on this Python thread (call attached).
    fn started(&self, id: RequestId) -> Started {
        // SAFETY: a plain C call of the interpreter this thread is attached to.
        let thread = unsafe { pyo3::ffi::PyThread_get_thread_ident() };
        let mut running = self.running();
        running.threads.insert(id, (thread, false));
        let outer = running.innermost.insert(thread, id);
        Started { id, thread, outer }
    }

    /// Forgets a request that [`started`](Self::started) recorded (call attached).
    fn finished(&self, started: Started) {
        let mut running = self.running();
        let cancelled = running.threads.remove(&started.id).is_some_and(|(_, cancelled)| cancelled);
        match started.outer {
            Some(outer) => running.innermost.insert(started.thread, outer),
            None => running.innermost.remove(&started.thread),
        };
        if cancelled {
            // A cancellation that arrived too late to be raised (the code was
            // in C until it returned) must not reach the thread's next request.
            // SAFETY: attached; a null exception clears the pending one.
            unsafe { pyo3::ffi::PyThreadState_SetAsyncExc(started.thread as std::ffi::c_long, std::ptr::null_mut()) };
        }
    }
}

impl std::fmt::Debug for EmbeddedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedSession").field("id", &self.id).finish_non_exhaustive()
    }
}

thread_local! {
    /// The thread is applying releases (or closing a session): finalizers
    /// that run now must not call the client, whose reply this very thread
    /// (the server's reader) would have to read.
    static RELEASING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with [`RELEASING`] set (restored even if `f` panics).
fn releasing<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            RELEASING.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(RELEASING.with(|r| r.replace(true)));
    f()
}

/// The session's `peer` (the host contract of `farcall_semantics`): the
/// client, reached through the server's [`Callbacks`].
#[pyclass(frozen, name = "EmbeddedPeer", module = "farcall_embedded")]
struct Peer {
    callbacks: Arc<dyn Callbacks>,
    semantics: Arc<Semantics>,
}

#[pymethods]
impl Peer {
    /// Sends request `op` (fields in boxed form) to the client and waits,
    /// detached from Python, for its reply (in received form). Raises
    /// `PeerError` for the client's exception, `FarcallError` when the
    /// connection is gone.
    #[pyo3(signature = (op, *fields))]
    fn request<'py>(&self, py: Python<'py>, op: u8, fields: &Bound<'py, PyTuple>) -> PyResult<Bound<'py, PyAny>> {
        if RELEASING.with(Cell::get) {
            return Err(self
                .semantics
                .farcall_error(py, "the client cannot be called from a finalizer that runs while references are released".to_owned()));
        }
        let request = self.semantics.peer_request(op, fields)?;
        let callbacks = Arc::clone(&self.callbacks);
        match py.detach(move || callbacks.request(request)) {
            Ok(value) => self.semantics.to_python(py, value),
            Err(e) => Err(self.semantics.peer_error(py, e)),
        }
    }

    /// Gives back `count` references to the client's object `ref_id`
    /// (queued by the server; never blocks).
    fn release(&self, ref_id: u64, count: u32) {
        self.callbacks.release(&[Release { id: ref_id, count }]);
    }
}

impl EmbeddedSession {
    pub(crate) fn new(id: u64, semantics: Arc<Semantics>, callbacks: Arc<dyn Callbacks>) -> Self {
        interpreter::keep_thread_state();
        let methods = Python::attach(|py| {
            let open = || -> PyResult<Methods> {
                let session = semantics.new_session(py)?;
                let peer = Peer { callbacks, semantics: Arc::clone(&semantics) };
                session.setattr("peer", Bound::new(py, peer)?)?;
                Methods::new(&session)
            };
            open().map_err(|e| semantics.describe(py, e))
        });
        if let Err(e) = &methods {
            tracing::error!(session = id, error = %e, "the embedded evaluator could not open a session");
        }
        EmbeddedSession { id, semantics, methods, running: Mutex::default() }
    }

    /// Performs `request` (the client's request `id`, when known, so that
    /// it can be cancelled), describing every failure, a panic included, as data.
    fn perform(&self, id: Option<RequestId>, request: Request) -> Result<Value, RemoteException> {
        let op = request.name();
        catch_unwind(AssertUnwindSafe(|| {
            let methods = self.methods.as_ref().map_err(Clone::clone)?;
            interpreter::keep_thread_state();
            Python::attach(|py| {
                let started = id.map(|id| self.started(id));
                let result = self.run(py, methods, request).map_err(|err| self.semantics.describe(py, err));
                if let Some(started) = started {
                    self.finished(started);
                }
                result
            })
        }))
        .unwrap_or_else(|panic| {
            let e = farcall_core::evaluator::panicked(op, &*panic);
            tracing::error!(session = self.id, op, error = %e.message, "the embedded evaluator panicked");
            Err(e)
        })
    }

    fn run(&self, py: Python<'_>, m: &Methods, request: Request) -> PyResult<Value> {
        let sem = &*self.semantics;
        let result = match request {
            Request::GetModule { name } => m.get_module.bind(py).call1((PyString::new(py, &name),))?,
            Request::GetAttr { target, name } => m.get_attr.bind(py).call1((sem.target(py, &target)?, PyString::new(py, &name)))?,
            Request::SetAttr { target, name, value } => {
                m.set_attr.bind(py).call1((sem.target(py, &target)?, PyString::new(py, &name), sem.to_python(py, value)?))?
            }
            Request::DelAttr { target, name } => m.del_attr.bind(py).call1((sem.target(py, &target)?, PyString::new(py, &name)))?,
            Request::Call { target, args, kwargs } => {
                let function = sem.target(py, &target)?;
                let args = if args.is_empty() {
                    PyTuple::empty(py)
                } else {
                    PyTuple::new(py, args.into_iter().map(|a| sem.to_python(py, a)).collect::<PyResult<Vec<_>>>()?)?
                };
                let kwargs = if kwargs.is_empty() {
                    PyTuple::empty(py)
                } else {
                    let pairs = kwargs
                        .into_iter()
                        .map(|(name, value)| PyTuple::new(py, [PyString::new(py, &name).into_any(), sem.to_python(py, value)?]))
                        .collect::<PyResult<Vec<_>>>()?;
                    PyTuple::new(py, pairs)?
                };
                m.call.bind(py).call1((function, args, kwargs))?
            }
            Request::Repr { target } => m.get_repr.bind(py).call1((sem.target(py, &target)?,))?,
            Request::Str { target } => m.get_str.bind(py).call1((sem.target(py, &target)?,))?,
            Request::Stats => m.stats.bind(py).call0()?,
            Request::Builtin { name, args } => {
                let args = PyTuple::new(py, args.into_iter().map(|a| sem.to_python(py, a)).collect::<PyResult<Vec<_>>>()?)?;
                match &m.builtin {
                    Some(builtin) => builtin.bind(py).call1((PyString::new(py, &name), args))?,
                    None => m.handle.bind(py).call1((sem.builtin_op(), PyString::new(py, &name), args))?,
                }
            }
        };
        sem.to_value(&result)
    }
}

impl EvalSession for EmbeddedSession {
    fn evaluate(&self, request: Request) -> Result<Value, RemoteException> {
        self.perform(None, request)
    }

    fn evaluate_request(&self, id: RequestId, request: Request) -> Result<Value, RemoteException> {
        self.perform(Some(id), request)
    }

    /// Raises `TimeoutError` in the Python code performing request `id`, at
    /// its next bytecode (code blocked in C, such as `time.sleep`, finishes
    /// that first). Only the innermost request of a thread is interrupted: a
    /// request that waits for a callback while a nested one runs is left alone.
    fn cancel(&self, id: RequestId) {
        if self.methods.is_err() {
            return;
        }
        interpreter::keep_thread_state();
        Python::attach(|_py| {
            let mut running = self.running();
            let Some(&(thread, _)) = running.threads.get(&id) else { return };
            if running.innermost.get(&thread) != Some(&id) {
                return;
            }
            running.threads.insert(id, (thread, true));
            tracing::debug!(session = self.id, request = id, "cancelling a request: raising TimeoutError in its Python code");
            // SAFETY: attached; the exception type is a borrowed static.
            unsafe { pyo3::ffi::PyThreadState_SetAsyncExc(thread as std::ffi::c_long, pyo3::ffi::PyExc_TimeoutError) };
        });
    }

    fn release(&self, refs: &[Release]) {
        let Ok(methods) = &self.methods else { return };
        if refs.is_empty() {
            return;
        }
        interpreter::keep_thread_state();
        releasing(|| {
            Python::attach(|py| {
                let result =
                    PyList::new(py, refs.iter().map(|r| (r.id, r.count))).and_then(|releases| methods.release.bind(py).call1((releases,)));
                if let Err(e) = result {
                    tracing::error!(session = self.id, error = %self.semantics.describe(py, e), "releasing references failed");
                }
            })
        });
    }
}

impl Drop for EmbeddedSession {
    fn drop(&mut self) {
        let Ok(methods) = std::mem::replace(&mut self.methods, Err(RemoteException::protocol("the session is closed"))) else {
            return;
        };
        interpreter::keep_thread_state();
        Python::attach(|py| {
            // The connection is going: client objects (and finalizers run by
            // closing) no longer reach the client; their references go with it.
            if let Err(e) = methods.session.bind(py).setattr("peer", py.None()) {
                tracing::error!(session = self.id, error = %self.semantics.describe(py, e), "detaching the session's peer failed");
            }
            if let Err(e) = methods.close.bind(py).call0() {
                tracing::error!(session = self.id, error = %self.semantics.describe(py, e), "closing the session failed");
            }
            // The bound methods (and through them the session) go while attached.
            drop(methods);
        });
        tracing::debug!(session = self.id, "embedded session closed");
    }
}
