use farcall_core::handshake::HandshakeError;
use farcall_core::{RemoteException, TransportError};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address could not be parsed or uses a transport this build lacks.
    #[error("bad address `{address}`: {reason}")]
    Address {
        /// The address given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// TLS material could not be used (a missing or unreadable file, a key
    /// that does not match its certificate).
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The connection could not be established.
    #[error("could not connect to {address}: {source}")]
    Connect {
        /// The address dialled.
        address: String,
        /// The transport's error.
        source: TransportError,
    },
    /// The handshake failed (version mismatch, refusal, not a farcall server).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The connection is gone (closed by either side, or broken); the
    /// request's outcome is unknown.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The reply did not come within the request's timeout. The request was
    /// cancelled on the server (where its backend can stop it) and its late
    /// reply will be dropped; the connection stays usable.
    #[error("timed out after {0:?} waiting for the server's reply")]
    Timeout(std::time::Duration),
    /// The remote code raised an exception.
    #[error(transparent)]
    Remote(#[from] RemoteException),
    /// The peer broke the protocol; the connection was closed.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A value was not of the type asked for.
    #[error("expected {expected}, got {got}")]
    Type {
        /// The type asked for.
        expected: &'static str,
        /// What the value was.
        got: String,
    },
    /// The API was misused (for example an object of one connection passed to another).
    #[error("{0}")]
    Usage(String),
}
