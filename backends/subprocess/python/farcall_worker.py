"""farcall's subprocess worker: one Python process serving one client session.

The server starts ``python -c BOOTSTRAP`` with pipes on stdin, stdout and
stderr; the bootstrap reads this module's and :mod:`farcall_semantics`'
sources from stdin and calls :func:`main`. Needs nothing but the standard
library (Python 3.9 or newer).

Protocol (frames are a 4-byte big-endian length, then the body):

1. server -> worker: a MessagePack map of settings (``max_memory_mb``).
2. worker -> server: the hello, a MessagePack map: ``farcall_worker`` (this
   protocol's version, :data:`PROTOCOL`), ``python_version``, ``prefix``,
   ``executable``, ``pid``.
3. Then exactly farcall's own messages (core's codec.rs), in both
   directions, as between a client and a server:

   - server -> worker: requests ``[0, id, opcode, fields...]`` of the
     client, releases ``[3, id, count, ...]`` of this session's objects,
     cancels ``[4, id]`` (the call performing request ``id`` gets a
     ``TimeoutError`` raised in its Python code; see :meth:`Worker.cancel`), and
     the replies ``[1, id, value]`` / ``[2, id, exception]`` to the
     worker's own requests;
   - worker -> server: the replies to the server's requests, and the
     worker's own requests (*callbacks*: user code calling an object of the
     client, a :class:`farcall_semantics.PeerObject`) with ids of their own,
     and releases of the client's objects (queued by
     ``PeerObject.__del__``, written just ahead of the worker's next frame).

   Requests that do not overlap in time run on one thread, the main one
   (the home thread); overlapping ones are served concurrently (a slow call
   does not hold up the others); a release is applied before any request
   that follows it. A thread waiting for the reply to a callback reads
   itself when no other thread does, and meanwhile the worker keeps serving
   the server's requests (nested calls: client -> server -> client ->
   server), on the home thread when it is the one waiting.
4. worker -> server, at most once, just before the worker ends itself: a
   notice ``[127, reason, detail]`` (reason ``out_of_memory``, ``protocol``
   or ``internal``).

The worker ends when its stdin closes (exit status 0), on a malformed
message (76), on an internal error (70), or when a request runs out of
memory in a worker with a memory limit (71). Nothing but frames is ever
written to the frame pipe: file descriptors 0 and 1 are moved away before
any user code runs (``sys.stdin`` reads ``/dev/null``, ``sys.stdout`` and
file descriptor 1 write to stderr).
"""

import collections
import io
import os
import struct
import sys
import threading

import farcall_semantics as sem

# Frames of this module are farcall's own (see farcall_semantics.describe).
__farcall_internal__ = True

#: The version of the worker protocol above (the hello's ``farcall_worker``).
PROTOCOL = 2

#: Deepest nesting of values the decoder accepts (as core's codec).
MAX_DEPTH = 64

#: ``bytes`` values at least this long are written without being copied.
ZERO_COPY_MIN = 16 * 1024

#: Threads that may serve requests at once.
MAX_THREADS = 128

#: How often (seconds) the standby thread looks at a session whose requests
#: are being performed: it takes over reading when it finds the reading role
#: free at two looks in a row with nothing in between.
TICK = 0.0005

#: Looks without any request started after which the standby thread sleeps
#: until the next request starts (a quiet session).
QUIET_TICKS = 40

# What the home thread is doing.
HOME_IDLE = 0  # waiting for a request or for the reading role
HOME_READING = 1  # holding the reading role, between requests
HOME_BUSY = 2  # performing a request
HOME_REPLYING = 3  # writing a reply (about to be idle)
HOME_AWAITING = 4  # waiting for a callback's reply
#: States in which the home thread takes a request another thread read.
HOME_FREE = (HOME_IDLE, HOME_AWAITING, HOME_REPLYING)

# Who reads (Worker.lead).
READER_HOME = 0
READER_HOME_AWAITING = 1
READER_AWAITING = 2
READER_STANDBY = 3

#: Worker.lead handed the request it read to the home thread.
FOUND_HANDED = "handed"
#: Worker.lead read the reply its thread waits for.
FOUND_MINE = "mine"

KIND_REQUEST = 0
KIND_REPLY_OK = 1
KIND_REPLY_ERR = 2
KIND_RELEASE = 3
KIND_CANCEL = 4
#: A worker's last words (not part of farcall's wire protocol).
KIND_NOTICE = 127

EXT_BIGINT = 1
EXT_COMPLEX = 2
EXT_FROZENSET = 3
EXT_SENDER_OBJECT = 4
EXT_RECEIVER_OBJECT = 5
EXT_LIST = 6
EXT_DICT = 7
EXT_SET = 8
EXT_SLICE = 9
EXT_ELLIPSIS = 10

#: ``Builtin(name, args)`` (``farcall_semantics.BUILTIN``).
OP_BUILTIN = 9

EXIT_INTERNAL = 70
EXIT_OUT_OF_MEMORY = 71
EXIT_PROTOCOL = 76

_ARITY = {
    sem.GET_MODULE: 1,
    sem.GET_ATTR: 2,
    sem.SET_ATTR: 3,
    sem.DEL_ATTR: 2,
    sem.CALL: 3,
    sem.REPR: 1,
    sem.STR: 1,
    sem.STATS: 0,
    OP_BUILTIN: 2,
}

_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_U32_MAX = (1 << 32) - 1


class MalformedMessage(ValueError):
    """A frame that is not a well-formed message of farcall's protocol."""


class UnknownOperation(Exception):
    """A well-formed request for an operation this worker does not know."""

    def __init__(self, request_id, op):
        Exception.__init__(self, "unknown operation %d (request %d)" % (op, request_id))
        self.request_id = request_id
        self.op = op


# ----------------------------------------------------------------- decoding

_be_u16 = struct.Struct(">H").unpack_from
_be_u32 = struct.Struct(">I").unpack_from
_be_u64 = struct.Struct(">Q").unpack_from
_be_i8 = struct.Struct(">b").unpack_from
_be_i16 = struct.Struct(">h").unpack_from
_be_i32 = struct.Struct(">i").unpack_from
_be_i64 = struct.Struct(">q").unpack_from
_be_f32 = struct.Struct(">f").unpack_from
_be_f64 = struct.Struct(">d").unpack_from
_le_2f64 = struct.Struct("<dd").unpack_from


class Decoder:
    """Decodes MessagePack as core's codec does, refusing what it refuses:
    truncated input, counts larger than the bytes present, nesting deeper
    than :data:`MAX_DEPTH`, strings that are not UTF-8, maps, unknown
    extension types and trailing bytes. Errors are :class:`MalformedMessage`."""

    __slots__ = ("data", "pos", "depth")

    def __init__(self, data, depth=0):
        self.data = data
        self.pos = 0
        self.depth = depth

    def take(self, n):
        pos = self.pos
        end = pos + n
        if end > len(self.data):
            raise MalformedMessage("malformed message: truncated")
        self.pos = end
        return self.data[pos:end]

    def byte(self):
        pos = self.pos
        if pos >= len(self.data):
            raise MalformedMessage("malformed message: truncated")
        self.pos = pos + 1
        return self.data[pos]

    def _fixed(self, unpack, n):
        pos = self.pos
        if pos + n > len(self.data):
            raise MalformedMessage("malformed message: truncated")
        self.pos = pos + n
        return unpack(self.data, pos)[0]

    def _len_after(self, m):
        if m in (0xC4, 0xC7, 0xD9):
            return self.byte()
        if m in (0xC5, 0xC8, 0xDA, 0xDC, 0xDE):
            return self._fixed(_be_u16, 2)
        return self._fixed(_be_u32, 4)

    def _int_from(self, m):
        """The integer that marker ``m`` starts, or ``None`` if it is not one."""
        if m <= 0x7F:
            return m
        if m >= 0xE0:
            return m - 0x100
        if 0xCC <= m <= 0xD3:
            if m == 0xCC:
                return self.byte()
            if m == 0xCD:
                return self._fixed(_be_u16, 2)
            if m == 0xCE:
                return self._fixed(_be_u32, 4)
            if m == 0xCF:
                return self._fixed(_be_u64, 8)
            if m == 0xD0:
                return self._fixed(_be_i8, 1)
            if m == 0xD1:
                return self._fixed(_be_i16, 2)
            if m == 0xD2:
                return self._fixed(_be_i32, 4)
            return self._fixed(_be_i64, 8)
        return None

    def uint(self):
        m = self.byte()
        v = self._int_from(m)
        if v is None:
            raise MalformedMessage("malformed message: expected an unsigned integer, found byte 0x%02x" % m)
        if v < 0:
            raise MalformedMessage("malformed message: negative id or count")
        return v

    def _text(self, n):
        raw = self.take(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedMessage("malformed message: a string is not valid UTF-8") from None

    def str(self):
        m = self.byte()
        if 0xA0 <= m <= 0xBF:
            return self._text(m & 0x1F)
        if 0xD9 <= m <= 0xDB:
            return self._text(self._len_after(m))
        raise MalformedMessage("malformed message: expected a string, found byte 0x%02x" % m)

    def array(self):
        m = self.byte()
        if 0x90 <= m <= 0x9F:
            n = m & 0x0F
        elif m == 0xDC or m == 0xDD:
            n = self._len_after(m)
        else:
            raise MalformedMessage("malformed message: expected an array, found byte 0x%02x" % m)
        # Every element takes at least one byte.
        if n > len(self.data) - self.pos:
            raise MalformedMessage("malformed message: truncated")
        return n

    def end(self):
        left = len(self.data) - self.pos
        if left:
            raise MalformedMessage("malformed message: %d trailing bytes" % left)

    def values(self):
        """An array of values, as a tuple."""
        if self.depth >= MAX_DEPTH:
            raise MalformedMessage("malformed message: values nested deeper than %d" % MAX_DEPTH)
        n = self.array()
        self.depth += 1
        items = tuple([self.value() for _ in range(n)])
        self.depth -= 1
        return items

    def value(self):
        """One value: a Python scalar, a tuple, a frozenset, a
        :class:`farcall_semantics.Target` (a receiver's object) or a
        :class:`farcall_semantics.Ref` (a sender's object)."""
        m = self.byte()
        if m <= 0x7F:
            return m
        if m >= 0xE0:
            return m - 0x100
        if 0xA0 <= m <= 0xBF:
            return self._text(m & 0x1F)
        if 0x90 <= m <= 0x9F or m == 0xDC or m == 0xDD:
            self.pos -= 1
            return self.values()
        if m == 0xC0:
            return None
        if m == 0xC2:
            return False
        if m == 0xC3:
            return True
        if m == 0xCB:
            return self._fixed(_be_f64, 8)
        if m == 0xCA:
            return self._fixed(_be_f32, 4)
        v = self._int_from(m)
        if v is not None:
            return v
        if 0xD9 <= m <= 0xDB:
            return self._text(self._len_after(m))
        if 0xC4 <= m <= 0xC6:
            return bytes(self.take(self._len_after(m)))
        if 0xD4 <= m <= 0xD8 or 0xC7 <= m <= 0xC9:
            return self._ext(m)
        raise MalformedMessage("malformed message: expected a value, found byte 0x%02x" % m)

    def _ext(self, m):
        if m <= 0xD8 and m >= 0xD4:
            n = 1 << (m - 0xD4)
        else:
            n = self._len_after(m)
        ty = self.byte()
        payload = self.take(n)
        if ty == EXT_BIGINT:
            if not payload:
                raise MalformedMessage("malformed message: empty big integer")
            return sem.int_from_bytes(payload)
        if ty == EXT_COMPLEX:
            if len(payload) != 16:
                raise MalformedMessage("malformed message: complex is not 16 bytes")
            re, im = _le_2f64(payload, 0)
            return complex(re, im)
        if ty == EXT_FROZENSET:
            inner = Decoder(payload, self.depth)
            items = inner.values()
            inner.end()
            return frozenset(items)
        if ty == EXT_SENDER_OBJECT:
            inner = Decoder(payload, self.depth)
            ref = inner.ref()
            inner.end()
            return ref
        if ty == EXT_RECEIVER_OBJECT:
            inner = Decoder(payload, self.depth)
            target = inner.target()
            inner.end()
            return target
        if ty == EXT_LIST or ty == EXT_SET:
            inner = Decoder(payload, self.depth)
            items = inner.values()
            inner.end()
            return sem.ListValue(items) if ty == EXT_LIST else sem.SetValue(items)
        if ty == EXT_DICT:
            inner = Decoder(payload, self.depth)
            pairs = inner.pairs()
            inner.end()
            return sem.DictValue(pairs)
        if ty == EXT_SLICE:
            inner = Decoder(payload, self.depth)
            parts = inner.values()
            inner.end()
            if len(parts) != 3:
                raise MalformedMessage("malformed message: slice is not 3 values")
            return slice(*parts)
        if ty == EXT_ELLIPSIS:
            if payload:
                raise MalformedMessage("malformed message: Ellipsis with a payload")
            return Ellipsis
        raise MalformedMessage("malformed message: unknown value extension type")

    def pairs(self):
        """A dict copy's payload ``[k1, v1, k2, v2, ...]`` as a tuple of pairs."""
        if self.depth >= MAX_DEPTH:
            raise MalformedMessage("malformed message: values nested deeper than %d" % MAX_DEPTH)
        n = self.array()
        if n % 2:
            raise MalformedMessage("malformed message: dict copy is not key/value pairs")
        self.depth += 1
        items = tuple([(self.value(), self.value()) for _ in range(n // 2)])
        self.depth -= 1
        return items

    def exception(self):
        """An exception described as data, as :class:`farcall_semantics.ExceptionData`."""
        if self.array() != 5:
            raise MalformedMessage("malformed message: exception is not 5 fields")
        type_module = self.str()
        type_name = self.str()
        args = self.values()
        message = self.str()
        return sem.ExceptionData(type_module, type_name, args, message, self.str())

    def ref(self):
        if self.array() != 4:
            raise MalformedMessage("malformed message: object reference is not 4 fields")
        ref_id = self.uint()
        name = self.str()
        flags = self.uint()
        if flags > 0xFF:
            raise MalformedMessage("malformed message: flags out of range")
        attrs = []
        for _ in range(self.array()):
            fields = self.array()
            attr = self.str()
            kind = self.uint()
            if kind in (sem.LAZY_CALLABLE, sem.LAZY_CLASS) and fields == 2:
                attrs.append(sem.LazyAttr(attr, kind))
            elif kind == sem.LAZY_MODULE and fields == 3:
                attrs.append(sem.LazyAttr(attr, kind, self.str()))
            else:
                raise MalformedMessage("malformed message: bad attribute hint")
        return sem.Ref(ref_id, name, flags, tuple(attrs))

    def target(self):
        n = self.array()
        if n == 0:
            raise MalformedMessage("malformed message: empty target")
        ref_id = self.uint()
        return sem.Target(ref_id, [self.str() for _ in range(n - 1)])

    def map(self):
        """A map of string keys (only the settings frame has one)."""
        m = self.byte()
        if 0x80 <= m <= 0x8F:
            n = m & 0x0F
        elif m == 0xDE or m == 0xDF:
            n = self._len_after(m)
        else:
            raise MalformedMessage("malformed message: expected a map, found byte 0x%02x" % m)
        out = {}
        for _ in range(n):
            key = self.str()
            out[key] = self.value()
        return out


def decode_message(data):
    """Decodes a frame from the server: ``(KIND_REQUEST, id, opcode,
    fields)``, ``(KIND_RELEASE, [(id, count), ...])``, ``(KIND_REPLY_OK,
    id, value)``, ``(KIND_REPLY_ERR, id, ExceptionData)`` or
    ``(KIND_CANCEL, id)``.

    Raises :class:`UnknownOperation` for a well-formed request of an unknown
    operation and :class:`MalformedMessage` for anything else that is wrong.
    """
    d = Decoder(data)
    n = d.array()
    if n == 0:
        raise MalformedMessage("malformed message: empty message")
    kind = d.uint()
    if kind == KIND_REQUEST:
        if n < 3:
            raise MalformedMessage("malformed message: request without an operation")
        request_id = d.uint()
        op = d.uint()
        want = _ARITY.get(op)
        if want is None:
            raise UnknownOperation(request_id, op)
        if n - 3 != want:
            raise MalformedMessage("malformed message: wrong number of fields for the operation")
        if op == sem.CALL:
            target = d.target()
            args = d.values()
            k = d.array()
            if k % 2:
                raise MalformedMessage("malformed message: odd keyword argument list")
            kwargs = []
            for _ in range(k // 2):
                name = d.str()
                kwargs.append((name, d.value()))
            fields = (target, args, kwargs)
        elif op == sem.GET_ATTR or op == sem.DEL_ATTR:
            fields = (d.target(), d.str())
        elif op == sem.GET_MODULE:
            fields = (d.str(),)
        elif op == sem.SET_ATTR:
            fields = (d.target(), d.str(), d.value())
        elif op == sem.STATS:
            fields = ()
        elif op == OP_BUILTIN:
            fields = (d.str(), d.values())
        else:
            fields = (d.target(),)
        d.end()
        return (KIND_REQUEST, request_id, op, fields)
    if kind == KIND_RELEASE:
        if n % 2 == 0:
            raise MalformedMessage("malformed message: release list is not id/count pairs")
        pairs = []
        for _ in range(n // 2):
            ref_id = d.uint()
            count = d.uint()
            if count > _U32_MAX:
                raise MalformedMessage("malformed message: release count out of range")
            pairs.append((ref_id, count))
        d.end()
        return (KIND_RELEASE, pairs)
    if kind == KIND_REPLY_OK or kind == KIND_REPLY_ERR:
        if n != 3:
            raise MalformedMessage("malformed message: reply is not 3 fields")
        request_id = d.uint()
        value = d.value() if kind == KIND_REPLY_OK else d.exception()
        d.end()
        return (kind, request_id, value)
    if kind == KIND_CANCEL:
        if n != 2:
            raise MalformedMessage("malformed message: cancel is not 2 fields")
        request_id = d.uint()
        d.end()
        return (KIND_CANCEL, request_id)
    raise MalformedMessage("unknown message kind %d" % kind)


def decode_settings(data):
    """Decodes the settings frame (a map)."""
    d = Decoder(data)
    settings = d.map()
    d.end()
    return settings


# ----------------------------------------------------------------- encoding

_pack_u16 = struct.Struct(">BH").pack
_pack_u32 = struct.Struct(">BI").pack
_pack_u64 = struct.Struct(">BQ").pack
_pack_i8 = struct.Struct(">Bb").pack
_pack_i16 = struct.Struct(">Bh").pack
_pack_i32 = struct.Struct(">Bi").pack
_pack_i64 = struct.Struct(">Bq").pack
_pack_f64 = struct.Struct(">Bd").pack
_pack_len = struct.Struct(">I").pack
_pack_complex = struct.Struct("<dd").pack


class Encoder:
    """Encodes values and messages as core's codec does. Large ``bytes``
    values are kept as separate chunks (written without a copy) unless the
    encoder is ``contiguous`` (extension payloads must be)."""

    __slots__ = ("buf", "chunks", "contiguous")

    def __init__(self, contiguous=False):
        self.buf = bytearray()
        self.chunks = []
        self.contiguous = contiguous

    def finish(self):
        """The encoded chunks (a list of bytes-like objects)."""
        if self.buf:
            self.chunks.append(self.buf)
            self.buf = bytearray()
        return self.chunks

    def uint(self, v):
        buf = self.buf
        if v < 0x80:
            buf.append(v)
        elif v <= 0xFF:
            buf.append(0xCC)
            buf.append(v)
        elif v <= 0xFFFF:
            buf += _pack_u16(0xCD, v)
        elif v <= 0xFFFFFFFF:
            buf += _pack_u32(0xCE, v)
        else:
            buf += _pack_u64(0xCF, v)

    def int(self, v):
        if v >= 0:
            if v <= _I64_MAX:
                self.uint(v)
                return
        elif v >= -32:
            self.buf.append(v + 0x100)
            return
        elif v >= -0x80:
            self.buf += _pack_i8(0xD0, v)
            return
        elif v >= -0x8000:
            self.buf += _pack_i16(0xD1, v)
            return
        elif v >= -0x80000000:
            self.buf += _pack_i32(0xD2, v)
            return
        elif v >= _I64_MIN:
            self.buf += _pack_i64(0xD3, v)
            return
        self.ext(EXT_BIGINT, sem.int_to_bytes(v))

    def _len_header(self, n, fix_base, fix_max, m8, m16, m32):
        buf = self.buf
        if fix_base is not None and n < fix_max:
            buf.append(fix_base | n)
        elif m8 is not None and n <= 0xFF:
            buf.append(m8)
            buf.append(n)
        elif n <= 0xFFFF:
            buf += _pack_u16(m16, n)
        else:
            buf += _pack_u32(m32, n)

    def str(self, s):
        raw = s.encode("utf-8")
        n = len(raw)
        if n < 32:
            self.buf.append(0xA0 | n)
        else:
            self._len_header(n, None, 0, 0xD9, 0xDA, 0xDB)
        self.buf += raw

    def bin(self, b):
        n = len(b)
        self._len_header(n, None, 0, 0xC4, 0xC5, 0xC6)
        if n >= ZERO_COPY_MIN and not self.contiguous:
            self.chunks.append(self.buf)
            self.chunks.append(b)
            self.buf = bytearray()
        else:
            self.buf += b

    def array(self, n):
        if n < 16:
            self.buf.append(0x90 | n)
        else:
            self._len_header(n, None, 0, None, 0xDC, 0xDD)

    def ext(self, ty, payload):
        n = len(payload)
        if n in (1, 2, 4, 8, 16):
            self.buf.append({1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}[n])
        else:
            self._len_header(n, None, 0, 0xC7, 0xC8, 0xC9)
        self.buf.append(ty)
        self.buf += payload

    def value(self, v):
        """Encodes a boxed value (see :mod:`farcall_semantics`)."""
        t = type(v)
        if t is int:
            self.int(v)
        elif t is str:
            self.str(v)
        elif v is None:
            self.buf.append(0xC0)
        elif t is float:
            self.buf += _pack_f64(0xCB, v)
        elif t is bool:
            self.buf.append(0xC3 if v else 0xC2)
        elif t is bytes:
            self.bin(v)
        elif t is tuple:
            self.array(len(v))
            for item in v:
                self.value(item)
        elif t is sem.Ref:
            inner = Encoder(True)
            inner.ref(v)
            self.ext(EXT_SENDER_OBJECT, b"".join(inner.finish()))
        elif t is complex:
            self.ext(EXT_COMPLEX, _pack_complex(v.real, v.imag))
        elif t is frozenset:
            inner = Encoder(True)
            inner.array(len(v))
            for item in v:
                inner.value(item)
            self.ext(EXT_FROZENSET, b"".join(inner.finish()))
        elif t is sem.Target:
            inner = Encoder(True)
            inner.target(v)
            self.ext(EXT_RECEIVER_OBJECT, b"".join(inner.finish()))
        elif t is sem.ListValue or t is sem.SetValue:
            inner = Encoder(True)
            inner.array(len(v))
            for item in v:
                inner.value(item)
            self.ext(EXT_LIST if t is sem.ListValue else EXT_SET, b"".join(inner.finish()))
        elif t is sem.DictValue:
            inner = Encoder(True)
            inner.array(2 * len(v))
            for key, item in v:
                inner.value(key)
                inner.value(item)
            self.ext(EXT_DICT, b"".join(inner.finish()))
        elif t is slice:
            inner = Encoder(True)
            inner.buf.append(0x93)
            inner.value(v.start)
            inner.value(v.stop)
            inner.value(v.step)
            self.ext(EXT_SLICE, b"".join(inner.finish()))
        elif v is Ellipsis:
            self.ext(EXT_ELLIPSIS, b"")
        else:
            raise sem.InternalError("cannot encode a value of type %s" % sem.type_name(v))

    def ref(self, r):
        buf = self.buf
        buf.append(0x94)
        self.uint(r.id)
        self.str(r.type_name)
        self.uint(r.flags)
        self.array(len(r.attrs))
        for a in r.attrs:
            if a.kind == sem.LAZY_MODULE:
                self.buf.append(0x93)
                self.str(a.name)
                self.buf.append(sem.LAZY_MODULE)
                self.str(a.module)
            else:
                self.buf.append(0x92)
                self.str(a.name)
                self.buf.append(a.kind)

    def target(self, t):
        self.array(1 + len(t.path))
        self.uint(t.id)
        for name in t.path:
            self.str(name)

    def exception(self, e):
        """Encodes :class:`farcall_semantics.ExceptionData`."""
        self.buf.append(0x95)
        self.str(e[0])
        self.str(e[1])
        self.array(len(e[2]))
        for a in e[2]:
            self.value(a)
        self.str(e[3])
        self.str(e[4])


def encode_reply(request_id, value):
    """The chunks of ``[1, id, value]``."""
    e = Encoder()
    e.buf.append(0x93)
    e.buf.append(KIND_REPLY_OK)
    e.uint(request_id)
    e.value(value)
    return e.finish()


def encode_error(request_id, data):
    """The chunks of ``[2, id, exception]`` for an :class:`ExceptionData`."""
    e = Encoder()
    e.buf.append(0x93)
    e.buf.append(KIND_REPLY_ERR)
    e.uint(request_id)
    e.exception(data)
    return e.finish()


def encode_request(request_id, op, fields):
    """The chunks of a request ``[0, id, opcode, fields...]`` of the worker
    (a callback): ``fields`` in boxed form, as
    ``farcall_semantics.Session.peer.request`` takes them (targets are
    :class:`farcall_semantics.Target`; a call's keyword arguments a mapping
    or ``(name, value)`` pairs; a builtin's args a sequence)."""
    want = _ARITY.get(op)
    if want is None:
        raise sem.ProtocolError("cannot send unknown operation %r to the client" % (op,))
    if len(fields) != want:
        raise sem.ProtocolError("%s takes %d fields, got %d" % (sem.OP_NAMES.get(op, "Builtin"), want, len(fields)))
    e = Encoder()
    e.array(3 + want)
    e.buf.append(KIND_REQUEST)
    e.uint(request_id)
    e.uint(op)
    if op == sem.GET_MODULE:
        e.str(fields[0])
    elif op == OP_BUILTIN:
        e.str(fields[0])
        args = tuple(fields[1])
        e.array(len(args))
        for a in args:
            e.value(a)
    elif op == sem.STATS:
        pass
    else:
        target = fields[0]
        if type(target) is not sem.Target:
            raise sem.ProtocolError("the target of a request to the client must be a Target, not %s" % sem.type_name(target))
        e.target(target)
        if op == sem.GET_ATTR or op == sem.DEL_ATTR:
            e.str(fields[1])
        elif op == sem.SET_ATTR:
            e.str(fields[1])
            e.value(fields[2])
        elif op == sem.CALL:
            args = tuple(fields[1])
            e.array(len(args))
            for a in args:
                e.value(a)
            kwargs = fields[2] or ()
            items = list(kwargs.items()) if isinstance(kwargs, dict) else list(kwargs)
            e.array(2 * len(items))
            for name, value in items:
                e.str(name)
                e.value(value)
    return e.finish()


def encode_release(pairs):
    """The body of a release ``[3, id, count, ...]`` (``pairs`` of ``(id, count)``)."""
    e = Encoder(True)
    e.array(1 + 2 * len(pairs))
    e.buf.append(KIND_RELEASE)
    for ref_id, count in pairs:
        e.uint(ref_id)
        e.uint(count)
    return b"".join(e.finish())


def encode_notice(reason, detail):
    """The body of a notice ``[127, reason, detail]``."""
    e = Encoder(True)
    e.buf.append(0x93)
    e.uint(KIND_NOTICE)
    e.str(reason)
    e.str(sem.lossy(detail))
    return b"".join(e.finish())


def encode_map(mapping):
    """A map of string keys to strings and integers (the hello)."""
    e = Encoder(True)
    n = len(mapping)
    if n < 16:
        e.buf.append(0x80 | n)
    else:
        e.buf += _pack_u16(0xDE, n)
    for k, v in mapping.items():
        e.str(k)
        e.value(v)
    return b"".join(e.finish())


# ----------------------------------------------------------------- frames


def read_frame(reader):
    """One frame body from a buffered binary reader, or ``None`` when the
    stream ends between frames."""
    head = reader.read(4)
    if not head:
        return None
    if len(head) < 4:
        raise MalformedMessage("the stream ended inside a frame's length")
    n = _be_u32(head, 0)[0]
    body = reader.read(n)
    if len(body) < n:
        raise MalformedMessage("the stream ended inside a frame (%d of %d bytes)" % (len(body), n))
    return body


def write_frame(fd, chunks):
    """Writes the length prefix and ``chunks`` to ``fd`` (with vectored
    writes, so large chunks are not copied)."""
    total = 0
    for c in chunks:
        total += len(c)
    if total > _U32_MAX:
        raise sem.ProtocolError("the reply is too large to send: %d bytes (at most 4 GiB per message)" % total)
    parts = [_pack_len(total)] + [memoryview(c) for c in chunks if len(c)]
    while parts:
        written = os.writev(fd, parts[:512])
        while written:
            n = len(parts[0])
            if written >= n:
                written -= n
                parts.pop(0)
            else:
                parts[0] = parts[0][written:]
                written = 0


# ----------------------------------------------------------------- serving


class Worker:
    """Serves one session: reads frames from ``reader``, performs them on a
    :class:`farcall_semantics.Session`, writes replies to ``fd_out``.

    The thread that creates it is the session's *home* thread (the
    process's main thread): its :meth:`serve` reads a request, performs it
    and writes the reply itself, then reads the next, so a call costs no
    thread hand-off and requests that do not overlap in time all run on that
    one thread (thread-affine libraries -- sqlite3 connections, many C
    libraries, GUI toolkits, event loops -- keep working across a session's
    calls, as in a local program). A *standby* thread (:meth:`stand_by`)
    takes over reading when nobody has read for a while because the home
    thread is busy, so a slow call holds up no other: what it reads while the
    home thread is busy runs on helper threads, and the first request it
    reads once the home thread is free again is handed back to it, which
    then reads again.

    A thread waiting for the reply to a callback reads itself when nobody
    else does; a reply another thread reads is delivered to it. The
    server's nested requests (client -> server -> client -> server) run on
    the home thread when it is free or is the one waiting (they belong in
    its call stack), else on the waiting thread that read them.

    The session's ``peer`` (:class:`Peer`) sends user code's requests to the
    client's objects up to the server.
    """

    def __init__(self, reader, fd_out, max_memory_mb=0):
        #: The session's object table and namespace.
        self.session = sem.Session()
        self.session.peer = Peer(self)
        # Releases of the client's objects, written ahead of the next frame
        # (appended from finalizers: a deque needs no lock).
        self.releases = collections.deque()
        self.reader = reader
        self.fd_out = fd_out
        self.max_memory_mb = max_memory_mb
        # Held while a frame is written.
        self.write_lock = threading.Lock()
        # The ident of the thread reading frames (see call_peer).
        self.reading_thread = None
        #: The thread that performs the requests unless they overlap.
        self.home_ident = threading.get_ident()
        # Everything below is guarded by `state_lock`.
        self.state_lock = threading.Lock()
        # The home thread waits here between requests.
        self.home_cond = threading.Condition(self.state_lock)
        # Threads waiting for a callback's reply wait here.
        self.call_cond = threading.Condition(self.state_lock)
        # The standby thread looks and sleeps here.
        self.standby_cond = threading.Condition(self.state_lock)
        # Helper threads wait here for queued requests.
        self.helper_cond = threading.Condition(self.state_lock)
        # Callbacks waiting for their reply: id -> None, then (kind, value).
        self.calls = {}
        self.last_call = 0
        # A thread holds the reading role (the home thread starts out reading).
        self.reading = True
        # Counts the times the reading role was given up.
        self.freed = 0
        self.home = HOME_READING
        # A request another thread read for the home thread to perform.
        self.for_home = None
        # Requests the standby read while the home thread was busy.
        self.queue = collections.deque()
        self.helpers_idle = 0
        # Threads waiting on `call_cond`.
        self.awaiting = 0
        self.standby_asleep = False
        # Serving threads (home, standby, helpers).
        self.threads = 1
        # Requests being performed: id -> [ident of the thread performing it,
        # cancelled?] (guarded by `running_lock`, which orders a cancel against
        # a request's end).
        self.running = {}
        self.running_lock = threading.Lock()
        # Prepared now: when memory runs out there may be none to encode it.
        self.out_of_memory_notice = encode_notice(
            "out_of_memory", "a request ran out of memory (max_memory_mb = %d)" % max_memory_mb
        )

    def send(self, chunks):
        with self.write_lock:
            try:
                if self.releases:
                    self.flush_releases()
                write_frame(self.fd_out, chunks)
            except (BrokenPipeError, OSError):
                # The server is gone.
                os._exit(0)

    def flush_releases(self):
        """Writes the queued releases as one frame (the write lock is held)."""
        pairs = []
        popleft = self.releases.popleft
        try:
            while True:
                pairs.append(popleft())
        except IndexError:
            pass
        if pairs:
            write_frame(self.fd_out, [encode_release(pairs)])

    def call_peer(self, op, fields):
        """Sends request ``op`` to the client and waits for its reply (see
        :meth:`Peer.request`), reading the input itself when no other thread
        does; the home thread also performs the requests handed to it
        meanwhile."""
        me = threading.get_ident()
        if self.reading_thread == me:
            # A finalizer run by a release (or the garbage collector) while
            # this thread reads: it cannot read the reply it would wait for.
            raise sem.FarcallError("the client cannot be called from a finalizer that runs while the worker reads its input")
        home = me == self.home_ident
        lock = self.state_lock
        with lock:
            self.last_call += 1
            request_id = self.last_call
        chunks = encode_request(request_id, op, fields)
        with lock:
            self.calls[request_id] = None
            # Before the request goes: the nested requests it may bring are
            # for this thread.
            before = self.home
            if home:
                self.home = HOME_AWAITING
        self.send(chunks)
        lock.acquire()
        try:
            while True:
                reply = self.calls.get(request_id)
                if reply is not None:
                    del self.calls[request_id]
                    break
                work = None
                if home and self.for_home is not None:
                    work, self.for_home = self.for_home, None
                    self.home = HOME_BUSY
                elif self.reading:
                    self.awaiting += 1
                    self.call_cond.wait()
                    self.awaiting -= 1
                    continue
                else:
                    self.reading = True
                    lock.release()
                    try:
                        work = self.lead(READER_HOME_AWAITING if home else READER_AWAITING, request_id)
                    finally:
                        lock.acquire()
                if work is not FOUND_MINE and work is not FOUND_HANDED:
                    lock.release()
                    try:
                        self.perform_work(work, home)
                    finally:
                        lock.acquire()
                if home:
                    self.home = HOME_AWAITING
            if home:
                self.home = before
        finally:
            lock.release()
        kind, value = reply
        if kind == KIND_REPLY_OK:
            return value
        raise sem.PeerError(value)

    def deliver(self, kind, request_id, value):
        """Hands the reply to a callback to the thread waiting for it."""
        with self.state_lock:
            if self.calls.get(request_id, 0) is not None:
                raise MalformedMessage("malformed message: a reply to request %d, which the worker did not send or was answered" % request_id)
            self.calls[request_id] = (kind, value)
            if self.awaiting:
                self.call_cond.notify_all()

    def die(self, code, reason, detail=None, body=None):
        """Writes a notice (if the pipe is free soon) and ends the process."""
        try:
            if body is None:
                body = encode_notice(reason, detail)
            if self.write_lock.acquire(timeout=2):
                os.write(self.fd_out, _pack_len(len(body)) + body)
        except BaseException:
            pass
        os._exit(code)

    def out_of_memory(self):
        self.die(EXIT_OUT_OF_MEMORY, "out_of_memory", body=self.out_of_memory_notice)

    def next_request(self):
        """The next request (releases met before it are applied, replies
        delivered), or ``None`` when the server closed the pipe."""
        while True:
            body = read_frame(self.reader)
            if body is None:
                return None
            msg = decode_message(body)
            kind = msg[0]
            if kind == KIND_REQUEST:
                return msg
            if kind == KIND_RELEASE:
                self.session.release(msg[1])
            elif kind == KIND_REPLY_OK or kind == KIND_REPLY_ERR:
                self.deliver(kind, msg[1], msg[2])
            elif kind == KIND_CANCEL:
                self.cancel(msg[1])

    def cancel(self, request_id):
        """Raises ``TimeoutError`` in the Python code performing request
        ``request_id`` (at its next bytecode: code blocked in C finishes
        first); nothing when it is not being performed any more."""
        with self.running_lock:
            entry = self.running.get(request_id)
            if entry is not None and not entry[1]:
                entry[1] = True
                _set_async_exc(entry[0], TimeoutError)

    def _perform_cancellable(self, request_id, op, fields):
        """``(True, result)`` or ``(False, exception)`` of the request, which
        :meth:`cancel` may interrupt. A cancellation is raised at most once;
        one that lands outside the request's own code (in this function's
        bookkeeping) becomes its outcome, and none reaches later code."""
        thread = threading.get_ident()
        outcome = None
        try:
            try:
                with self.running_lock:
                    self.running[request_id] = [thread, False]
                outcome = (True, self.session.handle(op, *fields))
            except BaseException as e:
                outcome = (False, e)
        except BaseException as late:
            if outcome is None:
                outcome = (False, late)
        while True:
            try:
                with self.running_lock:
                    entry = self.running.pop(request_id, None)
                    if entry is not None and entry[1]:
                        _set_async_exc(thread, None)  # clears one set too late to be raised
                return outcome
            except BaseException as late:
                if outcome is None:
                    outcome = (False, late)

    def free_role(self):
        """Gives up the reading role (``state_lock`` held) and wakes whoever
        may want it."""
        self.reading = False
        self.freed += 1
        if self.home == HOME_IDLE:
            self.home_cond.notify()
        if self.awaiting:
            self.call_cond.notify_all()
        if self.standby_asleep:
            self.standby_asleep = False
            self.standby_cond.notify()

    def lead(self, reader, awaited=None):
        """Reads frames while holding the reading role until one needs a
        thread: returns a request (or an :class:`UnknownOperation`) for
        this thread to perform, :data:`FOUND_HANDED` when it handed one to
        the home thread, :data:`FOUND_MINE` when the reply ``awaited``
        arrived. Releases are applied, other replies delivered, on the way.
        The reading role is given up on return. Ends the process when the
        server closes the pipe or sends a malformed message."""
        try:
            self.reading_thread = threading.get_ident()
            lock = self.state_lock
            while True:
                body = read_frame(self.reader)
                if body is None:
                    os._exit(0)
                try:
                    msg = decode_message(body)
                except UnknownOperation as e:
                    msg = e
                else:
                    kind = msg[0]
                    if kind == KIND_RELEASE:
                        self.session.release(msg[1])
                        continue
                    if kind == KIND_REPLY_OK or kind == KIND_REPLY_ERR:
                        self.deliver(kind, msg[1], msg[2])
                        if msg[1] == awaited:
                            with lock:
                                self.free_role()
                            return FOUND_MINE
                        continue
                    if kind == KIND_CANCEL:
                        self.cancel(msg[1])
                        continue
                with lock:
                    if reader == READER_HOME or reader == READER_HOME_AWAITING:
                        self.free_role()
                        self.home = HOME_BUSY
                        return msg
                    if self.for_home is None and self.home in HOME_FREE:
                        self.for_home = msg
                        if self.home == HOME_AWAITING:
                            self.call_cond.notify_all()
                        self.free_role()
                        return FOUND_HANDED
                    if reader == READER_AWAITING:
                        self.free_role()
                        return msg
                    # The standby: the request overlaps the home thread's.
                    self.queue.append(msg)
                    if len(self.queue) <= self.helpers_idle:
                        self.helper_cond.notify()
                    elif not self.spawn(self.help, "farcall-helper"):
                        # No more threads: perform it here.
                        self.queue.pop()
                        self.free_role()
                        return msg
        except MalformedMessage as e:
            self.die(EXIT_PROTOCOL, "protocol", "the worker received a malformed message: %s" % e)
        except MemoryError:
            self.out_of_memory()
        except BaseException:
            self.internal_error()
        finally:
            self.reading_thread = None

    def internal_error(self):
        import traceback

        text = traceback.format_exc()
        sys.stderr.write("farcall worker: internal error\n" + text)
        self.die(EXIT_INTERNAL, "internal", "internal error in the worker: " + text.strip().splitlines()[-1])

    def guarded(self, loop):
        """Runs a serving loop; ends the process if it fails."""
        try:
            loop()
        except MemoryError:
            self.out_of_memory()
        except BaseException:
            self.internal_error()

    def spawn(self, loop, name):
        """Starts a serving thread running ``loop`` (``state_lock`` held);
        False when there can be no more."""
        if self.threads >= MAX_THREADS:
            return False
        self.threads += 1
        try:
            threading.Thread(target=self.guarded, args=(loop,), name=name, daemon=True).start()
        except Exception:
            # No more threads (an address-space limit): serve with those there are.
            self.threads -= 1
            return False
        return True

    def start_standby(self):
        """Starts the standby thread."""
        with self.state_lock:
            self.spawn(self.stand_by, "farcall-standby")

    def serve(self):
        """The loop of the home thread; never returns."""
        self.guarded(self.home_loop)

    def home_loop(self):
        lock = self.state_lock
        home_cond = self.home_cond
        # The home thread starts out holding the reading role.
        work = self.lead(READER_HOME)
        while True:
            if work is not None and work is not FOUND_HANDED and work is not FOUND_MINE:
                self.perform_work(work, True)
            with lock:
                while True:
                    work = self.for_home
                    if work is not None:
                        self.for_home = None
                        self.home = HOME_BUSY
                        break
                    if self.queue:
                        work = self.queue.popleft()
                        self.home = HOME_BUSY
                        break
                    if not self.reading:
                        self.reading = True
                        self.home = HOME_READING
                        break
                    self.home = HOME_IDLE
                    home_cond.wait()
            if work is None:
                work = self.lead(READER_HOME)

    def stand_by(self):
        """The loop of the standby thread: while requests are being
        performed and nobody reads, take the reading role once it has been
        free for a tick; sleep while the session is quiet."""
        lock = self.state_lock
        cond = self.standby_cond
        seen_free = None
        seen = -1
        quiet = 0
        lock.acquire()
        try:
            while True:
                if not self.reading:
                    if seen_free == self.freed:
                        self.reading = True
                        lock.release()
                        try:
                            work = self.lead(READER_STANDBY)
                            if work is not FOUND_HANDED:
                                self.perform_work(work, False)
                        finally:
                            lock.acquire()
                        seen_free = None
                        quiet = 0
                        continue
                    seen_free = self.freed
                    quiet = 0
                else:
                    seen_free = None
                    if self.freed == seen:
                        quiet += 1
                    else:
                        seen = self.freed
                        quiet = 0
                    if quiet >= QUIET_TICKS:
                        self.standby_asleep = True
                        while self.standby_asleep:
                            cond.wait()
                        quiet = 0
                        continue
                cond.wait(TICK)
        finally:
            lock.release()

    def help(self):
        """The loop of a helper thread: perform the queued requests."""
        lock = self.state_lock
        lock.acquire()
        try:
            while True:
                if self.queue:
                    work = self.queue.popleft()
                    lock.release()
                    try:
                        self.perform_work(work, False)
                    finally:
                        lock.acquire()
                else:
                    self.helpers_idle += 1
                    self.helper_cond.wait()
                    self.helpers_idle -= 1
        finally:
            lock.release()

    def perform_work(self, work, home):
        if isinstance(work, UnknownOperation):
            if home:
                with self.state_lock:
                    self.home = HOME_REPLYING
            err = sem.describe(sem.ProtocolError("unknown operation %d" % work.op))
            self.send(encode_error(work.request_id, err))
        else:
            self.perform(work[1], work[2], work[3], home)

    def perform(self, request_id, op, fields, home=False):
        limited = self.max_memory_mb > 0
        ok, result = self._perform_cancellable(request_id, op, fields)
        try:
            try:
                if not ok:
                    raise result
                chunks = encode_reply(request_id, result)
            except MemoryError:
                if limited:
                    self.out_of_memory()
                raise
        except BaseException as e:
            try:
                chunks = encode_error(request_id, sem.describe(e))
            except MemoryError:
                if limited:
                    self.out_of_memory()
                chunks = encode_error(request_id, _internal("MemoryError while describing an exception"))
            except BaseException as e2:
                chunks = encode_error(request_id, _internal("could not describe an exception: %r" % (e2,)))
        if not ok:
            # The exception's traceback holds the request's frames (and their
            # arguments, client objects among them) in a cycle through this
            # frame: break it now that the reply is encoded, so that they go
            # (released to the client) without waiting for the collector.
            result.__traceback__ = None
        result = None
        if home:
            # Done once the reply is about to go: the server may send the
            # next request as soon as it arrives, and that one does not overlap.
            with self.state_lock:
                self.home = HOME_REPLYING
        try:
            self.send(chunks)
        except sem.ProtocolError as e:
            self.send(encode_error(request_id, sem.describe(e)))


def _set_async_exc(thread, exc_type):
    """Has ``exc_type`` raised in thread ``thread`` at its next bytecode, or
    clears a pending one (``exc_type`` None)."""
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), None if exc_type is None else ctypes.py_object(exc_type))


class Peer:
    """The session's ``peer`` (the host contract of ``farcall_semantics``):
    the client, reached through the server."""

    __slots__ = ("_worker",)

    def __init__(self, worker):
        self._worker = worker

    def request(self, op, *fields):
        """Sends request ``op`` with its boxed ``fields`` to the client and
        blocks until it replies; returns the reply in received form, or
        raises ``PeerError`` with the client's exception. While it waits,
        the worker keeps serving the server's requests."""
        return self._worker.call_peer(op, fields)

    def release(self, ref_id, count):
        """Gives back ``count`` references to the client's object
        ``ref_id``: queued, sent ahead of the worker's next frame (never
        blocks, no I/O)."""
        self._worker.releases.append((ref_id, count))


def _internal(message):
    return sem.ExceptionData("farcall", "InternalError", [message], message, "")


def _isolate_stdio():
    """Moves the frame pipes off file descriptors 0 and 1, so that nothing
    user code does with standard input and output can touch them; returns
    ``(fd_in, fd_out)``."""
    fd_in = os.dup(0)
    fd_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    try:
        sys.stdout.flush()
        sys.stdout.reconfigure(line_buffering=True)
    except Exception:
        pass
    return fd_in, fd_out


def main():
    """Runs the worker: settings, hello, then serving until stdin closes."""
    fd_in, fd_out = _isolate_stdio()
    # `python -c` puts the current directory first on sys.path; the embedded
    # interpreter does not, and neither does this worker.
    if sys.path and sys.path[0] == "":
        del sys.path[0]
    import __main__

    for name in ("sys", "_farcall_worker"):
        __main__.__dict__.pop(name, None)
    try:
        import faulthandler
        import signal

        # A crash prints where it happened (the server shows it in the error).
        faulthandler.enable()
        # Signals are left alone, as by the embedded interpreter.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    except Exception:
        pass
    reader = io.open(fd_in, "rb", buffering=1 << 16)
    body = read_frame(reader)
    if body is None:
        os._exit(0)
    settings = decode_settings(body)
    worker = Worker(reader, fd_out, int(settings.get("max_memory_mb") or 0))
    hello = {
        "farcall_worker": PROTOCOL,
        "python_version": sys.version.split()[0],
        "prefix": sem.lossy(sys.prefix or ""),
        "executable": sem.lossy(sys.executable or ""),
        "pid": os.getpid(),
    }
    # Ready to take over reading when the home thread is busy.
    worker.start_standby()
    worker.send([encode_map(hello)])
    worker.serve()
