//! [`PluginSession`]: one client session inside a plugin.

use std::ffi::{c_void, CString};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use farcall_core::{codec, EvalSession, Message, Release, RemoteException, Request, RequestId, SessionInfo, Value};

use crate::abi;
use crate::error::PluginError;
use crate::library::Plugin;

/// The evaluation state of one client session inside a plugin: the plugin's
/// opaque session handle, closed (`farcall_plugin_close`) when this is
/// dropped. Created by [`PluginEvaluator::open_session`](crate::PluginEvaluator::open_session)
/// or [`Evaluator::open`](farcall_core::Evaluator::open).
///
/// Each request is encoded as a farcall message, handed to
/// `farcall_plugin_handle` on the calling thread (several threads may do so
/// at once: the ABI requires plugins to allow it), and the reply is decoded.
/// A reply that does not decode, is not a reply, or answers another request
/// becomes a `farcall.ProtocolError` for that request; an error status from
/// the plugin becomes a `farcall.ProtocolError` (bad request) or a
/// `farcall.InternalError` (failure). Nothing the plugin returns makes this
/// panic. The library stays loaded while the session lives.
pub struct PluginSession {
    plugin: Arc<Plugin>,
    raw: NonNull<c_void>,
    id: u64,
    next_request: AtomicU64,
}

// SAFETY: the session handle is only passed back to the plugin, whose ABI
// requires `farcall_plugin_handle` to accept calls from any thread, several at
// once, and `farcall_plugin_close` from any thread (ABI.md, "Threads").
unsafe impl Send for PluginSession {}
// SAFETY: as above; `&PluginSession` only allows `handle` calls.
unsafe impl Sync for PluginSession {}

impl std::fmt::Debug for PluginSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSession").field("plugin", &self.plugin.info.name).field("id", &self.id).finish_non_exhaustive()
    }
}

/// What `farcall_plugin_handle` answered: its status and buffer.
struct Answer {
    status: i32,
    buffer: Option<ReplyBuffer>,
}

impl PluginSession {
    /// Opens a session in `plugin` (`farcall_plugin_open`).
    pub(crate) fn open(plugin: Arc<Plugin>, info: &SessionInfo) -> Result<Self, PluginError> {
        let peer = c_string(&format!("{}://{}", info.peer.transport, info.peer.address));
        let identity = info.peer.identity.as_deref().map(c_string);
        let identity_ptr = identity.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        // SAFETY: the ABI's open function; both strings are NUL-terminated and
        // outlive the call (the plugin copies what it keeps).
        let raw = unsafe { (plugin.open)(info.id, peer.as_ptr(), identity_ptr) };
        let raw = NonNull::new(raw).ok_or_else(|| PluginError::SessionRefused { plugin: plugin.info.name.clone(), session: info.id })?;
        tracing::debug!(plugin = %plugin.info.name, session = info.id, peer = %info.peer, "plugin session opened");
        Ok(PluginSession { plugin, raw, id: info.id, next_request: AtomicU64::new(1) })
    }

    /// The server's id for the session.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Hands one encoded message to the plugin.
    fn call(&self, message: &[u8]) -> Answer {
        let mut out: *mut u8 = std::ptr::null_mut();
        let mut out_len: usize = 0;
        // SAFETY: the ABI's handle function with this session's live handle
        // (closed only in `drop`, when no call can be running); the message
        // outlives the call; `out` and `out_len` are valid for writes.
        let status = unsafe { (self.plugin.handle)(self.raw.as_ptr(), message.as_ptr(), message.len(), &mut out, &mut out_len) };
        let buffer = NonNull::new(out).map(|ptr| ReplyBuffer { ptr, len: out_len, plugin: Arc::clone(&self.plugin) });
        Answer { status, buffer }
    }

    /// The exception for an error status, with the plugin's message if any.
    fn failure(&self, op: &str, answer: Answer) -> RemoteException {
        let name = &self.plugin.info.name;
        let detail = match &answer.buffer {
            Some(b) if !b.as_ref().is_empty() => format!(": {}", String::from_utf8_lossy(b.as_ref())),
            _ => String::new(),
        };
        match answer.status {
            abi::STATUS_BAD_REQUEST => RemoteException::protocol(format!("plugin `{name}` could not read the {op} request{detail}")),
            abi::STATUS_FAILED => RemoteException::new("farcall", "InternalError", format!("plugin `{name}` failed on {op}{detail}")),
            other => RemoteException::new(
                "farcall",
                "InternalError",
                format!("plugin `{name}` failed on {op} with unknown status {other}{detail}"),
            ),
        }
    }

    /// Checks that `reply` answers request `id` and takes its result.
    fn check_reply(&self, id: RequestId, op: &str, reply: ReplyBuffer) -> Result<Value, RemoteException> {
        let name = &self.plugin.info.name;
        // The decoded value may keep slices of the plugin's buffer (large
        // `bytes`): the buffer is freed when the last of them is dropped.
        match codec::decode(Bytes::from_owner(reply)) {
            Ok(Message::Reply { id: got, result }) if got == id => result,
            Ok(Message::Reply { id: got, .. }) => {
                tracing::warn!(plugin = %name, session = self.id, request = id, got, "plugin answered with another request's id");
                Err(RemoteException::protocol(format!("plugin `{name}` answered the {op} request {id} with a reply to request {got}")))
            }
            Ok(other) => {
                let what = match other {
                    Message::Request { .. } => "a request",
                    _ => "a release",
                };
                tracing::warn!(plugin = %name, session = self.id, request = id, "plugin answered with {what}");
                Err(RemoteException::protocol(format!("plugin `{name}` answered the {op} request with {what} instead of a reply")))
            }
            Err(e) => {
                tracing::warn!(plugin = %name, session = self.id, request = id, error = %e, "plugin sent a malformed reply");
                Err(RemoteException::protocol(format!("plugin `{name}` sent a malformed reply to {op}: {e}")))
            }
        }
    }
}

impl EvalSession for PluginSession {
    fn evaluate(&self, request: Request) -> Result<Value, RemoteException> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let op = request.name();
        let frame = codec::encode(&Message::Request { id, op: request }).to_bytes();
        let answer = self.call(&frame);
        if answer.status != abi::STATUS_OK {
            return Err(self.failure(op, answer));
        }
        match answer.buffer {
            Some(reply) => self.check_reply(id, op, reply),
            None => Err(RemoteException::protocol(format!("plugin `{}` returned no reply to the {op} request", self.plugin.info.name))),
        }
    }

    fn release(&self, refs: &[Release]) {
        if refs.is_empty() {
            return;
        }
        let frame = codec::encode(&Message::Release(refs.to_vec())).to_bytes();
        let answer = self.call(&frame);
        let name = &self.plugin.info.name;
        if answer.status != abi::STATUS_OK {
            let e = self.failure("release", answer);
            tracing::warn!(plugin = %name, session = self.id, error = %e, "plugin failed to release references");
        } else if answer.buffer.is_some() {
            tracing::warn!(plugin = %name, session = self.id, "plugin replied to a release (ignored)");
        }
    }
}

impl Drop for PluginSession {
    fn drop(&mut self) {
        // SAFETY: the ABI's close function, once, with the live handle; no
        // `handle` call can be running (they borrow `self`).
        unsafe { (self.plugin.close)(self.raw.as_ptr()) };
        tracing::debug!(plugin = %self.plugin.info.name, session = self.id, "plugin session closed");
    }
}

/// A reply buffer allocated by the plugin, given back with
/// `farcall_plugin_free` when dropped. Holds the plugin loaded meanwhile.
struct ReplyBuffer {
    ptr: NonNull<u8>,
    len: usize,
    plugin: Arc<Plugin>,
}

// SAFETY: the buffer is immutable while we hold it, and the ABI allows
// `farcall_plugin_free` from any thread, after the session is closed.
unsafe impl Send for ReplyBuffer {}
// SAFETY: only shared reads happen through `&ReplyBuffer`.
unsafe impl Sync for ReplyBuffer {}

impl AsRef<[u8]> for ReplyBuffer {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the plugin returned `len` readable bytes at `ptr`, owned by
        // us until `farcall_plugin_free`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for ReplyBuffer {
    fn drop(&mut self) {
        // SAFETY: the ABI's free function, exactly once, with the pointer and
        // length the plugin returned; the library is loaded (we hold it).
        unsafe { (self.plugin.free)(self.ptr.as_ptr(), self.len) };
    }
}

/// `s` as a C string; NUL bytes (which no address or identity should hold)
/// are dropped rather than failing the session.
fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "")).expect("NUL bytes were removed")
}
