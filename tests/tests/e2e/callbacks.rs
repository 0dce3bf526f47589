// Callbacks: the server calls objects of the client. A raw client made of
// farcall-core's Session over a TCP connection talks to a real server whose
// test evaluator calls back through `SessionInfo::callbacks`: replies come back
// into the evaluation, nested calls work while the server waits, callbacks
// come from threads the evaluator started, a lost connection fails the waiting
// evaluation promptly, and released client references are sent ahead of the
// next reply. Also the `[policy] allow_setattr` switch, both ways.

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use farcall_client::{Remote, RemoteObject};
use farcall_core::session::{reply_frame, Outcome};
use farcall_core::{
    BackendInfo, Callbacks, Connection, EvalError, EvalSession, Evaluator, Incoming, RefDesc, Release, RemoteException, Request, RequestId,
    Session, SessionInfo, Target, Value,
};
use farcall_server::ServerOptions;
use farcall_tests::{per_case, per_transport, Case, TestServer, Transport};

/// A bound on every wait, so a broken server fails the test instead of hanging it.
const BOUND: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- the evaluator

/// An evaluator whose `Builtin` operations call back into the client:
/// - `echo(*args)` → the args as a tuple (no callback);
/// - `call(ref, *args)` → `ref(*args)` on the client;
/// - `call_from_thread(ref, *args)` → the same, from a thread it starts;
/// - `call_and_report(ref, *args)` → `call`, and any error is also sent on
///   the evaluator's channel (the test reads it after closing the connection);
///   `call_and_report_from_thread` the same from a thread it starts;
/// - `release(id, count, ...)` → gives those client references back.
///
/// SetAttr and DelAttr succeed (returning None) when they get here.
#[derive(Debug)]
struct CallbackEvaluator {
    errors: Mutex<mpsc::Sender<RemoteException>>,
}

struct CallbackSession {
    callbacks: Arc<dyn Callbacks>,
    errors: mpsc::Sender<RemoteException>,
}

impl CallbackEvaluator {
    fn new() -> (Arc<Self>, mpsc::Receiver<RemoteException>) {
        let (tx, rx) = mpsc::channel();
        (Arc::new(CallbackEvaluator { errors: Mutex::new(tx) }), rx)
    }
}

impl Evaluator for CallbackEvaluator {
    fn info(&self) -> BackendInfo {
        BackendInfo { name: "callbacks".into(), ..Default::default() }
    }

    fn open(&self, info: &SessionInfo) -> Result<Box<dyn EvalSession>, EvalError> {
        let errors = self.errors.lock().unwrap().clone();
        Ok(Box::new(CallbackSession { callbacks: info.callbacks.clone(), errors }))
    }
}

/// `ref(*args)` on the client, where `args` is `[ref, *args]`.
fn call_back(callbacks: &dyn Callbacks, mut args: Vec<Value>) -> Outcome {
    if args.is_empty() {
        return Err(RemoteException::protocol("no callable"));
    }
    let Value::SenderObject(f) = args.remove(0) else { return Err(RemoteException::protocol("not a client object")) };
    callbacks.request(Request::Call { target: Target::object(f.id), args, kwargs: vec![] })
}

impl EvalSession for CallbackSession {
    fn evaluate(&self, request: Request) -> Outcome {
        let Request::Builtin { name, args } = request else {
            return match request {
                Request::SetAttr { .. } | Request::DelAttr { .. } => Ok(Value::None),
                other => Err(RemoteException::protocol(format!("{} not supported", other.name()))),
            };
        };
        match name.as_str() {
            "echo" => Ok(Value::Tuple(args)),
            "call" => call_back(&*self.callbacks, args),
            "call_from_thread" => {
                let callbacks = self.callbacks.clone();
                let caller = std::thread::current().id();
                std::thread::spawn(move || {
                    assert_ne!(std::thread::current().id(), caller);
                    call_back(&*callbacks, args)
                })
                .join()
                .expect("the callback thread")
            }
            "call_and_report" | "call_and_report_from_thread" => {
                let outcome = if name == "call_and_report" {
                    call_back(&*self.callbacks, args)
                } else {
                    let callbacks = self.callbacks.clone();
                    std::thread::spawn(move || call_back(&*callbacks, args)).join().expect("the callback thread")
                };
                if let Err(e) = &outcome {
                    let _ = self.errors.send(e.clone());
                }
                outcome
            }
            "release" => {
                let refs: Vec<Release> = args
                    .chunks(2)
                    .map(|pair| match pair {
                        [Value::Int(id), Value::Int(count)] => Release { id: *id as u64, count: *count as u32 },
                        _ => panic!("release takes id, count pairs"),
                    })
                    .collect();
                self.callbacks.release(&refs);
                Ok(Value::None)
            }
            other => Err(RemoteException::protocol(format!("no builtin {other}"))),
        }
    }

    fn release(&self, _refs: &[Release]) {}
}

// ---------------------------------------------------------------- the raw client

/// Client objects the test "exports": their ids as the client would allocate them.
const ADD_ONE: u64 = 1;
const FAIL: u64 = 2;
const RECURSE: u64 = 3;
const ECHO_VIA_SERVER: u64 = 4;
const ECHO_VIA_PYTHON: u64 = 5;

fn client_object(id: u64) -> Value {
    Value::SenderObject(RefDesc { flags: farcall_core::flags::CALLABLE, ..RefDesc::new(id, "builtins.function") })
}

/// A client made of the core session state machine over the server's
/// transport. While it waits for a reply it serves the server's requests with
/// [`serve_callback`].
struct Raw {
    conn: Box<dyn Connection>,
    session: Session,
    /// Callbacks served so far.
    served: usize,
    /// Releases received so far.
    releases: Vec<Release>,
}

impl Raw {
    fn connect(server: &TestServer) -> Raw {
        let conn = server.connection("callbacks test", BOUND);
        Raw { conn, session: Session::new(), served: 0, releases: Vec::new() }
    }

    fn send(&mut self, op: Request) -> RequestId {
        let (id, frame) = self.session.request_owned(op);
        self.conn.send(&[&frame]).expect("send");
        id
    }

    fn next(&mut self) -> Incoming {
        let body = self.conn.recv().expect("a frame within the bound");
        self.session.receive(body).expect("a valid message")
    }

    /// Waits for the reply to `id`, serving the server's requests meanwhile.
    fn wait(&mut self, id: RequestId) -> Outcome {
        loop {
            if let Some(outcome) = self.session.take_reply(id) {
                return outcome;
            }
            match self.next() {
                Incoming::Request { id: rid, op } => {
                    self.served += 1;
                    let outcome = serve_callback(self, op);
                    self.conn.send(&[&reply_frame(rid, outcome)]).expect("send a callback's reply");
                }
                Incoming::Release(refs) => self.releases.extend(refs),
                Incoming::Reply(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn call(&mut self, op: Request) -> Outcome {
        let id = self.send(op);
        self.wait(id)
    }

    fn builtin(&mut self, name: &str, args: Vec<Value>) -> Outcome {
        self.call(Request::Builtin { name: name.into(), args })
    }
}

/// What the client's objects do when the server calls them.
fn serve_callback(raw: &mut Raw, op: Request) -> Outcome {
    let Request::Call { target, args, kwargs } = op else { return Err(RemoteException::protocol("only calls here")) };
    assert!(kwargs.is_empty() && target.path.is_empty());
    match (target.id, args.as_slice()) {
        (ADD_ONE, [Value::Int(n)]) => Ok(Value::Int(n + 1)),
        (FAIL, _) => Err(RemoteException::new("builtins", "ValueError", "the callback failed")),
        // Nested: while the server waits for this reply, call the server,
        // which calls back again, down to 0.
        (RECURSE, [Value::Int(0)]) => Ok(Value::Int(0)),
        (RECURSE, [Value::Int(n)]) => match raw.builtin("call", vec![client_object(RECURSE), Value::Int(n - 1)])? {
            Value::Int(m) => Ok(Value::Int(m + 1)),
            other => Err(RemoteException::protocol(format!("not an int: {other:?}"))),
        },
        // Nested: a plain new request while the server waits.
        (ECHO_VIA_SERVER, [v]) => raw.builtin("echo", vec![v.clone(), Value::Str("via server".into())]),
        // The same with a Python server: `x + 1` evaluated there.
        (ECHO_VIA_PYTHON, [Value::Int(x)]) => raw.builtin("eval", vec![Value::Str(format!("{x} + 1"))]),
        (id, args) => Err(RemoteException::protocol(format!("no client object {id} taking {args:?}"))),
    }
}

fn callback_server(t: Transport) -> (TestServer, mpsc::Receiver<RemoteException>) {
    let (evaluator, errors) = CallbackEvaluator::new();
    (TestServer::start_on(t, evaluator), errors)
}

// ---------------------------------------------------------------- the tests

fn a_callback_reaches_the_client_and_its_reply_returns_into_the_evaluation(t: Transport) {
    let (server, _) = callback_server(t);
    let mut raw = Raw::connect(&server);
    assert_eq!(raw.builtin("call", vec![client_object(ADD_ONE), Value::Int(41)]), Ok(Value::Int(42)));
    assert_eq!(raw.served, 1);
    // An exception raised by the callback comes back into the evaluation (here: its reply).
    let err = raw.builtin("call", vec![client_object(FAIL)]).unwrap_err();
    assert_eq!((err.qualified_type().as_str(), err.message.as_str()), ("builtins.ValueError", "the callback failed"));
    // Many in a row on one connection.
    for i in 0..200 {
        assert_eq!(raw.builtin("call", vec![client_object(ADD_ONE), Value::Int(i)]), Ok(Value::Int(i + 1)));
    }
    assert_eq!(raw.served, 202);
}

fn nested_calls_are_served_while_the_server_waits_for_a_callback(t: Transport) {
    let (server, _) = callback_server(t);
    let mut raw = Raw::connect(&server);
    // client → server → client → (new request) server → client.
    let echoed = raw.builtin("call", vec![client_object(ECHO_VIA_SERVER), Value::Int(7)]);
    assert_eq!(echoed, Ok(Value::Tuple(vec![Value::Int(7), Value::Str("via server".into())])));
    // client → server → client → server → client → ... five levels deep.
    assert_eq!(raw.builtin("call", vec![client_object(RECURSE), Value::Int(5)]), Ok(Value::Int(5)));
    assert_eq!(raw.served, 1 + 6);
}

fn callbacks_of_overlapping_requests_each_get_their_own_reply(t: Transport) {
    let (server, _) = callback_server(t);
    let mut raw = Raw::connect(&server);
    // Eight requests in flight at once, each calling back; replies match by id.
    let ids: Vec<_> = (0..8)
        .map(|i| (i, raw.send(Request::Builtin { name: "call".into(), args: vec![client_object(ADD_ONE), Value::Int(i * 10)] })))
        .collect();
    for (i, id) in ids {
        assert_eq!(raw.wait(id), Ok(Value::Int(i * 10 + 1)));
    }
    assert_eq!(raw.served, 8);
}

fn a_callback_from_a_thread_the_evaluator_started(t: Transport) {
    let (server, _) = callback_server(t);
    let mut raw = Raw::connect(&server);
    assert_eq!(raw.builtin("call_from_thread", vec![client_object(ADD_ONE), Value::Int(1)]), Ok(Value::Int(2)));
    // Nested from that thread too.
    assert_eq!(raw.builtin("call_from_thread", vec![client_object(RECURSE), Value::Int(3)]), Ok(Value::Int(3)));
}

fn a_lost_connection_fails_the_waiting_callback_and_the_server_serves_others(t: Transport) {
    let (server, errors) = callback_server(t);
    let mut other = Raw::connect(&server);
    let mut raw = Raw::connect(&server);
    // Three evaluations wait for callbacks at once (one from a thread of its own).
    for name in ["call_and_report", "call_and_report", "call_and_report_from_thread"] {
        raw.send(Request::Builtin { name: name.into(), args: vec![client_object(ADD_ONE), Value::Int(1)] });
    }
    // The callbacks arrive; instead of answering, the client goes away.
    for _ in 0..3 {
        let Incoming::Request { op: Request::Call { .. }, .. } = raw.next() else { panic!("expected a callback request") };
    }
    raw.conn.shutdown();
    drop(raw);
    for _ in 0..3 {
        let err = errors.recv_timeout(BOUND).expect("every waiting evaluation fails within the bound");
        assert_eq!(err.qualified_type(), "farcall.ConnectionLost", "{err}");
    }
    // The other client is still served, callbacks included.
    assert_eq!(other.builtin("call", vec![client_object(ADD_ONE), Value::Int(9)]), Ok(Value::Int(10)));
    let mut late = Raw::connect(&server);
    assert_eq!(late.builtin("echo", vec![Value::Int(1)]), Ok(Value::Tuple(vec![Value::Int(1)])));
}

fn released_client_references_arrive_before_the_next_reply(t: Transport) {
    let (server, _) = callback_server(t);
    let mut raw = Raw::connect(&server);
    let id = raw.send(Request::Builtin { name: "release".into(), args: vec![Value::Int(7), Value::Int(2), Value::Int(9), Value::Int(1)] });
    assert_eq!(raw.next(), Incoming::Release(vec![Release { id: 7, count: 2 }, Release { id: 9, count: 1 }]));
    assert_eq!(raw.next(), Incoming::Reply(id));
    assert_eq!(raw.session.take_reply(id), Some(Ok(Value::None)));
    // Nothing is queued any more: the next reply comes alone.
    let id = raw.send(Request::Builtin { name: "echo".into(), args: vec![] });
    assert_eq!(raw.next(), Incoming::Reply(id));
}

per_transport!(
    a_callback_reaches_the_client_and_its_reply_returns_into_the_evaluation,
    nested_calls_are_served_while_the_server_waits_for_a_callback,
    callbacks_of_overlapping_requests_each_get_their_own_reply,
    a_callback_from_a_thread_the_evaluator_started,
    a_lost_connection_fails_the_waiting_callback_and_the_server_serves_others,
    released_client_references_arrive_before_the_next_reply,
);

// ---------------------------------------------------------------- policy

fn set_and_del(raw: &mut Raw) -> (Outcome, Outcome) {
    let target = Target::object(1);
    let set = raw.call(Request::SetAttr { target: target.clone(), name: "x".into(), value: Value::Int(1) });
    let del = raw.call(Request::DelAttr { target, name: "x".into() });
    (set, del)
}

#[test]
fn setattr_and_delattr_are_allowed_by_default() {
    assert!(ServerOptions::default().allow_setattr);
    let (server, _) = callback_server(Transport::Tcp);
    let mut raw = Raw::connect(&server);
    assert_eq!(set_and_del(&mut raw), (Ok(Value::None), Ok(Value::None)));
}

#[test]
fn allow_setattr_false_refuses_setattr_and_delattr_with_a_policy_error() {
    let (evaluator, _) = CallbackEvaluator::new();
    let server = TestServer::with_options(evaluator, ServerOptions { allow_setattr: false, ..Default::default() });
    let mut raw = Raw::connect(&server);
    let (set, del) = set_and_del(&mut raw);
    for (outcome, what) in [(set, "assignment"), (del, "deletion")] {
        let err = outcome.unwrap_err();
        assert_eq!(err.qualified_type(), "farcall.PolicyError");
        assert!(err.message.contains(what) && err.message.contains("allow_setattr"), "{}", err.message);
    }
    // The connection goes on.
    assert_eq!(raw.builtin("echo", vec![]), Ok(Value::Tuple(vec![])));
}

/// With the real Python backends: attributes of a server object can be set
/// and deleted through a proxy by default.
fn setattr_works_by_default_on_python(c: Case) {
    let server = c.server();
    let client = server.client();
    let ctor: RemoteObject = client.module("types").unwrap().getattr("SimpleNamespace").unwrap().extract().unwrap();
    let ns: RemoteObject = ctor.call(vec![]).unwrap().extract().unwrap();
    ns.setattr("answer", Remote::Int(42)).unwrap();
    let answer: i64 = ns.getattr("answer").unwrap().extract().unwrap();
    assert_eq!(answer, 42);
    ns.delattr("answer").unwrap();
    assert!(ns.getattr("answer").is_err());
}

// ---------------------------------------------------------------- real Python

/// Defines Python functions in the session's namespace and returns a reference to `name`.
fn python_function(raw: &mut Raw, code: &str, name: &str) -> Target {
    raw.builtin("execute", vec![Value::Str(code.into())]).expect("the code runs");
    match raw.builtin("eval", vec![Value::Str(name.into())]).expect("the name is defined") {
        Value::SenderObject(d) => Target::object(d.id),
        other => panic!("a function travels by reference, got {other:?}"),
    }
}

fn call(raw: &mut Raw, target: &Target, args: Vec<Value>) -> Outcome {
    raw.call(Request::Call { target: target.clone(), args, kwargs: vec![] })
}

/// With the Python backends: Python code calls a client object (a callback),
/// from the serving thread and from a thread it starts, nested calls
/// included, and the server gives the client's reference back.
fn python_calls_client_objects(c: Case) {
    let server = TestServer::start_on(c.transport, c.backend.evaluator());
    let mut raw = Raw::connect(&server);
    let code = "import threading\n\
                def apply(f, x):\n    return f(x) * 10\n\
                def apply_in_thread(f, x):\n    out = []\n    t = threading.Thread(target=lambda: out.append(f(x)))\n    t.start()\n    t.join()\n    return out[0]\n";
    let apply = python_function(&mut raw, code, "apply");
    let apply_in_thread = python_function(&mut raw, code, "apply_in_thread");
    assert_eq!(call(&mut raw, &apply, vec![client_object(ADD_ONE), Value::Int(4)]), Ok(Value::Int(50)));
    assert_eq!(call(&mut raw, &apply_in_thread, vec![client_object(ADD_ONE), Value::Int(6)]), Ok(Value::Int(7)));
    // The callback's exception is raised in Python as the builtin type.
    let err = call(&mut raw, &apply, vec![client_object(FAIL), Value::Int(0)]).unwrap_err();
    assert_eq!(err.qualified_type(), "builtins.ValueError", "{err}");
    assert!(err.message.contains("the callback failed"), "{err}");
    // Nested: while Python waits for the callback, the client calls the server.
    let got = call(&mut raw, &apply, vec![client_object(ECHO_VIA_PYTHON), Value::Int(2)]);
    assert_eq!(got, Ok(Value::Int(30)));
    assert_eq!(raw.served, 4);
    // Every client reference the server received was given back (the
    // releases travel ahead of a reply; one more round trip flushes them all).
    raw.builtin("eval", vec![Value::Str("None".into())]).unwrap();
    let mut given_back: Vec<_> = raw.releases.iter().map(|r| (r.id, r.count)).collect();
    given_back.sort();
    let total = |id| given_back.iter().filter(|(i, _)| *i == id).map(|(_, n)| *n).sum::<u32>();
    assert_eq!((total(ADD_ONE), total(FAIL), total(ECHO_VIA_PYTHON)), (2, 1, 1), "{given_back:?}");
}

per_case!(setattr_works_by_default_on_python, python_calls_client_objects);
