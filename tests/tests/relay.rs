//! The impairment relays (UDP and TCP) and the `farcall-relay` binary, on
//! loopback: delay, loss, reordering, throughput, ordering, lifecycle.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use farcall_tests::relay::{enlarge_socket_buffers, Impairment, TcpRelay, UdpRelay, UdpStats};

const MS: Duration = Duration::from_millis(1);
/// How long any single wait in these tests may take before the test fails.
const BOUND: Duration = Duration::from_secs(20);

/// A UDP socket on 127.0.0.1 port 0 with large buffers and a read timeout.
fn udp_socket(read_timeout: Duration) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    s.set_read_timeout(Some(read_timeout)).expect("timeout");
    enlarge_socket_buffers(&s, 8 << 20);
    s
}

/// A UDP echo server counting the datagrams it echoed; stops when dropped.
struct UdpEcho {
    addr: SocketAddr,
    echoed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    fn start() -> Self {
        let socket = udp_socket(10 * MS);
        let addr = socket.local_addr().unwrap();
        let echoed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (echoed.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !s.load(Ordering::SeqCst) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    socket.send_to(&buf[..n], from).expect("echo");
                    e.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        UdpEcho { addr, echoed, stop, thread: Some(thread) }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn seq_datagram(i: u32, len: usize) -> Vec<u8> {
    let mut d = vec![(i % 251) as u8; len.max(4)];
    d[..4].copy_from_slice(&i.to_be_bytes());
    d
}

fn seq_of(d: &[u8]) -> u32 {
    u32::from_be_bytes(d[..4].try_into().unwrap())
}

#[test]
fn udp_round_trip_takes_the_added_rtt() {
    let echo = UdpEcho::start();
    let relay = UdpRelay::start(echo.addr, Impairment::rtt(50 * MS)).unwrap();
    let client = udp_socket(BOUND);
    let mut buf = [0u8; 64];
    for i in 0..5u32 {
        let t = Instant::now();
        client.send_to(&seq_datagram(i, 16), relay.local_addr()).unwrap();
        let (n, from) = client.recv_from(&mut buf).expect("echo through the relay");
        let rtt = t.elapsed();
        assert_eq!(from, relay.local_addr(), "replies come from the relay");
        assert_eq!(&buf[..n], &seq_datagram(i, 16)[..]);
        assert!(rtt >= 50 * MS, "round trip {rtt:?} < 50 ms");
        assert!(rtt < 2000 * MS, "round trip {rtt:?} is far too slow");
    }
    assert_eq!(relay.client(), Some(client.local_addr().unwrap()));
    let s = relay.stats();
    assert_eq!((s.to_upstream.forwarded, s.to_client.forwarded), (5, 5));
    assert_eq!((s.to_upstream.dropped, s.to_client.dropped), (0, 0));
}

/// Waits until every datagram sent by the client has been dealt with on the
/// way up, echoed, and dealt with on the way down, counting what reaches the
/// client; returns the relay's stats and that count.
fn settle_echo(relay: &UdpRelay, echo: &UdpEcho, client: &UdpSocket, sent: u64) -> (UdpStats, u64) {
    let deadline = Instant::now() + BOUND;
    let mut buf = [0u8; 2048];
    let mut arrived = 0u64;
    loop {
        let s = relay.stats();
        let echoed = echo.echoed.load(Ordering::SeqCst);
        if s.to_upstream.received == sent
            && s.to_upstream.settled()
            && echoed == s.to_upstream.forwarded
            && s.to_client.received == echoed
            && s.to_client.settled()
            && arrived == s.to_client.forwarded
        {
            return (s, arrived);
        }
        assert!(Instant::now() < deadline, "never settled: {s:?}, echoed {echoed}, arrived {arrived}");
        // The read timeout only paces the checks.
        if client.recv_from(&mut buf).is_ok() {
            arrived += 1;
        }
    }
}

#[test]
fn udp_loss_drops_about_the_requested_share_each_way_and_stats_agree() {
    let echo = UdpEcho::start();
    let imp = Impairment::delay(2 * MS).with_loss(0.5).with_seed(42);
    let relay = UdpRelay::start(echo.addr, imp).unwrap();
    let client = udp_socket(5 * MS);
    for i in 0..1000 {
        client.send_to(&seq_datagram(i, 32), relay.local_addr()).unwrap();
    }
    let (s, arrived) = settle_echo(&relay, &echo, &client, 1000);
    let up = s.to_upstream;
    let down = s.to_client;
    assert!((400..=600).contains(&up.dropped), "dropped on the way up: {s:?}");
    assert_eq!(up.forwarded + up.dropped, 1000, "{s:?}");
    let share = down.dropped as f64 / down.received as f64;
    assert!((0.35..=0.65).contains(&share), "dropped on the way down: {s:?}");
    assert_eq!(down.forwarded + down.dropped, down.received, "{s:?}");
    assert_eq!(arrived, down.forwarded);
    assert_eq!((up.overflowed, down.overflowed), (0, 0));
    assert_eq!((up.send_failed, down.send_failed, s.ignored), (0, 0, 0));
    assert_eq!((up.queued, down.queued), (0, 0));
}

/// Sends `n` numbered datagrams through a relay with `imp` into a plain
/// socket, returning the sequence numbers in arrival order and the stats.
fn one_way(imp: Impairment, n: u32, len: usize) -> (Vec<u32>, UdpStats, Duration) {
    let sink = udp_socket(BOUND);
    let relay = UdpRelay::start(sink.local_addr().unwrap(), imp).unwrap();
    let client = udp_socket(BOUND);
    let t = Instant::now();
    for i in 0..n {
        client.send_to(&seq_datagram(i, len), relay.local_addr()).unwrap();
    }
    // Everything the relay keeps is eventually forwarded or dropped.
    let deadline = Instant::now() + BOUND;
    let mut buf = vec![0u8; 65_536];
    let mut order = Vec::new();
    loop {
        let s = relay.stats();
        if s.to_upstream.received == u64::from(n) && s.to_upstream.settled() && order.len() as u64 == s.to_upstream.forwarded {
            return (order, s, t.elapsed());
        }
        assert!(Instant::now() < deadline, "never settled: {s:?}");
        sink.set_read_timeout(Some(5 * MS)).unwrap();
        if let Ok((got, _)) = sink.recv_from(&mut buf) {
            assert_eq!(&buf[..got], &seq_datagram(seq_of(&buf), len)[..], "intact");
            order.push(seq_of(&buf));
        }
    }
}

#[test]
fn udp_loss_is_reproducible_with_the_same_seed() {
    let imp = Impairment::delay(MS).with_loss(0.3).with_seed(7);
    let (first, s1, _) = one_way(imp, 500, 16);
    let (second, s2, _) = one_way(imp, 500, 16);
    assert_eq!(first, second, "the same datagrams are lost");
    assert_eq!(s1.to_upstream, s2.to_upstream);
    let (third, _, _) = one_way(imp.with_seed(8), 500, 16);
    assert_ne!(first, third, "another seed loses others");
}

#[test]
fn udp_reorder_sends_held_datagrams_after_the_next_one() {
    let imp = Impairment::delay(5 * MS).with_reorder(0.3).with_seed(3);
    let (order, s, _) = one_way(imp, 300, 64);
    let up = s.to_upstream;
    assert_eq!(order.len(), 300, "no loss: {s:?}");
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..300).collect::<Vec<_>>(), "each exactly once");
    // A datagram arrives late if a later one came before it.
    let mut highest = None;
    let mut late = 0;
    for &seq in &order {
        if highest.is_some_and(|h| seq < h) {
            late += 1;
        }
        highest = highest.max(Some(seq));
    }
    assert!(late > 0, "nothing was reordered: {order:?}");
    assert!((30..=120).contains(&up.reordered), "{s:?}");
    // Every hold that a later datagram overtook shows as one late arrival
    // (a held last datagram may be released without being overtaken).
    assert_eq!(late, up.reordered, "{order:?}");
    assert_eq!(up.forwarded, 300);
}

#[test]
fn udp_delay_does_not_limit_throughput() {
    let delay = 25 * MS;
    let (order, s, elapsed) = one_way(Impairment::delay(delay), 2000, 1200);
    assert_eq!(order, (0..2000).collect::<Vec<_>>(), "all arrive, in order: {s:?}");
    assert!(elapsed >= delay);
    // One at a time this would take 2000 × 25 ms = 50 s.
    assert!(elapsed < 100 * delay, "2000 datagrams took {elapsed:?}: delay limits throughput");
}

#[test]
fn udp_jitter_spreads_delays_within_bounds() {
    let echo = UdpEcho::start();
    let imp = Impairment::delay(20 * MS).with_jitter(10 * MS).with_seed(5);
    let relay = UdpRelay::start(echo.addr, imp).unwrap();
    let client = udp_socket(BOUND);
    let mut buf = [0u8; 64];
    let mut rtts = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        client.send_to(&seq_datagram(i, 8), relay.local_addr()).unwrap();
        client.recv_from(&mut buf).expect("echo");
        rtts.push(t.elapsed());
    }
    let (min, max) = (rtts.iter().min().unwrap(), rtts.iter().max().unwrap());
    assert!(*min >= 20 * MS, "each way is at least 10 ms: {rtts:?}");
    assert!(max > min, "{rtts:?}");
    assert!(*max - *min > 2 * MS, "jitter shows: {rtts:?}");
}

#[test]
fn udp_relay_serves_one_client_and_ignores_others() {
    let echo = UdpEcho::start();
    let relay = UdpRelay::start(echo.addr, Impairment::none()).unwrap();
    let client = udp_socket(BOUND);
    let mut buf = [0u8; 64];
    client.send_to(b"first", relay.local_addr()).unwrap();
    let (n, _) = client.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"first");
    let stranger = udp_socket(BOUND);
    stranger.send_to(b"intruder", relay.local_addr()).unwrap();
    client.send_to(b"second", relay.local_addr()).unwrap();
    let (n, _) = client.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"second");
    // The stranger's datagram was read before the client's second one.
    assert_eq!(relay.stats().ignored, 1);
    assert_eq!(relay.stats().to_upstream.forwarded, 2);
}

#[test]
fn udp_queue_limit_drops_and_counts() {
    let sink = udp_socket(BOUND);
    // Room for 10 datagrams of 1000 bytes, held for a long time.
    let relay = UdpRelay::bind_with_queue_limit(
        "127.0.0.1:0".parse().unwrap(),
        sink.local_addr().unwrap(),
        Impairment::delay(Duration::from_secs(60)),
        10_000,
    )
    .unwrap();
    let client = udp_socket(BOUND);
    for i in 0..30 {
        client.send_to(&seq_datagram(i, 1000), relay.local_addr()).unwrap();
    }
    let deadline = Instant::now() + BOUND;
    while relay.stats().to_upstream.received < 30 {
        assert!(Instant::now() < deadline);
        thread::yield_now();
    }
    let s = relay.stats().to_upstream;
    assert_eq!((s.queued, s.overflowed, s.forwarded), (10, 20, 0), "{s:?}");
    // Dropping a relay with a full queue is quick.
    let t = Instant::now();
    drop(relay);
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn udp_relay_stops_and_frees_its_port_when_dropped() {
    let echo = UdpEcho::start();
    let relay = UdpRelay::start(echo.addr, Impairment::delay(MS)).unwrap();
    let addr = relay.local_addr();
    let client = udp_socket(BOUND);
    client.send_to(b"x", addr).unwrap();
    client.recv_from(&mut [0u8; 8]).unwrap();
    let t = Instant::now();
    drop(relay);
    assert!(t.elapsed() < Duration::from_secs(2), "drop took {:?}", t.elapsed());
    // The threads are gone with the sockets they held.
    UdpSocket::bind(addr).expect("the relay's port is free again");
}

#[test]
fn invalid_impairments_are_refused() {
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for imp in [
        Impairment::none().with_loss(1.5),
        Impairment::none().with_reorder(-0.1),
        Impairment::none().with_loss(f64::NAN),
        Impairment::delay(Duration::from_secs(7200)),
        Impairment::none().with_jitter(Duration::MAX),
    ] {
        let e = UdpRelay::start(up, imp).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
        assert!(TcpRelay::start(up, imp).is_err());
    }
}

/// A TCP echo server for one connection at a time; stops when the listener
/// port is unused (its thread ends with the test process).
fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

#[test]
fn tcp_round_trip_takes_twice_the_delay() {
    let relay = TcpRelay::start(tcp_echo(), Impairment::delay(25 * MS)).unwrap();
    let mut s = tcp_connect(relay.local_addr());
    let mut buf = [0u8; 5];
    for _ in 0..3 {
        let t = Instant::now();
        s.write_all(b"hello").unwrap();
        s.read_exact(&mut buf).unwrap();
        let rtt = t.elapsed();
        assert_eq!(&buf, b"hello");
        assert!(rtt >= 50 * MS, "round trip {rtt:?} < 2 × 25 ms");
        assert!(rtt < 2000 * MS, "round trip {rtt:?} is far too slow");
    }
    let st = relay.stats();
    assert_eq!((st.accepted, st.upstream_failed), (1, 0));
    assert_eq!((st.bytes_to_upstream, st.bytes_to_client), (15, 15));
}

#[test]
fn tcp_bytes_arrive_intact_and_in_order_despite_jitter() {
    let imp = Impairment::delay(5 * MS).with_jitter(5 * MS).with_loss(0.5).with_reorder(0.5);
    let relay = TcpRelay::start(tcp_echo(), imp).unwrap();
    let s = tcp_connect(relay.local_addr());
    let data: Vec<u8> = (0..4_000_000u32).map(|i| (i * 7 + i / 253) as u8).collect();
    let mut writer = s.try_clone().unwrap();
    let sent = data.clone();
    let w = thread::spawn(move || {
        // Many small writes make many chunks, each with its own delay.
        for piece in sent.chunks(1000) {
            writer.write_all(piece).unwrap();
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    (&s).read_to_end(&mut back).expect("echo ends after our end");
    w.join().unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "bytes came back changed or out of order");
}

#[test]
fn tcp_relay_serves_several_connections_and_closes_them_when_dropped() {
    let relay = TcpRelay::start(tcp_echo(), Impairment::delay(MS)).unwrap();
    let addr = relay.local_addr();
    let mut conns: Vec<TcpStream> = (0..3).map(|_| tcp_connect(addr)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let msg = [i as u8; 3];
        c.write_all(&msg).unwrap();
        let mut buf = [0u8; 3];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(buf, msg);
    }
    let t = Instant::now();
    drop(relay);
    assert!(t.elapsed() < Duration::from_secs(2), "drop took {:?}", t.elapsed());
    for c in &mut conns {
        let mut buf = [0u8; 1];
        match c.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(_) => panic!("data after the relay stopped"),
        }
    }
    assert!(TcpStream::connect(addr).is_err(), "still accepting");
}

#[test]
fn tcp_relay_drop_is_quick_with_bytes_in_flight() {
    let relay = TcpRelay::start(tcp_echo(), Impairment::delay(Duration::from_secs(60))).unwrap();
    let mut s = tcp_connect(relay.local_addr());
    s.write_all(&[1u8; 100_000]).unwrap();
    let t = Instant::now();
    drop(relay);
    assert!(t.elapsed() < Duration::from_secs(2), "drop took {:?}", t.elapsed());
    let mut buf = [0u8; 1];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
}

#[test]
fn tcp_relay_closes_clients_when_upstream_is_unreachable() {
    // A port nothing listens on.
    let gone = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let relay = TcpRelay::start(gone, Impairment::none()).unwrap();
    let mut s = tcp_connect(relay.local_addr());
    let mut buf = [0u8; 1];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    assert_eq!(relay.stats().upstream_failed, 1);
}

/// Starts the binary, returning it and the address it printed.
fn spawn_binary(args: &[&str]) -> (std::process::Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_farcall-relay"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("farcall-relay starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("farcall-relay listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

/// Waits for `child` to exit, killing it if it takes longer than `BOUND`.
fn wait_bounded(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("farcall-relay did not exit");
        }
        thread::sleep(10 * MS);
    }
}

#[test]
fn binary_relays_udp_until_stdin_closes() {
    let echo = UdpEcho::start();
    let upstream = echo.addr.to_string();
    let (mut child, addr) = spawn_binary(&["udp", "--upstream", &upstream, "--delay-ms", "10", "--seed", "9", "--exit-on-stdin-eof"]);
    let client = udp_socket(BOUND);
    let t = Instant::now();
    client.send_to(b"ping", addr).unwrap();
    let mut buf = [0u8; 8];
    let (n, _) = client.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping");
    assert!(t.elapsed() >= 20 * MS);
    drop(child.stdin.take());
    let status = wait_bounded(&mut child);
    assert!(status.success());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("forwarded: 1"), "{stderr}");
}

#[test]
fn binary_relays_tcp_until_killed() {
    let upstream = tcp_echo().to_string();
    let (mut child, addr) = spawn_binary(&["tcp", "--upstream", &upstream, "--delay-ms", "5"]);
    let mut s = tcp_connect(addr);
    let t = Instant::now();
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    assert!(t.elapsed() >= 10 * MS);
    // Without --exit-on-stdin-eof, closing stdin does not stop it.
    drop(child.stdin.take());
    s.write_all(b"pong").unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    child.kill().unwrap();
    wait_bounded(&mut child);
}

#[test]
fn binary_rejects_bad_arguments() {
    for args in [
        &["udp"][..],
        &["sctp", "--upstream", "127.0.0.1:1"],
        &["udp", "--upstream", "127.0.0.1:1", "--loss", "2"],
        &["tcp", "--upstream", "127.0.0.1:1", "--delay-ms", "-1"],
        &["udp", "--upstream", "127.0.0.1:1", "--bogus", "1"],
        &["udp", "--upstream", "127.0.0.1:1", "--jitter-ms", "1e300"],
        &["udp", "--upstream", "127.0.0.1:1", "--seed"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_farcall-relay")).args(args).stdin(Stdio::null()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage"), "{args:?}");
    }
}
