"""The batchctl and its watcher against the real Slurm test cluster (run on ``head``).

Real sbatch/squeue/sacct/scancel through :class:`jobstrap.batchctl.control.BatchControl`: job
states as Slurm reports them, cancel, walltime, arrays split at the cluster's
MaxArraySize (33), the controller stopped while jobs are tracked and a submission
is in flight, rejections in sbatch's own words, and a second process cancelling a
run it did not create. Every wait is on a condition with a deadline and reports
what it last saw.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DEFAULT_PARTITION, MAX_ARRAY_SIZE, SHORT_PARTITION, STATE_ROOT, TestCluster

import support
from jobstrap.batchctl.control import BatchControl
from jobstrap.batchctl.submit import Submission
from jobstrap.batchctl.watcher import Watcher
from jobstrap.errors import SubmitError
from jobstrap.jobs.spec import JobSpec, Role, new_tag
from jobstrap.states import JobState
from jobstrap.store import registry
from jobstrap.store.registry import RunRecord
from jobstrap.systems import JobRecord

# Conditions here ask the batch system: poll at half the default pace.
wait_until = functools.partial(support.wait_until, interval=0.5)

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs the Slurm test cluster"),
]

#: How the test cluster starts its daemons: a clean environment (scripts/testcluster).
DAEMON_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "HOME": "/root", "LANG": "C.UTF-8"}  # fmt: skip
SLURMCTLD_PID = STATE_ROOT / "run" / "slurmctld.pid"


@pytest.fixture
def batchctl(testcluster: TestCluster) -> Iterator[BatchControl]:
    """A batchctl of this test's own, so its call counts are this test's."""
    batchctl = BatchControl("slurm")
    batchctl.watcher.configure(poll_interval=1, max_interval=4, missing_grace=60)
    yield batchctl
    batchctl.watcher.close()
    leftover = [j for j, r in batchctl.watcher.records().items() if not r.state.is_terminal]
    if leftover:
        batchctl.cancel(leftover)


@pytest.fixture
def run_dir(shared_scratch: Path) -> Path:
    path = shared_scratch / "run"
    (path / "logs").mkdir(parents=True)
    return path


def job_spec(run_dir: Path, *command: str, **changes: Any) -> JobSpec:
    values: dict[str, Any] = {
        "name": "gwtest",
        "role": Role.WORKERS,
        "run_dir": str(run_dir),
        "tag": new_tag(),
        "command": command or ("sleep", "300"),
        "walltime": 600,
        "queue": DEFAULT_PARTITION,
        "memory": 100 * 2**20,
        "launcher": "none",
        "log_directory": str(run_dir / "logs"),
    }
    values.update(changes)
    return JobSpec(**values)


def jobs_named(name: str, *, active_only: bool = False) -> list[str]:
    """Every job and task Slurm has under ``name`` (what a duplicate would add to)."""
    done = subprocess.run(
        ["squeue", "--noheader", "--array", "--states=all", "--format=%i %T", f"--name={name}"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()]
    active = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED")
    return [job for job, state in rows if not active_only or state in active]


class Transitions:
    """Collects ``on_change`` calls."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, JobState, JobState]] = []
        self.lock = threading.Lock()

    def __call__(self, job_id: str, old: JobState, new: JobRecord) -> None:
        with self.lock:
            self.seen.append((job_id, old, new.state))

    def states(self, job_id: str) -> list[JobState]:
        with self.lock:
            return [new for j, _, new in self.seen if j == job_id]


def track(batchctl: BatchControl, submission: Submission) -> tuple[Watcher, Transitions]:
    transitions = Transitions()
    batchctl.watcher.track(submission.job_ids, on_change=transitions, name=submission.name)
    return batchctl.watcher, transitions


# --- one job through its life -------------------------------------------------------------


def test_a_job_is_seen_pending_then_running_then_completed(
    batchctl: BatchControl, run_dir: Path
) -> None:
    # --begin holds the job PENDING for a while, so Slurm's own PENDING is observed.
    spec = job_spec(run_dir, "sleep", "5", submit_args=("--begin=now+8",))
    submission = batchctl.submit(spec)
    watcher, transitions = track(batchctl, submission)
    job_id = submission.job_ids[0]

    wait_until(lambda: watcher.record(job_id).raw_state == "PENDING", 30, watcher.records)
    pending = watcher.record(job_id)
    final = watcher.wait([job_id], timeout=180)[job_id]

    assert pending.reason == "BeginTime"
    assert transitions.states(job_id)[-2:] == [JobState.RUNNING, JobState.COMPLETED]
    assert final.state is JobState.COMPLETED
    assert final.exit_code == 0
    assert final.nodes.startswith("node")


def test_a_cancelled_job_ends_cancelled(batchctl: BatchControl, run_dir: Path) -> None:
    submission = batchctl.submit(job_spec(run_dir))
    watcher, _ = track(batchctl, submission)
    job_id = submission.job_ids[0]
    watcher.wait([job_id], until=lambda r: r.state is JobState.RUNNING, timeout=120)

    batchctl.cancel(submission.job_ids)
    final = watcher.wait([job_id], timeout=120)[job_id]

    assert final.state is JobState.CANCELLED


def test_a_job_that_fails_reports_its_exit_code(batchctl: BatchControl, run_dir: Path) -> None:
    submission = batchctl.submit(job_spec(run_dir, "sh", "-c", "exit 3"))
    watcher, _ = track(batchctl, submission)

    final = watcher.wait(submission.job_ids, timeout=120)[submission.job_ids[0]]

    assert final.state is JobState.FAILED
    assert final.exit_code == 3


@pytest.mark.slow
def test_a_job_killed_at_its_walltime_is_timeout_not_failed(
    batchctl: BatchControl, run_dir: Path
) -> None:
    spec = job_spec(run_dir, "sleep", "600", queue=SHORT_PARTITION, walltime=60)
    submission = batchctl.submit(spec)
    watcher, _ = track(batchctl, submission)

    # Slurm checks limits every 30 s: a one-minute job ends 75-100 s after it starts.
    final = watcher.wait(submission.job_ids, timeout=300)[submission.job_ids[0]]

    assert final.state is JobState.TIMEOUT


# --- arrays -------------------------------------------------------------------------------


def test_a_hundred_jobs_go_out_as_four_arrays_split_at_max_array_size(
    batchctl: BatchControl, run_dir: Path
) -> None:
    spec = job_spec(run_dir, "sleep", "300", memory=10 * 2**20)

    submission = batchctl.submit(spec, count=100)
    try:
        watcher, _ = track(batchctl, submission)
        watcher.close()
        squeue_before = batchctl.calls["squeue"]
        watcher.poll()
        squeue_calls = batchctl.calls["squeue"] - squeue_before
        states = watcher.records(submission.job_ids)
        named = jobs_named(submission.name)
    finally:
        batchctl.cancel(submission.batch_ids)  # right away: 100 jobs hold the nodes

    assert MAX_ARRAY_SIZE == 33
    assert batchctl.calls["sbatch"] == 4
    # MaxArraySize is read once per process: zero calls if an earlier test already asked.
    assert batchctl.calls["scontrol"] <= 1
    assert len(submission.batch_ids) == 4
    assert len(submission.job_ids) == 100
    assert len(set(submission.job_ids)) == 100
    assert sorted(named) == sorted(submission.job_ids)
    assert squeue_calls == 1  # one query for all hundred
    assert {r.state for r in states.values()} <= {JobState.PENDING, JobState.RUNNING}
    wait_until(
        lambda: not any(r.state.is_active for r in batchctl.status(submission.job_ids).values()),
        120,
        lambda: {j: r.state.value for j, r in batchctl.status(submission.job_ids).items()},
    )


# --- the controller goes away -------------------------------------------------------------


def _slurmctld_pid() -> int | None:
    try:
        pid = int(SLURMCTLD_PID.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def _controller_up() -> bool:
    done = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    return "is UP" in done.stdout


def _start_slurmctld() -> None:
    # As scripts/testcluster starts it: a clean environment, detached, stdin closed.
    if _slurmctld_pid() is None:  # another session's repair may have been quicker
        subprocess.run(["slurmctld"], env=DAEMON_ENV, stdin=subprocess.DEVNULL, check=True,
                       capture_output=True, timeout=60)  # fmt: skip
    wait_until(_controller_up, 60, lambda: "scontrol ping: not UP")


@pytest.fixture
def controller(testcluster: TestCluster) -> Iterator[Callable[[], None]]:
    """Stops slurmctld on demand; whatever happens, it is running again afterwards."""

    def stop() -> None:
        pid = _slurmctld_pid()
        assert pid is not None, f"no running slurmctld in {SLURMCTLD_PID}"
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: _slurmctld_pid() is None, 60, lambda: f"slurmctld {pid} alive")

    yield stop
    if _slurmctld_pid() is None:
        _start_slurmctld()


def test_a_stopped_controller_makes_states_unknown_and_never_doubles_a_submission(
    batchctl: BatchControl, run_dir: Path, controller: Callable[[], None]
) -> None:
    running = batchctl.submit(job_spec(run_dir), count=2)
    watcher, _ = track(batchctl, running)
    # Queued or running, as the controller said (the cluster may be busy with others).
    watcher.wait(running.job_ids, until=lambda r: bool(r.raw_state), timeout=60)
    late_spec = job_spec(run_dir, "sleep", "60")
    late: dict[str, Any] = {}
    # sbatch waits for a controller by itself; a short timeout kills it mid-call, which
    # is the ambiguous case: batch control must look the name up before submitting again.
    impatient = BatchControl("slurm", timeout=5)

    def submit_during_outage() -> None:
        try:
            late["submission"] = impatient.submit(late_spec)
        except Exception as error:  # reported by the assertion below
            late["error"] = error

    controller()
    outage_started = time.monotonic()
    submitter = threading.Thread(target=submit_during_outage)
    submitter.start()
    # squeue itself takes a while to give up on a controller that does not answer.
    wait_until(
        lambda: all(watcher.state(j) is JobState.UNKNOWN for j in running.job_ids),
        60,
        watcher.records,
    )
    unknown = watcher.records(running.job_ids)
    outage_error = watcher.last_error
    time.sleep(max(0.0, 20 - (time.monotonic() - outage_started)))
    _start_slurmctld()
    wait_until(
        lambda: all(watcher.state(j).is_active for j in running.job_ids),
        120,
        watcher.records,
    )
    submitter.join(timeout=240)

    print(f"calls: {dict(impatient.calls)}; outage error: {outage_error!r}")
    assert impatient.calls["sbatch"] >= 2  # killed at least once during the outage
    assert outage_error is not None
    assert outage_error.transient
    # The last state seen before the outage stays visible (queued or running).
    assert all(r.last_state is not None and r.last_state.is_active for r in unknown.values())
    assert all(r.unknown_since is not None for r in unknown.values())
    assert "error" not in late, late.get("error")
    assert late["submission"].job_ids == jobs_named(late_spec.name + "-" + late_spec.tag)
    assert len(jobs_named(late["submission"].name)) == 1
    batchctl.cancel([*running.job_ids, *late["submission"].job_ids])


# --- rejections ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"queue": "nosuch"}, "invalid partition specified: nosuch"),
        ({"memory": 100 * 2**30}, "Memory specification can not be satisfied"),
        ({"queue": SHORT_PARTITION, "walltime": 600}, "Requested time limit is invalid"),
    ],
    ids=["partition", "memory", "walltime"],
)
def test_a_rejected_submission_raises_submit_error_in_sbatch_s_words(
    batchctl: BatchControl, run_dir: Path, changes: dict[str, Any], words: str
) -> None:
    spec = job_spec(run_dir, **changes)

    with pytest.raises(SubmitError) as caught:
        batchctl.submit(spec)

    assert words in str(caught.value)
    assert caught.value.returncode == 1
    assert caught.value.argv[0] == "sbatch"
    assert batchctl.calls["sbatch"] == 1
    # Slurm may keep a FAILED record of a refused job (BadConstraints); nothing may wait
    # in the queue or run.
    assert jobs_named(f"{spec.name}-{spec.tag}", active_only=True) == []


# --- another process ----------------------------------------------------------------------


def test_a_second_process_cancels_a_run_it_did_not_create(
    batchctl: BatchControl, run_dir: Path, shared_scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(shared_scratch / "state"))
    spec = job_spec(run_dir)
    submission = batchctl.submit(spec, count=3)
    record = RunRecord(
        run_id="gw-cancel",
        kind="cluster",
        system="slurm",
        run_dir=str(run_dir),
        job_ids=submission.job_ids,
        tags=[spec.tag],
    )
    registry.save(record)
    watcher, _ = track(batchctl, submission)

    done = subprocess.run([sys.executable, "-m", "jobstrap", "cancel", "gw-cancel"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    finals = watcher.wait(submission.job_ids, timeout=120)

    assert done.returncode == 0, done.stderr
    assert "gw-cancel: cancelled 3 job(s)" in done.stdout
    assert {r.state for r in finals.values()} == {JobState.CANCELLED}
    assert registry.load("gw-cancel").status == "cancelled"


def test_jobstrap_submit_wait_exits_with_the_app_s_exit_code(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    app = shared_scratch / "app.py"
    app.write_text("import sys\nprint('app ran', sys.argv[1:])\nsys.exit(3)\n")
    env = {**os.environ, "JOBSTRAP_STATE_DIR": str(shared_scratch / "state"),
           "JOBSTRAP_RUN_ROOT": str(shared_scratch / "runs")}  # fmt: skip

    done = subprocess.run(
        [sys.executable, "-m", "jobstrap", "submit", "--profile", "testcluster",
         "--set", "poll_interval=1", "--wait", str(app), "one", "two"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip

    assert done.returncode == 3, done.stdout + done.stderr
    assert "-> COMPLETED" in done.stdout or "-> FAILED" in done.stdout
    out_path = next(line.split(None, 1)[1] for line in done.stdout.splitlines()
                    if line.startswith("stdout"))  # fmt: skip
    assert "app ran ['one', 'two']" in Path(out_path.strip()).read_text()
