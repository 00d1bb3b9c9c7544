"""A user app in batch mode: one allocation, one Dask cluster, this script as the client.

The job script starts the bootstrap on every rank; rank 0 becomes the scheduler,
rank 1 runs this file, the other ranks are workers, all over the fastest network::

    #!/bin/bash
    #SBATCH --nodes=3 --ntasks=4 --cpus-per-task=2 --time=00:10:00
    srun --mpi=pmi2 python -m jobstrap.bootstrap --run-dir "$RUN_DIR" -- examples/batch_app.py 2000

(``jobstrap submit examples/batch_app.py`` writes that script for you.) Locally,
with the mpich wheel: ``mpiexec -n 4 python -m jobstrap.bootstrap --run-dir DIR --
examples/batch_app.py``.

Nothing here is jobstrap-specific except the optional drain hook: ``Client()``
finds the scheduler (address and TLS) through the environment the bootstrap set,
and the script's exit code becomes the job's.
"""

from __future__ import annotations

import sys
import time

import dask.array as da
from distributed import Client

from jobstrap.bootstrap import draining, on_drain


def main(argv: list[str]) -> int:
    """Compute statistics of a random matrix on the allocation's workers."""
    n = int(argv[1]) if len(argv) > 1 else 4000
    on_drain(lambda: print("asked to wind down: stopping after this step", flush=True))

    with Client() as client:
        workers = client.scheduler_info()["workers"]
        print(f"{len(workers)} workers:", ", ".join(sorted(workers)), flush=True)

        start = time.perf_counter()
        x = da.random.default_rng(42).standard_normal((n, n), chunks=(n // 4, n // 4))
        y = da.diagonal(x @ x.T)  # each entry: a sum of n squared normals, about n
        mean, std = da.compute(y.mean(), y.std())
        elapsed = time.perf_counter() - start
        print(f"mean of diag(X X^T) for n={n}: {mean:.1f} (expected ~{n}), std {std:.1f}")
        print(f"computed in {elapsed:.2f} s", flush=True)

    if draining():
        return 75  # EX_TEMPFAIL: let a wrapper resubmit
    # Sanity check of the result, so a broken cluster shows in the job's exit code.
    return 0 if abs(mean - n) < 0.05 * n else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
