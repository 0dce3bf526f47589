//! End-to-end tests: real servers on 127.0.0.1 port 0, real clients.

/// The Rust client example, included so the tests run exactly its code.
#[path = "../../../client/examples/seed.rs"]
#[allow(dead_code)]
mod seed;

mod abuse;
mod callbacks;
mod embedded_python;
mod network;
mod rust_client;
mod secure;
mod seed_example;
mod thread_affinity;
