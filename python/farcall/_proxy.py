"""Proxies: local stand-ins for objects that live on the server."""

from __future__ import annotations

from typing import Any

from . import _native


class Proxy:
    """A local stand-in for an object on the server.

    Attribute access and calls are performed on the server; values that travel
    by value (None, bool, int, float, complex, str, bytes, tuple, frozenset)
    come back as local objects, everything else as another ``Proxy``. When the
    last proxy of a remote object is dropped, the server is told to release it.
    """

    __slots__ = ("_farcall_handle", "__weakref__")

    _farcall_handle: _native.Handle

    def __init__(self, handle: _native.Handle) -> None:
        object.__setattr__(self, "_farcall_handle", handle)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_farcall"):
            raise AttributeError(name)
        return self._farcall_handle.getattr(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._farcall_handle.setattr(name, value)

    def __delattr__(self, name: str) -> None:
        self._farcall_handle.delattr(name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._farcall_handle.call(args, kwargs or None)

    def __repr__(self) -> str:
        try:
            return self._farcall_handle.repr()
        except Exception as e:  # a dead connection must not break debuggers
            return f"<farcall.Proxy of remote {self._farcall_handle.type_name} ({type(e).__name__})>"

    def __str__(self) -> str:
        return self._farcall_handle.str()

    def __reduce__(self) -> Any:
        raise TypeError("a farcall.Proxy cannot be pickled; use the remote object through its connection")


def make_proxy(handle: _native.Handle) -> Proxy:
    """Wraps a native handle (called by the native module)."""
    return Proxy(handle)
