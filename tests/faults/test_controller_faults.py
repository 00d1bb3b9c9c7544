"""The controller goes away: slurmctld stopped for 30 s while a notebook cluster scales.

This is the one fault that cannot be confined to our own nodes: while slurmctld is
down, every ``sbatch``/``squeue`` on the test cluster fails, other people's too. It
lasts 30 s and slurmctld is started again whatever happens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import workloads
from distributed import Client, wait
from faultkit import (
    DEATH_TIMEOUT,
    LOGIN_HOST,
    START_TIMEOUT,
    FaultInjector,
    FaultOutcome,
    check,
    elapsed_since,
    on,
    recomputed,
    squeue,
    wait_for,
)

from jobstrap import SLURMCluster
from jobstrap.states import JobState

pytestmark = [pytest.mark.cluster, pytest.mark.faults]

HERE = str(Path(__file__).resolve().parent)
OUTAGE = 30.0
BLOCKS = 24


@pytest.fixture
def cluster(scratch: Path, faults: FaultInjector) -> Iterator[SLURMCluster]:
    """A cluster whose jobs carry a name of their own (to find any double in squeue)."""
    cluster = SLURMCluster(
        "testcluster",
        cores=1,
        memory="1GiB",
        walltime="00:10:00",
        death_timeout=DEATH_TIMEOUT,
        job_name="faultctld",
        env={"PYTHONPATH": HERE},
    )
    yield cluster
    faults.own(cluster.job_history)
    cluster.close(timeout=60)


def jobs_named(prefix: str) -> set[str]:
    """Every job id Slurm has whose name starts with ``prefix`` (array tasks one by one)."""
    out = on(LOGIN_HOST, ["squeue", "--noheader", "--array", "--states=all", "--format=%i %j"])
    return {
        line.split()[0]
        for line in out.stdout.splitlines()
        if len(line.split()) == 2 and line.split()[1].startswith(prefix)
    }


def test_slurmctld_stopped_for_30_s_delays_a_scale_up_but_never_doubles_it(
    scratch: Path, faults: FaultInjector, fault_report: FaultOutcome, cluster: SLURMCluster
) -> None:
    fault_report.describe(
        f"slurmctld stopped for {OUTAGE:.0f} s while the cluster scales from 1 to 3 jobs",
        "controller",
        "the scale-up waits and completes once slurmctld is back, with exactly 2 new jobs "
        "(no double submission); job states recover; the running computation is untouched",
    )
    cluster.scale(jobs=1)
    cluster.wait_for_workers(1, timeout=START_TIMEOUT)
    log = scratch / "tasks.log"
    with Client(cluster) as client:
        blocks = workloads.persist_blocks(client, BLOCKS, str(log))
        wait(blocks, timeout=120)
        total = workloads.reduce_blocks(client, blocks, str(log), 1.0)

        faults.stop_slurmctld()
        stopped_at = time.monotonic()
        errors: list[BaseException] = []

        def scale_up() -> None:
            try:
                cluster.scale(jobs=3)
            except BaseException as error:  # reported by the test below
                errors.append(error)

        scaling = threading.Thread(target=scale_up, name="scale-up")
        scaling.start()
        time.sleep(max(0.0, OUTAGE - elapsed_since(stopped_at)))
        assert scaling.is_alive(), "scale() returned while the controller was down"
        faults.start_slurmctld()
        restarted_at = time.monotonic()

        scaling.join(timeout=180)
        assert not scaling.is_alive(), "scale() still waits 180 s after the restart"
        assert not errors, errors
        wait_for(
            lambda: check(
                len(cluster.jobs) == 3 and len(cluster.scheduler_info["workers"]) == 3,
                (cluster.jobs, len(cluster.scheduler_info["workers"])),
            ),
            START_TIMEOUT,
            "three jobs with their workers",
        )
        fault_report.recovery_seconds = elapsed_since(restarted_at)
        value = total.result(timeout=120)

    assert value == workloads.expected(BLOCKS)
    history = cluster.job_history
    assert len(history) == 3, history
    assert {s.state for s in history.values()} == {JobState.RUNNING}, history
    assert jobs_named("faultctld-") == set(history), "a job Slurm has that the cluster lost"
    fault_report.recovery = "slurmctld restart to 3 jobs with workers"
    fault_report.tasks_recomputed = recomputed(log)
    fault_report.details["sbatch_calls"] = cluster.batchctl.calls["sbatch"]
    fault_report.observed = (
        f"scale(jobs=3) waited out the outage and returned; 3 jobs, no double, all RUNNING "
        f"{fault_report.recovery_seconds} s after the restart; the computation finished "
        f"right with {fault_report.tasks_recomputed} task(s) recomputed"
    )
    ids = list(history)
    cluster.close(timeout=60)
    wait_for(lambda: check(not (live := squeue(ids)), live), 60, "the cluster's jobs to end")
    assert fault_report.left_over(ids) == 0
