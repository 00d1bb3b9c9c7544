"""Faults under notebook clusters: ``SLURMCluster`` on the real Slurm test cluster.

The cluster's scheduler runs in this process (on ``head``) or, for the frozen-client
test, in a child process the test freezes; worker jobs run on node1..node3. Each
test holds the suite's blocks in worker memory, starts the slow reduction and then
breaks something: the client freezes, a worker job is cancelled, a worker's node is
cut off or loses its ``slurmd``, a worker runs out of memory, the local directory
fills up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import workloads
from distributed import Client, wait
from faultkit import (
    COMPUTE_NODES,
    DEATH_TIMEOUT,
    START_TIMEOUT,
    FaultInjector,
    FaultOutcome,
    NotYetError,
    cgroup_memory_enforced,
    check,
    elapsed_since,
    exclusive_directives,
    job_processes,
    node_of,
    recomputed,
    sacct_states,
    squeue,
    wait_for,
)

from jobstrap import SLURMCluster
from jobstrap.cluster.core import ClusterFailedError
from jobstrap.states import JobState

pytestmark = [pytest.mark.cluster, pytest.mark.faults]

#: This folder, where the workers import the suite's tasks from (as a site's own code).
HERE = str(Path(__file__).resolve().parent)
#: Small workers; a short death timeout so that losses resolve in seconds.
SMALL: dict[str, Any] = {
    "cores": 1,
    "memory": "1GiB",
    "walltime": "00:10:00",
    "death_timeout": DEATH_TIMEOUT,
    "env": {"PYTHONPATH": HERE},
}
MARGIN = 30
BLOCKS = 24


@pytest.fixture
def make_cluster(scratch: Path, faults: FaultInjector) -> Iterator[Any]:
    """Build SLURMClusters that are closed, and whose jobs are owned, at the end."""
    clusters: list[SLURMCluster] = []

    def make(**settings: Any) -> SLURMCluster:
        cluster = SLURMCluster("testcluster", **{**SMALL, **settings})
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        faults.own(cluster.job_history)
        cluster.close(timeout=60)


def job_of_worker(cluster: SLURMCluster, address: str) -> str:
    """The id of the job a worker (by address) belongs to."""
    name = str(cluster.scheduler_info["workers"][address]["name"])
    for job_id, status in cluster.job_history.items():
        if name in status.workers or name.startswith(status.name + "-"):
            return job_id
    raise KeyError(f"no job for worker {name}")


def holder_of_blocks(cluster: SLURMCluster, client: Client, blocks: list[Any]) -> str:
    """A job whose workers hold some of the blocks (the one to lose)."""
    where = client.who_has(blocks)
    holders = [addresses[0] for addresses in where.values() if addresses]
    counts: dict[str, int] = {}
    for address in holders:
        job = job_of_worker(cluster, address)
        counts[job] = counts.get(job, 0) + 1
    assert len(counts) > 1, f"every block is on one job: {counts}"
    return max(counts, key=lambda j: counts[j])


def running_workers(cluster: SLURMCluster) -> int:
    return len(cluster.scheduler_info["workers"])


def start_work(
    cluster: SLURMCluster, client: Client, log: Path, seconds: float = 0.5
) -> tuple[list[Any], Any]:
    """Blocks held in worker memory on two jobs, then the slow reduction started."""
    blocks = workloads.persist_blocks(client, BLOCKS, str(log))
    wait(blocks, timeout=120)
    total = workloads.reduce_blocks(client, blocks, str(log), seconds)
    return blocks, total


def close_and_count(cluster: SLURMCluster, fault_report: FaultOutcome) -> int:
    """Close the cluster; wait for its jobs to end; record and return those left over."""
    ids = list(cluster.job_history)
    cluster.close(timeout=60)
    wait_for(lambda: check(not (live := squeue(ids)), live), 60, "the cluster's jobs to end")
    return fault_report.left_over(ids)


def replaced(cluster: SLURMCluster, lost: str, jobs: int) -> bool:
    """True once the cluster has ``jobs`` live jobs other than ``lost``, all with workers."""
    live = {j: s for j, s in cluster.jobs.items() if j != lost}
    if len(live) < jobs or running_workers(cluster) < jobs:
        raise NotYetError(f"jobs {cluster.jobs}; {running_workers(cluster)} workers")
    return True


# --- the client freezes ------------------------------------------------------------------

CLIENT = """
import sys, time
sys.path.insert(0, {faults_dir!r})
import workloads
from distributed import Client, wait
from jobstrap import SLURMCluster

workloads.ship_by_value()
cluster = SLURMCluster("testcluster", cores=1, memory="1GiB", walltime="00:10:00",
                       death_timeout={death_timeout}, env={{"PYTHONPATH": {faults_dir!r}}})
cluster.scale(jobs=2)
cluster.wait_for_workers(2, timeout={start_timeout})
client = Client(cluster)
blocks = workloads.persist_blocks(client, {blocks}, {log!r})
wait(blocks, timeout=120)
total = workloads.reduce_blocks(client, blocks, {log!r}, 1.0)
print(" ".join(cluster.jobs), flush=True)
time.sleep(3600)
"""


def test_a_frozen_client_leaves_no_worker_job_after_the_death_timeout(
    scratch: Path, faults: FaultInjector, fault_report: FaultOutcome
) -> None:
    fault_report.describe(
        "notebook client (holding the scheduler) frozen (SIGSTOP) mid-computation",
        "cluster",
        f"every worker job ends within death timeout ({DEATH_TIMEOUT} s) + {MARGIN} s",
    )
    script = scratch / "client.py"
    script.write_text(
        textwrap.dedent(
            CLIENT.format(
                faults_dir=HERE,
                death_timeout=DEATH_TIMEOUT,
                start_timeout=START_TIMEOUT,
                blocks=BLOCKS,
                log=str(scratch / "tasks.log"),
            )
        )
    )
    client = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        assert client.stdout is not None
        ids = client.stdout.readline().split()
        assert len(ids) == 2, ids
        faults.own(ids)
        assert len(squeue(ids)) == 2

        faults.freeze(client.pid)
        frozen_at = time.monotonic()
        wait_for(
            lambda: check(not (live := squeue(ids)), live),
            DEATH_TIMEOUT + MARGIN,
            "every worker job to end",
        )
        fault_report.recovery_seconds = elapsed_since(frozen_at)
    finally:
        client.kill()  # a frozen process dies of SIGKILL too
        client.wait(timeout=30)

    fault_report.recovery = "freeze to no worker job left"
    states = wait_for(
        lambda: (s := sacct_states(ids)) and all(v != "RUNNING" for v in s.values()) and s,
        60,
        "accounting to record the jobs' ends",
    )
    fault_report.observed = (
        f"both worker jobs ended {fault_report.recovery_seconds} s after the freeze "
        f"({', '.join(f'{j} {s}' for j, s in sorted(states.items()))})"
    )
    assert fault_report.left_over(ids) == 0


# --- a worker job is lost ------------------------------------------------------------------


def test_a_cancelled_worker_job_is_replaced_and_the_answer_is_right(
    scratch: Path, faults: FaultInjector, fault_report: FaultOutcome, make_cluster: Any
) -> None:
    fault_report.describe(
        "a worker job cancelled (scancel) mid-computation",
        "cluster",
        "the answer is right (lost blocks recomputed); the job shows CANCELLED; a "
        "replacement job is submitted and its worker joins",
    )
    cluster = make_cluster()
    cluster.scale(jobs=2)
    cluster.wait_for_workers(2, timeout=START_TIMEOUT)
    log = scratch / "tasks.log"
    with Client(cluster) as client:
        blocks, total = start_work(cluster, client, log)
        victim = holder_of_blocks(cluster, client, blocks)

        faults.scancel([victim])
        cancelled_at = time.monotonic()
        value = total.result(timeout=240)
        answered = elapsed_since(cancelled_at)

        assert value == workloads.expected(BLOCKS)
        wait_for(
            lambda: check(
                cluster.job_history[victim].state is JobState.CANCELLED,
                cluster.job_history[victim],
            ),
            60,
            f"job {victim} to show CANCELLED",
        )
        wait_for(lambda: replaced(cluster, victim, 2), START_TIMEOUT, "a replacement job")
        fault_report.recovery_seconds = elapsed_since(cancelled_at)

    fault_report.recovery = "cancel to the replacement's worker joined"
    fault_report.tasks_recomputed = recomputed(log)
    fault_report.observed = (
        f"answer right {answered} s after the cancel; job {victim} shown CANCELLED; "
        f"replacement running {fault_report.recovery_seconds} s after the cancel; "
        f"{fault_report.tasks_recomputed} task(s) recomputed (scancel's SIGTERM lets the "
        "workers hand their data over first)"
    )
    assert close_and_count(cluster, fault_report) == 0


def lose_a_node(
    cluster: SLURMCluster,
    faults: FaultInjector,
    fault_report: FaultOutcome,
    log: Path,
    how: str,
) -> None:
    """Break the node of a job holding blocks (``cut`` or ``slurmd``), check the outcome."""
    cluster.scale(jobs=2)
    cluster.wait_for_workers(2, timeout=START_TIMEOUT)
    with Client(cluster) as client:
        blocks, total = start_work(cluster, client, log)
        victim = holder_of_blocks(cluster, client, blocks)
        node = node_of(victim)

        if how == "cut":
            faults.cut(node)
        else:
            faults.kill_slurmd(node)
        broken_at = time.monotonic()
        # What slurmctld concludes once SlurmdTimeout (300 s here) has passed.
        faults.node_down(node, reason=f"fault-test-{how}")

        value = total.result(timeout=240)
        answered = elapsed_since(broken_at)
        assert value == workloads.expected(BLOCKS)
        wait_for(
            lambda: check(
                cluster.job_history[victim].state is JobState.NODE_FAIL,
                cluster.job_history[victim],
            ),
            90,
            f"job {victim} to show NODE_FAIL",
        )
        wait_for(lambda: replaced(cluster, victim, 2), START_TIMEOUT, "a replacement job")
        fault_report.recovery_seconds = elapsed_since(broken_at)

        if how == "cut":
            faults.reconnect(node)
        else:
            faults.start_slurmd(node)
        faults.resume(node)
        # The lost job's processes (orphans while slurmd was dead) are gone too.
        wait_for(
            lambda: check(not (left := job_processes(victim)), left),
            120,
            f"job {victim}'s processes to go",
        )

    fault_report.recovery = "fault to the replacement's worker joined"
    fault_report.tasks_recomputed = recomputed(log)
    fault_report.observed = (
        f"answer right {answered} s after the fault; job {victim} shown NODE_FAIL; "
        f"replacement running {fault_report.recovery_seconds} s after the fault; "
        f"{fault_report.tasks_recomputed} task(s) recomputed"
    )
    fault_report.details["node"] = node
    fault_report.details["victim"] = victim
    assert close_and_count(cluster, fault_report) == 0


def test_a_worker_node_cut_off_ends_its_job_node_fail_and_the_job_is_replaced(
    scratch: Path, faults: FaultInjector, fault_report: FaultOutcome, make_cluster: Any
) -> None:
    fault_report.describe(
        "a worker job's node cut off (ib0 and eth0 down), then declared down",
        "cluster",
        "the answer is right; the job shows NODE_FAIL; a replacement job is submitted "
        "and its worker joins",
    )
    cluster = make_cluster(extra_directives=exclusive_directives())

    lose_a_node(cluster, faults, fault_report, scratch / "tasks.log", "cut")

    assert fault_report.tasks_recomputed is not None
    assert fault_report.tasks_recomputed > 0


def test_a_worker_node_whose_slurmd_dies_ends_its_job_node_fail_and_the_job_is_replaced(
    scratch: Path, faults: FaultInjector, fault_report: FaultOutcome, make_cluster: Any
) -> None:
    fault_report.describe(
        "a worker job's node loses its slurmd (SIGKILL), then is declared down",
        "cluster",
        "the answer is right; the job shows NODE_FAIL; a replacement job is submitted "
        "and its worker joins; the orphaned workers go once slurmd is back",
    )
    cluster = make_cluster(extra_directives=exclusive_directives())

    lose_a_node(cluster, faults, fault_report, scratch / "tasks.log", "slurmd")


# --- memory and disk ---------------------------------------------------------------------


NEEDS_CGROUP_MEMORY = pytest.mark.skipif(
    not cgroup_memory_enforced(),
    reason="memory limits are enforced only on a cluster brought up with "
    "`scripts/testcluster up --cgroup-memory`",
)


@NEEDS_CGROUP_MEMORY
def test_jobs_too_small_for_their_worker_end_out_of_memory_and_the_cluster_gives_up(
    scratch: Path, faults: FaultInjector, fault_report: FaultOutcome, make_cluster: Any
) -> None:
    fault_report.describe(
        "worker jobs whose memory limit (cgroup) kills their worker as it starts",
        "cluster",
        "each job ends and is reported OUT_OF_MEMORY with its id; after max_failures "
        "such jobs the cluster stops submitting (ClusterFailedError) instead of looping",
    )
    # 48 MiB does not even hold a starting worker: every job of this cluster is
    # doomed the same way, and resubmitting cannot help.
    cluster = make_cluster(memory="48MiB", max_failures=2)
    started = time.monotonic()
    cluster.scale(jobs=1)

    def gave_up() -> ClusterFailedError:
        if cluster.error is None:
            raise NotYetError(dict(cluster.job_history))
        return cluster.error

    error = wait_for(gave_up, START_TIMEOUT, "the cluster to give up")
    fault_report.recovery_seconds = elapsed_since(started)
    fault_report.recovery = "scale-up to the cluster giving up"

    assert error.state == "OUT_OF_MEMORY"
    assert f"job {error.job_id} ended OUT_OF_MEMORY" in str(error)
    assert "ran out of memory" in str(error)
    history = cluster.job_history
    assert len(history) == 2  # max_failures jobs, no more
    assert {s.state for s in history.values()} == {JobState.OUT_OF_MEMORY}, history
    with pytest.raises(ClusterFailedError):
        cluster.scale(jobs=2)
    fault_report.observed = f"ClusterFailedError: {str(error).splitlines()[0]}"
    assert close_and_count(cluster, fault_report) == 0


@NEEDS_CGROUP_MEMORY
def test_a_task_above_the_jobs_memory_ends_its_job_out_of_memory_and_the_cluster_recovers(
    scratch: Path, faults: FaultInjector, fault_report: FaultOutcome, make_cluster: Any
) -> None:
    fault_report.describe(
        "a task needing more memory than its worker job has (cgroup OOM killer)",
        "cluster",
        "the killed job ends and is reported OUT_OF_MEMORY with its id and replaced; the "
        "task fails with KilledWorker (no endless retry); other work still completes",
    )
    cluster = make_cluster(memory="600MiB")
    cluster.scale(jobs=1)
    cluster.wait_for_workers(1, timeout=START_TIMEOUT)
    with Client(cluster) as client:
        started = time.monotonic()
        hog = client.submit(workloads.hog, 2000, pure=False)

        error = hog.exception(timeout=START_TIMEOUT)
        fault_report.recovery_seconds = elapsed_since(started)
        assert type(error).__name__ == "KilledWorker", repr(error)

        # The task can kill its workers faster than the watcher's next look at the
        # queue: the killed job's end is reported within the watcher's interval.
        def out_of_memory() -> list[Any]:
            oom = [f for f in cluster.failures if f.state == "OUT_OF_MEMORY"]
            check(oom, cluster.failures)
            return oom

        oom = wait_for(out_of_memory, 60, "an OUT_OF_MEMORY job in cluster.failures")
        assert f"job {oom[0].job_id} ended OUT_OF_MEMORY" in str(oom[0])
        assert cluster.job_history[oom[0].job_id].state is JobState.OUT_OF_MEMORY
        assert len(cluster.job_history) <= 3, cluster.job_history  # bounded, no loop
        # The cluster is whole again: a replacement job's worker computes.
        wait_for(lambda: check(running_workers(cluster), cluster.jobs), START_TIMEOUT, "a worker")
        assert client.submit(sum, [1, 2, 3]).result(timeout=120) == 6

    fault_report.recovery = "task start to KilledWorker"
    fault_report.observed = (
        f"{len(oom)} job(s) ended OUT_OF_MEMORY ({', '.join(f.job_id for f in oom)}) and were "
        f"replaced; the task failed with KilledWorker after {fault_report.recovery_seconds} s; "
        f"{len(cluster.job_history)} job(s) in all"
    )
    assert close_and_count(cluster, fault_report) == 0


def test_a_full_local_directory_fails_the_computation_with_a_clear_message(
    scratch: Path, faults: FaultInjector, fault_report: FaultOutcome, make_cluster: Any
) -> None:
    fault_report.describe(
        "the workers' local directory (a 32 MiB tmpfs per node) fills up while spilling",
        "cluster",
        "the computation fails with a message naming the full disk, within a deadline (no hang)",
    )
    local = scratch / "local"
    faults.small_disk(local, "32m", COMPUTE_NODES)
    cluster = make_cluster(memory="400MiB", local_directory=str(local))
    cluster.scale(jobs=1)
    cluster.wait_for_workers(1, timeout=START_TIMEOUT)
    with Client(cluster) as client:
        started = time.monotonic()
        # 40 arrays of 10 MiB held at once: far above the 240 MiB spill target.
        futures = [client.submit(workloads.block, i, str(scratch / "tasks.log"), 10 * 2**17,
                                 pure=False) for i in range(40)]  # fmt: skip
        total = client.submit(workloads.sum_all, futures)
        try:
            total.result(timeout=180)
        except TimeoutError:
            pytest.fail(f"the computation hung: no answer and no error after 180 s; {cluster.jobs}")
        except Exception as error:  # what the user sees, whatever its type
            caught = error
        else:
            pytest.fail("the computation succeeded although the local directory was full")
        fault_report.recovery_seconds = elapsed_since(started)

    message = f"{type(caught).__name__}: {caught}"
    fault_report.recovery = "start to the computation's error"
    fault_report.observed = message.replace(str(local), "<local_directory>")[:300]
    assert "No space left on device" in message
    assert str(local) in message or "local directory" in message
    assert close_and_count(cluster, fault_report) == 0
