//! Workers that die (or are killed) leave no thread and no process behind in
//! the server (nor do the idle readers of sessions given client objects). A
//! test binary of its own, so that no other test's threads are counted.

use std::time::{Duration, Instant};

use farcall_backend_subprocess::{process_is_running, SubprocessEvaluator, SubprocessOptions};
use farcall_core::{EvalSession, Evaluator, PeerInfo, Request, SessionInfo, Target, Value};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

fn call(s: &dyn EvalSession, module: &str, function: &str, args: Vec<Value>) -> Result<Value, farcall_core::RemoteException> {
    let Value::SenderObject(m) = s.evaluate(Request::GetModule { name: module.into() }).unwrap() else { panic!() };
    s.evaluate(Request::Call { target: Target { id: m.id, path: vec![function.into()] }, args, kwargs: vec![] })
}

#[test]
fn dying_workers_leave_no_thread_or_process_behind() {
    let before = threads();
    let options = SubprocessOptions { prestart: 2, call_timeout: Some(Duration::from_secs(2)), ..Default::default() };
    let evaluator = SubprocessEvaluator::start(options).unwrap();
    let info = SessionInfo {
        id: 1,
        peer: PeerInfo { transport: "memory", address: "test".into(), identity: None },
        callbacks: std::sync::Arc::new(farcall_core::NoCallbacks),
    };
    let mut pids = Vec::new();
    for round in 0..3 {
        let sessions: Vec<_> = (0..4).map(|_| evaluator.open(&info).unwrap()).collect();
        for (i, s) in sessions.iter().enumerate() {
            let Value::Int(pid) = call(&**s, "os", "getpid", vec![]).unwrap() else { panic!() };
            pids.push(pid as u32);
            let died = match i {
                0 => call(&**s, "os", "_exit", vec![Value::Int(round)]),
                1 => call(&**s, "ctypes", "string_at", vec![Value::Int(0)]),
                2 => call(&**s, "time", "sleep", vec![Value::Int(60)]),
                _ => {
                    // A client object starts the session's idle reader, which must end with the worker too.
                    let client_object = Value::SenderObject(farcall_core::RefDesc::new(1, "client.thing"));
                    assert!(matches!(call(&**s, "builtins", "id", vec![client_object]), Ok(Value::Int(_))));
                    continue;
                }
            };
            assert!(died.is_err());
        }
        drop(sessions);
    }
    drop(evaluator);
    for pid in &pids {
        assert!(!process_is_running(*pid), "worker {pid} is still there");
    }
    // The workers' own threads end with them (standard error at its end).
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads() > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(threads(), before, "threads left behind");
}
