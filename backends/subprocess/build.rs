//! The comparison tests and benchmarks also run the embedded backend: make
//! those binaries load the `libpython` that pyo3 built it against (see
//! backends/embedded/build.rs for why). The library itself links no Python.
//!
//! pyo3's own build configuration is only visible to crates that depend on
//! pyo3 directly, so the library directory is asked of the interpreter pyo3
//! picks (`PYO3_PYTHON`, else `python3`).

use std::process::Command;

fn main() {
    let python = std::env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python).args(["-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')"]).output();
    if let Ok(out) = out {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && !dir.is_empty() {
            println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{dir}");
            println!("cargo:rustc-link-arg-benches=-Wl,-rpath,{dir}");
        }
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-changed=build.rs");
}
