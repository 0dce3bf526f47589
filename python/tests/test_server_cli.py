"""`farcall serve` as an operator runs it: listening line, config files (with
TLS files for tls/quic), the insecure-TCP rule, and stopping on signals."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
from _support import (
    LISTENING_RE,
    TRANSPORTS,
    Server,
    TlsMaterial,
    assert_runs_on_the_server,
    evaluator_section,
    run_farcall,
    server_config_text,
    write_server_config,
)

LOOPBACK_PORT_0 = ("--listen", "tcp://127.0.0.1:0")


def test_listening_line_names_the_real_port(server: Server, transport: str) -> None:
    assert server.url.startswith(f"{transport}://127.0.0.1:")
    assert server.scheme == transport
    assert server.port != 0
    assert LISTENING_RE.match(f"farcall listening on {server.url}")


@pytest.mark.parametrize("paths", ["absolute", "relative"])
def test_serve_from_a_config_file(
    start_extra_server, backend: str, transport: str, tls_material: TlsMaterial, tmp_path: Path, paths: str
) -> None:
    """A config file with [evaluator]; for tls/quic its [tls] paths are absolute, or relative to the file's folder."""
    config_dir = tmp_path / "etc"
    config = write_server_config(config_dir, [transport], tls_material, relative=paths == "relative")
    config.write_text(config.read_text() + f'\n[evaluator]\nbackend = "{backend}"\n')
    srv = start_extra_server("--config", str(config))
    assert srv.scheme == transport
    with srv.connect() as conn:
        assert conn.modules.math.pow(3, 2) == 9.0
        assert conn.server_info["backend"] == backend


def test_one_server_listens_on_every_transport_at_once(
    start_server_with_args, backend: str, tls_material: TlsMaterial, tmp_path: Path
) -> None:
    """`listen` takes several URLs; the listening lines come in its order, and all reach one server."""
    config = write_server_config(tmp_path, TRANSPORTS, tls_material, backend=backend)
    srv = start_server_with_args(
        "--config", str(config), listeners=len(TRANSPORTS), tls=tls_material, backend=backend
    )
    assert [url.split("://")[0] for url in srv.urls] == list(TRANSPORTS), srv.urls
    for scheme in TRANSPORTS:
        with srv.connect(srv.url_of(scheme)) as conn:
            assert conn.modules.math.pow(3, 2) == 9.0
            assert_runs_on_the_server(srv, conn.modules.os.getpid())


# (file content, the offending key, its line number)
BAD_CONFIGS = {
    "unknown key": ('[server]\nlisten = ["tcp://127.0.0.1:0"]\nbogus_key = 1\n', "bogus_key", 3),
    "unknown section": ('[server]\nlisten = ["tcp://127.0.0.1:0"]\n\n[no_such_section]\nx = 1\n', "no_such_section", 4),
    "wrong type": ('[server]\nlisten = ["tcp://127.0.0.1:0"]\ninsecure = "yes"\n', "insecure", 3),
    "bad listen url": ('[server]\n\nlisten = ["ftp://127.0.0.1:0"]\n', "listen", 3),
    "unknown backend": (
        '[server]\nlisten = ["tcp://127.0.0.1:0"]\n[evaluator]\nbackend = "no_such_backend"\n',
        "backend",
        4,
    ),
    "not toml": ("[server\nlisten = 1\n", "bad.toml", 1),
}


@pytest.mark.parametrize("case", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_config_names_file_line_and_key(tmp_path: Path, case: tuple[str, str, int]) -> None:
    content, key, line = case
    config = tmp_path / "bad.toml"
    config.write_text(content)
    done = run_farcall("serve", "--config", str(config), *LOOPBACK_PORT_0)
    assert done.returncode != 0, f"a bad config was accepted\nstderr: {done.stderr}"
    assert "listening on" not in done.stdout
    assert "bad.toml" in done.stderr, done.stderr
    assert key in done.stderr, done.stderr
    assert re.search(rf"(:{line}\b|line {line}\b)", done.stderr), f"line {line} not named in:\n{done.stderr}"


@pytest.mark.parametrize("scheme", ["tls", "quic"])
def test_secured_listener_without_certificate_files_is_refused(tmp_path: Path, scheme: str) -> None:
    """A tls:// or quic:// listener needs cert, key and client_ca; the error names what is missing."""
    config = tmp_path / "farcall.toml"
    config.write_text(server_config_text([f"{scheme}://127.0.0.1:0"]))
    done = run_farcall("serve", "--config", str(config))
    assert done.returncode != 0, f"a {scheme}:// listener without [tls] was served\nstdout: {done.stdout}"
    assert "listening on" not in done.stdout
    for missing in ("cert", "key", "client_ca"):
        assert missing in done.stderr, f"{missing!r} not named in:\n{done.stderr}"


@pytest.mark.parametrize("scheme", ["tls", "quic"])
@pytest.mark.parametrize("field", ["cert", "key", "client_ca"])
def test_certificate_files_that_do_not_exist_or_parse_are_named(
    tmp_path: Path, tls_material: TlsMaterial, scheme: str, field: str
) -> None:
    files = {"cert": tls_material.server_cert, "key": tls_material.server_key, "client_ca": tls_material.ca}
    for problem in ("missing", "garbage"):
        bad = tmp_path / f"bad-{problem}-{field}.pem"
        if problem == "garbage":
            bad.write_text("this is not PEM\n")
        config = tmp_path / f"farcall-{problem}.toml"
        config.write_text(
            server_config_text([f"{scheme}://127.0.0.1:0"])
            + "\n[tls]\n"
            + "".join(f"{name} = {json.dumps(str(bad if name == field else path))}\n" for name, path in files.items())
        )
        done = run_farcall("serve", "--config", str(config))
        assert done.returncode != 0, f"a {problem} {field} file was accepted\nstdout: {done.stdout}"
        assert "listening on" not in done.stdout
        assert bad.name in done.stderr, f"{problem} {field} file {bad.name} not named in:\n{done.stderr}"


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    done = run_farcall("serve", "--config", str(missing), *LOOPBACK_PORT_0)
    assert done.returncode != 0
    assert "missing.toml" in done.stderr, done.stderr


def test_non_loopback_plain_tcp_is_refused_without_insecure() -> None:
    done = run_farcall("serve", "--listen", "tcp://0.0.0.0:0")
    assert done.returncode != 0, "plain TCP on 0.0.0.0 was served without insecure = true"
    assert "listening on" not in done.stdout
    assert "insecure" in done.stderr, done.stderr


def test_non_loopback_plain_tcp_in_config_is_refused_without_insecure(tmp_path: Path) -> None:
    config = tmp_path / "farcall.toml"
    config.write_text('[server]\nlisten = ["tcp://0.0.0.0:0"]\n')
    done = run_farcall("serve", "--config", str(config))
    assert done.returncode != 0
    assert "insecure" in done.stderr, done.stderr


def test_non_loopback_plain_tcp_with_insecure_true(start_server_with_args, backend: str, tmp_path: Path) -> None:
    config = tmp_path / "farcall.toml"
    config.write_text('[server]\nlisten = ["tcp://0.0.0.0:0"]\ninsecure = true\n' + evaluator_section(backend))
    srv = start_server_with_args("--config", str(config), backend=backend)
    with srv.connect(f"127.0.0.1:{srv.port}") as conn:  # reached over loopback only
        assert conn.modules.math.pow(3, 2) == 9.0


def test_unsupported_listen_scheme_is_refused() -> None:
    done = run_farcall("serve", "--listen", "ftp://127.0.0.1:0")
    assert done.returncode != 0
    assert "ftp" in done.stderr, done.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signals_stop_the_server_cleanly(start_extra_server, sig: int) -> None:
    srv = start_extra_server()
    with srv.connect() as conn:
        assert conn.modules.math.pow(3, 2) == 9.0
    assert srv.stop(sig) == 0, srv.describe()


def test_server_logs_its_python(server: Server) -> None:
    """At start-up the server logs its evaluator's Python: version and sys.prefix (the embedded
    interpreter's, or the subprocess backend's configured interpreter's)."""
    with server.connect() as conn:
        info = conn.server_info
    log = server.log()
    assert info["python_version"] in log, log
    assert info["python_prefix"] in log, log


# (evaluator.python, words the start-up error must contain besides the path)
BAD_INTERPRETERS = {
    "missing": ("/no/such/farcall/python3", "not found"),
    "not executable": ("/etc/passwd", "cannot be run"),
    "not a Python": ("/bin/true", "before it was ready"),
}


@pytest.mark.parametrize("case", BAD_INTERPRETERS.values(), ids=BAD_INTERPRETERS.keys())
def test_subprocess_backend_with_a_bad_interpreter_refuses_to_start(tmp_path: Path, case: tuple[str, str]) -> None:
    """The subprocess backend checks `python` at start-up, not at the first call, and says what is wrong."""
    python, why = case
    config = tmp_path / "farcall.toml"
    config.write_text(server_config_text(["tcp://127.0.0.1:0"], backend="subprocess", evaluator={"python": python}))
    done = run_farcall("serve", "--config", str(config))
    assert done.returncode != 0, f"a server with python = {python!r} started\nstdout: {done.stdout}"
    assert "listening on" not in done.stdout
    assert python in done.stderr and "evaluator.python" in done.stderr, done.stderr
    assert why in done.stderr, done.stderr
