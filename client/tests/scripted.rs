//! The client against a scripted server over an in-memory connection: the
//! server's requests (callbacks) served by a waiting thread, nested calls,
//! releases of the client's objects, timeouts and cancel.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use farcall_client::{Client, ClientError, FnHandler, Options, Remote};
use farcall_core::handshake::{self, HandshakeReply, ServerHello};
use farcall_core::session::{release_frame, reply_frame};
use farcall_core::transport::{memory_pair, MemoryConnection};
use farcall_core::{codec, Connection, Frame, Message, RefDesc, Release, RemoteException, Request, Route, Target, Value};

/// The server end: speaks raw messages.
struct Peer {
    conn: MemoryConnection,
    next_id: u64,
    /// Every release received so far.
    released: Vec<Release>,
}

impl Peer {
    fn recv(&self) -> Message {
        codec::decode(self.conn.recv().expect("the client is connected")).expect("the client sends valid messages")
    }

    /// The next message that is not a release.
    fn recv_skipping_releases(&mut self) -> Message {
        loop {
            match self.recv() {
                Message::Release(r) => self.released.extend(r),
                m => return m,
            }
        }
    }

    fn send(&self, msg: Message) {
        self.conn.send(&[&codec::encode(&msg)]).unwrap();
    }

    fn reply(&self, id: u64, result: Result<Value, RemoteException>) {
        self.conn.send(&[&reply_frame(id, result)]).unwrap();
    }

    /// Sends a request to the client; returns its id.
    fn request(&mut self, op: Request) -> u64 {
        self.next_id += 1;
        self.send(Message::Request { id: self.next_id, op });
        self.next_id
    }

    fn expect_request(&mut self) -> (u64, Request) {
        match self.recv_skipping_releases() {
            Message::Request { id, op } => (id, op),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn expect_reply(&mut self, want: u64) -> Result<Value, RemoteException> {
        match self.recv_skipping_releases() {
            Message::Reply { id, result } if id == want => result,
            other => panic!("expected the reply to {want}, got {other:?}"),
        }
    }
}

/// A client connected to a scripted server running `script` on its own thread.
fn scripted(options: Options, script: impl FnOnce(&mut Peer) + Send + 'static) -> (Client, JoinHandle<()>) {
    let (client_end, server_end) = memory_pair();
    let server = std::thread::spawn(move || {
        let hello = server_end.recv().unwrap();
        handshake::decode_client_hello(&hello).unwrap();
        let accept = HandshakeReply::Accept(ServerHello {
            protocol: handshake::PROTOCOL_VERSION,
            farcall_version: handshake::FARCALL_VERSION.into(),
            backend: "scripted".into(),
            python_version: String::new(),
            python_prefix: String::new(),
            python_executable: String::new(),
            session: 1,
        });
        server_end.send(&[&Frame::from_bytes(Route::Oneway, handshake::encode(&accept).into())]).unwrap();
        let mut peer = Peer { conn: server_end, next_id: 0, released: Vec::new() };
        script(&mut peer);
    });
    let client = Client::over(Box::new(client_end), &options).expect("handshake");
    (client, server)
}

fn target(id: u64) -> Target {
    Target::object(id)
}

fn exported_arg(op: &Request) -> RefDesc {
    match op {
        Request::Call { args, .. } => match args.first() {
            Some(Value::SenderObject(d)) => d.clone(),
            other => panic!("expected a client object as first argument, got {other:?}"),
        },
        other => panic!("expected a call, got {other:?}"),
    }
}

fn doubler(handler: &FnHandler, calls: Arc<AtomicUsize>) -> Remote {
    handler.export("double", move |_, args, _| {
        calls.fetch_add(1, Ordering::SeqCst);
        match args.as_slice() {
            [Remote::Int(i)] => Ok(Remote::Int(2 * i)),
            _ => Err(RemoteException::new("builtins", "TypeError", "double takes one int")),
        }
    })
}

#[test]
fn a_callback_is_served_by_the_waiting_thread_and_released() {
    let (client, server) = scripted(Options::default(), |peer| {
        let (id, op) = peer.expect_request();
        let callback = exported_arg(&op);
        assert_eq!(callback.type_name, "rust.double");
        // The server calls the client's function twice, then releases it.
        for i in [20, 21] {
            let cid = peer.request(Request::Call { target: target(callback.id), args: vec![Value::Int(i)], kwargs: vec![] });
            assert_eq!(peer.expect_reply(cid), Ok(Value::Int(2 * i)));
        }
        let bad = peer.request(Request::Call { target: target(callback.id), args: vec![Value::Str("x".into())], kwargs: vec![] });
        let err = peer.expect_reply(bad).unwrap_err();
        assert_eq!(err.qualified_type(), "builtins.TypeError");
        peer.conn.send(&[&release_frame(vec![Release { id: callback.id, count: 1 }])]).unwrap();
        peer.reply(id, Ok(Value::Int(84)));
    });
    let handler = Arc::new(FnHandler::new());
    client.set_handler(handler.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let f = doubler(&handler, calls.clone());
    assert_eq!(handler.live(), 1);
    let got = client.request(Request::Call { target: target(1), args: vec![to_value(f)], kwargs: vec![] }).unwrap();
    assert!(matches!(got, Remote::Int(84)), "{got:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(handler.live(), 0, "the server's release reached the handler");
    server.join().unwrap();
}

/// Client → server → client → server → client: each side keeps serving the
/// other while it waits.
#[test]
fn nested_callbacks_go_both_ways() {
    let (client, server) = scripted(Options::default(), |peer| {
        let (outer, op) = peer.expect_request();
        let callback = exported_arg(&op);
        let cid = peer.request(Request::Call { target: target(callback.id), args: vec![Value::Int(5)], kwargs: vec![] });
        // While the callback runs, the client asks the server something.
        let (nested, op) = peer.expect_request();
        assert_eq!(op, Request::GetModule { name: "nested".into() });
        peer.reply(nested, Ok(Value::Int(100)));
        assert_eq!(peer.expect_reply(cid), Ok(Value::Int(105)));
        peer.reply(outer, Ok(Value::Str("done".into())));
    });
    let handler = Arc::new(FnHandler::new());
    client.set_handler(handler.clone());
    let f = handler.export("add_nested", |client, args, _| {
        let base: i64 = client
            .request(Request::GetModule { name: "nested".into() })
            .map_err(|e| RemoteException::protocol(e.to_string()))?
            .extract()
            .unwrap();
        match args.as_slice() {
            [Remote::Int(i)] => Ok(Remote::Int(base + i)),
            _ => Err(RemoteException::protocol("bad args")),
        }
    });
    let got: String =
        client.request(Request::Call { target: target(1), args: vec![to_value(f)], kwargs: vec![] }).unwrap().extract().unwrap();
    assert_eq!(got, "done");
    server.join().unwrap();
}

#[test]
fn without_a_handler_the_server_gets_a_protocol_error() {
    let (client, server) = scripted(Options::default(), |peer| {
        let (id, _) = peer.expect_request();
        let cid = peer.request(Request::Repr { target: target(3) });
        let err = peer.expect_reply(cid).unwrap_err();
        assert_eq!(err.qualified_type(), "farcall.ProtocolError");
        assert!(err.message.contains("no handler"), "{}", err.message);
        peer.reply(id, Ok(Value::None));
    });
    client.request(Request::Stats).unwrap();
    server.join().unwrap();
}

#[test]
fn a_timed_out_request_is_cancelled_and_its_late_reply_released() {
    let (client, server) = scripted(Options { call_timeout: Some(Duration::from_millis(100)), ..Default::default() }, |peer| {
        let (slow, op) = peer.expect_request();
        assert_eq!(op, Request::GetModule { name: "slow".into() });
        match peer.recv() {
            Message::Cancel(id) => assert_eq!(id, slow),
            other => panic!("expected a cancel, got {other:?}"),
        }
        // The late reply carries a server object: the client must give it back.
        peer.reply(slow, Ok(Value::SenderObject(RefDesc::new(7, "builtins.object"))));
        let (next, op) = peer.expect_request();
        assert_eq!(op, Request::GetModule { name: "fast".into() });
        peer.reply(next, Ok(Value::Int(1)));
        // Releases go ahead of the next request.
        loop {
            match peer.recv() {
                Message::Release(r) => peer.released.extend(r),
                Message::Request { id, op: Request::Stats } => {
                    peer.reply(id, Ok(Value::Tuple(vec![Value::Int(0), Value::Int(0)])));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(peer.released, vec![Release { id: 7, count: 1 }]);
    });
    let started = std::time::Instant::now();
    match client.request(Request::GetModule { name: "slow".into() }) {
        Err(ClientError::Timeout(t)) => assert_eq!(t, Duration::from_millis(100)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(100));
    // The connection stays usable, with and without a timeout.
    let one: i64 = client.request(Request::GetModule { name: "fast".into() }).unwrap().extract().unwrap();
    assert_eq!(one, 1);
    client.set_call_timeout(None);
    client.flush_releases().unwrap();
    assert!(!client.is_closed());
    server.join().unwrap();
}

/// A per-request timeout overrides the connection's default, and a callback
/// arriving during a timed request is served.
#[test]
fn a_timed_request_serves_callbacks_and_gets_its_reply() {
    let (client, server) = scripted(Options::default(), |peer| {
        let (id, op) = peer.expect_request();
        let callback = exported_arg(&op);
        let cid = peer.request(Request::Call { target: target(callback.id), args: vec![Value::Int(4)], kwargs: vec![] });
        assert_eq!(peer.expect_reply(cid), Ok(Value::Int(8)));
        peer.reply(id, Ok(Value::Bool(true)));
        let (id, _) = peer.expect_request();
        // Never answered in time.
        assert!(matches!(peer.recv(), Message::Cancel(c) if c == id));
    });
    let handler = Arc::new(FnHandler::new());
    client.set_handler(handler.clone());
    let f = doubler(&handler, Arc::new(AtomicUsize::new(0)));
    let op = Request::Call { target: target(1), args: vec![to_value(f)], kwargs: vec![] };
    let ok = client.request_with_timeout(op, Some(Duration::from_secs(30))).unwrap();
    assert!(matches!(ok, Remote::Bool(true)));
    let err = client.request_with_timeout(Request::Stats, Some(Duration::from_millis(50))).unwrap_err();
    assert!(matches!(err, ClientError::Timeout(_)), "{err:?}");
    server.join().unwrap();
}

#[test]
fn copies_slices_and_local_objects_are_received() {
    let (client, server) = scripted(Options::default(), |peer| {
        let (id, op) = peer.expect_request();
        let Request::Builtin { name, args } = op else { panic!("expected a builtin") };
        assert_eq!(name, "deliver");
        assert_eq!(
            args,
            vec![Value::List(vec![
                Value::Dict(vec![(Value::Str("k".into()), Value::Set(vec![Value::Int(1)]))]),
                Value::Slice(Box::new([Value::None, Value::Int(3), Value::None])),
                Value::Ellipsis,
            ])]
        );
        peer.reply(
            id,
            Ok(Value::Tuple(vec![
                Value::List(vec![Value::Int(1)]),
                Value::ReceiverObject(Target { id: 9, path: vec!["attr".into()] }),
                Value::Slice(Box::new([Value::Int(1), Value::None, Value::Int(-1)])),
            ])),
        );
    });
    let value =
        Remote::List(vec![Remote::Dict(vec![("k".into(), Remote::Set(vec![1.into()]))]), Remote::slice((), 3, ()), Remote::Ellipsis]);
    let got: Vec<Remote> = client.deliver(value).unwrap().extract().unwrap();
    assert!(matches!(&got[0], Remote::List(l) if matches!(l.as_slice(), [Remote::Int(1)])));
    assert!(matches!(&got[1], Remote::Local(t) if t.id == 9 && t.path == ["attr"]));
    assert!(matches!(&got[2], Remote::Slice(s) if matches!(**s, [Remote::Int(1), Remote::None, Remote::Int(-1)])));
    // A local object cannot be sent back as such.
    let err = client.builtin("repr", vec![got[1].clone()]).unwrap_err();
    assert!(matches!(err, ClientError::Usage(ref m) if m.contains("Remote::Export")), "{err:?}");
    server.join().unwrap();
}

/// Converts a value the test built for a raw request.
fn to_value(r: Remote) -> Value {
    match r {
        Remote::Export(d) => Value::SenderObject(d),
        other => panic!("not a client object: {other:?}"),
    }
}

/// Many threads, with and without deadlines, each get their own reply while
/// the server answers out of order (the helper reader and the waiting
/// threads hand the reading role over correctly).
#[test]
fn concurrent_timed_and_untimed_requests_get_their_own_replies() {
    const THREADS: u64 = 8;
    const EACH: u64 = 40;
    let (client, server) = scripted(Options::default(), |peer| {
        let mut held: Vec<(u64, String)> = Vec::new();
        let mut done = 0;
        while done < THREADS {
            let (id, op) = peer.expect_request();
            let Request::GetModule { name } = op else { panic!("{op:?}") };
            held.push((id, name));
            // Answer in reverse order, three at a time, or when every thread
            // still at work waits for a held reply.
            if held.len() == 3 || held.len() as u64 == THREADS - done {
                for (id, name) in held.drain(..).rev() {
                    if name.ends_with(&format!("-{}", EACH - 1)) {
                        done += 1;
                    }
                    peer.reply(id, Ok(Value::Str(name)));
                }
            }
        }
    });
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    let name = format!("{t}-{i}");
                    let op = Request::GetModule { name: name.clone() };
                    let got =
                        if (t + i) % 2 == 0 { client.request_with_timeout(op, Some(Duration::from_secs(60))) } else { client.request(op) };
                    assert_eq!(got.unwrap().extract::<String>().unwrap(), name);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    server.join().unwrap();
}

/// The server calls back while no call is in flight: `serve` waits for the
/// request and performs it.
#[test]
fn serve_performs_requests_that_come_between_calls() {
    let (client, server) = scripted(Options::default(), |peer| {
        let cid = peer.request(Request::Call { target: target(1), args: vec![Value::Int(8)], kwargs: vec![] });
        assert_eq!(peer.expect_reply(cid), Ok(Value::Int(16)));
        peer.conn.send(&[&release_frame(vec![Release { id: 1, count: 1 }])]).unwrap();
        let (id, _) = peer.expect_request();
        peer.reply(id, Ok(Value::None));
    });
    let handler = Arc::new(FnHandler::new());
    client.set_handler(handler.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let _twice = doubler(&handler, calls.clone());
    assert_eq!(client.serve(Some(Duration::from_secs(60))).unwrap(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // No request comes: a short wait serves nothing.
    assert_eq!(client.serve(Some(Duration::from_millis(10))).unwrap(), 0);
    client.request(Request::Stats).unwrap();
    assert_eq!(handler.live(), 0, "the release that came meanwhile reached the handler");
    server.join().unwrap();
}
