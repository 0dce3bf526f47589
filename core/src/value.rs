//! The values that cross the wire.
//!
//! Immutable, simple Python values travel by value; everything else travels as
//! a reference to an object that stays with its owner (see [`RefDesc`] and
//! [`Target`]).

use bytes::Bytes;

/// An id naming an object in its owner's object table.
///
/// Allocated by the owner, never reused within a session (never Python's `id()`).
pub type RefId = u64;

/// One value on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Python `None`.
    None,
    /// Python `bool`.
    Bool(bool),
    /// A Python `int` that fits in 64 bits.
    Int(i64),
    /// A Python `int` outside the 64-bit range: little-endian two's complement bytes.
    BigInt(Bytes),
    /// Python `float` (nan and infinities included).
    Float(f64),
    /// Python `complex`: real and imaginary parts.
    Complex(f64, f64),
    /// Python `str`.
    Str(String),
    /// Python `bytes`; shares the frame's buffer when decoded (no copy).
    Bytes(Bytes),
    /// Python `tuple` of values.
    Tuple(Vec<Value>),
    /// Python `frozenset` of values (order is not meaningful).
    FrozenSet(Vec<Value>),
    /// An object owned by the *sender* of the message; the receiver makes a proxy.
    SenderObject(RefDesc),
    /// An object owned by the *receiver* of the message (a proxy being passed back
    /// home), possibly followed by an attribute path resolved at use time.
    ReceiverObject(Target),
    /// A copy of a Python `list` (ext 6): only where a copy was asked for
    /// (`obtain`, `deliver`, teleport payloads); receiving it makes a new list.
    List(Vec<Value>),
    /// A copy of a Python `dict` (ext 7): its `(key, value)` pairs in order.
    Dict(Vec<(Value, Value)>),
    /// A copy of a Python `set` (ext 8); order is not meaningful.
    Set(Vec<Value>),
    /// A Python `slice(start, stop, step)` of values (ext 9), always by value.
    Slice(Box<[Value; 3]>),
    /// Python `Ellipsis` (ext 10).
    Ellipsis,
}

/// Flags describing a referenced object, so a client can answer simple
/// questions (is it callable? a module?) without a round trip.
pub mod flags {
    /// The object is callable.
    pub const CALLABLE: u8 = 1;
    /// The object is a module.
    pub const MODULE: u8 = 2;
    /// The object is a class (a `type`).
    pub const CLASS: u8 = 4;
    /// The object is an iterator (its type has `__next__`).
    pub const ITERATOR: u8 = 8;
}

/// A reference to an object owned by the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefDesc {
    /// The owner's id for the object.
    pub id: RefId,
    /// The object's type, qualified (`builtins.builtin_function_or_method`).
    pub type_name: String,
    /// Bit set of [`flags`].
    pub flags: u8,
    /// For modules: attributes that hold functions, classes or modules when the
    /// module was fetched. A client may hand out a lazy proxy for these without
    /// a round trip; the attribute is still looked up again at each use.
    pub attrs: Vec<LazyAttr>,
}

impl RefDesc {
    /// A description with no flags and no attribute hints.
    pub fn new(id: RefId, type_name: impl Into<String>) -> Self {
        RefDesc { id, type_name: type_name.into(), flags: 0, attrs: Vec::new() }
    }

    /// Whether the object is callable.
    pub fn is_callable(&self) -> bool {
        self.flags & flags::CALLABLE != 0
    }

    /// Whether the object is a module.
    pub fn is_module(&self) -> bool {
        self.flags & flags::MODULE != 0
    }
}

/// An attribute of a module whose value is a function, class or module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LazyAttr {
    /// The attribute's name.
    pub name: String,
    /// What it held when the module was described.
    pub kind: LazyKind,
}

/// What a [`LazyAttr`] held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LazyKind {
    /// A function or other callable that is not a class.
    Callable,
    /// A class.
    Class,
    /// A module, by its full name (`os.path` is `posixpath`).
    Module(String),
}

/// Designates an object of the receiver: an id in its table, then attribute
/// names to follow at use time (`math` + `["pow"]` means `math.pow`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The id of the root object in the owner's table.
    pub id: RefId,
    /// Attribute names to resolve, in order, each time the target is used.
    pub path: Vec<String>,
}

impl Target {
    /// The object `id` itself.
    pub fn object(id: RefId) -> Self {
        Target { id, path: Vec::new() }
    }
}

/// An exception described as data.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteException {
    /// The module of the exception's type (`builtins`, `json.decoder`, `farcall`).
    pub type_module: String,
    /// The exception type's qualified name (`ValueError`).
    pub type_name: String,
    /// The exception's args, by value where possible (others as their `repr`).
    pub args: Vec<Value>,
    /// `str(exception)`.
    pub message: String,
    /// The formatted remote traceback (empty when there is none).
    pub traceback: String,
}

impl RemoteException {
    /// An exception of `module.name` with `message` as its only argument and no traceback.
    pub fn new(type_module: &str, type_name: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        RemoteException {
            type_module: type_module.into(),
            type_name: type_name.into(),
            args: vec![Value::Str(message.clone())],
            message,
            traceback: String::new(),
        }
    }

    /// A farcall protocol-level error (`farcall.ProtocolError`).
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new("farcall", "ProtocolError", message)
    }

    /// The connection to the peer is gone (`farcall.ConnectionLost`).
    pub fn connection_lost(message: impl Into<String>) -> Self {
        Self::new("farcall", "ConnectionLost", message)
    }

    /// A request refused by the server's policy (`farcall.PolicyError`).
    pub fn policy(message: impl Into<String>) -> Self {
        Self::new("farcall", "PolicyError", message)
    }

    /// `module.name` of the exception's type.
    pub fn qualified_type(&self) -> String {
        format!("{}.{}", self.type_module, self.type_name)
    }
}

impl std::fmt::Display for RemoteException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.qualified_type(), self.message)?;
        if !self.traceback.is_empty() {
            write!(f, "\n\n--- remote traceback ---\n{}", self.traceback)?;
        }
        Ok(())
    }
}

impl std::error::Error for RemoteException {}
