"""Proven against real libraries nobody here wrote: sqlite3, collections, json, pathlib, re,
itertools, a class defined remotely, and a traceback five frames deep — all driven through
proxies only, on every transport and both backends (the `conn` fixture).

Every value a test asserts on was computed on the server: the local side only holds proxies,
the by-value results of remote calls, and what `farcall.obtain` copied.
"""

from __future__ import annotations

import collections
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import farcall
import pytest

# -- helpers ---------------------------------------------------------------------------


@pytest.fixture
def server_tmp(conn: farcall.Connection) -> Iterator[str]:
    """A fresh folder made on the server (`tempfile.mkdtemp` there), removed there afterwards."""
    folder = conn.modules.tempfile.mkdtemp(prefix="farcall-libraries-")
    assert isinstance(folder, str)
    yield folder
    if not conn.closed:
        conn.modules.shutil.rmtree(folder, ignore_errors=True)


def remote_type_name(conn: farcall.Connection, proxy: Any) -> str:
    """`type(obj).__name__` of the remote object, asked of the server."""
    return conn.builtins.type(proxy).__name__


# -- sqlite3 ---------------------------------------------------------------------------

#: The tests below are about driving sqlite3 through proxies; whether a default connection (which
#: sqlite3 ties to the thread that made it) survives a session's calls is the next test's business.
ANY_THREAD = {"check_same_thread": False}

FRUIT_SCHEMA = "CREATE TABLE fruit (name TEXT PRIMARY KEY, qty INTEGER NOT NULL, price REAL NOT NULL)"
INSERT_FRUIT = "INSERT INTO fruit (name, qty, price) VALUES (?, ?, ?)"


def test_sqlite3_default_connection_is_usable_by_the_sessions_later_calls(conn: farcall.Connection) -> None:
    """sqlite3 refuses to use a connection from a thread other than its creator's (by default):
    a session's calls must reach Python on a thread that keeps that working, as a local program would."""
    db = conn.modules.sqlite3.connect(":memory:")
    try:
        db.execute("CREATE TABLE t (x INTEGER)")
        for i in range(50):
            db.execute("INSERT INTO t VALUES (?)", (i,))
        assert db.execute("SELECT count(*), sum(x) FROM t").fetchone() == (50, sum(range(50)))
    finally:
        db.close()


def test_sqlite3_cursor_execute_with_parameters_executemany_fetchall(conn: farcall.Connection) -> None:
    sqlite3 = conn.modules.sqlite3
    db = sqlite3.connect(":memory:", **ANY_THREAD)
    try:
        cur = db.cursor()
        assert remote_type_name(conn, cur) == "Cursor"
        cur.execute(FRUIT_SCHEMA)
        cur.execute(INSERT_FRUIT, ("apple", 3, 0.5))
        assert cur.rowcount == 1
        assert cur.lastrowid == 1
        cur.executemany(INSERT_FRUIT, (("pear", 5, 0.75), ("fig", 12, 0.2), ("kiwi", 7, 0.3)))
        assert cur.rowcount == 3
        db.commit()

        cur.execute("SELECT name, qty FROM fruit WHERE qty > ? ORDER BY qty", (4,))
        rows = cur.fetchall()
        assert isinstance(rows, farcall.Proxy), "a list travels by reference"
        assert len(rows) == 3
        assert rows[0] == ("pear", 5)
        assert rows[-1] == ("fig", 12)
        assert list(rows) == [("pear", 5), ("kiwi", 7), ("fig", 12)]
        copied = farcall.obtain(rows)
        assert type(copied) is list and copied == [("pear", 5), ("kiwi", 7), ("fig", 12)]

        # Named parameters need a real dict on the server: deliver one.
        params = farcall.deliver(conn, {"name": "fig"})
        cur.execute("SELECT qty * price FROM fruit WHERE name = :name", params)
        (total,) = cur.fetchone()
        assert total == pytest.approx(12 * 0.2)

        # Aggregates and a cursor iterated directly.
        total_qty = db.execute("SELECT sum(qty), count(*) FROM fruit").fetchone()
        assert total_qty == (27, 4)
        names = [name for (name,) in db.execute("SELECT name FROM fruit ORDER BY name")]
        assert names == ["apple", "fig", "kiwi", "pear"]

        with pytest.raises(farcall.RemoteError) as info:
            cur.execute(INSERT_FRUIT, ("apple", 1, 1.0))
        assert info.value.remote_type == "sqlite3.IntegrityError"
        assert type(info.value).__name__ == "IntegrityError"
        assert "UNIQUE constraint failed: fruit.name" in str(info.value)
    finally:
        db.close()


def test_sqlite3_executemany_reads_a_local_list_through_callbacks(conn: farcall.Connection) -> None:
    """A local list passed as an argument travels by reference: sqlite3 iterates it on the
    server, each step a request back to this client."""
    db = conn.modules.sqlite3.connect(":memory:", **ANY_THREAD)
    try:
        db.execute(FRUIT_SCHEMA)
        local_rows = [(f"fruit{i}", i, i / 10) for i in range(50)]
        db.executemany(INSERT_FRUIT, local_rows)
        assert db.execute("SELECT count(*), sum(qty) FROM fruit").fetchone() == (50, sum(range(50)))
        assert db.execute("SELECT price FROM fruit WHERE name = ?", ("fruit42",)).fetchone() == (4.2,)
    finally:
        db.close()


def test_sqlite3_commit_is_what_another_connection_sees(conn: farcall.Connection, server_tmp: str) -> None:
    sqlite3 = conn.modules.sqlite3
    path = conn.modules.os.path.join(server_tmp, "fruit.db")
    writer = sqlite3.connect(path, **ANY_THREAD)
    reader = sqlite3.connect(path, **ANY_THREAD)
    try:
        writer.execute(FRUIT_SCHEMA)
        writer.commit()
        writer.execute(INSERT_FRUIT, ("plum", 4, 0.4))
        assert writer.in_transaction is True
        assert reader.execute("SELECT count(*) FROM fruit").fetchone() == (0,), "uncommitted rows are visible"
        writer.commit()
        assert writer.in_transaction is False
        assert reader.execute("SELECT name, qty, price FROM fruit").fetchall()[0] == ("plum", 4, 0.4)
    finally:
        reader.close()
        writer.close()
    assert conn.modules.os.path.getsize(path) > 0


class LocalOnlyError(Exception):
    """An exception type the server cannot import."""


def test_sqlite3_connection_as_context_manager_commits_or_rolls_back(conn: farcall.Connection, server_tmp: str) -> None:
    sqlite3 = conn.modules.sqlite3
    path = conn.modules.os.path.join(server_tmp, "ledger.db")
    db = sqlite3.connect(path, **ANY_THREAD)
    observer = sqlite3.connect(path, **ANY_THREAD)

    def observed() -> list[tuple[str, int]]:
        return list(observer.execute("SELECT name, qty FROM fruit ORDER BY name"))

    try:
        db.execute(FRUIT_SCHEMA)
        db.commit()

        with db as entered:  # success: committed on exit
            assert isinstance(entered, farcall.Proxy)
            entered.execute(INSERT_FRUIT, ("apple", 1, 1.0))
            entered.execute(INSERT_FRUIT, ("banana", 2, 2.0))
        assert db.in_transaction is False
        assert observed() == [("apple", 1), ("banana", 2)]

        # A builtin exception raised inside the block: rolled back, and the exception is ours.
        with pytest.raises(ZeroDivisionError):
            with db:
                db.execute(INSERT_FRUIT, ("cherry", 3, 3.0))
                assert db.in_transaction is True
                1 / 0  # noqa: B018
        assert db.in_transaction is False
        assert db.execute("SELECT count(*) FROM fruit").fetchone() == (2,)
        assert observed() == [("apple", 1), ("banana", 2)]

        # An exception type only the client knows: still rolled back, still the same object here.
        marker = LocalOnlyError("only here")
        with pytest.raises(LocalOnlyError) as info:
            with db:
                db.execute("UPDATE fruit SET qty = qty * 100")
                raise marker
        assert info.value is marker
        assert observed() == [("apple", 1), ("banana", 2)]

        # A failing statement inside the block: the remote exception propagates, nothing is kept.
        with pytest.raises(farcall.RemoteError) as failed:
            with db:
                db.execute(INSERT_FRUIT, ("date", 4, 4.0))
                db.execute(INSERT_FRUIT, ("apple", 9, 9.0))  # duplicate key
        assert failed.value.remote_type == "sqlite3.IntegrityError"
        assert "UNIQUE constraint failed" in str(failed.value)
        assert observed() == [("apple", 1), ("banana", 2)]
    finally:
        observer.close()
        db.close()


# -- collections -----------------------------------------------------------------------


def test_collections_counter(conn: farcall.Connection) -> None:
    Counter = conn.modules.collections.Counter
    words = Counter("abracadabra")
    expected = collections.Counter("abracadabra")
    assert words["a"] == 5
    assert words["z"] == 0  # __missing__ on the server
    words.update("aaz")
    expected.update("aaz")
    assert words["a"] == expected["a"] == 7
    assert list(words.most_common(2)) == expected.most_common(2)
    assert words.total() == expected.total()
    assert len(words) == len(expected)
    assert "z" in words and "q" not in words

    other = Counter(a=2, r=5, q=1)
    local_other = collections.Counter(a=2, r=5, q=1)
    sums = words + other
    assert isinstance(sums, farcall.Proxy)
    assert farcall.obtain(sums) == dict(expected + local_other)
    assert farcall.obtain(words - other) == dict(expected - local_other)
    assert farcall.obtain(words & other) == dict(expected & local_other)
    assert farcall.obtain(words | other) == dict(expected | local_other)
    assert (words + other) == (other + words)  # compared on the server

    # In place: words itself changes on the server.
    words -= other
    expected -= local_other
    assert isinstance(words, farcall.Proxy)
    assert farcall.obtain(words) == dict(expected)
    assert sorted(words.elements()) == sorted(expected.elements())


def test_collections_defaultdict_of_lists(conn: farcall.Connection) -> None:
    groups = conn.modules.collections.defaultdict(conn.builtins.list)
    for word in ("apple", "avocado", "banana", "blueberry", "cherry", "apricot"):
        groups[word[0]].append(word)  # getitem creates the list on the server; append mutates it there
    assert len(groups) == 3
    assert "a" in groups and "z" not in groups
    assert len(groups["a"]) == 3
    assert groups["b"][1] == "blueberry"
    assert sorted(groups.keys()) == ["a", "b", "c"]
    assert farcall.obtain(groups) == {
        "a": ["apple", "avocado", "apricot"],
        "b": ["banana", "blueberry"],
        "c": ["cherry"],
    }
    del groups["c"]
    assert "c" not in groups
    assert groups.default_factory == conn.builtins.list
    assert farcall.obtain(groups["new"]) == [] and len(groups) == 3


def test_collections_deque_with_maxlen(conn: farcall.Connection) -> None:
    d = conn.modules.collections.deque(maxlen=4)
    local: collections.deque[int] = collections.deque(maxlen=4)
    for i in range(6):
        d.append(i)
        local.append(i)
    assert list(d) == list(local) == [2, 3, 4, 5]
    d.appendleft(-1)
    local.appendleft(-1)
    assert list(d) == list(local) == [-1, 2, 3, 4]
    d.rotate(1)
    local.rotate(1)
    assert list(d) == list(local) == [4, -1, 2, 3]
    d.rotate(-2)
    local.rotate(-2)
    assert list(d) == list(local)
    assert d.maxlen == 4
    assert len(d) == 4
    assert d[0] == local[0] and d[-1] == local[-1]
    assert d.pop() == local.pop()
    assert d.popleft() == local.popleft()
    assert list(d) == list(local)
    assert [x in d for x in range(-1, 7)] == [x in local for x in range(-1, 7)]
    assert True in [x in d for x in range(-1, 7)]


# -- json ------------------------------------------------------------------------------

DOCUMENT = {
    "name": "farcall",
    "version": [0, 1, 0],
    "nested": {"list": [1, 2.5, None, True, "x", {"deep": [{"deeper": []}]}], "empty": {}},
    "unicode": "h\u00e9llo \u2603",
    "big": 2**70,
}


def test_json_loads_returns_a_remote_dict_that_obtain_copies(conn: farcall.Connection) -> None:
    text = json.dumps(DOCUMENT)
    doc = conn.modules.json.loads(text)
    assert isinstance(doc, farcall.Proxy), "a dict travels by reference"
    assert doc["name"] == "farcall"
    assert len(doc["nested"]["list"][5]["deep"][0]["deeper"]) == 0
    assert len(doc["nested"]["list"]) == 6
    assert doc["big"] == 2**70

    copy = farcall.obtain(doc)
    assert type(copy) is dict
    assert copy == DOCUMENT
    assert type(copy["nested"]) is dict and type(copy["nested"]["list"]) is list
    assert type(copy["nested"]["list"][5]["deep"][0]) is dict

    # The copy is independent of the remote dict.
    copy["name"] = "changed here"
    assert doc["name"] == "farcall"
    doc["name"] = "changed there"
    assert copy["name"] == "changed here"
    assert farcall.obtain(doc)["name"] == "changed there"
    expected_text = json.dumps({**DOCUMENT, "name": "changed there"}, sort_keys=True)
    assert conn.modules.json.dumps(doc, sort_keys=True) == expected_text


# -- pathlib ---------------------------------------------------------------------------


def test_pathlib_on_the_servers_filesystem(conn: farcall.Connection, server_tmp: str) -> None:
    base = conn.modules.pathlib.Path(server_tmp)
    assert base.exists() is True and base.is_dir() is True
    sub = base / "sub"
    assert isinstance(sub, farcall.Proxy)
    assert str(sub) == server_tmp + "/sub"
    assert sub.exists() is False
    sub.mkdir()
    assert sub.is_dir() is True

    notes = sub / "notes.txt"
    assert notes.write_text("hello from the server\n") == len("hello from the server\n")
    assert notes.read_text() == "hello from the server\n"
    (sub / "data.bin").write_bytes(b"\x00\x01\x02")
    (sub / "more.txt").write_text("more")
    (sub / "nested").mkdir()
    (sub / "nested" / "deep.txt").write_text("deep")

    assert sorted(p.name for p in sub.iterdir()) == ["data.bin", "more.txt", "nested", "notes.txt"]
    assert sorted(p.name for p in sub.glob("*.txt")) == ["more.txt", "notes.txt"]
    assert sorted(str(p.relative_to(base)) for p in base.rglob("*.txt")) == [
        "sub/more.txt",
        "sub/nested/deep.txt",
        "sub/notes.txt",
    ]
    assert notes.suffix == ".txt" and notes.stem == "notes" and notes.parent == sub
    assert notes.stat().st_size == len("hello from the server\n")
    assert (sub / "data.bin").read_bytes() == b"\x00\x01\x02"

    # The same file, seen by this process: the server wrote on the (shared) disk.
    assert Path(str(notes)).read_text() == "hello from the server\n"

    notes.unlink()
    assert notes.exists() is False
    with pytest.raises(FileNotFoundError):
        notes.read_text()
    assert sorted(p.name for p in sub.iterdir()) == ["data.bin", "more.txt", "nested"]


# -- re --------------------------------------------------------------------------------


def test_re_match_objects(conn: farcall.Connection) -> None:
    text = "alpha=42, beta=7, gamma=1999"
    pattern = conn.modules.re.compile(r"(?P<key>[a-z]+)=(?P<value>\d+)")
    local = re.compile(r"(?P<key>[a-z]+)=(?P<value>\d+)")
    assert pattern.pattern == local.pattern
    assert pattern.groups == 2

    m = pattern.match(text)
    assert remote_type_name(conn, m) == "Match"
    assert bool(m) is True
    assert m.group(0) == "alpha=42"
    assert m.group("key") == "alpha" and m.group(2) == "42"
    assert m.group(1, 2) == ("alpha", "42")
    assert m[1] == "alpha"
    assert m.groups() == ("alpha", "42")
    assert farcall.obtain(m.groupdict()) == {"key": "alpha", "value": "42"}
    assert m.span() == (0, 8)
    assert m.span("value") == (6, 8)
    assert m.start(2) == 6 and m.end() == 8

    assert pattern.match("!!!") is None
    assert pattern.search(text, 10).group() == "beta=7"

    found = [(m.group("key"), int(m.group("value")), m.span()) for m in pattern.finditer(text)]
    expected = [(m.group("key"), int(m.group("value")), m.span()) for m in local.finditer(text)]
    assert found == expected and len(found) == 3
    assert list(pattern.findall(text)) == local.findall(text)
    assert pattern.sub(r"\g<value>=\g<key>", text) == local.sub(r"\g<value>=\g<key>", text)
    assert list(conn.modules.re.split(r",\s*", text)) == re.split(r",\s*", text)


# -- itertools -------------------------------------------------------------------------


def test_itertools_generators_iterated_through_proxies(conn: farcall.Connection) -> None:
    it = conn.modules.itertools
    counter = it.count(10, 3)  # infinite: only islice may drain it
    assert list(it.islice(counter, 5)) == [10, 13, 16, 19, 22]
    assert next(counter) == 25  # islice took exactly five from the remote count
    assert list(it.islice(it.count(), 1000, 1010, 3)) == [1000, 1003, 1006, 1009]

    assert list(it.chain((1, 2), "ab", conn.builtins.range(3))) == [1, 2, "a", "b", 0, 1, 2]
    assert list(it.chain.from_iterable(((1,), (2, 3)))) == [1, 2, 3]

    perms = it.permutations((1, 2, 3), 2)
    assert list(perms) == list(itertools.permutations((1, 2, 3), 2))
    assert list(perms) == []  # exhausted on the server
    assert len(list(it.permutations(tuple(range(6))))) == 720

    # A generator defined on the server, consumed partly, then resumed.
    conn.execute("def squares(n):\n    for i in range(n):\n        yield i * i\n")
    gen = conn.eval("squares(10)")
    assert next(gen) == 0 and next(gen) == 1
    assert list(gen) == [i * i for i in range(2, 10)]
    with pytest.raises(StopIteration):
        next(gen)
    assert sum(conn.eval("squares(1000)")) == sum(i * i for i in range(1000))


def test_itertools_groupby_groups_read_as_the_groupby_advances(conn: farcall.Connection) -> None:
    """Each group of a groupby is a remote iterator that is valid only until the groupby moves on
    (then it is empty): an iteration that prefetches the groupby's items ahead of the loop body
    would hand out emptied groups."""
    it = conn.modules.itertools
    data = "aaabccccdd"
    grouped = [(key, list(group)) for key, group in it.groupby(data)]
    assert grouped == [(k, list(g)) for k, g in itertools.groupby(data)]
    lengths = [(key, len(list(group))) for key, group in it.groupby(sorted("mississippi"))]
    assert lengths == [("i", 4), ("m", 1), ("p", 2), ("s", 4)]
    words = conn.builtins.list(("apple", "avocado", "banana", "cherry", "cranberry"))
    by_letter = {key: list(group) for key, group in it.groupby(words, key=conn.eval("lambda w: w[0]"))}
    assert by_letter == {"a": ["apple", "avocado"], "b": ["banana"], "c": ["cherry", "cranberry"]}


# -- a remote class --------------------------------------------------------------------

ACCOUNT_CLASS = '''
class Account:
    """A class that exists only on the server."""

    opened = 0

    def __init__(self, owner, balance=0):
        self.owner = owner
        self.balance = balance
        self.history = []
        Account.opened += 1

    def deposit(self, amount, *, note=""):
        if amount <= 0:
            raise ValueError("deposit must be positive, got %r" % (amount,))
        self.balance += amount
        self.history.append(("deposit", amount, note))
        return self.balance

    def withdraw(self, amount):
        self.balance -= amount
        self.history.append(("withdraw", amount, ""))
        return self.balance

    @property
    def summary(self):
        return "%s: %s (%d operations)" % (self.owner, self.balance, len(self.history))

    @property
    def overdrawn(self):
        return self.balance < 0

    def __len__(self):
        return len(self.history)

    def __repr__(self):
        return "Account(%r, %r)" % (self.owner, self.balance)
'''


def test_remote_class_instantiated_and_mutated_through_its_proxy(conn: farcall.Connection) -> None:
    assert conn.execute(ACCOUNT_CLASS) is None
    Account = conn.eval("Account")
    assert Account is not None and callable(Account)
    assert conn.namespace["Account"] == Account

    acct = Account("ann", balance=10)
    assert isinstance(acct, farcall.Proxy)
    assert remote_type_name(conn, acct) == "Account"
    assert isinstance(acct, Account)
    assert repr(acct) == "Account('ann', 10)"
    assert acct.summary == "ann: 10 (0 operations)"

    assert acct.deposit(5, note="gift") == 15
    assert acct.summary == "ann: 15 (1 operations)"  # re-evaluated on each access
    assert acct.withdraw(20) == -5
    assert acct.overdrawn is True
    assert len(acct) == 2
    assert list(acct.history) == [("deposit", 5, "gift"), ("withdraw", 20, "")]

    acct.balance = 1000  # setattr through the proxy
    assert acct.balance == 1000
    assert acct.overdrawn is False
    assert acct.summary == "ann: 1000 (2 operations)"
    acct.nickname = "annie"  # a new attribute
    assert conn.eval("Account.__dict__.get('nickname')") is None
    assert "nickname" in dir(acct)
    del acct.nickname
    assert "nickname" not in dir(acct)
    with pytest.raises(AttributeError):
        acct.nickname

    acct.history.append(("audit", 0, "by proxy"))  # mutating the remote list in place
    assert len(acct) == 3

    with pytest.raises(ValueError, match="deposit must be positive, got -1"):
        acct.deposit(-1)
    assert acct.balance == 1000

    other = Account("bob")
    assert Account.opened == 2
    conn.namespace["shared"] = acct  # the proxy goes home: the namespace holds the real object
    assert conn.eval("shared.owner") == "ann"
    assert conn.eval("shared is not None and type(shared).__name__") == "Account"
    conn.execute("shared.deposit(1)")
    assert acct.balance == 1001
    assert other.summary == "bob: 0 (0 operations)"


# -- a traceback five frames deep ------------------------------------------------------

FIVE_FRAMES = """
def frame_one(x):
    return frame_two(x + 1) + 1

def frame_two(x):
    return frame_three(x * 2) - 1

def frame_three(x):
    values = [frame_four(x)]
    return values[0]

def frame_four(x):
    return frame_five(x, "deep")

def frame_five(x, label):
    raise LookupError("%s failure at %d" % (label, x))
"""

FRAMES = ("frame_one", "frame_two", "frame_three", "frame_four", "frame_five")


def assert_names_all_five_frames(error: BaseException) -> None:
    remote = getattr(error, "remote_traceback", "")
    assert isinstance(remote, str) and "Traceback" in remote, f"no remote traceback on {error!r}"
    text = str(error)
    positions = []
    for name in FRAMES:
        assert f"in {name}" in remote, f"the remote traceback does not name {name}:\n{remote}"
        assert f"in {name}" in text, f"str(error) does not name {name}:\n{text}"
        positions.append(remote.index(f"in {name}"))
    assert positions == sorted(positions), f"frames out of order:\n{remote}"
    assert remote.rstrip().splitlines()[-1] == "LookupError: deep failure at 14"
    assert "deep failure at 14" in text


def test_exception_five_frames_deep_names_every_frame(conn: farcall.Connection) -> None:
    conn.execute(FIVE_FRAMES)
    frame_one = conn.eval("frame_one")
    with pytest.raises(LookupError) as info:
        frame_one(6)
    assert info.value.args == ("deep failure at 14",)
    assert_names_all_five_frames(info.value)

    # The same through eval: the frames are still all there.
    with pytest.raises(LookupError) as again:
        conn.eval("frame_one(6)")
    assert_names_all_five_frames(again.value)

    # The frames' functions are fine after the failure: the session keeps working.
    with pytest.raises(LookupError, match="deep failure at 3"):
        conn.eval("frame_four")(3)
    assert conn.eval("frame_five.__name__") == "frame_five"
