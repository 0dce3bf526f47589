//! `farcall`: the server binary.
//!
//! ```text
//! farcall serve [--config FILE] [--listen URL]...
//! farcall --version
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use farcall_config::{Backend, ListenUrl, Scheme, ServerConfig};
use farcall_core::{Evaluator, Listener};
use farcall_server::{Server, ServerOptions};
use tracing::info;

const USAGE: &str = "\
usage: farcall serve [--config FILE] [--listen URL]...
       farcall certs --out DIR [--server-name NAME]... [--client NAME]...
       farcall --version

serve     run a server. Without options: tcp://127.0.0.1:1227, embedded CPython.
          --config FILE   a TOML file (see DESIGN.md, Configuration)
          --listen URL    tcp://, tls:// or quic://HOST:PORT (repeatable;
                          replaces [server] listen)
certs     make TLS material in DIR: a CA (ca.pem, ca.key; an existing one is
          reused, never overwritten), a server certificate for the names and
          IP addresses clients dial (server.pem, server.key), and one client
          certificate per --client (NAME.pem, NAME.key). Keys are mode 0600.

Logs go to stderr (filter with FARCALL_LOG, e.g. FARCALL_LOG=debug); each
listening address is printed on stdout as `farcall listening on URL`.";

struct ServeArgs {
    config: Option<PathBuf>,
    listen: Vec<String>,
}

fn parse_serve(args: &[String]) -> Result<ServeArgs> {
    let mut out = ServeArgs { config: None, listen: Vec::new() };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (a.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone().or_else(|| it.next().cloned()) {
                Some(v) => Ok(v),
                None => bail!("{name} needs a value\n\n{USAGE}"),
            }
        };
        match flag {
            "--config" | "-c" => out.config = Some(value("--config")?.into()),
            "--listen" | "-l" => out.listen.push(value("--listen")?),
            _ => bail!("unknown argument `{a}`\n\n{USAGE}"),
        }
    }
    Ok(out)
}

fn load_config(args: &ServeArgs) -> Result<ServerConfig> {
    let mut config = match &args.config {
        Some(path) => ServerConfig::from_file(path)?,
        None => ServerConfig::default(),
    };
    if !args.listen.is_empty() {
        config.server.listen =
            args.listen.iter().map(|u| u.parse::<ListenUrl>().with_context(|| format!("--listen {u}"))).collect::<Result<_>>()?;
        config.validate().context("--listen")?;
    }
    Ok(config)
}

fn start_evaluator(config: &ServerConfig) -> Result<Arc<dyn Evaluator>> {
    match config.evaluator.backend {
        Backend::Embedded => {
            if config.evaluator.call_timeout().is_some() {
                tracing::warn!("evaluator.call_timeout_s is enforced by the subprocess backend only: the embedded interpreter cannot stop a running call");
            }
            let e = farcall_backend_embedded::EmbeddedEvaluator::start()?;
            Ok(Arc::new(e))
        }
        Backend::Plugin => {
            let path = config.evaluator.plugin.as_ref().context("evaluator.backend = \"plugin\" needs evaluator.plugin = PATH")?;
            Ok(Arc::new(farcall_backend_plugin::PluginEvaluator::load(path)?))
        }
        Backend::Subprocess => {
            let e = &config.evaluator;
            let options = farcall_backend_subprocess::SubprocessOptions {
                python: e.python.clone(),
                prestart: e.prestart as usize,
                max_memory_mb: e.max_memory_mb,
                call_timeout: e.call_timeout(),
            };
            Ok(Arc::new(farcall_backend_subprocess::SubprocessEvaluator::start(options)?))
        }
    }
}

/// The server's rustls configuration from `[tls]` (validation made sure
/// the three files are named when a tls:// or quic:// listener exists).
fn server_tls(config: &ServerConfig) -> Result<Arc<rustls::ServerConfig>> {
    let t = &config.tls;
    let (Some(cert), Some(key), Some(client_ca)) = (&t.cert, &t.key, &t.client_ca) else {
        bail!("tls:// and quic:// listeners need [tls] cert, key and client_ca");
    };
    let files = farcall_tls::ServerTlsFiles { cert: cert.clone(), key: key.clone(), client_ca: client_ca.clone() };
    Ok(files.load(&[farcall_tls::ALPN])?)
}

fn bind(url: &ListenUrl, config: &ServerConfig, max_frame: usize) -> Result<Box<dyn Listener>> {
    let addr = if url.host.contains(':') { format!("[{}]:{}", url.host, url.port) } else { format!("{}:{}", url.host, url.port) };
    Ok(match url.scheme {
        Scheme::Tcp => Box::new(farcall_transport_tcp::TcpListener::bind(&addr, max_frame)?),
        Scheme::Tls => Box::new(farcall_transport_tcp::TlsListener::bind(&addr, server_tls(config)?, max_frame)?),
        Scheme::Quic => Box::new(farcall_transport_quic::QuicListener::bind(&addr, server_tls(config)?, max_frame)?),
    })
}

fn serve(args: &[String]) -> Result<()> {
    let args = parse_serve(args)?;
    let config = load_config(&args)?;
    let options = ServerOptions {
        max_message_bytes: config.limits.max_message_bytes as usize,
        max_connections: config.limits.max_connections as usize,
        allow_setattr: config.policy.allow_setattr,
        ..ServerOptions::default()
    };
    let listeners = config.server.listen.iter().map(|u| bind(u, &config, options.max_message_bytes)).collect::<Result<Vec<_>>>()?;
    let evaluator = start_evaluator(&config)?;
    let backend = evaluator.info();
    info!(
        backend = %backend.name,
        python_version = %backend.python_version,
        python_prefix = %backend.python_prefix,
        python_executable = %backend.python_executable,
        "evaluator ready"
    );
    let server = Server::new(evaluator, options);
    let mut stdout = std::io::stdout().lock();
    for l in listeners {
        let url = l.local_url();
        if !url.starts_with("tcp://127.") && !url.starts_with("tcp://[::1]") {
            info!("serving unencrypted TCP on {url} (insecure = true)");
        }
        info!("listening on {url}");
        writeln!(stdout, "farcall listening on {url}")?;
        server.serve(l);
    }
    stdout.flush()?;
    drop(stdout);

    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    if let Some(sig) = signals.forever().next() {
        let name = if sig == signal_hook::consts::SIGINT { "SIGINT" } else { "SIGTERM" };
        info!("received {name}: closing {} session(s) and stopping", server.session_count());
    }
    server.shutdown();
    Ok(())
}

fn certs(args: &[String]) -> Result<()> {
    let mut out = None;
    let mut server_names = Vec::new();
    let mut clients = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (a.as_str(), None),
        };
        let value = inline.or_else(|| it.next().cloned()).with_context(|| format!("{flag} needs a value\n\n{USAGE}"))?;
        match flag {
            "--out" => out = Some(PathBuf::from(value)),
            "--server-name" => server_names.push(value),
            "--client" => clients.push(value),
            _ => bail!("unknown argument `{a}`\n\n{USAGE}"),
        }
    }
    let Some(out) = out else { bail!("farcall certs needs --out DIR\n\n{USAGE}") };
    if server_names.is_empty() && clients.is_empty() && out.join("ca.pem").exists() {
        bail!("{} already holds a CA; say what to issue with --server-name or --client", out.display());
    }
    let set = farcall_tls::write_certificate_set(&out, &server_names, &clients)?;
    let mut stdout = std::io::stdout().lock();
    if set.new_ca {
        writeln!(stdout, "made a new CA: {} (its key ca.key must stay private)", set.ca.display())?;
    } else {
        writeln!(stdout, "reused the CA in {}", set.ca.display())?;
    }
    if let Some((pem, key)) = &set.server {
        writeln!(stdout, "server certificate for {}: {} {}", server_names.join(", "), pem.display(), key.display())?;
    }
    for ((pem, key), name) in set.clients.iter().zip(&clients) {
        writeln!(stdout, "client certificate for {name}: {} {}", pem.display(), key.display())?;
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FARCALL_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("certs") => certs(&args[1..]),
        Some("--version" | "-V" | "version") => {
            println!("farcall {}", farcall_core::handshake::FARCALL_VERSION);
            Ok(())
        }
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("farcall: {e:#}");
            ExitCode::FAILURE
        }
    }
}
