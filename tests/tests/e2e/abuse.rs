// Bad input: garbage, huge lengths, truncated frames, unknown operations, wrong
// versions. Each is answered with a clear error or a close of that connection
// only, while another client connected at the same time keeps working.

use std::io::Write;
use std::net::Shutdown;
use std::sync::Arc;

use farcall_client::{Client, ClientError, Remote, RemoteObject};
use farcall_core::handshake::{self, ClientHello, HandshakeReply};
use farcall_core::{codec, Message, Request, Target, Value};
use farcall_tests::{closed_by_server, per_transport, read_frame, write_frame, FakeEvaluator, TestServer, Transport};

fn fake_server() -> TestServer {
    TestServer::start(Arc::new(FakeEvaluator))
}

/// A call through a well-behaved client; proves the server still serves it.
fn echo_works(client: &Client) {
    let echo: RemoteObject = client.module("echo").unwrap().getattr("echo").unwrap().extract().unwrap();
    let back: Vec<Remote> = echo.call(vec![1.into(), "x".into()]).unwrap().extract().unwrap();
    assert!(matches!(back.as_slice(), [Remote::Int(1), Remote::Str(s)] if s == "x"));
}

#[test]
fn garbage_instead_of_a_handshake_closes_only_that_connection() {
    let server = fake_server();
    let good = server.client();
    echo_works(&good);
    let mut bad = server.raw();
    bad.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closed_by_server(&mut bad));
    echo_works(&good);
}

#[test]
fn a_handshake_that_is_not_farcall_is_refused_with_a_reason() {
    let server = fake_server();
    let good = server.client();
    let mut bad = server.raw();
    write_frame(&mut bad, b"\x93\x01\x02\x03");
    let reply = read_frame(&mut bad).expect("a refusal");
    let HandshakeReply::Refuse(why) = rmp_decode(&reply) else { panic!("not refused") };
    assert!(why.contains("did not send a farcall handshake"), "{why}");
    echo_works(&good);
}

fn rmp_decode(b: &[u8]) -> HandshakeReply {
    match handshake::decode_server_reply(b) {
        Ok(h) => HandshakeReply::Accept(h),
        Err(handshake::HandshakeError::Refused(why)) => HandshakeReply::Refuse(why),
        Err(e) => panic!("undecodable handshake reply: {e}"),
    }
}

#[test]
fn a_wrong_protocol_version_is_refused_clearly() {
    let server = fake_server();
    let good = server.client();
    let mut bad = server.raw();
    let mut hello = ClientHello::new("from the future");
    hello.protocol = 99;
    hello.farcall_version = "9.9.9".into();
    write_frame(&mut bad, &handshake::encode(&hello));
    let reply = read_frame(&mut bad).expect("a refusal");
    let HandshakeReply::Refuse(why) = rmp_decode(&reply) else { panic!("not refused") };
    assert!(why.contains("protocol version mismatch") && why.contains("version 99"), "{why}");
    assert!(closed_by_server(&mut bad));
    echo_works(&good);
}

#[test]
fn a_huge_length_prefix_is_refused_before_allocation() {
    let server = fake_server();
    let good = server.client();
    let mut bad = server.raw_after_handshake();
    bad.write_all(&[0xff, 0xff, 0xff, 0xf0]).unwrap();
    assert!(closed_by_server(&mut bad));
    echo_works(&good);
}

#[test]
fn a_truncated_frame_closes_only_that_connection() {
    let server = fake_server();
    let good = server.client();
    let mut bad = server.raw_after_handshake();
    bad.write_all(&[0, 0, 0, 100, 1, 2, 3]).unwrap();
    bad.shutdown(Shutdown::Write).unwrap();
    assert!(closed_by_server(&mut bad));
    echo_works(&good);
}

#[test]
fn malformed_messages_close_only_that_connection() {
    let server = fake_server();
    let good = server.client();
    let mut bad = server.raw_after_handshake();
    write_frame(&mut bad, &[0xc1, 0xc1, 0xc1]);
    assert!(closed_by_server(&mut bad));
    echo_works(&good);
}

#[test]
fn an_unknown_operation_gets_an_error_reply_and_the_connection_goes_on() {
    let server = fake_server();
    let good = server.client();
    let mut raw = server.raw_after_handshake();
    // [0, 7, 99]: request 7 for opcode 99.
    write_frame(&mut raw, &[0x93, 0x00, 0x07, 0x63]);
    let reply = codec::decode(read_frame(&mut raw).expect("a reply").into()).unwrap();
    let Message::Reply { id: 7, result: Err(e) } = reply else { panic!("expected an error reply to 7, got {reply:?}") };
    assert_eq!(e.qualified_type(), "farcall.ProtocolError");
    assert!(e.message.contains("unknown operation 99"), "{}", e.message);
    // The same connection still serves requests.
    let req = codec::encode(&Message::Request { id: 8, op: Request::GetModule { name: "echo".into() } });
    write_frame(&mut raw, &req.to_bytes());
    let reply = codec::decode(read_frame(&mut raw).expect("a reply").into()).unwrap();
    assert!(matches!(reply, Message::Reply { id: 8, result: Ok(Value::SenderObject(_)) }), "{reply:?}");
    echo_works(&good);
}

fn a_reference_to_an_unknown_object_is_an_error_not_a_crash(t: Transport) {
    let server = TestServer::start_on(t, Arc::new(FakeEvaluator));
    let client = server.client();
    let err = client.request(Request::Call { target: Target::object(12345), args: vec![], kwargs: vec![] }).unwrap_err();
    assert!(matches!(err, ClientError::Remote(ref e) if e.type_name == "ProtocolError"), "{err:?}");
    echo_works(&client);
}

#[test]
fn a_client_vanishing_mid_call_does_not_disturb_others() {
    let server = fake_server();
    let good = server.client();
    let mut raw = server.raw_after_handshake();
    let get = codec::encode(&Message::Request { id: 1, op: Request::GetModule { name: "echo".into() } });
    write_frame(&mut raw, &get.to_bytes());
    drop(raw);
    echo_works(&good);
}

fn closing_a_client_fails_its_calls_with_connection_lost(t: Transport) {
    let server = TestServer::start_on(t, Arc::new(FakeEvaluator));
    let client = server.client();
    echo_works(&client);
    client.close();
    client.close();
    assert!(matches!(client.module("echo"), Err(ClientError::ConnectionLost(_))));
}

fn the_server_going_away_mid_call_is_connection_lost_not_a_hang(t: Transport) {
    let server = TestServer::start_on(t, Arc::new(FakeEvaluator));
    let client = server.client();
    let sleep: RemoteObject = client.module("echo").unwrap().getattr("sleep").unwrap().extract().unwrap();
    let call = std::thread::spawn(move || sleep.call(vec![Remote::Float(30.0)]));
    // Shut down once the call is being served.
    while server.server.session_count() == 0 {
        std::thread::yield_now();
    }
    server.server.shutdown();
    let result = call.join().unwrap();
    assert!(matches!(result, Err(ClientError::ConnectionLost(_))), "{result:?}");
}

fn connection_limit_is_a_clear_refusal(t: Transport) {
    let options = farcall_server::ServerOptions { max_connections: 1, ..Default::default() };
    let server = TestServer::with_options_on(t, Arc::new(FakeEvaluator), options, "server");
    let first = server.client();
    let second = Client::connect(&server.url(), &server.options());
    match second {
        Err(ClientError::Handshake(e)) => {
            assert!(e.to_string().contains("limit of 1 connections"), "{e}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    echo_works(&first);
}

per_transport!(
    a_reference_to_an_unknown_object_is_an_error_not_a_crash,
    closing_a_client_fails_its_calls_with_connection_lost,
    the_server_going_away_mid_call_is_connection_lost_not_a_hang,
    connection_limit_is_a_clear_refusal,
);

/// The harness serves any evaluator: here the fake shipped as a plugin,
/// loaded through the C ABI, driven by a real client over every transport.
fn the_fake_plugin_serves_a_real_client(t: Transport) {
    let server = TestServer::start_on(t, farcall_tests::plugin_fake());
    let c = server.client();
    assert_eq!(c.server().backend, "fake");
    let pow: RemoteObject = c.module("math").unwrap().getattr("pow").unwrap().extract().unwrap();
    let r: f64 = pow.call(vec![3.into(), 2.into()]).unwrap().extract().unwrap();
    assert_eq!(r, 9.0);
    let held: Vec<Remote> = (0..100)
        .map(|_| c.module("echo").unwrap().getattr("obj").unwrap().extract::<RemoteObject>().unwrap().call(vec![]).unwrap())
        .collect();
    let (live, _) = c.stats().unwrap();
    drop(held);
    c.flush_releases().unwrap();
    let (after, _) = c.stats().unwrap();
    assert!(after + 100 <= live, "{live} -> {after}");
}

mod plugin {
    farcall_tests::per_transport!(the_fake_plugin_serves_a_real_client);
    use super::the_fake_plugin_serves_a_real_client;
}
