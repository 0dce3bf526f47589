//! The plugin's entry points: the C ABI of `farcall_plugin.h`, version 1.
//!
//! Each function is exported unmangled from the cdylib. None unwinds: the
//! bodies that can fail run under `catch_unwind`, and a panic becomes
//! [`STATUS_FAILED`] (or a NULL session). They are also callable from Rust
//! through the rlib, which is how this crate's own tests drive them.

use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use crate::session::FakeSession;
use crate::NAME;

/// The ABI version implemented (`FARCALL_PLUGIN_ABI_VERSION`).
pub const ABI_VERSION: u32 = 1;
/// `FARCALL_PLUGIN_OK`.
pub const STATUS_OK: i32 = 0;
/// `FARCALL_PLUGIN_BAD_REQUEST`: the buffer was not a request or release.
pub const STATUS_BAD_REQUEST: i32 = 1;
/// `FARCALL_PLUGIN_FAILED`: the plugin panicked.
pub const STATUS_FAILED: i32 = 2;

const NAME_C: &CStr = c"fake";
const _: () = assert!(NAME_C.to_bytes().len() == NAME.len());

/// `farcall_plugin_abi_version`: returns [`ABI_VERSION`].
#[no_mangle]
pub extern "C" fn farcall_plugin_abi_version() -> u32 {
    ABI_VERSION
}

/// `farcall_plugin_name`: `"fake"`, a static string.
#[no_mangle]
pub extern "C" fn farcall_plugin_name() -> *const c_char {
    NAME_C.as_ptr()
}

/// `farcall_plugin_open`: a new [`FakeSession`], boxed; NULL if it panicked.
///
/// # Safety
///
/// `peer` and `identity` are each NULL or a NUL-terminated string valid for
/// the call.
#[no_mangle]
pub unsafe extern "C" fn farcall_plugin_open(session_id: u64, peer: *const c_char, identity: *const c_char) -> *mut c_void {
    let _ = peer; // the fake does not look at the client's address
    catch_unwind(|| {
        let identity = if identity.is_null() {
            None
        } else {
            // SAFETY: non-null and NUL-terminated, valid for the call (caller's contract); copied.
            Some(unsafe { CStr::from_ptr(identity) }.to_string_lossy().into_owned())
        };
        Box::into_raw(Box::new(FakeSession::new(session_id, identity))).cast::<c_void>()
    })
    .unwrap_or(ptr::null_mut())
}

/// `farcall_plugin_handle`: performs one encoded request or release.
///
/// Returns [`STATUS_OK`] with the encoded reply in `*reply` (NULL after a
/// release), [`STATUS_BAD_REQUEST`] with a UTF-8 message when the buffer is
/// not a request or release, or [`STATUS_FAILED`] with the panic's message.
///
/// # Safety
///
/// `session` comes from [`farcall_plugin_open`] and is not closed;
/// `request` points to `request_len` readable bytes (or is NULL with length
/// 0); `reply` and `reply_len` are valid for writes. The reply buffer must
/// be given back with [`farcall_plugin_free`].
#[no_mangle]
pub unsafe extern "C" fn farcall_plugin_handle(
    session: *mut c_void,
    request: *const u8,
    request_len: usize,
    reply: *mut *mut u8,
    reply_len: *mut usize,
) -> i32 {
    if reply.is_null() || reply_len.is_null() {
        return STATUS_BAD_REQUEST;
    }
    // SAFETY: valid for writes (caller's contract, checked non-null).
    unsafe {
        *reply = ptr::null_mut();
        *reply_len = 0;
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        if session.is_null() {
            return Err((STATUS_BAD_REQUEST, b"no session (NULL handle)".to_vec()));
        }
        if request.is_null() && request_len != 0 {
            return Err((STATUS_BAD_REQUEST, b"NULL request buffer".to_vec()));
        }
        // SAFETY: a live session from `farcall_plugin_open` (caller's contract).
        let session = unsafe { &*session.cast::<FakeSession>() };
        let input = if request_len == 0 {
            &[][..]
        } else {
            // SAFETY: `request_len` readable bytes at `request` (caller's contract).
            unsafe { std::slice::from_raw_parts(request, request_len) }
        };
        session.handle_frame(input).map_err(|e| (STATUS_BAD_REQUEST, e.to_string().into_bytes()))
    }));
    let (status, buffer) = match outcome {
        Ok(Ok(reply)) => (STATUS_OK, reply),
        Ok(Err((status, message))) => (status, Some(message)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            (STATUS_FAILED, Some(format!("the fake evaluator panicked: {what}").into_bytes()))
        }
    };
    if let Some(buffer) = buffer {
        let buffer = buffer.into_boxed_slice();
        let len = buffer.len();
        // SAFETY: valid for writes (checked above); ownership of the buffer
        // passes to the caller until `farcall_plugin_free`.
        unsafe {
            *reply_len = len;
            *reply = Box::into_raw(buffer).cast::<u8>();
        }
    }
    status
}

/// `farcall_plugin_free`: frees a buffer returned by [`farcall_plugin_handle`].
/// Ignores NULL.
///
/// # Safety
///
/// `buffer` and `len` are a pair returned by [`farcall_plugin_handle`], not
/// freed before.
#[no_mangle]
pub unsafe extern "C" fn farcall_plugin_free(buffer: *mut u8, len: usize) {
    if buffer.is_null() {
        return;
    }
    // SAFETY: a boxed slice of `len` bytes made by `farcall_plugin_handle`,
    // freed once (caller's contract). Freeing bytes cannot panic.
    drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(buffer, len)) });
}

/// `farcall_plugin_close`: drops the session and every object it holds.
///
/// # Safety
///
/// `session` comes from [`farcall_plugin_open`], is closed once, and no
/// [`farcall_plugin_handle`] call on it is running or follows.
#[no_mangle]
pub unsafe extern "C" fn farcall_plugin_close(session: *mut c_void) {
    if session.is_null() {
        return;
    }
    // SAFETY: made by `Box::into_raw` in `farcall_plugin_open`, closed once (caller's contract).
    let session = unsafe { Box::from_raw(session.cast::<FakeSession>()) };
    // A panic while dropping must not unwind into the caller.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(session)));
}
