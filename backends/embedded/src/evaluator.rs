//! [`EmbeddedEvaluator`]: the evaluator that runs requests in the CPython
//! embedded in this process.

use std::sync::Arc;

use farcall_core::{BackendInfo, Callbacks, EvalError, EvalSession, Evaluator, NoCallbacks, SessionInfo};
use pyo3::prelude::*;

use crate::semantics::Semantics;
use crate::session::EmbeddedSession;
use crate::{interpreter, BUILD_PYTHON};

/// The default farcall [`Evaluator`]: CPython inside the server process.
///
/// All sessions share one interpreter (and so its modules: a module imported
/// by one client is imported for all), but each has its own object table and
/// never sees another's objects. The interpreter is attached only while
/// Python runs.
pub struct EmbeddedEvaluator {
    info: BackendInfo,
    semantics: Arc<Semantics>,
}

impl std::fmt::Debug for EmbeddedEvaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedEvaluator").field("info", &self.info).finish_non_exhaustive()
    }
}

impl EmbeddedEvaluator {
    /// Starts the evaluator, initialising the embedded interpreter the first
    /// time it is called in the process (later calls reuse it).
    ///
    /// The interpreter is configured with [`BUILD_PYTHON`] as its program
    /// name, so it computes the same `sys.prefix` (and venv) as the Python
    /// the build used. Python does not install signal handlers: signals stay
    /// with the host program.
    ///
    /// # Errors
    ///
    /// [`EvalError::Startup`] when the interpreter cannot be initialised (for
    /// example when its standard library is missing) or its basic modules
    /// cannot be imported.
    pub fn start() -> Result<Self, EvalError> {
        interpreter::ensure_initialized().map_err(EvalError::Startup)?;
        interpreter::keep_thread_state();
        let (info, semantics) = Python::attach(|py| -> PyResult<_> {
            let semantics = Semantics::new(py)?;
            let info = BackendInfo {
                name: "embedded".into(),
                python_version: py.import("platform")?.getattr("python_version")?.call0()?.extract()?,
                python_prefix: py.import("sys")?.getattr("prefix")?.extract()?,
                python_executable: BUILD_PYTHON.into(),
            };
            Ok((info, semantics))
        })
        .map_err(|e| EvalError::Startup(format!("the embedded Python cannot load its standard modules or farcall_semantics: {e}")))?;
        tracing::debug!(version = %info.python_version, prefix = %info.python_prefix, "embedded Python ready");
        Ok(EmbeddedEvaluator { info, semantics: Arc::new(semantics) })
    }

    /// Opens a session directly, as [`Evaluator::open`] does, without boxing
    /// it and without a client to call back ([`NoCallbacks`]).
    pub fn open_session(&self, id: u64) -> EmbeddedSession {
        self.open_with(id, Arc::new(NoCallbacks))
    }

    /// Opens a session whose user code reaches the client's objects
    /// through `callbacks` (the session's `peer`), as [`Evaluator::open`]
    /// does, without boxing it.
    pub fn open_with(&self, id: u64, callbacks: Arc<dyn Callbacks>) -> EmbeddedSession {
        EmbeddedSession::new(id, Arc::clone(&self.semantics), callbacks)
    }
}

impl Evaluator for EmbeddedEvaluator {
    fn info(&self) -> BackendInfo {
        self.info.clone()
    }

    fn open(&self, session: &SessionInfo) -> Result<Box<dyn EvalSession>, EvalError> {
        tracing::debug!(session = session.id, peer = %session.peer, "embedded session opened");
        Ok(Box::new(self.open_with(session.id, Arc::clone(&session.callbacks))))
    }
}
