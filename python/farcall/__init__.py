"""farcall: use Python on another machine as if it were local.

>>> from farcall import connect
>>> conn = connect("127.0.0.1:1227")          # doctest: +SKIP
>>> conn.modules.math.pow(3, 2)               # doctest: +SKIP
9.0
"""

from . import _native
from ._connection import Connection, Modules, connect
from ._errors import (
    ConnectError,
    ConnectionLost,
    FarcallError,
    HandshakeError,
    PolicyError,
    ProtocolError,
    RemoteError,
    client_error,
    remote_error,
)
from ._proxy import Proxy, make_proxy

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
    "connect",
]
