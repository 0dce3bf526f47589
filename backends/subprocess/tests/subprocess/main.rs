//! The subprocess evaluator with real worker processes (`python3` from
//! `PATH`), through the `Evaluator`/`EvalSession` traits: the embedded
//! backend's behaviours, isolation and limits, start-up checks, and the same
//! requests compared with the embedded backend.

mod calls;
mod conformance;
mod errors;
mod isolation;
mod references;
mod startup;
mod values;

use std::sync::OnceLock;

use farcall_backend_subprocess::{SubprocessEvaluator, SubprocessOptions};
use farcall_core::{EvalSession, Evaluator, PeerInfo, RefDesc, RemoteException, Request, SessionInfo, Target, Value};

/// The process's shared evaluator (`python3`, two workers pre-started).
pub fn evaluator() -> &'static SubprocessEvaluator {
    static EVALUATOR: OnceLock<SubprocessEvaluator> = OnceLock::new();
    EVALUATOR.get_or_init(|| SubprocessEvaluator::start(SubprocessOptions::default()).expect("python3 starts as a worker"))
}

/// An evaluator of its own, with `options`.
pub fn evaluator_with(options: SubprocessOptions) -> SubprocessEvaluator {
    SubprocessEvaluator::start(options).expect("python3 starts as a worker")
}

/// The session description evaluators are opened with.
pub fn info(id: u64) -> SessionInfo {
    SessionInfo { id, peer: PeerInfo { transport: "memory", address: "test".into(), identity: None } }
}

/// A fresh session of the shared evaluator, through the trait.
pub fn session() -> Box<dyn EvalSession> {
    open(evaluator())
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

/// The worker's process id, asked of the worker itself.
pub fn worker_pid(s: &dyn EvalSession) -> u32 {
    let os = module(s, "os");
    match call(s, &os, "getpid", vec![]).expect("getpid") {
        Value::Int(pid) => pid as u32,
        other => panic!("{other:?}"),
    }
}

/// Expects a `farcall.WorkerDied` whose message contains `why`.
pub fn assert_died(e: &RemoteException, why: &str) {
    assert_eq!(e.qualified_type(), "farcall.WorkerDied", "{e}");
    assert!(e.message.starts_with("the worker process of this session died: "), "{}", e.message);
    assert!(e.message.contains(why), "expected {why:?} in {:?}", e.message);
    assert_eq!(e.args, vec![Value::Str(e.message.clone())]);
}
