"""Graphs as batch jobs on the real Slurm test cluster (run on its login node ``head``).

The same behaviours as ``tests/unit/batch/test_client_local.py``, with ``profile="testcluster"``:
``jobstrap.submit`` on ``head`` ships the graph through the shared file system, real
``sbatch``/``squeue``/``sacct``/``scancel`` run through batch control, and the job's
scheduler, graph runner and workers are MPI ranks (``srun --mpi=pmi2``) on
node1..node3, talking TLS over ib0.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from conftest import COMPUTE_NODES, TestCluster, new_shared_dir

import jobstrap
from jobstrap.batch.future import JobFuture
from jobstrap.errors import JobFailedError

pytestmark = pytest.mark.cluster

PROFILE = "testcluster"
#: Two nodes: the ranks (scheduler, runner, workers) land on different hosts.
JOB = {"profile": PROFILE, "nodes": 2, "walltime": "00:10:00", "memory": "1GiB"}
#: Queueing plus startup on a busy two-core machine; far above the usual 15-20 s.
TIMEOUT = 300.0
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def shared_state(testcluster: TestCluster, request: pytest.FixtureRequest) -> Iterator[Path]:
    # Run directories and the registry on the shared file system, apart from other tests.
    root = new_shared_dir("batch-cluster")
    failed_before = request.session.testsfailed
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JOBSTRAP_RUN_ROOT", str(root / "runs"))
        patch.setenv("JOBSTRAP_STATE_DIR", str(root / "state"))
        patch.delenv("JOBSTRAP_PROFILE", raising=False)
        patch.chdir(root)
        yield root
    if request.session.testsfailed == failed_before:
        shutil.rmtree(root, ignore_errors=True)  # kept after a failure: scripts and logs


def boom(n: int) -> None:
    def inner() -> None:
        raise ValueError(f"bad value {n}")

    inner()


def hosts_of_workers() -> list[str]:
    import socket

    from distributed import get_client

    client = get_client()
    return sorted(set(client.run(socket.gethostname).values()))


def wait_for_phase(future: JobFuture, phase: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = future.progress()
        if progress is not None and progress.phase == phase:
            return
        time.sleep(0.5)
    raise AssertionError(
        f"no phase {phase!r} after {timeout:g} s; last progress {future.progress()}, "
        f"state {future.state}\n{future.logs(tail=30)}"
    )


def test_a_chunked_array_expression_computed_in_a_job_equals_the_local_result() -> None:
    x = da.random.default_rng(1).random((2000, 2000), chunks=(500, 500))
    expression = (x + x.T) - x.mean(axis=0)

    remote = jobstrap.submit(expression, **JOB).result(timeout=TIMEOUT)

    np.testing.assert_allclose(remote, expression.compute())


def test_the_workers_of_a_graph_job_run_on_the_compute_nodes() -> None:
    hosts = jobstrap.submit(hosts_of_workers, **JOB).result(timeout=TIMEOUT)

    assert set(hosts) <= set(COMPUTE_NODES)
    assert hosts


def test_a_remote_exception_is_raised_here_with_its_remote_traceback() -> None:
    future = jobstrap.submit(boom, 7, **JOB)

    with pytest.raises(ValueError, match="bad value 7") as caught:
        future.result(timeout=TIMEOUT)

    assert "in inner" in caught.value.remote_traceback  # type: ignore[attr-defined]


def test_a_cancelled_job_raises_naming_cancelled() -> None:
    future = jobstrap.submit(time.sleep, 600, **JOB)
    wait_for_phase(future, "computing")

    future.cancel()

    with pytest.raises(JobFailedError, match="CANCELLED") as caught:
        future.result(timeout=TIMEOUT)
    assert caught.value.state == "CANCELLED"


@pytest.mark.slow
def test_a_job_killed_at_its_walltime_raises_naming_timeout() -> None:
    # Slurm counts walltime in minutes and checks limits every 30 s: ~75-100 s here.
    future = jobstrap.submit(time.sleep, 600, **{**JOB, "walltime": "00:01:00"})

    with pytest.raises(JobFailedError, match="TIMEOUT") as caught:
        future.result(timeout=TIMEOUT)

    assert caught.value.state == "TIMEOUT"


def test_another_process_reattaches_and_gets_the_result() -> None:
    future = jobstrap.submit(da.arange(100, chunks=10).sum(), **JOB)

    code = (
        "from jobstrap.batch.future import JobFuture; "
        f"print(JobFuture.attach({future.run_id!r}).result(timeout={TIMEOUT}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT + 60
    )

    assert (done.returncode, done.stdout.strip()) == (0, "4950"), done.stderr


def test_a_truncated_result_file_is_never_returned() -> None:
    future = jobstrap.submit(da.arange(1000, chunks=100), **JOB)
    future.result(timeout=TIMEOUT)
    result_file = future.run_dir / "result.pkl"
    data = result_file.read_bytes()
    result_file.write_bytes(data[: len(data) // 2])

    with pytest.raises(JobFailedError, match=r"result\.pkl is damaged"):
        JobFuture.attach(future.run_id).result(timeout=TIMEOUT)


def test_jobstrap_run_runs_an_example_on_the_cluster(shared_state: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jobstrap", "run", "--profile", PROFILE, "--nodes", "2",
         str(REPO / "examples" / "squares.py"), "50"],
        capture_output=True, text=True, timeout=TIMEOUT + 60, check=False,
        env={**os.environ}, cwd=shared_state,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "sum of squares 0..49 = 40425" in done.stdout
    assert "computed on node" in done.stdout
