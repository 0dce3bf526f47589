// Certificates and the mutual-TLS rules, checked with in-memory handshakes
// between rustls clients and servers built from farcall's configurations.

use std::os::unix::fs::PermissionsExt;

use farcall_tls::{client_config, peer_identity, server_config, write_certificate_set, Authority, Issued, TlsError};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};
use time::{Duration, OffsetDateTime};

/// Runs a handshake in memory; returns the server's view of the client's identity.
fn handshake(
    ca: &Authority,
    server: &Issued,
    client_ca: &Authority,
    client: Option<&Issued>,
    name: &str,
) -> Result<Option<String>, String> {
    let sc = server_config(&server.pem_pair(), client_ca.cert_pem().as_bytes(), &[]).unwrap();
    let cc = client_config(ca.cert_pem().as_bytes(), client.map(|c| c.pem_pair()).as_ref(), &[]).unwrap();
    let mut s = ServerConnection::new(sc).unwrap();
    let mut c = ClientConnection::new(cc, ServerName::try_from(name.to_owned()).unwrap()).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        c.write_tls(&mut buf).unwrap();
        if !buf.is_empty() {
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets().map_err(|e| format!("server: {e}"))?;
        }
        let mut buf = Vec::new();
        s.write_tls(&mut buf).unwrap();
        if !buf.is_empty() {
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets().map_err(|e| format!("client: {e}"))?;
        }
        if !s.is_handshaking() && !c.is_handshaking() {
            return Ok(s.peer_certificates().and_then(peer_identity));
        }
    }
    Err("handshake did not finish".into())
}

#[test]
fn mutual_tls_accepts_the_right_client_and_names_it() {
    let ca = Authority::new("test CA").unwrap();
    let server = ca.issue_server(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let alice = ca.issue_client("alice").unwrap();
    assert_eq!(handshake(&ca, &server, &ca, Some(&alice), "localhost").unwrap(), Some("alice".into()));
    assert_eq!(handshake(&ca, &server, &ca, Some(&alice), "127.0.0.1").unwrap(), Some("alice".into()));
}

#[test]
fn refused_without_a_client_certificate() {
    let ca = Authority::new("test CA").unwrap();
    let server = ca.issue_server(&["localhost".into()]).unwrap();
    let err = handshake(&ca, &server, &ca, None, "localhost").unwrap_err();
    assert!(err.contains("server") && err.to_lowercase().contains("certificate"), "{err}");
}

#[test]
fn refused_with_a_certificate_from_another_ca() {
    let ca = Authority::new("test CA").unwrap();
    let other = Authority::new("other CA").unwrap();
    let server = ca.issue_server(&["localhost".into()]).unwrap();
    let mallory = other.issue_client("mallory").unwrap();
    let err = handshake(&ca, &server, &ca, Some(&mallory), "localhost").unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[test]
fn refused_with_an_expired_client_certificate() {
    let ca = Authority::new("test CA").unwrap();
    let server = ca.issue_server(&["localhost".into()]).unwrap();
    let now = OffsetDateTime::now_utc();
    let old = ca.issue_client_valid("old", now - Duration::days(30), now - Duration::days(1)).unwrap();
    let err = handshake(&ca, &server, &ca, Some(&old), "localhost").unwrap_err();
    assert!(err.starts_with("server") && err.contains("expired"), "{err}");
}

#[test]
fn refused_when_the_server_certificate_is_for_another_name() {
    let ca = Authority::new("test CA").unwrap();
    let server = ca.issue_server(&["elsewhere.example".into()]).unwrap();
    let alice = ca.issue_client("alice").unwrap();
    let err = handshake(&ca, &server, &ca, Some(&alice), "localhost").unwrap_err();
    assert!(err.starts_with("client") && err.contains("not valid for name"), "{err}");
}

#[test]
fn certificate_sets_on_disk_keep_keys_private_and_never_replace_a_ca() {
    let dir = std::env::temp_dir().join(format!("farcall-certs-{}-{:?}", std::process::id(), std::thread::current().id()));
    let _ = std::fs::remove_dir_all(&dir);
    let set = write_certificate_set(&dir, &["localhost".into(), "127.0.0.1".into()], &["alice".into(), "bob".into()]).unwrap();
    assert!(set.new_ca);
    for key in ["ca.key", "server.key", "alice.key", "bob.key"] {
        let mode = std::fs::metadata(dir.join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let ca_before = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    // Again in the same folder: the CA is reused; an existing client is refused, a new one issued.
    let again = write_certificate_set(&dir, &[], &["alice".into()]);
    assert!(matches!(again, Err(TlsError::Exists(ref m)) if m.contains("alice.key")), "{again:?}");
    let carol = write_certificate_set(&dir, &[], &["carol".into()]).unwrap();
    assert!(!carol.new_ca);
    assert_eq!(std::fs::read_to_string(dir.join("ca.pem")).unwrap(), ca_before);
    // carol's certificate chains to the same CA.
    let ca = Authority::from_pem(&ca_before, &std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    let server = Issued {
        cert_pem: std::fs::read_to_string(dir.join("server.pem")).unwrap(),
        key_pem: std::fs::read_to_string(dir.join("server.key")).unwrap(),
    };
    let carol = Issued {
        cert_pem: std::fs::read_to_string(dir.join("carol.pem")).unwrap(),
        key_pem: std::fs::read_to_string(dir.join("carol.key")).unwrap(),
    };
    assert_eq!(handshake(&ca, &server, &ca, Some(&carol), "127.0.0.1").unwrap(), Some("carol".into()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_files_are_named_in_errors() {
    let dir = std::env::temp_dir().join(format!("farcall-badcerts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("junk.pem"), "not a certificate").unwrap();
    let files = farcall_tls::ServerTlsFiles { cert: dir.join("junk.pem"), key: dir.join("junk.pem"), client_ca: dir.join("junk.pem") };
    let err = files.load(&[]).unwrap_err().to_string();
    assert!(err.contains("junk.pem"), "{err}");
    let files = farcall_tls::ServerTlsFiles { cert: dir.join("missing.pem"), ..files };
    let err = files.load(&[]).unwrap_err().to_string();
    assert!(err.contains("missing.pem"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
