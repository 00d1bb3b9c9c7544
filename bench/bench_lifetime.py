"""A computation longer than every worker job's walltime: jobstrap vs dask-jobqueue 0.9.0.

Run on the test cluster's login node::

    scripts/testcluster on head .venv/bin/python bench/bench_lifetime.py [--levels 80]

The same workload, in the same run, on three clusters of ``--jobs`` one-worker jobs:

* **dask_jobqueue**: dask-jobqueue's documented trick, same walltime, workers started
  with ``--lifetime <walltime - margin> --lifetime-stagger <stagger>
  --lifetime-restart`` (``worker_extra_args``) and ``adapt(minimum_jobs=N,
  maximum_jobs=N)`` so ended jobs are resubmitted;
* **jobstrap**: ``SLURMCluster(walltime=..., lifetime_margin=...)`` and
  ``scale(jobs=N)``; the cluster rotates its jobs itself;
* **no_rotation**: jobstrap with a walltime longer than the run (the reference).

The workload is a ``width x levels`` grid of tasks of ``--seconds`` each, each task
consuming two results of the level below, every result held (futures kept) to the
end. Reported per contender: task starts per task (a scheduler plugin counts
transitions into ``processing``), completion time (or ``null`` when it did not finish
within ``--timeout``), minimum worker count after the first worker arrived, and
throughput relative to ``no_rotation``. Appended to ``bench/results/lifetime.json``,
workers over time to ``bench/results/lifetime.png``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distributed import Client, wait
from distributed.diagnostics.plugin import SchedulerPlugin
from history import append_run, new_run

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE: dict[str, Any] = {"cores": 1, "memory": "500MiB", "processes": 1}


def seed(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i + 1


def step(left: int, right: int, level: int, seconds: float) -> int:
    time.sleep(seconds)
    return (left * 3 + right + level) % 1_000_003


# The workers cannot import this module. distributed pickles task specs with the
# standard pickle (functions by reference) unless that names ``__main__``; then it
# uses cloudpickle, which ships ``__main__`` functions by value.
seed.__module__ = step.__module__ = "__main__"


def expected(width: int, levels: int) -> list[int]:
    row = [i + 1 for i in range(width)]
    for level in range(1, levels):
        row = [step(row[i], row[(i + 1) % width], level, 0.0) for i in range(width)]
    return row


class CountStarts(SchedulerPlugin):
    """Counts task starts (transitions into ``processing``)."""

    def __init__(self) -> None:
        self.starts = 0

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "processing":
            self.starts += 1


def sample(
    count: Callable[[], int], samples: list[tuple[float, int]], stop: threading.Event
) -> None:
    while not stop.wait(1.0):
        samples.append((time.time(), count()))


def run(
    name: str, cluster: Any, start: Callable[[], None], args: argparse.Namespace
) -> dict[str, Any]:
    counter = CountStarts()
    cluster.scheduler.add_plugin(counter, name="count-starts")
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=sample, args=(lambda: len(cluster.scheduler.workers), samples, stop), daemon=True
    )
    began = time.time()
    thread.start()
    finished: float | None = None
    correct = False
    with Client(cluster) as client:  # type: ignore[no-untyped-call]
        start()
        rows = [[client.submit(seed, i, args.seconds, pure=False) for i in range(args.width)]]
        for level in range(1, args.levels):
            below = rows[-1]
            rows.append(
                [
                    client.submit(
                        step, below[i], below[(i + 1) % args.width], level, args.seconds, pure=False
                    )
                    for i in range(args.width)
                ]
            )
        try:
            # distributed's wait raises at its timeout (it does not return the
            # unfinished set): a contender that never finishes is a result, not a crash.
            done = wait(rows[-1], timeout=args.timeout, return_when="ALL_COMPLETED")  # type: ignore[no-untyped-call]
        except TimeoutError:
            done = None
        if done is not None and not done.not_done:
            finished = time.time() - began
            correct = client.gather(rows[-1]) == expected(args.width, args.levels)
        del rows
    stop.set()
    thread.join()
    tasks = args.width * args.levels
    counts = [n for _, n in samples]
    first = next((i for i, n in enumerate(counts) if n > 0), None)
    result = {
        "tasks": tasks,
        "task_starts": counter.starts,
        "starts_per_task": round(counter.starts / tasks, 3),
        "completion_s": None if finished is None else round(finished, 1),
        # Cut at --timeout: unfinished, which says nothing about correctness.
        "finished": finished is not None,
        "correct": correct if finished is not None else None,
        "min_workers_after_first": None if first is None else min(counts[first:]),
        "workers_over_time": [(round(t - began, 1), n) for t, n in samples],
    }
    print(name, {k: v for k, v in result.items() if k != "workers_over_time"}, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--walltime", type=int, default=150, help="seconds")
    parser.add_argument("--margin", type=int, default=30, help="seconds")
    parser.add_argument("--stagger", type=int, default=20, help="dask-jobqueue's, seconds")
    parser.add_argument("--width", type=int, default=6)
    parser.add_argument("--levels", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()

    from dask_jobqueue import SLURMCluster as JobqueueCluster

    from jobstrap import SLURMCluster
    from jobstrap.config.units import format_walltime_slurm

    walltime = format_walltime_slurm(args.walltime)
    results: dict[str, Any] = {}
    log_directory = Path.home() / ".jobstrap" / "bench-jobqueue-logs"
    log_directory.mkdir(parents=True, exist_ok=True)

    def ours() -> None:
        with SLURMCluster(
            "testcluster", walltime=walltime, lifetime_margin=args.margin, **SHAPE
        ) as cluster:
            results["jobstrap"] = run(
                "jobstrap", cluster, lambda: cluster.scale(jobs=args.jobs), args
            )
            results["jobstrap"]["rotations"] = cluster._lifetime.retirements

    def theirs() -> None:
        with JobqueueCluster(
            queue="debug",
            interface="ib0",
            death_timeout=30,
            python=sys.executable,
            log_directory=str(log_directory),
            walltime=walltime,
            worker_extra_args=[
                "--lifetime",
                f"{args.walltime - args.margin}s",
                "--lifetime-stagger",
                f"{args.stagger}s",
                "--lifetime-restart",
            ],
            **SHAPE,
        ) as cluster:
            results["dask_jobqueue"] = run(
                "dask_jobqueue",
                cluster,
                lambda: cluster.adapt(minimum_jobs=args.jobs, maximum_jobs=args.jobs),
                args,
            )

    def reference() -> None:
        with SLURMCluster("testcluster", walltime="01:00:00", **SHAPE) as cluster:
            results["no_rotation"] = run(
                "no_rotation", cluster, lambda: cluster.scale(jobs=args.jobs), args
            )

    contenders = {"dask_jobqueue": theirs, "jobstrap": ours, "no_rotation": reference}
    for name, contender in contenders.items():
        if args.only is None or name in args.only:
            contender()

    base = results.get("no_rotation", {}).get("completion_s")
    for entry in results.values():
        done = entry.get("completion_s")
        entry["throughput_vs_no_rotation"] = (
            round(base / done, 3) if base and done and entry.get("correct") else None
        )

    import dask_jobqueue
    import distributed

    RESULTS.mkdir(parents=True, exist_ok=True)
    series = lifetime_series(results)
    run = new_run(
        "bench/bench_lifetime.py",
        versions={
            "python": platform.python_version(),
            "distributed": getattr(distributed, "__version__", "?"),
            "dask_jobqueue": dask_jobqueue.__version__,
        },
        settings=vars(args),
        series=series,
        measures=lifetime_measures(series),
        workload={k: v for k, v in vars(args).items() if k not in ("timeout", "only")},
        detail={"results": results},
        finished=all(entry.get("finished", True) for entry in results.values()),
    )
    append_run(
        RESULTS / "lifetime.json",
        run,
        benchmark="lifetime rotation under a dependent workload",
        script="bench/bench_lifetime.py",
    )
    # The picture shows the newest run; every run's samples stay in lifetime.json.
    plot(results, RESULTS / "lifetime.png", args)


LIFETIME_UNITS = {"starts_per_task": "starts/task", "completion": "s"}


def lifetime_series(results: dict[str, Any]) -> dict[str, dict[str, list[float | None]]]:
    """One round per run: starts per task and completion seconds (None: unfinished)."""
    return {
        "starts_per_task": {m: [e.get("starts_per_task")] for m, e in results.items()},
        "completion": {m: [e.get("completion_s")] for m, e in results.items()},
    }


def lifetime_measures(
    series: dict[str, dict[str, list[float | None]]],
) -> dict[str, dict[str, str]]:
    """jobstrap against dask-jobqueue's flags and against the run without rotation."""
    measures: dict[str, dict[str, str]] = {}
    for name, methods in series.items():
        for anchor in ("dask_jobqueue", "no_rotation"):
            if "jobstrap" in methods and anchor in methods:
                measures[f"{name}_vs_{anchor}"] = {
                    "series": name,
                    "ours": "jobstrap",
                    "anchor": anchor,
                    "unit": LIFETIME_UNITS[name],
                }
    return measures


def plot(results: dict[str, Any], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, entry in results.items():
        points = entry["workers_over_time"]
        if points:
            ax.step([t for t, _ in points], [n for _, n in points], where="post", label=name)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("connected workers")
    ax.set_title(
        f"{args.jobs} jobs, walltime {args.walltime} s, {args.width}x{args.levels} tasks"
        f" of {args.seconds} s"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
