"""farcall's object semantics: the one definition of what a Python object
becomes on the wire, how a session keeps the objects it hands out, and how an
exception is described as data.

Every evaluator backend performs requests through this module (the subprocess
worker imports it; an in-process host can call it the same way), so that they
cannot drift apart. It does no I/O and needs nothing but the standard library
(Python 3.9 or newer).

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
object of the *client*, which this version refuses).

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
:meth:`Session.close` ends the session. Tracebacks leave out every frame of
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
import importlib
import sys
import threading
import traceback
import types

# Frames of modules marked like this are farcall's own; they are cut from the
# front of a traceback so the client sees only the frames of the code it ran.
__farcall_internal__ = True

__all__ = [
    "MAX_DEPTH",
    "MAX_INPUT_DEPTH",
    "CALLABLE",
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
    "OP_NAMES",
    "LAZY_CALLABLE",
    "LAZY_CLASS",
    "LAZY_MODULE",
    "NOT_A_VALUE",
    "FarcallError",
    "ProtocolError",
    "InternalError",
    "Target",
    "Ref",
    "LazyAttr",
    "ExceptionData",
    "Session",
    "scalar",
    "plain",
    "type_name",
    "describe",
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
}

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


for _cls in (FarcallError, ProtocolError, InternalError):
    _cls.__module__ = "farcall"
del _cls


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
    """The part of ``tb`` after its last frame of farcall's own code (and of
    whatever host called it): the frames of the code the client ran."""
    user = tb
    while tb is not None:
        if _is_internal(tb.tb_frame):
            user = tb.tb_next
        tb = tb.tb_next
    return user


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
    if isinstance(exc, FarcallError):
        return ExceptionData(module, name, args, message, "")
    tb = _user_frames(exc.__traceback__)
    try:
        text = "".join(traceback.format_exception(t, exc, tb))
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

    def __init__(self):
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

    def close(self):
        """Drops every object of the table and the namespace (the session is over)."""
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
        if depth < MAX_DEPTH:
            t = type(obj)
            if t is tuple:
                return tuple([self.box(item, depth + 1) for item in obj])
            if t is frozenset:
                v = plain(obj, depth)
                if v is not NOT_A_VALUE:
                    return v
        return self.export(obj)

    def unbox(self, value, depth=0):
        """A received value as a Python object: :class:`Target` resolves to
        this session's object; a :class:`Ref` (an object of the client) is
        refused with :class:`ProtocolError`."""
        t = type(value)
        if t in _RECEIVED_AS_IS:
            return value
        if depth >= MAX_INPUT_DEPTH:
            raise ProtocolError("values nested deeper than %d levels" % MAX_INPUT_DEPTH)
        if t is tuple:
            return tuple([self.unbox(item, depth + 1) for item in value])
        if t is frozenset:
            return frozenset([self.unbox(item, depth + 1) for item in value])
        if t is Target:
            return self.resolve(value)
        if t is Ref:
            raise ProtocolError("passing local objects by reference is not supported yet (got a reference to a %s)" % value.type_name)
        raise ProtocolError("cannot receive a value of type %s" % type_name(value))

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
}

_ARITY = {GET_MODULE: 1, GET_ATTR: 2, SET_ATTR: 3, DEL_ATTR: 2, CALL: 3, REPR: 1, STR: 1, STATS: 0}
