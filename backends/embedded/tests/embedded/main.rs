//! The embedded evaluator against the real CPython of the build, through the
//! `Evaluator`/`EvalSession` traits only.

// The behaviours every backend shares live in backends/conformance/.
#[path = "../../../conformance/builtins.rs"]
mod builtins;
#[path = "../../../conformance/callbacks.rs"]
mod callbacks;
#[path = "../../../conformance/calls.rs"]
mod calls;
#[path = "../../../conformance/errors.rs"]
mod errors;
mod interpreter;
#[path = "../../../conformance/references.rs"]
mod references;
mod sessions;
#[allow(dead_code)] // each backend's tests use a different subset of the helpers
#[path = "../../../conformance/support.rs"]
mod support;
#[path = "../../../conformance/values.rs"]
mod values;

pub use support::*;

use std::sync::OnceLock;

use farcall_backend_embedded::EmbeddedEvaluator;
use farcall_core::Evaluator;

/// The process's evaluator (the interpreter is started once anyway).
pub fn evaluator() -> &'static dyn Evaluator {
    static EVALUATOR: OnceLock<EmbeddedEvaluator> = OnceLock::new();
    EVALUATOR.get_or_init(|| EmbeddedEvaluator::start().expect("the embedded Python starts"))
}

/// The evaluator of the sessions that play the client in callback tests.
pub fn client_evaluator() -> &'static dyn Evaluator {
    evaluator()
}
