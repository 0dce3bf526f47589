//! QUIC with mutual TLS for farcall: a [`Connection`](farcall_core::Connection)
//! ([`QuicConnection`]) and a [`Listener`](farcall_core::Listener)
//! ([`QuicListener`]) over quinn and rustls.
//!
//! The server requires a client certificate that chains to its configured CA
//! (the rustls configurations come from [`farcall_tls::server_config`] and
//! [`farcall_tls::client_config`]; this crate sets the ALPN protocol
//! [`ALPN`] on both). The client certificate's identity becomes
//! [`PeerInfo::identity`](farcall_core::PeerInfo).
//!
//! # Calls map to streams
//!
//! A slow call or a large transfer never holds up the others on the same
//! connection, because each call has a QUIC stream of its own:
//!
//! - A `send` that carries a request ([`Route::Request`](farcall_core::Route))
//!   opens a new bidirectional stream, writes the call's frames on it and
//!   finishes it; the reply comes back on the same stream.
//! - The receiving side reads each incoming stream frame by frame and hands
//!   the frames to `recv` in stream order; it remembers the stream of each
//!   request so that `send` of the reply writes it there (and finishes it).
//!   Either side may send requests: the protocol is symmetric.
//! - Frames without reply (reference releases, the handshake) travel on one
//!   long-lived unidirectional stream per direction, opened by the first
//!   such `send`. One stream rather than one per `send`: releases stay in
//!   the order they were sent, and a batch costs no stream opening.
//!   Releases are small, so nothing waits behind them.
//!
//! Frames on a stream are length-prefixed exactly as on TCP (a 4-byte
//! big-endian length, then the body). A bidirectional stream's half starts
//! with 8 bytes more: how many one-way frames its writer had sent before it.
//! The reader holds that stream's frames back until it has delivered as
//! many one-way frames, so a request is never served before a release sent
//! ahead of it (QUIC does not order streams among themselves; on a lossy
//! path a later stream can arrive first). This keeps the client's
//! "releases, then `Stats`" barrier exact over QUIC.
//!
//! A frame longer than the connection's limit is refused before it is
//! allocated: `recv` returns [`FrameError::TooLarge`](farcall_core::FrameError)
//! and the rest of that stream is refused (the peer's writes to it fail).
//!
//! # Blocking API over an async stack
//!
//! quinn is async; farcall's transport traits are blocking. Each endpoint
//! (the UDP socket of a connection made by [`QuicConnection::connect`], or
//! of a [`QuicListener`] and all its connections) has a tokio
//! current-thread runtime, and the threads calling `send` and `recv` drive
//! it themselves: the thread waiting in `recv` sleeps in `epoll` on the UDP
//! socket and is woken by the kernel when its reply arrives, and a `send`
//! encrypts and transmits its packets on its own thread. A call between
//! two such threads costs the same two thread wake-ups as over TCP, instead
//! of six with quinn on a separate runtime thread. A server thread that
//! takes over `recv` while another evaluates a request leaves the runtime to
//! the replying thread until the reply is sent (briefly), so that the reply
//! leaves from the evaluating thread without waking the one in `epoll`.
//! When no caller has been inside for two milliseconds, a keeper thread (`farcall-quic`, one per
//! endpoint) drives instead: acknowledgements, retransmissions,
//! keep-alives, handshakes of new clients.
//!
//! A client connection's endpoint, runtime and keeper outlive it: when it is
//! dropped they wait in a small process-wide stock for the next
//! [`QuicConnection::connect`], which then skips making them (about a third
//! of a connection set-up here). Connections open at the same time never
//! share one.
//!
//! The methods block: call them from ordinary threads, not from async code.
//!
//! ```
//! use farcall_core::{Connection as _, Listener as _};
//! use farcall_transport_quic::{QuicConnection, QuicListener, ALPN};
//!
//! let ca = farcall_tls::Authority::new("example CA").unwrap();
//! let server = ca.issue_server(&["localhost".into()]).unwrap();
//! let alice = ca.issue_client("alice").unwrap();
//! let sc = farcall_tls::server_config(&server.pem_pair(), ca.cert_pem().as_bytes(), &[ALPN]).unwrap();
//! let cc = farcall_tls::client_config(ca.cert_pem().as_bytes(), Some(&alice.pem_pair()), &[ALPN]).unwrap();
//!
//! let listener = QuicListener::bind("127.0.0.1:0", sc, 1 << 26).unwrap();
//! let addr = listener.local_url().trim_start_matches("quic://").to_owned();
//! let client = std::thread::spawn(move || QuicConnection::connect(&addr, "localhost", cc, None, 1 << 26));
//! let accepted = listener.accept().unwrap();
//! assert_eq!(accepted.peer().identity.as_deref(), Some("alice"));
//! assert_eq!(accepted.peer().transport, "quic");
//! let _client = client.join().unwrap().unwrap();
//! ```

mod connection;
mod drive;
mod listener;
mod reader;
mod reuse;

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use farcall_core::TransportError;
use quinn::{ConnectionError, TransportErrorCode, VarInt};

pub use connection::{QuicConnection, DEFAULT_MAX_RETAINED};
pub use listener::QuicListener;

/// The ALPN protocol name farcall speaks (over QUIC and TLS). Both sides of
/// a QUIC connection set it whatever the rustls configuration they are given
/// says, so a QUIC peer that is not farcall fails the handshake with a clear
/// error.
pub use farcall_tls::ALPN;

/// Receive window of one stream (one call's request or reply).
///
/// 8 MiB covers the bandwidth-delay product of a 1 Gbit/s path with 64 ms of
/// round trip, so one large transfer is not held back by flow control on a
/// fast network, and on loopback a 10 MB reply flows with few window
/// updates. It is a bound, not an allocation: memory is used only for data
/// received and not yet read.
pub const STREAM_RECEIVE_WINDOW: u32 = 8 << 20;

/// Receive window of a whole connection (all its streams together).
///
/// 32 MiB lets four large transfers run at full speed side by side while
/// bounding what one peer can make us buffer.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 32 << 20;

/// Data quinn buffers for sending on one connection before a writer waits.
///
/// As large as the peer's connection window, so that a writer can hand over
/// everything the peer is ready to take.
pub const SEND_WINDOW: u64 = 32 << 20;

/// Calls the peer may have in flight towards us on one connection (each is
/// a bidirectional stream); more wait for a stream to free up.
///
/// The server serves up to 64 calls of one connection at once by default;
/// 1024 leaves room for callbacks and queued calls. Streams cost memory
/// only while open.
pub const MAX_CONCURRENT_CALLS: u32 = 1024;

/// A connection with no packet from the peer for this long is dead.
///
/// A peer that vanishes without a word (killed, its machine gone) sends no
/// CONNECTION_CLOSE, and quinn ignores the ICMP errors that would tell, so
/// this is how long a call in flight waits before it fails with the
/// connection lost. 8 s (RFC 9308 suggests 30) keeps that wait short, like
/// the reset TCP gets at once; with [`KEEP_ALIVE_INTERVAL`] a healthy idle
/// connection never reaches it.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(8);

/// How often an otherwise idle connection sends a keep-alive.
///
/// 2 s leaves three more chances before [`MAX_IDLE_TIMEOUT`] when
/// keep-alives are lost, and keeps NAT bindings (often ~30 s for UDP)
/// alive; it costs one small packet each way every 2 s per idle connection.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);

/// Socket send and receive buffers asked of the kernel (capped by
/// `net.core.rmem_max`/`wmem_max`): bursts of a fast sender otherwise
/// overflow the default ~200 KiB and become packet loss.
const SOCKET_BUFFER: usize = 4 << 20;

/// The QUIC settings of every farcall connection (see the constants).
///
/// Congestion control is BBR rather than quinn's default CUBIC. farcall's
/// QUIC is for links across networks, where random loss is common and is not
/// congestion; CUBIC, like TCP's, reads every loss as congestion: at 50 ms of
/// round trip and 2% loss it moved 10 MB each way in 84 s (about 0.25 MB/s,
/// as the Mathis formula predicts), BBR in 1.8 s. On loopback the two are
/// alike. quinn labels its BBR experimental; the impaired-link tests exercise
/// it on every run.
fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_CONCURRENT_CALLS))
        // One long-lived one-way stream per direction is all farcall uses.
        .max_concurrent_uni_streams(VarInt::from_u32(4))
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .max_idle_timeout(Some(quinn::IdleTimeout::try_from(MAX_IDLE_TIMEOUT).expect("8 s is a valid idle timeout")));
    Arc::new(t)
}

/// Whether this thread is inside an async context, where blocking is not allowed.
fn in_async_context() -> bool {
    tokio::runtime::Handle::try_current().is_ok()
}

/// Asks for larger socket buffers; the kernel may grant less, which is not an error.
///
/// Plain `setsockopt`: quinn's `UdpSocketState::new` would do it too, but it
/// probes the kernel's GSO and GRO support with throw-away sockets each
/// time, about 120 µs of every connection set-up on a virtual machine.
#[cfg(unix)]
fn size_socket_buffers(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let size = libc::c_int::try_from(SOCKET_BUFFER).unwrap_or(libc::c_int::MAX);
    for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: a valid socket descriptor, and a pointer to a c_int of the given length.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                std::ptr::from_ref(&size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

#[cfg(not(unix))]
fn size_socket_buffers(socket: &std::net::UdpSocket) {
    if let Ok(state) = quinn::udp::UdpSocketState::new(socket.into()) {
        let _ = state.set_recv_buffer_size(socket.into(), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size(socket.into(), SOCKET_BUFFER);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Describes a TLS handshake failure signalled with `code` (a crypto error:
/// a TLS alert), seen from this side. `by_peer`: the peer refused us (it sent
/// the alert); otherwise this side refused the peer.
fn crypto_failure(code: TransportErrorCode, reason: &str, by_peer: bool, peer: &str) -> Option<String> {
    let code = u64::from(code);
    if !(0x100..0x200).contains(&code) {
        return None;
    }
    let alert = code & 0xff;
    let me = if peer == "server" { "client" } else { "server" };
    let text = match (by_peer, alert) {
        (true, 116) => {
            format!("the {peer} requires a client certificate: give this {me} a certificate and key signed by the {peer}'s client CA")
        }
        (true, 48) => format!("the {peer} does not trust this {me}'s certificate: it is not signed by a CA the {peer} trusts"),
        (true, 45) => format!("the {peer} refused this {me}'s certificate: it has expired or is not yet valid"),
        (true, 42..=46) => format!("the {peer} refused this {me}'s certificate"),
        (true, 120) | (false, 120) => format!("the {peer} does not speak farcall/1 (no common ALPN protocol)"),
        (true, 70) | (false, 70) => "no TLS version in common (farcall needs TLS 1.3)".to_owned(),
        (true, _) => format!("the {peer} refused the TLS handshake (alert {alert})"),
        (false, 116) => format!("the {peer} presented no certificate"),
        (false, 42..=46 | 48) => format!("the {peer}'s certificate was refused"),
        (false, _) => format!("the TLS handshake with the {peer} failed (alert {alert})"),
    };
    Some(if reason.is_empty() { text } else { format!("{text}: {reason}") })
}

/// Maps a quinn connection error to farcall's, naming what happened.
/// `peer` is the other side's role ("server" or "client"); `context` says
/// which connection (`quic://ADDRESS`).
fn connection_error(e: &ConnectionError, peer: &str, context: &str) -> TransportError {
    use io::ErrorKind as K;
    let (kind, text) = match e {
        ConnectionError::ApplicationClosed(_) | ConnectionError::LocallyClosed => return TransportError::Closed,
        ConnectionError::TimedOut => {
            (K::TimedOut, format!("the QUIC connection timed out: nothing heard from the {peer} for {} s", MAX_IDLE_TIMEOUT.as_secs()))
        }
        ConnectionError::Reset => {
            (K::ConnectionReset, format!("the {peer} reset the QUIC connection (it restarted or no longer knows this connection)"))
        }
        ConnectionError::ConnectionClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason);
            match crypto_failure(close.error_code, &reason, true, peer) {
                Some(text) => (K::PermissionDenied, text),
                None => (K::ConnectionAborted, format!("the {peer}'s QUIC stack aborted the connection: {close}")),
            }
        }
        ConnectionError::TransportError(t) => match crypto_failure(t.code, &t.reason, false, peer) {
            Some(text) => (K::PermissionDenied, text),
            None => (K::InvalidData, format!("QUIC protocol error: {t}")),
        },
        ConnectionError::VersionMismatch => (K::Unsupported, format!("the {peer} does not speak QUIC version 1")),
        ConnectionError::CidsExhausted => (K::Other, "QUIC connection ids exhausted".to_owned()),
    };
    TransportError::Io { context: context.into(), source: io::Error::new(kind, text) }
}
