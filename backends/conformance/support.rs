//! Helpers of the evaluator conformance tests (`backends/conformance/`),
//! shared by every backend's test binary. Each binary defines
//! `crate::evaluator()`; the tests here use only the `Evaluator` and
//! `EvalSession` traits, so one behaviour is written once for all backends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

use farcall_core::{Callbacks, EvalSession, Evaluator, PeerInfo, RefDesc, Release, RemoteException, Request, SessionInfo, Target, Value};

/// The session description evaluators are opened with (no client to call back).
pub fn info(id: u64) -> SessionInfo {
    info_with(id, Arc::new(farcall_core::NoCallbacks))
}

/// A session description whose callbacks go to `callbacks`.
pub fn info_with(id: u64, callbacks: Arc<dyn Callbacks>) -> SessionInfo {
    SessionInfo { id, peer: PeerInfo { transport: "memory", address: "test".into(), identity: None }, callbacks }
}

/// One direction of a [`Pair`]: requests to the other session are performed
/// on it directly (on the calling thread), releases are recorded.
#[derive(Default)]
pub struct Link {
    other: OnceLock<Weak<dyn EvalSession>>,
    /// Every release received, in order.
    pub released: Mutex<Vec<Release>>,
    /// Requests forwarded so far.
    pub requests: AtomicUsize,
    /// Requests answered so far, for [`Link::wait_answered`].
    answered: Mutex<usize>,
    answered_changed: Condvar,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("released", &self.released).field("requests", &self.requests).finish_non_exhaustive()
    }
}

impl Link {
    /// Waits until `n` requests were answered (at most `timeout`); whether they were.
    pub fn wait_answered(&self, n: usize, timeout: Duration) -> bool {
        let answered = self.answered.lock().unwrap();
        let (answered, _) = self.answered_changed.wait_timeout_while(answered, timeout, |a| *a < n).unwrap();
        *answered >= n
    }

    /// Total count released for `id`.
    pub fn released_count(&self, id: u64) -> u32 {
        self.released.lock().unwrap().iter().filter(|r| r.id == id).map(|r| r.count).sum()
    }
}

impl Callbacks for Link {
    fn request(&self, op: Request) -> Result<Value, RemoteException> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let reply = match self.other.get().and_then(Weak::upgrade) {
            Some(session) => session.evaluate(op),
            None => Err(RemoteException::new("farcall", "ConnectionLost", "the other session is gone")),
        };
        *self.answered.lock().unwrap() += 1;
        self.answered_changed.notify_all();
        reply
    }

    fn release(&self, refs: &[Release]) {
        // Recorded only: forwarding would do the other side's work inside a finalizer.
        self.released.lock().unwrap().extend_from_slice(refs);
    }
}

/// A session of the backend under test (the "server") whose callbacks reach
/// a second session (the "client", of [`crate::client_evaluator`]), which
/// calls back into the first: client objects are objects of the client
/// session, exactly as the protocol is symmetric.
pub struct Pair {
    /// The backend under test.
    pub server: Arc<dyn EvalSession>,
    /// Plays the client: its objects are what the server calls back.
    pub client: Arc<dyn EvalSession>,
    /// The server's callbacks (releases of client objects land here).
    pub to_client: Arc<Link>,
    /// The client's way to the server.
    pub to_server: Arc<Link>,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair").field("to_client", &self.to_client).field("to_server", &self.to_server).finish_non_exhaustive()
    }
}

/// A fresh [`Pair`] whose server is a session of the binary's evaluator.
pub fn pair() -> Pair {
    pair_with(crate::evaluator())
}

/// A fresh [`Pair`] whose server is a session of `evaluator`.
pub fn pair_with(evaluator: &dyn Evaluator) -> Pair {
    let to_client = Arc::new(Link::default());
    let to_server = Arc::new(Link::default());
    let server: Arc<dyn EvalSession> = Arc::from(evaluator.open(&info_with(7, to_client.clone())).expect("a session opens"));
    let client: Arc<dyn EvalSession> =
        Arc::from(crate::client_evaluator().open(&info_with(8, to_server.clone())).expect("a client session opens"));
    assert!(to_client.other.set(Arc::downgrade(&client)).is_ok());
    assert!(to_server.other.set(Arc::downgrade(&server)).is_ok());
    Pair { server, client, to_client, to_server }
}

/// `Builtin(name, args)`.
pub fn builtin(s: &dyn EvalSession, name: &str, args: Vec<Value>) -> Result<Value, RemoteException> {
    s.evaluate(Request::Builtin { name: name.into(), args })
}

/// Runs `code` in the session's namespace (`Builtin("execute")`), which must succeed.
pub fn execute(s: &dyn EvalSession, code: &str) {
    assert_eq!(builtin(s, "execute", vec![text(code)]).expect("the code runs"), Value::None);
}

/// `Builtin("eval", [code])`.
pub fn eval(s: &dyn EvalSession, code: &str) -> Result<Value, RemoteException> {
    builtin(s, "eval", vec![text(code)])
}

/// Calls the session's object `id` with `args`.
pub fn call_ref(s: &dyn EvalSession, id: u64, args: Vec<Value>) -> Result<Value, RemoteException> {
    s.evaluate(Request::Call { target: Target::object(id), args, kwargs: vec![] })
}

/// A fresh session of the binary's evaluator, through the trait.
pub fn session() -> Box<dyn EvalSession> {
    crate::evaluator().open(&info(7)).expect("a session opens")
}

/// A fresh session of `evaluator`, through the trait.
pub fn open(evaluator: &dyn Evaluator) -> Box<dyn EvalSession> {
    evaluator.open(&info(7)).expect("a session opens")
}

/// Expects a reference.
pub fn reference(v: Value) -> RefDesc {
    match v {
        Value::SenderObject(desc) => desc,
        other => panic!("expected a reference, got {other:?}"),
    }
}

/// `GetModule(name)`, which must succeed.
pub fn module(s: &dyn EvalSession, name: &str) -> RefDesc {
    reference(s.evaluate(Request::GetModule { name: name.into() }).expect("module imports"))
}

/// `module.path...(*args)`.
pub fn call(s: &dyn EvalSession, module: &RefDesc, path: &str, args: Vec<Value>) -> Result<Value, RemoteException> {
    call_kw(s, module, path, args, vec![])
}

/// `module.path...(*args, **kwargs)`.
pub fn call_kw(
    s: &dyn EvalSession,
    module: &RefDesc,
    path: &str,
    args: Vec<Value>,
    kwargs: Vec<(&str, Value)>,
) -> Result<Value, RemoteException> {
    s.evaluate(Request::Call {
        target: Target { id: module.id, path: path.split('.').map(str::to_owned).collect() },
        args,
        kwargs: kwargs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    })
}

/// The object `id` itself, as an argument.
pub fn mine(id: u64) -> Value {
    Value::ReceiverObject(Target::object(id))
}

/// A `str` value.
pub fn text(s: &str) -> Value {
    Value::Str(s.into())
}

/// `(live objects, exported total)` of a session.
/// Asserts that `b` holds nothing and cannot reach an object made in `a`
/// (a session's object ids mean nothing in another).
pub fn assert_sessions_apart(a: &dyn EvalSession, b: &dyn EvalSession) {
    let builtins_a = module(a, "builtins");
    let list = reference(call(a, &builtins_a, "list", vec![]).unwrap());
    assert_eq!(stats(b), (0, 0));
    let e = b.evaluate(Request::Repr { target: Target::object(list.id) }).unwrap_err();
    assert_eq!(e.qualified_type(), "farcall.ProtocolError");
}

pub fn stats(s: &dyn EvalSession) -> (i64, i64) {
    match s.evaluate(Request::Stats).expect("stats") {
        Value::Tuple(v) => match v.as_slice() {
            [Value::Int(live), Value::Int(total)] => (*live, *total),
            other => panic!("bad stats {other:?}"),
        },
        other => panic!("bad stats {other:?}"),
    }
}
