"""What a cluster knows about its jobs, and how it explains their failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobstrap.cluster.jobs import (
    JobInfo,
    explain_failure,
    is_fatal_failure,
    killed_for_memory,
    parse_elapsed,
    stderr_tail,
)
from jobstrap.states import JobState
from jobstrap.systems import JobRecord

SLURM_BAD_PYTHON = """\
slurmstepd: error: execve(): /nonexistent/python: No such file or directory
srun: error: node1: task 0: Exited with exit code 2
"""
BASH_BAD_PYTHON = "/spool/jobs/8/script: line 17: /nonexistent/python: No such file or directory\n"


def test_a_missing_python_under_srun_names_the_node_and_the_path() -> None:
    why = explain_failure(JobState.FAILED, 2, "node1", SLURM_BAD_PYTHON, "/nonexistent/python")

    assert why.startswith("python not found on node1: /nonexistent/python")


def test_a_missing_python_without_a_launcher_is_found_in_the_shells_message() -> None:
    why = explain_failure(JobState.FAILED, 127, "", BASH_BAD_PYTHON, "/nonexistent/python")

    assert why.startswith("python not found: /nonexistent/python")


def test_a_bare_python_name_not_on_path_is_not_found_either() -> None:
    tail = "script: line 9: python3.99: command not found\n"

    assert explain_failure(JobState.FAILED, 127, "n2", tail, "python3.99").startswith(
        "python not found on n2"
    )


def test_a_python_without_jobstrap_says_what_is_missing() -> None:
    tail = "ModuleNotFoundError: No module named 'jobstrap'\n"

    why = explain_failure(JobState.FAILED, 1, "node2", tail, "/usr/bin/python3")

    assert why == "jobstrap is not installed for /usr/bin/python3 on node2"


def test_out_of_memory_says_what_to_change() -> None:
    why = explain_failure(JobState.OUT_OF_MEMORY, 137, "node3", "", "python")

    assert "memory=" in why
    assert "node3" in why


# Recorded on the test cluster with `up --cgroup-memory`: the kernel killed the worker
# twice, the rank gave up; Slurm ended the job FAILED and its step OUT_OF_MEMORY.
SLURM_STEP_OOM = (
    "jobstrap[node1]: the job's memory limit killed the worker 2 times"
    " (the kernel's OOM killer)\n"
    "slurmstepd-node1: error: Detected 2 oom-kill event(s) in StepId=99.0. Some of your"
    " processes may have been killed by the cgroup out-of-memory handler.\n"
    "srun: error: node1: task 0: Out Of Memory\n"
)


def test_a_step_killed_for_memory_is_out_of_memory_although_the_job_says_failed() -> None:
    assert killed_for_memory(SLURM_STEP_OOM)
    assert not killed_for_memory(SLURM_BAD_PYTHON)

    why = explain_failure(JobState.FAILED, 1, "node1", SLURM_STEP_OOM, "python")

    assert why == "ran out of memory on node1; raise memory= or lower processes="


def test_other_failures_quote_the_last_stderr_line() -> None:
    tail = "Traceback (most recent call last):\nRuntimeError: boom\n"

    assert explain_failure(JobState.FAILED, 1, "node1", tail, "python") == (
        "failed on node1 (exit 1): RuntimeError: boom"
    )


def test_config_failures_are_fatal_and_crashes_are_not() -> None:
    assert is_fatal_failure("python not found on node1: /x/python (check python=)")
    assert is_fatal_failure("jobstrap is not installed for /usr/bin/python3 on node2")
    assert not is_fatal_failure("failed on node1 (exit 1): RuntimeError: boom")
    assert not is_fatal_failure("ran out of memory on node3; raise memory=")


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
