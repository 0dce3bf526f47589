// A plugin that answers badly (garbage, wrong ids, error statuses, no reply): each becomes an exception for that request, never a crash; every buffer is freed and every session closed.

use farcall_backend_plugin::PluginEvaluator;
use farcall_core::{Evaluator, Release, Request, Value};

use crate::support::{rust_cdylib, session_info};

/// A plugin whose behaviour is chosen by the session id (see `answer`), that
/// reports a Python version, and counts its live buffers and sessions.
const MISBEHAVING: &str = r#"
use std::sync::atomic::{AtomicI64, Ordering::SeqCst};
static BUFFERS: AtomicI64 = AtomicI64::new(0);
static SESSIONS: AtomicI64 = AtomicI64::new(0);

#[no_mangle] pub extern "C" fn farcall_plugin_abi_version() -> u32 { 1 }
#[no_mangle] pub extern "C" fn farcall_plugin_name() -> *const u8 { b"misbehaving\0".as_ptr() }
#[no_mangle] pub unsafe extern "C" fn farcall_plugin_info(key: *const std::ffi::c_char) -> *const u8 {
    if std::ffi::CStr::from_ptr(key).to_bytes() == b"python_version" { b"3.99.0\0".as_ptr() } else { std::ptr::null() }
}
#[no_mangle] pub extern "C" fn farcall_plugin_open(id: u64, _peer: *const u8, _identity: *const u8) -> *mut u8 {
    if id == 9 { return std::ptr::null_mut(); }
    SESSIONS.fetch_add(1, SeqCst);
    Box::into_raw(Box::new(id)) as *mut u8
}
unsafe fn give(bytes: &[u8], reply: *mut *mut u8, reply_len: *mut usize) {
    BUFFERS.fetch_add(1, SeqCst);
    let b: Box<[u8]> = bytes.into();
    *reply_len = b.len();
    *reply = Box::into_raw(b) as *mut u8;
}
#[no_mangle] pub unsafe extern "C" fn farcall_plugin_handle(
    session: *mut u8, request: *const u8, len: usize, reply: *mut *mut u8, reply_len: *mut usize,
) -> i32 {
    let mode = *(session as *const u64);
    let req = std::slice::from_raw_parts(request, len);
    *reply = std::ptr::null_mut();
    *reply_len = 0;
    if req.get(1) == Some(&3) { return 0; } // a release: no reply
    let id = req[2]; // [array, 0, id, ...]: the host's first ids are positive fixints
    match mode {
        1 => { give(&[0xc1], reply, reply_len); 0 }                        // not MessagePack
        2 => { give(&[0x93, 0x01, id + 1, 0xc0], reply, reply_len); 0 }    // another request's id
        3 => { give(b"cannot read that", reply, reply_len); 1 }           // bad request
        4 => { give(b"disk on fire", reply, reply_len); 2 }                // failed
        5 => 0,                                                            // no reply at all
        6 => 77,                                                           // unknown status
        7 => { give(&[0x93, 0x00, 0x01, 0x08], reply, reply_len); 0 }      // a request, not a reply
        8 => { give(&[0x93, 0x01, id, 0xc0, 0xc0], reply, reply_len); 0 } // trailing bytes
        _ => { give(&[0x93, 0x01, id, 0xa2, b'o', b'k'], reply, reply_len); 0 } // [1, id, "ok"]
    }
}
#[no_mangle] pub unsafe extern "C" fn farcall_plugin_free(buffer: *mut u8, len: usize) {
    BUFFERS.fetch_sub(1, SeqCst);
    drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(buffer, len)));
}
#[no_mangle] pub unsafe extern "C" fn farcall_plugin_close(session: *mut u8) {
    SESSIONS.fetch_sub(1, SeqCst);
    drop(Box::from_raw(session as *mut u64));
}
#[no_mangle] pub extern "C" fn misbehaving_live_buffers() -> i64 { BUFFERS.load(SeqCst) }
#[no_mangle] pub extern "C" fn misbehaving_live_sessions() -> i64 { SESSIONS.load(SeqCst) }
"#;

/// What a session of `mode` answers to a Stats request.
fn answer(evaluator: &PluginEvaluator, mode: u64) -> Result<Value, (String, String)> {
    let session = evaluator.open(&session_info(mode, None)).expect("open");
    let result = session.evaluate(Request::Stats).map_err(|e| (e.qualified_type(), e.message));
    // The session goes on after a bad answer (and gets the same kind of
    // answer again), and releases get no reply.
    session.release(&[Release { id: 1, count: 1 }]);
    let again = session.evaluate(Request::Stats).map_err(|e| e.qualified_type());
    assert_eq!(again, result.clone().map_err(|(kind, _)| kind));
    result
}

#[test]
fn bad_answers_become_exceptions_and_nothing_leaks() {
    let path = rust_cdylib("misbehaving", MISBEHAVING);
    let evaluator = PluginEvaluator::load(&path).expect("loads");
    let info = evaluator.info();
    assert_eq!((info.name.as_str(), info.python_version.as_str(), info.python_prefix.as_str()), ("misbehaving", "3.99.0", ""));

    let protocol = |m: &str| ("farcall.ProtocolError".to_owned(), m.to_owned());
    let internal = |m: &str| ("farcall.InternalError".to_owned(), m.to_owned());
    assert_eq!(answer(&evaluator, 0), Ok(Value::Str("ok".into())));
    assert_eq!(
        answer(&evaluator, 1),
        Err(protocol("plugin `misbehaving` sent a malformed reply to Stats: malformed message: expected an array, found byte 0xc1"))
    );
    assert_eq!(answer(&evaluator, 2), Err(protocol("plugin `misbehaving` answered the Stats request 1 with a reply to request 2")));
    assert_eq!(answer(&evaluator, 3), Err(protocol("plugin `misbehaving` could not read the Stats request: cannot read that")));
    assert_eq!(answer(&evaluator, 4), Err(internal("plugin `misbehaving` failed on Stats: disk on fire")));
    assert_eq!(answer(&evaluator, 5), Err(protocol("plugin `misbehaving` returned no reply to the Stats request")));
    assert_eq!(answer(&evaluator, 6), Err(internal("plugin `misbehaving` failed on Stats with unknown status 77")));
    assert_eq!(answer(&evaluator, 7), Err(protocol("plugin `misbehaving` answered the Stats request with a request instead of a reply")));
    assert_eq!(
        answer(&evaluator, 8),
        Err(protocol("plugin `misbehaving` sent a malformed reply to Stats: malformed message: 1 trailing bytes"))
    );
    let refused = evaluator.open(&session_info(9, None)).err().expect("session 9 is refused");
    assert!(refused.to_string().contains("refused to open session 9"), "{refused}");

    // Every reply buffer was given back, and every session closed.
    // SAFETY: the test library above, loaded (again) to read its counters.
    unsafe {
        let lib = libloading::Library::new(&path).expect("load");
        let buffers = lib.get::<unsafe extern "C" fn() -> i64>(b"misbehaving_live_buffers").expect("symbol");
        let sessions = lib.get::<unsafe extern "C" fn() -> i64>(b"misbehaving_live_sessions").expect("symbol");
        assert_eq!((buffers(), sessions()), (0, 0));
    }
}
