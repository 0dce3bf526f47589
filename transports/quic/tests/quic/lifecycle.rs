// Closing: shutdown unblocks a waiting recv, the peer sees the close, what
// was sent just before closing is delivered, a silent peer times out.

use std::time::{Duration, Instant};

use bytes::Bytes;
use farcall_core::{Connection, Frame, Listener, Route, TransportError};

use crate::*;

#[test]
fn shutdown_unblocks_a_waiting_recv_and_the_peer_sees_closed() {
    let pki = pki();
    let server = echo_server(server_config(&pki), 1 << 20);
    let conn = connect(&server, client_config(&pki.ca, Some(&pki.alice))).unwrap();
    conn.send(&[&request(1, b"ping")]).unwrap();
    decode_reply(conn.recv().unwrap());
    std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            let start = Instant::now();
            (conn.recv(), start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        conn.shutdown();
        let shutdown_took = start.elapsed();
        let (result, waited) = waiting.join().unwrap();
        assert!(matches!(result, Err(TransportError::Closed)), "{result:?}");
        eprintln!("shutdown took {shutdown_took:?}; recv waited {waited:?}");
        assert!(shutdown_took < Duration::from_secs(2));
    });
    assert!(matches!(conn.send(&[&request(2, b"late")]), Err(TransportError::Closed)));
    assert!(matches!(conn.recv(), Err(TransportError::Closed)));
    let ended = server.ended.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(matches!(ended, TransportError::Closed), "the server saw {ended}");
}

#[test]
fn a_frame_sent_just_before_shutdown_is_delivered() {
    // What the server does to refuse a handshake: one frame, then close.
    let pki = pki();
    let listener = QuicListener::bind("127.0.0.1:0", server_config(&pki), 1 << 20).unwrap();
    let addr = listener.local_url().trim_start_matches("quic://").to_owned();
    let cc = client_config(&pki.ca, Some(&pki.alice));
    let client = std::thread::spawn(move || {
        let conn = QuicConnection::connect(&addr, "localhost", cc, None, 1 << 20).unwrap();
        conn.send(&[&Frame::from_bytes(Route::Oneway, Bytes::from_static(b"hello"))]).unwrap();
        let first = conn.recv();
        let second = conn.recv();
        (first, second)
    });
    let conn = listener.accept().unwrap();
    assert_eq!(&conn.recv().unwrap()[..], b"hello");
    conn.send(&[&Frame::from_bytes(Route::Oneway, Bytes::from_static(b"refused: go away"))]).unwrap();
    conn.shutdown();
    let (first, second) = client.join().unwrap();
    assert_eq!(&first.unwrap()[..], b"refused: go away");
    assert!(matches!(second, Err(TransportError::Closed)), "{second:?}");
}

#[test]
fn a_recv_timeout_is_honoured() {
    let pki = pki();
    let server = echo_server(server_config(&pki), 1 << 20);
    let conn = connect(&server, client_config(&pki.ca, Some(&pki.alice))).unwrap();
    conn.set_recv_timeout(Some(Duration::from_millis(200))).unwrap();
    let start = Instant::now();
    let err = conn.recv().unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(matches!(&err, TransportError::Io { source, .. } if source.kind() == std::io::ErrorKind::TimedOut), "{err}");
    // The connection is still usable afterwards.
    conn.set_recv_timeout(None).unwrap();
    conn.send(&[&request(1, b"ping")]).unwrap();
    assert_eq!(decode_reply(conn.recv().unwrap()).0, 1);
}

#[test]
fn dropping_a_connection_closes_it_for_the_peer() {
    let pki = pki();
    let server = echo_server(server_config(&pki), 1 << 20);
    let conn = connect(&server, client_config(&pki.ca, Some(&pki.alice))).unwrap();
    conn.send(&[&request(1, b"ping")]).unwrap();
    decode_reply(conn.recv().unwrap());
    drop(conn);
    let ended = server.ended.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(matches!(ended, TransportError::Closed), "the server saw {ended}");
}

#[test]
fn connecting_to_a_port_nobody_serves_times_out_clearly() {
    let pki = pki();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap(); // silent
    let addr = socket.local_addr().unwrap().to_string();
    let start = Instant::now();
    let err =
        QuicConnection::connect(&addr, "localhost", client_config(&pki.ca, Some(&pki.alice)), Some(Duration::from_millis(300)), 1 << 20)
            .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3));
    let text = err.to_string();
    assert!(text.contains(&addr) && text.contains("no QUIC handshake"), "{text}");
}
