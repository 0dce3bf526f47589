//! The handshake that opens every connection.
//!
//! The client sends a [`ClientHello`] frame, the server answers with a
//! [`ServerHello`] (accepted) or a refusal naming why; only then do
//! [`Message`](crate::Message) frames flow. Both are MessagePack maps with
//! named fields (rmp-serde), so later versions can add fields.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The oldest protocol version this build accepts from a peer.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// The farcall release this build is.
pub const FARCALL_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Identifies a farcall handshake among other traffic.
pub const MAGIC: &str = "farcall";
/// Upper bound for a handshake frame.
pub const MAX_HANDSHAKE_BYTES: usize = 64 * 1024;

/// What the client says first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// Always [`MAGIC`].
    pub magic: String,
    /// The protocol version the client speaks.
    pub protocol: u32,
    /// The client's farcall version (informational).
    pub farcall_version: String,
    /// What the client is (`farcall-python 0.1.0 / CPython 3.11.7`), for logs.
    pub client: String,
}

impl ClientHello {
    /// The hello of this build.
    pub fn new(client: impl Into<String>) -> Self {
        ClientHello { magic: MAGIC.into(), protocol: PROTOCOL_VERSION, farcall_version: FARCALL_VERSION.into(), client: client.into() }
    }
}

/// What the server answers when it accepts the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    /// The protocol version the connection will use.
    pub protocol: u32,
    /// The server's farcall version.
    pub farcall_version: String,
    /// The evaluator backend (`embedded`, `subprocess`, ...).
    pub backend: String,
    /// The evaluating Python's version (`3.11.7`).
    pub python_version: String,
    /// The evaluating Python's `sys.prefix`.
    pub python_prefix: String,
    /// The evaluating Python's `sys.executable` (or the program it was configured with).
    pub python_executable: String,
    /// The server's id for this session (appears in its logs).
    pub session: u64,
}

/// The server's answer to a [`ClientHello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeReply {
    /// The connection is open.
    Accept(ServerHello),
    /// The connection is refused, with a reason meant for the user.
    Refuse(String),
}

/// Why a handshake frame could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Not a farcall handshake at all.
    #[error("the peer did not send a farcall handshake ({0}); is it a farcall endpoint speaking this transport?")]
    NotFarcall(String),
    /// The peer speaks a protocol version this build does not.
    #[error("protocol version mismatch: peer speaks version {peer} (farcall {peer_release}), this side speaks versions {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION} (farcall {FARCALL_VERSION}); upgrade the older side")]
    Version {
        /// The peer's protocol version.
        peer: u32,
        /// The peer's farcall release.
        peer_release: String,
    },
    /// The server refused the connection.
    #[error("server refused the connection: {0}")]
    Refused(String),
}

/// Encodes a handshake message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(msg).expect("handshake structs always serialize")
}

/// Decodes the client's hello and checks magic and version.
pub fn decode_client_hello(data: &[u8]) -> Result<ClientHello, HandshakeError> {
    let hello: ClientHello = rmp_serde::from_slice(data).map_err(|e| HandshakeError::NotFarcall(e.to_string()))?;
    if hello.magic != MAGIC {
        return Err(HandshakeError::NotFarcall(format!("bad magic {:?}", hello.magic)));
    }
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.protocol) {
        return Err(HandshakeError::Version { peer: hello.protocol, peer_release: hello.farcall_version });
    }
    Ok(hello)
}

/// Decodes the server's answer; a refusal becomes an error.
pub fn decode_server_reply(data: &[u8]) -> Result<ServerHello, HandshakeError> {
    let reply: HandshakeReply = rmp_serde::from_slice(data).map_err(|e| HandshakeError::NotFarcall(e.to_string()))?;
    match reply {
        HandshakeReply::Accept(h) if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&h.protocol) => Ok(h),
        HandshakeReply::Accept(h) => Err(HandshakeError::Version { peer: h.protocol, peer_release: h.farcall_version }),
        HandshakeReply::Refuse(why) => Err(HandshakeError::Refused(why)),
    }
}
