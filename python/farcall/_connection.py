"""Connections and the ``conn.modules`` namespace."""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Callable, Dict, Optional, Union

from . import _native, _teleport
from ._proxy import Proxy
from ._remote import AsyncPool


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


#: Connections alive in this process, to find the `Connection` of a proxy (`farcall.async_`).
_connections: "weakref.WeakSet[Connection]" = weakref.WeakSet()
_connections_lock = threading.Lock()

#: Threads of one connection's pool for `farcall.async_`: enough for several calls in flight,
#: each of which waits with the interpreter released.
ASYNC_WORKERS = 16


class Connection:
    """A connection to a farcall server; see :func:`farcall.connect`.

    Usable as a context manager; ``close()`` is idempotent. One connection may
    be used from many threads at once.
    """

    def __init__(self, native: _native.Client) -> None:
        self._native = native
        self.modules = Modules(native)
        self._lock = threading.Lock()
        self._namespace: Optional[Proxy] = None
        self._executor: Optional[AsyncPool] = None
        self._teleport_memo: Dict[str, str] = {}
        with _connections_lock:
            _connections.add(self)

    @property
    def server_info(self) -> Dict[str, Any]:
        """What the server said of itself: protocol, versions, Python, backend, session."""
        return self._native.server_info()

    @property
    def closed(self) -> bool:
        """Whether the connection is closed."""
        return self._native.closed

    # -- the session's Python ---------------------------------------------------------

    @property
    def builtins(self) -> Proxy:
        """The server's ``builtins`` module (``conn.builtins.len``, ``conn.builtins.open``)."""
        return self.modules["builtins"]

    def eval(self, expr: str) -> Any:
        """Evaluates the expression ``expr`` on the server in this connection's namespace."""
        return self._native.builtin("eval", (expr,))

    def execute(self, code: str) -> None:
        """Runs the statements ``code`` on the server in this connection's namespace: names it
        defines are seen by later :meth:`eval` and :meth:`execute` calls and in :attr:`namespace`."""
        self._native.builtin("execute", (code,))

    @property
    def namespace(self) -> Proxy:
        """The namespace of :meth:`eval` and :meth:`execute` (a proxy of the server's dict; one per
        connection): ``conn.namespace["x"] = 1`` then ``conn.eval("x")``."""
        namespace = self._namespace
        if namespace is None:
            namespace = self._native.builtin("namespace", ())
            with self._lock:
                if self._namespace is None:
                    self._namespace = namespace
                namespace = self._namespace
        return namespace

    def teleport(self, func: Callable[..., Any], *, method: str = "auto") -> Proxy:
        """Ships the local function ``func`` to the server and returns a proxy of it there:
        calling the proxy runs ``func`` on the server.

        Works for plain functions, defaults and keyword-only defaults, closures,
        lambdas, nested and recursive functions, functions of ``__main__`` and
        of an interactive session. The modules the function imports resolve on
        the server; the globals it uses are copied with it.

        ``method``: ``"pickle"`` (cloudpickle: it must be installed on both
        sides, which must run the same Python major.minor), ``"source"`` (the
        source is rebuilt on the server; it must be available, which it is
        not for a function typed at a plain interactive prompt or made by
        ``exec``), or ``"auto"`` (the default): cloudpickle when it is
        importable here and the server runs our Python major.minor, else (or
        when the server lacks cloudpickle) the source.

        Raises :class:`farcall.TeleportError` saying why when no way works.
        """
        return _teleport.teleport(self._native, func, method, self._teleport_memo)

    def serve(self, timeout: Optional[float] = None) -> int:
        """Serves the server's calls on local objects (callbacks) that come while this client makes
        no call of its own, for up to ``timeout`` seconds (``None``: until one came); returns how
        many it served. Not needed during a call: the thread waiting for a reply serves them."""
        return self._native.serve(timeout)

    # -- the connection ---------------------------------------------------------------

    def close(self) -> None:
        """Closes the connection. Calls in flight raise :class:`farcall.ConnectionLost`."""
        self._native.close()
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown()

    def stats(self) -> Dict[str, int]:
        """Object tables: ``live_objects`` and ``exported_total`` are this session's on the server
        (objects it holds for this client, objects it ever sent); ``local_objects`` and
        ``local_exported_total`` the same for the local objects this client passed to the server
        (callbacks)."""
        live, total = self._native.stats()
        local_live, local_total = self._native.local_session().stats()
        return {
            "live_objects": live,
            "exported_total": total,
            "local_objects": local_live,
            "local_exported_total": local_total,
        }

    def flush_releases(self) -> None:
        """Sends queued releases of dropped proxies now (normally batched)."""
        self._native.flush_releases()

    def _async_executor(self) -> AsyncPool:
        """The thread pool of :func:`farcall.async_` calls on this connection (made on first use)."""
        executor = self._executor
        if executor is None:
            with self._lock:
                if self._native.closed:
                    from ._errors import ConnectionLost

                    raise ConnectionLost("the connection is closed")
                if self._executor is None:
                    self._executor = AsyncPool(ASYNC_WORKERS)
                executor = self._executor
        return executor

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        info = self._native.server_info()
        state = "closed" if self.closed else "open"
        return f"<farcall.Connection session {info['session']} to Python {info['python_version']} ({info['backend']}), {state}>"


def connection_for(native: _native.Client) -> Connection:
    """The `Connection` of a native connection (one made for it when none is alive any more)."""
    with _connections_lock:
        for conn in list(_connections):
            if conn._native.same(native):
                return conn
    return Connection(native)


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
        timeout: seconds allowed for connecting and the handshake, and also
            the default timeout of every call on this connection: a call with
            no reply after that long raises ``TimeoutError`` (the server is
            asked to abandon it, and the connection stays usable). ``None``
            (the default): no limit. Use :func:`farcall.timed` for one call.
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
    native = _native.Client.connect(address, **options)
    if options["timeout"] is not None:
        native.set_call_timeout(float(options["timeout"]))
    return Connection(native)
