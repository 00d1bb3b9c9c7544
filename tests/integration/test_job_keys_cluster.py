"""A Slurm job sharing its id with an older local-backend job, on the real test cluster.

Job ids are unique only within one batch system and one controller's lifetime: Slurm
restarted with an empty state hands out ids a local spool has handed out too. The
user's sequence: runs on the local backend and on Slurm in the registry, then
``jobstrap submit sleepy.py`` makes Slurm job N while an older local-backend run had
job N; ``jobstrap status`` must show the Slurm run RUNNING and ``jobstrap cancel
--all`` must cancel it.
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


@pytest.fixture
def env(testcluster: TestCluster, shared_scratch: Path) -> dict[str, str]:
    """A registry, run root and local spool of this test's own."""
    spool = shared_scratch / "spool"
    spool.mkdir(mode=0o700)
    return {
        **os.environ,
        "JOBSTRAP_STATE_DIR": str(shared_scratch / "state"),
        "JOBSTRAP_RUN_ROOT": str(shared_scratch / "runs"),
        "JOBSTRAP_LOCAL_SPOOL": str(spool),
    }


@pytest.fixture
def slurm_jobs() -> Iterator[list[str]]:
    """Ids of the Slurm jobs the test made; whatever is left is cancelled (no leaks)."""
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, check=False)


def jobstrap(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobstrap", *args],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )  # fmt: skip


def submitted(done: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """(run id, job id) printed by ``jobstrap submit``."""
    assert done.returncode == 0, done.stdout + done.stderr
    words: dict[str, str] = {}
    for line in done.stdout.splitlines():
        if len(line.split()) >= 2:
            words.setdefault(line.split()[0], line.split()[1])  # "run", then "run dir"
    return words["run"], words["job"]


def active(job_id: str) -> str:
    """The job's state as plain ``squeue`` lists it (pending, running, ...), else ""."""
    done = subprocess.run(
        ["squeue", "--noheader", f"--jobs={job_id}", "--format=%T"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 else ""


def wait_for_state(job_id: str, wanted: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (seen := active(job_id)) != wanted:
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} not {wanted or 'gone from squeue'} in {timeout} s: {seen!r}")
        time.sleep(1)


def rows(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines()[1:]}


def test_status_and_cancel_all_see_a_slurm_job_whose_id_an_older_local_job_had(
    env: dict[str, str], shared_scratch: Path, slurm_jobs: list[str]
) -> None:
    """The user's sequence; the local-backend run is created with the id Slurm gives next.

    Slurm's next id cannot be chosen: an earlier Slurm run (the day's use) shows the
    last id M, then the local queue's counter (``<spool>/next_id``) is set so the real
    local-backend run gets job M+1, which ``jobstrap submit sleepy.py`` then gets from
    Slurm. Nothing else may submit in between (the test fails saying so if it did).
    """
    app = shared_scratch / "app.py"
    app.write_text("print('done')\n")
    sleepy = shared_scratch / "sleepy.py"
    sleepy.write_text("import time\ntime.sleep(600)\n")

    earlier_run, earlier_job = submitted(jobstrap(env, "submit", "--profile", "testcluster",
                                                  str(app)))  # fmt: skip
    slurm_jobs.append(earlier_job)
    assert jobstrap(env, "cancel", earlier_run).returncode == 0
    shared_id = str(int(earlier_job) + 1)
    (Path(env["JOBSTRAP_LOCAL_SPOOL"]) / "next_id").write_text(f"{shared_id}\n")
    local_run, local_job = submitted(
        jobstrap(env, "submit", "--system", "local", "--set", "protocol=tcp", "--wait", str(app))
    )
    assert local_job == shared_id

    run, job = submitted(jobstrap(env, "submit", "--profile", "testcluster", str(sleepy)))
    slurm_jobs.append(job)
    if job != shared_id:
        pytest.fail(f"Slurm gave job {job}, not {shared_id}: another submission came between")
    wait_for_state(job, "RUNNING", timeout=120)

    one = jobstrap(env, "status", run)
    assert rows(one.stdout)[run][:3] == ["app", job, "RUNNING"], one.stdout + one.stderr
    every = jobstrap(env, "status")
    table = rows(every.stdout)
    assert table[run][:3] == ["app", job, "RUNNING"], every.stdout + every.stderr
    assert table[local_run][:3] == ["app", job, "COMPLETED"], every.stdout

    cancelled = jobstrap(env, "cancel", "--all")

    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert "nothing to cancel" not in cancelled.stdout
    assert f"{run}: cancelled 1 job(s)" in cancelled.stdout
    wait_for_state(job, "", timeout=60)
