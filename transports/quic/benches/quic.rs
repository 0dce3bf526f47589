//! Round trip, 10 MB transfer and handshake over farcall's QUIC connection,
//! side by side with raw quinn (the same mutual-TLS certificates, a stream
//! per call) and farcall's plain TCP connection, measured in the same run on
//! loopback, in interleaved rounds so that all see the same machine.
//!
//! Two shapes:
//! - client and server threads in this process (quinn's "async tasks" row
//!   runs both ends as tasks of one runtime: no thread ever sleeps or wakes,
//!   a floor no client and server in different processes can reach);
//! - the server in a process of its own (this binary, re-run), as farcall is
//!   used: farcall's QUIC connection against raw quinn with one
//!   current-thread runtime per side. This is the like-for-like reference.
//!
//! Run: `cargo bench -p farcall-transport-quic`; `FARCALL_BENCH_ITERS` sets
//! the number of round trips per transport (default 5000).

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use farcall_core::codec::{encode, peek_route};
use farcall_core::{Connection, Frame, Listener, Message, Request, Route};
use farcall_tls::Authority;
use farcall_transport_quic::{QuicConnection, QuicListener, ALPN};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

const BIG: usize = 10_000_000;
const ROUNDS: usize = 10;
const BULK_PER_ROUND: usize = 3;

#[derive(Default)]
struct Samples {
    rtt: Vec<Duration>,
    bulk: Vec<Duration>,
    handshake: Vec<Duration>,
}

fn quantile(samples: &[Duration], q: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    s[((s.len() - 1) as f64 * q) as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

impl Samples {
    /// Prints a row; returns the median round trip (µs), the throughput (MB/s) and the median handshake (ms, 0 if none).
    fn report(&self, name: &str) -> (f64, f64, f64) {
        let rtt = quantile(&self.rtt, 0.5);
        let bulk = quantile(&self.bulk, 0.5);
        let mbps = BIG as f64 / bulk.as_secs_f64() / 1e6;
        let handshake = if self.handshake.is_empty() {
            String::new()
        } else {
            format!("   handshake {:.2} ms", quantile(&self.handshake, 0.5).as_secs_f64() * 1e3)
        };
        println!(
            "{name:<30} round trip {:>6.1} µs (p10 {:>6.1}, p90 {:>6.1})   10 MB reply {:>6.1} ms = {:>5.0} MB/s{handshake}",
            us(rtt),
            us(quantile(&self.rtt, 0.1)),
            us(quantile(&self.rtt, 0.9)),
            bulk.as_secs_f64() * 1e3,
            mbps,
        );
        let handshake_ms = if self.handshake.is_empty() { 0.0 } else { quantile(&self.handshake, 0.5).as_secs_f64() * 1e3 };
        (us(rtt), mbps, handshake_ms)
    }
}

fn small_request(id: u64) -> Frame {
    encode(&Message::Request { id, op: Request::GetModule { name: "math".into() } })
}

/// Serves one farcall connection: a request for module `big` gets a 10 MB
/// reply, others a small one.
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

fn farcall_round(conn: &dyn Connection, iters: usize, s: &mut Samples) {
    for i in 0..iters as u64 {
        let req = small_request(i);
        let t = Instant::now();
        conn.send(&[&req]).unwrap();
        conn.recv().unwrap();
        s.rtt.push(t.elapsed());
    }
    let big_req = encode(&Message::Request { id: u64::MAX, op: Request::GetModule { name: "big".into() } });
    for _ in 0..BULK_PER_ROUND {
        let t = Instant::now();
        conn.send(&[&big_req]).unwrap();
        let got = conn.recv().unwrap();
        s.bulk.push(t.elapsed());
        assert_eq!(got.len(), BIG);
    }
}

/// Raw quinn: a reply of `pong`, or 10 MB to `big`, on the request's stream.
async fn raw_serve(mut send: quinn::SendStream, mut recv: quinn::RecvStream, big: Bytes) {
    let req = recv.read_to_end(1 << 20).await.unwrap();
    let reply = if req == b"big" { big } else { Bytes::from_static(b"pong") };
    send.write_chunk(reply).await.unwrap();
    let _ = send.finish();
}

async fn raw_call(conn: &quinn::Connection, req: &'static [u8]) -> usize {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(req).await.unwrap();
    let _ = send.finish();
    recv.read_to_end(64 << 20).await.unwrap().len()
}

/// Environment variables of a server process: which server, and where its certificates are.
const SERVE_ENV: &str = "FARCALL_BENCH_SERVE";
const DIR_ENV: &str = "FARCALL_BENCH_CERTS";

/// The server process: binds 127.0.0.1:0, prints its address, serves every
/// connection until the parent closes its stdin.
fn serve_process(kind: &str) {
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("certificate folder"));
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("certificate file");
    let pair = farcall_tls::PemPair { cert: read("server.pem"), key: read("server.key") };
    let sc = farcall_tls::server_config(&pair, read("ca.pem").as_bytes(), &[ALPN]).unwrap();
    let big = Bytes::from(vec![7u8; BIG]);
    let announce = |addr: String| {
        println!("{addr}");
        std::io::stdout().flush().unwrap();
        // The parent closing our stdin (or dying) ends us.
        std::thread::spawn(|| {
            let _ = std::io::stdin().read_line(&mut String::new());
            std::process::exit(0);
        });
    };
    if kind == "raw" {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(sc).unwrap()));
            let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
            announce(endpoint.local_addr().unwrap().to_string());
            while let Some(incoming) = endpoint.accept().await {
                let big = big.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        raw_serve(send, recv, big.clone()).await;
                    }
                });
            }
        });
    } else {
        let listener = QuicListener::bind("127.0.0.1:0", sc, 64 << 20).unwrap();
        announce(listener.local_url().trim_start_matches("quic://").to_owned());
        while let Ok(conn) = listener.accept() {
            let big = big.clone();
            std::thread::spawn(move || farcall_echo(conn, big));
        }
    }
}

/// Starts this binary as a server process of `kind`; returns it and its address.
fn start_server_process(kind: &str, dir: &Path) -> (Child, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(SERVE_ENV, kind)
        .env(DIR_ENV, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (child, line.trim().to_owned())
}

/// Times 50 connections to `addr` (each dropped), then returns one more.
fn farcall_handshakes(addr: &str, cc: &Arc<rustls::ClientConfig>, s: &mut Samples) -> QuicConnection {
    let connect = || QuicConnection::connect(addr, "localhost", cc.clone(), None, 64 << 20).unwrap();
    for _ in 0..50 {
        let t = Instant::now();
        let c = connect();
        s.handshake.push(t.elapsed());
        drop(c);
    }
    connect()
}

/// Raw quinn calls from this thread, each blocking on `rt` until its reply is read.
fn raw_round(rt: &tokio::runtime::Runtime, conn: &quinn::Connection, iters: usize, s: &mut Samples) {
    for _ in 0..iters {
        let t = Instant::now();
        rt.block_on(raw_call(conn, b"ping"));
        s.rtt.push(t.elapsed());
    }
    for _ in 0..BULK_PER_ROUND {
        let t = Instant::now();
        assert_eq!(rt.block_on(raw_call(conn, b"big")), BIG);
        s.bulk.push(t.elapsed());
    }
}

fn main() {
    if let Ok(kind) = std::env::var(SERVE_ENV) {
        return serve_process(&kind);
    }
    let iters: usize = std::env::var("FARCALL_BENCH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let per_round = (iters / ROUNDS).max(1);
    let ca = Authority::new("bench CA").unwrap();
    let server = ca.issue_server(&["localhost".into()]).unwrap();
    let alice = ca.issue_client("alice").unwrap();
    let sc = farcall_tls::server_config(&server.pem_pair(), ca.cert_pem().as_bytes(), &[ALPN]).unwrap();
    let cc = farcall_tls::client_config(ca.cert_pem().as_bytes(), Some(&alice.pem_pair()), &[ALPN]).unwrap();
    let big = Bytes::from(vec![7u8; BIG]);
    println!(
        "{} round trips and {} transfers of 10 MB per transport in {ROUNDS} interleaved rounds; loopback",
        per_round * ROUNDS,
        BULK_PER_ROUND * ROUNDS
    );
    let (mut quic_proc, mut raw_proc) = (Samples::default(), Samples::default());

    // Servers in processes of their own: farcall's QUIC listener and raw quinn.
    let dir = std::env::temp_dir().join(format!("farcall-quic-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pair = server.pem_pair();
    std::fs::write(dir.join("server.pem"), &pair.cert).unwrap();
    std::fs::write(dir.join("server.key"), &pair.key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    let (farcall_child, faddr) = start_server_process("farcall", &dir);
    let (raw_child, raddr_proc) = start_server_process("raw", &dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let quic_proc_conn = farcall_handshakes(&faddr, &cc, &mut quic_proc);
    // Raw quinn's client: one current-thread runtime, driven by this thread.
    let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let proc_client_ep = {
        let _g = client_rt.enter();
        let mut c = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        c.set_default_client_config(quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(cc.clone()).unwrap())));
        c
    };
    let raddr_proc: std::net::SocketAddr = raddr_proc.parse().unwrap();
    for _ in 0..50 {
        let t = Instant::now();
        let c = client_rt.block_on(async { proc_client_ep.connect(raddr_proc, "localhost").unwrap().await.unwrap() });
        raw_proc.handshake.push(t.elapsed());
        c.close(0u32.into(), b"");
    }
    let raw_proc_conn = client_rt.block_on(async { proc_client_ep.connect(raddr_proc, "localhost").unwrap().await.unwrap() });
    let (mut quic, mut tcp, mut raw_blocking, mut raw_async) =
        (Samples::default(), Samples::default(), Samples::default(), Samples::default());

    // farcall over QUIC.
    let listener = QuicListener::bind("127.0.0.1:0", sc.clone(), 64 << 20).unwrap();
    let addr = listener.local_url().trim_start_matches("quic://").to_owned();
    {
        let big = big.clone();
        std::thread::spawn(move || loop {
            if let Ok(conn) = listener.accept() {
                let big = big.clone();
                std::thread::spawn(move || farcall_echo(conn, big));
            }
        });
    }
    let quic_conn = farcall_handshakes(&addr, &cc, &mut quic);

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
    let tcp_conn = farcall_transport_tcp::TcpConnection::connect(&taddr, None, 64 << 20, 64 << 20).unwrap();

    // Raw quinn on a two-thread runtime like quinn's examples.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server_ep = {
        let _g = rt.enter();
        let config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(sc).unwrap()));
        quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap()
    };
    let client_ep = {
        let _g = rt.enter();
        let mut c = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        c.set_default_client_config(quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(cc).unwrap())));
        c
    };
    let raddr = server_ep.local_addr().unwrap();
    let connect_pair = || {
        rt.block_on(async {
            let accept = async { server_ep.accept().await.unwrap().await.unwrap() };
            let connect = async { client_ep.connect(raddr, "localhost").unwrap().await.unwrap() };
            tokio::join!(accept, connect)
        })
    };
    for _ in 0..50 {
        let t = Instant::now();
        let (s, c) = connect_pair();
        raw_blocking.handshake.push(t.elapsed());
        c.close(0u32.into(), b"");
        drop(s);
    }
    // (a) a thread on each side blocking on the runtime for each step (the
    // shape of a blocking API over quinn: the server thread reads the
    // request then writes the reply, the client thread writes then reads).
    let (sconn, blocking_conn) = connect_pair();
    {
        let handle = rt.handle().clone();
        let big = big.clone();
        std::thread::spawn(move || {
            while let Ok((send, recv)) = handle.block_on(sconn.accept_bi()) {
                handle.block_on(raw_serve(send, recv, big.clone()));
            }
        });
    }
    // (b) async tasks on both sides.
    let (sconn, async_conn) = connect_pair();
    {
        let big = big.clone();
        rt.spawn(async move {
            while let Ok((send, recv)) = sconn.accept_bi().await {
                raw_serve(send, recv, big.clone()).await;
            }
        });
    }

    for _ in 0..ROUNDS {
        farcall_round(&quic_proc_conn, per_round, &mut quic_proc);
        raw_round(&client_rt, &raw_proc_conn, per_round, &mut raw_proc);
        farcall_round(&quic_conn, per_round, &mut quic);
        farcall_round(&tcp_conn, per_round, &mut tcp);
        raw_round(&rt, &blocking_conn, per_round, &mut raw_blocking);
        let conn = async_conn.clone();
        let (rtts, bulks) = rt.block_on(async move {
            tokio::spawn(async move {
                let (mut rtts, mut bulks) = (Vec::new(), Vec::new());
                for _ in 0..per_round {
                    let t = Instant::now();
                    raw_call(&conn, b"ping").await;
                    rtts.push(t.elapsed());
                }
                for _ in 0..BULK_PER_ROUND {
                    let t = Instant::now();
                    assert_eq!(raw_call(&conn, b"big").await, BIG);
                    bulks.push(t.elapsed());
                }
                (rtts, bulks)
            })
            .await
            .unwrap()
        });
        raw_async.rtt.extend(rtts);
        raw_async.bulk.extend(bulks);
    }
    println!("server in another process:");
    let qp = quic_proc.report("farcall QuicConnection");
    let rp = raw_proc.report("raw quinn, a runtime per side");
    println!("client and server threads in this process:");
    let q = quic.report("farcall QuicConnection");
    tcp.report("farcall TcpConnection");
    let rb = raw_blocking.report("raw quinn, blocking threads");
    let ra = raw_async.report("raw quinn, async tasks");
    println!(
        "farcall QUIC / raw quinn, server in another process: round trip {:.2}x, throughput {:.2}x, handshake {:.2}x",
        qp.0 / rp.0,
        qp.1 / rp.1,
        qp.2 / rp.2
    );
    println!(
        "farcall QUIC / raw quinn, in this process: round trip {:.2}x blocking threads, {:.2}x async tasks; throughput {:.2}x, {:.2}x; handshake {:.2}x",
        q.0 / rb.0,
        q.0 / ra.0,
        q.1 / rb.1,
        q.1 / ra.1,
        q.2 / rb.2
    );
    for mut child in [farcall_child, raw_child] {
        drop(child.stdin.take());
        let _ = child.wait();
    }
}
