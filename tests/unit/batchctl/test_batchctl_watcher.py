"""The watcher: one query per poll, backoff, UNKNOWN during outages, MISSING, recycled ids.

The batch commands are the fake Slurm of ``fakeslurm`` (real executables printing
Slurm 22.05's formats); the real controller is exercised in ``tests/integration``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from fakeslurm import FakeSlurm, make_control, make_spec

from jobstrap.batchctl.control import BatchControl
from jobstrap.batchctl.submit import Submission
from jobstrap.batchctl.watcher import Watcher
from jobstrap.errors import JobFailedError
from jobstrap.states import JobState
from jobstrap.systems import JobRecord


def wait_for(
    condition: Callable[[], bool], describe: Callable[[], object], timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout} s; last seen: {describe()}")
        time.sleep(0.02)


@pytest.fixture
def batchctl(fake_slurm: FakeSlurm) -> Iterator[BatchControl]:
    batchctl = make_control()
    yield batchctl
    batchctl.watcher.close()


def quick(watcher: Watcher, *, grace: float = 60.0) -> Watcher:
    watcher.configure(poll_interval=0.05, max_interval=0.4, missing_grace=grace)
    return watcher


class Tracked(NamedTuple):
    """One job submitted and tracked under its name, and the watcher tracking it."""

    submission: Submission
    watcher: Watcher


@pytest.fixture
def submission(batchctl: BatchControl, run_dir: Path) -> Submission:
    """One plain job submitted to the fake Slurm (it gets id 100)."""
    return batchctl.submit(make_spec(run_dir))


@pytest.fixture
def hand_polled(batchctl: BatchControl, submission: Submission) -> Tracked:
    """One job tracked with the polling thread stopped: the test polls by hand."""
    watcher = batchctl.watcher
    watcher.track(submission.job_ids, name=submission.name)
    watcher.close()
    return Tracked(submission, watcher)


@pytest.fixture
def watched(batchctl: BatchControl, submission: Submission) -> Tracked:
    """One job tracked by a quick watcher whose thread polls on its own."""
    watcher = quick(batchctl.watcher)
    watcher.track(submission.job_ids, name=submission.name)
    return Tracked(submission, watcher)


def test_importing_the_batchctl_starts_no_thread() -> None:
    code = (
        "import threading, jobstrap.batchctl as g; "
        "w = g.BatchControl('slurm').watcher; "
        "print(threading.active_count())"
    )

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert done.stdout.strip() == "1"


def test_tracking_starts_one_daemon_thread(batchctl: BatchControl, run_dir: Path) -> None:
    submission = batchctl.submit(make_spec(run_dir), count=3)
    watcher = quick(batchctl.watcher)

    watcher.track(submission.job_ids[:2])
    watcher.track(submission.job_ids[2:])

    threads = [t for t in threading.enumerate() if t.name == "jobstrap-watcher-slurm"]
    assert len(threads) == 1
    assert threads[0].daemon


def test_one_poll_asks_about_every_tracked_job_in_one_call(
    batchctl: BatchControl, fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    first = batchctl.submit(make_spec(run_dir), count=5)
    second = batchctl.submit(make_spec(run_dir))
    watcher = batchctl.watcher
    watcher.track([*first.job_ids, *second.job_ids])
    watcher.close()  # poll by hand: exactly one poll
    before = batchctl.calls["squeue"]

    watcher.poll()

    assert batchctl.calls["squeue"] == before + 1
    assert batchctl.calls["sacct"] == 0
    assert watcher.state("100_4") is JobState.PENDING


def test_state_changes_reach_the_callback_with_old_and_new(
    batchctl: BatchControl, fake_slurm: FakeSlurm, submission: Submission
) -> None:
    seen: list[tuple[str, JobState, JobState]] = []
    watcher = quick(batchctl.watcher)

    def remember(job_id: str, old: JobState, new: JobRecord) -> None:
        seen.append((job_id, old, new.state))

    watcher.track(submission.job_ids, on_change=remember, name=submission.name)

    fake_slurm.set_job("100", state="RUNNING")
    wait_for(lambda: watcher.state("100") is JobState.RUNNING, lambda: watcher.records())
    fake_slurm.set_job("100", state="COMPLETED")
    watcher.wait(submission.job_ids, timeout=10)

    assert seen == [("100", JobState.PENDING, JobState.RUNNING),
                    ("100", JobState.RUNNING, JobState.COMPLETED)]  # fmt: skip
    assert watcher.record("100").nodes == "node1"


def test_wait_returns_the_terminal_records(
    batchctl: BatchControl, fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    submission = batchctl.submit(make_spec(run_dir), count=2)
    quick(batchctl.watcher).track(submission.job_ids)
    fake_slurm.set_job("100", state="TIMEOUT")

    records = batchctl.watcher.wait(submission.job_ids, timeout=10)

    assert {r.state for r in records.values()} == {JobState.TIMEOUT}


def test_wait_gives_up_at_its_deadline_naming_what_it_saw(
    batchctl: BatchControl, submission: Submission
) -> None:
    quick(batchctl.watcher).track(submission.job_ids)

    with pytest.raises(TimeoutError, match="100=PENDING"):
        batchctl.watcher.wait(submission.job_ids, timeout=0.3)


def test_an_unreachable_controller_makes_states_unknown_keeping_the_last_one(
    fake_slurm: FakeSlurm, hand_polled: Tracked
) -> None:
    watcher = hand_polled.watcher
    fake_slurm.set_job("100", state="RUNNING")
    watcher.poll()
    fake_slurm.plan("squeue", "transient", "transient")

    watcher.poll()

    record = watcher.record("100")
    assert record.state is JobState.UNKNOWN
    assert record.last_state is JobState.RUNNING
    assert record.unknown_since is not None
    assert watcher.last_error is not None


def test_states_come_back_when_the_controller_answers_again(
    fake_slurm: FakeSlurm, hand_polled: Tracked
) -> None:
    watcher = hand_polled.watcher
    fake_slurm.set_job("100", state="RUNNING")
    fake_slurm.plan("squeue", "transient", "transient")
    watcher.poll()

    watcher.poll()

    record = watcher.record("100")
    assert record.state is JobState.RUNNING
    assert record.unknown_since is None
    assert watcher.last_error is None


def test_an_outage_never_makes_a_job_missing(fake_slurm: FakeSlurm, hand_polled: Tracked) -> None:
    watcher = hand_polled.watcher
    watcher.configure(missing_grace=0)
    fake_slurm.plan("squeue", *["transient"] * 8)

    for _ in range(4):
        watcher.poll()

    assert watcher.state("100") is JobState.UNKNOWN


def test_a_job_that_left_the_queue_gets_its_end_from_the_history(
    fake_slurm: FakeSlurm, hand_polled: Tracked
) -> None:
    watcher = hand_polled.watcher
    fake_slurm.set_job("100", state="OUT_OF_MEMORY", exit="0:125", live=False)

    watcher.poll()

    record = watcher.record("100")
    assert record.state is JobState.OUT_OF_MEMORY
    assert record.exit_code == 128 + 125


def test_a_vanished_job_without_accounting_is_missing_after_the_grace_period(
    fake_slurm: FakeSlurm, hand_polled: Tracked
) -> None:
    watcher = hand_polled.watcher
    fake_slurm.set_job("100", state="RUNNING")
    watcher.poll()
    fake_slurm.set_job("100", live=False)
    fake_slurm.plan("sacct", "disabled")

    watcher.configure(missing_grace=3600)
    watcher.poll()
    within_grace = watcher.state("100")
    watcher.configure(missing_grace=0)
    watcher.poll()

    assert within_grace is JobState.RUNNING
    record = watcher.record("100")
    assert record.state is JobState.MISSING  # never silently COMPLETED
    assert "no accounting record" in record.reason
    assert record.last_state is JobState.RUNNING


def test_a_vanished_job_absent_from_the_history_is_missing_after_the_grace_period(
    batchctl: BatchControl, fake_slurm: FakeSlurm, hand_polled: Tracked
) -> None:
    watcher = hand_polled.watcher
    watcher.configure(missing_grace=0)
    fake_slurm.set_job("100", live=False, no_accounting=True)

    watcher.poll()

    assert watcher.state("100") is JobState.MISSING
    assert batchctl.history_available


def test_a_recycled_job_id_is_recognised_and_ours_is_gone(
    fake_slurm: FakeSlurm, hand_polled: Tracked
) -> None:
    watcher = hand_polled.watcher
    # The controller lost its state and gave id 100 to somebody else's job.
    fake_slurm.set_job("100", name="someone-else", state="RUNNING", submit="2024-06-01T00:00:00")

    watcher.poll()

    record = watcher.record("100")
    assert record.state is JobState.MISSING
    assert "another job" in record.reason


def test_our_new_job_under_a_tracked_id_replaces_the_old_entry(
    batchctl: BatchControl, fake_slurm: FakeSlurm, submission: Submission
) -> None:
    # An id still tracked from an earlier job comes back for a new submission of ours
    # (a controller restart, a fresh local spool): the old job is gone, the new one
    # starts as PENDING, and each one's callbacks hear only of their own job.
    old_seen: list[tuple[JobState, JobState]] = []
    new_seen: list[tuple[JobState, JobState]] = []
    watcher = quick(batchctl.watcher)
    watcher.track(
        submission.job_ids,
        name=submission.name,
        on_change=lambda j, o, n: old_seen.append((o, n.state)),
    )
    fake_slurm.set_job("100", state="RUNNING")
    wait_for(lambda: watcher.state("100") is JobState.RUNNING, lambda: watcher.records())

    fake_slurm.set_job("100", name="jobstrap-new", state="PENDING")
    watcher.track(
        ["100"], name="jobstrap-new", on_change=lambda j, o, n: new_seen.append((o, n.state))
    )
    assert watcher.state("100") is JobState.PENDING
    fake_slurm.set_job("100", name="jobstrap-new", state="CANCELLED")
    watcher.wait(["100"], timeout=10)

    assert old_seen == [(JobState.PENDING, JobState.RUNNING), (JobState.RUNNING, JobState.MISSING)]
    assert new_seen == [(JobState.PENDING, JobState.CANCELLED)]


def test_a_recycled_id_finds_our_own_end_in_the_history(
    fake_slurm: FakeSlurm, hand_polled: Tracked
) -> None:
    submission, watcher = hand_polled
    fake_slurm.change(history=[
        f"100|COMPLETED|0:0|None|node2|{submission.name}|2024-05-06T10:00:00|00:00:30"
    ])  # fmt: skip
    fake_slurm.set_job("100", name="someone-else", live=False, submit="2024-06-01T00:00:00")

    watcher.poll()

    assert watcher.state("100") is JobState.COMPLETED
    assert watcher.record("100").nodes == "node2"


def test_an_id_tracked_without_a_name_is_recycled_when_name_and_submit_time_change(
    batchctl: BatchControl, fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    batchctl.submit(make_spec(run_dir))
    watcher = batchctl.watcher
    watcher.track(["100"], started_by_us=False)
    watcher.close()
    watcher.poll()
    fake_slurm.set_job("100", name="someone-else", submit="2024-06-01T00:00:00")

    watcher.poll()

    assert watcher.state("100") is JobState.MISSING


def test_a_heterogeneous_job_is_tracked_as_one(
    batchctl: BatchControl, fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    watcher = batchctl.watcher
    watcher.track(["100"], started_by_us=False)
    watcher.close()
    fake_slurm.change(jobs={
        "100+0": {"name": "het", "array": None, "state": "RUNNING", "live": True,
                  "submit": "2024-05-06T10:00:00", "exit": "0:0"},
        "100+1": {"name": "het", "array": None, "state": "PENDING", "live": True,
                  "submit": "2024-05-06T10:00:00", "exit": "0:0"},
    })  # fmt: skip

    answer = batchctl._query(["100"], {}, batchctl.retry)

    assert answer.records["100"].state is JobState.RUNNING


def test_polling_backs_off_while_nothing_changes_and_returns_on_change(
    fake_slurm: FakeSlurm, watched: Tracked
) -> None:
    watcher = watched.watcher

    wait_for(lambda: watcher.interval == 0.4, lambda: watcher.interval)
    fake_slurm.set_job("100", state="RUNNING")
    wait_for(lambda: watcher.state("100") is JobState.RUNNING, lambda: watcher.records())

    assert watcher.interval < 0.4


def test_someone_waiting_brings_the_interval_back_to_the_base(
    batchctl: BatchControl, submission: Submission
) -> None:
    watcher = quick(batchctl.watcher)
    watcher.track(submission.job_ids)
    wait_for(lambda: watcher.interval == 0.4, lambda: watcher.interval)

    with pytest.raises(TimeoutError):
        watcher.wait(submission.job_ids, timeout=0.01)

    assert watcher.interval == 0.05


def test_a_failing_callback_does_not_stop_the_watcher(
    batchctl: BatchControl, fake_slurm: FakeSlurm, submission: Submission
) -> None:
    watcher = quick(batchctl.watcher)

    def broken(job_id: str, old: JobState, new: JobRecord) -> None:
        raise RuntimeError("callback bug")

    watcher.track(submission.job_ids, on_change=broken)
    fake_slurm.set_job("100", state="RUNNING")
    wait_for(lambda: watcher.state("100") is JobState.RUNNING, lambda: watcher.records())
    fake_slurm.set_job("100", state="COMPLETED")

    records = watcher.wait(submission.job_ids, timeout=10)

    assert records["100"].state is JobState.COMPLETED


def test_terminal_jobs_are_not_asked_about_again(
    batchctl: BatchControl, fake_slurm: FakeSlurm, submission: Submission
) -> None:
    watcher = batchctl.watcher
    watcher.track(submission.job_ids)
    watcher.close()
    fake_slurm.set_job("100", state="CANCELLED")
    watcher.poll()
    before = batchctl.calls["squeue"]

    changed = watcher.poll()

    assert not changed
    assert batchctl.calls["squeue"] == before


def test_a_thousand_tracked_jobs_take_well_under_20_mb(
    batchctl: BatchControl, fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    submission = batchctl.submit(make_spec(run_dir), count=1000, max_array_size=1000)
    fake_slurm.set_job("100", state="RUNNING")
    watcher = batchctl.watcher

    tracemalloc.start()
    try:
        baseline = tracemalloc.take_snapshot()
        watcher.track(submission.job_ids, name=submission.name)
        watcher.close()
        watcher.poll()
        watcher.poll()
        used = sum(
            s.size_diff for s in tracemalloc.take_snapshot().compare_to(baseline, "filename")
        )
    finally:
        tracemalloc.stop()

    assert len(watcher.tracked()) == 1000
    assert watcher.state("100_999") is JobState.RUNNING
    assert used < 20 * 2**20, f"{used / 2**20:.1f} MiB"


def test_an_end_is_held_back_until_the_history_has_the_exit_code(
    fake_slurm: FakeSlurm, hand_polled: Tracked
) -> None:
    watcher = hand_polled.watcher
    fake_slurm.set_job("100", state="RUNNING")
    watcher.poll()
    # squeue already says FAILED; slurmdbd has not recorded the job's end yet.
    fake_slurm.set_job("100", state="FAILED", exit="3:0", no_accounting=True)

    watcher.poll()
    held = watcher.state("100")
    fake_slurm.set_job("100", no_accounting=False)
    watcher.poll()

    assert held is JobState.RUNNING
    assert watcher.state("100") is JobState.FAILED
    assert watcher.record("100").exit_code == 3


def test_an_end_without_an_exit_code_is_reported_after_the_grace(
    fake_slurm: FakeSlurm, hand_polled: Tracked
) -> None:
    watcher = hand_polled.watcher
    watcher.configure(exit_code_grace=0)
    fake_slurm.set_job("100", state="FAILED", exit="3:0", no_accounting=True)

    watcher.poll()

    assert watcher.state("100") is JobState.FAILED
    assert watcher.record("100").exit_code is None


def test_waiting_for_a_state_a_job_ended_without_fails_at_once(
    fake_slurm: FakeSlurm, watched: Tracked
) -> None:
    submission, watcher = watched
    fake_slurm.set_job("100", state="FAILED", exit="1:0")

    with pytest.raises(JobFailedError, match="job 100 ended FAILED"):
        watcher.wait(submission.job_ids, until=lambda r: r.state is JobState.RUNNING, timeout=30)


def test_waiting_on_a_closed_watcher_polls_again(fake_slurm: FakeSlurm, watched: Tracked) -> None:
    submission, watcher = watched
    watcher.close()
    fake_slurm.set_job("100", state="COMPLETED")

    records = watcher.wait(submission.job_ids, timeout=30)

    assert records["100"].state is JobState.COMPLETED
