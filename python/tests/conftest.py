"""Fixtures: a real `farcall serve` on 127.0.0.1 port 0 for the session, extra
servers for tests that stop or kill one, and connections to them.

Every test that uses a server runs once per transport: `tcp`, `tls` and
`quic` (the `transport` fixture; `pytest -k quic` selects one). Tests that are
about one transport only say so with `@pytest.mark.transports("tcp", reason=...)`
and are generated for those transports alone.

Every test that uses a server (the `server`, `conn` and `start_extra_server`
fixtures, or `backend` itself) also runs once per evaluator: `embedded` (the
interpreter inside `farcall serve`) and `subprocess` (a worker interpreter per
session, the default `python3` on the server's PATH); the ids read
`[embedded-tcp]`, so `pytest -k subprocess` selects one. Tests that hold for one
backend only say why with `@pytest.mark.backends("subprocess", reason=...)`.
Slow tests whose other transports add nothing with one backend say so with
`@pytest.mark.backend_transports("subprocess", "tcp", reason=...)`: with that
backend they run over those transports only and are skipped, with the reason,
over the others.

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
from _support import (
    BACKENDS,
    TRANSPORTS,
    Server,
    TlsMaterial,
    interpreter_facts,
    make_tls_material,
    start_server,
    start_transport_server,
    tls_for,
    write_server_config,
)

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
    config.addinivalue_line(
        "markers",
        "backends(*names, reason): run this test only with these evaluators (of embedded, subprocess), and say why",
    )
    config.addinivalue_line(
        "markers",
        "backend_transports(backend, *transports, reason): with that backend, run this test over these"
        " transports only (skipped over the others, with the reason)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip, saying why, the (backend, transport) combinations a `backend_transports` marker leaves out."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        for marker in item.iter_markers("backend_transports"):
            reason = marker.kwargs.get("reason")
            assert reason, f"{item.nodeid}: @pytest.mark.backend_transports needs a reason="
            only_backend, *transports = marker.args
            assert only_backend in BACKENDS and transports and set(transports) <= set(TRANSPORTS), item.nodeid
            if params.get("backend") == only_backend and params.get("transport") not in transports:
                item.add_marker(pytest.mark.skip(reason=f"{only_backend}: only over {', '.join(transports)}: {reason}"))


def _chosen(metafunc: pytest.Metafunc, marker_name: str, every: tuple[str, ...]) -> tuple[str, ...]:
    """`every`, or the names a `@pytest.mark.<marker_name>(*names, reason=...)` keeps."""
    marker = metafunc.definition.get_closest_marker(marker_name)
    if marker is None:
        return every
    where = metafunc.definition.nodeid
    assert marker.kwargs.get("reason"), f"{where}: @pytest.mark.{marker_name} needs a reason="
    unknown = set(marker.args) - set(every)
    assert marker.args and not unknown, f"{where}: unknown {marker_name} {unknown or '(none)'}"
    return tuple(name for name in every if name in marker.args)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize `backend` and `transport` (and so `server`, `conn`, ...) over every
    backend and transport, or the marked ones."""
    if "backends" in (m.name for m in metafunc.definition.iter_markers()):
        assert "backend" in metafunc.fixturenames, (
            f"{metafunc.definition.nodeid}: @pytest.mark.backends on a test that starts no server"
        )
    # Session scope: one server per (backend, transport), and pytest groups the tests by it.
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", _chosen(metafunc, "backends", BACKENDS), indirect=True, scope="session")
    if "transport" in metafunc.fixturenames:
        metafunc.parametrize("transport", _chosen(metafunc, "transports", TRANSPORTS), indirect=True, scope="session")


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
def backend(request: pytest.FixtureRequest) -> str:
    """'embedded' or 'subprocess': the `[evaluator] backend` of the servers the test starts
    (parametrized in `pytest_generate_tests`)."""
    return request.param


@pytest.fixture(scope="session")
def backend_python(backend: str) -> dict[str, str]:
    """What the backend's interpreter is (`version`, `prefix`, `base_prefix`, `executable`):
    for `embedded` the one the build linked (PYO3_PYTHON, else this test's interpreter), for
    `subprocess` the configured `python3`, looked up on the servers' PATH as they do."""
    if backend == "embedded":
        return interpreter_facts(os.environ.get("PYO3_PYTHON") or sys.executable)
    return interpreter_facts("python3")


@pytest.fixture(scope="session")
def server(
    backend: str, transport: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One `farcall serve --config FILE` per (backend, transport), listening on `TRANSPORT://127.0.0.1:0` only.

    Yields a `Server` (`.url` is 'tls://host:port' and so on, `.address` is
    'host:port', `.scheme` the transport, `.pid` the server's process id,
    `.connect(**kw)` connects to it as alice). Teardown stops it with SIGTERM
    and checks that it exits with code 0.
    """
    log_dir = tmp_path_factory.mktemp(f"server-{backend}-{transport}")
    srv = start_transport_server(transport, tls_for(transport, request), log_dir=log_dir, backend=backend)
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


@pytest.fixture(scope="module")
def module_conn(server: Server) -> Iterator[farcall.Connection]:
    """One connection to the session's server shared by a module's tests that only compute
    (value round trips, exception mapping): with the subprocess backend every new session costs a
    worker start (a Python boot), and hundreds of those add nothing a fresh session would show."""
    connection = server.connect()
    yield connection
    connection.close()
    assert server.alive(), f"the server died during this module\n{server.describe()}"


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
    backend: str, transport: str, request: pytest.FixtureRequest, tmp_path: Path, _started_servers: list[Server]
) -> Callable[..., Server]:
    """Start more servers for this test: `start_extra_server(*serve_args, env=..., listeners=1, evaluator=...)`.

    With no arguments it listens on the test's transport at 127.0.0.1:0 (from
    a generated config, with the session's TLS files) and evaluates with the
    test's backend, its `[evaluator]` section holding the `evaluator` options
    too (`{"call_timeout_s": 1}`); with arguments it runs `farcall serve ARGS...`
    as given (its `connect` still knows the TLS files; pass the `backend=` its
    config chooses). Servers still running at teardown are stopped with SIGTERM
    and must exit with code 0; servers the test killed are left alone.
    """

    tls = tls_for(transport, request)

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        listeners: int = 1,
        evaluator: dict[str, object] | None = None,
        backend: str = backend,
    ) -> Server:
        if args:
            assert evaluator is None, "with serve arguments, the [evaluator] options belong in their config"
            srv = start_server(args, log_dir=tmp_path, env=env, listeners=listeners, tls=tls, backend=backend)
        else:
            srv = start_transport_server(
                transport, tls, log_dir=tmp_path, env=env, backend=backend, evaluator=evaluator
            )
        _started_servers.append(srv)
        return srv

    return start


@pytest.fixture
def guarded_server(
    backend: str, transport: str, request: pytest.FixtureRequest, tmp_path: Path, start_extra_server
) -> Server:
    """A server of the test's backend and transport with `[policy] allow_setattr = false`."""
    config = write_server_config(tmp_path / "guarded", [transport], tls_for(transport, request), backend=backend)
    config.write_text(config.read_text() + "\n[policy]\nallow_setattr = false\n")
    return start_extra_server("--config", str(config))


@pytest.fixture
def start_server_with_args(tmp_path: Path, _started_servers: list[Server]) -> Callable[..., Server]:
    """`start_server_with_args(*serve_args, env=..., listeners=1, tls=None, backend="embedded")`: `farcall
    serve ARGS...` as given, for tests that choose their own listeners (so they are not run once per
    transport); pass the `tls` material its config uses so that `.connect` presents it, and the `backend`
    it chooses. Same teardown as `start_extra_server`."""

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        listeners: int = 1,
        tls: TlsMaterial | None = None,
        backend: str = "embedded",
    ) -> Server:
        srv = start_server(args, log_dir=tmp_path, env=env, listeners=listeners, tls=tls, backend=backend)
        _started_servers.append(srv)
        return srv

    return start
