"""Submit-to-result latency of a graph run as a batch job, three ways, same cluster, same run.

* **jobstrap(one-node)**: ``jobstrap.submit(graph, profile=..., nodes=1, cores=4)``, the
  allocation submitit gets: a one-node graph job that asks for no distributed workers
  is computed in the job's own process with Dask's threads (the default,
  ``graph_scheduler: auto``; no scheduler, workers or TLS), the future reads
  ``result.pkl``. This is the variant measured against submitit
  (``*_one_node_vs_submitit``);
* **jobstrap**: ``jobstrap.submit(graph, profile=..., nodes=2).result()``: the graph is
  cloudpickled into a run directory, one job runs scheduler, runner and workers as MPI
  ranks (``srun --mpi=pmi2``, TLS over ib0), the future reads ``result.pkl``;
* **sbatch + dask-mpi**: what people write by hand: an sbatch script whose
  ``srun --mpi=pmi2 python driver.py`` calls ``dask_mpi.initialize()`` and builds and
  computes the same graph on the same ranks (plain TCP over ib0), writing the result
  to a file that this side polls for as often as ``JobFuture`` does;
* **jobstrap (tls-everywhere)**: the same with ``JOBSTRAP_SAME_HOST_SOCKETS=0``: TLS
  also between the ranks of one node (with 2 ranks per node, both workers share the
  second node, so every worker-to-worker byte is a same-host one);
* **jobstrap (tcp, no nanny)**: the same with dask-mpi's settings (``protocol: tcp``,
  ``nanny: false``), to show what TLS and nannies cost;
* **submitit**: the same computation as a function (``submitit.AutoExecutor``), which
  runs it in one process of a one-node job with dask's threaded scheduler: submitit
  ships a function, not a cluster.

Scenarios: a trivial graph (``sum([1, 2, 3])`` as a delayed) measures pure overhead;
the chunked-array example (``(x + x.T) - x.mean(axis=0)`` on N x N, its sum as a
checksum) adds real work. Runs are interleaved (one of each method per round), so
the cluster's load affects all alike; each round starts with the next method, and
each run starts once the previous run's job has left the queue and every node is
idle again (a node still completing a job delays the next start), after a pause of
a random part of Slurm's scheduling interval (``slurm_phase.py``: without it, the
wait for Slurm's next pass is locked to the previous method's duration). Each run is
also split at the batch script's launch (from slurmd's log, to the millisecond):
Slurm starts a job when its scheduler next looks, 0.4 to 2 s here, a wait that
says nothing about the method and that only many rounds average out.

Run on the test cluster's login node; appends a run to ``bench/results/batch.json``::

    scripts/testcluster on head .venv/bin/python bench/bench_batch.py [--repeats 3] [--size 10000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from history import append_run, new_run
from slurm_phase import pause_at_random_phase, sched_interval
from stats import STATISTICS, paired_ratio

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "batch.json"
PROFILE = "testcluster"
NODES = 2
TASKS_PER_NODE = 2  # what jobstrap's batch mode picks for 2 nodes: 4 ranks in all
MEMORY = "1GiB"
WALLTIME_MIN = 10

SCENARIOS = {
    "trivial": "import dask\ngraph = dask.delayed(sum)([1, 2, 3])\n",
    "array_expression": (
        "import dask.array as da\n"
        "x = da.random.default_rng(42).random(({n}, {n}), chunks=({c}, {c}))\n"
        "graph = ((x + x.T) - x.mean(axis=0)).sum()\n"
    ),
}

# MPI first: importing dask_mpi imports distributed and numpy, and with the mpich wheel
# under srun --mpi=pmi2, MPI_Init after those imports failed in most runs here
# (corrupted PMI-2 requests, UCX address errors); jobstrap initialises MPI first too.
DRIVER = """\
from mpi4py import MPI  # noqa: F401
import os, pickle, sys
from dask_mpi import initialize

initialize(interface="ib0", nthreads=1)

from distributed import Client

client = Client()
{code}
value = client.compute(graph).result()
tmp = sys.argv[1] + ".tmp"
with open(tmp, "wb") as handle:
    pickle.dump(value, handle)
os.replace(tmp, sys.argv[1])
"""


def build(code: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    return namespace["graph"]


def compute_with_threads(code: str) -> Any:
    """What the submitit job runs: the same graph, one process, dask's threads."""
    from dask.base import compute

    namespace: dict[str, Any] = {}
    exec(code, namespace)
    return compute(namespace["graph"], scheduler="threads")[0]  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Run:
    """One run: seconds from submission to result in hand, and when it was submitted."""

    seconds: float
    value: Any
    job_id: str
    submitted_at: float  # time.time() when the clock started


class RunFailedError(Exception):
    """One run ended without a result; the message says how (kept in the report)."""

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


def run_jobstrap(code: str, workdir: Path, timeout: float, **settings: Any) -> Run:
    import jobstrap
    from jobstrap.errors import JobFailedError

    graph = build(code)  # built before the clock starts, as with the others
    wall, started = time.time(), time.perf_counter()
    settings = {"nodes": NODES, **settings}
    future = jobstrap.submit(
        graph,
        profile=PROFILE,
        memory=MEMORY,
        walltime=f"00:{WALLTIME_MIN:02d}:00",
        **settings,
    )
    try:
        value = future.result(timeout=timeout)
    except (JobFailedError, TimeoutError) as error:
        future.cancel()
        raise RunFailedError(str(error).splitlines()[0], future.job_id) from error
    return Run(time.perf_counter() - started, value, future.job_id, wall)


def _in_queue(job_id: str) -> bool:
    done = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
    # squeue fails for ids it has forgotten; only an answer without the job means "gone".
    return done.returncode != 0 or bool(done.stdout.strip())


def _wait_settled(job_id: str, timeout: float = 120.0) -> None:
    """Wait until the job has left the queue and every node is idle again.

    A node still completing the last job makes the next submission miss Slurm's
    schedule-on-submit and wait for the next scheduling pass (up to 2 s here): the
    method that happened to run next would pay for the one before it.
    """
    deadline = time.monotonic() + timeout
    while _in_queue(job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    while time.monotonic() < deadline:
        states = subprocess.run(
            ["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, check=False
        ).stdout.split()
        if states and all(state == "idle" for state in states):
            return
        time.sleep(0.2)


def run_dask_mpi(code: str, workdir: Path, timeout: float) -> Run:
    from jobstrap.batch.future import result_poll_delays  # the same file polling as JobFuture

    job_dir = Path(tempfile.mkdtemp(prefix="daskmpi-", dir=workdir))
    driver = job_dir / "driver.py"
    driver.write_text(DRIVER.format(code=code))
    result = job_dir / "result.pkl"
    script = job_dir / "job.sh"
    # --kill-on-bad-exit: a rank that dies ends the step instead of leaving the
    # others waiting for it until the walltime (what a careful hand would write).
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/bash
            #SBATCH --job-name=bench-dask-mpi
            #SBATCH --nodes={NODES}
            #SBATCH --ntasks-per-node={TASKS_PER_NODE}
            #SBATCH --cpus-per-task=1
            #SBATCH --mem=1G
            #SBATCH --time={WALLTIME_MIN}
            #SBATCH --output={job_dir}/%j.out
            srun --mpi=pmi2 --kill-on-bad-exit=1 {shlex.quote(sys.executable)} \\
                {shlex.quote(str(driver))} {shlex.quote(str(result))}
            """
        )
    )
    wall, started = time.time(), time.perf_counter()
    submitted = subprocess.run(
        ["sbatch", "--parsable", str(script)], check=True, capture_output=True, text=True
    )
    job_id = submitted.stdout.strip().split(";")[0]
    delays = result_poll_delays()
    last_queue_check = started
    while not result.exists():
        now = time.perf_counter()
        if now - started > timeout:
            subprocess.run(["scancel", job_id], check=False)
            raise RunFailedError(f"no result after {timeout:g} s ({job_dir})", job_id)
        if now - last_queue_check > 2.0:  # the same cadence as the testcluster profile's
            last_queue_check = now
            if not _in_queue(job_id) and not result.exists():
                tail = (job_dir / f"{job_id}.out").read_text(errors="replace")[-300:]
                raise RunFailedError(f"job ended without a result: ...{tail}", job_id)
        time.sleep(next(delays))
    with open(result, "rb") as handle:
        value = pickle.load(handle)
    return Run(time.perf_counter() - started, value, job_id, wall)


def run_submitit(code: str, workdir: Path, timeout: float) -> Run:
    import submitit

    # A fresh folder per run: the test cluster's job ids restart with the cluster, and
    # submitit would take an earlier run's result file for this job's.
    folder = Path(tempfile.mkdtemp(prefix="submitit-", dir=workdir))
    executor = submitit.AutoExecutor(folder=folder / "%j")
    executor.update_parameters(
        nodes=1,
        tasks_per_node=1,
        cpus_per_task=NODES * TASKS_PER_NODE,
        timeout_min=WALLTIME_MIN,
        slurm_partition="debug",
        slurm_mem="1G",
        name="bench-submitit",
    )
    wall, started = time.time(), time.perf_counter()
    job = executor.submit(compute_with_threads, code)
    # submitit's own wait: job.result() checks for the result file once a second.
    while not job.done():
        if time.perf_counter() - started > timeout:
            job.cancel()
            raise RunFailedError(f"no result after {timeout:g} s", str(job.job_id))
        time.sleep(1)
    try:
        value = job.result()
    except Exception as error:
        raise RunFailedError(str(error).splitlines()[0], str(job.job_id)) from error
    return Run(time.perf_counter() - started, value, str(job.job_id), wall)


METHODS: dict[str, Callable[[str, Path, float], Run]] = {
    # submitit's allocation (one node, one task, its cpus): computed in the job's process.
    "jobstrap(one-node)": lambda *a: run_jobstrap(*a, nodes=1, cores=NODES * TASKS_PER_NODE),
    "jobstrap": run_jobstrap,
    # TLS on every link, also between the ranks of one node (see jobstrap.engines.dask.samehost).
    "jobstrap(tls-everywhere)": lambda *a: run_jobstrap(
        *a, env={"JOBSTRAP_SAME_HOST_SOCKETS": "0"}
    ),
    # dask-mpi's own settings (plain TCP, no nannies): what TLS and nannies cost.
    "jobstrap(tcp,no-nanny)": lambda *a: run_jobstrap(*a, protocol="tcp", nanny=False),
    "sbatch+dask-mpi": run_dask_mpi,
    "submitit": run_submitit,
}


def batch_launch(job_id: str, timeout: float = 10.0) -> float | None:
    """When slurmd launched the job's batch script (epoch seconds, millisecond resolution).

    Read from the test cluster's slurmd logs (``Launching batch job N``), which
    timestamp to the millisecond, unlike ``sacct``'s whole seconds: with waits of
    0.4 to 2 s, a whole second of rounding would swamp the differences measured.
    None when the logs are not readable (not the test cluster).
    """
    from datetime import datetime

    root = Path(os.environ.get("JOBSTRAP_TESTCLUSTER_ROOT", "/var/lib/jobstrap-testcluster"))
    needle = f"] Launching batch job {job_id} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for log in sorted((root / "log").glob("slurmd-*.log")):
            with contextlib.suppress(OSError), open(log, errors="replace") as handle:
                for line in handle:
                    if needle in line:
                        return datetime.fromisoformat(line[1 : line.index("]")]).timestamp()
        time.sleep(0.5)
    return None


def queue_wait(run: Run) -> float | None:
    """Seconds from the submitting call to the job's start (Slurm's queue and the client side).

    The cluster is shared and Slurm starts a job when its scheduler next looks:
    subtracting this wait leaves what each method itself costs once running.
    """
    launched = batch_launch(run.job_id)
    return None if launched is None else round(launched - run.submitted_at, 3)


# ----------------------------------------------------------------------------- main


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("jobstrap", "dask", "distributed", "dask_mpi", "submitit", "mpi4py"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        found[name] = str(getattr(module, "__version__", "?"))
    slurm = subprocess.run(["sinfo", "--version"], capture_output=True, text=True, check=False)
    found["slurm"] = slurm.stdout.strip()
    return found


def _summary(
    seconds: list[float], waits: list[float | None], failures: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(seconds), "failures": failures}
    if not seconds:
        return out
    net = [s - w for s, w in zip(seconds, waits, strict=True) if w is not None]
    out.update(
        {
            "seconds": [round(s, 3) for s in seconds],
            "median": round(statistics.median(seconds), 3),
            "min": round(min(seconds), 3),
            "max": round(max(seconds), 3),
            # Submission (client side included) to the batch script's launch, and the
            # rest: the launch to the result in hand (what the job itself costs).
            "submit_to_start": waits,
            "median_submit_to_start": _median(waits),
            "start_to_result": [round(n, 3) for n in net],
            "median_start_to_result": round(statistics.median(net), 3) if net else None,
        }
    )
    return out


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def _ratios(summary: dict[str, dict[str, Any]], key: str) -> dict[str, float | None]:
    """Each jobstrap variant against each anchor: ``"jobstrap/submitit": 0.9``."""
    ratios: dict[str, float | None] = {}
    for ours_name, ours_data in summary.items():
        if not ours_name.startswith("jobstrap"):
            continue
        ours = ours_data.get(key)
        for method, data in summary.items():
            if not method.startswith("jobstrap"):
                theirs = data.get(key)
                ratios[f"{ours_name}/{method}"] = (
                    round(ours / theirs, 3) if ours and theirs else None
                )
    return ratios


def _intervals(
    seconds: dict[str, list[float]],
    waits: dict[str, list[float | None]],
    rounds: dict[str, list[int]],
) -> dict[str, Any]:
    """Each jobstrap variant against dask-mpi (the one-node one against submitit): the
    ratios of medians and of means, with 95 % paired-bootstrap intervals,
    submit-to-result and start-to-result."""
    per_round: dict[str, dict[str, dict[int, float]]] = {
        "submit_to_result": {},
        "start_to_result": {},
    }
    for method in seconds:
        per_round["submit_to_result"][method] = dict(
            zip(rounds[method], seconds[method], strict=True)
        )
        per_round["start_to_result"][method] = {
            r: s - w
            for r, s, w in zip(rounds[method], seconds[method], waits[method], strict=True)
            if w is not None
        }
    out: dict[str, Any] = {}
    for span, runs in per_round.items():
        for ours in (m for m in seconds if m.startswith("jobstrap")):
            anchors = VARIANT_ANCHORS.get(ours, ("sbatch+dask-mpi",))
            for anchor in (a for a in anchors if a in runs):
                for name, statistic in STATISTICS.items():
                    out[f"{span}/{name}/{ours}/{anchor}"] = paired_ratio(
                        runs[ours], runs[anchor], statistic
                    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds (one run of each)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random start phases")
    parser.add_argument("--size", type=int, default=10_000, help="N of the N x N array")
    parser.add_argument("--chunk", type=int, default=1_000, help="chunk edge")
    parser.add_argument("--workdir", type=Path, default=REPO / ".testcluster" / "bench-batch")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument(
        "--method", action="append", choices=list(METHODS), help="only these (default: all)"
    )
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=600.0,
        help="seconds before one run counts as failed (and is cancelled)",
    )
    args = parser.parse_args(argv)

    workdir = args.workdir.resolve()
    output = args.output.resolve()  # before the chdir below
    workdir.mkdir(parents=True, exist_ok=True)
    # Run directories and the registry on the shared file system, apart from the user's.
    os.environ["JOBSTRAP_RUN_ROOT"] = str(workdir / "runs")
    os.environ["JOBSTRAP_STATE_DIR"] = str(workdir / "state")
    os.chdir(workdir)

    scenarios = args.scenario or list(SCENARIOS)
    methods = args.method or list(METHODS)
    raw: dict[str, dict[str, list[float]]] = {s: {m: [] for m in methods} for s in scenarios}
    waits: dict[str, dict[str, list[float | None]]] = {
        s: {m: [] for m in methods} for s in scenarios
    }
    failures: dict[str, dict[str, list[str]]] = {s: {m: [] for m in methods} for s in scenarios}
    # Which round each kept run came from: the intervals pair runs by round.
    rounds_of: dict[str, dict[str, list[int]]] = {s: {m: [] for m in methods} for s in scenarios}
    values: dict[str, dict[str, Any]] = {s: {} for s in scenarios}
    rng = random.Random(args.seed)
    interval = sched_interval()
    for round_number in range(args.repeats):
        for scenario in scenarios:
            code = SCENARIOS[scenario].format(n=args.size, c=args.chunk)
            # Each round starts with the next method, so none always follows the same one.
            names = list(methods)
            shift = round_number % len(names)
            for method in names[shift:] + names[:shift]:
                run = METHODS[method]
                pause_at_random_phase(rng, interval)
                try:
                    done = run(code, workdir, args.run_timeout)
                except RunFailedError as error:
                    failures[scenario][method].append(f"job {error.job_id}: {error}")
                    print(
                        f"round {round_number + 1} {scenario:17} {method:16} FAILED: {error}",
                        flush=True,
                    )
                    continue
                # The next run starts on an empty cluster: a job that is still
                # winding down would hold its nodes and delay the next one's start.
                _wait_settled(done.job_id)
                wait = queue_wait(done)
                raw[scenario][method].append(done.seconds)
                waits[scenario][method].append(wait)
                rounds_of[scenario][method].append(round_number)
                values[scenario][method] = float(done.value)
                print(
                    f"round {round_number + 1} {scenario:17} {method:16} {done.seconds:7.2f} s"
                    f" (started after {wait} s)",
                    flush=True,
                )

    results: dict[str, Any] = {}
    for scenario in scenarios:
        summary = {
            m: _summary(raw[scenario][m], waits[scenario][m], failures[scenario][m])
            for m in methods
        }
        checks = list(values[scenario].values())
        results[scenario] = {
            "methods": summary,
            "ratio_of_medians": _ratios(summary, "median"),
            "ratio_of_medians_submit_to_start": _ratios(summary, "median_submit_to_start"),
            "ratio_of_medians_start_to_result": _ratios(summary, "median_start_to_result"),
            "intervals": _intervals(raw[scenario], waits[scenario], rounds_of[scenario]),
            "results_agree": all(
                abs(v - checks[0]) <= 1e-6 * max(1.0, abs(checks[0])) for v in checks
            ),
            "result": checks[0] if checks else None,
        }
    ranks = f"{NODES} nodes x {TASKS_PER_NODE} ranks"
    layout = {
        "jobstrap(one-node)": (
            f"1 node, 1 task, {NODES * TASKS_PER_NODE} cpus: the graph in the job's own"
            " process with Dask's threaded scheduler (no scheduler, workers or TLS)"
        ),
        "jobstrap": (
            f"{ranks}: scheduler, graph runner, 2 workers; TLS over ib0 between"
            " nodes, same-host Unix sockets within one (both workers share a node)"
        ),
        "jobstrap(tls-everywhere)": "the same with TLS within a node too",
        "jobstrap(tcp,no-nanny)": "the same with plain TCP and no nannies (dask-mpi's)",
        "sbatch+dask-mpi": f"{ranks}: scheduler, client, 2 workers; TCP over ib0",
        "submitit": f"1 node, 1 task, {NODES * TASKS_PER_NODE} cpus, dask threaded scheduler",
    }
    report: dict[str, Any] = {
        "benchmark": "submit-to-result latency of one graph as one batch job",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cluster": "scripts/testcluster: Slurm, 3 compute nodes as namespaces, one 2-core machine",
        "layout": {m: text for m, text in layout.items() if m in methods},
        "array": {"n": args.size, "chunk": args.chunk},
        "repeats": args.repeats,
        "start_phase": f"uniform over Slurm's {interval:g} s sched_interval, seed {args.seed}",
        "versions": _versions(),
        "results": results,
    }
    per_round: dict[str, dict[str, list[tuple[float, float | None] | None]]] = {
        s: {m: [None] * args.repeats for m in methods} for s in scenarios
    }
    for s in scenarios:
        for m in methods:
            for r, sec, wait in zip(rounds_of[s][m], raw[s][m], waits[s][m], strict=True):
                per_round[s][m][r] = (sec, wait)
    series = batch_series(per_round)
    entry = new_run(
        "bench/bench_batch.py",
        date=report.pop("date"),
        versions=report.pop("versions"),
        settings={
            k: report.pop(k) for k in ("cluster", "layout", "array", "repeats", "start_phase")
        }
        | {"seed": args.seed, "run_timeout": args.run_timeout},
        series=series,
        measures=batch_measures(series),
        workload={"array": {"n": args.size, "chunk": args.chunk}},
        detail=report,
        # A run that failed or hit --run-timeout is a round this run did not finish.
        finished=not any(failures[s][m] for s in scenarios for m in methods),
    )
    append_run(output, entry, benchmark=report["benchmark"], script="bench/bench_batch.py")
    print(json.dumps(results, indent=2))
    print(f"appended a run to {output}")
    return 0


SCENARIO_TAGS = {"trivial": "trivial", "array_expression": "array"}
SPAN_TAGS = {"submit_to_result": "submit_to_result", "start_to_result": "from_start"}
ANCHOR_TAGS = {"sbatch+dask-mpi": "dask_mpi", "submitit": "submitit"}
VARIANT_TAGS = {
    "jobstrap": "",
    "jobstrap(tls-everywhere)": "_tls_everywhere",
    "jobstrap(tcp,no-nanny)": "_tcp_no_nanny",
    "jobstrap(one-node)": "_one_node",
}
#: The anchors a variant is measured against when not every one: the one-node job has
#: submitit's allocation, not dask-mpi's two nodes.
VARIANT_ANCHORS = {"jobstrap(one-node)": ("submitit",)}


def batch_series(
    per_round: dict[str, dict[str, list[tuple[float, float | None] | None]]],
) -> dict[str, dict[str, list[float | None]]]:
    """Per-round seconds by series (``array_submit_to_result``, ``array_start_to_result``)
    and method, from ``(submit-to-result, submit-to-start)`` per round (None: failed)."""
    series: dict[str, dict[str, list[float | None]]] = {}
    for scenario, methods in per_round.items():
        tag = SCENARIO_TAGS.get(scenario, scenario)
        total = series.setdefault(f"{tag}_submit_to_result", {})
        net = series.setdefault(f"{tag}_start_to_result", {})
        for method, rounds in methods.items():
            total[method] = [None if r is None else round(r[0], 3) for r in rounds]
            net[method] = [
                None if r is None or r[1] is None else round(r[0] - r[1], 3) for r in rounds
            ]
    return series


def batch_measures(series: dict[str, dict[str, list[float | None]]]) -> dict[str, dict[str, str]]:
    """Every jobstrap variant against every anchor the run measured, per scenario and span:
    ``array_from_start_vs_dask_mpi``, ``trivial_submit_to_result_tcp_no_nanny_vs_submitit``."""
    measures: dict[str, dict[str, str]] = {}
    for name, methods in series.items():
        for tag in SCENARIO_TAGS.values():
            for span, span_tag in SPAN_TAGS.items():
                if name != f"{tag}_{span}":
                    continue
                for ours, variant in VARIANT_TAGS.items():
                    for anchor, anchor_tag in ANCHOR_TAGS.items():
                        if anchor not in VARIANT_ANCHORS.get(ours, ANCHOR_TAGS):
                            continue
                        if ours in methods and anchor in methods:
                            measures[f"{tag}_{span_tag}{variant}_vs_{anchor_tag}"] = {
                                "series": name,
                                "ours": ours,
                                "anchor": anchor,
                                "unit": "s",
                            }
    return measures


if __name__ == "__main__":
    sys.exit(main())
