"""Retirement that loses no work, on the local backend (real jobs with real walltimes).

A job reaching its retirement while its worker runs a task stops taking new tasks,
lets that task finish (the scheduler expects it to within the drain), hands its
results over and ends: no task is started twice, and the cluster never holds more
jobs than it asked for plus the replacement overlapping it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from distributed import Client
from distributed.diagnostics.plugin import SchedulerPlugin

from jobstrap import LocalBatchCluster

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def private_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spool and run root of this test's own (also for subprocesses)."""
    monkeypatch.setenv("JOBSTRAP_LOCAL_SPOOL", str(tmp_path / "spool"))
    monkeypatch.setenv("JOBSTRAP_RUN_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(tmp_path / "state"))


def nap(previous: int, seconds: float) -> int:
    time.sleep(seconds)
    return previous + 1


# The workers cannot import this module; a function of ``__main__`` is shipped by value.
nap.__module__ = "__main__"


class CountStarts(SchedulerPlugin):
    """Every start of a task on a worker (a transition into ``processing``), by key."""

    def __init__(self) -> None:
        self.starts: dict[str, int] = {}

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "processing":
            self.starts[str(key)] = self.starts.get(str(key), 0) + 1


def test_a_task_running_when_its_job_retires_finishes_there_and_is_started_once() -> None:
    # Walltime 75 s, margin 30 s (24 s of drain): the job drains 45 s after it started,
    # in the middle of a chain of 6 s tasks, each the only task ready at its time.
    links, seconds = 11, 6.0
    with LocalBatchCluster(
        cores=1, memory="300MiB", walltime="00:01:15", lifetime_margin=30, poll_interval=1
    ) as cluster:
        counter = CountStarts()
        cluster.scheduler.add_plugin(counter, name="count-starts")
        cluster.scale(jobs=1)
        cluster.wait_for_workers(1, timeout=90)
        first_id, first_status = next(iter(cluster.jobs.items()))
        first = first_status.name
        counts: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                counts.append(len(cluster.scheduler.workers))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with Client(cluster) as client:
            chain = client.submit(nap, 0, seconds, pure=False)
            for _ in range(links - 1):
                chain = client.submit(nap, chain, seconds, pure=False)
            value = chain.result(timeout=240)
        stop.set()
        sampler.join()
        drains = list(cluster._lifetime.drains)
        history = dict(cluster.job_history)
        peak = cluster._lifetime.peak_jobs(1)

    assert value == links
    ended = history[first_id]
    assert ended.state.is_terminal, ended
    assert ended.remaining is not None
    assert ended.remaining > 0, "it ran into its walltime"
    assert drains, f"no job was drained; jobs: {history}"
    assert drains[0]["job"] == first
    assert drains[0]["interrupted"] == 0, drains
    restarted = {key: n for key, n in counter.starts.items() if n > 1}
    assert not restarted, f"tasks started more than once: {restarted}; drains: {drains}"
    assert len(counter.starts) == links
    assert max(counts) <= peak, f"{max(counts)} workers for 1 job (bound {peak}): {counts}"
