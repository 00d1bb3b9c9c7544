"""Estimate pi by throwing random points at a square, in parallel on the workers.

jobstrap run examples/monte_carlo_pi.py [POINTS]
"""

from __future__ import annotations

import math
import sys

import dask.array as da
from distributed import Client


def estimate_pi(points: int, chunk: int = 5_000_000, seed: int = 0) -> float:
    """Four times the share of points in [0, 1)^2 that fall inside the unit circle."""
    rng = da.random.default_rng(seed)
    x = rng.random(points, chunks=chunk)
    y = rng.random(points, chunks=chunk)
    inside = ((x * x + y * y) < 1.0).sum()
    return 4.0 * float(inside.compute()) / points


def main(points: int = 50_000_000) -> int:
    with Client():
        pi = estimate_pi(points)
    error = abs(pi - math.pi)
    print(f"pi ~ {pi:.6f} from {points:,} points (error {error:.2e})")
    # The standard error is about 1.6/sqrt(points); five of them is a broken run.
    return 0 if error < 5 * 1.7 / math.sqrt(points) else 1


if __name__ == "__main__":
    sys.exit(main(int(float(sys.argv[1])) if len(sys.argv) > 1 else 50_000_000))
