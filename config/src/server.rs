//! The server configuration (`farcall serve --config farcall.toml`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::{load, ConfigError, ListenUrl, Scheme};

/// The address served when `[server] listen` is not given.
pub const DEFAULT_LISTEN: &str = "tcp://127.0.0.1:1227";
/// Smallest accepted `[limits] max_message_bytes`.
pub const MIN_MESSAGE_BYTES: u64 = 1024;
/// Largest accepted `[limits] max_message_bytes` (frame lengths are 32-bit).
pub const MAX_MESSAGE_BYTES: u64 = u32::MAX as u64;

/// A whole server configuration file. Every section is optional.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `[server]`: where to listen.
    pub server: ServerSection,
    /// `[tls]`: certificates for `tls://` and `quic://` listeners.
    pub tls: TlsSection,
    /// `[evaluator]`: which Python backend runs the calls.
    pub evaluator: EvaluatorSection,
    /// `[limits]`: resource limits.
    pub limits: LimitsSection,
    /// `[policy]`: what clients may do.
    pub policy: PolicySection,
}

/// `[server]`: listeners.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a [server] table")]
pub struct ServerSection {
    /// Addresses to serve, default `["tcp://127.0.0.1:1227"]`.
    #[serde(deserialize_with = "listen_list")]
    pub listen: Vec<ListenUrl>,
    /// Allow `tcp://` (plaintext) on a non-loopback address. Default false.
    pub insecure: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self { listen: vec![DEFAULT_LISTEN.parse().expect("valid default address")], insecure: false }
    }
}

/// `[tls]`: server certificate, its key, and the CA that signs client
/// certificates. Relative paths are resolved against the config file's folder.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a [tls] table")]
pub struct TlsSection {
    /// Server certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    pub key: Option<PathBuf>,
    /// CA certificate (PEM) that client certificates must be signed by.
    pub client_ca: Option<PathBuf>,
}

/// Which evaluator backend runs Python.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// CPython inside the server process (the default).
    #[default]
    Embedded,
    /// A separate Python interpreter process per session.
    Subprocess,
    /// An evaluator loaded from a shared library (`[evaluator] plugin`).
    Plugin,
}

impl Backend {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Subprocess => "subprocess",
            Backend::Plugin => "plugin",
        }
    }
}

impl<'de> Deserialize<'de> for Backend {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl Visitor<'_> for NameVisitor {
            type Value = Backend;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"one of "embedded", "subprocess", "plugin""#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Backend, E> {
                [Backend::Embedded, Backend::Subprocess, Backend::Plugin]
                    .into_iter()
                    .find(|b| b.as_str() == v)
                    .ok_or_else(|| E::custom(format!(r#"unknown backend `{v}`; use "embedded", "subprocess" or "plugin""#)))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[evaluator]`: the Python backend.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "an [evaluator] table")]
pub struct EvaluatorSection {
    /// Which backend, default `embedded`.
    pub backend: Backend,
    /// Per-call time limit in seconds, 0 = none (default). For `subprocess`
    /// the worker is killed when it is exceeded.
    pub call_timeout_s: f64,
    /// `subprocess`: the interpreter to run, default `python3`.
    pub python: String,
    /// `subprocess`: workers kept started and ready, default 2.
    pub prestart: u32,
    /// `subprocess`: address-space limit per worker in MiB, 0 = none (default).
    pub max_memory_mb: u64,
    /// `plugin`: the shared library to load.
    pub plugin: Option<PathBuf>,
}

impl Default for EvaluatorSection {
    fn default() -> Self {
        Self { backend: Backend::Embedded, call_timeout_s: 0.0, python: "python3".to_owned(), prestart: 2, max_memory_mb: 0, plugin: None }
    }
}

impl EvaluatorSection {
    /// `call_timeout_s` as a duration; `None` when 0 (no limit) or invalid.
    pub fn call_timeout(&self) -> Option<Duration> {
        Duration::try_from_secs_f64(self.call_timeout_s).ok().filter(|d| !d.is_zero())
    }
}

/// `[limits]`: resource limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a [limits] table")]
pub struct LimitsSection {
    /// Largest accepted frame in bytes, default 64 MiB; 1024 to 2^32-1.
    pub max_message_bytes: u64,
    /// Most simultaneous client connections, default 1024; at least 1.
    pub max_connections: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self { max_message_bytes: 64 * 1024 * 1024, max_connections: 1024 }
    }
}

/// `[policy]`: what clients may do.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a [policy] table")]
pub struct PolicySection {
    /// Allow setting and deleting attributes through proxies, default true.
    pub allow_setattr: bool,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self { allow_setattr: true }
    }
}

impl ServerConfig {
    /// Reads, parses and validates a config file. Relative paths (`[tls]`
    /// files, `evaluator.plugin`) are resolved against the file's folder.
    /// Errors name the file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = load::read(path)?;
        let mut config = Self::from_toml_str(&text, &path.display().to_string())?;
        let tls = &mut config.tls;
        load::resolve_paths(path, [&mut tls.cert, &mut tls.key, &mut tls.client_ca, &mut config.evaluator.plugin]);
        Ok(config)
    }

    /// Parses and validates TOML text; `origin` stands in for the file name
    /// in error messages. Paths are kept as written.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        load::parse(text, origin, Self::validate)
    }

    /// Checks ranges and the rules between settings: plaintext TCP only on
    /// loopback unless `insecure`, certificates for `tls://` and `quic://`,
    /// a library for the `plugin` backend.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.listen.is_empty() {
            return Err(ConfigError::invalid(
                "server.listen",
                format!("no address to listen on; add one, e.g. listen = [\"{DEFAULT_LISTEN}\"]"),
            ));
        }
        for url in &self.server.listen {
            if url.scheme == Scheme::Tcp && !url.is_loopback() && !self.server.insecure {
                return Err(ConfigError::invalid(
                    "server.listen",
                    format!(
                        "`{url}` is unencrypted TCP on a non-loopback address, open to anyone \
                         who can reach it; add `insecure = true` under [server] to allow it, \
                         bind 127.0.0.1, or use tls:// or quic://"
                    ),
                ));
            }
            if url.scheme.uses_tls() {
                let tls = &self.tls;
                let missing: Vec<&str> = [("tls.cert", &tls.cert), ("tls.key", &tls.key), ("tls.client_ca", &tls.client_ca)]
                    .into_iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(k, _)| k)
                    .collect();
                if !missing.is_empty() {
                    return Err(ConfigError::invalid(
                        "server.listen",
                        format!(
                            "`{url}` needs [tls] cert, key and client_ca; missing: {} \
                             (add them under [tls]; `farcall certs` makes them)",
                            missing.join(", ")
                        ),
                    ));
                }
            }
        }
        let ev = &self.evaluator;
        let t = ev.call_timeout_s;
        if !(t >= 0.0 && Duration::try_from_secs_f64(t).is_ok()) {
            return Err(ConfigError::invalid(
                "evaluator.call_timeout_s",
                format!("{t} is not a usable timeout; give seconds >= 0 (0 means no timeout)"),
            ));
        }
        if ev.python.trim().is_empty() {
            return Err(ConfigError::invalid("evaluator.python", "is empty; name an interpreter such as \"python3\" or a path to one"));
        }
        if ev.backend == Backend::Plugin && ev.plugin.is_none() {
            return Err(ConfigError::invalid(
                "evaluator.plugin",
                "backend = \"plugin\" needs plugin = \"path/to/library\" under [evaluator]",
            ));
        }
        let bytes = self.limits.max_message_bytes;
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&bytes) {
            return Err(ConfigError::invalid(
                "limits.max_message_bytes",
                format!(
                    "{bytes} is out of range; use {MIN_MESSAGE_BYTES} to {MAX_MESSAGE_BYTES} \
                     (default 67108864 = 64 MiB)"
                ),
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(ConfigError::invalid("limits.max_connections", "must be at least 1 (default 1024)"));
        }
        Ok(())
    }
}

/// `listen` with a clearer "expected" than serde's "a sequence".
fn listen_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<ListenUrl>, D::Error> {
    struct ListVisitor;
    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Vec<ListenUrl>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of addresses such as [\"{DEFAULT_LISTEN}\"]")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut urls = Vec::new();
            while let Some(url) = seq.next_element()? {
                urls.push(url);
            }
            Ok(urls)
        }
    }
    deserializer.deserialize_seq(ListVisitor)
}
