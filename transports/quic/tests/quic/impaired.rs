// Across a bad network: calls and transfers through a small UDP relay adding
// delay (50 ms of round trip) and loss (2% each way).

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use farcall_core::codec::{decode, encode};
use farcall_core::{Connection, Message, Release};

use crate::*;

/// Relays datagrams between one client and `upstream`, delaying each by
/// `one_way` and dropping a fraction `loss` (deterministic pseudo-random).
fn relay(upstream: SocketAddr, one_way: Duration, loss: f64) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
    for s in [&front, &back] {
        // quinn-udp for large socket buffers; it also turns on receive
        // offload (several datagrams per read, split below) and makes the
        // socket non-blocking, which the relay's threads undo.
        let state = quinn::udp::UdpSocketState::new((&**s).into()).unwrap();
        let _ = state.set_recv_buffer_size((&**s).into(), 4 << 20);
        let _ = state.set_send_buffer_size((&**s).into(), 4 << 20);
        s.set_nonblocking(false).unwrap();
    }
    let addr = front.local_addr().unwrap();
    type Queue = Mutex<VecDeque<(Instant, bool, Vec<u8>)>>; // (due, to the server?, datagram)
    let queue: Arc<(Queue, Condvar)> = Arc::default();
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let receiver = |socket: Arc<UdpSocket>, to_server: bool, seed: u64| {
        let (queue, client) = (queue.clone(), client.clone());
        std::thread::spawn(move || {
            let state = quinn::udp::UdpSocketState::new((&*socket).into()).unwrap();
            socket.set_nonblocking(false).unwrap();
            let mut rng = seed;
            let mut buf = vec![0u8; 1 << 16];
            let mut meta = [quinn::udp::RecvMeta::default()];
            loop {
                let got = state.recv((&*socket).into(), &mut [std::io::IoSliceMut::new(&mut buf)], &mut meta);
                match got {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                }
                let m = meta[0];
                if to_server {
                    *client.lock().unwrap() = Some(m.addr);
                }
                for datagram in buf[..m.len].chunks(m.stride.max(1)) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    if (rng % 10_000) as f64 / 10_000.0 < loss {
                        continue;
                    }
                    queue.0.lock().unwrap().push_back((Instant::now() + one_way, to_server, datagram.to_vec()));
                    queue.1.notify_one();
                }
            }
        });
    };
    receiver(front.clone(), true, 0x9e37_79b9_7f4a_7c15);
    receiver(back.clone(), false, 0x2545_f491_4f6c_dd1d);
    std::thread::spawn(move || loop {
        let (due, to_server, datagram) = {
            let mut q = queue.0.lock().unwrap();
            loop {
                match q.front() {
                    Some((due, ..)) if *due <= Instant::now() => break q.pop_front().unwrap(),
                    Some((due, ..)) => {
                        let wait = *due - Instant::now();
                        q = queue.1.wait_timeout(q, wait).unwrap().0;
                    }
                    None => q = queue.1.wait(q).unwrap(),
                }
            }
        };
        let _ = due;
        if to_server {
            let _ = back.send_to(&datagram, upstream);
        } else if let Some(c) = *client.lock().unwrap() {
            let _ = front.send_to(&datagram, c);
        }
    });
    addr
}

fn connect_via(via: SocketAddr, pki: &Pki) -> QuicConnection {
    QuicConnection::connect(
        &via.to_string(),
        "localhost",
        client_config(&pki.ca, Some(&pki.alice)),
        Some(Duration::from_secs(10)),
        64 << 20,
    )
    .unwrap()
}

fn echo(conn: &QuicConnection, id: u64, payload: &[u8]) -> Duration {
    let start = Instant::now();
    conn.send(&[&request(id, payload)]).unwrap();
    let (got, echoed) = decode_reply(conn.recv().unwrap());
    assert_eq!(got, id);
    assert!(echoed == payload, "the echo of {id} differs");
    start.elapsed()
}

#[test]
fn calls_and_ten_megabytes_cross_a_slow_path() {
    let pki = pki();
    let server = echo_server(server_config(&pki), 64 << 20);
    let via = relay(server.addr.parse().unwrap(), Duration::from_millis(25), 0.0);
    let conn = connect_via(via, &pki);
    for id in 0..5 {
        echo(&conn, id, format!("call {id}").as_bytes());
    }
    let big: Vec<u8> = (0..10_000_000u32).map(|i| (i % 253) as u8).collect();
    let took = echo(&conn, 99, &big);
    eprintln!("50 ms RTT: 10 MB each way in {took:?}");
}

#[test]
fn calls_and_a_transfer_survive_two_percent_loss() {
    let pki = pki();
    let server = echo_server(server_config(&pki), 64 << 20);
    let via = relay(server.addr.parse().unwrap(), Duration::from_millis(25), 0.02);
    let conn = connect_via(via, &pki);
    for id in 0..20 {
        echo(&conn, id, format!("call {id}").as_bytes());
    }
    let big: Vec<u8> = (0..256_000u32).map(|i| (i % 253) as u8).collect();
    let took = echo(&conn, 99, &big);
    eprintln!("50 ms RTT, 2% loss: 256 kB each way in {took:?}");
}

#[test]
fn a_call_never_overtakes_releases_sent_before_it_even_with_loss() {
    // With loss, a later stream can arrive before an earlier one; the
    // barrier header keeps "releases, then the call" in order both ways.
    let pki = pki();
    let server = echo_server(server_config(&pki), 64 << 20);
    let via = relay(server.addr.parse().unwrap(), Duration::from_millis(5), 0.05);
    let conn = connect_via(via, &pki);
    const N: u64 = 60;
    for k in 0..N {
        conn.send(&[&encode(&Message::Release(vec![Release { id: k, count: 1 }]))]).unwrap();
        conn.send(&[&request(k, b"after the release")]).unwrap();
    }
    let mut releases = 0;
    let mut replies = 0;
    while replies < N {
        match decode(conn.recv().unwrap()).unwrap() {
            Message::Release(r) => {
                assert_eq!(r[0].id, releases, "releases keep their order");
                releases += 1;
            }
            Message::Reply { id, .. } => {
                assert!(releases > id, "reply {id} came before the echo of release {id}");
                replies += 1;
            }
            other => panic!("{other:?}"),
        }
    }
}
