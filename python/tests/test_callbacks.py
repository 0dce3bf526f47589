"""Callbacks: local functions and objects passed to the server travel by reference, and the
server's calls on them run here, without any thread the user started: nested client → server →
client → server, from a thread the server started, exceptions with the client's traceback, local
objects read and written by the server, and their references released afterwards."""

from __future__ import annotations

import os
import threading
import time

import farcall
import pytest
from _support import PROMPT_S

HELPERS = (
    "import threading\n"
    "def apply(f, *args, **kwargs):\n"
    "    return f(*args, **kwargs)\n"
    "def ping(f, n):\n"
    "    return ('server', n) + (f(n - 1) if n > 0 else ())\n"
    "def in_thread(f, x):\n"
    "    out = []\n"
    "    def run():\n"
    "        try:\n"
    "            out.append(('ok', f(x)))\n"
    "        except BaseException as e:\n"
    "            out.append(('error', repr(e)))\n"
    "    t = threading.Thread(target=run, name='server-side-thread')\n"
    "    t.start()\n"
    "    t.join(60)\n"
    "    return out[0] if out else ('hung',)\n"
    "def catch(f):\n"
    "    try:\n"
    "        f()\n"
    "    except Exception as e:\n"
    "        return (type(e).__name__, str(e))\n"
    "    return None\n"
    "def read_box(box):\n"
    "    return (box.value + 1, box.name.upper(), len(box.items), box.items[1], 'b' in box.items, box.describe('!'))\n"
    "def write_box(box):\n"
    "    box.value = 'set by the server'\n"
    "    box.items.append('c')\n"
    "    return None\n"
    "def keep(obj):\n"
    "    global kept\n"
    "    kept = obj\n"
    "def call_kept(*args):\n"
    "    return kept(*args)\n"
    "def drop_kept():\n"
    "    global kept\n"
    "    del kept\n"
)


@pytest.fixture
def remote(conn: farcall.Connection) -> farcall.Connection:
    conn.execute(HELPERS)
    return conn


class Box:
    def __init__(self) -> None:
        self.value = 41
        self.name = "box"
        self.items = ["a", "b"]

    def describe(self, suffix: str) -> str:
        return f"{self.name}{suffix}"


def test_local_function_called_by_the_server(remote: farcall.Connection) -> None:
    calls = []

    def double(x):
        calls.append((os.getpid(), x))
        return x * 2

    apply = remote.eval("apply")
    assert apply(double, 21) == 42
    assert apply(double, x=5) == 10
    assert calls == [(os.getpid(), 21), (os.getpid(), 5)]  # it ran here, in this process
    assert apply(len, "four") == 4  # a local builtin function
    assert apply(lambda *a, **k: (a, tuple(sorted(k.items()))), 1, 2, z=3) == ((1, 2), (("z", 3),))


def test_callback_results_that_are_objects(remote: farcall.Connection) -> None:
    local_list = [1, 2, 3]
    apply = remote.eval("apply")
    got = apply(lambda: local_list)  # the server gets a reference to our list, and sends it back home
    assert got is local_list


def test_nested_callbacks_client_server_client_server(remote: farcall.Connection) -> None:
    ping = remote.eval("ping")
    depth = []

    def pong(n):
        depth.append(n)
        return ("client", n) + (ping(pong, n - 1) if n > 0 else ())

    assert ping(pong, 4) == ("server", 4, "client", 3, "server", 2, "client", 1, "server", 0)
    assert depth == [3, 1]
    assert remote.modules.math.pow(2, 5) == 32.0  # the connection is in order afterwards


def test_callback_invoked_from_a_server_thread(remote: farcall.Connection) -> None:
    seen = []

    def record(x):
        seen.append(threading.current_thread().name)
        return x + 1

    assert remote.eval("in_thread")(record, 1) == ("ok", 2)
    assert len(seen) == 1


def test_callback_from_a_server_thread_calling_the_server_again(remote: farcall.Connection) -> None:
    def nested(x):
        return remote.modules.math.pow(x, 2)

    assert remote.eval("in_thread")(nested, 3) == ("ok", 9.0)


def test_callback_raising_a_builtin_exception(remote: farcall.Connection) -> None:
    def refuse(x):
        raise ValueError(f"refused {x}")

    with pytest.raises(ValueError) as info:
        remote.eval("apply")(refuse, 7)
    text = str(info.value)
    assert "refused 7" in text
    assert "refuse" in text and "test_callbacks.py" in text, f"the client traceback is missing:\n{text}"
    name, message = remote.eval("catch")(lambda: refuse(8))  # the server sees a ValueError it can catch
    assert name == "ValueError" and "refused 8" in message


def test_callback_exception_seen_and_caught_by_the_server(remote: farcall.Connection) -> None:
    def refuse():
        raise KeyError("nope")

    class OnlyHere(Exception):
        pass

    def custom():
        raise OnlyHere("local type")

    name, message = remote.eval("catch")(refuse)
    assert name == "KeyError" and "nope" in message
    name, message = remote.eval("catch")(custom)
    assert name == "RemoteError"  # a type the server does not have
    assert "OnlyHere" in message and "local type" in message and "custom" in message
    with pytest.raises(farcall.RemoteError) as info:
        remote.eval("apply")(custom)
    assert "OnlyHere" in str(info.value)


def test_local_object_read_and_written_by_the_server(remote: farcall.Connection) -> None:
    box = Box()
    assert remote.eval("read_box")(box) == (42, "BOX", 2, "b", True, "box!")
    remote.eval("write_box")(box)
    assert box.value == "set by the server"
    assert box.items == ["a", "b", "c"]


def test_server_keeps_a_callback_and_calls_it_later(remote: farcall.Connection) -> None:
    calls = []
    remote.eval("keep")(calls.append)
    remote.eval("call_kept")("first")
    remote.eval("call_kept")("second")
    assert calls == ["first", "second"]
    remote.eval("drop_kept")()


def test_local_objects_are_released_when_the_server_drops_them(remote: farcall.Connection) -> None:
    before = remote.stats()
    remote.eval("keep")(Box())
    assert remote.stats()["local_objects"] == before["local_objects"] + 1
    remote.eval("drop_kept")()
    for _ in range(3):  # releases travel ahead of later messages
        remote.eval("1")
    assert remote.stats()["local_objects"] == before["local_objects"]
    assert remote.stats()["local_exported_total"] > before["local_exported_total"]


def test_a_proxy_passed_back_is_the_server_object_not_a_callback(remote: farcall.Connection) -> None:
    remote_list = remote.eval("[1]")
    same = remote.eval("apply")(lambda x: x, remote_list)
    assert same == remote_list
    assert remote.eval("apply")(len, remote_list) == 1  # len runs here, on the proxy


def test_callback_from_a_server_thread_after_the_call_returned(remote: farcall.Connection) -> None:
    """A server thread may call back while the client makes no call: `conn.serve` performs it."""
    remote.execute(
        "results = []\n"
        "def start_later(f):\n"
        "    global worker\n"
        "    worker = threading.Thread(target=lambda: results.append(f(5)))\n"
        "    worker.start()\n"
    )
    got = []
    remote.eval("start_later")(lambda x: got.append(x) or x * 2)
    deadline = time.monotonic() + PROMPT_S
    while not got and time.monotonic() < deadline:
        remote.serve(timeout=0.2)  # (the callback may also have come while start_later was in flight)
    assert got == [5]
    remote.execute("worker.join(10)")
    assert remote.eval("tuple(results)") == (10,)
    assert remote.serve(timeout=0.05) == 0  # nothing more to serve
