//! Starting the embedded CPython once per process, and keeping a Python
//! thread state alive on each thread that evaluates requests.

use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::path::Path;
use std::ptr;
use std::sync::OnceLock;

use pyo3::ffi;

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
        Some(
            CString::new(BUILD_PYTHON).map_err(|_| {
                format!("the build's Python path {BUILD_PYTHON:?} contains a NUL byte")
            })?,
        )
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
            let status = ffi::PyConfig_SetBytesString(
                cfg,
                ptr::addr_of_mut!((*cfg).program_name),
                program.as_ptr(),
            );
            if ffi::PyStatus_Exception(status) != 0 {
                ffi::PyConfig_Clear(cfg);
                return Err(format!(
                    "could not set the program name: {}",
                    status_message(&status)
                ));
            }
        }
        let status = ffi::Py_InitializeFromConfig(cfg);
        ffi::PyConfig_Clear(cfg);
        if ffi::PyStatus_Exception(status) != 0 {
            return Err(format!(
                "could not initialise the embedded Python: {}",
                status_message(&status)
            ));
        }
        // Initialisation leaves this thread attached; detach so that any
        // thread can attach with `Python::attach`.
        ffi::PyEval_SaveThread();
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
            format!(
                "the interpreter asked to exit with code {}",
                status.exitcode
            )
        }
        (Some(func), Some(msg)) => format!("{func}: {msg}"),
        (None, Some(msg)) => msg,
        _ => "unknown error".to_owned(),
    }
}

/// A Python thread state kept for the life of an OS thread.
///
/// Attaching a thread that has no thread state makes CPython create one and
/// destroy it again when the thread detaches, on every call. Keeping one per
/// thread makes attaching a plain GIL acquisition (and keeps Python
/// thread-locals and `threading.current_thread()` stable across calls made
/// on one thread, as for a real Python thread).
struct KeptThreadState {
    gil: ffi::PyGILState_STATE,
    thread_state: *mut ffi::PyThreadState,
}

impl KeptThreadState {
    fn new() -> Self {
        // SAFETY: the interpreter is initialised (sessions exist only after
        // `ensure_initialized` succeeded) and the caller checked that this
        // thread does not hold the GIL; `PyEval_SaveThread` then releases the
        // GIL taken by `PyGILState_Ensure`, leaving the thread state (and its
        // gilstate counter of one) registered for this thread.
        unsafe {
            let gil = ffi::PyGILState_Ensure();
            let thread_state = ffi::PyEval_SaveThread();
            KeptThreadState { gil, thread_state }
        }
    }
}

impl Drop for KeptThreadState {
    fn drop(&mut self) {
        // SAFETY: runs at thread exit, when the thread is detached (no pyo3
        // attachment outlives a call); restores the state saved in `new` and
        // releases it, which deletes the thread state and the GIL.
        unsafe {
            ffi::PyEval_RestoreThread(self.thread_state);
            ffi::PyGILState_Release(self.gil);
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
