"""Fixtures: a real `farcall serve` on 127.0.0.1 port 0 for the session, extra
servers for tests that stop or kill one, and connections to them.

The binary under test is $FARCALL_BIN, else <repo>/target/debug/farcall.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import farcall
from _support import Server, start_server

#: No single test may run longer than this; past it the whole run stops with
#: every thread's traceback instead of hanging CI (see `_watchdog`).
TEST_TIMEOUT_S = float(os.environ.get("FARCALL_TEST_TIMEOUT", "180"))

_watchdog_fd: int | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _watchdog_fd
    _watchdog_fd = os.dup(sys.__stderr__.fileno())


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    """Abort the run, printing all tracebacks, if a test hangs.

    faulthandler's watchdog is a C thread that needs no GIL, so it fires even
    when a native call blocks while holding the GIL. Servers started by the
    tests die with the test process (PR_SET_PDEATHSIG).
    """
    faulthandler.dump_traceback_later(TEST_TIMEOUT_S, exit=True, file=_watchdog_fd)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `farcall serve --listen tcp://127.0.0.1:0` shared by the session.

    Yields a `Server` (`.address` is 'host:port', `.url` is 'tcp://host:port',
    `.pid` the server's process id). Teardown stops it with SIGTERM and checks
    that it exits with code 0.
    """
    srv = start_server(log_dir=tmp_path_factory.mktemp("server"))
    yield srv
    assert srv.alive(), f"the session's server died during the tests\n{srv.describe()}"
    code = srv.stop()
    assert code == 0, f"farcall serve exited with {code} on SIGTERM\n{srv.describe()}"


@pytest.fixture
def conn(server: Server) -> Iterator[farcall.Connection]:
    """A fresh connection to the session's server, closed after the test."""
    connection = farcall.connect(server.address)
    yield connection
    connection.close()
    assert server.alive(), f"the server died during this test\n{server.describe()}"


@pytest.fixture
def start_extra_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start more servers for this test: `start_extra_server(*serve_args, env=..., listeners=1)`.

    With no arguments it listens on tcp://127.0.0.1:0. Servers still running
    at teardown are stopped with SIGTERM and must exit with code 0; servers
    the test killed are left alone.
    """
    started: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None, listeners: int = 1) -> Server:
        srv = start_server(args or ("--listen", "tcp://127.0.0.1:0"), log_dir=tmp_path, env=env, listeners=listeners)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        if srv.alive():
            code = srv.stop()
            assert code == 0, f"farcall serve exited with {code} on SIGTERM\n{srv.describe()}"
