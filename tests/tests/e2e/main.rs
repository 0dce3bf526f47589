//! End-to-end tests: real servers on 127.0.0.1 port 0, real clients.

mod abuse;
mod secure;
mod embedded_python;
mod seed_example;
