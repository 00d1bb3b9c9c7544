#!/usr/bin/env python3
"""A tiny stand-in for Slurm's commands, for batch control's unit tests.

Installed on PATH as ``sbatch``, ``squeue``, ``sacct``, ``scancel`` and ``scontrol``
(symlinks to this file); it dispatches on its own name. It is a real executable, so
batch control's timeouts, exit codes and retries meet real subprocesses. Output formats
are the ones recorded from Slurm 22.05 (see ``tests/unit/golden/slurm/``).

State lives in ``$FAKESLURM_DIR/state.json`` (guarded by an flock):

``jobs``
    ``{id: {"name", "array": [lo, hi] | null, "state", "tasks": {i: state},
    "live": bool, "submit", "exit"}}``; ``live`` false means gone from squeue (only
    sacct still knows it).
``history``
    Extra sacct lines (older jobs that held an id: recycled ids).
``plan``
    ``{command: [action, ...]}``, one action consumed per call (default ``ok``):
    ``ok``; ``transient`` (Socket timed out, exit 1); ``hang`` (sleep, create
    nothing); ``accept-hang`` (create the job, then sleep); ``accept-garbage``
    (create the job, print no id); ``accept-transient`` (create the job, then fail
    transiently); ``reject:MESSAGE``; ``recorded:FILE`` (sbatch: print a rejection
    recorded from the real sbatch, ``golden/slurm/FILE``, exit 1); ``disabled``
    (sacct: accounting is off).
``max_array_size``, ``cluster_name``
    What ``scontrol show config`` reports.

Every call is appended to ``$FAKESLURM_DIR/calls.log`` (one argv per line, JSON).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import time
from typing import Any

DIR = os.environ["FAKESLURM_DIR"]
STATE = os.path.join(DIR, "state.json")
TRANSIENT = "Socket timed out on send/recv operation"


class Locked:
    def __enter__(self) -> dict[str, Any]:
        self.fd = os.open(os.path.join(DIR, "state.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        with open(STATE, encoding="utf-8") as handle:
            self.state: dict[str, Any] = json.load(handle)
        return self.state

    def __exit__(self, *exc: object) -> None:
        with open(STATE + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(self.state, handle)
        os.replace(STATE + ".tmp", STATE)
        os.close(self.fd)


def next_action(state: dict[str, Any], command: str) -> str:
    plan = state.setdefault("plan", {}).get(command) or []
    return plan.pop(0) if plan else "ok"


def option(argv: list[str], name: str) -> str | None:
    for arg in argv:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def task_lines(job_id: str, job: dict[str, Any]) -> list[tuple[str, str]]:
    """(id, state) per line, array tasks one per line (squeue --array)."""
    if not job.get("array"):
        return [(job_id, job["state"])]
    return [(f"{job_id}_{i}", s) for i, s in sorted(job["tasks"].items(), key=lambda t: int(t[0]))]


def sbatch(argv: list[str]) -> int:
    script = argv[-1]
    with open(script, encoding="utf-8") as handle:
        text = handle.read()
    name = re.search(r"^#SBATCH --job-name=(\S+)", text, re.M)
    array = re.search(r"^#SBATCH --array=(\d+)-(\d+)", text, re.M)
    with Locked() as state:
        action = next_action(state, "sbatch")
        if action.startswith("recorded:"):
            # A rejection recorded from the real sbatch (golden/slurm/<file>).
            golden = os.path.join(os.path.dirname(os.path.dirname(__file__)), "slurm", action[9:])
            with open(golden, encoding="utf-8") as handle:
                sys.stderr.write(handle.read())
            return 1
        if action.startswith("reject:"):
            print(f"sbatch: error: Batch job submission failed: {action[7:]}", file=sys.stderr)
            return 1
        if action == "transient":
            print(f"sbatch: error: Batch job submission failed: {TRANSIENT}", file=sys.stderr)
            return 1
        if action == "hang":
            pass
        else:
            job_id = str(state["next_id"])
            state["next_id"] += 1
            job: dict[str, Any] = {
                "name": name.group(1) if name else "sbatch",
                "array": None,
                "state": "PENDING",
                "live": True,
                "submit": "2024-05-06T10:00:00",
                "exit": "0:0",
            }
            if array:
                lo, hi = int(array.group(1)), int(array.group(2))
                job["array"] = [lo, hi]
                job["tasks"] = {str(i): "PENDING" for i in range(lo, hi + 1)}
            state["jobs"][job_id] = job
    if action in ("hang", "accept-hang"):
        time.sleep(30)
        return 0
    if action == "accept-garbage":
        print("sbatch: something unexpected happened")
        return 0
    if action == "accept-transient":
        print(f"sbatch: error: Batch job submission failed: {TRANSIENT}", file=sys.stderr)
        return 1
    print(job_id)
    return 0


def squeue(argv: list[str]) -> int:
    with Locked() as state:
        action = next_action(state, "squeue")
        jobs = state["jobs"]
    if action == "transient":
        print(f"squeue: error: slurm_load_jobs error: {TRANSIENT}", file=sys.stderr)
        return 1
    if action == "hang":
        time.sleep(30)
    wanted_name = option(argv, "name")
    if wanted_name is not None:
        for job_id, job in jobs.items():
            if job["live"] and job["name"] == wanted_name:
                for one, _ in task_lines(job_id, job):
                    print(one)
        return 0
    wanted = (option(argv, "jobs") or "").split(",")
    lines = []
    # Heterogeneous components (100+0, 100+1) answer to their job's id (100).
    selected = [(k, j) for k, j in jobs.items() if k in wanted or k.split("+")[0] in wanted]
    for job_id, job in selected:
        if not job["live"]:
            continue
        for one, job_state in task_lines(job_id, job):
            node = "node1" if job_state != "PENDING" else ""
            reason = "None" if job_state != "PENDING" else "Priority"
            lines.append(
                f"{one}|{job_state}|{reason}|{node}|{job['name']}|{job['submit']}|0:05|4:55"
            )
    if not lines:
        print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def sacct(argv: list[str]) -> int:
    with Locked() as state:
        action = next_action(state, "sacct")
        jobs = state["jobs"]
        history = state.get("history", [])
    if action == "disabled":
        print("sacct: error: Slurm accounting storage is disabled", file=sys.stderr)
        return 1
    if action == "transient":
        print(f"sacct: error: {TRANSIENT}", file=sys.stderr)
        return 1
    wanted = set((option(argv, "jobs") or "").split(","))
    for line in history:
        if line.split("|")[0].split("_")[0] in wanted:
            print(line)
    for job_id, job in jobs.items():
        if job_id not in wanted or job.get("no_accounting"):
            continue
        for one, job_state in task_lines(job_id, job):
            print(
                f"{one}|{job_state}|{job['exit']}|None|node1|{job['name']}|{job['submit']}|00:01:00"
            )
            print(f"{one}.batch|{job_state}|{job['exit']}|||batch||00:01:00")
    return 0


def _expand(ranges: str) -> list[str]:
    tasks: list[str] = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        tasks.extend(str(i) for i in range(int(low), int(high or low) + 1))
    return tasks


def scancel(argv: list[str]) -> int:
    rc = 0
    with Locked() as state:
        action = next_action(state, "scancel")
        if action == "transient":
            print(f"scancel: error: {TRANSIENT}", file=sys.stderr)
            return 1
        targets = []
        for arg in (a for a in argv if not a.startswith("-")):
            # scancel takes a folded array expression (123_[0-2,5]) as one argument.
            base, _, task = arg.partition("_")
            if task.startswith("["):
                targets.extend(f"{base}_{t}" for t in _expand(task.strip("[]")))
            else:
                targets.append(arg)
        for target in targets:
            base, _, task = target.partition("_")
            job = state["jobs"].get(base)
            if job is None or not job["live"]:
                print(f"scancel: error: Kill job error on job id {target}: "
                      "Invalid job id specified", file=sys.stderr)  # fmt: skip
                rc = 1
                continue
            if task:
                job["tasks"][task] = "CANCELLED"
            elif job.get("array"):
                job["tasks"] = dict.fromkeys(job["tasks"], "CANCELLED")
            job["state"] = "CANCELLED"
    return rc


def scontrol(argv: list[str]) -> int:
    with Locked() as state:
        action = next_action(state, "scontrol")
        size = state.get("max_array_size", 1001)
        state.setdefault("cluster_name", "jobstrap")
    if action == "transient":
        print(f"scontrol: error: {TRANSIENT}", file=sys.stderr)
        return 1
    print("Configuration data as of 2024-05-06T10:00:00")
    print("AccountingStorageType   = accounting_storage/slurmdbd")
    print(f"ClusterName             = {state.get('cluster_name', 'jobstrap')}")
    print(f"MaxArraySize            = {size}")
    print("MaxJobCount             = 10000")
    return 0


def main() -> int:
    command = os.environ.get("FAKESLURM_COMMAND") or os.path.basename(sys.argv[0])
    with open(os.path.join(DIR, "calls.log"), "a", encoding="utf-8") as log:
        log.write(json.dumps([command, *sys.argv[1:]]) + "\n")
    handler = {"sbatch": sbatch, "squeue": squeue, "sacct": sacct, "scancel": scancel,
               "scontrol": scontrol}[command]  # fmt: skip
    return handler(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
