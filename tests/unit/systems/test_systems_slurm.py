"""Slurm builders and parsers against output recorded from Slurm 22.05.

The files under ``golden/slurm/`` were recorded on the test cluster
(``scripts/testcluster``, Slurm 22.05.8, MaxArraySize 33) with exactly the argv the
batchctl uses: squeue of plain, array (``3_4``, folded ``5_[2-9%2]``) and
heterogeneous (``6+0``) jobs while pending, running and after they ended; sacct with
and without steps; sbatch's rejections (bad partition, memory beyond any node, time
beyond the partition's limit, an array beyond MaxArraySize) and ``scontrol show
config``. Three are not recordings, because the cluster cannot produce them on
demand: ``sbatch_parsable_federation.txt`` (``123;cluster``, the documented
``--parsable`` form in a federation), the ``Socket timed out on send/recv
operation`` messages (Slurm's own error text for ``SLURM_PROTOCOL_SOCKET_IMPL_TIMEOUT``)
and ``sacct_disabled.txt`` (sacct's message when accounting storage is off).
"""

from __future__ import annotations

import os
import pwd
import tracemalloc
from pathlib import Path

import pytest

from jobstrap.states import JobState
from jobstrap.systems.base import fold_components
from jobstrap.systems.slurm import SYSTEM as SLURM
from jobstrap.systems.slurm import expand_job_id, fold_job_ids, map_state, parse_exit_code

GOLDEN = Path(__file__).parent.parent / "golden" / "slurm"


def golden(name: str) -> str:
    return (GOLDEN / name).read_text()


# --- sbatch -------------------------------------------------------------------------------


def test_sbatch_parsable_prints_the_job_id() -> None:
    assert SLURM.parse_submit(golden("sbatch_parsable.txt")) == "4242"


def test_sbatch_parsable_in_a_federation_appends_the_cluster() -> None:
    assert SLURM.parse_submit(golden("sbatch_parsable_federation.txt")) == "4243"


@pytest.mark.parametrize("output", ["", "Submitted batch job 12\n", "sbatch: warning\n"])
def test_sbatch_output_that_is_not_a_job_id_is_refused(output: str) -> None:
    with pytest.raises(ValueError, match="job id"):
        SLURM.parse_submit(output)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("sbatch_bad_partition.txt", "invalid partition specified: nosuch"),
        ("sbatch_bad_memory.txt", "Memory specification can not be satisfied"),
        ("sbatch_bad_time.txt", "Requested time limit is invalid"),
        ("sbatch_bad_array.txt", "Invalid job array specification"),
    ],
)
def test_sbatch_rejections_are_not_worth_retrying(name: str, words: str) -> None:
    stderr = golden(name)

    assert words in stderr
    assert not SLURM.is_transient_error(stderr)


def test_a_socket_timeout_is_worth_retrying() -> None:
    assert SLURM.is_transient_error(golden("sbatch_socket_timeout.txt"))
    assert SLURM.is_transient_error(golden("squeue_socket_timeout.txt"))


def test_a_stopped_controller_is_worth_retrying() -> None:
    # Recorded while slurmctld was stopped on the test cluster.
    assert SLURM.is_transient_error(golden("squeue_controller_down.txt"))


def test_submit_argv_passes_the_profile_s_extra_arguments_before_the_script() -> None:
    from jobstrap.jobs.spec import JobSpec, Role

    spec = JobSpec(name="j", role=Role.APP, run_dir="/r", tag="t", command=("true",),
                   walltime=60, submit_args=("--reservation=r1",))  # fmt: skip

    assert SLURM.submit_argv("/r/job.sh", spec) == [
        "sbatch", "--parsable", "--reservation=r1", "/r/job.sh",
    ]  # fmt: skip


# --- squeue -------------------------------------------------------------------------------


def test_squeue_reports_plain_array_and_heterogeneous_jobs() -> None:
    records = SLURM.parse_status(golden("squeue_mixed.txt"))

    assert records["6"].state is JobState.COMPLETED
    assert records["7"].state is JobState.FAILED
    assert records["7"].reason == "NonZeroExitCode"
    assert records["10"].state is JobState.RUNNING  # COMPLETING: still holding its node
    assert records["10"].raw_state == "COMPLETING"
    assert records["8+1"].nodes == "node3"
    assert records["5_0"].state is JobState.RUNNING
    assert records["5_9"].state is JobState.PENDING
    assert records["5_9"].reason == "JobArrayTaskLimit"


def test_squeue_records_carry_name_submit_time_and_elapsed() -> None:
    record = SLURM.parse_status(golden("squeue_mixed.txt"))["5_1"]

    assert record.name == "rec-array"
    assert record.submit_time == "2026-11-29T00:39:23"
    assert record.elapsed == "0:04"
    assert record.nodes == "node1"
    assert record.reason == ""  # "None" means no reason


def test_a_running_job_carries_its_time_left_and_a_pending_one_none() -> None:
    # Recorded with %L: a pending job's %L is its whole limit (3:00), not time left.
    records = SLURM.parse_status(golden("squeue_time_left.txt"))

    assert records["2031"].time_left == "2:54"
    assert records["2032_0"].time_left == "2:54"
    assert records["2032_1"].time_left == ""
    assert records["2031"].elapsed == "0:06"


def test_a_pending_job_has_no_nodes() -> None:
    assert SLURM.parse_status(golden("squeue_mixed.txt"))["5_4"].nodes == ""


def test_folded_pending_array_tasks_are_expanded() -> None:
    records = SLURM.parse_status(golden("squeue_array_folded.txt"))

    assert sorted(records, key=lambda j: int(j.split("_")[1])) == [f"5_{i}" for i in range(10)]
    assert {records[f"5_{i}"].state for i in range(2, 10)} == {JobState.PENDING}


def test_ended_jobs_stay_in_squeue_with_their_end_state() -> None:
    records = SLURM.parse_status(golden("squeue_ended.txt"))

    assert records["8"].state is JobState.CANCELLED
    assert records["4"].state is JobState.COMPLETED
    assert records["5"].state is JobState.FAILED
    assert records["3_5"].state is JobState.COMPLETED
    assert records["4"].exit_code is None  # squeue has none: sacct does


def test_cancelling_some_array_tasks_leaves_the_others_running() -> None:
    records = SLURM.parse_status(golden("squeue_after_task_cancel.txt"))

    assert records["15_3"].state is JobState.CANCELLED
    assert records["15_4"].state is JobState.CANCELLED
    assert {records[f"15_{i}"].state for i in (0, 1, 2, 5, 6, 7, 8, 9)} == {JobState.RUNNING}


def test_a_heterogeneous_job_folds_into_its_own_id() -> None:
    records = SLURM.parse_status(golden("squeue_ended.txt"))

    folded = fold_components("6", records)

    assert folded is not None
    assert folded.state is JobState.COMPLETED
    assert folded.nodes == "node1,node3"


def test_squeue_with_only_unknown_ids_says_invalid_job_id() -> None:
    stderr = golden("squeue_invalid.txt")

    assert SLURM.is_unknown_job_error(stderr)
    assert not SLURM.is_transient_error(stderr)


def test_empty_squeue_output_means_no_jobs() -> None:
    assert SLURM.parse_status("") == {}


def test_status_argv_asks_once_by_base_id_in_numeric_order() -> None:
    argv = SLURM.status_argv(["15_3", "9", "15_4", "100+1", "15_0"])

    assert argv[:2] == ["squeue", "--noheader"]
    assert "--array" in argv
    assert "--states=all" in argv
    assert "--format=%i|%T|%r|%N|%j|%V|%M|%L" in argv
    assert argv[-1] == "--jobs=9,15,100"


def test_status_of_twenty_thousand_separate_jobs_asks_for_the_user_s_jobs() -> None:
    # 20,000 seven-digit ids in one --jobs= argument are 160 kB: over Linux's 128 KiB
    # per argument, exec would fail (E2BIG) and the watcher would never see a state.
    many = [str(n) for n in range(1_000_000, 1_020_000)]

    argv = SLURM.status_argv(many)

    assert argv[-1] == f"--user={pwd.getpwuid(os.getuid()).pw_name}"
    assert not any(a.startswith("--jobs") for a in argv)
    assert max(len(a) for a in argv) < 1024
    # Ten arrays of 1000 tasks are still asked for by id.
    assert SLURM.status_argv([f"{b}_{t}" for b in range(10) for t in range(1000)])[-1] == (
        "--jobs=0,1,2,3,4,5,6,7,8,9"
    )


def test_find_by_name_lists_every_task_of_the_named_jobs() -> None:
    ids = SLURM.parse_find_by_name(golden("squeue_find_by_name.txt"))

    assert sorted(ids) == sorted(f"5_{i}" for i in range(10))
    assert SLURM.find_by_name_argv("jobstrap-js1")[-1] == "--name=jobstrap-js1"


def test_find_by_name_asks_only_for_the_current_user_s_jobs() -> None:
    # Recovery adopts what this finds: another user's job of the same name must not count.
    user = pwd.getpwuid(os.getuid()).pw_name

    argv = SLURM.find_by_name_argv("jobstrap-js1")

    assert argv[0] == "squeue"
    assert f"--user={user}" in argv


# --- sacct --------------------------------------------------------------------------------


def test_sacct_reports_final_states_and_exit_codes() -> None:
    records = SLURM.parse_history(golden("sacct_mixed.txt"))

    assert records["4"].state is JobState.COMPLETED
    assert records["4"].exit_code == 0
    assert records["5"].state is JobState.FAILED
    assert records["5"].exit_code == 3
    assert records["8"].state is JobState.CANCELLED  # "CANCELLED by 0"
    assert records["8"].raw_state == "CANCELLED by 0"
    assert records["3_5"].elapsed == "00:00:03"
    assert records["6+1"].nodes == "node3"


def test_sacct_steps_are_not_jobs() -> None:
    records = SLURM.parse_history(golden("sacct_with_steps.txt"))

    assert sorted(records) == ["4", "5"]


def test_sacct_of_unknown_ids_prints_nothing() -> None:
    assert SLURM.parse_history(golden("sacct_unknown.txt")) == {}


def test_sacct_keeps_the_last_of_duplicate_ids() -> None:
    lines = (
        "7|NODE_FAIL|0:0|None|node2|run-1|2026-01-01T00:00:00|00:01:00\n"
        "7|COMPLETED|0:0|None|node1|run-1|2026-01-01T00:00:00|00:02:00\n"
    )

    assert SLURM.parse_history(lines)["7"].state is JobState.COMPLETED


def test_sacct_none_assigned_is_no_node() -> None:
    line = "7|CANCELLED by 0|0:0|None|None assigned|x|2026-01-01T00:00:00|00:00:00\n"

    assert SLURM.parse_history(line)["7"].nodes == ""


def test_accounting_switched_off_is_not_transient() -> None:
    assert not SLURM.is_transient_error(golden("sacct_disabled.txt"))


def test_history_argv_asks_for_allocations_of_every_base_id() -> None:
    argv = SLURM.history_argv(["3_1", "3_2", "4"])

    assert argv is not None
    assert argv[0] == "sacct"
    assert "--allocations" in argv
    assert "--duplicates" in argv
    assert argv[-1] == "--jobs=3,4"


# --- states, ids, exit codes, limits ------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "state"),
    [
        ("PENDING", JobState.PENDING), ("PD", JobState.PENDING), ("R", JobState.RUNNING),
        ("COMPLETING", JobState.RUNNING), ("CANCELLED by 1000", JobState.CANCELLED),
        ("TIMEOUT", JobState.TIMEOUT), ("DEADLINE", JobState.TIMEOUT),
        ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY), ("OOM", JobState.OUT_OF_MEMORY),
        ("BOOT_FAIL", JobState.NODE_FAIL), ("PREEMPTED", JobState.PREEMPTED),
        ("REQUEUED", JobState.PENDING), ("SOMETHING_NEW", JobState.UNKNOWN),
    ],
)  # fmt: skip
def test_every_slurm_state_maps_to_one_of_ours(word: str, state: JobState) -> None:
    assert map_state(word) is state


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("123", ["123"]),
        ("123_4", ["123_4"]),
        ("123+1", ["123+1"]),
        ("123_[5-9%2]", ["123_5", "123_6", "123_7", "123_8", "123_9"]),
        ("123_[1,3-4]", ["123_1", "123_3", "123_4"]),
        ("123_[0-6:3]", ["123_0", "123_3", "123_6"]),
    ],
)
def test_folded_array_ids_expand(text: str, ids: list[str]) -> None:
    assert expand_job_id(text) == ids


@pytest.mark.parametrize(
    ("text", "code"), [("0:0", 0), ("3:0", 3), ("0:15", 143), ("0:9", 137), ("", None)]
)
def test_exit_codes_follow_the_shell_s_convention(text: str, code: int | None) -> None:
    assert parse_exit_code(text) == code


def test_the_site_s_max_array_size_is_read_from_scontrol() -> None:
    assert SLURM.limits_argv() == ["scontrol", "show", "config"]
    assert SLURM.parse_max_array_size(golden("scontrol_show_config.txt")) == 33


def test_cancel_and_signal_argv() -> None:
    assert SLURM.cancel_argv(["3_1", "4"]) == ["scancel", "3_1", "4"]
    assert SLURM.signal_argv(["4"], "USR1") == ["scancel", "--batch", "--signal=USR1", "4"]


@pytest.mark.parametrize(
    ("ids", "folded"),
    [
        (["7_0", "7_1", "7_2", "7_5", "8"], ["7_[0-2,5]", "8"]),
        (["9", "7_3", "7_1", "7_2", "7_2"], ["9", "7_[1-3]"]),
        (["7_4"], ["7_4"]),
        (["7+1", "7_[1-3]", "7_0", "7_9"], ["7+1", "7_[1-3]", "7_[0,9]"]),
        ([], []),
    ],
)
def test_array_tasks_are_folded_per_array(ids: list[str], folded: list[str]) -> None:
    assert fold_job_ids(ids) == folded
    expanded = [one for item in folded for one in expand_job_id(item)]
    assert sorted(expanded) == sorted({one for i in ids for one in expand_job_id(i)})


def test_ten_thousand_tasks_cancel_as_one_argument_per_array() -> None:
    # scancel sends one request per argument: 10 arrays of 1000 tasks are 10 requests
    # (each counted by a rate-limiting controller), not 10,000.
    ids = [f"{base}_{task}" for base in range(100, 110) for task in range(1000)]

    argv = SLURM.cancel_argv(ids)

    assert argv == ["scancel", *(f"{base}_[0-999]" for base in range(100, 110))]
    assert SLURM.signal_argv(ids, "USR1")[3:] == argv[1:]


def test_an_array_cancelled_before_it_was_split_answers_for_its_tasks() -> None:
    # All tasks still pending when cancelled: squeue and sacct name the array, not tasks.
    live = SLURM.parse_status(golden("squeue_array_cancelled_unsplit.txt"))
    past = SLURM.parse_history(golden("sacct_array_cancelled_unsplit.txt"))

    for records in (live, past):
        task = SLURM.find_record("130_2", records)
        assert task is not None
        assert task.job_id == "130_2"
        assert task.state is JobState.CANCELLED


def test_a_folded_cancelled_array_in_sacct_lists_every_task() -> None:
    records = SLURM.parse_history(golden("sacct_array_cancelled_folded.txt"))

    assert {j: r.state for j, r in records.items()} == {
        f"105_{i}": JobState.CANCELLED for i in range(3)
    }
    assert records["105_0"].nodes == ""


def test_a_rejection_for_memory_still_leaves_a_failed_record() -> None:
    # Slurm 22.05 refuses the job yet keeps a FAILED record (BadConstraints) in squeue.
    record = SLURM.parse_status(golden("squeue_rejected_memory_record.txt"))["97"]

    assert record.state is JobState.FAILED
    assert record.reason == "BadConstraints"


def test_ten_thousand_array_tasks_parse_into_records_that_share_their_fields() -> None:
    # A watcher of a 10,000-job cluster keeps a record per task: the fields every task
    # of an array repeats must be one object each, and a record must have no __dict__.
    line = "{}_{}|PENDING|PartitionDown|(null)|scale-js1|2026-12-06T20:00:00|0:00|1:00:00"
    text = "\n".join(line.format(100 + b, t) for b in range(10) for t in range(1000))
    tracemalloc.start()
    try:
        records = SLURM.parse_status(text)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(records) == 10_000
    first, last = records["100_0"], records["109_999"]
    assert first.reason is last.reason
    assert first.name is last.name
    assert first.submit_time is last.submit_time
    assert not hasattr(first, "__dict__")
    assert held < 3 * 2**20  # was 5.3 MiB
