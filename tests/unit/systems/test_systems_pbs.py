"""PBS Pro / OpenPBS builders and parsers against golden outputs.

There is no PBS server here, so the golden files under ``golden/pbs/`` are not
recordings: they are written from the PBS Professional documentation — the
``qstat(1B)`` manual (``-x`` history, ``-t`` subjobs, ``-f -F json``), the PP-483
design document that introduced ``qstat -f -F json`` (its example output gives the
JSON layout: ``timestamp``, ``pbs_version``, ``pbs_server``, ``Jobs``), and the
reference guide's job attributes (``job_state`` letters, ``Exit_status`` with
256 + signal for killed jobs, the ``comment`` PBS sets when it kills a job for its
walltime or memory). Job ids follow ``qsub``'s ``1234.server`` / ``1250[].server``.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from jobstrap.jobs.spec import ArraySpec
from jobstrap.states import JobState
from jobstrap.systems.pbs import SYSTEM as PBS
from jobstrap.systems.pbs import finished_state

GOLDEN = Path(__file__).parent.parent / "golden" / "pbs"


def golden(name: str) -> str:
    return (GOLDEN / name).read_text()


def test_qsub_prints_a_plain_job_id() -> None:
    assert PBS.parse_submit(golden("qsub.txt")) == "1234.pbs01"


def test_qsub_prints_an_array_id_with_empty_brackets() -> None:
    assert PBS.parse_submit(golden("qsub_array.txt")) == "1250[].pbs01"


def test_qsub_output_that_is_not_a_job_id_is_refused() -> None:
    with pytest.raises(ValueError, match="not a job id"):
        PBS.parse_submit(golden("qsub_unknown_queue.txt"))


def test_a_queued_job_is_pending_with_the_scheduler_s_comment() -> None:
    record = PBS.parse_status(golden("qstat_queued.json"))["1234.pbs01"]

    assert record.state is JobState.PENDING
    assert record.name == "jobstrap-js0123456789"
    assert "Insufficient amount of resource" in record.reason
    assert record.exit_code is None


def test_a_running_job_reports_its_hosts() -> None:
    record = PBS.parse_status(golden("qstat_running.json"))["1235.pbs01"]

    assert record.state is JobState.RUNNING
    assert record.nodes == "cn001/0*36+cn002/0*36"
    assert record.submit_time == "Fri Nov 11 17:58:00 2016"


def test_a_running_job_reports_its_walltime_used_and_left() -> None:
    record = PBS.parse_status(golden("qstat_running.json"))["1235.pbs01"]

    # Resource_List.walltime 02:00:00 minus resources_used.walltime 00:00:41.
    assert record.elapsed == "00:00:41"
    assert record.time_left == "01:59:19"


def test_a_queued_job_has_no_time_left() -> None:
    records = PBS.parse_status(golden("qstat_queued.json"))
    assert all(record.time_left == "" for record in records.values())


@pytest.mark.parametrize(
    ("job_id", "state", "exit_code"),
    [
        ("1236.pbs01", JobState.COMPLETED, 0),
        ("1237.pbs01", JobState.FAILED, 3),
        ("1238.pbs01", JobState.TIMEOUT, 128 + 15),
        ("1239.pbs01", JobState.OUT_OF_MEMORY, 128 + 15),
        ("1240.pbs01", JobState.CANCELLED, 128 + 15),
        ("1241.pbs01", JobState.NODE_FAIL, -3),
    ],
)
def test_finished_jobs_say_how_they_ended(job_id: str, state: JobState, exit_code: int) -> None:
    record = PBS.parse_status(golden("qstat_finished.json"))[job_id]

    assert record.state is state
    assert record.exit_code == exit_code


def test_array_subjobs_are_reported_one_by_one() -> None:
    records = PBS.parse_status(golden("qstat_array.json"))

    assert {j: r.state for j, r in records.items() if "[]" not in j} == {
        "1250[0].pbs01": JobState.COMPLETED,
        "1250[1].pbs01": JobState.RUNNING,
        "1250[2].pbs01": JobState.PENDING,
        "1250[3].pbs01": JobState.PENDING,
    }
    assert records["1250[].pbs01"].state is JobState.RUNNING  # B: begun


def test_subjob_ids_are_spelled_the_way_qstat_reports_them() -> None:
    submitted = PBS.parse_submit(golden("qsub_array.txt"))

    ids = PBS.array_task_ids(submitted, ArraySpec(0, 3))

    assert set(ids) <= set(PBS.parse_status(golden("qstat_array.json")))
    assert {PBS.base_job_id(j) for j in ids} == {submitted}


def test_the_classic_table_is_read_when_json_is_not_available() -> None:
    records = PBS.parse_status(golden("qstat_table.txt"))

    assert {j: r.state for j, r in records.items()} == {
        "1234.pbs01": JobState.PENDING,
        "1235.pbs01": JobState.RUNNING,
        "1250[].pbs01": JobState.RUNNING,
    }


def test_empty_output_means_no_jobs() -> None:
    assert PBS.parse_status("") == {}


def test_invalid_json_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid JSON"):
        PBS.parse_status('{"Jobs": {')


def test_status_asks_for_history_and_subjobs_in_json() -> None:
    assert PBS.status_argv(["1234.pbs01", "1250[0].pbs01"]) == [
        "qstat", "-x", "-t", "-f", "-F", "json", "1234.pbs01", "1250[0].pbs01",
    ]  # fmt: skip


def test_the_live_view_already_includes_finished_jobs() -> None:
    assert PBS.history_argv(["1234.pbs01"]) is None


def test_an_unknown_job_is_recognised() -> None:
    assert PBS.is_unknown_job_error(golden("qstat_unknown.txt"))


def test_an_unreachable_server_is_transient() -> None:
    assert PBS.is_transient_error(golden("qstat_no_server.txt"))


def test_a_rejected_walltime_is_not_transient() -> None:
    assert not PBS.is_transient_error(golden("qsub_walltime.txt"))


def test_find_by_name_uses_qselect() -> None:
    user = pwd.getpwuid(os.getuid()).pw_name
    # -u: only the current user's jobs; another user's job of the same name is not ours.
    assert PBS.find_by_name_argv("jobstrap-js1") == ["qselect", "-u", user, "-N", "jobstrap-js1"]
    assert PBS.parse_find_by_name(golden("qselect.txt")) == ["1234.pbs01", "1250[].pbs01"]


def test_cancel_and_signal_argv() -> None:
    assert PBS.cancel_argv(["1234.pbs01"]) == ["qdel", "-W", "force", "1234.pbs01"]
    assert PBS.signal_argv(["1234.pbs01"], "USR1") == ["qsig", "-s", "USR1", "1234.pbs01"]


def test_the_site_s_array_limit_comes_from_qmgr() -> None:
    assert PBS.limits_argv() == ["qmgr", "-c", "list server max_array_size"]
    assert PBS.parse_max_array_size(golden("qmgr_max_array_size.txt")) == 10000


def test_a_walltime_kill_is_timeout_whatever_the_exit_status() -> None:
    assert finished_state(265, "job killed: walltime 3605 exceeded limit 3600") is (
        JobState.TIMEOUT
    )
