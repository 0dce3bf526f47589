//! The Python side's own unit tests (python/test_farcall.py: the codec's
//! layout and its refusal of malformed input, the boxing rules, the object
//! table), run with `python3` and, when pyenv has it, the oldest supported
//! Python (3.9).

use std::path::{Path, PathBuf};
use std::process::Command;

fn unittest(python: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let out = Command::new(python)
        .args(["-B", "-m", "unittest", "-v", "test_farcall"])
        .current_dir(&dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("{python} runs: {e}"));
    let report = String::from_utf8_lossy(&out.stderr);
    println!("{python}:\n{report}");
    assert!(out.status.success(), "the Python unit tests failed under {python}:\n{report}");
}

#[test]
fn python_unit_tests() {
    unittest("python3");
}

#[test]
fn python_unit_tests_on_3_9_when_installed() {
    let root = std::env::var_os("PYENV_ROOT").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")));
    let found = root.and_then(|r| std::fs::read_dir(r.join("versions")).ok()).and_then(|d| {
        d.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("3.9.")))
    });
    match found.map(|p| p.join("bin").join("python")).filter(|p| p.is_file()) {
        Some(python) => unittest(python.to_str().unwrap()),
        None => println!("skipped: no Python 3.9 from pyenv on this machine"),
    }
}
