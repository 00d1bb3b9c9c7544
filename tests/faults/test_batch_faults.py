"""Faults in batch mode: one allocation, one Dask cluster (scheduler, client, workers as ranks).

Each test ships the suite's two-stage graph into a real job with ``jobstrap.submit``
(``srun --mpi=pmi2``, TLS over ib0) and breaks something while the graph's blocks
are held in worker memory: the scheduler rank is frozen, the scheduler's node or a
worker's node is cut off the network.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import workloads
from faultkit import (
    DEATH_TIMEOUT,
    LOGIN_HOST,
    START_TIMEOUT,
    FaultInjector,
    FaultOutcome,
    NotYetError,
    elapsed_since,
    exclusive_directives,
    on,
    process_state,
    processes_of,
    recomputed,
    sacct_states,
    squeue,
    wait_for,
)

import jobstrap
from jobstrap.batch.future import JobFuture
from jobstrap.errors import JobFailedError
from jobstrap.store.rundir import RunDir, SchedulerInfo

pytestmark = [pytest.mark.cluster, pytest.mark.faults]

#: Two nodes: the scheduler's and a worker's are different hosts.
JOB: dict[str, Any] = {
    "profile": "testcluster",
    "nodes": 2,
    "walltime": "00:10:00",
    "memory": "1GiB",
    "death_timeout": DEATH_TIMEOUT,
}
#: What "no job left running" allows beyond the death timeout.
MARGIN = 30


@pytest.fixture(autouse=True)
def _ship_workloads() -> None:
    workloads.ship_by_value()


def submit_graph(
    scratch: Path, faults: FaultInjector, n: int, seconds: float, **overrides: Any
) -> tuple[JobFuture, Path]:
    """Submit the suite's graph as a job; return its future and its task log."""
    log = scratch / "tasks.log"
    future = jobstrap.submit(workloads.graph(n, str(log), seconds), **{**JOB, **overrides})
    faults.own(future.job_ids)
    return future, log


def wait_computing(future: JobFuture, done: int) -> None:
    """Wait until at least ``done`` tasks have finished in the job."""

    def computing() -> bool:
        progress = future.progress()
        if progress is not None and progress.done >= done:
            return True
        if future.done():
            pytest.fail(f"the job ended before the fault: {future.state}\n{future.logs(tail=20)}")
        raise NotYetError(f"state {future.state}, progress {progress}")

    wait_for(computing, START_TIMEOUT, f"job {future.job_id} to compute {done} tasks")


def job_nodes(job_id: str) -> list[str]:
    """The nodes of a running job."""
    nodes = on(LOGIN_HOST, ["squeue", "--noheader", "--format=%N", f"--jobs={job_id}"]).stdout
    hosts = on(LOGIN_HOST, ["scontrol", "show", "hostnames", nodes.strip()]).stdout.split()
    return hosts


def gone(future: JobFuture) -> bool:
    """True once Slurm has ended the job and no process of it is left on any node."""
    live = squeue(future.job_ids)
    procs = processes_of(str(future.run_dir))
    if live or procs:
        raise NotYetError(f"squeue {live}; processes {procs}")
    return True


def ranks_gone(run_dir: Path) -> bool:
    """True once no bootstrap rank of the run is left on any node (srun may still wait)."""
    procs = [p for p in processes_of(str(run_dir)) if "jobstrap.bootstrap" in p]
    procs = [p for p in procs if " srun " not in f" {p.split(' ', 1)[1]}"]
    if procs:
        raise NotYetError(f"ranks still running: {procs}")
    return True


def test_a_frozen_scheduler_rank_ends_the_job_within_the_death_timeout(
    scratch: Path, faults: FaultInjector, fault_report: FaultOutcome
) -> None:
    fault_report.describe(
        "scheduler rank frozen (SIGSTOP) mid-computation",
        "batch",
        f"client and worker ranks give up after the death timeout ({DEATH_TIMEOUT} s); "
        f"the job ends within death timeout + {MARGIN} s; the future reports the job's state",
    )
    future, log = submit_graph(scratch, faults, n=60, seconds=1.0)
    wait_computing(future, 4)
    info: SchedulerInfo = RunDir(future.run_dir).read_info()

    faults.freeze(info.pid)
    frozen_at = time.monotonic()
    wait_for(lambda: gone(future), DEATH_TIMEOUT + MARGIN, "the job to end")
    fault_report.recovery_seconds = elapsed_since(frozen_at)
    fault_report.recovery = "freeze to job ended, no process left"

    error = future.exception(timeout=60)
    assert isinstance(error, JobFailedError), error
    assert not RunDir(future.run_dir).result_file.exists()
    fault_report.observed = f"{str(error).splitlines()[0]}; the future raised JobFailedError"
    fault_report.tasks_recomputed = recomputed(log)
    assert fault_report.left_over(future.job_ids) == 0


@pytest.mark.slow
def test_a_scheduler_node_cut_off_leaves_no_rank_running_after_the_death_timeout(
    scratch: Path, faults: FaultInjector, fault_report: FaultOutcome
) -> None:
    fault_report.describe(
        "scheduler's node cut off (ib0 and eth0 down) mid-computation",
        "batch",
        f"every rank exits within death timeout + {MARGIN} s, on both sides of the cut; "
        "once the link is back Slurm ends the job; the future raises, never returns",
    )
    future, log = submit_graph(
        scratch, faults, n=60, seconds=1.0, extra_directives=exclusive_directives()
    )
    wait_computing(future, 4)
    info = RunDir(future.run_dir).read_info()

    faults.cut(info.host)
    cut_at = time.monotonic()
    wait_for(lambda: ranks_gone(future.run_dir), DEATH_TIMEOUT + MARGIN, "every rank to exit")
    fault_report.recovery_seconds = elapsed_since(cut_at)
    fault_report.recovery = "cut to no rank left on any node"
    # A node that drops off stays off a while: long enough that the news of the other
    # node's ranks exiting is lost to srun on this one, which would then wait forever.
    time.sleep(max(0.0, DEATH_TIMEOUT + MARGIN - elapsed_since(cut_at)))
    faults.reconnect(info.host)
    reconnected_at = time.monotonic()
    # The batch script on the cut node can only tell the controller now.
    wait_for(lambda: gone(future), 150, "Slurm to end the job once the link is back")
    fault_report.details["job_end_after_reconnect_seconds"] = elapsed_since(reconnected_at)
    # Whether srun had lost track of the ranks and the job script had to end it.
    fault_report.details["launcher_ended_by_job_script"] = (
        "its launcher still waits for ranks" in future.logs(stream="err")
    )

    # The graph runner saw its scheduler go: an error, never a result.
    error = future.exception(timeout=60)
    assert error is not None
    assert not RunDir(future.run_dir).result_file.exists()
    state = sacct_states(future.job_ids).get(future.job_id, "?")
    fault_report.observed = (
        f"all ranks exited {fault_report.recovery_seconds} s after the cut; the node came "
        f"back after {DEATH_TIMEOUT + MARGIN} s and Slurm ended job {future.job_id} {state} "
        f"{fault_report.details['job_end_after_reconnect_seconds']} s later; the future "
        f"raised {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    )
    fault_report.tasks_recomputed = recomputed(log)
    assert fault_report.left_over(future.job_ids) == 0


@pytest.mark.slow
def test_a_worker_node_cut_off_mid_computation_still_gives_the_right_answer(
    scratch: Path, faults: FaultInjector, fault_report: FaultOutcome
) -> None:
    fault_report.describe(
        "a worker node cut off (ib0 and eth0 down) mid-computation",
        "batch",
        "the scheduler drops the lost workers; their tasks and the blocks they held are "
        "recomputed on the workers left; the answer is right",
    )
    # Ranks 0-2 on the first node (scheduler, client, one worker), 3-5 on the second.
    n = 40
    future, log = submit_graph(
        scratch,
        faults,
        n=n,
        seconds=0.5,
        tasks_per_node=3,
        extra_directives=exclusive_directives(),
    )
    wait_computing(future, 6)
    info = RunDir(future.run_dir).read_info()
    (victim,) = [node for node in job_nodes(future.job_id) if node != info.host]

    with faults.cut_off(victim):
        cut_at = time.monotonic()
        value = future.result(timeout=240)
        fault_report.recovery_seconds = elapsed_since(cut_at)

    assert value == workloads.expected(n)
    fault_report.recovery = "cut to the right answer"
    fault_report.tasks_recomputed = recomputed(log)
    assert fault_report.tasks_recomputed > 0  # the lost node's blocks were computed again
    fault_report.observed = (
        f"answer right {fault_report.recovery_seconds} s after the cut, "
        f"{fault_report.tasks_recomputed} task(s) recomputed"
    )
    wait_for(lambda: gone(future), 120, "the job to end")
    fault_report.details["job_state"] = sacct_states(future.job_ids).get(future.job_id)
    assert fault_report.left_over(future.job_ids) == 0


# --- graph jobs whose result file is cut short ------------------------------------------


def big_result(megabytes: int, seconds: float) -> bytes:
    """A result large enough that writing it takes a while."""
    time.sleep(seconds)
    return bytes(range(256)) * (megabytes * 4096)


def test_a_graph_job_killed_while_writing_its_result_reports_the_jobs_state(
    scratch: Path, faults: FaultInjector, fault_report: FaultOutcome
) -> None:
    fault_report.describe(
        "the client rank killed (SIGKILL) halfway through writing result.pkl",
        "graph",
        "the future reports the job's end state and never returns a truncated result",
    )
    run_root = scratch / "runs"
    # 400 MiB takes a moment to write; gathered, pickled and framed it needs ~3 copies
    # in the client rank's memory, hence the larger job.
    megabytes = 400
    future = jobstrap.submit(big_result, megabytes, 2.0, **{**JOB, "memory": "4GiB"})
    faults.own(future.job_ids)
    run = RunDir(future.run_dir)

    def writing() -> tuple[Path, int]:
        partial = [p for p in run.path.glob(".result.pkl.*.tmp") if p.stat().st_size > 0]
        if not partial:
            if future.done():
                pytest.fail(f"the job ended before writing: {future.state}\n{future.logs(tail=5)}")
            raise NotYetError(f"no partial result yet in {run_root}; state {future.state}")
        pid = int(partial[0].name.split(".")[3])
        return partial[0], pid

    tmp, writer = wait_for(writing, START_TIMEOUT, "the result to be half-written", interval=0.005)
    # SIGKILL at once, as a dying node would: unlike SIGSTOP, it cuts a large write()
    # short, so the temporary file stays half-written.
    os.kill(writer, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: process_state(writer) in (None, "Z"), 10, f"the writer {writer} to die")
    size = tmp.stat().st_size if tmp.exists() else 0

    error = future.exception(timeout=DEATH_TIMEOUT + 90)

    assert isinstance(error, JobFailedError), error
    assert error.job_id == future.job_id
    assert error.state in ("FAILED", "CANCELLED", "NODE_FAIL")
    assert not run.result_file.exists()
    fault_report.recovery_seconds = elapsed_since(killed_at)
    fault_report.recovery = "kill to the future's error"
    fault_report.observed = (
        f"{size / 2**20:.0f} MiB of {megabytes} MiB written when killed; future raised "
        f"JobFailedError: job {error.job_id} ended {error.state}"
    )
    wait_for(lambda: gone(future), 120, "the job to end")
    assert fault_report.left_over(future.job_ids) == 0


def test_a_half_copied_result_file_is_never_returned(
    scratch: Path, faults: FaultInjector, fault_report: FaultOutcome
) -> None:
    fault_report.describe(
        "result.pkl half-written (a non-atomic copy) when the job is cancelled",
        "graph",
        "the future ignores the damaged file, reports CANCELLED with the job id and says "
        "result.pkl is damaged",
    )
    future = jobstrap.submit(big_result, 1, 600.0, **JOB)
    faults.own(future.job_ids)
    run = RunDir(future.run_dir)
    wait_for(lambda: future.state.value == "RUNNING", START_TIMEOUT, "the job to run")
    from jobstrap.engines.dask.graph_runner import frame

    whole = frame(b"x" * 1_000_000)
    run.result_file.write_bytes(whole[: len(whole) // 2])

    assert not future.done()  # half a result is no result
    faults.scancel(future.job_ids)
    cancelled_at = time.monotonic()
    error = future.exception(timeout=120)

    assert isinstance(error, JobFailedError), error
    assert error.state == "CANCELLED"
    assert error.job_id == future.job_id
    assert "result.pkl is damaged" in str(error)
    fault_report.recovery_seconds = elapsed_since(cancelled_at)
    fault_report.recovery = "cancel to the future's error"
    fault_report.observed = f"JobFailedError: {str(error).splitlines()[0]}"
    assert fault_report.left_over(future.job_ids) == 0
