"""`conn.teleport(func)`: plain functions, defaults and keyword-only defaults, closures, lambdas,
nested and recursive functions, functions of `__main__` and of code with no source file, imports
resolved on the server, globals shipped by value; each by `auto` (cloudpickle when it can) and by
`source`; clear `farcall.TeleportError`s when neither can."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import farcall
import pytest
from _support import PROMPT_S, Server, assert_runs_on_the_server

METHODS = ("auto", "source")

SCALE = 7
TABLE = {"offset": 1, "names": ["a", "b"]}
LOCK = threading.Lock()


def add(a, b):
    return a + b


def with_defaults(a, b=10, *args, c=100, d=None, **kwargs):
    return (a, b, args, c, d, tuple(sorted(kwargs.items())))


def factorial(n):
    return 1 if n <= 1 else n * factorial(n - 1)


def scaled(x):
    return x * SCALE + TABLE["offset"] + len(TABLE["names"])


def dumps_sorted(value):
    return json.dumps(value, sort_keys=True)


def server_facts():
    import os
    import sys

    return (os.getpid(), sys.prefix)


def helper_twice(x):
    return 2 * x


def uses_helper(x):
    return helper_twice(x) + 1


def uses_lock():
    return LOCK.locked()


def make_adder(n):
    def adder(x):
        return x + n

    return adder


def server_has_cloudpickle(conn: farcall.Connection) -> bool:
    """Whether the server can load what our cloudpickle makes: we have cloudpickle, and so has the
    server, of our major version (a pickle of cloudpickle 3 does not load with cloudpickle 2)."""
    try:
        import cloudpickle
    except ImportError:
        return False

    theirs = conn.eval("getattr(__import__('importlib.util').util.find_spec('cloudpickle'), 'name', None)")
    if theirs is None:
        return False
    version = conn.eval("__import__('cloudpickle').__version__")
    return version.split(".")[0] == cloudpickle.__version__.split(".")[0]


# -- what can be teleported, each way ----------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_plain_function(module_conn: farcall.Connection, method: str) -> None:
    remote = module_conn.teleport(add, method=method)
    assert isinstance(remote, farcall.Proxy)
    assert remote(2, 3) == 5
    assert remote("a", b="b") == "ab"
    assert remote.__name__ == "add"


@pytest.mark.parametrize("method", METHODS)
def test_defaults_and_keyword_only_defaults(module_conn: farcall.Connection, method: str) -> None:
    remote = module_conn.teleport(with_defaults, method=method)
    assert remote(1) == (1, 10, (), 100, None, ())
    assert remote(1, 2, 3, c=4, e=5) == (1, 2, (3,), 4, None, (("e", 5),))
    assert remote(a=0, d="d") == (0, 10, (), 100, "d", ())


@pytest.mark.parametrize("method", METHODS)
def test_closure(module_conn: farcall.Connection, method: str) -> None:
    remote = module_conn.teleport(make_adder(5), method=method)
    assert remote(1) == 6
    prefix = "hello, "

    def greet(name):
        return prefix + name

    assert module_conn.teleport(greet, method=method)("world") == "hello, world"


@pytest.mark.parametrize("method", METHODS)
def test_lambda(module_conn: farcall.Connection, method: str) -> None:
    triple = lambda x: x * 3  # noqa: E731
    assert module_conn.teleport(triple, method=method)(14) == 42


@pytest.mark.parametrize("method", METHODS)
def test_nested_function(module_conn: farcall.Connection, method: str) -> None:
    def describe(items, sep="-"):
        return sep.join(str(i) for i in sorted(items))

    remote = module_conn.teleport(describe, method=method)
    assert remote((3, 1, 2)) == "1-2-3"
    assert remote(module_conn.eval("{5, 4}"), sep="+") == "4+5"  # a proxy argument goes home


@pytest.mark.parametrize("method", METHODS)
def test_recursive_functions(module_conn: farcall.Connection, method: str) -> None:
    assert module_conn.teleport(factorial, method=method)(10) == 3628800

    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    assert module_conn.teleport(fib, method=method)(15) == 610


@pytest.mark.parametrize("method", METHODS)
def test_imports_resolve_on_the_server(server: Server, module_conn: farcall.Connection, method: str) -> None:
    pid, prefix = module_conn.teleport(server_facts, method=method)()
    assert_runs_on_the_server(server, pid)
    assert prefix == module_conn.modules.sys.prefix
    data = farcall.deliver(module_conn, {"b": 1, "a": [2]})  # a local dict would travel by reference
    assert module_conn.teleport(dumps_sorted, method=method)(data) == '{"a": [2], "b": 1}'


@pytest.mark.parametrize("method", METHODS)
def test_globals_are_shipped_by_value(module_conn: farcall.Connection, method: str) -> None:
    remote = module_conn.teleport(scaled, method=method)
    assert remote(5) == 5 * 7 + 1 + 2
    with pytest.raises(NameError):
        module_conn.eval("SCALE")  # shipped with the function, not put in the session namespace
    assert module_conn.teleport(uses_helper, method=method)(20) == 41  # a global function goes along


@pytest.mark.parametrize("method", METHODS)
def test_teleported_function_result_is_a_remote_object(module_conn: farcall.Connection, method: str) -> None:
    def make_list(n):
        return list(range(n))

    result = module_conn.teleport(make_list, method=method)(4)
    assert isinstance(result, farcall.Proxy)
    assert farcall.obtain(result) == [0, 1, 2, 3]


@pytest.mark.parametrize("method", METHODS)
def test_exception_raised_by_a_teleported_function(module_conn: farcall.Connection, method: str) -> None:
    def divide(a, b):
        return a / b

    with pytest.raises(ZeroDivisionError) as info:
        module_conn.teleport(divide, method=method)(1, 0)
    assert "divide" in info.value.remote_traceback


@pytest.mark.parametrize("method", METHODS)
def test_a_proxy_used_by_the_function_is_the_server_object_again(module_conn: farcall.Connection, method: str) -> None:
    remote_list = module_conn.eval("[1, 2, 3]")

    def total_and_grow():
        remote_list.append(len(remote_list) + 1)
        return sum(remote_list)

    assert module_conn.teleport(total_and_grow, method=method)() == 10
    assert farcall.obtain(remote_list) == [1, 2, 3, 4]  # the function worked on the remote list itself


# -- functions without a source file ---------------------------------------------------------


def _without_source() -> Any:
    namespace: dict[str, Any] = {"FACTOR": 6}
    exec("def made_by_exec(x):\n    return x * FACTOR\n", namespace)
    return namespace["made_by_exec"]


def test_function_without_source_goes_by_cloudpickle(module_conn: farcall.Connection) -> None:
    func = _without_source()
    if server_has_cloudpickle(module_conn):
        assert module_conn.teleport(func)(7) == 42
        assert module_conn.teleport(func, method="pickle")(7) == 42
    else:
        with pytest.raises(farcall.TeleportError, match="cloudpickle") as info:
            module_conn.teleport(func)
        assert "source" in str(info.value)  # and says why the source could not be used either


def test_function_without_source_cannot_go_by_source(module_conn: farcall.Connection) -> None:
    with pytest.raises(farcall.TeleportError, match="made_by_exec"):
        module_conn.teleport(_without_source(), method="source")


def test_pickle_method_says_why_it_cannot(module_conn: farcall.Connection) -> None:
    if server_has_cloudpickle(module_conn):
        assert module_conn.teleport(add, method="pickle")(1, 2) == 3
    else:
        with pytest.raises(farcall.TeleportError, match="cloudpickle"):
            module_conn.teleport(add, method="pickle")


def test_a_server_that_loads_no_pickle_of_ours_is_remembered(conn: farcall.Connection) -> None:
    """After one failed pickle, the connection goes straight to the source (no wasted round trip),
    but only when the server loads no pickle at all, not when one function could not be loaded."""
    assert conn.teleport(add)(1, 2) == 3
    assert bool(conn._teleport_memo) == (not server_has_cloudpickle(conn))
    assert conn.teleport(scaled)(1) == 10
    if conn._teleport_memo:
        with pytest.raises(farcall.TeleportError, match="cloudpickle"):
            conn.teleport(add, method="pickle")


def test_a_global_that_cannot_be_copied_is_a_teleport_error(module_conn: farcall.Connection) -> None:
    with pytest.raises(farcall.TeleportError):
        module_conn.teleport(uses_lock, method="source")
    with pytest.raises(farcall.TeleportError):
        module_conn.teleport(uses_lock)
    assert module_conn.eval("1") == 1


def test_bad_arguments(module_conn: farcall.Connection) -> None:
    with pytest.raises(ValueError, match="method"):
        module_conn.teleport(add, method="bytecode")
    with pytest.raises(TypeError):
        module_conn.teleport(42)  # type: ignore[arg-type]


# -- functions of __main__ -------------------------------------------------------------------

MAIN_SCRIPT = """
import json, sys
import farcall

FACTOR = 3

def scale(x):
    return x * FACTOR

def count_down(n):
    return [] if n == 0 else [n] + count_down(n - 1)

url, options, methods = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3].split(",")
with farcall.connect(url, **options) as conn:
    for method in methods:
        out = [conn.teleport(scale, method=method)(14), farcall.obtain(conn.teleport(count_down, method=method)(3))]
        print(json.dumps([method, out]), flush=True)
"""


def _run_client(server: Server, script_args: list[str], methods: str, stdin: str | None = None) -> list[Any]:
    options = {k: os.fspath(v) for k, v in server.connect_kwargs.items()}
    done = subprocess.run(
        [sys.executable, *script_args, server.url, json.dumps(options), methods],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=PROMPT_S * 6,
    )
    assert done.returncode == 0, f"client script failed:\n{done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_functions_defined_in_main(server: Server, tmp_path: Path) -> None:
    script = tmp_path / "teleport_main.py"
    script.write_text(MAIN_SCRIPT)
    got = _run_client(server, [str(script)], "auto,source")
    assert got == [["auto", [42, [3, 2, 1]]], ["source", [42, [3, 2, 1]]]]


def test_functions_typed_into_an_interpreter(server: Server) -> None:
    """`python -` reads the program from stdin, as an interactive session does: its functions have no
    source file, so they can only travel by cloudpickle."""
    with server.connect() as conn:
        has_cloudpickle = server_has_cloudpickle(conn)
    if has_cloudpickle:
        got = _run_client(server, ["-"], "auto", stdin=textwrap.dedent(MAIN_SCRIPT))
        assert got == [["auto", [42, [3, 2, 1]]]]
    else:
        failing = MAIN_SCRIPT.replace(
            "    for method in methods:",
            "    try:\n        conn.teleport(scale)\n    except farcall.TeleportError as e:\n"
            "        print(json.dumps(['error', str(e)]))\n    for method in []:",
        )
        got = _run_client(server, ["-"], "auto", stdin=failing)
        assert got[0][0] == "error" and "cloudpickle" in got[0][1], got


# -- a server on another Python minor version -------------------------------------------------


def other_minor_python() -> str | None:
    """An interpreter of another Python 3 minor version than this one (3.8 or later), if the machine
    has one: `python3.X` on the PATH, or a pyenv version."""
    ours = sys.version_info[:2]
    candidates = [shutil.which(f"python3.{minor}") for minor in range(8, 20) if (3, minor) != ours]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")))
    for path in filter(None, candidates):
        try:
            done = subprocess.run(
                [path, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True, timeout=30
            )
        except OSError:
            continue
        if done.returncode == 0:
            version = tuple(int(part) for part in done.stdout.split())
            if version != ours and version >= (3, 8):
                return path
    return None


@pytest.mark.backends("subprocess", reason="the subprocess backend can run workers on another Python version")
@pytest.mark.transports("tcp", reason="which Python the server runs does not depend on the transport")
def test_a_server_on_another_python_minor_gets_the_source(start_extra_server) -> None:
    """Pickled code only loads on the same minor version: `auto` sends the source instead, and a
    function without source is a TeleportError naming both versions, never a bytecode error."""
    other = other_minor_python()
    if other is None:
        pytest.skip("no Python of another minor version on this machine")
    srv = start_extra_server(evaluator={"python": other})
    with srv.connect() as conn:
        theirs = conn.server_info["python_version"]
        ours = "%d.%d" % sys.version_info[:2]
        assert not theirs.startswith(ours + ".")
        assert conn.teleport(scaled)(5) == 38
        assert conn.teleport(make_adder(2))(1) == 3
        assert farcall.obtain(conn.teleport(lambda x: [x] * 2)(0)) == [0, 0]
        with pytest.raises(farcall.TeleportError) as info:
            conn.teleport(_without_source())
        message = str(info.value)
        assert theirs in message and ours in message and "source" in message, message
        with pytest.raises(farcall.TeleportError, match="minor version"):
            conn.teleport(add, method="pickle")
