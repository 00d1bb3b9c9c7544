"""The one failure explainer: kinds, messages and which failures are fatal."""

from __future__ import annotations

import pytest

from jobstrap.jobs.diagnose import (
    FailureKind,
    diagnose,
    diagnose_record,
    killed_for_memory,
    last_traceback,
)
from jobstrap.states import JobState
from jobstrap.systems import JobRecord

NO_JOBSTRAP = "ModuleNotFoundError: No module named 'jobstrap'\n"
DENIED = "/nonexistent/python: Permission denied\n"
BOOM = "Traceback (most recent call last):\nRuntimeError: boom\n"


def message(state: JobState, code: int | None, nodes: str, tail: str, python: str) -> str:
    return diagnose(state, code, nodes, tail, python).message


SLURM_BAD_PYTHON = """\
slurmstepd: error: execve(): /nonexistent/python: No such file or directory
srun: error: node1: task 0: Exited with exit code 2
"""
BASH_BAD_PYTHON = "/spool/jobs/8/script: line 17: /nonexistent/python: No such file or directory\n"


def test_a_missing_python_under_srun_names_the_node_and_the_path() -> None:
    why = message(JobState.FAILED, 2, "node1", SLURM_BAD_PYTHON, "/nonexistent/python")

    assert why.startswith("python not found on node1: /nonexistent/python")


def test_a_missing_python_without_a_launcher_is_found_in_the_shells_message() -> None:
    why = message(JobState.FAILED, 127, "", BASH_BAD_PYTHON, "/nonexistent/python")

    assert why.startswith("python not found: /nonexistent/python")


def test_a_bare_python_name_not_on_path_is_not_found_either() -> None:
    tail = "script: line 9: python3.99: command not found\n"

    assert message(JobState.FAILED, 127, "n2", tail, "python3.99").startswith(
        "python not found on n2"
    )


def test_a_python_without_jobstrap_says_what_is_missing() -> None:
    why = message(JobState.FAILED, 1, "node2", NO_JOBSTRAP, "/usr/bin/python3")

    assert why == "jobstrap is not installed for /usr/bin/python3 on node2"


def test_out_of_memory_says_what_to_change() -> None:
    why = message(JobState.OUT_OF_MEMORY, 137, "node3", "", "python")

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

    why = message(JobState.FAILED, 1, "node1", SLURM_STEP_OOM, "python")

    assert why == "ran out of memory on node1; raise memory= or lower processes="


def test_other_failures_quote_the_last_stderr_line() -> None:
    assert message(JobState.FAILED, 1, "node1", BOOM, "python") == (
        "failed on node1 (exit 1): RuntimeError: boom"
    )


def test_config_failures_are_fatal_and_crashes_are_not() -> None:
    assert diagnose(JobState.FAILED, 2, "node1", SLURM_BAD_PYTHON, "/nonexistent/python").fatal
    assert diagnose(JobState.FAILED, 1, "node2", NO_JOBSTRAP, "/usr/bin/python3").fatal
    assert not diagnose(JobState.FAILED, 1, "node1", BOOM, "python").fatal
    assert not diagnose(JobState.OUT_OF_MEMORY, 137, "node3", "", "python").fatal


@pytest.mark.parametrize(
    ("state", "code", "tail", "kind"),
    [
        (JobState.FAILED, 2, SLURM_BAD_PYTHON, FailureKind.PYTHON_NOT_FOUND),
        (JobState.FAILED, 126, DENIED, FailureKind.PYTHON_NOT_EXECUTABLE),
        (JobState.FAILED, 1, NO_JOBSTRAP, FailureKind.PACKAGE_MISSING),
        (JobState.FAILED, 1, "No module named 'numpy'\n", FailureKind.MODULE_MISSING),
        (JobState.FAILED, 127, "module: command not found\n", FailureKind.COMMAND_NOT_FOUND),
        (JobState.FAILED, 1, SLURM_STEP_OOM, FailureKind.OUT_OF_MEMORY),
        (JobState.MISSING, 0, "", FailureKind.NO_WORKER),
        (JobState.TIMEOUT, None, "", FailureKind.TIMEOUT),
        (JobState.NODE_FAIL, None, "", FailureKind.NODE_FAIL),
        (JobState.CANCELLED, None, "", FailureKind.CANCELLED),
        (JobState.FAILED, 1, BOOM, FailureKind.FAILED),
    ],
)
def test_each_failure_has_its_kind(
    state: JobState, code: int | None, tail: str, kind: FailureKind
) -> None:
    assert diagnose(state, code, "node1", tail, "/nonexistent/python").kind is kind


def test_a_missing_application_module_is_not_fatal_and_keeps_the_generic_line() -> None:
    found = diagnose(JobState.FAILED, 1, "node1", "No module named 'numpy'\n", "python")

    assert not found.fatal
    assert found.module == "numpy"
    assert found.message == "failed on node1 (exit 1): No module named 'numpy'"


def test_a_record_is_read_like_its_fields() -> None:
    record = JobRecord("7", JobState.OUT_OF_MEMORY, exit_code=137, nodes="node3")

    assert diagnose_record(record, "", "python") == diagnose(
        JobState.OUT_OF_MEMORY, 137, "node3", "", "python"
    )
    assert diagnose_record(None, BOOM, "python").message == "failed: RuntimeError: boom"


INTERLEAVED = """\
2026-12-06 17:03:18,309 - distributed.worker - INFO - Run out-of-band function
Traceback (most recent call last):
  File "/home/u/old.py", line 3, in <module>
KeyError: 'first'
2026-12-06 17:03:18,310 - distributed.worker - INFO - Starting Worker plugin
Traceback (most recent call last):
  File "/home/u/app.py", line 1, in <module>
    import nonexistent_pkg_xyz
ModuleNotFoundError: No module named 'nonexistent_pkg_xyz'
2026-12-06 17:03:18,322 - distributed.scheduler - INFO - Remove client Client-ef08
2026-12-06 17:03:18,340 - jobstrap[vm rank 2] - INFO - workers joined
"""


def test_the_last_traceback_is_found_between_the_ranks_log_lines() -> None:
    assert last_traceback(INTERLEAVED) == [
        "Traceback (most recent call last):",
        '  File "/home/u/app.py", line 1, in <module>',
        "    import nonexistent_pkg_xyz",
        "ModuleNotFoundError: No module named 'nonexistent_pkg_xyz'",
    ]
    assert last_traceback("no traceback here\n") == []


def test_a_rank_s_log_line_inside_the_traceback_is_left_out() -> None:
    # Ranks share the job's stderr: a worker's record can land between the lines.
    tail = (
        "Traceback (most recent call last):\n"
        "2026-12-06 20:45:28,998 - [run=r job_id=4 node=vm rank=2 role=worker]"
        " - distributed.worker - INFO -         Registered to:      tls://10.0.0.1:1\n"
        '  File "/home/u/app.py", line 1, in <module>\n'
        "ModuleNotFoundError: No module named 'x'\n"
    )
    assert last_traceback(tail) == [
        "Traceback (most recent call last):",
        '  File "/home/u/app.py", line 1, in <module>',
        "ModuleNotFoundError: No module named 'x'",
    ]


def test_a_rank_s_log_line_inside_a_traceback_line_gives_the_line_its_indent_back() -> None:
    # Python writes the caret line in pieces ("    " then "^^^"): a record written
    # between them starts after the indentation, which belongs to the caret line.
    tail = (
        "Traceback (most recent call last):\n"
        '  File "/home/u/broken.py", line 1, in <module>\n'
        "    import nonexistent_pkg_xyz\n"
        "    2026-12-06 22:30:43,608 - [run=r job_id=4 node=vm rank=2 role=worker]"
        " - distributed.core - INFO - Starting established connection to tls://10.0.0.2:1\n"
        "^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        "ModuleNotFoundError: No module named 'nonexistent_pkg_xyz'\n"
    )
    assert last_traceback(tail) == [
        "Traceback (most recent call last):",
        '  File "/home/u/broken.py", line 1, in <module>',
        "    import nonexistent_pkg_xyz",
        "    ^^^^^^^^^^^^^^^^^^^^^^^^^^",
        "ModuleNotFoundError: No module named 'nonexistent_pkg_xyz'",
    ]


def test_a_rank_s_log_line_inside_the_exception_line_is_taken_out_of_the_message() -> None:
    # The interpreter writes the exception's type, ": " and its message separately: a
    # record another rank writes between them lands inside the exception line.
    tail = (
        "Traceback (most recent call last):\n"
        '  File "/home/u/broken.py", line 1, in <module>\n'
        "ModuleNotFoundError2026-12-06 22:30:43,608 - [run=r job_id=4 node=vm rank=2"
        " role=worker] - distributed.core - INFO - Starting established connection\n"
        ": No module named 'nonexistent_pkg_xyz'\n"
        "2026-12-06 22:30:43,700 - [run=r job_id=4 node=vm rank=1 role=scheduler]"
        " - distributed.scheduler - INFO - Remove client Client-1\n"
    )
    exception = "ModuleNotFoundError: No module named 'nonexistent_pkg_xyz'"

    assert last_traceback(tail)[-1] == exception
    assert message(JobState.FAILED, 1, "", tail, "python") == f"failed (exit 1): {exception}"


def test_the_message_quotes_the_exception_not_the_log_lines_after_it() -> None:
    found = diagnose(JobState.FAILED, 1, "", INTERLEAVED, "python")

    assert found.message == "failed (exit 1): " + (
        "ModuleNotFoundError: No module named 'nonexistent_pkg_xyz'"
    )


def test_without_a_traceback_the_last_line_that_is_not_routine_logging_is_quoted() -> None:
    tail = "no input files found\n2026-12-06 17:03:18,340 - jobstrap[vm rank 2] - INFO - bye\n"

    assert message(JobState.FAILED, 1, "", tail, "python") == (
        "failed (exit 1): no input files found"
    )
