//! The farcall server: accepts connections on any [`Listener`], performs the
//! handshake, and serves each session's requests with an [`Evaluator`].
//!
//! Each connection is served by a small group of threads in a
//! leader/followers arrangement: one thread reads the next frame, hands the
//! reading role to an idle thread, then evaluates the request and writes the
//! reply itself. A call thus costs no thread hand-off, and a slow call never
//! holds up the others on the same connection.
//!
//! The protocol is symmetric: an evaluation may call back into the client
//! (its [`SessionInfo::callbacks`]). A thread waiting for a callback's reply
//! joins the same arrangement: when nobody is reading it reads itself, serves
//! the client's requests it finds there (nested calls: client → server →
//! client → server) and takes its own reply when it comes; replies another
//! thread reads are handed to their waiting thread.
//!
//! ```no_run
//! # fn evaluator() -> std::sync::Arc<dyn farcall_core::Evaluator> { unimplemented!() }
//! use farcall_server::{Server, ServerOptions};
//! let listener = farcall_transport_tcp::TcpListener::bind("127.0.0.1:0", 1 << 26).unwrap();
//! let server = Server::new(evaluator(), ServerOptions::default());
//! server.serve(Box::new(listener));
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use farcall_core::handshake::{self, HandshakeReply, ServerHello};
use farcall_core::session::{release_frame, reply_frame, sender_objects};
use farcall_core::{
    Callbacks, Connection, EvalSession, Evaluator, Frame, Incoming, Listener, Release, ReleaseQueue, RemoteException, Request, RequestId,
    Route, Session, SessionInfo, TransportError, Value,
};
use tracing::{debug, info, warn};

/// Server-wide settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The largest frame accepted from a client.
    pub max_message_bytes: usize,
    /// Connections served at once; more are refused in the handshake.
    pub max_connections: usize,
    /// Whether clients may set and delete attributes through proxies
    /// (`[policy] allow_setattr`, default true). When false, SetAttr and
    /// DelAttr are refused with `farcall.PolicyError` before evaluation.
    pub allow_setattr: bool,
    /// How long a new connection may take to send its handshake.
    pub handshake_timeout: Duration,
    /// Threads that may serve one connection's requests at once.
    pub max_threads_per_connection: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_message_bytes: 64 << 20,
            max_connections: 1024,
            allow_setattr: true,
            handshake_timeout: Duration::from_secs(10),
            max_threads_per_connection: 64,
        }
    }
}

/// Stack size of the threads that run Python.
const WORKER_STACK: usize = 8 << 20;

/// A running server; cheap to clone.
#[derive(Clone, Debug)]
pub struct Server {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    evaluator: Arc<dyn Evaluator>,
    options: ServerOptions,
    next_session: AtomicU64,
    sessions: Mutex<HashMap<u64, Arc<Conn>>>,
    stopping: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Server {
    /// A server evaluating with `evaluator`.
    pub fn new(evaluator: Arc<dyn Evaluator>, options: ServerOptions) -> Self {
        Server {
            inner: Arc::new(Inner {
                evaluator,
                options,
                next_session: AtomicU64::new(0),
                sessions: Mutex::new(HashMap::new()),
                stopping: AtomicBool::new(false),
            }),
        }
    }

    /// Accepts connections from `listener` on a thread of its own until the
    /// server stops.
    pub fn serve(&self, listener: Box<dyn Listener>) -> JoinHandle<()> {
        let server = self.clone();
        std::thread::Builder::new()
            .name(format!("farcall-accept {}", listener.local_url()))
            .spawn(move || server.accept_loop(listener))
            .expect("spawning the accept thread")
    }

    /// Number of sessions being served.
    pub fn session_count(&self) -> usize {
        lock(&self.inner.sessions).len()
    }

    /// Stops serving: every connection is closed (clients see the connection
    /// lost) and no new one is served.
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        let sessions: Vec<Arc<Conn>> = lock(&self.inner.sessions).values().cloned().collect();
        for c in sessions {
            c.close("server shutting down");
        }
    }

    fn accept_loop(&self, listener: Box<dyn Listener>) {
        let url = listener.local_url();
        while !self.inner.stopping.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok(conn) => {
                    let server = self.clone();
                    let spawned =
                        std::thread::Builder::new().name("farcall-conn".into()).stack_size(WORKER_STACK).spawn(move || server.handle(conn));
                    if let Err(e) = spawned {
                        warn!("could not start a thread for a new connection on {url}: {e}");
                    }
                }
                Err(e) => {
                    // One client's failed handshake is that client's problem;
                    // running out of descriptors or memory is the server's:
                    // back off briefly rather than spin.
                    let exhausted = matches!(&e, farcall_core::TransportError::Io { source, .. }
                        if matches!(source.raw_os_error(), Some(23 | 24 | 12 | 105)));
                    warn!("accepting on {url} failed: {e}");
                    if exhausted {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
    }

    fn refuse(conn: &dyn Connection, why: &str) {
        let reply = handshake::encode(&HandshakeReply::Refuse(why.to_owned()));
        let _ = conn.send(&[&Frame::from_bytes(Route::Oneway, reply.into())]);
        conn.shutdown();
    }

    /// Handshake, then serve the session on this thread (and its followers).
    fn handle(self, conn: Box<dyn Connection>) {
        let inner = &self.inner;
        let peer = conn.peer().clone();
        let _ = conn.set_recv_timeout(Some(inner.options.handshake_timeout));
        let body = match conn.recv() {
            Ok(b) => b,
            Err(e) => {
                warn!(%peer, "handshake failed: {e}");
                conn.shutdown();
                return;
            }
        };
        let hello = match handshake::decode_client_hello(&body) {
            Ok(h) => h,
            Err(e) => {
                warn!(%peer, "handshake refused: {e}");
                Self::refuse(&*conn, &e.to_string());
                return;
            }
        };
        if inner.stopping.load(Ordering::SeqCst) {
            Self::refuse(&*conn, "the server is shutting down");
            return;
        }
        let id = inner.next_session.fetch_add(1, Ordering::Relaxed) + 1;
        let mut sessions = lock(&inner.sessions);
        if sessions.len() >= inner.options.max_connections {
            drop(sessions);
            warn!(%peer, "refused: at the limit of {} connections", inner.options.max_connections);
            Self::refuse(
                &*conn,
                &format!(
                    "the server is at its limit of {} connections (limits.max_connections); try again later",
                    inner.options.max_connections
                ),
            );
            return;
        }
        let callbacks = Arc::new(ConnCallbacks { conn: OnceLock::new(), releases: ReleaseQueue::new() });
        let eval = match inner.evaluator.open(&SessionInfo { id, peer: peer.clone(), callbacks: callbacks.clone() }) {
            Ok(e) => e,
            Err(e) => {
                drop(sessions);
                warn!(%peer, "could not open a session: {e}");
                Self::refuse(&*conn, &e.to_string());
                return;
            }
        };
        let backend = inner.evaluator.info();
        let accept = HandshakeReply::Accept(ServerHello {
            protocol: hello.protocol,
            farcall_version: handshake::FARCALL_VERSION.into(),
            backend: backend.name,
            python_version: backend.python_version,
            python_prefix: backend.python_prefix,
            python_executable: backend.python_executable,
            session: id,
        });
        let c = Arc::new(Conn {
            id,
            conn,
            eval: Some(eval),
            server: self.clone(),
            callbacks: callbacks.clone(),
            state: Mutex::new(ConnState { session: Session::new(), reading: false, idle: 0, closed: None }),
            cond: Condvar::new(),
            threads: AtomicUsize::new(1),
        });
        let _ = callbacks.conn.set(Arc::downgrade(&c));
        sessions.insert(id, c.clone());
        drop(sessions);
        if let Err(e) = c.conn.send(&[&Frame::from_bytes(Route::Oneway, handshake::encode(&accept).into())]) {
            c.close(&format!("sending the handshake failed: {e}"));
            return;
        }
        let _ = c.conn.set_recv_timeout(None);
        info!(session = id, %peer, client = %hello.client, "session opened");
        drop(self);
        c.work();
    }
}

/// The [`Callbacks`] of one connection's evaluation session: requests to the
/// client go through the connection's threads; releases wait in a queue sent
/// ahead of the next frame to the client. Holds the connection weakly (the
/// connection owns the evaluation session, which owns this).
struct ConnCallbacks {
    conn: OnceLock<Weak<Conn>>,
    releases: ReleaseQueue,
}

impl Callbacks for ConnCallbacks {
    fn request(&self, op: Request) -> Result<Value, RemoteException> {
        let Some(conn) = self.conn.get().and_then(Weak::upgrade) else {
            return Err(RemoteException::connection_lost("the client's connection is closed"));
        };
        let outcome = conn.call_client(op);
        if Arc::strong_count(&conn) == 1 {
            // The connection closed meanwhile and this is its last owner:
            // dropping it drops the evaluation session, which must not happen
            // on a thread that is inside that session's evaluation.
            let _ = std::thread::Builder::new().name("farcall-drop".into()).spawn(move || drop(conn));
        }
        outcome
    }

    fn release(&self, refs: &[Release]) {
        for r in refs {
            self.releases.push(r.id, r.count);
        }
    }
}

/// What one connection's threads share, under one lock.
struct ConnState {
    /// The server's own requests to the client (callbacks) and their replies.
    session: Session,
    /// A thread holds the reading role (is in, or about to enter, `recv`).
    reading: bool,
    /// Threads waiting on `cond` that would take the reading role: idle
    /// followers and threads waiting for a callback's reply.
    idle: usize,
    /// Why the connection closed, once it has.
    closed: Option<String>,
}

/// What a thread holding the reading role found.
enum Found {
    /// A request of the client (or a bad one) to answer; the reading role has
    /// been handed on.
    Work(Incoming),
    /// The reply the reading thread waits for has arrived (take it from the
    /// session); the reading role has been handed on.
    Mine,
    /// The connection is closed.
    Closed,
}

/// One served connection.
struct Conn {
    id: u64,
    conn: Box<dyn Connection>,
    /// Always `Some` until drop (taken there to drop it first).
    eval: Option<Box<dyn EvalSession>>,
    server: Server,
    callbacks: Arc<ConnCallbacks>,
    state: Mutex<ConnState>,
    /// Signalled when the reading role is free, a reply arrives, or the connection closes.
    cond: Condvar,
    /// Server threads serving this connection.
    threads: AtomicUsize,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conn(session {} {})", self.id, self.conn.peer())
    }
}

impl Conn {
    fn eval(&self) -> &dyn EvalSession {
        self.eval.as_deref().expect("evaluation session present until drop")
    }

    fn wait<'a>(&self, mut st: MutexGuard<'a, ConnState>) -> MutexGuard<'a, ConnState> {
        st.idle += 1;
        st = self.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        st.idle -= 1;
        st
    }

    /// Closes the connection: every thread waiting for a reply of the client
    /// gets `farcall.ConnectionLost`, the reader's `recv` returns.
    fn close(&self, why: &str) {
        let mut st = lock(&self.state);
        if st.closed.is_some() {
            return;
        }
        st.closed = Some(why.to_owned());
        st.session.close();
        drop(st);
        self.cond.notify_all();
        self.conn.shutdown();
        lock(&self.server.inner.sessions).remove(&self.id);
        info!(session = self.id, peer = %self.conn.peer(), "session closed: {why}");
    }

    /// Sends `frame` to the client, with the queued releases ahead of it.
    ///
    /// Two sends rather than one when there are releases: a transport that
    /// maps frames to streams (QUIC) orders a reply after the one-way frames
    /// sent before it, not after those of the same `send`.
    fn send(&self, frame: &Frame) -> Result<(), TransportError> {
        let refs = self.callbacks.releases.take();
        if !refs.is_empty() {
            self.conn.send(&[&release_frame(refs)])?;
        }
        self.conn.send(&[frame])
    }

    /// The loop of a server thread serving this connection: wait for the
    /// reading role, read until there is work, do it, again.
    fn work(self: Arc<Self>) {
        loop {
            let mut st = lock(&self.state);
            while st.reading && st.closed.is_none() {
                st = self.wait(st);
            }
            if st.closed.is_some() {
                break;
            }
            st.reading = true;
            drop(st);
            match self.lead(None) {
                Found::Work(incoming) => {
                    if !self.serve(incoming) {
                        break;
                    }
                }
                Found::Mine => {}
                Found::Closed => break,
            }
        }
        self.threads.fetch_sub(1, Ordering::SeqCst);
    }

    /// Reads frames while holding the reading role, until one needs a thread
    /// (a request of the client, or the reply `awaited`, if given) or the
    /// connection ends. Releases are applied here, before the role is handed
    /// on, so a request sent after a release never sees the released object.
    /// Replies to other threads' requests are stored for them.
    fn lead(self: &Arc<Self>, awaited: Option<RequestId>) -> Found {
        loop {
            let body = match self.conn.recv() {
                Ok(b) => b,
                Err(e) => {
                    let why = if e.is_closed() { "client disconnected".to_owned() } else { e.to_string() };
                    self.fail(&why);
                    return Found::Closed;
                }
            };
            let mut st = lock(&self.state);
            match st.session.receive(body) {
                Ok(Incoming::Release(refs)) => {
                    drop(st);
                    self.eval().release(&refs);
                }
                Ok(Incoming::Reply(id)) if Some(id) == awaited => {
                    self.hand_off(st);
                    return Found::Mine;
                }
                Ok(Incoming::Reply(_)) => {
                    drop(st);
                    self.cond.notify_all();
                }
                Ok(Incoming::Cancel(rid)) => {
                    drop(st);
                    debug!(session = self.id, request = rid, "cancel received (advisory: the request runs to completion)");
                }
                Ok(Incoming::Late { id, result }) => {
                    drop(st);
                    // Nobody waits for it: give back the client objects it carries.
                    if let Ok(v) = result {
                        for r in sender_objects(&v) {
                            self.callbacks.releases.push(r.id, r.count);
                        }
                    }
                    debug!(session = self.id, request = id, "late reply from the client dropped");
                }
                Ok(work @ (Incoming::Request { .. } | Incoming::BadRequest { .. })) => {
                    self.hand_off(st);
                    return Found::Work(work);
                }
                Err(e) => {
                    drop(st);
                    self.fail(&e.to_string());
                    return Found::Closed;
                }
            }
        }
    }

    /// Closes after a read failure, warning unless the close was expected.
    fn fail(&self, why: &str) {
        let already = lock(&self.state).closed.is_some();
        if !already && why != "client disconnected" {
            warn!(session = self.id, peer = %self.conn.peer(), "closing connection: {why}");
        }
        self.close(why);
    }

    /// Gives up the reading role: wakes a thread waiting for it, or starts
    /// one when none waits, so the connection is always being read.
    fn hand_off(self: &Arc<Self>, mut st: MutexGuard<'_, ConnState>) {
        st.reading = false;
        let (idle, closed) = (st.idle, st.closed.is_some());
        drop(st);
        if idle > 0 {
            self.cond.notify_all();
        } else if !closed && self.threads.load(Ordering::SeqCst) < self.server.inner.options.max_threads_per_connection {
            self.threads.fetch_add(1, Ordering::SeqCst);
            let me = self.clone();
            let spawned =
                std::thread::Builder::new().name(format!("farcall-s{}", self.id)).stack_size(WORKER_STACK).spawn(move || me.work());
            if spawned.is_err() {
                self.threads.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Performs a request of the client and sends the reply; false when the
    /// connection failed.
    fn serve(&self, incoming: Incoming) -> bool {
        let frame = match incoming {
            Incoming::Request { id, op } => reply_frame(id, self.perform(op)),
            Incoming::BadRequest { id, error } => {
                warn!(session = self.id, "{}", error.message);
                reply_frame(id, Err(error))
            }
            _ => return true,
        };
        if let Err(e) = self.send(&frame) {
            self.close(&format!("sending a reply failed: {e}"));
            return false;
        }
        // Releases queued while the reply was being sent (objects dropped
        // after the evaluation) go now rather than wait for the next frame.
        if !self.callbacks.releases.is_empty() {
            let refs = self.callbacks.releases.take();
            if !refs.is_empty() && self.conn.send(&[&release_frame(refs)]).is_err() {
                self.close("sending releases failed");
                return false;
            }
        }
        true
    }

    fn perform(&self, op: Request) -> Result<Value, RemoteException> {
        debug!(session = self.id, op = op.name(), "request");
        match &op {
            Request::SetAttr { name, .. } | Request::DelAttr { name, .. } if !self.server.inner.options.allow_setattr => {
                Err(RemoteException::policy(format!(
                    "{} of attribute `{name}` refused: this server does not allow setting or deleting attributes through proxies \
                     ([policy] allow_setattr = false)",
                    if matches!(op, Request::SetAttr { .. }) { "assignment" } else { "deletion" }
                )))
            }
            _ => self.eval().evaluate(op),
        }
    }

    /// A request of the server to the client (a callback), from any thread:
    /// sends it, then waits for its reply, reading the connection itself
    /// when no other thread is (serving the client's requests it finds).
    fn call_client(self: &Arc<Self>, op: Request) -> Result<Value, RemoteException> {
        let lost = |why: &str| RemoteException::connection_lost(format!("the client's connection is closed ({why})"));
        let (id, frame) = {
            let mut st = lock(&self.state);
            if let Some(why) = &st.closed {
                return Err(lost(why));
            }
            st.session.request_owned(op)
        };
        if let Err(e) = self.send(&frame) {
            self.close(&format!("sending a request to the client failed: {e}"));
        }
        let mut st = lock(&self.state);
        loop {
            if let Some(outcome) = st.session.take_reply(id) {
                return outcome;
            }
            if let Some(why) = &st.closed {
                return Err(lost(why));
            }
            if st.reading {
                st = self.wait(st);
                continue;
            }
            st.reading = true;
            drop(st);
            match self.lead(Some(id)) {
                Found::Work(incoming) => {
                    self.serve(incoming);
                }
                Found::Mine | Found::Closed => {}
            }
            st = lock(&self.state);
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Release the session's objects before the connection goes.
        drop(self.eval.take());
    }
}
