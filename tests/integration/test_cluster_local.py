"""Notebook clusters on the local backend: real jobs (process groups run by
``jobstrap.localq``), a real scheduler and real workers, no batch system needed.

These run anywhere (laptop, CI, the test cluster's head); each test's jobs live in
a private spool directory so nothing is shared with other runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from distributed import Client

from jobstrap import LocalBatchCluster
from jobstrap.batchctl.control import BatchControl
from jobstrap.cluster.core import ClusterFailedError
from jobstrap.states import JobState
from support import local_backend_env, wait_until

SMALL = {"cores": 1, "memory": "300MiB", "walltime": "00:10:00", "poll_interval": 1}


@pytest.fixture(autouse=True)
def private_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spool, run root and batch controls of this test's own (as a new process has).

    Each spool numbers its jobs from 1: a watcher kept from an earlier test would know
    this test's job ids as another spool's jobs.
    """
    local_backend_env(monkeypatch, tmp_path)


def live(job_ids: list[str]) -> dict[str, JobState]:
    records = BatchControl.for_system("local").status(job_ids)
    return {j: r.state for j, r in records.items() if r.state.is_active}


def test_local_jobs_scale_up_compute_and_scale_down() -> None:
    with LocalBatchCluster(**SMALL) as cluster:
        cluster.scale(jobs=2)
        cluster.wait_for_workers(2, timeout=90)
        with Client(cluster) as client:
            assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6

        ids = list(cluster.jobs)
        cluster.scale(jobs=1)

        wait_until(lambda: len(live(ids)) == 1, 30, lambda: live(ids))
        wait_until(lambda: len(cluster.scheduler_info["workers"]) == 1, 30, lambda: cluster.jobs)


def test_a_job_of_two_worker_processes_brings_the_names_the_cluster_planned() -> None:
    with LocalBatchCluster(cores=2, processes=2, memory="600MiB", poll_interval=1) as cluster:
        cluster.scale(jobs=1)
        cluster.wait_for_workers(2, timeout=90)

        names = {w["name"] for w in cluster.scheduler_info["workers"].values()}
        assert names == cluster.plan
        (status,) = cluster.jobs.values()
        assert set(status.workers) == names


def test_a_bad_python_stops_the_cluster_with_the_reason() -> None:
    with LocalBatchCluster(**SMALL, python="/nonexistent/python") as cluster:
        cluster.scale(jobs=1)

        with pytest.raises(ClusterFailedError, match="python not found"):
            cluster.wait_for_workers(1, timeout=60)
        assert cluster.failures[-1].state == "FAILED"
        assert "/nonexistent/python" in cluster.failures[-1].stderr_tail


def test_retire_job_with_replace_keeps_the_size_and_swaps_the_job() -> None:
    with LocalBatchCluster(**SMALL) as cluster:
        cluster.scale(jobs=1)
        cluster.wait_for_workers(1, timeout=90)
        (old,) = cluster.jobs

        cluster.retire_job(old, replace=True)

        wait_until(
            lambda: len(cluster.jobs) == 1 and old not in cluster.jobs,
            60,
            lambda: cluster.jobs,
        )
        cluster.wait_for_workers(1, timeout=90)
        wait_until(lambda: not live([old]), 30, lambda: live([old]))


def test_job_callbacks_report_state_changes() -> None:
    seen: list[tuple[str, JobState]] = []
    with LocalBatchCluster(**SMALL) as cluster:
        cluster.add_job_callback(lambda status: seen.append((status.job_id, status.state)))
        cluster.scale(jobs=1)
        cluster.wait_for_workers(1, timeout=90)

        wait_until(lambda: any(s is JobState.RUNNING for _, s in seen), 30, lambda: seen)


EXIT_WITHOUT_CLOSE = """
from jobstrap import LocalBatchCluster
cluster = LocalBatchCluster(cores=1, memory="300MiB", walltime="00:10:00", poll_interval=1)
cluster.scale(jobs=2)
cluster.wait_for_workers(2, timeout=90)
print(" ".join(cluster.jobs), flush=True)
# no close(): leaving the interpreter must cancel the jobs
"""


def test_leaving_the_interpreter_without_close_cancels_the_jobs(tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(EXIT_WITHOUT_CLOSE))

    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ),
        check=False,
    )

    ids = done.stdout.split()
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(ids) == 2
    wait_until(lambda: not live(ids), 30, lambda: live(ids))


# Killed as soon as its two jobs are submitted, before their workers could register: a
# registered worker leaves at once when its scheduler's connection breaks (distributed's
# worker-handle-scheduler-connection-broken), one still connecting waits death_timeout.
KILLED_CLIENT = """
import time
from jobstrap import LocalBatchCluster
cluster = LocalBatchCluster(cores=1, memory="300MiB", walltime="00:10:00", poll_interval=1,
                            death_timeout=600)
cluster.scale(jobs=2)
while len(cluster.jobs) < 2:
    time.sleep(0.05)
print(cluster.run_id, " ".join(cluster.jobs), flush=True)
time.sleep(600)
"""


def test_status_and_cancel_all_see_a_killed_clients_jobs_through_the_registry(
    tmp_path: Path,
) -> None:
    """The registry keeps the cluster's submission tags: without them every job of a
    cluster run was listed MISSING and `cancel --all` skipped it."""
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(KILLED_CLIENT))
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        assert process.stdout is not None
        run_id, *ids = process.stdout.readline().split()
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        # A long death timeout: the jobs start and stay, their workers waiting to connect.
        running = [JobState.RUNNING] * 2
        wait_until(lambda: list(live(ids).values()) == running, 60, lambda: live(ids))

        def status(*runs: str) -> list[list[str]]:
            shown = subprocess.run(
                [sys.executable, "-m", "jobstrap", "status", *runs],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert shown.returncode == 0, shown.stderr
            return [line.split() for line in shown.stdout.splitlines() if line.startswith(run_id)]

        # The default listing: one line for the run, its jobs counted by state.
        (summary,) = status()
        assert " ".join(summary).count("2 RUNNING") == 1, summary
        # Named, the run shows each of its jobs.
        rows = status(run_id)
        assert sorted(row[2] for row in rows) == sorted(ids), rows
        assert {row[3] for row in rows} == {"RUNNING"}, rows

        cancelled = subprocess.run(
            [sys.executable, "-m", "jobstrap", "cancel", "--all"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

        assert cancelled.returncode == 0, cancelled.stderr
        wait_until(lambda: not live(ids), 30, lambda: live(ids))
    finally:
        if process.poll() is None:
            process.kill()
