"""``jobstrap status``, ``prune`` and ``cancel --wait`` on the real Slurm test cluster.

Run on ``head``. A cancelled Slurm job stays COMPLETING for a while (about 10 s here)
while its nodes clean up: ``status`` must show it CANCELLING, and ``cancel --wait``
must return only once Slurm has let it go. Ended runs show their outcome as sacct
has it, one line per run. Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TestCluster

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs the Slurm test cluster"),
]

SLEEPER_APP = "import time\nprint('STARTED', flush=True)\ntime.sleep(600)\n"


@pytest.fixture
def env(testcluster: TestCluster, shared_scratch: Path) -> Iterator[dict[str, str]]:
    """This test's own registry and run root; every run left is cancelled afterwards."""
    values = {**os.environ, "JOBSTRAP_STATE_DIR": str(shared_scratch / "state"),
              "JOBSTRAP_RUN_ROOT": str(shared_scratch / "runs")}  # fmt: skip
    yield values
    jobstrap(values, "cancel", "--all", timeout=120)


def jobstrap(
    env: dict[str, str], *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jobstrap", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)  # fmt: skip


def submit(env: dict[str, str], app: Path, *flags: str) -> tuple[str, str]:
    done = jobstrap(env, "submit", "--profile", "testcluster", "--set", "poll_interval=1",
                    *flags, str(app))  # fmt: skip
    said = {line[:9]: line[9:].strip() for line in done.stdout.splitlines()}
    assert "run      " in said, done.stdout + done.stderr
    return said["run      "], said["job      "]


def state_of(env: dict[str, str], run_id: str) -> str:
    """The STATE column of ``jobstrap status RUN`` (one job)."""
    done = jobstrap(env, "status", run_id, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[1].split()[3]


def wait_for_state(env: dict[str, str], run_id: str, wanted: str, timeout: float) -> list[str]:
    """Poll ``status`` until the run's job is ``wanted``; return every state seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while not seen or seen[-1] != wanted:
        if time.monotonic() > deadline:
            pytest.fail(f"{run_id} not {wanted} within {timeout} s; saw {seen}")
        seen.append(state_of(env, run_id))
    return seen


def squeue_state(job_id: str) -> str:
    done = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%T", "--jobs", job_id],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    return done.stdout.strip()


def test_status_shows_a_cancelled_job_cancelling_until_slurm_lets_it_go(
    env: dict[str, str], shared_scratch: Path
) -> None:
    app = shared_scratch / "sleeper.py"
    app.write_text(SLEEPER_APP)
    run_id, _ = submit(env, app)
    wait_for_state(env, run_id, "RUNNING", 300)

    cancelled = jobstrap(env, "cancel", run_id)
    seen = wait_for_state(env, run_id, "CANCELLED", 300)

    assert cancelled.returncode == 0, cancelled.stderr
    # COMPLETING (about 10 s here) is shown as CANCELLING, never as RUNNING.
    assert seen[0] == "CANCELLING", seen
    assert set(seen) == {"CANCELLING", "CANCELLED"}, seen


def test_cancel_wait_returns_only_once_slurm_released_the_job(
    env: dict[str, str], shared_scratch: Path
) -> None:
    app = shared_scratch / "sleeper.py"
    app.write_text(SLEEPER_APP)
    run_id, job_id = submit(env, app)
    wait_for_state(env, run_id, "RUNNING", 300)

    done = jobstrap(env, "cancel", "--wait", "--timeout", "300", run_id)
    left = squeue_state(job_id)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        f"{run_id}: released by the batch system ({job_id} CANCELLED)"
    )
    assert left in ("", "CANCELLED"), left  # not COMPLETING: Slurm holds nothing of it


def test_status_lists_live_and_ended_runs_with_their_outcome_and_prune_keeps_the_live_one(
    env: dict[str, str], shared_scratch: Path
) -> None:
    quick, failing, sleeper = (shared_scratch / n for n in ("quick.py", "fail.py", "sleep.py"))
    quick.write_text("print('hello')\n")
    failing.write_text("import sys\nsys.exit(3)\n")
    sleeper.write_text(SLEEPER_APP)
    done_run, _ = submit(env, quick, "--wait")
    failed_run, _ = submit(env, failing, "--wait")
    live_run, live_job = submit(env, sleeper)
    wait_for_state(env, live_run, "RUNNING", 300)

    status = jobstrap(env, "status")
    pruned = jobstrap(env, "prune", "--older-than", "0")
    after = jobstrap(env, "status", "--all")

    assert status.returncode == 0, status.stderr
    rows = {line.split()[0]: line.split() for line in status.stdout.splitlines()[1:]}
    assert list(rows) == [done_run, failed_run, live_run]
    assert rows[done_run][3] == "COMPLETED"
    assert rows[failed_run][3] == "FAILED"
    assert "exit 3" in " ".join(rows[failed_run])
    assert rows[live_run][3] == "RUNNING"
    assert pruned.returncode == 0, pruned.stderr
    assert f"removed {done_run} (COMPLETED)" in pruned.stdout
    assert f"removed {failed_run} (FAILED)" in pruned.stdout
    assert f"kept {live_run}: RUNNING" in pruned.stderr
    assert [line.split()[0] for line in after.stdout.splitlines()[1:]] == [live_run]
    assert squeue_state(live_job) == "RUNNING"
