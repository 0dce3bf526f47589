// The same requests against the embedded evaluator and a subprocess worker
// of the same interpreter give the same replies: values, references (ids,
// type names, flags, module hints), exceptions with their tracebacks.

// Every reply is recorded by `run`; most are not looked at otherwise.
#![allow(unused_must_use)]

use std::sync::OnceLock;

use farcall_backend_embedded::{EmbeddedEvaluator, BUILD_PYTHON};
use farcall_backend_subprocess::{SubprocessEvaluator, SubprocessOptions};
use farcall_core::{EvalSession, Evaluator, RefDesc, Release, RemoteException, Request, Target, Value};

use crate::{info, mine, text};

fn embedded() -> &'static EmbeddedEvaluator {
    static E: OnceLock<EmbeddedEvaluator> = OnceLock::new();
    E.get_or_init(|| EmbeddedEvaluator::start().expect("the embedded Python starts"))
}

/// A subprocess evaluator running the embedded backend's interpreter.
fn same_python() -> &'static SubprocessEvaluator {
    static E: OnceLock<SubprocessEvaluator> = OnceLock::new();
    E.get_or_init(|| {
        SubprocessEvaluator::start(SubprocessOptions { python: BUILD_PYTHON.into(), prestart: 1, ..Default::default() })
            .expect("the build's Python starts as a worker")
    })
}

type Reply = Result<Value, RemoteException>;

/// Runs `scenario` on a fresh session of each backend and compares every reply.
fn same_replies(scenario: impl Fn(&dyn EvalSession, &mut Vec<Reply>)) {
    let mut replies = Vec::new();
    for evaluator in [embedded() as &dyn Evaluator, same_python()] {
        let s = evaluator.open(&info(1)).unwrap();
        let mut got = Vec::new();
        scenario(&*s, &mut got);
        replies.push(got);
    }
    let (a, b) = (&replies[0], &replies[1]);
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x, y, "reply {i} differs (left: embedded, right: subprocess)");
    }
}

fn id_of(r: &Reply) -> u64 {
    match r {
        Ok(Value::SenderObject(RefDesc { id, .. })) => *id,
        other => panic!("expected a reference, got {other:?}"),
    }
}

fn run(s: &dyn EvalSession, out: &mut Vec<Reply>, request: Request) -> Reply {
    let r = s.evaluate(request);
    out.push(r.clone());
    r
}

fn get_module(s: &dyn EvalSession, out: &mut Vec<Reply>, name: &str) -> u64 {
    id_of(&run(s, out, Request::GetModule { name: name.into() }))
}

fn call(s: &dyn EvalSession, out: &mut Vec<Reply>, root: u64, path: &str, args: Vec<Value>) -> Reply {
    let target = Target { id: root, path: path.split('.').map(str::to_owned).collect() };
    run(s, out, Request::Call { target, args, kwargs: vec![] })
}

#[test]
fn modules_and_their_hints() {
    same_replies(|s, out| {
        for name in ["math", "os", "os.path", "json", "collections", "builtins", "math", "no_such_module", "json.nope"] {
            run(s, out, Request::GetModule { name: name.into() });
        }
        let os = get_module(s, out, "os");
        run(s, out, Request::GetAttr { target: Target::object(os), name: "path".into() });
        run(s, out, Request::GetAttr { target: Target { id: os, path: vec!["path".into()] }, name: "sep".into() });
        run(s, out, Request::GetAttr { target: Target::object(os), name: "no_such_attribute".into() });
        run(s, out, Request::Stats);
    });
}

#[test]
fn values_and_exceptions() {
    same_replies(|s, out| {
        let b = get_module(s, out, "builtins");
        let math = get_module(s, out, "math");
        let operator = get_module(s, out, "operator");
        let json = get_module(s, out, "json");
        let mut nested = Value::Tuple(vec![]);
        for _ in 0..40 {
            nested = Value::Tuple(vec![nested]);
        }
        let values = Value::Tuple(vec![
            Value::None,
            Value::Bool(true),
            Value::Int(i64::MIN),
            Value::Float(-0.0),
            Value::Complex(1.5, -2.0),
            text("héllo"),
            Value::Bytes(vec![0u8; 100_000].into()),
            Value::FrozenSet(vec![Value::Int(1), Value::Int(2)]),
            Value::Tuple(vec![Value::Int(1), Value::Tuple(vec![])]),
        ]);
        call(s, out, b, "tuple", vec![values]);
        call(s, out, b, "tuple", vec![nested]);
        call(s, out, b, "pow", vec![Value::Int(-3), Value::Int(99)]);
        call(s, out, operator, "add", vec![Value::Int(i64::MAX), Value::Int(1)]);
        call(s, out, b, "chr", vec![Value::Int(0xdc80)]);
        call(s, out, b, "frozenset", vec![Value::Tuple(vec![Value::Int(1), mine(math)])]);
        call(s, out, math, "sqrt", vec![Value::Int(-1)]);
        call(s, out, math, "pow", vec![]);
        call(s, out, json, "loads", vec![text("{")]);
        call(s, out, json, "loads", vec![text("[1, 2")]);
        call(s, out, b, "int", vec![text("twelve")]);
        call(s, out, b, "getattr", vec![mine(math), text("nope")]);
        let sys = get_module(s, out, "sys");
        call(s, out, sys, "exit", vec![Value::Int(3)]);
        call(s, out, b, "len", vec![mine(999_999)]);
        call(s, out, b, "len", vec![Value::SenderObject(RefDesc::new(5, "client.thing"))]);
        call(s, out, b, "compile", vec![text("1 +"), text("<test>"), text("eval")]);
        let d = id_of(&call(s, out, b, "dict", vec![]));
        call(s, out, operator, "getitem", vec![mine(d), Value::Tuple(vec![Value::Int(1), Value::Int(2)])]);
        let signal = get_module(s, out, "signal");
        let handler = id_of(&call(s, out, signal, "getsignal", vec![Value::Int(2)]));
        run(s, out, Request::Repr { target: Target::object(handler) });
        run(s, out, Request::Repr { target: Target { id: b, path: vec!["ValueError".into()] } });
        run(s, out, Request::Str { target: Target::object(math) });
        run(s, out, Request::Stats);
    });
}

#[test]
fn references_and_releases() {
    same_replies(|s, out| {
        let b = get_module(s, out, "builtins");
        let list = id_of(&call(s, out, b, "list", vec![text("abc")]));
        call(s, out, b, "tuple", vec![Value::Tuple(vec![mine(list), mine(list), Value::Int(1)])]);
        run(s, out, Request::Call { target: Target { id: list, path: vec!["append".into()] }, args: vec![Value::Int(4)], kwargs: vec![] });
        run(s, out, Request::Repr { target: Target::object(list) });
        run(s, out, Request::Stats);
        s.release(&[Release { id: list, count: 2 }]);
        run(s, out, Request::Stats);
        s.release(&[Release { id: list, count: 1 }]);
        run(s, out, Request::Stats);
        call(s, out, b, "len", vec![mine(list)]);
        let again = id_of(&call(s, out, b, "list", vec![]));
        assert!(again > list, "ids are never reused");
        run(
            s,
            out,
            Request::Call {
                target: Target { id: b, path: vec!["int".into()] },
                args: vec![text("ff")],
                kwargs: vec![("base".into(), Value::Int(16))],
            },
        );
        let types = get_module(s, out, "types");
        let ns = id_of(&call(s, out, types, "SimpleNamespace", vec![]));
        run(s, out, Request::SetAttr { target: Target::object(ns), name: "x".into(), value: Value::Tuple(vec![mine(b)]) });
        run(s, out, Request::GetAttr { target: Target::object(ns), name: "x".into() });
        run(s, out, Request::DelAttr { target: Target::object(ns), name: "x".into() });
        run(s, out, Request::DelAttr { target: Target::object(ns), name: "x".into() });
        run(s, out, Request::Stats);
    });
}

#[test]
fn builtin_requests() {
    fn builtin(s: &dyn EvalSession, out: &mut Vec<Reply>, name: &str, args: Vec<Value>) -> Reply {
        run(s, out, Request::Builtin { name: name.into(), args })
    }
    let slice = |a: Value, b: Value, c: Value| Value::Slice(Box::new([a, b, c]));
    same_replies(|s, out| {
        builtin(s, out, "execute", vec![text("data = [1, {'a': {2}}, (3, [4]), 'x', None, 2**70, 1.5, b'b', frozenset({1})]")]);
        let data = id_of(&builtin(s, out, "eval", vec![text("data")]));
        builtin(s, out, "obtain", vec![mine(data)]);
        builtin(s, out, "deliver", vec![Value::List(vec![Value::Dict(vec![(text("k"), Value::Set(vec![Value::Int(1)]))])])]);
        builtin(s, out, "getitem", vec![mine(data), slice(Value::Int(1), Value::None, Value::Int(2))]);
        builtin(s, out, "getitem", vec![text("hello"), slice(Value::None, Value::None, Value::Int(-1))]);
        builtin(s, out, "eval", vec![text("(..., slice(1, 2), slice(None, None, None))")]);
        builtin(s, out, "iterate", vec![mine(data), Value::Int(4)]);
        builtin(s, out, "iterate", vec![mine(data), Value::Int(40)]);
        builtin(s, out, "iterate", vec![Value::Int(3), Value::Int(4)]);
        for (name, args) in [
            ("add", vec![Value::Int(1), Value::Int(2)]),
            ("add", vec![mine(data), mine(data)]),
            ("iadd", vec![mine(data), Value::Tuple(vec![Value::Int(9)])]),
            ("truediv", vec![Value::Int(1), Value::Int(0)]),
            ("lt", vec![mine(data), Value::Int(1)]),
            ("len", vec![mine(data)]),
            ("hash", vec![mine(data)]),
            ("contains", vec![mine(data), text("x")]),
            ("setitem", vec![mine(data), Value::Int(0), Value::Ellipsis]),
            ("delitem", vec![mine(data), Value::Int(99)]),
            ("dir", vec![Value::Int(1)]),
            ("type", vec![mine(data)]),
            ("format", vec![Value::Float(0.25), text(".0%")]),
            ("round", vec![Value::Float(2.5)]),
            ("divmod", vec![Value::Int(7), Value::Int(-2)]),
            ("obtain", vec![Value::Tuple(vec![mine(data), Value::Int(1)])]),
            ("obtain", vec![Value::Int(5)]),
            ("no_such_builtin", vec![]),
            ("eval", vec![text("undefined_name")]),
            ("execute", vec![text("def (")]),
            ("namespace", vec![]),
            ("stats", vec![]),
            (
                "teleport",
                vec![
                    text("source"),
                    Value::Dict(vec![
                        (text("name"), text("f")),
                        (text("source"), text("def f(x):\n    return x * k\n")),
                        (text("globals"), Value::Dict(vec![(text("k"), Value::Int(3))])),
                        (text("modules"), Value::Dict(vec![])),
                        (text("defaults"), Value::None),
                        (text("kwdefaults"), Value::None),
                        (text("closure"), Value::Dict(vec![])),
                    ]),
                ],
            ),
            ("teleport", vec![text("nope"), Value::None]),
        ] {
            builtin(s, out, name, args);
        }
        builtin(s, out, "obtain", vec![mine(data)]);
        let f = id_of(&builtin(s, out, "eval", vec![text("lambda: [[]] * 2")]));
        run(s, out, Request::Call { target: Target::object(f), args: vec![], kwargs: vec![] });
        run(s, out, Request::Stats);
    });
}
