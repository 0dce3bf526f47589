// Python through a real server and the Rust client, once per backend
// (embedded, subprocess) and transport: values, exceptions, references and
// their release, concurrency, and the interpreter's identity.

use std::process::Command;

use farcall_client::{Client, ClientError, Remote, RemoteObject};
use farcall_tests::{per_case, Backend, Case};

fn func(c: &Client, module: &str, name: &str) -> RemoteObject {
    c.module(module).unwrap().getattr(name).unwrap().extract().unwrap()
}

/// The handshake names the interpreter that evaluates: for the embedded
/// backend the one the build used (not another libpython of the same
/// soname), for the subprocess backend the configured one.
fn the_python_is_the_one_configured(c: Case) {
    let out = Command::new(c.backend.python())
        .args(["-c", "import sys, platform; print(platform.python_version()); print(sys.prefix)"])
        .output()
        .expect("the python runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let (version, prefix) = (lines.next().unwrap(), lines.next().unwrap());
    let server = c.server();
    let client = server.client();
    let info = client.server();
    assert_eq!(info.backend, if c.backend == Backend::Embedded { "embedded" } else { "subprocess" });
    assert_eq!(info.python_version, version);
    assert_eq!(info.python_prefix, prefix);
    // And the server really runs that interpreter.
    let sys_prefix: String = client.module("sys").unwrap().getattr("prefix").unwrap().extract().unwrap();
    assert_eq!(sys_prefix, prefix);
}

fn values_round_trip_exactly(c: Case) {
    let server = c.server();
    let c = server.client();
    let echo = func(&c, "builtins", "tuple");
    let pow = func(&c, "builtins", "pow");
    // 2**200 arrives as a big int and goes back as one.
    let big = pow.call(vec![2.into(), 200.into()]).unwrap();
    let Remote::BigInt(bytes) = &big else { panic!("{big:?}") };
    assert_eq!(bytes.len(), 26);
    let neg = func(&c, "operator", "neg").call(vec![big.clone()]).unwrap();
    let back = func(&c, "operator", "neg").call(vec![neg]).unwrap();
    let eq: bool = func(&c, "operator", "eq").call(vec![back, big]).unwrap().extract().unwrap();
    assert!(eq);
    let t: Vec<Remote> = echo
        .call(vec![Remote::Tuple(vec![
            Remote::Float(f64::NAN),
            Remote::Float(f64::INFINITY),
            Remote::Complex(1.0, -2.0),
            Remote::Bool(true),
            Remote::None,
        ])])
        .unwrap()
        .extract()
        .unwrap();
    assert!(
        matches!(t.as_slice(), [Remote::Float(n), Remote::Float(i), Remote::Complex(a, b), Remote::Bool(true), Remote::None] if n.is_nan() && i.is_infinite() && *a == 1.0 && *b == -2.0)
    );
}

fn ten_megabytes_of_bytes_arrive_intact(c: Case) {
    let server = c.server();
    let c = server.client();
    let urandom = func(&c, "os", "urandom");
    let data: Vec<u8> = urandom.call(vec![10_000_000.into()]).unwrap().extract().unwrap();
    assert_eq!(data.len(), 10_000_000);
    // Send it back and have the server hash it: same digest as locally.
    let len: i64 = func(&c, "builtins", "len").call(vec![Remote::Bytes(data.clone().into())]).unwrap().extract().unwrap();
    assert_eq!(len, 10_000_000);
    let sum: i64 = func(&c, "builtins", "sum").call(vec![Remote::Bytes(data.clone().into())]).unwrap().extract().unwrap();
    assert_eq!(sum, data.iter().map(|&b| b as i64).sum::<i64>());
}

fn remote_exceptions_carry_type_and_traceback(c: Case) {
    let server = c.server();
    let c = server.client();
    let err = func(&c, "math", "sqrt").call(vec![Remote::Int(-1)]).unwrap_err();
    let ClientError::Remote(e) = err else { panic!("{err:?}") };
    assert_eq!(e.qualified_type(), "builtins.ValueError");
    assert_eq!(e.message, "math domain error");
    assert!(
        e.traceback.contains("Traceback (most recent call last)") && e.traceback.contains("ValueError: math domain error"),
        "{}",
        e.traceback
    );
    let err = func(&c, "json", "loads").call(vec!["{".into()]).unwrap_err();
    let ClientError::Remote(e) = err else { panic!("{err:?}") };
    assert_eq!(e.qualified_type(), "json.decoder.JSONDecodeError");
}

fn mutation_is_refused_and_changes_nothing(c: Case) {
    // Allowed by default; refused when the policy says so.
    let options = farcall_server::ServerOptions { allow_setattr: false, ..Default::default() };
    let server = farcall_tests::TestServer::with_options_on(c.transport, c.backend.evaluator(), options, "server");
    let c = server.client();
    let math = c.module("math").unwrap();
    let err = math.setattr("pi", Remote::Int(3)).unwrap_err();
    assert!(matches!(&err, ClientError::Remote(e) if e.qualified_type() == "farcall.PolicyError"), "{err:?}");
    let err = math.delattr("pi").unwrap_err();
    assert!(matches!(&err, ClientError::Remote(e) if e.qualified_type() == "farcall.PolicyError"), "{err:?}");
    let pi: f64 = math.getattr("pi").unwrap().extract().unwrap();
    assert_eq!(pi, std::f64::consts::PI);
}

fn dropped_references_are_released_on_the_server(c: Case) {
    let server = c.server();
    let c = server.client();
    let list = func(&c, "builtins", "list");
    let (before, _) = c.stats().unwrap();
    let held: Vec<Remote> = (0..2000).map(|_| list.call(vec![]).unwrap()).collect();
    let (during, _) = c.stats().unwrap();
    assert!(during >= before + 2000, "{before} -> {during}");
    drop(held);
    c.flush_releases().unwrap();
    let (after, total) = c.stats().unwrap();
    assert_eq!(after, before, "every dropped list was released");
    assert!(total >= 2000);
}

fn a_proxy_passed_back_is_the_servers_own_object(c: Case) {
    let server = c.server();
    let c = server.client();
    let l = func(&c, "builtins", "list").call(vec![Remote::Tuple(vec![1.into(), 2.into(), 3.into()])]).unwrap();
    let n: i64 = func(&c, "builtins", "len").call(vec![l]).unwrap().extract().unwrap();
    assert_eq!(n, 3);
    // Not to another connection.
    let other = server.client();
    let l = func(&c, "builtins", "list").call(vec![]).unwrap();
    let err = func(&other, "builtins", "len").call(vec![l]).unwrap_err();
    assert!(matches!(err, ClientError::Usage(_)), "{err:?}");
}

fn sessions_do_not_share_objects(c: Case) {
    let server = c.server();
    let a = server.client();
    let b = server.client();
    let held = func(&a, "builtins", "object").call(vec![]).unwrap();
    let (a_live, _) = a.stats().unwrap();
    let (b_live, _) = b.stats().unwrap();
    assert!(a_live > b_live, "{a_live} vs {b_live}");
    drop(held);
}

fn one_connection_serves_many_threads_and_slow_calls_do_not_block_fast_ones(c: Case) {
    let server = c.server();
    let c = server.client();
    let sleep = func(&c, "time", "sleep");
    let slow = std::thread::spawn(move || sleep.call(vec![Remote::Float(1.0)]));
    let add = func(&c, "operator", "add");
    let workers: Vec<_> = (0..4i64)
        .map(|t| {
            let add = add.clone();
            std::thread::spawn(move || {
                for i in 0..200i64 {
                    let r: i64 = add.call(vec![t.into(), i.into()]).unwrap().extract().unwrap();
                    assert_eq!(r, t + i);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    // The 800 calls finished while the slow one may still be sleeping; it completes too.
    slow.join().unwrap().unwrap();
}

per_case!(
    the_python_is_the_one_configured,
    values_round_trip_exactly,
    ten_megabytes_of_bytes_arrive_intact,
    remote_exceptions_carry_type_and_traceback,
    mutation_is_refused_and_changes_nothing,
    dropped_references_are_released_on_the_server,
    a_proxy_passed_back_is_the_servers_own_object,
    sessions_do_not_share_objects,
    one_connection_serves_many_threads_and_slow_calls_do_not_block_fast_ones,
);
