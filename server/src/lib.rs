//! The farcall server: accepts connections on any [`Listener`], performs the
//! handshake, and serves each session's requests with an [`Evaluator`].
//!
//! Each connection has a *home* thread, which reads a request, performs it
//! and sends the reply itself, then reads the next: a stream of calls costs
//! no thread hand-off, and requests that do not overlap in time all run on
//! that one OS thread, so thread-affine libraries (sqlite3 connections, many
//! C libraries, GUI toolkits, event loops) work across a session's calls as
//! they would in a local program. A *standby* thread watches: when nobody
//! has read the connection for a while (0.5 to 1 ms) because the home thread
//! is busy, it takes over reading, so a slow call never holds up the others
//! on the same connection; what it reads while the home thread is busy runs
//! on helper threads, and the first request it reads once the home thread is
//! free again is handed back to it, which then reads again.
//!
//! The protocol is symmetric: an evaluation may call back into the client
//! (its [`SessionInfo::callbacks`]). A thread waiting for a callback's reply
//! joins the same arrangement: when nobody is reading it reads itself and
//! takes its own reply when it comes; replies another thread reads are
//! handed to their waiting thread. The client's nested requests (client →
//! server → client → server) run on the home thread when it is free or is
//! the one waiting (they belong in its call stack), else on the waiting
//! thread that read them.
//!
//! ```no_run
//! # fn evaluator() -> std::sync::Arc<dyn farcall_core::Evaluator> { unimplemented!() }
//! use farcall_server::{Server, ServerOptions};
//! let listener = farcall_transport_tcp::TcpListener::bind("127.0.0.1:0", 1 << 26).unwrap();
//! let server = Server::new(evaluator(), ServerOptions::default());
//! server.serve(Box::new(listener));
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::{JoinHandle, ThreadId};
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
    /// Threads that may serve one connection: its home thread, a standby
    /// thread and helpers for overlapping requests. With 1, requests run one
    /// at a time; with 2, the standby performs an overlapping request itself.
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
            home_thread: std::thread::current().id(),
            state: Mutex::new(ConnState {
                session: Session::new(),
                // The home thread starts out reading.
                reading: true,
                freed: 0,
                home: Home::Reading,
                for_home: None,
                queue: VecDeque::new(),
                helpers_idle: 0,
                awaiting: 0,
                standby_asleep: false,
                closed: None,
            }),
            cond: Condvar::new(),
            home_cond: Condvar::new(),
            standby_cond: Condvar::new(),
            helper_cond: Condvar::new(),
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
        c.spawn("standby", Conn::stand_by);
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

/// How often the standby thread looks at a connection whose requests are
/// being evaluated: it takes the reading role when it finds it free at two
/// looks in a row with nothing in between, that is after the role has been
/// free for 0.5 to 1 ms.
const TICK: Duration = Duration::from_micros(500);

/// Looks without any request started after which the standby thread stops
/// looking and sleeps until the next request starts (a quiet connection).
const QUIET_TICKS: u32 = 40;

/// What the home thread of a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Home {
    /// Waiting for a request or for the reading role.
    Idle,
    /// Holding the reading role, between requests.
    Reading,
    /// Performing a request.
    Busy,
    /// Sending a reply: about to be idle (or back to waiting for a
    /// callback's reply), so a request read now is handed to it.
    Replying,
    /// Inside a callback, waiting for the client's reply (it serves the
    /// client's nested requests meanwhile).
    Awaiting,
}

/// Who reads the connection in [`Conn::lead`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// The home thread, between requests.
    Home,
    /// The home thread, waiting for a callback's reply.
    HomeAwaiting,
    /// Another thread waiting for a callback's reply.
    Awaiting,
    /// The standby thread, while the home thread is busy.
    Standby,
}

/// What one connection's threads share, under one lock.
struct ConnState {
    /// The server's own requests to the client (callbacks) and their replies.
    session: Session,
    /// A thread holds the reading role (is in, or about to enter, `recv`).
    reading: bool,
    /// Counts the times the reading role was given up.
    freed: u64,
    /// What the home thread is doing.
    home: Home,
    /// A request another thread read for the home thread to perform.
    for_home: Option<Incoming>,
    /// Requests the standby read while the home thread was busy (they
    /// overlap its request), for the helper threads.
    queue: VecDeque<Incoming>,
    /// Helper threads waiting on `helper_cond` for queued requests.
    helpers_idle: usize,
    /// Threads waiting on `cond` for a callback's reply or the reading role.
    awaiting: usize,
    /// The standby thread sleeps until the reading role is next given up.
    standby_asleep: bool,
    /// Why the connection closed, once it has.
    closed: Option<String>,
}

/// What a thread holding the reading role found.
enum Found {
    /// A request of the client (or a bad one) for this thread to answer; the
    /// reading role has been given up.
    Work(Incoming),
    /// A request of the client was handed to the home thread; the reading
    /// role has been given up.
    Handed,
    /// The reply the reading thread waits for has arrived (take it from the
    /// session); the reading role has been given up.
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
    /// The thread that performs the client's requests unless they overlap.
    home_thread: ThreadId,
    state: Mutex<ConnState>,
    /// Threads in [`Conn::call_client`] wait here: a reply arrived, the
    /// reading role is free, the home thread was handed a request, or the
    /// connection closed.
    cond: Condvar,
    /// The home thread waits here between requests.
    home_cond: Condvar,
    /// The standby thread looks and sleeps here.
    standby_cond: Condvar,
    /// Helper threads wait here for queued requests.
    helper_cond: Condvar,
    /// Server threads serving this connection (home, standby, helpers).
    threads: AtomicUsize,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conn(session {} {})", self.id, self.conn.peer())
    }
}

fn wait<'a>(cond: &Condvar, st: MutexGuard<'a, ConnState>) -> MutexGuard<'a, ConnState> {
    cond.wait(st).unwrap_or_else(|p| p.into_inner())
}

impl Conn {
    fn eval(&self) -> &dyn EvalSession {
        self.eval.as_deref().expect("evaluation session present until drop")
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
        for cond in [&self.cond, &self.home_cond, &self.standby_cond, &self.helper_cond] {
            cond.notify_all();
        }
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

    /// Starts another thread serving this connection, within
    /// `max_threads_per_connection`; false when none was started.
    fn spawn(self: &Arc<Self>, what: &str, run: fn(Arc<Conn>)) -> bool {
        if self.threads.fetch_add(1, Ordering::SeqCst) >= self.server.inner.options.max_threads_per_connection {
            self.threads.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        let me = self.clone();
        let spawned =
            std::thread::Builder::new().name(format!("farcall-{what}{}", self.id)).stack_size(WORKER_STACK).spawn(move || run(me));
        if let Err(e) = spawned {
            self.threads.fetch_sub(1, Ordering::SeqCst);
            warn!(session = self.id, "could not start a {what} thread: {e}");
            return false;
        }
        true
    }

    /// Gives up the reading role (the caller holds it) and wakes whoever may
    /// want it: the idle home thread, threads waiting for callback replies,
    /// and the standby thread if it sleeps.
    fn free_role(&self, st: &mut ConnState) {
        st.reading = false;
        st.freed = st.freed.wrapping_add(1);
        if st.home == Home::Idle {
            self.home_cond.notify_one();
        }
        if st.awaiting > 0 {
            self.cond.notify_all();
        }
        if st.standby_asleep {
            st.standby_asleep = false;
            self.standby_cond.notify_one();
        }
    }

    /// Queues a request that overlaps the home thread's for a helper thread
    /// (woken, or started when none is idle). At the thread limit, gives it
    /// back for the caller to perform itself.
    fn queue(self: &Arc<Self>, st: &mut ConnState, work: Incoming) -> Option<Incoming> {
        st.queue.push_back(work);
        if st.queue.len() <= st.helpers_idle {
            self.helper_cond.notify_one();
        } else if !self.spawn("helper", Conn::help) {
            return st.queue.pop_back();
        }
        None
    }

    /// The loop of the connection's home thread: perform the requests other
    /// threads hand over, else read the next one and perform it, else wait.
    fn work(self: Arc<Self>) {
        enum Next {
            Read,
            Perform(Incoming),
        }
        // The home thread starts out holding the reading role.
        let mut next = Some(Next::Read);
        while let Some(step) = next {
            match step {
                Next::Perform(work) => {
                    self.serve(work, true);
                }
                Next::Read => match self.lead(Reader::Home, None) {
                    Found::Work(work) => {
                        self.serve(work, true);
                    }
                    Found::Closed => break,
                    Found::Handed | Found::Mine => {}
                },
            }
            let mut st = lock(&self.state);
            next = loop {
                if st.closed.is_some() {
                    break None;
                }
                if let Some(work) = st.for_home.take().or_else(|| st.queue.pop_front()) {
                    st.home = Home::Busy;
                    break Some(Next::Perform(work));
                }
                if !st.reading {
                    st.reading = true;
                    st.home = Home::Reading;
                    break Some(Next::Read);
                }
                st.home = Home::Idle;
                st = wait(&self.home_cond, st);
            };
        }
        self.threads.fetch_sub(1, Ordering::SeqCst);
    }

    /// The loop of the standby thread: while requests are being evaluated
    /// and nobody reads the connection, take the reading role once it has
    /// been free for a tick; sleep while the connection is quiet. (At the
    /// thread limit it performs an overlapping request itself.)
    fn stand_by(self: Arc<Self>) {
        // `freed` when the role was last seen free, and when last seen at all.
        let (mut seen_free, mut seen) = (None, u64::MAX);
        let mut quiet = 0;
        let mut st = lock(&self.state);
        while st.closed.is_none() {
            if !st.reading {
                if seen_free == Some(st.freed) {
                    st.reading = true;
                    drop(st);
                    match self.lead(Reader::Standby, None) {
                        Found::Work(work) => {
                            self.serve(work, false);
                        }
                        Found::Closed => break,
                        Found::Handed | Found::Mine => {}
                    }
                    (seen_free, quiet) = (None, 0);
                    st = lock(&self.state);
                    continue;
                }
                (seen_free, quiet) = (Some(st.freed), 0);
            } else {
                seen_free = None;
                if st.freed == seen {
                    quiet += 1;
                } else {
                    (seen, quiet) = (st.freed, 0);
                }
                if quiet >= QUIET_TICKS {
                    st.standby_asleep = true;
                    while st.standby_asleep && st.closed.is_none() {
                        st = wait(&self.standby_cond, st);
                    }
                    quiet = 0;
                    continue;
                }
            }
            st = self.standby_cond.wait_timeout(st, TICK).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
        self.threads.fetch_sub(1, Ordering::SeqCst);
    }

    /// The loop of a helper thread: perform the queued requests.
    fn help(self: Arc<Self>) {
        let mut st = lock(&self.state);
        while st.closed.is_none() {
            if let Some(work) = st.queue.pop_front() {
                drop(st);
                self.serve(work, false);
                st = lock(&self.state);
            } else {
                st.helpers_idle += 1;
                st = wait(&self.helper_cond, st);
                st.helpers_idle -= 1;
            }
        }
        self.threads.fetch_sub(1, Ordering::SeqCst);
    }

    /// Reads frames while holding the reading role, until one needs a thread
    /// (a request of the client, or the reply `awaited`, if given) or the
    /// connection ends. Releases are applied here, before the role is given
    /// up, so a request sent after a release never sees the released object.
    /// Replies to other threads' requests are stored for them.
    ///
    /// A request goes to the home thread whenever it is free to take it (idle,
    /// or waiting for a callback's reply: a nested request belongs in its
    /// call stack), so requests that do not overlap all run there. Otherwise
    /// the home thread performs what it reads, another thread waiting for a
    /// callback's reply performs what it reads, and the standby queues what
    /// it reads for a helper and reads on (at the thread limit it performs
    /// it itself).
    fn lead(self: &Arc<Self>, reader: Reader, awaited: Option<RequestId>) -> Found {
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
                    self.free_role(&mut st);
                    return Found::Mine;
                }
                Ok(Incoming::Reply(_)) => {
                    if st.awaiting > 0 {
                        self.cond.notify_all();
                    }
                }
                Ok(Incoming::Cancel(rid)) => {
                    drop(st);
                    // Advisory: the backend stops the request where it can
                    // (its reply, if any, is still sent; the client drops it).
                    debug!(session = self.id, request = rid, "cancel received");
                    self.eval().cancel(rid);
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
                Ok(work @ (Incoming::Request { .. } | Incoming::BadRequest { .. })) => match reader {
                    Reader::Home | Reader::HomeAwaiting => {
                        self.free_role(&mut st);
                        st.home = Home::Busy;
                        return Found::Work(work);
                    }
                    Reader::Awaiting | Reader::Standby
                        if st.for_home.is_none() && matches!(st.home, Home::Idle | Home::Awaiting | Home::Replying) =>
                    {
                        st.for_home = Some(work);
                        if st.home == Home::Awaiting {
                            self.cond.notify_all();
                        }
                        self.free_role(&mut st);
                        return Found::Handed;
                    }
                    Reader::Awaiting => {
                        self.free_role(&mut st);
                        return Found::Work(work);
                    }
                    Reader::Standby => {
                        if let Some(work) = self.queue(&mut st, work) {
                            self.free_role(&mut st);
                            return Found::Work(work);
                        }
                    }
                },
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

    /// Performs a request of the client and sends the reply; false when the
    /// connection failed. On the home thread (`home`), the request counts as
    /// done once its reply is about to go: the client may send its next
    /// request as soon as the reply arrives, and that one does not overlap.
    fn serve(&self, incoming: Incoming, home: bool) -> bool {
        let frame = match incoming {
            Incoming::Request { id, op } => reply_frame(id, self.perform(id, op)),
            Incoming::BadRequest { id, error } => {
                warn!(session = self.id, "{}", error.message);
                reply_frame(id, Err(error))
            }
            _ => return true,
        };
        if home {
            lock(&self.state).home = Home::Replying;
        }
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

    fn perform(&self, id: RequestId, op: Request) -> Result<Value, RemoteException> {
        debug!(session = self.id, op = op.name(), "request");
        match &op {
            Request::SetAttr { name, .. } | Request::DelAttr { name, .. } if !self.server.inner.options.allow_setattr => {
                Err(RemoteException::policy(format!(
                    "{} of attribute `{name}` refused: this server does not allow setting or deleting attributes through proxies \
                     ([policy] allow_setattr = false)",
                    if matches!(op, Request::SetAttr { .. }) { "assignment" } else { "deletion" }
                )))
            }
            _ => self.eval().evaluate_request(id, op),
        }
    }

    /// A request of the server to the client (a callback), from any thread:
    /// sends it, then waits for its reply, reading the connection itself
    /// when no other thread is (serving the client's requests it finds).
    /// On the home thread it also performs the requests handed to it: the
    /// client's nested requests run in the call stack that waits.
    fn call_client(self: &Arc<Self>, op: Request) -> Result<Value, RemoteException> {
        let lost = |why: &str| RemoteException::connection_lost(format!("the client's connection is closed ({why})"));
        let home = std::thread::current().id() == self.home_thread;
        let (id, frame, before) = {
            let mut st = lock(&self.state);
            if let Some(why) = &st.closed {
                return Err(lost(why));
            }
            // Before the request goes: the client's nested requests may come
            // as soon as it arrives, and they are for this thread.
            let before = st.home;
            if home {
                st.home = Home::Awaiting;
            }
            let (id, frame) = st.session.request_owned(op);
            (id, frame, before)
        };
        if let Err(e) = self.send(&frame) {
            self.close(&format!("sending a request to the client failed: {e}"));
        }
        let mut st = lock(&self.state);
        let outcome = loop {
            if let Some(outcome) = st.session.take_reply(id) {
                break outcome;
            }
            if let Some(why) = &st.closed {
                break Err(lost(why));
            }
            let handed = if home { st.for_home.take() } else { None };
            if let Some(work) = handed {
                st.home = Home::Busy;
                drop(st);
                self.serve(work, true);
            } else if st.reading {
                st.awaiting += 1;
                st = wait(&self.cond, st);
                st.awaiting -= 1;
                continue;
            } else {
                st.reading = true;
                drop(st);
                if let Found::Work(work) = self.lead(if home { Reader::HomeAwaiting } else { Reader::Awaiting }, Some(id)) {
                    self.serve(work, home);
                }
            }
            st = lock(&self.state);
            if home {
                st.home = Home::Awaiting;
            }
        };
        if home {
            st.home = before;
        }
        outcome
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Release the session's objects before the connection goes.
        drop(self.eval.take());
    }
}
