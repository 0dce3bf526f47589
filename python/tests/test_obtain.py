"""`farcall.obtain` copies remote containers of plain values into local objects, `farcall.deliver`
copies local ones to the server; nested, both ways, and a clear TypeError for what cannot be copied."""

from __future__ import annotations

import socket
import threading

import farcall
import pytest
from _support import assert_same_value

NESTED = {
    "ints": [1, 2, 3, 2**70, -(2**64)],
    "mixed": [None, True, 1.5, 2j, "text", b"bytes", (1, (2, 3)), frozenset({1, 2})],
    "nested": {"a": [{"b": {"c": [1, {2, 3}]}}]},
    (1, "tuple key"): {4, 5, 6},
    7: [],
    "empty": {},
}


def test_obtain_copies_a_remote_list(module_conn: farcall.Connection) -> None:
    remote = module_conn.eval("list(range(1000))")
    assert isinstance(remote, farcall.Proxy)
    local = farcall.obtain(remote)
    assert type(local) is list and local == list(range(1000))
    local.append("local only")
    assert len(remote) == 1000  # a copy: the remote list is untouched


def test_obtain_copies_nested_containers(module_conn: farcall.Connection) -> None:
    remote = module_conn.eval(repr(NESTED))
    local = farcall.obtain(remote)
    assert local == NESTED
    assert type(local["nested"]["a"][0]["b"]["c"][1]) is set
    assert_same_value(local["mixed"][6], (1, (2, 3)))
    assert type(local[(1, "tuple key")]) is set


def test_obtain_of_dicts_sets_and_subclasses(module_conn: farcall.Connection) -> None:
    assert farcall.obtain(module_conn.eval("{'x': 1, 'y': [2]}")) == {"x": 1, "y": [2]}
    assert farcall.obtain(module_conn.eval("{1, 2, 3}")) == {1, 2, 3}
    counter = farcall.obtain(module_conn.modules.collections.Counter("abracadabra"))
    assert type(counter) is dict and counter["a"] == 5  # a dict subclass comes as a dict
    ordered = farcall.obtain(module_conn.eval("__import__('collections').OrderedDict([('z', 1), ('a', 2)])"))
    assert type(ordered) is dict and list(ordered) == ["z", "a"]  # order kept
    deque_items = module_conn.modules.collections.deque((1, 2, 3))
    with pytest.raises(TypeError, match="deque"):
        farcall.obtain(deque_items)  # not a list, dict or set: not copied
    assert farcall.obtain(module_conn.builtins.list(deque_items)) == [1, 2, 3]


def test_obtain_passes_local_values_through(module_conn: farcall.Connection) -> None:
    for value in (None, 1, "s", b"b", 1.5, (1, 2), frozenset({3})):
        assert_same_value(farcall.obtain(value), value)
    local = [1, 2]
    assert farcall.obtain(local) is local
    pair = (module_conn.eval("[1]"), 2)
    assert farcall.obtain(pair) == ([1], 2)  # the proxies of a tuple are copied


def test_obtain_refuses_what_cannot_be_copied_and_says_where(module_conn: farcall.Connection) -> None:
    module_conn.execute("import socket, threading\nholder = [1, {'k': threading.Lock()}]")
    with pytest.raises(TypeError) as info:
        farcall.obtain(module_conn.eval("holder"))
    message = str(info.value)
    assert "lock" in message.lower() and "[1]['k']" in message, message
    with pytest.raises(TypeError, match="function"):
        farcall.obtain(module_conn.eval("[len]"))
    assert module_conn.modules.math.pow(2, 2) == 4.0  # the connection goes on


def test_obtain_refuses_cycles_and_deep_nesting_cleanly(module_conn: farcall.Connection) -> None:
    module_conn.execute("cyclic = []\ncyclic.append(cyclic)\ndeep = []\nd = deep\nfor _ in range(100):\n    d.append([])\n    d = d[0]")
    with pytest.raises((TypeError, ValueError, farcall.FarcallError)):
        farcall.obtain(module_conn.eval("cyclic"))
    with pytest.raises((TypeError, ValueError, farcall.FarcallError)):
        farcall.obtain(module_conn.eval("deep"))
    assert module_conn.eval("1 + 1") == 2


def test_deliver_makes_a_remote_copy(conn: farcall.Connection) -> None:
    local = [1, {"a": (2, 3), "b": {4, 5}}, [6, [7]]]
    remote = farcall.deliver(conn, local)
    assert isinstance(remote, farcall.Proxy)
    assert conn.builtins.type(remote).__name__ == "list"
    assert conn.builtins.type(remote[1]["b"]).__name__ == "set"
    remote.append(8)
    remote[2][1].append("remote only")
    assert local == [1, {"a": (2, 3), "b": {4, 5}}, [6, [7]]]  # the local object is untouched
    assert farcall.obtain(remote) == [1, {"a": (2, 3), "b": {4, 5}}, [6, [7, "remote only"]], 8]


def test_deliver_and_obtain_round_trip(conn: farcall.Connection) -> None:
    back = farcall.obtain(farcall.deliver(conn, NESTED))
    assert back == NESTED
    assert_same_value(back["mixed"][3], 2j)


def test_deliver_of_plain_values_returns_them(conn: farcall.Connection) -> None:
    for value in (None, 42, "s", b"b", (1, (2, "x")), frozenset({1})):
        assert_same_value(farcall.deliver(conn, value), value)


def test_deliver_then_use_on_the_server(conn: farcall.Connection) -> None:
    conn.namespace["data"] = farcall.deliver(conn, {"xs": [3, 1, 2]})
    conn.execute("data['xs'].sort()")
    assert conn.eval("data['xs']") == conn.eval("[1, 2, 3]")
    assert farcall.obtain(conn.eval("data")) == {"xs": [1, 2, 3]}


def test_deliver_refuses_what_cannot_be_copied(conn: farcall.Connection) -> None:
    with socket.socket() as sock:
        with pytest.raises(TypeError, match="socket"):
            farcall.deliver(conn, [1, {"k": sock}])
    with pytest.raises(TypeError):
        farcall.deliver(conn, [threading.Lock()])
    assert conn.eval("2 * 21") == 42


def test_deliver_needs_a_connection() -> None:
    with pytest.raises(TypeError):
        farcall.deliver("not a connection", [1])  # type: ignore[arg-type]
