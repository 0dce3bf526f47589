//! farcall's core: the wire protocol, the session state machine, and the
//! [`Connection`]/[`Listener`] and [`Evaluator`] traits that transports and
//! backends implement. No sockets, no Python.
//!
//! ```
//! use farcall_core::{codec, Message, Request, Value};
//!
//! let msg = Message::Request { id: 1, op: Request::GetModule { name: "math".into() } };
//! let frame = codec::encode(&msg);
//! assert_eq!(codec::decode(frame.to_bytes()).unwrap(), msg);
//! let reply = Message::Reply { id: 1, result: Ok(Value::Float(9.0)) };
//! assert_eq!(codec::decode(codec::encode(&reply).to_bytes()).unwrap(), reply);
//! ```

pub mod codec;
pub mod evaluator;
pub mod framing;
pub mod handshake;
pub mod message;
pub mod session;
pub mod transport;
pub mod value;

pub use codec::{DecodeError, Frame, Route};
pub use evaluator::{BackendInfo, Callbacks, EvalError, EvalSession, Evaluator, NoCallbacks, SessionInfo};
pub use framing::FrameError;
pub use message::{Message, Release, Request, RequestId};
pub use session::{ExportTable, Incoming, Outcome, ReleaseQueue, Session, SessionError};
pub use transport::{Connection, Listener, PeerInfo, TransportError};
pub use value::{flags, LazyAttr, LazyKind, RefDesc, RefId, RemoteException, Target, Value};
