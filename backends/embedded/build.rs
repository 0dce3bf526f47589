//! Records which Python the build was configured with, and makes this
//! crate's own binaries (tests, doctests, benches) load that Python's
//! `libpython`.
//!
//! pyo3 links `libpython3.X.so` by soname only. Without an rpath, a binary
//! can silently load another `libpython` of the same soname (for example the
//! distribution's `/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0` instead of
//! a pyenv build), with another `sys.prefix` and none of its packages.
//! Binaries of other crates (the server) must add the same rpath themselves.

use std::path::Path;

fn main() {
    let config = pyo3_build_config::get();

    let python = config
        .executable()
        .map(str::to_owned)
        .or_else(|| config.lib_dir().map(|lib| Path::new(lib).join("..").join("bin").join("python3").to_string_lossy().into_owned()))
        .unwrap_or_else(|| "python3".to_owned());
    println!("cargo:rustc-env=FARCALL_BUILD_PYTHON={python}");

    let extension_module =
        std::env::var_os("CARGO_FEATURE_EXTENSION_MODULE").is_some() || std::env::var_os("PYO3_BUILD_EXTENSION_MODULE").is_some();
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if let (Some(lib_dir), false, false) = (config.lib_dir(), extension_module, target_os == "windows") {
        // For every linked target of this package (integration tests, unit
        // tests, doctests, benches); a library itself is not linked, so
        // dependents are unaffected.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
    println!("cargo:rerun-if-env-changed=PYO3_BUILD_EXTENSION_MODULE");
    println!("cargo:rerun-if-changed=build.rs");
}
