//! The seed's example, from Rust: `cargo run -p farcall-client --example seed [ADDRESS]`
//! against a running `farcall serve` (default 127.0.0.1:1227).

use farcall_client::{Client, ClientError, Options, Remote, RemoteObject, TlsOptions};

/// Runs the example against `address`, returning what it printed.
pub fn run(address: &str, options: &Options) -> Result<Vec<String>, ClientError> {
    let mut out = Vec::new();
    let conn = Client::connect(address, options)?;
    let s = conn.server();
    out.push(format!("connected: farcall {} serving Python {} ({})", s.farcall_version, s.python_version, s.backend));

    // conn.modules.math.pow(3, 2)
    let math = conn.module("math")?;
    let pow: RemoteObject = math.getattr("pow")?.extract()?;
    let nine: f64 = pow.call(vec![3.into(), 2.into()])?.extract()?;
    assert_eq!(nine, 9.0);
    out.push(format!("math.pow(3, 2) = {nine}"));

    // conn.modules.os.path.sep, a module variable of a basic type
    let os = conn.module("os")?;
    let path: RemoteObject = os.getattr("path")?.extract()?;
    let sep: String = path.getattr("sep")?.extract()?;
    assert_eq!(sep, "/");
    out.push(format!("os.path.sep = {sep:?}"));

    // conn.modules["os.path"].join("a", "b")
    let join: RemoteObject = conn.module("os.path")?.getattr("join")?.extract()?;
    let joined: String = join.call(vec!["a".into(), "b".into()])?.extract()?;
    assert_eq!(joined, "a/b");
    out.push(format!("os.path.join('a', 'b') = {joined:?}"));

    // math.sqrt(-1) raises ValueError on the server
    let sqrt: RemoteObject = math.getattr("sqrt")?.extract()?;
    match sqrt.call(vec![Remote::Int(-1)]) {
        Err(ClientError::Remote(e)) if e.qualified_type() == "builtins.ValueError" => {
            assert!(e.traceback.contains("Traceback"), "the remote traceback travels with the error");
            out.push(format!("math.sqrt(-1) raised {}: {}", e.qualified_type(), e.message));
        }
        other => panic!("math.sqrt(-1) should raise ValueError, got {other:?}"),
    }

    // conn.modules.no_such_module raises ModuleNotFoundError
    match conn.module("no_such_module") {
        Err(ClientError::Remote(e)) if e.type_name == "ModuleNotFoundError" => {
            out.push(format!("no_such_module raised {}", e.qualified_type()))
        }
        other => panic!("importing no_such_module should fail, got {other:?}"),
    }
    conn.close();
    Ok(out)
}

/// `seed [ADDRESS [CA CERT KEY]]`: the TLS files are needed for tls:// and quic://.
#[allow(dead_code)] // the tests include this file and call `run`
fn main() -> Result<(), ClientError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let address = args.first().cloned().unwrap_or_else(|| "127.0.0.1:1227".into());
    let mut options = Options::default();
    if let [_, ca, cert, key] = args.as_slice() {
        options.tls = Some(TlsOptions { ca: ca.into(), cert: Some(cert.into()), key: Some(key.into()), server_name: None });
    }
    for line in run(&address, &options)? {
        println!("{line}");
    }
    Ok(())
}
