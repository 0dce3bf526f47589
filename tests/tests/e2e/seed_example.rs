// The Rust client example (client/examples/seed.rs) run against a real server.

use crate::seed;

use farcall_tests::{per_case, Case};

fn the_rust_example_runs_against_a_real_server(c: Case) {
    let server = c.server();
    let lines = seed::run(&server.url(), &server.options()).expect("example runs");
    assert!(lines.iter().any(|l| l == "math.pow(3, 2) = 9"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "os.path.sep = \"/\""), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("math.sqrt(-1) raised builtins.ValueError")), "{lines:?}");
    assert!(lines.iter().any(|l| l == "no_such_module raised builtins.ModuleNotFoundError"), "{lines:?}");
}

per_case!(the_rust_example_runs_against_a_real_server,);
