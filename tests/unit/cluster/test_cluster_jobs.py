"""What a cluster knows about its jobs, and where it finds their stderr."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobstrap.cluster.jobs import JobInfo, parse_elapsed, stderr_tail
from jobstrap.states import JobState
from jobstrap.systems import JobRecord


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1-02:03:04", 93784.0), ("02:03:04", 7384.0), ("03:04", 184.0), ("0:00", 0.0)],
)
def test_slurm_elapsed_times_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_elapsed(text) == seconds


@pytest.mark.parametrize("text", ["", "INVALID", "x:y", "1-2-3:00"])
def test_unreadable_elapsed_times_are_unknown(text: str) -> None:
    assert parse_elapsed(text) is None


def test_stderr_tail_keeps_the_last_non_empty_lines(tmp_path: Path) -> None:
    (tmp_path / "123_4.err").write_text("\n".join(f"line {i}" for i in range(50)) + "\n\n")

    assert stderr_tail(str(tmp_path), "123_4", lines=3) == "line 47\nline 48\nline 49"


def test_pbs_array_tasks_find_the_log_their_script_wrote(tmp_path: Path) -> None:
    (tmp_path / "7_2.err").write_text("qsub said hello\n")

    assert stderr_tail(str(tmp_path), "7[2].pbsserver") == "qsub said hello"


def test_stderr_tail_of_a_job_without_a_log_is_empty(tmp_path: Path) -> None:
    assert stderr_tail(str(tmp_path), "999") == ""


def test_a_running_record_sets_the_start_from_the_elapsed_time() -> None:
    info = JobInfo(job_id="5", name="c-0.0", walltime=600, submitted=900.0)

    changed = info.update(JobRecord("5", JobState.RUNNING, nodes="node2", elapsed="01:40"), 1000.0)

    assert changed
    assert (info.state, info.nodes, info.started) == (JobState.RUNNING, "node2", 900.0)
    assert info.remaining(1000.0) == 500.0


def test_an_unknown_state_keeps_what_was_known() -> None:
    info = JobInfo(job_id="5", name="c-0.0", walltime=600, state=JobState.RUNNING)

    assert not info.update(JobRecord("5", JobState.UNKNOWN))
    assert info.state is JobState.RUNNING


def test_time_left_stops_when_the_job_ends() -> None:
    info = JobInfo(job_id="5", name="c-0.0", walltime=600)
    info.update(JobRecord("5", JobState.RUNNING), now=0.0)
    info.update(JobRecord("5", JobState.TIMEOUT), now=600.0)

    assert info.remaining(5000.0) == 0.0
    assert info.ended == 600.0


def test_a_snapshot_shows_state_node_and_workers() -> None:
    info = JobInfo(job_id="7_1", name="c-2.1", walltime=600, workers={"c-2.1-0"})
    info.update(JobRecord("7_1", JobState.RUNNING, nodes="node3"), now=100.0)

    status = info.snapshot(now=160.0)

    assert (status.job_id, status.state, status.node, status.workers) == (
        "7_1",
        JobState.RUNNING,
        "node3",
        ("c-2.1-0",),
    )
    assert str(status).startswith("7_1 RUNNING, on node3, 9m")
