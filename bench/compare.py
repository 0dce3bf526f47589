"""farcall against RPyC, side by side on this machine, in one run.

    .venv/bin/python bench/compare.py [--iterations N] [--bulk-iterations N]

Starts `farcall serve` ($FARCALL_BIN, default target/release/farcall) and an
RPyC classic server, both on 127.0.0.1 port 0, plus a raw TCP echo process as
the floor, and measures for each:

  (a) a prefetched remote function call `p(3, 2)`, median and p99
  (b) `conn.modules.math.pow(3, 2)` written out in full each time, median
  (c) throughput of a call returning 10 MB of bytes
  (d) raw TCP: a small ping-pong between two processes (the one-round-trip floor)

It builds nothing: build the release binary and install the Python package
into the venv first (scripts/bench does all of it). Each measurement warms up
first and stops early if it exceeds its time budget, so a run stays well
under two minutes.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BULK_BYTES = 10_000_000
PING_BYTES = 64

RPYC_SERVER = """
from rpyc.core.service import ClassicService
from rpyc.utils.server import ThreadedServer

server = ThreadedServer(ClassicService, hostname="127.0.0.1", port=0, reuse_addr=True)
print(server.port, flush=True)
server.start()
"""

ECHO_SERVER = """
import socket
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    data = conn.recv(65536)
    if not data:
        break
    conn.sendall(data)
"""


@dataclass
class Stats:
    samples_ns: list[int]

    @property
    def median_us(self) -> float:
        return statistics.median(self.samples_ns) / 1000

    @property
    def p99_us(self) -> float:
        ordered = sorted(self.samples_ns)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_ns) / 1e9


def measure(fn: Callable[[], object], iterations: int, warmup: int, budget_s: float) -> Stats:
    """Time `fn()` one call at a time: `warmup` untimed calls, then up to `iterations` timed ones."""
    for _ in range(warmup):
        fn()
    samples: list[int] = []
    clock = time.perf_counter_ns
    stop_at = time.monotonic() + budget_s
    for _ in range(iterations):
        start = clock()
        fn()
        samples.append(clock() - start)
        if time.monotonic() > stop_at:
            break
    return Stats(samples)


def start_process(argv: list[str], what: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start a process and return it with the first line it prints (its address or port)."""
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line:
        process.kill()
        raise SystemExit(f"{what} did not start (exit code {process.wait()}): {' '.join(argv)}")
    return process, line


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def bench_rpc(name: str, conn, args: argparse.Namespace) -> dict[str, Stats]:
    """The three RPC measurements; `conn` is a farcall or an RPyC classic connection."""
    prefetched = conn.modules.math.pow
    assert prefetched(3, 2) == 9.0
    bulk = conn.modules.builtins.bytes(BULK_BYTES)
    assert type(bulk) is bytes and len(bulk) == BULK_BYTES, f"{name}: 10 MB did not arrive as bytes"
    print(f"  {name}: prefetched call ...", flush=True)
    results = {"prefetched": measure(lambda: prefetched(3, 2), args.iterations, args.iterations // 10, 20)}
    print(f"  {name}: full expression ...", flush=True)
    results["full"] = measure(lambda: conn.modules.math.pow(3, 2), args.iterations, args.iterations // 10, 20)
    print(f"  {name}: 10 MB of bytes ...", flush=True)
    results["bulk"] = measure(lambda: conn.modules.builtins.bytes(BULK_BYTES), args.bulk_iterations, 2, 30)
    return results


def bench_farcall(binary: Path, args: argparse.Namespace) -> dict[str, Stats]:
    import farcall

    process, line = start_process([str(binary), "serve", "--listen", "tcp://127.0.0.1:0"], "farcall serve")
    try:
        address = line.rsplit(" ", 1)[-1]
        with farcall.connect(address) as conn:
            return bench_rpc("farcall", conn, args)
    finally:
        stop_process(process)


def bench_rpyc(args: argparse.Namespace) -> dict[str, Stats]:
    import rpyc

    process, port = start_process([sys.executable, "-c", RPYC_SERVER], "the RPyC classic server")
    try:
        conn = rpyc.classic.connect("127.0.0.1", int(port))
        try:
            return bench_rpc("RPyC", conn, args)
        finally:
            conn.close()
    finally:
        stop_process(process)


def bench_raw_tcp(args: argparse.Namespace) -> Stats:
    process, port = start_process([sys.executable, "-c", ECHO_SERVER], "the TCP echo process")
    try:
        with socket.create_connection(("127.0.0.1", int(port))) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            message = b"x" * PING_BYTES

            def ping() -> None:
                sock.sendall(message)
                received = 0
                while received < PING_BYTES:
                    chunk = sock.recv(PING_BYTES - received)
                    if not chunk:
                        raise ConnectionError("echo process went away")
                    received += len(chunk)

            return measure(ping, args.iterations, args.iterations // 10, 10)
    finally:
        stop_process(process)


def print_table(ours: dict[str, Stats], theirs: dict[str, Stats], floor: Stats) -> None:
    def throughput(stats: Stats) -> float:
        return BULK_BYTES / stats.median_s / 1e6

    rows = [
        ("prefetched p(3, 2), median", ours["prefetched"].median_us, theirs["prefetched"].median_us, "µs"),
        ("prefetched p(3, 2), p99", ours["prefetched"].p99_us, theirs["prefetched"].p99_us, "µs"),
        ("conn.modules.math.pow(3, 2), median", ours["full"].median_us, theirs["full"].median_us, "µs"),
        ("10 MB of bytes, throughput", throughput(ours["bulk"]), throughput(theirs["bulk"]), "MB/s"),
    ]
    print()
    print(f"{'measurement':<38}{'farcall':>14}{'RPyC':>14}{'speed-up vs RPyC':>20}{'round trips':>13}")
    print("-" * 99)
    for label, farcall_value, rpyc_value, unit in rows:
        if unit == "MB/s":
            advantage, trips = farcall_value / rpyc_value, ""
        else:
            advantage = rpyc_value / farcall_value
            trips = f"{farcall_value / floor.median_us:.1f}" if "median" in label else ""
        print(f"{label:<38}{farcall_value:>10.1f} {unit:<4}{rpyc_value:>9.1f} {unit:<4}{advantage:>19.2f}x{trips:>13}")
    print(f"{'raw TCP ping-pong (floor), median':<38}{floor.median_us:>10.1f} µs")
    print(f"{'raw TCP ping-pong (floor), p99':<38}{floor.p99_us:>10.1f} µs")
    print()
    counts = ", ".join(f"{k}: {len(v.samples_ns)}" for k, v in ours.items())
    print(f"samples per measurement ({counts}); a speed-up > 1 means farcall is faster;")
    print("'round trips' is farcall's median divided by the raw TCP floor.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=3000, help="timed calls per latency measurement")
    parser.add_argument("--bulk-iterations", type=int, default=20, help="timed 10 MB calls")
    parser.add_argument(
        "--farcall-bin",
        type=Path,
        default=Path(os.environ.get("FARCALL_BIN") or REPO / "target" / "release" / "farcall"),
        help="the farcall binary (default: $FARCALL_BIN, else target/release/farcall)",
    )
    args = parser.parse_args()
    if not args.farcall_bin.is_file():
        raise SystemExit(
            f"{args.farcall_bin} not found: run `cargo build --release -p farcall-server` (or scripts/bench)"
        )

    print(f"farcall binary: {args.farcall_bin}")
    print(f"Python {sys.version.split()[0]} at {sys.executable}")
    started = time.monotonic()
    print("raw TCP ping-pong ...", flush=True)
    floor = bench_raw_tcp(args)
    print("farcall ...", flush=True)
    farcall_results = bench_farcall(args.farcall_bin, args)
    print("RPyC ...", flush=True)
    rpyc_results = bench_rpyc(args)
    print_table(farcall_results, rpyc_results, floor)
    print(f"total time: {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
