"""Batch mode start-up against dask-mpi: N MPI ranks in one allocation, same cluster, same run.

Both sides run the same app on ranks laid out the same way (rank 0 the scheduler,
rank 1 the client, the others one single-threaded worker each, over ib0):

* **jobstrap**: ``jobstrap.submit_app(["app.py", ...])``: the rendered script runs
  ``srun --mpi=pmi2 python -m jobstrap.bootstrap -- app.py`` (TLS with per-run
  certificates, workers under nannies, the ``node`` worker layout: the defaults).
  On each node the first worker rank forks the workers of every worker rank there,
  which stand by without importing Dask;
* **jobstrap (rank layout)**: the same with ``worker_layout: rank``: every worker
  rank imports Dask and runs its own worker under its own nanny;
* **jobstrap (no nanny)**: the same with ``nanny: false`` (each worker is its rank,
  as in dask-mpi);
* **dask-mpi**: an sbatch script whose ``srun --mpi=pmi2 python driver.py`` calls
  ``dask_mpi.initialize(interface="ib0", nthreads=1)`` and then runs the app (plain
  TCP, no nannies: dask-mpi's defaults).

Measured per run:

* **launch to ready**: from the line before the launcher in the batch script (a
  timestamp written by the script) to the client seeing every worker;
* **submit to done**: from the submit call to the app's work being done (the
  measurements that follow it, e.g. asking each nanny, are not counted);
* **memory per worker**: the proportional set size (PSS) of every process of the
  launch on the workers' nodes but the scheduler's and the app's (workers, nannies,
  ranks standing by, fork servers: PSS splits shared pages fairly), divided by the
  workers; and the sum of the workers' and nannies' peak RSS (``ru_maxrss``), which
  counts shared pages twice;
* **CPU seconds** of each worker process and of the scheduler by the time the
  app reports: with more ranks than cores, start-up is CPU-bound.

Sizes 4, 8, 16 and 32 ranks over two nodes of the test cluster (16 declared CPUs
each), then 64 ranks on this host with a plain ``mpiexec -n 64`` (oversubscribed:
the machine has a few cores). Runs are interleaved (one of each method per round) so the
machine's load affects all alike.

Run on the test cluster's login node; appends a run to ``bench/results/bootstrap.json``::

    scripts/testcluster on head .venv/bin/python bench/bench_bootstrap.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from history import append_run, new_run

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "bootstrap.json"
PROFILE = "testcluster"
NODES = 2
WALLTIME_MIN = 15
#: CPUs each test-cluster node declares: more ranks per node need ``--overcommit``.
NODE_CPUS = 16
#: Memory per node for layouts past NODE_CPUS ranks (each node declares 8000 MB).
BIG_NODE_MEMORY = "7800MiB"
#: Past NODE_CPUS ranks per node a worker's share of the node's memory (61 MiB at 128
#: ranks a node) is below what a worker holds at rest; the memory thresholds would
#: pause the workers or have their nannies kill them. Off on both sides (dask-mpi's
#: workers have "auto" limits of half the machine, which they never reach anyway).
BIG_LAYOUT_ENV = {
    "DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE": "False",
    "DASK_DISTRIBUTED__WORKER__MEMORY__TERMINATE": "False",
    "DASK_DISTRIBUTED__WORKER__MEMORY__TARGET": "False",
    "DASK_DISTRIBUTED__WORKER__MEMORY__SPILL": "False",
}
#: Past CROWDED_RANKS ranks per node, also on both sides: distributed's per-worker
#: sampling profiler (100 wake-ups a second) and monitors (every 0.1 and 0.5 s). 254
#: idle workers on two cores kept 233 processes runnable (load 250) with them on, and
#: every event loop, the scheduler's too, stalled for 10 s at a time. The event loop's
#: 20 ms tick too: 128-254 processes' ticks on two cores. At a site each worker has
#: its own core; bench_scale's connection storm turns off the same. Applied past
#: CROWDED_RANKS ranks a node under srun, and on the one host of a plain mpiexec.
CROWDED_RANKS = 64
CROWDED_ENV = {
    "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
    "DASK_DISTRIBUTED__WORKER__MEMORY__MONITOR_INTERVAL": "5s",
    "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "5s",
    "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s",
}


def big_layout_env(per_node: int) -> dict[str, str]:
    """The environment both sides' jobs get past NODE_CPUS ranks per node."""
    return {**BIG_LAYOUT_ENV, **(CROWDED_ENV if per_node > CROWDED_RANKS else {})}


#: jobstrap's death timeout past NODE_CPUS ranks per node (the test profile has 30 s).
#: At 64 ranks a node on two shared cores the scheduler's own event loop stalls for
#: 6-13 s at a time while it reaches 126 nannies, and 30 s of it ended runs as "scheduler
#: unreachable". The anchor has no such watchdog (its ranks wait forever); this is
#: the setting a site that overcommits its nodes this far would need too.
BIG_LAYOUT_DEATH_TIMEOUT = 120

#: The app both sides run on the client rank: wait for every worker, touch each one
#: with a little work, report times and peak memory, write the report atomically.
APP = """\
import json, os, resource, sys, time
from distributed import Client

out, expected = sys.argv[1], int(sys.argv[2])


def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def pss():
    import psutil

    return psutil.Process().memory_full_info().pss


def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def once_per_process(name):
    # Whether this process has not run the measurement ``name`` yet. In the node
    # layout one process holds a node's every nanny, and client.run(nanny=True) runs
    # the function once per nanny, one after the other in that process's event loop
    # (a scan of every process of the node, 64 times over, stalled it for 30-45 s at
    # 128 ranks). Kept on an imported module: the function itself arrives pickled anew.
    import psutil

    done = psutil.__dict__.setdefault("_bench_measured", set())
    if name in done:
        return False
    done.add(name)
    return True


def own_pss():
    # (pid, PSS) of this process, measured once per process (see once_per_process).
    return (os.getpid(), pss() if once_per_process("own_pss") else None)


def node_processes(exclude):
    # PSS of every process of the launch on this node but those in exclude. Run in
    # a rank (a nanny's process, or a worker that is its rank): its parent is the
    # launcher (slurmstepd, hydra's proxy), whose descendants are every rank of the
    # node and what they started (workers, fork servers, trackers).
    import psutil

    found = {}
    for proc in psutil.Process().parent().children(recursive=True):
        if proc.pid not in exclude:
            try:
                found[proc.pid] = proc.memory_full_info().pss
            except psutil.Error:
                pass
    return found


with Client() as client:
    client.wait_for_workers(expected, timeout=600)
    ready = time.time()
    total = sum(client.gather(client.map(pow, range(4 * expected), [2] * (4 * expected))))
    worked = time.time()  # the app's work is done; what follows only measures
    workers = client.run(peak)
    worker_cpu = client.run(cpu)
    scheduler_cpu = client.run_on_scheduler(cpu)
    worker_pss = client.run(pss)
    try:  # by process: with several workers per rank, their nannies share one
        nannies = {p: v for p, v in client.run(lambda: (os.getpid(), peak()), nanny=True).values()}
        nanny_pss = {p: v for p, v in client.run(own_pss, nanny=True).values() if v is not None}
        nanny_cpu = {p: v for p, v in client.run(lambda: (os.getpid(), cpu()), nanny=True).values()}
    except Exception:
        nannies = nanny_pss = nanny_cpu = {}
    # Everything the workers cost, whatever the layout: every process of the launch
    # on the workers' nodes (ranks standing by, fork servers, trackers included) but
    # the scheduler's and this app's.
    exclude = [client.run_on_scheduler(os.getpid), os.getpid()]
    # In a nanny's process (a rank), or in the worker when there is no nanny (its rank):
    # one per host, the scan covering the host (126 scans of a node's 128 processes
    # each, on two shared cores, took minutes at 256 ranks).
    one_per_host = {}
    for address, info in client.scheduler_info(n_workers=-1)["workers"].items():
        one_per_host.setdefault(info["host"], address)
    per_node = client.run(
        node_processes, exclude, nanny=bool(nannies), workers=list(one_per_host.values())
    )
    launch_pss = {}
    for found in per_node.values():
        launch_pss.update({int(p): v for p, v in found.items()})
report = {
    "ready": ready,
    "worked": worked,
    "total": total,
    "workers": len(workers),
    "worker_peak": list(workers.values()),
    "nanny_peak": list(nannies.values()),
    "worker_pss": list(worker_pss.values()),
    "nanny_pss": list(nanny_pss.values()),
    "launch_pss": list(launch_pss.values()),
    "worker_cpu": list(worker_cpu.values()),
    "nanny_cpu": list(nanny_cpu.values()),
    "scheduler_cpu": scheduler_cpu,
}
with open(out + ".tmp", "w") as handle:
    json.dump(report, handle)
os.replace(out + ".tmp", out)
"""

# MPI first: importing dask_mpi imports distributed (and numpy), and with the mpich
# wheel under srun --mpi=pmi2, MPI_Init after those imports fails more often than not
# here (corrupted PMI-2 requests, UCX address errors). jobstrap's bootstrap
# initialises MPI before anything heavy for the same reason; the anchor gets the same.
DASK_MPI_DRIVER = """\
from mpi4py import MPI  # noqa: F401
import runpy, sys
from dask_mpi import initialize

initialize(interface="ib0", nthreads=1)
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


class RunFailedError(Exception):
    """One run ended without a report; the message says how (kept in the results)."""


def _launch_stamp(path: Path) -> str:
    return f"date +%s.%N > {shlex.quote(str(path))}"


def _wait_for(report: Path, job_id: str, started: float, timeout: float) -> None:
    """Poll for ``report`` like JobFuture polls for a result (or give up)."""
    from jobstrap.batch.future import result_poll_delays

    delays = result_poll_delays()
    last_check = started
    while not report.exists():
        now = time.perf_counter()
        if now - started > timeout:
            subprocess.run(["scancel", job_id], check=False)
            raise RunFailedError(f"no report after {timeout:g} s (job {job_id})")
        if now - last_check > 2.0:
            last_check = now
            queue = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
            if queue.returncode == 0 and not queue.stdout.strip() and not report.exists():
                raise RunFailedError(f"job {job_id} ended without a report")
        time.sleep(next(delays))


def run_mpiexec(ranks: int, workdir: Path, timeout: float, *, method: str) -> dict[str, Any]:
    """``mpiexec -n ranks`` on this host, no batch system: the oversubscribed case.

    jobstrap's side runs ``python -m jobstrap.bootstrap`` with a run directory and TLS
    made as ``jobstrap submit`` would (nannies forking their workers unless
    ``method`` says no nanny); dask-mpi's side runs the same driver as under Slurm.
    "Submit to done" is launch to report here.
    """
    from jobstrap.jobs.spec import NANNY_ENVIRONMENT
    from jobstrap.net.security import create_tls
    from jobstrap.store.rundir import RunDir

    job_dir = Path(tempfile.mkdtemp(prefix=f"{method}-", dir=workdir))
    app, report, launch = job_dir / "app.py", job_dir / "report.json", job_dir / "launch"
    app.write_text(APP)
    env = dict(os.environ)
    for name in [n for n in env if n.startswith(("SLURM_", "PMI_"))]:
        del env[name]  # a plain mpiexec, not a step of the bench's own job
    if ranks > CROWDED_RANKS:  # every rank on this host: both sides alike
        env.update(CROWDED_ENV)
    args = [str(app), str(report), str(ranks - 2)]
    if method == "dask_mpi":
        driver = job_dir / "driver.py"
        driver.write_text(DASK_MPI_DRIVER)
        argv = [sys.executable, str(driver), *args]
    else:
        run = RunDir.create(job_dir, "run")
        create_tls(run.path)
        argv = [sys.executable, "-m", "jobstrap.bootstrap", "--run-dir", str(run.path)]
        argv += ["--nthreads", "1", "--no-dashboard"]
        if method == "jobstrap_no_nanny":
            argv.append("--no-nanny")
        else:
            env.update(NANNY_ENVIRONMENT)
        if method == "jobstrap_rank_layout":
            argv += ["--worker-layout", "rank"]
        argv += ["--", *args]
    launched_ranks = ranks
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    launched = time.time()
    launch.write_text(f"{launched}\n")
    done = subprocess.run(
        [mpiexec, "-n", str(launched_ranks), *argv], env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    (job_dir / "stderr.txt").write_text(done.stderr)
    if done.returncode != 0 or not report.exists():
        raise RunFailedError(f"mpiexec exited {done.returncode}; see {job_dir}/stderr.txt")
    return _finish(report, launch, launched, "mpiexec")


def _layout(ranks: int) -> tuple[int, int]:
    return NODES, ranks // NODES


def run_jobstrap(
    ranks: int, workdir: Path, timeout: float, *, nanny: bool = True, worker_layout: str = "node"
) -> dict[str, Any]:
    from jobstrap.batch.client import submit_app

    job_dir = Path(tempfile.mkdtemp(prefix="jobstrap-", dir=workdir))
    app, report, launch = job_dir / "app.py", job_dir / "report.json", job_dir / "launch"
    app.write_text(APP)
    nodes, per_node = _layout(ranks)
    layout: dict[str, Any] = {"tasks_per_node": per_node, "worker_layout": worker_layout}
    big = per_node > NODE_CPUS
    if big:
        # Slurm refuses --ntasks-per-node past the node's CPUs even with --overcommit;
        # --ntasks over the nodes is accepted (srun's own line keeps the layout).
        layout["extra_directives"] = ["--overcommit", f"--ntasks={ranks}"]
        layout["skip_directives"] = ["--ntasks-per-node"]
        layout["env"] = big_layout_env(per_node)
        layout["death_timeout"] = BIG_LAYOUT_DEATH_TIMEOUT
    submitted, started = time.time(), time.perf_counter()
    future = submit_app(
        [str(app), str(report), str(ranks - 2)],
        profile=PROFILE,
        nodes=nodes,
        cores=per_node,
        threads=1,  # single-threaded workers, as dask-mpi's side (nthreads=1)
        memory=BIG_NODE_MEMORY if big else "3GiB",
        walltime=f"00:{WALLTIME_MIN:02d}:00",
        nanny=nanny,
        prologue=[_launch_stamp(launch)],
        **layout,
    )
    job_id = future.job_id
    try:
        _wait_for(report, job_id, started, timeout)
    except RunFailedError:
        future.cancel()
        raise
    future.wait(timeout=120)  # let the job end before the next one starts
    return _finish(report, launch, submitted, job_id)


def run_dask_mpi(ranks: int, workdir: Path, timeout: float) -> dict[str, Any]:
    job_dir = Path(tempfile.mkdtemp(prefix="daskmpi-", dir=workdir))
    app, driver = job_dir / "app.py", job_dir / "driver.py"
    report, launch = job_dir / "report.json", job_dir / "launch"
    app.write_text(APP)
    driver.write_text(DASK_MPI_DRIVER)
    nodes, per_node = _layout(ranks)
    python = shlex.quote(sys.executable)
    argv = " ".join(shlex.quote(str(word)) for word in (driver, app, report, ranks - 2))
    # --kill-on-bad-exit: a rank that dies ends the step (what a careful hand writes).
    big = per_node > NODE_CPUS
    spread = f"--ntasks-per-node={per_node} " if big else ""
    launcher = f"srun --mpi=pmi2 --kill-on-bad-exit=1 {spread}{python} {argv}"
    extra = "#SBATCH --overcommit\n" if big else ""
    env = big_layout_env(per_node) if big else {}
    exports = "".join(f"export {k}={v}\n" for k, v in env.items())
    script = job_dir / "job.sh"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/bash
            #SBATCH --job-name=bench-dask-mpi
            #SBATCH --nodes={nodes}
            #SBATCH {f"--ntasks={ranks}" if big else f"--ntasks-per-node={per_node}"}
            #SBATCH --cpus-per-task=1
            #SBATCH --mem={"7800M" if big else "3G"}
            #SBATCH --time={WALLTIME_MIN}
            #SBATCH --output={job_dir}/%j.out
            """
        )
        + f"{extra}{exports}{_launch_stamp(launch)}\n{launcher}\n"
    )
    submitted, started = time.time(), time.perf_counter()
    sbatch = subprocess.run(
        ["sbatch", "--parsable", str(script)], check=True, capture_output=True, text=True
    )
    job_id = sbatch.stdout.strip().split(";")[0]
    _wait_for(report, job_id, started, timeout)
    _wait_gone(job_id, 120)
    return _finish(report, launch, submitted, job_id)


def _wait_gone(job_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
        if queue.returncode != 0 or not queue.stdout.strip():
            return
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], check=False)


def _finish(report: Path, launch: Path, submitted: float, job_id: str) -> dict[str, Any]:
    data = json.loads(report.read_text())
    launched = float(launch.read_text().strip())
    workers = [int(w) for w in data["worker_peak"]]
    nannies = [int(n) for n in data["nanny_peak"]]  # one per nanny process
    nanny_cpu = [float(c) for c in data.get("nanny_cpu", [])]
    # A worker's share: its own process plus its part of its nanny's process (one
    # nanny process per worker rank, however many workers the rank forked).
    per_worker = (sum(workers) + sum(nannies)) / len(workers)
    # PSS splits pages a forked worker shares with its nanny between the two; the sum
    # of peak RSS counts them twice. Both are reported; PSS is the real share.
    pss_per_worker = sum(int(p) for p in data["launch_pss"]) / len(data["worker_pss"])
    return {
        "job_id": job_id,
        "launch_to_ready_s": round(data["ready"] - launched, 3),
        "submit_to_done_s": round(data["worked"] - submitted, 3),
        "workers": data["workers"],
        "pss_per_worker_mib": round(pss_per_worker / 2**20, 1),
        "peak_rss_per_worker_mib": round(per_worker / 2**20, 1),
        "peak_rss_worker_process_mib": round(statistics.mean(workers) / 2**20, 1),
        "peak_rss_nanny_mib": round(statistics.mean(nannies) / 2**20, 1) if nannies else None,
        "processes_on_worker_nodes": len(data["launch_pss"]),
        # CPU seconds spent by then: on a machine with fewer cores than ranks, start-up
        # is CPU-bound and this is where the time goes.
        "cpu_s_per_worker_process": round(statistics.mean(data["worker_cpu"]), 3),
        "cpu_s_scheduler": round(data["scheduler_cpu"], 3),
        # A process running nannies (in the node layout, one per node running all of
        # the node's): its event loop starts them all on one core.
        "cpu_s_nanny_process_max": round(max(nanny_cpu), 3) if nanny_cpu else None,
        "nanny_processes": len(nanny_cpu),
    }


SUMMARY_KEYS = (
    "launch_to_ready_s",
    "submit_to_done_s",
    "pss_per_worker_mib",
    "peak_rss_per_worker_mib",
)

METHODS: dict[str, Callable[..., dict[str, Any]]] = {
    "jobstrap": run_jobstrap,
    "jobstrap_no_nanny": lambda *a: run_jobstrap(*a, nanny=False),
    "jobstrap_rank_layout": lambda *a: run_jobstrap(*a, worker_layout="rank"),
    "dask_mpi": run_dask_mpi,
}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("jobstrap", "distributed", "dask-mpi", "mpi4py", "mpich"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    summary: dict[str, Any] = {"runs": len(runs), "failed": len(runs) - len(ok)}
    for key in SUMMARY_KEYS:
        values = [r[key] for r in ok]
        summary[key] = round(statistics.median(values), 3) if values else None
    return summary


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="*", default=[4, 8, 16, 32])
    parser.add_argument("--oversubscribed", type=int, default=64, help="0 to skip")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    workdir = Path(
        os.environ.get("JOBSTRAP_BENCH_DIR", str(REPO / ".testcluster" / "bench-bootstrap"))
    )
    workdir.mkdir(parents=True, exist_ok=True)

    cases: list[tuple[str, int, bool]] = [(f"{n}_ranks", n, False) for n in args.ranks]
    if args.oversubscribed:
        n = args.oversubscribed
        cases.append((f"{n}_ranks_one_node_mpiexec", n, True))
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for case, ranks, one_node in cases:
        raw[case] = {m: [] for m in args.methods}
        for repeat in range(args.repeats):
            for method in args.methods:
                try:
                    if one_node:
                        run = run_mpiexec(ranks, workdir, args.timeout, method=method)
                    else:
                        run = METHODS[method](ranks, workdir, args.timeout)
                except Exception as error:  # kept in the report: a failure is a result
                    run = {"error": f"{type(error).__name__}: {error}"}
                raw[case][method].append(run)
                print(case, repeat, method, json.dumps(run), flush=True)

    results: dict[str, Any] = {}
    for case, by_method in raw.items():
        summary = {m: summarise(runs) for m, runs in by_method.items()}
        anchor = summary.get("dask_mpi", {})
        for method, values in summary.items():
            if method == "dask_mpi":
                continue
            for key in SUMMARY_KEYS:
                values[f"{key}_vs_dask_mpi"] = ratio(values.get(key), anchor.get(key))
        results[case] = {"summary": summary, "runs": by_method}

    series = bootstrap_series(raw)
    run = new_run(
        "bench/bench_bootstrap.py",
        versions=_versions(),
        settings={
            "ranks": args.ranks,
            "oversubscribed": args.oversubscribed,
            "repeats": args.repeats,
            "nodes": NODES,
            "machine_cpus": os.cpu_count(),
            "timeout": args.timeout,
        },
        series=series,
        measures=bootstrap_measures(series),
        workload={"nodes": NODES},
        detail={"results": results},
        # A launch that failed or hit --timeout is a round this run did not finish; its
        # error stays in detail.results[case].runs.
        finished=not any("error" in r for runs in raw.values() for rs in runs.values() for r in rs),
    )
    append_run(
        args.output,
        run,
        benchmark="batch-mode start-up and memory vs dask-mpi",
        script="bench/bench_bootstrap.py",
    )
    for case, data in results.items():
        print(case, json.dumps(data["summary"]))
    return 0


# Series name -> the per-run key it holds.
BOOTSTRAP_KEYS = {
    "ready": "launch_to_ready_s",
    "memory_per_worker": "pss_per_worker_mib",
    "submit_to_done": "submit_to_done_s",
}
BOOTSTRAP_UNITS = {"ready": "s", "memory_per_worker": "MiB", "submit_to_done": "s"}
BOOTSTRAP_VARIANTS = {"jobstrap": "", "jobstrap_no_nanny": "_no_nanny"}


def case_tag(case: str) -> str:
    """``32_ranks`` -> ``32``; ``64_ranks_one_node_mpiexec`` -> ``64_one_node``."""
    ranks, _, rest = case.partition("_ranks")
    return ranks + ("_one_node" if "one_node" in rest else "")


def bootstrap_series(
    raw: dict[str, dict[str, list[dict[str, Any]]]],
) -> dict[str, dict[str, list[float | None]]]:
    """Per-repeat values by series (``ready_32``, ``memory_per_worker_32``) and method."""
    series: dict[str, dict[str, list[float | None]]] = {}
    for case, by_method in raw.items():
        for name, key in BOOTSTRAP_KEYS.items():
            series[f"{name}_{case_tag(case)}"] = {
                m: [None if "error" in r else r.get(key) for r in runs]
                for m, runs in by_method.items()
            }
    return series


def bootstrap_measures(
    series: dict[str, dict[str, list[float | None]]],
) -> dict[str, dict[str, str]]:
    """Each jobstrap layout against dask-mpi in every series."""
    measures: dict[str, dict[str, str]] = {}
    for name, methods in series.items():
        unit = next(u for k, u in BOOTSTRAP_UNITS.items() if name.startswith(k + "_"))
        for ours, variant in BOOTSTRAP_VARIANTS.items():
            if ours in methods and "dask_mpi" in methods:
                measures[f"{name}{variant}"] = {
                    "series": name,
                    "ours": ours,
                    "anchor": "dask_mpi",
                    "unit": unit,
                }
    return measures


if __name__ == "__main__":
    sys.exit(main())
