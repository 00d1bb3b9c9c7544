"""The Python API: build a graph here, compute it in a batch job, get the result back.

    python examples/graph_submit.py [PROFILE]

No script to write: ``jobstrap.submit`` ships the graph (cloudpickle) into a batch
job that runs a whole Dask cluster, and returns a future. With the default profile
the "batch system" is this machine.
"""

from __future__ import annotations

import sys

import dask.array as da

import jobstrap


def main(profile: str | None = None) -> int:
    x = da.random.default_rng(42).random((4_000, 4_000), chunks=(1_000, 1_000))
    expr = ((x + x.T) - x.mean(axis=0)).sum(axis=1)  # a graph: nothing computed yet

    future = jobstrap.submit(expr, profile=profile, walltime="10m")
    print(f"submitted run {future.run_id} as job {future.job_id}")
    column_sums = future.result(progress=True)  # queue wait, then a bar of tasks

    print(f"got {type(column_sums).__name__} of shape {column_sums.shape}")
    print(f"checksum {column_sums.sum():.6f}; local {expr.sum().compute():.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
