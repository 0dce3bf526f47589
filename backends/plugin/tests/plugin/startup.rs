// Start-up errors: a missing file, a file that is no library, a library without the entry point, a wrong ABI version, a missing entry point, a bad name.

use farcall_backend_plugin::{PluginError, PluginEvaluator};
use farcall_core::EvalError;

use crate::support::rust_cdylib;

/// The message of the start-up error `load` gives for `path`.
fn startup_message(path: &std::path::Path) -> String {
    match PluginEvaluator::load(path) {
        Err(EvalError::Startup(message)) => message,
        Err(other) => panic!("expected a start-up error, got {other:?}"),
        Ok(_) => panic!("{} loaded", path.display()),
    }
}

#[test]
fn a_missing_file() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-dir/libnothing.so");
    let err = PluginEvaluator::try_load(&path).unwrap_err();
    assert!(matches!(&err, PluginError::NotFound { path: p } if *p == path), "{err:?}");
    let message = startup_message(&path);
    assert!(message.contains("does not exist") && message.contains(&path.display().to_string()), "{message}");
}

#[test]
fn a_file_that_is_not_a_library() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("not-a-library-{}.so", std::process::id()));
    std::fs::write(&path, "just text\n").expect("write");
    let err = PluginEvaluator::try_load(&path).unwrap_err();
    assert!(matches!(err, PluginError::NotLoadable { .. }), "{err:?}");
    let message = startup_message(&path);
    assert!(message.starts_with(&format!("cannot load plugin library `{}`", path.display())), "{message}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_library_without_the_entry_point() {
    let path = rust_cdylib("not_a_plugin", r#"#[no_mangle] pub extern "C" fn some_other_function() -> u32 { 7 }"#);
    let err = PluginEvaluator::try_load(&path).unwrap_err();
    assert!(matches!(err, PluginError::NotAPlugin { symbol: "farcall_plugin_abi_version", .. }), "{err:?}");
    let message = startup_message(&path);
    assert!(message.contains("is not a farcall plugin: it does not export `farcall_plugin_abi_version`"), "{message}");
}

#[test]
fn a_wrong_abi_version() {
    // Version 99 with nothing else: the version is checked before any other entry point.
    let path = rust_cdylib("wrong_version", r#"#[no_mangle] pub extern "C" fn farcall_plugin_abi_version() -> u32 { 99 }"#);
    let err = PluginEvaluator::try_load(&path).unwrap_err();
    assert!(matches!(err, PluginError::AbiMismatch { found: 99, supported: 1, .. }), "{err:?}");
    let message = startup_message(&path);
    assert!(message.contains("implements farcall plugin ABI version 99, but this farcall supports only version 1"), "{message}");
}

/// The ABI's entry points as do-nothing stubs, minus `skip`, with `name` as the name.
fn stub_plugin(skip: &str, name: &str) -> String {
    let stubs = [
        ("farcall_plugin_abi_version", "pub extern \"C\" fn farcall_plugin_abi_version() -> u32 { 1 }".to_owned()),
        ("farcall_plugin_name", format!("pub extern \"C\" fn farcall_plugin_name() -> *const u8 {{ b\"{name}\\0\".as_ptr() }}")),
        (
            "farcall_plugin_open",
            "pub extern \"C\" fn farcall_plugin_open(_: u64, _: *const u8, _: *const u8) -> *mut u8 { std::ptr::null_mut() }".into(),
        ),
        (
            "farcall_plugin_handle",
            "pub extern \"C\" fn farcall_plugin_handle(_: *mut u8, _: *const u8, _: usize, _: *mut *mut u8, _: *mut usize) -> i32 { 2 }"
                .into(),
        ),
        ("farcall_plugin_free", "pub extern \"C\" fn farcall_plugin_free(_: *mut u8, _: usize) {}".into()),
        ("farcall_plugin_close", "pub extern \"C\" fn farcall_plugin_close(_: *mut u8) {}".into()),
    ];
    stubs.iter().filter(|(symbol, _)| *symbol != skip).map(|(_, code)| format!("#[no_mangle] {code}\n")).collect()
}

#[test]
fn a_missing_entry_point_is_named() {
    let path = rust_cdylib("no_handle", &stub_plugin("farcall_plugin_handle", "stub"));
    let err = PluginEvaluator::try_load(&path).unwrap_err();
    assert!(matches!(err, PluginError::MissingEntryPoint { symbol: "farcall_plugin_handle", .. }), "{err:?}");
    let message = startup_message(&path);
    assert!(message.contains("(ABI version 1) does not export the required entry point `farcall_plugin_handle`"), "{message}");
}

#[test]
fn an_empty_name() {
    let path = rust_cdylib("empty_name", &stub_plugin("", ""));
    let err = PluginEvaluator::try_load(&path).unwrap_err();
    assert!(matches!(err, PluginError::BadName { problem: "an empty string", .. }), "{err:?}");
}

#[test]
fn a_refused_session_is_a_session_error() {
    // The stub's open returns NULL.
    let path = rust_cdylib("refusing", &stub_plugin("", "refusing"));
    let evaluator = PluginEvaluator::load(&path).expect("loads");
    let info = crate::support::session_info(3, None);
    let err = farcall_core::Evaluator::open(&evaluator, &info).err().expect("refused");
    let EvalError::Session(message) = err else { panic!("{err:?}") };
    assert_eq!(message, "plugin `refusing` refused to open session 3 (farcall_plugin_open returned NULL)");
}
