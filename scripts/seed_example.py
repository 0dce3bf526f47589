"""The issue's example, run against a farcall server, printing what happens.

    python scripts/seed_example.py [ADDRESS]     # default 127.0.0.1:1227

Exits non-zero if any line does not behave as the issue says.
"""

from __future__ import annotations

import os
import sys
import textwrap

from farcall import connect


def main(address: str) -> None:
    conn = connect(address)  # also "tcp://127.0.0.1:1227"
    info = conn.server_info
    print(
        f"connected to {address}: farcall {info['farcall_version']}, "
        f"Python {info['python_version']} ({info['backend']}) at {info['python_prefix']}"
    )

    remote_math = conn.modules.math  # the server's math, not the local one
    result = remote_math.pow(3, 2)
    assert result == 9.0, result
    print(f"conn.modules.math.pow(3, 2)           -> {result!r}")

    sep = conn.modules.os.path.sep  # a module variable of a basic type
    assert sep == "/" and type(sep) is str, sep
    print(f"conn.modules.os.path.sep              -> {sep!r} ({type(sep).__name__})")

    joined = conn.modules["os.path"].join("a", "b")
    assert joined == "a/b", joined
    print(f'conn.modules["os.path"].join("a", "b") -> {joined!r}')

    remote_pid = conn.modules.os.getpid()
    print(f"conn.modules.os.getpid()              -> {remote_pid} (this process is {os.getpid()})")

    try:
        conn.modules.math.sqrt(-1)  # raises ValueError, with the remote traceback in its text
    except ValueError as e:
        print(f"conn.modules.math.sqrt(-1)            -> raised {type(e).__name__}:")
        print(textwrap.indent(str(e).rstrip(), "    "))
    else:
        raise SystemExit("conn.modules.math.sqrt(-1) did not raise ValueError")

    try:
        conn.modules.no_such_module  # raises ModuleNotFoundError (an ImportError)
    except ModuleNotFoundError as e:
        message = str(e).strip().splitlines()[-1].removeprefix("ModuleNotFoundError: ")
        print(f"conn.modules.no_such_module           -> raised ModuleNotFoundError: {message}")
    else:
        raise SystemExit("conn.modules.no_such_module did not raise ModuleNotFoundError")

    conn.close()
    print("closed; every line of the example behaved as expected")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:1227")
