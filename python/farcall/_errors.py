"""farcall's exceptions, and the mapping of remote exceptions to local classes."""

from __future__ import annotations

import builtins
from typing import Any, Dict, Tuple


class FarcallError(Exception):
    """Base class of every error farcall itself raises."""


class ConnectionLost(FarcallError, ConnectionError):
    """The connection is gone: closed by either side, or broken mid-call."""


class ConnectError(FarcallError, ConnectionError):
    """The connection could not be established."""


class HandshakeError(FarcallError, ConnectionError):
    """The server refused the connection or speaks another protocol version."""


class ProtocolError(FarcallError):
    """The peer broke the protocol, or asked for something this version cannot do."""


class PolicyError(FarcallError, PermissionError):
    """The server's policy refused the operation (for example attribute assignment)."""


class TeleportError(FarcallError):
    """A function could not be shipped to the other side, with the reason: its source is not
    available and cloudpickle cannot be used, a global it needs cannot be copied, or the
    receiver could not rebuild it."""


class RemoteError(FarcallError):
    """An exception raised by code on the server.

    Remote exceptions of a built-in type are raised as a subclass of both that
    type and ``RemoteError`` (``except ValueError`` works); other types as a
    ``RemoteError`` subclass of the same name.

    Attributes:
        remote_type: ``"module.Name"`` of the remote exception's type.
        remote_message: ``str()`` of the remote exception.
        remote_traceback: the remote traceback, formatted.
    """

    remote_type: str = ""
    remote_message: str = ""
    remote_traceback: str = ""

    def __str__(self) -> str:
        text = self.remote_message
        if self.remote_traceback:
            text += "\n\n--- remote traceback ---\n" + self.remote_traceback.rstrip("\n")
        return text


#: farcall's own errors raised by the peer (type module ``farcall``, no traceback of their own).
_FARCALL_TYPES: Dict[str, type] = {
    "FarcallError": FarcallError,
    "ProtocolError": ProtocolError,
    "PolicyError": PolicyError,
    "TeleportError": TeleportError,
}
_classes: Dict[Tuple[str, str], type] = {}


def _class_for(module: str, name: str) -> type:
    key = (module, name)
    cls = _classes.get(key)
    if cls is None:
        base = getattr(builtins, name, None) if module == "builtins" else None
        # Only Exception subclasses: a remote SystemExit must not exit the client.
        if isinstance(base, type) and issubclass(base, Exception):
            bases: Tuple[type, ...] = (RemoteError, base)
        else:
            bases = (RemoteError,)
        try:
            cls = type(name.rsplit(".", 1)[-1], bases, {"__module__": module, "__qualname__": name})
        except TypeError:  # an incompatible layout
            cls = type(name.rsplit(".", 1)[-1], (RemoteError,), {"__module__": module, "__qualname__": name})
        _classes[key] = cls
    return cls


def remote_error(module: str, name: str, args: Tuple[Any, ...], message: str, traceback: str) -> BaseException:
    """Builds the local exception for a remote one (called by the native module)."""
    if module == "farcall" and name in _FARCALL_TYPES:
        error = _FARCALL_TYPES[name](message)
        error.remote_traceback = traceback
        return error
    cls = _class_for(module, name)
    try:
        exc = cls(*args)
    except Exception:
        exc = cls.__new__(cls)
        exc.args = tuple(args)
    exc.remote_type = f"{module}.{name}"
    exc.remote_message = message
    exc.remote_traceback = traceback
    return exc


_CLIENT_ERRORS = {
    "address": ValueError,
    "connect": ConnectError,
    "handshake": HandshakeError,
    "lost": ConnectionLost,
    "protocol": ProtocolError,
    "timeout": TimeoutError,
}


def client_error(kind: str, message: str) -> BaseException:
    """Builds the local exception for a client-side failure (called by the native module)."""
    return _CLIENT_ERRORS.get(kind, FarcallError)(message)
