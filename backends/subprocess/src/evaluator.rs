//! [`SubprocessEvaluator`]: a worker process per session, a pool of
//! pre-started workers, and [`SubprocessSession`].

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use farcall_core::{
    BackendInfo, Callbacks, EvalError, EvalSession, Evaluator, NoCallbacks, Release, RemoteException, Request, RequestId, SessionInfo,
    Value,
};

use crate::worker::{Config, Worker};

/// How long a worker may take to start and say hello.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the pool waits before trying again after a worker failed to start.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Settings of a [`SubprocessEvaluator`] (the `[evaluator]` section of the
/// server's configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubprocessOptions {
    /// The interpreter that runs the workers: a name looked up on `PATH`
    /// (`python3`, the default) or a path (a venv's `bin/python`). CPython
    /// 3.9 or newer.
    pub python: String,
    /// Workers kept started and ready, so that a new session does not wait
    /// for an interpreter to boot (0: each session starts its own).
    pub prestart: usize,
    /// Address-space limit of each worker in MiB (`setrlimit(RLIMIT_AS)`),
    /// 0 for none. A request that runs out of memory under a limit ends its
    /// worker (see the crate docs).
    pub max_memory_mb: u64,
    /// Longest a call may take; a call over it kills its worker and raises
    /// `TimeoutError`. `None` (or zero) for no limit.
    pub call_timeout: Option<Duration>,
}

impl Default for SubprocessOptions {
    fn default() -> Self {
        SubprocessOptions { python: "python3".into(), prestart: 2, max_memory_mb: 0, call_timeout: None }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs each session in a Python interpreter process of its own.
///
/// Sessions are isolated from each other and from the server: a crash, an
/// `os._exit`, a hang (with `call_timeout`) or a memory blow-up (with
/// `max_memory_mb`) ends only that session's worker, whose calls then raise
/// `farcall.WorkerDied` saying why. A worker is killed (with every process
/// it started) and reaped when its session is dropped. Dropping the
/// evaluator stops the pool; sessions already open keep their workers.
pub struct SubprocessEvaluator {
    config: Arc<Config>,
    options: SubprocessOptions,
    info: BackendInfo,
    pool: Option<Pool>,
}

impl std::fmt::Debug for SubprocessEvaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubprocessEvaluator").field("options", &self.options).field("info", &self.info).finish_non_exhaustive()
    }
}

impl SubprocessEvaluator {
    /// Checks the interpreter by starting a worker with it (it exists, runs,
    /// is CPython 3.9 or newer and runs farcall's worker code), then starts
    /// the pool of `prestart` workers.
    ///
    /// If the process still has the default disposition for SIGPIPE (Rust
    /// binaries and Python ignore it), it is set to ignore it: writing to a
    /// dead worker must fail, not end the server.
    ///
    /// # Errors
    ///
    /// [`EvalError::Startup`] naming the interpreter and what is wrong with
    /// it: not found, not executable, too old, not a Python, failed or hung
    /// at start-up (with what it printed).
    pub fn start(options: SubprocessOptions) -> Result<Self, EvalError> {
        if crate::sys::ignore_sigpipe() {
            tracing::debug!("SIGPIPE is now ignored: a dead worker's pipe must not end the server");
        }
        let config = Arc::new(Config {
            python: options.python.clone(),
            max_memory_mb: options.max_memory_mb,
            call_timeout: options.call_timeout.filter(|t| !t.is_zero()),
            start_timeout: START_TIMEOUT,
        });
        let first = Worker::spawn(&config)
            .map_err(|why| EvalError::Startup(format!("the subprocess backend's Python `{}` (evaluator.python) {why}", options.python)))?;
        let hello = first.hello().clone();
        let info = BackendInfo {
            name: "subprocess".into(),
            python_version: hello.python_version,
            python_prefix: hello.prefix,
            python_executable: hello.executable,
        };
        tracing::info!(python = %options.python, version = %info.python_version, prestart = options.prestart, "subprocess evaluator ready");
        let pool = (options.prestart > 0).then(|| Pool::start(Arc::clone(&config), options.prestart, first));
        Ok(SubprocessEvaluator { config, options, info, pool })
    }

    /// The options it was started with.
    pub fn options(&self) -> &SubprocessOptions {
        &self.options
    }

    /// Opens a session directly, as [`Evaluator::open`] does, without boxing
    /// it and without a client to call back ([`NoCallbacks`]): takes a ready
    /// worker from the pool, or starts one.
    ///
    /// # Errors
    ///
    /// [`EvalError::Session`] when no worker can be started.
    pub fn open_session(&self, id: u64) -> Result<SubprocessSession, EvalError> {
        self.open_with(id, Arc::new(NoCallbacks))
    }

    /// Opens a session whose user code reaches the client's objects
    /// through `callbacks`, as [`Evaluator::open`] does, without boxing it.
    ///
    /// # Errors
    ///
    /// [`EvalError::Session`] when no worker can be started.
    pub fn open_with(&self, id: u64, callbacks: Arc<dyn Callbacks>) -> Result<SubprocessSession, EvalError> {
        let worker = match self.pool.as_ref().and_then(Pool::take) {
            Some(w) => w,
            None => Worker::spawn(&self.config)
                .map_err(|why| EvalError::Session(format!("could not start a worker: the Python `{}` {why}", self.config.python)))?,
        };
        worker.set_session(id, callbacks);
        tracing::debug!(session = id, pid = worker.pid(), "subprocess session opened");
        Ok(SubprocessSession { id, worker })
    }
}

impl Evaluator for SubprocessEvaluator {
    fn info(&self) -> BackendInfo {
        self.info.clone()
    }

    fn open(&self, session: &SessionInfo) -> Result<Box<dyn EvalSession>, EvalError> {
        Ok(Box::new(self.open_with(session.id, Arc::clone(&session.callbacks))?))
    }
}

/// Workers started ahead of need, refilled by a background thread.
struct Pool {
    shared: Arc<PoolShared>,
    thread: Option<JoinHandle<()>>,
}

struct PoolShared {
    config: Arc<Config>,
    size: usize,
    state: Mutex<PoolState>,
    changed: Condvar,
}

#[derive(Default)]
struct PoolState {
    ready: VecDeque<Worker>,
    stopping: bool,
}

impl Pool {
    fn start(config: Arc<Config>, size: usize, first: Worker) -> Self {
        let shared = Arc::new(PoolShared { config, size, state: Mutex::new(PoolState::default()), changed: Condvar::new() });
        lock(&shared.state).ready.push_back(first);
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("farcall-prestart".into()).spawn(move || s.refill());
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("no thread to pre-start workers ({e}); sessions will start their own");
                None
            }
        };
        Pool { shared, thread }
    }

    /// A ready, live worker, if there is one.
    fn take(&self) -> Option<Worker> {
        let mut dead = Vec::new();
        let found = {
            let mut st = lock(&self.shared.state);
            loop {
                match st.ready.pop_front() {
                    Some(w) if w.is_alive() => break Some(w),
                    Some(w) => dead.push(w),
                    None => break None,
                }
            }
        };
        self.shared.changed.notify_all();
        drop(dead);
        found
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        lock(&self.shared.state).stopping = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let workers = std::mem::take(&mut lock(&self.shared.state).ready);
        drop(workers);
    }
}

impl PoolShared {
    /// The refill thread: keeps `size` live workers ready.
    fn refill(&self) {
        loop {
            let mut dead = Vec::new();
            {
                let mut st = lock(&self.state);
                loop {
                    if st.stopping {
                        return;
                    }
                    // Workers that died waiting are replaced.
                    let (live, gone): (VecDeque<Worker>, VecDeque<Worker>) = st.ready.drain(..).partition(Worker::is_alive);
                    st.ready = live;
                    dead.extend(gone);
                    if st.ready.len() < self.size {
                        break;
                    }
                    st = self.changed.wait(st).unwrap_or_else(PoisonError::into_inner);
                }
            }
            drop(dead);
            match Worker::spawn(&self.config) {
                Ok(w) => {
                    let mut st = lock(&self.state);
                    if st.stopping {
                        drop(st);
                        drop(w);
                        return;
                    }
                    st.ready.push_back(w);
                }
                Err(why) => {
                    tracing::warn!(python = %self.config.python, "could not pre-start a worker: the Python {why}");
                    let st = lock(&self.state);
                    let _ = self.changed.wait_timeout_while(st, RETRY_AFTER, |s| !s.stopping);
                }
            }
        }
    }
}

/// One session's worker process. Created by
/// [`SubprocessEvaluator::open`](Evaluator::open).
///
/// Requests may be performed from several threads at once; they run
/// concurrently in the worker. Dropping the session kills the worker (and
/// every process it started) and waits until it is reaped.
pub struct SubprocessSession {
    id: u64,
    worker: Worker,
}

impl std::fmt::Debug for SubprocessSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubprocessSession").field("id", &self.id).field("worker", &self.worker).finish()
    }
}

impl SubprocessSession {
    /// The process id of the session's worker.
    pub fn pid(&self) -> u32 {
        self.worker.pid()
    }

    /// Whether the worker is still serving (it has not died and is not being killed).
    pub fn is_alive(&self) -> bool {
        self.worker.is_alive()
    }
}

impl SubprocessSession {
    /// Performs a request (the client's request `id`, when known), describing a panic as data.
    fn perform(&self, id: Option<RequestId>, request: Request) -> Result<Value, RemoteException> {
        let op = request.name();
        catch_unwind(AssertUnwindSafe(|| self.worker.evaluate(id, request))).unwrap_or_else(|panic| {
            let e = farcall_core::evaluator::panicked(op, &*panic);
            tracing::error!(session = self.id, op, error = %e.message, "the subprocess evaluator panicked");
            Err(e)
        })
    }
}

impl EvalSession for SubprocessSession {
    fn evaluate(&self, request: Request) -> Result<Value, RemoteException> {
        self.perform(None, request)
    }

    fn evaluate_request(&self, id: RequestId, request: Request) -> Result<Value, RemoteException> {
        self.perform(Some(id), request)
    }

    /// The worker raises `TimeoutError` in the Python code performing
    /// request `id`, at its next bytecode (code blocked in C finishes first).
    fn cancel(&self, id: RequestId) {
        self.worker.cancel(id);
    }

    fn release(&self, refs: &[Release]) {
        self.worker.release(refs);
    }
}

impl Drop for SubprocessSession {
    fn drop(&mut self) {
        tracing::debug!(session = self.id, pid = self.worker.pid(), "subprocess session closed; killing its worker");
    }
}
