"""``status``, ``prune`` and ``cancel --wait`` as a person uses them, on the local backend.

Each command is the real ``jobstrap`` in a subprocess; jobs are process groups of the
embedded local batch system. What is asserted is what the terminal shows, and what
is left running or on disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from jobstrap.batchctl.control import BatchControl
from jobstrap.store import registry
from support import local_backend_env

#: Seconds one command may take (a job starts in a few seconds; CI machines are slow).
TIMEOUT = 240.0
#: Seconds a cancelled local job's processes get between SIGTERM and SIGKILL: the
#: window in which a cancelled job is still in the batch system.
KILL_WAIT = 30
DAY = 86400.0

SLEEPER_APP = "import time\nprint('STARTED', flush=True)\ntime.sleep(600)\n"
# Like a job whose nodes take a while to clean up: a process that ignores SIGTERM, out of
# the ranks' process groups (which the launcher kills) but still the job's (the local
# queue's marker), keeps the cancelled job in the batch system until the SIGKILL
# KILL_WAIT seconds later.
STUBBORN_APP = """\
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import signal, time; "
                  "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "print('STUBBORN', flush=True); time.sleep(600)"], start_new_session=True)
time.sleep(600)
"""


@pytest.fixture(scope="module", autouse=True)
def local_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A spool, run root and registry of this module's own (inherited by subprocesses)."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        local_backend_env(patch, root, kill_wait=KILL_WAIT)
        yield root


def jobstrap(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobstrap", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, **env},
        check=False,
    )


def submit(app: Path, *, wait: bool) -> tuple[str, str]:
    """``jobstrap submit`` on the local backend; returns (run id, job id)."""
    flags = ["--wait"] if wait else []
    done = jobstrap("submit", "--system", "local", "--set", "walltime=10m", *flags, str(app))
    said = {line[:9]: line[9:].strip() for line in done.stdout.splitlines()}
    assert "run      " in said, done.stdout + done.stderr
    return said["run      "], said["job      "]


def wait_for_output(run_id: str, text: str) -> None:
    out, _ = registry.load(run_id).log_paths(registry.load(run_id).job_ids[0])
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if os.path.exists(out) and text in Path(out).read_text(errors="replace"):
            return
        time.sleep(0.2)
    pytest.fail(f"{run_id} never printed {text!r}")


def active(job_id: str) -> bool:
    record = BatchControl.for_system("local").status([job_id]).get(job_id)
    return record is not None and not record.state.is_terminal


def age(run_id: str, seconds: float) -> None:
    """Make run ``run_id`` look as if it was submitted, and last wrote, ``seconds`` ago."""
    stamp = time.time() - seconds
    record = registry.modify(run_id, lambda r: replace(r, created=stamp))
    for path in Path(record.run_dir).rglob("*"):
        os.utime(path, (stamp, stamp), follow_symlinks=False)


def status_rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.splitlines()
    assert lines[0].split()[:4] == ["RUN", "KIND", "JOB", "STATE"], stdout
    found: dict[str, list[str]] = {}
    for line in lines[1:]:
        assert line.split()[0] not in found, f"two lines for one run:\n{stdout}"
        found[line.split()[0]] = line.split()
    return found


@pytest.fixture
def cleanup() -> Iterator[list[str]]:
    """Runs to cancel after the test, whatever happened."""
    runs: list[str] = []
    yield runs
    for run_id in runs:
        jobstrap("cancel", "--wait", "--timeout", str(KILL_WAIT + 30), run_id)


def test_status_prune_and_history_after_a_few_runs(tmp_path: Path, cleanup: list[str]) -> None:
    quick, failing, sleeper = tmp_path / "quick.py", tmp_path / "fail.py", tmp_path / "sleep.py"
    quick.write_text("print('hello')\n")
    failing.write_text("import sys\nsys.exit(3)\n")
    sleeper.write_text(SLEEPER_APP)
    old_run, _ = submit(quick, wait=True)
    forgotten_run, forgotten_job = submit(failing, wait=True)
    done_run, _ = submit(quick, wait=True)
    failed_run, _ = submit(failing, wait=True)
    live_run, live_job = submit(sleeper, wait=False)
    cleanup.append(live_run)
    wait_for_output(live_run, "STARTED")
    age(old_run, 3 * DAY)
    age(forgotten_run, 3 * DAY)
    age(live_run, 3 * DAY)  # a long job: submitted days ago, still running
    # The local queue forgets the job, as Slurm's accounting does after its purge time.
    shutil.rmtree(Path(os.environ["JOBSTRAP_LOCAL_SPOOL"]) / "jobs" / forgotten_job)

    recent = jobstrap("status")
    history = jobstrap("status", "--all")
    # The live job may still have logged since (its first watchdog connection, a few
    # seconds in): a write makes it recent again, and prune would rightly pass it by.
    age(live_run, 3 * DAY)
    dry = jobstrap("prune", "--older-than", "2d", "--dry-run")
    kept_by_dry_run = sorted(r.run_id for r in registry.list())
    # From a shell whose run root is another: each run's record says where it was made.
    elsewhere = str(tmp_path / "another-run-root")
    pruned = jobstrap("prune", "--older-than", "2d", JOBSTRAP_RUN_ROOT=elsewhere)
    after = jobstrap("status", "--all")

    assert recent.returncode == 0, recent.stderr
    shown = status_rows(recent.stdout)
    # Oldest submission first: live, and ended today; not the runs that ended days ago.
    assert list(shown) == [live_run, done_run, failed_run]
    assert shown[done_run][3] == "COMPLETED"
    assert shown[failed_run][3] == "FAILED"
    assert "exit 3" in " ".join(shown[failed_run])
    assert shown[live_run][3] == "RUNNING"

    every = status_rows(history.stdout)
    assert list(every) == [old_run, forgotten_run, live_run, done_run, failed_run]
    assert every[old_run][3] == "COMPLETED"
    # Forgotten by the batch system: the app's exit code in the run directory says it.
    assert every[forgotten_run][3] == "FAILED"
    assert "exit 3" in " ".join(every[forgotten_run])
    assert "MISSING" not in history.stdout

    assert dry.returncode == 0, dry.stderr
    assert f"would remove {old_run} (COMPLETED)" in dry.stdout
    assert f"would remove {forgotten_run} (FAILED)" in dry.stdout
    assert dry.stdout.splitlines()[-1] == "would remove 2 run(s) ended more than 2d ago"
    assert kept_by_dry_run == sorted([old_run, forgotten_run, done_run, failed_run, live_run])

    assert pruned.returncode == 0, pruned.stderr
    assert f"removed {old_run} (COMPLETED)" in pruned.stdout
    assert f"removed {forgotten_run} (FAILED)" in pruned.stdout
    assert pruned.stdout.splitlines()[-1] == "removed 2 run(s) ended more than 2d ago"
    assert f"kept {live_run}: RUNNING" in pruned.stderr
    assert list(status_rows(after.stdout)) == [live_run, done_run, failed_run]
    assert not (Path(os.environ["JOBSTRAP_RUN_ROOT"]) / old_run).exists()
    assert (Path(os.environ["JOBSTRAP_RUN_ROOT"]) / live_run).is_dir()
    assert active(live_job)


def test_cancel_wait_returns_once_the_job_has_left_and_status_shows_cancelling_meanwhile(
    tmp_path: Path, cleanup: list[str]
) -> None:
    app = tmp_path / "stubborn.py"
    app.write_text(STUBBORN_APP)
    run_id, job_id = submit(app, wait=False)
    cleanup.append(run_id)
    wait_for_output(run_id, "STUBBORN")

    impatient = jobstrap("cancel", "--wait", "--timeout", "1", run_id)
    during = jobstrap("status")
    waiting = subprocess.Popen(
        [sys.executable, "-m", "jobstrap", "cancel", "--wait", run_id],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip
    still_there = active(job_id)
    out, err = waiting.communicate(timeout=TIMEOUT)
    gone = not active(job_id)
    after = jobstrap("status")

    assert impatient.returncode == 1
    assert impatient.stderr.strip().splitlines()[-1] == (
        f"error: {run_id}: still in the batch system after --timeout: {job_id} CANCELLING"
    )
    assert status_rows(during.stdout)[run_id][2:4] == [job_id, "CANCELLING"]
    assert still_there  # the job lingered after the cancel ...
    assert waiting.returncode == 0, err
    assert out.splitlines()[-1] == f"{run_id}: released by the batch system ({job_id} CANCELLED)"
    assert gone  # ... and was gone the moment cancel --wait returned
    assert status_rows(after.stdout)[run_id][2:4] == [job_id, "CANCELLED"]


def test_a_closed_notebook_cluster_is_recorded_closed_and_never_shown_running() -> None:
    from jobstrap import LocalBatchCluster

    with LocalBatchCluster(cores=1, memory="300MiB") as cluster:
        cluster.scale(jobs=1)
        cluster.wait_for_workers(1, timeout=TIMEOUT)
        run_id = cluster.run_id
        assert len(registry.load(run_id).job_ids) == 1

    # Closing cancelled the job: whatever the batch system still says of it, the run
    # is on its way out (CANCELLING) or over, never at work.
    assert registry.load(run_id).status == "closed"
    done = jobstrap("status", run_id)
    assert done.returncode == 0, done.stderr
    state = status_rows(done.stdout)[run_id][3]
    assert state in ("CANCELLING", "CANCELLED"), done.stdout
