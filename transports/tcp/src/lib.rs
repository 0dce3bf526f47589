//! Plain TCP for farcall: a [`Connection`] and a [`Listener`] over
//! `std::net`, with blocking I/O so that the thread waiting for a frame reads
//! it itself (no thread hand-off on a call's path).
//!
//! ```no_run
//! use farcall_core::Listener as _;
//! let listener = farcall_transport_tcp::TcpListener::bind("127.0.0.1:0", 1 << 20).unwrap();
//! println!("{}", listener.local_url());
//! ```

use std::io::BufReader;
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use farcall_core::framing::{read_frame, write_frames};
use farcall_core::{Connection, Frame, Listener, PeerInfo, TransportError};

/// Read buffer size: small frames arrive with one `read` call.
const READ_BUFFER: usize = 64 * 1024;

/// A farcall connection over one TCP stream.
#[derive(Debug)]
pub struct TcpConnection {
    reader: Mutex<BufReader<TcpStream>>,
    writer: Mutex<TcpStream>,
    control: TcpStream,
    peer: PeerInfo,
    max_frame: usize,
}

impl TcpConnection {
    /// Wraps a connected stream; frames longer than `max_frame` are refused.
    pub fn new(stream: TcpStream, max_frame: usize) -> Result<Self, TransportError> {
        let io = |e| TransportError::io("setting up the TCP stream", e);
        stream.set_nodelay(true).map_err(io)?;
        let address = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        Ok(TcpConnection {
            reader: Mutex::new(BufReader::with_capacity(
                READ_BUFFER,
                stream.try_clone().map_err(io)?,
            )),
            writer: Mutex::new(stream.try_clone().map_err(io)?),
            control: stream,
            peer: PeerInfo {
                transport: "tcp",
                address,
                identity: None,
            },
            max_frame,
        })
    }

    /// Connects to `addr` (`host:port`), trying each resolved address within `timeout`.
    pub fn connect(
        addr: &str,
        timeout: Option<Duration>,
        max_frame: usize,
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
                Ok(s) => return Self::new(s, max_frame),
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
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        Ok(read_frame(&mut *r, self.max_frame)?)
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
        Ok(Box::new(TcpConnection::new(stream, self.max_frame)?))
    }

    fn local_url(&self) -> String {
        self.url.clone()
    }
}
