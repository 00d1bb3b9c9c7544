"""One worker job's start: CPU until registered, and memory (PSS) once registered.

What bounds the small-size rows of the README's table (``docs/performance.md``): how
much CPU one worker job's bootstrap spends before its worker is registered (and how
much of that is importing ``distributed``), and what a nanny adds to a worker's
memory. A scheduler with a run's TLS material runs in this process; each round
starts, in a fresh interpreter per method, one worker of jobstrap's classes against
it, as a one-node worker job does:

* ``no_nanny``: the worker in the job's process (``nanny: false``);
* ``nanny``: a nanny forking its worker (the default for one worker per job);
* ``nanny_gc_frozen``: the same, with ``gc.freeze()`` before the fork.

Appends a run to ``bench/results/worker_start.json``::

    .venv/bin/python bench/bench_worker_start.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from history import append_run, new_run

RESULTS = Path(__file__).resolve().parent / "results" / "worker_start.json"
METHODS = ("no_nanny", "nanny", "nanny_gc_frozen")

# Runs in a fresh interpreter: the import is part of what is measured.
CHILD = r"""
import time
began = time.perf_counter()
import asyncio, gc, json, os, sys
import psutil
import dask
dask.config.set({"distributed.worker.multiprocessing-method": "fork"})
from jobstrap.engines.dask.servers import BatchNanny, BatchWorker
from jobstrap.net.security import load_security
me = psutil.Process()
imported = time.perf_counter() - began
import_cpu = sum(me.cpu_times()[:2])
method, address, run_dir = sys.argv[1:4]

def pss(process):
    return process.memory_full_info().pss / 2**20

async def main():
    security = load_security(run_dir)
    if method == "nanny_gc_frozen":
        gc.collect()
        gc.freeze()
    kind = BatchWorker if method == "no_nanny" else BatchNanny
    extra = {} if method == "no_nanny" else {"worker_class": BatchWorker}
    async with kind(address, host="127.0.0.1", nthreads=1, security=security,
                    dashboard=False, **extra):
        registered = time.perf_counter() - began
        children = me.children(recursive=True)
        cpu = sum(me.cpu_times()[:2]) + sum(sum(c.cpu_times()[:2]) for c in children)
        await asyncio.sleep(2)  # settled: what the worker holds at rest
        memory = [pss(me)] + [pss(c) for c in me.children(recursive=True)]
    print(json.dumps({
        "import_s": imported, "import_cpu_s": import_cpu,
        "registered_s": registered, "cpu_to_registered_s": cpu,
        "pss_mib": sum(memory), "pss_by_process_mib": memory,
    }))

asyncio.run(main())
"""


async def one_round(run_dir: Path, method: str) -> dict[str, Any]:
    """Start one worker of ``method`` in a fresh interpreter; return what it measured."""
    from distributed import Scheduler

    from jobstrap.net.security import load_security

    security = load_security(run_dir)
    async with Scheduler(
        host="127.0.0.1", port=0, protocol="tls", security=security, dashboard=False
    ) as scheduler:
        env = {**os.environ, "JOBSTRAP_RUN_DIR": str(run_dir), "JOBSTRAP_METRICS": "off"}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, method, scheduler.address, str(run_dir),
            stdout=subprocess.PIPE, env=env,
        )  # fmt: skip
        out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{method}: the worker's interpreter ended with {process.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    # distributed's INFO lines for every start and close say nothing measured here.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

    from jobstrap.net.security import create_tls
    from jobstrap.store.rundir import RunDir

    runs: dict[str, list[dict[str, Any]]] = {method: [] for method in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = RunDir.create(Path(tmp) / "runs", "bench-worker-start")
        create_tls(run_dir)
        for repeat in range(args.repeats):
            # Rotate the order: a warm page cache favours whoever comes later.
            shift = repeat % len(METHODS)
            for method in METHODS[shift:] + METHODS[:shift]:
                runs[method].append(asyncio.run(one_round(run_dir.path, method)))

    keys = ("import_cpu_s", "cpu_to_registered_s", "registered_s", "pss_mib")
    median = {
        method: {key: round(statistics.median(r[key] for r in rs), 3) for key in keys}
        for method, rs in runs.items()
    }
    import distributed

    series = {key: {m: [r[key] for r in rs] for m, rs in runs.items()} for key in keys}
    run = new_run(
        "bench/bench_worker_start.py",
        settings={"repeats": args.repeats, "machine_cpus": os.cpu_count()},
        versions={
            "python": platform.python_version(),
            "distributed": getattr(distributed, "__version__", "?"),
        },
        series=series,
        measures={
            "pss_nanny_vs_no_nanny": {
                "series": "pss_mib",
                "ours": "nanny",
                "anchor": "no_nanny",
                "unit": "MiB",
            },
            "cpu_to_registered_nanny_vs_no_nanny": {
                "series": "cpu_to_registered_s",
                "ours": "nanny",
                "anchor": "no_nanny",
                "unit": "s",
            },
        },
        detail={"median": median, "runs": runs},
    )
    append_run(
        args.output,
        run,
        benchmark="one worker job's start: CPU until registered, memory with and without a nanny",
        script="bench/bench_worker_start.py",
    )
    print(json.dumps(median, indent=2))
    print(f"appended a run to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
