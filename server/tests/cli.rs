// The `farcall` binary: defaults, configuration errors, the loopback rule,
// start-up logging of the embedded Python, and clean stops on signals.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_farcall");

struct Running {
    child: Child,
    addr: String,
    stderr: mpsc::Receiver<String>,
}

/// Starts `farcall serve ARGS` and waits (bounded) for its listening line.
fn serve(args: &[&str]) -> Running {
    let mut child =
        Command::new(BIN).arg("serve").args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("farcall starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stderr = child.stderr.take().unwrap();
    let (etx, erx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = etx.send(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).expect("a listening line");
    let addr = line.strip_prefix("farcall listening on tcp://").expect(&line).to_owned();
    Running { child, addr, stderr: erx }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50)); // polling a process, not synchronising
    }
    let _ = child.kill();
    panic!("farcall did not exit within 30 s");
}

fn fails_with(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(!out.status.success(), "expected failure for {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn serves_then_stops_cleanly_on_sigterm_and_sigint() {
    for sig in ["-TERM", "-INT"] {
        let mut s = serve(&["--listen", "tcp://127.0.0.1:0"]);
        let c = farcall_client::Client::connect(&s.addr, &Default::default()).unwrap();
        let pow: farcall_client::RemoteObject = c.module("math").unwrap().getattr("pow").unwrap().extract().unwrap();
        let r: f64 = pow.call(vec![3.into(), 2.into()]).unwrap().extract().unwrap();
        assert_eq!(r, 9.0);
        signal(&s.child, sig);
        assert!(wait_exit(&mut s.child).success(), "{sig}: exit code 0");
        // The client sees the connection go, it does not hang.
        assert!(matches!(pow.call(vec![3.into(), 2.into()]), Err(farcall_client::ClientError::ConnectionLost(_))));
        let logs: Vec<String> = s.stderr.try_iter().collect();
        assert!(logs.iter().any(|l| l.contains("session opened")), "{logs:?}");
    }
}

#[test]
fn logs_the_embedded_pythons_version_and_prefix_at_start() {
    let mut s = serve(&["--listen", "tcp://127.0.0.1:0"]);
    let out = Command::new(farcall_backend_embedded::BUILD_PYTHON)
        .args(["-c", "import sys, platform; print(platform.python_version(), sys.prefix)"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (version, prefix) = text.trim().split_once(' ').unwrap();
    let mut startup = String::new();
    while let Ok(line) = s.stderr.recv_timeout(Duration::from_secs(30)) {
        startup.push_str(&line);
        if line.contains("evaluator ready") {
            break;
        }
    }
    assert!(startup.contains(&format!("python_version={version}")), "{startup}");
    assert!(startup.contains(&format!("python_prefix={prefix}")), "{startup}");
    signal(&s.child, "-TERM");
    assert!(wait_exit(&mut s.child).success());
}

#[test]
fn a_bad_config_names_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("farcall-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[server]\nlistn = [\"tcp://127.0.0.1:0\"]\n").unwrap();
    let err = fails_with(&["serve", "--config", bad.to_str().unwrap()]);
    assert!(err.contains("bad.toml:2") && err.contains("listn"), "{err}");
    std::fs::write(&bad, "[evaluator]\nbackend = \"gpu\"\n").unwrap();
    let err = fails_with(&["serve", "--config", bad.to_str().unwrap()]);
    assert!(err.contains("bad.toml:2") && err.contains("backend"), "{err}");
    let err = fails_with(&["serve", "--config", dir.join("missing.toml").to_str().unwrap()]);
    assert!(err.contains("missing.toml"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn plain_tcp_off_loopback_needs_insecure() {
    let err = fails_with(&["serve", "--listen", "tcp://0.0.0.0:0"]);
    assert!(err.contains("insecure"), "{err}");
}

#[test]
fn usage_errors_are_clear() {
    let err = fails_with(&["serve", "--bogus"]);
    assert!(err.contains("unknown argument `--bogus`") && err.contains("usage"), "{err}");
    let mut out = String::new();
    let mut child = Command::new(BIN).arg("--version").stdout(Stdio::piped()).spawn().unwrap();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(out.starts_with("farcall "), "{out}");
}

#[test]
fn certs_then_a_secured_server_on_quic_and_tls() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("farcall-cli-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let certs = dir.join("certs");
    let run = |args: &[&str]| Command::new(BIN).args(args).output().unwrap();
    let out =
        run(&["certs", "--out", certs.to_str().unwrap(), "--server-name", "127.0.0.1", "--server-name", "localhost", "--client", "alice"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for key in ["ca.key", "server.key", "alice.key"] {
        assert_eq!(std::fs::metadata(certs.join(key)).unwrap().permissions().mode() & 0o777, 0o600, "{key}");
    }
    // Again: the CA is kept, existing files are never overwritten.
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    let out = run(&["certs", "--out", certs.to_str().unwrap(), "--client", "alice"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = run(&["certs", "--out", certs.to_str().unwrap(), "--client", "bob"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("reused the CA"));
    assert_eq!(std::fs::read(certs.join("ca.pem")).unwrap(), ca);

    // A tls:// or quic:// listener without [tls] is a config error naming what is missing.
    let bare = dir.join("bare.toml");
    std::fs::write(&bare, "[server]\nlisten = [\"quic://127.0.0.1:0\"]\n").unwrap();
    let err = fails_with(&["serve", "--config", bare.to_str().unwrap()]);
    assert!(err.contains("tls.cert") && err.contains("tls.client_ca"), "{err}");

    let config = dir.join("farcall.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = [\"quic://127.0.0.1:0\", \"tls://127.0.0.1:0\"]\n\n[tls]\ncert = \"certs/server.pem\"\nkey = \"certs/server.key\"\nclient_ca = \"certs/ca.pem\"\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let stderr = child.stderr.take().unwrap();
    let (etx, erx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = etx.send(line);
        }
    });
    let urls: Vec<String> =
        (0..2).map(|_| lines.next().unwrap().unwrap().strip_prefix("farcall listening on ").unwrap().to_owned()).collect();
    assert!(urls[0].starts_with("quic://127.0.0.1:") && urls[1].starts_with("tls://127.0.0.1:"), "{urls:?}");
    let options = farcall_client::Options {
        tls: Some(farcall_client::TlsOptions {
            ca: certs.join("ca.pem"),
            cert: Some(certs.join("bob.pem")),
            key: Some(certs.join("bob.key")),
            server_name: None,
        }),
        ..Default::default()
    };
    for url in &urls {
        let c = farcall_client::Client::connect(url, &options).unwrap_or_else(|e| panic!("{url}: {e}"));
        let sep: String = c.module("os").unwrap().getattr("sep").unwrap().extract().unwrap();
        assert_eq!(sep, "/");
    }
    // The log names the client by its certificate.
    let mut seen = 0;
    while seen < 2 {
        let line = erx.recv_timeout(Duration::from_secs(30)).expect("session log lines");
        if line.contains("session opened") && line.contains("(bob)") {
            seen += 1;
        }
    }
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child).success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The fake plugin's shared library, built by cargo next to this test
/// binary (it is a dev-dependency of this package).
fn fake_plugin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let name = "libfarcall_plugin_fake.so";
    [deps.join(name), deps.parent().unwrap().join(name)]
        .into_iter()
        .find(|p| p.is_file())
        .expect("libfarcall_plugin_fake.so built by cargo")
}

#[test]
fn a_plugin_backend_from_the_config_serves_a_real_client() {
    let dir = std::env::temp_dir().join(format!("farcall-cli-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("plugin.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = [\"tcp://127.0.0.1:0\"]\n\n[evaluator]\nbackend = \"plugin\"\nplugin = {:?}\n", fake_plugin()),
    )
    .unwrap();
    let mut s = serve(&["--config", config.to_str().unwrap()]);
    let c = farcall_client::Client::connect(&s.addr, &Default::default()).unwrap();
    assert_eq!(c.server().backend, "fake");
    let pow: farcall_client::RemoteObject = c.module("math").unwrap().getattr("pow").unwrap().extract().unwrap();
    let r: f64 = pow.call(vec![3.into(), 2.into()]).unwrap().extract().unwrap();
    assert_eq!(r, 9.0);
    let err = c.module("os").unwrap_err();
    assert!(err.to_string().contains("ModuleNotFoundError"), "{err}");
    signal(&s.child, "-TERM");
    assert!(wait_exit(&mut s.child).success());

    // Start-up errors name what is wrong.
    std::fs::write(&config, "[evaluator]\nbackend = \"plugin\"\nplugin = \"no-such-plugin.so\"\n").unwrap();
    let err = fails_with(&["serve", "--config", config.to_str().unwrap(), "--listen", "tcp://127.0.0.1:0"]);
    assert!(err.contains("no-such-plugin.so"), "{err}");
    let not_a_plugin = dir.join("not-a-plugin.so");
    std::fs::write(&not_a_plugin, "not a library").unwrap();
    std::fs::write(&config, "[evaluator]\nbackend = \"plugin\"\nplugin = \"not-a-plugin.so\"\n").unwrap();
    let err = fails_with(&["serve", "--config", config.to_str().unwrap(), "--listen", "tcp://127.0.0.1:0"]);
    assert!(err.contains("not-a-plugin.so"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `[policy] allow_setattr` from the config file reaches the server: true by
/// default, false refuses assignment and deletion with `farcall.PolicyError`.
#[test]
fn the_setattr_policy_comes_from_the_config() {
    let dir = std::env::temp_dir().join(format!("farcall-cli-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("policy.toml");
    for (policy, allowed) in [("", true), ("[policy]\nallow_setattr = true\n", true), ("[policy]\nallow_setattr = false\n", false)] {
        std::fs::write(&config, format!("[server]\nlisten = [\"tcp://127.0.0.1:0\"]\n\n{policy}")).unwrap();
        let mut s = serve(&["--config", config.to_str().unwrap()]);
        let c = farcall_client::Client::connect(&s.addr, &Default::default()).unwrap();
        let ctor: farcall_client::RemoteObject = c.module("types").unwrap().getattr("SimpleNamespace").unwrap().extract().unwrap();
        let ns: farcall_client::RemoteObject = ctor.call(vec![]).unwrap().extract().unwrap();
        let set = ns.setattr("x", 1.into());
        let del = ns.delattr("x");
        if allowed {
            set.unwrap();
            del.unwrap();
        } else {
            for err in [set.unwrap_err(), del.unwrap_err()] {
                assert!(err.to_string().contains("farcall.PolicyError"), "{policy:?}: {err}");
            }
        }
        signal(&s.child, "-TERM");
        assert!(wait_exit(&mut s.child).success());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
