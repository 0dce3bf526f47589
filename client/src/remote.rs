//! Values received from the server, and handles on its objects.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use farcall_core::{LazyKind, RefDesc, ReleaseQueue, Request, Target, Value};

use crate::{Client, ClientError};

/// A value exchanged with the server: plain values by value, the server's
/// objects as [`RemoteObject`], copies of containers where one was asked for
/// ([`Client::obtain`], [`Client::deliver`]), and this client's own objects
/// ([`Remote::Local`] received, [`Remote::Export`] sent).
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
    /// A copy of a `list` (ext 6): only where a copy was asked for.
    List(Vec<Remote>),
    /// A copy of a `dict` (ext 7): its `(key, value)` pairs in order.
    Dict(Vec<(Remote, Remote)>),
    /// A copy of a `set` (ext 8).
    Set(Vec<Remote>),
    /// `slice(start, stop, step)`.
    Slice(Box<[Remote; 3]>),
    /// `Ellipsis`.
    Ellipsis,
    /// One of this client's own objects coming home (ext 5): the id its
    /// [`crate::Handler`] gave it, and an attribute path. Received only;
    /// to send the object again, send it as [`Remote::Export`].
    Local(Target),
    /// One of this client's own objects, sent by reference (ext 4): the
    /// [`crate::Handler`]'s id for it, counted once per sending.
    Export(RefDesc),
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
            Remote::List(_) => "list".into(),
            Remote::Dict(_) => "dict".into(),
            Remote::Set(_) => "set".into(),
            Remote::Slice(_) => "slice".into(),
            Remote::Ellipsis => "ellipsis".into(),
            Remote::Local(t) => format!("client object {}", t.id),
            Remote::Export(d) => format!("exported client {}", d.type_name),
        }
    }

    /// A `slice(start, stop, step)` value.
    pub fn slice(start: impl Into<Remote>, stop: impl Into<Remote>, step: impl Into<Remote>) -> Remote {
        Remote::Slice(Box::new([start.into(), stop.into(), step.into()]))
    }
}

impl From<Option<i64>> for Remote {
    fn from(x: Option<i64>) -> Self {
        x.map_or(Remote::None, Remote::Int)
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
    Vec<Remote>, "a tuple, list or set", |x| match x { Remote::Tuple(t) | Remote::List(t) | Remote::Set(t) | Remote::FrozenSet(t) => Some(t), _ => None };
    Vec<(Remote, Remote)>, "dict", |x| match x { Remote::Dict(d) => Some(d), _ => None };
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

    /// Whether the object is an iterator (known only for objects the server
    /// sent, not for attributes named through a module's hints).
    pub fn is_iterator(&self) -> bool {
        self.path.is_empty() && self.inner.desc.flags & farcall_core::flags::ITERATOR != 0
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
        self.call_with_timeout(args, kwargs, None)
    }

    /// `self(*args, **kwargs)`, waiting at most `timeout` (`None`: the
    /// connection's default, see [`Client::set_call_timeout`]).
    pub fn call_with_timeout(
        &self,
        args: Vec<Remote>,
        kwargs: Vec<(String, Remote)>,
        timeout: Option<Duration>,
    ) -> Result<Remote, ClientError> {
        let c = &self.client;
        // Objects passed as arguments stay referenced until the reply is in:
        // releasing them first would free them on the server before the call.
        let mut keep = Vec::new();
        let args = args.into_iter().map(|a| to_value(c, a, &mut keep)).collect::<Result<_, _>>()?;
        let kwargs = kwargs.into_iter().map(|(k, v)| Ok((k, to_value(c, v, &mut keep)?))).collect::<Result<_, ClientError>>()?;
        let result = c.request_with_timeout(Request::Call { target: self.target(), args, kwargs }, timeout);
        drop(keep);
        result
    }

    /// The builtin operation `name` with this object as first argument
    /// (`self.op("add", [1.into()])` is `self + 1` on the server); see
    /// [`Client::builtin`].
    pub fn op(&self, name: &str, args: Vec<Remote>) -> Result<Remote, ClientError> {
        let mut all = Vec::with_capacity(args.len() + 1);
        all.push(Remote::Object(self.clone()));
        all.extend(args);
        self.client.builtin(name, all)
    }

    /// `len(self)`.
    pub fn len(&self) -> Result<i64, ClientError> {
        self.op("len", Vec::new())?.extract()
    }

    /// `not self` on the server (`len(self) == 0` for containers).
    pub fn is_empty(&self) -> Result<bool, ClientError> {
        Ok(!self.op("truth", Vec::new())?.extract::<bool>()?)
    }

    /// `self[key]`.
    pub fn getitem(&self, key: impl Into<Remote>) -> Result<Remote, ClientError> {
        self.op("getitem", vec![key.into()])
    }

    /// `self[key] = value`.
    pub fn setitem(&self, key: impl Into<Remote>, value: impl Into<Remote>) -> Result<(), ClientError> {
        self.op("setitem", vec![key.into(), value.into()]).map(drop)
    }

    /// `x in self`.
    pub fn contains(&self, x: impl Into<Remote>) -> Result<bool, ClientError> {
        self.op("contains", vec![x.into()])?.extract()
    }

    /// Iterates over the object on the server, fetching items in batches
    /// (64, then four times more each round trip, up to 4096).
    pub fn iter(&self) -> RemoteIter {
        RemoteIter { client: self.client.clone(), source: Some(Remote::Object(self.clone())), batch: FIRST_BATCH, items: VecDeque::new() }
    }

    /// A copy of the object (see [`Client::obtain`]).
    pub fn obtain(&self) -> Result<Remote, ClientError> {
        self.client.obtain(self)
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

/// The first batch of [`RemoteObject::iter`].
const FIRST_BATCH: i64 = 64;
/// The largest batch of [`RemoteObject::iter`].
const MAX_BATCH: i64 = 4096;

/// Iterates over a server object in batches: `Builtin("iterate", [o, n])`
/// returns up to `n` items and the rest of the iterator. Made by
/// [`RemoteObject::iter`]; an error ends the iteration.
#[derive(Debug)]
pub struct RemoteIter {
    client: Client,
    /// What the next batch is taken from (the object, then the server's
    /// iterator over it); `None` once exhausted.
    source: Option<Remote>,
    batch: i64,
    items: VecDeque<Remote>,
}

impl Iterator for RemoteIter {
    type Item = Result<Remote, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.items.pop_front() {
                return Some(Ok(item));
            }
            let source = self.source.take()?;
            let reply = match self.client.builtin("iterate", vec![source, Remote::Int(self.batch)]) {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            self.batch = (self.batch * 4).min(MAX_BATCH);
            match reply {
                Remote::Tuple(pair) if pair.len() == 2 => {
                    let mut pair = pair.into_iter();
                    let (items, rest) = (pair.next().unwrap_or(Remote::None), pair.next().unwrap_or(Remote::None));
                    match items {
                        Remote::Tuple(items) | Remote::List(items) => self.items.extend(items),
                        other => return Some(Err(ClientError::Protocol(format!("iterate: items are a {}", other.kind())))),
                    }
                    self.source = match rest {
                        Remote::None => None,
                        rest @ Remote::Object(_) => Some(rest),
                        other => return Some(Err(ClientError::Protocol(format!("iterate: the rest is a {}", other.kind())))),
                    };
                }
                other => return Some(Err(ClientError::Protocol(format!("iterate replied with a {}", other.kind())))),
            }
        }
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
        Remote::List(t) => Value::List(t.into_iter().map(|x| to_value(client, x, keep)).collect::<Result<_, _>>()?),
        Remote::Set(t) => Value::Set(t.into_iter().map(|x| to_value(client, x, keep)).collect::<Result<_, _>>()?),
        Remote::Dict(pairs) => Value::Dict(
            pairs
                .into_iter()
                .map(|(k, v)| Ok((to_value(client, k, keep)?, to_value(client, v, keep)?)))
                .collect::<Result<_, ClientError>>()?,
        ),
        Remote::Slice(parts) => {
            let [a, b, c] = *parts;
            Value::Slice(Box::new([to_value(client, a, keep)?, to_value(client, b, keep)?, to_value(client, c, keep)?]))
        }
        Remote::Ellipsis => Value::Ellipsis,
        Remote::Export(desc) => Value::SenderObject(desc),
        Remote::Local(t) => {
            return Err(ClientError::Usage(format!(
                "client object {} came home as Remote::Local; to send it to the server again, send it as Remote::Export \
                 (counted by the handler's table)",
                t.id
            )))
        }
    })
}
