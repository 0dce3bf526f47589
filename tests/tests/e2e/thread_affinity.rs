// Thread affinity: the requests of one connection that do not overlap in time
// run on one OS thread (the connection's home thread), so thread-affine
// libraries keep working across a session's calls; requests that overlap a
// busy home thread run elsewhere; afterwards the sequential ones come back to
// the home thread; a nested request made while the home thread waits for a
// callback runs on the home thread. A test evaluator answers every request
// with the id of the thread that performed it.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

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

/// An evaluator whose `Builtin` operations each return the performing
/// thread's id (as a string):
/// - `tid()` → just that; `tid(ms)` after keeping the thread busy for `ms`
///   milliseconds (long enough for the standby thread to take over reading);
/// - `block()` → waits until `unblock` is called on the session (at most
///   [`BOUND`], then fails), then the id;
/// - `unblock()` → lets `block` return, then the id;
/// - `call(ref)` → calls the client object `ref()` and returns
///   `(id, what the client returned)`; `call(ref, ms)` keeps the thread busy
///   for `ms` milliseconds first.
#[derive(Debug)]
struct ThreadEvaluator;

struct ThreadSession {
    callbacks: Arc<dyn Callbacks>,
    gate: Mutex<bool>,
    opened: Condvar,
}

impl Evaluator for ThreadEvaluator {
    fn info(&self) -> BackendInfo {
        BackendInfo { name: "threads".into(), ..Default::default() }
    }

    fn open(&self, info: &SessionInfo) -> Result<Box<dyn EvalSession>, EvalError> {
        Ok(Box::new(ThreadSession { callbacks: info.callbacks.clone(), gate: Mutex::new(false), opened: Condvar::new() }))
    }
}

/// Keeps this thread busy (not sleeping: a thread that computes) for the
/// milliseconds `args` may hold.
fn busy(args: &[Value]) {
    if let Some(Value::Int(ms)) = args.first() {
        let until = Instant::now() + Duration::from_millis(*ms as u64);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }
}

fn thread_id() -> Value {
    Value::Str(format!("{:?}", std::thread::current().id()))
}

impl EvalSession for ThreadSession {
    fn evaluate(&self, request: Request) -> Outcome {
        let Request::Builtin { name, mut args } = request else { return Err(RemoteException::protocol("only builtins here")) };
        match name.as_str() {
            "tid" => {
                busy(&args);
                Ok(thread_id())
            }
            "block" => {
                let deadline = Instant::now() + BOUND;
                let mut open = self.gate.lock().unwrap();
                while !*open {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(RemoteException::new("builtins", "TimeoutError", "nobody called unblock"));
                    }
                    open = self.opened.wait_timeout(open, left).unwrap().0;
                }
                *open = false;
                Ok(thread_id())
            }
            "unblock" => {
                *self.gate.lock().unwrap() = true;
                self.opened.notify_all();
                Ok(thread_id())
            }
            "call" => {
                busy(args.get(1..).unwrap_or_default());
                let Some(Value::SenderObject(f)) = args.drain(..).next() else {
                    return Err(RemoteException::protocol("call takes a client object"));
                };
                let here = thread_id();
                let got = self.callbacks.request(Request::Call { target: Target::object(f.id), args: vec![], kwargs: vec![] })?;
                Ok(Value::Tuple(vec![here, got]))
            }
            other => Err(RemoteException::protocol(format!("no builtin {other}"))),
        }
    }

    fn release(&self, _refs: &[Release]) {}
}

// ---------------------------------------------------------------- the raw client

/// The client object that, when the server calls it, asks the server for
/// `tid()` (a nested request) and returns that.
const NESTED_TID: u64 = 1;

/// A client made of the core session state machine, so that requests can
/// be pipelined (sent before the replies of earlier ones arrive).
struct Raw {
    conn: Box<dyn Connection>,
    session: Session,
}

impl Raw {
    fn connect(server: &TestServer) -> Raw {
        let conn = server.connection("thread affinity test", BOUND);
        Raw { conn, session: Session::new() }
    }

    fn send(&mut self, name: &str, args: Vec<Value>) -> RequestId {
        let (id, frame) = self.session.request_owned(Request::Builtin { name: name.into(), args });
        self.conn.send(&[&frame]).expect("send");
        id
    }

    /// Waits for the reply to `id`, serving the server's requests meanwhile.
    fn wait(&mut self, id: RequestId) -> Value {
        loop {
            if let Some(outcome) = self.session.take_reply(id) {
                return outcome.expect("the request succeeds");
            }
            let body = self.conn.recv().expect("a frame within the bound");
            match self.session.receive(body).expect("a valid message") {
                Incoming::Request { id: rid, op: Request::Call { target, .. } } => {
                    assert_eq!(target.id, NESTED_TID);
                    let nested = self.send("tid", vec![]);
                    let outcome = Ok(self.wait(nested));
                    self.conn.send(&[&reply_frame(rid, outcome)]).expect("send a callback's reply");
                }
                Incoming::Reply(_) | Incoming::Release(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn call(&mut self, name: &str, args: Vec<Value>) -> Value {
        let id = self.send(name, args);
        self.wait(id)
    }

    /// `count` sequential `tid()` requests, each sent once the previous reply came.
    fn sequential_tids(&mut self, count: usize) -> Vec<Value> {
        (0..count).map(|_| self.call("tid", vec![])).collect()
    }

    /// `block()` and `unblock()` sent at once: `unblock` can only run while
    /// `block` waits, on another thread. Their threads.
    fn overlap(&mut self) -> (Value, Value) {
        let blocked = self.send("block", vec![]);
        let unblocked = self.send("unblock", vec![]);
        let unblocked = self.wait(unblocked);
        (self.wait(blocked), unblocked)
    }
}

fn nested_tid() -> Value {
    Value::SenderObject(RefDesc { flags: farcall_core::flags::CALLABLE, ..RefDesc::new(NESTED_TID, "builtins.function") })
}

fn server(t: Transport) -> TestServer {
    TestServer::start_on(t, Arc::new(ThreadEvaluator))
}

fn assert_all_on(home: &Value, tids: &[Value], what: &str) {
    let elsewhere = tids.iter().filter(|t| *t != home).count();
    assert_eq!(elsewhere, 0, "{what}: {elsewhere} of {} requests ran elsewhere than {home:?}: {tids:?}", tids.len());
}

// ---------------------------------------------------------------- the tests

fn sequential_requests_all_run_on_one_thread(t: Transport) {
    let server = server(t);
    let mut raw = Raw::connect(&server);
    let tids = raw.sequential_tids(200);
    assert_all_on(&tids[0], &tids, "sequential requests");
    // Another connection has a home thread of its own.
    let mut other = Raw::connect(&server);
    assert_ne!(other.call("tid", vec![]), tids[0]);
}

fn after_overlapping_requests_sequential_ones_return_to_the_home_thread(t: Transport) {
    let server = server(t);
    let mut raw = Raw::connect(&server);
    let home = raw.call("tid", vec![]);
    for round in 0..3 {
        // `block` arrives first and runs at home; `unblock` overlaps it, so
        // it runs on another thread (were it queued behind `block`, the
        // test would fail with the evaluator's TimeoutError).
        let (blocked, unblocked) = raw.overlap();
        assert_eq!(blocked, home, "round {round}: the first of two overlapping requests runs at home");
        assert_ne!(unblocked, home, "round {round}: the overlapping request runs elsewhere");
        let tids = raw.sequential_tids(50);
        assert_all_on(&home, &tids, &format!("round {round}: sequential requests after an overlap"));
    }
}

fn a_nested_request_during_a_callback_runs_on_the_home_thread(t: Transport) {
    let server = server(t);
    let mut raw = Raw::connect(&server);
    let home = raw.call("tid", vec![]);
    for round in 0..3 {
        // client → server `call` (at home) → client → server `tid` (nested).
        let Value::Tuple(got) = raw.call("call", vec![nested_tid()]) else { panic!("call returns a tuple") };
        assert_eq!(got, vec![home.clone(), home.clone()], "round {round}: the call and its nested request run at home");
        // Also right after an overlap, while the standby thread holds the reading role.
        let (blocked, _) = raw.overlap();
        assert_eq!(blocked, home);
    }
    let tids = raw.sequential_tids(20);
    assert_all_on(&home, &tids, "sequential requests after callbacks");
}

fn requests_that_keep_the_home_thread_busy_still_run_there_one_after_another(t: Transport) {
    let server = server(t);
    let mut raw = Raw::connect(&server);
    let home = raw.call("tid", vec![]);
    // Each keeps the home thread busy long enough for the standby thread to
    // take over reading: it reads the next request, and hands it home.
    let tids: Vec<Value> = (0..10).map(|_| raw.call("tid", vec![Value::Int(3)])).collect();
    assert_all_on(&home, &tids, "busy sequential requests");
    // The same around a callback: the nested request comes while the
    // standby reads, and goes to the home thread that waits for it.
    for round in 0..5 {
        let Value::Tuple(got) = raw.call("call", vec![nested_tid(), Value::Int(3)]) else { panic!("call returns a tuple") };
        assert_eq!(got, vec![home.clone(), home.clone()], "round {round}: a busy call and its nested request run at home");
    }
}

per_transport!(
    sequential_requests_all_run_on_one_thread,
    requests_that_keep_the_home_thread_busy_still_run_there_one_after_another,
    after_overlapping_requests_sequential_ones_return_to_the_home_thread,
    a_nested_request_during_a_callback_runs_on_the_home_thread,
);

/// With two threads per connection (home and standby, no helper), an
/// overlapping request still runs: the standby performs it itself.
#[test]
fn at_two_threads_per_connection_the_standby_performs_an_overlapping_request() {
    let options = ServerOptions { max_threads_per_connection: 2, ..Default::default() };
    let server = TestServer::with_options(Arc::new(ThreadEvaluator), options);
    let mut raw = Raw::connect(&server);
    let home = raw.call("tid", vec![]);
    let (blocked, unblocked) = raw.overlap();
    assert_eq!(blocked, home);
    assert_ne!(unblocked, home);
    let tids = raw.sequential_tids(50);
    assert_all_on(&home, &tids, "sequential requests after an overlap");
}

/// With one thread per connection requests run one after another, all at home.
#[test]
fn at_one_thread_per_connection_every_request_runs_at_home() {
    let options = ServerOptions { max_threads_per_connection: 1, ..Default::default() };
    let server = TestServer::with_options(Arc::new(ThreadEvaluator), options);
    let mut raw = Raw::connect(&server);
    let mut tids = raw.sequential_tids(20);
    let Value::Tuple(got) = raw.call("call", vec![nested_tid()]) else { panic!("call returns a tuple") };
    tids.extend(got);
    assert_all_on(&tids[0].clone(), &tids, "with one thread");
}

// ---------------------------------------------------------------- real Python

fn python_ident(client: &farcall_client::Client) -> i64 {
    client.eval("threading.get_ident()").expect("eval").extract().expect("an int")
}

/// With the Python backends: a session's sequential calls see one Python
/// thread (`threading.get_ident()`), a default sqlite3 connection made by one
/// call works in the next ones, two calls that overlap run on two threads,
/// and afterwards the session is back on its first thread.
fn python_calls_of_a_session_run_on_one_thread_unless_they_overlap(c: Case) {
    let server = c.server();
    let client = server.client();
    client
        .execute("import threading, sqlite3\ndb = sqlite3.connect(':memory:')\nstarted = threading.Event()\ngo = threading.Event()")
        .expect("setup");
    let home = python_ident(&client);
    let idents: Vec<i64> = (0..100).map(|_| python_ident(&client)).collect();
    assert!(idents.iter().all(|i| *i == home), "sequential calls ran on several threads: {idents:?}");
    client.execute("db.execute('CREATE TABLE t (x)')").expect("sqlite3 works in a later call");
    for round in 0..2 {
        // Each waits for the other: they can only both finish if they overlap.
        let other = client.clone();
        let first = std::thread::spawn(move || {
            other.eval("started.set() or (go.wait(20) and threading.get_ident())").expect("eval").extract::<i64>().expect("an int")
        });
        let second: i64 = client
            .eval("started.wait(20) and (go.set() or threading.get_ident())")
            .expect("eval")
            .extract()
            .expect("an int (not False: the calls overlapped)");
        let first = first.join().expect("the first caller");
        assert_ne!(first, second, "round {round}: overlapping calls ran on two threads");
        assert!(first == home || second == home, "round {round}: one of them ran on the session's thread");
        client.execute("started.clear(); go.clear()").expect("reset");
        let idents: Vec<i64> = (0..20).map(|_| python_ident(&client)).collect();
        assert!(idents.iter().all(|i| *i == home), "round {round}: after overlapping calls, sequential ones ran elsewhere: {idents:?}");
        client.execute(&format!("db.execute('INSERT INTO t VALUES ({round})')")).expect("sqlite3 still works");
    }
}

per_case!(python_calls_of_a_session_run_on_one_thread_unless_they_overlap);
