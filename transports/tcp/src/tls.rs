//! `tls://`: farcall frames over TLS 1.3 over TCP, with blocking I/O and
//! rustls's synchronous API. See the crate docs for the rules and the design.

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use farcall_core::framing::{FrameError, FrameReader};
use farcall_core::{Connection, Frame, Listener, PeerInfo, TransportError};
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError, ClientConfig, ServerConfig};

use crate::SERVER_MAX_RETAINED;

/// How long a TLS handshake may take: on an accepted connection counted from
/// its first use, on [`TlsConnection::connect`] when no timeout is given.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Encrypted bytes read from the socket per system call, at most.
const RAW_BUFFER: usize = 128 << 10;
/// Plaintext encrypted per acquisition of the TLS state lock when sending;
/// the records are written to the socket after the lock is released.
const SEND_PIECE: usize = 256 << 10;
/// Slices handed to rustls per acquisition of the state lock, at most.
const SEND_SLICES: usize = 256;
/// How long a server keeps reading (and discarding) after refusing a
/// handshake, so that its alert is not destroyed by a TCP reset.
const LINGER: Duration = Duration::from_millis(500);
/// Bound on best-effort writes of alerts on a connection that is failing.
const ALERT_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ------------------------------------------------------------------ errors

/// A TLS protocol failure: rustls's reason, and what it most likely means
/// for a farcall deployment when that can be told.
///
/// Errors of [`TlsConnection`] and [`TlsListener`] carry it as the source of
/// a [`TransportError::Io`] (kind `InvalidData`); reach it with
/// `source.get_ref().and_then(|e| e.downcast_ref::<TlsFailure>())`.
#[derive(Debug, Clone)]
pub struct TlsFailure {
    error: rustls::Error,
    hint: Option<&'static str>,
}

impl TlsFailure {
    /// rustls's error.
    pub fn error(&self) -> &rustls::Error {
        &self.error
    }

    /// What the error most likely means, in farcall's terms.
    pub fn hint(&self) -> Option<&'static str> {
        self.hint
    }

    fn new(error: rustls::Error, server: bool) -> Self {
        let hint = hint(&error, server);
        TlsFailure { error, hint }
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)?;
        if let Some(h) = self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

// The rustls error is part of the message rather than the `source`, so
// that error reports do not print it twice; see `TlsFailure::error`.
impl std::error::Error for TlsFailure {}

/// What a rustls error means for farcall, seen from a server (`server`) or
/// a client.
fn hint(e: &rustls::Error, server: bool) -> Option<&'static str> {
    use rustls::Error as E;
    Some(match e {
        E::InvalidCertificate(c) => match (c, server) {
            (CertificateError::UnknownIssuer, true) => "the client's certificate is not signed by this server's client_ca",
            (CertificateError::UnknownIssuer, false) => "the server's certificate is not signed by the CA this client trusts (`ca`)",
            (CertificateError::Expired | CertificateError::ExpiredContext { .. }, true) => {
                "the client's certificate has expired; issue a new one with `farcall certs`"
            }
            (CertificateError::Expired | CertificateError::ExpiredContext { .. }, false) => {
                "the server's certificate has expired; issue a new one with `farcall certs`"
            }
            (CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }, _) => {
                "the peer's certificate is not valid yet: check both machines' clocks"
            }
            (CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }, _) => {
                "the server's certificate does not hold the name dialled: dial a name it holds, \
                 set `server_name`, or reissue it with that name (`farcall certs --server-name`)"
            }
            #[allow(deprecated)]
            (CertificateError::BadSignature, true) => {
                "the client's certificate does not verify against this server's client_ca: \
                 signed by another CA of the same name? (give each CA its own name)"
            }
            #[allow(deprecated)]
            (CertificateError::BadSignature, false) => {
                "the server's certificate does not verify against the CA this client trusts: \
                 signed by another CA of the same name? (give each CA its own name)"
            }
            (CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }, _) => {
                "the peer's certificate is not made for this role (a client certificate used \
                 by a server, or the reverse)"
            }
            _ => return None,
        },
        E::NoCertificatesPresented if server => "the client presented no certificate; this server requires one signed by its client_ca",
        E::AlertReceived(a) => match a {
            AlertDescription::CertificateRequired => "the server requires a client certificate: give the client `cert` and `key`",
            AlertDescription::UnknownCA if !server => "the server does not trust the CA that signed this client's certificate",
            AlertDescription::UnknownCA => "the client does not trust the CA that signed this server's certificate",
            AlertDescription::CertificateExpired if !server => "the server says this client's certificate has expired or is not valid yet",
            AlertDescription::CertificateExpired => "the client says this server's certificate has expired or is not valid yet",
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError => {
                if server {
                    "the client refused this server's certificate"
                } else {
                    "the server refused this client's certificate"
                }
            }
            AlertDescription::HandshakeFailure | AlertDescription::ProtocolVersion => {
                "no TLS version or cipher suite in common (farcall speaks TLS 1.3 only)"
            }
            _ => return None,
        },
        _ => return None,
    })
}

/// A failure kept to be reported to every later caller (TransportError is
/// not `Clone`).
#[derive(Debug, Clone)]
struct Failure {
    context: String,
    kind: io::ErrorKind,
    tls: Option<Box<TlsFailure>>,
    message: String,
}

impl Failure {
    fn tls(context: &str, f: TlsFailure) -> Self {
        Failure { context: context.to_owned(), kind: io::ErrorKind::InvalidData, message: String::new(), tls: Some(Box::new(f)) }
    }

    fn io(context: &str, kind: io::ErrorKind, message: impl Into<String>) -> Self {
        Failure { context: context.to_owned(), kind, tls: None, message: message.into() }
    }

    fn to_error(&self) -> TransportError {
        let source = match &self.tls {
            Some(t) => io::Error::new(self.kind, (**t).clone()),
            None => io::Error::new(self.kind, self.message.clone()),
        };
        TransportError::io(self.context.clone(), source)
    }
}

fn is_closed_kind(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
    )
}

fn is_timeout(kind: io::ErrorKind) -> bool {
    matches!(kind, io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Whether `b` starts like a TLS record (content type, then major version 3).
fn looks_like_tls(b: &[u8]) -> bool {
    matches!(b, [0x14..=0x17, 0x03, ..])
}

fn hex_prefix(b: &[u8]) -> String {
    b.iter().take(8).map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

// -------------------------------------------------------------- connection

/// Encrypted bytes read from the socket and not yet handed to rustls.
struct Inbound {
    stream: TcpStream,
    raw: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
}

impl Inbound {
    fn buffered(&self) -> bool {
        self.start < self.end
    }

    /// One read from the socket into the (empty) raw buffer.
    fn fill(&mut self) -> io::Result<usize> {
        debug_assert!(!self.buffered());
        self.start = 0;
        self.end = 0;
        let n = self.stream.read(&mut self.raw)?;
        self.end = n;
        self.eof |= n == 0;
        Ok(n)
    }

    /// Hands the buffered bytes to rustls and processes the records they
    /// complete. Returns whether any byte was taken.
    fn feed(&mut self, tls: &mut rustls::Connection) -> Result<bool, rustls::Error> {
        let before = self.start;
        while self.buffered() {
            match tls.read_tls(&mut &self.raw[self.start..self.end]) {
                // rustls takes nothing after the peer's close_notify.
                Ok(0) => {
                    self.start = self.end;
                    break;
                }
                Ok(n) => self.start += n,
                // Its record buffer is full: process what it holds first.
                Err(_) => break,
            }
        }
        tls.process_new_packets()?;
        Ok(self.start > before)
    }
}

/// The receiving side: held by the thread inside `recv`.
struct RecvSide {
    frames: FrameReader,
    inbound: Inbound,
}

/// The sending side: held while records are written to the socket, so
/// that records reach the socket in the order they were encrypted.
struct SendSide {
    stream: TcpStream,
    /// Encrypted records waiting to be written (reused between sends).
    buf: Vec<u8>,
}

/// Which side of the handshake this connection plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Client,
    Server,
}

/// A farcall connection over TLS 1.3 over one TCP stream.
///
/// Made by [`TlsConnection::connect`] (the handshake completes before it
/// returns) or by [`TlsListener::accept`] (the handshake completes on first
/// use, see [`TlsConnection::handshake`]). Full duplex: one thread may be
/// inside [`Connection::recv`] while others [`Connection::send`], and
/// neither ever waits for the socket while holding the TLS state.
pub struct TlsConnection {
    /// rustls's state; never held while blocking on the socket.
    state: Mutex<rustls::Connection>,
    recv: Mutex<RecvSide>,
    send: Mutex<SendSide>,
    /// For shutdown and timeouts, without taking the other locks.
    control: TcpStream,
    role: Role,
    /// The peer before the handshake (address only).
    address: PeerInfo,
    /// The handshake's outcome: the authenticated peer, or why it failed.
    established: OnceLock<Result<PeerInfo, Failure>>,
    handshake_timeout: Duration,
    /// The timeout asked for by `set_recv_timeout`, and whether it is
    /// applied to the socket (it is not while the handshake runs).
    recv_timeout: Mutex<(Option<Duration>, bool)>,
    /// Why the TLS session failed after the handshake (a fatal alert), for
    /// senders that only see a closed socket.
    failure: Mutex<Option<Failure>>,
    shut: AtomicBool,
}

impl fmt::Debug for TlsConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnection")
            .field("role", &self.role)
            .field("peer", self.peer_now())
            .field("established", &self.established.get().map(|r| r.is_ok()))
            .finish_non_exhaustive()
    }
}

impl TlsConnection {
    fn new(
        stream: TcpStream,
        tls: rustls::Connection,
        role: Role,
        max_frame: usize,
        max_retained: usize,
        handshake_timeout: Duration,
    ) -> Result<Self, TransportError> {
        let io = |e| TransportError::io("setting up the TCP stream", e);
        stream.set_nodelay(true).map_err(io)?;
        let address = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
        Ok(TlsConnection {
            state: Mutex::new(tls),
            recv: Mutex::new(RecvSide {
                frames: FrameReader::new(max_frame, max_retained),
                inbound: Inbound {
                    stream: stream.try_clone().map_err(io)?,
                    raw: vec![0u8; RAW_BUFFER].into_boxed_slice(),
                    start: 0,
                    end: 0,
                    eof: false,
                },
            }),
            send: Mutex::new(SendSide { stream: stream.try_clone().map_err(io)?, buf: Vec::new() }),
            control: stream,
            role,
            address: PeerInfo { transport: "tls", address, identity: None },
            established: OnceLock::new(),
            handshake_timeout,
            recv_timeout: Mutex::new((None, false)),
            failure: Mutex::new(None),
            shut: AtomicBool::new(false),
        })
    }

    /// Connects to `addr` (`host:port`) and completes the TLS handshake,
    /// verifying the server's certificate for `server_name` (a DNS name or
    /// an IP address) and presenting the client certificate of `config`.
    ///
    /// `timeout` bounds the TCP connection and the handshake together
    /// (`None`: the system's connect timeout, then
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`] for the handshake).
    ///
    /// A server refusing this client's certificate is not seen here: in
    /// TLS 1.3 the client finishes its handshake before the server has
    /// checked its certificate, so the refusal (a fatal alert, reported with
    /// what it means) is the error of the first `recv` (or a later `send`).
    pub fn connect(
        addr: &str,
        server_name: &str,
        config: Arc<ClientConfig>,
        timeout: Option<Duration>,
        max_frame: usize,
        max_retained: usize,
    ) -> Result<Self, TransportError> {
        let started = Instant::now();
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| TransportError::Config(format!("`{server_name}` is not usable as a TLS server name: {e}")))?;
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(|e| TransportError::io(format!("resolving {addr}"), e))?.collect();
        let mut last = None;
        let mut stream = None;
        for a in &addrs {
            let attempt = match timeout {
                Some(t) => TcpStream::connect_timeout(a, t.saturating_sub(started.elapsed())),
                None => TcpStream::connect(a),
            };
            match attempt {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(stream) = stream else {
            return Err(TransportError::io(
                format!("connecting to tls://{addr}"),
                last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")),
            ));
        };
        let tls = rustls::ClientConnection::new(config, name)
            .map_err(|e| TransportError::Config(format!("the TLS client configuration is not usable: {e}")))?;
        let handshake_timeout = match timeout {
            Some(t) => t.saturating_sub(started.elapsed()).max(Duration::from_millis(1)),
            None => DEFAULT_HANDSHAKE_TIMEOUT,
        };
        let conn = Self::new(stream, tls.into(), Role::Client, max_frame, max_retained, handshake_timeout)?;
        conn.handshake()?;
        Ok(conn)
    }

    /// Wraps a freshly accepted TCP stream as the server side of a TLS
    /// connection; the handshake runs on first use (see
    /// [`TlsConnection::handshake`]).
    pub fn accept_stream(
        stream: TcpStream,
        config: Arc<ServerConfig>,
        max_frame: usize,
        max_retained: usize,
        handshake_timeout: Duration,
    ) -> Result<Self, TransportError> {
        let tls = rustls::ServerConnection::new(config)
            .map_err(|e| TransportError::Config(format!("the TLS server configuration is not usable: {e}")))?;
        Self::new(stream, tls.into(), Role::Server, max_frame, max_retained, handshake_timeout)
    }

    /// Completes the TLS handshake if it is not yet done and returns the
    /// authenticated peer; every later call returns the same outcome.
    ///
    /// A connection made by [`TlsConnection::connect`] is already
    /// established. On one from [`TlsListener::accept`] the handshake runs
    /// here, on the calling thread, bounded by the listener's handshake
    /// timeout: `send`, `recv` and `peer` call it first, so that the
    /// thread accepting connections never waits for a peer's handshake.
    /// Concurrent callers wait for the one running it.
    pub fn handshake(&self) -> Result<&PeerInfo, TransportError> {
        match self.established.get_or_init(|| self.run_handshake()) {
            Ok(p) => Ok(p),
            Err(_) if self.shut.load(Ordering::SeqCst) => Err(TransportError::Closed),
            Err(f) => Err(f.to_error()),
        }
    }

    /// The peer as known now (without waiting for the handshake).
    fn peer_now(&self) -> &PeerInfo {
        match self.established.get() {
            Some(Ok(p)) => p,
            _ => &self.address,
        }
    }

    fn context(&self, what: &str) -> String {
        format!("{what} {}", self.address.address)
    }

    fn run_handshake(&self) -> Result<PeerInfo, Failure> {
        let context = self.context("TLS handshake with");
        let mut recv = lock(&self.recv);
        let mut send = lock(&self.send);
        let mut state = lock(&self.state);
        let deadline = Instant::now() + self.handshake_timeout;
        let outcome = self.drive_handshake(&context, &mut state, &mut recv.inbound, &mut send, deadline);
        if outcome.is_err() && self.role == Role::Server && !self.shut.load(Ordering::SeqCst) {
            linger(&send.stream, &mut recv.inbound);
        }
        let _ = self.control.set_write_timeout(None);
        {
            let mut t = lock(&self.recv_timeout);
            let _ = self.control.set_read_timeout(t.0);
            t.1 = true;
        }
        match outcome {
            Ok(()) => {
                // The frames of one send are encrypted in pieces of bounded
                // size; rustls need not limit its own buffer.
                state.set_buffer_limit(None);
                Ok(PeerInfo { identity: state.peer_certificates().and_then(farcall_tls::peer_identity), ..self.address.clone() })
            }
            Err(f) => Err(f),
        }
    }

    /// Runs the handshake to completion with exclusive access to everything.
    fn drive_handshake(
        &self,
        context: &str,
        state: &mut rustls::Connection,
        inbound: &mut Inbound,
        send: &mut SendSide,
        deadline: Instant,
    ) -> Result<(), Failure> {
        let server = self.role == Role::Server;
        let peer_kind = if server { "client" } else { "server" };
        let timed_out = || {
            Failure::io(
                context,
                io::ErrorKind::TimedOut,
                format!("the {peer_kind} did not complete the TLS handshake within {:?}", self.handshake_timeout),
            )
        };
        let remaining = || deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero());
        let mut first = true;
        loop {
            if state.wants_write() {
                let Some(left) = remaining() else {
                    return Err(timed_out());
                };
                send.buf.clear();
                while state.wants_write() {
                    let _ = state.write_tls(&mut send.buf);
                }
                let _ = send.stream.set_write_timeout(Some(left));
                if let Err(e) = send.stream.write_all(&send.buf) {
                    return Err(if is_timeout(e.kind()) { timed_out() } else { self.lost_in_handshake(context, e.kind(), &e.to_string()) });
                }
                send.buf.clear();
            }
            if !state.is_handshaking() {
                return Ok(());
            }
            if inbound.buffered() {
                if first {
                    first = false;
                    let head = &inbound.raw[inbound.start..inbound.end];
                    // A client's first record is a handshake; a server's
                    // may also be an alert.
                    let expected = match head {
                        [b, ..] if server => *b == 0x16,
                        [b] => (0x14..=0x17).contains(b),
                        _ => looks_like_tls(head),
                    };
                    if !expected {
                        let message = if server {
                            format!(
                                "the client did not start a TLS handshake (its first bytes: {}): \
                                 a plain tcp:// client talking to this tls:// port?",
                                hex_prefix(head)
                            )
                        } else {
                            format!(
                                "the server did not answer with TLS (its first bytes: {}): \
                                 not a tls:// port (a plain tcp:// farcall server?)",
                                hex_prefix(head)
                            )
                        };
                        // Let rustls answer with its alert, which a farcall
                        // peer recognises as TLS.
                        let _ = inbound.feed(state);
                        send_alert(state, send);
                        return Err(Failure::io(context, io::ErrorKind::InvalidData, message));
                    }
                }
                if let Err(e) = inbound.feed(state) {
                    send_alert(state, send);
                    return Err(Failure::tls(context, TlsFailure::new(e, server)));
                }
                continue;
            }
            if inbound.eof {
                return Err(self.lost_in_handshake(context, io::ErrorKind::UnexpectedEof, "connection closed"));
            }
            let Some(left) = remaining() else {
                return Err(timed_out());
            };
            let _ = inbound.stream.set_read_timeout(Some(left));
            match inbound.fill() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(e.kind()) => return Err(timed_out()),
                Err(e) => return Err(self.lost_in_handshake(context, e.kind(), &e.to_string())),
            }
        }
    }

    /// The connection ended (or failed) in the middle of the handshake.
    fn lost_in_handshake(&self, context: &str, kind: io::ErrorKind, what: &str) -> Failure {
        let message = if self.shut.load(Ordering::SeqCst) {
            format!("{what} (shut down locally)")
        } else if self.role == Role::Server {
            format!("the client closed the connection during the TLS handshake ({what})")
        } else {
            format!(
                "the server closed the connection during the TLS handshake ({what}): not a \
                 tls:// port (a plain tcp:// farcall server?), or the server refused the \
                 connection; see the server's log"
            )
        };
        Failure::io(context, kind, message)
    }

    /// Records a fatal TLS error found while receiving, sends rustls's alert
    /// if the sending side is free (best effort, bounded), and returns the
    /// error for the reader.
    fn fatal(&self, state: &mut rustls::Connection, e: rustls::Error) -> io::Error {
        let failure = TlsFailure::new(e, self.role == Role::Server);
        *lock(&self.failure) = Some(Failure::tls(&self.context("TLS session with"), failure.clone()));
        if let Ok(mut send) = self.send.try_lock() {
            send_alert(state, &mut send);
        }
        io::Error::new(io::ErrorKind::InvalidData, failure)
    }

    fn recv_error(&self, e: FrameError) -> TransportError {
        if self.shut.load(Ordering::SeqCst) {
            return TransportError::Closed;
        }
        match e {
            FrameError::Io(io) if io.get_ref().is_some_and(|inner| inner.is::<TlsFailure>()) => {
                TransportError::io(self.context("TLS session with"), io)
            }
            other => TransportError::Frame(other),
        }
    }

    fn send_error(&self, e: io::Error) -> TransportError {
        if let Some(f) = lock(&self.failure).as_ref() {
            return f.to_error();
        }
        if self.shut.load(Ordering::SeqCst) || is_closed_kind(e.kind()) {
            return TransportError::Closed;
        }
        TransportError::io(self.context("sending to"), e)
    }
}

/// Writes whatever rustls has queued (an alert) with a bounded wait; the
/// connection is failing, so errors are ignored.
fn send_alert(state: &mut rustls::Connection, send: &mut SendSide) {
    send.buf.clear();
    while state.wants_write() {
        if state.write_tls(&mut send.buf).is_err() {
            break;
        }
    }
    if !send.buf.is_empty() {
        let _ = send.stream.set_write_timeout(Some(ALERT_WRITE_TIMEOUT));
        let _ = send.stream.write_all(&send.buf);
        send.buf.clear();
    }
}

/// After refusing a handshake: stop sending, then read and discard for a
/// short while, so that the alert reaches the client instead of being
/// destroyed by the reset that closing a socket with unread data sends.
fn linger(write: &TcpStream, inbound: &mut Inbound) {
    let _ = write.shutdown(Shutdown::Write);
    let until = Instant::now() + LINGER;
    while let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        let _ = inbound.stream.set_read_timeout(Some(left));
        match inbound.stream.read(&mut inbound.raw) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    inbound.start = 0;
    inbound.end = 0;
}

/// The plaintext of the connection as a `Read`, for [`FrameReader`]: reads
/// encrypted bytes from the socket without holding the TLS state, then
/// locks it to decrypt them.
struct Plaintext<'a> {
    conn: &'a TlsConnection,
    inbound: &'a mut Inbound,
}

impl Read for Plaintext<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            let mut filled = 0;
            {
                let mut state = lock(&self.conn.state);
                loop {
                    match state.reader().read(&mut out[filled..]) {
                        // The peer's close_notify.
                        Ok(0) => return Ok(filled),
                        Ok(n) => {
                            filled += n;
                            if filled == out.len() {
                                return Ok(filled);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        // End of stream without close_notify: frames are
                        // length-prefixed, so a cut inside one is still
                        // detected; between frames it is a close.
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(filled),
                        Err(e) => return Err(e),
                    }
                    if !self.inbound.buffered() {
                        if self.inbound.eof {
                            let _ = state.read_tls(&mut io::empty());
                            match state.reader().read(&mut out[filled..]) {
                                Ok(n) => return Ok(filled + n),
                                Err(_) => return Ok(filled),
                            }
                        }
                        break;
                    }
                    match self.inbound.feed(&mut state) {
                        Ok(true) => {}
                        Ok(false) => return Err(io::Error::other("TLS: received records could not be processed")),
                        Err(e) => return Err(self.conn.fatal(&mut state, e)),
                    }
                    // Records rustls queues while receiving (in TLS 1.3 only
                    // the answer to a key update, which may wait for the
                    // next application data) go out with the next `send`.
                }
            }
            if filled > 0 {
                return Ok(filled);
            }
            self.inbound.fill()?;
        }
    }
}

impl Connection for TlsConnection {
    fn send(&self, frames: &[&Frame]) -> Result<(), TransportError> {
        self.handshake()?;
        let heads: Vec<[u8; 4]> = frames
            .iter()
            .map(|f| u32::try_from(f.len()).map(u32::to_be_bytes))
            .collect::<Result<_, _>>()
            .map_err(|_| TransportError::io("sending", io::Error::new(io::ErrorKind::InvalidInput, "frame longer than 4 GiB")))?;
        let mut parts: Vec<&[u8]> = Vec::with_capacity(frames.len() * 2);
        for (f, h) in frames.iter().zip(&heads) {
            parts.push(h);
            parts.extend(f.chunks().iter().map(|c| &c[..]).filter(|c| !c.is_empty()));
        }
        let mut send = lock(&self.send);
        let send = &mut *send;
        let mut slices: Vec<IoSlice<'_>> = Vec::new();
        let (mut idx, mut off) = (0, 0);
        while idx < parts.len() {
            // The next piece: up to SEND_PIECE bytes of the remaining parts.
            slices.clear();
            let mut total = 0;
            let (mut i, mut o) = (idx, off);
            while i < parts.len() && total < SEND_PIECE && slices.len() < SEND_SLICES {
                let rest = &parts[i][o..];
                let take = rest.len().min(SEND_PIECE - total);
                slices.push(IoSlice::new(&rest[..take]));
                total += take;
                if take == rest.len() {
                    (i, o) = (i + 1, 0);
                } else {
                    o += take;
                }
            }
            // Encrypt it under the state lock, into our buffer; the send
            // lock (held) keeps the records in order on the socket.
            let accepted = {
                let mut state = lock(&self.state);
                let n = state.writer().write_vectored(&slices).map_err(|e| self.send_error(e))?;
                while state.wants_write() {
                    state.write_tls(&mut send.buf).map_err(|e| self.send_error(e))?;
                }
                n
            };
            if accepted == 0 {
                return Err(TransportError::io(
                    self.context("sending to"),
                    io::Error::other("TLS refused to encrypt more data (traffic keys exhausted)"),
                ));
            }
            // Advance past what rustls took.
            let mut n = accepted;
            while n > 0 {
                let left = parts[idx].len() - off;
                if n >= left {
                    n -= left;
                    (idx, off) = (idx + 1, 0);
                } else {
                    off += n;
                    n = 0;
                }
            }
            let written = send.stream.write_all(&send.buf);
            send.buf.clear();
            written.map_err(|e| self.send_error(e))?;
        }
        if send.buf.capacity() > 4 * SEND_PIECE {
            send.buf = Vec::new();
        }
        Ok(())
    }

    fn recv(&self) -> Result<Bytes, TransportError> {
        self.handshake()?;
        let mut recv = lock(&self.recv);
        let RecvSide { frames, inbound } = &mut *recv;
        let mut plain = Plaintext { conn: self, inbound };
        frames.read(&mut plain).map_err(|e| self.recv_error(e))
    }

    /// The peer; on an accepted connection this first completes the
    /// handshake (see [`TlsConnection::handshake`]) so that the client's
    /// identity is known. If the handshake fails, the peer's address
    /// without identity.
    fn peer(&self) -> &PeerInfo {
        match self.handshake() {
            Ok(p) => p,
            Err(_) => &self.address,
        }
    }

    fn shutdown(&self) {
        if self.shut.swap(true, Ordering::SeqCst) {
            return;
        }
        // Best effort close_notify, never waiting: only when no one is
        // sending or handshaking, and without blocking on the socket.
        if matches!(self.established.get(), Some(Ok(_))) {
            if let Ok(mut send) = self.send.try_lock() {
                if let Ok(mut state) = self.state.try_lock() {
                    state.send_close_notify();
                    send.buf.clear();
                    while state.wants_write() {
                        if state.write_tls(&mut send.buf).is_err() {
                            break;
                        }
                    }
                    drop(state);
                    let SendSide { stream, buf } = &mut *send;
                    if self.control.set_nonblocking(true).is_ok() {
                        let _ = stream.write(buf);
                    }
                    buf.clear();
                }
            }
        }
        let _ = self.control.shutdown(Shutdown::Both);
    }

    fn set_recv_timeout(&self, timeout: Option<Duration>) -> Result<(), TransportError> {
        let mut t = lock(&self.recv_timeout);
        t.0 = timeout;
        if t.1 {
            self.control.set_read_timeout(timeout).map_err(|e| TransportError::io("setting a read timeout", e))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- listener

/// Listens for farcall connections over TLS on a TCP address, requiring
/// what its rustls configuration requires (farcall's: TLS 1.3 and a client
/// certificate chaining to the configured CA, see `farcall_tls::server_config`).
///
/// [`Listener::accept`] returns as soon as a TCP connection arrives; its
/// TLS handshake runs on first use of the connection, on the thread that
/// serves it (see [`TlsConnection::handshake`]), so a slow or silent client
/// never holds up the accepting thread.
pub struct TlsListener {
    inner: std::net::TcpListener,
    url: String,
    config: Arc<ServerConfig>,
    max_frame: usize,
    handshake_timeout: Duration,
}

impl fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsListener")
            .field("url", &self.url)
            .field("max_frame", &self.max_frame)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Binds `addr` (`host:port`; port 0 picks a free port); accepted
    /// connections use `config` and refuse frames over `max_frame` bytes.
    pub fn bind(addr: &str, config: Arc<ServerConfig>, max_frame: usize) -> Result<Self, TransportError> {
        let inner = std::net::TcpListener::bind(addr).map_err(|e| TransportError::io(format!("binding tls://{addr}"), e))?;
        let local = inner.local_addr().map_err(|e| TransportError::io("reading the bound address", e))?;
        Ok(TlsListener { inner, url: format!("tls://{local}"), config, max_frame, handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT })
    }

    /// Sets how long a client may take to complete its handshake (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The bound socket address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl Listener for TlsListener {
    fn accept(&self) -> Result<Box<dyn Connection>, TransportError> {
        let (stream, _) = self.inner.accept().map_err(|e| TransportError::io("accepting", e))?;
        Ok(Box::new(TlsConnection::accept_stream(
            stream,
            self.config.clone(),
            self.max_frame,
            SERVER_MAX_RETAINED,
            self.handshake_timeout,
        )?))
    }

    fn local_url(&self) -> String {
        self.url.clone()
    }
}
