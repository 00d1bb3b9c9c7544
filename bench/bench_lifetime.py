"""A computation longer than every worker job's walltime: jobstrap vs dask-jobqueue 0.9.0.

Run on the test cluster's login node::

    scripts/testcluster on head .venv/bin/python bench/bench_lifetime.py

or, without a batch system, on the local backend (jobstrap's two contenders only)::

    .venv/bin/python bench/bench_lifetime.py --system local --levels 4 --seconds 2

The same workload, in the same run, on three clusters of ``--jobs`` one-worker jobs:

* **dask_jobqueue**: dask-jobqueue's documented trick, same walltime, workers started
  with ``--lifetime <walltime - margin> --lifetime-stagger <stagger>
  --lifetime-restart`` (``worker_extra_args``) and ``adapt(minimum_jobs=N,
  maximum_jobs=N)`` so ended jobs are resubmitted;
* **jobstrap**: ``SLURMCluster(walltime=...)`` (margin automatic unless ``--margin``)
  and ``scale(jobs=N)``; the cluster rotates its jobs itself;
* **no_rotation**: jobstrap with a walltime longer than the run (the reference).

The default workload is the one a user tried: 3 jobs of 2-minute walltime, three
chains of 25 dependent 12-second tasks (``--shape chains``), every result held
(futures kept) to the end; ``--shape grid`` makes each task consume two results of
the level below instead. Reported per contender:

* task starts per task (a scheduler plugin counts transitions into ``processing``,
  per task that started at all; 1.0 means nothing was started twice);
* completion time, or, when cut at ``--timeout``, ``finished: false`` with the tasks
  it had completed (an unfinished run is not a wrong one: ``correct`` is ``null``);
* worker-seconds (the scheduler's worker count, sampled every second, integrated
  over the run) and throughput per worker-second (tasks completed per worker-second:
  extra workers do not count as speed);
* the peak worker count, the target (``--jobs`` × workers per job) and the seconds
  spent above it; for jobstrap, the stated bound of the overlap of a replacement and
  the job it replaces (``overlap_limit_s``) and of the workers held (``peak_bound``).

Appended to ``bench/results/lifetime.json`` (every run), workers over time to
``bench/results/lifetime.png``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from distributed import Client, wait
from distributed.diagnostics.plugin import SchedulerPlugin
from history import append_run, new_run

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE: dict[str, Any] = {"cores": 1, "memory": "500MiB", "processes": 1}
WORKERS_PER_JOB = 1


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


def right_of(i: int, width: int, shape: str) -> int:
    """The second input of task ``i``: its neighbour (grid) or itself (chains)."""
    return (i + 1) % width if shape == "grid" else i


def expected(width: int, levels: int, shape: str = "chains") -> list[int]:
    row = [i + 1 for i in range(width)]
    for level in range(1, levels):
        row = [step(row[i], row[right_of(i, width, shape)], level, 0.0) for i in range(width)]
    return row


class CountStarts(SchedulerPlugin):
    """Counts task starts (transitions into ``processing``) and completions."""

    def __init__(self) -> None:
        self.starts = 0
        self.started: set[str] = set()
        self.completed: set[str] = set()

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "processing":
            self.starts += 1
            self.started.add(str(key))
        elif finish == "memory" and start == "processing":
            self.completed.add(str(key))


def sample(
    count: Callable[[], int], samples: list[tuple[float, int]], stop: threading.Event
) -> None:
    while not stop.wait(1.0):
        samples.append((time.time(), count()))


def occupancy(
    samples: Sequence[tuple[float, int]], began: float, ended: float, target: int
) -> dict[str, Any]:
    """Worker-seconds, peak and seconds above ``target`` from the sampled worker counts.

    Each sample holds until the next one (the last until ``ended``); the time before
    the first sample counts no worker.
    """
    worker_seconds = above = 0.0
    for index, (when, count) in enumerate(samples):
        until = samples[index + 1][0] if index + 1 < len(samples) else ended
        span = max(0.0, min(until, ended) - max(when, began))
        worker_seconds += count * span
        if count > target:
            above += span
    return {
        "worker_seconds": round(worker_seconds, 1),
        "peak_workers": max((n for _, n in samples), default=0),
        "target_workers": target,
        "seconds_above_target": round(above, 1),
    }


def submit_workload(client: Client, args: argparse.Namespace) -> list[list[Any]]:
    rows = [[client.submit(seed, i, args.seconds, pure=False) for i in range(args.width)]]
    for level in range(1, args.levels):
        below = rows[-1]
        rows.append(
            [
                client.submit(
                    step,
                    below[i],
                    below[right_of(i, args.width, args.shape)],
                    level,
                    args.seconds,
                    pure=False,
                )
                for i in range(args.width)
            ]
        )
    return rows


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
        rows = submit_workload(client, args)
        try:
            # distributed's wait raises at its timeout (it does not return the
            # unfinished set): a contender that never finishes is a result, not a crash.
            done = wait(rows[-1], timeout=args.timeout, return_when="ALL_COMPLETED")  # type: ignore[no-untyped-call]
        except TimeoutError:
            done = None
        ended = time.time()
        if done is not None and not done.not_done:
            finished = ended - began
            correct = client.gather(rows[-1]) == expected(args.width, args.levels, args.shape)
        del rows
    stop.set()
    thread.join()
    tasks = args.width * args.levels
    completed = len(counter.completed)
    counts = [n for _, n in samples]
    first = next((i for i, n in enumerate(counts) if n > 0), None)
    used = occupancy(samples, began, ended, args.jobs * WORKERS_PER_JOB)
    result = {
        "tasks": tasks,
        "tasks_completed": completed,
        "task_starts": counter.starts,
        # Per task that started at all, so a run cut short is not charged for the
        # tasks it never reached.
        "starts_per_task": round(counter.starts / max(1, len(counter.started)), 3),
        "completion_s": None if finished is None else round(finished, 1),
        # Cut at --timeout: unfinished, which says nothing about correctness.
        "finished": finished is not None,
        "correct": correct if finished is not None else None,
        **used,
        "throughput_per_worker_s": (
            round(completed / used["worker_seconds"], 4) if used["worker_seconds"] else None
        ),
        "min_workers_after_first": None if first is None else min(counts[first:]),
        "workers_over_time": [(round(t - began, 1), n) for t, n in samples],
    }
    print(name, {k: v for k, v in result.items() if k != "workers_over_time"}, flush=True)
    return result


def rotation_bounds(cluster: Any, jobs: int) -> dict[str, Any]:
    """The stated bounds of a jobstrap cluster's rotation (``cluster._lifetime``)."""
    lifetime = cluster._lifetime
    return {
        "rotations": lifetime.retirements,
        "margin_s": lifetime.margin,
        "stagger_s": lifetime.stagger(jobs),
        "overlap_limit_s": lifetime.overlap_limit,
        "peak_bound": lifetime.peak_jobs(jobs) * WORKERS_PER_JOB,
        "drains": list(lifetime.drains),
    }


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; the defaults are the scenario a user tried (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=("slurm", "local"), default="slurm")
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--walltime", type=int, default=120, help="seconds")
    parser.add_argument(
        "--margin", type=int, default=None, help="seconds (default: jobstrap's automatic one)"
    )
    parser.add_argument("--stagger", type=int, default=20, help="dask-jobqueue's, seconds")
    parser.add_argument("--shape", choices=("chains", "grid"), default="chains")
    parser.add_argument("--width", type=int, default=3)
    parser.add_argument("--levels", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="directory of lifetime.json and the plot"
    )
    return parser.parse_args(argv)


def main() -> None:
    args = arguments()
    results_dir: Path = args.results

    from jobstrap import LocalBatchCluster, SLURMCluster
    from jobstrap.cluster.lifetime import default_margin
    from jobstrap.config.units import format_walltime_slurm

    walltime = format_walltime_slurm(args.walltime)
    margin = default_margin(args.walltime) if args.margin is None else args.margin
    results: dict[str, Any] = {}
    log_directory = Path.home() / ".jobstrap" / "bench-jobqueue-logs"

    def cluster(**settings: Any) -> Any:
        if args.system == "local":
            shape: dict[str, Any] = {"cores": 1, "memory": "300MiB", "poll_interval": 1}
            return LocalBatchCluster(**shape, **settings)
        return SLURMCluster("testcluster", **SHAPE, **settings)

    def ours() -> None:
        with cluster(walltime=walltime, lifetime_margin=margin) as jobs:
            results["jobstrap"] = run("jobstrap", jobs, lambda: jobs.scale(jobs=args.jobs), args)
            results["jobstrap"].update(rotation_bounds(jobs, args.jobs))

    def theirs() -> None:
        from dask_jobqueue import SLURMCluster as JobqueueCluster

        log_directory.mkdir(parents=True, exist_ok=True)
        with JobqueueCluster(
            queue="debug",
            interface="ib0",
            death_timeout=30,
            python=sys.executable,
            log_directory=str(log_directory),
            walltime=walltime,
            worker_extra_args=[
                "--lifetime",
                f"{args.walltime - margin}s",
                "--lifetime-stagger",
                f"{args.stagger}s",
                "--lifetime-restart",
            ],
            **SHAPE,
        ) as jobs:
            results["dask_jobqueue"] = run(
                "dask_jobqueue",
                jobs,
                lambda: jobs.adapt(minimum_jobs=args.jobs, maximum_jobs=args.jobs),
                args,
            )

    def reference() -> None:
        with cluster(walltime="01:00:00") as jobs:
            results["no_rotation"] = run(
                "no_rotation", jobs, lambda: jobs.scale(jobs=args.jobs), args
            )

    contenders = {"dask_jobqueue": theirs, "jobstrap": ours, "no_rotation": reference}
    if args.system == "local":
        del contenders["dask_jobqueue"]  # dask-jobqueue has no local batch system
    for name, contender in contenders.items():
        if args.only is None or name in args.only:
            contender()

    base = results.get("no_rotation", {}).get("completion_s")
    for entry in results.values():
        done = entry.get("completion_s")
        entry["throughput_vs_no_rotation"] = (
            round(base / done, 3) if base and done and entry.get("correct") else None
        )

    import distributed

    versions = {
        "python": platform.python_version(),
        "distributed": getattr(distributed, "__version__", "?"),
    }
    if "dask_jobqueue" in results:
        import dask_jobqueue

        versions["dask_jobqueue"] = dask_jobqueue.__version__
    results_dir.mkdir(parents=True, exist_ok=True)
    series = lifetime_series(results, args.jobs * WORKERS_PER_JOB)
    entry = new_run(
        "bench/bench_lifetime.py",
        versions=versions,
        settings={k: v for k, v in vars(args).items() if k != "results"},
        series=series,
        measures=lifetime_measures(series),
        workload={k: v for k, v in vars(args).items() if k not in ("timeout", "only", "results")},
        detail={"results": results, "unfinished": unfinished(results)},
        finished=all(e.get("finished", True) for e in results.values()),
    )
    append_run(
        results_dir / "lifetime.json",
        entry,
        benchmark="lifetime rotation under a dependent workload",
        script="bench/bench_lifetime.py",
    )
    # The picture shows the newest run; every run's samples stay in lifetime.json.
    plot(results, results_dir / "lifetime.png", args)


LIFETIME_UNITS = {
    "starts_per_task": "starts/task",
    "completion": "s",
    "throughput_per_worker_s": "tasks/worker-s",
    "worker_seconds": "worker-s",
    "peak_workers": "workers",
    "seconds_above_target": "s",
}

#: The measures the README table shows: (series, anchors).
LIFETIME_MEASURES: dict[str, tuple[str, ...]] = {
    "starts_per_task": ("dask_jobqueue", "no_rotation"),
    "completion": ("dask_jobqueue", "no_rotation"),
    "throughput_per_worker_s": ("dask_jobqueue", "no_rotation"),
    "peak_workers": ("target",),
}


def unfinished(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each contender cut at the timeout, with what it had done by then."""
    return {
        name: {"tasks_completed": e["tasks_completed"], "tasks": e["tasks"]}
        for name, e in results.items()
        if not e.get("finished", True)
    }


def lifetime_series(
    results: dict[str, Any], target: int
) -> dict[str, dict[str, list[float | None]]]:
    """One round per run. A contender cut at the timeout has no completion (``None``);
    its starts, worker-seconds, throughput and peak are what it did until then."""
    series: dict[str, dict[str, list[float | None]]] = {
        name: {
            m: [e.get("completion_s" if name == "completion" else name)] for m, e in results.items()
        }
        for name in LIFETIME_UNITS
    }
    series["peak_workers"]["target"] = [float(target)]
    return series


def lifetime_measures(
    series: dict[str, dict[str, list[float | None]]],
) -> dict[str, dict[str, str]]:
    """jobstrap against dask-jobqueue's flags, the run without rotation, the target."""
    measures: dict[str, dict[str, str]] = {}
    for name, anchors in LIFETIME_MEASURES.items():
        methods = series.get(name, {})
        for anchor in anchors:
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
        f" ({args.shape}) of {args.seconds} s"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
