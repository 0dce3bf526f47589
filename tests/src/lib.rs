//! Test harness: start real servers on 127.0.0.1 port 0 with any evaluator
//! (the embedded CPython, or a fake written in the test), and talk to them
//! with real clients or raw sockets.

pub mod relay;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use farcall_backend_embedded::EmbeddedEvaluator;
use farcall_core::handshake::{self, ClientHello};
use farcall_core::{
    BackendInfo, EvalError, EvalSession, Evaluator, ExportTable, Listener, Release, RemoteException, Request, SessionInfo, Target, Value,
};
use farcall_server::{Server, ServerOptions};
use farcall_tls::Authority;

/// The process-wide embedded evaluator (CPython can be initialised once).
pub fn embedded() -> Arc<dyn Evaluator> {
    static E: OnceLock<Arc<EmbeddedEvaluator>> = OnceLock::new();
    E.get_or_init(|| Arc::new(EmbeddedEvaluator::start().expect("embedded CPython starts"))).clone()
}

/// The process-wide subprocess evaluator (workers run `python3` from PATH).
pub fn subprocess() -> Arc<dyn Evaluator> {
    static E: OnceLock<Arc<farcall_backend_subprocess::SubprocessEvaluator>> = OnceLock::new();
    E.get_or_init(|| {
        let options = farcall_backend_subprocess::SubprocessOptions { prestart: 2, ..Default::default() };
        Arc::new(farcall_backend_subprocess::SubprocessEvaluator::start(options).expect("subprocess evaluator starts"))
    })
    .clone()
}

/// The fake evaluator shipped as a plugin (`backends/plugin-fake`), loaded
/// through the C ABI from the shared library cargo built beside the tests.
pub fn plugin_fake() -> Arc<dyn Evaluator> {
    let exe = std::env::current_exe().expect("test executable");
    let deps = exe.parent().expect("deps folder");
    let name = "libfarcall_plugin_fake.so";
    let path = [deps.join(name), deps.parent().expect("profile folder").join(name)]
        .into_iter()
        .find(|p| p.is_file())
        .expect("libfarcall_plugin_fake.so, built by cargo as a dependency of this crate");
    Arc::new(farcall_backend_plugin::PluginEvaluator::load(&path).expect("the fake plugin loads"))
}

/// The Python evaluators the behavioural suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// CPython inside the server.
    Embedded,
    /// A worker interpreter process per session.
    Subprocess,
}

impl Backend {
    /// The (process-wide) evaluator.
    pub fn evaluator(self) -> Arc<dyn Evaluator> {
        match self {
            Backend::Embedded => embedded(),
            Backend::Subprocess => subprocess(),
        }
    }

    /// The interpreter it runs: the build's for the embedded backend, the
    /// configured one (`python3`) for the subprocess backend.
    pub fn python(self) -> &'static str {
        match self {
            Backend::Embedded => farcall_backend_embedded::BUILD_PYTHON,
            Backend::Subprocess => "python3",
        }
    }
}

/// One combination of the behavioural suite: a transport and a Python backend.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// How the client reaches the server.
    pub transport: Transport,
    /// What evaluates.
    pub backend: Backend,
}

impl Case {
    /// A server for this case.
    pub fn server(self) -> TestServer {
        TestServer::start_on(self.transport, self.backend.evaluator())
    }
}

/// Runs each named test function (taking a [`Case`]) once per backend and
/// transport, in modules `embedded::tcp`, ..., `subprocess::quic`.
#[macro_export]
macro_rules! per_case {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $crate::per_case!(@transports Embedded; $($test),*);
        }
        mod subprocess {
            $crate::per_case!(@transports Subprocess; $($test),*);
        }
    };
    (@transports $backend:ident; $($test:ident),*) => {
        mod tcp {
            $( #[test] fn $test() { super::super::$test($crate::Case { transport: $crate::Transport::Tcp, backend: $crate::Backend::$backend }) } )*
        }
        mod tls {
            $( #[test] fn $test() { super::super::$test($crate::Case { transport: $crate::Transport::Tls, backend: $crate::Backend::$backend }) } )*
        }
        mod quic {
            $( #[test] fn $test() { super::super::$test($crate::Case { transport: $crate::Transport::Quic, backend: $crate::Backend::$backend }) } )*
        }
    };
}

/// The transports a test can run over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `tcp://`
    Tcp,
    /// `tls://` (mutual TLS over TCP)
    Tls,
    /// `quic://` (mutual TLS)
    Quic,
}

impl Transport {
    /// The URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Quic => "quic",
        }
    }
}

/// Runs each named test function (taking a [`Transport`]) once per
/// transport, in modules `tcp`, `tls` and `quic`.
#[macro_export]
macro_rules! per_transport {
    ($($test:ident),* $(,)?) => {
        mod tcp {
            $( #[test] fn $test() { super::$test($crate::Transport::Tcp) } )*
        }
        mod tls {
            $( #[test] fn $test() { super::$test($crate::Transport::Tls) } )*
        }
        mod quic {
            $( #[test] fn $test() { super::$test($crate::Transport::Quic) } )*
        }
    };
}

/// Certificates made once per test process: a CA, a server certificate for
/// 127.0.0.1 and localhost (`server`), one for another name (`other-name`),
/// client `alice`, an `expired` client, and `mallory` of another CA.
#[derive(Debug)]
pub struct TestCerts {
    /// The folder holding the PEM files.
    pub dir: PathBuf,
    /// The CA.
    pub ca: Authority,
}

impl TestCerts {
    /// The process-wide set.
    pub fn get() -> &'static TestCerts {
        static CERTS: OnceLock<TestCerts> = OnceLock::new();
        CERTS.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("farcall-test-certs-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("cert dir");
            let ca = Authority::new(&format!("test CA {}", std::process::id())).expect("CA");
            let write = |name: &str, issued: &farcall_tls::Issued| {
                std::fs::write(dir.join(format!("{name}.pem")), &issued.cert_pem).expect("write cert");
                std::fs::write(dir.join(format!("{name}.key")), &issued.key_pem).expect("write key");
            };
            std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("write ca");
            write("server", &ca.issue_server(&["127.0.0.1".into(), "localhost".into()]).expect("server cert"));
            write("other-name", &ca.issue_server(&["elsewhere.example".into()]).expect("server cert"));
            write("alice", &ca.issue_client("alice").expect("client cert"));
            let now = time::OffsetDateTime::now_utc();
            let expired = ca.issue_client_valid("expired", now - time::Duration::days(30), now - time::Duration::days(1));
            write("expired", &expired.expect("expired cert"));
            let other = Authority::new("another CA").expect("other CA");
            write("mallory", &other.issue_client("mallory").expect("mallory"));
            TestCerts { dir, ca }
        })
    }

    /// A file of the set (`ca.pem`, `alice.key`, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Client options presenting `client`'s certificate (`None`: no certificate).
    pub fn client_options(&self, client: Option<&str>) -> farcall_client::Options {
        farcall_client::Options {
            tls: Some(farcall_client::TlsOptions {
                ca: self.path("ca.pem"),
                cert: client.map(|c| self.path(&format!("{c}.pem"))),
                key: client.map(|c| self.path(&format!("{c}.key"))),
                server_name: None,
            }),
            ..Default::default()
        }
    }

    /// The server configuration presenting certificate `server` (`server` or `other-name`).
    pub fn server_config(&self, server: &str) -> Arc<rustls::ServerConfig> {
        farcall_tls::ServerTlsFiles {
            cert: self.path(&format!("{server}.pem")),
            key: self.path(&format!("{server}.key")),
            client_ca: self.path("ca.pem"),
        }
        .load(&[farcall_client::ALPN])
        .expect("server TLS config")
    }
}

/// A server on 127.0.0.1 port 0, shut down when dropped.
#[derive(Debug)]
pub struct TestServer {
    /// The server.
    pub server: Server,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// How clients reach it.
    pub transport: Transport,
}

impl TestServer {
    /// Starts a plain TCP server with `evaluator` and default options.
    pub fn start(evaluator: Arc<dyn Evaluator>) -> Self {
        Self::start_on(Transport::Tcp, evaluator)
    }

    /// Starts a server on `transport` with `evaluator` and default options.
    pub fn start_on(transport: Transport, evaluator: Arc<dyn Evaluator>) -> Self {
        Self::with_options_on(transport, evaluator, ServerOptions::default(), "server")
    }

    /// Starts a plain TCP server with `evaluator` and `options`.
    pub fn with_options(evaluator: Arc<dyn Evaluator>, options: ServerOptions) -> Self {
        Self::with_options_on(Transport::Tcp, evaluator, options, "server")
    }

    /// Starts a server on `transport` presenting certificate `cert` (for TLS and QUIC).
    pub fn with_options_on(transport: Transport, evaluator: Arc<dyn Evaluator>, options: ServerOptions, cert: &str) -> Self {
        let max = options.max_message_bytes;
        let listener: Box<dyn Listener> = match transport {
            Transport::Tcp => Box::new(farcall_transport_tcp::TcpListener::bind("127.0.0.1:0", max).expect("bind tcp")),
            Transport::Tls => {
                let config = TestCerts::get().server_config(cert);
                Box::new(farcall_transport_tcp::TlsListener::bind("127.0.0.1:0", config, max).expect("bind tls"))
            }
            Transport::Quic => {
                let config = TestCerts::get().server_config(cert);
                Box::new(farcall_transport_quic::QuicListener::bind("127.0.0.1:0", config, max).expect("bind quic"))
            }
        };
        let url = listener.local_url();
        let addr = url.split_once("://").expect("url").1.to_owned();
        let server = Server::new(evaluator, options);
        server.serve(listener);
        TestServer { server, addr, transport }
    }

    /// The URL clients dial.
    pub fn url(&self) -> String {
        format!("{}://{}", self.transport.scheme(), self.addr)
    }

    /// Client options for this server (with `alice`'s certificate for TLS and QUIC).
    pub fn options(&self) -> farcall_client::Options {
        match self.transport {
            Transport::Tcp => Default::default(),
            _ => TestCerts::get().client_options(Some("alice")),
        }
    }

    /// A connected client.
    pub fn client(&self) -> farcall_client::Client {
        farcall_client::Client::connect(&self.url(), &self.options()).expect("client connects")
    }

    /// A transport connection over the server's transport (with `alice`'s
    /// certificate for TLS and QUIC) that has completed the handshake as
    /// `client`, its receive timeout `bound` so a test never hangs: for tests
    /// that drive the protocol with core's session state machine.
    pub fn connection(&self, client: &str, bound: Duration) -> Box<dyn farcall_core::Connection> {
        let max = 1 << 24;
        let tls = || {
            let certs = TestCerts::get();
            let files = farcall_tls::ClientTlsFiles {
                ca: certs.path("ca.pem"),
                cert: Some(certs.path("alice.pem")),
                key: Some(certs.path("alice.key")),
            };
            files.load(&[farcall_tls::ALPN]).expect("client TLS config")
        };
        let conn: Box<dyn farcall_core::Connection> = match self.transport {
            Transport::Tcp => {
                Box::new(farcall_transport_tcp::TcpConnection::connect(&self.addr, Some(bound), max, 1 << 16).expect("connects"))
            }
            Transport::Tls => Box::new(
                farcall_transport_tcp::TlsConnection::connect(&self.addr, "127.0.0.1", tls(), Some(bound), max, 1 << 16).expect("connects"),
            ),
            Transport::Quic => Box::new(
                farcall_transport_quic::QuicConnection::connect(&self.addr, "127.0.0.1", tls(), Some(bound), max).expect("connects"),
            ),
        };
        conn.set_recv_timeout(Some(bound)).unwrap();
        let hello = handshake::encode(&ClientHello::new(client));
        conn.send(&[&farcall_core::Frame::from_bytes(farcall_core::Route::Oneway, hello.into())]).unwrap();
        handshake::decode_server_reply(&conn.recv().expect("handshake reply")).expect("accepted");
        conn
    }

    /// A raw TCP stream to the server, with a 10 s read timeout so a test
    /// never hangs.
    pub fn raw(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).expect("raw connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s
    }

    /// A raw stream that has completed the handshake.
    pub fn raw_after_handshake(&self) -> TcpStream {
        let mut s = self.raw();
        write_frame(&mut s, &handshake::encode(&ClientHello::new("raw test")));
        let reply = read_frame(&mut s).expect("handshake reply");
        handshake::decode_server_reply(&reply).expect("accepted");
        s
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.shutdown();
    }
}

/// Writes one length-prefixed frame.
pub fn write_frame(s: &mut TcpStream, body: &[u8]) {
    s.write_all(&(body.len() as u32).to_be_bytes()).expect("write length");
    s.write_all(body).expect("write body");
}

/// Reads one frame; `None` at end of stream (or a reset).
pub fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(head) as usize];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

/// Whether the server closed `s` (reads end of stream or a reset, not a timeout).
pub fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// An in-memory evaluator written for tests, without Python: module `echo`
/// has `echo(*args)` returning its arguments as a tuple, `obj()` returning a
/// new object by reference, `sleep(seconds)`; "module" `whoami` is the
/// client's certificate identity; everything else raises.
#[derive(Debug, Default)]
pub struct FakeEvaluator;

struct FakeSession {
    table: Mutex<ExportTable<String, u64>>,
    next: Mutex<u64>,
    /// The client's certificate identity, as the server saw it.
    identity: Option<String>,
}

fn fake_error(name: &str, message: String) -> RemoteException {
    RemoteException::new("builtins", name, message)
}

impl Evaluator for FakeEvaluator {
    fn info(&self) -> BackendInfo {
        BackendInfo { name: "fake".into(), ..Default::default() }
    }

    fn open(&self, info: &SessionInfo) -> Result<Box<dyn EvalSession>, EvalError> {
        Ok(Box::new(FakeSession { table: Mutex::new(ExportTable::new()), next: Mutex::new(0), identity: info.peer.identity.clone() }))
    }
}

impl FakeSession {
    fn export(&self, what: &str) -> Value {
        let mut n = self.next.lock().unwrap();
        *n += 1;
        let id = self.table.lock().unwrap().export(*n, || what.to_owned());
        Value::SenderObject(farcall_core::RefDesc::new(id, format!("fake.{what}")))
    }

    fn resolve(&self, t: &Target) -> Result<String, RemoteException> {
        let root = self.table.lock().unwrap().get(t.id).cloned().ok_or_else(|| RemoteException::protocol(format!("no object {}", t.id)))?;
        Ok(std::iter::once(root).chain(t.path.iter().cloned()).collect::<Vec<_>>().join("."))
    }
}

impl EvalSession for FakeSession {
    fn evaluate(&self, request: Request) -> Result<Value, RemoteException> {
        match request {
            Request::GetModule { name } if name == "echo" => Ok(self.export("echo")),
            Request::GetModule { name } if name == "whoami" => Ok(self.identity.clone().map_or(Value::None, Value::Str)),
            Request::GetModule { name } => Err(fake_error("ModuleNotFoundError", format!("No module named '{name}'"))),
            Request::GetAttr { target, name } => Ok(self.export(&format!("{}.{name}", self.resolve(&target)?))),
            Request::Call { target, args, .. } => match self.resolve(&target)?.as_str() {
                "echo.echo" => Ok(Value::Tuple(args)),
                "echo.obj" => Ok(self.export("obj")),
                "echo.sleep" => {
                    let secs = match args.first() {
                        Some(Value::Float(f)) => *f,
                        Some(Value::Int(i)) => *i as f64,
                        _ => 0.0,
                    };
                    std::thread::sleep(Duration::from_secs_f64(secs));
                    Ok(Value::None)
                }
                other => Err(fake_error("TypeError", format!("'{other}' is not callable"))),
            },
            Request::Stats => {
                let t = self.table.lock().unwrap();
                Ok(Value::Tuple(vec![Value::Int(t.len() as i64), Value::Int(t.exported_total() as i64)]))
            }
            other => Err(fake_error("NotImplementedError", other.name().into())),
        }
    }

    fn release(&self, refs: &[Release]) {
        let mut t = self.table.lock().unwrap();
        for r in refs {
            t.release(r.id, r.count);
        }
    }
}
