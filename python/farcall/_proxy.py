"""Proxies: local stand-ins for objects that live on the server."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from . import _native, _semantics

_ProxyBase = _semantics.ProxyBase


class Proxy(_ProxyBase):
    """A local stand-in for an object on the server.

    Attribute access and calls are performed on the server; values that travel
    by value (None, bool, int, float, complex, str, bytes, tuple, frozenset)
    come back as local objects, everything else as another ``Proxy``. When the
    last proxy of a remote object is dropped, the server is told to release it.

    Everything else a Python object can do (operators, comparisons, ``len``,
    iteration in batches, items and slices, ``in``, ``hash``, ``bool``,
    ``format``, ``dir``, ``with``, ``isinstance`` against remote classes) is
    inherited from ``farcall._semantics.ProxyBase`` and performed on the server
    through :meth:`_farcall_builtin`. Nothing is cached: a property is
    evaluated again at each access.
    """

    # ProxyBase may or may not bring a ``__weakref__`` slot; proxies need one
    # (the connection's caches and user code hold them weakly).
    __slots__ = ("_farcall_handle",) + (() if hasattr(_ProxyBase, "__weakref__") else ("__weakref__",))

    _farcall_handle: _native.Handle

    def __init__(self, handle: _native.Handle) -> None:
        object.__setattr__(self, "_farcall_handle", handle)

    # -- the primitives ProxyBase builds on --------------------------------------

    def _farcall_builtin(self, name: str, *args: Any) -> Any:
        """Performs ``Builtin(name, args)`` on this proxy's connection (``args`` usually holds ``self``,
        which travels home as the server's own object)."""
        return self._farcall_handle.connection.builtin(name, args)

    def _farcall_getattr(self, name: str) -> Any:
        return self._farcall_handle.getattr(name)

    def _farcall_setattr(self, name: str, value: Any) -> None:
        self._farcall_handle.setattr(name, value)

    def _farcall_delattr(self, name: str) -> None:
        self._farcall_handle.delattr(name)

    def _farcall_call(self, args: Tuple[Any, ...], kwargs: Optional[Dict[str, Any]]) -> Any:
        return self._farcall_handle.call(args, kwargs or None)

    def _farcall_repr(self) -> str:
        return self._farcall_handle.repr()

    def _farcall_str(self) -> str:
        return self._farcall_handle.str()

    def _farcall_home(self, session: Any) -> Any:
        """How ``session`` (a connection's local session boxing a callback's result) sends this proxy:
        its native handle, which the native layer sends home as the server's own object, when the
        session is its connection's; else None (a proxy of another connection is exported)."""
        return self._farcall_handle.home(session)

    # -- fast paths: the most frequent operations call the handle directly ---------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_farcall"):
            raise AttributeError(name)
        return self._farcall_handle.getattr(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_farcall"):  # the proxy's own state (see ProxyBase)
            object.__setattr__(self, name, value)
        else:
            self._farcall_handle.setattr(name, value)

    def __delattr__(self, name: str) -> None:
        if name.startswith("_farcall"):
            object.__delattr__(self, name)
        else:
            self._farcall_handle.delattr(name)

    def __repr__(self) -> str:
        try:
            return self._farcall_handle.repr()
        except Exception as e:  # a dead connection must not break debuggers
            return f"<farcall.Proxy of remote {self._farcall_handle.type_name} ({type(e).__name__})>"

    def __str__(self) -> str:
        return self._farcall_handle.str()


class _CallableProxy(Proxy, _semantics.CallableProxyBase):
    """A proxy of a remote function, class or other callable (the server flags them): only these
    have ``__call__``, so ``callable()`` tells them from other proxies."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._farcall_handle.call(args, kwargs or None)


_CALLABLE_HINTS = frozenset(("callable", "class"))


class _IteratorProxy(Proxy, _semantics.IteratorProxyBase):
    """A proxy of a remote iterator (the server flags them): only these have ``__next__``, so C
    code that checks for an iterator (``PyIter_Check``) is told the truth about the others."""

    __slots__ = ()


class _CallableIteratorProxy(_CallableProxy, _semantics.IteratorProxyBase):
    """A proxy of a remote object that is both callable and an iterator."""

    __slots__ = ()


def make_proxy(handle: _native.Handle) -> Proxy:
    """Wraps a native handle (called by the native module)."""
    if handle.hint in _CALLABLE_HINTS:
        return _CallableIteratorProxy(handle) if handle.iterator else _CallableProxy(handle)
    if handle.iterator:
        return _IteratorProxy(handle)
    return Proxy(handle)


def connection_of(proxy: Any) -> _native.Client:
    """The native connection a proxy belongs to; ``TypeError`` for anything that is not a proxy."""
    if not isinstance(proxy, Proxy):
        raise TypeError(f"expected a farcall.Proxy, got a local {type(proxy).__name__}")
    return proxy._farcall_handle.connection
