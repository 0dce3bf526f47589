"""`farcall.async_` (futures, several in flight on one connection), `farcall.timed` and
`connect(timeout=...)`: a call past its deadline raises TimeoutError and the connection stays usable."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import farcall
import pytest
from _support import PROMPT_S, Server, finishes

#: How long the remote calls that must be abandoned would run.
LONG_S = 3.0


def test_async_returns_a_future(conn: farcall.Connection) -> None:
    future = farcall.async_(conn.modules.math.pow)(2, 10)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(PROMPT_S) == 1024.0
    sorted_ = farcall.async_(conn.builtins.sorted)((3, 1, 2), reverse=True)
    assert farcall.obtain(sorted_.result(PROMPT_S)) == [3, 2, 1]


def test_several_async_calls_in_flight_on_one_connection(conn: farcall.Connection) -> None:
    parties = 4
    conn.execute(f"import threading\nbarrier = threading.Barrier({parties}, timeout={PROMPT_S})")
    wait = conn.eval("barrier.wait")
    # Each call returns only once all four are waiting on the server at the same time.
    futures = [farcall.async_(wait)() for _ in range(parties)]
    indexes = sorted(f.result(PROMPT_S * 2) for f in futures)
    assert indexes == list(range(parties))


def test_async_exception_is_in_the_future(conn: farcall.Connection) -> None:
    future = farcall.async_(conn.modules.math.sqrt)(-1)
    with pytest.raises(ValueError):
        future.result(PROMPT_S)
    assert isinstance(future.exception(), farcall.RemoteError)


def test_async_with_a_callback(conn: farcall.Connection) -> None:
    conn.execute("def apply(f, x):\n    return f(x)")
    future = farcall.async_(conn.eval("apply"))(lambda x: x * 3, 14)
    assert future.result(PROMPT_S) == 42


def test_several_async_calls_in_flight_each_calling_back(conn: farcall.Connection) -> None:
    parties = 3
    conn.execute(
        f"import threading\nmeet = threading.Barrier({parties}, timeout={PROMPT_S})\n"
        "def meet_then_call(f, x):\n    meet.wait()\n    return f(x)\n"
    )
    meet_then_call = farcall.async_(conn.eval("meet_then_call"))
    calls = []

    def local(x):
        calls.append(x)
        return x * 10

    futures = [meet_then_call(local, i) for i in range(parties)]
    assert sorted(f.result(PROMPT_S * 2) for f in futures) == [0, 10, 20]
    assert sorted(calls) == [0, 1, 2]


def test_async_needs_a_proxy() -> None:
    with pytest.raises(TypeError):
        farcall.async_(len)  # type: ignore[arg-type]


def test_async_calls_fail_once_the_connection_is_closed(server: Server) -> None:
    conn = server.connect()
    start = farcall.async_(conn.modules.math.pow)
    conn.close()
    with pytest.raises(farcall.ConnectionLost):
        start(2, 2).result(PROMPT_S)


def test_timed_call_raises_timeout_error_and_the_connection_goes_on(conn: farcall.Connection) -> None:
    sleep = conn.modules.time.sleep
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        finishes(farcall.timed(sleep, 0.3), LONG_S)
    assert time.monotonic() - started < LONG_S, "the timeout did not cut the call short"
    assert finishes(conn.modules.math.pow, 2, 3, within=LONG_S + PROMPT_S) == 8.0
    assert farcall.timed(conn.modules.math.pow, PROMPT_S)(3, 2) == 9.0  # in time: the result


def test_timed_checks_its_arguments(conn: farcall.Connection) -> None:
    with pytest.raises(ValueError):
        farcall.timed(conn.modules.time.sleep, 0)
    with pytest.raises(TypeError):
        farcall.timed(len, 1)  # type: ignore[arg-type]


def test_connect_timeout_is_the_default_call_timeout(server: Server) -> None:
    slow_s = 4 * LONG_S
    with server.connect(timeout=LONG_S) as conn:  # seconds to connect, and for every call
        assert conn.modules.math.pow(2, 2) == 4.0
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            finishes(conn.modules.time.sleep, slow_s, within=slow_s + PROMPT_S)
        assert time.monotonic() - started < slow_s, "the default call timeout did not cut the call short"
        assert finishes(conn.modules.math.pow, 2, 3, within=slow_s + PROMPT_S) == 8.0


def test_a_timed_out_call_is_abandoned_on_the_server(conn: farcall.Connection) -> None:
    """The client's cancel reaches the server: the abandoned call's Python code gets a TimeoutError
    (both backends can), its late reply is dropped, and later calls get their own replies."""
    conn.execute(
        "import threading\nstarted, stopped = threading.Event(), threading.Event()\n"
        "def spin():\n    started.set()\n    try:\n        while True:\n            pass\n    finally:\n        stopped.set()\n"
    )
    spin = conn.eval("spin")
    outcome: list = []

    def timed_spin() -> None:
        try:
            farcall.timed(spin, 2.0)()
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            outcome.append(e)

    caller = threading.Thread(target=timed_spin)
    caller.start()
    assert conn.eval("started.wait(60)") is True  # the endless call runs on the server...
    caller.join(LONG_S + 60)
    assert len(outcome) == 1 and isinstance(outcome[0], TimeoutError), outcome
    assert conn.eval("stopped.wait(60)") is True  # ...and was stopped there, not left spinning
    for i in range(5):
        assert conn.eval(f"{i} * 2") == i * 2  # no reply gets mixed up with the late one


EXIT_SCRIPT = """
import json, sys
import farcall

conn = farcall.connect(sys.argv[1], **json.loads(sys.argv[2]))
pending = farcall.async_(conn.modules.time.sleep)(120)
print("started", flush=True)
"""


def test_a_pending_async_call_does_not_keep_the_program_from_exiting(server: Server) -> None:
    import json
    import os
    import subprocess
    import sys

    options = {k: os.fspath(v) for k, v in server.connect_kwargs.items()}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, server.url, json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "started"
    assert time.monotonic() - started < 60
