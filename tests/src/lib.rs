//! Test harness: start real servers on 127.0.0.1 port 0 with any evaluator
//! (the embedded CPython, or a fake written in the test), and talk to them
//! with real clients or raw sockets.

pub mod relay;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use farcall_backend_embedded::EmbeddedEvaluator;
use farcall_core::handshake::{self, ClientHello};
use farcall_core::{
    BackendInfo, EvalError, EvalSession, Evaluator, ExportTable, Release, RemoteException, Request,
    SessionInfo, Target, Value,
};
use farcall_server::{Server, ServerOptions};

/// The process-wide embedded evaluator (CPython can be initialised once).
pub fn embedded() -> Arc<dyn Evaluator> {
    static E: OnceLock<Arc<EmbeddedEvaluator>> = OnceLock::new();
    E.get_or_init(|| Arc::new(EmbeddedEvaluator::start().expect("embedded CPython starts")))
        .clone()
}

/// A server on 127.0.0.1 port 0, shut down when dropped.
#[derive(Debug)]
pub struct TestServer {
    /// The server.
    pub server: Server,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl TestServer {
    /// Starts a server with `evaluator` and default options.
    pub fn start(evaluator: Arc<dyn Evaluator>) -> Self {
        Self::with_options(evaluator, ServerOptions::default())
    }

    /// Starts a server with `evaluator` and `options`.
    pub fn with_options(evaluator: Arc<dyn Evaluator>, options: ServerOptions) -> Self {
        let listener =
            farcall_transport_tcp::TcpListener::bind("127.0.0.1:0", options.max_message_bytes)
                .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr").to_string();
        let server = Server::new(evaluator, options);
        server.serve(Box::new(listener));
        TestServer { server, addr }
    }

    /// A connected client.
    pub fn client(&self) -> farcall_client::Client {
        farcall_client::Client::connect(&self.addr, &Default::default()).expect("client connects")
    }

    /// A raw TCP stream to the server, with a 10 s read timeout so a test
    /// never hangs.
    pub fn raw(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).expect("raw connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
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
    s.write_all(&(body.len() as u32).to_be_bytes())
        .expect("write length");
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
/// new object by reference, `sleep(seconds)`; everything else raises.
#[derive(Debug, Default)]
pub struct FakeEvaluator;

struct FakeSession {
    table: Mutex<ExportTable<String, u64>>,
    next: Mutex<u64>,
}

fn fake_error(name: &str, message: String) -> RemoteException {
    RemoteException::new("builtins", name, message)
}

impl Evaluator for FakeEvaluator {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "fake".into(),
            ..Default::default()
        }
    }

    fn open(&self, _: &SessionInfo) -> Result<Box<dyn EvalSession>, EvalError> {
        Ok(Box::new(FakeSession {
            table: Mutex::new(ExportTable::new()),
            next: Mutex::new(0),
        }))
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
        let root = self
            .table
            .lock()
            .unwrap()
            .get(t.id)
            .cloned()
            .ok_or_else(|| RemoteException::protocol(format!("no object {}", t.id)))?;
        Ok(std::iter::once(root)
            .chain(t.path.iter().cloned())
            .collect::<Vec<_>>()
            .join("."))
    }
}

impl EvalSession for FakeSession {
    fn evaluate(&self, request: Request) -> Result<Value, RemoteException> {
        match request {
            Request::GetModule { name } if name == "echo" => Ok(self.export("echo")),
            Request::GetModule { name } => Err(fake_error(
                "ModuleNotFoundError",
                format!("No module named '{name}'"),
            )),
            Request::GetAttr { target, name } => {
                Ok(self.export(&format!("{}.{name}", self.resolve(&target)?)))
            }
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
                other => Err(fake_error(
                    "TypeError",
                    format!("'{other}' is not callable"),
                )),
            },
            Request::Stats => {
                let t = self.table.lock().unwrap();
                Ok(Value::Tuple(vec![
                    Value::Int(t.len() as i64),
                    Value::Int(t.exported_total() as i64),
                ]))
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
