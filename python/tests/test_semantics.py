"""Unit tests of backends/python/farcall_semantics.py in pure Python, without
a server: the Builtin table, copies, slices, teleport, and the symmetric
proxies, proved by wiring two `Session`s together in memory (each the other's
peer: what one boxes the other handles, exactly as the wire would carry it).

The module is loaded from its source file, so these tests exercise the one
definition both backends and the client run.
"""

from __future__ import annotations

import collections
import gc
import importlib.util
import math
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

_SOURCE = Path(__file__).resolve().parents[2] / "backends" / "python" / "farcall_semantics.py"
_spec = importlib.util.spec_from_file_location("farcall_semantics_under_test", _SOURCE)
assert _spec is not None and _spec.loader is not None
sem: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sem)


# ----------------------------------------------------------------- helpers


class Wire:
    """A peer that performs requests on another in-memory `Session`, as a
    host would over the wire: fields and replies travel in boxed form
    unchanged (a `Ref` is the sender's object, a `Target` the receiver's)."""

    def __init__(self, remote: Any) -> None:
        self.remote = remote
        self.requests: list[tuple] = []
        self.released: list[tuple[int, int]] = []

    def request(self, op: int, *fields: Any) -> Any:
        self.requests.append((op, *fields))
        try:
            return self.remote.handle(op, *fields)
        except BaseException as e:  # what a host sends back as an error reply
            raise sem.PeerError(sem.describe(e)) from None

    def release(self, ref_id: int, count: int) -> None:
        self.released.append((ref_id, count))
        self.remote.release([(ref_id, count)])

    def builtins_named(self, name: str) -> int:
        return sum(1 for r in self.requests if r[0] == sem.BUILTIN and r[1] == name)


def pair() -> tuple[Any, Any]:
    """Two sessions, each the other's peer: `server` and `client`."""
    server, client = sem.Session(), sem.Session()
    server.peer = Wire(client)
    client.peer = Wire(server)
    return server, client


def remote(server: Any, client: Any, expr: str) -> Any:
    """What the client holds for the server's value of `expr` (a PeerObject for objects)."""
    return client.unbox(server.handle(sem.BUILTIN, "eval", (expr,)))


def b(session: Any, name: str, *args: Any) -> Any:
    return session.handle(sem.BUILTIN, name, args)


@pytest.fixture
def s() -> Any:
    return sem.Session()


def ref_to(session: Any, obj: Any) -> Any:
    """A Target (as the client would send it) for a fresh server object."""
    return sem.Target(session.export(obj).id)


# ----------------------------------------------------------------- the Builtin table


LISTED = (
    "add sub mul matmul truediv floordiv mod pow lshift rshift and or xor "
    "iadd isub imul imatmul itruediv ifloordiv imod ipow ilshift irshift iand ior ixor "
    "lt le eq ne gt ge neg pos abs invert index getitem setitem delitem contains "
    "truth len hash iter next reversed callable int float complex divmod round format pow3 dir type isinstance issubclass "
    "enter exit iterate obtain deliver eval execute namespace teleport stats"
).split()


def test_builtins_are_exactly_the_listed_table() -> None:
    assert sorted(sem.BUILTINS) == sorted(LISTED)
    assert sem.BUILTIN == 9 and sem.OP_NAMES[sem.BUILTIN] == "Builtin"


def test_operators_comparisons_and_unary(s: Any) -> None:
    assert b(s, "add", 2, 3) == 5
    assert b(s, "sub", 2, 3) == -1
    assert b(s, "mul", "ab", 2) == "abab"
    assert b(s, "truediv", 1, 4) == 0.25
    assert b(s, "floordiv", 7, 2) == 3
    assert b(s, "mod", 7, 4) == 3
    assert b(s, "pow", 2, 100) == 2**100
    assert (b(s, "lshift", 1, 3), b(s, "rshift", 8, 3)) == (8, 1)
    assert (b(s, "and", 6, 3), b(s, "or", 6, 3), b(s, "xor", 6, 3)) == (2, 7, 5)
    assert [b(s, op, 1, 2) for op in ("lt", "le", "eq", "ne", "gt", "ge")] == [True, True, False, True, False, False]
    assert (b(s, "neg", 3), b(s, "pos", -3), b(s, "abs", -3), b(s, "invert", 0), b(s, "index", True)) == (-3, -3, 3, -1, 1)
    assert b(s, "pow3", 3, 4, 5) == 81 % 5
    assert b(s, "divmod", 7, 2) == (3, 1)
    assert (b(s, "round", 2.567), b(s, "round", 2.567, 1)) == (3, 2.6)
    assert b(s, "format", 3.14159, ".2f") == "3.14"
    assert (b(s, "int", "12"), b(s, "float", "1.5"), b(s, "complex", 2)) == (12, 1.5, 2 + 0j)
    assert (b(s, "truth", 0), b(s, "truth", (1,)), b(s, "callable", 3)) == (False, True, False)
    assert b(s, "hash", "x") == hash("x")
    with pytest.raises(TypeError):
        b(s, "add", 1, "a")


def test_matmul_and_in_place_forms_on_objects(s: Any) -> None:
    class M:
        def __matmul__(self, other: Any) -> str:
            return "matmul"

        def __imatmul__(self, other: Any) -> str:
            return "imatmul"

    m = ref_to(s, M())
    assert b(s, "matmul", m, 1) == "matmul"
    assert b(s, "imatmul", m, 1) == "imatmul"
    lst = [1]
    t = ref_to(s, lst)
    again = b(s, "iadd", t, (2, 3))
    assert lst == [1, 2, 3] and again.id == t.id  # the same list, mutated
    assert b(s, "iadd", 1, 2) == 3  # immutable: a new value
    for op, expected in (("isub", 1), ("imul", 6), ("ifloordiv", 1), ("imod", 1), ("ipow", 9), ("ilshift", 12), ("irshift", 0)):
        assert b(s, op, 3, 2) == expected, op
    assert (b(s, "iand", 6, 3), b(s, "ior", 6, 3), b(s, "ixor", 6, 3), b(s, "itruediv", 1, 2)) == (2, 7, 5, 0.5)


def test_items_with_slices_and_ellipsis(s: Any) -> None:
    lst = list(range(10))
    t = ref_to(s, lst)
    assert b(s, "getitem", t, 3) == 3
    got = b(s, "getitem", t, slice(2, 8, 2))
    assert isinstance(got, sem.Ref) and s.lookup(got.id) == [2, 4, 6]
    b(s, "setitem", t, slice(0, 3), (9, 9))
    assert lst[:3] == [9, 9, 3]
    b(s, "delitem", t, slice(None, None, 2))
    assert lst == [9, 4, 6, 8]
    assert b(s, "contains", t, 6) is True and b(s, "contains", t, 7) is False

    class E:
        def __getitem__(self, key: Any) -> Any:
            return key

    e = ref_to(s, E())
    assert b(s, "getitem", e, Ellipsis) is Ellipsis
    assert b(s, "getitem", e, (slice(1, None), Ellipsis)) == (slice(1, None), Ellipsis)
    # A slice holding objects travels by reference.
    odd = b(s, "getitem", e, sem.Target(s.export(E()).id))
    assert isinstance(odd, sem.Ref)
    by_ref = s.box(slice([1], 2))
    assert isinstance(by_ref, sem.Ref) and by_ref.type_name == "builtins.slice"
    assert s.box(slice(1, (2, 3), None)) == slice(1, (2, 3), None)


def test_len_iter_next_reversed_dir_type_isinstance(s: Any) -> None:
    t = ref_to(s, [1, 2])
    assert b(s, "len", t) == 2
    it = b(s, "iter", t)
    assert isinstance(it, sem.Ref)
    assert b(s, "next", sem.Target(it.id)) == 1
    assert b(s, "next", sem.Target(it.id)) == 2
    with pytest.raises(StopIteration):
        b(s, "next", sem.Target(it.id))
    rev = b(s, "reversed", t)
    assert list(s.lookup(rev.id)) == [2, 1]
    names = b(s, "dir", t)
    assert type(names) is tuple and "append" in names and all(type(n) is str for n in names)
    ty = b(s, "type", t)
    assert isinstance(ty, sem.Ref) and s.lookup(ty.id) is list and ty.flags & sem.CLASS
    int_ref = sem.Target(s.export(int).id)
    assert b(s, "isinstance", 3, int_ref) is True
    assert b(s, "isinstance", "3", int_ref) is False
    assert b(s, "issubclass", sem.Target(s.export(bool).id), int_ref) is True


def test_unknown_builtin_is_a_protocol_error_naming_it(s: Any) -> None:
    with pytest.raises(sem.ProtocolError, match="'frobnicate'"):
        b(s, "frobnicate", 1)
    with pytest.raises(sem.ProtocolError, match="takes 2 fields"):
        s.handle(sem.BUILTIN, "add")
    with pytest.raises(TypeError, match=r"^add\(\) missing 1 required positional argument"):
        b(s, "add", 1)
    with pytest.raises(TypeError, match=r"^enter\(\) takes 2 positional arguments"):
        b(s, "enter", 1, 2)


def test_enter_and_exit(s: Any) -> None:
    log = []

    class CM:
        def __enter__(self) -> str:
            log.append("enter")
            return "entered"

        def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
            log.append((et, type(ev), str(ev) if ev is not None else None, tb))
            return et is KeyError

    class Private(Exception):
        pass

    sys.modules[__name__].Private = Private  # type: ignore[attr-defined]
    try:
        cm = ref_to(s, CM())
        assert b(s, "enter", cm) == "entered"
        assert b(s, "exit", cm, None, None, None) is False
        assert b(s, "exit", cm, "builtins", "KeyError", "k") is True
        assert b(s, "exit", cm, "builtins", "UnicodeDecodeError", "odd") is False  # needs 5 args: still built
        assert b(s, "exit", cm, __name__, "Private", "mine") is False
        assert b(s, "exit", cm, "nowhere.at.all", "Gone", "lost") is False
    finally:
        del sys.modules[__name__].Private  # type: ignore[attr-defined]
    assert log[0] == "enter"
    assert log[1] == (None, type(None), None, None)
    assert log[2] == (KeyError, KeyError, "'k'", None)
    assert log[3][:2] == (UnicodeDecodeError, UnicodeDecodeError)
    assert log[4][:3] == (Private, Private, "mine")
    assert log[5][:3] == (sem.RemoteError, sem.RemoteError, "lost")


def test_iterate_batches_and_rest(s: Any) -> None:
    t = ref_to(s, list(range(10)))
    items, rest = b(s, "iterate", t, 4)
    assert items == (0, 1, 2, 3) and isinstance(rest, sem.Ref)
    items, rest2 = b(s, "iterate", sem.Target(rest.id), 100)
    assert items == (4, 5, 6, 7, 8, 9) and rest2 is None
    items, rest = b(s, "iterate", ref_to(s, {"a": 1}), 1)
    assert items == ("a",) and isinstance(rest, sem.Ref)  # exactly count items: not known to be exhausted
    assert b(s, "iterate", sem.Target(rest.id), 1) == ((), None)


def test_iterate_error_drops_the_items_taken(s: Any) -> None:
    def gen() -> Any:
        yield 1
        yield (2, 3)
        raise ValueError("broken generator")

    g = ref_to(s, gen())
    before = s.stats()
    with pytest.raises(ValueError, match="broken generator"):
        b(s, "iterate", g, 10)
    assert s.stats() == before  # neither the items nor the generator were exported


def test_iterate_reads_ahead_only_where_it_cannot_change_what_the_client_sees(s: Any) -> None:
    import itertools

    # A generator of values: one batch.
    items, rest = b(s, "iterate", ref_to(s, (i for i in range(5))), 10)
    assert items == (0, 1, 2, 3, 4) and rest is None
    # A container of objects: one batch (advancing a list iterator changes no item).
    items, rest = b(s, "iterate", ref_to(s, [[1], [2], [3]]), 10)
    assert len(items) == 3 and all(isinstance(x, sem.Ref) for x in items) and rest is None
    # groupby: the batch ends after each item holding a reference (the group),
    # which reading further would empty.
    groups = ref_to(s, itertools.groupby("aabbb"))
    items, rest = b(s, "iterate", groups, 10)
    assert len(items) == 1 and items[0][0] == "a" and isinstance(rest, sem.Ref)
    group = s.lookup(items[0][1].id)
    assert list(group) == ["a", "a"]


def test_only_iterators_are_flagged_as_iterators(s: Any) -> None:
    assert s.box(iter([1])).flags & sem.ITERATOR
    assert s.box((x for x in ())).flags & sem.ITERATOR
    assert not s.box([1]).flags & sem.ITERATOR
    assert not s.box({}).flags & sem.ITERATOR
    assert sem.peer_object_class(sem.ITERATOR).__next__
    assert not hasattr(sem.peer_object_class(0), "__next__")
    assert not hasattr(sem.ProxyBase, "__next__")


def test_eval_execute_namespace_stats(s: Any) -> None:
    assert b(s, "execute", "x = 40\ndef f(): return x + 2") is None
    assert b(s, "eval", "f()") == 42
    ns = b(s, "namespace")
    assert s.lookup(ns.id) is s.namespace and s.namespace["x"] == 40
    assert b(s, "stats") == s.stats()


# ----------------------------------------------------------------- copies


def test_obtain_copies_nested_containers(s: Any) -> None:
    value = [1, "é", b"x", None, 2.5, 3j, 2**100, (1, [2]), frozenset([1, (2,)]), {"k": [1, {2}], (1, 2): None}, {1, "a"}]
    copy = b(s, "obtain", ref_to(s, value))
    assert type(copy) is sem.ListValue
    assert copy[7] == (1, sem.ListValue([2])) and type(copy[7]) is tuple
    assert type(copy[9]) is sem.DictValue and dict(copy[9])["k"] == sem.ListValue([1, sem.SetValue([2])])
    assert type(copy[10]) is sem.SetValue and set(copy[10]) == {1, "a"}
    assert s.unbox(copy) == value  # new, local, mutable objects again
    assert s.stats()[0] == 1  # nothing exported but the original


def test_obtain_keeps_slices_and_ellipsis(s: Any) -> None:
    value = [slice(1, None, -1), ..., (slice(None), ...)]
    assert s.unbox(b(s, "obtain", ref_to(s, value))) == value


def test_obtain_subclasses_as_their_base(s: Any) -> None:
    class L(list):
        pass

    Point = collections.namedtuple("Point", "x y")
    value = {"counter": collections.Counter("aab"), "dd": collections.defaultdict(list, a=[1]), "l": L([1]), "p": Point(1, 2)}
    copy = s.unbox(b(s, "obtain", ref_to(s, value)))
    assert copy == {"counter": {"a": 2, "b": 1}, "dd": {"a": [1]}, "l": [1], "p": (1, 2)}
    assert type(copy["counter"]) is dict and type(copy["l"]) is list and type(copy["p"]) is tuple


def test_obtain_names_what_cannot_be_copied_and_where(s: Any) -> None:
    import socket

    with socket.socket() as sock:
        with pytest.raises(TypeError) as caught:
            b(s, "obtain", ref_to(s, [0, 1, 2, {"k": sock}]))
        assert str(caught.value) == "obtain: cannot copy a socket.socket at [3]['k']"
    with pytest.raises(TypeError, match=r"^obtain: cannot copy a builtins.builtin_function_or_method$"):
        b(s, "obtain", ref_to(s, len))
    with pytest.raises(TypeError, match=r"at \[0\] \(a dict key\)"):
        b(s, "obtain", ref_to(s, [{object(): 1}]))
    deep: list = []
    for _ in range(40):
        deep = [deep]
    with pytest.raises(TypeError, match="nested deeper than 32 levels at " + re_escape("[0]" * 32)):
        b(s, "obtain", ref_to(s, deep))
    loop: list = []
    loop.append(loop)
    with pytest.raises(TypeError, match="nested deeper"):
        b(s, "obtain", ref_to(s, loop))
    ok: list = []
    for _ in range(31):
        ok = [ok]
    b(s, "obtain", ref_to(s, ok))


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_deliver_makes_new_objects_and_returns_a_reference(s: Any) -> None:
    got = b(s, "deliver", sem.ListValue([1, sem.DictValue([("a", sem.SetValue([1]))])]))
    assert isinstance(got, sem.Ref) and got.type_name == "builtins.list"
    assert s.lookup(got.id) == [1, {"a": {1}}]
    with pytest.raises(sem.ProtocolError, match="unhashable key"):
        s.unbox(sem.DictValue([(sem.ListValue([1]), 2)]))


def test_copy_value_is_what_teleport_and_deliver_use() -> None:
    assert sem.copy_value({"a": [1]}) == sem.DictValue([("a", sem.ListValue([1]))])
    with pytest.raises(TypeError, match="^deliver: cannot copy a builtins.object at \\[1\\]$"):
        sem.copy_value([1, object()], "deliver")


# ----------------------------------------------------------------- proxies, wired


def test_peer_objects_call_and_are_counted() -> None:
    server, client = pair()
    base = server.stats()[0]
    m = client.unbox(server.handle(sem.GET_MODULE, "math"))
    assert isinstance(m, sem.PeerObject) and isinstance(m, sem.ProxyBase)
    assert m.pow(3, 2) == 9.0
    assert m.pi == math.pi
    again = client.unbox(server.handle(sem.GET_MODULE, "math"))
    assert again is m  # one PeerObject per id, each reception counted
    assert client.peer_objects() == 1
    del m, again
    gc.collect()
    assert client.peer.released and client.peer.released[-1][1] == 2
    assert server.stats()[0] == base


def test_a_proxy_goes_home_as_a_target() -> None:
    server, client = pair()
    lst = remote(server, client, "[3, 1, 2]")
    assert client.box(lst) == sem.Target(lst._farcall_ref.id)
    sorted_ = remote(server, client, "sorted")
    assert sorted_(lst) == remote(server, client, "[1, 2, 3]")  # eq on the server: True
    # A proxy of another connection is just an object of ours.
    other_server, other_client = pair()
    foreign = remote(other_server, other_client, "[1]")
    assert isinstance(client.box(foreign), sem.Ref)
    assert client.unbox(foreign) is foreign


def test_callbacks_nested_and_symmetric() -> None:
    server, client = pair()
    server.handle(sem.BUILTIN, "execute", ("def apply(f, x):\n    return f(x) + 1\n",))
    apply = remote(server, client, "apply")
    seen = []

    def callback(x: int) -> int:
        seen.append(threading.current_thread().name)
        # client -> server -> client -> server
        return apply(lambda y: y * 10, x) if x < 3 else x

    assert apply(callback, 1) == (1 * 10 + 1) + 1
    assert apply(callback, 5) == 6
    assert len(seen) == 2
    # Everything exported for the calls was released by the peer's proxies.
    gc.collect()
    assert client.stats()[0] == 0


def test_callback_from_another_thread_on_the_server() -> None:
    server, client = pair()
    server.handle(
        sem.BUILTIN,
        "execute",
        (
            "import threading\n"
            "def in_thread(f):\n"
            "    out = []\n"
            "    t = threading.Thread(target=lambda: out.append(f(2)))\n"
            "    t.start(); t.join()\n"
            "    return out[0]\n",
        ),
    )
    in_thread = remote(server, client, "in_thread")
    assert in_thread(lambda v: v * 21) == 42


def test_callback_exceptions_travel_back_with_traceback() -> None:
    server, client = pair()
    server.handle(sem.BUILTIN, "execute", ("def call(f):\n    try:\n        f()\n    except ValueError as e:\n        return str(e)\n",))
    call = remote(server, client, "call")

    def failing() -> None:
        raise ValueError("from the client")

    text = call(failing)
    assert text.startswith("from the client\n\n--- remote traceback ---\nTraceback")
    assert "in failing" in text

    class Custom(Exception):
        pass

    def custom() -> None:
        raise Custom("odd")

    server.handle(sem.BUILTIN, "execute", ("def raw(f):\n    f()\n",))
    raw = remote(server, client, "raw")
    with pytest.raises(sem.RemoteError) as caught:
        raw(custom)
    e = caught.value
    # The type survives the trip client -> server -> client.
    assert e.remote_type.endswith("<locals>.Custom") and e.remote_message.startswith("odd\n\n--- remote traceback ---")
    # The server's traceback of the client's error holds the client's frames too.
    assert "in custom" in str(e) and "in raw" in str(e)


def test_raise_remote_builds_local_exceptions() -> None:
    data = sem.ExceptionData("builtins", "KeyError", ("k",), "'k'", "Traceback...\n  File x\n")
    with pytest.raises(KeyError) as caught:
        sem.raise_remote(data)
    e = caught.value
    assert e.args == ("k",) and type(e).__name__ == "KeyError" and type(e).__module__ == "builtins"
    assert str(e) == "'k'\n\n--- remote traceback ---\nTraceback...\n  File x"
    d = sem.describe(e)
    assert (d.type_module, d.type_name, d.args) == ("builtins", "KeyError", ("k",))
    odd = sem.remote_exception(sem.ExceptionData("builtins", "UnicodeDecodeError", ("x",), "bad", ""))
    assert isinstance(odd, UnicodeDecodeError)
    stop = sem.remote_exception(sem.ExceptionData("builtins", "SystemExit", (1,), "1", "tb"))
    assert type(stop) is sem.RemoteError and stop.remote_type == "builtins.SystemExit"
    other = sem.remote_exception(sem.ExceptionData("mod", "Err", (), "m", "tb"))
    assert type(other) is sem.RemoteError and str(other) == "m\n\n--- remote traceback ---\ntb"
    assert sem.RemoteError.__module__ == "farcall" and sem.TeleportError.__module__ == "farcall"
    tele = sem.remote_exception(sem.ExceptionData("farcall", "TeleportError", (), "why", ""))
    assert type(tele) is sem.TeleportError and str(tele) == "why"
    described = sem.describe(other)
    assert (described.type_module, described.type_name) == ("mod", "Err")  # its origin, not RemoteError


def test_proxy_operators_reflected_and_in_place() -> None:
    server, client = pair()
    n = remote(server, client, "7")
    assert n == 7  # ints travel by value; make a remote number object instead
    server.handle(
        sem.BUILTIN,
        "execute",
        (
            "class Num:\n"
            "    def __init__(self, v): self.v = v\n"
            "    def __add__(self, o): return ('add', self.v, o)\n"
            "    def __radd__(self, o): return ('radd', o, self.v)\n"
            "    def __iadd__(self, o): self.v += o; return self\n"
            "    def __matmul__(self, o): return ('matmul', o)\n"
            "    def __rmatmul__(self, o): return ('rmatmul', o)\n"
            "    def __pow__(self, o, m=None): return ('pow', o, m)\n"
            "    def __rpow__(self, o): return ('rpow', o)\n"
            "    def __divmod__(self, o): return ('divmod', o)\n"
            "    def __rdivmod__(self, o): return ('rdivmod', o)\n"
            "    def __neg__(self): return -self.v\n"
            "    def __pos__(self): return +self.v\n"
            "    def __abs__(self): return abs(self.v)\n"
            "    def __invert__(self): return ~self.v\n"
            "    def __index__(self): return self.v\n"
            "    def __float__(self): return float(self.v)\n"
            "    def __complex__(self): return complex(self.v)\n"
            "    def __round__(self, n=None): return ('round', n)\n"
            "    def __lt__(self, o): return self.v < o\n"
            "    def __gt__(self, o): return self.v > o\n"
            "    def __eq__(self, o): return self.v == o\n"
            "    def __hash__(self): return 99\n"
            "    def __format__(self, spec): return 'N' + spec\n",
        ),
    )
    x = remote(server, client, "Num(5)")
    assert x + 1 == ("add", 5, 1)
    assert 1 + x == ("radd", 1, 5)
    assert x @ 2 == ("matmul", 2) and 2 @ x == ("rmatmul", 2)
    assert x**2 == ("pow", 2, None) and pow(x, 2, 3) == ("pow", 2, 3) and 2**x == ("rpow", 2)
    assert divmod(x, 2) == ("divmod", 2) and divmod(2, x) == ("rdivmod", 2)
    assert (-x, +x, abs(x), ~x) == (-5, 5, 5, -6)
    assert (int(x), float(x), complex(x), [0, 1, 2, 3, 4, 5, 6][x]) == (5, 5.0, 5 + 0j, 5)
    assert round(x) == ("round", None) and round(x, 2) == ("round", 2)
    assert x < 6 and not x > 6 and 4 < x and x == 5 and x != 4
    assert hash(x) == 99 and f"{x:>3}" == "N>3"
    y = x
    y += 10  # in place: the server's object, returned
    assert y is x and x.v == 15
    z = remote(server, client, "[1]")
    z += [2]
    z *= 2
    assert client.unbox(server.handle(sem.BUILTIN, "obtain", (client.box(z),))) == [1, 2, 1, 2]
    for op, expected in (("-", 3), ("*", 24), ("/", 1.5), ("//", 1), ("%", 0), ("<<", 48), (">>", 0), ("&", 2), ("|", 14), ("^", 12)):
        value = eval(f"a {op} b", {"a": remote(server, client, "12"), "b": 8})
        assert value == eval(f"12 {op} 8"), op


def test_proxy_containers_items_iteration() -> None:
    server, client = pair()
    lst = remote(server, client, "list(range(10))")
    assert len(lst) == 10 and bool(lst) and 3 in lst and 30 not in lst
    assert lst[2] == 2 and lst[-1] == 9
    tail = lst[7:]
    assert isinstance(tail, sem.PeerObject) and list(tail) == [7, 8, 9]
    lst[0:2] = (100, 101)
    del lst[2]
    assert lst[:3] == remote(server, client, "[100, 101, 3]")
    assert list(reversed(lst))[:2] == [9, 8]
    empty = remote(server, client, "[]")
    assert not empty
    sized = remote(server, client, "type('S', (), {'__len__': lambda self: 0})()")
    assert not sized  # __len__ fallback of truth, on the server
    server.handle(sem.BUILTIN, "execute", ("x = {'a': 1, 'b': [2]}",))
    d = remote(server, client, "x")
    mine = [2]
    d["c"] = mine
    assert sorted(d) == ["a", "b", "c"] and isinstance(d["b"], sem.PeerObject)  # the server's list
    assert d["c"] is mine  # our own list, home again
    assert (mine == d["b"]) is False  # lists of two sides do not compare: no endless reflection
    with pytest.raises(TypeError):
        mine + d["b"]
    assert "append" in dir(lst)


def test_callable_is_honest() -> None:
    server, client = pair()
    assert callable(remote(server, client, "len")) and callable(remote(server, client, "dict"))
    assert isinstance(remote(server, client, "len"), sem.CallablePeerObject)
    not_callable = remote(server, client, "[]")
    assert not callable(not_callable) and isinstance(not_callable, sem.PeerObject)
    with pytest.raises(TypeError):
        not_callable()
    assert "__call__" not in vars(sem.ProxyBase) and "__call__" in vars(sem.CallableProxyBase)


def test_iteration_is_batched() -> None:
    server, client = pair()
    r = remote(server, client, "range(100000)")
    wire = client.peer
    before = len(wire.requests)
    assert sum(r) == sum(range(100000))
    sent = wire.requests[before:]
    assert all(req[0] == sem.BUILTIN and req[1] == "iterate" for req in sent)
    counts = [req[2][1] for req in sent]
    assert counts[:4] == [64, 256, 1024, 4096] and max(counts) == 4096
    assert len(sent) <= 30
    gc.collect()
    assert server.stats()[0] == 1  # the range itself, held by `r`; every rest iterator released
    gen = remote(server, client, "(i * i for i in range(5))")
    assert next(gen) == 0
    assert list(gen) == [1, 4, 9, 16]
    with pytest.raises(StopIteration):
        next(gen)
    with pytest.raises(TypeError, match="not iterable"):
        iter(remote(server, client, "object()"))


def test_with_statement_through_a_proxy() -> None:
    server, client = pair()
    server.handle(
        sem.BUILTIN,
        "execute",
        (
            "log = []\n"
            "class CM:\n"
            "    def __enter__(self): log.append('in'); return 'value'\n"
            "    def __exit__(self, et, ev, tb):\n"
            "        log.append((et.__name__ if et else None, str(ev) if ev else None))\n"
            "        return et is KeyError\n",
        ),
    )
    cm = remote(server, client, "CM()")
    with cm as v:
        assert v == "value"
    with cm:
        raise KeyError("swallowed")
    with pytest.raises(ValueError):
        with cm:
            raise ValueError("kept")
    assert server.namespace["log"] == ["in", (None, None), "in", ("KeyError", "'swallowed'"), "in", ("ValueError", "kept")]


def test_isinstance_and_issubclass_ask_the_owner() -> None:
    server, client = pair()
    remote_int = remote(server, client, "int")
    remote_dict = remote(server, client, "dict")
    d = remote(server, client, "{}")
    assert isinstance(d, remote_dict) and not isinstance(d, remote_int)
    assert isinstance(3, remote_int)
    assert issubclass(remote(server, client, "bool"), remote_int)
    assert not isinstance(d, dict)  # a local class: the proxy is not a local dict


def test_attributes_set_delete_and_private_names() -> None:
    server, client = pair()
    obj = remote(server, client, "type('O', (), {})()")
    mine = [1, 2]
    obj.x = mine
    assert obj.x is mine
    obj.y = 3
    assert obj.y == 3
    del obj.x
    with pytest.raises(AttributeError):
        obj.x
    wire = client.peer
    before = len(wire.requests)
    with pytest.raises(AttributeError):
        obj._farcall_nothing
    assert len(wire.requests) == before  # never asked the peer
    assert repr(obj).startswith("<__farcall_session__.O object")
    assert str(remote(server, client, "'text'")) == "text"
    with pytest.raises(TypeError, match="cannot be pickled"):
        import copy

        copy.copy(obj)


def test_remote_errors_through_proxies() -> None:
    server, client = pair()
    m = client.unbox(server.handle(sem.GET_MODULE, "math"))
    with pytest.raises(ValueError, match="math domain error") as caught:
        m.sqrt(-1)
    assert "--- remote traceback ---" in str(caught.value)
    with pytest.raises(AttributeError):
        m.nope


def test_reference_counts_over_many_proxies() -> None:
    server, client = pair()
    base = server.stats()[0]
    make = remote(server, client, "object")
    for _ in range(10000):
        make()
    gc.collect()
    assert server.stats()[0] == base + 1  # `make` itself
    held = [make() for _ in range(100)]
    assert server.stats()[0] == base + 101
    del held
    assert server.stats()[0] == base + 1
    assert client.peer_objects() == 1


def test_no_peer_no_release_and_no_peer_no_reference() -> None:
    alone = sem.Session()
    with pytest.raises(sem.ProtocolError, match="got a reference to a client.thing"):
        alone.unbox(sem.Ref(1, "client.thing"))
    server, client = pair()
    obj = remote(server, client, "object()")
    client.peer = None  # the connection is gone
    with pytest.raises(sem.FarcallError, match="connection is closed"):
        obj.anything
    del obj  # releasing does nothing, raises nothing
    gc.collect()


# ----------------------------------------------------------------- teleport

K = 10
GLOBAL_LIST = [1, 2]


def plain_function(x, y=2, *, z=3):  # noqa: ANN001, ANN201
    return math.pow(x, y) + z + K + sum(GLOBAL_LIST)


def recursive(n):  # noqa: ANN001, ANN201
    return 1 if n <= 1 else n * recursive(n - 1)


def helper(x):  # noqa: ANN001, ANN201
    return x * 3


def uses_helper_and_imports(x):  # noqa: ANN001, ANN201
    import json

    return collections.Counter(json.dumps(helper(x)))


from os.path import join as path_join  # noqa: E402


def uses_an_imported_function(a):  # noqa: ANN001, ANN201
    return path_join(a, "b")


def _decorator(f):  # noqa: ANN001, ANN202
    return f


@_decorator
def decorated(x):  # noqa: ANN001, ANN201
    return x + 1


class LocalOnly:
    pass


_SENTINEL = LocalOnly()


def annotated(x: LocalOnly, y: int = 3, *, z: "LocalOnly | None" = _SENTINEL) -> LocalOnly:  # type: ignore[assignment]
    return (x, y, z is None)  # type: ignore[return-value]


def teleported(server: Any, func: Any) -> Any:
    payload = sem.teleport_payload(func)
    ref = server.handle(sem.BUILTIN, "teleport", ("source", payload))
    return server.lookup(ref.id)


def test_teleport_source_plain_defaults_globals() -> None:
    server = sem.Session()
    payload = sem.teleport_payload(plain_function)
    assert type(payload) is sem.DictValue
    fields = dict(payload)
    assert fields["name"] == "plain_function" and fields["source"].startswith("def plain_function(x, y=2, *, z=3):")
    assert dict(fields["globals"]) == {"K": 10, "GLOBAL_LIST": sem.ListValue([1, 2])}
    assert dict(fields["modules"]) == {"math": "math"}
    assert fields["defaults"] == (2,) and fields["kwdefaults"] == sem.DictValue([("z", 3)])
    f = teleported(server, plain_function)
    assert f(2) == plain_function(2) and f(2, 3, z=0) == plain_function(2, 3, z=0)
    assert f is not plain_function and f.__globals__ is not globals()


def test_teleport_source_closures_lambdas_nested_recursive() -> None:
    server = sem.Session()
    factor = 4

    def nested(x):  # noqa: ANN001, ANN202
        def inner(y):  # noqa: ANN001, ANN202
            return y * factor

        return inner(x) + K

    assert teleported(server, nested)(2) == 18
    assert teleported(server, lambda v: v * factor)(3) == 12
    first, second = lambda: "first", lambda: "second"  # noqa: E731
    if sys.version_info >= (3, 11):  # instruction columns tell them apart
        assert teleported(server, second)() == "second"
    else:
        with pytest.raises(sem.TeleportError, match="cannot be told apart from the other lambdas on its line"):
            sem.teleport_payload(second)
    one, two = lambda a: a, lambda b: -b  # noqa: E731
    assert teleported(server, two)(1) == -1  # told apart by their arguments
    assert teleported(server, recursive)(5) == 120

    def make_counter(start):  # noqa: ANN001, ANN202
        def count_down(n):  # noqa: ANN001, ANN202
            return start if n == 0 else count_down(n - 1) + 1

        return count_down

    assert teleported(server, make_counter(7))(3) == 10
    assert teleported(server, uses_helper_and_imports)(2) == collections.Counter("6")
    fields = dict(sem.teleport_payload(uses_helper_and_imports))
    assert dict(fields["modules"]) == {"collections": "collections"}
    assert dict(dict(fields["functions"])["helper"])["source"] == "def helper(x):  # noqa: ANN001, ANN201\n    return x * 3\n"
    assert teleported(server, decorated)(1) == 2
    fact = lambda n: 1 if n <= 1 else n * fact(n - 1)  # noqa: E731
    assert teleported(server, fact)(4) == 24


def test_teleport_refuses_clearly() -> None:
    server = sem.Session()
    namespace: dict = {}
    exec("def typed_in(x):\n    return x\n", namespace)
    with pytest.raises(sem.TeleportError, match="source of typed_in .* is not available"):
        sem.teleport_payload(namespace["typed_in"])
    lock = threading.Lock()

    def uses_lock():  # noqa: ANN202
        return lock

    with pytest.raises(sem.TeleportError, match="closure variable 'lock', a _thread.lock, which cannot be copied"):
        sem.teleport_payload(uses_lock)
    with pytest.raises(sem.TeleportError, match="needs a Python function"):
        sem.teleport_payload(len)
    bad = {"name": "f", "source": "def f(:\n", "globals": {}, "modules": {}, "defaults": None, "kwdefaults": None, "closure": {}}
    with pytest.raises(sem.TeleportError, match="does not compile on the server"):
        server.handle(sem.BUILTIN, "teleport", ("source", sem.copy_value(bad)))
    missing = dict(bad, source="def f(): pass\n", modules={"m": "no_such_module_here"})
    with pytest.raises(sem.TeleportError, match="no_such_module_here"):
        server.handle(sem.BUILTIN, "teleport", ("source", sem.copy_value(missing)))
    wrong_name = dict(bad, source="def g(): pass\n")
    with pytest.raises(sem.TeleportError, match="does not define a function named 'f'"):
        server.handle(sem.BUILTIN, "teleport", ("source", sem.copy_value(wrong_name)))
    with pytest.raises(sem.TeleportError, match="unknown teleport kind"):
        server.handle(sem.BUILTIN, "teleport", ("marshal", b""))
    with pytest.raises(sem.TeleportError, match="must be bytes"):
        server.handle(sem.BUILTIN, "teleport", ("pickle", "text"))


def ping(n):  # noqa: ANN001, ANN201
    return 0 if n == 0 else pong(n - 1)


def pong(n):  # noqa: ANN001, ANN201
    return ping(n)


def test_teleport_refuses_what_source_cannot_carry() -> None:
    with pytest.raises(sem.TeleportError, match="call each other; source teleport cannot ship mutually recursive functions"):
        sem.teleport_payload(ping)
    bad = {"name": "f", "source": "def f(): pass\n", "closure": {"not an identifier": 1}}
    with pytest.raises(sem.TeleportError, match="closure variables of f are not all identifiers"):
        sem.Session().handle(sem.BUILTIN, "teleport", ("source", sem.copy_value(bad)))


def test_teleported_closures_are_real_closures() -> None:
    total = 0

    def accumulate(x):  # noqa: ANN001, ANN202
        nonlocal total
        total += x
        return total

    f = teleported(sem.Session(), accumulate)
    assert (f(2), f(3)) == (2, 5) and total == 0  # its own cell, on the receiver
    assert f.__code__.co_freevars == ("total",)
    step = 2
    g = teleported(sem.Session(), lambda v: v + step)
    assert g(1) == 3 and g.__code__.co_freevars == ("step",)


def test_teleport_pickle() -> None:
    server = sem.Session()
    try:
        import cloudpickle
    except ImportError:
        with pytest.raises(sem.TeleportError, match=r"cloudpickle is not installed on the server \(python \d+\.\d+ at "):
            server.handle(sem.BUILTIN, "teleport", ("pickle", b"\x80\x04N."))
        return
    payload = cloudpickle.dumps(lambda x: x + K)
    ref = server.handle(sem.BUILTIN, "teleport", ("pickle", payload))
    assert server.lookup(ref.id)(1) == 11
    with pytest.raises(sem.TeleportError, match="cannot be loaded"):
        server.handle(sem.BUILTIN, "teleport", ("pickle", b"garbage"))


def test_teleported_function_through_a_wired_session() -> None:
    server, client = pair()
    f = client.unbox(server.handle(sem.BUILTIN, "teleport", ("source", sem.teleport_payload(plain_function))))
    assert isinstance(f, sem.PeerObject) and f(1) == plain_function(1)
    # A proxy of the server's object used by the function is that object there.
    server_list = remote(server, client, "[]")

    def append(x):  # noqa: ANN001, ANN202
        server_list.append(x)
        return len(server_list)

    with pytest.raises(sem.TeleportError, match="cannot be copied"):
        sem.teleport_payload(append)
    g = client.unbox(server.handle(sem.BUILTIN, "teleport", ("source", sem.teleport_payload(append, client))))
    assert g(5) == 1 and list(server_list) == [5]


def test_teleport_annotations_and_default_expressions_are_not_evaluated_there() -> None:
    # LocalOnly is not importable on "the server" (a user module): annotations and
    # the default expression naming it must not be evaluated when the source runs.
    with pytest.raises(sem.TeleportError, match="kwdefaults|default value"):
        sem.teleport_payload(annotated)  # the default _SENTINEL cannot be copied
    annotated.__kwdefaults__ = {"z": None}
    try:
        f = teleported(sem.Session(), annotated)
        assert f(1) == (1, 3, True) and f.__annotations__["x"] == "LocalOnly"
    finally:
        annotated.__kwdefaults__ = {"z": _SENTINEL}


def test_teleport_imported_functions_by_name() -> None:
    fields = dict(sem.teleport_payload(uses_an_imported_function))
    assert dict(fields["attributes"]) == {"path_join": ("posixpath", "join")} or sys.platform == "win32"
    assert teleported(sem.Session(), uses_an_imported_function)("a") == "a/b" or sys.platform == "win32"
