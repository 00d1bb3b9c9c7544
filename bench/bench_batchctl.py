"""Controller calls and submission time: jobstrap's batchctl against dask-jobqueue.

Run on the test cluster's login node (not a test; it prints and writes numbers)::

    scripts/testcluster on head .venv/bin/python bench/bench_batchctl.py [--window 60]

What it measures, all against the real Slurm of ``scripts/testcluster`` in one run:

1. **Scaling to N = 10 and 100 jobs**: every sbatch/squeue/sacct/scancel/scontrol
   call from submitting N jobs, seeing all of them in the queue once, and cancelling
   them. jobstrap: ``BatchControl.submit(count=N)`` + one watcher poll + ``cancel``,
   counted by ``batchctl.calls``. dask-jobqueue 0.9.0: ``SLURMCluster.scale(jobs=N)``
   and ``close()``, counted by wrapping ``Job._call`` (its only way to run a
   command).
2. **Tracking over a window** (default 10 min): calls made while N jobs run. The
   watcher starts at 5 s and doubles its interval while nothing changes (cap 60 s).
   dask-jobqueue never asks Slurm about its jobs, so it makes no calls (and does not
   know if they are pending, running or gone); a naive poller that asks once per job
   every 5 s is shown as a computed reference, not measured.
3. **sbatch wall time for N = 100**: arrays (4 calls at MaxArraySize 33) against a
   loop of 100 plain submissions (one sbatch per job, as dask-jobqueue does).
4. **Watcher memory for 1,000 tracked jobs** (tracemalloc, after a real poll).

Appends a run to ``bench/results/batchctl.json`` and prints the ratios.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from history import append_run, new_run

from jobstrap.batchctl.commands import TokenBucket
from jobstrap.batchctl.control import BatchControl
from jobstrap.batchctl.submit import Submission
from jobstrap.jobs.spec import JobSpec, Role, new_tag

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "batchctl.json"
SCRATCH = REPO / ".testcluster" / "scratch"
COMMANDS = ("sbatch", "squeue", "sacct", "scancel", "scontrol")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def controller_calls(counts: Counter[str]) -> dict[str, int]:
    calls = {c: int(counts.get(c, 0)) for c in COMMANDS}
    calls["total"] = sum(calls.values())
    return calls


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def quiet_controller(timeout: float = 120.0) -> float:
    """Wait until none of our jobs is left in the queue; return the seconds waited.

    Every timed submission starts from an idle controller: right after a scenario
    cancels 100 jobs, slurmctld is still retiring them (epilogs, accounting), and an
    sbatch sent then waits for it. Runs before this wait measured the same 100-job
    array at 0.12 s in the scaling section and 0.76 s in the wall-time section,
    which came right after the tracking window's jobs were cancelled.
    """
    started = time.monotonic()

    def empty() -> bool:
        argv = ["squeue", "-h", "-u", getpass.getuser(), "-o", "%i"]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return done.returncode == 0 and not done.stdout.strip()

    wait_until(empty, timeout, "our jobs to leave the queue")
    return round(time.monotonic() - started, 2)


def job_spec(run_dir: Path, seconds: int) -> JobSpec:
    return JobSpec(
        name="bench-gw",
        role=Role.WORKERS,
        run_dir=str(run_dir),
        tag=new_tag(),
        command=("sleep", str(seconds)),
        walltime=max(600, seconds + 120),
        queue="debug",
        memory=10 * 2**20,
        launcher="none",
        log_directory=str(run_dir / "logs"),
    )


def fresh_control(bucket: TokenBucket | None = None) -> BatchControl:
    # Forget the cached site limit so each scenario pays for reading it once.
    BatchControl._array_limits.clear()
    return BatchControl("slurm", bucket=bucket)


# --- jobstrap -----------------------------------------------------------------------------


def jobstrap_scale(run_dir: Path, n: int) -> dict[str, Any]:
    quiet_controller()
    batchctl = fresh_control()
    started = time.perf_counter()
    submission = batchctl.submit(job_spec(run_dir, 600), count=n)
    submit_seconds = time.perf_counter() - started
    # Every job's state in one query (what one watcher poll costs).
    records = batchctl.status(submission.job_ids)
    seen = sum(1 for r in records.values() if r.state.is_active)
    batchctl.cancel(submission.batch_ids)
    return {
        "jobs": len(submission.job_ids),
        "seen_in_queue": seen,
        "submit_seconds": round(submit_seconds, 3),
        "calls": controller_calls(batchctl.calls),
    }


def jobstrap_tracking(run_dir: Path, n: int, window: float) -> tuple[BatchControl, Submission]:
    batchctl = fresh_control()
    submission = batchctl.submit(job_spec(run_dir, int(window) + 300), count=n)
    batchctl.watcher.configure(poll_interval=5, max_interval=60)
    return batchctl, submission


# --- dask-jobqueue ------------------------------------------------------------------------


@contextmanager
def counting_jobqueue_calls() -> Iterator[Counter[str]]:
    """Count every command dask-jobqueue runs (``Job._call`` is its only way out)."""
    from dask_jobqueue.core import Job

    counts: Counter[str] = Counter()
    original = Job._call

    async def counted(cmd: list[str], **kwargs: Any) -> str:
        counts[Path(cmd[0]).name] += 1
        result: str = await original(cmd, **kwargs)
        return result

    Job._call = staticmethod(counted)
    try:
        yield counts
    finally:
        Job._call = original


def jobqueue_cluster(log_dir: Path, walltime: str) -> Any:
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(
        cores=1,
        processes=1,
        memory="100MB",
        queue="debug",
        walltime=walltime,
        python=sys.executable,
        log_directory=str(log_dir),
        scheduler_options={"dashboard_address": None},
    )


def jobqueue_scale(log_dir: Path, n: int) -> dict[str, Any]:
    quiet_controller()
    with counting_jobqueue_calls() as counts:
        cluster = jobqueue_cluster(log_dir, "00:10:00")
        started = time.perf_counter()
        cluster.scale(jobs=n)
        wait_until(lambda: counts["sbatch"] >= n, 300, f"{n} dask-jobqueue submissions")
        submit_seconds = time.perf_counter() - started
        cluster.close()
        wait_until(lambda: counts["scancel"] >= n, 300, f"{n} dask-jobqueue cancellations")
    return {
        "jobs": n,
        "submit_seconds": round(submit_seconds, 3),
        "calls": controller_calls(counts),
    }


# --- scenarios ----------------------------------------------------------------------------


def scaling(run_dir: Path, sizes: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in sizes:
        log(f"scale to {n}: jobstrap")
        ours = jobstrap_scale(run_dir, n)
        log(f"scale to {n}: dask-jobqueue")
        theirs = jobqueue_scale(run_dir / "jobqueue", n)
        out[str(n)] = {
            "jobstrap": ours,
            "dask_jobqueue": theirs,
            "sbatch_ratio": theirs["calls"]["sbatch"] / max(1, ours["calls"]["sbatch"]),
            "total_ratio": theirs["calls"]["total"] / max(1, ours["calls"]["total"]),
        }
        log(f"  jobstrap {ours['calls']}  dask-jobqueue {theirs['calls']}")
    return out


def tracking(run_dir: Path, n: int, window: float) -> dict[str, Any]:
    log(f"tracking {n} jobs for {window:g} s (jobstrap and dask-jobqueue side by side)")
    batchctl, submission = jobstrap_tracking(run_dir, n, window)
    with counting_jobqueue_calls() as jq_counts:
        cluster = jobqueue_cluster(run_dir / "jobqueue", "00:30:00")
        cluster.scale(jobs=n)
        wait_until(lambda: jq_counts["sbatch"] >= n, 300, "dask-jobqueue submissions")
        before_ours = Counter(batchctl.calls)
        before_theirs = Counter(jq_counts)
        changes: list[tuple[float, str, str]] = []
        started = time.monotonic()
        batchctl.watcher.track(
            submission.job_ids,
            name=submission.name,
            on_change=lambda j, old, new: changes.append(
                (round(time.monotonic() - started, 1), j, new.state.value)
            ),
        )
        time.sleep(window)
        batchctl.watcher.close()
        ours = batchctl.calls - before_ours
        theirs = jq_counts - before_theirs
        final_interval = batchctl.watcher.interval
        cluster.close()
    batchctl.cancel(submission.batch_ids)
    naive = n * int(window // 5)
    return {
        "jobs": n,
        "window_seconds": window,
        "jobstrap": {
            "calls": controller_calls(ours),
            "polls": batchctl.watcher.polls,
            "interval_at_end_seconds": final_interval,
            "state_changes": len(changes),
            "knows_states": True,
        },
        "dask_jobqueue": {"calls": controller_calls(theirs), "knows_states": False},
        "naive_per_job_poller_every_5s_computed": {"squeue": naive},
        "naive_to_jobstrap_ratio": naive / max(1, ours.get("squeue", 0) + ours.get("sacct", 0)),
    }


def sbatch_wall_time(run_dir: Path, n: int) -> dict[str, Any]:
    log(f"sbatch wall time for {n} jobs: arrays")
    # A bucket that never waits: this measures sbatch, not jobstrap's rate limit.
    unlimited = TokenBucket(10_000, 10_000)
    batchctl = fresh_control(unlimited)
    quiet_controller()
    started = time.perf_counter()
    arrays = batchctl.submit(job_spec(run_dir, 600), count=n)
    array_seconds = time.perf_counter() - started
    array_calls = controller_calls(batchctl.calls)
    batchctl.cancel(arrays.batch_ids)
    log(f"sbatch wall time for {n} jobs: one sbatch per job")
    loop_control = fresh_control(unlimited)
    quiet_controller()
    ids: list[str] = []
    started = time.perf_counter()
    for _ in range(n):
        ids += loop_control.submit(job_spec(run_dir, 600)).job_ids
    loop_seconds = time.perf_counter() - started
    loop_calls = controller_calls(loop_control.calls)
    loop_control.cancel(ids)
    return {
        "jobs": n,
        "array": {"seconds": round(array_seconds, 3), "calls": array_calls},
        "loop": {"seconds": round(loop_seconds, 3), "calls": loop_calls},
        "speedup": loop_seconds / array_seconds,
    }


def watcher_memory(run_dir: Path, n: int) -> dict[str, Any]:
    log(f"watcher memory for {n} tracked jobs")
    batchctl = fresh_control()
    submission = batchctl.submit(job_spec(run_dir, 600), count=n)
    try:
        tracemalloc.start()
        baseline = tracemalloc.take_snapshot()
        watcher = batchctl.watcher
        watcher.track(submission.job_ids, name=submission.name)
        watcher.close()
        watcher.poll()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        used = sum(stat.size_diff for stat in after.compare_to(baseline, "filename"))
        known = sum(1 for r in watcher.records().values() if r.state.is_active)
    finally:
        batchctl.cancel(submission.batch_ids)
    return {
        "jobs": n,
        "arrays": len(submission.batch_ids),
        "seen_in_queue": known,
        "bytes": used,
        "mib": round(used / 2**20, 3),
        "bytes_per_job": round(used / n),
    }


def cluster_facts() -> dict[str, Any]:
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                            check=True, timeout=60).stdout  # fmt: skip
    facts = {}
    for line in config.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("SLURM_VERSION", "MaxArraySize", "MinJobAge", "ClusterName"):
            facts[key.strip()] = value.strip()
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=600.0, help="tracking window, seconds")
    parser.add_argument("--track-jobs", type=int, default=10, help="jobs tracked in the window")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--memory-jobs", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if shutil.which("sbatch") is None:
        parser.error("no sbatch here: run on the test cluster's login node")
    logging.basicConfig(level=logging.WARNING)
    import dask_jobqueue  # noqa: F401  (distributed sets its log levels on import)

    # dask-jobqueue's scheduler logs every worker it loses when its cluster closes.
    for noisy in ("distributed", "dask_jobqueue", "tornado"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)

    run_dir = SCRATCH / f"bench-batchctl-{uuid.uuid4().hex[:8]}"
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "jobqueue").mkdir()
    started = time.time()
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "cluster": cluster_facts(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
    }
    results["scaling"] = scaling(run_dir, args.sizes)
    results["tracking"] = tracking(run_dir, args.track_jobs, args.window)
    results["sbatch_wall_time"] = sbatch_wall_time(run_dir, max(args.sizes))
    results["watcher_memory"] = watcher_memory(run_dir, args.memory_jobs)
    results["duration_seconds"] = round(time.time() - started, 1)

    series = batchctl_series(results)
    run = new_run(
        "bench/bench_batchctl.py",
        date=results["started"],
        versions={
            "python": results["machine"]["python"],
            "slurm": results["cluster"].get("SLURM_VERSION"),
        },
        settings={
            "window": args.window,
            "track_jobs": args.track_jobs,
            "sizes": args.sizes,
            "memory_jobs": args.memory_jobs,
            "cluster": results["cluster"],
            "cpus": results["machine"]["cpus"],
        },
        series=series,
        measures=batchctl_measures(series),
        detail=results,
    )
    append_run(
        args.output,
        run,
        benchmark="batch control: sbatch calls, submit time, tracking, memory",
        script="bench/bench_batchctl.py",
    )
    shutil.rmtree(run_dir, ignore_errors=True)

    print("\n== batchctl benchmark ==")
    for n, row in results["scaling"].items():
        ours, theirs = row["jobstrap"]["calls"], row["dask_jobqueue"]["calls"]
        print(f"scale to {n:>4}: sbatch {ours['sbatch']} vs {theirs['sbatch']} "
              f"({row['sbatch_ratio']:.1f}x fewer); all calls {ours['total']} vs "
              f"{theirs['total']} ({row['total_ratio']:.1f}x)")  # fmt: skip
    track = results["tracking"]
    print(f"tracking {track['jobs']} jobs for {track['window_seconds']:g} s: jobstrap "
          f"{track['jobstrap']['calls']['total']} calls ({track['jobstrap']['polls']} polls); "
          f"dask-jobqueue {track['dask_jobqueue']['calls']['total']} calls (knows no states); "
          f"a per-job poller every 5 s: {track['naive_per_job_poller_every_5s_computed']['squeue']}"
          )  # fmt: skip
    wall = results["sbatch_wall_time"]
    print(f"sbatch wall time for {wall['jobs']}: arrays {wall['array']['seconds']:.2f} s vs "
          f"loop {wall['loop']['seconds']:.2f} s ({wall['speedup']:.1f}x)")  # fmt: skip
    memory = results["watcher_memory"]
    print(f"watcher memory for {memory['jobs']} tracked jobs: {memory['mib']:.2f} MiB "
          f"({memory['bytes_per_job']} bytes/job)")  # fmt: skip
    print(f"appended a run to {args.output}")
    return 0


# Who is who in the rows: dask-jobqueue's own submissions are the anchor; a loop of
# single-job submissions through jobstrap's batch control is jobstrap code, shown only
# to isolate what arrays save, never as dask-jobqueue's figure.
OURS_ARRAYS = "jobstrap (arrays)"
OURS_LOOP = "jobstrap batch control, one sbatch per job in a loop (not an anchor)"
THEIRS = "dask-jobqueue"


def batchctl_series(results: dict[str, Any]) -> dict[str, dict[str, list[float | None]]]:
    """One round per run: submission seconds and sbatch calls per size, and the sbatch wall
    time of arrays against jobstrap's own single-job loop."""
    series: dict[str, dict[str, list[float | None]]] = {}
    for n, row in results.get("scaling", {}).items():
        ours, theirs = row["jobstrap"], row["dask_jobqueue"]
        series[f"submit_{n}"] = {
            OURS_ARRAYS: [ours["submit_seconds"]],
            THEIRS: [theirs["submit_seconds"]],
        }
        series[f"sbatch_calls_{n}"] = {
            OURS_ARRAYS: [ours["calls"]["sbatch"]],
            THEIRS: [theirs["calls"]["sbatch"]],
        }
    wall = results.get("sbatch_wall_time")
    if wall:
        series[f"sbatch_wall_time_{wall['jobs']}"] = {
            OURS_ARRAYS: [wall["array"]["seconds"]],
            OURS_LOOP: [wall["loop"]["seconds"]],
        }
    return series


def batchctl_measures(
    series: dict[str, dict[str, list[float | None]]],
) -> dict[str, dict[str, str]]:
    """``submit_N_vs_dask_jobqueue`` and ``sbatch_calls_N_vs_dask_jobqueue`` against
    dask-jobqueue's real submissions; ``sbatch_wall_time_N_arrays_vs_own_loop`` against
    jobstrap's own loop."""
    measures: dict[str, dict[str, str]] = {}
    for name, methods in series.items():
        if THEIRS in methods:
            unit = "calls" if name.startswith("sbatch_calls") else "s"
            measures[f"{name}_vs_dask_jobqueue"] = {
                "series": name,
                "ours": OURS_ARRAYS,
                "anchor": THEIRS,
                "unit": unit,
            }
        elif OURS_LOOP in methods:
            measures[f"{name}_arrays_vs_own_loop"] = {
                "series": name,
                "ours": OURS_ARRAYS,
                "anchor": OURS_LOOP,
                "unit": "s",
            }
    return measures


if __name__ == "__main__":
    sys.exit(main())
