// Refused connections: a clear error on the client's side, and the listener
// goes on serving good clients; frames over the size limit.

use std::time::Duration;

use farcall_core::{Connection, FrameError, TransportError};
use time::OffsetDateTime;

use crate::*;

/// Expects `call` to fail with an error containing all of `words`, then a
/// good client to be served.
fn refused(server: &EchoServer, pki: &Pki, result: Result<bytes::Bytes, String>, words: &[&str]) -> String {
    let err = result.expect_err("the call should have been refused");
    for w in words {
        assert!(err.contains(w), "expected `{w}` in: {err}");
    }
    let ok = call_once(server, client_config(&pki.ca, Some(&pki.alice)), "localhost").unwrap();
    assert_eq!(&ok[..], b"ping");
    err
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let pki = pki();
    let server = echo_server(server_config(&pki), 1 << 20);
    let err =
        refused(&server, &pki, call_once(&server, client_config(&pki.ca, None), "localhost"), &["server requires a client certificate"]);
    eprintln!("client sees: {err}");
    let seen = server.refused.recv_timeout(Duration::from_secs(5)).unwrap();
    eprintln!("server sees: {seen}");
    assert!(seen.contains("127.0.0.1") && seen.contains("presented no certificate"), "{seen}");
}

#[test]
fn a_client_certificate_from_another_ca_is_refused() {
    let pki = pki();
    let server = echo_server(server_config(&pki), 1 << 20);
    let other = Authority::new("other CA").unwrap();
    let mallory = other.issue_client("mallory").unwrap();
    let err = refused(
        &server,
        &pki,
        call_once(&server, client_config(&pki.ca, Some(&mallory)), "localhost"),
        &["does not trust this client's certificate", "UnknownIssuer"],
    );
    eprintln!("client sees: {err}");
    eprintln!("server sees: {}", server.refused.recv_timeout(Duration::from_secs(5)).unwrap());
}

#[test]
fn an_expired_client_certificate_is_refused() {
    let pki = pki();
    let server = echo_server(server_config(&pki), 1 << 20);
    let now = OffsetDateTime::now_utc();
    let old = pki.ca.issue_client_valid("old", now - time::Duration::days(30), now - time::Duration::days(1)).unwrap();
    let err = refused(
        &server,
        &pki,
        call_once(&server, client_config(&pki.ca, Some(&old)), "localhost"),
        &["refused this client's certificate", "expired"],
    );
    eprintln!("client sees: {err}");
    eprintln!("server sees: {}", server.refused.recv_timeout(Duration::from_secs(5)).unwrap());
}

#[test]
fn a_server_certificate_for_another_name_is_refused() {
    let pki = pki();
    let elsewhere = pki.ca.issue_server(&["elsewhere.example".into()]).unwrap();
    let config = farcall_tls::server_config(&elsewhere.pem_pair(), pki.ca.cert_pem().as_bytes(), &[]).unwrap();
    let server = echo_server(config, 1 << 20);
    let err = call_once(&server, client_config(&pki.ca, Some(&pki.alice)), "localhost").unwrap_err();
    eprintln!("client sees: {err}");
    assert!(err.starts_with("connect:") && err.contains("server's certificate was refused") && err.contains("not valid for name"), "{err}");
    eprintln!("server sees: {}", server.refused.recv_timeout(Duration::from_secs(5)).unwrap());
    // The listener goes on (a client asking for the name it has).
    let ok = call_once(&server, client_config(&pki.ca, Some(&pki.alice)), "elsewhere.example").unwrap();
    assert_eq!(&ok[..], b"ping");
}

#[test]
fn a_peer_that_is_not_farcall_is_refused() {
    let pki = pki();
    let server = echo_server(server_config(&pki), 1 << 20);
    // A QUIC client offering another protocol (raw quinn, no farcall ALPN).
    let mut tls = (*client_config(&pki.ca, Some(&pki.alice))).clone();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let err = rt.block_on(async {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
        ep.connect(server.addr.parse().unwrap(), "localhost").unwrap().await.unwrap_err()
    });
    eprintln!("raw client sees: {err}");
    let seen = server.refused.recv_timeout(Duration::from_secs(5)).unwrap();
    eprintln!("server sees: {seen}");
    assert!(seen.contains("farcall/1"), "{seen}");
    assert_eq!(&call_once(&server, client_config(&pki.ca, Some(&pki.alice)), "localhost").unwrap()[..], b"ping");
}

#[test]
fn a_frame_over_the_limit_is_refused_on_either_side() {
    let pki = pki();
    // The server refuses a request over its limit...
    let server = echo_server(server_config(&pki), 1024);
    let conn = connect(&server, client_config(&pki.ca, Some(&pki.alice))).unwrap();
    conn.send(&[&request(1, &[0u8; 2000])]).unwrap();
    let ended = server.ended.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(matches!(ended, TransportError::Frame(FrameError::TooLarge { max: 1024, .. })), "{ended}");
    // ...and a client refuses a reply over its own.
    let server = echo_server(server_config(&pki), 1 << 20);
    let conn = QuicConnection::connect(&server.addr, "localhost", client_config(&pki.ca, Some(&pki.alice)), None, 1024).unwrap();
    conn.send(&[&request(1, &[0u8; 2000])]).unwrap();
    let err = conn.recv().unwrap_err();
    assert!(matches!(err, TransportError::Frame(FrameError::TooLarge { max: 1024, .. })), "{err}");
    // Smaller frames still pass on that connection.
    conn.send(&[&request(2, b"small")]).unwrap();
    assert_eq!(decode_reply(conn.recv().unwrap()).0, 2);
}
