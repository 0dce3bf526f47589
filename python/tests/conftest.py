"""Fixtures: a real `farcall serve` on 127.0.0.1 port 0 for the session, extra
servers for tests that stop or kill one, and connections to them.

Every test that uses a server runs once per transport: `tcp`, `tls` and
`quic` (the `transport` fixture; `pytest -k quic` selects one). Tests that are
about one transport only say so with `@pytest.mark.transports("tcp", reason=...)`
and are generated for those transports alone.

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
from _support import TRANSPORTS, Server, TlsMaterial, make_tls_material, start_server, start_transport_server, tls_for

#: No single test may run longer than this; past it the whole run stops with
#: every thread's traceback instead of hanging CI (see `_watchdog`).
TEST_TIMEOUT_S = float(os.environ.get("FARCALL_TEST_TIMEOUT", "180"))

_watchdog_fd: int | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _watchdog_fd
    _watchdog_fd = os.dup(sys.__stderr__.fileno())
    config.addinivalue_line(
        "markers",
        "transports(*names, reason): run this test only over these transports (of tcp, tls, quic), and say why",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize `transport` (and so `server`, `conn`, ...) over every transport, or the marked ones."""
    if "transport" not in metafunc.fixturenames:
        return
    chosen = TRANSPORTS
    marker = metafunc.definition.get_closest_marker("transports")
    if marker is not None:
        assert marker.kwargs.get("reason"), f"{metafunc.definition.nodeid}: @pytest.mark.transports needs a reason="
        unknown = set(marker.args) - set(TRANSPORTS)
        assert marker.args and not unknown, f"{metafunc.definition.nodeid}: unknown transports {unknown or '(none)'}"
        chosen = tuple(t for t in TRANSPORTS if t in marker.args)
    # Session scope: one server per transport, and pytest groups the tests by it.
    metafunc.parametrize("transport", chosen, indirect=True, scope="session")


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
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    """Certificates made once by `farcall certs`: a CA, the server (127.0.0.1, localhost),
    the client `alice`; and a separate CA with its client `mallory`."""
    return make_tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def transport(request: pytest.FixtureRequest) -> str:
    """'tcp', 'tls' or 'quic' (parametrized in `pytest_generate_tests`)."""
    return request.param


@pytest.fixture(scope="session")
def server(
    transport: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One `farcall serve --config FILE` per transport, listening on `TRANSPORT://127.0.0.1:0` only.

    Yields a `Server` (`.url` is 'tls://host:port' and so on, `.address` is
    'host:port', `.scheme` the transport, `.pid` the server's process id,
    `.connect(**kw)` connects to it as alice). Teardown stops it with SIGTERM
    and checks that it exits with code 0.
    """
    log_dir = tmp_path_factory.mktemp(f"server-{transport}")
    srv = start_transport_server(transport, tls_for(transport, request), log_dir=log_dir)
    yield srv
    assert srv.alive(), f"the session's server died during the tests\n{srv.describe()}"
    code = srv.stop()
    assert code == 0, f"farcall serve exited with {code} on SIGTERM\n{srv.describe()}"


@pytest.fixture
def conn(server: Server) -> Iterator[farcall.Connection]:
    """A fresh connection to the session's server, closed after the test."""
    connection = server.connect()
    yield connection
    connection.close()
    assert server.alive(), f"the server died during this test\n{server.describe()}"


@pytest.fixture
def _started_servers() -> Iterator[list[Server]]:
    """Servers a test started; those still running at teardown must stop cleanly on SIGTERM."""
    started: list[Server] = []
    yield started
    for srv in started:
        if srv.alive():
            code = srv.stop()
            assert code == 0, f"farcall serve exited with {code} on SIGTERM\n{srv.describe()}"


@pytest.fixture
def start_extra_server(
    transport: str, request: pytest.FixtureRequest, tmp_path: Path, _started_servers: list[Server]
) -> Callable[..., Server]:
    """Start more servers for this test: `start_extra_server(*serve_args, env=..., listeners=1)`.

    With no arguments it listens on the test's transport at 127.0.0.1:0 (from
    a generated config, with the session's TLS files); with arguments it runs
    `farcall serve ARGS...` as given (its `connect` still knows the TLS files).
    Servers still running at teardown are stopped with SIGTERM and must exit
    with code 0; servers the test killed are left alone.
    """

    tls = tls_for(transport, request)

    def start(*args: str, env: dict[str, str] | None = None, listeners: int = 1) -> Server:
        if args:
            srv = start_server(args, log_dir=tmp_path, env=env, listeners=listeners, tls=tls)
        else:
            srv = start_transport_server(transport, tls, log_dir=tmp_path, env=env)
        _started_servers.append(srv)
        return srv

    return start


@pytest.fixture
def start_server_with_args(tmp_path: Path, _started_servers: list[Server]) -> Callable[..., Server]:
    """`start_server_with_args(*serve_args, env=..., listeners=1, tls=None)`: `farcall serve ARGS...` as
    given, for tests that choose their own listeners (so they are not run once per transport); pass the
    `tls` material its config uses so that `.connect` presents it. Same teardown as `start_extra_server`."""

    def start(
        *args: str, env: dict[str, str] | None = None, listeners: int = 1, tls: TlsMaterial | None = None
    ) -> Server:
        srv = start_server(args, log_dir=tmp_path, env=env, listeners=listeners, tls=tls)
        _started_servers.append(srv)
        return srv

    return start
