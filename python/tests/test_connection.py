"""Connections: the public API, closing, server_info, losing the server mid-call,
many threads on one connection, and independent connections."""

from __future__ import annotations

import importlib.resources
import inspect
import os
import socket
import threading

import farcall
import pytest
from _support import PROMPT_S, HangingHttpEndpoint, InThread, Server, TlsMaterial, finishes, start_hanging_call

# -- the public API ------------------------------------------------------------


def test_public_names_and_exception_hierarchy() -> None:
    for name in ("connect", "Connection", "Proxy", "FarcallError", "RemoteError", "PolicyError", "ConnectionLost"):
        assert hasattr(farcall, name), name
    assert issubclass(farcall.PolicyError, farcall.FarcallError)
    assert issubclass(farcall.PolicyError, PermissionError)
    assert issubclass(farcall.ConnectionLost, farcall.FarcallError)
    assert issubclass(farcall.ConnectionLost, ConnectionError)


def test_connect_takes_keyword_only_options() -> None:
    try:
        parameters = inspect.signature(farcall.connect).parameters
    except (TypeError, ValueError):
        pytest.skip("farcall.connect has no introspectable signature")
    for name in ("timeout", "ca", "cert", "key", "server_name", "config"):
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert parameters[name].default is None, name


def test_package_is_typed() -> None:
    assert importlib.resources.files("farcall").joinpath("py.typed").is_file()


# -- opening and closing -------------------------------------------------------


def test_close_is_idempotent(server: Server) -> None:
    conn = server.connect()
    conn.close()
    conn.close()
    assert conn.closed is True


def test_context_manager_closes(server: Server) -> None:
    with server.connect() as conn:
        assert isinstance(conn, farcall.Connection)
        assert conn.closed is False
        assert conn.modules.math.pow(3, 2) == 9.0
    assert conn.closed is True
    conn.close()  # still idempotent


def test_context_manager_closes_when_the_block_raises(server: Server) -> None:
    with pytest.raises(RuntimeError):
        with server.connect() as conn:
            raise RuntimeError("boom")
    assert conn.closed is True


def test_calls_after_close_raise_connection_lost(server: Server) -> None:
    conn = server.connect()
    remote_math = conn.modules.math
    remote_pow = remote_math.pow
    conn.close()
    with pytest.raises(farcall.ConnectionLost):
        finishes(remote_pow, 3, 2)
    # An attribute may come from a local cache; using it must fail all the same.
    try:
        sqrt = finishes(getattr, remote_math, "sqrt")
    except farcall.ConnectionLost:
        pass
    else:
        with pytest.raises(farcall.ConnectionLost):
            finishes(sqrt, 4)
    with pytest.raises(farcall.ConnectionLost):
        finishes(getattr, conn.modules, "json")


def test_connect_with_a_timeout(server: Server) -> None:
    with server.connect(timeout=30.0) as conn:
        assert conn.modules.math.pow(3, 2) == 9.0


def _free_port(transport: str) -> int:
    """A port nothing listens on now (bound, then released): UDP for quic, TCP otherwise."""
    kind = socket.SOCK_DGRAM if transport == "quic" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_connect_to_a_closed_port_fails_promptly(transport: str, tls_material: TlsMaterial) -> None:
    port = _free_port(transport)
    # Nothing listens there now (the port was just released).
    with pytest.raises((farcall.FarcallError, OSError)):
        url = f"{transport}://127.0.0.1:{port}"
        finishes(farcall.connect, url, timeout=2.0, **tls_material.client_kwargs(transport))


def test_connect_to_a_silent_peer_times_out(transport: str, tls_material: TlsMaterial) -> None:
    """A peer that accepts TCP (or receives UDP) but never answers makes connect fail, not hang."""
    if transport == "quic":
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
    else:
        silent = socket.create_server(("127.0.0.1", 0))
    with silent:
        port = silent.getsockname()[1]
        url = f"{transport}://127.0.0.1:{port}"
        attempt = InThread(farcall.connect, url, timeout=1.0, **tls_material.client_kwargs(transport))
        assert attempt.join(30), f"connect({url!r}, timeout=1.0) to a peer that never answers hung"
    assert attempt.error is not None, "connect to a silent peer succeeded"
    assert isinstance(attempt.error, (farcall.FarcallError, OSError)), repr(attempt.error)


# -- server_info: which Python answers -----------------------------------------


def test_server_info(conn: farcall.Connection, backend: str) -> None:
    info = conn.server_info
    assert isinstance(info, dict)
    for key in ("protocol", "farcall_version", "python_version", "python_prefix", "python_executable", "backend"):
        assert key in info, key
    assert info["backend"] == backend
    assert isinstance(info["farcall_version"], str) and info["farcall_version"]
    assert isinstance(info["python_executable"], str)


def test_server_info_matches_the_remote_interpreter(conn: farcall.Connection) -> None:
    info = conn.server_info
    assert info["python_version"] == conn.modules.platform.python_version()
    assert info["python_prefix"] == conn.modules.sys.prefix


def test_the_python_is_the_one_the_backend_uses(
    conn: farcall.Connection, backend: str, backend_python: dict[str, str]
) -> None:
    """Embedded: the interpreter the build linked (a binary that loads another libpython of the same
    soname reports another version or prefix). Subprocess: the configured interpreter (`python3` on
    the server's PATH), whatever the server embeds."""
    expected = backend_python
    info = conn.server_info
    assert info["python_version"] == expected["version"]
    assert os.path.realpath(conn.modules.sys.base_prefix) == os.path.realpath(expected["base_prefix"])
    if backend == "embedded":
        expected_prefixes = {os.path.realpath(expected["prefix"]), os.path.realpath(expected["base_prefix"])}
        assert os.path.realpath(info["python_prefix"]) in expected_prefixes
    else:
        assert info["python_prefix"] == expected["prefix"]
        assert info["python_executable"] == expected["executable"]
        assert conn.modules.sys.executable == expected["executable"]


# -- losing the server ---------------------------------------------------------

# Which runs the killed-server tests need beyond the embedded backend's on every transport.
KILLED_SERVER_RUNS = pytest.mark.backend_transports(
    "subprocess",
    "tcp",
    "tls",
    reason="over QUIC a killed server is noticed at the 8 s idle timeout, a transport matter the embedded run covers;"
    " what the subprocess run adds (workers end with their server) does not depend on the transport",
)


@KILLED_SERVER_RUNS
def test_server_killed_during_sleep_raises_connection_lost(start_extra_server) -> None:
    srv = start_extra_server()
    conn = srv.connect()
    try:
        assert conn.modules.math.pow(3, 2) == 9.0
        sleep = conn.modules.time.sleep
        call = InThread(sleep, 30)
        srv.kill()  # whether or not the request left yet, the answer is ConnectionLost
        with pytest.raises(farcall.ConnectionLost):
            call.outcome(PROMPT_S, "a call whose server was killed")
        with pytest.raises(farcall.ConnectionLost):
            finishes(lambda: conn.modules.math.pow(3, 2))
    finally:
        finishes(conn.close)


@KILLED_SERVER_RUNS
def test_server_killed_mid_call_raises_connection_lost(start_extra_server) -> None:
    """The call is provably running on the server (it reached our endpoint) when the server dies."""
    srv = start_extra_server()
    conn = srv.connect()
    try:
        with HangingHttpEndpoint() as endpoint:
            call = start_hanging_call(conn, endpoint)
            srv.kill()
            with pytest.raises(farcall.ConnectionLost):
                call.outcome(PROMPT_S, "a call whose server was killed")
        assert conn.closed is True
    finally:
        finishes(conn.close)


def test_close_during_a_call_raises_connection_lost(start_extra_server) -> None:
    srv = start_extra_server()
    conn = srv.connect()
    with HangingHttpEndpoint() as endpoint:
        call = start_hanging_call(conn, endpoint)
        finishes(conn.close)
        with pytest.raises(farcall.ConnectionLost):
            call.outcome(PROMPT_S, "a call on a connection closed under it")
    with srv.connect() as other:
        assert other.modules.math.pow(3, 2) == 9.0


def test_server_stopped_with_sigterm_while_a_client_is_connected(start_extra_server) -> None:
    srv = start_extra_server()
    conn = srv.connect()
    assert conn.modules.math.pow(3, 2) == 9.0
    assert srv.stop() == 0, srv.describe()
    with pytest.raises(farcall.ConnectionLost):
        finishes(lambda: conn.modules.math.pow(3, 2))
    finishes(conn.close)


# -- concurrency ---------------------------------------------------------------


def _run_threads(count: int, work) -> None:
    """Run work(index) on `count` threads released together; re-raise the first failure."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(PROMPT_S)
            work(index)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a worker thread hung"
    if errors:
        raise errors[0]


def test_many_threads_share_one_connection(conn: farcall.Connection) -> None:
    add = conn.modules.operator.add

    def work(index: int) -> None:
        for i in range(200):
            assert add(i, index * 1000) == i + index * 1000

    _run_threads(8, work)


def test_threads_get_their_own_results_and_errors(conn: farcall.Connection) -> None:
    op = conn.modules.operator

    def work(index: int) -> None:
        for i in range(100):
            if i % 7 == 0:
                with pytest.raises(ZeroDivisionError):
                    op.truediv(index, 0)
            else:
                assert op.mul(index, i) == index * i
                assert conn.modules.builtins.tuple(conn.modules.builtins.list((index, i))) == (index, i)

    _run_threads(8, work)


def test_threads_moving_large_payloads_do_not_mix_them_up(conn: farcall.Connection) -> None:
    copy = conn.modules.copy.copy

    def work(index: int) -> None:
        payload = bytes([index]) * 1_000_000
        for _ in range(5):
            assert copy(payload) == payload

    _run_threads(4, work)


def test_a_slow_call_does_not_block_other_calls_on_the_same_connection(start_extra_server) -> None:
    srv = start_extra_server()
    with srv.connect() as conn:
        with HangingHttpEndpoint() as endpoint:
            call = start_hanging_call(conn, endpoint)
            assert finishes(lambda: conn.modules.math.pow(3, 2)) == 9.0
            assert not call.join(0)  # still in flight
        # Released: the remote urlopen fails, and that error comes back to its caller.
        with pytest.raises(Exception):
            call.outcome(30, "the released call")


def test_a_waiting_thread_releases_the_gil(start_extra_server) -> None:
    """While one thread waits for a reply, other Python threads keep running."""
    srv = start_extra_server()
    with srv.connect() as conn:
        with HangingHttpEndpoint() as endpoint:
            call = start_hanging_call(conn, endpoint)
            # This thread runs Python while `call` waits: a loop that needs the GIL.
            assert sum(range(2_000_000)) == 1_999_999_000_000
            counter = InThread(lambda: sum(1 for _ in range(1_000_000)))
            assert counter.outcome(PROMPT_S, "a pure-Python thread") == 1_000_000
            assert not call.join(0)


# -- independent connections ---------------------------------------------------


def test_two_connections_are_independent(server: Server) -> None:
    first = server.connect()
    second = server.connect()
    try:
        first_list = first.modules.builtins.list((1, 2))
        with pytest.raises(ZeroDivisionError):
            first.modules.operator.truediv(1, 0)
        first.close()
        assert second.closed is False
        assert second.modules.math.pow(3, 2) == 9.0
        assert second.modules.builtins.len((1, 2, 3)) == 3
        with pytest.raises(farcall.ConnectionLost):
            finishes(lambda: first.modules.builtins.len(first_list))
    finally:
        first.close()
        second.close()


@pytest.mark.backend_transports(
    "subprocess",
    "tcp",
    reason="each subprocess session boots a worker interpreter (the pool refills one at a time), so 50 sessions"
    " take seconds per transport; connection set-up per transport is the embedded run's, worker turnover the tcp run's",
)
def test_many_connections_in_turn(server: Server) -> None:
    for i in range(50):
        with server.connect() as conn:
            assert conn.modules.operator.add(i, 1) == i + 1
