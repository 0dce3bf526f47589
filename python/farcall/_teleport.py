"""Teleport: ship a local function to the server, as a cloudpickle or as its source."""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
from typing import Any, Callable, Dict, List, Optional

from . import _native, _semantics
from ._errors import RemoteError, TeleportError

#: The ways `Connection.teleport` can ship a function.
METHODS = ("auto", "pickle", "source")

_by_value_lock = threading.Lock()


def teleport(client: _native.Client, func: Callable[..., Any], method: str = "auto", memo: Optional[Dict[str, str]] = None) -> Any:
    """Ships ``func`` to the server of ``client``; returns the proxy of the function rebuilt there.

    ``method``:
      - ``"pickle"``: cloudpickle (needs cloudpickle here and on the server,
        and the same Python major.minor on both sides);
      - ``"source"``: the function's source, its globals copied by value, the
        modules it uses imported again on the server, defaults and closure
        values copied;
      - ``"auto"`` (the default): ``"pickle"`` when cloudpickle is importable
        here and the server runs our Python major.minor, falling back to
        ``"source"`` when the server cannot unpickle it.

    ``memo`` (one dict per connection) remembers that the server cannot load
    any cloudpickle (none installed, or one that cannot read ours), so that
    later teleports go straight to the source.

    Raises :class:`farcall.TeleportError` saying why when no way works.
    """
    if method not in METHODS:
        raise ValueError(f"teleport: method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if not callable(func):
        raise TypeError(f"teleport: expected a function, got a {type(func).__name__}")
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    why_not: List[str] = []

    if method in ("auto", "pickle"):
        reason = (memo or {}).get(_NO_PICKLE) or _pickle_unusable(client)
        if reason is None:
            try:
                payload = _cloudpickle_dumps(func)
            except Exception as e:
                reason = f"cloudpickle cannot pickle it ({type(e).__name__}: {e})"
            else:
                try:
                    return client.builtin("teleport", ("pickle", payload))
                except TeleportError as e:
                    reason = f"{e} (this client pickles with cloudpickle {_cloudpickle_version()})"
                except RemoteError as e:  # an unpickling failure on the server: never let it through as is
                    reason = (
                        f"the server could not unpickle it ({e.remote_type}: {e.remote_message};"
                        f" this client pickles with cloudpickle {_cloudpickle_version()})"
                    )
                if memo is not None and not _server_loads_pickles(client):
                    memo[_NO_PICKLE] = reason
        if method == "pickle":
            raise TeleportError(f"cannot teleport {name} with cloudpickle: {reason}")
        why_not.append(reason)

    try:
        source_payload = _semantics.teleport_payload(func, session=client.local_session())
    except Exception as e:
        why_not.append(f"its source cannot be shipped ({_reason(e)})")
        raise TeleportError(f"cannot teleport {name}: " + "; ".join(why_not)) from None
    try:
        return client.builtin("teleport", ("source", _plain(source_payload)), copy=True)
    except TypeError as e:  # a global, default or closure value that cannot be copied
        raise TeleportError(f"cannot teleport {name} as source: {e}") from None


#: `memo` key: why the server loads no cloudpickle of ours.
_NO_PICKLE = "no_pickle"


def _server_loads_pickles(client: _native.Client) -> bool:
    """Whether the server loads the cloudpickle of a trivial function of ``__main__`` (pickled by
    value): when it does not, no function of ours will load there."""
    import cloudpickle

    probe = eval("lambda: None", {"__name__": "__main__"})
    try:
        client.builtin("teleport", ("pickle", cloudpickle.dumps(probe)))
    except (TeleportError, RemoteError):
        return False
    return True


def _plain(value: Any) -> Any:
    """A boxed payload (``_semantics.DictValue`` & co, tuple subclasses) as the plain dicts, lists
    and sets it stands for, which the native layer sends as copies (``copy=True``)."""
    t = type(value)
    if t is _semantics.DictValue:
        return {_plain(k): _plain(v) for k, v in value}
    if t is _semantics.ListValue:
        return [_plain(item) for item in value]
    if t is _semantics.SetValue:
        return {_plain(item) for item in value}
    if t is tuple:
        return tuple(_plain(item) for item in value)
    return value


def _reason(e: BaseException) -> str:
    text = str(e)
    return text if isinstance(e, (TeleportError, _semantics.FarcallError)) else f"{type(e).__name__}: {text}"


def _pickle_unusable(client: _native.Client) -> Optional[str]:
    """Why cloudpickle cannot be used with this server, or None when it can."""
    try:
        import cloudpickle  # noqa: F401
    except ImportError:
        return "cloudpickle is not installed here"
    ours = "%d.%d" % sys.version_info[:2]
    theirs = str(client.server_info().get("python_version", ""))
    if ".".join(theirs.split(".")[:2]) != ours:
        return f"the server runs Python {theirs or '(unknown)'} and this client {ours} (pickled code needs the same minor version)"
    return None


def _cloudpickle_version() -> str:
    import cloudpickle

    return str(getattr(cloudpickle, "__version__", "?"))


def _library_paths() -> List[str]:
    paths = sysconfig.get_paths()
    found = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return [p + os.sep for p in found]


_LIBRARY_PATHS = _library_paths()


def _is_user_module(module: Any) -> bool:
    """A module of the user's own code (a script, a test module), not one of an installed library:
    its functions travel by value, because the server cannot import it."""
    if module is None or getattr(module, "__name__", "__main__") == "__main__":
        return False  # __main__ is pickled by value anyway
    path = getattr(module, "__file__", None)
    if not path:
        return False  # built in, or a namespace package: leave it to import on the server
    real = os.path.realpath(path)
    return not any(real.startswith(p) for p in _LIBRARY_PATHS)


def _cloudpickle_dumps(func: Callable[..., Any]) -> bytes:
    """cloudpickle of ``func``, with the module it was defined in pickled by value when that
    module is user code (cloudpickle would otherwise pickle the function by reference to a
    module the server does not have)."""
    import cloudpickle

    module = sys.modules.get(getattr(func, "__module__", None) or "")
    if not _is_user_module(module):
        return cloudpickle.dumps(func)
    with _by_value_lock:
        registered = module.__name__ in cloudpickle.list_registry_pickle_by_value()
        if not registered:
            cloudpickle.register_pickle_by_value(module)
        try:
            return cloudpickle.dumps(func)
        finally:
            if not registered:
                cloudpickle.unregister_pickle_by_value(module)
