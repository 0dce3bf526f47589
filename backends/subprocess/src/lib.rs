//! farcall's subprocess evaluator: each session runs in a Python interpreter
//! process of its own (any CPython 3.9 or newer: a venv, a conda env, another
//! version than the server's).
//!
//! The worker code ships inside this crate ([`SEMANTICS_PY`] and
//! [`WORKER_PY`]) and needs nothing but the Python standard library: a worker
//! is `python -c BOOTSTRAP` reading the two modules from its stdin. The
//! object semantics (what travels by value, how references are kept and
//! released, how an exception is described) are those of the embedded
//! backend, defined once in `farcall_semantics.py`.
//!
//! ```
//! use farcall_backend_subprocess::{SubprocessEvaluator, SubprocessOptions};
//! use farcall_core::{EvalSession, Request, Target, Value};
//!
//! let evaluator = SubprocessEvaluator::start(SubprocessOptions { prestart: 0, ..Default::default() })?;
//! let session = evaluator.open_session(1)?;
//! let Value::SenderObject(math) = session.evaluate(Request::GetModule { name: "math".into() })? else {
//!     unreachable!("a module travels by reference")
//! };
//! let pow = Target { id: math.id, path: vec!["pow".into()] };
//! let nine = session.evaluate(Request::Call { target: pow, args: vec![Value::Int(3), Value::Int(2)], kwargs: vec![] })?;
//! assert_eq!(nine, Value::Float(9.0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Isolation and limits
//!
//! - A worker that ends (`os._exit`, a crash such as `ctypes.string_at(0)`,
//!   a kill) fails the calls of its session, then and later, with
//!   `farcall.WorkerDied` saying why: its exit code, the signal, or "out of
//!   memory"; the exception's traceback holds the worker's last lines of
//!   standard error (for a crash, Python's `faulthandler` dump). Other
//!   sessions and the server are unaffected.
//! - `max_memory_mb` limits each worker's address space. A request that
//!   raises `MemoryError` in a worker with a limit ends that worker (reported
//!   as "out of memory"): having hit its limit, any allocation of any thread
//!   in it may have failed, so its state cannot be trusted. Without a limit a
//!   `MemoryError` is an ordinary exception.
//! - `call_timeout`: a call that takes longer kills its worker and raises
//!   `builtins.TimeoutError`; the session's other calls raise `WorkerDied`.
//! - A session's worker is killed, with every process it started (its
//!   process group), and reaped when the session is dropped. A worker whose
//!   server disappears ends when its stdin closes.
//! - Workers run in their own process group (a terminal's Ctrl-C does not
//!   reach them) with the server's environment and working directory.
//!   Whatever they write to stdout or stderr (`print`, C code) is logged
//!   line by line under the tracing target `farcall::worker`; their stdin
//!   reads nothing. `sys.path` is the interpreter's own, without the current
//!   directory that `python -c` would add.
//!
//! # Where it differs from the embedded backend
//!
//! Sessions do not share modules or process state (each has an
//! interpreter: `os.chdir`, module globals, a crash or a memory blow-up stay
//! in their worker), and a worker can be killed to stop a call. The object
//! semantics are the same: both backends run `backends/python/farcall_semantics.py`.
//! `faulthandler` is enabled in workers.
//!
//! Callbacks work as in the embedded backend (user code calling an object
//! of the client, from any thread of the worker, nested to any depth, also
//! between calls: a session that passed a client object to its worker gets
//! a thread that reads the worker's output while no call does). Releases of
//! client objects travel just ahead of the worker's next frame. Callbacks
//! read by one thread are forwarded one after the other. The time a call
//! spends waiting for the client to answer one of its callbacks counts
//! toward `call_timeout`, which is checked when the client has answered. A
//! finalizer that runs while the worker applies a release (or reads) cannot
//! call the client: it gets a `FarcallError` (as in the embedded backend).
//!
//! # The worker protocol
//!
//! Frames in both directions are a 4-byte big-endian length, then the body.
//!
//! 1. server → worker: the source of `farcall_semantics.py`, then of
//!    `farcall_worker.py` (raw UTF-8; read by the bootstrap), then a
//!    MessagePack map of settings (`max_memory_mb`).
//! 2. worker → server: the hello, a MessagePack map: `farcall_worker`
//!    ([`WORKER_PROTOCOL`]), `python_version`, `prefix`, `executable`, `pid`.
//! 3. Then exactly farcall's own messages (`farcall_core::codec`), in both
//!    directions, the worker playing the server's part and the server the
//!    client's: requests and releases to the worker, replies from it; and
//!    the other way, *callbacks* (user code in the worker calling an object
//!    of the client): requests from the worker (ids of its own), replies to
//!    them, and releases of client objects (written by the worker ahead of
//!    its next frame). Requests carry ids of this pipe; the worker serves
//!    them concurrently (its threads take turns at reading, and the one that
//!    read a request performs it, so a slow call holds up no other) and
//!    applies each release before the requests that follow it; the thread
//!    reading delivers callback replies to the worker threads waiting for
//!    them. On the server's side too, the threads waiting for replies take
//!    turns at reading them: a call's reply is read by its own thread
//!    whenever it is the only one in flight. A callback request is forwarded
//!    to the client ([`Callbacks::request`](farcall_core::Callbacks::request))
//!    by the thread that read it, after giving up the reading role (so that
//!    calls nested in the callback are read meanwhile); releases go to
//!    [`Callbacks::release`](farcall_core::Callbacks::release). A `cancel`
//!    is never sent to a worker (a worker ignores one).
//! 4. worker → server, just before it ends itself: a notice `[127, reason,
//!    detail]` (`out_of_memory`, `protocol`, `internal`).
//!
//! A worker exits with status 78 on a Python older than 3.9, 71 when out of
//! memory under a limit, 76 on a malformed message, 70 on an internal error,
//! 0 when its stdin closes.
//!
//! Unix only (process groups, `poll`, `setrlimit`).

mod evaluator;
mod sys;
mod worker;

pub use evaluator::{SubprocessEvaluator, SubprocessOptions, SubprocessSession};
pub use sys::process_is_running;

/// `farcall_semantics.py`: the object semantics, shared with the other backends.
pub const SEMANTICS_PY: &str = include_str!("../../python/farcall_semantics.py");

/// `farcall_worker.py`: the worker's codec and serving loop.
pub const WORKER_PY: &str = include_str!("../python/farcall_worker.py");

/// The version of the worker protocol (the hello's `farcall_worker`).
pub const WORKER_PROTOCOL: u32 = 2;
