"""Helpers shared by the farcall test suite: real servers, threads with deadlines.

Everything here talks to processes and sockets on 127.0.0.1 only, binds port 0
(never a fixed port), and waits on events with deadlines instead of sleeping.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import math
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

#: How long a server may take to print its listening line.
STARTUP_TIMEOUT_S = 60.0
#: How long a server may take to exit after SIGTERM/SIGINT.
STOP_TIMEOUT_S = 15.0
#: How long an operation that must not hang (a failing call, a close) may take.
PROMPT_S = 10.0

#: The transports farcall serves, in the order the suite runs them.
TRANSPORTS = ("tcp", "tls", "quic")

#: The evaluators the behavioural suite runs against (`[evaluator] backend`).
BACKENDS = ("embedded", "subprocess")

LISTENING_RE = re.compile(
    r"^farcall listening on (?P<url>(?P<scheme>tcp|tls|quic)://(?P<host>[^\s]+):(?P<port>\d+))\s*$"
)

# Proxy variables would make the server's urllib talk to a proxy instead of
# to our local hanging endpoint; the servers we start never need them.
_DROPPED_ENV = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def farcall_bin() -> Path:
    """The server binary under test: $FARCALL_BIN, else <repo>/target/debug/farcall."""
    return Path(os.environ.get("FARCALL_BIN") or REPO / "target" / "debug" / "farcall")


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in _DROPPED_ENV}
    env.setdefault("RUST_BACKTRACE", "1")
    env.setdefault("NO_COLOR", "1")  # plain log text, for the failure messages
    env.update(extra or {})
    return env


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_server_numbers = itertools.count(1)


@dataclass(frozen=True)
class TlsMaterial:
    """Certificates made by `farcall certs` for a test session.

    `dir` holds the CA, the server certificate (for 127.0.0.1 and localhost)
    and the client `alice`; `other_dir` holds a separate CA and its client
    `mallory`, whom the servers must refuse.
    """

    dir: Path
    other_dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.dir / "alice.pem"

    @property
    def client_key(self) -> Path:
        return self.dir / "alice.key"

    #: The name in the client certificate (`client_cert`).
    client_name = "alice"

    @property
    def other_ca(self) -> Path:
        return self.other_dir / "ca.pem"

    @property
    def other_client_cert(self) -> Path:
        return self.other_dir / "mallory.pem"

    @property
    def other_client_key(self) -> Path:
        return self.other_dir / "mallory.key"

    def client_kwargs(self, scheme: str) -> dict[str, str]:
        """What `farcall.connect` needs besides the URL: nothing for tcp, alice's TLS files otherwise."""
        if scheme == "tcp":
            return {}
        return {"ca": str(self.ca), "cert": str(self.client_cert), "key": str(self.client_key)}


def make_tls_material(root: Path) -> TlsMaterial:
    """Run `farcall certs` twice: our CA, server and client `alice`; another CA with client `mallory`."""
    material = TlsMaterial(root / "certs", root / "other-ca")
    for out, args in (
        (material.dir, ("--server-name", "127.0.0.1", "--server-name", "localhost", "--client", "alice")),
        (material.other_dir, ("--client", "mallory")),
    ):
        done = run_farcall("certs", "--out", str(out), *args)
        assert done.returncode == 0, (
            f"`farcall certs --out {out} {' '.join(args)}` failed\nstdout: {done.stdout}\nstderr: {done.stderr}"
        )
    for path in (
        material.ca,
        material.server_cert,
        material.server_key,
        material.client_cert,
        material.client_key,
        material.other_ca,
        material.other_client_cert,
        material.other_client_key,
    ):
        assert path.is_file(), f"`farcall certs` did not write {path}"
    return material


def toml_str(value: object) -> str:
    """A TOML basic string (JSON's escaping is valid TOML for paths and URLs)."""
    return json.dumps(str(value))


def toml_value(value: object) -> str:
    """A TOML scalar: bools, ints and floats as such, anything else as a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return toml_str(value)


def evaluator_section(backend: str | None = None, **options: object) -> str:
    """An `[evaluator]` section: `backend = ...` and any further keys (python, max_memory_mb, ...).

    Empty when there is nothing to say (the server's default is the embedded backend).
    """
    keys = ({"backend": backend} if backend is not None else {}) | options
    if not keys:
        return ""
    return "\n[evaluator]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items())


def server_config_text(
    listen: Sequence[str],
    tls: TlsMaterial | None = None,
    *,
    relative_to: Path | None = None,
    backend: str | None = None,
    evaluator: dict[str, object] | None = None,
) -> str:
    """A `farcall serve` config listening on `listen`, with a [tls] section when `tls` is given
    and an [evaluator] section for `backend` (and the `evaluator` options) when either is given.

    With `relative_to`, the TLS paths are written relative to that folder
    (the folder the config file will live in).
    """

    def path(p: Path) -> str:
        return toml_str(os.path.relpath(p, relative_to) if relative_to is not None else p)

    text = "[server]\nlisten = [" + ", ".join(toml_str(url) for url in listen) + "]\n"
    if tls is not None:
        text += (
            "\n[tls]\n"
            f"cert = {path(tls.server_cert)}\n"
            f"key = {path(tls.server_key)}\n"
            f"client_ca = {path(tls.ca)}\n"
        )
    return text + evaluator_section(backend, **(evaluator or {}))


def write_server_config(
    config_dir: Path,
    schemes: Sequence[str],
    tls: TlsMaterial | None,
    *,
    relative: bool = False,
    backend: str | None = None,
    evaluator: dict[str, object] | None = None,
) -> Path:
    """Write a config listening on 127.0.0.1 port 0 for each scheme; the [tls] section if any is
    tls/quic; the [evaluator] section for `backend` and `evaluator` options if given."""
    config_dir.mkdir(parents=True, exist_ok=True)
    config = config_dir / f"farcall-{next(_server_numbers)}-{'-'.join(schemes)}.toml"
    needs_tls = any(s != "tcp" for s in schemes)
    config.write_text(
        server_config_text(
            [f"{s}://127.0.0.1:0" for s in schemes],
            tls if needs_tls else None,
            relative_to=config_dir if relative else None,
            backend=backend,
            evaluator=evaluator,
        )
    )
    return config


def start_transport_server(
    scheme: str,
    tls: TlsMaterial | None,
    *,
    log_dir: Path,
    env: dict[str, str] | None = None,
    timeout: float = STARTUP_TIMEOUT_S,
    backend: str = "embedded",
    evaluator: dict[str, object] | None = None,
) -> Server:
    """`farcall serve --config FILE` listening on `scheme://127.0.0.1:0` only, with our TLS files,
    evaluating with `backend` (`[evaluator] backend = ...`, plus the `evaluator` options)."""
    config = write_server_config(log_dir, [scheme], tls, backend=backend, evaluator=evaluator)
    return start_server(
        ("--config", str(config)), log_dir=log_dir, env=env, tls=tls, timeout=timeout, backend=backend
    )


def tls_for(transport: str, request: Any) -> TlsMaterial | None:
    """The session's TLS material when `transport` needs it (plain tcp does not depend on `farcall certs`)."""
    return None if transport == "tcp" else request.getfixturevalue("tls_material")


@dataclass
class Server:
    """A running `farcall serve` process and what it printed."""

    process: subprocess.Popen
    urls: list[str]
    log_path: Path
    stdout_lines: list[str] = field(default_factory=list)
    #: The certificates its config uses, if any: `connect` presents alice's.
    tls: TlsMaterial | None = None
    #: Its evaluator (`[evaluator] backend`): where the client's Python runs.
    backend: str = "embedded"

    @property
    def url(self) -> str:
        """First listener, e.g. 'tcp://127.0.0.1:40123' or 'quic://127.0.0.1:40123'."""
        return self.urls[0]

    @property
    def scheme(self) -> str:
        """The first listener's transport: 'tcp', 'tls' or 'quic'."""
        return self.url.split("://", 1)[0]

    @property
    def address(self) -> str:
        """First listener as 'host:port', e.g. '127.0.0.1:40123'."""
        return self.url.split("://", 1)[1]

    def url_of(self, scheme: str) -> str:
        """The first listener of transport `scheme`."""
        for url in self.urls:
            if url.startswith(f"{scheme}://"):
                return url
        raise AssertionError(f"the server has no {scheme}:// listener: {self.urls}")

    @property
    def connect_kwargs(self) -> dict[str, str]:
        """The keyword arguments `farcall.connect` needs for `url`: TLS files for tls/quic."""
        if self.scheme == "tcp":
            return {}
        assert self.tls is not None, f"a {self.scheme}:// server started without TLS material"
        return self.tls.client_kwargs(self.scheme)

    def connect(self, url: str | None = None, **kwargs: Any) -> Any:
        """`farcall.connect` to our first listener (or `url`), as alice for tls/quic.

        Other keyword arguments pass through and override the defaults
        (`cert=None` connects without a client certificate).
        """
        import farcall

        url = url or self.url
        scheme = url.split("://", 1)[0] if "://" in url else "tcp"
        options: dict[str, Any] = {}
        if scheme != "tcp":
            assert self.tls is not None, f"a {scheme}:// server started without TLS material"
            options.update(self.tls.client_kwargs(scheme))
        options.update(kwargs)
        options = {k: v for k, v in options.items() if v is not None}
        return farcall.connect(url, **options)

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        """Everything the server wrote to stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        tail = "\n".join(self.log().splitlines()[-40:])
        where = ", ".join(self.urls) or "not listening"
        return f"farcall server pid {self.pid} ({where}); stderr tail:\n{tail}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Send `sig` and wait for the exit code; SIGKILL and fail if it does not exit."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"server did not exit within {timeout}s of signal {sig}\n{self.describe()}") from None

    def kill(self) -> int:
        """SIGKILL, as a crash or an OOM kill would; returns once the process is gone."""
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait()


def start_server(
    args: Sequence[str] = ("--listen", "tcp://127.0.0.1:0"),
    *,
    log_dir: Path,
    env: dict[str, str] | None = None,
    listeners: int = 1,
    timeout: float = STARTUP_TIMEOUT_S,
    tls: TlsMaterial | None = None,
    backend: str = "embedded",
) -> Server:
    """Start `farcall serve ARGS...` and wait until it printed `listeners` listening lines.

    `tls` is the material its config uses, so that `Server.connect` can present it;
    `backend` the evaluator its config chooses (recorded in `Server.backend`).
    """
    binary = farcall_bin()
    if not binary.is_file():
        raise AssertionError(
            f"farcall binary not found at {binary}: build it with `cargo build -p farcall-server`"
            " or point FARCALL_BIN at it"
        )
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"farcall-serve-{next(_server_numbers)}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(binary), "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=server_env(env),
            preexec_fn=_die_with_parent,
        )
    lines: queue.Queue[str | None] = queue.Queue()
    seen: list[str] = []

    def pump() -> None:  # keeps draining stdout so the server never blocks on it
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            seen.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name=f"farcall-stdout-{process.pid}", daemon=True).start()

    server = Server(process, [], log_path, seen, tls, backend)
    deadline = _Deadline(timeout)
    while len(server.urls) < listeners:
        try:
            line = lines.get(timeout=deadline.remaining())
        except queue.Empty:
            server.kill()
            raise AssertionError(
                f"farcall serve printed no listening line within {timeout}s\n{server.describe()}"
            ) from None
        if line is None:
            code = process.wait()
            raise AssertionError(
                f"farcall serve exited with code {code} before listening\nstdout: {seen!r}\n{server.describe()}"
            )
        match = LISTENING_RE.match(line)
        if match:
            server.urls.append(match["url"])
    return server


def run_farcall(*args: str, timeout: float = 60.0, env: dict[str, str] | None = None):
    """Run `farcall ARGS...` to completion; fail (and kill it) if it runs past `timeout`."""
    try:
        return subprocess.run(
            [str(farcall_bin()), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=server_env(env),
            preexec_fn=_die_with_parent,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"`farcall {' '.join(args)}` still running after {timeout}s (stdout: {e.stdout!r}, stderr: {e.stderr!r})"
        ) from None


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())


class InThread:
    """Run `fn(*args, **kwargs)` in a daemon thread, recording its result or exception.

    Used for anything that could hang if the code under test is wrong: the test
    joins with a deadline and fails instead of hanging.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._done = threading.Event()

        def run() -> None:
            try:
                self.result = fn(*args, **kwargs)
            except BaseException as e:
                self.error = e
            finally:
                self._done.set()

        self._thread = threading.Thread(target=run, name=f"in-thread-{fn!r:.40}", daemon=True)
        self._thread.start()

    def join(self, timeout: float = PROMPT_S) -> bool:
        """True if the call finished within `timeout` seconds."""
        return self._done.wait(timeout)

    def outcome(self, timeout: float = PROMPT_S, what: str = "the call") -> Any:
        """The call's result, re-raising its exception; fails if it did not finish in time."""
        if not self.join(timeout):
            raise AssertionError(f"{what} did not finish within {timeout}s (a hang)")
        if self.error is not None:
            raise self.error
        return self.result


def finishes(fn: Callable[..., Any], *args: Any, within: float = PROMPT_S, **kwargs: Any) -> Any:
    """Call fn(*args, **kwargs) in a thread; its result, or its exception, within `within` seconds.

    Fails the test (instead of hanging it) if the call does not finish in time.
    """
    return InThread(fn, *args, **kwargs).outcome(within, what=f"{fn!r:.60}")


class HangingHttpEndpoint:
    """A local HTTP endpoint that accepts one request and never answers it.

    A remote `urllib.request.urlopen(endpoint.url)` blocks on the server until
    `release()`; `wait_for_request()` returning proves the remote call is in
    flight, without any sleep.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(PROMPT_S * 3)
        self._peer: socket.socket | None = None
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/farcall-test"

    def wait_for_request(self, timeout: float = PROMPT_S * 3) -> None:
        self._listener.settimeout(timeout)
        try:
            self._peer, _ = self._listener.accept()
        except TimeoutError:
            raise AssertionError(f"the remote call never reached {self.url} within {timeout}s") from None
        self._peer.settimeout(timeout)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = self._peer.recv(4096)
            if not chunk:
                break
            received += chunk
        assert received.startswith(b"GET /farcall-test"), received

    def release(self) -> None:
        """Close our side: the remote urlopen gets EOF and returns with an error."""
        for sock in (self._peer, self._listener):
            if sock is not None:
                sock.close()

    def __enter__(self) -> HangingHttpEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def start_hanging_call(conn: Any, endpoint: HangingHttpEndpoint) -> InThread:
    """Start a remote call on `conn` that blocks on `endpoint`; returns once it is in flight."""
    urlopen = conn.modules["urllib.request"].urlopen
    call = InThread(urlopen, endpoint.url, timeout=120)
    endpoint.wait_for_request()
    return call


def assert_shows_remote_traceback(error: BaseException) -> None:
    """`error` carries the remote traceback, and its text shows it.

    The traceback starts with 'Traceback (most recent call last):' even when the
    failing function is a C function with no Python frame of its own.
    """
    remote = getattr(error, "remote_traceback", None)
    assert isinstance(remote, str), f"{type(error).__name__} has no remote_traceback"
    assert "Traceback" in remote, f"remote_traceback has no 'Traceback' header:\n{remote}"
    text = str(error)
    assert "Traceback" in text, f"str(e) does not show the remote traceback:\n{text}"
    last_line = remote.strip().splitlines()[-1]
    assert last_line in text, f"str(e) does not end with the remote traceback's last line {last_line!r}:\n{text}"


def assert_same_value(got: Any, expected: Any) -> None:
    """`got` equals `expected` with the exact same type, recursively.

    NaN equals NaN here, and the sign of zero must match.
    """
    assert type(got) is type(expected), f"{got!r}: type {type(got).__name__}, expected {type(expected).__name__}"
    if isinstance(expected, float):
        if math.isnan(expected):
            assert math.isnan(got), f"{got!r} is not nan"
        else:
            assert got == expected and math.copysign(1.0, got) == math.copysign(1.0, expected), (got, expected)
    elif isinstance(expected, complex):
        assert_same_value(got.real, expected.real)
        assert_same_value(got.imag, expected.imag)
    elif isinstance(expected, tuple):
        assert len(got) == len(expected), (got, expected)
        for g, e in zip(got, expected):
            assert_same_value(g, e)
    elif isinstance(expected, frozenset):
        assert _fingerprint(got) == _fingerprint(expected), (got, expected)
    else:
        assert got == expected, (got, expected)


def _fingerprint(value: Any) -> Any:
    """A hashable description of a value that tells 1 from True and 1.0."""
    if isinstance(value, (tuple, frozenset)):
        parts = tuple(_fingerprint(v) for v in value)
        return (type(value).__name__, frozenset(parts) if isinstance(value, frozenset) else parts)
    return (type(value).__name__, value)


# -- processes ---------------------------------------------------------------------


def parent_pid(pid: int) -> int | None:
    """The parent of process `pid` (from /proc), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    return int(stat.rsplit(")", 1)[1].split()[1])


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and parent_pid(int(entry.name)) == pid:
            found.append(int(entry.name))
    return found


def process_state(pid: int) -> str | None:
    """The one-letter state of process `pid` ('R', 'S', 'Z' for a zombie, ...), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def assert_runs_on_the_server(server: Server, pid: int) -> None:
    """`pid` (a remote `os.getpid()`) is where `server` runs the client's Python: the server
    process itself for the embedded backend, a worker process it started for the subprocess one."""
    assert pid != os.getpid(), "the remote code ran in the test process"
    if server.backend == "embedded":
        assert pid == server.pid, f"embedded: the remote pid {pid} is not the server's {server.pid}"
    else:
        assert pid != server.pid, f"{server.backend}: the remote code ran in the server process itself"
        assert parent_pid(pid) == server.pid, (
            f"{server.backend}: the remote pid {pid} is not a child of the server {server.pid}"
            f" (its parent: {parent_pid(pid)})"
        )


def wait_until_reaped(pid: int, *, owner: int, timeout: float = PROMPT_S) -> None:
    """Poll (with a deadline, not a sleep as synchronisation) until process `pid`, a child of
    `owner`, is gone and reaped: no /proc entry, and no zombie left for `owner` to collect.
    A new process reusing the number (with another parent) counts as gone."""
    deadline = _Deadline(timeout)
    while True:
        state, parent = process_state(pid), parent_pid(pid)
        if state is None or parent != owner:
            return
        if deadline.remaining() == 0:
            raise AssertionError(
                f"process {pid} (child of {owner}) still exists {timeout}s after its session ended: state {state}"
                + (" (a zombie nobody reaped)" if state == "Z" else "")
            )
        time.sleep(0.01)


def interpreter_facts(python: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """Version, sys.prefix, sys.base_prefix and sys.executable of `python`, run as the server would
    run it (a bare name is looked up on the PATH of `env`, else of the server's environment)."""
    code = (
        "import platform, sys; print(platform.python_version()); print(sys.prefix);"
        " print(sys.base_prefix); print(sys.executable)"
    )
    done = subprocess.run(
        [python, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env if env is not None else server_env(),
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"`{python} -c ...` failed: {done.stderr}"
    version, prefix, base_prefix, executable = done.stdout.splitlines()
    return {"version": version, "prefix": prefix, "base_prefix": base_prefix, "executable": executable}
