"""`conn.builtins`, `conn.eval`, `conn.execute` and `conn.namespace`: one namespace per connection,
that `execute` fills and `eval` reads."""

from __future__ import annotations

import farcall
import pytest
from _support import Server, assert_shows_remote_traceback


def test_builtins_is_the_remote_builtins_module(conn: farcall.Connection) -> None:
    assert isinstance(conn.builtins, farcall.Proxy)
    assert conn.builtins is conn.modules.builtins
    assert conn.builtins.len("abc") == 3
    assert conn.builtins.sum(conn.builtins.range(5)) == 10


def test_eval_returns_values_and_proxies(conn: farcall.Connection) -> None:
    assert conn.eval("1 + 2") == 3
    assert conn.eval("'a' * 3") == "aaa"
    assert conn.eval("(1, (2.5, None))") == (1, (2.5, None))
    remote_list = conn.eval("[1, 2]")
    assert isinstance(remote_list, farcall.Proxy)
    assert len(remote_list) == 2


def test_execute_then_eval_sees_its_names(conn: farcall.Connection) -> None:
    assert conn.execute("x = 20\ndef double(v):\n    return v * 2\nimport math") is None
    assert conn.eval("x") == 20
    assert conn.eval("double(x) + 2") == 42
    assert conn.eval("math.pi") == pytest.approx(3.14159265)
    double = conn.eval("double")
    assert double(4) == 8
    conn.execute("x += 1")
    assert conn.eval("x") == 21


def test_namespace_is_the_session_namespace(conn: farcall.Connection) -> None:
    ns = conn.namespace
    assert isinstance(ns, farcall.Proxy)
    assert conn.namespace == ns  # the same remote dict
    conn.execute("y = 'from execute'")
    assert ns["y"] == "from execute"
    ns["z"] = (1, 2)
    assert conn.eval("z") == (1, 2)
    assert "z" in ns
    del ns["z"]
    with pytest.raises(NameError):
        conn.eval("z")
    assert "y" in list(ns.keys())


def test_functions_defined_by_execute_see_the_namespace_as_their_globals(conn: farcall.Connection) -> None:
    conn.execute("counter = 0\ndef bump():\n    global counter\n    counter += 1\n    return counter")
    bump = conn.namespace["bump"]
    assert bump() == 1
    assert bump() == 2
    assert conn.eval("counter") == 2
    assert conn.eval("globals()['counter']") == 2


def test_one_namespace_per_connection(server: Server, conn: farcall.Connection) -> None:
    conn.execute("secret = 'first'")
    with server.connect() as other:
        with pytest.raises(NameError):
            other.eval("secret")
        other.execute("secret = 'second'")
        assert other.eval("secret") == "second"
    assert conn.eval("secret") == "first"


def test_errors_of_eval_and_execute(conn: farcall.Connection) -> None:
    with pytest.raises(SyntaxError):
        conn.eval("1 +")
    with pytest.raises(SyntaxError):
        conn.eval("x = 1")  # a statement is not an expression
    with pytest.raises(ZeroDivisionError) as info:
        conn.execute("def f():\n    return 1 / 0\nf()")
    assert_shows_remote_traceback(info.value)
    assert "in f" in info.value.remote_traceback
    with pytest.raises(NameError):
        conn.eval("no_such_name")
    with pytest.raises(TypeError):
        conn.eval(42)  # type: ignore[arg-type]
    assert conn.eval("'still usable'") == "still usable"


def test_eval_and_execute_run_on_the_server(server: Server, conn: farcall.Connection) -> None:
    import os

    pid = conn.eval("__import__('os').getpid()")
    assert pid != os.getpid()
    conn.execute("import os\nwhere = os.getpid()")
    assert conn.eval("where") == pid
