// The embedded interpreter is the Python the build was configured with.

use std::process::Command;

use farcall_backend_embedded::{EmbeddedEvaluator, BUILD_PYTHON};
use farcall_core::Evaluator;

use crate::evaluator;

#[test]
fn info_matches_the_build_interpreter() {
    let out = Command::new(BUILD_PYTHON)
        .args([
            "-c",
            "import sys, platform; print(platform.python_version()); print(sys.prefix)",
        ])
        .output()
        .expect("the build's Python runs");
    assert!(out.status.success());
    let out = String::from_utf8(out.stdout).unwrap();
    let mut lines = out.lines();
    let (version, prefix) = (lines.next().unwrap(), lines.next().unwrap());

    let info = evaluator().info();
    assert_eq!(info.name, "embedded");
    assert_eq!(info.python_version, version);
    assert_eq!(info.python_prefix, prefix);
    assert_eq!(info.python_executable, BUILD_PYTHON);
}

#[test]
fn start_is_idempotent() {
    let a = EmbeddedEvaluator::start().unwrap();
    let b = EmbeddedEvaluator::start().unwrap();
    assert_eq!(a.info(), b.info());
    assert_eq!(a.info(), evaluator().info());
}
