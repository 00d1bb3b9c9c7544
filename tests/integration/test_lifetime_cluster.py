"""Walltime-aware rotation on the real Slurm test cluster (run on its login node ``head``).

A computation longer than any worker job's walltime finishes with the right answer,
without recomputing what was held in memory, and the cluster never runs out of
workers while its jobs are retired and replaced. A SIGUSR1 sent to a job's batch
shell retires that job's workers gracefully and the job is replaced; so does a job
that Slurm preempts (its SIGTERM, then its partition's grace time).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import COMPUTE_NODES, PREEMPT_GRACE_SECONDS, URGENT_PARTITION
from distributed import Client, wait
from distributed.diagnostics.plugin import SchedulerPlugin

import support
from jobstrap import SLURMCluster
from jobstrap.batchctl.control import BatchControl

# Conditions here ask the batch system: poll at half the default pace.
wait_until = functools.partial(support.wait_until, interval=0.5)

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs the Slurm test cluster"),
]

PROFILE = "testcluster"


def seed(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i + 1


def step(left: int, right: int, level: int, seconds: float) -> int:
    time.sleep(seconds)
    return (left * 3 + right + level) % 1_000_003


# The workers cannot import this module. distributed pickles task specs with the
# standard pickle (functions by reference) unless that names ``__main__``; then it
# uses cloudpickle, which ships ``__main__`` functions by value.
seed.__module__ = step.__module__ = "__main__"


def expected_result(width: int, levels: int) -> list[int]:
    """What the task graph computes, without the sleeps."""
    row = [i + 1 for i in range(width)]
    for level in range(1, levels):
        row = [step(row[i], row[(i + 1) % width], level, 0.0) for i in range(width)]
    return row


def submit_graph(client: Client, width: int, levels: int, seconds: float) -> list[list[Any]]:
    """A ``width`` x ``levels`` grid: each task consumes two results of the level below.

    Every future is kept, so every result stays in the workers' memory to the end:
    losing one to a retirement would show as a recomputation.
    """
    rows = [[client.submit(seed, i, seconds, pure=False) for i in range(width)]]
    for level in range(1, levels):
        below = rows[-1]
        rows.append(
            [
                client.submit(step, below[i], below[(i + 1) % width], level, seconds, pure=False)
                for i in range(width)
            ]
        )
    return rows


class CountStarts(SchedulerPlugin):
    """Counts every start of a task on a worker (a transition into ``processing``), and
    the starts of tasks whose result had been computed already (a lost result).

    ``starts`` also counts a task handed to another worker before it ran (a retiring
    worker's queued tasks); ``recomputed`` counts only work done twice because a
    result was lost.
    """

    def __init__(self) -> None:
        self.starts = 0
        self.recomputed = 0
        self._computed: set[Any] = set()

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "processing":
            self.starts += 1
            self.recomputed += key in self._computed
        elif finish == "memory":
            self._computed.add(key)


class WorkerSampler:
    """Samples the scheduler's worker count every second in a thread."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.samples: list[tuple[float, int]] = []
        self._count = count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append((time.time(), self._count()))

    def __enter__(self) -> WorkerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def minimum_after_first_worker(self) -> int | None:
        counts = [n for _, n in self.samples]
        first = next((i for i, n in enumerate(counts) if n > 0), None)
        return None if first is None else min(counts[first:])


@pytest.fixture
def rotating() -> Iterator[SLURMCluster]:
    # Three jobs of one worker, each living 150 s (retired 30 s before the end).
    with SLURMCluster(
        PROFILE, cores=1, memory="500MiB", walltime="00:02:30", lifetime_margin=30
    ) as cluster:
        yield cluster


def test_a_computation_longer_than_every_walltime_finishes_without_recomputing(
    rotating: SLURMCluster,
) -> None:
    # 6 x 120 tasks of 1.5 s on 3 workers: about 6 minutes, every job rotated at least once.
    width, levels, seconds = 6, 120, 1.5
    counter = CountStarts()
    rotating.scheduler.add_plugin(counter, name="count-starts")
    jobs_seen: set[str] = set()
    with Client(rotating) as client, WorkerSampler(lambda: len(rotating.scheduler.workers)) as s:
        rotating.scale(jobs=3)
        rows = submit_graph(client, width, levels, seconds)

        result = client.gather(rows[-1], errors="raise")
        jobs_seen.update(rotating.job_history)

    tasks = width * levels
    assert result == expected_result(width, levels)
    assert len(jobs_seen) > 3, f"no job was rotated: {sorted(jobs_seen)}"
    assert counter.recomputed == 0, f"{counter.recomputed} results lost and recomputed"
    assert counter.starts <= 1.05 * tasks, f"{counter.starts} starts for {tasks} tasks"
    minimum = s.minimum_after_first_worker()
    assert minimum is not None, "no worker ever arrived"
    assert minimum > 0, f"the worker count dropped to zero; samples: {s.samples}"


def test_rotation_under_adapt_keeps_the_bounds_and_wastes_no_job() -> None:
    # adapt() wants a worker per ready task (6 tasks of 1.5 s against a target
    # duration of 1 s; the first ones, of unknown duration, count 0.5 s each: 3) but
    # may have 3 jobs: it is at its maximum all along (a dip between two levels is
    # shorter than its wait_count rounds), so the rotation's successors are the only
    # extra jobs. The
    # loop must not count an outgoing job as capacity (it would scale up past the
    # maximum) nor retire a successor as surplus (a wasted job, and no overlap).
    width, levels, seconds, maximum = 6, 70, 1.5, 3
    counter = CountStarts()
    ever_had_workers: set[str] = set()
    overshoot: list[tuple[int, int]] = []

    def sample(cluster: SLURMCluster) -> int:
        async def snapshot() -> tuple[dict[str, Any], dict[str, Any]]:
            # Both read on the cluster's event loop, where they change: read one after
            # the other from this thread, a retirement finishing in between made a job
            # count as capacity that the other read no longer called outgoing.
            return cluster.jobs, cluster.lifetimes

        jobs, lifetimes = cluster.sync(snapshot)
        ever_had_workers.update(job_id for job_id, job in jobs.items() if job.workers)
        outgoing = sum(1 for life in lifetimes.values() if life.phase != "running")
        if len(jobs) - outgoing > maximum:
            overshoot.append((len(jobs), outgoing))
        return len(cluster.scheduler.workers)

    with SLURMCluster(
        PROFILE, cores=1, memory="500MiB", walltime="00:02:30", lifetime_margin=30
    ) as cluster:
        cluster.scheduler.add_plugin(counter, name="count-starts")
        cluster.adapt(minimum_jobs=1, maximum_jobs=maximum, interval="1s", target_duration="1s")
        with Client(cluster) as client, WorkerSampler(lambda: sample(cluster)) as s:
            rows = submit_graph(client, width, levels, seconds)
            # The jobs as they were while every level still had `width` ready tasks: in
            # the last level the tasks finish one by one, demand falls below the
            # maximum and adapt rightly gives up a successor still pending then.
            client.gather(rows[-3], errors="raise")
            steady = cluster.job_history
            result = client.gather(rows[-1], errors="raise")
            history = cluster.job_history

    tasks = width * levels
    assert result == expected_result(width, levels)
    assert len(history) > maximum, f"no job was rotated: {sorted(history)}"
    assert counter.starts <= 1.05 * tasks, f"{counter.starts} starts for {tasks} tasks"
    assert not overshoot, f"more than {maximum} jobs counted as capacity: {overshoot}"
    ended = {job_id for job_id, job in steady.items() if job.state.is_terminal}
    wasted = ended - ever_had_workers
    minimum = s.minimum_after_first_worker()
    assert minimum is not None, "no worker ever arrived"
    assert minimum > 0, f"the worker count hit zero: {s.samples}"
    assert not wasted, f"jobs ended without ever running a worker: {sorted(wasted)}"


def test_sigusr1_to_a_job_drains_it_and_it_is_replaced() -> None:
    with SLURMCluster(PROFILE, cores=1, memory="500MiB", walltime="00:10:00") as cluster:
        counter = CountStarts()
        cluster.scheduler.add_plugin(counter, name="count-starts")
        with Client(cluster) as client:
            cluster.scale(jobs=2)
            cluster.wait_for_workers(2, timeout=120)
            rows = submit_graph(client, 4, 5, 0.2)
            wait(rows[-1])
            before = set(cluster.jobs)
            victim = sorted(before)[0]

            BatchControl.for_system("slurm").signal([victim], "USR1")

            def replaced() -> bool:
                now = set(cluster.jobs)
                return victim not in now and len(now) == 2 and len(cluster.scheduler.workers) == 2

            wait_until(replaced, 120, lambda: (cluster.jobs, cluster.scheduler_info["workers"]))
            result = client.gather(rows[-1])
            ended = cluster.job_history[victim]

    assert result == expected_result(4, 5)
    assert counter.starts == 4 * 5, f"{counter.starts} starts for 20 tasks: results were lost"
    assert ended.state.value == "COMPLETED", f"the drained job ended {ended.state.value}"


def test_a_preempted_job_drains_in_its_grace_time_and_is_replaced() -> None:
    # job_cpu=9 of a node's 16: the two worker jobs cannot share a node, so taking
    # one node back preempts exactly one of them.
    with SLURMCluster(PROFILE, cores=1, job_cpu=9, memory="500MiB", walltime="00:10:00") as cluster:
        counter = CountStarts()
        cluster.scheduler.add_plugin(counter, name="count-starts")
        urgent: list[str] = []
        try:
            with Client(cluster) as client:
                cluster.scale(jobs=2)
                cluster.wait_for_workers(2, timeout=120)
                rows = submit_graph(client, 4, 5, 0.2)
                wait(rows[-1])
                victim = sorted(cluster.jobs)[0]
                node = cluster.jobs[victim].node
                assert node in COMPUTE_NODES, f"one node expected: {cluster.jobs}"

                # The site needs the node: a job of the urgent partition (a higher
                # priority tier) takes all of it; Slurm sends the worker job SIGTERM
                # and kills it after the partition's GraceTime.
                submitted = subprocess.run(
                    ["sbatch", "--parsable", f"--partition={URGENT_PARTITION}",
                     f"--nodelist={node}", "--exclusive", "--time=5",
                     "--job-name=urgent", "--output=/dev/null", "--wrap=sleep 600"],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                urgent.append(submitted.stdout.strip().split(";")[0])

                def replaced() -> bool:
                    now = set(cluster.jobs)
                    return (
                        victim not in now and len(now) == 2 and len(cluster.scheduler.workers) == 2
                    )

                # The drain must beat the grace time; the replacement then waits for
                # a node the urgent job does not hold.
                wait_until(
                    replaced,
                    PREEMPT_GRACE_SECONDS + 90,
                    lambda: (cluster.jobs, cluster.scheduler_info["workers"]),
                )
                result = client.gather(rows[-1])
                ended = cluster.job_history[victim]
                failures = list(cluster.failures)
                # The urgent job got the node: the preemption really happened.
                urgent_state = subprocess.run(
                    ["squeue", "--noheader", f"--jobs={urgent[0]}", "--format=%T|%N"],
                    capture_output=True, text=True, check=False,
                ).stdout.strip()  # fmt: skip
        finally:
            if urgent:
                subprocess.run(["scancel", *urgent], check=False)

    assert result == expected_result(4, 5)
    assert counter.starts == 4 * 5, f"{counter.starts} starts for 20 tasks: results were lost"
    assert urgent_state == f"RUNNING|{node}", f"the urgent job: {urgent_state!r}"
    # Drained within the grace time, the job ends by itself: Slurm records COMPLETED
    # (PREEMPTED when the grace time's SIGKILL ends it).
    assert ended.state.value in ("COMPLETED", "PREEMPTED"), f"it ended {ended.state.value}"
    assert not failures, f"a preemption counted as a failure: {failures}"
