//! Per-request cost and bulk throughput of the subprocess evaluator next to
//! the embedded one, in the same process and run, without any transport:
//! `cargo bench -p farcall-backend-subprocess`. Prints; asserts nothing.

use std::time::{Duration, Instant};

use farcall_backend_embedded::{EmbeddedEvaluator, BUILD_PYTHON};
use farcall_backend_subprocess::{SubprocessEvaluator, SubprocessOptions};
use farcall_core::{EvalSession, Evaluator, PeerInfo, Release, Request, SessionInfo, Target, Value};

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Median seconds per call of `f`, over `rounds` rounds of `per_round` calls.
fn per_call(rounds: usize, per_round: u32, mut f: impl FnMut()) -> f64 {
    median(
        (0..rounds)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..per_round {
                    f();
                }
                start.elapsed().as_secs_f64() / f64::from(per_round)
            })
            .collect(),
    )
}

fn reference(v: Value) -> u64 {
    match v {
        Value::SenderObject(d) => d.id,
        other => panic!("expected a reference, got {other:?}"),
    }
}

/// The figures of one backend, in order: µs per call for each small
/// request, then MB/s for 10 MB each way.
fn measure(s: &dyn EvalSession) -> Vec<f64> {
    let math = reference(s.evaluate(Request::GetModule { name: "math".into() }).unwrap());
    let os = reference(s.evaluate(Request::GetModule { name: "os".into() }).unwrap());
    let builtins = reference(s.evaluate(Request::GetModule { name: "builtins".into() }).unwrap());
    let pow = Target { id: math, path: vec!["pow".into()] };
    let mut out = Vec::new();
    out.push(per_call(21, 2_000, || {
        let r = s.evaluate(Request::Call { target: pow.clone(), args: vec![Value::Int(3), Value::Int(2)], kwargs: vec![] });
        assert_eq!(r, Ok(Value::Float(9.0)));
    }));
    out.push(per_call(21, 500, || {
        let id = reference(s.evaluate(Request::GetModule { name: "math".into() }).unwrap());
        s.release(&[Release { id, count: 1 }]);
    }));
    out.push(per_call(21, 2_000, || {
        let r = s.evaluate(Request::GetAttr { target: Target { id: os, path: vec!["path".into()] }, name: "sep".into() });
        assert_eq!(r, Ok(Value::Str("/".into())));
    }));
    out.push(per_call(21, 2_000, || {
        let target = Target { id: builtins, path: vec!["list".into()] };
        let id = reference(s.evaluate(Request::Call { target, args: vec![], kwargs: vec![] }).unwrap());
        s.release(&[Release { id, count: 1 }]);
    }));
    let big = Value::Bytes(vec![7u8; 10 << 20].into());
    let t = per_call(11, 5, || {
        let target = Target { id: builtins, path: vec!["bytes".into()] };
        let r = s.evaluate(Request::Call { target, args: vec![big.clone()], kwargs: vec![] });
        assert!(matches!(r, Ok(Value::Bytes(b)) if b.len() == 10 << 20));
    });
    // 10 MB in and 10 MB out per call.
    out.push(2.0 * 10.0 * 1.048576 / t);
    out
}

/// Calls per second of `threads` threads, each with a session of its own,
/// calling `math.pow` in a loop for `time`.
fn parallel(evaluator: &dyn Evaluator, threads: usize, time: Duration) -> f64 {
    let sessions: Vec<_> = (0..threads).map(|i| evaluator.open(&info(i as u64)).unwrap()).collect();
    let total: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = sessions
            .iter()
            .map(|s| {
                scope.spawn(move || {
                    let math = reference(s.evaluate(Request::GetModule { name: "math".into() }).unwrap());
                    // A call that does some work: 20k floating-point operations.
                    let fsum = Target { id: math, path: vec!["fsum".into()] };
                    let builtins = reference(s.evaluate(Request::GetModule { name: "builtins".into() }).unwrap());
                    let range = reference(
                        s.evaluate(Request::Call {
                            target: Target { id: builtins, path: vec!["range".into()] },
                            args: vec![Value::Int(20_000)],
                            kwargs: vec![],
                        })
                        .unwrap(),
                    );
                    let start = Instant::now();
                    let mut n = 0u64;
                    while start.elapsed() < time {
                        let r = s.evaluate(Request::Call {
                            target: fsum.clone(),
                            args: vec![Value::ReceiverObject(Target::object(range))],
                            kwargs: vec![],
                        });
                        assert!(r.is_ok());
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    total as f64 / time.as_secs_f64()
}

fn info(id: u64) -> SessionInfo {
    SessionInfo {
        id,
        peer: PeerInfo { transport: "memory", address: "bench".into(), identity: None },
        callbacks: std::sync::Arc::new(farcall_core::NoCallbacks),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let embedded = EmbeddedEvaluator::start().expect("the embedded Python starts");
    let subprocess = SubprocessEvaluator::start(SubprocessOptions { python: BUILD_PYTHON.into(), prestart: 2, ..Default::default() })
        .expect("the build's Python starts as a worker");
    let e = measure(&*embedded.open(&info(1)).unwrap());
    let s = measure(&*subprocess.open(&info(2)).unwrap());
    let names = ["Call math.pow(3, 2)", "GetModule math (reference + hints) + release", "GetAttr os.path.sep", "Call list() + release"];
    println!("{:<46} {:>12} {:>12} {:>8}", "per request (median)", "embedded", "subprocess", "ratio");
    for (i, name) in names.iter().enumerate() {
        println!("{name:<46} {:>9.2} µs {:>9.2} µs {:>7.1}x", e[i] * 1e6, s[i] * 1e6, s[i] / e[i]);
    }
    println!("{:<46} {:>7.0} MB/s {:>7.0} MB/s {:>7.1}x", "bytes(10 MB): 10 MB in + 10 MB out", e[4], s[4], e[4] / s[4]);
    let time = Duration::from_secs(2);
    println!("\nsessions in parallel, math.fsum(range(20000)) calls per second:");
    for threads in [1, 2, 4] {
        let pe = parallel(&embedded, threads, time);
        let ps = parallel(&subprocess, threads, time);
        println!("{threads} session(s): embedded {pe:>8.0}/s   subprocess {ps:>8.0}/s");
    }
}
