//! The Rust client of farcall: connect to a server, import its modules, call
//! its functions, hold handles on its objects.
//!
//! ```no_run
//! use farcall_client::{Client, Options};
//!
//! let client = Client::connect("127.0.0.1:1227", &Options::default())?;
//! let math = client.module("math")?;
//! let nine: f64 = math.getattr("pow")?.extract::<farcall_client::RemoteObject>()?
//!     .call(vec![3.into(), 2.into()])?.extract()?;
//! assert_eq!(nine, 9.0);
//! # Ok::<(), farcall_client::ClientError>(())
//! ```
//!
//! A [`Client`] is cheap to clone and may be used from many threads at once.
//! The thread that waits for a reply reads it from the connection itself, so a
//! call costs one network round trip and no thread hand-off; other waiting
//! threads get their replies handed over.
//!
//! # Serving the server (callbacks)
//!
//! The protocol is symmetric: the server may call objects the client passed
//! to it ([`Remote::Export`]). Install a [`Handler`] with
//! [`Client::set_handler`]; a thread waiting for a reply serves the server's
//! requests that arrive meanwhile (nested calls from the handler included),
//! so no background thread is needed. Requests that arrive while no thread
//! waits are served by the next one that does.
//!
//! # Timeouts
//!
//! [`Options::call_timeout`] (or [`Client::set_call_timeout`]) bounds every
//! request; [`Client::request_with_timeout`] bounds one. A request that
//! times out fails with [`ClientError::Timeout`], the server is sent a
//! `cancel`, a late reply is dropped (its references released) and the
//! connection stays usable. While a bounded request waits, a helper thread
//! reads the connection for it (a blocked read cannot be interrupted).

mod error;
mod handler;
mod remote;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use farcall_core::handshake::{self, ClientHello, ServerHello};
use farcall_core::session::{cancel_frame, release_frame, reply_frame, sender_objects};
use farcall_core::{
    Connection, Frame, Incoming, RefDesc, RefId, Release, ReleaseQueue, RemoteException, Request, RequestId, Route, Session, Value,
};

pub use error::ClientError;
pub use farcall_core::handshake::ServerHello as ServerInfo;
pub use handler::{FnHandler, Handler};
use remote::RefInner;
pub use remote::{Hint, Remote, RemoteIter, RemoteObject};

/// How to connect.
#[derive(Debug, Clone)]
pub struct Options {
    /// Limit for connecting and for the handshake (`None`: 30 seconds).
    pub timeout: Option<Duration>,
    /// The largest frame accepted from the server.
    pub max_message_bytes: usize,
    /// How the client introduces itself in the server's logs.
    pub client_name: String,
    /// The receive buffer kept between replies, at most: large replies that
    /// fit are received without faulting in fresh memory each time.
    pub max_retained_buffer: usize,
    /// Certificates for `tls://` and `quic://` (required by those schemes).
    pub tls: Option<TlsOptions>,
    /// The default limit of every request's wait for its reply (`None`: no
    /// limit). See [`Client::set_call_timeout`].
    pub call_timeout: Option<Duration>,
}

/// The client side of mutual TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// The CA that signed the server's certificate (PEM file).
    pub ca: std::path::PathBuf,
    /// This client's certificate (PEM file); servers require one.
    pub cert: Option<std::path::PathBuf>,
    /// Its private key (PEM file).
    pub key: Option<std::path::PathBuf>,
    /// The name to verify the server's certificate against; defaults to the
    /// host part of the address.
    pub server_name: Option<String>,
}

/// ALPN protocol id of farcall over TLS and QUIC.
pub use farcall_tls::ALPN;

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: None,
            max_message_bytes: u32::MAX as usize,
            client_name: format!("farcall-client {}", handshake::FARCALL_VERSION),
            max_retained_buffer: 64 << 20,
            tls: None,
            call_timeout: None,
        }
    }
}

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often queued releases are sent when the connection is otherwise idle.
const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// How long the helper reader idles before its thread ends.
const HELPER_IDLE: Duration = Duration::from_secs(5);
/// [`Shared::call_timeout`] when there is none.
const NO_TIMEOUT: u64 = u64::MAX;

/// A connection to a farcall server. Clones share the connection; it closes
/// when the last clone (and the last [`RemoteObject`] of it) is dropped, or
/// on [`Client::close`].
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    /// Dropping the last clone closes the connection (the internal threads
    /// hold `shared` only).
    _owner: Arc<Owner>,
}

/// Closes the connection when the last [`Client`] clone goes.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.fail("connection closed by the client");
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({} session {})", self.shared.conn.peer(), self.shared.server.session)
    }
}

struct Shared {
    conn: Box<dyn Connection>,
    server: ServerHello,
    /// Held while queued releases are taken and sent, so that releases
    /// always reach the server before any request sent after them.
    send_order: Mutex<()>,
    state: Mutex<State>,
    cond: Condvar,
    releases: Arc<ReleaseQueue>,
    imports: Mutex<Imports>,
    modules: Mutex<HashMap<String, Arc<RefInner>>>,
    flusher: std::thread::Thread,
    /// Performs the server's requests.
    handler: RwLock<Option<Arc<dyn Handler>>>,
    /// The default timeout of requests, in nanoseconds ([`NO_TIMEOUT`]: none).
    call_timeout: AtomicU64,
    /// Wakes the helper reader (see [`State::timed_waiters`]).
    helper_cond: Condvar,
    /// This very `Shared`, for starting the helper reader.
    me: Weak<Shared>,
}

#[derive(Default)]
struct Imports {
    live: HashMap<RefId, Weak<RefInner>>,
    sweep_at: usize,
}

#[derive(Default)]
struct State {
    session: Session,
    /// A thread is inside `conn.recv()`.
    reading: bool,
    /// Threads waiting on `cond`.
    waiters: usize,
    /// Threads waiting for a reply with a deadline. They never read the
    /// connection themselves (a blocked read cannot be interrupted): the
    /// helper reader does while there are any.
    timed_waiters: usize,
    /// Threads inside [`Shared::wait`] (waiting, reading or serving).
    in_wait: usize,
    /// Whether the helper reader thread is running.
    helper: bool,
    /// The server's requests read and not yet taken by a thread to serve.
    requests: VecDeque<(RequestId, Request)>,
    /// The server's releases of this client's objects, handed to the
    /// handler once the reply read with them has been taken (the server may
    /// release an object ahead of the reply that names it, ext 5).
    local_releases: Vec<Release>,
    /// Why the connection is unusable, once it is.
    closed: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Splits `scheme://host:port` or `host:port` (TCP) into scheme and `host:port`.
fn parse_address(address: &str) -> Result<(&str, &str), ClientError> {
    let bad = |reason: &str| ClientError::Address { address: address.into(), reason: reason.into() };
    let (scheme, rest) = match address.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("tcp", address),
    };
    if !rest.contains(':') || rest.ends_with(':') {
        return Err(bad("expected host:port"));
    }
    match scheme {
        "tcp" | "tls" | "quic" => Ok((scheme, rest)),
        _ => Err(bad("unknown scheme; use tcp://, tls:// or quic://")),
    }
}

impl Client {
    /// Connects to `address` (`host:port`, `tcp://`, `tls://` or
    /// `quic://host:port`) and performs the handshake. `tls://` and `quic://`
    /// need [`Options::tls`].
    pub fn connect(address: &str, options: &Options) -> Result<Client, ClientError> {
        let (scheme, hostport) = parse_address(address)?;
        let timeout = Some(options.timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT));
        let (max, retain) = (options.max_message_bytes, options.max_retained_buffer);
        let failed = |source| ClientError::Connect { address: address.into(), source };
        let conn: Box<dyn Connection> = match scheme {
            "tcp" => Box::new(farcall_transport_tcp::TcpConnection::connect(hostport, timeout, max, retain).map_err(failed)?),
            "tls" => {
                let (config, server_name) = tls_config(address, hostport, options)?;
                Box::new(
                    farcall_transport_tcp::TlsConnection::connect(hostport, &server_name, config, timeout, max, retain).map_err(failed)?,
                )
            }
            _ => {
                let (config, server_name) = tls_config(address, hostport, options)?;
                let conn = farcall_transport_quic::QuicConnection::connect(hostport, &server_name, config, timeout, max).map_err(failed)?;
                conn.set_max_retained_buffer(retain);
                Box::new(conn)
            }
        };
        Self::over(conn, options)
    }

    /// Performs the handshake over an established connection of any transport.
    pub fn over(conn: Box<dyn Connection>, options: &Options) -> Result<Client, ClientError> {
        // The connection is not established until the handshake is done: a
        // refusal here (a TLS alert, a closed socket) is a failure to connect.
        let address = conn.peer().to_string();
        let lost = |source: farcall_core::TransportError| ClientError::Connect { address: address.clone(), source };
        conn.set_recv_timeout(Some(options.timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT))).map_err(lost)?;
        let hello = handshake::encode(&ClientHello::new(options.client_name.clone()));
        conn.send(&[&Frame::from_bytes(Route::Oneway, hello.into())]).map_err(lost)?;
        let reply = conn.recv().map_err(lost)?;
        let server = handshake::decode_server_reply(&reply)?;
        conn.set_recv_timeout(None).map_err(lost)?;

        let releases = Arc::new(ReleaseQueue::new());
        let shared = Arc::new_cyclic(|weak: &Weak<Shared>| {
            let me = weak.clone();
            let weak = weak.clone();
            let flusher = std::thread::Builder::new()
                .name("farcall-release".into())
                .spawn(move || flush_loop(weak))
                .expect("spawning the release flusher");
            Shared {
                conn,
                server,
                send_order: Mutex::new(()),
                state: Mutex::new(State::default()),
                cond: Condvar::new(),
                releases,
                imports: Mutex::new(Imports::default()),
                modules: Mutex::new(HashMap::new()),
                flusher: flusher.thread().clone(),
                handler: RwLock::new(None),
                call_timeout: AtomicU64::new(NO_TIMEOUT),
                helper_cond: Condvar::new(),
                me,
            }
        });
        let client = Client { _owner: Arc::new(Owner(shared.clone())), shared };
        client.set_call_timeout(options.call_timeout);
        Ok(client)
    }

    /// Installs the [`Handler`] that performs the server's requests
    /// (callbacks) and receives its releases of this client's objects;
    /// replaces the previous one. Without a handler the server's requests are
    /// answered with a `farcall.ProtocolError`.
    pub fn set_handler(&self, handler: Arc<dyn Handler>) {
        *self.shared.handler.write().unwrap_or_else(|p| p.into_inner()) = Some(handler);
    }

    /// The installed handler, if any.
    pub fn handler(&self) -> Option<Arc<dyn Handler>> {
        self.shared.handler()
    }

    /// A handle on the server object `target` designates, when this client
    /// still holds one for its id (a [`Handler`] returning the server's own
    /// object by its target).
    pub fn object_for(&self, target: &farcall_core::Target) -> Option<RemoteObject> {
        let inner = lock(&self.shared.imports).live.get(&target.id).and_then(Weak::upgrade)?;
        Some(RemoteObject { client: self.clone(), inner, path: Arc::from(target.path.clone()) })
    }

    /// Waits up to `timeout` (`None`: without limit) for requests of the
    /// server (callbacks) and serves them; returns how many it served (0 when
    /// none came in time). Requests that arrive while a thread waits for a
    /// reply are served anyway; this is for the server calling back when no
    /// call is in flight (a callback stored on the server, invoked later by
    /// one of its threads): call it in a loop, or from a thread of your own.
    /// Fails only when the connection is lost.
    pub fn serve(&self, timeout: Option<Duration>) -> Result<usize, ClientError> {
        self.shared.serve_requests(self, timeout)
    }

    /// Removes the handler, if any.
    pub fn clear_handler(&self) {
        self.shared.handler.write().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Sets the default limit of every request's wait (`None`: no limit).
    /// A zero duration is treated as the smallest limit.
    pub fn set_call_timeout(&self, timeout: Option<Duration>) {
        let nanos = timeout.map_or(NO_TIMEOUT, |t| u64::try_from(t.as_nanos()).unwrap_or(NO_TIMEOUT - 1).min(NO_TIMEOUT - 1));
        self.shared.call_timeout.store(nanos, Ordering::Relaxed);
    }

    /// The default limit of every request's wait.
    pub fn call_timeout(&self) -> Option<Duration> {
        match self.shared.call_timeout.load(Ordering::Relaxed) {
            NO_TIMEOUT => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    /// What the server said of itself in the handshake.
    pub fn server(&self) -> &ServerInfo {
        &self.shared.server
    }

    /// Whether two clients are the same connection.
    pub fn same_connection(&self, other: &Client) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// The server's module `name` (imported there), cached per connection.
    pub fn module(&self, name: &str) -> Result<RemoteObject, ClientError> {
        if let Some(why) = &lock(&self.shared.state).closed {
            return Err(ClientError::ConnectionLost(why.clone()));
        }
        if let Some(inner) = lock(&self.shared.modules).get(name) {
            return Ok(self.object(inner.clone()));
        }
        let m: RemoteObject = self.request(Request::GetModule { name: name.into() })?.extract()?;
        lock(&self.shared.modules).entry(name.into()).or_insert_with(|| m.inner.clone());
        Ok(m)
    }

    /// Performs the server's builtin operation `name` (see `BUILTINS` in
    /// `core/PROTOCOL.md`: operators, `len`, `iterate`, `obtain`, `eval`,
    /// ...) on `args`; the server's objects among them go home by
    /// reference, [`Remote::List`], [`Remote::Dict`] and [`Remote::Set`] as
    /// copies.
    pub fn builtin(&self, name: &str, args: Vec<Remote>) -> Result<Remote, ClientError> {
        self.builtin_with_timeout(name, args, None)
    }

    /// [`Client::builtin`] waiting at most `timeout` (`None`: the
    /// connection's default).
    pub fn builtin_with_timeout(&self, name: &str, args: Vec<Remote>, timeout: Option<Duration>) -> Result<Remote, ClientError> {
        let mut keep = Vec::new();
        let args = args.into_iter().map(|a| remote::to_value(self, a, &mut keep)).collect::<Result<_, _>>()?;
        let result = self.request_with_timeout(Request::Builtin { name: name.into(), args }, timeout);
        drop(keep);
        result
    }

    /// `eval(code)` in this connection's namespace on the server.
    pub fn eval(&self, code: &str) -> Result<Remote, ClientError> {
        self.builtin("eval", vec![code.into()])
    }

    /// `exec(code)` in this connection's namespace on the server.
    pub fn execute(&self, code: &str) -> Result<(), ClientError> {
        self.builtin("execute", vec![code.into()]).map(drop)
    }

    /// This connection's namespace on the server (a dict, by reference): what
    /// [`Client::eval`] and [`Client::execute`] see.
    pub fn namespace(&self) -> Result<RemoteObject, ClientError> {
        self.builtin("namespace", Vec::new())?.extract()
    }

    /// The server's `builtins` module.
    pub fn builtins(&self) -> Result<RemoteObject, ClientError> {
        self.module("builtins")
    }

    /// A copy of the server's object: scalars, tuples, frozensets, lists,
    /// dicts and sets, nested (a `TypeError` from the server names what
    /// cannot be copied and where).
    pub fn obtain(&self, object: &RemoteObject) -> Result<Remote, ClientError> {
        self.builtin("obtain", vec![Remote::Object(object.clone())])
    }

    /// Makes a new object on the server from a value (copies become new
    /// lists, dicts and sets) and returns it (by reference when it is not a
    /// plain value).
    pub fn deliver(&self, value: Remote) -> Result<Remote, ClientError> {
        self.builtin("deliver", vec![value])
    }

    /// Rebuilds the function `name` from its Python `source` on the server
    /// (no globals, closure or defaults shipped: imports inside it resolve on
    /// the server) and returns it, callable. Use `"<lambda>"` as `name` for
    /// the only lambda of `source`.
    pub fn teleport_source(&self, source: &str, name: &str) -> Result<RemoteObject, ClientError> {
        let empty = || Remote::Dict(Vec::new());
        let payload = Remote::Dict(vec![
            ("name".into(), name.into()),
            ("source".into(), source.into()),
            ("globals".into(), empty()),
            ("modules".into(), empty()),
            ("defaults".into(), Remote::None),
            ("kwdefaults".into(), Remote::None),
            ("closure".into(), empty()),
        ]);
        self.builtin("teleport", vec!["source".into(), payload])?.extract()
    }

    /// `(live objects, objects ever exported)` of this session's table on the server.
    pub fn stats(&self) -> Result<(i64, i64), ClientError> {
        match self.request(Request::Stats)? {
            Remote::Tuple(t) if t.len() == 2 => {
                let mut it = t.into_iter();
                Ok((it.next().unwrap_or(Remote::None).extract()?, it.next().unwrap_or(Remote::None).extract()?))
            }
            other => Err(ClientError::Protocol(format!("stats reply is {}", other.kind()))),
        }
    }

    /// Sends queued releases now and waits until the server has applied
    /// them (they also go out with the next request, or within a few tens of
    /// milliseconds when the connection is idle).
    pub fn flush_releases(&self) -> Result<(), ClientError> {
        // A request carries the queued releases ahead of it, on the same
        // stream, and the server applies them before serving it.
        self.request(Request::Stats).map(drop)
    }

    /// Closes the connection; idempotent. Calls in flight fail with
    /// [`ClientError::ConnectionLost`].
    pub fn close(&self) {
        self.shared.fail("connection closed by the client");
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        lock(&self.shared.state).closed.is_some()
    }

    /// Performs one request and waits for its reply (at most the
    /// connection's [call timeout](Client::set_call_timeout)).
    pub fn request(&self, op: Request) -> Result<Remote, ClientError> {
        self.request_with_timeout(op, None)
    }

    /// Performs one request and waits for its reply at most `timeout`
    /// (`None`: the connection's default). On expiry the request is
    /// cancelled and [`ClientError::Timeout`] returned; the connection stays
    /// usable.
    pub fn request_with_timeout(&self, op: Request, timeout: Option<Duration>) -> Result<Remote, ClientError> {
        let result = self.shared.call(self, op, timeout.or_else(|| self.call_timeout()));
        let imported = match result {
            Ok(Ok(value)) => self.import(value),
            Ok(Err(e)) => Err(ClientError::Remote(e)),
            Err(e) => Err(e),
        };
        // After the reply is imported: a release read ahead of it may be of
        // an object the reply names.
        self.shared.release_local();
        imported
    }

    fn object(&self, inner: Arc<RefInner>) -> RemoteObject {
        RemoteObject { client: self.clone(), inner, path: Arc::from(Vec::new()) }
    }

    /// Turns a received value into a [`Remote`], taking ownership of the
    /// references it carries: the server's objects (ext 4) become
    /// [`RemoteObject`]s, released when their last handle goes; this
    /// client's own objects (ext 5) become [`Remote::Local`]. A
    /// [`Handler`] converts the fields of the server's requests with it.
    pub fn import(&self, v: Value) -> Result<Remote, ClientError> {
        Ok(match v {
            Value::None => Remote::None,
            Value::Bool(b) => Remote::Bool(b),
            Value::Int(i) => Remote::Int(i),
            Value::BigInt(b) => Remote::BigInt(b),
            Value::Float(f) => Remote::Float(f),
            Value::Complex(a, b) => Remote::Complex(a, b),
            Value::Str(s) => Remote::Str(s),
            Value::Bytes(b) => Remote::Bytes(b),
            Value::Tuple(t) => Remote::Tuple(t.into_iter().map(|x| self.import(x)).collect::<Result<_, _>>()?),
            Value::FrozenSet(t) => Remote::FrozenSet(t.into_iter().map(|x| self.import(x)).collect::<Result<_, _>>()?),
            Value::SenderObject(desc) => Remote::Object(self.object(self.shared.adopt(desc))),
            Value::ReceiverObject(t) => Remote::Local(t),
            Value::List(t) => Remote::List(self.import_all(t)?),
            Value::Set(t) => Remote::Set(self.import_all(t)?),
            Value::Dict(pairs) => {
                Remote::Dict(pairs.into_iter().map(|(k, v)| Ok((self.import(k)?, self.import(v)?))).collect::<Result<_, ClientError>>()?)
            }
            Value::Slice(parts) => {
                let [a, b, c] = *parts;
                Remote::Slice(Box::new([self.import(a)?, self.import(b)?, self.import(c)?]))
            }
            Value::Ellipsis => Remote::Ellipsis,
        })
    }

    fn import_all(&self, items: Vec<Value>) -> Result<Vec<Remote>, ClientError> {
        items.into_iter().map(|x| self.import(x)).collect()
    }
}

/// The rustls client configuration and the name to verify for a TLS or QUIC address.
fn tls_config(address: &str, hostport: &str, options: &Options) -> Result<(Arc<rustls::ClientConfig>, String), ClientError> {
    let Some(tls) = &options.tls else {
        return Err(ClientError::Address {
            address: address.into(),
            reason: "tls:// and quic:// need TLS options: `ca` (the CA of the server's certificate), and `cert` and `key` (this client's certificate)".into(),
        });
    };
    let files = farcall_tls::ClientTlsFiles { ca: tls.ca.clone(), cert: tls.cert.clone(), key: tls.key.clone() };
    let config = files.load(&[ALPN]).map_err(|e| ClientError::Tls(e.to_string()))?;
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    let name = tls.server_name.clone().unwrap_or_else(|| host.trim_start_matches('[').trim_end_matches(']').to_owned());
    Ok((config, name))
}

/// Reads the connection for threads that wait with a deadline, while there
/// are any and nobody else reads; ends after idling a while.
fn helper_loop(shared: Arc<Shared>) {
    let mut st = lock(&shared.state);
    loop {
        if st.closed.is_some() {
            break;
        }
        if st.timed_waiters > 0 && !st.reading {
            st = shared.read_one(st);
            continue;
        }
        let (guard, timeout) = shared.helper_cond.wait_timeout(st, HELPER_IDLE).unwrap_or_else(|p| p.into_inner());
        st = guard;
        if timeout.timed_out() && st.timed_waiters == 0 {
            break;
        }
    }
    st.helper = false;
}

fn flush_loop(weak: Weak<Shared>) {
    loop {
        std::thread::park_timeout(FLUSH_INTERVAL);
        let Some(shared) = weak.upgrade() else { return };
        if lock(&shared.state).closed.is_some() {
            return;
        }
        let _ = shared.flush_releases();
    }
}

impl Shared {
    /// Records one more reception of `desc`, reusing the live handle if any.
    fn adopt(&self, desc: RefDesc) -> Arc<RefInner> {
        let mut imports = lock(&self.imports);
        if let Some(inner) = imports.live.get(&desc.id).and_then(Weak::upgrade) {
            inner.received.fetch_add(1, Ordering::Relaxed);
            return inner;
        }
        let id = desc.id;
        let inner = Arc::new(RefInner { desc, received: 1.into(), releases: self.releases.clone(), flusher: self.flusher.clone() });
        imports.live.insert(id, Arc::downgrade(&inner));
        if imports.live.len() >= imports.sweep_at {
            imports.live.retain(|_, w| w.strong_count() > 0);
            imports.sweep_at = (imports.live.len() * 2).max(1024);
        }
        inner
    }

    fn flush_releases(&self) -> Result<(), ClientError> {
        let _order = lock(&self.send_order);
        let batch = self.releases.take();
        if batch.is_empty() {
            return Ok(());
        }
        self.send(&[&release_frame(batch)])
    }

    fn send(&self, frames: &[&Frame]) -> Result<(), ClientError> {
        self.conn.send(frames).map_err(|e| {
            let why = format!("sending failed: {e}");
            self.fail(&why);
            ClientError::ConnectionLost(why)
        })
    }

    /// Sends `frame` preceded by the queued releases, so that they reach the
    /// server before it.
    fn send_after_releases(&self, frame: &Frame) -> Result<(), ClientError> {
        let _order = lock(&self.send_order);
        let batch = self.releases.take();
        if batch.is_empty() {
            self.send(&[frame])
        } else {
            self.send(&[&release_frame(batch), frame])
        }
    }

    /// Marks the connection unusable and wakes every waiter.
    fn fail(&self, why: &str) {
        let mut st = lock(&self.state);
        if st.closed.is_none() {
            st.closed = Some(why.to_owned());
            self.conn.shutdown();
        }
        drop(st);
        self.cond.notify_all();
        self.helper_cond.notify_all();
    }

    fn call(&self, client: &Client, op: Request, timeout: Option<Duration>) -> Result<Result<Value, RemoteException>, ClientError> {
        let (id, frame) = {
            let mut st = lock(&self.state);
            if let Some(why) = &st.closed {
                return Err(ClientError::ConnectionLost(why.clone()));
            }
            st.session.request_owned(op)
        };
        let deadline = timeout.map(|t| (Instant::now().checked_add(t), t));
        if let Err(e) = self.send_after_releases(&frame) {
            lock(&self.state).session.abandon(id);
            return Err(e);
        }
        self.wait(client, id, deadline)
    }

    /// Waits for the reply to `id`, reading the connection itself when no
    /// other thread is (and it has no deadline), and serving the server's
    /// requests that arrive meanwhile.
    fn wait(
        &self,
        client: &Client,
        id: RequestId,
        deadline: Option<(Option<Instant>, Duration)>,
    ) -> Result<Result<Value, RemoteException>, ClientError> {
        let mut st = lock(&self.state);
        st.in_wait += 1;
        let result = loop {
            if let Some(r) = st.session.take_reply(id) {
                // The last thread to leave serves what is left, so that no
                // request of the server waits for a caller that may never come.
                while st.in_wait == 1 {
                    let Some((rid, op)) = st.requests.pop_front() else { break };
                    drop(st);
                    self.serve(client, rid, op);
                    st = lock(&self.state);
                }
                break Ok(r);
            }
            if let Some(why) = st.closed.clone() {
                st.session.abandon(id);
                break Err(ClientError::ConnectionLost(why));
            }
            if let Some((rid, op)) = st.requests.pop_front() {
                drop(st);
                self.serve(client, rid, op);
                st = lock(&self.state);
                continue;
            }
            if let Some((at, limit)) = deadline {
                let left = at.map(|at| at.saturating_duration_since(Instant::now()));
                if left == Some(Duration::ZERO) {
                    if let Some(r) = st.session.abandon(id) {
                        break Ok(r);
                    }
                    drop(st);
                    // Advisory: the server stops the work where it can; its
                    // late reply is dropped by `read_one`.
                    let _ = self.send_after_releases(&cancel_frame(id));
                    st = lock(&self.state);
                    break Err(ClientError::Timeout(limit));
                }
                st = self.wait_while_helper_reads(st, left);
                continue;
            }
            if st.reading {
                st.waiters += 1;
                st = self.cond.wait(st).unwrap_or_else(|p| p.into_inner());
                st.waiters -= 1;
                continue;
            }
            st = self.read_one(st);
        };
        st.in_wait -= 1;
        result
    }

    /// Waits, the helper thread reading for this thread (a blocked read
    /// cannot be interrupted when `left` runs out), until the state changes
    /// or `left` (None: no limit) passes.
    fn wait_while_helper_reads<'a>(&self, mut st: MutexGuard<'a, State>, left: Option<Duration>) -> MutexGuard<'a, State> {
        st.timed_waiters += 1;
        st.waiters += 1;
        if !st.reading {
            self.wake_helper(&mut st);
        }
        st = match left {
            Some(left) => self.cond.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0,
            None => self.cond.wait(st).unwrap_or_else(|p| p.into_inner()),
        };
        st.waiters -= 1;
        st.timed_waiters -= 1;
        st
    }

    fn serve_requests(&self, client: &Client, timeout: Option<Duration>) -> Result<usize, ClientError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut served = 0;
        let mut st = lock(&self.state);
        st.in_wait += 1;
        let result = loop {
            if let Some((rid, op)) = st.requests.pop_front() {
                drop(st);
                self.serve(client, rid, op);
                served += 1;
                st = lock(&self.state);
                continue;
            }
            if served > 0 {
                break Ok(served);
            }
            if let Some(why) = st.closed.clone() {
                break Err(ClientError::ConnectionLost(why));
            }
            let left = deadline.map(|at| at.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                break Ok(0);
            }
            // Waits like a request with a deadline: the helper reads.
            st = self.wait_while_helper_reads(st, left);
        };
        st.in_wait -= 1;
        drop(st);
        self.release_local();
        result
    }

    /// Has the helper reader read for the timed waiters, starting it if needed.
    fn wake_helper(&self, st: &mut State) {
        if st.helper {
            self.helper_cond.notify_one();
            return;
        }
        // The helper holds the shared state; it needs an owning handle.
        let Some(me) = self.me.upgrade() else { return };
        st.helper = true;
        let spawned = std::thread::Builder::new().name("farcall-reader".into()).spawn(move || helper_loop(me));
        if spawned.is_err() {
            st.helper = false;
        }
    }

    /// Reads one frame (taking the reading role for that time) and dispatches
    /// it: replies are stored for their waiters, the server's requests queued
    /// for a waiting thread to serve, releases handed to the handler.
    fn read_one<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        st.reading = true;
        drop(st);
        let received = self.conn.recv();
        st = lock(&self.state);
        st.reading = false;
        let mut answer = None;
        let mut late = Vec::new();
        match received {
            Ok(body) => match st.session.receive(body) {
                Ok(Incoming::Request { id, op }) => st.requests.push_back((id, op)),
                Ok(Incoming::BadRequest { id, error }) => answer = Some(reply_frame(id, Err(error))),
                Ok(Incoming::Release(refs)) => st.local_releases.extend(refs),
                Ok(Incoming::Late { result: Ok(v), .. }) => late = sender_objects(&v),
                Ok(Incoming::Reply(_) | Incoming::Cancel(_) | Incoming::Late { result: Err(_), .. }) => {}
                Err(e) => {
                    drop(st);
                    self.fail(&format!("protocol error from the server: {e}"));
                    st = lock(&self.state);
                }
            },
            Err(e) => {
                drop(st);
                let why = if e.is_closed() { "the server closed the connection".to_owned() } else { e.to_string() };
                self.fail(&why);
                st = lock(&self.state);
            }
        }
        // A late reply nobody takes: give back the references it carries
        // (before anyone sends again).
        for r in late {
            self.releases.push(r.id, r.count);
        }
        // Another thread may now read, has its reply, or can serve a request.
        if st.waiters > 0 {
            self.cond.notify_all();
        }
        if st.timed_waiters > 0 {
            self.helper_cond.notify_one();
        }
        let Some(frame) = answer else { return st };
        drop(st);
        let _ = self.send_after_releases(&frame);
        lock(&self.state)
    }

    fn handler(&self) -> Option<Arc<dyn Handler>> {
        self.handler.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Hands the server's releases of this client's objects to the handler.
    fn release_local(&self) {
        let refs = std::mem::take(&mut lock(&self.state).local_releases);
        if refs.is_empty() {
            return;
        }
        if let Some(h) = self.handler() {
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.release(&refs))) {
                tracing::error!("the client's handler panicked releasing objects: {}", panic_message(&panic));
            }
        }
    }

    /// Performs the server's request `id` with the handler and sends the reply.
    fn serve(&self, client: &Client, id: RequestId, op: Request) {
        let outcome = match self.handler() {
            None => Err(RemoteException::protocol(format!(
                "the client serves no requests ({} refused): it has no handler installed for callbacks",
                op.name()
            ))),
            Some(h) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.handle(client, op))) {
                Ok(r) => r,
                Err(panic) => Err(RemoteException::new(
                    "farcall",
                    "InternalError",
                    format!("the client's handler panicked: {}", panic_message(&panic)),
                )),
            },
        };
        let mut keep = Vec::new();
        let outcome = outcome.and_then(|r| {
            remote::to_value(client, r, &mut keep)
                .map_err(|e| RemoteException::protocol(format!("the client's handler returned a value it cannot send: {e}")))
        });
        let _ = self.send_after_releases(&reply_frame(id, outcome));
        drop(keep);
        self.release_local();
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_else(|| "?".into())
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.conn.shutdown();
        self.flusher.unpark();
    }
}
