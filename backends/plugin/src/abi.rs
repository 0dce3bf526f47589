//! The C ABI a plugin implements, as Rust constants and function types.
//!
//! This mirrors `farcall_plugin.h`; `ABI.md` (both beside this crate's
//! `Cargo.toml`) is the full contract. A plugin written in Rust exports
//! functions of these types with `#[no_mangle] extern "C"` under the names in
//! [`entry`] (see the `farcall-plugin-fake` crate for a complete one).

use std::ffi::{c_char, c_void};

/// The ABI version this crate implements; a plugin's
/// `farcall_plugin_abi_version` must return it.
pub const ABI_VERSION: u32 = 1;

/// `farcall_plugin_handle` performed the message; the reply buffer holds the
/// reply to a request (or is null after a release).
pub const STATUS_OK: i32 = 0;

/// `farcall_plugin_handle` could not read the message; the reply buffer is
/// null or a UTF-8 message saying why. The client gets a
/// `farcall.ProtocolError`.
pub const STATUS_BAD_REQUEST: i32 = 1;

/// `farcall_plugin_handle` failed in a way it could not describe as a Python
/// exception; the reply buffer is null or a UTF-8 message. The client gets a
/// `farcall.InternalError`. Every other non-zero status means the same.
pub const STATUS_FAILED: i32 = 2;

/// The names of the entry points, as exported by a plugin.
pub mod entry {
    /// `uint32_t farcall_plugin_abi_version(void)` (required, checked first).
    pub const ABI_VERSION: &str = "farcall_plugin_abi_version";
    /// `const char *farcall_plugin_name(void)` (required).
    pub const NAME: &str = "farcall_plugin_name";
    /// `const char *farcall_plugin_info(const char *key)` (optional).
    pub const INFO: &str = "farcall_plugin_info";
    /// `void *farcall_plugin_open(uint64_t, const char *, const char *)` (required).
    pub const OPEN: &str = "farcall_plugin_open";
    /// `int32_t farcall_plugin_handle(void *, const uint8_t *, size_t, uint8_t **, size_t *)` (required).
    pub const HANDLE: &str = "farcall_plugin_handle";
    /// `void farcall_plugin_free(uint8_t *, size_t)` (required).
    pub const FREE: &str = "farcall_plugin_free";
    /// `void farcall_plugin_close(void *)` (required).
    pub const CLOSE: &str = "farcall_plugin_close";
}

/// The keys `farcall_plugin_info` is asked for.
pub mod info_key {
    /// The evaluating Python's version (`3.12.1`).
    pub const PYTHON_VERSION: &str = "python_version";
    /// The evaluating Python's `sys.prefix`.
    pub const PYTHON_PREFIX: &str = "python_prefix";
    /// The evaluating Python's executable.
    pub const PYTHON_EXECUTABLE: &str = "python_executable";
}

/// `farcall_plugin_abi_version`.
pub type AbiVersionFn = unsafe extern "C" fn() -> u32;
/// `farcall_plugin_name`.
pub type NameFn = unsafe extern "C" fn() -> *const c_char;
/// `farcall_plugin_info`.
pub type InfoFn = unsafe extern "C" fn(key: *const c_char) -> *const c_char;
/// `farcall_plugin_open`.
pub type OpenFn = unsafe extern "C" fn(session_id: u64, peer: *const c_char, identity: *const c_char) -> *mut c_void;
/// `farcall_plugin_handle`.
pub type HandleFn =
    unsafe extern "C" fn(session: *mut c_void, request: *const u8, request_len: usize, reply: *mut *mut u8, reply_len: *mut usize) -> i32;
/// `farcall_plugin_free`.
pub type FreeFn = unsafe extern "C" fn(buffer: *mut u8, len: usize);
/// `farcall_plugin_close`.
pub type CloseFn = unsafe extern "C" fn(session: *mut c_void);
