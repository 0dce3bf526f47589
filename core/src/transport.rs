//! The [`Connection`] and [`Listener`] traits that transports implement, and an
//! in-memory connection pair for tests.
//!
//! # Contract
//!
//! A connection carries whole frames in both directions, in order. It is
//! blocking by design: the thread that waits for a reply reads it itself, so
//! a call costs no thread hand-off beyond the network's own (see DESIGN.md,
//! performance notes).
//!
//! - [`Connection::send`] may be called from several threads at once; each
//!   call writes its frames contiguously (frames of two calls never interleave).
//! - [`Connection::recv`] is called by one thread at a time (callers
//!   serialize); it blocks until a frame arrives, the peer closes
//!   ([`TransportError::Closed`]) or [`Connection::shutdown`] is called from
//!   another thread, which makes a blocked `recv` return promptly.
//! - A frame longer than the connection's limit is refused before it is
//!   allocated ([`TransportError::Frame`] with [`FrameError::TooLarge`]).
//! - A transport may use [`Frame::route`](crate::Frame) to map requests and
//!   replies onto separate streams; a stream transport ignores it.

use std::fmt;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;

use bytes::Bytes;

use crate::codec::Frame;
use crate::framing::FrameError;

/// Who is at the other end of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// The transport's scheme (`tcp`, `tls`, `quic`, `memory`).
    pub transport: &'static str,
    /// The peer's address as text.
    pub address: String,
    /// The peer's authenticated identity (its certificate's name), if any.
    pub identity: Option<String>,
}

impl fmt::Display for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.transport, self.address)?;
        if let Some(id) = &self.identity {
            write!(f, " ({id})")?;
        }
        Ok(())
    }
}

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The connection is closed (by the peer, or by [`Connection::shutdown`]).
    #[error("connection closed")]
    Closed,
    /// Reading a frame failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Connecting, accepting or writing failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The address or options are not usable.
    #[error("{0}")]
    Config(String),
}

impl TransportError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TransportError::Io { context: context.into(), source }
    }

    /// Whether this is an orderly close rather than a failure.
    pub fn is_closed(&self) -> bool {
        matches!(self, TransportError::Closed | TransportError::Frame(FrameError::Closed))
    }
}

/// One established connection carrying frames. See the module docs for the contract.
pub trait Connection: Send + Sync + fmt::Debug {
    /// Sends frames in order, contiguously.
    fn send(&self, frames: &[&Frame]) -> Result<(), TransportError>;
    /// Receives the next frame body, blocking.
    fn recv(&self) -> Result<Bytes, TransportError>;
    /// The peer.
    fn peer(&self) -> &PeerInfo;
    /// Closes the connection; pending and later `recv`/`send` calls fail.
    fn shutdown(&self);
    /// Bounds how long one `recv` may wait (`None`: forever). Used during the
    /// handshake so that a silent peer cannot hold a thread. The default does
    /// nothing.
    fn set_recv_timeout(&self, timeout: Option<std::time::Duration>) -> Result<(), TransportError> {
        let _ = timeout;
        Ok(())
    }
}

/// Accepts connections on one address.
pub trait Listener: Send + Sync + fmt::Debug {
    /// Waits for the next connection. Transport-level failures of one
    /// incoming connection (a failed TLS handshake) are errors of that
    /// connection only: the caller logs them and accepts again.
    fn accept(&self) -> Result<Box<dyn Connection>, TransportError>;
    /// The URL the listener is bound to, with the actual port (`tcp://127.0.0.1:40123`).
    fn local_url(&self) -> String;
}

/// A connection made of two in-memory channels; [`memory_pair`] makes two
/// wired back to back.
#[derive(Debug)]
pub struct MemoryConnection {
    tx: Mutex<Option<Sender<Bytes>>>,
    rx: Mutex<Receiver<Bytes>>,
    peer: PeerInfo,
}

/// Two connected in-memory connections.
pub fn memory_pair() -> (MemoryConnection, MemoryConnection) {
    let (atx, brx) = mpsc::channel();
    let (btx, arx) = mpsc::channel();
    let mk = |tx, rx, name: &str| MemoryConnection {
        tx: Mutex::new(Some(tx)),
        rx: Mutex::new(rx),
        peer: PeerInfo { transport: "memory", address: name.into(), identity: None },
    };
    (mk(atx, arx, "b"), mk(btx, brx, "a"))
}

impl Connection for MemoryConnection {
    fn send(&self, frames: &[&Frame]) -> Result<(), TransportError> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let tx = tx.as_ref().ok_or(TransportError::Closed)?;
        for f in frames {
            tx.send(f.to_bytes()).map_err(|_| TransportError::Closed)?;
        }
        Ok(())
    }

    fn recv(&self) -> Result<Bytes, TransportError> {
        let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
        rx.recv().map_err(|_| TransportError::Closed)
    }

    fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}
