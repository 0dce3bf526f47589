//! The [`Evaluator`] trait: the seam between the server and the Python (or
//! fake) that performs requests.
//!
//! # Contract
//!
//! - The server holds one `Arc<dyn Evaluator>` for its lifetime and calls
//!   [`Evaluator::open`] once per client connection. The returned
//!   [`EvalSession`] owns everything that session created: its object table
//!   and its namespace. Dropping it releases all of that; sessions never see
//!   each other's objects.
//! - [`EvalSession::evaluate`] performs one request and blocks until it is
//!   done. It may be called from several threads at once for one session
//!   (calls on one connection overlap); the evaluator serializes internally
//!   where it must (the embedded interpreter's GIL). It must not panic on any
//!   request: every failure, including "no such object" and protocol misuse,
//!   is a [`RemoteException`].
//! - Objects that travel by reference are recorded in the session's export
//!   table and sent as [`Value::SenderObject`]; each sending counts once.
//!   [`EvalSession::release`] gives counts back; an object is dropped when its
//!   count reaches zero. Ids are never reused within a session.
//! - Policy (for example refusing attribute assignment) is enforced by the
//!   server before `evaluate` is called; evaluators perform what they are asked.
//! - Callbacks: [`SessionInfo::callbacks`] reaches the client's objects (the
//!   client passed them as [`Value::SenderObject`] arguments). An evaluator may
//!   call [`Callbacks::request`] from any thread while it evaluates a request
//!   of the session, and from threads it started; it gives references to client
//!   objects back with [`Callbacks::release`].

use std::fmt;
use std::sync::Arc;

use crate::message::{Release, Request, RequestId};
use crate::transport::PeerInfo;
use crate::value::{RemoteException, Value};

/// What an evaluator is, for the handshake and the logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendInfo {
    /// The backend's name (`embedded`, `subprocess`, `fake`).
    pub name: String,
    /// The evaluating Python's version (`3.11.7`), or empty without Python.
    pub python_version: String,
    /// The evaluating Python's `sys.prefix`.
    pub python_prefix: String,
    /// The evaluating Python's executable.
    pub python_executable: String,
}

/// The way an evaluation session reaches back to its client (callbacks).
pub trait Callbacks: Send + Sync {
    /// Sends `op` to the client and blocks until the client replies. May be
    /// called from any thread that is evaluating a request of this session
    /// (and from threads the user's code started), several at once. The
    /// connection being gone is `Err(RemoteException { type_module: "farcall",
    /// type_name: "ConnectionLost", .. })`.
    ///
    /// Call it holding nothing the evaluator needs to perform requests or
    /// releases (for Python: with the GIL released, `py.detach`): while it
    /// waits, this thread or another one of the server may perform the
    /// client's requests of the same session (nested calls) and its releases.
    fn request(&self, op: Request) -> Result<Value, RemoteException>;
    /// Gives back references to client objects (ids the client allocated).
    /// Never blocks, no I/O: they are queued and sent ahead of the next message
    /// to the client.
    fn release(&self, refs: &[Release]);
}

/// The reply to a request whose evaluation panicked in a backend: a
/// `farcall.InternalError` naming the operation and the panic's message
/// (backends catch panics so that no request can take the server down).
pub fn panicked(op: &str, panic: &(dyn std::any::Any + Send)) -> RemoteException {
    let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
    let what = what.unwrap_or_else(|| "unknown panic".into());
    RemoteException::new("farcall", "InternalError", format!("the server's evaluator failed on {op}: {what}"))
}

/// A [`Callbacks`] for sessions without a client to call (tests, tools):
/// every request fails with a `farcall.ProtocolError`; releases are dropped.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCallbacks;

impl Callbacks for NoCallbacks {
    fn request(&self, op: Request) -> Result<Value, RemoteException> {
        Err(RemoteException::protocol(format!("this session has no client to call back ({} request refused)", op.name())))
    }

    fn release(&self, _refs: &[Release]) {}
}

/// What an evaluator knows of the session it opens.
#[derive(Clone)]
pub struct SessionInfo {
    /// The server's id for the session (as in its logs).
    pub id: u64,
    /// The client.
    pub peer: PeerInfo,
    /// Requests to the client's objects and releases of them.
    pub callbacks: Arc<dyn Callbacks>,
}

impl fmt::Debug for SessionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionInfo").field("id", &self.id).field("peer", &self.peer).finish_non_exhaustive()
    }
}

/// Why an evaluator could not start or open a session.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The backend could not start (interpreter missing, wrong version, ...).
    #[error("evaluator failed to start: {0}")]
    Startup(String),
    /// A session could not be opened.
    #[error("could not open an evaluation session: {0}")]
    Session(String),
}

/// A backend that evaluates requests. See the module docs for the contract.
pub trait Evaluator: Send + Sync + fmt::Debug {
    /// Describes the backend.
    fn info(&self) -> BackendInfo;
    /// Opens the state of one client session.
    fn open(&self, session: &SessionInfo) -> Result<Box<dyn EvalSession>, EvalError>;
}

/// The evaluation state of one client session.
pub trait EvalSession: Send + Sync {
    /// Performs one request.
    fn evaluate(&self, request: Request) -> Result<Value, RemoteException>;
    /// Gives back references the client dropped.
    fn release(&self, refs: &[Release]);
    /// Performs the client's request `id` (the server calls this; the id lets
    /// [`EvalSession::cancel`] name the request). By default [`EvalSession::evaluate`].
    fn evaluate_request(&self, id: RequestId, request: Request) -> Result<Value, RemoteException> {
        let _ = id;
        self.evaluate(request)
    }
    /// The client no longer wants the reply to its request `id` (it timed
    /// out): stop that request where the backend can, for example by raising
    /// in the Python code running it. Advisory: a request that is not
    /// running any more, or cannot be interrupted, is left alone, and the
    /// backend must stay fully usable. By default nothing happens.
    fn cancel(&self, id: RequestId) {
        let _ = id;
    }
}
