// Calls over real networks: overlapping calls on one connection, and the
// example and a 10 MB transfer across an impaired link (50 ms round trip,
// loss, jitter, reordering) through the test relays.

use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use farcall_client::{Client, Remote, RemoteObject};
use farcall_tests::relay::{Impairment, TcpRelay, UdpRelay};
use farcall_tests::{embedded, per_transport, FakeEvaluator, TestServer, Transport};

use crate::seed;

/// While one call sleeps two seconds on the server, another call on the same
/// connection from another thread returns in well under a second.
fn a_slow_call_does_not_hold_up_another_on_the_same_connection(t: Transport) {
    let server = TestServer::start_on(t, Arc::new(FakeEvaluator));
    let c = server.client();
    let echo = c.module("echo").unwrap();
    let sleep: RemoteObject = echo.getattr("sleep").unwrap().extract().unwrap();
    let quick: RemoteObject = echo.getattr("echo").unwrap().extract().unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let slow = std::thread::spawn(move || {
        started_tx.send(Instant::now()).unwrap();
        sleep.call(vec![Remote::Float(2.0)])
    });
    let slow_started = started_rx.recv().unwrap();
    let t0 = Instant::now();
    let back: Vec<Remote> = quick.call(vec![1.into()]).unwrap().extract().unwrap();
    let took = t0.elapsed();
    assert!(matches!(back.as_slice(), [Remote::Int(1)]));
    assert!(took < Duration::from_millis(900), "the quick call took {took:?} behind the slow one");
    slow.join().unwrap().unwrap();
    assert!(slow_started.elapsed() >= Duration::from_secs(2));
}

per_transport!(a_slow_call_does_not_hold_up_another_on_the_same_connection);

fn addr(server: &TestServer) -> SocketAddr {
    server.addr.parse().expect("socket address")
}

/// Runs the seed example, then a 10 MB transfer each way, each connection
/// through a relay of its own made by `relay` (a UDP relay serves one client).
fn example_and_transfer<R>(server: &TestServer, relay: impl Fn() -> (R, SocketAddr)) {
    let url = |a: SocketAddr| format!("{}://{a}", server.transport.scheme());
    let options = server.options();
    let (_first, a) = relay();
    let lines = seed::run(&url(a), &options).expect("the example runs across the impaired link");
    assert!(lines.iter().any(|l| l == "math.pow(3, 2) = 9"), "{lines:?}");
    let (_second, b) = relay();
    let c = Client::connect(&url(b), &options).expect("connects across the impaired link");
    let urandom: RemoteObject = c.module("os").unwrap().getattr("urandom").unwrap().extract().unwrap();
    let data: Vec<u8> = urandom.call(vec![10_000_000.into()]).unwrap().extract().unwrap();
    assert_eq!(data.len(), 10_000_000);
    // Send it back and compare digests computed on the server and here.
    let sha: RemoteObject = c.module("hashlib").unwrap().getattr("sha256").unwrap().extract().unwrap();
    let h: RemoteObject = sha.call(vec![Remote::Bytes(data.clone().into())]).unwrap().extract().unwrap();
    let remote_digest: String = h.getattr("hexdigest").unwrap().extract::<RemoteObject>().unwrap().call(vec![]).unwrap().extract().unwrap();
    let local: RemoteObject = sha.call(vec![Remote::Bytes(data.into())]).unwrap().extract().unwrap();
    let echoed: String = local.getattr("hexdigest").unwrap().extract::<RemoteObject>().unwrap().call(vec![]).unwrap().extract().unwrap();
    assert_eq!(remote_digest, echoed);
    assert_eq!(remote_digest.len(), 64);
}

#[test]
fn quic_across_50ms_rtt_and_2_percent_loss() {
    let server = TestServer::start_on(Transport::Quic, embedded());
    let imp =
        Impairment::rtt(Duration::from_millis(50)).with_loss(0.02).with_jitter(Duration::from_millis(2)).with_reorder(0.01).with_seed(7);
    let relays = std::sync::Mutex::new(Vec::new());
    example_and_transfer(&server, || {
        let relay = Arc::new(UdpRelay::start(addr(&server), imp).expect("relay"));
        relays.lock().unwrap().push(relay.clone());
        let a = relay.local_addr();
        (relay, a)
    });
    let dropped: u64 = relays.lock().unwrap().iter().map(|r| r.stats().to_upstream.dropped + r.stats().to_client.dropped).sum();
    assert!(dropped > 0, "the relays really dropped datagrams");
}

#[test]
fn tls_across_50ms_rtt() {
    let server = TestServer::start_on(Transport::Tls, embedded());
    let relay = TcpRelay::start(addr(&server), Impairment::rtt(Duration::from_millis(50))).expect("relay");
    example_and_transfer(&server, || ((), relay.local_addr()));
}
