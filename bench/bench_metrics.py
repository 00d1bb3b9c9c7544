"""What the HTTPS metrics endpoint costs a worker: start-up time and memory, on against off.

A scheduler in this process (with a run's TLS material, as in a job) and ``--workers``
nannies of jobstrap's classes, each forking or spawning its worker process as a job
does. Per round, metrics off (``JOBSTRAP_METRICS=off``) and on, in alternating order:
the wall time from starting the nannies to every worker registered, and each worker
process's resident and unique memory once registered (``psutil``).

Appends a run to ``bench/results/metrics.json``::

    .venv/bin/python bench/bench_metrics.py [--workers 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from history import append_run, new_run

RESULTS = Path(__file__).resolve().parent / "results" / "metrics.json"
MODES = ("off", "on")


async def one_round(run_dir: Path, workers: int, mode: str) -> dict[str, float]:
    """Start ``workers`` nannies with metrics ``mode``; time them and weigh their workers."""
    import psutil
    from distributed import Scheduler

    from jobstrap.engines.dask.metrics import install_scheduler_metrics
    from jobstrap.engines.dask.servers import BatchNanny, BatchWorker
    from jobstrap.net.security import load_security

    os.environ["JOBSTRAP_METRICS"] = mode
    os.environ["JOBSTRAP_RUN_DIR"] = str(run_dir)
    security = load_security(run_dir)
    async with Scheduler(
        host="127.0.0.1", port=0, protocol="tls", security=security, dashboard=False
    ) as scheduler:
        if mode == "on":
            await install_scheduler_metrics(scheduler, run_dir)
        nannies: list[Any] = [
            BatchNanny(
                scheduler.address,
                host="127.0.0.1",
                nthreads=1,
                security=security,
                worker_class=BatchWorker,
                dashboard=True,
            )
            for _ in range(workers)
        ]
        began = time.perf_counter()
        await asyncio.gather(*(n.start() for n in nannies))
        while len(scheduler.workers) < workers:
            await asyncio.sleep(0.01)
        start_s = time.perf_counter() - began
        rss, uss = [], []
        for nanny in nannies:
            info = psutil.Process(nanny.process.pid).memory_full_info()
            rss.append(info.rss / 2**20)
            uss.append(info.uss / 2**20)
        await asyncio.gather(*(n.close() for n in nannies))
    return {
        "start_s": start_s,
        "rss_mib": statistics.mean(rss),
        "uss_mib": statistics.mean(uss),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    from jobstrap.net.security import create_tls
    from jobstrap.store.rundir import RunDir

    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = RunDir.create(Path(tmp) / "runs", "bench-metrics")
        create_tls(run_dir)
        for repeat in range(args.repeats):
            # Alternate which goes first: a warm page cache favours the second.
            order = MODES if repeat % 2 == 0 else MODES[::-1]
            for mode in order:
                runs[mode].append(asyncio.run(one_round(run_dir.path, args.workers, mode)))

    keys = ("start_s", "rss_mib", "uss_mib")
    summary = {
        mode: {key: round(statistics.median(r[key] for r in results), 3) for key in keys}
        for mode, results in runs.items()
    }
    import distributed
    import prometheus_client

    series = {key: {mode: [r[key] for r in rs] for mode, rs in runs.items()} for key in keys}
    run = new_run(
        "bench/bench_metrics.py",
        settings={"workers": args.workers, "repeats": args.repeats},
        versions={
            "python": platform.python_version(),
            "distributed": getattr(distributed, "__version__", "?"),
            "prometheus_client": getattr(prometheus_client, "__version__", "?"),
        },
        series=series,
        measures={
            f"{key}_metrics_on_vs_off": {
                "series": key,
                "ours": "on",
                "anchor": "off",
                "unit": key.rsplit("_", 1)[-1],
            }
            for key in keys
        },
        workload={"workers": args.workers},
        detail={"median": summary, "runs": runs},
    )
    append_run(
        args.output,
        run,
        benchmark="a worker's start-up and memory with the HTTPS metrics endpoint on and off",
        script="bench/bench_metrics.py",
    )
    print(json.dumps(summary, indent=2))
    print(f"appended a run to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
