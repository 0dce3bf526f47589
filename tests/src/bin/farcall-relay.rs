//! `farcall-relay`: an impairment relay in front of a farcall server, for
//! benchmarks (see `farcall_tests::relay` for what it simulates).
//!
//! ```text
//! farcall-relay udp|tcp --upstream HOST:PORT [--listen 127.0.0.1:0]
//!     [--delay-ms N] [--jitter-ms N] [--loss P] [--reorder P] [--seed N]
//!     [--exit-on-stdin-eof]
//! ```
//!
//! It prints `farcall-relay listening on IP:PORT` on stdout once it is ready,
//! then relays until it is killed (SIGTERM or SIGINT end it, with the
//! default action of those signals). With `--exit-on-stdin-eof` it also
//! exits, printing its counters on stderr, when its standard input reaches
//! end of file: give it a pipe and it goes away with the process that
//! started it, even if that process dies.

use std::io::{Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use farcall_tests::relay::{Impairment, TcpRelay, UdpRelay};

const USAGE: &str = "usage: farcall-relay udp|tcp --upstream HOST:PORT [--listen 127.0.0.1:0] \
[--delay-ms N] [--jitter-ms N] [--loss P] [--reorder P] [--seed N] [--exit-on-stdin-eof]

Relays UDP datagrams (one client) or TCP connections to HOST:PORT, adding a one-way
delay (milliseconds, fractions allowed) with uniform jitter in each direction, and for
UDP random loss and reordering (probabilities 0 to 1). Prints
`farcall-relay listening on IP:PORT` when ready and runs until killed (SIGTERM/SIGINT),
or with --exit-on-stdin-eof until its standard input is closed.";

#[derive(Debug)]
struct Args {
    udp: bool,
    upstream: SocketAddr,
    listen: SocketAddr,
    impairment: Impairment,
    exit_on_stdin_eof: bool,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let udp = match args.next().as_deref() {
        Some("udp") => true,
        Some("tcp") => false,
        Some("-h" | "--help") | None => return Err(String::new()),
        Some(other) => return Err(format!("unknown mode {other:?}: expected udp or tcp")),
    };
    let mut upstream = None;
    let mut listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut imp = Impairment::none();
    let mut exit_on_stdin_eof = false;
    while let Some(flag) = args.next() {
        if flag == "--exit-on-stdin-eof" {
            exit_on_stdin_eof = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |what: &str| format!("{flag} {value:?}: expected {what}");
        let millis = |v: &str| -> Result<Duration, String> {
            v.parse::<f64>()
                .ok()
                .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok())
                .filter(|d| *d <= Impairment::MAX_DELAY)
                .ok_or_else(|| bad("a number of milliseconds from 0 to 3600000"))
        };
        let probability = |v: &str| -> Result<f64, String> {
            v.parse::<f64>().ok().filter(|p| (0.0..=1.0).contains(p)).ok_or_else(|| bad("a probability between 0 and 1"))
        };
        match flag.as_str() {
            "--upstream" => upstream = Some(resolve(&value).map_err(|e| bad(&e))?),
            "--listen" => listen = resolve(&value).map_err(|e| bad(&e))?,
            "--delay-ms" => imp.delay = millis(&value)?,
            "--jitter-ms" => imp.jitter = millis(&value)?,
            "--loss" => imp.loss = probability(&value)?,
            "--reorder" => imp.reorder = probability(&value)?,
            "--seed" => imp.seed = value.parse().map_err(|_| bad("an integer"))?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(Args { udp, upstream: upstream.ok_or("--upstream HOST:PORT is required")?, listen, impairment: imp, exit_on_stdin_eof })
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs().map_err(|e| format!("HOST:PORT ({e})"))?.next().ok_or_else(|| "HOST:PORT (no address found)".to_string())
}

enum Relay {
    Udp(UdpRelay),
    Tcp(TcpRelay),
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("farcall-relay: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let started = if args.udp {
        UdpRelay::bind(args.listen, args.upstream, args.impairment).map(Relay::Udp)
    } else {
        TcpRelay::bind(args.listen, args.upstream, args.impairment).map(Relay::Tcp)
    };
    let relay = match started {
        Ok(relay) => relay,
        Err(e) => {
            eprintln!("farcall-relay: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let local = match &relay {
        Relay::Udp(r) => r.local_addr(),
        Relay::Tcp(r) => r.local_addr(),
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "farcall-relay listening on {local}").and_then(|()| out.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    drop(out);
    if !args.exit_on_stdin_eof {
        loop {
            std::thread::park();
        }
    }
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 4096];
    while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
    match &relay {
        Relay::Udp(r) => eprintln!("farcall-relay: {:?}", r.stats()),
        Relay::Tcp(r) => eprintln!("farcall-relay: {:?}", r.stats()),
    }
    drop(relay);
    ExitCode::SUCCESS
}
