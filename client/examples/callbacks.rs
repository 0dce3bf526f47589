//! Remote objects, copies, teleport and callbacks from Rust:
//! `cargo run -p farcall-client --example callbacks [ADDRESS]` against a
//! running `farcall serve` (default 127.0.0.1:1227).

use std::sync::Arc;

use farcall_client::{Client, ClientError, FnHandler, Options, Remote, RemoteObject};
use farcall_core::RemoteException;

fn main() -> Result<(), ClientError> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:1227".into());
    let client = Client::connect(&address, &Options::default())?;

    // eval / execute share this connection's namespace on the server.
    client.execute("import collections\ncounts = collections.Counter('abracadabra')")?;
    let counts: RemoteObject = client.eval("counts")?.extract()?;
    println!("counts['a'] = {:?}", counts.getitem("a")?);

    // A copy of a remote container, and iteration in batches.
    let most: RemoteObject = client.eval("counts.most_common(3)")?.extract()?;
    println!("most common: {:?}", client.obtain(&most)?);
    let squares: RemoteObject = client.eval("(i * i for i in range(10))")?.extract()?;
    let total: i64 = squares.iter().map(|r| r.and_then(Remote::extract::<i64>)).sum::<Result<i64, _>>()?;
    println!("sum of squares = {total}");

    // A function shipped as source, run by the server.
    let fib = client.teleport_source("def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n", "fib")?;
    println!("fib(20) = {:?}", fib.call(vec![20.into()])?);

    // A Rust closure the server calls back while the call is in flight.
    let handler = Arc::new(FnHandler::new());
    client.set_handler(handler.clone());
    let shout = handler.export("shout", |_, args, _| match args.as_slice() {
        [Remote::Str(s)] => Ok(Remote::Str(s.to_uppercase())),
        _ => Err(RemoteException::new("builtins", "TypeError", "shout(str)")),
    });
    let map: RemoteObject = client.builtins()?.getattr("map")?.extract()?;
    let shouted: RemoteObject = map.call(vec![shout, Remote::Tuple(vec!["far".into(), "call".into()])])?.extract()?;
    let words: Vec<Remote> =
        client.builtins()?.getattr("tuple")?.extract::<RemoteObject>()?.call(vec![Remote::Object(shouted)])?.extract()?;
    println!("shouted: {words:?}");
    client.close();
    Ok(())
}
