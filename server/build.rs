//! Makes the `farcall` binary (and this package's tests) load the libpython
//! it was built against.
//!
//! A pyo3 binary links `-lpython3.X` but carries no rpath, so the dynamic
//! loader picks the first library of that soname on its default path, which
//! may be another Python (Debian's /usr/lib) with another `sys.prefix` and
//! none of the packages of the interpreter the build used.

fn main() {
    if let Some(dir) = pyo3_build_config::get().lib_dir() {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{dir}");
        println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{dir}");
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
