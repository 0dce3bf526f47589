"""Secured transports (issue 3): client config files, mutual-TLS refusals that
leave the server serving others, calls that overlap on one connection, and the
client's identity in the server's log."""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import farcall
import pytest
from _support import (
    PROMPT_S,
    HangingHttpEndpoint,
    InThread,
    Server,
    TlsMaterial,
    assert_runs_on_the_server,
    finishes,
    start_hanging_call,
)

SECURED = pytest.mark.transports("tls", "quic", reason="certificates exist only on tls:// and quic://")


def test_connect_error_is_a_farcall_error_and_a_connection_error() -> None:
    assert issubclass(farcall.ConnectError, farcall.FarcallError)
    assert issubclass(farcall.ConnectError, ConnectionError)


# -- connect(config=...) -------------------------------------------------------


def _client_config(server: Server, tls: TlsMaterial, folder: Path, *, relative: bool) -> Path:
    """A client TOML for `server`: address, timeout_s and, for tls/quic, alice's files and server_name."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "client.toml"

    def path(p: Path) -> str:
        return json.dumps(os.path.relpath(p, folder) if relative else str(p))

    text = f"address = {json.dumps(server.url)}\ntimeout_s = 30\n"
    if server.scheme != "tcp":
        text += (
            f"ca = {path(tls.ca)}\n"
            f"cert = {path(tls.client_cert)}\n"
            f"key = {path(tls.client_key)}\n"
            'server_name = "localhost"\n'
        )
    config.write_text(text)
    return config


@pytest.mark.parametrize("paths", ["absolute", "relative"])
def test_connect_with_a_client_config_file(
    server: Server, tls_material: TlsMaterial, tmp_path: Path, paths: str
) -> None:
    """`connect(config=...)` alone: the file gives the address and, for tls/quic, the certificates
    (relative paths are resolved against the file's folder)."""
    config = _client_config(server, tls_material, tmp_path / "client", relative=paths == "relative")
    with finishes(farcall.connect, config=str(config)) as conn:
        assert conn.modules.math.pow(3, 2) == 9.0
        assert_runs_on_the_server(server, conn.modules.os.getpid())
    with finishes(farcall.connect, config=config) as conn:  # a path object works too
        assert conn.modules.operator.add(1, 2) == 3


@SECURED
def test_a_client_config_file_with_a_wrong_server_name_is_refused(
    server: Server, tls_material: TlsMaterial, tmp_path: Path
) -> None:
    config = _client_config(server, tls_material, tmp_path, relative=False)
    config.write_text(config.read_text().replace('server_name = "localhost"', 'server_name = "not-the-server.example"'))
    with pytest.raises(farcall.ConnectError) as info:
        finishes(farcall.connect, config=str(config))
    assert _names_the_wrong_name(str(info.value)), str(info.value)


# -- refusals ------------------------------------------------------------------


def _names_the_wrong_name(message: str) -> bool:
    lowered = message.lower()
    return "not valid for name" in lowered or "notvalidforname" in lowered or "not-the-server.example" in lowered


def _assert_still_serving(server: Server, conn: farcall.Connection) -> None:
    """After a refusal the connected client keeps working and a new one gets in."""
    assert server.alive(), f"the server died after a refused client\n{server.describe()}"
    assert finishes(lambda: conn.modules.operator.add(2, 3)) == 5, "a connected client stopped working"
    with finishes(server.connect) as fresh:
        assert finishes(lambda: fresh.modules.math.pow(3, 2)) == 9.0, "new clients are not served"


# (connect keyword arguments on top of alice's, words one of which the error must contain)
REFUSALS = {
    "no client certificate": (
        lambda tls: {"cert": None, "key": None},
        ("certificate required", "certificaterequired", "no client certificate", "certificate"),
    ),
    "client certificate of another CA": (
        lambda tls: {"cert": str(tls.other_client_cert), "key": str(tls.other_client_key)},
        ("unknownca", "unknown ca", "unknownissuer", "unknown issuer", "certificate"),
    ),
    "server certificate for another name": (
        lambda tls: {"server_name": "not-the-server.example"},
        ("not valid for name", "notvalidforname", "not-the-server.example"),
    ),
}


@SECURED
@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_refused_with_a_clear_connect_error_and_others_still_served(
    server: Server, conn: farcall.Connection, tls_material: TlsMaterial, case
) -> None:
    """`conn` is connected before the refusal and must keep working after it."""
    make_options, reasons = case
    options = make_options(tls_material)
    with pytest.raises(farcall.ConnectError) as info:
        finishes(server.connect, timeout=5.0, **options)
    message = str(info.value)
    assert any(reason in message.lower() for reason in reasons), f"the error does not say why: {message!r}"
    _assert_still_serving(server, conn)


@pytest.mark.transports("tls", reason="a plaintext TCP client dialling a TLS-over-TCP port")
def test_plaintext_client_at_a_tls_port_fails_promptly(server: Server, conn: farcall.Connection) -> None:
    with pytest.raises(farcall.FarcallError) as info:
        finishes(farcall.connect, f"tcp://127.0.0.1:{server.port}", within=PROMPT_S)
    assert isinstance(info.value, (farcall.ConnectError, farcall.HandshakeError, farcall.ConnectionLost)), repr(
        info.value
    )
    _assert_still_serving(server, conn)


# (options left out, how the error must name what is missing)
MISSING_OPTIONS = {
    "no ca": (("ca",), r"\bca\b"),
    "no key": (("key",), r"\bkey\b"),
    "no cert": (("cert",), r"\bcert\b|certificate"),
}


@SECURED
@pytest.mark.parametrize("case", MISSING_OPTIONS.values(), ids=MISSING_OPTIONS.keys())
def test_missing_certificate_options_are_named(server: Server, conn: farcall.Connection, case) -> None:
    """A half-given client identity, or no CA to check the server with, is an error naming what is missing.

    (No cert and no key at all is legal: the server refuses it, see above.)
    """
    left_out, naming = case
    options = {name: None for name in left_out}
    with pytest.raises((ValueError, farcall.FarcallError)) as info:
        finishes(server.connect, **options)
    message = str(info.value)
    assert re.search(naming, message, re.IGNORECASE), f"{left_out[0]!r} not named in {message!r}"
    _assert_still_serving(server, conn)


@SECURED
@pytest.mark.parametrize("option", ["ca", "cert", "key"])
def test_client_certificate_files_that_do_not_exist_are_named(server: Server, tmp_path: Path, option: str) -> None:
    missing = tmp_path / f"no-such-{option}.pem"
    with pytest.raises((ValueError, OSError, farcall.FarcallError)) as info:
        finishes(server.connect, **{option: str(missing)})
    assert missing.name in str(info.value), str(info.value)


@SECURED
def test_the_default_server_name_is_the_host_dialled(server: Server) -> None:
    """The certificate names 127.0.0.1 and localhost; both work without server_name, and an
    explicit server_name overrides the host."""
    for host in ("127.0.0.1", "localhost"):
        with finishes(server.connect, f"{server.scheme}://{host}:{server.port}") as conn:
            assert conn.modules.operator.add(1, 1) == 2
    with finishes(server.connect, server_name="localhost") as conn:
        assert conn.modules.operator.add(1, 1) == 2


# -- calls overlap on one connection -------------------------------------------


def test_a_call_returns_while_another_sleeps_on_the_same_connection(server: Server) -> None:
    """The issue's check: while one thread's call sleeps 2 s on the server, another thread's call
    on the same connection returns in well under a second."""
    with server.connect() as conn:
        sleep, pow_ = conn.modules.time.sleep, conn.modules.math.pow
        assert pow_(2, 2) == 4.0  # both proxies resolved, the connection warm
        started = threading.Event()

        def sleeper() -> None:
            started.set()
            sleep(2)

        slow_started_at = time.monotonic()
        slow = InThread(sleeper)
        assert started.wait(PROMPT_S)
        fast = InThread(pow_, 3, 2)
        t0 = time.monotonic()
        assert fast.outcome(PROMPT_S, "the fast call") == 9.0
        elapsed = time.monotonic() - t0
        assert not slow.join(0), "the sleeping call already returned: the two calls did not overlap"
        slow.outcome(PROMPT_S, "the sleeping call")
        assert time.monotonic() - slow_started_at >= 2.0
    assert elapsed < 1.0, f"the fast call took {elapsed:.3f}s while another call slept on the same connection"


def test_a_call_returns_while_another_is_provably_blocked_on_the_server(server: Server) -> None:
    """The same, with the slow call proven to be running on the server (it reached our endpoint)."""
    with server.connect() as conn:
        pow_ = conn.modules.math.pow
        assert pow_(2, 2) == 4.0
        with HangingHttpEndpoint() as endpoint:
            slow = start_hanging_call(conn, endpoint)
            fast = InThread(pow_, 3, 2)
            t0 = time.monotonic()
            assert fast.outcome(PROMPT_S, "the fast call") == 9.0
            elapsed = time.monotonic() - t0
            assert not slow.join(0), "the blocked call returned before it was released"
        with pytest.raises(Exception):
            slow.outcome(30, "the released call")
    assert elapsed < 1.0, f"the fast call took {elapsed:.3f}s while another call was blocked on the same connection"


def test_a_large_transfer_does_not_hold_up_small_calls(server: Server) -> None:
    """Small calls keep being answered while 20 MB replies stream on the same connection."""
    with server.connect() as conn:
        make_bytes, add = conn.modules.builtins.bytes, conn.modules.operator.add
        assert add(1, 1) == 2
        stop = threading.Event()

        def transfer() -> int:
            count = 0
            while not stop.is_set() and count < 20:
                assert len(make_bytes(20_000_000)) == 20_000_000
                count += 1
            return count

        big = InThread(transfer)
        try:
            for i in range(20):
                assert finishes(add, i, 1) == i + 1
        finally:
            stop.set()
        assert big.outcome(120, "the large transfers") >= 1


# -- identity --------------------------------------------------------------------


@SECURED
def test_the_server_log_names_the_client_identity(server: Server, tls_material: TlsMaterial) -> None:
    with finishes(server.connect) as conn:
        assert conn.modules.operator.add(1, 2) == 3  # the session is open and serving
        pattern = re.compile(rf"session opened.*127\.0\.0\.1:\d+ \({tls_material.client_name}\)")
        deadline = time.monotonic() + PROMPT_S
        while not pattern.search(server.log()):
            # The line is written before the session serves; allow for the file write to land.
            assert time.monotonic() < deadline, (
                f"no `session opened ... ({tls_material.client_name})` line\n{server.describe()}"
            )
            time.sleep(0.01)


def test_a_forked_child_connects_and_calls_after_its_parent_did(server: Server) -> None:
    """A closed QUIC connection leaves its endpoint and runtime for the next connection of the
    process; a forked child inherits that stock but not the runtime's threads, so it must make its
    own rather than wait forever on its parent's (on every transport a child must be able to connect)."""
    conn = finishes(server.connect)
    assert conn.modules.operator.add(1, 2) == 3
    conn.close()
    del conn  # dropped: its endpoint joins the stock
    gc.collect()
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if it connected and called
        code = 1
        try:
            signal.alarm(int(PROMPT_S))  # a hang ends the child, not the test run
            with server.connect() as child_conn:
                code = 0 if child_conn.modules.operator.add(2, 3) == 5 else 2
        finally:
            os._exit(code)
    _, status = finishes(os.waitpid, pid, 0, within=PROMPT_S + 5)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
        f"the forked child could not connect and call: wait status {status:#x} "
        f"({'killed by signal ' + str(os.WTERMSIG(status)) if os.WIFSIGNALED(status) else 'exited'})"
    )
