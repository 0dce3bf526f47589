//! The farcall server: accepts connections on any [`Listener`], performs the
//! handshake, and serves each session's requests with an [`Evaluator`].
//!
//! Each connection is served by a small group of threads in a
//! leader/followers arrangement: one thread reads the next frame, hands the
//! reading role to an idle thread, then evaluates the request and writes the
//! reply itself. A call thus costs no thread hand-off, and a slow call never
//! holds up the others on the same connection.
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
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use farcall_core::handshake::{self, HandshakeReply, ServerHello};
use farcall_core::session::reply_frame;
use farcall_core::{Connection, EvalSession, Evaluator, Frame, Incoming, Listener, RemoteException, Request, Route, Session, SessionInfo};
use tracing::{debug, info, warn};

/// Server-wide settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The largest frame accepted from a client.
    pub max_message_bytes: usize,
    /// Connections served at once; more are refused in the handshake.
    pub max_connections: usize,
    /// Whether clients may set and delete attributes through proxies. This
    /// release refuses all mutation, whatever the config says.
    pub allow_mutation: bool,
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
            allow_mutation: false,
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
            c.close(&self.inner, "server shutting down");
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
        let eval = match inner.evaluator.open(&SessionInfo { id, peer: peer.clone(), callbacks: Arc::new(farcall_core::NoCallbacks) }) {
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
            session: Mutex::new(Session::new()),
            reading: Mutex::new(()),
            threads: AtomicUsize::new(1),
            waiting: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        });
        sessions.insert(id, c.clone());
        drop(sessions);
        if let Err(e) = c.conn.send(&[&Frame::from_bytes(Route::Oneway, handshake::encode(&accept).into())]) {
            c.close(inner, &format!("sending the handshake failed: {e}"));
            return;
        }
        let _ = c.conn.set_recv_timeout(None);
        info!(session = id, %peer, client = %hello.client, "session opened");
        c.work(&self);
    }
}

/// One served connection.
struct Conn {
    id: u64,
    conn: Box<dyn Connection>,
    /// Always `Some` until drop (taken there to drop it first).
    eval: Option<Box<dyn EvalSession>>,
    session: Mutex<Session>,
    /// Held by the thread inside `conn.recv()`.
    reading: Mutex<()>,
    threads: AtomicUsize,
    /// Threads waiting for the reading role.
    waiting: AtomicUsize,
    closed: AtomicBool,
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

    fn close(&self, inner: &Inner, why: &str) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            self.conn.shutdown();
            lock(&inner.sessions).remove(&self.id);
            info!(session = self.id, peer = %self.conn.peer(), "session closed: {why}");
        }
    }

    /// The leader/followers loop of one thread serving this connection.
    fn work(self: Arc<Self>, server: &Server) {
        let inner = &server.inner;
        loop {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let guard = lock(&self.reading);
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            if self.closed.load(Ordering::SeqCst) {
                break;
            }
            // Releases are applied by the reader before it hands over the
            // reading role, so a request sent after a release never sees
            // the released object, and a later Stats counts it.
            let incoming = loop {
                let body = match self.conn.recv() {
                    Ok(b) => b,
                    Err(e) if e.is_closed() => break None,
                    Err(e) => break Some(Err(e.to_string())),
                };
                match lock(&self.session).receive(body) {
                    Ok(Incoming::Release(refs)) => self.eval().release(&refs),
                    Ok(other) => break Some(Ok(other)),
                    Err(e) => break Some(Err(e.to_string())),
                }
            };
            drop(guard);
            let incoming = match incoming {
                Some(Ok(i)) => i,
                None => {
                    self.close(inner, "client disconnected");
                    break;
                }
                Some(Err(why)) => {
                    if !self.closed.load(Ordering::SeqCst) {
                        warn!(session = self.id, peer = %self.conn.peer(), "closing connection: {why}");
                    }
                    self.close(inner, &why);
                    break;
                }
            };
            // Make sure another thread takes the reading role while this one works.
            if self.waiting.load(Ordering::SeqCst) == 0 && self.threads.load(Ordering::SeqCst) < inner.options.max_threads_per_connection {
                self.threads.fetch_add(1, Ordering::SeqCst);
                let me = self.clone();
                let server = server.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("farcall-s{}", self.id))
                    .stack_size(WORKER_STACK)
                    .spawn(move || me.work(&server));
                if spawned.is_err() {
                    self.threads.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let reply = match incoming {
                Incoming::Request { id, op } => Some(reply_frame(id, self.perform(op, inner))),
                Incoming::BadRequest { id, error } => {
                    warn!(session = self.id, "{}", error.message);
                    Some(reply_frame(id, Err(error)))
                }
                Incoming::Cancel(rid) => {
                    debug!(session = self.id, request = rid, "cancel received (advisory; the request runs to completion)");
                    None
                }
                Incoming::Release(_) | Incoming::Reply(_) | Incoming::Late { .. } => None,
            };
            if let Some(frame) = reply {
                if let Err(e) = self.conn.send(&[&frame]) {
                    self.close(inner, &format!("sending a reply failed: {e}"));
                    break;
                }
            }
        }
        self.threads.fetch_sub(1, Ordering::SeqCst);
    }

    fn perform(&self, op: Request, inner: &Inner) -> Result<farcall_core::Value, RemoteException> {
        debug!(session = self.id, op = op.name(), "request");
        match &op {
            Request::SetAttr { name, .. } | Request::DelAttr { name, .. } if !inner.options.allow_mutation => {
                Err(RemoteException::policy(format!(
                    "{} of attribute `{name}` refused: this server does not allow mutation through proxies",
                    if matches!(op, Request::SetAttr { .. }) { "assignment" } else { "deletion" }
                )))
            }
            _ => self.eval().evaluate(op),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Release the session's objects before the connection goes.
        drop(self.eval.take());
    }
}
