//! TLS material on disk: what `farcall certs` writes and what configs name.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, ServerConfig};

use crate::{client_config, server_config, Authority, PemPair, TlsError};

fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::File { path: path.display().to_string(), source })
}

/// Names the file in a PEM error.
fn in_file<T>(path: &Path, r: Result<T, TlsError>) -> Result<T, TlsError> {
    r.map_err(|e| match e {
        TlsError::Pem { reason, .. } => TlsError::Pem { what: path.display().to_string(), reason },
        other => other,
    })
}

/// The files a server's `[tls]` section names.
#[derive(Debug, Clone)]
pub struct ServerTlsFiles {
    /// The server's certificate (chain), PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
    /// The CA that client certificates must chain to, PEM.
    pub client_ca: PathBuf,
}

impl ServerTlsFiles {
    /// Loads the files into a server configuration (mutual TLS, TLS 1.3).
    pub fn load(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        let identity = PemPair { cert: read(&self.cert)?, key: read(&self.key)? };
        let ca = read(&self.client_ca)?;
        // Check each file on its own first so that errors name the file.
        in_file(&self.cert, crate::certs_from_pem("", identity.cert.as_bytes()).map(drop))?;
        in_file(&self.key, crate::key_from_pem("", identity.key.as_bytes()).map(drop))?;
        in_file(&self.client_ca, crate::roots("", ca.as_bytes()).map(drop))?;
        server_config(&identity, ca.as_bytes(), alpn)
    }
}

/// The files a client uses.
#[derive(Debug, Clone)]
pub struct ClientTlsFiles {
    /// The CA the server's certificate must chain to, PEM.
    pub ca: PathBuf,
    /// The client's certificate, PEM (needed by servers, which all require one).
    pub cert: Option<PathBuf>,
    /// Its private key, PEM.
    pub key: Option<PathBuf>,
}

impl ClientTlsFiles {
    /// Loads the files into a client configuration.
    pub fn load(&self, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
        let ca = read(&self.ca)?;
        in_file(&self.ca, crate::roots("", ca.as_bytes()).map(drop))?;
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                let pair = PemPair { cert: read(c)?, key: read(k)? };
                in_file(c, crate::certs_from_pem("", pair.cert.as_bytes()).map(drop))?;
                in_file(k, crate::key_from_pem("", pair.key.as_bytes()).map(drop))?;
                Some(pair)
            }
            (None, None) => None,
            _ => return Err(TlsError::Config("a client certificate needs both `cert` and `key`".into())),
        };
        client_config(ca.as_bytes(), identity.as_ref(), alpn)
    }
}

/// What [`write_certificate_set`] wrote.
#[derive(Debug, Clone)]
pub struct CertificateSet {
    /// `ca.pem`.
    pub ca: PathBuf,
    /// Whether the CA was made now (false: an existing one was reused).
    pub new_ca: bool,
    /// `server.pem` and `server.key`, when server names were given.
    pub server: Option<(PathBuf, PathBuf)>,
    /// `NAME.pem` and `NAME.key` per client.
    pub clients: Vec<(PathBuf, PathBuf)>,
}

/// Writes `text` to `path`, readable only by its owner when `private`;
/// refuses to replace an existing file.
fn write_new(path: &Path, text: &str, private: bool) -> Result<(), TlsError> {
    let err = |source| TlsError::File { path: path.display().to_string(), source };
    let mut f = OpenOptions::new().write(true).create_new(true).mode(if private { 0o600 } else { 0o644 }).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            TlsError::Exists(format!(
                "{} already exists; farcall certs never overwrites certificates or keys: remove it first, or choose another --out",
                path.display()
            ))
        } else {
            err(e)
        }
    })?;
    f.write_all(text.as_bytes()).map_err(err)
}

/// `farcall certs`: in `dir`, a CA (`ca.pem`, `ca.key`; an existing one is
/// reused, never overwritten), a server certificate for `server_names`
/// (`server.pem`, `server.key`) and one certificate per client
/// (`NAME.pem`, `NAME.key`). Keys are written with mode 0600.
pub fn write_certificate_set(dir: &Path, server_names: &[String], clients: &[String]) -> Result<CertificateSet, TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::File { path: dir.display().to_string(), source })?;
    for c in clients {
        if c.is_empty() || c.contains(['/', '\\']) || c.starts_with('.') || c == "ca" || c == "server" {
            return Err(TlsError::Config(format!("client name `{c}` cannot be used as a file name (and `ca`/`server` are taken)")));
        }
    }
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let (ca, new_ca) = match (ca_pem.exists(), ca_key.exists()) {
        (true, true) => (Authority::from_pem(&read(&ca_pem)?, &read(&ca_key)?)?, false),
        (false, false) => {
            // A name of its own, so two farcall CAs never look alike to a verifier.
            let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            let ca = Authority::new(&format!("farcall CA {stamp:x}"))?;
            write_new(&ca_key, ca.key_pem(), true)?;
            write_new(&ca_pem, ca.cert_pem(), false)?;
            (ca, true)
        }
        _ => {
            return Err(TlsError::Exists(format!(
                "{} holds only half of a CA (ca.pem without ca.key or the reverse); refusing to make a new CA over it",
                dir.display()
            )))
        }
    };
    let server = if server_names.is_empty() {
        None
    } else {
        let issued = ca.issue_server(server_names)?;
        let (pem, key) = (dir.join("server.pem"), dir.join("server.key"));
        write_new(&key, &issued.key_pem, true)?;
        write_new(&pem, &issued.cert_pem, false)?;
        Some((pem, key))
    };
    let mut out = Vec::new();
    for c in clients {
        let issued = ca.issue_client(c)?;
        let (pem, key) = (dir.join(format!("{c}.pem")), dir.join(format!("{c}.key")));
        write_new(&key, &issued.key_pem, true)?;
        write_new(&pem, &issued.cert_pem, false)?;
        out.push((pem, key));
    }
    Ok(CertificateSet { ca: ca_pem, new_ca, server, clients: out })
}
