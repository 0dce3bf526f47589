//! Starting the embedded CPython once per process, and keeping a Python
//! thread state alive on each thread that evaluates requests.

use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::path::Path;
use std::ptr;
use std::sync::OnceLock;

use pyo3::ffi;
use pyo3::prelude::*;

use crate::BUILD_PYTHON;

/// The outcome of the one initialisation of the process (an error message when it failed).
static INIT: OnceLock<Result<(), String>> = OnceLock::new();

/// Initialises the interpreter the first time it is called in the process;
/// later calls return the first call's outcome.
pub(crate) fn ensure_initialized() -> Result<(), String> {
    INIT.get_or_init(initialize).clone()
}

fn initialize() -> Result<(), String> {
    // SAFETY: `Py_IsInitialized` may be called at any time.
    if unsafe { ffi::Py_IsInitialized() } != 0 {
        // Someone else (a host application, a Python process loading us as an
        // extension) runs the interpreter already: use it as it is.
        tracing::debug!("the Python interpreter was already initialised; using it");
        return Ok(());
    }
    let program = if Path::new(BUILD_PYTHON).is_file() {
        Some(CString::new(BUILD_PYTHON).map_err(|_| format!("the build's Python path {BUILD_PYTHON:?} contains a NUL byte"))?)
    } else {
        tracing::warn!(
            python = BUILD_PYTHON,
            "the Python this server was built with is missing; the embedded interpreter will guess its prefix from libpython"
        );
        None
    };

    let mut config = MaybeUninit::<ffi::PyConfig>::uninit();
    let cfg = config.as_mut_ptr();
    // SAFETY: `PyConfig_InitPythonConfig` fully initialises the struct it is
    // given; afterwards we only write plain fields and pass `config`'s own
    // field pointers to the setters, and `PyConfig_Clear` frees what they
    // allocated on every path. The interpreter is not running yet (checked
    // above; `INIT` serialises callers), so nothing else uses the C API.
    unsafe {
        ffi::PyConfig_InitPythonConfig(cfg);
        // The server owns SIGINT/SIGTERM; Python must not install its own handlers.
        (*cfg).install_signal_handlers = 0;
        (*cfg).parse_argv = 0;
        if let Some(program) = &program {
            // The program name makes the interpreter compute `sys.prefix` (and
            // find a venv's `pyvenv.cfg`) exactly as the build's Python does.
            let status = ffi::PyConfig_SetBytesString(cfg, ptr::addr_of_mut!((*cfg).program_name), program.as_ptr());
            if ffi::PyStatus_Exception(status) != 0 {
                ffi::PyConfig_Clear(cfg);
                return Err(format!("could not set the program name: {}", status_message(&status)));
            }
        }
        let status = ffi::Py_InitializeFromConfig(cfg);
        ffi::PyConfig_Clear(cfg);
        if ffi::PyStatus_Exception(status) != 0 {
            return Err(format!("could not initialise the embedded Python: {}", status_message(&status)));
        }
    }
    // Initialisation left this thread attached, as the interpreter's main thread.
    if let Err(e) = Python::attach(leave_sigint_to_host) {
        tracing::warn!(error = %e, "could not give SIGINT back to the host program");
    }
    // Detach so that any thread can attach with `Python::attach`.
    // SAFETY: this thread holds the GIL since `Py_InitializeFromConfig`.
    unsafe { ffi::PyEval_SaveThread() };
    Ok(())
}

/// Undoes what importing `signal` does even with `install_signal_handlers = 0`:
/// when SIGINT has its default disposition, the module installs Python's
/// handler (which raises `KeyboardInterrupt` in the interpreter's main
/// thread). Put the default back so that the host program (the server's
/// Ctrl-C handling) owns SIGINT. Must run on the interpreter's main thread;
/// a handler the host installed before is left alone, as Python leaves it.
fn leave_sigint_to_host(py: Python<'_>) -> PyResult<()> {
    let signal = py.import("signal")?;
    let sigint = signal.getattr("SIGINT")?;
    let current = signal.call_method1("getsignal", (&sigint,))?;
    if current.is(&signal.getattr("default_int_handler")?) {
        signal.call_method1("signal", (sigint, signal.getattr("SIG_DFL")?))?;
    }
    Ok(())
}

/// The text of a failed `PyStatus`.
fn status_message(status: &ffi::PyStatus) -> String {
    let text = |p: *const std::ffi::c_char| {
        if p.is_null() {
            None
        } else {
            // SAFETY: CPython sets these fields to NUL-terminated static strings or NULL.
            Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        }
    };
    match (text(status.func), text(status.err_msg)) {
        _ if status._type == ffi::_PyStatus_TYPE::_PyStatus_TYPE_EXIT => {
            format!("the interpreter asked to exit with code {}", status.exitcode)
        }
        (Some(func), Some(msg)) => format!("{func}: {msg}"),
        (None, Some(msg)) => msg,
        _ => "unknown error".to_owned(),
    }
}

/// A Python thread state kept for the life of an OS thread.
///
/// Attaching a thread that has no thread state makes CPython create one and
/// destroy it again when the thread detaches, on every call (about half the
/// cost of a small call). Keeping one per thread makes attaching a plain GIL
/// acquisition, and keeps Python thread-locals and
/// `threading.current_thread()` stable across the calls made on one thread,
/// as for a real Python thread.
///
/// The state is freed when the thread exits, which briefly takes the GIL: a
/// thread that evaluated requests must not be joined by a thread that is
/// attached to Python (it would wait for the GIL the joiner holds).
struct KeptThreadState {
    /// `None` when the thread had a thread state of its own already (the
    /// interpreter's main thread, a thread started by Python).
    kept: Option<(ffi::PyGILState_STATE, *mut ffi::PyThreadState)>,
}

impl KeptThreadState {
    fn new() -> Self {
        // SAFETY: the interpreter is initialised (sessions exist only after
        // `ensure_initialized` succeeded) and the caller checked that this
        // thread does not hold the GIL. `PyGILState_Ensure` creates this
        // thread's state and takes the GIL; `PyEval_SaveThread` releases the
        // GIL, leaving the state registered with a gilstate counter of one,
        // so that later `PyGILState_Release`s (pyo3's) do not delete it.
        unsafe {
            if !ffi::PyGILState_GetThisThreadState().is_null() {
                return KeptThreadState { kept: None };
            }
            let gil = ffi::PyGILState_Ensure();
            let thread_state = ffi::PyEval_SaveThread();
            KeptThreadState { kept: Some((gil, thread_state)) }
        }
    }
}

impl Drop for KeptThreadState {
    fn drop(&mut self) {
        if let Some((gil, thread_state)) = self.kept.take() {
            // SAFETY: runs at thread exit, when the thread is detached (no
            // pyo3 attachment outlives a call); restores the state saved in
            // `new` and releases it, which deletes the state and frees the GIL.
            unsafe {
                ffi::PyEval_RestoreThread(thread_state);
                ffi::PyGILState_Release(gil);
            }
        }
    }
}

thread_local! {
    static KEPT: KeptThreadState = KeptThreadState::new();
}

/// Makes sure the current thread has a Python thread state that outlives the
/// next attachment. Must be called while the thread is not attached.
pub(crate) fn keep_thread_state() {
    // SAFETY: `PyGILState_Check` may be called from any thread once the
    // interpreter is initialised.
    if unsafe { ffi::PyGILState_Check() } == 0 {
        // Fails only while the thread is being torn down: then just attach
        // without a kept state.
        let _ = KEPT.try_with(|_| ());
    }
}
