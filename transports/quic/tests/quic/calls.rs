// Calls over one QUIC connection: round trips, large frames, routing of
// replies to their calls, a slow call not delaying others, one-way order.

use std::time::{Duration, Instant};

use bytes::Bytes;
use farcall_core::codec::{decode, encode};
use farcall_core::{Connection, Message, Release};

use crate::*;

#[test]
fn a_round_trip_shows_the_client_identity_to_the_server() {
    let pki = pki();
    let server = echo_server(server_config(&pki), 1 << 20);
    assert!(server.url.starts_with("quic://127.0.0.1:") && !server.url.ends_with(":0"), "{}", server.url);
    let conn = connect(&server, client_config(&pki.ca, Some(&pki.alice))).unwrap();
    assert_eq!(conn.peer().transport, "quic");
    assert_eq!(conn.peer().identity.as_deref(), Some("localhost"), "the server's identity");
    conn.send(&[&request(7, b"hello")]).unwrap();
    let (id, payload) = decode_reply(conn.recv().unwrap());
    assert_eq!((id, &payload[..]), (7, &b"hello"[..]));
    assert_eq!(server.accepted.recv().unwrap().as_deref(), Some("alice"));
}

#[test]
fn ten_megabytes_each_way_arrive_intact() {
    let pki = pki();
    let server = echo_server(server_config(&pki), 64 << 20);
    let conn = connect(&server, client_config(&pki.ca, Some(&pki.alice))).unwrap();
    let big: Vec<u8> = (0..10_000_000u32).map(|i| (i % 251) as u8).collect();
    for round in 0..2 {
        conn.send(&[&request(round, &big)]).unwrap();
        let (id, payload) = decode_reply(conn.recv().unwrap());
        assert_eq!(id, round);
        assert!(payload == big, "round {round}: the echo differs");
    }
}

#[test]
fn replies_of_calls_in_flight_find_their_calls() {
    let pki = pki();
    let server = echo_server(server_config(&pki), 1 << 20);
    let conn = connect(&server, client_config(&pki.ca, Some(&pki.alice))).unwrap();
    // A slow call first, then many quick ones from several threads at once.
    conn.send(&[&request(1000, b"slow")]).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let conn = &conn;
            s.spawn(move || {
                for i in 0..25u64 {
                    let id = t * 100 + i;
                    conn.send(&[&request(id, format!("call {id}").as_bytes())]).unwrap();
                }
            });
        }
    });
    let mut seen = std::collections::HashSet::new();
    for _ in 0..101 {
        let (id, payload) = decode_reply(conn.recv().unwrap());
        let expected = if id == 1000 { "slow".to_owned() } else { format!("call {id}") };
        assert_eq!(payload, expected.as_bytes(), "reply {id}");
        assert!(seen.insert(id), "reply {id} twice");
    }
}

#[test]
fn a_slow_reply_does_not_delay_another_call() {
    let pki = pki();
    let server = echo_server(server_config(&pki), 1 << 20);
    let conn = connect(&server, client_config(&pki.ca, Some(&pki.alice))).unwrap();
    conn.send(&[&request(1, b"ping")]).unwrap();
    decode_reply(conn.recv().unwrap());
    let start = Instant::now();
    conn.send(&[&request(2, b"slow")]).unwrap();
    conn.send(&[&request(3, b"quick")]).unwrap();
    let (id, _) = decode_reply(conn.recv().unwrap());
    let quick = start.elapsed();
    assert_eq!(id, 3);
    assert!(quick < Duration::from_secs(1), "the quick reply took {quick:?}");
    let (id, _) = decode_reply(conn.recv().unwrap());
    assert_eq!(id, 2);
    assert!(start.elapsed() >= Duration::from_secs(2));
}

#[test]
fn one_way_frames_keep_their_order_and_precede_later_calls() {
    let pki = pki();
    let server = echo_server(server_config(&pki), 1 << 20);
    let conn = connect(&server, client_config(&pki.ca, Some(&pki.alice))).unwrap();
    let release = |n: u64| encode(&Message::Release(vec![Release { id: n, count: 1 }]));
    for n in 0..50 {
        conn.send(&[&release(n)]).unwrap();
    }
    conn.send(&[&request(1, b"after")]).unwrap();
    // The server echoes releases one way as it receives them, and has
    // received all of them before the call.
    for n in 0..50 {
        match decode(conn.recv().unwrap()).unwrap() {
            Message::Release(r) => assert_eq!(r[0].id, n),
            other => panic!("expected release {n}, got {other:?}"),
        }
    }
    let (id, payload) = decode_reply(conn.recv().unwrap());
    assert_eq!((id, &payload[..]), (1, &b"after"[..]));
}

#[test]
fn a_call_carrying_releases_delivers_them_first() {
    let pki = pki();
    let server = echo_server(server_config(&pki), 1 << 20);
    let conn = connect(&server, client_config(&pki.ca, Some(&pki.alice))).unwrap();
    let release = encode(&Message::Release(vec![Release { id: 9, count: 2 }]));
    conn.send(&[&release, &request(4, b"x")]).unwrap();
    assert!(matches!(decode(conn.recv().unwrap()).unwrap(), Message::Release(_)));
    assert_eq!(decode_reply(conn.recv().unwrap()).0, 4);
}

#[test]
fn requests_flow_both_ways() {
    // The protocol is symmetric: the accepting side calls the connecting side.
    let pki = pki();
    let listener = farcall_transport_quic::QuicListener::bind("127.0.0.1:0", server_config(&pki), 1 << 20).unwrap();
    let addr = farcall_core::Listener::local_url(&listener).trim_start_matches("quic://").to_owned();
    let cc = client_config(&pki.ca, Some(&pki.alice));
    let client = std::thread::spawn(move || {
        let conn = farcall_transport_quic::QuicConnection::connect(&addr, "localhost", cc, None, 1 << 20).unwrap();
        conn.send(&[&request(1, b"from client")]).unwrap();
        // First the server's own request, answered here; then our reply.
        let (id, op) = match decode(conn.recv().unwrap()).unwrap() {
            Message::Request { id, op } => (id, op),
            other => panic!("{other:?}"),
        };
        assert!(matches!(op, farcall_core::Request::Call { .. }));
        conn.send(&[&reply(id, Bytes::from_static(b"answer from client"))]).unwrap();
        let (id, payload) = decode_reply(conn.recv().unwrap());
        assert_eq!((id, &payload[..]), (1, &b"from client"[..]));
        conn
    });
    let conn = farcall_core::Listener::accept(&listener).unwrap();
    let (id, payload) = match decode(conn.recv().unwrap()).unwrap() {
        Message::Request { id, op: farcall_core::Request::Call { mut args, .. } } => match args.pop() {
            Some(farcall_core::Value::Bytes(b)) => (id, b),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    conn.send(&[&request(50, b"from server")]).unwrap();
    let (rid, answer) = decode_reply(conn.recv().unwrap());
    assert_eq!((rid, &answer[..]), (50, &b"answer from client"[..]));
    conn.send(&[&reply(id, payload)]).unwrap();
    client.join().unwrap();
}

#[test]
fn many_threads_on_both_sides_share_one_connection() {
    // The server's shape: threads take turns reading (leader/followers) and
    // each answers what it read; the client's: several threads sending, one
    // reading at a time.
    let pki = pki();
    let listener = farcall_transport_quic::QuicListener::bind("127.0.0.1:0", server_config(&pki), 1 << 20).unwrap();
    let addr = farcall_core::Listener::local_url(&listener).trim_start_matches("quic://").to_owned();
    let server = std::thread::spawn(move || {
        let conn = farcall_core::Listener::accept(&listener).unwrap();
        let reading = std::sync::Mutex::new(());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| loop {
                    let body = {
                        let _turn = reading.lock().unwrap();
                        match conn.recv() {
                            Ok(b) => b,
                            Err(_) => return,
                        }
                    };
                    let Message::Request { id, op: farcall_core::Request::Call { mut args, .. } } = decode(body).unwrap() else {
                        panic!("not a call")
                    };
                    let Some(farcall_core::Value::Bytes(payload)) = args.pop() else { panic!("no payload") };
                    if conn.send(&[&reply(id, payload)]).is_err() {
                        return;
                    }
                });
            }
        });
    });
    let conn = farcall_transport_quic::QuicConnection::connect(&addr, "localhost", client_config(&pki.ca, Some(&pki.alice)), None, 1 << 20)
        .unwrap();
    const THREADS: u64 = 6;
    const CALLS: u64 = 300;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let conn = &conn;
            s.spawn(move || {
                for i in 0..CALLS {
                    let id = t * 10_000 + i;
                    let payload = vec![(id % 251) as u8; (id % 5000) as usize];
                    conn.send(&[&request(id, &payload)]).unwrap();
                }
            });
        }
        let mut seen = std::collections::HashSet::new();
        while seen.len() < (THREADS * CALLS) as usize {
            let (id, payload) = decode_reply(conn.recv().unwrap());
            assert_eq!(payload.len(), (id % 5000) as usize, "reply {id}");
            assert!(payload.iter().all(|&b| b == (id % 251) as u8), "reply {id}");
            assert!(seen.insert(id), "reply {id} twice");
        }
    });
    farcall_core::Connection::shutdown(&conn);
    server.join().unwrap();
}
