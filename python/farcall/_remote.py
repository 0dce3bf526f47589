"""Module-level helpers on proxies: copies both ways, calls in the background, calls with a deadline."""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

from . import _native
from ._errors import ConnectionLost
from ._proxy import Proxy, connection_of

if TYPE_CHECKING:
    from ._connection import Connection


def obtain(obj: Any) -> Any:
    """A local copy of a remote value.

    A proxy of a list, dict, set, tuple or frozenset of plain values (nested,
    up to 32 levels; subclasses are copied as their base type) comes back as
    a new local object of that type, in one round trip. Values that are
    already local pass through unchanged, and a tuple's proxies are copied
    one by one. Nothing is unpickled: the copy travels as plain data.

    Raises ``TypeError`` (naming the type and where it sits) when the remote
    object holds something that cannot be copied, such as a socket.
    """
    if isinstance(obj, Proxy):
        return obj._farcall_handle.connection.builtin("obtain", (obj,))
    if type(obj) is tuple:
        return tuple(obtain(item) for item in obj)
    return obj


def deliver(conn: "Connection", obj: Any) -> Any:
    """Copies a local value to the server of ``conn`` and returns what it became there.

    Lists, dicts and sets (nested, holding plain values) become new objects
    on the server and come back as proxies of them; plain values (numbers,
    strings, bytes, tuples of those) come back as themselves. Nothing is
    pickled. Something that cannot be copied is a ``TypeError`` naming it.
    """
    return _native_of(conn).builtin("deliver", (obj,), copy=True)


def async_(proxy: Proxy) -> Callable[..., "concurrent.futures.Future[Any]"]:
    """``farcall.async_(proxy)(*args, **kwargs)`` starts the remote call and returns a
    :class:`concurrent.futures.Future` of its result at once.

    The calls run on a thread pool of the proxy's connection, so several can
    be in flight on one connection; callbacks they make into local code are
    served by the thread waiting for them. The pool goes with the connection.
    """
    handle = proxy._farcall_handle if isinstance(proxy, Proxy) else None
    if handle is None:
        raise TypeError(f"farcall.async_ needs a farcall.Proxy, got a local {type(proxy).__name__}")
    from ._connection import connection_for

    conn = connection_for(handle.connection)
    call = handle.call

    def start(*args: Any, **kwargs: Any) -> "concurrent.futures.Future[Any]":
        try:
            return conn._async_executor().submit(call, args, kwargs or None)
        except (ConnectionLost, RuntimeError):  # closed (RuntimeError: its pool was shut down meanwhile)
            failed: "concurrent.futures.Future[Any]" = concurrent.futures.Future()
            failed.set_exception(ConnectionLost("the connection is closed"))
            return failed

    start.__doc__ = f"Starts a call of the remote {handle.type_name}; returns a Future."
    return start


def timed(proxy: Proxy, seconds: float) -> Callable[..., Any]:
    """``farcall.timed(proxy, seconds)(*args, **kwargs)`` calls the remote object and raises
    ``TimeoutError`` when no reply came within ``seconds``.

    The server is told to abandon the call (where its backend can stop it),
    a late reply is dropped, and the connection stays usable.
    """
    if not isinstance(proxy, Proxy):
        raise TypeError(f"farcall.timed needs a farcall.Proxy, got a local {type(proxy).__name__}")
    if not seconds > 0:
        raise ValueError(f"farcall.timed: the timeout must be a positive number of seconds, got {seconds!r}")
    handle = proxy._farcall_handle
    timeout = float(seconds)

    def call(*args: Any, **kwargs: Any) -> Any:
        return handle.call(args, kwargs or None, timeout=timeout)

    call.__doc__ = f"Calls the remote {handle.type_name} with a {timeout:g} s timeout."
    return call


# -- helpers ----------------------------------------------------------------------


def _native_of(conn: Any) -> _native.Client:
    from ._connection import Connection

    if isinstance(conn, Connection):
        return conn._native
    if isinstance(conn, _native.Client):
        return conn
    if isinstance(conn, Proxy):
        return connection_of(conn)
    raise TypeError(f"expected a farcall.Connection, got {type(conn).__name__}")


class AsyncPool:
    """The threads that run one connection's :func:`async_` calls.

    Like a ``ThreadPoolExecutor`` (threads started on demand, up to
    ``max_workers``), but its threads are daemons: a call still waiting for
    the server when the program ends does not keep the interpreter from
    exiting (a ``ThreadPoolExecutor`` joins its threads at exit).
    """

    def __init__(self, max_workers: int, name: str = "farcall-async") -> None:
        self._max_workers = max_workers
        self._name = name
        self._queue: "queue.SimpleQueue[Optional[Tuple[concurrent.futures.Future[Any], Callable[..., Any], Tuple[Any, ...]]]]" = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> "concurrent.futures.Future[Any]":
        """Runs ``fn(*args)`` on a thread of the pool; its future."""
        future: "concurrent.futures.Future[Any]" = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool is shut down")
            self._queue.put((future, fn, args))
            if self._idle > 0:
                self._idle -= 1  # a waiting thread takes it
            elif self._threads < self._max_workers:
                self._threads += 1
                threading.Thread(target=self._work, name=f"{self._name}-{self._threads}", daemon=True).start()
        return future

    def shutdown(self) -> None:
        """Lets the threads end once the calls they run are over; calls not started yet are cancelled."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = self._threads
        for _ in range(threads):
            self._queue.put(None)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args = item
            del item
            if self._closed:
                future.cancel()
            elif future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as e:
                    future.set_exception(e)
            del future, fn, args  # results and arguments are not kept alive by an idle thread
            with self._lock:
                self._idle += 1
