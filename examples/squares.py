"""Squares of a remote function: the smallest jobstrap app.

    jobstrap run examples/squares.py            # as a batch job (local by default)
    python examples/squares.py                  # the same code on a LocalCluster

Inside a jobstrap job, ``Client()`` connects to the allocation's scheduler (the
bootstrap puts its address and the run's TLS settings in the environment); outside
one it starts a local cluster, so the app is the same file either way.
"""

from __future__ import annotations

import socket
import sys

from distributed import Client


def square(x: int) -> tuple[int, str]:
    """Runs on a worker: the square, and where it was computed."""
    return x * x, socket.gethostname()


def main(n: int = 100) -> int:
    with Client() as client:
        futures = client.map(square, range(n))
        results = client.gather(futures)
    total = sum(value for value, _ in results)
    hosts = sorted({host for _, host in results})
    print(f"sum of squares 0..{n - 1} = {total} (computed on {', '.join(hosts)})")
    expected = (n - 1) * n * (2 * n - 1) // 6
    return 0 if total == expected else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100))
