// Callbacks: the session under test (the "server") calls objects of a second
// session (the "client", see `support::Pair`) that were passed to it as
// arguments, through `SessionInfo::callbacks`; the client calls back into
// the server the same way (every backend).

use std::sync::atomic::Ordering;

use farcall_core::{Release, Value};

use crate::{call_ref, eval, execute, pair, reference, stats, text, Pair};

/// A session's own object, as an argument for that session.
fn home(v: Result<Value, farcall_core::RemoteException>) -> Value {
    match v.expect("a reply") {
        Value::SenderObject(desc) => crate::mine(desc.id),
        other => other,
    }
}

/// The client's object named `name` in its namespace, as the client sends it.
fn client_object(p: &Pair, name: &str) -> Value {
    let v = eval(&*p.client, name).expect("the client has it");
    assert!(matches!(v, Value::SenderObject(_)), "{v:?}");
    v
}

/// The server's function `name`, defined by `code`.
fn server_function(p: &Pair, code: &str, name: &str) -> u64 {
    execute(&*p.server, code);
    reference(eval(&*p.server, name).unwrap()).id
}

#[test]
fn the_server_calls_a_client_function() {
    let p = pair();
    execute(&*p.client, "calls = []\ndef double(x):\n    calls.append(x)\n    return x * 2\n");
    let use_it = server_function(&p, "def use(f, x):\n    return f(x) + 1\n", "use");
    let double = client_object(&p, "double");
    assert_eq!(call_ref(&*p.server, use_it, vec![double.clone(), Value::Int(20)]).unwrap(), Value::Int(41));
    assert_eq!(crate::builtin(&*p.client, "obtain", vec![home(eval(&*p.client, "calls"))]).unwrap(), Value::List(vec![Value::Int(20)]));
    // Attributes, repr and operators of a client object, from server code.
    execute(
        &*p.client,
        "class Box:\n    def __init__(self):\n        self.items = [1, 2]\n    def __repr__(self):\n        return 'Box!'\nbox = Box()\n",
    );
    let inspect = server_function(
        &p,
        "def inspect(b):\n    b.items.append(3)\n    b.extra = 'set by the server'\n    return (repr(b), len(b.items), b.items[-1], 2 in b.items, list(b.items))\n",
        "inspect",
    );
    let reply = call_ref(&*p.server, inspect, vec![client_object(&p, "box")]).unwrap();
    let Value::Tuple(items) = reply else { panic!("{reply:?}") };
    assert_eq!(&items[..4], &[text("Box!"), Value::Int(3), Value::Int(3), Value::Bool(true)]);
    assert_eq!(eval(&*p.client, "box.extra").unwrap(), text("set by the server"));
    assert!(p.to_client.requests.load(Ordering::SeqCst) >= 6);
}

#[test]
fn nested_callbacks_client_server_client_server() {
    let p = pair();
    // client: cb(g, x) calls the server's g; server: outer(f, x) calls the client's f with its own helper.
    execute(&*p.client, "def cb(g, x):\n    return g(x) * 10\n");
    let outer = server_function(
        &p,
        "def helper(x):\n    return x + 1\ndef outer(f, x):\n    return f(helper, x) + f(lambda y: f(helper, y), x)\n",
        "outer",
    );
    // f(helper, 2) = 30; f(lambda y: f(helper, y), 2) = (f(helper, 2)) * 10 = 300.
    assert_eq!(call_ref(&*p.server, outer, vec![client_object(&p, "cb"), Value::Int(2)]).unwrap(), Value::Int(330));
    assert!(p.to_server.requests.load(Ordering::SeqCst) >= 3, "the client called the server back");
}

#[test]
fn a_callback_from_another_server_thread() {
    let p = pair();
    execute(&*p.client, "import threading\ndef who(x):\n    return x + 1\n");
    let threaded = server_function(
        &p,
        "import threading\ndef threaded(f, n):\n    out = []\n    ts = [threading.Thread(target=lambda i=i: out.append(f(i))) for i in range(n)]\n    \
         for t in ts:\n        t.start()\n    for t in ts:\n        t.join()\n    return sorted(out)\n",
        "threaded",
    );
    let reply = call_ref(&*p.server, threaded, vec![client_object(&p, "who"), Value::Int(4)]).unwrap();
    let copy = crate::builtin(&*p.server, "obtain", vec![home(Ok(reply))]).unwrap();
    assert_eq!(copy, Value::List((1..=4).map(Value::Int).collect()));
}

#[test]
fn a_callback_that_raises() {
    let p = pair();
    execute(&*p.client, "def inner(x):\n    raise ValueError('bad value %d' % x)\ndef bad(x):\n    return inner(x)\n");
    let use_it = server_function(&p, "def use(f, x):\n    return f(x)\n", "use");
    let e = call_ref(&*p.server, use_it, vec![client_object(&p, "bad"), Value::Int(7)]).unwrap_err();
    assert_eq!(e.qualified_type(), "builtins.ValueError", "{e:?}");
    let all = format!("{}\n{}", e.message, e.traceback);
    assert!(all.contains("bad value 7"), "{all}");
    // The client's traceback arrives: its frames are named.
    assert!(all.contains("in inner") && all.contains("in bad"), "{all}");
    // An exception the server catches does not escape.
    let caught =
        server_function(&p, "def caught(f):\n    try:\n        f(1)\n    except ValueError as e:\n        return 'caught'\n", "caught");
    assert_eq!(call_ref(&*p.server, caught, vec![client_object(&p, "bad")]).unwrap(), text("caught"));
    // A type the server does not have arrives as farcall.RemoteError.
    execute(&*p.client, "class Custom(Exception):\n    pass\ndef custom():\n    raise Custom('mine')\n");
    let call0 = server_function(&p, "def call0(f):\n    return f()\n", "call0");
    let e = call_ref(&*p.server, call0, vec![client_object(&p, "custom")]).unwrap_err();
    // Described with the client's type name, raised on the server as a farcall.RemoteError.
    assert_eq!(e.type_name, "Custom", "{e:?}");
    assert!(e.traceback.contains("farcall.RemoteError"), "{e:?}");
    assert!(format!("{}{}", e.message, e.traceback).contains("in custom"), "{e:?}");
}

#[test]
fn client_objects_are_released_when_the_server_drops_them() {
    let p = pair();
    execute(&*p.client, "def f():\n    return 1\n");
    let f = client_object(&p, "f");
    let Value::SenderObject(desc) = &f else { unreachable!() };
    let id = desc.id;
    // Kept by the server: not released.
    let keep = server_function(&p, "kept = []\ndef keep(o):\n    kept.append(o)\n    return o()\n", "keep");
    assert_eq!(call_ref(&*p.server, keep, vec![f.clone()]).unwrap(), Value::Int(1));
    assert_eq!(call_ref(&*p.server, keep, vec![f.clone()]).unwrap(), Value::Int(1));
    // Let any release the backend queues reach the callbacks (the next reply carries it).
    stats(&*p.server);
    assert_eq!(p.to_client.released_count(id), 0, "{:?}", p.to_client.released.lock().unwrap());
    // Dropped: both receptions are given back.
    execute(&*p.server, "kept.clear()");
    stats(&*p.server);
    assert_eq!(p.to_client.released_count(id), 2, "{:?}", p.to_client.released.lock().unwrap());
    // An argument used only during the call is given back after it.
    let once = server_function(&p, "def once(o):\n    return o()\n", "once");
    call_ref(&*p.server, once, vec![f]).unwrap();
    stats(&*p.server);
    assert_eq!(p.to_client.released_count(id), 3);
    assert!(p.to_client.released.lock().unwrap().iter().all(|r: &Release| r.id == id));
}

#[test]
fn server_objects_passed_to_the_client_go_home_as_targets() {
    let p = pair();
    // The server returns what the client's function returns: the server's own object comes back home.
    execute(&*p.client, "def echo(x):\n    return x\n");
    let roundtrip =
        server_function(&p, "token = object()\ndef roundtrip(f):\n    back = f(token)\n    return back is token\n", "roundtrip");
    assert_eq!(call_ref(&*p.server, roundtrip, vec![client_object(&p, "echo")]).unwrap(), Value::Bool(true));
    // A client object returned by the server goes home to the client the same way.
    let identity = server_function(&p, "def identity(o):\n    return o\n", "identity");
    let back = call_ref(&*p.server, identity, vec![client_object(&p, "echo")]).unwrap();
    let Value::ReceiverObject(target) = back else { panic!("expected the client's own object, got {back:?}") };
    let Value::SenderObject(echo) = client_object(&p, "echo") else { unreachable!() };
    assert_eq!(target.id, echo.id);
}

#[test]
fn without_a_client_a_callback_is_an_error() {
    let s = crate::session();
    let s = &*s;
    execute(s, "def use(f):\n    return f()\n");
    let use_it = reference(eval(s, "use").unwrap());
    let mut function = farcall_core::RefDesc::new(3, "client.fn");
    function.flags = farcall_core::flags::CALLABLE;
    let e = call_ref(s, use_it.id, vec![Value::SenderObject(function)]).unwrap_err();
    assert_eq!(e.type_module, "farcall", "{e:?}");
}

#[test]
fn a_callback_from_a_thread_that_outlives_its_call() {
    let p = pair();
    execute(&*p.client, "def square(x):\n    return x * x\n");
    // The thread calls back after `start` returned, while another call (`finish`) is in flight.
    let start = server_function(
        &p,
        "import threading\ngo = threading.Event()\ndone = threading.Event()\nresults = []\n\
         def start(f):\n    def run():\n        go.wait()\n        results.append(f(7))\n        done.set()\n    \
         threading.Thread(target=run, daemon=True).start()\n\
         def finish():\n    go.set()\n    return done.wait(30)\n",
        "start",
    );
    assert_eq!(call_ref(&*p.server, start, vec![client_object(&p, "square")]).unwrap(), Value::None);
    let finish = reference(eval(&*p.server, "finish").unwrap()).id;
    assert_eq!(call_ref(&*p.server, finish, vec![]).unwrap(), Value::Bool(true));
    assert_eq!(eval(&*p.server, "results[0]").unwrap(), Value::Int(49));
}

#[test]
fn many_callbacks_in_a_row() {
    let p = pair();
    execute(&*p.client, "def inc(x):\n    return x + 1\n");
    let loop_it = server_function(&p, "def loop_it(f, n):\n    x = 0\n    for _ in range(n):\n        x = f(x)\n    return x\n", "loop_it");
    assert_eq!(call_ref(&*p.server, loop_it, vec![client_object(&p, "inc"), Value::Int(2000)]).unwrap(), Value::Int(2000));
    assert!(p.to_client.requests.load(Ordering::SeqCst) >= 2000);
}

#[test]
fn a_finalizer_run_by_a_release_does_not_call_the_client() {
    let p = pair();
    execute(&*p.client, "called = []\ndef f():\n    called.append(1)\n");
    let make = server_function(
        &p,
        "class Notifier:\n    def __init__(self, f):\n        self.f = f\n    def __del__(self):\n        self.f()\n\
         def make(f):\n    return Notifier(f)\n",
        "make",
    );
    let notifier = reference(call_ref(&*p.server, make, vec![client_object(&p, "f")]).unwrap());
    // Releases are applied by the thread that reads the client's messages (the
    // server's reader, the worker's reader): the finalizer's callback is refused, not hung.
    p.server.release(&[Release { id: notifier.id, count: 1 }]);
    assert_eq!(eval(&*p.server, "1 + 1").unwrap(), Value::Int(2));
    assert_eq!(eval(&*p.client, "len(called)").unwrap(), Value::Int(0));
    // The Notifier's reference to the client function went with it.
    let Value::SenderObject(f) = client_object(&p, "f") else { unreachable!() };
    stats(&*p.server);
    assert_eq!(p.to_client.released_count(f.id), 1);
}

#[test]
fn a_callback_made_between_calls_reaches_the_client() {
    let p = pair();
    execute(&*p.client, "def square(x):\n    return x * x\n");
    // The server's thread calls back once `go` is set, a moment after the
    // call that sets it returned: no call of the session is in flight then.
    let start = server_function(
        &p,
        "import threading, time\ngo = threading.Event()\nresults = []\n\
         def start(f):\n    def run():\n        go.wait()\n        time.sleep(0.2)\n        results.append(f(9))\n    \
         threading.Thread(target=run, daemon=True).start()\n",
        "start",
    );
    assert_eq!(call_ref(&*p.server, start, vec![client_object(&p, "square")]).unwrap(), Value::None);
    let go_set = reference(eval(&*p.server, "go.set").unwrap()).id;
    call_ref(&*p.server, go_set, vec![]).unwrap();
    assert!(p.to_client.wait_answered(1, std::time::Duration::from_secs(20)), "the callback did not reach the client");
    let results = reference(eval(&*p.server, "results").unwrap()).id;
    // The thread records the reply right after the client answered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while crate::builtin(&*p.server, "len", vec![crate::mine(results)]).unwrap() == Value::Int(0) {
        assert!(std::time::Instant::now() < deadline, "the server's thread did not get the reply");
        std::thread::yield_now();
    }
    assert_eq!(eval(&*p.server, "results[0]").unwrap(), Value::Int(81));
}
