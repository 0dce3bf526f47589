// Mutual TLS over tls:// (and quic://): who gets in, who is refused and why,
// and that the server goes on serving others after each refusal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use farcall_client::{Client, ClientError, Options, Remote, RemoteObject};
use farcall_core::handshake::{self, ClientHello};
use farcall_core::{Connection, Frame, Request, Route};
use farcall_tests::{FakeEvaluator, TestCerts, TestServer, Transport};

fn fake(t: Transport) -> TestServer {
    TestServer::start_on(t, Arc::new(FakeEvaluator))
}

fn still_serves(server: &TestServer) {
    let c = server.client();
    let echo: RemoteObject = c.module("echo").unwrap().getattr("echo").unwrap().extract().unwrap();
    let back: Vec<Remote> = echo.call(vec![7.into()]).unwrap().extract().unwrap();
    assert!(matches!(back.as_slice(), [Remote::Int(7)]));
}

/// Connects with `options` and expects a refusal whose text contains one of `words`.
fn refused(server: &TestServer, options: &Options, words: &[&str]) {
    let started = Instant::now();
    let err = Client::connect(&server.url(), options).expect_err("the connection must be refused");
    assert!(started.elapsed() < Duration::from_secs(10), "refusal took {:?}", started.elapsed());
    let text = err.to_string();
    assert!(words.iter().any(|w| text.contains(w)), "error `{text}` names none of {words:?}");
    still_serves(server);
}

fn the_client_identity_reaches_the_server(t: Transport) {
    let server = fake(t);
    let c = server.client();
    let who: String = c.request(Request::GetModule { name: "whoami".into() }).unwrap().extract().unwrap();
    assert_eq!(who, "alice");
}

fn no_client_certificate_is_refused(t: Transport) {
    let server = fake(t);
    refused(
        &server,
        &TestCerts::get().client_options(None),
        &["CertificateRequired", "certificate required", "requires a client certificate"],
    );
}

fn a_certificate_from_another_ca_is_refused(t: Transport) {
    let server = fake(t);
    refused(&server, &TestCerts::get().client_options(Some("mallory")), &["UnknownCA", "UnknownIssuer", "does not trust"]);
}

fn an_expired_client_certificate_is_refused(t: Transport) {
    let server = fake(t);
    refused(&server, &TestCerts::get().client_options(Some("expired")), &["CertificateExpired", "expired"]);
}

fn a_server_certificate_for_another_name_is_refused(t: Transport) {
    let server = TestServer::with_options_on(t, Arc::new(FakeEvaluator), Default::default(), "other-name");
    let err = Client::connect(&server.url(), &server.options()).expect_err("wrong name");
    assert!(err.to_string().contains("not valid for name"), "{err}");
    // The same server, dialled by the name its certificate carries, is fine.
    let mut options = server.options();
    options.tls.as_mut().unwrap().server_name = Some("elsewhere.example".into());
    Client::connect(&server.url(), &options).expect("right name");
}

fn missing_tls_options_are_a_clear_error(t: Transport) {
    let server = fake(t);
    let err = Client::connect(&server.url(), &Options::default()).expect_err("no TLS options");
    assert!(matches!(err, ClientError::Address { .. }) && err.to_string().contains("ca"), "{err}");
    let mut options = server.options();
    options.tls.as_mut().unwrap().ca = TestCerts::get().path("missing-ca.pem");
    let err = Client::connect(&server.url(), &options).expect_err("missing file");
    assert!(err.to_string().contains("missing-ca.pem"), "{err}");
}

fn an_unknown_protocol_version_is_refused_clearly(t: Transport) {
    let server = fake(t);
    let certs = TestCerts::get();
    let config =
        farcall_tls::ClientTlsFiles { ca: certs.path("ca.pem"), cert: Some(certs.path("alice.pem")), key: Some(certs.path("alice.key")) }
            .load(&[farcall_client::ALPN])
            .unwrap();
    let conn: Box<dyn Connection> = match t {
        Transport::Tls => {
            Box::new(farcall_transport_tcp::TlsConnection::connect(&server.addr, "127.0.0.1", config, None, 1 << 20, 1 << 20).unwrap())
        }
        Transport::Quic => {
            Box::new(farcall_transport_quic::QuicConnection::connect(&server.addr, "127.0.0.1", config, None, 1 << 20).unwrap())
        }
        Transport::Tcp => unreachable!("only secure transports here"),
    };
    let mut hello = ClientHello::new("from the future");
    hello.protocol = 99;
    conn.send(&[&Frame::from_bytes(Route::Oneway, handshake::encode(&hello).into())]).unwrap();
    let reply = conn.recv().expect("a refusal");
    let err = handshake::decode_server_reply(&reply).expect_err("refused");
    assert!(err.to_string().contains("protocol version mismatch"), "{err}");
    still_serves(&server);
}

#[test]
fn a_plaintext_client_on_a_tls_port_fails_promptly() {
    let server = fake(Transport::Tls);
    let started = Instant::now();
    let err = Client::connect(&format!("tcp://{}", server.addr), &Options::default()).expect_err("plaintext to TLS");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(matches!(err, ClientError::ConnectionLost(_) | ClientError::Handshake(_) | ClientError::Connect { .. }), "{err}");
    still_serves(&server);
}

#[test]
fn a_tls_client_on_a_plaintext_port_fails_promptly() {
    let server = fake(Transport::Tcp);
    let started = Instant::now();
    let err =
        Client::connect(&format!("tls://{}", server.addr), &TestCerts::get().client_options(Some("alice"))).expect_err("TLS to plaintext");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(!err.to_string().is_empty());
    still_serves(&server);
}

macro_rules! secure_transports {
    ($($test:ident),* $(,)?) => {
        mod tls {
            $( #[test] fn $test() { super::$test(farcall_tests::Transport::Tls) } )*
        }
        mod quic {
            $( #[test] fn $test() { super::$test(farcall_tests::Transport::Quic) } )*
        }
    };
}

secure_transports!(
    the_client_identity_reaches_the_server,
    no_client_certificate_is_refused,
    a_certificate_from_another_ca_is_refused,
    an_expired_client_certificate_is_refused,
    a_server_certificate_for_another_name_is_refused,
    missing_tls_options_are_a_clear_error,
    an_unknown_protocol_version_is_refused_clearly,
);
