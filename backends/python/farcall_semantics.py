"""farcall's object semantics: the one definition of what a Python object
becomes on the wire, how a session keeps the objects it hands out, how an
exception is described as data, what the ``Builtin`` operations do, and how a
proxy behaves.

Every evaluator backend performs requests through this module (the subprocess
worker imports it, the embedded backend loads it in-process) and the Python
client performs the server's requests on its own objects (callbacks) with it,
so that they cannot drift apart. It does no I/O and needs nothing but the
standard library (Python 3.9 or newer). The wire protocol it serves is
``core/PROTOCOL.md``.

Boxed values
------------
A *boxed* value is what a Python object becomes to cross the wire:

- exactly ``None``, ``bool``, ``int`` (any size), ``float``, ``complex``,
  ``bytes`` and ``str`` (when it encodes as UTF-8: no lone surrogates) are
  themselves;
- an exact ``tuple`` is a tuple of boxed values (its elements may be
  references);
- an exact ``frozenset`` whose elements are all values (recursively: scalars,
  tuples and frozensets of values) is itself;
- nesting deeper than :data:`MAX_DEPTH` levels, subclasses of all of these,
  and every other object become a :class:`Ref`: an entry of the session's
  object table, sent with its type name, :data:`flags <CALLABLE>` and, for
  modules, hints about their attributes (:class:`LazyAttr`).

Values coming *in* (request fields, call arguments) are the same kinds of
Python objects, plus :class:`Target` (an object of this session's table,
followed by an attribute path, resolved at use time) and :class:`Ref` (an
object of the *peer*, which becomes a :class:`PeerObject` when the session has
a :attr:`Session.peer`, and is refused otherwise).

*Copies* travel only where one was asked for (the reply of ``obtain``, the
argument of ``deliver``, teleport payloads): :class:`ListValue`,
:class:`DictValue` and :class:`SetValue` (ext 6, 7, 8) hold boxed items and
become new lists, dicts and sets when received (:func:`copy_value` makes
them). A ``slice`` of values and ``Ellipsis`` are their own boxed form (ext 9,
10).

Proxies and the peer
--------------------
The protocol is symmetric: each side may call the other's objects.
:class:`ProxyBase` holds every special method of a proxy, written once over a
few primitives; the Python client's ``farcall.Proxy`` and :class:`PeerObject`
(this module's proxy of a peer's object, used by a server to call back into
the client) derive from it. A host that can call its peer sets
:attr:`Session.peer` to an object with:

- ``request(op, *fields)``: sends a request (fields in boxed form, a
  :class:`Target` for the peer's own objects), blocks for the reply and
  returns it in received form, or raises :class:`PeerError` holding the
  peer's :class:`ExceptionData` (:class:`FarcallError` when the connection is
  gone);
- ``release(ref_id, count)``: queues a release of the peer's object; never
  blocks and does no I/O (it is called when a :class:`PeerObject` dies).

Hosts
-----
A host (the subprocess worker, an embedded interpreter) keeps one
:class:`Session` per client session and, for each request of the wire
protocol:

1. turns its fields into Python objects: scalars as themselves, arrays as
   tuples, frozensets as ``frozenset``, a receiver's object as
   :class:`Target`, a sender's object as :class:`Ref`, keyword arguments as
   ``(name, value)`` pairs;
2. calls ``session.handle(opcode, *fields)``;
3. sends the boxed result (tuples, frozensets and :class:`Ref` map back to
   the wire's arrays, frozensets and sender's objects; ``int`` outside 64 bits
   travels as little-endian two's complement, :func:`int_to_bytes`), or,
   if it raised, ``describe(exception)``.

Releases go to :meth:`Session.release`, in order before any later request;
:meth:`Session.close` ends the session. Copies (:class:`ListValue`, ...) map
to ext 6/7/8 and slices and ``Ellipsis`` to ext 9/10 both ways. Tracebacks leave out every frame of
modules whose globals hold ``__farcall_internal__ = True`` (this module, the
worker) and everything before them, so a host written in Python marks its
module the same way.

Sessions
--------
A :class:`Session` owns one client's object table. Ids are allocated by the
session, counted per sending and never reused (never Python's ``id()``).
:meth:`Session.handle` performs one request and returns a boxed value or
raises; :func:`describe` turns what it raised into an :class:`ExceptionData`.
Several threads may perform requests of one session at once; the table's lock
is never held while Python code of the user runs. Calls are made from a
one-line function whose globals are the session's :attr:`Session.namespace`,
so what looks at its caller's frame (``exec(code)`` without a namespace,
``globals()``, ``dir()``) sees that namespace.
"""

import builtins
import functools
import importlib
import itertools
import operator
import sys
import threading
import traceback
import types
import weakref

# Frames of modules marked like this are farcall's own; they are cut from the
# front of a traceback so the client sees only the frames of the code it ran.
__farcall_internal__ = True

__all__ = [
    "MAX_DEPTH",
    "MAX_INPUT_DEPTH",
    "CALLABLE",
    "ITERATOR",
    "MODULE",
    "CLASS",
    "GET_MODULE",
    "GET_ATTR",
    "SET_ATTR",
    "DEL_ATTR",
    "CALL",
    "REPR",
    "STR",
    "STATS",
    "BUILTIN",
    "OP_NAMES",
    "BUILTINS",
    "ITERATE_FIRST",
    "ITERATE_MAX",
    "LAZY_CALLABLE",
    "LAZY_CLASS",
    "LAZY_MODULE",
    "NOT_A_VALUE",
    "FarcallError",
    "ProtocolError",
    "InternalError",
    "TeleportError",
    "RemoteError",
    "PeerError",
    "Target",
    "Ref",
    "LazyAttr",
    "ExceptionData",
    "ListValue",
    "DictValue",
    "SetValue",
    "ProxyBase",
    "CallableProxyBase",
    "PeerObject",
    "CallablePeerObject",
    "IteratorProxyBase",
    "peer_object_class",
    "Session",
    "scalar",
    "plain",
    "type_name",
    "describe",
    "remote_exception",
    "raise_remote",
    "copy_value",
    "teleport_payload",
    "lossy",
    "int_to_bytes",
    "int_from_bytes",
]

#: Deepest nesting of tuples and frozensets sent by value; deeper ones travel
#: as references.
MAX_DEPTH = 32

#: Deepest nesting of values accepted from the client (the wire codec allows 64).
MAX_INPUT_DEPTH = 64

#: :attr:`Ref.flags` bit: the object is callable.
CALLABLE = 1
#: :attr:`Ref.flags` bit: the object is a module.
MODULE = 2
#: :attr:`Ref.flags` bit: the object is a class (an instance of ``type``).
CLASS = 4
#: :attr:`Ref.flags` bit: the object is an iterator (its type has ``__next__``):
#: only proxies of iterators get ``__next__``, so C code that checks for an
#: iterator (``PyIter_Check``) is told the truth about the others.
ITERATOR = 8

# Request operation codes, as on the wire.
#: ``GetModule(name)``
GET_MODULE = 1
#: ``GetAttr(target, name)``
GET_ATTR = 2
#: ``SetAttr(target, name, value)``
SET_ATTR = 3
#: ``DelAttr(target, name)``
DEL_ATTR = 4
#: ``Call(target, args, kwargs)``
CALL = 5
#: ``Repr(target)``
REPR = 6
#: ``Str(target)``
STR = 7
#: ``Stats()``
STATS = 8
#: ``Builtin(name, args)``: one operation of :data:`BUILTINS`.
BUILTIN = 9

#: Operation names by code, for errors and logs.
OP_NAMES = {
    GET_MODULE: "GetModule",
    GET_ATTR: "GetAttr",
    SET_ATTR: "SetAttr",
    DEL_ATTR: "DelAttr",
    CALL: "Call",
    REPR: "Repr",
    STR: "Str",
    STATS: "Stats",
    BUILTIN: "Builtin",
}

#: How many items the first ``iterate`` of a proxy's iteration asks for; each
#: later batch asks for four times more, up to :data:`ITERATE_MAX`.
ITERATE_FIRST = 64
#: The largest batch a proxy's iteration asks for.
ITERATE_MAX = 4096

#: :attr:`LazyAttr.kind`: a callable that is not a class.
LAZY_CALLABLE = 0
#: :attr:`LazyAttr.kind`: a class.
LAZY_CLASS = 1
#: :attr:`LazyAttr.kind`: a module (its full name is in :attr:`LazyAttr.module`).
LAZY_MODULE = 2


class _NotAValue:
    """The type of :data:`NOT_A_VALUE`."""

    __slots__ = ()

    def __repr__(self):
        return "NOT_A_VALUE"


#: What :func:`scalar` and :func:`plain` return for an object that cannot
#: travel by value (``None`` is a value).
NOT_A_VALUE = _NotAValue()


# ----------------------------------------------------------------- errors


class FarcallError(Exception):
    """An error of farcall itself (not of the code the client ran).

    Described with type module ``farcall`` and no traceback.
    """


class ProtocolError(FarcallError):
    """A request farcall cannot perform: an unknown or released reference,
    values nested too deeply, a client object passed by reference."""


class InternalError(FarcallError):
    """farcall failed while performing a request (a bug)."""


class TeleportError(FarcallError):
    """A function could not be shipped to the other side or rebuilt there
    (its source is unavailable, a global it uses cannot be copied, the
    receiver lacks ``cloudpickle``, the source does not compile there...)."""


class RemoteError(FarcallError):
    """An exception raised by the peer whose type has no local equivalent
    (anything but a builtin exception), or an exception type named by the
    peer that this side does not have.

    Attributes:
        remote_type: ``"module.Name"`` of the peer's exception type.
        remote_message: ``str()`` of the peer's exception.
        remote_traceback: the peer's traceback, formatted.
    """

    remote_type = ""
    remote_message = ""
    remote_traceback = ""
    # (module, qualname) of the peer's type: what describe() reports, so the
    # type's name survives a trip through this side.
    _farcall_origin = None

    def __str__(self):
        return _with_traceback(self.remote_message or Exception.__str__(self), self.remote_traceback)


for _cls in (FarcallError, ProtocolError, InternalError, TeleportError, RemoteError):
    _cls.__module__ = "farcall"
del _cls


class PeerError(Exception):
    """Raised by a host's ``peer.request`` when the peer answered with an
    exception; :attr:`data` is its :class:`ExceptionData`
    (:func:`raise_remote` turns it into the local exception)."""

    def __init__(self, data):
        Exception.__init__(self, data)
        #: The :class:`ExceptionData` the peer sent.
        self.data = data


#: What separates an exception's message from the peer's traceback in
#: ``str()`` of exceptions made by :func:`remote_exception`.
_TRACEBACK_SEPARATOR = "\n\n--- remote traceback ---\n"


def _with_traceback(message, text):
    if text:
        return message + _TRACEBACK_SEPARATOR + text.rstrip("\n")
    return message


# ----------------------------------------------------------------- wire objects


class Target:
    """An object of this session: the table entry ``id``, then the attribute
    names of ``path`` looked up in order each time it is used (``math`` +
    ``("pow",)`` means ``math.pow``).

    As a request field it names what the request works on; as a value (a call
    argument) it is a reference the client passes back home.
    """

    __slots__ = ("id", "path")

    def __init__(self, id, path=()):
        #: The id in the session's table.
        self.id = id
        #: Attribute names, a tuple of ``str``.
        self.path = tuple(path)

    def __eq__(self, other):
        return type(other) is Target and other.id == self.id and other.path == self.path

    def __hash__(self):
        return hash((Target, self.id, self.path))

    def __repr__(self):
        return "Target(%r, %r)" % (self.id, self.path)


class LazyAttr:
    """An attribute of a module holding a function, class or module, sent
    with the module so that a client can hand out a proxy for it without a
    round trip (it is still looked up again at each use)."""

    __slots__ = ("name", "kind", "module")

    def __init__(self, name, kind, module=None):
        #: The attribute's name.
        self.name = name
        #: :data:`LAZY_CALLABLE`, :data:`LAZY_CLASS` or :data:`LAZY_MODULE`.
        self.kind = kind
        #: For :data:`LAZY_MODULE`: the module's full name (``os.path`` is ``posixpath``).
        self.module = module

    def __eq__(self, other):
        return type(other) is LazyAttr and (other.name, other.kind, other.module) == (self.name, self.kind, self.module)

    def __hash__(self):
        return hash((self.name, self.kind, self.module))

    def __repr__(self):
        if self.kind == LAZY_MODULE:
            return "LazyAttr(%r, LAZY_MODULE, %r)" % (self.name, self.module)
        return "LazyAttr(%r, %s)" % (self.name, "LAZY_CLASS" if self.kind == LAZY_CLASS else "LAZY_CALLABLE")


class Ref:
    """A reference to an object owned by the sender of a message.

    Returned by :meth:`Session.box` for objects that stay in this session's
    table; received in a request, it names an object of the client.
    """

    __slots__ = ("id", "type_name", "flags", "attrs")

    def __init__(self, id, type_name, flags=0, attrs=()):
        #: The owner's id for the object.
        self.id = id
        #: The object's type, qualified (``builtins.builtin_function_or_method``).
        self.type_name = type_name
        #: Bit set of :data:`CALLABLE`, :data:`MODULE` and :data:`CLASS`.
        self.flags = flags
        #: For modules: a tuple of :class:`LazyAttr`.
        self.attrs = attrs

    def __eq__(self, other):
        return type(other) is Ref and (other.id, other.type_name, other.flags, tuple(other.attrs)) == (
            self.id,
            self.type_name,
            self.flags,
            tuple(self.attrs),
        )

    def __hash__(self):
        return hash((Ref, self.id, self.type_name, self.flags))

    def __repr__(self):
        return "Ref(%r, %r, flags=%r, attrs=<%d>)" % (self.id, self.type_name, self.flags, len(self.attrs))


class ExceptionData(tuple):
    """An exception described as data: ``(type_module, type_name, args,
    message, traceback)``; ``args`` is a tuple of values (each argument by
    value when it is one, else its ``repr``)."""

    __slots__ = ()

    def __new__(cls, type_module, type_name, args, message, traceback):
        return tuple.__new__(cls, (type_module, type_name, tuple(args), message, traceback))

    type_module = property(lambda self: self[0], doc="The module of the exception's type (``builtins``).")
    type_name = property(lambda self: self[1], doc="The qualified name of the exception's type (``ValueError``).")
    args = property(lambda self: self[2], doc="The exception's args, by value or as their repr.")
    message = property(lambda self: self[3], doc="``str(exception)``.")
    traceback = property(lambda self: self[4], doc="The formatted traceback, empty for farcall's own errors.")

    def __repr__(self):
        return "ExceptionData(%r, %r, %r, %r, <traceback of %d chars>)" % (
            self[0],
            self[1],
            self[2],
            self[3],
            len(self[4]),
        )


class ListValue(tuple):
    """The boxed form of a list *copy* (ext 6): a tuple of boxed items.
    Received, it becomes a new ``list``."""

    __slots__ = ()

    def __repr__(self):
        return "ListValue(%s)" % tuple.__repr__(self)


class DictValue(tuple):
    """The boxed form of a dict *copy* (ext 7): a tuple of ``(key, value)``
    pairs of boxed values. Received, it becomes a new ``dict``."""

    __slots__ = ()

    def __repr__(self):
        return "DictValue(%s)" % tuple.__repr__(self)


class SetValue(tuple):
    """The boxed form of a set *copy* (ext 8): a tuple of boxed items.
    Received, it becomes a new ``set``."""

    __slots__ = ()

    def __repr__(self):
        return "SetValue(%s)" % tuple.__repr__(self)


# ----------------------------------------------------------------- values


def lossy(text):
    """``text`` as a string that encodes as UTF-8: lone surrogates (and the
    bytes they would encode to) become U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def int_to_bytes(value):
    """An ``int`` as little-endian two's complement bytes, with room for the
    sign (how integers outside the 64-bit range travel)."""
    return value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)


def int_from_bytes(data):
    """The ``int`` of little-endian two's complement bytes."""
    return int.from_bytes(data, "little", signed=True)


_SIMPLE = frozenset((type(None), bool, int, float, complex, bytes))

# Types received as themselves (``str`` included: it arrives as valid UTF-8).
_RECEIVED_AS_IS = _SIMPLE | {str}


def scalar(obj):
    """``obj`` itself when it is exactly one of the simple types that travel
    by value (``None``, ``bool``, ``int``, ``float``, ``complex``, ``bytes``,
    and ``str`` that encodes as UTF-8), else :data:`NOT_A_VALUE`. Containers
    are never scalars."""
    t = type(obj)
    if t in _SIMPLE:
        return obj
    if t is str:
        if obj.isascii():
            return obj
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return NOT_A_VALUE
        return obj
    return NOT_A_VALUE


def plain(obj, depth=0):
    """``obj`` entirely by value (a scalar, or an exact tuple or frozenset of
    such values, at most :data:`MAX_DEPTH` levels deep counting from
    ``depth``), else :data:`NOT_A_VALUE`. Never touches an object table."""
    v = scalar(obj)
    if v is not NOT_A_VALUE:
        return v
    if depth >= MAX_DEPTH:
        return NOT_A_VALUE
    t = type(obj)
    if t is tuple or t is frozenset:
        items = []
        for item in obj:
            v = plain(item, depth + 1)
            if v is NOT_A_VALUE:
                return NOT_A_VALUE
            items.append(v)
        return tuple(items) if t is tuple else obj
    return NOT_A_VALUE


def type_name(obj):
    """``module.qualname`` of ``obj``'s type (``builtins`` and ``?`` when the
    type does not say)."""
    t = type(obj)
    try:
        module = t.__module__
        qualname = t.__qualname__
    except Exception:
        pass
    else:
        # The common case, without the checks below.
        if type(module) is str and type(qualname) is str and module.isascii() and qualname.isascii():
            return module + "." + qualname
    module = _str_attr(t, "__module__")
    qualname = _str_attr(t, "__qualname__")
    return "%s.%s" % ("builtins" if module is None else module, "?" if qualname is None else qualname)


def _str_attr(obj, name):
    """``obj.name`` as a UTF-8-safe string, or ``None`` when it is missing or
    not a string."""
    try:
        v = getattr(obj, name)
    except Exception:
        return None
    return lossy(v) if isinstance(v, str) else None


# ----------------------------------------------------------------- module hints

_module_dict = types.ModuleType.__dict__["__dict__"].__get__
_ModuleType = types.ModuleType


def _is_module(obj):
    return issubclass(type(obj), types.ModuleType)


def _module_name(module):
    """A module's ``__name__`` from its namespace (as ``PyModule_GetNameObject``
    reads it), or ``None``."""
    name = _module_dict(module).get("__name__")
    return name if isinstance(name, str) else None


def describe_namespace(namespace):
    """The :class:`LazyAttr` hints of a module namespace: its attributes that
    hold a module, a class or another callable."""
    attrs = []
    # A snapshot: reading a submodule's name must not see the namespace change.
    for name, value in list(namespace.items()):
        if not isinstance(name, str):
            continue
        name = str.__str__(name)
        if scalar(name) is NOT_A_VALUE:
            continue
        if _is_module(value):
            full = _module_name(value)
            if full is None:
                continue
            attrs.append(LazyAttr(name, LAZY_MODULE, lossy(full)))
        elif issubclass(type(value), type):
            attrs.append(LazyAttr(name, LAZY_CLASS))
        elif callable(value):
            attrs.append(LazyAttr(name, LAZY_CALLABLE))
    return tuple(attrs)


class _ModuleHints:
    """Module attribute hints, computed once per module object and again when
    its namespace grows or shrinks (as when a submodule is imported)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._cache = {}  # module name -> (module, namespace size, attrs)

    def get(self, module):
        namespace = _module_dict(module)
        size = len(namespace)
        name = _module_name(module)
        if name is not None:
            with self._lock:
                cached = self._cache.get(name)
            if cached is not None and cached[0] is module and cached[1] == size:
                return cached[2]
        attrs = describe_namespace(namespace)
        if name is not None:
            with self._lock:
                replaced = self._cache.get(name)
                self._cache[name] = (module, size, attrs)
            # The replaced module (if any) is dropped here, outside the lock.
            del replaced
        return attrs


#: Shared by every session of the process: hints depend only on the module.
_HINTS = _ModuleHints()


# ----------------------------------------------------------------- exceptions

_C_HEADER = "Traceback (most recent call last):\n  [farcall server] raised by C code called directly (no Python frames)\n"

# Calls go through a one-line function whose globals are the session's
# namespace, so that what looks at its caller's frame (``exec``, ``eval``,
# ``globals()``, ``dir()``) sees that namespace, never farcall's own.
_CALL_FILENAME = "<farcall call>"
_CALL_CODE = compile(
    "def __farcall_call__(function, args, kwargs):\n    return function(*args, **kwargs)\n",
    _CALL_FILENAME,
    "exec",
)


def _is_internal(frame):
    return frame.f_globals.get("__farcall_internal__") is True or frame.f_code.co_filename == _CALL_FILENAME


def _user_frames(tb):
    """The part of ``tb`` after its first run of frames of farcall's own code
    (and of whatever host called it, before them): the frames of the code
    the client ran (farcall's frames among them, those of a
    :class:`PeerObject` the code used, are left out when formatting)."""
    start = tb
    # The host's frames (when it is Python), then farcall's: both go.
    while start is not None and not _is_internal(start.tb_frame):
        start = start.tb_next
    if start is None:
        return tb
    while start is not None and _is_internal(start.tb_frame):
        start = start.tb_next
    return start


def _format_user_traceback(t, exc, tb):
    """The formatted traceback of ``exc`` from ``tb`` on, without the frames
    of farcall's own code."""
    internal = set()
    walk = tb
    while walk is not None:
        if _is_internal(walk.tb_frame):
            code = walk.tb_frame.f_code
            internal.add((code.co_filename, walk.tb_lineno, code.co_name))
        walk = walk.tb_next
    if not internal:
        return "".join(traceback.format_exception(t, exc, tb))
    te = traceback.TracebackException(t, exc, tb)
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if (f.filename, f.lineno, f.name) not in internal])
    return "".join(te.format())


def describe(exc):
    """Describes an exception as :class:`ExceptionData`.

    The traceback shows only the frames of the code the client ran (farcall's
    own leading frames are cut). When there is none, because the exception
    was raised by C code called directly (``math.sqrt(-1)``), the traceback
    starts with a header saying so. farcall's own errors
    (:class:`FarcallError`) have no traceback.
    """
    t = type(exc)
    module = _str_attr(t, "__module__")
    name = _str_attr(t, "__qualname__")
    module = "builtins" if module is None else module
    name = "BaseException" if name is None else name
    origin = getattr(exc, "_farcall_origin", None) if isinstance(exc, RemoteError) else None
    if type(origin) is tuple and len(origin) == 2 and all(isinstance(o, str) for o in origin):
        module, name = origin
    args = []
    raw_args = getattr(exc, "args", ())
    if isinstance(raw_args, tuple):
        for a in raw_args:
            v = plain(a)
            if v is NOT_A_VALUE:
                try:
                    v = lossy(repr(a))
                except BaseException:
                    v = ""
            args.append(v)
    try:
        message = lossy(str(exc))
    except BaseException:
        message = "<unprintable %s object>" % name
    if isinstance(exc, FarcallError) and not isinstance(exc, RemoteError):
        return ExceptionData(module, name, args, message, "")
    tb = _user_frames(exc.__traceback__)
    try:
        text = _format_user_traceback(t, exc, tb)
    except BaseException:
        text = ""
    if tb is None:
        text = _C_HEADER + text
    return ExceptionData(module, name, args, message, lossy(text))


# ----------------------------------------------------------------- sessions


class Session:
    """The object table of one client session, and the requests performed on it.

    Objects that travel by reference are recorded here (:meth:`box`); each
    sending counts once, :meth:`release` gives counts back, and an object is
    dropped when its count reaches zero. Ids start at 1, grow by one for each
    new object and are never reused.
    """

    def __init__(self, peer=None):
        #: The other side of the connection, through which :class:`PeerObject`
        #: makes its requests: an object with ``request(op, *fields)`` and
        #: ``release(ref_id, count)`` (see the module's docs), or ``None``
        #: when this host cannot call back (a :class:`Ref` received is then
        #: a :class:`ProtocolError`). A host may set it at any time.
        self.peer = peer
        # The peer's objects we hold a PeerObject for: id -> [weakref, receptions].
        self._peers = {}
        # Reentrant: a PeerObject's weakref callback may run, through the
        # garbage collector, on a thread already holding it.
        self._peer_lock = threading.RLock()
        self._weak_self = weakref.ref(self)
        self._lock = threading.Lock()
        self._objects = {}  # id -> [object, count, key]
        self._by_key = {}  # id(object) -> id, for objects in the table
        self._last_id = 0
        #: The session's namespace: the globals that code called by the
        #: client sees as its caller's (``exec(code)`` without a namespace,
        #: ``globals()``).
        self.namespace = {"__name__": "__farcall_session__", "__builtins__": builtins}
        exec(_CALL_CODE, self.namespace)
        self._call = self.namespace.pop("__farcall_call__")

    # -- the table

    def export(self, obj):
        """Records one more sending of ``obj`` and describes it as a :class:`Ref`."""
        t = type(obj)
        bits = CALLABLE if callable(obj) else 0
        attrs = ()
        if issubclass(t, _ModuleType):
            bits |= MODULE
            attrs = _HINTS.get(obj)
        if issubclass(t, type):
            bits |= CLASS
        elif getattr(t, "__next__", None) is not None:
            bits |= ITERATOR
        name = type_name(obj)
        key = id(obj)
        with self._lock:
            found = self._by_key.get(key)
            if found is not None:
                self._objects[found][1] += 1
                ref_id = found
            else:
                self._last_id += 1
                ref_id = self._last_id
                self._by_key[key] = ref_id
                self._objects[ref_id] = [obj, 1, key]
        return Ref(ref_id, name, bits, attrs)

    def lookup(self, ref_id):
        """The object ``ref_id`` of the table; :class:`ProtocolError` when it
        was released or never existed."""
        # A single dict read is atomic (the table is only changed under the
        # lock, and an entry's object never changes), so no lock is taken.
        entry = self._objects.get(ref_id)
        if entry is None:
            raise ProtocolError(
                "reference %d is not (or no longer) valid in this session: the object was released or never existed" % ref_id
            )
        return entry[0]

    def release(self, releases):
        """Gives back counts: ``releases`` is an iterable of ``(id, count)``.
        Unknown ids and excess counts are ignored."""
        dropped = []
        with self._lock:
            for ref_id, count in releases:
                entry = self._objects.get(ref_id)
                if entry is None:
                    continue
                entry[1] -= count
                if entry[1] <= 0:
                    del self._objects[ref_id]
                    del self._by_key[entry[2]]
                    dropped.append(entry[0])
        # Finalizers run here, outside the lock.
        del dropped

    def stats(self):
        """``(live objects, objects ever exported)``."""
        with self._lock:
            return (len(self._objects), self._last_id)

    def peer_objects(self):
        """How many objects of the peer this session holds a live
        :class:`PeerObject` for."""
        with self._peer_lock:
            return sum(1 for entry in self._peers.values() if entry[0]() is not None)

    def close(self):
        """Drops every object of the table and the namespace, and forgets
        the peer (the session is over: releases of the peer's objects are no
        longer sent)."""
        self.peer = None
        with self._peer_lock:
            self._peers = {}
        with self._lock:
            objects = self._objects
            self._objects = {}
            self._by_key = {}
        objects.clear()
        self.namespace.clear()

    # -- conversions

    def box(self, obj, depth=0):
        """A Python result as a boxed value: itself for the exact simple
        types, tuples of boxed values, frozensets of values; a :class:`Ref`
        (recorded in the table) for everything else."""
        if type(obj) in _SIMPLE:
            return obj
        v = scalar(obj)
        if v is not NOT_A_VALUE:
            return v
        t = type(obj)
        if depth < MAX_DEPTH:
            if t is tuple:
                if len(obj) > 8 and set(map(type, obj)) <= _SIMPLE:
                    return obj  # a long tuple of plain scalars (a batch of items), checked in C
                return tuple([self.box(item, depth + 1) for item in obj])
            if t is frozenset:
                v = plain(obj, depth)
                if v is not NOT_A_VALUE:
                    return v
        if t is slice:
            if plain(obj.start) is not NOT_A_VALUE and plain(obj.stop) is not NOT_A_VALUE and plain(obj.step) is not NOT_A_VALUE:
                return obj
        elif obj is Ellipsis:
            return obj
        elif isinstance(obj, ProxyBase):
            home = obj._farcall_home(self)
            if home is not None:
                return home
        return self.export(obj)

    def unbox(self, value, depth=0):
        """A received value as a Python object: :class:`Target` resolves to
        this session's object; a :class:`Ref` (an object of the peer) becomes
        its :class:`PeerObject` (a :class:`ProtocolError` when there is no
        :attr:`peer`); copies (:class:`ListValue`, :class:`DictValue`,
        :class:`SetValue`) become new lists, dicts and sets; slices and
        ``Ellipsis`` are themselves; :class:`ProxyBase` instances (proxies a
        host made itself) pass through unchanged."""
        t = type(value)
        if t in _RECEIVED_AS_IS:
            return value
        if depth >= MAX_INPUT_DEPTH:
            raise ProtocolError("values nested deeper than %d levels" % MAX_INPUT_DEPTH)
        if t is tuple:
            if len(value) > 8 and set(map(type, value)) <= _RECEIVED_AS_IS:
                return value
            return tuple([self.unbox(item, depth + 1) for item in value])
        if t is Target:
            return self.resolve(value)
        if t is Ref:
            if self.peer is None:
                raise ProtocolError("passing local objects by reference is not supported yet (got a reference to a %s)" % value.type_name)
            return self._peer_object(value)
        if t is frozenset:
            return frozenset([self.unbox(item, depth + 1) for item in value])
        if t is ListValue:
            if set(map(type, value)) <= _RECEIVED_AS_IS:
                return list(value)
            return [self.unbox(item, depth + 1) for item in value]
        if t is DictValue:
            d = {}
            for pair in value:
                if type(pair) is not tuple or len(pair) != 2:
                    raise ProtocolError("a dict copy holds something that is not a (key, value) pair")
                key = self.unbox(pair[0], depth + 1)
                try:
                    d[key] = self.unbox(pair[1], depth + 1)
                except TypeError:
                    raise ProtocolError("a dict copy has an unhashable key (a %s)" % type_name(key)) from None
            return d
        if t is SetValue:
            try:
                return set([self.unbox(item, depth + 1) for item in value])
            except TypeError:
                raise ProtocolError("a set copy holds an unhashable item") from None
        if t is slice:
            return slice(self.unbox(value.start, depth + 1), self.unbox(value.stop, depth + 1), self.unbox(value.step, depth + 1))
        if value is Ellipsis:
            return value
        if isinstance(value, ProxyBase):
            return value
        raise ProtocolError("cannot receive a value of type %s" % type_name(value))

    def _peer_object(self, ref):
        """The :class:`PeerObject` for a :class:`Ref` received from the peer:
        the live one for its id, else a new one; counts the reception."""
        ref_id = ref.id
        with self._peer_lock:
            entry = self._peers.get(ref_id)
            if entry is not None:
                obj = entry[0]()
                if obj is not None:
                    entry[1] += 1
                    return obj
            obj = peer_object_class(ref.flags)(self, ref)
            entry = [None, 1]
            entry[0] = weakref.ref(obj, functools.partial(_peer_object_gone, self._weak_self, ref_id, entry))
            self._peers[ref_id] = entry
            return obj

    def resolve(self, target):
        """The object a :class:`Target` designates: the table's entry, then
        each attribute of its path."""
        entry = self._objects.get(target.id)
        obj = self.lookup(target.id) if entry is None else entry[0]
        for name in target.path:
            obj = getattr(obj, name)
        return obj

    # -- requests

    def get_module(self, name):
        """``importlib.import_module(name)``, answered from ``sys.modules``
        when the module is there; the module by reference, with hints."""
        module = sys.modules.get(name)
        if module is None:
            module = importlib.import_module(name)
        return self.box(module)

    def get_attr(self, target, name):
        """``getattr(target, name)``, boxed."""
        return self.box(getattr(self.resolve(target), name))

    def set_attr(self, target, name, value):
        """``setattr(target, name, value)``; ``None``."""
        obj = self.resolve(target)
        setattr(obj, name, self.unbox(value))
        return None

    def del_attr(self, target, name):
        """``delattr(target, name)``; ``None``."""
        delattr(self.resolve(target), name)
        return None

    def call(self, target, args=(), kwargs=()):
        """``target(*args, **kwargs)``, boxed. ``kwargs`` is a mapping or a
        sequence of ``(name, value)`` pairs (a later duplicate name wins)."""
        function = self.resolve(target)
        for a in args:
            if type(a) not in _RECEIVED_AS_IS:
                args = [self.unbox(a) for a in args]
                break
        kw = {}
        if kwargs:
            items = kwargs.items() if isinstance(kwargs, dict) else kwargs
            for name, value in items:
                kw[name] = self.unbox(value)
        return self.box(self._call(function, args, kw))

    def get_repr(self, target):
        """``repr(target)`` as a ``str`` value."""
        return lossy(repr(self.resolve(target)))

    def get_str(self, target):
        """``str(target)`` as a ``str`` value."""
        return lossy(str(self.resolve(target)))

    def builtin(self, name, args=()):
        """Performs ``BUILTINS[name]`` on the unboxed ``args`` and returns its
        boxed result (``obtain`` returns the copy's boxed form itself).
        An unknown name is a :class:`ProtocolError`."""
        function = BUILTINS.get(name) if type(name) is str else None
        if function is None:
            raise ProtocolError("unknown builtin operation %r (see farcall_semantics.BUILTINS)" % (name,))
        if type(args) is not tuple and type(args) is not list:
            raise ProtocolError("the arguments of builtin %r are not an array" % name)
        for a in args:
            if type(a) not in _RECEIVED_AS_IS:
                args = [self.unbox(a) for a in args]
                break
        result = function(self, *args)
        if name in _BOXED_RESULTS:
            return result
        return self.box(result)

    def handle(self, op, *fields):
        """Performs request ``op`` (an operation code: :data:`GET_MODULE`,
        ...) with its fields in wire order, and returns the boxed result.

        Raises what the operation raised (describe it with :func:`describe`),
        or :class:`ProtocolError` for an unknown operation or wrong fields.
        """
        method = _OPERATIONS.get(op)
        if method is None:
            raise ProtocolError("unknown operation %r" % (op,))
        if len(fields) != _ARITY[op]:
            raise ProtocolError("%s takes %d fields, got %d" % (OP_NAMES[op], _ARITY[op], len(fields)))
        return method(self, *fields)


_OPERATIONS = {
    GET_MODULE: Session.get_module,
    GET_ATTR: Session.get_attr,
    SET_ATTR: Session.set_attr,
    DEL_ATTR: Session.del_attr,
    CALL: Session.call,
    REPR: Session.get_repr,
    STR: Session.get_str,
    STATS: Session.stats,
    BUILTIN: Session.builtin,
}

_ARITY = {GET_MODULE: 1, GET_ATTR: 2, SET_ATTR: 3, DEL_ATTR: 2, CALL: 3, REPR: 1, STR: 1, STATS: 0, BUILTIN: 2}


def _peer_object_gone(session_ref, ref_id, entry, _weak):
    """Weakref callback of a :class:`PeerObject`: gives the receptions of its
    id back to the peer. Never raises; does nothing once the session or its
    peer is gone."""
    try:
        session = session_ref()
        if session is None:
            return
        with session._peer_lock:
            count = entry[1]
            entry[1] = 0
            if session._peers.get(ref_id) is entry:
                del session._peers[ref_id]
        peer = session.peer
        if peer is not None and count > 0:
            peer.release(ref_id, count)
    except BaseException:
        pass



# ----------------------------------------------------------------- copies


class _CopyFailure(Exception):
    """Internal: why a value cannot be copied, and where (path segments,
    innermost first)."""

    def __init__(self, reason):
        Exception.__init__(self, reason)
        self.reason = reason
        self.segments = []


def _segment_of_key(key):
    try:
        return "[%s]" % lossy(repr(key))
    except BaseException:
        return "[<%s>]" % type_name(key)


def copy_value(obj, what="obtain"):
    """``obj`` as a *copy*, in boxed form: scalars as themselves, tuples and
    frozensets of copies, lists as :class:`ListValue`, dicts as
    :class:`DictValue`, sets as :class:`SetValue`, nested at most
    :data:`MAX_DEPTH` levels. Subclasses of ``list``, ``dict``, ``set``,
    ``tuple``, ``frozenset`` and of the scalar types are copied as their base
    type. Anything else is a ``TypeError`` naming its type and where it sits
    (``obtain: cannot copy a socket.socket at [3]['k']``); ``what`` starts the
    message. Never touches an object table."""
    try:
        return _copy(obj, 0)
    except _CopyFailure as failure:
        where = "".join(reversed(failure.segments))
        raise TypeError("%s: %s%s" % (what, failure.reason, " at " + where if where else "")) from None


_SIMPLE_BASES = (bool, int, float, complex, bytes, str)


def _copy(obj, depth):
    t = type(obj)
    if t in _SIMPLE:
        return obj
    if t is str:
        if scalar(obj) is NOT_A_VALUE:
            raise _CopyFailure("cannot copy a str that is not valid UTF-8 (it holds lone surrogates)")
        return obj
    if obj is Ellipsis:
        return obj
    if depth >= MAX_DEPTH:
        raise _CopyFailure("cannot copy values nested deeper than %d levels" % MAX_DEPTH)
    if t is slice:
        try:
            return slice(_copy(obj.start, depth + 1), _copy(obj.stop, depth + 1), _copy(obj.step, depth + 1))
        except _CopyFailure as failure:
            failure.segments.append(".slice")
            raise
    if t is list or t is tuple:
        items = obj
    elif isinstance(obj, (list, tuple)):
        items = list(obj)
    elif isinstance(obj, dict):
        return _copy_dict(obj, depth)
    elif isinstance(obj, (set, frozenset)):
        items = list(obj)
        if set(map(type, items)) <= _SIMPLE:
            copied = items
        else:
            copied = []
            for item in items:
                try:
                    v = _copy(item, depth + 1)
                    if type(v) in (ListValue, DictValue, SetValue):
                        raise _CopyFailure("cannot copy a %s inside a set" % type_name(item))
                except _CopyFailure as failure:
                    failure.segments.append("{%s}" % _segment_of_key(item)[1:-1])
                    raise
                copied.append(v)
        if isinstance(obj, frozenset):
            return frozenset(copied)
        return SetValue(copied)
    elif isinstance(obj, _SIMPLE_BASES):
        return _copy_scalar_subclass(obj)
    else:
        raise _CopyFailure("cannot copy a %s" % type_name(obj))
    # A list or a tuple: the common case of plain items is done in C.
    if set(map(type, items)) <= _SIMPLE:
        copied = tuple(items)
    else:
        copied = []
        append = copied.append
        for i, item in enumerate(items):
            if type(item) in _SIMPLE:
                append(item)
                continue
            try:
                append(_copy(item, depth + 1))
            except _CopyFailure as failure:
                failure.segments.append("[%d]" % i)
                raise
    if t is tuple or (t is not list and isinstance(obj, tuple)):
        return tuple(copied)
    return ListValue(copied)


def _copy_dict(obj, depth):
    pairs = []
    append = pairs.append
    for key, value in list(obj.items()):
        try:
            k = _copy(key, depth + 1)
        except _CopyFailure as failure:
            failure.segments.append(" (a dict key)")
            raise
        if type(value) in _SIMPLE:
            append((k, value))
            continue
        try:
            append((k, _copy(value, depth + 1)))
        except _CopyFailure as failure:
            failure.segments.append(_segment_of_key(key))
            raise
    return DictValue(pairs)


def _copy_scalar_subclass(obj):
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int.__index__(obj)
    if isinstance(obj, float):
        return float.__float__(obj)
    if isinstance(obj, complex):
        return complex(float.__float__(obj.real), float.__float__(obj.imag))
    if isinstance(obj, bytes):
        return bytes(obj)
    v = str.__str__(obj)
    if scalar(v) is NOT_A_VALUE:
        raise _CopyFailure("cannot copy a str that is not valid UTF-8 (it holds lone surrogates)")
    return v


# ----------------------------------------------------------------- builtins


def _named(function, name):
    """``function`` renamed ``name`` (code object included: what an arity
    error names on every Python version)."""
    function.__code__ = function.__code__.replace(co_name=name)
    function.__name__ = function.__qualname__ = name
    return function


# The operands of the binary operation this thread performs for the peer
# (see _binary_entry and ProxyBase._farcall_declines).
_operands = threading.local()


def _binary_entry(name, function):
    """A :data:`BUILTINS` entry for a binary operator: while it runs, a proxy
    among its operands declines (``NotImplemented``) to send the same
    operation back to the peer, which would send it here again forever
    (``my_list == peer_list``: each side's list declines, and each side's
    proxy would reflect the comparison to the other)."""

    def entry(session, a, b):
        saved = getattr(_operands, "pair", None)
        _operands.pair = (a, b)
        try:
            return function(a, b)
        finally:
            _operands.pair = saved

    return _named(entry, name)


def _declines(proxy, other):
    """Whether ``proxy`` must decline an operation with ``other``: this
    thread is performing that very operation for the peer."""
    pair = getattr(_operands, "pair", None)
    if pair is None:
        return False
    a, b = pair
    return (a is proxy and b is other) or (a is other and b is proxy)


def _plain_function(name, function):
    """A :data:`BUILTINS` entry for a function that needs no session."""

    def entry(session, *args):
        return function(*args)

    return _named(entry, name)


def _exception_type(module, name):
    """The exception class ``module.name`` when it is a ``BaseException``
    subclass already imported here, else :class:`RemoteError`."""
    obj = sys.modules.get(module) if isinstance(module, str) else None
    if obj is not None and isinstance(name, str):
        for part in name.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, type) and issubclass(obj, BaseException):
            return obj
    return RemoteError


def _builtin_exit(session, o, exc_module=None, exc_name=None, message=None):
    if exc_name is None:
        return type(o).__exit__(o, None, None, None)
    et = _exception_type(exc_module, exc_name)
    text = "" if message is None else str(message)
    try:
        ev = et(text)
    except Exception:
        try:
            ev = et.__new__(et)
            ev.args = (text,)
        except Exception:
            et, ev = RemoteError, RemoteError(text)
    if et is RemoteError:
        ev.remote_type = "%s.%s" % (exc_module, exc_name)
        ev._farcall_origin = (str(exc_module), str(exc_name))
    return type(o).__exit__(o, et, ev, None)


def _builtin_enter(session, o):
    return type(o).__enter__(o)


def _builtin_obtain(session, o):
    return copy_value(o, "obtain")


def _builtin_deliver(session, value):
    return value


def _builtin_namespace(session):
    return session.namespace


def _builtin_stats(session):
    return session.stats()


# Iterators over containers: what they hand out does not change when they
# advance, so a batch may read ahead freely.
_CONTAINER_ITERATORS = frozenset(
    type(iter(x))
    for x in ([], (), range(1), range(1 << 70), "", b"", bytearray(), {}, {}.values(), {}.items(), set(), reversed([]))
)


def _by_value(item):
    return type(item) in _RECEIVED_AS_IS or plain(item) is not NOT_A_VALUE


def _builtin_iterate(session, o, count):
    """Up to ``count`` items of ``iter(o)`` and the iterator (None when it
    ran out). Reading ahead must not change what the client sees: an
    iterator over a container reads ahead freely, and so does any iterator
    while its items travel by value; after an item that travels by reference
    (a ``groupby`` group, a reused row buffer) the batch ends, because
    advancing further could change that item before the client uses it."""
    if type(count) is not int or count < 0:
        raise TypeError("iterate: the count must be an int >= 0, got %r" % (count,))
    it = iter(o)
    if type(it) in _CONTAINER_ITERATORS:
        items = tuple(itertools.islice(it, count))
        return (items, None if len(items) < count else it)
    items = []
    for item in it:
        items.append(item)
        if len(items) >= count or not _by_value(item):
            return (tuple(items), it)
    return (tuple(items), None)


def _builtin_dir(session, o):
    return tuple(lossy(name) if isinstance(name, str) else lossy(str(name)) for name in dir(o))


def _builtin_eval(session, code):
    return eval(code, session.namespace)


def _builtin_execute(session, code):
    exec(code, session.namespace)
    return None


def _builtin_teleport(session, kind, payload):
    if kind == "pickle":
        return _teleport_pickle(payload)
    if kind == "source":
        return _teleport_source(payload)
    raise TeleportError("unknown teleport kind %r (expected 'pickle' or 'source')" % (kind,))


_OPERATORS = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "matmul": operator.matmul,
    "truediv": operator.truediv,
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "pow": operator.pow,
    "lshift": operator.lshift,
    "rshift": operator.rshift,
    "and": operator.and_,
    "or": operator.or_,
    "xor": operator.xor,
    "iadd": operator.iadd,
    "isub": operator.isub,
    "imul": operator.imul,
    "imatmul": operator.imatmul,
    "itruediv": operator.itruediv,
    "ifloordiv": operator.ifloordiv,
    "imod": operator.imod,
    "ipow": operator.ipow,
    "ilshift": operator.ilshift,
    "irshift": operator.irshift,
    "iand": operator.iand,
    "ior": operator.ior,
    "ixor": operator.ixor,
    "lt": operator.lt,
    "le": operator.le,
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "neg": operator.neg,
    "pos": operator.pos,
    "abs": operator.abs,
    "invert": operator.invert,
    "index": operator.index,
    "getitem": operator.getitem,
    "setitem": operator.setitem,
    "delitem": operator.delitem,
    "contains": operator.contains,
    "truth": operator.truth,
    "len": len,
    "hash": hash,
    "iter": iter,
    "next": next,
    "reversed": reversed,
    "callable": callable,
    "int": int,
    "float": float,
    "complex": complex,
    "divmod": divmod,
    "round": round,
    "format": format,
    "pow3": pow,
    "type": type,
    "isinstance": isinstance,
    "issubclass": issubclass,
}

_BINARY = frozenset(
    "add sub mul matmul truediv floordiv mod pow lshift rshift and or xor "
    "iadd isub imul imatmul itruediv ifloordiv imod ipow ilshift irshift iand ior ixor "
    "lt le eq ne gt ge divmod".split()
)

#: The operations of ``Builtin(name, args)`` (see PROTOCOL.md): name → a
#: function called as ``function(session, *args)`` with the unboxed args,
#: returning a Python result that :meth:`Session.builtin` boxes (``obtain``
#: returns the boxed copy itself).
BUILTINS = {name: (_binary_entry if name in _BINARY else _plain_function)(name, function) for name, function in _OPERATORS.items()}
_SESSION_BUILTINS = {
    "dir": _builtin_dir,
    "enter": _builtin_enter,
    "exit": _builtin_exit,
    "iterate": _builtin_iterate,
    "obtain": _builtin_obtain,
    "deliver": _builtin_deliver,
    "eval": _builtin_eval,
    "execute": _builtin_execute,
    "namespace": _builtin_namespace,
    "teleport": _builtin_teleport,
    "stats": _builtin_stats,
}
for _name, _function in _SESSION_BUILTINS.items():
    BUILTINS[_name] = _named(_function, _name)
del _OPERATORS, _SESSION_BUILTINS, _name, _function

# Builtins whose function returns a boxed value already.
_BOXED_RESULTS = frozenset(["obtain"])


# ----------------------------------------------------------------- the peer's exceptions

_remote_classes = {}
_remote_classes_lock = threading.Lock()


def _remote_builtin_class(base):
    """A subclass of the builtin exception ``base``, with the same name, whose
    ``str()`` ends with the peer's traceback."""
    cls = _remote_classes.get(base)
    if cls is None:

        def __str__(self):
            return _with_traceback(base.__str__(self), getattr(self, "remote_traceback", ""))

        namespace = {
            "__module__": "builtins",
            "__qualname__": base.__qualname__,
            "__str__": __str__,
            "__doc__": base.__doc__,
            "remote_type": "builtins." + base.__qualname__,
            "remote_traceback": "",
        }
        try:
            cls = type(base.__name__, (base,), namespace)
        except TypeError:
            cls = base
        with _remote_classes_lock:
            cls = _remote_classes.setdefault(base, cls)
    return cls


_FARCALL_CLASSES = {
    "FarcallError": FarcallError,
    "ProtocolError": ProtocolError,
    "InternalError": InternalError,
    "TeleportError": TeleportError,
}


def remote_exception(data):
    """The local exception for an :class:`ExceptionData` received from the
    peer, with the peer's traceback at the end of its ``str()``:

    - a builtin exception type (``data.type_module == "builtins"``, an
      ``Exception`` subclass) as a subclass of that type with the same name
      and the same args (``except ValueError`` catches it);
    - farcall's own errors as themselves (:class:`ProtocolError`, ...);
    - anything else as :class:`RemoteError` (``remote_type`` names the
      peer's type).

    ``SystemExit``, ``KeyboardInterrupt`` and other ``BaseException`` that
    are not ``Exception`` become :class:`RemoteError` too: the peer's exit
    must not end this process."""
    module, name, args, message, text = tuple(data)[:5]
    args = tuple(args) if isinstance(args, (tuple, list)) else ()
    message = message if isinstance(message, str) else str(message)
    text = text if isinstance(text, str) else ""
    if module == "builtins" and isinstance(name, str):
        base = getattr(builtins, name, None)
        if isinstance(base, type) and issubclass(base, Exception):
            cls = _remote_builtin_class(base)
            exc = None
            for attempt in (args, (message,)):
                try:
                    exc = cls(*attempt)
                    break
                except Exception:
                    continue
            if exc is None:
                # A constructor that wants more (UnicodeDecodeError): the args
                # alone, without running __init__.
                try:
                    exc = cls.__new__(cls, *args)
                except Exception:
                    pass
            if exc is not None:
                if cls is base:
                    # No subclass could be made: the traceback goes into the args.
                    if text:
                        try:
                            exc = base(_with_traceback(message, text))
                        except Exception:
                            pass
                    return exc
                exc.remote_traceback = text
                return exc
    if module == "farcall" and name in _FARCALL_CLASSES:
        return _FARCALL_CLASSES[name](_with_traceback(message, text))
    exc = RemoteError(message)
    exc.remote_type = "%s.%s" % (module, name)
    exc.remote_message = message
    exc.remote_traceback = text
    if isinstance(module, str) and isinstance(name, str):
        exc._farcall_origin = (module, name)
    return exc


def raise_remote(data):
    """Raises :func:`remote_exception` of ``data`` (so ``raise
    raise_remote(data)`` reads well and works too)."""
    raise remote_exception(data)


# ----------------------------------------------------------------- proxies


def _iterate_batches(items, rest):
    """Yields ``items``, then the batches of growing size that ``iterate``
    requests on ``rest`` (the remote iterator) return."""
    count = ITERATE_FIRST
    while True:
        yield from items
        if rest is None:
            return
        count = min(count * 4, ITERATE_MAX)
        items, rest = rest._farcall_builtin("iterate", rest, count)


class ProxyBase:
    """Every special method of a proxy, written once in terms of the
    primitives a subclass provides:

    - ``_farcall_builtin(name, *args)``: ``Builtin(name, args)`` on the
      owner, the proxy itself among ``args`` where it is an operand;
    - ``_farcall_getattr(name)``, ``_farcall_setattr(name, value)``,
      ``_farcall_delattr(name)``;
    - ``_farcall_call(args, kwargs)`` (``args`` a tuple, ``kwargs`` a dict),
      which ``__call__`` uses: ``ProxyBase`` has no ``__call__``, so that
      ``callable(proxy)`` is honest; a subclass for proxies of callables
      adds it (:class:`CallableProxyBase`, or its own);
    - ``_farcall_repr()`` and ``_farcall_str()``;
    - optionally ``_farcall_home(session)``: the boxed form of this proxy
      when ``session`` sends it back to its owner (a :class:`Target`), or
      ``None`` when ``session`` is not the proxy's connection.

    Attributes whose name starts with ``_farcall`` are the proxy's own (a
    subclass keeps its state in ``__slots__`` named so); every other
    attribute is the remote object's.
    """

    __slots__ = ()

    def _farcall_home(self, session):
        return None

    # -- attributes, calls, text

    def __getattr__(self, name):
        if name.startswith("_farcall"):
            raise AttributeError(name)
        return self._farcall_getattr(name)

    def __setattr__(self, name, value):
        if name.startswith("_farcall"):
            object.__setattr__(self, name, value)
        else:
            self._farcall_setattr(name, value)

    def __delattr__(self, name):
        if name.startswith("_farcall"):
            object.__delattr__(self, name)
        else:
            self._farcall_delattr(name)

    def __repr__(self):
        return self._farcall_repr()

    def __str__(self):
        return self._farcall_str()

    def __format__(self, spec):
        return self._farcall_builtin("format", self, spec)

    def __dir__(self):
        return list(self._farcall_builtin("dir", self))

    def __reduce_ex__(self, protocol):
        raise TypeError("a farcall proxy cannot be pickled or copied; use farcall.obtain() for a local copy")

    # -- truth, size, hashing, conversions

    def __bool__(self):
        return self._farcall_builtin("truth", self)

    def __len__(self):
        return self._farcall_builtin("len", self)

    def __hash__(self):
        return self._farcall_builtin("hash", self)

    def __index__(self):
        return self._farcall_builtin("index", self)

    def __int__(self):
        return self._farcall_builtin("int", self)

    def __float__(self):
        return self._farcall_builtin("float", self)

    def __complex__(self):
        return self._farcall_builtin("complex", self)

    def __abs__(self):
        return self._farcall_builtin("abs", self)

    def __neg__(self):
        return self._farcall_builtin("neg", self)

    def __pos__(self):
        return self._farcall_builtin("pos", self)

    def __invert__(self):
        return self._farcall_builtin("invert", self)

    def __round__(self, ndigits=None):
        if ndigits is None:
            return self._farcall_builtin("round", self)
        return self._farcall_builtin("round", self, ndigits)

    # -- comparisons

    def __eq__(self, other):
        if _declines(self, other):
            return NotImplemented
        return self._farcall_builtin("eq", self, other)

    def __ne__(self, other):
        if _declines(self, other):
            return NotImplemented
        return self._farcall_builtin("ne", self, other)

    def __lt__(self, other):
        if _declines(self, other):
            return NotImplemented
        return self._farcall_builtin("lt", self, other)

    def __le__(self, other):
        if _declines(self, other):
            return NotImplemented
        return self._farcall_builtin("le", self, other)

    def __gt__(self, other):
        if _declines(self, other):
            return NotImplemented
        return self._farcall_builtin("gt", self, other)

    def __ge__(self, other):
        if _declines(self, other):
            return NotImplemented
        return self._farcall_builtin("ge", self, other)

    # -- arithmetic not generated below

    def __pow__(self, other, modulo=None):
        if modulo is None:
            if _declines(self, other):
                return NotImplemented
            return self._farcall_builtin("pow", self, other)
        return self._farcall_builtin("pow3", self, other, modulo)

    def __rpow__(self, other, modulo=None):
        if modulo is None:
            if _declines(self, other):
                return NotImplemented
            return self._farcall_builtin("pow", other, self)
        return self._farcall_builtin("pow3", other, self, modulo)

    def __ipow__(self, other):
        if _declines(self, other):
            return NotImplemented
        return self._farcall_builtin("ipow", self, other)

    def __divmod__(self, other):
        if _declines(self, other):
            return NotImplemented
        return self._farcall_builtin("divmod", self, other)

    def __rdivmod__(self, other):
        if _declines(self, other):
            return NotImplemented
        return self._farcall_builtin("divmod", other, self)

    # -- items, iteration

    def __getitem__(self, key):
        return self._farcall_builtin("getitem", self, key)

    def __setitem__(self, key, value):
        self._farcall_builtin("setitem", self, key, value)

    def __delitem__(self, key):
        self._farcall_builtin("delitem", self, key)

    def __contains__(self, item):
        return self._farcall_builtin("contains", self, item)

    def __iter__(self):
        # The first batch now, so that iter() of something not iterable fails here.
        items, rest = self._farcall_builtin("iterate", self, ITERATE_FIRST)
        return _iterate_batches(items, rest)

    def __reversed__(self):
        return self._farcall_builtin("reversed", self)

    # -- context managers, classes

    def __enter__(self):
        return self._farcall_builtin("enter", self)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            return self._farcall_builtin("exit", self, None, None, None)
        module = getattr(exc_type, "__module__", None)
        name = getattr(exc_type, "__qualname__", None)
        args = getattr(exc, "args", None)
        if type(args) is tuple and len(args) == 1 and type(args[0]) is str:
            message = args[0]  # rebuilds exactly: et(message)
        else:
            try:
                message = str(exc)
            except Exception:
                message = "<unprintable %s>" % name
        module = module if isinstance(module, str) else None
        name = name if isinstance(name, str) else "?"
        return self._farcall_builtin("exit", self, module, name, message)

    def __instancecheck__(self, instance):
        return self._farcall_builtin("isinstance", instance, self)

    def __subclasscheck__(self, subclass):
        return self._farcall_builtin("issubclass", subclass, self)


class IteratorProxyBase(ProxyBase):
    """:class:`ProxyBase` of an iterator (its :class:`Ref` has the
    :data:`ITERATOR` flag): ``next(proxy)`` takes one item."""

    __slots__ = ()

    def __next__(self):
        try:
            return self._farcall_builtin("next", self)
        except StopIteration as e:
            args = e.args if type(e.args) is tuple else ()
        raise StopIteration(*args)


class CallableProxyBase(ProxyBase):
    """:class:`ProxyBase` of a callable (a function, a class...): calling the
    proxy calls the object."""

    __slots__ = ()

    def __call__(self, *args, **kwargs):
        return self._farcall_call(args, kwargs)


def _binary_methods(name):
    def forward(self, other):
        if _declines(self, other):
            return NotImplemented
        return self._farcall_builtin(name, self, other)

    def reflected(self, other):
        if _declines(self, other):
            return NotImplemented
        return self._farcall_builtin(name, other, self)

    def inplace(self, other):
        if _declines(self, other):
            return NotImplemented
        return self._farcall_builtin("i" + name, self, other)

    for method, dunder in ((forward, "__%s__"), (reflected, "__r%s__"), (inplace, "__i%s__")):
        method.__name__ = dunder % name
        method.__qualname__ = "ProxyBase." + method.__name__
        setattr(ProxyBase, method.__name__, method)


for _name in ("add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "lshift", "rshift", "and", "or", "xor"):
    _binary_methods(_name)
del _name


class PeerObject(ProxyBase):
    """A stand-in for an object of the *peer* (the other side of the
    connection), made by :meth:`Session.unbox` from a :class:`Ref`: one per
    id at a time, each reception counted. Every operation is a request sent
    through ``session.peer``; when the last reference to it goes, the
    receptions are given back with ``session.peer.release(id, count)``."""

    __slots__ = ("_farcall_session", "_farcall_ref", "_farcall_target", "__weakref__")

    def __init__(self, session, ref):
        object.__setattr__(self, "_farcall_session", session)
        object.__setattr__(self, "_farcall_ref", ref)
        object.__setattr__(self, "_farcall_target", Target(ref.id))

    def _farcall_home(self, session):
        return self._farcall_target if session is self._farcall_session else None

    def _farcall_request(self, op, *fields):
        session = self._farcall_session
        peer = session.peer
        if peer is None:
            raise FarcallError("the %s object of the peer is out of reach: the connection is closed" % self._farcall_ref.type_name)
        try:
            reply = peer.request(op, *fields)
        except PeerError as e:
            data = e.data
        else:
            return session.unbox(reply)
        raise remote_exception(data)

    def _farcall_builtin(self, name, *args):
        return self._farcall_request(BUILTIN, name, self._farcall_session.box(args))

    def _farcall_getattr(self, name):
        return self._farcall_request(GET_ATTR, self._farcall_target, name)

    def _farcall_setattr(self, name, value):
        self._farcall_request(SET_ATTR, self._farcall_target, name, self._farcall_session.box(value))

    def _farcall_delattr(self, name):
        self._farcall_request(DEL_ATTR, self._farcall_target, name)

    def _farcall_call(self, args, kwargs):
        box = self._farcall_session.box
        return self._farcall_request(CALL, self._farcall_target, box(tuple(args)), tuple([(k, box(v)) for k, v in kwargs.items()]))

    def _farcall_repr(self):
        return self._farcall_request(REPR, self._farcall_target)

    def _farcall_str(self):
        return self._farcall_request(STR, self._farcall_target)

    def __repr__(self):
        try:
            return self._farcall_repr()
        except Exception as e:
            return "<farcall.PeerObject of the peer's %s (%s)>" % (self._farcall_ref.type_name, type(e).__name__)


class CallablePeerObject(PeerObject, CallableProxyBase):
    """The :class:`PeerObject` of a callable of the peer (its :class:`Ref`
    has the :data:`CALLABLE` flag): calling it calls the peer's object."""

    __slots__ = ()


class _IteratorPeerObject(PeerObject, IteratorProxyBase):
    __slots__ = ()


class _CallableIteratorPeerObject(PeerObject, CallableProxyBase, IteratorProxyBase):
    __slots__ = ()


_PEER_CLASSES = {
    0: PeerObject,
    CALLABLE: CallablePeerObject,
    ITERATOR: _IteratorPeerObject,
    CALLABLE | ITERATOR: _CallableIteratorPeerObject,
}


def peer_object_class(flags):
    """The :class:`PeerObject` class for a :class:`Ref` with ``flags``: only
    callables get ``__call__`` and only iterators ``__next__``."""
    return _PEER_CLASSES[flags & (CALLABLE | ITERATOR)]


# ----------------------------------------------------------------- teleport


def _python_here():
    return "python %d.%d at %s" % (sys.version_info[0], sys.version_info[1], sys.prefix)


def _teleport_pickle(payload):
    """Loads a function pickled by cloudpickle on the peer."""
    if not isinstance(payload, (bytes, bytearray)):
        raise TeleportError("a 'pickle' teleport payload must be bytes, got a %s" % type_name(payload))
    try:
        import cloudpickle  # noqa: F401  (what cloudpickle's output refers to)
    except ImportError:
        raise TeleportError(
            "cloudpickle is not installed on the server (%s); install it there (python -m pip install cloudpickle) "
            "or teleport the function's source instead" % _python_here()
        ) from None
    import pickle

    try:
        function = pickle.loads(payload)
    except Exception as e:
        raise TeleportError(
            "the pickled function cannot be loaded on the server (%s): %s: %s" % (_python_here(), type(e).__name__, e)
        ) from None
    if not callable(function):
        raise TeleportError("the pickled payload is a %s, not a function" % type_name(function))
    return function


_SOURCE_KEYS = ("name", "source", "globals", "modules", "defaults", "kwdefaults", "closure")


def _teleport_source(payload, depth=0):
    """Rebuilds a function from a 'source' payload (see PROTOCOL.md)."""
    if not isinstance(payload, dict):
        raise TeleportError("a 'source' teleport payload must be a dict, got a %s" % type_name(payload))
    if depth > 16:
        raise TeleportError("the functions of this source payload nest more than 16 levels deep")
    name = payload.get("name")
    source = payload.get("source")
    if not isinstance(name, str) or not isinstance(source, str):
        raise TeleportError("a 'source' teleport payload needs 'name' and 'source' strings")

    def mapping(key):
        value = payload.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise TeleportError("%r of the teleport payload of %s must be a dict with str keys" % (key, name))
        return value

    namespace = {"__builtins__": builtins, "__name__": "__farcall_teleport__"}
    namespace.update(mapping("globals"))
    closure = mapping("closure")
    if not all(_is_identifier(k) for k in closure):
        raise TeleportError("the closure variables of %s are not all identifiers" % name)
    for global_name, module_name in mapping("modules").items():
        try:
            namespace[global_name] = importlib.import_module(module_name)
        except Exception as e:
            raise TeleportError(
                "%s uses the module %s (as %r), which cannot be imported on the server (%s): %s: %s"
                % (name, module_name, global_name, _python_here(), type(e).__name__, e)
            ) from None
    for global_name, where in mapping("attributes").items():
        namespace[global_name] = _import_attribute(name, global_name, where)
    for global_name, sub in mapping("functions").items():
        namespace[global_name] = _teleport_source(sub, depth + 1)

    import __future__
    import ast
    import textwrap

    text = textwrap.dedent(source)
    filename = "<teleported %s>" % name
    # Annotations stay unevaluated strings: the types they name may exist only on the sender.
    flags = __future__.annotations.compiler_flag
    try:
        tree = compile(text, filename, "exec", ast.PyCF_ONLY_AST | flags, dont_inherit=True)
        if name == "<lambda>":
            lambdas = _outer_lambdas(tree)
            if len(lambdas) != 1:
                raise TeleportError("the source sent for a lambda holds %d lambdas, not one: %r" % (len(lambdas), source[:200]))
            _neutral_defaults(lambdas[0], payload)
            body = [ast.Return(value=lambdas[0])]
        else:
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                    _neutral_defaults(node, payload)
                    break
            else:
                if not any(isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Store) for n in ast.walk(tree)):
                    raise TeleportError("the source sent does not define a function named %r" % name)
            body = tree.body + [ast.Return(value=ast.Name(id=name, ctx=ast.Load()))]
        # def __farcall_outer__(<closure variables>): <source>; return <the function>
        # so that the closure variables are real cells again (nonlocal works).
        arguments = ast.arguments(
            posonlyargs=[], args=[ast.arg(arg=k) for k in closure], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[]
        )
        outer = ast.FunctionDef(name=_OUTER, args=arguments, body=body, decorator_list=[], returns=None, type_comment=None)
        if sys.version_info >= (3, 12):
            outer.type_params = []
        module = ast.Module(body=[outer], type_ignores=[])
        code = compile(ast.fix_missing_locations(ast.copy_location(module, tree)), filename, "exec", flags, dont_inherit=True)
    except TeleportError:
        raise
    except Exception as e:
        raise TeleportError(
            "the source of %s does not compile on the server (%s): %s: %s" % (name, _python_here(), type(e).__name__, e)
        ) from None
    try:
        exec(code, namespace)
        function = namespace.pop(_OUTER)(**closure)
    except Exception as e:
        raise TeleportError("running the source of %s on the server failed: %s: %s" % (name, type(e).__name__, e)) from None
    if not callable(function):
        raise TeleportError("the source sent does not define a function named %r" % name)
    try:
        defaults = payload.get("defaults")
        if defaults is not None:
            function.__defaults__ = tuple(defaults)
        kwdefaults = payload.get("kwdefaults")
        if kwdefaults is not None:
            function.__kwdefaults__ = dict(kwdefaults)
    except Exception as e:
        raise TeleportError("cannot set the defaults of %s: %s: %s" % (name, type(e).__name__, e)) from None
    if name != "<lambda>":
        namespace[name] = function
    aliases = payload.get("aliases") or ()
    for alias in aliases if isinstance(aliases, (tuple, list)) else ():
        if isinstance(alias, str):
            namespace[alias] = function
    return function


_OUTER = "__farcall_outer__"


def _is_identifier(name):
    import keyword

    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name) and name != _OUTER


def _neutral_defaults(node, payload):
    """Replaces the default expressions of a function's ast by ``None`` when
    the payload brings the defaults as values: they would be evaluated when
    the source runs, in a namespace that may lack what they name."""
    import ast

    args = node.args
    if payload.get("defaults") is not None:
        args.defaults = [ast.copy_location(ast.Constant(None), d) for d in args.defaults]
    if payload.get("kwdefaults") is not None:
        args.kw_defaults = [None if d is None else ast.copy_location(ast.Constant(None), d) for d in args.kw_defaults]


def _import_attribute(name, global_name, where):
    if not isinstance(where, (tuple, list)) or len(where) != 2 or not all(isinstance(w, str) for w in where):
        raise TeleportError("attribute %r of the teleport payload of %s must be (module, qualname)" % (global_name, name))
    module_name, qualname = where
    try:
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception as e:
        raise TeleportError(
            "%s uses %s.%s (as %r), which cannot be found on the server (%s): %s: %s"
            % (name, module_name, qualname, global_name, _python_here(), type(e).__name__, e)
        ) from None
    return obj


def _outer_lambdas(tree):
    """The lambdas of an ast that are not inside another lambda."""
    import ast

    found = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Lambda):
            found.append(node)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def teleport_payload(func, session=None):
    """The 'source' teleport payload of a local function, in boxed form
    (a :class:`DictValue`, ready to send as the second argument of
    ``Builtin("teleport", ("source", payload))``).

    It holds the function's dedented source (for a lambda, the lambda
    expression alone), the globals the code reads (copies of their values),
    the modules among them (by name), classes and functions found again by
    importing a module (as ``attributes``: ``{name: (module, qualname)}``;
    functions only when that module is installed: stdlib, site-packages),
    the other plain Python functions it calls (as nested payloads,
    ``functions``: ``{name: payload}``), the global names bound to the
    function itself (``aliases``), closure values, defaults and keyword-only
    defaults. ``attributes``, ``functions`` and ``aliases`` are optional keys
    beyond PROTOCOL.md's; a receiver ignores what it does not know.

    With ``session`` (the sender's :class:`Session` of the connection the
    payload goes to), a global or closure value that is a proxy of the
    receiver's object travels as its :class:`Target` and is that object
    again on the receiver. Raises
    :class:`TeleportError` saying why when the source is unavailable (a
    function typed into an interactive session) or something it uses cannot
    be copied."""
    if isinstance(func, types.MethodType):
        raise TeleportError("teleport needs a plain function; %r is a bound method (teleport the function and pass the object)" % (func,))
    if not isinstance(func, types.FunctionType):
        raise TeleportError("teleport needs a Python function, got a %s" % type_name(func))
    return _payload(func, [], session)


def _payload(func, building, session=None):
    code = func.__code__
    if code.co_name == "<lambda>":
        label = "the lambda at %s:%d" % (code.co_filename, code.co_firstlineno)
    else:
        label = "%s (%s)" % (func.__qualname__, code.co_filename)
    if func in building:
        raise TeleportError(
            "%s and %s call each other; source teleport cannot ship mutually recursive functions (use cloudpickle)"
            % (label, building[-1].__qualname__)
        )
    building.append(func)
    try:
        source = _function_source(func, label)
        values = {}
        modules = {}
        attributes = {}
        functions = {}
        aliases = []

        def ship(kind, global_name, value):
            if value is func:
                if global_name != code.co_name:
                    aliases.append(global_name)
            elif isinstance(value, types.ModuleType):
                module_name = _module_name(value)
                if module_name is None or module_name == "__main__":
                    raise TeleportError("%s uses the module %r, which has no importable name" % (label, global_name))
                modules[global_name] = module_name
            elif isinstance(value, types.FunctionType) and (_importable(value) is None or not _installed(value.__module__)):
                functions[global_name] = _payload(value, building, session)
            elif session is not None and isinstance(value, ProxyBase) and value._farcall_home(session) is not None:
                values[global_name] = value._farcall_home(session)
            else:
                where = _importable(value) if callable(value) else None
                if where is not None:
                    attributes[global_name] = where
                    return
                try:
                    values[global_name] = copy_value(value, "teleport")
                except TypeError as e:
                    raise TeleportError(
                        "%s uses the %s %r, a %s, which cannot be copied to the server (%s)"
                        % (label, kind, global_name, type_name(value), e)
                    ) from None

        function_globals = func.__globals__
        for global_name in _global_names(code):
            if global_name in function_globals:
                ship("global", global_name, function_globals[global_name])
        for global_name, cell in zip(code.co_freevars, func.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:
                continue  # not bound yet
            ship("closure variable", global_name, value)
        try:
            defaults = None if func.__defaults__ is None else copy_value(func.__defaults__, "teleport")
            kwdefaults = None if func.__kwdefaults__ is None else copy_value(dict(func.__kwdefaults__), "teleport")
        except TypeError as e:
            raise TeleportError("%s has a default value that cannot be copied to the server (%s)" % (label, e)) from None
        closure = {k: values.pop(k) for k in code.co_freevars if k in values}
        items = [
            ("name", code.co_name),
            ("source", source),
            ("globals", DictValue(values.items())),
            ("modules", DictValue(modules.items())),
            ("defaults", defaults),
            ("kwdefaults", kwdefaults),
            ("closure", DictValue(closure.items())),
        ]
        if attributes:
            items.append(("attributes", DictValue((k, tuple(v)) for k, v in attributes.items())))
        if functions:
            items.append(("functions", DictValue(functions.items())))
        if aliases:
            items.append(("aliases", tuple(aliases)))
        return DictValue(items)
    finally:
        building.pop()


def _importable(obj):
    """``(module, qualname)`` when ``obj`` (a class, a function...) is found
    again by importing its module and walking its qualname, and that module
    is not ``__main__``; else ``None``."""
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str) or module_name == "__main__" or "<" in qualname:
        return None
    module = sys.modules.get(module_name)
    if module is None:
        return None
    found = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
        if found is None:
            return None
    return (module_name, qualname) if found is obj else None


def _installed(module_name):
    """Whether the module is part of this interpreter's installation (built
    in, the standard library or site-packages) rather than the user's own
    code: a function of the former is imported by name on the receiver, one
    of the latter is shipped as source."""
    module = sys.modules.get(module_name)
    filename = getattr(module, "__file__", None)
    if module is None:
        return False
    if not isinstance(filename, str):
        return True  # built in
    import os
    import sysconfig

    filename = os.path.realpath(filename)
    roots = set()
    for scheme_paths in (sysconfig.get_paths(),):
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            if scheme_paths.get(key):
                roots.add(os.path.realpath(scheme_paths[key]))
    for path in sys.path:
        if path and ("site-packages" in path or "dist-packages" in path):
            roots.add(os.path.realpath(path))
    return any(filename.startswith(root + os.sep) for root in roots)


def _global_names(code):
    """The global names read, written or deleted by ``code`` and the code
    objects nested in it (the names of ``LOAD_GLOBAL`` & co, not attribute
    names)."""
    import dis

    names = []
    seen = set()
    todo = [code]
    while todo:
        c = todo.pop()
        for instruction in dis.get_instructions(c):
            if instruction.opname in ("LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_NAME", "STORE_NAME", "DELETE_NAME"):
                name = instruction.argval
                if isinstance(name, str) and name not in seen:
                    seen.add(name)
                    names.append(name)
        todo.extend(const for const in c.co_consts if isinstance(const, types.CodeType))
    return names


def _function_source(func, label):
    """The source to send for ``func``: its ``def`` without decorators,
    dedented, or, for a lambda, the lambda expression in parentheses."""
    import ast
    import inspect
    import linecache
    import textwrap

    code = func.__code__
    filename = code.co_filename
    linecache.checkcache(filename)
    lines = linecache.getlines(filename, func.__globals__)
    if not lines:
        raise TeleportError(
            "the source of %s is not available (it was defined in an interactive session or from a string); "
            "define it in a file, or teleport with cloudpickle to a server running the same Python minor version" % label
        )
    text = "".join(lines)
    try:
        tree = ast.parse(text)
        offset = 0
    except Exception:
        # The file does not parse as a whole (an IPython cell with magics...):
        # the block starting at the function's line alone.
        try:
            block = "".join(inspect.getblock(lines[code.co_firstlineno - 1 :]))
        except Exception:
            block = ""
        text = "if 1:\n" + block
        try:
            tree = ast.parse(text)
        except Exception as e:
            raise TeleportError("the source of %s cannot be parsed: %s" % (label, e)) from None
        offset = code.co_firstlineno - 2
    segment_lines = text.splitlines(True)
    if code.co_name == "<lambda>":
        candidates = [n for n in ast.walk(tree) if isinstance(n, ast.Lambda) and n.lineno + offset == code.co_firstlineno]
        if len(candidates) > 1:
            arguments = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
            candidates = [n for n in candidates if tuple(a.arg for a in n.args.posonlyargs + n.args.args + n.args.kwonlyargs) == arguments]
        if len(candidates) > 1:
            candidates = _lambda_by_column(code, candidates, offset)
        if len(candidates) != 1:
            raise TeleportError(
                "%s cannot be told apart from %s on its line; put it on a line of its own or make it a def"
                % (label, "the other lambdas" if candidates else "nothing (its source is not there)")
            )
        segment = ast.get_source_segment(text, candidates[0])
        if segment is None:
            raise TeleportError("the source of %s cannot be extracted" % label)
        return "(" + segment + ")\n"
    candidates = [
        n
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        and n.name == code.co_name
        and code.co_firstlineno in (n.lineno + offset, (n.decorator_list[0].lineno + offset) if n.decorator_list else -1)
    ]
    if len(candidates) != 1:
        raise TeleportError("the source of %s cannot be found in %s (was the file changed since it was loaded?)" % (label, filename))
    node = candidates[0]
    block = "".join(segment_lines[node.lineno - 1 : node.end_lineno])
    dedented = textwrap.dedent(block)
    if dedented[:1].isspace():
        # A line less indented than the def (inside a multi-line string).
        return "if 1:\n" + block
    return dedented


def _lambda_by_column(code, candidates, offset):
    """Among lambdas on one line, the one whose body the code's first
    instruction positions point into (Python 3.11+), else all of them."""
    positions = getattr(code, "co_positions", None)
    if positions is None:
        return candidates
    columns = set()
    for line, _end_line, column, _end_column in positions():
        if line == code.co_firstlineno and column is not None:
            columns.add(column)
    if not columns:
        return candidates
    found = [
        n
        for n in candidates
        if any(n.body.col_offset <= c and (n.body.end_lineno + offset > code.co_firstlineno or c < n.body.end_col_offset) for c in columns)
    ]
    return found or candidates
