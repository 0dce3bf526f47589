//! A deterministic fake evaluator, shipped as a farcall plugin: no Python,
//! for test authors.
//!
//! Built as a `cdylib` (`libfarcall_plugin_fake.so` in the target
//! directory), it implements the plugin C ABI (version 1, see
//! `backends/plugin/ABI.md`) and reports its name as `"fake"`. Point a
//! server at it with
//!
//! ```toml
//! [evaluator]
//! backend = "plugin"
//! plugin = "target/debug/libfarcall_plugin_fake.so"
//! ```
//!
//! and every client session gets its own [`FakeSession`]. Built as an rlib,
//! the same session can be used in process (it is an
//! [`EvalSession`](farcall_core::EvalSession)).
//!
//! # Behaviour
//!
//! | request | result |
//! | --- | --- |
//! | `GetModule("echo")`, `GetModule("math")` | the module, by reference (type `builtins.module`, with its functions as attribute hints); the same module has the same id while referenced |
//! | `GetModule("whoami")` | the client's certificate identity (a `str`), or `None` |
//! | `GetModule` of anything else | raises `builtins.ModuleNotFoundError: No module named '...'` |
//! | `echo.echo(*args, **kwargs)` | `args` as a tuple, followed by one `(name, value)` tuple per keyword argument: `echo(1, "a")` is `(1, "a")`, `echo(1, x=2)` is `(1, ("x", 2))`; the fake's own objects passed in come back by reference |
//! | `echo.obj()` | a new `echo.Object` instance, by reference; instances take attributes (`SetAttr`, `GetAttr`, `DelAttr`) |
//! | `echo.sleep(seconds)` | sleeps on the calling thread, returns `None`; `ValueError` for a negative length |
//! | `echo.fail(message)` | raises `builtins.ValueError(message)`, with a one-frame fake traceback |
//! | `echo.barrier(parties, timeout=10.0)` | waits until `parties` calls of `barrier(parties)` of the session wait at once, then returns the caller's arrival index (0 for the first); raises `builtins.TimeoutError` after `timeout` seconds. Proves that calls of one session run concurrently, without timing anything |
//! | `math.pow(x, y)` | `float(x) ** float(y)` for ints, bools and floats, with `math.pow`'s `ValueError` / `OverflowError` / `TypeError` |
//! | `math.pi`, `math.e` | floats |
//! | `Repr`, `Str` | `<module 'echo' (fake)>`, `<function math.pow>`, `<echo.Object object #1>`; plain values close to Python's `repr` |
//! | `Stats` | `(live objects, ids ever allocated)` of the session's table |
//! | releases | handled by [`farcall_core::ExportTable`]: an object leaves the table when its count reaches zero; a later sending gets a new id |
//!
//! Otherwise it raises what Python would: `AttributeError` for unknown
//! attributes (modules and functions are read-only), `TypeError` for calling
//! a non-function or wrong arguments, and `farcall.ProtocolError` for a
//! reference that is not (or no longer) in the table or a reference to the
//! client's own objects. Sessions never see each other's objects.
//!
//! # Example
//!
//! In process, through the rlib:
//!
//! ```
//! use farcall_core::{EvalSession, Request, Target, Value};
//! use farcall_plugin_fake::FakeSession;
//!
//! let session = FakeSession::new(1, None);
//! let Value::SenderObject(math) = session.evaluate(Request::GetModule { name: "math".into() })? else {
//!     unreachable!("modules travel by reference")
//! };
//! let pow = Target { id: math.id, path: vec!["pow".into()] };
//! let nine = session.evaluate(Request::Call { target: pow, args: vec![Value::Int(3), Value::Int(2)], kwargs: vec![] })?;
//! assert_eq!(nine, Value::Float(9.0));
//! # Ok::<(), farcall_core::RemoteException>(())
//! ```
//!
//! Through the C ABI, as the server calls it (`farcall-backend-plugin`
//! does this after loading the library):
//!
//! ```
//! use farcall_core::{codec, Message, Request, Value};
//! use farcall_plugin_fake::ffi;
//!
//! assert_eq!(ffi::farcall_plugin_abi_version(), 1);
//! unsafe {
//!     let session = ffi::farcall_plugin_open(7, c"memory://test".as_ptr(), std::ptr::null());
//!     let request = codec::encode(&Message::Request { id: 1, op: Request::GetModule { name: "nope".into() } }).to_bytes();
//!     let (mut reply, mut reply_len) = (std::ptr::null_mut(), 0);
//!     let status = ffi::farcall_plugin_handle(session, request.as_ptr(), request.len(), &mut reply, &mut reply_len);
//!     assert_eq!(status, ffi::STATUS_OK);
//!     let message = codec::decode(std::slice::from_raw_parts(reply, reply_len).to_vec().into()).unwrap();
//!     let Message::Reply { id: 1, result: Err(e) } = message else { panic!("{message:?}") };
//!     assert_eq!(e.qualified_type(), "builtins.ModuleNotFoundError");
//!     ffi::farcall_plugin_free(reply, reply_len);
//!     ffi::farcall_plugin_close(session);
//! }
//! ```

pub mod ffi;
mod objects;
mod session;

pub use session::{FakeSession, FrameError, BARRIER_TIMEOUT_S};

/// The name the plugin reports (`farcall_plugin_name`).
pub const NAME: &str = "fake";
