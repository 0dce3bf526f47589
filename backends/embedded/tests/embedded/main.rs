//! The embedded evaluator against the real CPython of the build, through the
//! `Evaluator`/`EvalSession` traits only.

mod calls;
mod errors;
mod interpreter;
mod references;
mod values;

use std::sync::OnceLock;

use farcall_backend_embedded::EmbeddedEvaluator;
use farcall_core::{EvalSession, Evaluator, PeerInfo, RefDesc, RemoteException, Request, SessionInfo, Target, Value};

/// The process's evaluator (the interpreter is started once anyway).
pub fn evaluator() -> &'static dyn Evaluator {
    static EVALUATOR: OnceLock<EmbeddedEvaluator> = OnceLock::new();
    EVALUATOR.get_or_init(|| EmbeddedEvaluator::start().expect("the embedded Python starts"))
}

/// A fresh session.
pub fn session() -> Box<dyn EvalSession> {
    let info = SessionInfo { id: 0, peer: PeerInfo { transport: "memory", address: "test".into(), identity: None } };
    evaluator().open(&info).expect("a session opens")
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
