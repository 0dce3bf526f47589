//! The session state machine, without I/O: request ids and pending replies,
//! the table of objects a side exports, and the queue of references it gives
//! back. Threads, sockets and Python live elsewhere; this is what they share.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Mutex;

use bytes::Bytes;

use crate::codec::{self, DecodeError, Frame};
use crate::message::{Message, Release, Request, RequestId};
use crate::value::{RefId, RemoteException, Value};

/// The result of a request: a value or the exception it raised.
pub type Outcome = Result<Value, RemoteException>;

/// What an incoming frame meant.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// The reply to our request `id` arrived; take it with [`Session::take_reply`].
    Reply(RequestId),
    /// The peer asks us to do something; answer with [`reply_frame`].
    Request {
        /// The peer's request id.
        id: RequestId,
        /// The operation.
        op: Request,
    },
    /// The peer sent a request we cannot perform (an unknown operation):
    /// answer it with this error and go on.
    BadRequest {
        /// The peer's request id.
        id: RequestId,
        /// The error to send back.
        error: RemoteException,
    },
    /// The peer gives back references to our objects.
    Release(Vec<Release>),
    /// The peer no longer wants the reply to its request `id` (advisory: stop
    /// the work if the backend can; replying anyway is allowed).
    Cancel(RequestId),
    /// A late reply to a request we abandoned with [`Session::abandon`]. Nobody
    /// waits for it; the receiver should release the references it carries
    /// (every [`Value::SenderObject`] in `result`, see [`sender_objects`]).
    Late {
        /// The abandoned request's id.
        id: RequestId,
        /// The reply that nobody takes.
        result: Outcome,
    },
}

/// A violation of the protocol by the peer; the connection should be closed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The frame did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A reply for a request we never sent (or already answered).
    #[error("protocol error: reply to unknown request {0}")]
    UnknownReply(RequestId),
}

/// One side's view of a connection: its requests in flight and their replies.
#[derive(Debug, Default)]
pub struct Session {
    next_id: RequestId,
    pending: HashMap<RequestId, Option<Outcome>>,
    abandoned: HashSet<RequestId>,
}

impl Session {
    /// A session with nothing in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allocates an id for `op`, registers it as pending and encodes it.
    pub fn request(&mut self, op: &Request) -> (RequestId, Frame) {
        self.next_id += 1;
        let id = self.next_id;
        self.pending.insert(id, None);
        (id, codec::encode(&Message::Request { id, op: op.clone() }))
    }

    /// Like [`Session::request`] but encodes without cloning the operation.
    pub fn request_owned(&mut self, op: Request) -> (RequestId, Frame) {
        self.next_id += 1;
        let id = self.next_id;
        self.pending.insert(id, None);
        (id, codec::encode(&Message::Request { id, op }))
    }

    /// Interprets a received frame.
    pub fn receive(&mut self, body: Bytes) -> Result<Incoming, SessionError> {
        let msg = match codec::decode(body) {
            Ok(m) => m,
            Err(DecodeError::UnknownOp { id, op }) => {
                return Ok(Incoming::BadRequest {
                    id,
                    error: RemoteException::protocol(format!(
                        "unknown operation {op}: the server does not support it (client newer than server?)"
                    )),
                })
            }
            Err(e) => return Err(e.into()),
        };
        Ok(match msg {
            Message::Request { id, op } => Incoming::Request { id, op },
            Message::Release(refs) => Incoming::Release(refs),
            Message::Cancel(id) => Incoming::Cancel(id),
            Message::Reply { id, result } => match self.pending.get_mut(&id) {
                Some(slot @ None) => {
                    *slot = Some(result);
                    Incoming::Reply(id)
                }
                _ if self.abandoned.remove(&id) => Incoming::Late { id, result },
                _ => return Err(SessionError::UnknownReply(id)),
            },
        })
    }

    /// Takes the reply to `id` if it has arrived.
    pub fn take_reply(&mut self, id: RequestId) -> Option<Outcome> {
        match self.pending.get(&id) {
            Some(Some(_)) => self.pending.remove(&id).flatten(),
            _ => None,
        }
    }

    /// Whether the reply to `id` has arrived and waits to be taken.
    pub fn has_reply(&self, id: RequestId) -> bool {
        matches!(self.pending.get(&id), Some(Some(_)))
    }

    /// Gives up waiting for `id` (timeout, cancelled caller).
    ///
    /// When the reply has already arrived (and was not taken) it is returned, so
    /// that the caller can release the references it carries. Otherwise the id
    /// is remembered and its reply, when it comes, is handed back once as
    /// [`Incoming::Late`]. Send [`cancel_frame`] to tell the peer. Unknown or
    /// already taken ids are ignored (`None`).
    pub fn abandon(&mut self, id: RequestId) -> Option<Outcome> {
        match self.pending.remove(&id)? {
            Some(outcome) => Some(outcome),
            None => {
                self.abandoned.insert(id);
                None
            }
        }
    }

    /// Number of abandoned requests whose late reply has not arrived yet.
    pub fn abandoned(&self) -> usize {
        self.abandoned.len()
    }

    /// Fails every request in flight (the connection is gone): returns the ids
    /// nobody has taken a reply for yet and forgets all pending and abandoned ids.
    pub fn close(&mut self) -> Vec<RequestId> {
        self.abandoned.clear();
        let ids = self.pending.iter().filter(|(_, r)| r.is_none()).map(|(id, _)| *id).collect();
        self.pending.retain(|_, r| r.is_some());
        ids
    }

    /// Number of requests sent and not yet taken.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

/// Encodes the reply to the peer's request `id`.
pub fn reply_frame(id: RequestId, result: Outcome) -> Frame {
    codec::encode(&Message::Reply { id, result })
}

/// Encodes a batch of releases.
pub fn release_frame(refs: Vec<Release>) -> Frame {
    codec::encode(&Message::Release(refs))
}

/// Encodes a cancel of our request `id` (see [`Session::abandon`]).
pub fn cancel_frame(id: RequestId) -> Frame {
    codec::encode(&Message::Cancel(id))
}

/// Every reference to the peer's objects ([`Value::SenderObject`]) in `value`,
/// nested ones included, as releases of one reception each (an id received
/// twice appears with count 2). A receiver that drops a value without making
/// proxies (a late reply, an abandoned result) gives these back.
pub fn sender_objects(value: &Value) -> Vec<Release> {
    fn walk(v: &Value, out: &mut Vec<Release>, index: &mut HashMap<RefId, usize>) {
        match v {
            Value::SenderObject(d) => match index.get(&d.id) {
                Some(&i) => out[i].count += 1,
                None => {
                    index.insert(d.id, out.len());
                    out.push(Release { id: d.id, count: 1 });
                }
            },
            Value::Tuple(items) | Value::FrozenSet(items) | Value::List(items) | Value::Set(items) => {
                items.iter().for_each(|i| walk(i, out, index))
            }
            Value::Dict(pairs) => pairs.iter().for_each(|(k, v)| {
                walk(k, out, index);
                walk(v, out, index)
            }),
            Value::Slice(parts) => parts.iter().for_each(|i| walk(i, out, index)),
            Value::None
            | Value::Bool(_)
            | Value::Int(_)
            | Value::BigInt(_)
            | Value::Float(_)
            | Value::Complex(..)
            | Value::Str(_)
            | Value::Bytes(_)
            | Value::ReceiverObject(_)
            | Value::Ellipsis => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut out, &mut HashMap::new());
    out
}

#[derive(Debug)]
struct Export<T, K> {
    object: T,
    key: K,
    count: u64,
}

/// The objects one side has handed out by reference, keyed by ids it
/// allocates and never reuses.
///
/// Each time an object is sent its count goes up; the peer gives counts back
/// with [`Release`]s and the object is dropped when its count reaches zero.
/// Objects are deduplicated by a key (for Python, the object's `id()`, which is
/// stable while the table holds the object), so sending the same object twice
/// names it with the same id.
#[derive(Debug)]
pub struct ExportTable<T, K> {
    last_id: RefId,
    objects: HashMap<RefId, Export<T, K>>,
    by_key: HashMap<K, RefId>,
}

impl<T, K: Hash + Eq + Clone> Default for ExportTable<T, K> {
    fn default() -> Self {
        ExportTable { last_id: 0, objects: HashMap::new(), by_key: HashMap::new() }
    }
}

impl<T, K: Hash + Eq + Clone> ExportTable<T, K> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one more sending of the object known by `key`, creating its
    /// entry with `make` the first time; returns its id.
    pub fn export(&mut self, key: K, make: impl FnOnce() -> T) -> RefId {
        if let Some(&id) = self.by_key.get(&key) {
            if let Some(e) = self.objects.get_mut(&id) {
                e.count += 1;
                return id;
            }
        }
        self.last_id += 1;
        let id = self.last_id;
        self.by_key.insert(key.clone(), id);
        self.objects.insert(id, Export { object: make(), key, count: 1 });
        id
    }

    /// The object named `id`, if it is still held.
    pub fn get(&self, id: RefId) -> Option<&T> {
        self.objects.get(&id).map(|e| &e.object)
    }

    /// Gives back `count` sendings of `id`; returns the object when it is no
    /// longer referenced so that the caller can drop it (for Python: with the
    /// interpreter attached). Unknown ids and excess counts are ignored.
    pub fn release(&mut self, id: RefId, count: u32) -> Option<T> {
        let e = self.objects.get_mut(&id)?;
        e.count = e.count.saturating_sub(count as u64);
        if e.count > 0 {
            return None;
        }
        let e = self.objects.remove(&id)?;
        self.by_key.remove(&e.key);
        Some(e.object)
    }

    /// Number of live objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Number of distinct objects ever exported (the last id allocated).
    pub fn exported_total(&self) -> u64 {
        self.last_id
    }

    /// Removes and returns every object (the session is closing).
    pub fn drain(&mut self) -> Vec<T> {
        self.by_key.clear();
        self.objects.drain().map(|(_, e)| e.object).collect()
    }
}

/// References to the peer's objects that local proxies have dropped, waiting
/// to be sent in a batch. Pushing never blocks on I/O, so it is safe from a
/// destructor; the connection drains it before its next send or from a
/// background flush.
#[derive(Debug, Default)]
pub struct ReleaseQueue {
    queue: Mutex<Vec<Release>>,
}

impl ReleaseQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a release; returns the queue's new length.
    pub fn push(&self, id: RefId, count: u32) -> usize {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.push(Release { id, count });
        q.len()
    }

    /// Takes everything queued.
    pub fn take(&self) -> Vec<Release> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Number of releases waiting.
    pub fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
