"""How a graph or app future explains a job that ended without an outcome.

The explanation is the one failure explainer's (:mod:`jobstrap.jobs.diagnose`); the
poll pauses follow the one backoff schedule (:mod:`jobstrap.backoff`).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from jobstrap.backoff import exponential_delay
from jobstrap.batch.future import JobFuture, result_poll_delays
from jobstrap.errors import JobFailedError
from jobstrap.states import JobState
from jobstrap.store.registry import RunRecord
from jobstrap.systems import JobRecord


def future_of(tmp_path: Path, stderr: str, python: str = "/opt/py/bin/python3") -> JobFuture:
    """A graph future of job 7 whose stderr says ``stderr`` (no watcher: no job ids)."""
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True, mode=0o700)
    run_dir.chmod(0o700)
    (run_dir / "logs" / "7.err").write_text(stderr)
    record = RunRecord(
        run_id="graph-1", kind="graph", system="local", run_dir=str(run_dir),
        profile={"resolved": {"python": python}},
    )  # fmt: skip
    future = JobFuture(record)
    future.job_id = "7"
    return future


def failure(future: JobFuture, state: JobState, exit_code: int | None = None) -> JobFailedError:
    record = JobRecord("7", state, exit_code=exit_code, nodes="node1")
    return future._failure(record)


def test_a_python_missing_on_the_node_is_said_in_the_diagnosis_s_words(tmp_path: Path) -> None:
    tail = "/opt/py/bin/python3: No such file or directory\n"
    error = failure(future_of(tmp_path, tail), JobState.FAILED, 127)

    assert str(error).splitlines()[0] == (
        "job 7 ended FAILED: python not found on node1: /opt/py/bin/python3 "
        "(check python= or the profile)"
    )
    assert error.stderr_tail.strip() == tail.strip()


def test_a_step_killed_for_memory_is_called_out_of_memory(tmp_path: Path) -> None:
    tail = "slurmstepd: error: Detected 1 oom-kill event(s) in StepId=7.0\n"
    error = failure(future_of(tmp_path, tail), JobState.FAILED, 137)

    assert "ran out of memory on node1" in str(error)


def test_the_app_s_own_exit_code_wins_over_the_batch_system_s(tmp_path: Path) -> None:
    future = future_of(tmp_path, "Traceback ...\nValueError: bad\n")
    (future.run_dir / "exit_code").write_text("3\n")

    error = failure(future, JobState.FAILED, 1)

    first_line = str(error).splitlines()[0]
    assert first_line == "job 7 ended FAILED: failed on node1 (exit 3): ValueError: bad"


def test_a_completed_job_without_a_result_says_so(tmp_path: Path) -> None:
    error = failure(future_of(tmp_path, ""), JobState.COMPLETED, 0)

    first, last = str(error).splitlines()
    assert first.endswith("the job ended without writing result.pkl")
    assert last == f"logs: {error.log_path}"
    assert error.log_path.endswith("7.err")


def test_the_app_s_traceback_is_shown_without_the_ranks_log_lines_around_it(
    tmp_path: Path,
) -> None:
    tail = (
        "2026-12-06 INFO - distributed.worker - Start worker\n"
        "Traceback (most recent call last):\n"
        '  File "app.py", line 3, in <module>\n'
        "    import nonexistent_pkg_xyz\n"
        "ModuleNotFoundError: No module named 'nonexistent_pkg_xyz'\n"
        "2026-12-06 INFO - distributed.worker - Stopping worker\n"
    )
    error = failure(future_of(tmp_path, tail), JobState.FAILED, 1)

    assert error.stderr_tail.splitlines()[0] == "Traceback (most recent call last):"
    assert error.stderr_tail.splitlines()[-1].startswith("ModuleNotFoundError")
    assert "Stopping worker" not in str(error)


def test_result_polls_follow_the_backoff_schedule_capped_fast_then_slow() -> None:
    fast = list(itertools.islice(result_poll_delays(first=0.05, fast=0.1, fast_for=60), 5))
    slow = list(itertools.islice(result_poll_delays(first=0.05, slow=0.5, fast_for=0), 2000))

    assert fast == [exponential_delay(n, initial=0.05, maximum=0.1) for n in range(1, 6)]
    assert slow[:5] == [0.05, 0.1, 0.2, 0.4, 0.5]
    assert set(slow[4:]) == {0.5}  # and it never overflows, however long the wait


@pytest.mark.parametrize("state", [JobState.CANCELLED, JobState.TIMEOUT])
def test_the_end_state_is_named(tmp_path: Path, state: JobState) -> None:
    error = failure(future_of(tmp_path, ""), state)

    assert error.state == state.value
    assert str(error).startswith(f"job 7 ended {state.value}: ")
