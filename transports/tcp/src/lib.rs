//! farcall over TCP: plain `tcp://` ([`TcpConnection`], [`TcpListener`])
//! and `tls://`, TLS 1.3 over TCP with mutual authentication
//! ([`TlsConnection`], [`TlsListener`]).
//!
//! Both use blocking I/O on `std::net` sockets, so that the thread waiting
//! for a frame reads it itself: no thread hand-off on a call's path (see
//! DESIGN.md, performance notes). Frames are a 4-byte big-endian length and
//! the body ([`farcall_core::framing`]); a frame over the connection's limit
//! is refused before it is allocated.
//!
//! ```no_run
//! use farcall_core::Listener as _;
//! let listener = farcall_transport_tcp::TcpListener::bind("127.0.0.1:0", 1 << 20).unwrap();
//! println!("{}", listener.local_url());
//! ```
//!
//! # `tls://`
//!
//! The same rules as `quic://`: the rustls configurations come from
//! `farcall_tls` (`server_config`, `client_config`), which speak TLS 1.3
//! only, make the server require a client certificate chaining to its
//! `client_ca`, and make the client verify the server's certificate against
//! its `ca` and the name it dialled. [`PeerInfo::identity`](farcall_core::PeerInfo)
//! is the name in the peer's certificate (`farcall_tls::peer_identity`): the
//! client's on the server side, the server's on the client side.
//!
//! ```
//! use std::time::Duration;
//! use farcall_core::{Connection as _, Listener as _};
//! use farcall_transport_tcp::{TlsConnection, TlsListener};
//!
//! let ca = farcall_tls::Authority::new("example CA").unwrap();
//! let server = ca.issue_server(&["localhost".into()]).unwrap();
//! let alice = ca.issue_client("alice").unwrap();
//! let ca_pem = ca.cert_pem().as_bytes();
//! let server_config = farcall_tls::server_config(&server.pem_pair(), ca_pem, &[]).unwrap();
//! let client_config = farcall_tls::client_config(ca_pem, Some(&alice.pem_pair()), &[]).unwrap();
//!
//! let listener = TlsListener::bind("127.0.0.1:0", server_config, 1 << 20).unwrap();
//! let addr = listener.local_addr().unwrap().to_string();
//! let client = std::thread::spawn(move || {
//!     TlsConnection::connect(&addr, "localhost", client_config, Some(Duration::from_secs(5)), 1 << 20, 1 << 20)
//! });
//! let accepted = listener.accept().unwrap();
//! // The server's side of the handshake runs here, on first use.
//! assert_eq!(accepted.peer().identity.as_deref(), Some("alice"));
//! let client = client.join().unwrap().unwrap();
//! assert_eq!(client.peer().identity.as_deref(), Some("localhost"));
//! ```
//!
//! **Handshake.** [`TlsConnection::connect`] returns once the client's side
//! of the handshake is complete. [`Listener::accept`] returns as soon as the
//! TCP connection is accepted: the server's handshake runs on the first use
//! of the connection (`peer`, `recv`, `send` or [`TlsConnection::handshake`]),
//! that is on the thread serving it, bounded by the listener's handshake
//! timeout (10 s by default). A silent or slow client thus never stalls
//! the thread that accepts the others; the other side of this choice is that
//! a client's `connect` completes only once the server uses the accepted
//! connection (farcall's server does at once, on the connection's thread). In TLS 1.3 the server checks the
//! client's certificate after the client has finished its handshake, so a
//! refused client certificate reaches the client as a fatal alert on its
//! first `recv` (explained: "the server does not trust the CA that signed
//! this client's certificate", ...).
//!
//! **Errors** carry rustls's reason and what it means
//! ([`TlsFailure`]), as `TransportError::Io { context: "TLS handshake with
//! 127.0.0.1:40123", .. }` (or `"TLS session with ..."` after the
//! handshake). A plain client on a TLS port, or a TLS client on a plain
//! port, fails promptly with an error that says so, on both sides (plain
//! TCP connections recognise a TLS record as the first bytes they receive).
//!
//! **Full duplex.** One thread may be inside `recv` while others `send`,
//! and both peers may send large frames at once. Three locks, and the TLS
//! state is never held while waiting for the socket:
//! - the receive lock (one thread in `recv`): read encrypted bytes from the
//!   socket *without* the state lock, then take it to hand them to rustls
//!   (`read_tls`, `process_new_packets`) and copy the plaintext out, into a
//!   `farcall_core::framing::FrameReader` whose buffer is
//!   reused from frame to frame;
//! - the send lock, held for a whole `send` so that frames of two sends
//!   never interleave: for each piece of up to 256 KiB, take the state
//!   lock, encrypt (`writer().write_vectored`, `write_tls` into a reused
//!   buffer), release it, then write the records to the socket;
//! - the state lock (rustls's `Connection`), held only to encrypt or
//!   decrypt. Lock order: send, then state; the receiver never waits for
//!   the send lock (it only `try_lock`s it to send a fatal alert).
//!
//! Records rustls must send in answer to what it receives go out in order
//! with the next `send` (in TLS 1.3 the only one is the answer to a key
//! update, which the protocol lets wait until the next application data);
//! fatal alerts are sent at once, best effort. A peer closing TCP without
//! `close_notify` between frames is an orderly close (frames are
//! length-prefixed, so a cut inside a frame is still detected).

use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use farcall_core::framing::{write_frames, FrameReader};
use farcall_core::{Connection, Frame, Listener, PeerInfo, TransportError};

mod tls;

pub use tls::{TlsConnection, TlsFailure, TlsListener, DEFAULT_HANDSHAKE_TIMEOUT};

/// The receive buffer a connection keeps between frames, at most.
pub const DEFAULT_MAX_RETAINED: usize = 16 << 20;
/// The same for accepted connections: a server has many, so it keeps less.
pub(crate) const SERVER_MAX_RETAINED: usize = 4 << 20;

/// A farcall connection over one TCP stream.
#[derive(Debug)]
pub struct TcpConnection {
    /// The stream, the frame reader, and whether a frame was received yet.
    reader: Mutex<(TcpStream, FrameReader, bool)>,
    writer: Mutex<TcpStream>,
    control: TcpStream,
    peer: PeerInfo,
}

impl TcpConnection {
    /// Wraps a connected stream; frames longer than `max_frame` are refused.
    pub fn new(stream: TcpStream, max_frame: usize) -> Result<Self, TransportError> {
        Self::with_buffer(stream, max_frame, DEFAULT_MAX_RETAINED)
    }

    /// Like [`TcpConnection::new`], keeping a receive buffer of up to
    /// `max_retained` bytes between frames (larger frames get their own).
    pub fn with_buffer(stream: TcpStream, max_frame: usize, max_retained: usize) -> Result<Self, TransportError> {
        let io = |e| TransportError::io("setting up the TCP stream", e);
        stream.set_nodelay(true).map_err(io)?;
        let address = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
        Ok(TcpConnection {
            reader: Mutex::new((stream.try_clone().map_err(io)?, FrameReader::new(max_frame, max_retained), false)),
            writer: Mutex::new(stream.try_clone().map_err(io)?),
            control: stream,
            peer: PeerInfo { transport: "tcp", address, identity: None },
        })
    }

    /// Connects to `addr` (`host:port`), trying each resolved address within `timeout`.
    pub fn connect(addr: &str, timeout: Option<Duration>, max_frame: usize, max_retained: usize) -> Result<Self, TransportError> {
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(|e| TransportError::io(format!("resolving {addr}"), e))?.collect();
        let mut last = None;
        for a in &addrs {
            let attempt = match timeout {
                Some(t) => TcpStream::connect_timeout(a, t),
                None => TcpStream::connect(a),
            };
            match attempt {
                Ok(s) => return Self::with_buffer(s, max_frame, max_retained),
                Err(e) => last = Some(e),
            }
        }
        Err(TransportError::io(
            format!("connecting to tcp://{addr}"),
            last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address")),
        ))
    }
}

impl TcpConnection {
    /// Before the first frame: a peer speaking TLS (a `tls://` server's
    /// alert, a TLS client's hello) would otherwise look like a frame of
    /// hundreds of megabytes. A farcall connection opens with a small
    /// handshake frame, whose length cannot start with these bytes.
    fn refuse_tls(&self, stream: &TcpStream) -> Result<(), TransportError> {
        let mut head = [0u8; 3];
        let n = loop {
            match stream.peek(&mut head) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // Let the read below report it.
                Err(_) => return Ok(()),
            }
        };
        if n >= 2 && matches!(head[0], 0x14..=0x17) && head[1] == 0x03 {
            return Err(TransportError::io(
                format!("receiving from tcp://{}", self.peer.address),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the peer speaks TLS, not plain farcall (it sent a TLS record): \
                     use tls:// on both sides, or plain tcp:// on both",
                ),
            ));
        }
        Ok(())
    }
}

impl Connection for TcpConnection {
    fn send(&self, frames: &[&Frame]) -> Result<(), TransportError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        write_frames(&mut *w, frames).map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::NotConnected => {
                TransportError::Closed
            }
            _ => TransportError::io("sending", e),
        })
    }

    fn recv(&self) -> Result<Bytes, TransportError> {
        let mut guard = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let (stream, reader, started) = &mut *guard;
        if !*started {
            *started = true;
            self.refuse_tls(stream)?;
        }
        Ok(reader.read(stream)?)
    }

    fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    fn shutdown(&self) {
        let _ = self.control.shutdown(Shutdown::Both);
    }

    fn set_recv_timeout(&self, timeout: Option<Duration>) -> Result<(), TransportError> {
        self.control.set_read_timeout(timeout).map_err(|e| TransportError::io("setting a read timeout", e))
    }
}

/// Listens for farcall connections on a TCP address.
#[derive(Debug)]
pub struct TcpListener {
    inner: std::net::TcpListener,
    url: String,
    max_frame: usize,
}

impl TcpListener {
    /// Binds `addr` (`host:port`; port 0 picks a free port).
    pub fn bind(addr: &str, max_frame: usize) -> Result<Self, TransportError> {
        let inner = std::net::TcpListener::bind(addr).map_err(|e| TransportError::io(format!("binding tcp://{addr}"), e))?;
        let local = inner.local_addr().map_err(|e| TransportError::io("reading the bound address", e))?;
        Ok(TcpListener { inner, url: format!("tcp://{local}"), max_frame })
    }

    /// The bound socket address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl Listener for TcpListener {
    fn accept(&self) -> Result<Box<dyn Connection>, TransportError> {
        let (stream, _) = self.inner.accept().map_err(|e| TransportError::io("accepting", e))?;
        Ok(Box::new(TcpConnection::with_buffer(stream, self.max_frame, SERVER_MAX_RETAINED)?))
    }

    fn local_url(&self) -> String {
        self.url.clone()
    }
}
