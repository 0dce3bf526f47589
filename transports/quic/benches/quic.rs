//! Round trip, 10 MB transfer and handshake over farcall's QUIC connection,
//! side by side with raw quinn (the same mutual-TLS setup, a stream per
//! call) and farcall's plain TCP connection, all measured in this run on
//! loopback. Run: `cargo bench -p farcall-transport-quic` (env
//! `FARCALL_BENCH_ITERS` sets the number of round trips).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use farcall_core::codec::{encode, peek_route};
use farcall_core::{Connection, Frame, Listener, Message, Request, Route};
use farcall_tls::Authority;
use farcall_transport_quic::{QuicConnection, QuicListener, ALPN};

const BIG: usize = 10_000_000;

struct Stats {
    median: Duration,
    p10: Duration,
    p90: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    Stats { median: at(0.5), p10: at(0.1), p90: at(0.9) }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn report(name: &str, rtt: &Stats, bulk: &Stats, handshake: Option<&Stats>) -> f64 {
    let mbps = BIG as f64 / bulk.median.as_secs_f64() / 1e6;
    println!(
        "{name:<34} rtt median {:>6.1} µs (p10 {:>6.1}, p90 {:>6.1})   10 MB reply {:>7.1} ms = {:>6.0} MB/s{}",
        us(rtt.median),
        us(rtt.p10),
        us(rtt.p90),
        bulk.median.as_secs_f64() * 1e3,
        mbps,
        handshake.map(|h| format!("   handshake {:.2} ms", h.median.as_secs_f64() * 1e3)).unwrap_or_default()
    );
    mbps
}

fn small_request(id: u64) -> Frame {
    encode(&Message::Request { id, op: Request::GetModule { name: "math".into() } })
}

/// Serves one farcall connection: a request whose module name is `big`
/// gets a 10 MB reply, others a small one.
fn farcall_echo(conn: Box<dyn Connection>, big: Bytes) {
    let small = Bytes::from_static(&[0x93, 0x01, 0x00, 0xc0]);
    while let Ok(body) = conn.recv() {
        let Some(Route::Request(id)) = peek_route(&body) else { continue };
        let payload = if body.ends_with(b"big") { big.clone() } else { small.clone() };
        if conn.send(&[&Frame::from_bytes(Route::Reply(id), payload)]).is_err() {
            return;
        }
    }
}

fn farcall_client(conn: &dyn Connection, iters: usize) -> (Stats, Stats) {
    let mut rtts = Vec::with_capacity(iters);
    for i in 0..iters as u64 {
        let req = small_request(i);
        let t = Instant::now();
        conn.send(&[&req]).unwrap();
        conn.recv().unwrap();
        rtts.push(t.elapsed());
    }
    let big_req = encode(&Message::Request { id: u64::MAX, op: Request::GetModule { name: "big".into() } });
    let mut bulk = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        conn.send(&[&big_req]).unwrap();
        let got = conn.recv().unwrap();
        bulk.push(t.elapsed());
        assert_eq!(got.len(), BIG);
    }
    (stats(rtts), stats(bulk))
}

fn main() {
    let iters: usize = std::env::var("FARCALL_BENCH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let ca = Authority::new("bench CA").unwrap();
    let server = ca.issue_server(&["localhost".into()]).unwrap();
    let alice = ca.issue_client("alice").unwrap();
    let sc = farcall_tls::server_config(&server.pem_pair(), ca.cert_pem().as_bytes(), &[ALPN]).unwrap();
    let cc = farcall_tls::client_config(ca.cert_pem().as_bytes(), Some(&alice.pem_pair()), &[ALPN]).unwrap();
    let big = Bytes::from(vec![7u8; BIG]);
    println!("{iters} round trips, 20 transfers of 10 MB, loopback, client and server threads in one process");

    // farcall over QUIC.
    let listener = QuicListener::bind("127.0.0.1:0", sc.clone(), 64 << 20).unwrap();
    let addr = listener.local_url().trim_start_matches("quic://").to_owned();
    {
        let big = big.clone();
        std::thread::spawn(move || loop {
            match listener.accept() {
                Ok(conn) => {
                    let big = big.clone();
                    std::thread::spawn(move || farcall_echo(conn, big));
                }
                Err(_) => continue,
            }
        });
    }
    let mut handshakes = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let c = QuicConnection::connect(&addr, "localhost", cc.clone(), None, 64 << 20).unwrap();
        handshakes.push(t.elapsed());
        drop(c);
    }
    let conn = QuicConnection::connect(&addr, "localhost", cc.clone(), None, 64 << 20).unwrap();
    let (rtt, bulk) = farcall_client(&conn, iters);
    let quic = (rtt.median, report("farcall QuicConnection", &rtt, &bulk, Some(&stats(handshakes))));
    drop(conn);

    // farcall over TCP.
    let listener = farcall_transport_tcp::TcpListener::bind("127.0.0.1:0", 64 << 20).unwrap();
    let taddr = listener.local_addr().unwrap().to_string();
    {
        let big = big.clone();
        std::thread::spawn(move || {
            while let Ok(conn) = listener.accept() {
                let big = big.clone();
                std::thread::spawn(move || farcall_echo(conn, big));
            }
        });
    }
    let conn = farcall_transport_tcp::TcpConnection::connect(&taddr, None, 64 << 20, 64 << 20).unwrap();
    let (rtt, bulk) = farcall_client(&conn, iters);
    report("farcall TcpConnection", &rtt, &bulk, None);
    drop(conn);

    // Raw quinn, same TLS and transport settings as quinn's defaults.
    let raw = raw_quinn(sc, cc, iters, big);
    println!(
        "farcall QUIC / raw quinn (blocking threads): rtt {:.2}x, throughput {:.2}x",
        quic.0.as_secs_f64() / raw.0.as_secs_f64(),
        quic.1 / raw.1
    );
}

/// Raw quinn with a thread on each side blocking on the runtime (the shape
/// farcall has: the server thread reads the request then writes the reply,
/// the client thread writes then reads), a new stream per call; then the
/// same with async tasks on both sides.
fn raw_quinn(sc: Arc<rustls::ServerConfig>, cc: Arc<rustls::ClientConfig>, iters: usize, big: Bytes) -> (Duration, f64) {
    use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server_config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(sc).unwrap()));
    let client_config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(cc).unwrap()));
    let (server_ep, client_ep) = {
        let _g = rt.enter();
        let s = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let mut c = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        c.set_default_client_config(client_config);
        (s, c)
    };
    let addr = server_ep.local_addr().unwrap();

    async fn serve_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream, big: Bytes) {
        let req = recv.read_to_end(1 << 20).await.unwrap();
        let reply = if req == b"big" { big } else { Bytes::from_static(b"pong") };
        send.write_chunk(reply).await.unwrap();
        let _ = send.finish();
    }
    async fn call(conn: &quinn::Connection, req: &'static [u8]) -> usize {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(req).await.unwrap();
        let _ = send.finish();
        recv.read_to_end(64 << 20).await.unwrap().len()
    }

    // Blocking threads.
    let handshake = Instant::now();
    let (sconn, cconn) = rt.block_on(async {
        let accept = async { server_ep.accept().await.unwrap().await.unwrap() };
        let connect = async { client_ep.connect(addr, "localhost").unwrap().await.unwrap() };
        tokio::join!(accept, connect)
    });
    let hs = handshake.elapsed();
    let server = {
        let handle = rt.handle().clone();
        let big = big.clone();
        std::thread::spawn(move || {
            while let Ok((send, recv)) = handle.block_on(sconn.accept_bi()) {
                handle.block_on(serve_stream(send, recv, big.clone()));
            }
        })
    };
    let mut rtts = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        rt.block_on(call(&cconn, b"ping"));
        rtts.push(t.elapsed());
    }
    let mut bulk = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(rt.block_on(call(&cconn, b"big")), BIG);
        bulk.push(t.elapsed());
    }
    let (rtt, bulk) = (stats(rtts), stats(bulk));
    let hs = Stats { median: hs, p10: hs, p90: hs };
    let blocking = (rtt.median, report("raw quinn, blocking threads", &rtt, &bulk, Some(&hs)));
    cconn.close(0u32.into(), b"");
    let _ = server.join();

    // Async tasks on both sides.
    let (rtt, bulk) = rt.block_on(async {
        let accept = async { server_ep.accept().await.unwrap().await.unwrap() };
        let connect = async { client_ep.connect(addr, "localhost").unwrap().await.unwrap() };
        let (sconn, cconn) = tokio::join!(accept, connect);
        let big = big.clone();
        tokio::spawn(async move {
            while let Ok((send, recv)) = sconn.accept_bi().await {
                serve_stream(send, recv, big.clone()).await;
            }
        });
        let client = tokio::spawn(async move {
            let mut rtts = Vec::new();
            for _ in 0..iters {
                let t = Instant::now();
                call(&cconn, b"ping").await;
                rtts.push(t.elapsed());
            }
            let mut bulk = Vec::new();
            for _ in 0..20 {
                let t = Instant::now();
                assert_eq!(call(&cconn, b"big").await, BIG);
                bulk.push(t.elapsed());
            }
            (stats(rtts), stats(bulk))
        });
        client.await.unwrap()
    });
    report("raw quinn, async tasks", &rtt, &bulk, None);
    blocking
}
