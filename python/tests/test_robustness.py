"""Bad input and vanishing clients cost only their own connection: a client
connected at the same time keeps working, and so do new ones."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
from collections.abc import Iterator

import farcall
import pytest
from _support import PROMPT_S, HangingHttpEndpoint, Server, finishes, start_transport_server, tls_for

#: Raw bytes on a TCP socket: meaningful for tcp (farcall frames) and tls (TLS records), not for QUIC's UDP.
STREAM_TRANSPORTS = pytest.mark.transports(
    "tcp", "tls", reason="raw bytes on a TCP socket; QUIC runs over UDP (see test_garbage_datagrams_*)"
)


@pytest.fixture(scope="module")
def target(
    backend: str, transport: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A server of its own for this module (per backend and transport), so abuse cannot disturb other tests."""
    tls = tls_for(transport, request)
    log_dir = tmp_path_factory.mktemp(f"robustness-{backend}-{transport}")
    srv = start_transport_server(transport, tls, log_dir=log_dir, backend=backend)
    yield srv
    assert srv.alive(), f"the server died\n{srv.describe()}"
    assert srv.stop() == 0, srv.describe()


@pytest.fixture
def witness(target: Server) -> Iterator[farcall.Connection]:
    """A well-behaved client, connected before the abuse starts and checked after it."""
    conn = target.connect()
    assert conn.modules.operator.add(1, 2) == 3
    yield conn
    assert target.alive(), f"the server died\n{target.describe()}"
    assert finishes(lambda: conn.modules.operator.add(2, 3)) == 5, "a concurrent client stopped working"
    with finishes(target.connect) as fresh:
        assert finishes(lambda: fresh.modules.math.pow(3, 2)) == 9.0, "new clients are not served"
    conn.close()


def _send_and_wait_for_close(srv: Server, payload: bytes, *, half_close: bool) -> None:
    """Send raw bytes, then read until the server closes the connection (within a deadline)."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=PROMPT_S) as sock:
        try:
            sock.sendall(payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass  # whatever the server says (a hello, an error) before it closes
        except ConnectionResetError:
            pass  # closing with unread input pending resets the connection: also a close
        except TimeoutError:
            raise AssertionError(f"the server kept a connection open after {payload[:16]!r}...") from None


@STREAM_TRANSPORTS
@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\nHost: farcall\r\n\r\n",
        b"\x00" * 64,
        random.Random(1).randbytes(65536),
        random.Random(2).randbytes(7),
    ],
    ids=["http request", "zeros", "64 KiB of random bytes", "7 random bytes"],
)
def test_garbage_closes_only_that_connection(target: Server, witness: farcall.Connection, payload: bytes) -> None:
    _send_and_wait_for_close(target, payload, half_close=True)


@pytest.mark.transports("tcp", reason="a farcall frame's length prefix, on plain TCP")
def test_huge_length_prefix_is_refused_without_waiting_for_the_body(
    target: Server, witness: farcall.Connection
) -> None:
    # All ones is far beyond the maximum frame size, whatever the prefix width or byte order.
    _send_and_wait_for_close(target, b"\xff" * 16, half_close=False)


@pytest.mark.transports("tcp", reason="a truncated farcall frame, on plain TCP")
def test_truncated_frame_then_disconnect(target: Server, witness: farcall.Connection) -> None:
    with socket.create_connection(("127.0.0.1", target.port), timeout=PROMPT_S) as sock:
        sock.sendall(b"\x00\x00\x00\x40\x00\x00\x00\x00\x00\x00\x00\x40\x92\x01")


@STREAM_TRANSPORTS
def test_silent_and_short_lived_connections(target: Server, witness: farcall.Connection) -> None:
    silent = [socket.create_connection(("127.0.0.1", target.port), timeout=PROMPT_S) for _ in range(5)]
    try:
        for _ in range(20):
            socket.create_connection(("127.0.0.1", target.port), timeout=PROMPT_S).close()
        assert finishes(lambda: witness.modules.math.pow(2, 10)) == 1024.0
        # Peers that never say hello (nor start TLS) must not hold up new clients.
        with finishes(target.connect) as fresh:
            assert finishes(lambda: fresh.modules.math.pow(2, 3)) == 8.0
    finally:
        for sock in silent:
            sock.close()


@pytest.mark.transports("quic", reason="UDP datagrams at a QUIC port")
@pytest.mark.parametrize("size", [1, 40, 1200, 1500], ids=lambda n: f"{n} bytes")
def test_garbage_datagrams_are_ignored(target: Server, witness: farcall.Connection, size: int) -> None:
    rng = random.Random(size)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for first in (0x00, 0x40, 0xC0, 0xFF):  # short and long header forms, and nonsense
            for _ in range(25):
                sock.sendto(bytes([first]) + rng.randbytes(size - 1), ("127.0.0.1", target.port))
        assert finishes(lambda: witness.modules.math.pow(2, 10)) == 1024.0


VANISHING_CLIENT = """
import json
import sys
import farcall

conn = farcall.connect(sys.argv[1], **json.loads(sys.argv[2]))
mode = sys.argv[3]
if mode == "hang":
    conn.modules["urllib.request"].urlopen(sys.argv[4], timeout=120)
else:
    print("transferring", flush=True)
    while True:
        conn.modules.builtins.bytes(10_000_000)
        print("got 10 MB", flush=True)
"""


def _client_process(srv: Server, *args: str) -> subprocess.Popen:
    """A Python process connected to `srv` (as alice for tls/quic) running VANISHING_CLIENT."""
    return subprocess.Popen(
        [sys.executable, "-c", VANISHING_CLIENT, srv.url, json.dumps(srv.connect_kwargs), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_client_killed_mid_call(target: Server, witness: farcall.Connection) -> None:
    with HangingHttpEndpoint() as endpoint:
        client = _client_process(target, "hang", endpoint.url)
        try:
            endpoint.wait_for_request()  # the client's call is running on the server
        finally:
            client.kill()
            _, stderr = client.communicate(timeout=PROMPT_S)
        assert finishes(lambda: witness.modules.operator.add(20, 22)) == 42, stderr
    # Released: the orphaned call ends on the server; its reply has nowhere to go.
    assert finishes(lambda: witness.modules.operator.add(1, 1)) == 2


def test_client_killed_while_receiving_large_replies(target: Server, witness: farcall.Connection) -> None:
    client = _client_process(target, "transfer")
    try:
        assert client.stdout is not None
        assert finishes(client.stdout.readline, within=60).strip() == "transferring"
        assert finishes(client.stdout.readline, within=60).strip() == "got 10 MB"
    finally:
        client.kill()
        client.communicate(timeout=PROMPT_S)
    assert finishes(lambda: witness.modules.builtins.len(witness.modules.builtins.bytes(1000))) == 1000
