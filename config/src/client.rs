//! The client configuration file (the `config=` argument of `connect`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::{load, ConfigError, ListenUrl};

/// A client TOML file: where to connect and with which certificates. Every
/// field is optional; arguments given to `connect` take precedence.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Server address: `host:port` (TCP) or a `tcp://`, `tls://`, `quic://` URL.
    pub address: Option<String>,
    /// CA certificate (PEM) that the server's certificate must be signed by.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to the server.
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    pub key: Option<PathBuf>,
    /// Name to verify in the server certificate, when it differs from the host.
    pub server_name: Option<String>,
    /// Timeout in seconds for connecting and for each call; absent = none.
    pub timeout_s: Option<f64>,
}

impl ClientConfig {
    /// Reads, parses and validates a client config file. Relative `ca`,
    /// `cert` and `key` are resolved against the file's folder.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = load::read(path)?;
        let mut config = Self::from_toml_str(&text, &path.display().to_string())?;
        load::resolve_paths(path, [&mut config.ca, &mut config.cert, &mut config.key]);
        Ok(config)
    }

    /// Parses and validates TOML text; `origin` stands in for the file name
    /// in error messages. Paths are kept as written.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        load::parse(text, origin, Self::validate)
    }

    /// Checks that `address` parses and `timeout_s` is a positive number.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(address) = &self.address {
            if let Err(e) = address.parse::<ListenUrl>() {
                return Err(ConfigError::invalid("address", e.to_string()));
            }
        }
        if let Some(t) = self.timeout_s {
            if !(t > 0.0 && Duration::try_from_secs_f64(t).is_ok()) {
                return Err(ConfigError::invalid(
                    "timeout_s",
                    format!("{t} is not a usable timeout; give seconds > 0, or leave it out for none"),
                ));
            }
        }
        Ok(())
    }

    /// The parsed `address`, if one is set and valid.
    pub fn url(&self) -> Option<ListenUrl> {
        self.address.as_deref()?.parse().ok()
    }

    /// `timeout_s` as a duration, if set and valid.
    pub fn timeout(&self) -> Option<Duration> {
        Duration::try_from_secs_f64(self.timeout_s?).ok()
    }
}
