"""Remote exceptions are raised locally: built-in types as subclasses of the
built-in class, others as `farcall.RemoteError`, always with the remote traceback."""

from __future__ import annotations

import errno
from collections.abc import Callable

import farcall
import pytest
from _support import assert_shows_remote_traceback

# (expected built-in class, remote action, text the message must contain)
BUILTIN_CASES: dict[str, tuple[type[BaseException], Callable[[farcall.Connection], object], str]] = {
    "ValueError": (ValueError, lambda c: c.modules.math.sqrt(-1), "math domain error"),
    "ZeroDivisionError": (ZeroDivisionError, lambda c: c.modules.operator.truediv(1, 0), "division by zero"),
    "KeyError": (KeyError, lambda c: c.modules.operator.getitem(c.modules.builtins.dict(), "missing"), "missing"),
    "IndexError": (IndexError, lambda c: c.modules.operator.getitem((1,), 5), "index out of range"),
    "TypeError (arity)": (TypeError, lambda c: c.modules.math.pow(1), "pow"),
    "TypeError (argument type)": (TypeError, lambda c: c.modules.math.sqrt("x"), "must be real number"),
    "TypeError (keyword)": (TypeError, lambda c: c.modules.builtins.int("1", bogus=2), "bogus"),
    "OverflowError": (OverflowError, lambda c: c.modules.math.exp(1000), "math range error"),
    "AttributeError": (AttributeError, lambda c: c.modules.math.no_such_attribute, "no_such_attribute"),
    "ModuleNotFoundError": (ModuleNotFoundError, lambda c: c.modules.no_such_module, "no_such_module"),
    "ModuleNotFoundError (dotted)": (ModuleNotFoundError, lambda c: c.modules["os.no_such_sub"], "no_such_sub"),
    "LookupError": (LookupError, lambda c: c.modules.codecs.lookup("no-such-codec"), "no-such-codec"),
    "FileNotFoundError": (
        FileNotFoundError,
        lambda c: c.modules.os.stat("/no/such/farcall/path"),
        "/no/such/farcall/path",
    ),
    "UnicodeDecodeError": (UnicodeDecodeError, lambda c: c.modules.codecs.decode(b"\xff", "utf-8"), "utf-8"),
    "StopIteration": (StopIteration, lambda c: c.modules.builtins.next(c.modules.builtins.iter(())), "StopIteration"),
}


@pytest.mark.parametrize("case", BUILTIN_CASES.values(), ids=BUILTIN_CASES.keys())
def test_builtin_exceptions_keep_their_class(module_conn: farcall.Connection, case) -> None:
    exc_type, action, message = case
    with pytest.raises(exc_type) as info:
        action(module_conn)
    error = info.value
    assert type(error).__name__ == exc_type.__name__
    assert isinstance(error, farcall.RemoteError)
    assert error.remote_type == f"builtins.{exc_type.__name__}"
    assert message in str(error)
    assert_shows_remote_traceback(error)


def test_builtin_exception_hierarchy_is_honoured(conn: farcall.Connection) -> None:
    with pytest.raises(ArithmeticError):
        conn.modules.operator.truediv(1, 0)
    with pytest.raises(LookupError):
        conn.modules.operator.getitem(conn.modules.builtins.dict(), "missing")
    with pytest.raises(ImportError):
        conn.modules.no_such_module
    with pytest.raises(OSError):
        conn.modules.os.stat("/no/such/farcall/path")


def test_remote_exception_args_travel(conn: farcall.Connection) -> None:
    """DESIGN: errors travel as data, args included; code reads `e.args[0]` of a KeyError."""
    with pytest.raises(KeyError) as key_error:
        conn.modules.operator.getitem(conn.modules.builtins.dict(), "missing")
    assert key_error.value.args == ("missing",)
    with pytest.raises(FileNotFoundError) as os_error:
        conn.modules.os.stat("/no/such/farcall/path")
    assert os_error.value.errno == errno.ENOENT


def test_non_builtin_exception_is_a_remote_error(conn: farcall.Connection) -> None:
    with pytest.raises(farcall.RemoteError) as info:
        conn.modules.json.loads("{")
    error = info.value
    assert error.remote_type == "json.decoder.JSONDecodeError"
    assert "Expecting property name" in str(error)
    assert_shows_remote_traceback(error)


def test_remote_traceback_shows_the_remote_frames(conn: farcall.Connection) -> None:
    with pytest.raises(farcall.RemoteError) as info:
        conn.modules.json.loads("{")
    remote_decoder_file = conn.modules.json.decoder.__file__  # the server's path, a str
    assert remote_decoder_file in info.value.remote_traceback
    assert remote_decoder_file in str(info.value)
    assert "in loads" in info.value.remote_traceback


def test_decimal_invalid_operation_is_a_remote_error(conn: farcall.Connection) -> None:
    with pytest.raises(farcall.RemoteError) as info:
        conn.modules.decimal.Decimal("not a number")
    assert info.value.remote_type == "decimal.InvalidOperation"


def test_remote_error_types_are_classes_users_can_catch(conn: farcall.Connection) -> None:
    assert issubclass(farcall.RemoteError, Exception)
    with pytest.raises(farcall.RemoteError) as info:
        conn.modules.math.sqrt(-1)
    assert isinstance(info.value, ValueError)
    assert info.value.remote_type == "builtins.ValueError"


def test_the_connection_keeps_working_after_remote_errors(conn: farcall.Connection) -> None:
    for case in BUILTIN_CASES.values():
        with pytest.raises(case[0]):
            case[1](conn)
    assert conn.modules.math.pow(3, 2) == 9.0
