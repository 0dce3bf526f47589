// Helpers: where the fake plugin is, building small test libraries with rustc, sessions.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use farcall_backend_plugin::PluginEvaluator;
use farcall_core::{EvalSession, Evaluator, PeerInfo, RefDesc, RemoteException, Request, SessionInfo, Target, Value};

/// The platform's file name of a cdylib named `crate_name`.
pub fn dll_name(crate_name: &str) -> String {
    format!("{}{crate_name}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX)
}

/// The fake plugin built by this workspace.
///
/// `farcall-plugin-fake` is a dev-dependency of this crate, so cargo builds
/// its cdylib (into `target/<profile>/deps/`) before this test runs; a
/// `cargo build -p farcall-plugin-fake` also leaves one in
/// `target/<profile>/`. If neither exists (the test binary was built some
/// other way), it is built here with cargo, for the same profile and
/// target directory.
pub fn fake_plugin() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let deps = exe.parent().expect("deps directory");
        let profile_dir = deps.parent().expect("profile directory");
        let file = dll_name("farcall_plugin_fake");
        let find = || [deps.join(&file), profile_dir.join(&file)].into_iter().find(|p| p.is_file());
        if let Some(found) = find() {
            return found;
        }
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let target_dir = profile_dir.parent().expect("target directory");
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "farcall-plugin-fake", "--profile", &profile, "--target-dir"])
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build -p farcall-plugin-fake");
        assert!(status.success(), "cargo build -p farcall-plugin-fake failed");
        find().unwrap_or_else(|| panic!("{file} not found in {} after building it", profile_dir.display()))
    })
}

/// The fake plugin, loaded.
pub fn fake() -> PluginEvaluator {
    PluginEvaluator::load(fake_plugin()).expect("the fake plugin loads")
}

/// Session info for a test client.
pub fn session_info(id: u64, identity: Option<&str>) -> SessionInfo {
    SessionInfo {
        id,
        peer: PeerInfo { transport: "memory", address: format!("test-{id}"), identity: identity.map(str::to_owned) },
        callbacks: std::sync::Arc::new(farcall_core::NoCallbacks),
    }
}

/// A session of `evaluator` through the trait.
pub fn open(evaluator: &dyn Evaluator, id: u64) -> Box<dyn EvalSession> {
    evaluator.open(&session_info(id, None)).expect("session opens")
}

/// Where this test process builds its small libraries (cached across runs
/// by the hash of their source).
fn build_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("farcall-plugin-tests");
    std::fs::create_dir_all(&dir).expect("create the build directory");
    dir
}

/// A cdylib built from Rust `source` with rustc (no dependencies), named
/// after `name` and the source's hash; built once and reused.
pub fn rust_cdylib(name: &str, source: &str) -> PathBuf {
    let mut h = DefaultHasher::new();
    source.hash(&mut h);
    let crate_name = format!("{name}_{:016x}", h.finish());
    let out = build_dir().join(dll_name(&crate_name));
    if out.is_file() {
        return out;
    }
    let work = build_dir().join(format!("tmp-{}-{crate_name}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let src = work.join("lib.rs");
    std::fs::write(&src, source).expect("write source");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let built = work.join(dll_name(&crate_name));
    let output = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "cdylib",
            "--crate-name",
            &crate_name,
            "-C",
            "debuginfo=0",
            "-C",
            "strip=debuginfo",
            "-o",
        ])
        .arg(&built)
        .arg(&src)
        .output()
        .expect("run rustc");
    assert!(output.status.success(), "rustc failed to build {name}:\n{}", String::from_utf8_lossy(&output.stderr));
    // Rename into place: another test process may be building the same library.
    std::fs::rename(&built, &out).expect("move the library into place");
    let _ = std::fs::remove_dir_all(&work);
    out
}

/// The module `name` of the session, by reference.
pub fn module(session: &dyn EvalSession, name: &str) -> RefDesc {
    match session.evaluate(Request::GetModule { name: name.into() }) {
        Ok(Value::SenderObject(desc)) => desc,
        other => panic!("GetModule({name}) gave {other:?}"),
    }
}

/// `root.path(*args)`.
pub fn call(session: &dyn EvalSession, root: &RefDesc, path: &[&str], args: Vec<Value>) -> Result<Value, RemoteException> {
    call_kw(session, root, path, args, vec![])
}

/// `root.path(*args, **kwargs)`.
pub fn call_kw(
    session: &dyn EvalSession,
    root: &RefDesc,
    path: &[&str],
    args: Vec<Value>,
    kwargs: Vec<(&str, Value)>,
) -> Result<Value, RemoteException> {
    let target = Target { id: root.id, path: path.iter().map(|s| (*s).to_owned()).collect() };
    session.evaluate(Request::Call { target, args, kwargs: kwargs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect() })
}

/// `(live objects, ids ever allocated)` of the session.
pub fn stats(session: &dyn EvalSession) -> (i64, i64) {
    match session.evaluate(Request::Stats) {
        Ok(Value::Tuple(v)) => match v.as_slice() {
            [Value::Int(live), Value::Int(total)] => (*live, *total),
            _ => panic!("Stats gave {v:?}"),
        },
        other => panic!("Stats gave {other:?}"),
    }
}
