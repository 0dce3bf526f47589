//! The MessagePack encoding of [`Message`]s.
//!
//! Messages are encoded by hand (not through serde) for two reasons: large
//! `bytes` values are never copied into the frame (the encoder keeps them as
//! separate chunks that the transport writes with vectored I/O, and the decoder
//! hands out slices of the received frame), and every length read from the
//! wire is checked against the bytes actually present before anything is
//! allocated, so hostile input cannot make the decoder over-allocate.
//!
//! Layout (all MessagePack):
//! - request: `[0, id, opcode, fields...]`
//! - reply: `[1, id, value]` or `[2, id, exception]`
//! - release: `[3, id, count, id, count, ...]`
//! - cancel: `[4, id]` (the sender no longer wants the reply to its request `id`)
//! - values: nil, bool, int, float64, str, bin and array (tuple) natively;
//!   ext 1 big int (little-endian two's complement), ext 2 complex (two LE f64),
//!   ext 3 frozenset, ext 4 sender's object, ext 5 receiver's object,
//!   ext 6 list copy (array of values), ext 7 dict copy (array `[k1, v1, k2, v2, ...]`),
//!   ext 8 set copy (array of values), ext 9 slice (array `[start, stop, step]`),
//!   ext 10 Ellipsis (empty payload).
//!
//! Opcodes: 1 GetModule, 2 GetAttr, 3 SetAttr, 4 DelAttr, 5 Call, 6 Repr,
//! 7 Str, 8 Stats, 9 Builtin (`name, [args...]`). See `core/PROTOCOL.md`.

use bytes::Bytes;

use crate::message::{Message, Release, Request, RequestId};
use crate::value::{LazyAttr, LazyKind, RefDesc, RemoteException, Target, Value};

/// `bytes` values at least this long travel as their own chunk, without a copy.
const ZERO_COPY_MIN: usize = 16 * 1024;
/// Deepest nesting of values the decoder accepts.
pub const MAX_DEPTH: usize = 64;

const KIND_REQUEST: u64 = 0;
const KIND_REPLY_OK: u64 = 1;
const KIND_REPLY_ERR: u64 = 2;
const KIND_RELEASE: u64 = 3;
const KIND_CANCEL: u64 = 4;

const OP_GET_MODULE: u64 = 1;
const OP_GET_ATTR: u64 = 2;
const OP_SET_ATTR: u64 = 3;
const OP_DEL_ATTR: u64 = 4;
const OP_CALL: u64 = 5;
const OP_REPR: u64 = 6;
const OP_STR: u64 = 7;
const OP_STATS: u64 = 8;
const OP_BUILTIN: u64 = 9;

const EXT_BIGINT: i8 = 1;
const EXT_COMPLEX: i8 = 2;
const EXT_FROZENSET: i8 = 3;
const EXT_SENDER_OBJECT: i8 = 4;
const EXT_RECEIVER_OBJECT: i8 = 5;
const EXT_LIST: i8 = 6;
const EXT_DICT: i8 = 7;
const EXT_SET: i8 = 8;
const EXT_SLICE: i8 = 9;
const EXT_ELLIPSIS: i8 = 10;

/// What a frame carries, readable without decoding it (a transport that maps
/// calls to streams routes by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A request expecting a reply with this id.
    Request(RequestId),
    /// The reply to the peer's request with this id.
    Reply(RequestId),
    /// A message without reply (reference releases, cancels).
    Oneway,
}

/// An encoded message: a list of chunks to be written in order after a
/// 4-byte big-endian length prefix.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Where the frame goes.
    pub route: Route,
    chunks: Vec<Bytes>,
    len: usize,
}

impl Frame {
    /// A frame whose body is `body` as is (the handshake, raw tests).
    pub fn from_bytes(route: Route, body: Bytes) -> Self {
        Frame { route, len: body.len(), chunks: vec![body] }
    }

    /// The frame's chunks, in order.
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// Total length of the body (without the length prefix).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the body is empty (never true for an encoded message).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The body as one contiguous buffer (copies when there are several chunks).
    pub fn to_bytes(&self) -> Bytes {
        match self.chunks.as_slice() {
            [one] => one.clone(),
            many => {
                let mut v = Vec::with_capacity(self.len);
                for c in many {
                    v.extend_from_slice(c);
                }
                v.into()
            }
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame ended in the middle of a value.
    #[error("malformed message: truncated")]
    Truncated,
    /// A byte that cannot start the expected item.
    #[error("malformed message: expected {expected}, found byte 0x{found:02x}")]
    Unexpected {
        /// What the decoder was looking for.
        expected: &'static str,
        /// The marker byte it found.
        found: u8,
    },
    /// Values nested deeper than [`MAX_DEPTH`].
    #[error("malformed message: values nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// A string that is not UTF-8.
    #[error("malformed message: a string is not valid UTF-8")]
    InvalidUtf8,
    /// A length, count or kind that makes no sense.
    #[error("malformed message: {0}")]
    Invalid(&'static str),
    /// Bytes left over after the message.
    #[error("malformed message: {0} trailing bytes")]
    Trailing(usize),
    /// A message kind this version does not know.
    #[error("unknown message kind {0}")]
    UnknownKind(u64),
    /// A well-formed request for an operation this version does not know; the
    /// connection can go on and the request be answered with an error.
    #[error("unknown operation {op} (request {id})")]
    UnknownOp {
        /// The request's id, to answer it.
        id: RequestId,
        /// The unknown opcode.
        op: u64,
    },
}

// ---------------------------------------------------------------- encoding

struct Encoder {
    buf: Vec<u8>,
    chunks: Vec<Bytes>,
    len: usize,
}

impl Encoder {
    fn new() -> Self {
        Encoder { buf: Vec::with_capacity(64), chunks: Vec::new(), len: 0 }
    }

    fn finish(mut self, route: Route) -> Frame {
        self.cut();
        Frame { route, chunks: self.chunks, len: self.len }
    }

    fn cut(&mut self) {
        if !self.buf.is_empty() {
            let b = std::mem::take(&mut self.buf);
            self.len += b.len();
            self.chunks.push(b.into());
        }
    }

    fn u8(&mut self, b: u8) {
        self.buf.push(b);
    }

    fn nil(&mut self) {
        self.u8(0xc0);
    }

    fn bool(&mut self, v: bool) {
        self.u8(if v { 0xc3 } else { 0xc2 });
    }

    fn uint(&mut self, v: u64) {
        if v < 0x80 {
            self.u8(v as u8);
        } else if v <= u8::MAX as u64 {
            self.buf.extend_from_slice(&[0xcc, v as u8]);
        } else if v <= u16::MAX as u64 {
            self.u8(0xcd);
            self.buf.extend_from_slice(&(v as u16).to_be_bytes());
        } else if v <= u32::MAX as u64 {
            self.u8(0xce);
            self.buf.extend_from_slice(&(v as u32).to_be_bytes());
        } else {
            self.u8(0xcf);
            self.buf.extend_from_slice(&v.to_be_bytes());
        }
    }

    fn int(&mut self, v: i64) {
        if v >= 0 {
            self.uint(v as u64);
        } else if v >= -32 {
            self.u8(v as i8 as u8);
        } else if v >= i8::MIN as i64 {
            self.buf.extend_from_slice(&[0xd0, v as i8 as u8]);
        } else if v >= i16::MIN as i64 {
            self.u8(0xd1);
            self.buf.extend_from_slice(&(v as i16).to_be_bytes());
        } else if v >= i32::MIN as i64 {
            self.u8(0xd2);
            self.buf.extend_from_slice(&(v as i32).to_be_bytes());
        } else {
            self.u8(0xd3);
            self.buf.extend_from_slice(&v.to_be_bytes());
        }
    }

    fn f64(&mut self, v: f64) {
        self.u8(0xcb);
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn len_header(&mut self, len: usize, fix: Option<(u8, usize)>, b8: Option<u8>, b16: u8, b32: u8) {
        match (fix, b8) {
            (Some((base, max)), _) if len < max => self.u8(base | len as u8),
            (_, Some(m)) if len <= u8::MAX as usize => self.buf.extend_from_slice(&[m, len as u8]),
            _ if len <= u16::MAX as usize => {
                self.u8(b16);
                self.buf.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                self.u8(b32);
                self.buf.extend_from_slice(&(len as u32).to_be_bytes());
            }
        }
    }

    fn str(&mut self, s: &str) {
        self.len_header(s.len(), Some((0xa0, 32)), Some(0xd9), 0xda, 0xdb);
        self.buf.extend_from_slice(s.as_bytes());
    }

    fn bin(&mut self, b: &Bytes) {
        self.len_header(b.len(), None, Some(0xc4), 0xc5, 0xc6);
        if b.len() >= ZERO_COPY_MIN {
            self.cut();
            self.len += b.len();
            self.chunks.push(b.clone());
        } else {
            self.buf.extend_from_slice(b);
        }
    }

    fn array(&mut self, len: usize) {
        self.len_header(len, Some((0x90, 16)), None, 0xdc, 0xdd);
    }

    fn ext(&mut self, ty: i8, payload: &[u8]) {
        let len = payload.len();
        match len {
            1 => self.u8(0xd4),
            2 => self.u8(0xd5),
            4 => self.u8(0xd6),
            8 => self.u8(0xd7),
            16 => self.u8(0xd8),
            _ => self.len_header(len, None, Some(0xc7), 0xc8, 0xc9),
        }
        self.u8(ty as u8);
        self.buf.extend_from_slice(payload);
    }

    /// Encodes `f` into a nested buffer and writes it as ext `ty`.
    fn nested_ext(&mut self, ty: i8, f: impl FnOnce(&mut Encoder)) {
        let mut inner = Encoder::new();
        f(&mut inner);
        let payload = inner.finish(Route::Oneway).to_bytes();
        self.ext(ty, &payload);
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::None => self.nil(),
            Value::Bool(b) => self.bool(*b),
            Value::Int(i) => self.int(*i),
            Value::BigInt(b) => self.ext(EXT_BIGINT, b),
            Value::Float(f) => self.f64(*f),
            Value::Complex(re, im) => {
                let mut p = [0u8; 16];
                p[..8].copy_from_slice(&re.to_le_bytes());
                p[8..].copy_from_slice(&im.to_le_bytes());
                self.ext(EXT_COMPLEX, &p);
            }
            Value::Str(s) => self.str(s),
            Value::Bytes(b) => self.bin(b),
            Value::Tuple(items) => self.values(items),
            Value::FrozenSet(items) => self.nested_ext(EXT_FROZENSET, |e| e.values(items)),
            Value::SenderObject(desc) => self.nested_ext(EXT_SENDER_OBJECT, |e| e.ref_desc(desc)),
            Value::ReceiverObject(t) => self.nested_ext(EXT_RECEIVER_OBJECT, |e| e.target(t)),
            Value::List(items) => self.nested_ext(EXT_LIST, |e| e.values(items)),
            Value::Dict(pairs) => self.nested_ext(EXT_DICT, |e| {
                e.array(pairs.len() * 2);
                for (k, v) in pairs {
                    e.value(k);
                    e.value(v);
                }
            }),
            Value::Set(items) => self.nested_ext(EXT_SET, |e| e.values(items)),
            Value::Slice(parts) => self.nested_ext(EXT_SLICE, |e| e.values(&parts[..])),
            Value::Ellipsis => self.ext(EXT_ELLIPSIS, &[]),
        }
    }

    fn values(&mut self, items: &[Value]) {
        self.array(items.len());
        for item in items {
            self.value(item);
        }
    }

    fn ref_desc(&mut self, d: &RefDesc) {
        self.array(4);
        self.uint(d.id);
        self.str(&d.type_name);
        self.uint(d.flags as u64);
        self.array(d.attrs.len());
        for a in &d.attrs {
            match &a.kind {
                LazyKind::Callable | LazyKind::Class => {
                    self.array(2);
                    self.str(&a.name);
                    self.uint(if a.kind == LazyKind::Callable { 0 } else { 1 });
                }
                LazyKind::Module(m) => {
                    self.array(3);
                    self.str(&a.name);
                    self.uint(2);
                    self.str(m);
                }
            }
        }
    }

    fn target(&mut self, t: &Target) {
        self.array(1 + t.path.len());
        self.uint(t.id);
        for p in &t.path {
            self.str(p);
        }
    }

    fn exception(&mut self, e: &RemoteException) {
        self.array(5);
        self.str(&e.type_module);
        self.str(&e.type_name);
        self.values(&e.args);
        self.str(&e.message);
        self.str(&e.traceback);
    }

    fn request(&mut self, id: RequestId, op: &Request) {
        let (code, fields) = match op {
            Request::GetModule { .. } => (OP_GET_MODULE, 1),
            Request::GetAttr { .. } => (OP_GET_ATTR, 2),
            Request::SetAttr { .. } => (OP_SET_ATTR, 3),
            Request::DelAttr { .. } => (OP_DEL_ATTR, 2),
            Request::Call { .. } => (OP_CALL, 3),
            Request::Repr { .. } => (OP_REPR, 1),
            Request::Str { .. } => (OP_STR, 1),
            Request::Stats => (OP_STATS, 0),
            Request::Builtin { .. } => (OP_BUILTIN, 2),
        };
        self.array(3 + fields);
        self.uint(KIND_REQUEST);
        self.uint(id);
        self.uint(code);
        match op {
            Request::GetModule { name } => self.str(name),
            Request::GetAttr { target, name } | Request::DelAttr { target, name } => {
                self.target(target);
                self.str(name);
            }
            Request::SetAttr { target, name, value } => {
                self.target(target);
                self.str(name);
                self.value(value);
            }
            Request::Call { target, args, kwargs } => {
                self.target(target);
                self.values(args);
                self.array(kwargs.len() * 2);
                for (k, v) in kwargs {
                    self.str(k);
                    self.value(v);
                }
            }
            Request::Repr { target } | Request::Str { target } => self.target(target),
            Request::Stats => {}
            Request::Builtin { name, args } => {
                self.str(name);
                self.values(args);
            }
        }
    }
}

/// Encodes a message into a frame.
pub fn encode(msg: &Message) -> Frame {
    let mut e = Encoder::new();
    let route = match msg {
        Message::Request { id, op } => {
            e.request(*id, op);
            Route::Request(*id)
        }
        Message::Reply { id, result } => {
            e.array(3);
            match result {
                Ok(v) => {
                    e.uint(KIND_REPLY_OK);
                    e.uint(*id);
                    e.value(v);
                }
                Err(x) => {
                    e.uint(KIND_REPLY_ERR);
                    e.uint(*id);
                    e.exception(x);
                }
            }
            Route::Reply(*id)
        }
        Message::Release(refs) => {
            e.array(1 + 2 * refs.len());
            e.uint(KIND_RELEASE);
            for r in refs {
                e.uint(r.id);
                e.uint(r.count as u64);
            }
            Route::Oneway
        }
        Message::Cancel(id) => {
            e.array(2);
            e.uint(KIND_CANCEL);
            e.uint(*id);
            Route::Oneway
        }
    };
    e.finish(route)
}

// ---------------------------------------------------------------- decoding

struct Decoder {
    data: Bytes,
    pos: usize,
    depth: usize,
}

impl Decoder {
    fn new(data: Bytes) -> Self {
        Decoder { data, pos: 0, depth: 0 }
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn take_bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let b = self.data.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn len_after(&mut self, m: u8) -> Result<usize, DecodeError> {
        Ok(match m {
            0xc4 | 0xc7 | 0xd9 => self.byte()? as usize,
            0xc5 | 0xc8 | 0xda | 0xdc | 0xde => u16::from_be_bytes(self.be()?) as usize,
            _ => u32::from_be_bytes(self.be()?) as usize,
        })
    }

    /// An integer as i128 (covers both u64 and i64).
    fn int_from(&mut self, m: u8) -> Result<Option<i128>, DecodeError> {
        Ok(Some(match m {
            0x00..=0x7f => m as i128,
            0xe0..=0xff => m as i8 as i128,
            0xcc => self.byte()? as i128,
            0xcd => u16::from_be_bytes(self.be()?) as i128,
            0xce => u32::from_be_bytes(self.be()?) as i128,
            0xcf => u64::from_be_bytes(self.be()?) as i128,
            0xd0 => self.byte()? as i8 as i128,
            0xd1 => i16::from_be_bytes(self.be()?) as i128,
            0xd2 => i32::from_be_bytes(self.be()?) as i128,
            0xd3 => i64::from_be_bytes(self.be()?) as i128,
            _ => return Ok(None),
        }))
    }

    fn uint(&mut self) -> Result<u64, DecodeError> {
        let m = self.byte()?;
        match self.int_from(m)? {
            Some(v) => u64::try_from(v).map_err(|_| DecodeError::Invalid("negative id or count")),
            None => Err(DecodeError::Unexpected { expected: "an unsigned integer", found: m }),
        }
    }

    fn str(&mut self) -> Result<String, DecodeError> {
        let m = self.byte()?;
        let len = match m {
            0xa0..=0xbf => (m & 0x1f) as usize,
            0xd9..=0xdb => self.len_after(m)?,
            _ => return Err(DecodeError::Unexpected { expected: "a string", found: m }),
        };
        let raw = self.take(len)?;
        std::str::from_utf8(raw).map(str::to_owned).map_err(|_| DecodeError::InvalidUtf8)
    }

    fn array(&mut self) -> Result<usize, DecodeError> {
        let m = self.byte()?;
        let len = match m {
            0x90..=0x9f => (m & 0x0f) as usize,
            0xdc | 0xdd => self.len_after(m)?,
            _ => return Err(DecodeError::Unexpected { expected: "an array", found: m }),
        };
        // Every element takes at least one byte: refuse impossible counts
        // before anything is allocated for them.
        if len > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        Ok(len)
    }

    fn ext_payload(&mut self, m: u8) -> Result<(i8, Bytes), DecodeError> {
        let len = match m {
            0xd4 => 1,
            0xd5 => 2,
            0xd6 => 4,
            0xd7 => 8,
            0xd8 => 16,
            _ => self.len_after(m)?,
        };
        let ty = self.byte()? as i8;
        Ok((ty, self.take_bytes(len)?))
    }

    /// Decodes a nested payload with the same depth budget.
    fn nested<T>(&mut self, payload: Bytes, f: impl FnOnce(&mut Decoder) -> Result<T, DecodeError>) -> Result<T, DecodeError> {
        let mut inner = Decoder { data: payload, pos: 0, depth: self.depth };
        let v = f(&mut inner)?;
        inner.end()?;
        Ok(v)
    }

    fn end(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }

    fn value(&mut self) -> Result<Value, DecodeError> {
        let m = self.byte()?;
        if let Some(i) = self.int_from(m)? {
            return Ok(match i64::try_from(i) {
                Ok(i) => Value::Int(i),
                // Only u64 above i64::MAX gets here: 8 LE bytes plus a sign byte.
                Err(_) => {
                    let mut b = (i as u64).to_le_bytes().to_vec();
                    b.push(0);
                    Value::BigInt(b.into())
                }
            });
        }
        Ok(match m {
            0xc0 => Value::None,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xca => Value::Float(f32::from_be_bytes(self.be()?) as f64),
            0xcb => Value::Float(f64::from_be_bytes(self.be()?)),
            0xa0..=0xbf | 0xd9..=0xdb => {
                self.pos -= 1;
                Value::Str(self.str()?)
            }
            0xc4..=0xc6 => {
                let len = self.len_after(m)?;
                Value::Bytes(self.take_bytes(len)?)
            }
            0x90..=0x9f | 0xdc | 0xdd => {
                self.pos -= 1;
                Value::Tuple(self.values()?)
            }
            0xd4..=0xd8 | 0xc7..=0xc9 => {
                let (ty, payload) = self.ext_payload(m)?;
                self.ext_value(ty, payload)?
            }
            _ => return Err(DecodeError::Unexpected { expected: "a value", found: m }),
        })
    }

    fn ext_value(&mut self, ty: i8, payload: Bytes) -> Result<Value, DecodeError> {
        Ok(match ty {
            EXT_BIGINT => {
                if payload.is_empty() {
                    return Err(DecodeError::Invalid("empty big integer"));
                }
                Value::BigInt(payload)
            }
            EXT_COMPLEX => {
                if payload.len() != 16 {
                    return Err(DecodeError::Invalid("complex is not 16 bytes"));
                }
                let re = f64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
                let im = f64::from_le_bytes(payload[8..].try_into().expect("8 bytes"));
                Value::Complex(re, im)
            }
            EXT_FROZENSET => Value::FrozenSet(self.nested(payload, Decoder::values)?),
            EXT_SENDER_OBJECT => Value::SenderObject(self.nested(payload, Decoder::ref_desc)?),
            EXT_RECEIVER_OBJECT => Value::ReceiverObject(self.nested(payload, Decoder::target)?),
            EXT_LIST => Value::List(self.nested(payload, Decoder::values)?),
            EXT_DICT => Value::Dict(self.nested(payload, Decoder::pairs)?),
            EXT_SET => Value::Set(self.nested(payload, Decoder::values)?),
            EXT_SLICE => {
                let parts: [Value; 3] =
                    self.nested(payload, Decoder::values)?.try_into().map_err(|_| DecodeError::Invalid("slice is not 3 values"))?;
                Value::Slice(Box::new(parts))
            }
            EXT_ELLIPSIS => {
                if !payload.is_empty() {
                    return Err(DecodeError::Invalid("Ellipsis with a payload"));
                }
                Value::Ellipsis
            }
            _ => return Err(DecodeError::Invalid("unknown value extension type")),
        })
    }

    fn values(&mut self) -> Result<Vec<Value>, DecodeError> {
        if self.depth >= MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let n = self.array()?;
        self.depth += 1;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value()?);
        }
        self.depth -= 1;
        Ok(items)
    }

    /// A dict copy's payload: an array `[k1, v1, k2, v2, ...]`, one nesting level.
    fn pairs(&mut self) -> Result<Vec<(Value, Value)>, DecodeError> {
        if self.depth >= MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let n = self.array()?;
        if n % 2 != 0 {
            return Err(DecodeError::Invalid("dict copy is not key/value pairs"));
        }
        self.depth += 1;
        let mut pairs = Vec::with_capacity(n / 2);
        for _ in 0..n / 2 {
            let k = self.value()?;
            pairs.push((k, self.value()?));
        }
        self.depth -= 1;
        Ok(pairs)
    }

    fn ref_desc(&mut self) -> Result<RefDesc, DecodeError> {
        if self.array()? != 4 {
            return Err(DecodeError::Invalid("object reference is not 4 fields"));
        }
        let id = self.uint()?;
        let type_name = self.str()?;
        let flags = u8::try_from(self.uint()?).map_err(|_| DecodeError::Invalid("flags out of range"))?;
        let n = self.array()?;
        let mut attrs = Vec::with_capacity(n);
        for _ in 0..n {
            let fields = self.array()?;
            let name = self.str()?;
            let kind = match (self.uint()?, fields) {
                (0, 2) => LazyKind::Callable,
                (1, 2) => LazyKind::Class,
                (2, 3) => LazyKind::Module(self.str()?),
                _ => return Err(DecodeError::Invalid("bad attribute hint")),
            };
            attrs.push(LazyAttr { name, kind });
        }
        Ok(RefDesc { id, type_name, flags, attrs })
    }

    fn target(&mut self) -> Result<Target, DecodeError> {
        let n = self.array()?;
        if n == 0 {
            return Err(DecodeError::Invalid("empty target"));
        }
        let id = self.uint()?;
        let mut path = Vec::with_capacity(n - 1);
        for _ in 1..n {
            path.push(self.str()?);
        }
        Ok(Target { id, path })
    }

    fn exception(&mut self) -> Result<RemoteException, DecodeError> {
        if self.array()? != 5 {
            return Err(DecodeError::Invalid("exception is not 5 fields"));
        }
        Ok(RemoteException {
            type_module: self.str()?,
            type_name: self.str()?,
            args: self.values()?,
            message: self.str()?,
            traceback: self.str()?,
        })
    }

    fn expect_fields(n: usize, want: usize) -> Result<(), DecodeError> {
        if n == want {
            Ok(())
        } else {
            Err(DecodeError::Invalid("wrong number of fields for the operation"))
        }
    }

    fn request(&mut self, id: RequestId, fields: usize) -> Result<Request, DecodeError> {
        let op = self.uint()?;
        let fields = fields - 3;
        let (want, req) = match op {
            OP_GET_MODULE => (1, None),
            OP_GET_ATTR | OP_DEL_ATTR => (2, None),
            OP_SET_ATTR | OP_CALL => (3, None),
            OP_REPR | OP_STR => (1, None),
            OP_STATS => (0, Some(Request::Stats)),
            OP_BUILTIN => (2, None),
            _ => return Err(DecodeError::UnknownOp { id, op }),
        };
        Self::expect_fields(fields, want)?;
        if let Some(r) = req {
            return Ok(r);
        }
        Ok(match op {
            OP_GET_MODULE => Request::GetModule { name: self.str()? },
            OP_GET_ATTR => Request::GetAttr { target: self.target()?, name: self.str()? },
            OP_DEL_ATTR => Request::DelAttr { target: self.target()?, name: self.str()? },
            OP_SET_ATTR => Request::SetAttr { target: self.target()?, name: self.str()?, value: self.value()? },
            OP_CALL => {
                let target = self.target()?;
                let args = self.values()?;
                let n = self.array()?;
                if n % 2 != 0 {
                    return Err(DecodeError::Invalid("odd keyword argument list"));
                }
                let mut kwargs = Vec::with_capacity(n / 2);
                for _ in 0..n / 2 {
                    let k = self.str()?;
                    kwargs.push((k, self.value()?));
                }
                Request::Call { target, args, kwargs }
            }
            OP_REPR => Request::Repr { target: self.target()? },
            OP_BUILTIN => Request::Builtin { name: self.str()?, args: self.values()? },
            _ => Request::Str { target: self.target()? },
        })
    }

    fn message(&mut self) -> Result<Message, DecodeError> {
        let n = self.array()?;
        if n == 0 {
            return Err(DecodeError::Invalid("empty message"));
        }
        let kind = self.uint()?;
        let msg = match kind {
            KIND_REQUEST => {
                if n < 3 {
                    return Err(DecodeError::Invalid("request without an operation"));
                }
                let id = self.uint()?;
                let op = self.request(id, n)?;
                Message::Request { id, op }
            }
            KIND_REPLY_OK | KIND_REPLY_ERR => {
                if n != 3 {
                    return Err(DecodeError::Invalid("reply is not 3 fields"));
                }
                let id = self.uint()?;
                let result = if kind == KIND_REPLY_OK { Ok(self.value()?) } else { Err(self.exception()?) };
                Message::Reply { id, result }
            }
            KIND_RELEASE => {
                if n % 2 == 0 {
                    return Err(DecodeError::Invalid("release list is not id/count pairs"));
                }
                let mut refs = Vec::with_capacity(n / 2);
                for _ in 0..n / 2 {
                    let id = self.uint()?;
                    let count = u32::try_from(self.uint()?).map_err(|_| DecodeError::Invalid("release count out of range"))?;
                    refs.push(Release { id, count });
                }
                Message::Release(refs)
            }
            KIND_CANCEL => {
                if n != 2 {
                    return Err(DecodeError::Invalid("cancel is not 2 fields"));
                }
                Message::Cancel(self.uint()?)
            }
            k => return Err(DecodeError::UnknownKind(k)),
        };
        self.end()?;
        Ok(msg)
    }
}

/// Decodes one frame body into a message. `bytes` values in the result share
/// `frame`'s buffer.
pub fn decode(frame: Bytes) -> Result<Message, DecodeError> {
    Decoder::new(frame).message()
}

/// Reads where a frame goes from its first bytes, without decoding it (a
/// transport that maps requests to streams needs the request id). `None`
/// for bytes that are not a well-formed message start.
pub fn peek_route(frame: &[u8]) -> Option<Route> {
    let mut d = Decoder::new(Bytes::copy_from_slice(&frame[..frame.len().min(24)]));
    if d.array().ok()? == 0 {
        return None;
    }
    Some(match d.uint().ok()? {
        KIND_REQUEST => Route::Request(d.uint().ok()?),
        KIND_REPLY_OK | KIND_REPLY_ERR => Route::Reply(d.uint().ok()?),
        _ => Route::Oneway,
    })
}

/// Encodes a single value on its own (used by the plugin ABI and tests).
pub fn encode_value(v: &Value) -> Bytes {
    let mut e = Encoder::new();
    e.value(v);
    e.finish(Route::Oneway).to_bytes()
}

/// Decodes a single value encoded by [`encode_value`].
pub fn decode_value(data: Bytes) -> Result<Value, DecodeError> {
    let mut d = Decoder::new(data);
    let v = d.value()?;
    d.end()?;
    Ok(v)
}
