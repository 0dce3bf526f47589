"""Proxies: modules, attributes, calls with keyword arguments, proxies passed back,
the per-connection module cache, the mutation policy, and releasing remote objects."""

from __future__ import annotations

import math
import time
from pathlib import Path

import farcall
import pytest
from _support import Server, assert_runs_on_the_server

# -- modules and their cache ---------------------------------------------------


def test_modules_are_proxies(conn: farcall.Connection) -> None:
    assert isinstance(conn.modules.math, farcall.Proxy)
    assert isinstance(conn.modules["os.path"], farcall.Proxy)
    assert isinstance(conn.modules.math.pow, farcall.Proxy)
    assert isinstance(conn.modules.os.path, farcall.Proxy)


def test_module_proxies_are_cached_per_connection(conn: farcall.Connection) -> None:
    assert conn.modules.math is conn.modules.math
    assert conn.modules["math"] is conn.modules.math
    assert conn.modules["os.path"] is conn.modules["os.path"]


def test_each_connection_has_its_own_module_proxies(server: Server, conn: farcall.Connection) -> None:
    with server.connect() as other:
        assert other.modules.math is not conn.modules.math
        assert other.modules.math.pow(2, 3) == conn.modules.math.pow(2, 3) == 8.0


def test_dotted_and_attribute_paths_reach_the_same_module(conn: farcall.Connection) -> None:
    assert conn.modules["os.path"].join("x", "y") == conn.modules.os.path.join("x", "y") == "x/y"
    assert conn.modules["xml.dom.minidom"].parseString("<a/>").documentElement.tagName == "a"


def test_repr_of_a_proxy_is_a_string_not_the_object(conn: farcall.Connection) -> None:
    remote_list = conn.modules.builtins.list((1, 2, 3))
    assert isinstance(repr(remote_list), str)
    assert not isinstance(remote_list, list)
    assert "math" in repr(conn.modules.math)


def test_missing_attribute_raises_attribute_error(conn: farcall.Connection) -> None:
    with pytest.raises(AttributeError) as info:
        conn.modules.math.no_such_attribute
    assert "no_such_attribute" in str(info.value)
    assert hasattr(conn.modules.math, "no_such_attribute") is False
    assert hasattr(conn.modules.math, "pow") is True


# -- calls ---------------------------------------------------------------------


def test_calls_with_keyword_arguments(conn: farcall.Connection) -> None:
    b = conn.modules.builtins
    assert b.int("ff", base=16) == 255
    assert b.tuple(b.sorted((3, 1, 2), reverse=True)) == (3, 2, 1)
    assert b.round(2.675, ndigits=2) == round(2.675, ndigits=2)
    assert conn.modules.os.path.join("a", "b", "c") == "a/b/c"
    assert conn.modules.json.dumps(("a", 1), separators=(",", ":")) == '["a",1]'


def test_calling_a_class_makes_an_instance(conn: farcall.Connection) -> None:
    namespace = conn.modules.argparse.Namespace(x=1, y="two")
    assert isinstance(namespace, farcall.Proxy)
    assert namespace.x == 1
    assert namespace.y == "two"


def test_methods_of_remote_objects(conn: farcall.Connection) -> None:
    remote_list = conn.modules.builtins.list((3, 1, 2))
    remote_list.sort(reverse=True)
    assert conn.modules.builtins.tuple(remote_list) == (3, 2, 1)
    assert remote_list.index(1) == 2
    assert conn.modules.hashlib.sha256(b"abc").hexdigest() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_proxies_can_be_passed_back_as_arguments(conn: farcall.Connection) -> None:
    b = conn.modules.builtins
    remote_list = b.list((1, 2, 3))
    assert b.len(remote_list) == 3
    assert b.tuple(remote_list) == (1, 2, 3)
    assert b.isinstance(remote_list, b.list) is True
    assert b.getattr(conn.modules.math, "pi") == math.pi
    assert conn.modules.functools.reduce(conn.modules.operator.add, (1, 2, 3, 4)) == 10


def test_proxies_can_be_passed_back_as_keyword_arguments(conn: farcall.Connection) -> None:
    b = conn.modules.builtins
    assert b.tuple(b.sorted((3, -5, 1), key=b.abs)) == (1, 3, -5)
    assert b.tuple(b.sorted((3, 1, 2), key=conn.modules.operator.neg)) == (3, 2, 1)


def test_calling_a_non_callable_raises_type_error(conn: farcall.Connection) -> None:
    remote_path_list = conn.modules.sys.path
    with pytest.raises(TypeError):
        remote_path_list()


# -- the remote really is remote -----------------------------------------------


def test_the_code_runs_on_the_server(server: Server, conn: farcall.Connection) -> None:
    """Embedded: inside `farcall serve` itself; subprocess: in a worker process the server started."""
    assert_runs_on_the_server(server, conn.modules.os.getpid())


def test_modules_come_from_the_server_side(start_extra_server, tmp_path: Path) -> None:
    """A module that exists only on the server's PYTHONPATH is importable remotely."""
    site = tmp_path / "server_site"
    site.mkdir()
    (site / "farcall_server_only.py").write_text(
        "import os\n"
        "WHERE = 'server'\n"
        "class MyError(Exception):\n"
        "    pass\n"
        "def pid():\n"
        "    return os.getpid()\n"
        "def fail(message):\n"
        "    raise MyError(message)\n"
    )
    with pytest.raises(ImportError):
        __import__("farcall_server_only")

    srv = start_extra_server(env={"PYTHONPATH": str(site)})
    with srv.connect() as conn:
        remote = conn.modules.farcall_server_only
        assert remote.WHERE == "server"
        assert_runs_on_the_server(srv, remote.pid())
        with pytest.raises(farcall.RemoteError) as info:
            remote.fail("custom")
        assert info.value.remote_type == "farcall_server_only.MyError"
        assert "custom" in str(info.value)
        assert "in fail" in info.value.remote_traceback


# -- mutation: allowed by default, refused by `[policy] allow_setattr = false` ---------


def test_setting_and_deleting_attributes_is_allowed_by_default(conn: farcall.Connection) -> None:
    namespace = conn.modules.argparse.Namespace(x=1)
    namespace.x = 2
    namespace.y = [3]
    assert (namespace.x, namespace.y[0]) == (2, 3)
    del namespace.x
    assert not hasattr(namespace, "x")


def test_setting_an_attribute_is_refused_and_changes_nothing(guarded_server: Server) -> None:
    with guarded_server.connect() as conn:
        remote_math = conn.modules.math
        with pytest.raises(farcall.PolicyError) as info:
            remote_math.pi = 3
        assert isinstance(info.value, PermissionError)
        assert isinstance(info.value, farcall.FarcallError)
        assert "allow_setattr" in str(info.value) or "mutation" in str(info.value)
        assert remote_math.pi == math.pi
        with guarded_server.connect() as other:
            assert other.modules.math.pi == math.pi


def test_adding_an_attribute_is_refused(guarded_server: Server) -> None:
    with guarded_server.connect() as conn:
        with pytest.raises(farcall.PolicyError):
            conn.modules.math.farcall_new_attribute = 1
        assert hasattr(conn.modules.math, "farcall_new_attribute") is False


def test_setting_an_attribute_on_an_instance_is_refused(guarded_server: Server) -> None:
    with guarded_server.connect() as conn:
        namespace = conn.modules.argparse.Namespace(x=1)
        with pytest.raises(farcall.PolicyError):
            namespace.x = 2
        assert namespace.x == 1


def test_deleting_an_attribute_is_refused(guarded_server: Server) -> None:
    with guarded_server.connect() as conn:
        remote_math = conn.modules.math
        with pytest.raises(farcall.PolicyError):
            del remote_math.pi
        assert remote_math.pi == math.pi


def test_the_connection_works_after_a_refused_mutation(guarded_server: Server) -> None:
    with guarded_server.connect() as conn:
        with pytest.raises(farcall.PolicyError):
            conn.modules.math.e = 0
        assert conn.modules.math.pow(3, 2) == 9.0


# -- releasing remote objects --------------------------------------------------


def _wait_until_dead(finalizer, timeout: float = 10.0) -> bool:
    """Poll the remote `weakref.finalize(...).alive` until it is False or `timeout` passes.

    Releases are batched and asynchronous, so this is a condition to wait for;
    each poll is a remote call and reads a bool, creating no new reference.
    """
    deadline = time.monotonic() + timeout
    while finalizer.alive:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_dropping_the_last_proxy_releases_the_remote_object(conn: farcall.Connection) -> None:
    obj = conn.modules.argparse.Namespace()
    finalizer = conn.modules.weakref.finalize(obj, conn.modules.builtins.len, ())
    for _ in range(20):  # the server keeps objects that a proxy still stands for
        assert conn.modules.math.pow(3, 2) == 9.0
    assert finalizer.alive is True
    del obj
    assert _wait_until_dead(finalizer), "the remote object outlived its last proxy"


def test_an_object_lives_while_any_proxy_to_it_lives(conn: farcall.Connection) -> None:
    b = conn.modules.builtins
    obj = conn.modules.argparse.Namespace()
    finalizer = conn.modules.weakref.finalize(obj, b.len, ())
    holder = b.list()
    holder.append(obj)
    second = holder.pop()  # a second proxy to the same remote object; the list no longer holds it
    del obj
    for _ in range(20):
        assert b.len(holder) == 0
    assert finalizer.alive is True
    del second
    assert _wait_until_dead(finalizer), "the remote object outlived its last proxy"


def test_many_dropped_proxies_are_all_released(conn: farcall.Connection) -> None:
    first = conn.modules.argparse.Namespace()
    finalizer = conn.modules.weakref.finalize(first, conn.modules.builtins.len, ())
    objects = [first] + [conn.modules.argparse.Namespace() for _ in range(500)]
    del first
    last_finalizer = conn.modules.weakref.finalize(objects[-1], conn.modules.builtins.len, ())
    objects.clear()
    assert _wait_until_dead(finalizer)
    assert _wait_until_dead(last_finalizer)


TRACKER_MODULE = """
live = 0

class Tracked:
    def __init__(self):
        global live
        live += 1

    def __del__(self):
        global live
        live -= 1
"""


@pytest.mark.backends(
    "embedded",
    reason="an observer session sees another session's objects only where sessions share one interpreter;"
    " a subprocess session's objects end with its worker (test_subprocess.py checks that the worker is reaped)",
)
def test_closing_a_connection_releases_its_objects(start_extra_server, tmp_path: Path) -> None:
    site = tmp_path / "server_site"
    site.mkdir()
    (site / "farcall_tracker.py").write_text(TRACKER_MODULE)
    srv = start_extra_server(env={"PYTHONPATH": str(site)})
    with srv.connect() as observer:
        holder = srv.connect()
        objects = [holder.modules.farcall_tracker.Tracked() for _ in range(10)]
        assert observer.modules.farcall_tracker.live == 10
        holder.close()
        deadline = time.monotonic() + 10
        while observer.modules.farcall_tracker.live != 0:
            assert time.monotonic() < deadline, "closing the connection did not release its objects"
            time.sleep(0.01)
        objects.clear()  # dropping proxies of a closed connection is harmless
        assert observer.modules.math.pow(3, 2) == 9.0
