use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The identity of a peer: the common name of its end-entity certificate
/// (or its first DNS subject alternative name when it has no common name).
pub fn peer_identity(chain: &[CertificateDer<'_>]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(chain.first()?).ok()?;
    if let Some(cn) = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()) {
        return Some(cn.to_owned());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(d) => Some((*d).to_owned()),
        _ => None,
    })
}
