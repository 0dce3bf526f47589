// farcall_plugin.h compiles (C99, pedantic) and a plugin written in C against it works; the header's constants match the crate's.

use std::path::{Path, PathBuf};
use std::process::Command;

use farcall_backend_plugin::{abi, PluginEvaluator};
use farcall_core::{Evaluator, Release, Request, Value};

use crate::support::{dll_name, session_info};

/// A minimal C plugin: answers every request `[1, id, "hello from C"]` for
/// the host's first ids (positive fixints), nothing to releases, and counts
/// its live sessions and buffers.
const C_PLUGIN: &str = r#"
#include "farcall_plugin.h"
#include <stdlib.h>
#include <string.h>

static long live_sessions = 0; /* the test calls it from one thread */
static long live_buffers = 0;

uint32_t farcall_plugin_abi_version(void) { return FARCALL_PLUGIN_ABI_VERSION; }
const char *farcall_plugin_name(void) { return "c-minimal"; }

void *farcall_plugin_open(uint64_t session_id, const char *peer, const char *identity) {
    uint64_t *session = malloc(sizeof *session);
    (void)peer;
    (void)identity;
    if (session) { *session = session_id; live_sessions++; }
    return session;
}

int32_t farcall_plugin_handle(void *session, const uint8_t *request, size_t request_len, uint8_t **reply, size_t *reply_len) {
    static const char text[] = "hello from C";
    uint8_t *out;
    size_t n = sizeof text - 1;
    (void)session;
    *reply = NULL;
    *reply_len = 0;
    if (request_len < 3) return FARCALL_PLUGIN_BAD_REQUEST;
    if (request[1] == 3) return FARCALL_PLUGIN_OK; /* a release */
    out = malloc(4 + n);
    if (!out) return FARCALL_PLUGIN_FAILED;
    out[0] = 0x93;            /* array of 3 */
    out[1] = 0x01;            /* reply, ok */
    out[2] = request[2];      /* the request's id */
    out[3] = (uint8_t)(0xa0 | n);
    memcpy(out + 4, text, n);
    *reply = out;
    *reply_len = 4 + n;
    live_buffers++;
    return FARCALL_PLUGIN_OK;
}

void farcall_plugin_free(uint8_t *buffer, size_t len) { (void)len; if (buffer) { free(buffer); live_buffers--; } }
void farcall_plugin_close(void *session) { free(session); live_sessions--; }
long c_minimal_live(void) { return live_sessions * 1000 + live_buffers; }
"#;

fn header_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The C compiler: `$CC`, else `cc`; `None` when there is none.
fn c_compiler() -> Option<String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    Command::new(&cc).arg("--version").output().ok().filter(|o| o.status.success()).map(|_| cc)
}

fn build_c_plugin(cc: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("farcall-c-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let src = dir.join("plugin.c");
    std::fs::write(&src, C_PLUGIN).expect("write");
    let out = dir.join(dll_name("c_minimal"));
    let output = Command::new(cc)
        .args(["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-Wstrict-prototypes", "-shared", "-fPIC", "-I"])
        .arg(header_dir())
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .output()
        .expect("run the C compiler");
    assert!(output.status.success(), "{cc} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    out
}

#[test]
fn a_plugin_written_in_c_works() {
    let Some(cc) = c_compiler() else {
        eprintln!("skipped: no C compiler (`cc` or $CC) to build the C plugin with; the Rust plugins cover the ABI");
        return;
    };
    let path = build_c_plugin(&cc);
    let evaluator = PluginEvaluator::load(&path).expect("the C plugin loads");
    assert_eq!(evaluator.info().name, "c-minimal");
    assert_eq!(evaluator.info().python_version, "", "no farcall_plugin_info: empty");
    {
        let session = evaluator.open(&session_info(1, Some("alice"))).expect("open");
        for _ in 0..3 {
            assert_eq!(session.evaluate(Request::GetModule { name: "anything".into() }), Ok(Value::Str("hello from C".into())));
        }
        session.release(&[Release { id: 1, count: 1 }]);
    }
    // SAFETY: the C library above; `c_minimal_live` takes nothing and returns a long.
    unsafe {
        let lib = libloading::Library::new(&path).expect("load");
        let live = lib.get::<unsafe extern "C" fn() -> std::ffi::c_long>(b"c_minimal_live").expect("symbol");
        assert_eq!(live(), 0, "every session closed and every buffer freed");
    }
    let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
}

/// `#define NAME value` of the header.
fn define(header: &str, name: &str) -> String {
    header
        .lines()
        .find_map(|l| l.strip_prefix("#define ")?.strip_prefix(name)?.strip_prefix(' ').map(str::trim))
        .unwrap_or_else(|| panic!("#define {name} in farcall_plugin.h"))
        .to_owned()
}

#[test]
fn the_header_matches_the_crate() {
    let header = std::fs::read_to_string(header_dir().join("farcall_plugin.h")).expect("read the header");
    assert_eq!(define(&header, "FARCALL_PLUGIN_ABI_VERSION"), format!("{}u", abi::ABI_VERSION));
    assert_eq!(define(&header, "FARCALL_PLUGIN_OK"), abi::STATUS_OK.to_string());
    assert_eq!(define(&header, "FARCALL_PLUGIN_BAD_REQUEST"), abi::STATUS_BAD_REQUEST.to_string());
    assert_eq!(define(&header, "FARCALL_PLUGIN_FAILED"), abi::STATUS_FAILED.to_string());
    for symbol in [
        abi::entry::ABI_VERSION,
        abi::entry::NAME,
        abi::entry::INFO,
        abi::entry::OPEN,
        abi::entry::HANDLE,
        abi::entry::FREE,
        abi::entry::CLOSE,
    ] {
        assert!(header.contains(&format!("{symbol}(")), "{symbol} is declared in the header");
    }
}
