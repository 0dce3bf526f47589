//! Helpers of the evaluator conformance tests (`backends/conformance/`),
//! shared by every backend's test binary. Each binary defines
//! `crate::evaluator()`; the tests here use only the `Evaluator` and
//! `EvalSession` traits, so one behaviour is written once for all backends.

use farcall_core::{EvalSession, Evaluator, PeerInfo, RefDesc, RemoteException, Request, SessionInfo, Target, Value};

/// The session description evaluators are opened with.
pub fn info(id: u64) -> SessionInfo {
    SessionInfo {
        id,
        peer: PeerInfo { transport: "memory", address: "test".into(), identity: None },
        callbacks: std::sync::Arc::new(farcall_core::NoCallbacks),
    }
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
pub fn stats(s: &dyn EvalSession) -> (i64, i64) {
    match s.evaluate(Request::Stats).expect("stats") {
        Value::Tuple(v) => match v.as_slice() {
            [Value::Int(live), Value::Int(total)] => (*live, *total),
            other => panic!("bad stats {other:?}"),
        },
        other => panic!("bad stats {other:?}"),
    }
}
