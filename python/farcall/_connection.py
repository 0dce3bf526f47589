"""Connections and the ``conn.modules`` namespace."""

from __future__ import annotations

import os
import threading
from typing import Any, Dict, Optional, Union

from . import _native
from ._proxy import Proxy


class Modules:
    """The server's modules: ``conn.modules.math``, ``conn.modules["os.path"]``.

    Each module is imported on the server the first time it is asked for and
    cached for the connection's lifetime (a module object never changes).
    """

    __slots__ = ("_native", "_cache", "_lock")

    def __init__(self, native: _native.Client) -> None:
        self._native = native
        self._cache: Dict[str, Proxy] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> Proxy:
        proxy = self._cache.get(name)
        if proxy is None:
            proxy = self._native.module(name)
            with self._lock:
                proxy = self._cache.setdefault(name, proxy)
        return proxy

    def __getattr__(self, name: str) -> Proxy:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self[name]

    def __contains__(self, name: str) -> bool:
        return name in self._cache

    def __repr__(self) -> str:
        return f"<farcall modules of {self._native!r}>"


class Connection:
    """A connection to a farcall server; see :func:`farcall.connect`.

    Usable as a context manager; ``close()`` is idempotent. One connection may
    be used from many threads at once.
    """

    def __init__(self, native: _native.Client) -> None:
        self._native = native
        self.modules = Modules(native)

    @property
    def server_info(self) -> Dict[str, Any]:
        """What the server said of itself: protocol, versions, Python, backend, session."""
        return self._native.server_info()

    @property
    def closed(self) -> bool:
        """Whether the connection is closed."""
        return self._native.closed

    def close(self) -> None:
        """Closes the connection. Calls in flight raise :class:`farcall.ConnectionLost`."""
        self._native.close()

    def stats(self) -> Dict[str, int]:
        """This session's object table on the server: live objects and objects ever sent."""
        live, total = self._native.stats()
        return {"live_objects": live, "exported_total": total}

    def flush_releases(self) -> None:
        """Sends queued releases of dropped proxies now (normally batched)."""
        self._native.flush_releases()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        info = self._native.server_info()
        state = "closed" if self.closed else "open"
        return f"<farcall.Connection session {info['session']} to Python {info['python_version']} ({info['backend']}), {state}>"


def connect(
    address: Optional[str] = None,
    *,
    ca: Union[str, os.PathLike, None] = None,
    cert: Union[str, os.PathLike, None] = None,
    key: Union[str, os.PathLike, None] = None,
    server_name: Optional[str] = None,
    config: Union[str, os.PathLike, None] = None,
    timeout: Optional[float] = None,
) -> Connection:
    """Connects to a farcall server.

    Args:
        address: ``"host:port"`` (TCP), or a URL: ``tcp://``, ``tls://`` or
            ``quic://host:port``.
        ca: for ``tls://`` and ``quic://``: the CA certificate (PEM file) that
            signed the server's certificate.
        cert, key: this client's certificate and private key (PEM files);
            servers only accept clients whose certificate their CA signed.
        server_name: the name to check the server's certificate against
            (default: the host in ``address``).
        config: a client TOML file with any of ``address``, ``ca``, ``cert``,
            ``key``, ``server_name``, ``timeout_s``; arguments given here win.
        timeout: seconds allowed for connecting and the handshake.
    """
    options = {"ca": ca, "cert": cert, "key": key, "server_name": server_name, "timeout": timeout}
    if config is not None:
        from_file = _native.read_client_config(os.fspath(config))
        address = address or from_file.pop("address")
        for name, value in from_file.items():
            if options.get(name) is None:
                options[name] = value
    if address is None:
        raise ValueError("farcall.connect needs an address (or a config file that gives one)")
    for name in ("ca", "cert", "key"):
        if options[name] is not None:
            options[name] = os.fspath(options[name])
    return Connection(_native.Client.connect(address, **options))
