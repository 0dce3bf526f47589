//! Per-request cost of the embedded evaluator, without any transport:
//! `cargo bench -p farcall-backend-embedded`. Prints median nanoseconds per
//! request; asserts nothing.

use std::time::Instant;

use farcall_backend_embedded::EmbeddedEvaluator;
use farcall_core::{EvalSession, Release, Request, Target, Value};

fn median_ns(rounds: usize, per_round: u32, mut f: impl FnMut()) -> f64 {
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_round {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(per_round)
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn reference(v: Value) -> u64 {
    match v {
        Value::SenderObject(d) => d.id,
        other => panic!("expected a reference, got {other:?}"),
    }
}

fn report(name: &str, ns: f64) {
    println!("{name:<44} {:>8.2} µs", ns / 1000.0);
}

fn bench(label: &str, s: &dyn EvalSession) {
    let math = reference(s.evaluate(Request::GetModule { name: "math".into() }).unwrap());
    let os = reference(s.evaluate(Request::GetModule { name: "os".into() }).unwrap());
    let builtins = reference(s.evaluate(Request::GetModule { name: "builtins".into() }).unwrap());
    let pow = Target { id: math, path: vec!["pow".into()] };
    println!("-- {label}");
    report(
        "Call math.pow(3, 2)",
        median_ns(51, 20_000, || {
            let r = s.evaluate(Request::Call { target: pow.clone(), args: vec![Value::Int(3), Value::Int(2)], kwargs: vec![] });
            assert_eq!(r, Ok(Value::Float(9.0)));
        }),
    );
    report(
        "GetModule math (reference + 60 attr hints)",
        median_ns(51, 5_000, || {
            let id = reference(s.evaluate(Request::GetModule { name: "math".into() }).unwrap());
            s.release(&[Release { id, count: 1 }]);
        }),
    );
    report(
        "GetAttr os.path.sep",
        median_ns(51, 20_000, || {
            let r = s.evaluate(Request::GetAttr { target: Target { id: os, path: vec!["path".into()] }, name: "sep".into() });
            assert_eq!(r, Ok(Value::Str("/".into())));
        }),
    );
    report(
        "Call list() + release",
        median_ns(51, 20_000, || {
            let id = reference(
                s.evaluate(Request::Call { target: Target { id: builtins, path: vec!["list".into()] }, args: vec![], kwargs: vec![] })
                    .unwrap(),
            );
            s.release(&[Release { id, count: 1 }]);
        }),
    );
    let big = Value::Bytes(vec![7u8; 10 << 20].into());
    report(
        "Call bytes(10 MB) (copy in, share out)",
        median_ns(11, 20, || {
            let r = s.evaluate(Request::Call {
                target: Target { id: builtins, path: vec!["bytes".into()] },
                args: vec![big.clone()],
                kwargs: vec![],
            });
            assert!(matches!(r, Ok(Value::Bytes(b)) if b.len() == 10 << 20));
        }),
    );
}

fn main() {
    let evaluator = EmbeddedEvaluator::start().expect("the embedded Python starts");
    let session = evaluator.open_session(1);
    bench("one thread, reused", &session);
    std::thread::scope(|scope| {
        scope.spawn(|| bench("another thread", &session));
    });
}
