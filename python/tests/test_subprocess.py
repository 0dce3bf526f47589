"""The subprocess backend (issue 4): each session has a worker interpreter of its own.

A worker that exits, crashes, runs out of memory or over its time limit fails
only its own session, with `farcall.WorkerDied` (or `TimeoutError`) saying why;
the server and every other session keep working. What one session changes in
its interpreter (working directory, recursion limit, environment) no other
session sees, and a session's worker is killed and reaped when its client goes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import farcall
import pytest
from _support import (
    PROMPT_S,
    Server,
    children_of,
    finishes,
    interpreter_facts,
    parent_pid,
    process_state,
    wait_until_reaped,
)

pytestmark = pytest.mark.backends(
    "subprocess",
    reason="the embedded interpreter runs every session in the server's own process and interpreter:"
    " isolation between sessions, per-session limits and worker processes are subprocess properties",
)

#: How long a call over `call_timeout_s = 1` may take to fail, start-up of nothing included.
TIMEOUT_REPORTED_WITHIN_S = 4.0


def assert_worker_died(error: BaseException, *why: str) -> None:
    """`error` is the client's `farcall.WorkerDied` (a `RemoteError`) and its message says `why`."""
    assert isinstance(error, farcall.RemoteError), f"{type(error).__name__}: {error}"
    assert type(error).__name__ == "WorkerDied", f"{type(error).__name__}: {error}"
    assert error.remote_type == "farcall.WorkerDied", error.remote_type
    message = error.remote_message
    assert "worker" in message and "died" in message, message
    for words in why:
        assert words in message, f"{words!r} not in the WorkerDied message {message!r}"


def assert_still_serving(server: Server, witness: farcall.Connection, witness_pid: int) -> None:
    """The server lives, a session opened before keeps its worker and works, and a new one gets in."""
    assert server.alive(), f"the server died with a session's worker\n{server.describe()}"
    assert finishes(lambda: witness.modules.operator.add(2, 3)) == 5, "another session stopped working"
    assert finishes(lambda: witness.modules.os.getpid()) == witness_pid, "another session lost its worker"
    with finishes(server.connect) as fresh:
        assert finishes(lambda: fresh.modules.math.pow(3, 2)) == 9.0, "new clients are not served"


def _dies(server: Server, conn: farcall.Connection, kill, *why: str) -> None:
    """`kill(victim)` on a second session ends its worker with WorkerDied saying `why`; its later
    calls raise WorkerDied too, and `conn` (opened before) and new sessions keep working."""
    witness_pid = conn.modules.os.getpid()
    victim = server.connect()
    try:
        victim_pid = victim.modules.os.getpid()
        assert victim_pid != witness_pid
        with pytest.raises(farcall.RemoteError) as info:
            finishes(kill, victim, within=30)
        assert_worker_died(info.value, *why)
        with pytest.raises(farcall.RemoteError) as later:
            finishes(lambda: victim.modules.operator.add(1, 1))
        assert_worker_died(later.value, *why)
        wait_until_reaped(victim_pid, owner=server.pid)
    finally:
        finishes(victim.close)
    assert_still_serving(server, conn, witness_pid)


# -- a worker that dies takes only its own session -------------------------------------


def test_os_exit_kills_only_its_own_worker(server: Server, conn: farcall.Connection) -> None:
    _dies(server, conn, lambda victim: victim.modules.os._exit(1), "exited with code 1")


def test_a_crash_kills_only_its_own_worker(server: Server, conn: farcall.Connection) -> None:
    """`ctypes.string_at(0)` reads address 0: the worker dies of SIGSEGV (its faulthandler dump
    is the exception's traceback)."""
    _dies(server, conn, lambda victim: victim.modules.ctypes.string_at(0), "SIGSEGV")


def test_running_out_of_memory_kills_only_its_own_worker(start_extra_server) -> None:
    """Under `max_memory_mb = 200` a 1 GB allocation ends that worker, reported as out of memory."""
    srv = start_extra_server(evaluator={"max_memory_mb": 200})
    with srv.connect() as witness:
        assert witness.modules.builtins.len(witness.modules.builtins.bytearray(10_000_000)) == 10_000_000
        _dies(srv, witness, lambda victim: victim.modules.builtins.bytearray(10**9), "memory", "200")


def test_without_a_limit_memory_error_is_an_ordinary_exception(conn: farcall.Connection) -> None:
    """No `max_memory_mb`: an impossible allocation raises MemoryError and the worker lives on."""
    pid = conn.modules.os.getpid()
    with pytest.raises(MemoryError):
        conn.modules.builtins.bytearray(2**62)
    assert conn.modules.os.getpid() == pid
    assert conn.modules.math.pow(3, 2) == 9.0


def test_a_call_over_call_timeout_raises_timeout_error(start_extra_server) -> None:
    """`call_timeout_s = 1`: `time.sleep(5)` raises TimeoutError within a few seconds, kills that
    session's worker (its later calls raise WorkerDied) and no other session notices."""
    srv = start_extra_server(evaluator={"call_timeout_s": 1})
    with srv.connect() as witness, srv.connect() as slow:
        witness_pid = witness.modules.os.getpid()
        slow_pid = slow.modules.os.getpid()
        sleep = slow.modules.time.sleep
        assert sleep(0.1) is None  # a call within the limit is fine
        started = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            finishes(sleep, 5, within=PROMPT_S)
        took = time.monotonic() - started
        assert took < TIMEOUT_REPORTED_WITHIN_S, f"TimeoutError came after {took:.1f}s with call_timeout_s = 1"
        assert took >= 0.9, f"a 1 s time limit fired after {took:.2f}s"
        error = info.value
        assert isinstance(error, farcall.RemoteError)
        assert error.remote_type == "builtins.TimeoutError"
        with pytest.raises(farcall.RemoteError) as later:
            finishes(lambda: slow.modules.operator.add(1, 1))
        assert_worker_died(later.value, "call_timeout_s")
        wait_until_reaped(slow_pid, owner=srv.pid)
        assert_still_serving(srv, witness, witness_pid)


# -- sessions do not see each other's changes ---------------------------------------------


def test_chdir_in_one_session_is_invisible_in_another(server: Server, tmp_path: Path) -> None:
    with server.connect() as first, server.connect() as second:
        server_cwd = second.modules.os.getcwd()
        first.modules.os.chdir(str(tmp_path))
        assert first.modules.os.getcwd() == str(tmp_path)
        assert second.modules.os.getcwd() == server_cwd != str(tmp_path)
        with server.connect() as later:
            assert later.modules.os.getcwd() == server_cwd


def test_interpreter_state_set_in_one_session_is_invisible_in_another(server: Server) -> None:
    """Process-wide state changed by calls alone: the recursion limit and os.environ."""
    with server.connect() as first, server.connect() as second:
        default_limit = second.modules.sys.getrecursionlimit()
        assert default_limit != 1234
        first.modules.sys.setrecursionlimit(1234)
        first.modules.os.environ.__setitem__("FARCALL_TEST_SESSION", "first")
        assert first.modules.sys.getrecursionlimit() == 1234
        assert first.modules.os.environ.get("FARCALL_TEST_SESSION") == "first"
        for other in (second, finishes(server.connect)):
            with other:
                assert other.modules.sys.getrecursionlimit() == default_limit
                assert other.modules.os.environ.get("FARCALL_TEST_SESSION") is None


# -- worker processes --------------------------------------------------------------------


def test_each_session_has_its_own_worker_process(server: Server) -> None:
    """The worker is a child of the server, neither the server nor the client, and not shared:
    two sessions at once have two, and a later session a new one."""
    with server.connect() as first, server.connect() as second:
        pids = {first.modules.os.getpid(), second.modules.os.getpid()}
        assert len(pids) == 2, f"two sessions share the worker {pids}"
    with server.connect() as third:
        pids.add(third.modules.os.getpid())
    assert len(pids) == 3, f"a later session reused a closed session's worker: {pids}"
    assert server.pid not in pids and os.getpid() not in pids
    assert {parent_pid(pid) for pid in pids} <= {server.pid, None}  # None: closed and gone already


def test_closing_a_session_kills_and_reaps_its_worker_and_what_it_started(server: Server) -> None:
    conn = server.connect()
    try:
        worker = conn.modules.os.getpid()
        assert parent_pid(worker) == server.pid
        child = conn.modules.subprocess.Popen(("sleep", "600")).pid  # a process the worker started
        assert parent_pid(child) == worker
    finally:
        conn.close()
    wait_until_reaped(worker, owner=server.pid)
    _wait_until_dead(child)
    with server.connect() as fresh:
        assert fresh.modules.math.pow(3, 2) == 9.0


def _wait_until_dead(pid: int, timeout: float = PROMPT_S) -> None:
    """Poll with a deadline until `pid` is gone or a zombie (the orphan's reaper is not ours to check)."""
    deadline = time.monotonic() + timeout
    while process_state(pid) not in (None, "Z"):
        assert time.monotonic() < deadline, f"process {pid} outlived its session's worker by {timeout}s"
        time.sleep(0.01)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_no_worker_outlives_its_server(start_extra_server, how: str) -> None:
    """Stopped (SIGTERM) the server kills its workers, those of open sessions and the pre-started
    ones; killed (SIGKILL) it leaves workers that end when their stdin closes."""
    srv = start_extra_server()
    conn = srv.connect()
    try:
        in_session = conn.modules.os.getpid()
        workers = children_of(srv.pid)
        assert in_session in workers, (in_session, workers)
        if how == "SIGTERM":
            assert srv.stop() == 0, srv.describe()
        else:
            srv.kill()
        for pid in workers:
            _wait_until_dead(pid)
    finally:
        finishes(conn.close)


VANISHING_CLIENT = """
import json, sys, farcall
conn = farcall.connect(sys.argv[1], **json.loads(sys.argv[2]))
print(conn.modules.os.getpid(), flush=True)
sys.stdin.read()  # until killed
"""


@pytest.mark.transports(
    "tcp",
    "tls",
    reason="a server notices a vanished QUIC client only at the 8 s idle timeout; how each transport notices a"
    " vanished client is test_robustness's, here it is what happens to the worker once the session ends",
)
def test_a_killed_clients_worker_is_killed_and_reaped(server: Server, conn: farcall.Connection) -> None:
    """A client that vanishes without closing (SIGKILL) leaves no worker behind."""
    witness_pid = conn.modules.os.getpid()
    client = subprocess.Popen(
        [sys.executable, "-c", VANISHING_CLIENT, server.url, json.dumps(server.connect_kwargs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None
        line = finishes(client.stdout.readline, within=60).strip()
        assert line.isdigit(), f"the client printed {line!r}"
        worker = int(line)
        assert parent_pid(worker) == server.pid
    finally:
        client.kill()
        client.communicate(timeout=PROMPT_S)
    wait_until_reaped(worker, owner=server.pid)
    assert_still_serving(server, conn, witness_pid)


# -- the configured interpreter ------------------------------------------------------------


@pytest.mark.transports("tcp", reason="which interpreter runs the workers does not depend on the transport")
def test_python_names_any_interpreter(start_extra_server) -> None:
    """`python = PATH` runs the workers with that interpreter: here the base interpreter of the
    test's virtual environment (another sys.prefix than the default `python3` in the venv)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    expected = interpreter_facts(base)
    srv = start_extra_server(evaluator={"python": base})
    with srv.connect() as conn:
        info = conn.server_info
        assert info["backend"] == "subprocess"
        assert info["python_executable"] == expected["executable"]
        assert info["python_prefix"] == expected["prefix"] == conn.modules.sys.prefix
        assert info["python_version"] == expected["version"] == conn.modules.platform.python_version()
