// The Rust client's convenience API and callbacks against a real server,
// once per backend and transport: builtins, eval/execute/namespace, copies
// (obtain, deliver), batched iteration, teleport of source, callbacks into
// Rust closures (nested too), and per-request timeouts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use farcall_client::{Client, ClientError, FnHandler, Remote, RemoteObject};
use farcall_core::RemoteException;
use farcall_tests::{per_case, Backend, Case, TestServer, Transport};

/// A client of `server` whose callbacks a fresh [`FnHandler`] serves.
fn handled_client(server: &TestServer) -> (Client, Arc<FnHandler>) {
    let client = server.client();
    let handler = Arc::new(FnHandler::new());
    client.set_handler(handler.clone());
    (client, handler)
}

fn int(r: Remote) -> i64 {
    r.extract().unwrap_or_else(|e| panic!("expected an int: {e}"))
}

fn eval_execute_and_the_namespace(c: Case) {
    let server = c.server();
    let client = server.client();
    client.execute("import math\nx = 6\ndef triple(v):\n    return 3 * v\n").unwrap();
    assert_eq!(int(client.eval("x * 7").unwrap()), 42);
    assert_eq!(int(client.eval("triple(5)").unwrap()), 15);
    let ns = client.namespace().unwrap();
    assert_eq!(int(ns.getitem("x").unwrap()), 6);
    assert!(ns.contains("triple").unwrap());
    // Another connection has its own namespace.
    let other = server.client();
    match other.eval("x") {
        Err(ClientError::Remote(e)) => assert_eq!(e.qualified_type(), "builtins.NameError"),
        r => panic!("expected a NameError, got {r:?}"),
    }
    let builtins = client.builtins().unwrap();
    let abs: RemoteObject = builtins.getattr("abs").unwrap().extract().unwrap();
    assert_eq!(int(abs.call(vec![(-3).into()]).unwrap()), 3);
}

fn builtins_operators_items_and_len(c: Case) {
    let server = c.server();
    let client = server.client();
    let list: RemoteObject = client.eval("[10, 20, 30]").unwrap().extract().unwrap();
    assert_eq!(list.len().unwrap(), 3);
    assert!(!list.is_empty().unwrap());
    assert_eq!(int(list.getitem(-1).unwrap()), 30);
    list.setitem(0, 11).unwrap();
    assert_eq!(int(list.getitem(0).unwrap()), 11);
    // A slice travels by value; the result is a new list on the server.
    let tail: RemoteObject = list.getitem(Remote::slice(1, (), ())).unwrap().extract().unwrap();
    assert_eq!(tail.len().unwrap(), 2);
    assert_eq!(int(client.builtin("add", vec![40.into(), 2.into()]).unwrap()), 42);
    let doubled: RemoteObject = list.op("mul", vec![2.into()]).unwrap().extract().unwrap();
    assert_eq!(doubled.len().unwrap(), 6);
    assert!(list.contains(20).unwrap() && !list.contains(99).unwrap());
    match client.builtin("no_such_builtin", vec![]) {
        Err(ClientError::Remote(e)) => assert_eq!(e.qualified_type(), "farcall.ProtocolError"),
        r => panic!("expected a ProtocolError, got {r:?}"),
    }
}

fn obtain_copies_and_deliver_makes_objects(c: Case) {
    let server = c.server();
    let client = server.client();
    let nested: RemoteObject = client.eval("[1, {'k': {2}, 'e': None}, (3, [4.5]), 'end']").unwrap().extract().unwrap();
    let copy: Vec<Remote> = client.obtain(&nested).unwrap().extract().unwrap();
    assert_eq!(copy.len(), 4);
    assert!(matches!(copy[0], Remote::Int(1)));
    let Remote::Dict(pairs) = &copy[1] else { panic!("{:?}", copy[1]) };
    assert!(matches!(&pairs[0], (Remote::Str(k), Remote::Set(s)) if k == "k" && matches!(s.as_slice(), [Remote::Int(2)])));
    assert!(matches!(&pairs[1], (Remote::Str(k), Remote::None) if k == "e"));
    assert!(
        matches!(&copy[2], Remote::Tuple(t) if matches!(t.as_slice(), [Remote::Int(3), Remote::List(l)] if matches!(l.as_slice(), [Remote::Float(f)] if *f == 4.5)))
    );
    assert!(matches!(&copy[3], Remote::Str(s) if s == "end"));
    // Something that cannot be copied is named with where it sits.
    let odd: RemoteObject = client.eval("[1, {'k': object()}]").unwrap().extract().unwrap();
    match client.obtain(&odd) {
        Err(ClientError::Remote(e)) => {
            assert_eq!(e.qualified_type(), "builtins.TypeError");
            assert!(e.message.contains("object") && e.message.contains("[1]['k']"), "{}", e.message);
        }
        r => panic!("expected a TypeError, got {r:?}"),
    }
    // deliver: a list copy becomes a new, mutable list on the server.
    let delivered: RemoteObject =
        client.deliver(Remote::List(vec![1.into(), Remote::Dict(vec![("a".into(), 2.into())])])).unwrap().extract().unwrap();
    assert_eq!(delivered.type_name(), "builtins.list");
    let append: RemoteObject = delivered.getattr("append").unwrap().extract().unwrap();
    append.call(vec![3.into()]).unwrap();
    assert_eq!(delivered.len().unwrap(), 3);
    assert_eq!(int(delivered.getitem(1).unwrap().extract::<RemoteObject>().unwrap().getitem("a").unwrap()), 2);
}

fn iteration_is_batched_and_releases_its_iterators(c: Case) {
    let server = c.server();
    let client = server.client();
    let (live_before, _) = client.stats().unwrap();
    let range: RemoteObject = client.eval("range(10000)").unwrap().extract().unwrap();
    let started = Instant::now();
    let mut sum = 0;
    let mut count = 0;
    for item in range.iter() {
        sum += int(item.unwrap());
        count += 1;
    }
    assert_eq!((count, sum), (10000, (0..10000).sum::<i64>()));
    // 64 + 256 + 1024 + 4096 + 4096 + ... : a handful of round trips, not 10 000.
    assert!(started.elapsed() < Duration::from_secs(20));
    // An empty iterable, a generator, and an error while iterating.
    let empty: RemoteObject = client.eval("[]").unwrap().extract().unwrap();
    assert_eq!(empty.iter().count(), 0);
    client.execute("def gen():\n    yield 1\n    yield 2\n    raise ValueError('stop here')\n").unwrap();
    let gen: RemoteObject = client.eval("gen()").unwrap().extract().unwrap();
    let items: Vec<_> = gen.iter().collect();
    assert_eq!(items.len(), 1, "the error drops the items of its batch and ends the iteration");
    assert!(matches!(&items[0], Err(ClientError::Remote(e)) if e.qualified_type() == "builtins.ValueError"));
    drop((range, empty, gen));
    client.flush_releases().unwrap();
    let (live_after, _) = client.stats().unwrap();
    assert_eq!(live_after, live_before, "the server's iterators were released");
}

fn teleported_source_runs_on_the_server(c: Case) {
    let server = c.server();
    let client = server.client();
    let source = "def facts(n):\n    import os\n    def fact(k):\n        return 1 if k <= 1 else k * fact(k - 1)\n    return (os.getpid(), fact(n))\n";
    let facts = client.teleport_source(source, "facts").unwrap();
    let got: Vec<Remote> = facts.call(vec![10.into()]).unwrap().extract().unwrap();
    assert_eq!(int(got[1].clone()), 3628800);
    let server_pid = int(client.module("os").unwrap().getattr("getpid").unwrap().extract::<RemoteObject>().unwrap().call(vec![]).unwrap());
    assert_eq!(int(got[0].clone()), server_pid, "it ran in the server's interpreter");
    let square = client.teleport_source("square = lambda x: x * x", "<lambda>").unwrap();
    assert_eq!(int(square.call(vec![12.into()]).unwrap()), 144);
    match client.teleport_source("def broken(:\n", "broken") {
        Err(ClientError::Remote(e)) => assert_eq!(e.qualified_type(), "farcall.TeleportError"),
        r => panic!("expected a TeleportError, got {r:?}"),
    }
}

fn calls(h: &FnHandler, counter: Arc<AtomicUsize>) -> Remote {
    h.export("twice", move |_, args, _| {
        counter.fetch_add(1, Ordering::SeqCst);
        match args.as_slice() {
            [Remote::Int(i)] => Ok(Remote::Int(2 * i)),
            _ => Err(RemoteException::new("builtins", "TypeError", "twice takes one int")),
        }
    })
}

fn the_server_calls_back_into_rust(c: Case) {
    let server = c.server();
    let (client, handler) = handled_client(&server);
    let counter = Arc::new(AtomicUsize::new(0));
    let twice = calls(&handler, counter.clone());
    client.execute("def apply_all(f, items):\n    return [f(i) for i in items]\n").unwrap();
    let apply_all: RemoteObject = client.eval("apply_all").unwrap().extract().unwrap();
    let result: RemoteObject = apply_all.call(vec![twice, Remote::Tuple(vec![1.into(), 2.into(), 3.into()])]).unwrap().extract().unwrap();
    let copy: Vec<Remote> = result.obtain().unwrap().extract().unwrap();
    assert_eq!(copy.into_iter().map(int).collect::<Vec<_>>(), vec![2, 4, 6]);
    assert_eq!(counter.load(Ordering::SeqCst), 3);
    // The server dropped its proxy: the release reaches the handler ahead of
    // the next reply.
    client.flush_releases().unwrap();
    assert_eq!(handler.live(), 0);
    // An error raised by the callback is raised on the server, as its type.
    let fresh = calls(&handler, counter.clone());
    match apply_all.call(vec![fresh, Remote::Tuple(vec!["x".into()])]) {
        Err(ClientError::Remote(e)) => assert_eq!(e.qualified_type(), "builtins.TypeError", "{e}"),
        r => panic!("expected a TypeError, got {r:?}"),
    }
    client.flush_releases().unwrap();
}

fn nested_callbacks_go_both_ways(c: Case) {
    let server = c.server();
    let (client, handler) = handled_client(&server);
    client.execute("def ping(f, n):\n    return ['server', n] + (list(f(n - 1)) if n > 0 else [])\n").unwrap();
    let ping: RemoteObject = client.eval("ping").unwrap().extract().unwrap();
    let me: Arc<std::sync::Mutex<Option<u64>>> = Arc::default();
    let me2 = me.clone();
    let h2 = handler.clone();
    let pong = handler.export("pong", move |client: &Client, args, _| {
        let n = match args.as_slice() {
            [Remote::Int(n)] => *n,
            _ => return Err(RemoteException::protocol("pong(n)")),
        };
        let mut out = vec![Remote::Str("client".into()), Remote::Int(n)];
        if n > 0 {
            let id = me2.lock().unwrap().expect("pong's id");
            let again = h2.resend(id).ok_or_else(|| RemoteException::protocol("pong released"))?;
            let ping: RemoteObject = client.eval("ping").map_err(|e| RemoteException::protocol(e.to_string()))?.extract().unwrap();
            let rest: RemoteObject =
                ping.call(vec![again, Remote::Int(n - 1)]).map_err(|e| RemoteException::protocol(e.to_string()))?.extract().unwrap();
            let rest: Vec<Remote> = rest.obtain().map_err(|e| RemoteException::protocol(e.to_string()))?.extract().unwrap();
            out.extend(rest);
        }
        Ok(Remote::Tuple(out))
    });
    let Remote::Export(desc) = &pong else { unreachable!() };
    *me.lock().unwrap() = Some(desc.id);
    let result: RemoteObject = ping.call(vec![pong, 4.into()]).unwrap().extract().unwrap();
    let got: Vec<Remote> = result.obtain().unwrap().extract().unwrap();
    let text: Vec<String> = got
        .into_iter()
        .map(|r| match r {
            Remote::Str(s) => s,
            Remote::Int(i) => i.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(text, ["server", "4", "client", "3", "server", "2", "client", "1", "server", "0"]);
    client.flush_releases().unwrap();
}

fn the_server_calls_back_between_calls(c: Case) {
    let server = c.server();
    let (client, handler) = handled_client(&server);
    let counter = Arc::new(AtomicUsize::new(0));
    let twice = calls(&handler, counter.clone());
    client
        .execute(
            "import threading\nRESULTS = []\ngate = threading.Event()\ndef later(f, x):\n    \
             threading.Thread(target=lambda: gate.wait(60) and RESULTS.append(f(x))).start()\n",
        )
        .unwrap();
    let later: RemoteObject = client.eval("later").unwrap().extract().unwrap();
    later.call(vec![twice, 21.into()]).unwrap();
    // The call has returned; the server's thread calls back once the gate is
    // open: while the request opening it waits for its reply, or after, when
    // only `serve` reads the connection.
    client.execute("gate.set()").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the server's thread did not call back within 30 s");
        client.serve(Some(Duration::from_secs(30))).unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), 1);
    let results: RemoteObject = client.eval("RESULTS").unwrap().extract().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while results.len().unwrap() == 0 {
        assert!(Instant::now() < deadline, "the server's thread did not record the result");
        std::thread::yield_now();
    }
    assert_eq!(int(results.getitem(0).unwrap()), 42);
}

fn a_timed_out_call_leaves_the_connection_usable(c: Case) {
    let server = c.server();
    let client = server.client();
    client.execute("import threading, time\ngate = threading.Event()\ndef slow():\n    gate.wait(60)\n    return object()\n").unwrap();
    let slow: RemoteObject = client.eval("slow").unwrap().extract().unwrap();
    let sleep: RemoteObject = client.module("time").unwrap().getattr("sleep").unwrap().extract().unwrap();
    client.flush_releases().unwrap();
    let (live_before, _) = client.stats().unwrap();
    let started = Instant::now();
    match slow.call_with_timeout(vec![], vec![], Some(Duration::from_millis(100))) {
        Err(ClientError::Timeout(t)) => assert_eq!(t, Duration::from_millis(100)),
        r => panic!("expected a timeout, got {r:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "the timeout did not wait for the reply");
    // Usable at once, while the late reply is still to come; and the default
    // per-connection timeout applies to every request.
    assert_eq!(int(client.eval("1 + 1").unwrap()), 2);
    client.set_call_timeout(Some(Duration::from_millis(100)));
    assert!(matches!(client.eval("time.sleep(0.5)"), Err(ClientError::Timeout(_))));
    client.set_call_timeout(None);
    // A call whose timeout is met works as usual.
    let ok = sleep.call_with_timeout(vec![Remote::Float(0.01)], vec![], Some(Duration::from_secs(30))).unwrap();
    assert!(matches!(ok, Remote::None));
    // Let `slow` return: its late reply carries an object, which the client
    // gives back without anyone taking the reply.
    client.eval("gate.set()").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        client.flush_releases().unwrap();
        let (live, _) = client.stats().unwrap();
        if live == live_before {
            break;
        }
        assert!(Instant::now() < deadline, "the late reply's object is still held ({live} live, {live_before} before)");
        std::thread::yield_now();
    }
    assert!(!client.is_closed());
}

per_case!(
    eval_execute_and_the_namespace,
    builtins_operators_items_and_len,
    obtain_copies_and_deliver_makes_objects,
    iteration_is_batched_and_releases_its_iterators,
    teleported_source_runs_on_the_server,
    the_server_calls_back_into_rust,
    nested_callbacks_go_both_ways,
    a_timed_out_call_leaves_the_connection_usable,
);

/// A callback invoked by a server thread after the call returned.
mod between_calls {
    use super::*;

    #[test]
    fn embedded_tcp() {
        the_server_calls_back_between_calls(Case { transport: Transport::Tcp, backend: Backend::Embedded });
    }

    #[test]
    fn embedded_quic() {
        the_server_calls_back_between_calls(Case { transport: Transport::Quic, backend: Backend::Embedded });
    }

    #[test]
    fn subprocess_tcp() {
        the_server_calls_back_between_calls(Case { transport: Transport::Tcp, backend: Backend::Subprocess });
    }
}
