// temporary experiment: current_thread runtimes driven by the calling threads
use std::sync::Arc;
use std::time::Instant;
use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

fn main() {
    let ca = farcall_tls::Authority::new("x").unwrap();
    let server = ca.issue_server(&["localhost".into()]).unwrap();
    let alice = ca.issue_client("alice").unwrap();
    let sc = farcall_tls::server_config(&server.pem_pair(), ca.cert_pem().as_bytes(), &[]).unwrap();
    let cc = farcall_tls::client_config(ca.cert_pem().as_bytes(), Some(&alice.pem_pair()), &[]).unwrap();
    let srt = Arc::new(tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap());
    let crt = Arc::new(tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap());
    let sep = { let _g = srt.enter(); quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(sc).unwrap())), "127.0.0.1:0".parse().unwrap()).unwrap() };
    let mut cep = { let _g = crt.enter(); quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap() };
    cep.set_default_client_config(quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(cc).unwrap())));
    let addr = sep.local_addr().unwrap();
    let srt2 = srt.clone();
    let server = std::thread::spawn(move || {
        let conn = srt2.block_on(async { sep.accept().await.unwrap().await.unwrap() });
        loop {
            let Ok((mut send, mut recv)) = srt2.block_on(conn.accept_bi()) else { return };
            let req = srt2.block_on(recv.read_to_end(1 << 20)).unwrap();
            assert_eq!(req, b"ping");
            srt2.block_on(async { send.write_chunk(Bytes::from_static(b"pong")).await.unwrap(); let _ = send.finish(); tokio::task::yield_now().await; });
        }
    });
    let conn = crt.block_on(async { cep.connect(addr, "localhost").unwrap().await.unwrap() });
    let mut v = Vec::new();
    for _ in 0..5000 {
        let t = Instant::now();
        let (mut send, mut recv) = crt.block_on(conn.open_bi()).unwrap();
        crt.block_on(async { send.write_all(b"ping").await.unwrap(); let _ = send.finish(); tokio::task::yield_now().await; });
        let r = crt.block_on(recv.read_to_end(1 << 20)).unwrap();
        assert_eq!(r, b"pong");
        v.push(t.elapsed());
    }
    v.sort();
    println!("current_thread, callers drive: median {:?} p10 {:?} p90 {:?}", v[2500], v[500], v[4500]);
    drop(server);
}
