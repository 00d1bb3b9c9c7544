"""``jobstrap status`` over a day of runs, ``status --all``, ``prune`` and CANCELLING.

Each command runs as its own process (``python -m jobstrap``) against the fake Slurm
of ``fakeslurm``: squeue for live jobs, sacct for ended ones, nothing for jobs the
accounting has forgotten. What is asserted is what a person reads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakeslurm import FakeSlurm

from jobstrap.store import registry
from jobstrap.store.registry import RunRecord

DAY = 86400.0


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_slurm: FakeSlurm) -> Path:
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("JOBSTRAP_RUN_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("JOBSTRAP_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("JOBSTRAP_PROFILE", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has ended: the maker of runs no process holds any more."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def jobstrap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobstrap", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def save_run(
    run_id: str,
    home: Path,
    job_ids: list[str],
    *,
    age: float = 0.0,
    owner_pid: int | None = None,
    status: str = "submitted",
) -> RunRecord:
    """A run submitted ``age`` seconds ago whose files are as old as that."""
    run_dir = home / "runs" / run_id
    (run_dir / "logs").mkdir(parents=True)
    created = time.time() - age
    record = RunRecord(
        run_id=run_id, kind="app", system="slurm", run_dir=str(run_dir), job_ids=job_ids,
        tags=["js1"], created=created, status=status,
    )  # fmt: skip
    if owner_pid is not None:
        record.owner_pid = owner_pid
    registry.save(record)
    return record


def write_run_file(record: RunRecord, name: str, text: str, age: float) -> None:
    path = Path(record.run_dir) / name
    path.write_text(text)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))


def add_job(fake: FakeSlurm, job_id: str, **values: object) -> None:
    jobs = fake.jobs()
    jobs[job_id] = {"name": "jobstrap-js1", "array": None, "state": "PENDING", "live": True,
                    "submit": "2024-05-06T10:00:00", "exit": "0:0", **values}  # fmt: skip
    fake.change(jobs=jobs)


def rows(stdout: str) -> dict[str, list[str]]:
    """Status rows by run id (the header left out)."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["RUN", "KIND", "JOB", "STATE", "NODES", "REASON", "ELAPSED", "LEFT"]
    found: dict[str, list[str]] = {}
    for line in lines[1:]:
        run_id = line.split()[0]
        assert run_id not in found, f"two lines for {run_id}:\n{stdout}"
        found[run_id] = line.split()
    return found


# --- status: a day of runs ----------------------------------------------------------------


def test_status_shows_live_runs_and_runs_ended_today_one_line_each_with_their_outcome(
    home: Path, fake_slurm: FakeSlurm
) -> None:
    save_run("run-live", home, ["100"], age=3 * DAY)  # a three-day job, still running
    save_run("run-done", home, ["101"], age=3600)
    save_run("run-failed", home, ["102"], age=3600)
    save_run("run-timeout", home, ["103"], age=3600)
    save_run("run-old", home, ["104"], age=3 * DAY)
    save_run("run-array", home, ["105_0", "105_1", "105_2"], age=60)
    add_job(fake_slurm, "100", state="RUNNING")
    add_job(fake_slurm, "101", state="COMPLETED", live=False)
    add_job(fake_slurm, "102", state="FAILED", live=False, exit="1:0")
    add_job(fake_slurm, "103", state="TIMEOUT", live=False)
    add_job(fake_slurm, "104", state="COMPLETED", live=False)
    add_job(fake_slurm, "105", state="RUNNING", array=[0, 2], tasks={"0": "RUNNING",
            "1": "RUNNING", "2": "PENDING"})  # fmt: skip

    done = jobstrap("status")

    assert done.returncode == 0, done.stderr
    shown = rows(done.stdout)
    assert list(shown) == ["run-live", "run-done", "run-failed", "run-timeout", "run-array"]
    assert shown["run-live"][2:4] == ["100", "RUNNING"]
    assert shown["run-done"][2:4] == ["101", "COMPLETED"]
    assert shown["run-failed"][2:4] == ["102", "FAILED"]
    assert "exit 1" in " ".join(shown["run-failed"])
    assert shown["run-timeout"][2:4] == ["103", "TIMEOUT"]
    # An array is one line: its first task, how many more, and what its tasks are doing.
    assert shown["run-array"][2:5] == ["105_0", "(+2)", "RUNNING"]
    assert "1 PENDING, 2 RUNNING" in done.stdout
    assert "MISSING" not in done.stdout


def test_status_all_shows_history_with_outcomes_never_missing(
    home: Path, fake_slurm: FakeSlurm
) -> None:
    old = 10 * DAY
    save_run("run-acct", home, ["100"], age=old)  # the accounting still knows it
    add_job(fake_slurm, "100", state="CANCELLED", live=False)
    # Forgotten by Slurm: what jobstrap recorded in the run directory says how it ended.
    write_run_file(save_run("run-ok", home, ["200"], age=old), "exit_code", "0\n", old)
    write_run_file(save_run("run-bad", home, ["201"], age=old), "exit_code", "3\n", old)
    save_run("run-cancelled", home, ["202"], age=old, status="cancelled")
    save_run("run-silent", home, ["203"], age=old, status="finished")

    default = jobstrap("status")
    everything = jobstrap("status", "--all")

    assert default.returncode == 0, default.stderr
    assert default.stdout.strip() == (
        "no live runs, none ended in the last 24 hours (jobstrap status --all)"
    )
    assert everything.returncode == 0, everything.stderr
    shown = rows(everything.stdout)
    assert {run: row[3] for run, row in shown.items()} == {
        "run-acct": "CANCELLED",
        "run-ok": "COMPLETED",
        "run-bad": "FAILED",
        "run-cancelled": "CANCELLED",
        "run-silent": "ENDED",
    }
    assert "exit 3" in " ".join(shown["run-bad"])
    assert "MISSING" not in everything.stdout


def test_status_does_not_ask_about_runs_known_to_have_ended_before_the_window(
    home: Path, fake_slurm: FakeSlurm
) -> None:
    save_run("run-old", home, ["100"], age=5 * DAY, status="finished")
    save_run("run-live", home, ["101"])
    add_job(fake_slurm, "101", state="RUNNING")

    jobstrap("status")

    asked = [argv for argv in fake_slurm.calls() if argv[0] in ("squeue", "sacct")]
    assert asked
    assert all("100" not in " ".join(argv) for argv in asked)


def test_a_run_ends_in_the_default_listing_when_its_jobs_end_today(
    home: Path, fake_slurm: FakeSlurm
) -> None:
    # Submitted three days ago; its log was written an hour ago, when it ended.
    record = save_run("run-long", home, ["100"], age=3 * DAY)
    write_run_file(record, "logs/100.err", "done\n", 3600)
    add_job(fake_slurm, "100", state="COMPLETED", live=False)

    done = jobstrap("status")

    assert rows(done.stdout)["run-long"][3] == "COMPLETED"


# --- CANCELLING ---------------------------------------------------------------------------


def test_a_cancelled_job_still_in_slurm_shows_cancelling_then_its_end(
    home: Path, fake_slurm: FakeSlurm
) -> None:
    save_run("run-a", home, ["100"])
    add_job(fake_slurm, "100", state="RUNNING")

    cancelled = jobstrap("cancel", "run-a")
    fake_slurm.set_job("100", state="COMPLETING")  # Slurm cleaning up the nodes
    completing = jobstrap("status")
    fake_slurm.set_job("100", state="CANCELLED", live=False)
    gone = jobstrap("status")

    assert cancelled.returncode == 0, cancelled.stderr
    assert rows(completing.stdout)["run-a"][2:5] == ["100", "CANCELLING", "node1"]
    assert rows(gone.stdout)["run-a"][2:4] == ["100", "CANCELLED"]


def test_a_running_job_of_a_run_nobody_cancelled_is_running(
    home: Path, fake_slurm: FakeSlurm
) -> None:
    save_run("run-a", home, ["100"])
    add_job(fake_slurm, "100", state="COMPLETING")

    done = jobstrap("status")

    assert rows(done.stdout)["run-a"][3] == "RUNNING"


def test_cancel_timeout_needs_wait(home: Path) -> None:
    done = jobstrap("cancel", "--timeout", "5", "run-a")

    assert done.returncode == 2
    assert "--timeout needs --wait" in done.stderr


# --- prune --------------------------------------------------------------------------------


def test_prune_forgets_runs_that_ended_long_ago_and_never_a_live_one(
    home: Path, fake_slurm: FakeSlurm, dead_pid: int
) -> None:
    old = 10 * DAY
    live = save_run("run-live", home, ["100"], age=old, owner_pid=dead_pid)
    done = save_run("run-done", home, ["101"], age=old, owner_pid=dead_pid)
    forgotten = save_run("run-forgotten", home, ["102"], age=old, owner_pid=dead_pid)
    recent = save_run("run-recent", home, ["103"], age=DAY, owner_pid=dead_pid)
    add_job(fake_slurm, "100", state="RUNNING")
    add_job(fake_slurm, "101", state="COMPLETED", live=False)
    add_job(fake_slurm, "103", state="COMPLETED", live=False)

    pruned = jobstrap("prune")  # default: ended more than 7 days ago

    assert pruned.returncode == 0, pruned.stderr
    assert f"removed run-done (COMPLETED) {done.run_dir}" in pruned.stdout
    assert f"removed run-forgotten (ENDED) {forgotten.run_dir}" in pruned.stdout
    assert pruned.stdout.splitlines()[-1] == "removed 2 run(s) ended more than 7d ago"
    assert "kept run-live: RUNNING" in pruned.stderr
    assert sorted(r.run_id for r in registry.list()) == ["run-live", "run-recent"]
    assert Path(live.run_dir).is_dir()
    assert Path(recent.run_dir).is_dir()
    assert not Path(done.run_dir).exists()
    assert not Path(forgotten.run_dir).exists()
    assert fake_slurm.calls("scancel") == []


def test_prune_dry_run_only_says_what_it_would_remove(
    home: Path, fake_slurm: FakeSlurm, dead_pid: int
) -> None:
    done = save_run("run-done", home, ["101"], age=10 * DAY, owner_pid=dead_pid)
    add_job(fake_slurm, "101", state="COMPLETED", live=False)

    pruned = jobstrap("prune", "--dry-run", "--older-than", "1d")

    assert pruned.returncode == 0, pruned.stderr
    assert f"would remove run-done (COMPLETED) {done.run_dir}" in pruned.stdout
    assert [r.run_id for r in registry.list()] == ["run-done"]
    assert Path(done.run_dir).is_dir()


def test_prune_keeps_a_run_whose_maker_still_runs_here(home: Path, fake_slurm: FakeSlurm) -> None:
    # A notebook's cluster scaled to zero: no job, but its process may add some again.
    save_run("run-cluster", home, ["101"], age=10 * DAY, owner_pid=os.getpid())
    add_job(fake_slurm, "101", state="CANCELLED", live=False)

    pruned = jobstrap("prune")

    assert f"kept run-cluster: the process that made it ({os.getpid()}) runs" in pruned.stderr
    assert [r.run_id for r in registry.list()] == ["run-cluster"]


def test_prune_never_deletes_a_directory_outside_the_run_root_or_behind_a_link(
    home: Path, fake_slurm: FakeSlurm, dead_pid: int, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "precious" / "run-outside"
    (elsewhere / "logs").mkdir(parents=True)
    outside = save_run("run-outside", home, ["101"], age=10 * DAY, owner_pid=dead_pid)
    registry.update("run-outside", run_dir=str(elsewhere))
    linked = save_run("run-linked", home, ["102"], age=10 * DAY, owner_pid=dead_pid)
    Path(linked.run_dir, "logs").rmdir()
    Path(linked.run_dir).rmdir()
    Path(linked.run_dir).symlink_to(elsewhere)
    add_job(fake_slurm, "101", state="COMPLETED", live=False)
    add_job(fake_slurm, "102", state="COMPLETED", live=False)

    pruned = jobstrap("prune")

    assert pruned.returncode == 0, pruned.stderr
    assert f"kept run-outside: {elsewhere} is not in the run root" in pruned.stderr
    assert f"kept run-linked: {linked.run_dir} is not a plain directory" in pruned.stderr
    assert (elsewhere / "logs").is_dir()
    assert sorted(r.run_id for r in registry.list()) == ["run-linked", "run-outside"]
    assert outside.run_id in pruned.stderr
    assert pruned.stdout.splitlines()[-1] == "removed 0 run(s) ended more than 7d ago"


def test_prune_older_than_must_be_a_duration(home: Path) -> None:
    done = jobstrap("prune", "--older-than", "soon")

    assert done.returncode == 2
    assert done.stderr.startswith("error: --older-than: invalid value 'soon'")
