/*
 * farcall_plugin.h -- the C ABI of farcall evaluator plugins, version 1.
 *
 * A farcall plugin is a shared library (.so, .dylib, .dll) that the farcall
 * server loads at start-up (`[evaluator] backend = "plugin"`,
 * `plugin = "path/to/libbackend.so"`) to perform the requests of its
 * clients. The full contract (message layout, ownership, threads, errors)
 * is in ABI.md beside this file; this header is its C summary.
 *
 * Requests and replies are farcall messages encoded in MessagePack exactly
 * as farcall frames them on the wire (without the 4-byte length prefix):
 *   request  [0, id, opcode, fields...]   -> reply [1, id, value]
 *                                           or      [2, id, exception]
 *   release  [3, ref_id, count, ...]       -> no reply
 *
 * Every function below must be exported with C linkage under exactly these
 * names, except farcall_plugin_info, which is optional. No function may
 * unwind (C++ exception, Rust panic, longjmp) across this boundary.
 */
#ifndef FARCALL_PLUGIN_H
#define FARCALL_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI version this header describes. farcall_plugin_abi_version() must
 * return it; the server refuses a library that reports another version. */
#define FARCALL_PLUGIN_ABI_VERSION 1u

/* Status codes of farcall_plugin_handle. */
/* Done: *reply holds the encoded reply (or is NULL after a release). */
#define FARCALL_PLUGIN_OK 0
/* The request buffer could not be read (malformed MessagePack, not a request
 * or release). *reply may hold a UTF-8 message saying why (not
 * NUL-terminated), or be NULL. The client gets a farcall.ProtocolError. */
#define FARCALL_PLUGIN_BAD_REQUEST 1
/* The plugin failed in a way it could not describe as a Python exception
 * (an internal error, a caught panic or C++ exception, out of memory).
 * *reply may hold a UTF-8 message, or be NULL. The client gets a
 * farcall.InternalError. Any other non-zero value is treated the same way. */
#define FARCALL_PLUGIN_FAILED 2

/* Returns FARCALL_PLUGIN_ABI_VERSION. Checked first, before any other entry
 * point is looked up. Any thread, any time. */
uint32_t farcall_plugin_abi_version(void);

/* The backend's name as the server reports it in its handshake and logs
 * (for example "fake"): a non-empty, NUL-terminated UTF-8 string owned by
 * the plugin, valid until the library is unloaded. Read once at load. */
const char *farcall_plugin_name(void);

/* OPTIONAL. Describes the Python the plugin evaluates with, if any: returns
 * the value for `key` ("python_version", "python_prefix",
 * "python_executable") as a NUL-terminated UTF-8 string owned by the plugin
 * and valid until the library is unloaded, or NULL when the plugin has no
 * such value. Unknown keys must return NULL. Read once at load. */
const char *farcall_plugin_info(const char *key);

/* Opens the state of one client session (its object table). `session_id`
 * is the server's id for the session (as in its logs); `peer` is the client
 * as "scheme://address" (for example "tcp://127.0.0.1:50312"); `identity` is
 * the client's certificate identity, or NULL when it has none. Both strings
 * are NUL-terminated UTF-8, owned by the caller, valid only during the call.
 * Returns an opaque non-NULL handle, or NULL when the session cannot be
 * opened (the client is then refused). May be called from several threads
 * at once. */
void *farcall_plugin_open(uint64_t session_id, const char *peer, const char *identity);

/* Performs one message of `session`.
 *
 * `request` points to `request_len` bytes owned by the caller and valid only
 * during the call: an encoded request or release. On return, *reply and
 * *reply_len describe a buffer allocated by the plugin (or NULL and 0):
 * - for a request, status FARCALL_PLUGIN_OK and an encoded reply whose id
 *   is the request's id; a Python exception is a reply of kind 2, not an
 *   error status;
 * - for a release, status FARCALL_PLUGIN_OK and *reply = NULL;
 * - on an error status, NULL or a UTF-8 message.
 * The caller owns a returned buffer and gives it back, exactly once, with
 * farcall_plugin_free(buffer, len); possibly from another thread and after
 * the session is closed (but before the library is unloaded).
 *
 * Thread safety: may be called from several threads at once, for the same
 * session and for different sessions. The plugin must be safe under this
 * (lock internally where it must); it may block for as long as the request
 * takes. */
int32_t farcall_plugin_handle(void *session, const uint8_t *request, size_t request_len, uint8_t **reply, size_t *reply_len);

/* Frees a buffer returned through farcall_plugin_handle; `len` is the
 * length that was returned with it. Ignores NULL. Any thread, any time. */
void farcall_plugin_free(uint8_t *buffer, size_t len);

/* Closes `session`: drops every object it still holds. Called exactly once
 * per session, after every farcall_plugin_handle call on it has returned;
 * the handle is not used again. Any thread. */
void farcall_plugin_close(void *session);

#ifdef __cplusplus
}
#endif

#endif /* FARCALL_PLUGIN_H */
