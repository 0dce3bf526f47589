// Start-up: the interpreter is checked when the evaluator starts (missing,
// not executable, not a Python, too old), the backend describes the worker's
// interpreter, and pre-started workers make connecting faster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use farcall_backend_subprocess::{SubprocessEvaluator, SubprocessOptions};
use farcall_core::{EvalError, Evaluator, Request, Target, Value};

use crate::{call, evaluator, module, open, reference, session};

fn refused(python: &str) -> String {
    refused_with(SubprocessOptions { python: python.into(), prestart: 0, ..Default::default() })
}

fn refused_with(options: SubprocessOptions) -> String {
    match SubprocessEvaluator::start(options) {
        Err(EvalError::Startup(why)) => {
            println!("refused: {why}");
            why
        }
        Err(other) => panic!("not a start-up error: {other}"),
        Ok(e) => panic!("started: {e:?}"),
    }
}

/// A fresh directory under the system's temporary directory.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("farcall-subprocess-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An executable shell script.
fn script(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn a_missing_interpreter_is_refused() {
    let why = refused("/nonexistent/bin/python3");
    assert!(why.contains("`/nonexistent/bin/python3` (evaluator.python) was not found"), "{why}");
    let why = refused("farcall-no-such-python");
    assert!(why.contains("`farcall-no-such-python` (evaluator.python) was not found (no such file, or not on PATH)"), "{why}");
}

#[test]
fn something_that_cannot_be_run_is_refused() {
    let dir = scratch("not-executable");
    let why = refused(dir.to_str().unwrap());
    assert!(why.contains("cannot be run (permission denied"), "{why}");
    let file = dir.join("python3");
    std::fs::write(&file, "not a program").unwrap();
    let why = refused(file.to_str().unwrap());
    assert!(why.contains("cannot be run (permission denied"), "{why}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn programs_that_are_not_python_are_refused() {
    let why = refused("/bin/true");
    assert!(why.contains("`/bin/true` (evaluator.python) exited with code 0 before it was ready"), "{why}");
    let why = refused("/bin/echo");
    assert!(why.contains("`/bin/echo` (evaluator.python) did not answer like a farcall worker (it wrote \"-c import sys"), "{why}");
    let dir = scratch("fails");
    let failing = script(&dir, "python3", "echo 'this python is broken' >&2; exit 3");
    let why = refused(&failing);
    assert!(why.contains("exited with code 3 before it was ready; its last output:\nthis python is broken"), "{why}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_python_older_than_3_9_is_refused() {
    // python3 made to report 3.8 (through a sitecustomize on PYTHONPATH),
    // so the worker's own version check runs.
    let dir = scratch("old");
    std::fs::write(dir.join("sitecustomize.py"), "import sys\nsys.version_info = (3, 8, 18, 'final', 0)\nsys.version = '3.8.18 (faked)'\n")
        .unwrap();
    let fake = script(&dir, "python3.8", &format!("PYTHONPATH={} exec python3 \"$@\"", dir.display()));
    let why = refused(&fake);
    assert!(why.contains("exited with code 78 before it was ready"), "{why}");
    assert!(why.contains("farcall: this is Python 3.8.18; the subprocess backend needs Python 3.9 or newer"), "{why}");
    let _ = std::fs::remove_dir_all(dir);
}

/// An interpreter of pyenv's, if this machine has that version.
fn pyenv(version: &str) -> Option<String> {
    let home =
        std::env::var_os("PYENV_ROOT").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")))?;
    let dir = std::fs::read_dir(home.join("versions")).ok()?;
    let mut found: Vec<PathBuf> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{version}."))))
        .collect();
    found.sort();
    let exe = found.pop()?.join("bin").join("python");
    exe.is_file().then(|| exe.to_str().unwrap().to_owned())
}

#[test]
fn real_old_pythons_are_refused_when_installed() {
    for version in ["2.7", "3.6", "3.8"] {
        let Some(python) = pyenv(version) else {
            println!("skipped: no Python {version} from pyenv on this machine");
            continue;
        };
        let why = refused(&python);
        assert!(why.contains("exited with code 78 before it was ready"), "{why}");
        assert!(why.contains(&format!("farcall: this is Python {version}.")), "{why}");
    }
}

#[test]
fn python_3_9_serves_when_installed() {
    let Some(python) = pyenv("3.9") else {
        println!("skipped: no Python 3.9 from pyenv on this machine");
        return;
    };
    let e = SubprocessEvaluator::start(SubprocessOptions { python: python.clone(), prestart: 0, ..Default::default() }).unwrap();
    assert!(e.info().python_version.starts_with("3.9."), "{:?}", e.info());
    let s = open(&e);
    let math = module(&*s, "math");
    assert_eq!(call(&*s, &math, "pow", vec![Value::Int(3), Value::Int(2)]).unwrap(), Value::Float(9.0));
    let err = call(&*s, &math, "sqrt", vec![Value::Int(-1)]).unwrap_err();
    assert!(err.traceback.contains("raised by C code called directly"), "{}", err.traceback);
    let json = module(&*s, "json");
    let err = call(&*s, &json, "loads", vec![Value::Str("{".into())]).unwrap_err();
    assert_eq!(err.qualified_type(), "json.decoder.JSONDecodeError");
    let builtins = module(&*s, "builtins");
    let big = call(&*s, &builtins, "pow", vec![Value::Int(2), Value::Int(200)]).unwrap();
    assert!(matches!(big, Value::BigInt(ref b) if b.len() == 26), "{big:?}");
    let list = reference(call(&*s, &builtins, "list", vec![Value::Tuple(vec![Value::Int(1)])]).unwrap());
    assert_eq!(s.evaluate(Request::Repr { target: Target::object(list.id) }).unwrap(), Value::Str("[1]".into()));
}

#[test]
fn a_memory_limit_too_low_to_start_is_reported() {
    let why = refused_with(SubprocessOptions { prestart: 0, max_memory_mb: 4, ..Default::default() });
    assert!(why.contains("max_memory_mb = 4"), "{why}");
}

/// `python3`'s own answer to `code`.
fn python3(code: &str) -> Vec<String> {
    let out = Command::new("python3").args(["-c", code]).output().expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn info_describes_the_workers_interpreter() {
    let expected = python3("import sys, platform; print(platform.python_version()); print(sys.prefix); print(sys.executable)");
    let info = evaluator().info();
    assert_eq!(info.name, "subprocess");
    assert_eq!(info.python_version, expected[0]);
    assert_eq!(info.python_prefix, expected[1]);
    assert_eq!(info.python_executable, expected[2]);
}

#[test]
fn the_worker_is_the_interpreter_as_it_runs_alone() {
    // The same sys.path as `python3 -c` minus the '' for the current directory.
    let expected = python3("import sys; print(*[p for p in sys.path if p], sep='\\n')");
    let s = session();
    let builtins = module(&*s, "builtins");
    let sys = module(&*s, "sys");
    let path = call(&*s, &builtins, "tuple", vec![Value::ReceiverObject(Target { id: sys.id, path: vec!["path".into()] })]).unwrap();
    let expected: Vec<Value> = expected.iter().map(|p| Value::Str(p.clone())).collect();
    assert_eq!(path, Value::Tuple(expected));
    // Standard input is empty; standard output goes to the log, not the pipe.
    assert_eq!(call(&*s, &builtins, "input", vec![]).unwrap_err().qualified_type(), "builtins.EOFError");
    assert_eq!(call(&*s, &builtins, "print", vec![Value::Str("hello from a worker".into())]).unwrap(), Value::None);
    let os = module(&*s, "os");
    call(&*s, &os, "write", vec![Value::Int(1), Value::Bytes(b"raw bytes on fd 1\n"[..].into())]).unwrap();
    assert_eq!(call(&*s, &builtins, "len", vec![Value::Str("still talking".into())]).unwrap(), Value::Int(13));
}

#[test]
fn prestarted_workers_make_connecting_faster() {
    // Connecting = opening a session and a first request. Printed, not asserted.
    let mut report = Vec::new();
    for prestart in [0, 2] {
        let e = SubprocessEvaluator::start(SubprocessOptions { prestart, ..Default::default() }).unwrap();
        let mut times = Vec::new();
        for _ in 0..6 {
            if prestart > 0 {
                // Let the pool refill, as it would between connections.
                std::thread::sleep(Duration::from_millis(300));
            }
            let started = Instant::now();
            let s = open(&e);
            module(&*s, "math");
            times.push(started.elapsed());
            drop(s);
        }
        times.sort();
        report.push(format!("prestart = {prestart}: connect (open + first request) median {:?}, min {:?}", times[3], times[0]));
    }
    for line in report {
        println!("{line}");
    }
}
