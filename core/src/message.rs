//! Protocol messages: requests, replies and reference releases.

use crate::value::{RefId, RemoteException, Target, Value};

/// Request ids are allocated by the side that sends the request; each side has
/// its own id space (the protocol is symmetric).
pub type RequestId = u64;

/// One operation one side asks the other to perform.
///
/// Every operation names its object with a [`Target`] (an object of the
/// receiver plus an attribute path resolved at use time).
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `importlib.import_module(name)`; replies with the module (a reference
    /// with attribute hints).
    GetModule {
        /// Dotted module name.
        name: String,
    },
    /// `getattr(target, name)`.
    GetAttr {
        /// The object.
        target: Target,
        /// The attribute.
        name: String,
    },
    /// `setattr(target, name, value)` (subject to the server's policy).
    SetAttr {
        /// The object.
        target: Target,
        /// The attribute.
        name: String,
        /// The new value.
        value: Value,
    },
    /// `delattr(target, name)` (subject to the server's policy).
    DelAttr {
        /// The object.
        target: Target,
        /// The attribute.
        name: String,
    },
    /// `target(*args, **kwargs)`.
    Call {
        /// The callable.
        target: Target,
        /// Positional arguments.
        args: Vec<Value>,
        /// Keyword arguments, in order.
        kwargs: Vec<(String, Value)>,
    },
    /// `repr(target)`, replies with a `Str`.
    Repr {
        /// The object.
        target: Target,
    },
    /// `str(target)`, replies with a `Str`.
    Str {
        /// The object.
        target: Target,
    },
    /// Introspection: replies with a tuple `(live_objects, exported_total)` of
    /// the session's object table.
    Stats,
    /// One operation of the fixed table `BUILTINS` of `farcall_semantics.py`
    /// (operators, `len`, `iterate`, `obtain`, `deliver`, `eval`, `teleport`, ...;
    /// see `core/PROTOCOL.md`). Any other name is a `farcall.ProtocolError`.
    Builtin {
        /// The operation's name in the table (`add`, `iterate`, `obtain`).
        name: String,
        /// Its arguments; the receiver's objects travel as [`Value::ReceiverObject`].
        args: Vec<Value>,
    },
}

impl Request {
    /// The operation's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Request::GetModule { .. } => "GetModule",
            Request::GetAttr { .. } => "GetAttr",
            Request::SetAttr { .. } => "SetAttr",
            Request::DelAttr { .. } => "DelAttr",
            Request::Call { .. } => "Call",
            Request::Repr { .. } => "Repr",
            Request::Str { .. } => "Str",
            Request::Stats => "Stats",
            Request::Builtin { .. } => "Builtin",
        }
    }
}

/// A reference given back: the receiver of a [`Value::SenderObject`] with id
/// `id` drops `count` of the times it received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// The owner's id.
    pub id: RefId,
    /// How many receptions are given back.
    pub count: u32,
}

/// One message on a connection after the handshake.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request that expects exactly one [`Message::Reply`] with the same id.
    Request {
        /// Allocated by the sender, unique among its requests in flight.
        id: RequestId,
        /// What to do.
        op: Request,
    },
    /// The answer to a request of the other side.
    Reply {
        /// The request's id.
        id: RequestId,
        /// The value, or the exception it raised.
        result: Result<Value, RemoteException>,
    },
    /// References given back, batched; no reply.
    Release(Vec<Release>),
    /// Advisory: the sender no longer wants the reply to its request with this
    /// id. The receiver may stop the work where it can; a reply may still come
    /// and is then ignored by the sender (which releases the references it carries).
    Cancel(RequestId),
}
