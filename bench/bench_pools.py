"""Idle-aware adapt on a serial workflow: job submissions and total time against
dask-jobqueue's adapt and a static cluster of the same size.

Run on the test cluster's login node (Slurm, the default), as ``bench_cluster.py``
(dask-jobqueue comes with the ``bench`` extra)::

    scripts/testcluster up
    scripts/testcluster on head .venv/bin/python bench/bench_pools.py [--repeats 3] \
        [--until HH:MM]
    scripts/testcluster down

or anywhere, as a quick check on the local backend (no dask-jobqueue there)::

    python bench/bench_pools.py --system local --repeats 1

The workload is a serial loop of ``--steps`` steps (10); each step maps
``TASKS`` tasks of ``TASK_SECONDS`` onto the cluster and gathers them, then the
client pauses ``--gap`` seconds (5) before the next step, as a notebook does
between cells. Every method starts from no jobs and at most ``JOBS`` jobs:

* ``idle-aware``: jobstrap's ``adapt(minimum_jobs=0, maximum_jobs=JOBS,
  idle_hold="auto")`` (the default hold): idle jobs are kept for the pool's
  observed queue wait (at least 15 s) before they are released;
* ``no-hold``: jobstrap's ``adapt(..., idle_hold=0)``: distributed's loop counting
  jobs, which releases idle jobs once it has seen them idle ``wait_count`` times;
* ``dask-jobqueue``: dask-jobqueue's ``adapt(minimum_jobs=0, maximum_jobs=JOBS)``
  (Slurm only), which releases the idle workers in every gap (dask-jobqueue#701);
* ``static``: jobstrap's ``scale(jobs=JOBS)`` when the clock starts, never released.

Measured per round: the job submissions after the first step (jobs, counted from
jobstrap's job history and from dask-jobqueue's ``sbatch`` calls), the loop's total
time from the first step's submission to the last step's results (every method
starts with no job, so the first step carries one queue wait and worker start for
all of them), and the time after the first step (steps 2 to 10 and the gaps: what
the release policy alone changes). The methods alternate within each repeat; each
round builds a fresh cluster, waits until the batch system has no job of the last
one and, on Slurm, pauses a random part of the scheduling interval before it starts
(``slurm_phase.py``). A round that fails is recorded as missing and the run goes on;
``--until`` (UTC) starts no repeat that would not end by then. Every run is
appended, raw numbers included, to ``bench/results/pools.json``
(``pools_local.json`` for the local backend).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from history import append_run, new_run
from slurm_phase import pause_at_random_phase, sched_interval

RESULTS = {
    "slurm": Path(__file__).resolve().parent / "results" / "pools.json",
    "local": Path(__file__).resolve().parent / "results" / "pools_local.json",
}
PROFILES = {"slurm": "testcluster", "local": None}
JOBS = 2
TASKS = 4
TASK_SECONDS = 1.0
JOB_SHAPE: dict[str, Any] = {"cores": 1, "memory": "500MiB", "walltime": "00:30:00", "processes": 1}
# target_duration 1 s: a step's tasks ask for the maximum of jobs, so every method
# runs the loop on the same number of jobs and the times compare.
ADAPT: dict[str, Any] = {"interval": "1s", "wait_count": 3, "target_duration": "1s"}
JOB_NAME = {"idle-aware": "js-idle", "no-hold": "js-nohold", "static": "js-static"}
JOBQUEUE_NAME = "jq-pools"


Method = tuple[Any, Callable[[], int], Callable[[], None]]


def _nothing() -> None:
    pass


def _jobstrap(system: str, method: str) -> Method:
    """The cluster, its submission counter, and what it does when the clock starts."""
    from jobstrap import LocalBatchCluster, SLURMCluster

    kind = SLURMCluster if system == "slurm" else LocalBatchCluster
    shape = JOB_SHAPE if system == "slurm" else {**JOB_SHAPE, "memory": "300MiB"}
    cluster = kind(PROFILES[system], job_name=JOB_NAME[method], **shape)
    start: Callable[[], None] = _nothing
    if method == "idle-aware":
        cluster.adapt(minimum_jobs=0, maximum_jobs=JOBS, idle_hold="auto", **ADAPT)
    elif method == "no-hold":
        cluster.adapt(minimum_jobs=0, maximum_jobs=JOBS, idle_hold=0, **ADAPT)
    else:
        # Scaled when the clock starts: every method starts from no job.
        def start() -> None:
            cluster.scale(jobs=JOBS)

    return cluster, lambda: len(cluster.job_history), start


def _jobqueue() -> Method:
    from bench_cluster import _count_jobqueue_calls, _jobqueue_calls
    from dask_jobqueue import SLURMCluster

    if not getattr(_jobqueue, "counting", False):
        _count_jobqueue_calls()
        _jobqueue.counting = True  # type: ignore[attr-defined]
    log_directory = Path.home() / ".jobstrap" / "bench-jobqueue-logs"
    log_directory.mkdir(parents=True, exist_ok=True)
    cluster = SLURMCluster(
        queue="debug",
        job_name=JOBQUEUE_NAME,
        interface="ib0",
        death_timeout=30,
        python=sys.executable,
        log_directory=str(log_directory),
        **JOB_SHAPE,
    )
    cluster.adapt(minimum_jobs=0, maximum_jobs=JOBS, **ADAPT)
    start = _jobqueue_calls["sbatch"]
    return cluster, lambda: _jobqueue_calls["sbatch"] - start, _nothing


def _jobstrap_where(dask_worker: Any = None) -> str:
    """Run on a worker: where its jobstrap comes from (None for dask-jobqueue's)."""
    try:
        import jobstrap
    except ImportError:
        return "-"
    return str(jobstrap.__file__)


def serial_loop(
    cluster: Any,
    submissions: Callable[[], int],
    steps: int,
    gap: float,
    begin: Callable[[], None] = _nothing,
) -> dict[str, Any]:
    """Run the loop on ``cluster``; the submissions after step 1 and the times."""
    from distributed import Client

    with Client(cluster) as client:  # type: ignore[no-untyped-call]
        start = time.perf_counter()
        begin()
        ends: list[float] = []
        after_first = 0
        for step in range(steps):
            futures = client.map(time.sleep, [TASK_SECONDS] * TASKS, pure=False)
            client.gather(futures)
            ends.append(time.perf_counter() - start)
            if step == 0:
                after_first = submissions()
                where = sorted(set(client.run(_jobstrap_where).values()))
            if step < steps - 1:
                time.sleep(gap)
        total = time.perf_counter() - start
    return {
        "total_seconds": total,
        "after_first_step_seconds": total - ends[0],
        "submissions": submissions(),
        "submissions_after_first_step": submissions() - after_first,
        "step_ends": ends,
        "workers_jobstrap": where,
    }


def wait_no_jobs(system: str, name: str, timeout: float = 180) -> None:
    """Wait until the batch system has no job of the last round (Slurm only)."""
    if system != "slurm":
        return
    from bench_cluster import live_jobs

    deadline = time.monotonic() + timeout
    while live_jobs(name) and time.monotonic() < deadline:
        time.sleep(0.5)


def run_round(system: str, method: str, steps: int, gap: float) -> dict[str, Any]:
    make = _jobqueue if method == "dask-jobqueue" else lambda: _jobstrap(system, method)
    cluster, submissions, begin = make()
    try:
        result = serial_loop(cluster, submissions, steps, gap, begin)
    finally:
        cluster.close()
        wait_no_jobs(system, JOB_NAME.get(method, JOBQUEUE_NAME))
    return result


def _seconds_until(hhmm: str | None) -> float:
    """Seconds from now to ``HH:MM`` UTC (today, or tomorrow if it has passed)."""
    if hhmm is None:
        return float("inf")
    now = datetime.datetime.now(datetime.timezone.utc)
    hour, minute = (int(part) for part in hhmm.split(":"))
    end = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if end < now - datetime.timedelta(hours=12):
        end += datetime.timedelta(days=1)
    return (end - now).total_seconds()


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=sorted(RESULTS), default="slurm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--gap", type=float, default=5.0)
    parser.add_argument("--output", type=Path, help="default: bench/results/pools[_local].json")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random start phases")
    parser.add_argument("--until", help="UTC HH:MM: start no repeat that would end later")
    args = parser.parse_args(argv)
    system = args.system

    import distributed

    import jobstrap

    print(f"jobstrap from {jobstrap.__file__}", flush=True)

    methods = ["idle-aware", "no-hold", "static"]
    versions: dict[str, Any] = {
        "python": platform.python_version(),
        "distributed": getattr(distributed, "__version__", "?"),
        "jobstrap": getattr(jobstrap, "__version__", "?"),
    }
    if system == "slurm":
        import dask_jobqueue

        methods.append("dask-jobqueue")
        versions["dask_jobqueue"] = dask_jobqueue.__version__
    raw: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    rng = random.Random(args.seed)
    interval = sched_interval() if system == "slurm" else 0.0
    longest_repeat = 0.0
    finished = True
    for repeat in range(args.repeats):
        # The first repeat has no measure of its own length: guess it from the workload.
        guess = longest_repeat or len(methods) * (args.steps * (args.gap + 5) + 30)
        if guess > _seconds_until(args.until):
            print(f"stopping before repeat {repeat}: it would end after {args.until}")
            finished = False
            break
        began = time.monotonic()
        order = methods if repeat % 2 == 0 else methods[::-1]
        for method in order:
            pause_at_random_phase(rng, interval)
            try:
                result = run_round(system, method, args.steps, args.gap)
            except Exception as error:  # recorded as missing; the other rounds still count
                result = {"error": f"{type(error).__name__}: {error}"[:500]}
            raw[method].append(result)
            shown = {k: v for k, v in result.items() if k != "step_ends"}
            print(f"round {repeat} {method:13s} {shown}", flush=True)
        longest_repeat = max(longest_repeat, time.monotonic() - began)

    def series(key: str) -> dict[str, list[float | None]]:
        return {m: [r.get(key) for r in runs] for m, runs in raw.items()}

    loop = series("total_seconds")
    later = series("after_first_step_seconds")
    again = series("submissions_after_first_step")
    static = _median(loop["static"])

    def vs_static(method: str) -> float | None:
        ours = _median(loop[method])
        return None if not (ours and static) else round(ours / static, 3)

    targets: dict[str, Any] = {
        "idle_aware_submissions_after_first_step": again["idle-aware"],
        "no_hold_submissions_after_first_step": again["no-hold"],
        "idle_aware_submits_nothing_after_step_1": all(n == 0 for n in again["idle-aware"]),
        "idle_aware_vs_static_time": vs_static("idle-aware"),
        "no_hold_vs_static_time": vs_static("no-hold"),
        "idle_aware_vs_static_time_at_most": 1.1,
    }
    if "dask-jobqueue" in raw:
        targets["dask_jobqueue_submissions_after_first_step"] = again["dask-jobqueue"]
        targets["dask_jobqueue_vs_static_time"] = vs_static("dask-jobqueue")
    measures = {
        "loop_vs_static": {
            "series": "loop_seconds",
            "ours": "idle-aware",
            "anchor": "static",
            "unit": "s",
        },
        "loop_no_hold_vs_static": {
            "series": "loop_seconds",
            "ours": "no-hold",
            "anchor": "static",
            "unit": "s",
        },
        "after_first_step_vs_static": {
            "series": "after_first_step_seconds",
            "ours": "idle-aware",
            "anchor": "static",
            "unit": "s",
        },
    }
    if "dask-jobqueue" in raw:
        measures["loop_vs_dask_jobqueue"] = {
            "series": "loop_seconds",
            "ours": "idle-aware",
            "anchor": "dask-jobqueue",
            "unit": "s",
        }
        measures["loop_dask_jobqueue_vs_static"] = {
            "series": "loop_seconds",
            "ours": "dask-jobqueue",
            "anchor": "static",
            "unit": "s",
        }
    workload = {
        "steps": args.steps,
        "gap_seconds": args.gap,
        "tasks": TASKS,
        "task_seconds": TASK_SECONDS,
        "maximum_jobs": JOBS,
        "job_shape": JOB_SHAPE,
        "adapt": ADAPT,
        "system": system,
    }
    run = new_run(
        "bench/bench_pools.py",
        versions=versions,
        settings={"repeats": args.repeats, **workload},
        workload=workload,
        series={
            "loop_seconds": loop,
            "after_first_step_seconds": later,
            "submissions_after_first_step": again,
        },
        measures=measures,
        detail={"raw": raw, "targets": targets},
        finished=finished,
    )
    output = args.output or RESULTS[system]
    benchmark = "idle-aware adapt on a serial loop: submissions and time vs static"
    append_run(output, run, benchmark=benchmark, script="bench/bench_pools.py")
    print(json.dumps(targets, indent=2))
    print(f"appended a run to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
