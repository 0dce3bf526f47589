// The shipped fake plugin, loaded from its cdylib and driven through the Evaluator/EvalSession traits.

use std::sync::{Arc, Barrier};

use bytes::Bytes;
use farcall_backend_plugin::{abi, PluginEvaluator};
use farcall_core::{flags, EvalSession, Evaluator, LazyKind, Release, Request, Target, Value};

use crate::support::{call, call_kw, fake, fake_plugin, module, open, session_info, stats};

#[test]
fn reports_its_name_and_no_python() {
    let evaluator = fake();
    let info = evaluator.info();
    assert_eq!(info.name, "fake");
    assert_eq!(info.name, farcall_plugin_fake::NAME);
    assert_eq!((info.python_version.as_str(), info.python_prefix.as_str(), info.python_executable.as_str()), ("", "", ""));
    assert_eq!(evaluator.name(), "fake");
    assert_eq!(evaluator.path(), fake_plugin());
}

#[test]
fn the_fake_and_the_host_agree_on_the_abi() {
    assert_eq!(farcall_plugin_fake::ffi::ABI_VERSION, abi::ABI_VERSION);
    assert_eq!(farcall_plugin_fake::ffi::STATUS_OK, abi::STATUS_OK);
    assert_eq!(farcall_plugin_fake::ffi::STATUS_BAD_REQUEST, abi::STATUS_BAD_REQUEST);
    assert_eq!(farcall_plugin_fake::ffi::STATUS_FAILED, abi::STATUS_FAILED);
}

#[test]
fn the_seed_example_works() {
    let evaluator = fake();
    let session = open(&evaluator, 1);
    let math = module(&*session, "math");
    assert_eq!(call(&*session, &math, &["pow"], vec![Value::Int(3), Value::Int(2)]), Ok(Value::Float(9.0)));
    assert_eq!(call(&*session, &math, &["pow"], vec![Value::Float(2.0), Value::Float(0.5)]), Ok(Value::Float(2f64.sqrt())));
    let pi = session.evaluate(Request::GetAttr { target: Target::object(math.id), name: "pi".into() });
    assert_eq!(pi, Ok(Value::Float(std::f64::consts::PI)));
    let e = call(&*session, &math, &["pow"], vec![Value::Str("3".into()), Value::Int(2)]).unwrap_err();
    assert_eq!((e.qualified_type().as_str(), e.message.as_str()), ("builtins.TypeError", "must be real number, not str"));
    let e = call(&*session, &math, &["pow"], vec![Value::Int(0), Value::Int(-1)]).unwrap_err();
    assert_eq!((e.qualified_type().as_str(), e.message.as_str()), ("builtins.ValueError", "math domain error"));
}

#[test]
fn echo_round_trips_every_value_kind() {
    let evaluator = fake();
    let session = open(&evaluator, 1);
    let echo = module(&*session, "echo");
    assert!(echo.is_module());
    assert_eq!(echo.type_name, "builtins.module");
    for name in ["echo", "obj", "sleep", "fail", "barrier"] {
        assert!(echo.attrs.iter().any(|a| a.name == name && a.kind == LazyKind::Callable), "hint for {name}");
    }
    let big = Bytes::from(vec![7u8; 3 << 20]);
    let values = vec![
        Value::None,
        Value::Bool(true),
        Value::Int(-5),
        Value::Int(i64::MAX),
        Value::BigInt(Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0, 1])),
        Value::Float(f64::INFINITY),
        Value::Complex(1.5, -2.0),
        Value::Str("héllo".into()),
        Value::Bytes(Bytes::from_static(b"\x00\xff")),
        Value::Bytes(big.clone()),
        Value::Tuple(vec![Value::Tuple(vec![]), Value::Tuple(vec![Value::Int(1), Value::Str("x".into())])]),
        Value::FrozenSet(vec![Value::Int(1), Value::Int(2)]),
    ];
    let back = call(&*session, &echo, &["echo"], values.clone()).expect("echo");
    assert_eq!(back, Value::Tuple(values));

    // Keyword arguments come back as (name, value) pairs after the positional ones.
    let back = call_kw(&*session, &echo, &["echo"], vec![Value::Int(1)], vec![("x", Value::Int(2))]).expect("echo");
    assert_eq!(back, Value::Tuple(vec![Value::Int(1), Value::Tuple(vec![Value::Str("x".into()), Value::Int(2)])]));

    // The large reply is decoded in place from the plugin's buffer, which
    // stays valid after the session and the evaluator are gone.
    let Value::Tuple(items) = call(&*session, &echo, &["echo"], vec![Value::Bytes(big.clone())]).expect("echo") else { panic!() };
    drop(session);
    drop(evaluator);
    assert_eq!(items, vec![Value::Bytes(big)]);
}

#[test]
fn functions_fetched_with_getattr_are_callable_objects() {
    let evaluator = fake();
    let session = open(&evaluator, 1);
    let echo = module(&*session, "echo");
    let Ok(Value::SenderObject(f)) = session.evaluate(Request::GetAttr { target: Target::object(echo.id), name: "echo".into() }) else {
        panic!("a function by reference")
    };
    assert!(f.is_callable());
    assert_eq!(f.flags & flags::MODULE, 0);
    assert_eq!(call(&*session, &f, &[], vec![Value::Int(4)]), Ok(Value::Tuple(vec![Value::Int(4)])));
    let repr = session.evaluate(Request::Repr { target: Target::object(f.id) });
    assert_eq!(repr, Ok(Value::Str("<function echo.echo>".into())));
    let name = session.evaluate(Request::GetAttr { target: Target::object(f.id), name: "__name__".into() });
    assert_eq!(name, Ok(Value::Str("echo".into())));
}

#[test]
fn references_are_counted_and_released() {
    let evaluator = fake();
    let session = open(&evaluator, 1);
    let echo = module(&*session, "echo");
    // Same module, same id: two sendings of one object.
    assert_eq!(module(&*session, "echo").id, echo.id);
    assert_eq!(stats(&*session), (1, 1));

    let Ok(Value::SenderObject(obj)) = call(&*session, &echo, &["obj"], vec![]) else { panic!("an object") };
    assert_eq!(obj.type_name, "echo.Object");
    assert_eq!(stats(&*session), (2, 2));

    // Passing it back returns the same object, by reference: a second sending.
    let back = call(&*session, &echo, &["echo"], vec![Value::ReceiverObject(Target::object(obj.id))]).expect("echo");
    assert_eq!(back, Value::Tuple(vec![Value::SenderObject(obj.clone())]));

    session.release(&[Release { id: obj.id, count: 1 }]);
    assert_eq!(stats(&*session), (2, 2), "one sending is still held");
    session.release(&[Release { id: obj.id, count: 1 }, Release { id: echo.id, count: 2 }]);
    assert_eq!(stats(&*session), (0, 2));

    let e = session.evaluate(Request::Repr { target: Target::object(obj.id) }).unwrap_err();
    assert_eq!(e.qualified_type(), "farcall.ProtocolError");
    assert!(e.message.contains("no longer"), "{e}");
    // A fresh sending gets a fresh id; unknown ids and excess counts are ignored.
    session.release(&[Release { id: 999, count: 5 }]);
    assert_eq!(module(&*session, "echo").id, 3);
    assert_eq!(stats(&*session), (1, 3));
}

#[test]
fn instances_take_attributes() {
    let evaluator = fake();
    let session = open(&evaluator, 1);
    let echo = module(&*session, "echo");
    let Ok(Value::SenderObject(obj)) = call(&*session, &echo, &["obj"], vec![]) else { panic!("an object") };
    let target = Target::object(obj.id);
    let set = Request::SetAttr { target: target.clone(), name: "x".into(), value: Value::Int(5) };
    assert_eq!(session.evaluate(set), Ok(Value::None));
    assert_eq!(session.evaluate(Request::GetAttr { target: target.clone(), name: "x".into() }), Ok(Value::Int(5)));
    assert_eq!(session.evaluate(Request::Repr { target: target.clone() }), Ok(Value::Str("<echo.Object object #1>".into())));
    assert_eq!(session.evaluate(Request::DelAttr { target: target.clone(), name: "x".into() }), Ok(Value::None));
    let e = session.evaluate(Request::GetAttr { target, name: "x".into() }).unwrap_err();
    assert_eq!(e.qualified_type(), "builtins.AttributeError");
}

#[test]
fn exceptions_travel_as_data() {
    let evaluator = fake();
    let session = open(&evaluator, 1);
    let echo = module(&*session, "echo");

    let e = call(&*session, &echo, &["fail"], vec![Value::Str("boom".into())]).unwrap_err();
    assert_eq!(e.qualified_type(), "builtins.ValueError");
    assert_eq!(e.message, "boom");
    assert_eq!(e.args, vec![Value::Str("boom".into())]);
    assert!(e.traceback.contains("ValueError: boom"), "{}", e.traceback);

    let e = session.evaluate(Request::GetModule { name: "numpy".into() }).unwrap_err();
    assert_eq!((e.qualified_type().as_str(), e.message.as_str()), ("builtins.ModuleNotFoundError", "No module named 'numpy'"));

    let e = call(&*session, &echo, &[], vec![]).unwrap_err();
    assert_eq!((e.qualified_type().as_str(), e.message.as_str()), ("builtins.TypeError", "'module' object is not callable"));

    let e = call(&*session, &echo, &["nope"], vec![]).unwrap_err();
    assert_eq!((e.qualified_type().as_str(), e.message.as_str()), ("builtins.AttributeError", "module 'echo' has no attribute 'nope'"));

    let e = call(&*session, &echo, &["sleep"], vec![]).unwrap_err();
    assert_eq!((e.qualified_type().as_str(), e.message.as_str()), ("builtins.TypeError", "sleep() missing required argument: 'seconds'"));

    let e = call(&*session, &echo, &["sleep"], vec![Value::Int(-1)]).unwrap_err();
    assert_eq!(e.qualified_type(), "builtins.ValueError");
    assert_eq!(call(&*session, &echo, &["sleep"], vec![Value::Float(0.001)]), Ok(Value::None));

    // The session goes on after every one of them.
    assert_eq!(call(&*session, &echo, &["echo"], vec![Value::Int(1)]), Ok(Value::Tuple(vec![Value::Int(1)])));
}

#[test]
fn sessions_are_isolated_and_know_their_client() {
    let evaluator = fake();
    let a = evaluator.open(&session_info(1, Some("alice"))).expect("open");
    let b = open(&evaluator, 2);
    assert_eq!(a.evaluate(Request::GetModule { name: "whoami".into() }), Ok(Value::Str("alice".into())));
    assert_eq!(b.evaluate(Request::GetModule { name: "whoami".into() }), Ok(Value::None));
    let echo = module(&*a, "echo");
    let e = b.evaluate(Request::Repr { target: Target::object(echo.id) }).unwrap_err();
    assert_eq!(e.qualified_type(), "farcall.ProtocolError");
    assert_eq!(stats(&*a), (1, 1));
    assert_eq!(stats(&*b), (0, 0));
}

#[test]
fn calls_of_one_session_run_concurrently() {
    const THREADS: usize = 8;
    let evaluator = fake();
    let session: Arc<dyn EvalSession> = Arc::from(open(&evaluator, 1));
    let echo = module(&*session, "echo");
    // barrier(8) returns only when 8 calls wait inside the plugin at once:
    // the calls overlap, or this fails with TimeoutError (never hangs).
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (session, echo, start) = (Arc::clone(&session), echo.clone(), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                call(&*session, &echo, &["barrier"], vec![Value::Int(THREADS as i64)])
            })
        })
        .collect();
    let mut indexes: Vec<i64> = handles
        .into_iter()
        .map(|h| match h.join().expect("thread") {
            Ok(Value::Int(i)) => i,
            other => panic!("barrier gave {other:?}"),
        })
        .collect();
    indexes.sort();
    assert_eq!(indexes, (0..THREADS as i64).collect::<Vec<_>>());
}

#[test]
fn concurrent_calls_and_releases_keep_the_table_consistent() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 200;
    let evaluator: Arc<dyn Evaluator> = Arc::new(fake());
    let session: Arc<dyn EvalSession> = Arc::from(open(&*evaluator, 1));
    let echo = module(&*session, "echo");
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (session, echo, evaluator) = (Arc::clone(&session), echo.clone(), Arc::clone(&evaluator));
            std::thread::spawn(move || {
                // Each thread also has a session of its own, used at the same time.
                let own = open(&*evaluator, 100 + t as u64);
                let own_math = module(&*own, "math");
                for i in 0..ROUNDS {
                    let Ok(Value::SenderObject(obj)) = call(&*session, &echo, &["obj"], vec![]) else { panic!("obj") };
                    let back = call(&*session, &echo, &["echo"], vec![Value::Int(i as i64), Value::ReceiverObject(Target::object(obj.id))]);
                    assert_eq!(back, Ok(Value::Tuple(vec![Value::Int(i as i64), Value::SenderObject(obj.clone())])));
                    session.release(&[Release { id: obj.id, count: 2 }]);
                    let n = call(&*own, &own_math, &["pow"], vec![Value::Int(i as i64), Value::Int(2)]);
                    assert_eq!(n, Ok(Value::Float((i * i) as f64)));
                }
                assert_eq!(stats(&*own), (1, 1));
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    // Only the module is left; every instance got its own id.
    assert_eq!(stats(&*session), (1, 1 + (THREADS * ROUNDS) as i64));
}

#[test]
fn the_library_stays_loaded_while_a_session_lives() {
    let evaluator = fake();
    let session = evaluator.open_session(&session_info(1, None)).expect("open");
    drop(evaluator);
    let math = module(&session, "math");
    assert_eq!(call(&session, &math, &["pow"], vec![Value::Int(2), Value::Int(10)]), Ok(Value::Float(1024.0)));
    assert_eq!(session.id(), 1);
    // Loading the same library again while it is loaded is fine.
    let again = PluginEvaluator::load(fake_plugin()).expect("load again");
    assert_eq!(again.info().name, "fake");
}

#[test]
fn copies_slices_and_ellipsis_cross_the_abi_and_builtins_are_refused_clearly() {
    let evaluator = fake();
    let session = open(&evaluator, 1);
    let echo = module(&*session, "echo");
    // The ABI carries frames: the new value kinds cross it unchanged.
    let values = vec![
        Value::List(vec![Value::Int(1), Value::Dict(vec![(Value::Str("k".into()), Value::Set(vec![Value::Int(2)]))])]),
        Value::Slice(Box::new([Value::Int(1), Value::None, Value::Int(-1)])),
        Value::Ellipsis,
    ];
    assert_eq!(call(&*session, &echo, &["echo"], values.clone()), Ok(Value::Tuple(values)));
    // The fake has no BUILTINS table: a clear farcall.ProtocolError, and the session goes on.
    let e = session.evaluate(Request::Builtin { name: "add".into(), args: vec![Value::Int(1), Value::Int(2)] }).unwrap_err();
    assert_eq!(e.qualified_type(), "farcall.ProtocolError");
    assert!(e.message.contains("Builtin") && e.message.contains("add"), "{}", e.message);
    assert_eq!(stats(&*session).0, 1);
}
