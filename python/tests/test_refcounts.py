"""Reference counting over long runs: creating and dropping 100 000 proxies leaves the server's
object table where it started, and the server's memory stays flat.

The table is read through `conn.stats()` (the Stats request: live objects and objects ever
exported in this session). Releases are batched and asynchronous, so every check polls
(`settles`) with a deadline, flushing the queued releases, instead of sleeping.

Each test runs on every transport and both backends (the `conn` fixture).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import farcall
import pytest
from _support import PROMPT_S, Server

#: How many proxies each long run creates and drops.
N = 100_000
#: Objects per reply in the call-driven runs (a tuple of N_PER_CALL references per call).
N_PER_CALL = 10
#: How long the table may take to come back once the proxies are gone.
SETTLE_S = PROMPT_S * 3


def live(conn: farcall.Connection) -> int:
    return conn.stats()["live_objects"]


def exported(conn: farcall.Connection) -> int:
    return conn.stats()["exported_total"]


def settles(conn: farcall.Connection, expected: int, what: str, timeout: float = SETTLE_S) -> None:
    """Polls until the server's table holds `expected` live objects; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        gc.collect()
        conn.flush_releases()
        now = live(conn)
        if now == expected:
            return
        seen.append(now)
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: the server's table holds {now} live objects {timeout:.0f}s later, expected {expected}"
                f" (last readings: {seen[-5:]})"
            )
        time.sleep(0.01)


def baseline(conn: farcall.Connection) -> int:
    """The table's live count once nothing is in flight (two equal readings after a flush)."""
    gc.collect()
    conn.flush_releases()
    before = live(conn)
    settles(conn, before, "baseline")
    return before


# -- the server's table --------------------------------------------------------------------


def test_100k_distinct_objects_received_by_calls_and_dropped(conn: farcall.Connection) -> None:
    make = conn.eval(f"lambda: tuple(object() for _ in range({N_PER_CALL}))")
    base = baseline(conn)
    exported_before = exported(conn)
    first = make()
    assert len(first) == N_PER_CALL and all(isinstance(p, farcall.Proxy) for p in first)
    assert len({repr(p) for p in first}) == N_PER_CALL, "the objects are distinct"
    assert live(conn) == base + N_PER_CALL, "each received object is one entry of the table while its proxy lives"
    del first
    for _ in range(N // N_PER_CALL - 1):
        make()
    assert exported(conn) - exported_before >= N, "every object was exported by reference"
    settles(conn, base, f"after {N} distinct proxies were dropped")


def test_the_same_object_received_100k_times(conn: farcall.Connection) -> None:
    conn.execute("class Kept:\n    value = 42\n\nkept = Kept()\n")
    get = conn.eval(f"lambda: (kept,) * {N_PER_CALL}")
    base = baseline(conn)
    held = get()[0]
    assert held.value == 42
    for _ in range(N // N_PER_CALL - 1):
        copies = get()
        del copies
    settles(conn, base + 1, "the same object received many times, one proxy still held")
    assert held.value == 42, "the object stayed valid while a proxy held it"
    assert conn.eval("kept") == held
    del held
    settles(conn, base, "the same object received many times, every proxy dropped")


def test_100k_distinct_objects_across_iteration_batches(conn: farcall.Connection) -> None:
    items = conn.eval(f"[object() for _ in range({N})]")
    base = baseline(conn)
    exported_before = exported(conn)
    count = 0
    for proxy in items:
        assert isinstance(proxy, farcall.Proxy)
        count += 1
    del proxy
    assert count == N
    assert exported(conn) - exported_before >= N
    settles(conn, base, f"after iterating {N} remote objects")
    assert len(items) == N  # the list itself is untouched and still ours


def test_the_same_object_across_iteration_batches(conn: farcall.Connection) -> None:
    items = conn.eval(f"[bytearray(b'x')] * {N}")
    base = baseline(conn)
    count = 0
    for proxy in items:
        count += 1
    assert count == N and len(proxy) == 1
    del proxy
    settles(conn, base, f"after iterating the same remote object {N} times")


def test_a_remote_generator_of_objects(conn: farcall.Connection) -> None:
    """A generator yielding objects (fewer: whether such items may be prefetched in batches is the
    iteration's business, and one round trip each must stay affordable here)."""
    n = 5000
    base = baseline(conn)
    generator = conn.eval(f"(bytearray(i % 7) for i in range({n}))")
    count = 0
    for chunk in generator:
        assert isinstance(chunk, farcall.Proxy)
        count += 1
    assert count == n
    assert len(chunk) == (n - 1) % 7  # the last one, still alive through its proxy
    del chunk, generator
    settles(conn, base, f"after consuming a generator of {n} remote objects")


def test_abandoned_iterations_release_their_remote_iterators(conn: farcall.Connection) -> None:
    items = conn.eval("[object() for _ in range(5000)]")
    numbers = conn.eval("list(range(5000))")
    base = baseline(conn)
    for _ in range(200):
        for i, _proxy in enumerate(items):  # objects: a batch is prefetched, the rest stays remote
            if i == 3:
                break
        for n in numbers:  # values
            if n == 3:
                break
    iterator = iter(items)
    next(iterator)
    del iterator
    del _proxy
    settles(conn, base, "after 400 iterations abandoned part-way")
    assert len(items) == 5000 and sum(numbers) == sum(range(5000))


def test_obtain_and_deliver_leave_the_table_alone(conn: farcall.Connection) -> None:
    numbers = conn.eval(f"list(range({N}))")
    nested = conn.eval("{'a': [1, 2, {'b': (3, 4)}], 'c': {5, 6}, 'd': 'text'}")
    unobtainable = conn.eval("[1, 2, object()]")
    base = baseline(conn)
    exported_before = exported(conn)

    copy = farcall.obtain(numbers)
    assert type(copy) is list and copy == list(range(N))
    for _ in range(500):
        assert farcall.obtain(nested) == {"a": [1, 2, {"b": (3, 4)}], "c": {5, 6}, "d": "text"}
    assert exported(conn) == exported_before, "obtain exported objects"
    assert live(conn) == base

    for _ in range(50):
        with pytest.raises(TypeError, match="object"):
            farcall.obtain(unobtainable)
    settles(conn, base, "after failed obtains")

    for i in range(500):
        delivered = farcall.deliver(conn, [i, {"k": [i]}])
        assert isinstance(delivered, farcall.Proxy)
        assert delivered[1]["k"][0] == i
    del delivered
    settles(conn, base, "after 500 delivered lists were dropped")


def test_local_objects_passed_as_arguments_are_released_by_the_server(conn: farcall.Connection) -> None:
    """The other direction: callables this client passes are exported in its own table
    (`conn.stats()["local_objects"]`); the server releases them when done, and the client's
    table comes back where it started."""
    apply = conn.eval("lambda f, x: f(x)")
    base = baseline(conn)

    def local_table() -> int:
        return conn.stats()["local_objects"]  # a round trip too: releases the server sent are read

    local_base = local_table()
    for i in range(2000):
        assert apply(lambda v, i=i: v + i, i) == 2 * i
    settles(conn, base, "the server's table after 2000 calls with callbacks")
    deadline = time.monotonic() + SETTLE_S
    while local_table() != local_base:
        assert time.monotonic() < deadline, (
            f"the client's table holds {local_table()} objects, {local_base} before the callbacks"
        )
        time.sleep(0.01)


# -- the server's memory -------------------------------------------------------------------

#: Allowed RSS growth between two measurements after the warm-up. One leaked pass would keep
#: ~100 000 × 1 KiB bytearrays (> 100 MB; the measurement spans three), far above this bound;
#: allocator noise (a new thread's malloc arena, fragmentation) stays below it: up to ~27 MB seen.
RSS_GROWTH_BOUND_MB = 60
PAYLOAD_BYTES = 1024


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


#: Objects per remote list iterated in `create_and_drop` (a list of 1 KiB objects: ~10 MB at a time).
CHUNK = 10_000


def create_and_drop(conn: farcall.Connection, make_list: Any, make: Any) -> None:
    """100 000 distinct remote objects of 1 KiB: 80 000 by iterating remote lists (batches),
    20 000 received by calls (N_PER_CALL per reply); every proxy dropped at once."""
    by_iteration = N * 4 // 5
    seen = 0
    for _ in range(by_iteration // CHUNK):
        for chunk in make_list(CHUNK):
            seen += 1
    assert seen == by_iteration
    for _ in range((N - by_iteration) // N_PER_CALL):
        make()


def test_server_memory_stays_flat(server: Server, conn: farcall.Connection) -> None:
    python_pid = conn.modules.os.getpid()
    pids = {"the server": server.pid}
    if python_pid != server.pid:
        pids["the worker"] = python_pid
    for pid in pids.values():
        assert Path(f"/proc/{pid}/status").exists(), "the server runs on this machine in the tests"
    make_list = conn.eval(f"lambda n: [bytearray({PAYLOAD_BYTES}) for _ in range(n)]")
    make = conn.eval(f"lambda: tuple(bytearray({PAYLOAD_BYTES}) for _ in range({N_PER_CALL}))")
    base = baseline(conn)

    for _ in range(2):  # warm-up: allocator pools, tables and buffers reach their working size
        create_and_drop(conn, make_list, make)
    settles(conn, base, "after the warm-up")
    before = {name: rss_mb(pid) for name, pid in pids.items()}

    for _ in range(3):
        create_and_drop(conn, make_list, make)
    settles(conn, base, f"after {3 * N} more proxies")
    after = {name: rss_mb(pid) for name, pid in pids.items()}

    report = ", ".join(f"{name}: {before[name]:.1f} → {after[name]:.1f} MB" for name in pids)
    for name in pids:
        growth = after[name] - before[name]
        assert growth < RSS_GROWTH_BOUND_MB, (
            f"{name}'s memory grew by {growth:.1f} MB over {3 * N} created and dropped proxies ({report})"
        )
