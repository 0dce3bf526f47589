"""Every line of the issue's example, against a real server, and scripts/seed_example.py itself."""

from __future__ import annotations

import subprocess
import sys

import farcall
import pytest
from _support import REPO, Server, assert_shows_remote_traceback


@pytest.mark.transports("tcp", reason="'host:port' without a scheme means plain TCP")
@pytest.mark.parametrize("form", ["host:port", "tcp://host:port"])
def test_connect_accepts_both_address_forms(server: Server, form: str) -> None:
    address = server.address if form == "host:port" else server.url
    conn = farcall.connect(address)
    try:
        assert conn.modules.math.pow(3, 2) == 9.0
    finally:
        conn.close()


def test_connect_by_host_name(server: Server) -> None:
    """The seed's first requirement: connect by host name, not only by IP.

    For tls/quic the name dialled is also the name checked in the server's
    certificate (made for 127.0.0.1 and localhost).
    """
    with server.connect(f"{server.scheme}://localhost:{server.port}") as conn:
        assert conn.modules.math.pow(3, 2) == 9.0


def test_remote_math_pow(conn: farcall.Connection) -> None:
    remote_math = conn.modules.math
    result = remote_math.pow(3, 2)
    assert result == 9.0
    assert type(result) is float


def test_module_variable_of_a_basic_type_is_a_real_str(conn: farcall.Connection) -> None:
    sep = conn.modules.os.path.sep
    assert sep == "/"
    assert type(sep) is str


def test_dotted_module_by_item(conn: farcall.Connection) -> None:
    joined = conn.modules["os.path"].join("a", "b")
    assert joined == "a/b"
    assert type(joined) is str


def test_sqrt_of_minus_one_raises_value_error_with_remote_traceback(conn: farcall.Connection) -> None:
    with pytest.raises(ValueError) as info:
        conn.modules.math.sqrt(-1)
    assert "math domain error" in str(info.value)
    assert isinstance(info.value, farcall.RemoteError)
    assert_shows_remote_traceback(info.value)


def test_no_such_module_raises_module_not_found_error(conn: farcall.Connection) -> None:
    with pytest.raises(ModuleNotFoundError) as info:
        conn.modules.no_such_module
    assert isinstance(info.value, ImportError)
    assert "no_such_module" in str(info.value)


def test_close(server: Server) -> None:
    conn = server.connect()
    assert conn.closed is False
    conn.close()
    assert conn.closed is True


def test_the_example_verbatim(server: Server) -> None:
    """The issue's block, in order, on one connection."""
    from farcall import connect

    conn = connect(server.url, **server.connect_kwargs)
    remote_math = conn.modules.math
    assert remote_math.pow(3, 2) == 9.0
    assert conn.modules.os.path.sep == "/"
    assert conn.modules["os.path"].join("a", "b") == "a/b"
    with pytest.raises(ValueError):
        conn.modules.math.sqrt(-1)
    with pytest.raises(ModuleNotFoundError):
        conn.modules.no_such_module
    conn.close()


@pytest.mark.transports("tcp", reason="the script takes only an address, with no TLS options")
def test_seed_example_script_runs_against_the_server(server: Server) -> None:
    """scripts/seed_example.py (what scripts/demo runs) passes against a real server."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "seed_example.py"), server.address],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "9.0" in done.stdout
    assert "ValueError" in done.stdout
    assert "ModuleNotFoundError" in done.stdout
