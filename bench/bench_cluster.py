"""Notebook clusters against dask-jobqueue 0.9.0: same Slurm (or PBS) cluster, same run.

Run on the test cluster's login node::

    scripts/testcluster on head .venv/bin/python bench/bench_cluster.py [--repeats 3]
    scripts/testcluster on head env PATH=/opt/pbs/bin:$PATH \
        .venv/bin/python bench/bench_cluster.py --system pbs

With ``--system pbs`` the same measurements compare jobstrap's ``PBSCluster`` with
dask-jobqueue's ``PBSCluster`` on the test cluster's OpenPBS (profile
``testcluster-pbs``, results in ``bench/results/cluster_pbs.json``); PBS has no
scheduling pass to phase against and no start times to the millisecond, so the
``after_start`` split and the random start phase are Slurm's only.

Measures, for jobstrap's ``SLURMCluster`` and dask-jobqueue's ``SLURMCluster`` with
the same job shape (``cores=1``, ``memory=500MiB``: the test nodes are
oversubscribed on purpose so a dozen workers fit):

* **scale**: seconds from ``scale(jobs=N)`` to N connected workers, N = 2, 6, 12;
  each run is also split at the moment Slurm started the last of the N jobs (from
  slurmctld's log, to the millisecond). Slurm starts batch jobs in its periodic
  scheduling pass (every 2 s on the test cluster; ``batch_sched_delay`` keeps it
  from starting them on submission), so every run carries a wait of 0 to 2 s that
  depends on when in the pass's cycle it was submitted, not on the method: the
  part after the start is what the method itself costs;
* **adapt burst**: with ``adapt(minimum_jobs=0, maximum_jobs=3)`` and 60 one-second
  tasks submitted at once: time to the first worker, time until every task is
  done, and time from then until the cluster is back at its minimum (no workers,
  no jobs);
* **controller calls**: the batch commands each phase ran (``sbatch``, ``squeue``,
  ``scancel``...), from jobstrap's batchctl counter and a counting wrapper around
  dask-jobqueue's command runner.

The implementations alternate within every repeat (neither always goes first), the
cluster is emptied between measurements, each measurement starts after a pause of a
random part of Slurm's scheduling interval (``slurm_phase.py``), and every run is
appended, raw numbers included, to ``bench/results/cluster.json``. Timings are what they are on this
machine (2 cores shared by three simulated nodes); the ratios are the point.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from history import append_run, new_run
from slurm_phase import pause_at_random_phase, sched_interval
from stats import STATISTICS, paired_ratio

RESULTS = {
    "slurm": Path(__file__).resolve().parent / "results" / "cluster.json",
    "pbs": Path(__file__).resolve().parent / "results" / "cluster_pbs.json",
}
#: Per batch system: the jobstrap profile, dask-jobqueue's queue, the submit command.
SYSTEMS = {
    "slurm": {"profile": "testcluster", "queue": "debug", "submit": "sbatch"},
    "pbs": {"profile": "testcluster-pbs", "queue": "workq", "submit": "qsub"},
}
SIZES = (2, 6, 12)
BURST_TASKS = 60
BURST_MAX_JOBS = 3
JOB_SHAPE: dict[str, Any] = {"cores": 1, "memory": "500MiB", "walltime": "00:20:00", "processes": 1}
ADAPT = {"interval": "1s", "wait_count": 3}
JOBSTRAP_NAME = "js-bench"
JOBQUEUE_NAME = "jq-bench"

_jobqueue_calls: Counter[str] = Counter()


def _count_jobqueue_calls() -> None:
    """Wrap dask-jobqueue's one command runner so its batch commands are counted."""
    from dask_jobqueue.core import Job

    original = Job._call

    async def counted(cmd: list[str], **kwargs: Any) -> str:
        _jobqueue_calls[cmd[0].rsplit("/", 1)[-1]] += 1
        return await original(cmd, **kwargs)  # type: ignore[no-any-return]

    Job._call = staticmethod(counted)


class Contender:
    """One implementation under test: its cluster and how to read its counters."""

    def __init__(
        self,
        name: str,
        cluster: Any,
        calls: Callable[[], Counter[str]],
        adapt_options: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.cluster = cluster
        self._calls = calls
        #: Its own ``adapt()`` keywords beside the shared ``ADAPT``.
        self.adapt_options = adapt_options or {}

    def calls(self) -> Counter[str]:
        return Counter(self._calls())

    def workers(self) -> int:
        return len(self.cluster.scheduler_info["workers"])

    def plan(self) -> int:
        return len(self.cluster.worker_spec)


def make_jobstrap(system: str) -> Contender:
    from jobstrap import PBSCluster, SLURMCluster

    kind = PBSCluster if system == "pbs" else SLURMCluster
    cluster = kind(SYSTEMS[system]["profile"], job_name=JOBSTRAP_NAME, **JOB_SHAPE)
    # idle_hold=0: dask-jobqueue keeps no idle job, and "back to the minimum" times the
    # loop's own release; the hold's worth is bench_pools.py's to measure.
    return Contender("jobstrap", cluster, lambda: cluster.batchctl.calls, {"idle_hold": 0})


def make_jobqueue(log_directory: Path, system: str) -> Contender:
    from dask_jobqueue import PBSCluster, SLURMCluster

    _count_jobqueue_calls()
    kind = PBSCluster if system == "pbs" else SLURMCluster
    cluster = kind(
        queue=SYSTEMS[system]["queue"],
        job_name=JOBQUEUE_NAME,
        interface="ib0",
        death_timeout=30,
        python=sys.executable,
        log_directory=str(log_directory),
        **JOB_SHAPE,
    )
    return Contender("dask_jobqueue", cluster, lambda: _jobqueue_calls)


def live_jobs(name: str, system: str = "slurm") -> int:
    """Jobs of ours the batch system still has (any state but ended), by name prefix."""
    if system == "pbs":
        # qstat -t: "Job id  Name  User  Time  S  Queue" rows, subjobs but no history;
        # an array's own row ("7[].head") is not a job of its own.
        table = subprocess.run(["qstat", "-t"], capture_output=True, text=True, check=False)
        rows = [line.split() for line in table.stdout.splitlines()[2:]]
        return sum(1 for r in rows if len(r) > 1 and "[]" not in r[0] and r[1].startswith(name))
    out = subprocess.run(
        ["squeue", "--noheader", "--array", "--format=%j"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return sum(1 for line in out.split() if line.startswith(name))


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` every 20 ms; return when it held (``time.perf_counter``)."""
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)
    return time.perf_counter()


def empty(contender: Contender, job_name: str, system: str) -> None:
    """Scale to nothing and wait until no worker and no job is left."""
    contender.cluster.scale(0)
    wait_for(lambda: contender.workers() == 0, 120, f"{contender.name}: workers gone")
    wait_for(lambda: live_jobs(job_name, system) == 0, 120, f"{contender.name}: jobs gone")


def settle() -> None:
    """Let ``SpecCluster``'s delayed lost-worker handling of the last round run out.

    ``SpecCluster`` closes the job of a departed worker ``lost-worker-timeout`` after
    it left, by name; dask-jobqueue reuses worker names after ``scale(0)``, so a new
    job started within that window can be cancelled by the old worker's timer (seen
    here: 11 of 12 workers, forever). Waiting it out measures start-up, not that bug.
    """
    import dask
    from dask.utils import parse_timedelta

    time.sleep(parse_timedelta(dask.config.get("distributed.deploy.lost-worker-timeout")) + 1)


#: What slurmctld logs when it starts a job (its periodic pass, or the backfill pass).
_START_MARKS = ("sched: Allocate JobId=", "_start_job: Started JobId=")


def last_slurm_start(since: float, until: float) -> float | None:
    """When Slurm started the last job between two wall-clock times (epoch seconds).

    Read from the test cluster's slurmctld log, whose timestamps have milliseconds;
    the benchmark is the cluster's only user and the other contender is empty then,
    so every job started in the window is one of this measurement's. ``None`` when
    the log is not readable (not the test cluster).
    """
    from datetime import datetime

    root = Path(os.environ.get("JOBSTRAP_TESTCLUSTER_ROOT", "/var/lib/jobstrap-testcluster"))
    last = None
    path = root / "log" / "slurmctld.log"
    with contextlib.suppress(OSError), open(path, errors="replace") as log:
        for line in log:
            if not line.startswith("[") or not any(mark in line for mark in _START_MARKS):
                continue
            with contextlib.suppress(ValueError):
                when = datetime.fromisoformat(line[1 : line.index("]")]).timestamp()
                if since <= when <= until:
                    last = when
    return last


def measure_scale(
    contender: Contender, job_name: str, jobs: int, system: str = "slurm"
) -> dict[str, Any]:
    before = contender.calls()
    wall = time.time()
    start = time.perf_counter()
    contender.cluster.scale(jobs=jobs)
    submitted = time.perf_counter()
    try:
        done = wait_for(lambda: contender.workers() >= jobs, 300, f"{contender.name}: {jobs}")
    except TimeoutError:  # recorded, not fatal: the other numbers are still worth having
        return {"seconds": None, "timed_out": True, "calls": dict(contender.calls() - before)}
    calls = contender.calls() - before
    started = last_slurm_start(wall, wall + (done - start)) if system == "slurm" else None
    return {
        "seconds": done - start,
        "scale_call_seconds": submitted - start,
        "slurm_start_delay": None if started is None else started - wall,
        "after_start_seconds": None if started is None else wall + (done - start) - started,
        "calls": dict(calls),
    }


def measure_burst(contender: Contender, job_name: str) -> dict[str, Any]:
    from distributed import Client

    cluster = contender.cluster
    adaptive = cluster.adapt(
        minimum_jobs=0, maximum_jobs=BURST_MAX_JOBS, **ADAPT, **contender.adapt_options
    )
    before = contender.calls()
    peak = 0
    result: dict[str, Any] = {}
    try:
        with Client(cluster) as client:  # type: ignore[no-untyped-call]
            start = time.perf_counter()
            futures = client.map(time.sleep, [1.0] * BURST_TASKS, pure=False)
            first = wait_for(lambda: contender.workers() > 0, 300, "first worker")
            result["first_worker_seconds"] = first - start

            def finished() -> bool:
                nonlocal peak
                peak = max(peak, contender.plan())
                return all(f.done() for f in futures)

            burst = wait_for(finished, 600, "burst done")
            result["burst_seconds"] = burst - start
            client.gather(futures)
        back = wait_for(
            lambda: contender.workers() == 0 and contender.plan() == 0,
            300,
            "back to the minimum",
        )
        result["back_to_minimum_seconds"] = back - burst
    except TimeoutError as error:  # recorded, not fatal
        result["timed_out"] = str(error)
    finally:
        adaptive.stop()
    result["peak_jobs"] = peak
    result["calls"] = dict(contender.calls() - before)
    return result


@contextmanager
def contenders(log_directory: Path, system: str) -> Iterator[list[Contender]]:
    ours = make_jobstrap(system)
    theirs = make_jobqueue(log_directory, system)
    try:
        yield [ours, theirs]
    finally:
        for contender in (ours, theirs):
            try:
                contender.cluster.close()
            except Exception as error:  # report, keep closing the other one
                print(f"closing {contender.name}: {error}", file=sys.stderr)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(raw: dict[str, list[dict[str, Any]]], key: str) -> dict[str, Any]:
    """Medians of the runs that finished, their ratio, and how many timed out."""
    ours = median([r[key] for r in raw["jobstrap"] if r.get(key) is not None])
    theirs = median([r[key] for r in raw["dask_jobqueue"] if r.get(key) is not None])
    # Both contenders run once per repeat, so the i-th runs of each are a pair.
    paired = {
        name: {i: r[key] for i, r in enumerate(runs) if r.get(key) is not None}
        for name, runs in raw.items()
    }
    return {
        "jobstrap": ours,
        "dask_jobqueue": theirs,
        "ratio": ours / theirs if theirs else None,
        # 95 % paired-bootstrap intervals of the ratio (of medians, of means).
        "interval": {
            name: paired_ratio(paired["jobstrap"], paired["dask_jobqueue"], statistic)
            for name, statistic in STATISTICS.items()
        },
        "timed_out": {n: sum(1 for r in runs if r.get("timed_out")) for n, runs in raw.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random start phases")
    parser.add_argument("--system", choices=sorted(SYSTEMS), default="slurm")
    parser.add_argument("--output", type=Path, help="default: bench/results/cluster[_pbs].json")
    args = parser.parse_args(argv)
    system = args.system
    output = args.output or RESULTS[system]
    submit = SYSTEMS[system]["submit"]

    import dask_jobqueue
    import distributed

    log_directory = Path.home() / ".jobstrap" / "bench-jobqueue-logs"
    log_directory.mkdir(parents=True, exist_ok=True)
    scale_raw: dict[int, dict[str, list[dict[str, Any]]]] = {
        n: {"jobstrap": [], "dask_jobqueue": []} for n in SIZES
    }
    burst_raw: dict[str, list[dict[str, Any]]] = {"jobstrap": [], "dask_jobqueue": []}
    names = {"jobstrap": JOBSTRAP_NAME, "dask_jobqueue": JOBQUEUE_NAME}

    rng = random.Random(args.seed)
    # PBS has no periodic pass to phase against: its scheduler runs on each submission.
    interval = sched_interval() if system == "slurm" else 0.0
    with contenders(log_directory, system) as pair:
        for repeat in range(args.repeats):
            order = pair if repeat % 2 == 0 else pair[::-1]
            for jobs in SIZES:
                for contender in order:
                    # Both empty before every measurement: idle workers of one must not
                    # share the nodes with the other's start-up.
                    for each in pair:
                        empty(each, names[each.name], system)
                    settle()
                    pause_at_random_phase(rng, interval)
                    result = measure_scale(contender, names[contender.name], jobs, system)
                    scale_raw[jobs][contender.name].append(result)
                    print(f"scale {jobs:2d} {contender.name:13s} {result}", flush=True)
            for contender in order:
                for each in pair:
                    empty(each, names[each.name], system)
                settle()
                pause_at_random_phase(rng, interval)
                result = measure_burst(contender, names[contender.name])
                burst_raw[contender.name].append(result)
                print(f"burst    {contender.name:13s} {result}", flush=True)
        for contender in pair:
            empty(contender, names[contender.name], system)

    scale = {
        str(n): {
            **summarise(scale_raw[n], "seconds"),
            "after_start": summarise(scale_raw[n], "after_start_seconds"),
            "raw": scale_raw[n],
        }
        for n in SIZES
    }
    burst = {
        key: summarise(burst_raw, key)
        for key in ("first_worker_seconds", "burst_seconds", "back_to_minimum_seconds")
    }
    burst["raw"] = burst_raw
    submits_per_scale_up = {
        str(n): [r["calls"].get(submit, 0) for r in scale_raw[n]["jobstrap"]] for n in SIZES
    }
    kind = "PBSCluster" if system == "pbs" else "SLURMCluster"
    results: dict[str, Any] = {
        "benchmark": f"notebook cluster: jobstrap {kind} vs dask-jobqueue {kind}",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": {
            "python": platform.python_version(),
            "distributed": getattr(distributed, "__version__", "?"),
            "dask_jobqueue": dask_jobqueue.__version__,
            "machine": f"{platform.machine()}, {_cpus()} CPUs shared by the test cluster",
            "job_shape": JOB_SHAPE,
            "adapt": {**ADAPT, "minimum_jobs": 0, "maximum_jobs": BURST_MAX_JOBS},
            "repeats": args.repeats,
            "system": system,
            "start_phase": (
                f"uniform over Slurm's {interval:g} s sched_interval, seed {args.seed}"
                if system == "slurm"
                else "none (PBS schedules on submission)"
            ),
            "notes": (
                "jobstrap: TLS with per-cluster certificates (its default); dask-jobqueue:"
                " plain TCP (its default), interface ib0. jobstrap's calls include the"
                " watcher's squeue/qstat polls; dask-jobqueue never asks for job states."
            ),
        },
        "scale_to_workers_seconds": scale,
        "adapt_burst": burst,
        f"jobstrap_{submit}_calls_per_scale_up": submits_per_scale_up,
        "targets": {
            "scale_12_ratio_at_most": 0.6,
            "scale_12_ratio": scale["12"]["ratio"],
            # Not a target: the same without Slurm's start delay (see the module doc).
            "scale_12_ratio_after_start": scale["12"]["after_start"]["ratio"],
            "first_worker_ratio_at_most": 0.7,
            "first_worker_ratio": burst["first_worker_seconds"]["ratio"],
            f"one_{submit}_per_scale_up": all(
                c == 1 for calls in submits_per_scale_up.values() for c in calls
            ),
        },
    }
    environment = results.pop("environment")
    run = new_run(
        "bench/bench_cluster.py",
        date=results.pop("when"),
        versions={k: environment.pop(k) for k in ("python", "distributed", "dask_jobqueue")},
        settings={**environment, "seed": args.seed},
        workload={"job_shape": JOB_SHAPE, "adapt": environment["adapt"]},
        series=cluster_series(scale_raw, burst_raw),
        measures=CLUSTER_MEASURES,
        detail=results,
        # A measurement cut at its timeout is a round this run did not finish.
        finished=not any(
            r.get("timed_out")
            for raw in (*scale_raw.values(), burst_raw)
            for runs in raw.values()
            for r in runs
        ),
    )
    append_run(output, run, benchmark=results["benchmark"], script="bench/bench_cluster.py")
    print(json.dumps(results["targets"], indent=2))
    print(f"appended a run to {output}")
    return 0


# Measure -> the series and the two methods it compares.
CLUSTER_MEASURES: dict[str, dict[str, str]] = {
    **{
        f"scale_{n}{tail}": {
            "series": f"scale_{n}{tail}",
            "ours": "jobstrap",
            "anchor": "dask-jobqueue",
            "unit": "s",
        }
        for n in SIZES
        for tail in ("", "_after_start")
    },
    **{
        name: {"series": name, "ours": "jobstrap", "anchor": "dask-jobqueue", "unit": "s"}
        for name in ("first_adapt_worker", "adapt_burst", "adapt_back_to_minimum")
    },
}
BURST_SERIES = {
    "first_adapt_worker": "first_worker_seconds",
    "adapt_burst": "burst_seconds",
    "adapt_back_to_minimum": "back_to_minimum_seconds",
}


def cluster_series(
    scale_raw: dict[int, dict[str, list[dict[str, Any]]]],
    burst_raw: dict[str, list[dict[str, Any]]],
) -> dict[str, dict[str, list[float | None]]]:
    """Per-round values by series and method (None: the round timed out)."""
    names = {"jobstrap": "jobstrap", "dask_jobqueue": "dask-jobqueue"}
    series: dict[str, dict[str, list[float | None]]] = {}
    for n, raw in scale_raw.items():
        for tail, key in (("", "seconds"), ("_after_start", "after_start_seconds")):
            series[f"scale_{n}{tail}"] = {
                names[m]: [r.get(key) for r in runs] for m, runs in raw.items()
            }
    for name, key in BURST_SERIES.items():
        series[name] = {names[m]: [r.get(key) for r in runs] for m, runs in burst_raw.items()}
    return series


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
