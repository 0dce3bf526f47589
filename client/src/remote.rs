//! Values received from the server, and handles on its objects.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use farcall_core::{LazyKind, RefDesc, ReleaseQueue, Request, Target, Value};

use crate::{Client, ClientError};

/// A value from the server: plain values by value, everything else as a
/// [`RemoteObject`].
#[derive(Debug, Clone)]
pub enum Remote {
    /// `None`.
    None,
    /// `bool`.
    Bool(bool),
    /// `int` within 64 bits.
    Int(i64),
    /// `int` beyond 64 bits: little-endian two's complement bytes.
    BigInt(Bytes),
    /// `float`.
    Float(f64),
    /// `complex`.
    Complex(f64, f64),
    /// `str`.
    Str(String),
    /// `bytes`.
    Bytes(Bytes),
    /// `tuple`.
    Tuple(Vec<Remote>),
    /// `frozenset`.
    FrozenSet(Vec<Remote>),
    /// Any other object: a handle on the server's object.
    Object(RemoteObject),
}

impl Remote {
    /// Converts into a Rust type (`f64`, `i64`, `bool`, `String`, `Vec<u8>`, [`RemoteObject`], ...).
    pub fn extract<T: TryFrom<Remote, Error = ClientError>>(self) -> Result<T, ClientError> {
        T::try_from(self)
    }

    /// A short description of the value's kind, for errors.
    pub fn kind(&self) -> String {
        match self {
            Remote::None => "None".into(),
            Remote::Bool(_) => "bool".into(),
            Remote::Int(_) | Remote::BigInt(_) => "int".into(),
            Remote::Float(_) => "float".into(),
            Remote::Complex(..) => "complex".into(),
            Remote::Str(_) => "str".into(),
            Remote::Bytes(_) => "bytes".into(),
            Remote::Tuple(_) => "tuple".into(),
            Remote::FrozenSet(_) => "frozenset".into(),
            Remote::Object(o) => format!("remote {}", o.type_name()),
        }
    }
}

macro_rules! remote_from {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl From<$t> for Remote {
            fn from(x: $t) -> Self { Remote::$v(x.into()) }
        }
    )*};
}
remote_from!(bool => Bool, i64 => Int, i32 => Int, u32 => Int, f64 => Float, String => Str, &str => Str, Bytes => Bytes, Vec<u8> => Bytes, RemoteObject => Object);

impl From<()> for Remote {
    fn from(_: ()) -> Self {
        Remote::None
    }
}

macro_rules! remote_try_into {
    ($($t:ty, $name:literal, |$x:ident| $body:expr;)*) => {$(
        impl TryFrom<Remote> for $t {
            type Error = ClientError;
            fn try_from($x: Remote) -> Result<Self, ClientError> {
                let got = $x.kind();
                let out: Option<$t> = $body;
                out.ok_or(ClientError::Type { expected: $name, got })
            }
        }
    )*};
}
remote_try_into! {
    f64, "float", |x| match x { Remote::Float(f) => Some(f), Remote::Int(i) => Some(i as f64), _ => None };
    i64, "int", |x| match x { Remote::Int(i) => Some(i), _ => None };
    bool, "bool", |x| match x { Remote::Bool(b) => Some(b), _ => None };
    String, "str", |x| match x { Remote::Str(s) => Some(s), _ => None };
    Bytes, "bytes", |x| match x { Remote::Bytes(b) => Some(b), _ => None };
    Vec<u8>, "bytes", |x| match x { Remote::Bytes(b) => Some(b.to_vec()), _ => None };
    Vec<Remote>, "tuple", |x| match x { Remote::Tuple(t) => Some(t), _ => None };
    RemoteObject, "a remote object", |x| match x { Remote::Object(o) => Some(o), _ => None };
}

/// One reference to a server object, shared by every handle on it. Dropping
/// the last handle queues a release (no I/O here).
pub(crate) struct RefInner {
    pub(crate) desc: RefDesc,
    pub(crate) received: AtomicU32,
    pub(crate) releases: Arc<ReleaseQueue>,
    pub(crate) flusher: std::thread::Thread,
}

/// Queue length from which the background flusher is woken early.
const FLUSH_EARLY_AT: usize = 256;

impl Drop for RefInner {
    fn drop(&mut self) {
        let n = self.releases.push(self.desc.id, self.received.load(Ordering::Relaxed));
        if n >= FLUSH_EARLY_AT {
            self.flusher.unpark();
        }
    }
}

/// A handle on an object that lives on the server, optionally followed by
/// attribute names resolved at each use (`math` + `pow`).
#[derive(Clone)]
pub struct RemoteObject {
    pub(crate) client: Client,
    pub(crate) inner: Arc<RefInner>,
    pub(crate) path: Arc<[String]>,
}

impl fmt::Debug for RemoteObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteObject({} #{}", self.inner.desc.type_name, self.inner.desc.id)?;
        for p in self.path.iter() {
            write!(f, ".{p}")?;
        }
        write!(f, ")")
    }
}

/// What is known of an object without asking the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// Nothing beyond its type name.
    Object,
    /// A callable (function, method, builtin).
    Callable,
    /// A class.
    Class,
    /// A module.
    Module,
}

impl RemoteObject {
    /// The designator sent to the server.
    pub fn target(&self) -> Target {
        Target { id: self.inner.desc.id, path: self.path.to_vec() }
    }

    /// The client this object belongs to.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The type name of the root object (`builtins.module`); for a lazy
    /// attribute handle, of the object it was taken from.
    pub fn type_name(&self) -> &str {
        &self.inner.desc.type_name
    }

    /// What is known of the object locally.
    pub fn hint(&self) -> Hint {
        let d = &self.inner.desc;
        match self.path.last() {
            None if d.is_module() => Hint::Module,
            None if d.flags & farcall_core::flags::CLASS != 0 => Hint::Class,
            None if d.is_callable() => Hint::Callable,
            None => Hint::Object,
            Some(name) => match d.attrs.iter().find(|a| &a.name == name).map(|a| &a.kind) {
                Some(LazyKind::Class) => Hint::Class,
                Some(LazyKind::Callable) => Hint::Callable,
                _ => Hint::Object,
            },
        }
    }

    /// `getattr(self, name)`. Functions and classes of a module are handed
    /// out without a round trip (looked up again on the server at each use);
    /// submodules come from the module cache; everything else asks the server.
    pub fn getattr(&self, name: &str) -> Result<Remote, ClientError> {
        if self.path.is_empty() {
            if let Some(a) = self.inner.desc.attrs.iter().find(|a| a.name == name) {
                return Ok(Remote::Object(match &a.kind {
                    LazyKind::Module(full) => self.client.module(full)?,
                    LazyKind::Callable | LazyKind::Class => {
                        RemoteObject { client: self.client.clone(), inner: self.inner.clone(), path: Arc::from(vec![name.to_owned()]) }
                    }
                }));
            }
        }
        self.client.request(Request::GetAttr { target: self.target(), name: name.into() })
    }

    /// `self(*args)`.
    pub fn call(&self, args: Vec<Remote>) -> Result<Remote, ClientError> {
        self.call_kw(args, Vec::new())
    }

    /// `self(*args, **kwargs)`.
    pub fn call_kw(&self, args: Vec<Remote>, kwargs: Vec<(String, Remote)>) -> Result<Remote, ClientError> {
        let c = &self.client;
        // Objects passed as arguments stay referenced until the reply is in:
        // releasing them first would free them on the server before the call.
        let mut keep = Vec::new();
        let args = args.into_iter().map(|a| to_value(c, a, &mut keep)).collect::<Result<_, _>>()?;
        let kwargs = kwargs.into_iter().map(|(k, v)| Ok((k, to_value(c, v, &mut keep)?))).collect::<Result<_, ClientError>>()?;
        let result = c.request(Request::Call { target: self.target(), args, kwargs });
        drop(keep);
        result
    }

    /// `setattr(self, name, value)` (the server's policy may refuse it).
    pub fn setattr(&self, name: &str, value: Remote) -> Result<(), ClientError> {
        let mut keep = Vec::new();
        let value = to_value(&self.client, value, &mut keep)?;
        let result = self.client.request(Request::SetAttr { target: self.target(), name: name.into(), value });
        drop(keep);
        result.map(drop)
    }

    /// `delattr(self, name)` (the server's policy may refuse it).
    pub fn delattr(&self, name: &str) -> Result<(), ClientError> {
        self.client.request(Request::DelAttr { target: self.target(), name: name.into() }).map(drop)
    }

    /// `repr(self)`, computed by the server.
    pub fn repr(&self) -> Result<String, ClientError> {
        self.client.request(Request::Repr { target: self.target() })?.extract()
    }

    /// `str(self)`, computed by the server.
    pub fn str(&self) -> Result<String, ClientError> {
        self.client.request(Request::Str { target: self.target() })?.extract()
    }

    /// Whether two handles name the same server object and path.
    pub fn same_as(&self, other: &RemoteObject) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner) && self.path == other.path
    }
}

/// Converts an outgoing argument; objects must belong to `client`, and are
/// moved to `keep` so that they stay referenced until the request is answered.
pub(crate) fn to_value(client: &Client, r: Remote, keep: &mut Vec<RemoteObject>) -> Result<Value, ClientError> {
    Ok(match r {
        Remote::None => Value::None,
        Remote::Bool(b) => Value::Bool(b),
        Remote::Int(i) => Value::Int(i),
        Remote::BigInt(b) => Value::BigInt(b),
        Remote::Float(f) => Value::Float(f),
        Remote::Complex(a, b) => Value::Complex(a, b),
        Remote::Str(s) => Value::Str(s),
        Remote::Bytes(b) => Value::Bytes(b),
        Remote::Tuple(t) => Value::Tuple(t.into_iter().map(|x| to_value(client, x, keep)).collect::<Result<_, _>>()?),
        Remote::FrozenSet(t) => Value::FrozenSet(t.into_iter().map(|x| to_value(client, x, keep)).collect::<Result<_, _>>()?),
        Remote::Object(o) => {
            if !o.client.same_connection(client) {
                return Err(ClientError::Usage("a remote object can only be passed to the connection it came from".into()));
            }
            let target = o.target();
            keep.push(o);
            Value::ReceiverObject(target)
        }
    })
}
