"""``(x + x.T) - x.mean(axis=0)`` on a chunked 10000 x 10000 array; prints a checksum.

    jobstrap run examples/array_expression.py [N] [CHUNK]

``x`` is never held in one piece: 100 chunks of 1000 x 1000 are generated, combined
and reduced on the workers, and only the checksums come back to the app.
"""

from __future__ import annotations

import sys
import time

import dask.array as da
from distributed import Client


def expression(n: int, chunk: int, seed: int = 42) -> da.Array:
    """The expression, lazily (the same seed and chunks give the same numbers)."""
    x = da.random.default_rng(seed).random((n, n), chunks=(chunk, chunk))
    return (x + x.T) - x.mean(axis=0)


def main(n: int = 10_000, chunk: int = 1_000) -> int:
    with Client() as client:
        started = time.perf_counter()
        y = expression(n, chunk)
        total, absolute = da.compute(y.sum(), abs(y).sum())
        seconds = time.perf_counter() - started
        workers = len(client.scheduler_info()["workers"])
    print(f"shape {y.shape}, {y.npartitions} chunks, {workers} workers, {seconds:.1f} s")
    print(f"checksum sum={float(total):.6f} abs-sum={float(absolute):.6f}")
    return 0


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    sys.exit(main(*args))
