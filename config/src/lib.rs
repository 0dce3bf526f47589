//! TOML configuration for farcall servers and clients: the schema, safe
//! defaults, and validation with errors that name the file, line and key.
//!
//! ```
//! use farcall_config::{Backend, Scheme, ServerConfig};
//!
//! let config = ServerConfig::from_toml_str(
//!     r#"
//!     [server]
//!     listen = ["tcp://127.0.0.1:0", "quic://[::1]:1227"]
//!
//!     [tls]
//!     cert = "certs/server.pem"
//!     key = "certs/server.key"
//!     client_ca = "certs/ca.pem"
//!     "#,
//!     "example.toml",
//! )?;
//! assert_eq!(config.server.listen[1].scheme, Scheme::Quic);
//! assert_eq!(config.evaluator.backend, Backend::Embedded); // default
//!
//! let err = ServerConfig::from_toml_str("[server]\nlistn = []", "farcall.toml").unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "farcall.toml:2: unknown key `listn` in [server] (expected one of: listen, insecure)"
//! );
//! # Ok::<(), farcall_config::ConfigError>(())
//! ```

mod client;
mod error;
mod load;
mod server;
mod url;

pub use client::ClientConfig;
pub use error::ConfigError;
pub use server::{
    Backend, EvaluatorSection, LimitsSection, PolicySection, ServerConfig, ServerSection, TlsSection, DEFAULT_LISTEN, MAX_MESSAGE_BYTES,
    MIN_MESSAGE_BYTES,
};
pub use url::{ListenUrl, Scheme};

#[cfg(test)]
mod tests;
