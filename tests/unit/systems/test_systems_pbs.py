"""PBS Pro / OpenPBS builders and parsers against golden outputs.

The golden files under ``golden/pbs/`` are real output of OpenPBS 23.06.06 (server
``vm``; jobs: ``0`` exits 0, ``1[]`` an array ``-J 1-4``, ``2`` deleted while running,
``3`` killed at its walltime, ``4`` exits 3, ``5`` deleted while queued and held,
``6`` running, ``13`` three nodes), stderr of the failing commands in ``err_*.txt``
with the exit code on the last line. ``qselect.txt``, ``qmgr_list_*`` and
``err_qstat_no_server.txt`` come from the test cluster's OpenPBS (server ``head``).
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from jobstrap.jobs.spec import ArraySpec
from jobstrap.states import JobState
from jobstrap.systems.pbs import SYSTEM as PBS
from jobstrap.systems.pbs import finished_state, parse_full_text

GOLDEN = Path(__file__).parent.parent / "golden" / "pbs"


def golden(name: str) -> str:
    return (GOLDEN / name).read_text()


def golden_error(name: str) -> tuple[str, int]:
    """stderr and the exit code (``rc=N``, last line) of a failing command."""
    *lines, rc = golden(name).splitlines()
    return "\n".join(lines), int(rc.removeprefix("rc="))


def test_qsub_prints_a_plain_job_id() -> None:
    assert PBS.parse_submit(golden("qsub.txt")) == "0.vm"


def test_qsub_prints_an_array_id_with_empty_brackets() -> None:
    assert PBS.parse_submit(golden("qsub_array.txt")) == "1[].vm"


@pytest.mark.parametrize("name", ["err_qsub_badqueue.txt", "err_qsub_badwalltime.txt"])
def test_qsub_output_that_is_not_a_job_id_is_refused(name: str) -> None:
    stderr, _ = golden_error(name)
    with pytest.raises(ValueError, match="not a job id"):
        PBS.parse_submit(stderr)


def test_a_queued_job_is_pending_with_the_scheduler_s_comment() -> None:
    record = PBS.parse_status(golden("qstat_queued.json"))["13.vm"]

    assert record.state is JobState.PENDING
    assert record.name == "multi"
    assert record.reason == "Not Running: No available resources on nodes"
    assert record.exit_code is None
    assert record.time_left == ""


def test_a_running_job_reports_its_host_and_times() -> None:
    record = PBS.parse_status(golden("qstat_running.json"))["6.vm"]

    assert record.state is JobState.RUNNING
    assert record.nodes == "vm/0"
    assert record.submit_time == "Sun Dec  6 12:19:20 2026"
    assert record.elapsed == "00:00:00"
    assert record.exit_code is None


def test_a_running_job_s_time_left_is_its_walltime_minus_the_time_used() -> None:
    record = PBS.parse_status(golden("qstat_x_walltime_kill.json"))["12.vm"]
    data = (
        golden("qstat_running.json")
        .replace('"select":\t"1:ncpus=1"', '"select":\t"1:ncpus=1",\n"walltime":\t"00:10:00"')
        .replace('"walltime":\t"00:00:00"', '"walltime":\t"00:00:41"')
    )

    assert PBS.parse_status(data)["6.vm"].time_left == "00:09:19"
    assert record.time_left == ""  # finished


@pytest.mark.parametrize(
    ("name", "job_id", "state", "exit_code"),
    [
        ("qstat_x_hello.json", "0.vm", JobState.COMPLETED, 0),
        ("qstat_x_4.vm.json", "4.vm", JobState.FAILED, 3),
        # qdel of a running job: 256 + SIGTERM, substate 91, "terminated by <user>".
        ("qstat_x_2.vm.json", "2.vm", JobState.CANCELLED, 128 + 15),
        # qdel of a queued (held) job: no Exit_status at all, substate 91.
        ("qstat_x_5.vm.json", "5.vm", JobState.CANCELLED, None),
        # Killed at its walltime: PBS's own -29, substate 93.
        ("qstat_x_3.vm.json", "3.vm", JobState.TIMEOUT, -29),
        ("qstat_x_walltime_kill.json", "12.vm", JobState.TIMEOUT, -29),
        ("qstat_x_multinode.json", "13.vm", JobState.COMPLETED, 0),
    ],
)
def test_finished_jobs_say_how_they_ended(
    name: str, job_id: str, state: JobState, exit_code: int | None
) -> None:
    record = PBS.parse_status(golden(name))[job_id]

    assert record.state is state
    assert record.exit_code == exit_code
    assert record.raw_state == "F"


def test_a_multinode_job_reports_every_host() -> None:
    record = PBS.parse_status(golden("qstat_x_multinode.json"))["13.vm"]
    assert record.nodes == "vm/0+vm-0/0+vm-2/0"


def test_array_subjobs_are_reported_one_by_one() -> None:
    records = PBS.parse_status(golden("qstat_t_array.json"))

    assert {j: r.state for j, r in records.items() if "[]" not in j} == {
        "1[1].vm": JobState.RUNNING,
        "1[2].vm": JobState.RUNNING,
        "1[3].vm": JobState.PENDING,
        "1[4].vm": JobState.PENDING,
    }
    assert records["1[].vm"].state is JobState.RUNNING  # B: begun


def test_a_finished_array_reports_every_subjob_completed() -> None:
    records = PBS.parse_status(golden("qstat_x_t_array_finished.json"))

    assert {j: (r.state, r.exit_code) for j, r in records.items()} == {
        j: (JobState.COMPLETED, 0) for j in ("1[].vm", "1[1].vm", "1[2].vm", "1[3].vm", "1[4].vm")
    }


def test_subjob_ids_are_spelled_the_way_qstat_reports_them() -> None:
    submitted = PBS.parse_submit(golden("qsub_array.txt"))

    ids = PBS.array_task_ids(submitted, ArraySpec(1, 4))

    assert set(ids) <= set(PBS.parse_status(golden("qstat_t_array.json")))
    assert {PBS.base_job_id(j) for j in ids} == {submitted}


def test_the_known_jobs_are_read_when_qstat_also_names_an_unknown_one() -> None:
    # qstat 0.vm 999.vm: the error on stderr, exit 153, the known job on stdout.
    assert PBS.is_unknown_job_error(golden("err_qstat_mixed.stderr"))
    assert PBS.parse_status(golden("qstat_mixed.json"))["0.vm"].state is JobState.COMPLETED


def test_empty_output_means_no_jobs() -> None:
    assert PBS.parse_status("") == {}


def test_invalid_json_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid JSON"):
        PBS.parse_status('{"Jobs": {')


def test_status_asks_for_history_and_subjobs_in_the_text_form() -> None:
    # Not -F json: OpenPBS 23.06 prints only the first of several ids in JSON.
    assert PBS.status_argv(["0.vm", "1[2].vm"]) == ["qstat", "-x", "-t", "-f", "0.vm", "1[2].vm"]


def test_the_text_form_of_several_jobs_reports_every_one() -> None:
    # qstat -x -t -f 13.head 14.head 15.head 16.head 17[0].head 17[2].head 18.head 999.head
    records = PBS.parse_status(golden("qstat_x_t_f_mixed.txt"))

    assert {j: r.state for j, r in records.items()} == {
        "13.head": JobState.RUNNING,
        "14.head": JobState.RUNNING,
        "15.head": JobState.TIMEOUT,  # walltime=3: Exit_status -29, substate 93
        "16.head": JobState.CANCELLED,  # qdel'd while running: substate 91
        "17[0].head": JobState.RUNNING,
        "17[2].head": JobState.RUNNING,
        "18.head": JobState.RUNNING,
    }
    assert records["15.head"].exit_code == -29
    assert records["13.head"].nodes == "node1/0"
    assert "00:09:00" < records["18.head"].time_left <= "00:10:00"  # walltime 10 min
    stderr, rc = golden_error("err_qstat_x_t_f_mixed.txt")
    assert rc == 153
    assert PBS.is_unknown_job_error(stderr)


@pytest.mark.parametrize(
    ("text", "json_form"),
    [
        ("qstat_x_f_hello.txt", "qstat_x_hello.json"),
        ("qstat_x_f_2.vm.txt", "qstat_x_2.vm.json"),
        ("qstat_x_f_3.vm.txt", "qstat_x_3.vm.json"),
        ("qstat_x_f_4.vm.txt", "qstat_x_4.vm.json"),
        ("qstat_x_f_5.vm.txt", "qstat_x_5.vm.json"),
    ],
)
def test_the_text_and_json_forms_of_one_job_agree(text: str, json_form: str) -> None:
    assert PBS.parse_status(golden(text)) == PBS.parse_status(golden(json_form))


def test_a_value_wrapped_onto_tab_lines_is_joined_where_pbs_cut_it() -> None:
    jobs = parse_full_text(golden("qstat_x_f_3.vm.txt"))
    (attrs,) = jobs.values()

    assert attrs["comment"].endswith("and exceeded resource walltime")
    assert attrs["Resource_List"]["walltime"] == "00:00:05"


def test_the_live_view_already_includes_finished_jobs() -> None:
    assert PBS.history_argv(["0.vm"]) is None


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("err_qstat_unknown.txt", 153),
        ("err_qdel_unknown.txt", 153),
        # qdel of a job already finished: gone as far as cancelling is concerned.
        ("err_qdel_finished.txt", 35),
    ],
)
def test_a_job_the_server_no_longer_runs_is_recognised(name: str, code: int) -> None:
    stderr, rc = golden_error(name)
    assert rc == code
    assert PBS.is_unknown_job_error(stderr)
    assert not PBS.is_transient_error(stderr)


@pytest.mark.parametrize("name", ["err_qsub_badqueue.txt", "err_qsub_badwalltime.txt"])
def test_a_rejected_submission_is_neither_transient_nor_an_unknown_job(name: str) -> None:
    stderr, _ = golden_error(name)
    assert not PBS.is_transient_error(stderr)
    assert not PBS.is_unknown_job_error(stderr)


def test_an_unreachable_server_is_transient() -> None:
    stderr, rc = golden_error("err_qstat_no_server.txt")
    assert rc == 255
    assert PBS.is_transient_error(stderr)
    assert not PBS.is_unknown_job_error(stderr)


def test_find_by_name_uses_qselect() -> None:
    user = pwd.getpwuid(os.getuid()).pw_name
    # -u: only the current user's jobs; another user's job of the same name is not ours.
    assert PBS.find_by_name_argv("jobstrap-js1") == ["qselect", "-u", user, "-N", "jobstrap-js1"]
    assert PBS.parse_find_by_name(golden("qselect.txt")) == ["27.head", "28[].head"]


def test_cancel_and_signal_argv() -> None:
    assert PBS.cancel_argv(["0.vm"]) == ["qdel", "-W", "force", "0.vm"]
    assert PBS.signal_argv(["0.vm"], "USR1") == ["qsig", "-s", "USR1", "0.vm"]


def test_the_site_s_array_limit_comes_from_qmgr() -> None:
    assert PBS.limits_argv() == ["qmgr", "-c", "list server max_array_size"]
    assert PBS.parse_max_array_size(golden("qmgr_list_server_max_array_size.txt")) == 33
    assert PBS.parse_max_array_size(golden("qmgr_print_server.txt")) == 10000


def test_a_walltime_kill_is_timeout_whatever_the_exit_status() -> None:
    assert finished_state(265, "job killed: walltime 3605 exceeded limit 3600") is (
        JobState.TIMEOUT
    )
    assert finished_state(-29, "", 93) is JobState.TIMEOUT


def test_a_signal_that_was_not_a_qdel_is_a_failure() -> None:
    assert finished_state(271, "Job run at Sun Dec 06 at 12:18 on (vm:ncpus=1)", 92) is (
        JobState.FAILED
    )
