// The embedded interpreter is the Python the build was configured with.

use std::process::Command;

use farcall_backend_embedded::{EmbeddedEvaluator, BUILD_PYTHON};
use farcall_core::{Evaluator, Request, Target, Value};

use crate::{call, evaluator, module, session};

/// Runs the build's Python with `code` and returns its output lines. It runs
/// as it would on its own: an `LD_LIBRARY_PATH` meant for this test would
/// make it load the same (possibly wrong) `libpython` as the test binary.
fn build_python(code: &str) -> Vec<String> {
    let out = Command::new(BUILD_PYTHON).args(["-c", code]).env_remove("LD_LIBRARY_PATH").output().expect("the build's Python runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn info_matches_the_build_interpreter() {
    let expected = build_python("import sys, platform; print(platform.python_version()); print(sys.prefix)");
    let info = evaluator().info();
    assert_eq!(info.name, "embedded");
    assert_eq!(info.python_version, expected[0]);
    assert_eq!(info.python_prefix, expected[1]);
    assert_eq!(info.python_executable, BUILD_PYTHON);
}

#[test]
fn sys_path_and_executable_match_the_build_interpreter() {
    // The build's Python, minus the '' that `-c` puts first.
    let expected = build_python("import sys; print(sys.executable); print(*[p for p in sys.path if p], sep='\\n')");
    let s = session();
    let sys = module(&*s, "sys");
    let executable = s.evaluate(Request::GetAttr { target: Target::object(sys.id), name: "executable".into() }).unwrap();
    assert_eq!(executable, Value::Str(expected[0].clone()));
    let builtins = module(&*s, "builtins");
    let path = call(&*s, &builtins, "tuple", vec![Value::ReceiverObject(Target { id: sys.id, path: vec!["path".into()] })]).unwrap();
    let expected: Vec<Value> = expected[1..].iter().map(|p| Value::Str(p.clone())).collect();
    assert_eq!(path, Value::Tuple(expected));
}

#[test]
fn start_is_idempotent() {
    let a = EmbeddedEvaluator::start().unwrap();
    let b = EmbeddedEvaluator::start().unwrap();
    assert_eq!(a.info(), b.info());
    assert_eq!(a.info(), evaluator().info());
}

#[test]
fn python_leaves_signal_handling_to_the_host() {
    let s = session();
    let signal = module(&*s, "signal");
    let handler = crate::reference(call(&*s, &signal, "getsignal", vec![Value::Int(2)]).unwrap());
    // `signal.SIG_DFL`, not Python's `default_int_handler`.
    assert_eq!(handler.type_name, "signal.Handlers");
    let repr = s.evaluate(Request::Repr { target: Target::object(handler.id) });
    assert_eq!(repr.unwrap(), Value::Str("<Handlers.SIG_DFL: 0>".into()));
}
