//! tcp:// against tls:// on loopback, two threads of one process: median
//! small round trip, 10 MB transfers each way, TLS handshake time, and
//! rustls in memory (no sockets) as the floor of the crypto cost.
//!
//! `cargo bench -p farcall-transport-tcp` (figures only; nothing is asserted).

use std::io::{Read, Write};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use farcall_core::{Connection, Frame, Listener, Route};
use farcall_transport_tcp::{TcpConnection, TcpListener, TlsConnection, TlsListener};

const MAX: usize = 64 << 20;
const BIG: usize = 10 << 20;
const ROUND_TRIPS: usize = 20_000;
const TRANSFERS: usize = 30;

struct Pki {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn pki() -> Pki {
    let ca = farcall_tls::Authority::new("bench CA").unwrap();
    let server = ca.issue_server(&["localhost".into()]).unwrap();
    let client = ca.issue_client("bench").unwrap();
    Pki {
        server: farcall_tls::server_config(&server.pem_pair(), ca.cert_pem().as_bytes(), &[]).unwrap(),
        client: farcall_tls::client_config(ca.cert_pem().as_bytes(), Some(&client.pem_pair()), &[]).unwrap(),
    }
}

fn frame(len: usize) -> Frame {
    Frame::from_bytes(Route::Oneway, Bytes::from(vec![0x5a; len]))
}

/// The server side: answers each frame of `len` bytes with a frame of
/// `reply` bytes (or the same frame when `reply` is 0) until the client goes.
fn echo_server(conn: Box<dyn Connection>) {
    let mut replies: Vec<(usize, Frame)> = Vec::new();
    while let Ok(body) = conn.recv() {
        // The first byte says what to answer: 1 a 10 MB frame, 2 an
        // 8-byte frame, anything else the same length.
        let want = match body.first() {
            Some(1) => BIG,
            Some(2) => 8,
            _ => body.len(),
        };
        let f = match replies.iter().find(|(l, _)| *l == want) {
            Some((_, f)) => f.clone(),
            None => {
                let f = frame(want);
                replies.push((want, f.clone()));
                f
            }
        };
        if conn.send(&[&f]).is_err() {
            break;
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

struct Figures {
    rtt: Duration,
    rtt_p99: Duration,
    up: f64,
    down: f64,
}

fn measure(client: &dyn Connection) -> Figures {
    let small = Frame::from_bytes(Route::Oneway, Bytes::from_static(&[0u8; 24]));
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS + 1000 {
        let t = Instant::now();
        client.send(&[&small]).unwrap();
        let r = client.recv().unwrap();
        if i >= 1000 {
            times.push(t.elapsed());
        }
        assert_eq!(r.len(), 24);
    }
    times.sort_unstable();
    let rtt_p99 = times[times.len() * 99 / 100];
    let rtt = median(times);

    // Upload: 10 MB out, a small answer back.
    let mut big = vec![0x33u8; BIG];
    big[0] = 2;
    let up_frame = Frame::from_bytes(Route::Oneway, Bytes::from(big));
    let upload = || {
        client.send(&[&up_frame]).unwrap();
        client.recv().unwrap()
    };
    // Download: a small request, 10 MB back.
    let ask = Frame::from_bytes(Route::Oneway, Bytes::from_static(&[1u8; 8]));
    let download = || {
        client.send(&[&ask]).unwrap();
        client.recv().unwrap()
    };
    let _ = upload();
    let t = Instant::now();
    for _ in 0..TRANSFERS {
        assert_eq!(upload().len(), 8);
    }
    let up_time = t.elapsed();
    let _ = download();
    let t = Instant::now();
    for _ in 0..TRANSFERS {
        assert_eq!(download().len(), BIG);
    }
    let down_time = t.elapsed();
    let mb = (TRANSFERS * BIG) as f64 / 1e6;
    Figures { rtt, rtt_p99, up: mb / up_time.as_secs_f64(), down: mb / down_time.as_secs_f64() }
}

fn tcp() -> Figures {
    let listener = TcpListener::bind("127.0.0.1:0", MAX).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = thread::spawn(move || echo_server(listener.accept().unwrap()));
    let client = TcpConnection::connect(&addr, None, MAX, 16 << 20).unwrap();
    let f = measure(&client);
    client.shutdown();
    server.join().unwrap();
    f
}

fn tls(pki: &Pki) -> Figures {
    let listener = TlsListener::bind("127.0.0.1:0", pki.server.clone(), MAX).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = thread::spawn(move || echo_server(listener.accept().unwrap()));
    let client = TlsConnection::connect(&addr, "localhost", pki.client.clone(), None, MAX, 16 << 20).unwrap();
    let f = measure(&client);
    client.shutdown();
    server.join().unwrap();
    f
}

/// Median time from `connect` to both sides established (mutual TLS 1.3).
fn handshakes(pki: &Pki) -> Duration {
    let listener = TlsListener::bind("127.0.0.1:0", pki.server.clone(), MAX).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        while let Ok(c) = listener.accept() {
            thread::spawn(move || {
                let _ = c.peer();
                let _ = c.recv();
            });
        }
    });
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let c = TlsConnection::connect(&addr, "localhost", pki.client.clone(), None, MAX, MAX).unwrap();
        times.push(t.elapsed());
        drop(c);
    }
    median(times)
}

/// rustls alone, in memory on one thread: encrypt 10 MB on one side and
/// decrypt it on the other (no sockets, no locks): the crypto floor.
fn rustls_in_memory(pki: &Pki) -> (f64, f64, String) {
    let mut client =
        rustls::ClientConnection::new(pki.client.clone(), rustls::pki_types::ServerName::try_from("localhost").unwrap()).unwrap();
    let mut server = rustls::ServerConnection::new(pki.server.clone()).unwrap();
    let mut wire = Vec::new();
    while client.is_handshaking() || server.is_handshaking() {
        wire.clear();
        client.write_tls(&mut wire).unwrap();
        server.read_tls(&mut &wire[..]).unwrap();
        server.process_new_packets().unwrap();
        wire.clear();
        server.write_tls(&mut wire).unwrap();
        client.read_tls(&mut &wire[..]).unwrap();
        client.process_new_packets().unwrap();
    }
    client.set_buffer_limit(None);
    let data = vec![0x77u8; BIG];
    let mut out = vec![0u8; BIG];
    let (mut enc, mut dec) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..TRANSFERS {
        let t = Instant::now();
        client.writer().write_all(&data).unwrap();
        wire.clear();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        enc += t.elapsed();
        let t = Instant::now();
        let mut at = 0;
        let mut got = 0;
        while got < BIG {
            while at < wire.len() {
                match server.read_tls(&mut &wire[at..]) {
                    Ok(n) => at += n,
                    Err(_) => break,
                }
            }
            server.process_new_packets().unwrap();
            loop {
                match server.reader().read(&mut out[got..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
        }
        dec += t.elapsed();
    }
    let mb = (TRANSFERS * BIG) as f64 / 1e6;
    let suite = format!("{:?}", client.negotiated_cipher_suite().unwrap().suite());
    (mb / enc.as_secs_f64(), mb / dec.as_secs_f64(), suite)
}

fn main() {
    let pki = pki();
    // Plain TCP first and last, to see the machine's drift.
    let tcp1 = tcp();
    let tls1 = tls(&pki);
    let tcp2 = tcp();
    let tls2 = tls(&pki);
    let hs = handshakes(&pki);
    let mem = rustls_in_memory(&pki);
    let best = |a: &Figures, b: &Figures| Figures {
        rtt: a.rtt.min(b.rtt),
        rtt_p99: a.rtt_p99.min(b.rtt_p99),
        up: a.up.max(b.up),
        down: a.down.max(b.down),
    };
    let (t, s) = (best(&tcp1, &tcp2), best(&tls1, &tls2));
    println!("loopback, two threads of one process (best of two runs each)");
    println!("{:<8} {:>12} {:>12} {:>16} {:>16}", "", "rtt median", "rtt p99", "10 MB up MB/s", "10 MB down MB/s");
    for (name, f) in [("tcp://", &t), ("tls://", &s)] {
        println!(
            "{:<8} {:>9.1} µs {:>9.1} µs {:>16.0} {:>16.0}",
            name,
            f.rtt.as_secs_f64() * 1e6,
            f.rtt_p99.as_secs_f64() * 1e6,
            f.up,
            f.down
        );
    }
    println!("tls/tcp  rtt x{:.2}, up x{:.2}, down x{:.2}", s.rtt.as_secs_f64() / t.rtt.as_secs_f64(), s.up / t.up, s.down / t.down);
    println!("tls:// mutual TLS 1.3 handshake (connect to both sides established), median: {:.2} ms", hs.as_secs_f64() * 1e3);
    println!("rustls alone in memory (the crypto floor, {}): encrypt {:.0} MB/s, decrypt {:.0} MB/s", mem.2, mem.0, mem.1);
}
