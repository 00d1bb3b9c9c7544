"""Batch-system side at scale: a notebook cluster of 10,000 one-worker jobs and back.

Against the big emulated Slurm of ``scripts/emulator`` (1000 nodes, MaxArraySize
1001, MaxJobCount 20000; brought up here if it is not): a jobstrap ``SLURMCluster``
with the ``emulator`` profile scales to ``--jobs`` jobs, is tracked by the watcher
for ``--track`` seconds, scales back to 0 and closes. Jobs are held pending (the
emulator's default partition is DOWN): workers never start, so what is measured is
the batch side alone, which is where 10,000 jobs break a tool first (argv length,
per-id requests, output parsing, memory per tracked job).

Measured and checked:

- ``submit_calls``: sbatch calls, at most ceil(jobs / MaxArraySize) (arrays);
- ``status_calls_per_interval``: the most squeue calls seen in any window of one
  poll interval while tracking, at most 1 whatever the size;
- ``cancel_calls``: scancel calls to cancel every job, at most ceil(jobs / MaxArraySize);
- ``throttled``: whether Slurm 23.02's default RPC rate limit (``rl_enable``: a bucket
  of 30 per user refilled at 2/s) would have throttled us. Slurm 22.05 has no rate
  limiting, so the controller's own count of requests (``sdiag``, sampled each
  second; nothing else talks to the emulator) is replayed through that bucket, and
  any command error or controller log line about a rate limit counts too;
- ``leaked_jobs``: our jobs still pending or running once the cluster is closed;
- ``watcher_rss_mib``: memory held by what the watcher allocated (``tracemalloc``:
  live blocks with the watcher's poll in their traceback), and the process's RSS.

Usage (root, on the machine that runs the emulator; the test cluster is not used):

    python bench/bench_scale.py [--jobs 10000] [--track 600] [--output PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from history import append_run, new_run  # noqa: E402

OUTPUT = REPO / "bench" / "results" / "scale.json"
EMULATOR = REPO / "scripts" / "emulator"
#: Slurm 23.02's defaults for rl_enable (rl_bucket_size, rl_refill_rate per second).
RL_BUCKET = 30
RL_REFILL = 2.0
#: Requests the bench itself sends (sdiag sampling), not ours.
OWN_RPCS = ("REQUEST_STATS_INFO",)


def emulator_env() -> dict[str, str]:
    """Bring the emulator up (idempotent) and return the environment pointing at it."""
    subprocess.run([str(EMULATOR), "up"], check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run([str(EMULATOR), "env"], check=True, capture_output=True, text=True)
    match = re.search(r"SLURM_CONF=(\S+)", out.stdout)
    if not match:
        raise SystemExit(f"scripts/emulator env printed no SLURM_CONF: {out.stdout!r}")
    return {"SLURM_CONF": match.group(1)}


def rpc_counts() -> dict[str, int]:
    """The controller's request counts by message type (sdiag)."""
    out = subprocess.run(["sdiag"], capture_output=True, text=True, check=True).stdout
    section = out.split("by message type", 1)[-1].split("by user", 1)[0]
    return {
        m[1]: int(m[2]) for m in re.finditer(r"^\s*(\w+)\s+\(\s*\d+\)\s+count:(\d+)", section, re.M)
    }


def ours(counts: dict[str, int]) -> int:
    return sum(n for name, n in counts.items() if name not in OWN_RPCS)


def would_throttle(
    per_second: list[int], bucket: int = RL_BUCKET, refill: float = RL_REFILL
) -> int:
    """Seconds in which a 23.02 rate limiter (per user) would have refused a request."""
    tokens = float(bucket)
    refused = 0
    for n in per_second:
        tokens = min(bucket, tokens + refill)
        tokens -= n
        if tokens < 0:
            refused += 1
            tokens = 0.0
    return refused


class Sampler(threading.Thread):
    """Every ``period`` s: the batchctl's call counts and the controller's request count."""

    def __init__(self, calls: Callable[[], dict[str, int]], period: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.calls = calls
        self.period = period
        self.samples: list[tuple[float, dict[str, int], int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), dict(self.calls()), ours(rpc_counts())))
            self.stop.wait(self.period)

    def rpcs_per_second(self) -> list[int]:
        return [b[2] - a[2] for a, b in zip(self.samples, self.samples[1:], strict=False)]

    def most_in_window(self, command: str, window: float, start: float, end: float) -> int:
        """The most ``command`` calls in any ``window`` seconds between start and end."""
        points = [(t, c.get(command, 0)) for t, c, _ in self.samples if start <= t <= end]
        most = 0
        for i, (t0, n0) in enumerate(points):
            for t1, n1 in points[i:]:
                if t1 - t0 > window:
                    break
                most = max(most, n1 - n0)
        return most


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def watcher_mib(snapshot: tracemalloc.Snapshot) -> float:
    """Live memory allocated with the watcher's poll (or track) in the traceback."""
    total = 0
    for stat in snapshot.statistics("traceback"):
        if any(
            frame.filename.endswith(os.path.join("batchctl", "watcher.py"))
            for frame in stat.traceback
        ):
            total += stat.size
    return total / 2**20


def our_active_jobs(name: str) -> int:
    out = subprocess.run(
        [
            "squeue",
            "--noheader",
            "--array",
            "--states=PENDING,RUNNING,CONFIGURING,COMPLETING",
            "--format=%i",
            f"--name={name}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return len(out.split())


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def measure(jobs: int, track: float) -> dict[str, Any]:
    """Scale a cluster to ``jobs`` held jobs and back; every figure of the module doc."""
    os.environ.update(emulator_env())
    from jobstrap import SLURMCluster

    errors: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING and record.name.startswith("jobstrap"):
                errors.append(record.getMessage())

    logging.getLogger("jobstrap").addHandler(Collect())
    subprocess.run(["sdiag", "--reset"], check=True, stdout=subprocess.DEVNULL)
    tracemalloc.start(25)
    rss_before = rss_mib()
    cluster = SLURMCluster("emulator", job_name="scale")
    gw = cluster.batchctl
    poll = gw.watcher.poll_interval
    max_array = gw.max_array_size() or 1001
    sampler = Sampler(lambda: dict(gw.calls))
    sampler.start()
    try:
        t0 = time.monotonic()
        cluster.scale(jobs=jobs)
        scaled = wait_until(lambda: len(gw.watcher.tracked()) >= jobs, timeout=300, step=0.5)
        submit_seconds = time.monotonic() - t0
        track_start = time.monotonic()
        time.sleep(track)
        track_end = time.monotonic()
        snapshot = tracemalloc.take_snapshot()
        watcher = watcher_mib(snapshot)
        rss_tracking = rss_mib()
        name = next(iter(gw.watcher.records().values())).name if gw.watcher.tracked() else ""
        # The cost of reading one status answer of this size (what every poll pays).
        out = subprocess.run(
            gw.system.status_argv(gw.watcher.tracked()), capture_output=True, text=True, check=True
        ).stdout
        before_cancel = dict(gw.calls)
        t1 = time.monotonic()
        cluster.scale(jobs=0)
        gone = wait_until(lambda: name != "" and our_active_jobs(name) == 0, timeout=300)
        cancel_seconds = time.monotonic() - t1
        cancel_calls = gw.calls["scancel"] - before_cancel.get("scancel", 0)
    finally:
        cluster.close()
        sampler.stop.set()
        sampler.join()
        tracemalloc.stop()
    leaked = our_active_jobs(name) if name else -1
    # Outside tracemalloc, which slows allocation-heavy parsing several times over.
    t_parse = time.perf_counter()
    parsed = gw.system.parse_status(out)
    parse_seconds = time.perf_counter() - t_parse
    per_second = sampler.rpcs_per_second()
    log_path = Path(os.environ["SLURM_CONF"]).parent.parent / "log" / "slurmctld.log"
    log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
    limited_lines = len(re.findall(r"rate limit", log_text, re.I))
    limited_errors = [e for e in errors if re.search(r"rate.?limit|back.?off", e, re.I)]
    refused_seconds = would_throttle(per_second)
    calls = dict(gw.calls)
    return {
        "jobs": jobs,
        "scaled": scaled,
        "max_array_size": max_array,
        "poll_interval_s": poll,
        "tracked_seconds": round(track_end - track_start, 1),
        "submit_calls": calls.get("sbatch", 0),
        "submit_seconds": round(submit_seconds, 2),
        "status_calls_per_interval": sampler.most_in_window("squeue", poll, track_start, track_end),
        "cancel_calls": cancel_calls,
        "cancel_seconds": round(cancel_seconds, 2),
        "all_cancelled": gone,
        "throttled": bool(refused_seconds or limited_lines or limited_errors),
        "throttle_model": {
            "bucket": RL_BUCKET,
            "refill_per_s": RL_REFILL,
            "seconds_refused": refused_seconds,
            "controller_rpcs": sum(per_second),
            "most_rpcs_in_one_second": max(per_second, default=0),
            "log_lines": limited_lines,
            "command_errors": limited_errors,
        },
        "leaked_jobs": leaked,
        "watcher_rss_mib": round(watcher, 2),
        "process_rss_mib": {
            "before": round(rss_before, 1),
            "tracking": round(rss_tracking, 1),
        },
        "squeue_lines_parsed": len(parsed),
        "squeue_parse_seconds": round(parse_seconds, 4),
        "calls": calls,
        "warnings": errors[:20],
    }


# ------------------------------------------------------------------ the connection storm
#
# One scheduler on ``head`` (jobstrap's: ``python -m jobstrap.bootstrap --mode
# scheduler`` with the run's TLS; the anchor's: ``distributed.Scheduler`` built as
# dask-mpi's rank 0 builds it), and ``--storm-processes`` worker-host processes on
# node1..node3 started by one ``srun`` step, each running ``--storm-per-process``
# one-thread workers in one event loop (a real worker process is ~45 MiB: 1,000 of them
# do not fit the machine). Every host process imports first, then all start their
# workers at one moment (a ``go`` file): the storm.

#: What only the emulation needs, the same on both sides: 50 workers share one process
#: and two cores, where at a site each has its own process and core. distributed's
#: per-worker sampling profiler (every 10 ms), monitors (100 ms, 500 ms) and
#: event-loop tick (20 ms: 2,500 callbacks a second in a process of 50 workers) would
#: run 1,000 times in a few processes and starve the scheduler of the machine's CPU.
STORM_HOST_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.worker.memory.monitor-interval": "5s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.admin.tick.interval": "1s",
}
#: How long the workers are held once all joined: heartbeats at full size, and the
#: scheduler's worker-ttl checks, must not drop any of them.
STORM_HOLD_S = 30.0
#: How long a worker may wait at the gate (every host built and ready) before it fails.
STORM_GATE_S = 600.0


def _storm_host(args: argparse.Namespace) -> int:
    """One worker-host process: ``--per-process`` workers, registering when ``go`` appears.

    The workers are built and started at once (listeners open), and each waits at a
    gate just before it connects to the scheduler; once every host's workers are
    there, the bench creates ``go`` and all connect in the same moment. So the
    scheduler sees one storm of every worker, not the trickle that building 1,000
    workers on two cores would make of it.
    """
    rank = int(os.environ.get("SLURM_PROCID", "0"))
    size = int(os.environ.get("SLURM_NTASKS", "1"))
    work = Path(args.work)
    names = [f"{rank}-{i}" for i in range(args.per_process)]
    # name -> (passed the gate: starts connecting, saw the scheduler's answer), address
    times: dict[str, tuple[float, float, float]] = {}  # connect, answer seen, gate open
    addresses: dict[str, str] = {}
    at_gate: list[str] = []
    failed: list[str] = []
    import dask

    dask.config.set(STORM_HOST_CONFIG)
    # 1,000 workers' start-up lines would be CPU taken from the scheduler here.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if args.side != "dask_mpi":
        from jobstrap.engines.dask.engine import load_dask

        load_dask()
        from jobstrap.engines.dask.scale import join_jitter
        from jobstrap.engines.dask.servers import HeadlessWorker
        from jobstrap.engines.dask.workers import WorkerOptions, serve_workers
        from jobstrap.net.network import choose_address
        from jobstrap.net.security import load_security

        base: Any = HeadlessWorker
    else:
        from distributed import Worker

        base = Worker
    address = (work / "address").read_text().strip()
    gate: asyncio.Event | None = None
    cpu_at_gate = [0.0]

    def report() -> None:
        out = work / f"host-{rank}.json"
        data: dict[str, Any] = {"rank": rank, "times": times, "addresses": addresses}
        cpu = _cpu_seconds(os.getpid()) - cpu_at_gate[0]
        data.update(failed=failed, rss_mib=rss_mib(), cpu_s_after_gate=round(cpu, 3))
        out.with_suffix(".tmp").write_text(json.dumps(data))
        out.with_suffix(".tmp").replace(out)

    async def open_gate() -> None:
        """Say when every worker of this host waits at the gate; open it on ``go``."""
        nonlocal gate
        gate = asyncio.Event()
        while len(at_gate) + len(failed) < args.per_process:
            await asyncio.sleep(0.05)
        (work / f"ready-{rank}").write_text(str(time.time()))
        go = work / "go"
        while not go.exists():
            await asyncio.sleep(0.005)
        cpu_at_gate[0] = _cpu_seconds(os.getpid())
        gate.set()
        while len(times) + len(failed) < args.per_process:
            await asyncio.sleep(0.1)
        report()

    class Timed(base):  # type: ignore[misc]
        connect_started: float | None = None

        async def join_pause(self) -> None:  # jobstrap's side only
            await super().join_pause()
            # Registration latency is timed from here: the pause is jobstrap's own
            # choice to connect later, not time the scheduler made it wait.
            self.connect_started = time.time()

        async def _register_with_scheduler(self) -> None:
            at_gate.append(str(self.name))
            while gate is None:
                await asyncio.sleep(0.01)
            await gate.wait()
            opened = time.time()
            await super()._register_with_scheduler()
            addresses[str(self.name)] = str(self.address)
            times[str(self.name)] = (self.connect_started or opened, time.time(), opened)

    if args.side != "dask_mpi":
        options = WorkerOptions(
            host=choose_address(args.interface, peer=address),
            security=load_security(args.run_dir),
            processes=args.per_process,
            nthreads=1,
            dashboard=False,
            nanny=False,
            names=names,
            worker_class=Timed,
            # The gate holds them until every host is ready: longer than the 60 s default.
            death_timeout=STORM_GATE_S,
            join_jitter=join_jitter(size * args.per_process),
        )

        async def ours() -> int:
            opener = asyncio.ensure_future(open_gate())
            code = await serve_workers(address, options)
            opener.cancel()
            return code

        return asyncio.run(ours())

    async def anchor() -> int:
        # dask-mpi's worker ranks: Worker(interface, protocol=None, nthreads=1,
        # memory_limit="auto", local_directory=None, name=rank), no nanny.
        opener = asyncio.ensure_future(open_gate())
        workers = [
            Timed(address, interface=args.interface, protocol=None, nthreads=1,
                  memory_limit="auto", local_directory=None, name=name)
            for name in names
        ]  # fmt: skip
        results = await asyncio.gather(*(w.start() for w in workers), return_exceptions=True)
        failed.extend(repr(r) for r in results if isinstance(r, BaseException))
        await opener
        await asyncio.gather(*(w.finished() for w in workers), return_exceptions=True)
        return 0

    return asyncio.run(anchor())


def _join_times_plugin() -> Any:
    """A scheduler plugin noting when the scheduler added each worker (its ack's moment)."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class JoinTimes(SchedulerPlugin):
        name = "bench-join-times"

        def __init__(self) -> None:
            self.times: dict[str, float] = {}

        def add_worker(self, scheduler: Any, worker: str) -> None:
            self.times[worker] = time.time()

    return JoinTimes()


def _anchor_scheduler(args: argparse.Namespace) -> int:
    """The anchor's scheduler, as dask-mpi's rank 0 builds it (plain TCP, dashboard on)."""
    from distributed import Scheduler

    async def serve() -> None:
        async with Scheduler(
            interface=args.interface, protocol=None, dashboard=True, dashboard_address=":8787"
        ) as scheduler:
            Path(args.work, "address").write_text(scheduler.address)
            await scheduler.finished()

    asyncio.run(serve())
    return 0


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def mem_available_gib() -> float:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def run_storm(
    side: str,
    processes: int,
    per_process: int,
    workdir: Path,
    *,
    interface: str = "ib0",
    launch: str = "srun",
    join_rate: float | None = None,
) -> dict[str, Any]:
    """One storm of ``processes * per_process`` workers against one scheduler on this host."""
    work = Path(tempfile.mkdtemp(prefix=f"storm-{side}-", dir=workdir))
    work.chmod(0o700)
    total = processes * per_process
    python = sys.executable
    env = dict(os.environ)
    if join_rate:
        env["JOBSTRAP_JOIN_RATE"] = str(join_rate)
    if side != "dask_mpi":
        from jobstrap.net.security import create_tls, load_security
        from jobstrap.store.rundir import RunDir

        run = RunDir.create(work, "run")
        create_tls(run.path)
        scheduler_argv = [
            python, "-m", "jobstrap.bootstrap", "--run-dir", str(run.path),
            "--mode", "scheduler", "--interface", interface, "--no-dashboard",
        ]  # fmt: skip
        security: Any = load_security(run.path)
        run_dir = str(run.path)
    else:
        from distributed import Security

        scheduler_argv = [python, str(Path(__file__).resolve()), "_anchor-scheduler", str(work)]
        scheduler_argv += ["--interface", interface]
        security = Security()  # type: ignore[no-untyped-call]
        run_dir = ""
    logs = contextlib.ExitStack()
    scheduler_log = logs.enter_context(open(work / "scheduler.out", "w"))  # noqa: SIM115
    hosts_log = logs.enter_context(open(work / "hosts.out", "w"))  # noqa: SIM115
    scheduler = subprocess.Popen(
        scheduler_argv, env=env, stdout=scheduler_log, stderr=subprocess.STDOUT
    )
    hosts: subprocess.Popen[Any] | None = None
    extra_hosts: list[subprocess.Popen[Any]] = []
    result: dict[str, Any] = {"side": side, "workers": total, "processes": processes}
    try:
        if side != "dask_mpi":
            from jobstrap.store.rundir import RunDir

            ok = wait_until(lambda: RunDir.open(run_dir).info_file.exists(), 60, 0.1)
            if not ok:
                raise RuntimeError(f"jobstrap's scheduler did not start; see {work}/scheduler.out")
            address = RunDir.open(run_dir).read_info().scheduler_address
            (work / "address").write_text(address)
        elif not wait_until(lambda: (work / "address").exists(), 60, 0.1):
            raise RuntimeError(f"the anchor's scheduler did not start; see {work}/scheduler.out")
        address = (work / "address").read_text().strip()
        host_argv = [
            python, str(Path(__file__).resolve()), "_storm-host", str(work), "--side", side,
            "--per-process", str(per_process), "--run-dir", run_dir, "--interface", interface,
        ]  # fmt: skip
        if launch == "srun":
            srun = [
                "srun", "--nodes=3", f"--ntasks={processes}", "--cpus-per-task=1",
                "--mem-per-cpu=1000", "--overcommit", f"--time={WALLTIME_STORM_MIN}",
                "--job-name=bench-storm",
            ]  # fmt: skip
            hosts = subprocess.Popen(
                [*srun, *host_argv],
                env=env,
                stdout=hosts_log,
                stderr=subprocess.STDOUT,
            )
        else:  # on this host, for trying the bench out
            locals_ = [
                subprocess.Popen(
                    host_argv,
                    env={**env, "SLURM_PROCID": str(i), "SLURM_NTASKS": str(processes)},
                    stdout=hosts_log,
                    stderr=subprocess.STDOUT,
                )
                for i in range(processes)
            ]
            hosts = locals_[0]
            extra_hosts.extend(locals_[1:])
        ready = wait_until(lambda: len(list(work.glob("ready-*"))) >= processes, 300, 0.2)
        if not ready:
            raise RuntimeError(f"worker hosts did not all start; see {work}/hosts.out")
        result["mem_available_gib_before"] = round(mem_available_gib(), 2)
        cpu_before = _cpu_seconds(scheduler.pid)
        result.update(
            asyncio.run(_storm_app(work, address, security, total, scheduler.pid, cpu_before))
        )
    finally:
        for host in [hosts, *extra_hosts]:
            if host is not None:
                with_timeout_kill(host, 60)
        scheduler.terminate()
        with_timeout_kill(scheduler, 30)
        logs.close()
    reports = [json.loads(p.read_text()) for p in sorted(work.glob("host-*.json"))]
    go = float((work / "go").read_text())
    acks: dict[str, float] = result.pop("scheduler_add_times", {})
    # From the moment each worker starts connecting to the scheduler's add_worker (the
    # moment it answers the registration): the scheduler's side, on the shared clock.
    # Timed from after jobstrap's join pause; ``from_gate`` adds the pause (the same
    # for the anchor, which does not pause).
    latencies = []
    from_gate = []
    seen = []  # ... and to the worker's reading that answer (its own event loop's delay)
    for r in reports:
        for name, (start, end, opened) in r["times"].items():
            seen.append(end - start)
            ack = acks.get(r["addresses"].get(name, ""))
            if ack is not None:
                latencies.append(ack - start)
                from_gate.append(ack - opened)
    result.update(
        {
            "registered": len(latencies),
            "registration_p50_s": _rounded(_percentile(latencies, 0.5)),
            "registration_p99_s": _rounded(_percentile(latencies, 0.99)),
            "registration_max_s": _rounded(max(latencies, default=None)),
            "from_gate_p50_s": _rounded(_percentile(from_gate, 0.5)),
            "from_gate_p99_s": _rounded(_percentile(from_gate, 0.99)),
            "worker_saw_ack_p50_s": _rounded(_percentile(seen, 0.5)),
            "worker_saw_ack_p99_s": _rounded(_percentile(seen, 0.99)),
            "last_ack_after_go_s": _rounded(max(acks.values()) - go if acks else None),
            "host_failures": [f for r in reports for f in r["failed"]][:10],
            "host_reports": len(reports),
            "host_rss_mib_max": max((r["rss_mib"] for r in reports), default=None),
            # The worker side's CPU per registration (TLS client, start-up after it):
            # at a site each worker has its own core; here all share the machine's two.
            "host_cpu_ms_per_registration": _rounded(
                1000 * sum(r.get("cpu_s_after_gate", 0) for r in reports) / max(1, len(seen))
            ),
            "workdir": str(work),
        }
    )
    result["lost_workers"] = total - int(result.get("workers_after_hold", 0))
    return result


WALLTIME_STORM_MIN = 15


def with_timeout_kill(proc: subprocess.Popen[Any], timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _storm_app(
    work: Path, address: str, security: Any, total: int, scheduler_pid: int, cpu_before: float
) -> dict[str, Any]:
    """The app: connected before the storm, it starts when every worker has joined."""
    from distributed import Client

    async with Client(address, security=security, asynchronous=True, timeout=60) as client:  # type: ignore[no-untyped-call]
        await client.register_plugin(_join_times_plugin())
        lowest_mem = mem_available_gib()
        go = time.time()
        (work / "go").write_text(repr(go))
        deadline = go + 600
        count = 0
        while time.time() < deadline:
            # n_workers=0: the count without every worker's record (cheap for the scheduler)
            count = (await client.scheduler.identity(n_workers=0))["n_workers"]
            lowest_mem = min(lowest_mem, mem_available_gib())
            if count >= total:
                break
            await asyncio.sleep(0.05)
        all_joined = time.time()
        cpu_storm = _cpu_seconds(scheduler_pid) - cpu_before
        # The app's first work touches every worker: one tiny task each.
        futures = client.map(lambda i: i, range(total), pure=False)
        await client.gather(futures)
        app_done = time.time()
        # Hold at full size: heartbeats and the scheduler's worker checks must keep all.
        cpu_hold_start = _cpu_seconds(scheduler_pid)
        hold_start = time.time()
        while time.time() - hold_start < STORM_HOLD_S:
            await asyncio.sleep(1.0)
            lowest_mem = min(lowest_mem, mem_available_gib())
        cpu_hold = _cpu_seconds(scheduler_pid) - cpu_hold_start
        hold = time.time() - hold_start
        after = (await client.scheduler.identity(n_workers=0))["n_workers"]
        add_times = await client.run_on_scheduler(
            lambda dask_scheduler: dict(dask_scheduler.plugins["bench-join-times"].times)
        )
        with contextlib.suppress(Exception):
            await client.shutdown()
    return {
        "go": go,
        "workers_joined": count,
        "all_joined_after_go_s": round(all_joined - go, 3),
        "app_done_after_go_s": round(app_done - go, 3),
        "workers_after_hold": after,
        "scheduler_add_times": add_times,
        "hold_s": round(hold, 1),
        "scheduler_cpu_s_storm": round(cpu_storm, 3),
        "scheduler_cpu_ms_per_registration": round(1000 * cpu_storm / max(1, count), 3),
        "scheduler_cpu_fraction_steady": round(cpu_hold / hold, 4),
        "mem_available_gib_lowest": round(lowest_mem, 2),
    }


def batch_targets(result: dict[str, Any], jobs: int) -> dict[str, Any]:
    ceiling = math.ceil(jobs / result["max_array_size"])
    return {
        "submit_calls_at_most": ceiling,
        "submit_ok": result["submit_calls"] <= ceiling,
        "status_calls_per_interval_at_most": 1,
        "status_ok": result["status_calls_per_interval"] <= 1,
        "cancel_calls_at_most": ceiling,
        "cancel_ok": result["cancel_calls"] <= ceiling,
        "throttled_ok": not result["throttled"],
        "leaked_ok": result["leaked_jobs"] == 0,
        "watcher_mib_at_most": 8,
        "watcher_ok": result["watcher_rss_mib"] <= 8,
    }


#: The storm's sides: jobstrap's scheduler and workers, and dask-mpi's; with
#: ``--paced-rate R``, jobstrap's again with ``JOBSTRAP_JOIN_RATE=R`` (``jobstrap_paced``).
STORM_SIDES = ("jobstrap", "jobstrap_paced", "dask_mpi")
#: Batch mode at many ranks: (launcher, method) pairs run by bench_bootstrap's code.
RANK_METHODS = ("jobstrap", "dask_mpi")


def storm_part(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """``--rounds`` storms per side, interleaved; the figures of the done-means at top."""
    processes = math.ceil(args.storm_workers / args.storm_per_process)
    sides = [s for s in STORM_SIDES if s != "jobstrap_paced" or args.paced_rate]
    rounds: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for round_ in range(args.rounds):
        for side in sides:
            try:
                found = run_storm(
                    side,
                    processes,
                    args.storm_per_process,
                    workdir,
                    interface=args.storm_interface,
                    launch=args.storm_launch,
                    join_rate=args.paced_rate if side == "jobstrap_paced" else None,
                )
            except Exception as error:  # a failure is a result
                found = {"side": side, "error": f"{type(error).__name__}: {error}"}
            rounds[side].append(found)
            print("storm", round_, side, json.dumps(found), flush=True)
    return rounds


def ranks_part(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Batch mode at ``--ranks`` (srun under Slurm, and mpiexec on one host), per method."""
    import bench_bootstrap as bb

    found: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for ranks in args.ranks:
        for launcher in args.launchers:
            case = f"{ranks}_{launcher}"
            found[case] = {m: [] for m in RANK_METHODS}
            for _ in range(args.rounds):
                for method in RANK_METHODS:
                    lowest = [mem_available_gib()]
                    stop = threading.Event()

                    def sample(low: list[float] = lowest, done: threading.Event = stop) -> None:
                        while not done.wait(1.0):
                            low[0] = min(low[0], mem_available_gib())

                    sampler = threading.Thread(target=sample, daemon=True)
                    sampler.start()
                    try:
                        if launcher == "mpiexec":
                            run = bb.run_mpiexec(ranks, workdir, args.timeout, method=method)
                        else:
                            run = bb.METHODS[method](ranks, workdir, args.timeout)
                    except Exception as error:
                        run = {"error": f"{type(error).__name__}: {error}"}
                    finally:
                        stop.set()
                        sampler.join()
                    run["mem_available_gib_lowest"] = round(lowest[0], 2)
                    found[case][method].append(run)
                    print("ranks", case, method, json.dumps(run), flush=True)
    return found


def _median(values: list[float]) -> float | None:
    import statistics

    return round(statistics.median(values), 3) if values else None


def summary_fields(
    storm: dict[str, list[dict[str, Any]]] | None, ranks: dict[str, Any] | None
) -> dict[str, Any]:
    """The done-means' figures (ours at top, the anchor's beside them), medians of rounds."""
    out: dict[str, Any] = {}
    keys = (
        "registration_p50_s",
        "registration_p99_s",
        "registration_max_s",
        "lost_workers",
        "all_joined_after_go_s",
        "app_done_after_go_s",
        "scheduler_cpu_ms_per_registration",
        "scheduler_cpu_fraction_steady",
        "host_cpu_ms_per_registration",
        "worker_saw_ack_p99_s",
        "mem_available_gib_lowest",
    )
    if storm:
        for side, rounds in storm.items():
            ok = [r for r in rounds if "error" not in r]
            prefix = "" if side == "jobstrap" else f"{side}_"
            out[f"{prefix}storm_rounds"] = len(rounds)
            out[f"{prefix}storm_failed_rounds"] = len(rounds) - len(ok)
            if side == "jobstrap":
                out["workers"] = rounds[0].get("workers") if rounds else None
            for key in keys:
                values = [r[key] for r in ok if r.get(key) is not None]
                if key == "lost_workers":
                    out[f"{prefix}{key}"] = max(values) if values else None
                else:
                    out[f"{prefix}{key}"] = _median(values)
    if ranks:
        out["ranks"] = max(int(c.split("_")[0]) for c in ranks)
        for case, by_method in ranks.items():
            for method, runs in by_method.items():
                ok = [r for r in runs if "error" not in r]
                prefix = "" if method == "jobstrap" else f"{method}_"
                out[f"{prefix}launch_to_ready_s_{case}"] = _median(
                    [r["launch_to_ready_s"] for r in ok]
                )
                out[f"{prefix}pss_per_worker_mib_{case}"] = _median(
                    [r["pss_per_worker_mib"] for r in ok]
                )
            ours = out.get(f"launch_to_ready_s_{case}")
            theirs = out.get(f"dask_mpi_launch_to_ready_s_{case}")
            out[f"launch_to_ready_vs_dask_mpi_{case}"] = (
                round(ours / theirs, 3) if ours and theirs else None
            )
    return out


def history_series(
    storm: dict[str, list[dict[str, Any]]] | None, ranks: dict[str, Any] | None
) -> tuple[dict[str, dict[str, list[float | None]]], dict[str, dict[str, str]]]:
    """Per-round values (``series``) and their pairs (``measures``) for bench/history.py."""
    series: dict[str, dict[str, list[float | None]]] = {}
    if storm:
        for key in ("registration_p99_s", "registration_p50_s", "all_joined_after_go_s"):
            series[f"storm_{key}"] = {
                side: [r.get(key) if "error" not in r else None for r in rounds]
                for side, rounds in storm.items()
            }
    if ranks:
        for case, by_method in ranks.items():
            series[f"ready_{case}"] = {
                m: [None if "error" in r else r.get("launch_to_ready_s") for r in runs]
                for m, runs in by_method.items()
            }
    measures = {
        name: {"series": name, "ours": "jobstrap", "anchor": "dask_mpi", "unit": "s"}
        for name in series
    }
    return series, measures


def _hidden(argv: list[str]) -> int | None:
    """The helper processes the storm starts: ``_storm-host`` and ``_anchor-scheduler``."""
    if not argv or argv[0] not in ("_storm-host", "_anchor-scheduler"):
        return None
    parser = argparse.ArgumentParser(prog=f"bench_scale.py {argv[0]}")
    parser.add_argument("work")
    parser.add_argument("--side", choices=STORM_SIDES, default="jobstrap")
    parser.add_argument("--per-process", type=int, default=50)
    parser.add_argument("--run-dir", default="")
    parser.add_argument("--interface", default="ib0")
    args = parser.parse_args(argv[1:])
    return _storm_host(args) if argv[0] == "_storm-host" else _anchor_scheduler(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    hidden = _hidden(argv)
    if hidden is not None:
        return hidden
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parts", nargs="+", choices=("batch", "storm", "ranks"), default=["batch"],
        help="batch: the emulator (on the machine); storm, ranks: on the test cluster's head",
    )  # fmt: skip
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--track", type=float, default=600.0, help="seconds to track the jobs")
    parser.add_argument("--storm-workers", type=int, default=1000)
    parser.add_argument("--storm-per-process", type=int, default=50)
    parser.add_argument("--storm-interface", default="ib0")
    parser.add_argument(
        "--paced-rate", type=float, default=0.0,
        help="also storm with JOBSTRAP_JOIN_RATE at this rate (the machine's own capacity)",
    )  # fmt: skip
    parser.add_argument(
        "--storm-launch", choices=("srun", "local"), default="srun",
        help="local: the worker hosts on this host (to try the bench out)",
    )  # fmt: skip
    parser.add_argument("--ranks", type=int, nargs="+", default=[256])
    parser.add_argument("--launchers", nargs="+", choices=("srun", "mpiexec"), default=["srun"])
    parser.add_argument("--rounds", type=int, default=1, help="storms / launches per side")
    parser.add_argument("--timeout", type=float, default=900.0, help="per batch-mode launch")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (scripts/emulator starts daemons; sdiag --reset; srun as root)")
    # A stopped benchmark still closes its cluster (which cancels every job).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("JOBSTRAP_RUN_ROOT", tempfile.mkdtemp(prefix="jobstrap-scale-"))
    workdir = Path(os.environ.get("JOBSTRAP_BENCH_DIR", str(REPO / ".testcluster" / "bench-scale")))
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    workload: dict[str, Any] = {"parts": sorted(args.parts)}
    if "batch" in args.parts:
        result.update(measure(args.jobs, args.track))
        targets.update(batch_targets(result, args.jobs))
        workload.update(jobs=args.jobs, track_seconds=args.track)
    storm = storm_part(args, workdir) if "storm" in args.parts else None
    ranks = ranks_part(args, workdir) if "ranks" in args.parts else None
    fields = summary_fields(storm, ranks)
    result.update(fields)
    if storm is not None:
        result["storm"] = storm
        workload.update(storm_workers=args.storm_workers, per_process=args.storm_per_process)
        p99 = fields.get("registration_p99_s")
        targets.update(
            registration_p99_at_most_s=2.0,
            registration_ok=p99 is not None and p99 <= 2.0,
            lost_ok=fields.get("lost_workers") == 0,
        )
    if ranks is not None:
        result["ranks_runs"] = ranks
        workload.update(ranks=sorted(args.ranks), launchers=sorted(args.launchers))
        for case in ranks:
            ratio_ = fields.get(f"launch_to_ready_vs_dask_mpi_{case}")
            targets[f"ranks_{case}_vs_dask_mpi_at_most"] = 0.7
            targets[f"ranks_{case}_ok"] = ratio_ is not None and ratio_ <= 0.7
    result["targets"] = targets
    import bench_bootstrap
    import distributed

    series, measures = history_series(storm, ranks)
    finished = (
        ("batch" not in args.parts or (result["scaled"] and result["all_cancelled"]))
        and not any("error" in r for rs in (storm or {}).values() for r in rs)
        and not any("error" in r for c in (ranks or {}).values() for rs in c.values() for r in rs)
    )
    run = new_run(
        "bench/bench_scale.py",
        versions={
            "python": platform.python_version(),
            "distributed": getattr(distributed, "__version__", "?"),
        },
        settings={
            "emulator": "scripts/emulator (1000 nodes, held partition)",
            "cpus": os.cpu_count(),
            "storm": {
                "hosts": (
                    "node1..node3 (one srun step), scheduler on head"
                    if args.storm_launch == "srun"
                    else "all on this machine (local processes), not the test cluster"
                ),
                "interface": args.storm_interface,
                "paced_rate": args.paced_rate,
                "per_process": args.storm_per_process,
                "host_config": STORM_HOST_CONFIG,
                "hold_s": STORM_HOLD_S,
                "anchor": "dask-mpi's settings: Scheduler(interface='ib0', protocol=None "
                "(tcp), dashboard on); Worker(interface='ib0', nthreads=1, "
                "memory_limit='auto', no nanny); distributed's defaults (connect 30 s, "
                "no jitter)",
            },
            "ranks": {
                "crowded_env": bench_bootstrap.CROWDED_ENV,
                "crowded_past_ranks_per_host": bench_bootstrap.CROWDED_RANKS,
            },
            "rounds": args.rounds,
        },
        workload=workload,
        series=series,
        measures=measures,
        detail=result,
        finished=finished,
    )
    append_run(
        args.output,
        run,
        benchmark="jobstrap at scale: batch side (emulated Slurm), connection storm, batch mode",
        script="bench/bench_scale.py",
    )
    shown = {k: v for k, v in result.items() if k not in ("storm", "ranks_runs")}
    print(json.dumps(shown, indent=2))
    return 0 if all(v for k, v in targets.items() if k.endswith("_ok")) else 1


if __name__ == "__main__":
    sys.exit(main())
