"""A stand-in for Slurm's commands, shared by the batch control tests.

``golden/fakebin/slurm.py`` is installed on PATH as sbatch/squeue/sacct/scancel/
scontrol; it prints the formats recorded from Slurm 22.05 and fails on demand
(transient errors, hangs, jobs accepted but no id printed). :class:`FakeSlurm` sets
its state and reads its call log.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from jobstrap.batchctl.commands import RetryPolicy, TokenBucket
from jobstrap.batchctl.control import BatchControl
from jobstrap.jobs.spec import JobSpec, Role, new_tag

FAKE = Path(__file__).parent.parent / "golden" / "fakebin" / "slurm.py"
FAKE_COMMANDS = ("sbatch", "squeue", "sacct", "scancel", "scontrol")


class FakeSlurm:
    """Handle on the fake Slurm's state and call log (see golden/fakebin/slurm.py)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "state"
        self.bin = root / "bin"
        self.dir.mkdir(parents=True)
        self.bin.mkdir()
        # A wrapper per command so the fake runs with this interpreter whatever PATH says.
        for command in FAKE_COMMANDS:
            wrapper = self.bin / command
            wrapper.write_text(
                f'#!/bin/sh\nFAKESLURM_COMMAND={command} exec {sys.executable} {FAKE} "$@"\n'
            )
            wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        self._write({"next_id": 100, "jobs": {}, "plan": {}, "history": [],
                     "max_array_size": 1001})  # fmt: skip

    def _read(self) -> dict[str, Any]:
        return json.loads((self.dir / "state.json").read_text())

    def _write(self, state: dict[str, Any]) -> None:
        tmp = self.dir / "state.json.new"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.dir / "state.json")

    def change(self, **values: Any) -> None:
        state = self._read()
        state.update(values)
        self._write(state)

    def plan(self, command: str, *actions: str) -> None:
        state = self._read()
        state["plan"][command] = list(actions)
        self._write(state)

    def jobs(self) -> dict[str, dict[str, Any]]:
        jobs: dict[str, dict[str, Any]] = self._read()["jobs"]
        return jobs

    def set_job(self, job_id: str, **changes: Any) -> None:
        state = self._read()
        job = state["jobs"][job_id]
        job.update(changes)
        if "state" in changes and job.get("array"):
            job["tasks"] = dict.fromkeys(job["tasks"], changes["state"])
        self._write(state)

    def calls(self, command: str | None = None) -> list[list[str]]:
        path = self.dir / "calls.log"
        lines = path.read_text().splitlines() if path.exists() else []
        argvs = [json.loads(line) for line in lines]
        return [a for a in argvs if command is None or a[0] == command]


def make_control(**changes: Any) -> BatchControl:
    """A batchctl with quick retries and a bucket that never makes tests wait."""
    options: dict[str, Any] = {
        "retry": RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, budget=30),
        "timeout": 10.0,
        "bucket": TokenBucket(10_000, 10_000),
    }
    options.update(changes)
    return BatchControl("slurm", **options)


def make_spec(run_dir: Path, **changes: Any) -> JobSpec:
    values: dict[str, Any] = {
        "name": "jobstrap",
        "role": Role.WORKERS,
        "run_dir": str(run_dir),
        "tag": new_tag(),
        "command": ("sleep", "30"),
        "walltime": 120,
        "queue": "debug",
        "launcher": "none",
        "log_directory": str(run_dir / "logs"),
    }
    values.update(changes)
    return JobSpec(**values)
