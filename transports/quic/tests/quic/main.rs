// QUIC transport tests: real UDP on 127.0.0.1 (port 0), certificates made at
// test time, raw farcall frames over QuicConnection/QuicListener.

mod calls;
mod impaired;
mod lifecycle;
mod refusals;

use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use farcall_core::codec::{decode, encode};
use farcall_core::{Connection, Frame, Listener, Message, Request, Target, TransportError, Value};
use farcall_tls::{Authority, Issued};
use farcall_transport_quic::{QuicConnection, QuicListener, ALPN};

/// A CA with a server certificate for localhost and a client certificate for alice.
#[derive(Debug)]
pub struct Pki {
    pub ca: Authority,
    pub server: Issued,
    pub alice: Issued,
}

pub fn pki() -> Pki {
    let ca = Authority::new("test CA").unwrap();
    let server = ca.issue_server(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let alice = ca.issue_client("alice").unwrap();
    Pki { ca, server, alice }
}

pub fn server_config(pki: &Pki) -> Arc<rustls::ServerConfig> {
    farcall_tls::server_config(&pki.server.pem_pair(), pki.ca.cert_pem().as_bytes(), &[ALPN]).unwrap()
}

pub fn client_config(ca: &Authority, client: Option<&Issued>) -> Arc<rustls::ClientConfig> {
    farcall_tls::client_config(ca.cert_pem().as_bytes(), client.map(|c| c.pem_pair()).as_ref(), &[ALPN]).unwrap()
}

/// A request whose only argument is `payload`.
pub fn request(id: u64, payload: &[u8]) -> Frame {
    encode(&Message::Request {
        id,
        op: Request::Call {
            target: Target { id: 0, path: vec![] },
            args: vec![Value::Bytes(Bytes::copy_from_slice(payload))],
            kwargs: vec![],
        },
    })
}

pub fn reply(id: u64, payload: Bytes) -> Frame {
    encode(&Message::Reply { id, result: Ok(Value::Bytes(payload)) })
}

/// `(id, payload)` of a reply frame.
pub fn decode_reply(body: Bytes) -> (u64, Bytes) {
    match decode(body).unwrap() {
        Message::Reply { id, result: Ok(Value::Bytes(b)) } => (id, b),
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// An echo server: replies to each request with its argument; a request
/// whose argument is `slow` is answered after two seconds, by another thread.
#[derive(Debug)]
pub struct EchoServer {
    pub addr: String,
    pub url: String,
    /// Accept errors, as text.
    pub refused: Receiver<String>,
    /// Identities of accepted clients.
    pub accepted: Receiver<Option<String>>,
    /// How each served connection ended.
    pub ended: Receiver<TransportError>,
}

pub fn echo_server(config: Arc<rustls::ServerConfig>, max_frame: usize) -> EchoServer {
    let listener = QuicListener::bind("127.0.0.1:0", config, max_frame).unwrap();
    let url = listener.local_url();
    let addr = url.strip_prefix("quic://").unwrap().to_owned();
    let (refused_tx, refused) = mpsc::channel();
    let (accepted_tx, accepted) = mpsc::channel();
    let (ended_tx, ended) = mpsc::channel();
    std::thread::spawn(move || loop {
        match listener.accept() {
            Ok(conn) => {
                assert_eq!(conn.peer().transport, "quic");
                let _ = accepted_tx.send(conn.peer().identity.clone());
                let ended_tx = ended_tx.clone();
                std::thread::spawn(move || {
                    let e = serve(Arc::from(conn));
                    let _ = ended_tx.send(e);
                });
            }
            Err(TransportError::Closed) => return,
            Err(e) => {
                let _ = refused_tx.send(e.to_string());
            }
        }
    });
    EchoServer { addr, url, refused, accepted, ended }
}

fn serve(conn: Arc<dyn Connection>) -> TransportError {
    loop {
        let body = match conn.recv() {
            Ok(b) => b,
            Err(e) => return e,
        };
        match decode(body) {
            Ok(Message::Request { id, op: Request::Call { mut args, .. } }) => {
                let Some(Value::Bytes(payload)) = args.pop() else { panic!("unexpected request") };
                if &payload[..] == b"slow" {
                    let conn = conn.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_secs(2));
                        let _ = conn.send(&[&reply(id, payload)]);
                    });
                } else if conn.send(&[&reply(id, payload)]).is_err() {
                    return TransportError::Closed;
                }
            }
            // One-way frames (releases) come back as they are, one way.
            Ok(Message::Release(r)) => {
                let _ = conn.send(&[&encode(&Message::Release(r))]);
            }
            other => panic!("unexpected message {other:?}"),
        }
    }
}

pub fn connect(server: &EchoServer, config: Arc<rustls::ClientConfig>) -> Result<QuicConnection, TransportError> {
    QuicConnection::connect(&server.addr, "localhost", config, Some(Duration::from_secs(10)), 64 << 20)
}

/// One call: connect, send `payload`, wait for the echo (at most 10 s).
pub fn call_once(server: &EchoServer, config: Arc<rustls::ClientConfig>, name: &str) -> Result<Bytes, String> {
    let conn = QuicConnection::connect(&server.addr, name, config, Some(Duration::from_secs(10)), 64 << 20)
        .map_err(|e| format!("connect: {e}"))?;
    conn.set_recv_timeout(Some(Duration::from_secs(10))).unwrap();
    conn.send(&[&request(1, b"ping")]).map_err(|e| format!("send: {e}"))?;
    let body = conn.recv().map_err(|e| format!("recv: {e}"))?;
    let (id, payload) = decode_reply(body);
    assert_eq!(id, 1);
    Ok(payload)
}
