"""GPUs on the real Slurm test cluster: fake devices, real GRES allocation and pinning.

Every node has four fake GPUs (``/dev/nvidia0..3``, NVIDIA's major number) that
Slurm's GRES plugin allocates, accounts and, with ``up --cgroup-memory``, fences. No
CUDA runs: what is checked is what Slurm gives each job and what jobstrap makes of
it (a worker per device, its own device first, ``GPU=1``). ``JOBSTRAP_GPU_ID`` is a
worker's device by Slurm's node-wide index, which ``ConstrainDevices`` leaves global
while it re-bases ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import TestCluster

from jobstrap import SLURMCluster

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs the Slurm test cluster"),
]

PROFILE = "testcluster-gpu"
SMALL = {"walltime": "00:10:00"}
TIMEOUT = 300.0


def wait_until(condition: Callable[[], bool], timeout: float, seen: Callable[[], object]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s; last seen: {seen()}")
        time.sleep(0.5)


#: What each worker's environment says of its GPUs (os.getenv needs no test code there).
VARIABLES = ("CUDA_VISIBLE_DEVICES", "JOBSTRAP_GPU_ID", "SLURM_JOB_GPUS", "SLURM_JOB_ID")


def _views(cluster: SLURMCluster) -> dict[str, dict[str, Any]]:
    """Every worker's GPU variables, host, name and resources, by worker address."""
    with cluster.get_client() as client:
        seen = {name: client.run(os.getenv, name, "") for name in VARIABLES}
        hosts = client.run(socket.gethostname)
        workers = client.scheduler_info()["workers"]
    return {
        a: {
            **{name: seen[name][a] for name in VARIABLES},
            "host": hosts[a], "name": w["name"], "resources": w["resources"],
        }
        for a, w in workers.items()
    }  # fmt: skip


def test_a_job_with_two_gpus_runs_two_workers_each_on_its_own_device(
    testcluster: TestCluster,
) -> None:
    with SLURMCluster(PROFILE, gpus=2, **SMALL) as cluster:
        cluster.scale(jobs=1)
        cluster.wait_for_workers(2, timeout=TIMEOUT)
        views = list(_views(cluster).values())
        with cluster.get_client() as client:
            # os.getenv(name, i) on the worker: its GPU's id (i is only the default).
            tagged = client.gather(
                client.map(partial(os.getenv, "JOBSTRAP_GPU_ID"), range(8),
                           resources={"GPU": 1}, pure=False)
            )  # fmt: skip

    assert len(views) == 2, views
    allocated = views[0]["SLURM_JOB_GPUS"].split(",")
    assert len(allocated) == 2, views
    own = [v["CUDA_VISIBLE_DEVICES"].split(",") for v in views]
    assert len({o[0] for o in own}) == 2, own  # each its own device first
    assert all(sorted(o) == sorted(own[0]) for o in own), own  # the job's devices, rotated
    assert sorted(v["JOBSTRAP_GPU_ID"] for v in views) == sorted(allocated)
    assert all(v["resources"] == {"GPU": 1} for v in views), views
    assert set(tagged) <= set(allocated)


def test_two_gpu_jobs_on_one_node_never_share_a_device(testcluster: TestCluster) -> None:
    node = testcluster.compute_nodes[0]
    with SLURMCluster(PROFILE, gpus=2, extra_directives=[f"--nodelist={node}"], **SMALL) as cluster:
        cluster.scale(jobs=2)
        cluster.wait_for_workers(4, timeout=TIMEOUT)
        views = list(_views(cluster).values())

    by_job: dict[str, set[str]] = {}
    for view in views:
        assert view["host"] == node, views
        by_job.setdefault(view["SLURM_JOB_ID"], set()).add(view["JOBSTRAP_GPU_ID"])
    assert len(by_job) == 2, views
    first, second = by_job.values()
    assert len(first) == len(second) == 2, by_job
    assert not first & second, by_job


def test_a_mem_per_gpu_job_is_accepted_and_gets_memory_per_gpu(testcluster: TestCluster) -> None:
    with SLURMCluster(PROFILE, gpus=2, mem_per_gpu="600MiB", **SMALL) as cluster:
        cluster.scale(jobs=1)
        cluster.wait_for_workers(2, timeout=TIMEOUT)
        (job_id,) = list(cluster.jobs)
        shown = testcluster.on(testcluster.login_host, ["scontrol", "show", "job", job_id])

    assert shown.returncode == 0, shown.stderr
    assert "mem=1200M" in shown.stdout, shown.stdout  # two GPUs' worth
    assert "gres/gpu=2" in shown.stdout, shown.stdout


APP = """\
import json, os, socket
from distributed import Client

def view():
    return {"cvd": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "id": os.environ.get("JOBSTRAP_GPU_ID", ""),
            "job_gpus": os.environ.get("SLURM_JOB_GPUS", ""),
            "host": socket.gethostname()}

with Client() as client:
    seen = client.run(view)
    workers = client.scheduler_info()["workers"]
    tagged = client.gather(client.map(lambda i: os.environ["JOBSTRAP_GPU_ID"], range(16),
                                      resources={"GPU": 1}, pure=False))
    report = {
        "workers": [{**seen[a], "resources": w["resources"]} for a, w in workers.items()],
        "tagged": sorted(set(tagged)),
        "client_host": socket.gethostname(),
        "scheduler_host": client.scheduler_info()["address"],
    }
print("REPORT " + json.dumps(report), flush=True)
"""


def test_batch_mode_runs_a_worker_per_gpu_beside_the_cpu_only_scheduler_and_app(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    app = shared_scratch / "app.py"
    app.write_text(APP)
    env = {**os.environ, "JOBSTRAP_STATE_DIR": str(shared_scratch / "state"),
           "JOBSTRAP_RUN_ROOT": str(shared_scratch / "runs")}  # fmt: skip

    done = subprocess.run(
        [sys.executable, "-m", "jobstrap", "submit", "--profile", "testcluster",
         "--nodes", "2", "--set", "gpus=4", "--set", "memory=3GiB",
         "--set", "poll_interval=1", "--wait", str(app)],
        capture_output=True, text=True, timeout=600, env=env, cwd=shared_scratch,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    out_path = next(
        line.split(None, 1)[1] for line in done.stdout.splitlines() if line.startswith("stdout")
    )
    output = Path(out_path.strip()).read_text()
    report = json.loads(next(x for x in output.splitlines() if x.startswith("REPORT "))[7:])
    workers = report["workers"]
    assert len(workers) == 8, workers  # 2 nodes x 4 GPUs, and no CPU worker
    assert all(w["resources"] == {"GPU": 1} for w in workers), workers
    by_host: dict[str, list[dict[str, str]]] = {}
    for worker in workers:
        by_host.setdefault(worker["host"], []).append(worker)
    assert len(by_host) == 2, by_host
    for host_workers in by_host.values():
        allocated = sorted(host_workers[0]["job_gpus"].split(","))
        assert len(allocated) == 4, host_workers
        assert sorted(w["id"] for w in host_workers) == allocated  # one worker per device
        assert len({w["cvd"].split(",")[0] for w in host_workers}) == 4, host_workers
    assert len(report["tagged"]) > 1, report  # GPU tasks spread over GPU workers


def test_the_doctor_reports_the_gpus_the_probe_job_was_given(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    env = {**os.environ, "JOBSTRAP_STATE_DIR": str(shared_scratch / "state"),
           "JOBSTRAP_RUN_ROOT": str(shared_scratch / "runs")}  # fmt: skip
    env.pop("JOBSTRAP_PROFILE", None)

    done = subprocess.run(
        [sys.executable, "-m", "jobstrap", "doctor", "-p", PROFILE, "--json",
         "--timeout", "120", "--set", "gpus=3"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip

    report = json.loads(done.stdout)
    found = {c["name"]: c for c in report["checks"]}
    assert found["gpus"]["status"] == "OK", found
    assert "3 on node" in found["gpus"]["detail"]
    assert found["gpu workers"]["status"] == "OK", found
    assert found["gpu workers"]["detail"].startswith("3 workers, each its own device first")
