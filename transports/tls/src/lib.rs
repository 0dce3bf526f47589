//! farcall's TLS material: making certificates (`farcall certs`), loading
//! them into rustls configurations that require and verify client
//! certificates (mutual TLS), and naming a peer by its certificate.
//!
//! Both `tls://` (TLS over TCP) and `quic://` use these configurations, so
//! the two transports apply exactly the same certificate rules.
//!
//! ```
//! let ca = farcall_tls::Authority::new("example CA").unwrap();
//! let server = ca.issue_server(&["localhost".into(), "127.0.0.1".into()]).unwrap();
//! let alice = ca.issue_client("alice").unwrap();
//! let server_config = farcall_tls::server_config(&server.pem_pair(), ca.cert_pem().as_bytes(), &[]).unwrap();
//! let client_config = farcall_tls::client_config(ca.cert_pem().as_bytes(), Some(&alice.pem_pair()), &[]).unwrap();
//! # let _ = (server_config, client_config);
//! ```

mod files;
mod identity;

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

pub use files::{write_certificate_set, CertificateSet, ClientTlsFiles, ServerTlsFiles};
pub use identity::peer_identity;

/// What went wrong with TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// PEM data holds no usable certificate or key.
    #[error("{what}: {reason}")]
    Pem {
        /// Which file or item.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("generating certificates failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the material (a key that does not match its certificate, ...).
    #[error("TLS configuration rejected: {0}")]
    Config(String),
    /// The output folder already holds a CA that would be overwritten.
    #[error("{0}")]
    Exists(String),
}

/// The ALPN protocol name of farcall over TLS and QUIC.
pub const ALPN: &[u8] = b"farcall/1";

/// The crypto provider farcall uses everywhere (ring), preferring
/// AES-128-GCM with SHA-256 (TLS 1.3's mandatory suite) to ring's default
/// first choice AES-256-GCM with SHA-384.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256};
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256];
    Arc::new(provider)
}

/// A certificate and its private key, as PEM text.
#[derive(Debug, Clone)]
pub struct PemPair {
    /// The certificate (chain), PEM.
    pub cert: String,
    /// The private key, PEM.
    pub key: String,
}

/// An issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

impl Issued {
    /// The pair as used by [`server_config`] and [`client_config`].
    pub fn pem_pair(&self) -> PemPair {
        PemPair { cert: self.cert_pem.clone(), key: self.key_pem.clone() }
    }
}

/// A certificate authority that signs server and client certificates.
#[derive(Debug)]
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

/// Validity of certificates made by [`Authority`] unless said otherwise.
const DEFAULT_VALIDITY_DAYS: i64 = 825;

fn validity(params: &mut CertificateParams, not_before: OffsetDateTime, not_after: OffsetDateTime) {
    params.not_before = not_before;
    params.not_after = not_after;
}

impl Authority {
    /// A new CA named `name`, valid for ten years.
    pub fn new(name: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        validity(&mut params, now - Duration::hours(1), now + Duration::days(3650));
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Authority { cert_pem: cert.pem(), key_pem, issuer: Issuer::new(params, key) })
    }

    /// An existing CA from its certificate and key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Authority { issuer, cert_pem: cert_pem.to_owned(), key_pem: key_pem.to_owned() })
    }

    /// The CA certificate, PEM (the `ca` of clients, the `client_ca` of servers).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A server certificate for `names`: DNS names, or IP addresses (which
    /// become IP subject alternative names).
    pub fn issue_server(&self, names: &[String]) -> Result<Issued, TlsError> {
        let now = OffsetDateTime::now_utc();
        self.issue(
            names.first().map(String::as_str).unwrap_or("farcall server"),
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
            now - Duration::hours(1),
            now + Duration::days(DEFAULT_VALIDITY_DAYS),
        )
    }

    /// A client certificate whose identity is `name`.
    pub fn issue_client(&self, name: &str) -> Result<Issued, TlsError> {
        let now = OffsetDateTime::now_utc();
        self.issue_client_valid(name, now - Duration::hours(1), now + Duration::days(DEFAULT_VALIDITY_DAYS))
    }

    /// A client certificate valid only between `not_before` and `not_after`
    /// (tests use this to make expired ones).
    pub fn issue_client_valid(&self, name: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Result<Issued, TlsError> {
        self.issue(name, &[name.to_owned()], ExtendedKeyUsagePurpose::ClientAuth, not_before, not_after)
    }

    fn issue(
        &self,
        common_name: &str,
        names: &[String],
        usage: ExtendedKeyUsagePurpose,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![usage];
        validity(&mut params, not_before, not_after);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

fn certs_from_pem(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { what: what.into(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { what: what.into(), reason: "no PEM certificate found".into() });
    }
    Ok(certs)
}

fn key_from_pem(what: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem { what: what.into(), reason: format!("no usable PEM private key ({e})") })
}

fn roots(what: &str, ca_pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs_from_pem(what, ca_pem)? {
        store.add(c).map_err(|e| TlsError::Pem { what: what.into(), reason: format!("not a usable CA certificate: {e}") })?;
    }
    Ok(Arc::new(store))
}

/// A server configuration presenting `identity` and requiring a client
/// certificate that chains to `client_ca_pem`.
pub fn server_config(identity: &PemPair, client_ca_pem: &[u8], alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots("client CA", client_ca_pem)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Config(format!("client CA: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs_from_pem("server certificate", identity.cert.as_bytes())?,
            key_from_pem("server key", identity.key.as_bytes())?,
        )
        .map_err(|e| TlsError::Config(format!("server certificate and key: {e}")))?;
    // No resumption: every connection proves its client certificate afresh,
    // so a certificate that expires or is replaced cannot ride on a ticket.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client configuration trusting servers that chain to `ca_pem`,
/// presenting `identity` when given.
pub fn client_config(ca_pem: &[u8], identity: Option<&PemPair>, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots("CA", ca_pem)?);
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                certs_from_pem("client certificate", id.cert.as_bytes())?,
                key_from_pem("client key", id.key.as_bytes())?,
            )
            .map_err(|e| TlsError::Config(format!("client certificate and key: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
