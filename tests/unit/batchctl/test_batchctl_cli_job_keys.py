"""``jobstrap status`` and ``cancel --all`` when two runs' jobs share an id.

Job ids are unique only within one batch system and one controller's lifetime: the
local queue and Slurm both hand out ``1``, and a Slurm cluster restarted with an empty
state hands its ids out again. Each command runs as its own process (``python -m
jobstrap``), the local runs on the real local queue (``jobstrap.localq``, a private
spool) and the Slurm runs on the fake Slurm of ``fakeslurm``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakeslurm import FakeSlurm

from jobstrap.store import registry
from jobstrap.store.registry import RunRecord

SLURM = ["--system", "slurm", "--set", "queue=debug", "--set", "protocol=tcp"]
LOCAL = ["--system", "local", "--set", "protocol=tcp", "--set", "cores=1"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_slurm: FakeSlurm) -> Path:
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("JOBSTRAP_RUN_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("JOBSTRAP_CONFIG_DIR", str(tmp_path / "config"))
    # A fresh spool: the local queue's first job is 1.
    monkeypatch.setenv("JOBSTRAP_LOCAL_SPOOL", str(tmp_path / "spool"))
    monkeypatch.delenv("JOBSTRAP_PROFILE", raising=False)
    (tmp_path / "app.py").write_text("print('done')\n")
    (tmp_path / "sleepy.py").write_text("import time\ntime.sleep(600)\n")
    return tmp_path


def jobstrap(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobstrap", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def submit(*args: str) -> RunRecord:
    done = jobstrap("submit", *args)
    assert done.returncode == 0, done.stderr
    run_id = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("run "))
    return registry.load(run_id)


def local_run(home: Path) -> RunRecord:
    """A local-backend run, for real, that ran to its end."""
    record = submit(*LOCAL, "--wait", str(home / "app.py"))
    assert record.job_ids == ["1"]
    return record


def slurm_run(home: Path, fake: FakeSlurm, job_id: str) -> RunRecord:
    """``jobstrap submit sleepy.py`` on Slurm, which gives it ``job_id``; it runs."""
    fake.change(next_id=int(job_id))  # the controller restarted: its ids start again
    record = submit(*SLURM, str(home / "sleepy.py"))
    assert record.job_ids == [job_id]
    fake.set_job(job_id, state="RUNNING")
    return record


def rows(stdout: str) -> dict[str, list[str]]:
    """``jobstrap status`` rows by run id: [kind, job, state, ...]."""
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines()[1:]}


def test_status_and_cancel_all_see_a_slurm_job_sharing_its_id_with_an_older_local_one(
    home: Path, fake_slurm: FakeSlurm
) -> None:
    """The user's sequence after a day of use, Slurm's ids restarted with the cluster.

    The registry holds a Slurm run from before the restart (its job gone), an older
    local-backend run whose job was 1, then ``jobstrap submit sleepy.py`` makes Slurm
    job 1, RUNNING.
    """
    before_restart = RunRecord(
        run_id="run-before-restart", kind="app", system="slurm", controller="jobstrap",
        run_dir=str(home / "runs" / "run-before-restart"), job_ids=["57"],
        tags=["js000000000000"], created=time.time() - 2 * 86_400, status="finished",
    )  # fmt: skip
    registry.save(before_restart)
    local = local_run(home)
    sleepy = slurm_run(home, fake_slurm, "1")

    one = jobstrap("status", sleepy.run_id)
    assert one.returncode == 0, one.stderr
    assert rows(one.stdout)[sleepy.run_id][:3] == ["app", "1", "RUNNING"]

    recent = jobstrap("status")
    assert recent.returncode == 0, recent.stderr
    assert before_restart.run_id not in recent.stdout  # ended a day ago: history only
    every = jobstrap("status", "--all")
    assert every.returncode == 0, every.stderr
    table = rows(every.stdout)
    assert table[sleepy.run_id][:3] == ["app", "1", "RUNNING"]
    assert table[local.run_id][:3] == ["app", "1", "COMPLETED"]
    # Its job 57 is gone from Slurm: it ended, and nothing says how.
    assert table[before_restart.run_id][:3] == ["app", "57", "ENDED"]
    assert registry.load(sleepy.run_id).status == "submitted"  # not taken for over

    cancelled = jobstrap("cancel", "--all")
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"{sleepy.run_id}: cancelled 1 job(s)" in cancelled.stdout
    assert fake_slurm.jobs()["1"]["state"] == "CANCELLED"
    assert [c[-1] for c in fake_slurm.calls("scancel")] == ["1"]


@pytest.mark.parametrize("slurm_first", [False, True], ids=["local-older", "slurm-older"])
def test_each_run_gets_its_own_system_s_answer_for_a_shared_id(
    home: Path, fake_slurm: FakeSlurm, slurm_first: bool
) -> None:
    if slurm_first:
        sleepy = slurm_run(home, fake_slurm, "1")
        local = local_run(home)
    else:
        local = local_run(home)
        sleepy = slurm_run(home, fake_slurm, "1")
    assert local.job_key("1") != sleepy.job_key("1")

    table = rows(jobstrap("status").stdout)

    assert table[sleepy.run_id][:3] == ["app", "1", "RUNNING"]
    assert table[local.run_id][:3] == ["app", "1", "COMPLETED"]
    cancelled = jobstrap("cancel", "--all")
    assert cancelled.returncode == 0, cancelled.stderr
    assert fake_slurm.jobs()["1"]["state"] == "CANCELLED"


def test_runs_record_the_controller_that_numbered_their_jobs(
    home: Path, fake_slurm: FakeSlurm
) -> None:
    fake_slurm.change(cluster_name="hpc-a")

    sleepy = submit(*SLURM, str(home / "sleepy.py"))

    assert sleepy.controller == "hpc-a"


def test_a_run_of_another_controller_is_neither_asked_about_nor_cancelled(
    home: Path, fake_slurm: FakeSlurm
) -> None:
    """Its id means another job here: the job of this cluster holding it is left alone."""
    registry.save(
        RunRecord(
            run_id="run-elsewhere", kind="app", system="slurm", controller="hpc-b",
            run_dir=str(home / "runs" / "run-elsewhere"), job_ids=["100"],
            tags=["js000000000000"],
        )
    )  # fmt: skip
    fake_slurm.change(next_id=100)
    submit(*SLURM, str(home / "sleepy.py"))  # a job of ours here, also 100, ...
    fake_slurm.set_job("100", state="RUNNING", name="jobstrap-js000000000000")  # ... alike

    status = jobstrap("status", "run-elsewhere")
    assert status.returncode == 0, status.stderr
    assert rows(status.stdout)["run-elsewhere"][:3] == ["app", "100", "UNKNOWN"]
    assert "submitted to slurm hpc-b, this is jobstrap" in status.stdout
    assert fake_slurm.calls("squeue") == []

    cancelled = jobstrap("cancel", "run-elsewhere")
    assert "run-elsewhere: not cancelled: submitted to slurm hpc-b" in cancelled.stderr
    assert fake_slurm.jobs()["100"]["state"] == "RUNNING"
    assert registry.load("run-elsewhere").status == "submitted"
