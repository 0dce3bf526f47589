// tls:// over real sockets on 127.0.0.1: identities, full duplex with large frames, refusals, limits, shutdown.

use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use farcall_core::codec::{decode, encode};
use farcall_core::{Connection, Frame, FrameError, Listener, Message, Request, Route, TransportError, Value};
use farcall_tls::Authority;
use farcall_transport_tcp::{TcpConnection, TcpListener, TlsConnection, TlsListener};
use time::OffsetDateTime;

const MAX: usize = 64 << 20;
const TIMEOUT: Option<Duration> = Some(Duration::from_secs(10));

/// A CA with a server certificate for `localhost` and `127.0.0.1`.
struct Pki {
    ca: Authority,
    server: Arc<rustls::ServerConfig>,
}

impl Pki {
    fn new() -> Self {
        let ca = Authority::new("test CA").unwrap();
        let cert = ca.issue_server(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        let server = farcall_tls::server_config(&cert.pem_pair(), ca.cert_pem().as_bytes(), &[]).unwrap();
        Pki { ca, server }
    }

    /// A client trusting this CA and presenting `cert` (an issued certificate).
    fn client_with(&self, cert: Option<&farcall_tls::Issued>) -> Arc<rustls::ClientConfig> {
        let pair = cert.map(|c| c.pem_pair());
        farcall_tls::client_config(self.ca.cert_pem().as_bytes(), pair.as_ref(), &[]).unwrap()
    }

    fn client(&self, name: &str) -> Arc<rustls::ClientConfig> {
        self.client_with(Some(&self.ca.issue_client(name).unwrap()))
    }

    fn listener(&self) -> (TlsListener, String) {
        let l = TlsListener::bind("127.0.0.1:0", self.server.clone(), MAX).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        (l, addr)
    }
}

/// Accepts one connection and completes its handshake (which an accepted
/// connection runs on first use, on the thread that serves it).
fn accept_one(listener: &dyn Listener) -> Box<dyn Connection> {
    let conn = listener.accept().unwrap();
    let _ = conn.peer();
    conn
}

/// Runs `f` on its own thread; fails the test if it takes longer than `secs`
/// (a hang becomes a failure instead of a stuck test run).
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).unwrap_or_else(|_| panic!("did not finish within {secs} s (deadlock or hang)"))
}

fn request(id: u64, name: &str) -> Frame {
    encode(&Message::Request { id, op: Request::GetModule { name: name.into() } })
}

fn raw(body: &'static [u8]) -> Frame {
    Frame::from_bytes(Route::Oneway, Bytes::from_static(body))
}

/// What happened to one accepted connection: the client's identity after
/// its first frame, or the error of its first `recv`.
type Outcome = Result<Option<String>, String>;

/// Serves `listener` on a thread: each connection on its own thread echoes
/// frames back; the first outcome of each connection is reported.
fn serve(listener: impl Listener + 'static) -> Receiver<Outcome> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || loop {
        let Ok(conn) = listener.accept() else { return };
        let tx = tx.clone();
        thread::spawn(move || {
            let mut first = true;
            loop {
                match conn.recv() {
                    Ok(body) => {
                        if first {
                            let _ = tx.send(Ok(conn.peer().identity.clone()));
                            first = false;
                        }
                        if conn.send(&[&Frame::from_bytes(Route::Oneway, body)]).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        if first {
                            let _ = tx.send(Err(e.to_string()));
                        }
                        conn.shutdown();
                        return;
                    }
                }
            }
        });
    });
    rx
}

/// One echo round trip; the error as text.
fn echo(conn: &dyn Connection) -> Result<(), String> {
    let f = request(7, "math");
    conn.send(&[&f]).map_err(|e| e.to_string())?;
    let back = conn.recv().map_err(|e| e.to_string())?;
    assert_eq!(back, f.to_bytes());
    Ok(())
}

fn assert_mentions(what: &str, text: &str, words: &[&str]) {
    eprintln!("{what}: {text}");
    for w in words {
        assert!(text.to_lowercase().contains(&w.to_lowercase()), "{what}: expected `{w}` in: {text}");
    }
}

#[test]
fn round_trip_with_both_identities() {
    let pki = Pki::new();
    let (listener, addr) = pki.listener();
    assert_eq!(listener.local_url(), format!("tls://{addr}"));
    let server = thread::spawn(move || {
        let conn = listener.accept().unwrap();
        let body = conn.recv().unwrap();
        let peer = conn.peer().clone();
        let reply = encode(&Message::Reply { id: 1, result: Ok(Value::Str(format!("hello {}", peer.identity.clone().unwrap()))) });
        conn.send(&[&reply]).unwrap();
        // A second client, dialling by IP address.
        let second = accept_one(&listener).peer().identity.clone();
        (peer, decode(body).unwrap(), second)
    });
    let client = TlsConnection::connect(&addr, "localhost", pki.client("alice"), TIMEOUT, MAX, MAX).unwrap();
    assert_eq!(client.peer().transport, "tls");
    assert_eq!(client.peer().identity.as_deref(), Some("localhost"));
    client.send(&[&request(1, "math")]).unwrap();
    let reply = decode(client.recv().unwrap()).unwrap();
    assert_eq!(reply, Message::Reply { id: 1, result: Ok(Value::Str("hello alice".into())) });
    // Dialling by IP address checks the certificate's IP name.
    let by_ip = TlsConnection::connect(&addr, "127.0.0.1", pki.client("bob"), TIMEOUT, MAX, MAX);
    assert_eq!(by_ip.unwrap().peer().identity.as_deref(), Some("localhost"));
    let (peer, got, second) = server.join().unwrap();
    assert_eq!(second.as_deref(), Some("bob"));
    assert_eq!(peer.transport, "tls");
    assert_eq!(peer.identity.as_deref(), Some("alice"));
    assert!(peer.address.starts_with("127.0.0.1:"), "{}", peer.address);
    assert_eq!(got, Message::Request { id: 1, op: Request::GetModule { name: "math".into() } });
}

/// A 10 MB frame of bytes (a reply carrying a `bytes` value, so that the
/// frame is made of several chunks) whose content depends on `seed`.
fn big(seed: u8, id: u64) -> (Frame, Bytes) {
    let data: Bytes = (0..10 << 20).map(|i: usize| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<u8>>().into();
    let frame = encode(&Message::Reply { id, result: Ok(Value::Bytes(data.clone())) });
    assert!(frame.chunks().len() > 1);
    (frame, data)
}

fn check_big(body: Bytes, want: &Bytes, id: u64) {
    match decode(body).unwrap() {
        Message::Reply { id: got, result: Ok(Value::Bytes(b)) } => {
            assert_eq!(got, id);
            assert!(b == *want, "10 MB payload {id} corrupted");
        }
        other => panic!("unexpected message {other:?}"),
    }
}

#[test]
fn ten_megabyte_frames_both_ways_at_once() {
    const ROUNDS: u64 = 3;
    let pki = Pki::new();
    let (listener, addr) = pki.listener();
    let client_cfg = pki.client("alice");
    within(120, move || {
        let server = thread::spawn(move || Arc::new(accept_one(&listener)));
        let client: Arc<dyn Connection> = Arc::new(TlsConnection::connect(&addr, "localhost", client_cfg, TIMEOUT, MAX, 16 << 20).unwrap());
        let server: Arc<Box<dyn Connection>> = server.join().unwrap();
        let (from_client, from_client_data) = big(1, 1);
        let (from_server, from_server_data) = big(2, 2);
        let mut threads = Vec::new();
        // Each side: one thread sends, another receives, at the same time.
        {
            let c = client.clone();
            threads.push(thread::spawn(move || {
                for _ in 0..ROUNDS {
                    c.send(&[&from_client]).unwrap();
                }
            }));
            let s = server.clone();
            threads.push(thread::spawn(move || {
                for _ in 0..ROUNDS {
                    s.send(&[&from_server]).unwrap();
                }
            }));
            let c = client.clone();
            threads.push(thread::spawn(move || {
                for _ in 0..ROUNDS {
                    check_big(c.recv().unwrap(), &from_server_data, 2);
                }
            }));
            let s = server.clone();
            threads.push(thread::spawn(move || {
                for _ in 0..ROUNDS {
                    check_big(s.recv().unwrap(), &from_client_data, 1);
                }
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        // Small frames still flow afterwards, from several senders at once.
        let senders: Vec<_> = (0..4)
            .map(|i| {
                let c = client.clone();
                thread::spawn(move || {
                    for j in 0..50 {
                        c.send(&[&request(i * 100 + j, "x")]).unwrap();
                    }
                })
            })
            .collect();
        let mut ids: Vec<u64> = (0..200)
            .map(|_| match decode(server.recv().unwrap()).unwrap() {
                Message::Request { id, .. } => id,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        ids.sort_unstable();
        let mut want: Vec<u64> = (0..4).flat_map(|i| (0..50).map(move |j| i * 100 + j)).collect();
        want.sort_unstable();
        assert_eq!(ids, want);
    });
}

#[test]
fn refusals_are_explained_and_the_listener_keeps_serving() {
    let pki = Pki::new();
    let (listener, addr) = pki.listener();
    let outcomes = serve(listener);
    let good = pki.client("alice");
    let next_outcome = || outcomes.recv_timeout(Duration::from_secs(20)).unwrap();

    // Each refused client: its error (connect, or first round trip).
    let attempt = |config: Arc<rustls::ClientConfig>, name: &str| -> String {
        let (addr, name) = (addr.clone(), name.to_owned());
        within(30, move || match TlsConnection::connect(&addr, &name, config, TIMEOUT, MAX, MAX) {
            Ok(c) => echo(&c).expect_err("a refused client got an answer"),
            Err(e) => e.to_string(),
        })
    };
    let good_round_trip = || {
        let (addr, good) = (addr.clone(), good.clone());
        within(30, move || {
            let c = TlsConnection::connect(&addr, "localhost", good, TIMEOUT, MAX, MAX).unwrap();
            echo(&c).unwrap();
        });
    };

    // No client certificate.
    let err = attempt(pki.client_with(None), "localhost");
    assert_mentions("no certificate, client", &err, &["CertificateRequired", "requires a client certificate"]);
    let server_err = next_outcome().unwrap_err();
    assert_mentions("no certificate, server", &server_err, &["TLS handshake with 127.0.0.1", "no certificate"]);
    good_round_trip();
    assert_eq!(next_outcome(), Ok(Some("alice".into())));

    // A certificate from another CA.
    let other = Authority::new("other CA").unwrap();
    let err = attempt(pki.client_with(Some(&other.issue_client("mallory").unwrap())), "localhost");
    assert_mentions("other CA, client", &err, &["UnknownCA", "does not trust the CA"]);
    let server_err = next_outcome().unwrap_err();
    assert_mentions("other CA, server", &server_err, &["UnknownIssuer", "client_ca"]);
    good_round_trip();
    assert_eq!(next_outcome(), Ok(Some("alice".into())));

    // An expired client certificate.
    let now = OffsetDateTime::now_utc();
    let expired = pki.ca.issue_client_valid("carol", now - time::Duration::days(30), now - time::Duration::days(1)).unwrap();
    let err = attempt(pki.client_with(Some(&expired)), "localhost");
    assert_mentions("expired, client", &err, &["CertificateExpired", "expired"]);
    let server_err = next_outcome().unwrap_err();
    assert_mentions("expired, server", &server_err, &["certificate expired", "has expired"]);
    good_round_trip();
    assert_eq!(next_outcome(), Ok(Some("alice".into())));

    // A server certificate for another name: refused by the client in connect.
    let err = attempt(good.clone(), "elsewhere.example");
    assert_mentions("server name, client", &err, &["TLS handshake with 127.0.0.1", "not valid for name", "server_name"]);
    let server_err = next_outcome().unwrap_err();
    assert_mentions("server name, server", &server_err, &["BadCertificate", "refused this server's certificate"]);
    good_round_trip();
    assert_eq!(next_outcome(), Ok(Some("alice".into())));

    // A client certificate from another CA of the same name (every CA
    // that `farcall certs` makes has the same name).
    let twin = Authority::new("test CA").unwrap();
    let err = attempt(pki.client_with(Some(&twin.issue_client("mallory").unwrap())), "localhost");
    assert_mentions("twin CA, client", &err, &["DecryptError", "refused this client's certificate"]);
    let server_err = next_outcome().unwrap_err();
    assert_mentions("twin CA, server", &server_err, &["BadSignature", "another CA of the same name"]);
    good_round_trip();
    assert_eq!(next_outcome(), Ok(Some("alice".into())));

    // Servers whose certificates come from CAs the client does not trust:
    // one named differently, one named like the client's.
    for (ca_name, words) in [
        ("stranger CA", ["UnknownIssuer", "not signed by the CA this client trusts"]),
        ("test CA", ["BadSignature", "another CA of the same name"]),
    ] {
        let ca = Authority::new(ca_name).unwrap();
        let cert = ca.issue_server(&["localhost".into()]).unwrap();
        let config = farcall_tls::server_config(&cert.pem_pair(), ca.cert_pem().as_bytes(), &[]).unwrap();
        let stranger = TlsListener::bind("127.0.0.1:0", config, MAX).unwrap();
        let stranger_addr = stranger.local_addr().unwrap().to_string();
        let _outcomes = serve(stranger);
        let good = good.clone();
        let err = within(30, move || TlsConnection::connect(&stranger_addr, "localhost", good, TIMEOUT, MAX, MAX).unwrap_err().to_string());
        assert_mentions("server CA, client", &err, &words);
    }
}

#[test]
fn plaintext_client_on_a_tls_port_fails_promptly() {
    let pki = Pki::new();
    let (listener, addr) = pki.listener();
    let outcomes = serve(listener);
    let err = within(20, move || {
        let c = TcpConnection::connect(&addr, TIMEOUT, MAX, MAX).unwrap();
        echo(&c).unwrap_err()
    });
    assert_mentions("plain client", &err, &["speaks TLS", "tls://"]);
    let server_err = outcomes.recv_timeout(Duration::from_secs(20)).unwrap().unwrap_err();
    assert_mentions("TLS server", &server_err, &["did not start a TLS handshake", "plain tcp:// client"]);
}

#[test]
fn tls_client_on_a_plain_port_fails_promptly() {
    let pki = Pki::new();
    let listener = TcpListener::bind("127.0.0.1:0", MAX).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let outcomes = serve(listener);
    let client = pki.client("alice");
    let err = within(20, move || TlsConnection::connect(&addr, "localhost", client, TIMEOUT, MAX, MAX).unwrap_err().to_string());
    assert_mentions("TLS client", &err, &["TLS handshake with", "not a tls:// port"]);
    let server_err = outcomes.recv_timeout(Duration::from_secs(20)).unwrap().unwrap_err();
    assert_mentions("plain server", &server_err, &["speaks TLS"]);
}

#[test]
fn a_silent_client_does_not_hold_up_others() {
    let pki = Pki::new();
    let (listener, addr) = pki.listener();
    let outcomes = serve(listener.with_handshake_timeout(Duration::from_millis(500)));
    // Connects and never says anything.
    let silent = std::net::TcpStream::connect(&addr).unwrap();
    let good = pki.client("alice");
    let addr2 = addr.clone();
    within(20, move || {
        let c = TlsConnection::connect(&addr2, "localhost", good, TIMEOUT, MAX, MAX).unwrap();
        echo(&c).unwrap();
    });
    let mut got = [outcomes.recv_timeout(Duration::from_secs(20)).unwrap(), outcomes.recv_timeout(Duration::from_secs(20)).unwrap()];
    got.sort_by_key(|o| o.is_err());
    assert_eq!(got[0], Ok(Some("alice".into())));
    assert_mentions("silent", got[1].as_ref().unwrap_err(), &["did not complete the TLS handshake within"]);
    drop(silent);
}

#[test]
fn frames_over_the_limit_are_refused() {
    let pki = Pki::new();
    let listener = TlsListener::bind("127.0.0.1:0", pki.server.clone(), 64 << 10).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let client_cfg = pki.client("alice");
    within(30, move || {
        let server = thread::spawn(move || accept_one(&listener));
        // The client accepts at most 1 KiB.
        let client = TlsConnection::connect(&addr, "localhost", client_cfg, TIMEOUT, 1024, 1024).unwrap();
        let server = server.join().unwrap();

        client.send(&[&raw(&[7u8; 1000])]).unwrap();
        assert_eq!(server.recv().unwrap().len(), 1000);
        server.send(&[&raw(&[8u8; 2000])]).unwrap();
        match client.recv() {
            Err(TransportError::Frame(FrameError::TooLarge { len: 2000, max: 1024 })) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }

        let big = vec![9u8; 100 << 10];
        client.send(&[&Frame::from_bytes(Route::Oneway, big.into())]).unwrap();
        match server.recv() {
            Err(TransportError::Frame(FrameError::TooLarge { len, max })) => {
                assert_eq!((len, max), (100 << 10, 64 << 10));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    });
}

#[test]
fn shutdown_unblocks_a_blocked_recv() {
    let pki = Pki::new();
    let (listener, addr) = pki.listener();
    let client_cfg = pki.client("alice");
    within(30, move || {
        let server = thread::spawn(move || Arc::new(accept_one(&listener)));
        let client = Arc::new(TlsConnection::connect(&addr, "localhost", client_cfg, TIMEOUT, MAX, MAX).unwrap());
        let server = server.join().unwrap();
        // Server side: complete the handshake, then block in recv.
        assert_eq!(server.peer().identity.as_deref(), Some("alice"));
        let s = server.clone();
        let blocked_server = thread::spawn(move || s.recv());
        let c = client.clone();
        let blocked_client = thread::spawn(move || c.recv());
        // Give both threads time to block (the outcome is the same if not).
        thread::sleep(Duration::from_millis(100));
        server.shutdown();
        let e = blocked_server.join().unwrap().unwrap_err();
        assert!(e.is_closed(), "{e}");
        // The client sees the server go away, then its own shutdown is idempotent.
        let e = blocked_client.join().unwrap().unwrap_err();
        assert!(e.is_closed(), "{e}");
        client.shutdown();
        client.shutdown();
        assert!(client.send(&[&request(1, "x")]).is_err());
        assert!(client.recv().unwrap_err().is_closed());
    });
}

#[test]
fn shutdown_unblocks_a_recv_waiting_for_the_handshake() {
    let pki = Pki::new();
    let (listener, addr) = pki.listener();
    within(30, move || {
        let _silent = std::net::TcpStream::connect(&addr).unwrap();
        let server = Arc::new(listener.accept().unwrap());
        let s = server.clone();
        let blocked = thread::spawn(move || s.recv());
        thread::sleep(Duration::from_millis(100));
        server.shutdown();
        let e = blocked.join().unwrap().unwrap_err();
        assert!(e.is_closed(), "{e}");
    });
}
