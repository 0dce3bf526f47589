//! Plain TCP for farcall: a [`Connection`] and a [`Listener`] over
//! `std::net`, with blocking I/O so that the thread waiting for a frame reads
//! it itself (no thread hand-off on a call's path).
//!
//! ```no_run
//! use farcall_core::Listener as _;
//! let listener = farcall_transport_tcp::TcpListener::bind("127.0.0.1:0", 1 << 20).unwrap();
//! println!("{}", listener.local_url());
//! ```

use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use farcall_core::framing::{write_frames, FrameReader};
use farcall_core::{Connection, Frame, Listener, PeerInfo, TransportError};

/// The receive buffer a connection keeps between frames, at most.
pub const DEFAULT_MAX_RETAINED: usize = 16 << 20;
/// The same for accepted connections: a server has many, so it keeps less.
const SERVER_MAX_RETAINED: usize = 4 << 20;

/// A farcall connection over one TCP stream.
#[derive(Debug)]
pub struct TcpConnection {
    reader: Mutex<(TcpStream, FrameReader)>,
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
    pub fn with_buffer(
        stream: TcpStream,
        max_frame: usize,
        max_retained: usize,
    ) -> Result<Self, TransportError> {
        let io = |e| TransportError::io("setting up the TCP stream", e);
        stream.set_nodelay(true).map_err(io)?;
        let address = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        Ok(TcpConnection {
            reader: Mutex::new((
                stream.try_clone().map_err(io)?,
                FrameReader::new(max_frame, max_retained),
            )),
            writer: Mutex::new(stream.try_clone().map_err(io)?),
            control: stream,
            peer: PeerInfo {
                transport: "tcp",
                address,
                identity: None,
            },
        })
    }

    /// Connects to `addr` (`host:port`), trying each resolved address within `timeout`.
    pub fn connect(
        addr: &str,
        timeout: Option<Duration>,
        max_frame: usize,
        max_retained: usize,
    ) -> Result<Self, TransportError> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| TransportError::io(format!("resolving {addr}"), e))?
            .collect();
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

impl Connection for TcpConnection {
    fn send(&self, frames: &[&Frame]) -> Result<(), TransportError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        write_frames(&mut *w, frames).map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::NotConnected => TransportError::Closed,
            _ => TransportError::io("sending", e),
        })
    }

    fn recv(&self) -> Result<Bytes, TransportError> {
        let mut guard = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let (stream, reader) = &mut *guard;
        Ok(reader.read(stream)?)
    }

    fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    fn shutdown(&self) {
        let _ = self.control.shutdown(Shutdown::Both);
    }

    fn set_recv_timeout(&self, timeout: Option<Duration>) -> Result<(), TransportError> {
        self.control
            .set_read_timeout(timeout)
            .map_err(|e| TransportError::io("setting a read timeout", e))
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
        let inner = std::net::TcpListener::bind(addr)
            .map_err(|e| TransportError::io(format!("binding tcp://{addr}"), e))?;
        let local = inner
            .local_addr()
            .map_err(|e| TransportError::io("reading the bound address", e))?;
        Ok(TcpListener {
            inner,
            url: format!("tcp://{local}"),
            max_frame,
        })
    }

    /// The bound socket address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl Listener for TcpListener {
    fn accept(&self) -> Result<Box<dyn Connection>, TransportError> {
        let (stream, _) = self
            .inner
            .accept()
            .map_err(|e| TransportError::io("accepting", e))?;
        Ok(Box::new(TcpConnection::with_buffer(
            stream,
            self.max_frame,
            SERVER_MAX_RETAINED,
        )?))
    }

    fn local_url(&self) -> String {
        self.url.clone()
    }
}
