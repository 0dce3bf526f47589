"""Values that travel by value come back as real local objects of the exact type."""

from __future__ import annotations

import hashlib
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import farcall
import pytest
from _support import assert_same_value

BIG = 2**200
VALUES: dict[str, Any] = {
    "None": None,
    "True": True,
    "False": False,
    "zero": 0,
    "one": 1,
    "minus one": -1,
    "i64 max": 2**63 - 1,
    "i64 min": -(2**63),
    "past i64": 2**63,
    "past u64": 2**64,
    "below i64": -(2**63) - 1,
    "2**200": BIG,
    "-2**200": -BIG,
    "10**1000": 10**1000,
    "float": 1.5,
    "0.1": 0.1,
    "0.0": 0.0,
    "-0.0": -0.0,
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "float max": sys.float_info.max,
    "denormal": 5e-324,
    "complex": complex(1, -2),
    "complex inf nan": complex(math.inf, math.nan),
    "complex -0.0": complex(-0.0, 0.0),
    "empty str": "",
    "ascii": "hello",
    "unicode": "héllo wörld ✓ 🐍 中文",
    "nul in str": "a\x00b",
    "empty bytes": b"",
    "bytes": b"\x00\x01\xfe\xff",
    "empty tuple": (),
    "one tuple": (1,),
    "mixed tuple": (None, True, 1, 1.0, 1j, "s", b"b"),
    "nested tuples": ((1, (2, (3, ()))), ("a", (b"b",))),
    "tuple of bools and ints": (True, 1, False, 0),
    "empty frozenset": frozenset(),
    "frozenset": frozenset({1, "a", b"b", (2, 3)}),
    "nested frozenset": frozenset({frozenset({1, 2}), frozenset()}),
    "tuple with frozenset": (frozenset({"x"}), (frozenset({(1,)}),)),
}

# Two remote functions that hand their argument back unchanged.
ECHOES: dict[str, Callable[[farcall.Connection, Any], Any]] = {
    "copy.copy": lambda conn, v: conn.modules.copy.copy(v),
    "operator.getitem": lambda conn, v: conn.modules.operator.getitem((v,), 0),
}


@pytest.mark.parametrize("echo", ECHOES.values(), ids=ECHOES.keys())
@pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
def test_round_trip_keeps_value_and_exact_type(module_conn: farcall.Connection, echo: Callable, value: Any) -> None:
    assert_same_value(echo(module_conn, value), value)


@pytest.mark.parametrize("value", [True, False])
def test_bool_stays_bool_and_int_stays_int(conn: farcall.Connection, value: bool) -> None:
    assert type(conn.modules.copy.copy(value)) is bool
    assert type(conn.modules.copy.copy(int(value))) is int
    assert type(conn.modules.operator.not_(value)) is bool
    assert type(conn.modules.operator.add(value, value)) is int


def test_big_ints_computed_remotely_are_exact(conn: farcall.Connection) -> None:
    assert_same_value(conn.modules.builtins.pow(2, 200), BIG)
    assert_same_value(conn.modules.operator.mul(2**100, 2**100), BIG)
    assert_same_value(conn.modules.operator.neg(BIG), -BIG)
    assert_same_value(conn.modules.operator.add(BIG, 1), BIG + 1)
    assert_same_value(conn.modules.operator.sub(-BIG, 1), -BIG - 1)
    assert_same_value(conn.modules.math.factorial(100), math.factorial(100))


def test_floats_computed_remotely_are_bit_exact(conn: farcall.Connection) -> None:
    assert_same_value(conn.modules.operator.add(0.1, 0.2), 0.1 + 0.2)
    assert_same_value(conn.modules.math.pi, math.pi)
    assert_same_value(conn.modules.math.inf, math.inf)
    assert math.isnan(conn.modules.math.nan)
    assert math.isnan(conn.modules.builtins.float("nan"))
    assert_same_value(conn.modules.operator.neg(0.0), -0.0)
    assert_same_value(conn.modules.builtins.complex(1, 2), 1 + 2j)


def test_module_constants_of_basic_types(conn: farcall.Connection) -> None:
    assert_same_value(conn.modules.sys.maxsize, sys.maxsize)
    assert_same_value(conn.modules.os.sep, "/")
    assert_same_value(conn.modules.string.ascii_lowercase, "abcdefghijklmnopqrstuvwxyz")
    assert_same_value(conn.modules.sys.byteorder, sys.byteorder)


def test_unicode_strings_are_code_points_not_bytes(conn: farcall.Connection) -> None:
    assert conn.modules.builtins.len("🐍") == 1
    assert conn.modules.builtins.chr(0x1F40D) == "🐍"
    assert conn.modules.unicodedata.name("🐍") == "SNAKE"
    assert conn.modules.builtins.str.upper("straße") == "STRASSE"
    assert_same_value(conn.modules.builtins.ord("é"), 233)


def test_bytes_computed_remotely(conn: farcall.Connection) -> None:
    assert_same_value(conn.modules.binascii.hexlify(b"\x00\xff"), b"00ff")
    assert_same_value(conn.modules.builtins.bytes(3), b"\x00\x00\x00")
    assert_same_value(conn.modules.builtins.len(b""), 0)


def test_ten_megabytes_come_back_intact(conn: farcall.Connection) -> None:
    data = conn.modules.builtins.bytes(10_000_000)
    assert type(data) is bytes
    assert len(data) == 10_000_000
    assert data == bytes(10_000_000)


def test_ten_megabytes_travel_both_ways_intact(conn: farcall.Connection) -> None:
    data = os.urandom(10_000_000)
    assert conn.modules.builtins.len(data) == len(data)
    assert conn.modules.hashlib.sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()
    echoed = conn.modules.copy.copy(data)
    assert type(echoed) is bytes
    assert echoed == data


def test_tuples_computed_remotely(conn: farcall.Connection) -> None:
    assert_same_value(conn.modules.builtins.divmod(7, 2), (3, 1))
    assert_same_value(conn.modules.os.path.split("a/b"), ("a", "b"))
    assert_same_value(conn.modules.builtins.tuple("ab"), ("a", "b"))
    assert_same_value(conn.modules.builtins.frozenset((1, 2, 2)), frozenset({1, 2}))


@pytest.mark.parametrize(
    "make",
    [
        lambda b: b.list((1, 2)),
        lambda b: b.dict(a=1),
        lambda b: b.set((1, 2)),
        lambda b: b.bytearray(b"ab"),
        lambda b: b.object(),
    ],
    ids=["list", "dict", "set", "bytearray", "object"],
)
def test_mutable_and_other_objects_come_back_as_proxies(conn: farcall.Connection, make: Callable) -> None:
    result = make(conn.modules.builtins)
    assert isinstance(result, farcall.Proxy)
    assert not isinstance(result, (list, dict, set, bytearray))


def test_a_tuple_holding_a_mutable_object_does_not_copy_it(conn: farcall.Connection) -> None:
    """The contract says nothing about how; either the tuple or its items are proxies."""
    b = conn.modules.builtins
    result = b.tuple(b.map(b.list, ("ab", "cd")))  # a tuple of two remote lists
    if isinstance(result, tuple):
        assert len(result) == 2
        assert all(isinstance(item, farcall.Proxy) for item in result)
    else:
        assert isinstance(result, farcall.Proxy)
    assert b.len(result) == 2
