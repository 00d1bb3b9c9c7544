"""The batchctl: argv calls, timeouts, retries, rate limit, idempotent submission, arrays.

Batch commands here are real executables: a small stand-in for Slurm's commands
(``golden/fakebin/slurm.py``, installed on PATH as sbatch/squeue/sacct/scancel/
scontrol) that prints the formats recorded from Slurm 22.05 and fails on demand
(transient errors, hangs, jobs accepted but no id printed). The same behaviours are
proven against the real Slurm test cluster in ``tests/integration``.
"""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest
from fakeslurm import FakeSlurm, make_control, make_spec

from jobstrap.batchctl.commands import RetryPolicy, TokenBucket, shared_bucket
from jobstrap.batchctl.control import BatchControl
from jobstrap.batchctl.submit import _ARGV_BUDGET, _argv_batches, tagged
from jobstrap.errors import BatchCommandError, SubmitError
from jobstrap.jobs.spec import ArraySpec
from jobstrap.systems import get_system

# --- running commands ---------------------------------------------------------------------


def test_arguments_reach_the_command_verbatim_without_a_shell() -> None:
    batchctl = make_control()

    result = batchctl.run(["printf", "%s\n", "a b", "$(touch x)", "*"])

    assert result.stdout.splitlines() == ["a b", "$(touch x)", "*"]


def test_a_shell_string_is_refused() -> None:
    batchctl = make_control()

    with pytest.raises(TypeError, match="never a shell string"):
        batchctl.run("squeue --me")  # type: ignore[arg-type]


def test_a_command_that_hangs_is_killed_at_its_timeout() -> None:
    batchctl = make_control()

    with pytest.raises(BatchCommandError) as caught:
        batchctl.run(["sleep", "30"], timeout=0.3, retry=False)

    assert caught.value.returncode is None
    assert caught.value.transient
    assert "timed out" in str(caught.value)


def test_a_missing_command_is_a_batch_command_error_naming_it() -> None:
    batchctl = make_control()

    with pytest.raises(BatchCommandError, match="cannot run no-such-sbatch"):
        batchctl.run(["no-such-sbatch"])


def test_transient_failures_are_retried_until_the_command_succeeds(fake_slurm: FakeSlurm) -> None:
    fake_slurm.plan("scontrol", "transient", "transient")
    batchctl = make_control()

    result = batchctl.run(["scontrol", "show", "config"])

    assert result.attempts == 3
    assert batchctl.calls["scontrol"] == 3
    assert "MaxArraySize" in result.stdout


def test_retries_stop_after_the_policy_s_attempts(fake_slurm: FakeSlurm) -> None:
    fake_slurm.plan("scontrol", *["transient"] * 10)
    batchctl = make_control(retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.01))

    with pytest.raises(BatchCommandError) as caught:
        batchctl.run(["scontrol", "show", "config"])

    assert caught.value.transient
    assert "Socket timed out" in caught.value.stderr
    assert batchctl.calls["scontrol"] == 3


def test_a_permanent_failure_is_not_retried(fake_slurm: FakeSlurm) -> None:
    batchctl = make_control()

    with pytest.raises(BatchCommandError) as caught:
        batchctl.run(["scancel", "999"])

    assert not caught.value.transient
    assert caught.value.returncode == 1
    assert batchctl.calls["scancel"] == 1


def test_backoff_between_retries_grows_with_jitter(fake_slurm: FakeSlurm) -> None:
    fake_slurm.plan("scontrol", "transient", "transient", "transient")
    slept: list[float] = []
    policy = RetryPolicy(attempts=4, base_delay=1.0, max_delay=3.0)
    batchctl = make_control(retry=policy, sleep=slept.append)

    batchctl.run(["scontrol", "show", "config"])

    assert len(slept) == 3
    for number, delay in enumerate(slept, start=1):
        ceiling = min(3.0, 2 ** (number - 1))
        assert ceiling / 2 <= delay <= ceiling


def test_calls_are_counted_per_command_name(fake_slurm: FakeSlurm) -> None:
    batchctl = make_control()

    batchctl.run(["scontrol", "show", "config"])
    batchctl.run(["scontrol", "show", "config"])
    batchctl.run(["squeue", "--name=x"])

    assert batchctl.calls == {"scontrol": 2, "squeue": 1}


# --- rate limit ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_bucket_lets_a_burst_through_without_waiting() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=5, clock=clock, sleep=clock.sleep)

    waits = [bucket.acquire() for _ in range(5)]

    assert waits == [0, 0, 0, 0, 0]


def test_the_bucket_spaces_calls_beyond_the_burst_at_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=2, clock=clock, sleep=clock.sleep)

    waits = [bucket.acquire() for _ in range(6)]

    assert waits[:2] == [0, 0]
    assert waits[2:] == pytest.approx([0.5, 0.5, 0.5, 0.5])
    assert clock.now == pytest.approx(2.0)


def test_the_bucket_refills_while_idle_but_never_beyond_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1, burst=3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        bucket.acquire()

    clock.now += 100
    waits = [bucket.acquire() for _ in range(4)]

    assert waits[:3] == [0, 0, 0]
    assert waits[3] == pytest.approx(1.0)


def test_threads_queue_up_for_the_bucket_without_losing_a_token() -> None:
    clock = FakeClock()  # frozen: every wait is a reservation made under the lock
    bucket = TokenBucket(rate=10, burst=1, clock=clock, sleep=lambda seconds: None)
    threads = [threading.Thread(target=bucket.acquire) for _ in range(11)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # 11 calls with a burst of 1 at 10/s: the reservations add up to one second.
    assert bucket.waited == pytest.approx(sum(i / 10 for i in range(1, 11)))


def test_every_batchctl_of_the_process_draws_from_one_bucket() -> None:
    first = BatchControl("slurm")
    second = BatchControl("pbs")

    assert first.bucket is second.bucket is shared_bucket()


def test_for_system_returns_one_batchctl_per_system() -> None:
    assert BatchControl.for_system("slurm") is BatchControl.for_system("slurm")
    assert BatchControl.for_system("slurm") is not BatchControl.for_system("pbs")


# --- job ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "job_id", "base"),
    [("slurm", "123", "123"), ("slurm", "123_4", "123"), ("slurm", "123+1", "123"),
     ("pbs", "7[2].pbs01", "7[].pbs01"), ("pbs", "7.pbs01", "7.pbs01"), ("local", "12_3", "12")],
)  # fmt: skip
def test_base_job_id_is_what_the_submit_command_printed(
    system: str, job_id: str, base: str
) -> None:
    assert get_system(system).base_job_id(job_id) == base


def test_array_task_ids_follow_each_system_s_spelling() -> None:
    slurm, pbs = get_system("slurm"), get_system("pbs")
    assert slurm.array_task_ids("123", ArraySpec(0, 2)) == ["123_0", "123_1", "123_2"]
    assert pbs.array_task_ids("7[].pbs01", ArraySpec(0, 1)) == ["7[0].pbs01", "7[1].pbs01"]


def test_tagging_appends_the_tag_to_the_name_once(run_dir: Path) -> None:
    spec = make_spec(run_dir, tag="js0123456789")

    once = tagged(spec)

    assert once.name == "jobstrap-js0123456789"
    assert tagged(once) == once


# --- submitting ---------------------------------------------------------------------------


def test_one_job_is_a_plain_job_with_its_script_in_the_run_directory(
    fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    spec = make_spec(run_dir)
    batchctl = make_control()

    submission = batchctl.submit(spec)

    assert submission.job_ids == ["100"]
    assert batchctl.calls["sbatch"] == 1
    script = run_dir / f"job-{spec.tag}.sh"
    assert submission.scripts == [script]
    assert stat.S_IMODE(script.stat().st_mode) == 0o600
    assert f"--job-name=jobstrap-{spec.tag}" in script.read_text()
    assert "--array" not in script.read_text()
    assert fake_slurm.jobs()["100"]["name"] == f"jobstrap-{spec.tag}"


def test_the_tag_is_in_the_job_comment_too(fake_slurm: FakeSlurm, run_dir: Path) -> None:
    spec = make_spec(run_dir)

    submission = make_control().submit(spec)

    assert f"--comment=jobstrap:{spec.tag}" in submission.scripts[0].read_text()


def test_n_jobs_go_out_as_one_array(fake_slurm: FakeSlurm, run_dir: Path) -> None:
    batchctl = make_control()

    submission = batchctl.submit(make_spec(run_dir), count=10)

    assert batchctl.calls["sbatch"] == 1
    assert submission.job_ids == [f"100_{i}" for i in range(10)]
    assert "#SBATCH --array=0-9" in submission.scripts[0].read_text()


def test_arrays_are_split_at_the_site_s_max_array_size(
    fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    fake_slurm.change(max_array_size=33)
    batchctl = make_control()

    submission = batchctl.submit(make_spec(run_dir), count=100)

    assert batchctl.calls["sbatch"] == 4
    assert len(submission.job_ids) == 100
    assert len(set(submission.job_ids)) == 100
    assert submission.batch_ids == ["100", "101", "102", "103"]
    # Task ids stay below MaxArraySize in every array; a last single job is a plain job.
    assert submission.job_ids[:33] == [f"100_{i}" for i in range(33)]
    assert submission.job_ids[-1] == "103"
    assert [fake_slurm.jobs()[b]["array"] for b in submission.batch_ids] == [
        [0, 32], [0, 32], [0, 32], None,
    ]  # fmt: skip


def test_the_site_limit_is_read_once_per_process(fake_slurm: FakeSlurm, run_dir: Path) -> None:
    batchctl = make_control()

    batchctl.submit(make_spec(run_dir), count=5)
    batchctl.submit(make_spec(run_dir), count=5)
    make_control().submit(make_spec(run_dir), count=5)

    assert len(fake_slurm.calls("scontrol")) == 1


def test_the_profile_s_array_cap_wins_when_smaller(fake_slurm: FakeSlurm, run_dir: Path) -> None:
    fake_slurm.change(max_array_size=33)
    batchctl = make_control()

    submission = batchctl.submit(make_spec(run_dir), count=25, max_array_size=10)

    assert batchctl.calls["sbatch"] == 3
    assert [fake_slurm.jobs()[b]["array"] for b in submission.batch_ids] == [
        [0, 9], [0, 9], [0, 4],
    ]  # fmt: skip


def test_a_rejected_submission_raises_submit_error_with_sbatch_s_words(
    fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    fake_slurm.plan("sbatch", "reject:Memory specification can not be satisfied")
    batchctl = make_control()

    with pytest.raises(SubmitError) as caught:
        batchctl.submit(make_spec(run_dir))

    error = caught.value
    assert "Memory specification can not be satisfied" in str(error)
    assert error.returncode == 1
    assert error.argv[0] == "sbatch"
    assert batchctl.calls["sbatch"] == 1  # a definite "no" is not retried
    assert fake_slurm.jobs() == {}


def test_every_line_of_sbatch_s_explanation_reaches_the_one_line_message(
    fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    fake_slurm.plan("sbatch", "recorded:sbatch_bad_memory.txt")

    with pytest.raises(SubmitError) as caught:
        make_control().submit(make_spec(run_dir))

    message = str(caught.value)
    assert "\n" not in message
    assert message.endswith(
        "failed (exit 1): Memory specification can not be satisfied; "
        "Batch job submission failed: Requested node configuration is not available"
    )


def test_when_a_later_array_is_rejected_the_earlier_ones_are_cancelled(
    fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    fake_slurm.change(max_array_size=33)
    fake_slurm.plan("sbatch", "ok", "ok", "reject:QOSMaxSubmitJobPerUserLimit")
    batchctl = make_control()

    with pytest.raises(SubmitError) as caught:
        batchctl.submit(make_spec(run_dir), count=100)

    assert "QOSMaxSubmitJobPerUserLimit" in str(caught.value)
    assert "cancelled the jobs this submission had already queued: 100 101" in str(caught.value)
    assert {j: job["state"] for j, job in fake_slurm.jobs().items()} == {
        "100": "CANCELLED",
        "101": "CANCELLED",
    }


def test_cancelling_ten_thousand_array_tasks_is_one_call(
    fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    fake_slurm.change(max_array_size=1001)
    batchctl = make_control()
    submission = batchctl.submit(make_spec(run_dir), count=10_000)

    batchctl.cancel(submission.job_ids)

    assert batchctl.calls["sbatch"] == 10
    assert batchctl.calls["scancel"] == 1
    (call,) = fake_slurm.calls("scancel")
    assert len(call) == 1 + 10  # one folded argument per array
    assert {job["state"] for job in fake_slurm.jobs().values()} == {"CANCELLED"}


def test_ids_that_cannot_be_folded_are_split_into_calls_within_the_argv_budget() -> None:
    ids = [f"{n}.server.example.org" for n in range(10_000)]

    argvs = _argv_batches(ids, lambda chunk: ["qdel", *chunk])

    assert 1 < len(argvs) <= 16
    assert all(sum(len(a) + 1 for a in argv) <= _ARGV_BUDGET for argv in argvs)
    assert [i for argv in argvs for i in argv[1:]] == ids


def test_a_timed_out_submission_that_went_through_is_not_submitted_again(
    fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    fake_slurm.plan("sbatch", "accept-hang")
    batchctl = make_control(timeout=1.0)

    submission = batchctl.submit(make_spec(run_dir))

    assert list(fake_slurm.jobs()) == ["100"]
    assert submission.job_ids == ["100"]
    assert batchctl.calls["sbatch"] == 1
    assert batchctl.calls["squeue"] == 1  # the lookup by name


def test_an_unparseable_answer_is_resolved_by_looking_the_name_up(
    fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    fake_slurm.plan("sbatch", "accept-garbage")
    batchctl = make_control()

    submission = batchctl.submit(make_spec(run_dir), count=3)

    assert list(fake_slurm.jobs()) == ["100"]
    assert submission.job_ids == ["100_0", "100_1", "100_2"]


def test_a_transient_error_after_the_job_was_taken_does_not_double_it(
    fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    fake_slurm.plan("sbatch", "accept-transient")
    batchctl = make_control()

    submission = batchctl.submit(make_spec(run_dir))

    assert list(fake_slurm.jobs()) == ["100"]
    assert submission.job_ids == ["100"]


def test_a_transient_error_before_the_job_was_taken_resubmits_once(
    fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    fake_slurm.plan("sbatch", "transient", "transient")
    batchctl = make_control()

    submission = batchctl.submit(make_spec(run_dir))

    assert list(fake_slurm.jobs()) == ["100"]
    assert submission.job_ids == ["100"]
    assert batchctl.calls["sbatch"] == 3
    assert batchctl.calls["squeue"] == 2


def test_an_ambiguous_failure_in_a_later_array_adopts_only_that_array(
    fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    fake_slurm.change(max_array_size=33)
    fake_slurm.plan("sbatch", "ok", "accept-garbage", "ok")
    batchctl = make_control()

    submission = batchctl.submit(make_spec(run_dir), count=70)

    assert submission.batch_ids == ["100", "101", "102"]
    assert len(fake_slurm.jobs()) == 3
    assert len(submission.job_ids) == 70


def test_giving_up_on_a_submission_says_it_was_transient(
    fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    fake_slurm.plan("sbatch", *["transient"] * 10)
    batchctl = make_control(retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.01))

    with pytest.raises(SubmitError) as caught:
        batchctl.submit(make_spec(run_dir))

    assert caught.value.transient
    assert "Socket timed out" in str(caught.value)
    assert "gave up after 3 attempts" in str(caught.value)
    assert fake_slurm.jobs() == {}


def test_a_job_taken_on_the_very_last_attempt_is_still_found(
    fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    fake_slurm.plan("sbatch", "transient", "transient", "accept-transient")
    batchctl = make_control(retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.01))

    submission = batchctl.submit(make_spec(run_dir))

    assert submission.job_ids == ["100"]
    assert list(fake_slurm.jobs()) == ["100"]


def test_when_the_lookup_cannot_answer_the_submission_stops_rather_than_guess(
    fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    fake_slurm.plan("sbatch", "transient")
    fake_slurm.plan("squeue", *["transient"] * 10)
    batchctl = make_control(retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.01))

    with pytest.raises(SubmitError, match="cannot tell whether job jobstrap-js"):
        batchctl.submit(make_spec(run_dir))

    assert batchctl.calls["sbatch"] == 1


def test_a_resubmission_with_the_same_tag_adopts_the_queued_job(
    fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    # As if an earlier process wrote the script, submitted, and died before saving the id.
    spec = make_spec(run_dir)
    make_control().submit(spec)
    batchctl = make_control()

    submission = batchctl.submit(spec)

    assert submission.job_ids == ["100"]
    assert batchctl.calls["sbatch"] == 0
    assert list(fake_slurm.jobs()) == ["100"]


def test_a_ready_script_text_is_submitted_as_it_is(fake_slurm: FakeSlurm, run_dir: Path) -> None:
    from jobstrap.jobs.render import render_script
    from jobstrap.systems import get_system

    spec = tagged(make_spec(run_dir))
    text = render_script(spec, get_system("slurm")) + "# marker\n"

    submission = make_control().submit(spec, text, script_name="job.sh")

    assert submission.scripts == [run_dir / "job.sh"]
    assert (run_dir / "job.sh").read_text() == text


def test_a_ready_script_text_cannot_make_an_array(fake_slurm: FakeSlurm, run_dir: Path) -> None:
    spec = tagged(make_spec(run_dir))

    with pytest.raises(ValueError, match="pass a renderer"):
        make_control().submit(spec, "#!/bin/sh\n", count=2)


# --- cancel and status --------------------------------------------------------------------


def test_cancel_counts_jobs_the_controller_forgot_as_done(
    fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    batchctl = make_control()
    submission = batchctl.submit(make_spec(run_dir))

    batchctl.cancel([*submission.job_ids, "4242"])

    assert fake_slurm.jobs()["100"]["state"] == "CANCELLED"


def test_status_asks_once_for_every_job(fake_slurm: FakeSlurm, run_dir: Path) -> None:
    batchctl = make_control()
    first = batchctl.submit(make_spec(run_dir), count=3)
    second = batchctl.submit(make_spec(run_dir))
    fake_slurm.set_job("101", state="RUNNING")
    before = batchctl.calls["squeue"]

    records = batchctl.status([*first.job_ids, *second.job_ids])

    assert batchctl.calls["squeue"] == before + 1
    assert batchctl.calls["sacct"] == 0
    assert {j: r.state.value for j, r in records.items()} == {
        "100_0": "PENDING", "100_1": "PENDING", "100_2": "PENDING", "101": "RUNNING",
    }  # fmt: skip
    assert records["101"].nodes == "node1"


def test_status_looks_jobs_that_left_the_queue_up_in_the_history(
    fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    batchctl = make_control()
    submission = batchctl.submit(make_spec(run_dir))
    fake_slurm.set_job("100", state="FAILED", exit="3:0", live=False)

    records = batchctl.status(submission.job_ids)

    assert records["100"].state.value == "FAILED"
    assert records["100"].exit_code == 3
    assert batchctl.calls["sacct"] == 1


def test_status_without_accounting_leaves_vanished_jobs_out(
    fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    batchctl = make_control()
    submission = batchctl.submit(make_spec(run_dir))
    fake_slurm.set_job("100", live=False)
    fake_slurm.plan("sacct", "disabled")

    records = batchctl.status(submission.job_ids)

    assert records == {}
    assert not batchctl.history_available


def test_a_job_that_just_ended_gets_its_exit_code_from_the_history(
    fake_slurm: FakeSlurm, run_dir: Path
) -> None:
    batchctl = make_control()
    submission = batchctl.submit(make_spec(run_dir))
    # Still listed by squeue (MinJobAge), which has no exit codes.
    fake_slurm.set_job("100", state="FAILED", exit="2:0")

    records = batchctl.status(submission.job_ids)

    assert records["100"].state.value == "FAILED"
    assert records["100"].exit_code == 2
    assert batchctl.calls["sacct"] == 1
