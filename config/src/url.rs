//! Listen and connect addresses: `tcp://`, `tls://`, `quic://` or bare `host:port`.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use crate::ConfigError;

/// The transport named by an address's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain TCP (`tcp://`), also meant by a bare `host:port`.
    Tcp,
    /// TLS over TCP with client certificates (`tls://`).
    Tls,
    /// QUIC with mutual TLS (`quic://`).
    Quic,
}

impl Scheme {
    /// The scheme as written in a URL, without `://`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Tcp => "tcp",
            Scheme::Tls => "tls",
            Scheme::Quic => "quic",
        }
    }

    /// Whether this transport needs certificates (`tls` and `quic`).
    pub fn uses_tls(self) -> bool {
        matches!(self, Scheme::Tls | Scheme::Quic)
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An address to listen on or connect to, e.g. `quic://[::1]:1227`.
///
/// Parsed from `tcp://HOST:PORT`, `tls://HOST:PORT`, `quic://HOST:PORT` or a
/// bare `HOST:PORT` (meaning TCP). IPv6 addresses go in brackets. Port 0 is
/// accepted (the system picks a free port).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenUrl {
    /// The transport.
    pub scheme: Scheme,
    /// Host name or IP address, without brackets (`::1`, not `[::1]`).
    pub host: String,
    /// TCP or UDP port.
    pub port: u16,
}

impl ListenUrl {
    /// True for 127.0.0.0/8, `::1` (also IPv4-mapped) and `localhost`.
    pub fn is_loopback(&self) -> bool {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => ip.is_loopback(),
            Ok(IpAddr::V6(ip)) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
            Err(_) => self.host.eq_ignore_ascii_case("localhost"),
        }
    }
}

impl FromStr for ListenUrl {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| ConfigError::InvalidAddress { address: s.to_owned(), reason };
        let (scheme, rest) = match s.split_once("://") {
            None => (Scheme::Tcp, s),
            Some((name, rest)) => {
                let scheme = [Scheme::Tcp, Scheme::Tls, Scheme::Quic]
                    .into_iter()
                    .find(|k| k.as_str().eq_ignore_ascii_case(name))
                    .ok_or_else(|| bad(format!("unknown scheme `{name}`; use tcp://, tls:// or quic://")))?;
                (scheme, rest)
            }
        };
        if rest.contains(['/', '?', '#', '@']) || rest.chars().any(char::is_whitespace) {
            return Err(bad("expected only HOST:PORT after the scheme, \
                 e.g. tcp://127.0.0.1:1227"
                .into()));
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, tail) = bracketed.split_once(']').ok_or_else(|| bad("missing `]` after the IPv6 address".into()))?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(bad(format!("`{host}` is not an IPv6 address")));
            }
            let port = tail.strip_prefix(':').ok_or_else(|| bad("missing port; write [ADDRESS]:PORT, e.g. quic://[::1]:1227".into()))?;
            (host, port)
        } else {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("missing port; write HOST:PORT, e.g. 127.0.0.1:1227".into()))?;
            if host.contains(':') {
                return Err(bad("put IPv6 addresses in brackets, e.g. quic://[::1]:1227".into()));
            }
            let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
            if host.is_empty() || !host.chars().all(valid) {
                return Err(bad(format!("`{host}` is not a host name or IP address")));
            }
            (host, port)
        };
        let port = port
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| port.parse::<u16>().ok())
            .flatten()
            .ok_or_else(|| bad(format!("port `{port}` is not a number from 0 to 65535")))?;
        Ok(ListenUrl { scheme, host: host.to_owned(), port })
    }
}

impl fmt::Display for ListenUrl {
    /// The canonical URL, e.g. `tcp://127.0.0.1:1227` or `quic://[::1]:1227`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

impl<'de> Deserialize<'de> for ListenUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UrlVisitor;
        impl Visitor<'_> for UrlVisitor {
            type Value = ListenUrl;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"an address such as "tcp://127.0.0.1:1227""#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ListenUrl, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(UrlVisitor)
    }
}
