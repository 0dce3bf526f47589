"""farcall: use Python on another machine as if it were local.

>>> import farcall
>>> from farcall import connect
>>> conn = connect("127.0.0.1:1227")          # doctest: +SKIP
>>> conn.modules.math.pow(3, 2)               # doctest: +SKIP
9.0
>>> squares = conn.eval("[i * i for i in range(5)]")  # doctest: +SKIP
>>> farcall.obtain(squares)                   # doctest: +SKIP
[0, 1, 4, 9, 16]
"""

from . import _native
from . import _semantics  # created by _native from the embedded farcall_semantics.py
from ._connection import Connection, Modules, connect
from ._errors import (
    ConnectError,
    ConnectionLost,
    FarcallError,
    HandshakeError,
    PolicyError,
    ProtocolError,
    RemoteError,
    TeleportError,
    client_error,
    remote_error,
)
from ._proxy import Proxy, make_proxy
from ._remote import async_, deliver, obtain, timed

__version__ = _native.FARCALL_VERSION

_native._register(Proxy, make_proxy, remote_error, client_error)

__all__ = [
    "ConnectError",
    "Connection",
    "ConnectionLost",
    "FarcallError",
    "HandshakeError",
    "Modules",
    "PolicyError",
    "ProtocolError",
    "Proxy",
    "RemoteError",
    "TeleportError",
    "async_",
    "connect",
    "deliver",
    "obtain",
    "timed",
]
