"""Iterating remote lists, dicts, ranges and generators: right items, in batches (counted round
trips, not one per item), lazily for endless iterators; `next`, `reversed`, and errors raised
while iterating."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import farcall
import pytest

GENERATORS = (
    "import itertools\n"
    "pulled = []\n"
    "def squares(n):\n"
    "    for i in range(n):\n"
    "        yield i * i\n"
    "def watched():\n"
    "    for i in itertools.count():\n"
    "        pulled.append(i)\n"
    "        yield i\n"
    "def failing(n):\n"
    "    for i in range(n):\n"
    "        yield i\n"
    "    raise ValueError('generator failed after %d items' % n)\n"
)


@pytest.fixture(scope="module")
def remote(module_conn: farcall.Connection) -> farcall.Connection:
    module_conn.execute(GENERATORS)
    return module_conn


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The Builtin requests proxies send while the test runs (the operations of iteration)."""
    sent: list[str] = []
    builtin = farcall.Proxy._farcall_builtin

    def counting(self: Any, name: str, *args: Any) -> Any:
        sent.append(name)
        return builtin(self, name, *args)

    monkeypatch.setattr(farcall.Proxy, "_farcall_builtin", counting)
    yield sent


#: Iterating must take at least this many items per round trip on average (the issue asks for
#: iteration 50 times faster than one round trip per item).
ITEMS_PER_ROUND_TRIP = 50


def test_iterating_a_remote_list(remote: farcall.Connection, round_trips: list[str]) -> None:
    items = remote.eval("list(range(10000))")
    round_trips.clear()
    assert list(items) == list(range(10000))
    assert len(round_trips) <= 10000 // ITEMS_PER_ROUND_TRIP, f"{len(round_trips)} round trips for 10000 items"


def test_iterating_a_remote_dict_and_its_views(remote: farcall.Connection) -> None:
    d = remote.eval("{'b': 1, 'a': 2, 'c': (3, 4)}")
    assert list(d) == ["b", "a", "c"]
    assert list(d.keys()) == ["b", "a", "c"]
    assert list(d.values()) == [1, 2, (3, 4)]
    assert list(d.items()) == [("b", 1), ("a", 2), ("c", (3, 4))]
    assert {k: v for k, v in d.items()} == {"b": 1, "a": 2, "c": (3, 4)}


def test_iterating_a_remote_range(remote: farcall.Connection, round_trips: list[str]) -> None:
    r = remote.builtins.range(0, 30000, 3)
    assert isinstance(r, farcall.Proxy)
    round_trips.clear()
    assert list(r) == list(range(0, 30000, 3))
    assert len(round_trips) <= 10000 // ITEMS_PER_ROUND_TRIP, f"{len(round_trips)} round trips for 10000 items"
    assert sum(remote.builtins.range(101)) == 5050


def test_iterating_a_remote_generator_in_batches(remote: farcall.Connection, round_trips: list[str]) -> None:
    gen = remote.eval("squares(5000)")
    round_trips.clear()
    got = [x for x in gen]
    assert got == [i * i for i in range(5000)]
    assert len(round_trips) <= 5000 // ITEMS_PER_ROUND_TRIP, f"{len(round_trips)} round trips for 5000 items"
    assert list(gen) == []  # exhausted, as a local generator would be


def test_items_that_are_not_values_come_as_proxies(remote: farcall.Connection) -> None:
    rows = remote.eval("[[1, 2], {'k': 'v'}, (3, [4])]")
    first, second, third = rows
    assert isinstance(first, farcall.Proxy) and farcall.obtain(first) == [1, 2]
    assert isinstance(second, farcall.Proxy) and second["k"] == "v"
    assert third[0] == 3 and isinstance(third[1], farcall.Proxy) and third[1][0] == 4
    first.append(3)  # the items are the remote objects themselves, not copies
    assert rows[0][2] == 3


def test_an_endless_iterator_is_fetched_lazily(remote: farcall.Connection) -> None:
    seen = []
    for i in remote.eval("watched()"):
        seen.append(i)
        if i == 4:
            break
    assert seen == [0, 1, 2, 3, 4]
    assert 5 <= len(remote.eval("pulled")) < 100000  # a bounded batch, not the whole (endless) stream


def test_next_on_a_remote_iterator(remote: farcall.Connection) -> None:
    gen = remote.eval("squares(3)")
    assert next(gen) == 0
    assert next(gen) == 1
    assert next(gen) == 4
    with pytest.raises(StopIteration):
        next(gen)
    assert next(gen, "done") == "done"
    it = remote.builtins.iter(remote.eval("['a', 'b']"))
    assert next(it) == "a"
    assert list(it) == ["b"]  # the rest, after next()


def test_next_on_a_local_iterator_of_a_remote_list(remote: farcall.Connection) -> None:
    it = iter(remote.eval("[1, 2, 3]"))
    assert next(it) == 1
    assert list(it) == [2, 3]


def test_next_on_something_that_is_no_iterator(remote: farcall.Connection) -> None:
    with pytest.raises(TypeError):
        next(remote.eval("[1, 2]"))


def test_reversed_unpacking_and_builtins_over_remote_iterables(remote: farcall.Connection) -> None:
    items = remote.eval("[3, 1, 2]")
    assert list(reversed(items)) == [2, 1, 3]
    a, b, c = items
    assert (a, b, c) == (3, 1, 2)
    assert sorted(items) == [1, 2, 3]
    assert max(items) == 3 and min(items) == 1
    assert list(enumerate(items)) == [(0, 3), (1, 1), (2, 2)]
    assert list(zip(items, "xyz")) == [(3, "x"), (1, "y"), (2, "z")]
    assert set(remote.eval("{1, 2, 2, 3}")) == {1, 2, 3}
    assert "".join(remote.eval("iter('abc')")) == "abc"


def test_an_error_raised_while_iterating(remote: farcall.Connection) -> None:
    seen = []
    with pytest.raises(ValueError, match="generator failed after 3 items"):
        for x in remote.eval("failing(3)"):
            seen.append(x)
    assert seen == [] or seen == [0, 1, 2]  # the batch that failed brings no items
    with pytest.raises(TypeError):
        iter(remote.eval("len"))  # not iterable: the error of the remote iter()
        list(remote.eval("len"))


def test_an_empty_remote_iterable(remote: farcall.Connection) -> None:
    assert list(remote.eval("[]")) == []
    assert list(remote.eval("squares(0)")) == []
    assert [x for x in remote.eval("{}")] == []
