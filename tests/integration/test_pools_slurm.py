"""Worker pools and idle-aware adapt on the real Slurm test cluster (run on ``head``).

A cluster with a "cpu" and a "gpu" pool: tasks tagged ``resources={"GPU": 1}`` run
only on the gpu pool's workers, untagged ones on the cpu pool's; ``adapt`` takes the
gpu pool from 0 jobs to 2 and back to 0 while the cpu pool keeps its job. The first
test gives the gpu pool ``GPU=1`` per worker through ``worker_resources`` on the
default partition (no GPUs needed); the second asks Slurm for real (fake-device)
GPUs on the ``gpu`` partition and is skipped where the cluster has none.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from distributed import Client

from jobstrap import SLURMCluster

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs the Slurm test cluster"),
]

PROFILE = "testcluster"
SMALL = {"cores": 1, "memory": "500MiB", "walltime": "00:10:00"}


def wait_until(condition: Callable[[], bool], timeout: float, seen: Callable[[], object]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s; last seen: {seen()}")
        time.sleep(0.2)


def _probe() -> Callable[[int], tuple[str, str, str]]:
    # Defined in a function so it is pickled by value (the workers cannot import tests).
    def probe(x: int) -> tuple[str, str, str]:
        import os
        import socket
        import time

        from distributed import get_worker

        time.sleep(0.2)
        # The worker's own device by its node-wide id: with ConstrainDevices each job's
        # CUDA_VISIBLE_DEVICES restarts at 0, so two jobs on a node both show "0".
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        own = os.environ.get("JOBSTRAP_GPU_ID", "") if visible else ""
        return str(get_worker().name), socket.gethostname(), own

    return probe


probe = _probe()


def pool_of(worker: str) -> str:
    return worker.split("-")[1]


def run_pools(cluster: SLURMCluster) -> list[tuple[str, str, str]]:
    """The scenario both tests share; returns where the GPU tasks ran."""
    cluster.scale(jobs=1, pool="cpu")
    with Client(cluster) as client:
        client.wait_for_workers(1, timeout=180)
        plain = client.gather(client.map(probe, range(10), pure=False))
        assert {pool_of(w) for w, _, _ in plain} == {"cpu"}
        cpu_jobs = set(cluster.job_pool.plan("cpu"))

        adaptive = cluster.adapt(pools={"gpu": (0, 2)}, interval="1s")
        tagged = client.gather(client.map(probe, range(40), resources={"GPU": 1}, pure=False))
        assert len(tagged) == 40
        assert {pool_of(w) for w, _, _ in tagged} == {"gpu"}
        gpu_jobs = {s.job_id for s in cluster.job_history.values() if s.pool == "gpu"}
        assert len(gpu_jobs) == 2
        assert {"status": "up", "pool": "gpu", "n": 2} in [e for _, e in adaptive.log]

        wait_until(
            lambda: not cluster.job_pool.plan("gpu"),
            180,
            lambda: {p: sorted(cluster.job_pool.plan(p)) for p in cluster.pools},
        )
        assert set(cluster.job_pool.plan("cpu")) == cpu_jobs
        assert {s.pool for s in cluster.jobs.values()} == {"cpu"}
        return tagged


def test_tagged_tasks_run_only_on_the_pool_providing_the_resource() -> None:
    pools: dict[str, Any] = {"cpu": {}, "gpu": {"worker_resources": {"GPU": 1}}}
    with SLURMCluster(PROFILE, **SMALL, pools=pools) as cluster:
        run_pools(cluster)


def _has_partition(name: str) -> bool:
    out = subprocess.run(
        ["sinfo", "--noheader", "--partition", name, "--format=%P"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return bool(out.strip())


@pytest.mark.skipif(
    shutil.which("sinfo") is None or not _has_partition("gpu"),
    reason="needs the test cluster's gpu partition (fake GPU devices)",
)
def test_a_gpu_pool_of_two_gpus_per_job_runs_gpu_tasks_on_its_own_devices() -> None:
    pools: dict[str, Any] = {"cpu": {}, "gpu": {"queue": "gpu", "gpus": 2, "cores": 2}}
    with SLURMCluster(PROFILE, **SMALL, pools=pools) as cluster:
        tagged = run_pools(cluster)
    # One worker per GPU, each with its own device (node-wide id), distinct on each node.
    first = {(host, worker): own for worker, host, own in tagged}
    assert all(first.values())
    by_host: dict[str, set[str]] = {}
    for (host, _), device in first.items():
        by_host.setdefault(host, set()).add(device)
    workers_per_host: dict[str, int] = {}
    for host, _ in first:
        workers_per_host[host] = workers_per_host.get(host, 0) + 1
    assert all(len(by_host[h]) == workers_per_host[h] for h in by_host)


def test_idle_hold_keeps_the_job_across_the_gaps_of_a_serial_loop() -> None:
    with SLURMCluster(PROFILE, **SMALL) as cluster, Client(cluster) as client:
        adaptive = cluster.adapt(minimum_jobs=0, maximum_jobs=1, idle_hold="auto")
        for step in range(3):
            client.gather(client.map(time.sleep, [0.5] * 2, pure=False))
            if step < 2:
                time.sleep(5)
        assert len(cluster.job_history) == 1
        assert adaptive.released == {"default": 0}
        wait_until(lambda: not cluster.job_pool.plan(), 180, lambda: cluster.jobs)
        assert adaptive.released == {"default": 1}
