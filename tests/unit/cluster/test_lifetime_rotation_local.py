"""Rotation on the local backend: real jobs, scheduler and workers, no batch system.

A job whose walltime is short is replaced before it ends: the successor is submitted
ahead of time, the old job's workers retire gracefully (their results move to the
successor) and the cluster never runs out of workers.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from distributed import Client

from jobstrap import LocalBatchCluster
from jobstrap.states import JobState
from support import local_backend_env, wait_until


@pytest.fixture(autouse=True)
def private_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spool, run root and registry of this test's own (also for subprocesses)."""
    # The local queue's own kill wait (10 s): these tests drain and close gracefully.
    local_backend_env(monkeypatch, tmp_path, kill_wait=10)


def test_a_job_is_replaced_before_its_walltime_and_its_results_survive() -> None:
    # Walltime 75 s, margin 30 s: the job retires about 45 s after it started, which
    # leaves a loaded 2-core machine time to drain and cancel it before its walltime.
    with LocalBatchCluster(
        cores=1, memory="300MiB", walltime="00:01:15", lifetime_margin=30, poll_interval=1
    ) as cluster:
        cluster.scale(jobs=1)
        cluster.wait_for_workers(1, timeout=90)
        first = next(iter(cluster.jobs))
        counts: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                counts.append(len(cluster.scheduler.workers))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with Client(cluster) as client:
            held = client.submit(sum, [1, 2, 3], pure=False)
            assert held.result(timeout=30) == 6

            def rotated() -> bool:
                live = cluster.jobs
                return first not in live and any(s.workers for s in live.values())

            wait_until(rotated, 150, lambda: (cluster.jobs, cluster.lifetimes))
            value = held.result(timeout=30)
            stored = client.who_has(held)
        stop.set()
        sampler.join()
        wait_until(
            lambda: cluster.job_history[first].state.is_terminal,
            60,
            lambda: cluster.job_history[first],
        )
        ended = cluster.job_history[first]
        submitted = len(cluster.job_history)

    assert value == 6
    assert stored, "the held result is on no worker"
    assert ended.state in (JobState.CANCELLED, JobState.COMPLETED), ended.state.value
    assert ended.remaining is not None
    assert ended.remaining > 0, "the old job ran into its walltime"
    assert min(counts) > 0, f"the cluster ran out of workers: {counts}"
    # One successor for the one job (two if the successor's own turn came): a chain
    # of replacements that each replace themselves at once is a runaway.
    assert submitted <= 3, f"{submitted} jobs submitted for one rotation"
