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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--track", type=float, default=600.0, help="seconds to track the jobs")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (scripts/emulator starts daemons; sdiag --reset)")
    # A stopped benchmark still closes its cluster (which cancels every job).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("JOBSTRAP_RUN_ROOT", tempfile.mkdtemp(prefix="jobstrap-scale-"))
    result = measure(args.jobs, args.track)
    ceiling = math.ceil(args.jobs / result["max_array_size"])
    result["targets"] = {
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
    import distributed

    run = new_run(
        "bench/bench_scale.py",
        versions={
            "python": platform.python_version(),
            "distributed": getattr(distributed, "__version__", "?"),
        },
        settings={
            "emulator": "scripts/emulator (1000 nodes, held partition)",
            "cpus": os.cpu_count(),
        },
        workload={"jobs": args.jobs, "track_seconds": args.track},
        series={},
        measures={},
        detail=result,
        finished=result["scaled"] and result["all_cancelled"],
    )
    append_run(
        args.output,
        run,
        benchmark="batch side at scale (emulated Slurm)",
        script="bench/bench_scale.py",
    )
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "jobs",
                    "submit_calls",
                    "status_calls_per_interval",
                    "cancel_calls",
                    "throttled",
                    "leaked_jobs",
                    "watcher_rss_mib",
                    "process_rss_mib",
                    "squeue_parse_seconds",
                )
            },
            indent=2,
        )
    )
    print(json.dumps(result["targets"], indent=2))
    return 0 if all(v for k, v in result["targets"].items() if k.endswith("_ok")) else 1


if __name__ == "__main__":
    sys.exit(main())
