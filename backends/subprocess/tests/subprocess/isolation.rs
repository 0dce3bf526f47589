// Isolation and limits: a worker that exits, crashes, blows its memory limit
// or overruns the call timeout takes only its own session down; sessions do
// not share a working directory or globals; a dropped session leaves no
// process behind.

use std::time::{Duration, Instant};

use farcall_backend_subprocess::{process_is_running, SubprocessOptions};
use farcall_core::{EvalSession, Evaluator, Request, Target, Value};

use crate::{assert_died, call, evaluator, evaluator_with, mine, module, open, reference, session, text, worker_pid};

/// `math.pow(2, 10)` works on `s`.
fn still_works(s: &dyn EvalSession) {
    let math = module(s, "math");
    assert_eq!(call(s, &math, "pow", vec![Value::Int(2), Value::Int(10)]).unwrap(), Value::Float(1024.0));
}

/// Waits (at most 10 s) until `pid` is gone.
fn gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_is_running(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[test]
fn os_exit_ends_only_its_own_worker() {
    let doomed = session();
    let other = session();
    let pid = worker_pid(&*doomed);
    let os = module(&*doomed, "os");
    let e = call(&*doomed, &os, "_exit", vec![Value::Int(1)]).unwrap_err();
    assert_died(&e, "it exited with code 1");
    println!("{e}");
    // Later calls of that session get the same error, without a worker.
    let later = doomed.evaluate(Request::GetModule { name: "math".into() }).unwrap_err();
    assert_eq!(later, e);
    assert_eq!(doomed.evaluate(Request::Stats).unwrap_err(), e);
    doomed.release(&[farcall_core::Release { id: os.id, count: 1 }]);
    assert!(gone(pid), "the dead worker was reaped");
    still_works(&*other);
    still_works(&*session());
}

#[test]
fn a_crash_is_reported_with_its_signal_and_last_words() {
    let doomed = session();
    let other = session();
    let ctypes = module(&*doomed, "ctypes");
    let e = call(&*doomed, &ctypes, "string_at", vec![Value::Int(0)]).unwrap_err();
    assert_died(&e, "it was killed by signal SIGSEGV (segmentation fault)");
    // Python's faulthandler said where, and the error carries it.
    assert!(e.traceback.contains("Fatal Python error: Segmentation fault"), "{}", e.traceback);
    println!("{e}");
    assert_eq!(doomed.evaluate(Request::GetModule { name: "os".into() }).unwrap_err(), e);
    still_works(&*other);
}

#[test]
fn calls_in_flight_all_fail_when_the_worker_dies() {
    let s = session();
    let threading = module(&*s, "threading");
    let os = module(&*s, "os");
    let event = reference(call(&*s, &threading, "Event", vec![]).unwrap());
    std::thread::scope(|scope| {
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = &s;
                let target = Target { id: event.id, path: vec!["wait".into()] };
                scope.spawn(move || s.evaluate(Request::Call { target, args: vec![Value::Float(60.0)], kwargs: vec![] }))
            })
            .collect();
        // Wait until the three are waiting in the worker (each has a thread).
        // Any that had not been sent yet would fail the same way.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(call(&*s, &threading, "active_count", vec![]).unwrap(), Value::Int(n) if n >= 4) && Instant::now() < deadline {}
        let e = call(&*s, &os, "_exit", vec![Value::Int(3)]).unwrap_err();
        assert_died(&e, "it exited with code 3");
        for w in waiters {
            let got = w.join().unwrap();
            assert_eq!(got.unwrap_err(), e);
        }
    });
}

#[test]
fn a_worker_killed_from_outside() {
    let s = session();
    let pid = worker_pid(&*s);
    let status = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    assert!(gone(pid));
    let e = s.evaluate(Request::GetModule { name: "math".into() }).unwrap_err();
    assert_died(&e, "it was killed by signal SIGKILL (killed), not by farcall");
}

#[test]
fn unbounded_allocation_ends_only_its_worker_under_a_memory_limit() {
    let limited = evaluator_with(SubprocessOptions { prestart: 0, max_memory_mb: 400, ..Default::default() });
    let hog = open(&limited);
    let other = open(&limited);
    let builtins = module(&*hog, "builtins");
    let ns = reference(call(&*hog, &builtins, "dict", vec![]).unwrap());
    let code = "hoard = []\nwhile True:\n    hoard.append(bytearray(1 << 20))\n";
    let e = call(&*hog, &builtins, "exec", vec![text(code), mine(ns.id)]).unwrap_err();
    assert_died(&e, "it ran out of memory (max_memory_mb = 400)");
    println!("{e}");
    assert_eq!(hog.evaluate(Request::Stats).unwrap_err(), e);
    still_works(&*other);
    // A single impossible allocation too.
    let hog = open(&limited);
    let builtins = module(&*hog, "builtins");
    let e = call(&*hog, &builtins, "bytearray", vec![Value::Int(1 << 62)]).unwrap_err();
    assert_died(&e, "out of memory");
    still_works(&*other);
}

#[test]
fn without_a_memory_limit_memory_error_is_an_ordinary_exception() {
    let s = session();
    let builtins = module(&*s, "builtins");
    // 4 EiB: no allocator can, whatever the overcommit policy.
    let e = call(&*s, &builtins, "bytearray", vec![Value::Int(1 << 62)]).unwrap_err();
    assert_eq!(e.qualified_type(), "builtins.MemoryError");
    still_works(&*s);
}

#[test]
fn a_call_over_the_timeout_kills_the_worker() {
    let timed = evaluator_with(SubprocessOptions { prestart: 1, call_timeout: Some(Duration::from_secs(1)), ..Default::default() });
    let slow = open(&timed);
    let other = open(&timed);
    let pid = worker_pid(&*slow);
    let time = module(&*slow, "time");
    let started = Instant::now();
    let e = call(&*slow, &time, "sleep", vec![Value::Int(30)]).unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.qualified_type(), "builtins.TimeoutError", "{e}");
    assert!(e.message.starts_with("call exceeded call_timeout_s = 1"), "{}", e.message);
    assert!(took < Duration::from_secs(20), "the timeout fired after {took:?}");
    assert!(gone(pid), "the worker was killed");
    let later = slow.evaluate(Request::GetModule { name: "math".into() }).unwrap_err();
    assert_died(&later, "it was killed because a call exceeded call_timeout_s = 1");
    println!("{e}\n{later}");
    still_works(&*other);
    // Quick calls are not affected by the timeout.
    let quick = open(&timed);
    for _ in 0..50 {
        still_works(&*quick);
    }
}

#[test]
fn a_hung_worker_holding_the_gil_is_killed_by_the_timeout() {
    // A busy loop in C that never releases the GIL: only killing helps.
    let timed = evaluator_with(SubprocessOptions { prestart: 0, call_timeout: Some(Duration::from_millis(500)), ..Default::default() });
    let s = open(&timed);
    let builtins = module(&*s, "builtins");
    let itertools = module(&*s, "itertools");
    let forever = reference(call(&*s, &itertools, "count", vec![]).unwrap());
    let e = call(&*s, &builtins, "sum", vec![mine(forever.id)]).unwrap_err();
    assert_eq!(e.qualified_type(), "builtins.TimeoutError");
    assert!(e.message.contains("call exceeded call_timeout_s = 0.5"), "{}", e.message);
}

#[test]
fn working_directory_and_globals_stay_in_their_session() {
    let a = session();
    let b = session();
    let os_a = module(&*a, "os");
    let os_b = module(&*b, "os");
    let before = call(&*b, &os_b, "getcwd", vec![]).unwrap();
    let elsewhere = std::env::temp_dir();
    call(&*a, &os_a, "chdir", vec![text(elsewhere.to_str().unwrap())]).unwrap();
    assert_eq!(call(&*a, &os_a, "getcwd", vec![]).unwrap(), text(elsewhere.canonicalize().unwrap().to_str().unwrap()));
    assert_eq!(call(&*b, &os_b, "getcwd", vec![]).unwrap(), before);
    // A global of the interpreter (a new builtin) set in a ...
    let builtins_a = module(&*a, "builtins");
    let set = Request::SetAttr { target: Target::object(builtins_a.id), name: "farcall_test_global".into(), value: Value::Int(1) };
    a.evaluate(set).unwrap();
    let get = |s: &dyn EvalSession| {
        let builtins = module(s, "builtins");
        s.evaluate(Request::GetAttr { target: Target::object(builtins.id), name: "farcall_test_global".into() })
    };
    assert_eq!(get(&*a).unwrap(), Value::Int(1));
    // ... is not in b, nor in a session opened later.
    assert_eq!(get(&*b).unwrap_err().qualified_type(), "builtins.AttributeError");
    assert_eq!(get(&*session()).unwrap_err().qualified_type(), "builtins.AttributeError");
}

#[test]
fn dropping_a_session_kills_and_reaps_its_worker_and_its_children() {
    let s = evaluator().open_session(99).unwrap();
    let pid = s.pid();
    assert_eq!(worker_pid(&s), pid);
    assert!(s.is_alive());
    // A process the user started, which would otherwise outlive the worker.
    let subprocess = module(&s, "subprocess");
    let child = reference(call(&s, &subprocess, "Popen", vec![Value::Tuple(vec![text("sleep"), text("60")])]).unwrap());
    let child_pid = match s.evaluate(Request::GetAttr { target: Target::object(child.id), name: "pid".into() }).unwrap() {
        Value::Int(p) => p as u32,
        other => panic!("{other:?}"),
    };
    assert!(process_is_running(child_pid));
    drop(s);
    // Reaped before drop returned: not even a zombie.
    assert!(!process_is_running(pid), "worker {pid} is still there");
    assert!(gone(child_pid), "the worker's child {child_pid} outlived it");
}

#[test]
fn sessions_of_a_dropped_evaluator_keep_working() {
    let e = evaluator_with(SubprocessOptions { prestart: 2, ..Default::default() });
    let s = e.open(&crate::info(1)).unwrap();
    drop(e);
    still_works(&*s);
}

#[test]
fn a_worker_ended_from_inside_a_callback_fails_the_call_that_waits() {
    let p = crate::pair_with(evaluator());
    // The client's callback ends the server's worker through a nested call, then returns.
    crate::execute(
        &*p.client,
        "def kill(server_exit):\n    try:\n        server_exit(9)\n    except Exception as e:\n        return repr(e)\n",
    );
    crate::execute(&*p.server, "import os\ndef use(f):\n    return f(os._exit)\n");
    let use_it = reference(crate::eval(&*p.server, "use").unwrap());
    let kill = crate::eval(&*p.client, "kill").unwrap();
    let e = crate::call_ref(&*p.server, use_it.id, vec![kill]).unwrap_err();
    assert_died(&e, "it exited with code 9");
    // The client called back into the server: its nested call failed, and it went on.
    assert_eq!(p.to_server.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_call_waiting_for_a_slow_callback_still_times_out() {
    let options = SubprocessOptions { prestart: 0, call_timeout: Some(Duration::from_millis(500)), ..Default::default() };
    let evaluator = evaluator_with(options);
    let p = crate::pair_with(&evaluator);
    crate::execute(&*p.client, "import time\ndef slow():\n    time.sleep(1.0)\n    return 1\n");
    crate::execute(&*p.server, "def use(f):\n    return f()\n");
    let use_it = reference(crate::eval(&*p.server, "use").unwrap());
    let started = Instant::now();
    let e = crate::call_ref(&*p.server, use_it.id, vec![crate::eval(&*p.client, "slow").unwrap()]).unwrap_err();
    assert_eq!(e.qualified_type(), "builtins.TimeoutError", "{e:?}");
    // Checked once the client answered.
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    let e = crate::eval(&*p.server, "1").unwrap_err();
    assert_died(&e, "call_timeout");
}
