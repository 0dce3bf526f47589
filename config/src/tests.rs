use std::path::{Path, PathBuf};

use crate::*;

const ORIGIN: &str = "farcall.toml";

/// Parses `text` expecting an error; checks it names the origin, `:line` and `key`.
fn assert_error(text: &str, line: usize, key: &str) -> String {
    let msg = ServerConfig::from_toml_str(text, ORIGIN).expect_err("should be rejected").to_string();
    let at = format!("{ORIGIN}:{line}:");
    assert!(msg.starts_with(&at), "{msg:?} should start with {at:?}");
    assert!(msg.contains(key), "{msg:?} should name {key:?}");
    msg
}

fn url(s: &str) -> ListenUrl {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// A fresh folder under the system temp dir for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("farcall-config-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn defaults() {
    let config = ServerConfig::default();
    assert_eq!(config.server.listen, vec![url("tcp://127.0.0.1:1227")]);
    assert!(!config.server.insecure);
    assert_eq!(config.tls, TlsSection::default());
    assert_eq!(config.tls.cert, None);
    assert_eq!(config.evaluator.backend, Backend::Embedded);
    assert_eq!(config.evaluator.call_timeout_s, 0.0);
    assert_eq!(config.evaluator.call_timeout(), None);
    assert_eq!(config.evaluator.python, "python3");
    assert_eq!(config.evaluator.prestart, 2);
    assert_eq!(config.evaluator.max_memory_mb, 0);
    assert_eq!(config.evaluator.plugin, None);
    assert_eq!(config.limits.max_message_bytes, 67_108_864);
    assert_eq!(config.limits.max_connections, 1024);
    assert!(config.policy.allow_setattr);
    config.validate().unwrap();
    assert_eq!(ServerConfig::from_toml_str("", ORIGIN).unwrap(), config);
    assert_eq!(ServerConfig::from_toml_str("[server]\n[evaluator]\n[policy]", ORIGIN).unwrap(), config);
    assert_eq!(ClientConfig::from_toml_str("", "c").unwrap(), ClientConfig::default());
}

#[test]
fn full_valid_file() {
    let text = r#"
[server]
listen = ["tcp://127.0.0.1:0", "quic://0.0.0.0:1227", "tls://[::]:1228", "10.0.0.1:9"]
insecure = true

[tls]
cert = "certs/server.pem"
key = "certs/server.key"
client_ca = "certs/ca.pem"

[evaluator]
backend = "subprocess"
call_timeout_s = 2.5
python = "/opt/venv/bin/python"
prestart = 4
max_memory_mb = 2048
plugin = "lib/libbackend.so"

[limits]
max_message_bytes = 1024
max_connections = 1

[policy]
allow_setattr = false
"#;
    let c = ServerConfig::from_toml_str(text, ORIGIN).unwrap();
    assert_eq!(
        c.server.listen,
        vec![url("tcp://127.0.0.1:0"), url("quic://0.0.0.0:1227"), url("tls://[::]:1228"), url("tcp://10.0.0.1:9"),]
    );
    assert!(c.server.insecure);
    assert_eq!(c.tls.cert.as_deref(), Some(Path::new("certs/server.pem")));
    assert_eq!(c.tls.key.as_deref(), Some(Path::new("certs/server.key")));
    assert_eq!(c.tls.client_ca.as_deref(), Some(Path::new("certs/ca.pem")));
    assert_eq!(c.evaluator.backend, Backend::Subprocess);
    assert_eq!(c.evaluator.call_timeout(), Some(std::time::Duration::from_millis(2500)));
    assert_eq!(c.evaluator.python, "/opt/venv/bin/python");
    assert_eq!(c.evaluator.prestart, 4);
    assert_eq!(c.evaluator.max_memory_mb, 2048);
    assert_eq!(c.evaluator.plugin.as_deref(), Some(Path::new("lib/libbackend.so")));
    assert_eq!(c.limits.max_message_bytes, 1024);
    assert_eq!(c.limits.max_connections, 1);
    assert!(!c.policy.allow_setattr);

    let plugin = "[evaluator]\nbackend = \"plugin\"\nplugin = \"x.so\"\ncall_timeout_s = 0";
    let c = ServerConfig::from_toml_str(plugin, ORIGIN).unwrap();
    assert_eq!(c.evaluator.backend, Backend::Plugin);
    assert_eq!(c.evaluator.call_timeout(), None);
}

#[test]
fn unknown_keys() {
    let msg = assert_error("[server]\ninsecure = false\nlistn = []", 3, "`listn`");
    assert_eq!(msg, "farcall.toml:3: unknown key `listn` in [server] (expected one of: listen, insecure)");
    let msg = assert_error("\n[sever]\n", 2, "`sever`");
    assert!(msg.contains("server, tls, evaluator, limits, policy"), "{msg}");
    assert_error("[tls]\ncert = \"a\"\n\nca = \"b\"", 4, "`ca` in [tls]");
    assert_error("[evaluator]\ntimeout = 3", 2, "`timeout` in [evaluator]");
    assert_error("[limits]\n\nmax_msg = 3", 3, "`max_msg` in [limits]");
    assert_error("[policy]\nallow_getattr = true", 2, "`allow_getattr` in [policy]");
    assert_error("[server.extra]\nx = 1", 1, "`extra` in [server]");
}

#[test]
fn wrong_types() {
    let msg = assert_error("[server]\nlisten = 5", 2, "server.listen");
    assert!(msg.contains(r#"["tcp://127.0.0.1:1227"]"#), "{msg}");
    assert_error("[server]\nlisten = [5]", 2, "server.listen");
    assert_error("server.listen = 5", 1, "server.listen");
    assert_error("[server]\n\ninsecure = \"yes\"", 3, "server.insecure");
    assert_error("[tls]\ncert = 5", 2, "tls.cert");
    assert_error("[evaluator]\nbackend = 5", 2, "evaluator.backend");
    assert_error("[evaluator]\nprestart = -1", 2, "evaluator.prestart");
    assert_error("[evaluator]\npython = 3", 2, "evaluator.python");
    assert_error("[limits]\nmax_connections = 1.5", 2, "limits.max_connections");
    let msg = assert_error("server = 5", 1, "`server`");
    assert!(msg.contains("[server] table"), "{msg}");
}

#[test]
fn bad_values() {
    let msg = assert_error("[evaluator]\nbackend = \"gpu\"", 2, "evaluator.backend");
    assert!(msg.contains("`gpu`") && msg.contains("subprocess"), "{msg}");
    let msg = assert_error("[server]\nlisten = [\"ftp://x:1\"]", 2, "server.listen");
    assert!(msg.contains("ftp") && msg.contains("quic://"), "{msg}");
    // The line of the offending element in a multi-line array.
    let text = "[server]\nlisten = [\n  \"tcp://127.0.0.1:1\",\n  \"127.0.0.1\",\n]";
    let msg = assert_error(text, 4, "server.listen");
    assert!(msg.contains("missing port"), "{msg}");
    let msg = assert_error("# comment\n[evaluator]\ncall_timeout_s = -1", 3, "evaluator.call_timeout_s");
    assert!(msg.contains(">= 0"), "{msg}");
    assert_error("[evaluator]\ncall_timeout_s = nan", 2, "call_timeout_s");
    assert_error("[evaluator]\ncall_timeout_s = inf", 2, "call_timeout_s");
    assert_error("[evaluator]\npython = \" \"", 2, "evaluator.python");
    assert_error("[limits]\nmax_message_bytes = 1023", 2, "limits.max_message_bytes");
    assert_error("[limits]\nmax_message_bytes = 4294967296", 2, "limits.max_message_bytes");
    ServerConfig::from_toml_str("[limits]\nmax_message_bytes = 4294967295", ORIGIN).unwrap();
    assert_error("[limits]\nmax_connections = 0", 2, "limits.max_connections");
    assert_error("[server]\nlisten = []", 2, "server.listen");
}

#[test]
fn syntax_error_names_line() {
    let msg = ServerConfig::from_toml_str("[server]\nlisten = [\"a\"\n\n", ORIGIN).unwrap_err().to_string();
    assert!(msg.starts_with("farcall.toml:"), "{msg}");
    let msg = ServerConfig::from_toml_str("[server]\ninsecure = true\ninsecure = true", ORIGIN).unwrap_err().to_string();
    assert!(msg.starts_with("farcall.toml:3:"), "{msg}");
}

#[test]
fn insecure_rule() {
    for ok in ["tcp://127.0.0.1:1227", "tcp://127.1.2.3:0", "tcp://localhost:1", "tcp://[::1]:1", "127.0.0.1:5"] {
        let text = format!("[server]\nlisten = [\"{ok}\"]");
        ServerConfig::from_toml_str(&text, ORIGIN).unwrap();
    }
    for bad in ["tcp://0.0.0.0:1227", "tcp://[::]:1", "example.com:1", "10.1.1.1:0"] {
        let text = format!("[server]\ninsecure = false\nlisten = [\"{bad}\"]");
        let msg = assert_error(&text, 3, "server.listen");
        assert!(msg.contains("insecure = true"), "{msg}");
        assert!(msg.contains("[server]") && msg.contains("127.0.0.1"), "{msg}");
        let text = format!("[server]\ninsecure = true\nlisten = [\"{bad}\"]");
        ServerConfig::from_toml_str(&text, ORIGIN).unwrap();
    }
    let mut config = ServerConfig::default();
    config.server.listen = vec![url("tcp://0.0.0.0:1")];
    let msg = config.validate().unwrap_err().to_string();
    assert!(msg.starts_with("server.listen: "), "{msg}");
}

#[test]
fn tls_listeners_need_certificates() {
    let msg = assert_error("[server]\nlisten = [\"quic://0.0.0.0:1227\"]", 2, "server.listen");
    for name in ["tls.cert", "tls.key", "tls.client_ca"] {
        assert!(msg.contains(name), "{msg}");
    }
    let text = "[server]\nlisten = [\"tls://127.0.0.1:0\"]\n[tls]\nkey = \"k.pem\"";
    let msg = assert_error(text, 2, "server.listen");
    assert!(msg.contains("tls.cert, tls.client_ca"), "{msg}");
    assert!(!msg.contains("tls.key"), "{msg}");
}

#[test]
fn plugin_backend_needs_library() {
    let msg = assert_error("\n[evaluator]\nbackend = \"plugin\"", 2, "evaluator.plugin");
    assert!(msg.contains("plugin = "), "{msg}");
}

#[test]
fn from_file_names_file_and_resolves_paths() {
    let dir = temp_dir("server");
    let path = dir.join("farcall.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = [\"quic://127.0.0.1:0\"]\n[tls]\ncert = \"certs/s.pem\"\n\
         key = \"/abs/s.key\"\nclient_ca = \"ca.pem\"\n",
    )
    .unwrap();
    let c = ServerConfig::from_file(&path).unwrap();
    assert_eq!(c.tls.cert, Some(dir.join("certs/s.pem")));
    assert_eq!(c.tls.key, Some(PathBuf::from("/abs/s.key")));
    assert_eq!(c.tls.client_ca, Some(dir.join("ca.pem")));

    std::fs::write(&path, "[server]\n\nlistn = 1\n").unwrap();
    let msg = ServerConfig::from_file(&path).unwrap_err().to_string();
    assert!(msg.starts_with(&format!("{}:3: unknown key `listn`", path.display())), "{msg}");

    std::fs::write(&path, "[server]\nlisten = [\"0.0.0.0:1\"]\n").unwrap();
    let msg = ServerConfig::from_file(&path).unwrap_err().to_string();
    assert!(msg.starts_with(&format!("{}:2: server.listen", path.display())), "{msg}");

    let missing = dir.join("nope.toml");
    let err = ServerConfig::from_file(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains(&missing.display().to_string()));
    let err = ClientConfig::from_file(&missing).unwrap_err();
    assert!(err.to_string().contains("nope.toml"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn client_config() {
    let text = "address = \"quic://bamba:1227\"\nca = \"ca.pem\"\ncert = \"me.pem\"\n\
                key = \"me.key\"\nserver_name = \"bamba.lan\"\ntimeout_s = 1.5\n";
    let c = ClientConfig::from_toml_str(text, "client.toml").unwrap();
    assert_eq!(c.url(), Some(url("quic://bamba:1227")));
    assert_eq!(c.server_name.as_deref(), Some("bamba.lan"));
    assert_eq!(c.timeout(), Some(std::time::Duration::from_millis(1500)));

    let err = |text: &str| ClientConfig::from_toml_str(text, "client.toml").unwrap_err().to_string();
    assert_eq!(
        err("ca = \"a\"\nadress = \"x:1\""),
        "client.toml:2: unknown key `adress` (expected one of: address, ca, cert, key, \
         server_name, timeout_s)"
    );
    let msg = err("\naddress = \"ftp://a:1\"");
    assert!(msg.starts_with("client.toml:2: address:"), "{msg}");
    let msg = err("timeout_s = 0");
    assert!(msg.starts_with("client.toml:1: timeout_s:"), "{msg}");
    let msg = err("timeout_s = \"5\"");
    assert!(msg.starts_with("client.toml:1: bad value for `timeout_s`"), "{msg}");

    let dir = temp_dir("client");
    let path = dir.join("client.toml");
    std::fs::write(&path, text).unwrap();
    let c = ClientConfig::from_file(&path).unwrap();
    assert_eq!(c.ca, Some(dir.join("ca.pem")));
    assert_eq!(c.cert, Some(dir.join("me.pem")));
    assert_eq!(c.key, Some(dir.join("me.key")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn loopback_detection() {
    for yes in [
        "tcp://127.0.0.1:1",
        "tcp://127.255.0.9:1",
        "quic://[::1]:1",
        "quic://[0:0:0:0:0:0:0:1]:1",
        "tcp://[::ffff:127.0.0.1]:1",
        "localhost:1",
        "tls://LocalHost:1",
    ] {
        assert!(url(yes).is_loopback(), "{yes}");
    }
    for no in [
        "tcp://0.0.0.0:1",
        "tcp://128.0.0.1:1",
        "quic://[::]:1",
        "quic://[::2]:1",
        "tcp://[fe80::1]:1",
        "bamba:1",
        "localhost.example.com:1",
    ] {
        assert!(!url(no).is_loopback(), "{no}");
    }
}

#[test]
fn url_parse_and_display_round_trip() {
    let u = url("quic://[::1]:1227");
    assert_eq!(u, ListenUrl { scheme: Scheme::Quic, host: "::1".into(), port: 1227 });
    assert_eq!(u.to_string(), "quic://[::1]:1227");
    assert_eq!(url("bamba:1227").to_string(), "tcp://bamba:1227");
    assert_eq!(url("TLS://0.0.0.0:1228").to_string(), "tls://0.0.0.0:1228");
    for s in
        ["tcp://127.0.0.1:1227", "tls://0.0.0.0:1228", "quic://[::1]:1227", "quic://[fe80::1:2]:0", "tcp://my-host.example_1.org:65535"]
    {
        let u = url(s);
        assert_eq!(u.to_string(), s);
        assert_eq!(url(&u.to_string()), u);
    }
}

#[test]
fn url_rejects_bad_addresses() {
    for (bad, why) in [
        ("ftp://x:1", "unknown scheme"),
        ("tcp://x", "missing port"),
        ("tcp://[::1]", "missing port"),
        ("tcp://::1:5", "brackets"),
        ("tcp://[::1:5", "`]`"),
        ("tcp://[nope]:5", "not an IPv6"),
        ("tcp://:5", "host"),
        ("tcp://x:65536", "port"),
        ("tcp://x:+5", "port"),
        ("tcp://x:", "port"),
        ("tcp://x:1/path", "HOST:PORT"),
        ("tcp://u@x:1", "HOST:PORT"),
        ("", "missing port"),
    ] {
        let msg = bad.parse::<ListenUrl>().unwrap_err().to_string();
        assert!(msg.contains(why), "{bad:?}: {msg}");
        assert!(msg.contains(&format!("`{bad}`")), "{bad:?}: {msg}");
    }
}
