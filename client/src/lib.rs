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

mod error;
mod remote;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use farcall_core::handshake::{self, ClientHello, ServerHello};
use farcall_core::session::{release_frame, reply_frame};
use farcall_core::{Connection, Frame, Incoming, RefDesc, RefId, ReleaseQueue, RemoteException, Request, Route, Session, Value};

pub use error::ClientError;
pub use farcall_core::handshake::ServerHello as ServerInfo;
use remote::RefInner;
pub use remote::{Hint, Remote, RemoteObject};

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
        }
    }
}

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often queued releases are sent when the connection is otherwise idle.
const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// A connection to a farcall server.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
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
            }
        });
        Ok(Client { shared })
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

    /// Performs one request and waits for its reply.
    pub fn request(&self, op: Request) -> Result<Remote, ClientError> {
        let value = self.shared.call(op)?.map_err(ClientError::Remote)?;
        self.import(value)
    }

    fn object(&self, inner: Arc<RefInner>) -> RemoteObject {
        RemoteObject { client: self.clone(), inner, path: Arc::from(Vec::new()) }
    }

    /// Turns a received value into a [`Remote`], taking ownership of the
    /// references it carries.
    fn import(&self, v: Value) -> Result<Remote, ClientError> {
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
            Value::ReceiverObject(t) => {
                return Err(ClientError::Protocol(format!("the server referred to client object {} but this client exports none", t.id)))
            }
            Value::List(_) | Value::Dict(_) | Value::Set(_) | Value::Slice(_) | Value::Ellipsis => {
                return Err(ClientError::Protocol("copies, slices and Ellipsis are not supported by this client yet".into()))
            }
        })
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

    /// Marks the connection unusable and wakes every waiter.
    fn fail(&self, why: &str) {
        let mut st = lock(&self.state);
        if st.closed.is_none() {
            st.closed = Some(why.to_owned());
            self.conn.shutdown();
        }
        drop(st);
        self.cond.notify_all();
    }

    fn call(&self, op: Request) -> Result<Result<Value, RemoteException>, ClientError> {
        let (id, frame) = {
            let mut st = lock(&self.state);
            if let Some(why) = &st.closed {
                return Err(ClientError::ConnectionLost(why.clone()));
            }
            st.session.request_owned(op)
        };
        {
            let _order = lock(&self.send_order);
            let batch = self.releases.take();
            if batch.is_empty() {
                self.send(&[&frame])?;
            } else {
                self.send(&[&release_frame(batch), &frame])?;
            }
        }
        self.wait(id)
    }

    /// Waits for the reply to `id`, reading the connection itself when no
    /// other thread is.
    fn wait(&self, id: u64) -> Result<Result<Value, RemoteException>, ClientError> {
        let mut st = lock(&self.state);
        loop {
            if let Some(r) = st.session.take_reply(id) {
                return Ok(r);
            }
            if let Some(why) = &st.closed {
                return Err(ClientError::ConnectionLost(why.clone()));
            }
            if st.reading {
                st.waiters += 1;
                st = self.cond.wait(st).unwrap_or_else(|p| p.into_inner());
                st.waiters -= 1;
                continue;
            }
            st.reading = true;
            drop(st);
            let received = self.conn.recv();
            st = lock(&self.state);
            st.reading = false;
            let answer = match received {
                Ok(body) => match st.session.receive(body) {
                    Ok(Incoming::Request { id: rid, .. }) => Some(reply_frame(
                        rid,
                        Err(RemoteException::protocol("this client does not serve requests (callbacks are not supported yet)")),
                    )),
                    Ok(Incoming::BadRequest { id: rid, error }) => Some(reply_frame(rid, Err(error))),
                    Ok(Incoming::Reply(_) | Incoming::Release(_) | Incoming::Cancel(_) | Incoming::Late { .. }) => None,
                    Err(e) => {
                        drop(st);
                        self.fail(&format!("protocol error from the server: {e}"));
                        st = lock(&self.state);
                        None
                    }
                },
                Err(e) => {
                    drop(st);
                    let why = if e.is_closed() { "the server closed the connection".to_owned() } else { e.to_string() };
                    self.fail(&why);
                    st = lock(&self.state);
                    None
                }
            };
            // Another thread may now read, or has its reply.
            if st.waiters > 0 {
                self.cond.notify_all();
            }
            if let Some(frame) = answer {
                drop(st);
                let _ = self.send(&[&frame]);
                st = lock(&self.state);
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.conn.shutdown();
        self.flusher.unpark();
    }
}
