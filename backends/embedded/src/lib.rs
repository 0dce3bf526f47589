//! farcall's default evaluator: CPython embedded in the server process.
//!
//! [`EmbeddedEvaluator`] implements [`farcall_core::Evaluator`] with the
//! Python the build was configured with ([`BUILD_PYTHON`]); each
//! [`EmbeddedSession`] keeps the objects it handed out by reference until the
//! client releases them or the session is dropped.
//!
//! The object semantics (what travels by value, how references are kept and
//! released, how an exception is described) are those of
//! `backends/python/farcall_semantics.py`, the module the subprocess backend's
//! workers run too: it is loaded once into the embedded interpreter, each
//! session is a `farcall_semantics.Session`, and this crate only converts
//! wire values to and from the objects that module takes and returns.
//!
//! What travels by value: exactly `None`, `bool`, `int` (any size), `float`,
//! `complex`, `str`, `bytes` (large ones shared with Python, not copied),
//! tuples (whose elements may be references), frozensets of values, slices
//! and `Ellipsis`; list, dict and set copies where a copy was asked for
//! (`Builtin("obtain")`, `Builtin("deliver")`); subclasses of these and
//! everything else travel as references. Exceptions travel as
//! [`RemoteException`](farcall_core::RemoteException)s with the formatted
//! traceback. Code called by the client sees the session's namespace as its
//! caller's globals (`exec(code)`, `globals()`).
//!
//! Callbacks: an object of the client received in a request
//! ([`Value::SenderObject`](farcall_core::Value::SenderObject)) becomes a
//! `farcall_semantics.PeerObject`, whose operations are requests sent through
//! the session's `peer`: an object of this crate that performs them with the
//! session's [`Callbacks`](farcall_core::Callbacks)
//! ([`SessionInfo::callbacks`](farcall_core::SessionInfo::callbacks)),
//! detached from Python while the client answers, from whatever thread calls
//! it (a thread evaluating a request, or one that user code started). The
//! client's exception is raised as `PeerError` (the module turns it into the
//! builtin type or `farcall.RemoteError`, with the client's traceback); a
//! lost connection as `FarcallError`. A `PeerObject` that goes away gives its
//! receptions back with [`Callbacks::release`](farcall_core::Callbacks::release).
//!
//! ```
//! use farcall_backend_embedded::EmbeddedEvaluator;
//! use farcall_core::{EvalSession, Evaluator, Request, Target, Value};
//!
//! let evaluator = EmbeddedEvaluator::start()?;
//! let session = evaluator.open_session(1);
//! let Value::SenderObject(math) = session.evaluate(Request::GetModule { name: "math".into() })? else {
//!     unreachable!("a module travels by reference")
//! };
//! let pow = Target { id: math.id, path: vec!["pow".into()] };
//! let nine = session.evaluate(Request::Call { target: pow, args: vec![Value::Int(3), Value::Int(2)], kwargs: vec![] })?;
//! assert_eq!(nine, Value::Float(9.0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Binaries that link this crate load `libpython` by soname; give them an
//! rpath to the build Python's library directory (this crate's build script
//! does so for its own tests) or they may load another Python of the same
//! version.

mod evaluator;
mod interpreter;
mod semantics;
mod session;

pub use evaluator::EmbeddedEvaluator;
pub use session::EmbeddedSession;

/// The Python interpreter this crate was built against (the `executable` of
/// pyo3's build configuration). The embedded interpreter takes it as its
/// program name, and so computes the same `sys.prefix` as that interpreter.
pub const BUILD_PYTHON: &str = env!("FARCALL_BUILD_PYTHON");
