"""What a saved run is, as ``status`` and ``prune`` decide it (``jobstrap.cli.runs``)."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from jobstrap.cli.runs import describe, ended_at
from jobstrap.states import JobState
from jobstrap.store.registry import RunRecord
from jobstrap.systems import JobRecord


def run(tmp_path: Path, job_ids: list[str], status: str = "finished") -> RunRecord:
    (tmp_path / "logs").mkdir(exist_ok=True)
    return RunRecord(run_id="run-a", kind="app", system="slurm", run_dir=str(tmp_path),
                     job_ids=job_ids, tags=["js1"], status=status)  # fmt: skip


def job(job_id: str, state: JobState, **values: object) -> JobRecord:
    return JobRecord(job_id, state, name="jobstrap-js1", **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("files", "status", "state", "reason"),
    [
        ({"exit_code": "0\n"}, "finished", "COMPLETED", "exit 0 (run directory)"),
        ({"exit_code": "2\n"}, "finished", "FAILED", "exit 2 (run directory)"),
        # The app's own exit code says more than the cancel that came after it.
        ({"exit_code": "0\n"}, "cancelled", "COMPLETED", "exit 0 (run directory)"),
        ({"error.pkl": "x"}, "finished", "FAILED", "the app raised (error.pkl)"),
        ({"result.pkl": "x"}, "finished", "COMPLETED", "result.pkl written"),
        ({}, "cancelled", "CANCELLED", "cancelled by jobstrap"),
        ({}, "finished", "ENDED", "no longer known to the batch system"),
    ],
    ids=["exit-0", "exit-2", "exit-code-over-cancel", "error", "result", "cancelled", "ended"],
)
def test_a_job_the_batch_system_forgot_is_what_the_run_directory_says(
    tmp_path: Path, files: dict[str, str], status: str, state: str, reason: str
) -> None:
    record = run(tmp_path, ["100"], status)
    for name, text in files.items():
        (tmp_path / name).write_text(text)

    view = describe(record, {})

    assert (view.summary.state, view.summary.reason) == (state, reason)
    assert not view.live


def test_the_batch_system_s_word_comes_before_the_run_directory(tmp_path: Path) -> None:
    record = run(tmp_path, ["100"])
    (tmp_path / "exit_code").write_text("0\n")

    view = describe(record, {record.job_key("100"): job("100", JobState.TIMEOUT)})

    assert view.summary.state == "TIMEOUT"


def test_a_live_job_of_a_cancelled_run_is_cancelling_and_of_another_run_running(
    tmp_path: Path,
) -> None:
    cancelled = run(tmp_path, ["100"], "cancelled")
    running = replace(cancelled, status="submitted")  # the same run, nobody cancelled
    found = {cancelled.job_key("100"): job("100", JobState.RUNNING, nodes="node1")}

    assert describe(cancelled, found).summary.state == "CANCELLING"
    assert describe(cancelled, found).live
    assert describe(running, found).summary.state == "RUNNING"
    assert JobState.CANCELLING.is_active
    assert not JobState.CANCELLING.is_terminal


def test_a_closed_cluster_s_lingering_job_is_cancelling_and_then_cancelled(
    tmp_path: Path,
) -> None:
    # Closing a notebook cluster cancels every job it had; one the batch system has not
    # released yet is on its way out, not at work.
    closed = replace(run(tmp_path, ["100"]), kind="cluster", status="closed")
    found = {closed.job_key("100"): job("100", JobState.RUNNING, nodes="node1")}

    lingering = describe(closed, found).summary
    gone = describe(closed, {}).summary

    assert (lingering.state, lingering.reason) == ("CANCELLING", "cluster closed")
    assert (gone.state, gone.reason) == ("CANCELLED", "cluster closed")


def test_a_job_id_now_held_by_another_job_is_not_taken_for_the_run_s(tmp_path: Path) -> None:
    record = run(tmp_path, ["100"], "submitted")
    found = {record.job_key("100"): JobRecord("100", JobState.RUNNING, name="someone-else")}

    view = describe(record, found)

    assert view.summary.state == "ENDED"


def test_a_run_of_several_jobs_is_one_line_the_worst_end_naming_it(tmp_path: Path) -> None:
    record = run(tmp_path, ["100", "101", "102"])
    found = {
        record.job_key("100"): job("100", JobState.COMPLETED),
        record.job_key("101"): job("101", JobState.FAILED, exit_code=1),
        record.job_key("102"): job("102", JobState.COMPLETED),
    }

    view = describe(record, found)

    assert view.summary.state == "FAILED"
    assert view.summary.reason == "2 COMPLETED, 1 FAILED"
    assert [(j, v.state) for j, v in view.jobs] == [
        ("100", "COMPLETED"), ("101", "FAILED"), ("102", "COMPLETED")
    ]  # fmt: skip


def test_a_run_with_one_job_still_running_is_live(tmp_path: Path) -> None:
    record = run(tmp_path, ["100", "101"], "submitted")
    found = {
        record.job_key("100"): job("100", JobState.COMPLETED),
        record.job_key("101"): job("101", JobState.RUNNING, nodes="node2"),
    }

    view = describe(record, found)

    assert view.live
    assert (view.summary.state, view.summary.nodes) == ("RUNNING", "node2")


def test_a_rejected_submission_is_a_failed_run_without_jobs(tmp_path: Path) -> None:
    view = describe(run(tmp_path, [], "failed"), {})

    assert (view.summary.state, view.summary.reason) == ("FAILED", "the submission failed")


def test_a_run_ended_when_its_jobs_last_wrote(tmp_path: Path) -> None:
    record = run(tmp_path, ["100"])
    record.created = time.time() - 10 * 86400
    log = tmp_path / "logs" / "100.err"
    log.write_text("last words\n")
    stamp = time.time() - 3600
    os.utime(log, (stamp, stamp))

    assert ended_at(record) == pytest.approx(stamp)
