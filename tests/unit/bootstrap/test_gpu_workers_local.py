"""One worker per GPU, run for real on this machine (no GPU needed: only the variables).

A workers-mode bootstrap is given the environment Slurm sets in a task holding
global GPUs 6 and 7, re-based by ``ConstrainDevices`` to ``0,1``; each of its
workers must see its own device first and offer ``GPU=1``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jobstrap.net.security import create_tls
from jobstrap.store.rundir import RunDir

CHECK = """\
import json, os, sys
from distributed import Client
from jobstrap.net.security import load_security
from jobstrap.store.rundir import RunDir
run = RunDir(sys.argv[1])
with Client(run.read_info().scheduler_address, security=load_security(run)) as c:
    c.wait_for_workers(2, timeout=120)
    seen = c.run(lambda: (os.environ.get("CUDA_VISIBLE_DEVICES"),
                          os.environ.get("JOBSTRAP_GPU_ID")))
    workers = c.scheduler_info()["workers"]
    report = {w["name"]: [*seen[a], w["resources"], w["nthreads"]] for a, w in workers.items()}
    print("report", json.dumps(report, sort_keys=True), flush=True)
    c.shutdown()
"""


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    run = RunDir.create(tmp_path / "runs", "run")
    create_tls(run)
    return run


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "PMI", "DASK_", "CUDA_", "JOBSTRAP_"))
    }
    env.update(extra)
    return env


def _bootstrap(run: RunDir, *options: str) -> list[str]:
    argv = [sys.executable, "-m", "jobstrap.bootstrap", "--run-dir", str(run)]
    return [*argv, "--death-timeout", "20", *options]


def test_a_task_with_two_gpus_runs_two_workers_each_with_its_own_device_first(
    run: RunDir, tmp_path: Path
) -> None:
    gpus = {"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_STEP_GPUS": "6,7", "SLURM_JOB_GPUS": "6,7"}
    scheduler = subprocess.Popen(
        _bootstrap(run, "--mode", "scheduler", "--no-dashboard"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    workers = subprocess.Popen(
        _bootstrap(
            run, "--mode", "workers", "--gpu-workers", "--worker-processes", "2",
            "--nthreads", "3", "--name", "job7", "--no-dashboard",
        ),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(**gpus),
    )  # fmt: skip
    check = tmp_path / "check.py"
    check.write_text(textwrap.dedent(CHECK))
    try:
        deadline = time.monotonic() + 120
        while not run.info_file.exists():
            assert time.monotonic() < deadline, "no info.json from the scheduler"
            time.sleep(0.2)
        result = subprocess.run(
            [sys.executable, str(check), str(run)],
            capture_output=True, text=True, timeout=180, env=_env(),
        )  # fmt: skip
        _, w_err = workers.communicate(timeout=120)
        _, s_err = scheduler.communicate(timeout=120)
    finally:
        for proc in (scheduler, workers):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    assert result.returncode == 0, result.stderr
    assert (
        'report {"job7-0": ["0,1", "6", {"GPU": 1}, 3], "job7-1": ["1,0", "7", {"GPU": 1}, 3]}'
        in result.stdout
    ), result.stdout
    assert workers.returncode == 0, w_err
    assert scheduler.returncode == 0, s_err


def test_gpu_workers_without_gpus_stop_with_one_line_and_exit_2(run: RunDir) -> None:
    result = subprocess.run(
        _bootstrap(run, "--mode", "workers", "--gpu-workers", "--scheduler-address",
                   "tcp://127.0.0.1:1", "--protocol", "tcp"),
        capture_output=True, text=True, timeout=120, env=_env(SLURM_GPUS_ON_NODE="4"),
    )  # fmt: skip

    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "no GPU" in lines[0]
