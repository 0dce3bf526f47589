//! The subprocess evaluator with real worker processes (`python3` from
//! `PATH`), through the `Evaluator`/`EvalSession` traits: the embedded
//! backend's behaviours, isolation and limits, start-up checks, and the same
//! requests compared with the embedded backend.

// The behaviours every backend shares live in backends/conformance/.
#[path = "../../../conformance/builtins.rs"]
mod builtins;
#[path = "../../../conformance/callbacks.rs"]
mod callbacks;
#[path = "../../../conformance/calls.rs"]
mod calls;
mod conformance;
#[path = "../../../conformance/errors.rs"]
mod errors;
mod isolation;
#[path = "../../../conformance/references.rs"]
mod references;
mod sessions;
mod startup;
#[allow(dead_code)] // each backend's tests use a different subset of the helpers
#[path = "../../../conformance/support.rs"]
mod support;
#[path = "../../../conformance/values.rs"]
mod values;

pub use support::*;

use std::sync::OnceLock;

use farcall_backend_embedded::EmbeddedEvaluator;
use farcall_backend_subprocess::{SubprocessEvaluator, SubprocessOptions};
use farcall_core::{EvalSession, Evaluator, RemoteException, Value};

/// The process's shared evaluator (`python3`, two workers pre-started).
pub fn evaluator() -> &'static SubprocessEvaluator {
    static EVALUATOR: OnceLock<SubprocessEvaluator> = OnceLock::new();
    EVALUATOR.get_or_init(|| SubprocessEvaluator::start(SubprocessOptions::default()).expect("python3 starts as a worker"))
}

/// The evaluator of the sessions that play the client in callback tests
/// (the embedded one: the client's side is not what is tested).
pub fn client_evaluator() -> &'static dyn Evaluator {
    static EVALUATOR: OnceLock<EmbeddedEvaluator> = OnceLock::new();
    EVALUATOR.get_or_init(|| EmbeddedEvaluator::start().expect("the embedded Python starts"))
}

/// An evaluator of its own, with `options`.
pub fn evaluator_with(options: SubprocessOptions) -> SubprocessEvaluator {
    SubprocessEvaluator::start(options).expect("python3 starts as a worker")
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
