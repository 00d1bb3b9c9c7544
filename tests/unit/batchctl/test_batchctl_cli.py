"""``jobstrap submit``, ``status``, ``cancel`` and ``logs`` as a user runs them.

Each command runs as its own process (``python -m jobstrap``) against the fake Slurm
of ``fakeslurm`` (real executables printing Slurm 22.05's formats); the real
cluster is exercised in ``tests/integration/test_batchctl_cluster.py``.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from fakeslurm import FakeSlurm

from jobstrap.store import registry
from jobstrap.store.registry import RunRecord

SLURM = ["--system", "slurm", "--set", "queue=debug", "--set", "protocol=tcp"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_slurm: FakeSlurm) -> Path:
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("JOBSTRAP_RUN_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("JOBSTRAP_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("JOBSTRAP_PROFILE", raising=False)
    return tmp_path


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text("print('hello')\n")
    return path


def jobstrap(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobstrap", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def finish(process: subprocess.Popen[str]) -> tuple[str, str]:
    """The rest of a process's output (read through the same buffers that began reading)."""
    assert process.stdout is not None
    assert process.stderr is not None
    out = process.stdout.read()
    err = process.stderr.read()
    process.wait(timeout=60)
    return out, err


def submitted_run(stdout: str) -> RunRecord:
    run_id = next(line.split()[1] for line in stdout.splitlines() if line.startswith("run "))
    return registry.load(run_id)


# --- submit -------------------------------------------------------------------------------


def test_submit_prints_the_job_the_run_directory_and_the_logs(
    home: Path, fake_slurm: FakeSlurm, app: Path
) -> None:
    done = jobstrap("submit", *SLURM, str(app), "--size", "3")

    assert done.returncode == 0, done.stderr
    record = submitted_run(done.stdout)
    assert record.job_ids == ["100"]
    assert record.status == "submitted"
    assert f"job      100\nrun dir  {record.run_dir}\n" in done.stdout
    assert f"stdout   {record.run_dir}/logs/100.out" in done.stdout


def test_submit_creates_a_private_run_directory_with_the_script_and_run_json(
    home: Path, app: Path
) -> None:
    done = jobstrap("submit", *SLURM, str(app))

    run_dir = Path(submitted_run(done.stdout).run_dir)
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert (run_dir / "job.sh").is_file()
    assert (run_dir / "run.json").is_file()


def test_submit_runs_the_app_by_absolute_path_with_its_arguments(
    home: Path, fake_slurm: FakeSlurm, app: Path
) -> None:
    done = jobstrap("submit", *SLURM, str(app), "--size", "3")

    script = (Path(submitted_run(done.stdout).run_dir) / "job.sh").read_text()
    assert f"-- {app} --size 3" in script
    assert fake_slurm.jobs()["100"]["name"].startswith("jobstrap-js")


def test_submit_makes_tls_material_before_submitting(home: Path, app: Path) -> None:
    done = jobstrap("submit", "--system", "slurm", "--set", "protocol=tls", str(app))

    tls = Path(submitted_run(done.stdout).run_dir) / "tls"
    assert sorted(p.name for p in tls.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]


def test_a_rejected_submission_is_one_line_with_sbatch_s_words_and_exit_2(
    home: Path, fake_slurm: FakeSlurm, app: Path
) -> None:
    fake_slurm.plan("sbatch", "reject:invalid partition specified")

    # TLS on: with protocol tcp, stderr also carries the one warning that TLS is off.
    done = jobstrap("submit", "--system", "slurm", "--set", "queue=debug", str(app))

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "invalid partition specified" in done.stderr
    assert "Traceback" not in done.stderr
    assert [r.status for r in registry.list()] == ["failed"]


def test_submit_wait_exits_with_the_app_s_exit_code(
    home: Path, fake_slurm: FakeSlurm, app: Path
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "jobstrap", "submit", *SLURM, "--set", "poll_interval=1",
         "--wait", str(app)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("run dir"):
            break
    run_dir = Path(lines[-1].split(None, 2)[2].strip())

    (run_dir / "exit_code").write_text("7\n")
    fake_slurm.set_job("100", state="COMPLETED")
    out, err = finish(process)

    assert process.returncode == 7, err
    assert "100: PENDING -> COMPLETED" in out


def test_submit_wait_reports_a_job_that_ended_badly(
    home: Path, fake_slurm: FakeSlurm, app: Path
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "jobstrap", "submit", *SLURM, "--set", "poll_interval=1",
         "--wait", str(app)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("run dir"):
            break

    fake_slurm.set_job("100", state="TIMEOUT", exit="0:15")
    _, err = finish(process)

    assert process.returncode == 128 + 15
    assert "(job 100) ended TIMEOUT" in err


# --- status -------------------------------------------------------------------------------


def save_run(run_id: str, home: Path, job_ids: list[str], name: str = "jobstrap-js1") -> RunRecord:
    run_dir = home / "runs" / run_id
    (run_dir / "logs").mkdir(parents=True)
    record = RunRecord(
        run_id=run_id, kind="app", system="slurm", run_dir=str(run_dir), job_ids=job_ids,
        tags=[name.rsplit("-", 1)[1]],
    )  # fmt: skip
    registry.save(record)
    return record


def add_job(fake: FakeSlurm, job_id: str, name: str = "jobstrap-js1", **values: object) -> None:
    jobs = fake.jobs()
    jobs[job_id] = {"name": name, "array": None, "state": "PENDING", "live": True,
                    "submit": "2024-05-06T10:00:00", "exit": "0:0", **values}  # fmt: skip
    fake.change(jobs=jobs)


def test_status_shows_every_run_s_jobs_in_one_query(home: Path, fake_slurm: FakeSlurm) -> None:
    save_run("run-a", home, ["100"])
    save_run("run-b", home, ["101"])
    add_job(fake_slurm, "100", state="RUNNING")
    add_job(fake_slurm, "101")

    done = jobstrap("status")

    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert rows[0] == ["RUN", "KIND", "JOB", "STATE", "NODES", "REASON", "ELAPSED", "LEFT"]
    assert rows[1] == ["run-a", "app", "100", "RUNNING", "node1", "0:05", "4:55"]
    # A pending job's %L is its whole limit, not time left: not shown.
    assert rows[2][:4] == ["run-b", "app", "101", "PENDING"]
    assert "4:55" not in rows[2]
    assert len(fake_slurm.calls("squeue")) == 1


def test_status_of_one_run_by_prefix(home: Path, fake_slurm: FakeSlurm) -> None:
    save_run("run-a", home, ["100"])
    save_run("run-b", home, ["101"])
    add_job(fake_slurm, "100")
    add_job(fake_slurm, "101")

    done = jobstrap("status", "run-b")

    assert [line.split()[0] for line in done.stdout.splitlines()] == ["RUN", "run-b"]


def test_status_calls_a_job_unknown_everywhere_ended_not_missing(
    home: Path, fake_slurm: FakeSlurm
) -> None:
    save_run("run-a", home, ["4242"])
    add_job(fake_slurm, "100")

    done = jobstrap("status")

    row = done.stdout.splitlines()[1]
    assert row.split()[:4] == ["run-a", "app", "4242", "ENDED"]
    assert "no longer known to the batch system" in row
    assert "MISSING" not in done.stdout


def test_status_with_no_runs_says_so(home: Path) -> None:
    done = jobstrap("status")

    assert done.returncode == 0
    assert done.stdout.startswith("no runs saved in")


def test_status_of_an_unknown_run_is_a_one_line_error(home: Path) -> None:
    done = jobstrap("status", "nope")

    assert done.returncode == 2
    assert done.stderr.strip() == f"error: no run 'nope' in {home}/state/runs " \
        "(jobstrap status lists the runs)"  # fmt: skip


# --- cancel -------------------------------------------------------------------------------


def test_cancel_stops_every_job_of_the_run_and_marks_the_registry(
    home: Path, fake_slurm: FakeSlurm
) -> None:
    save_run("run-a", home, ["100", "101"])
    add_job(fake_slurm, "100", state="RUNNING")
    add_job(fake_slurm, "101")

    done = jobstrap("cancel", "run-a")

    assert done.returncode == 0, done.stderr
    assert {j["state"] for j in fake_slurm.jobs().values()} == {"CANCELLED"}
    assert registry.load("run-a").status == "cancelled"
    assert len(fake_slurm.calls("scancel")) == 1


def test_cancel_never_touches_a_job_that_took_over_a_recycled_id(
    home: Path, fake_slurm: FakeSlurm
) -> None:
    save_run("run-a", home, ["100"])
    add_job(fake_slurm, "100", name="someone-else", state="RUNNING")

    jobstrap("cancel", "run-a")

    assert fake_slurm.jobs()["100"]["state"] == "RUNNING"
    assert fake_slurm.calls("scancel") == []


def test_cancel_all_cancels_only_runs_that_are_not_over(home: Path, fake_slurm: FakeSlurm) -> None:
    save_run("run-a", home, ["100"])
    save_run("run-b", home, ["101"])
    registry.update("run-b", status="finished")
    add_job(fake_slurm, "100")
    add_job(fake_slurm, "101")

    jobstrap("cancel", "--all")

    assert fake_slurm.jobs()["100"]["state"] == "CANCELLED"
    assert fake_slurm.jobs()["101"]["state"] == "PENDING"


def test_cancel_needs_runs_or_all(home: Path) -> None:
    done = jobstrap("cancel")

    assert done.returncode == 2
    assert "name the runs to cancel, or pass --all" in done.stderr


# --- logs ---------------------------------------------------------------------------------


def write_logs(record: RunRecord, job_id: str, out: str, err: str = "") -> None:
    out_path, err_path = record.log_paths(job_id)
    Path(out_path).write_text(out)
    Path(err_path).write_text(err)


def test_logs_prints_the_job_s_output(home: Path) -> None:
    record = save_run("run-a", home, ["100"])
    write_logs(record, "100", "one\ntwo\nthree\n", "oops\n")

    assert jobstrap("logs", "run-a").stdout == "one\ntwo\nthree\n"
    assert jobstrap("logs", "run-a", "--err").stdout == "oops\n"
    assert jobstrap("logs", "run-a", "--tail", "2").stdout == "two\nthree\n"


def test_logs_of_an_array_task(home: Path) -> None:
    record = save_run("run-a", home, ["100_0", "100_1"])
    write_logs(record, "100_0", "task zero\n")
    write_logs(record, "100_1", "task one\n")

    assert jobstrap("logs", "run-a", "--task", "1").stdout == "task one\n"


def test_logs_of_a_task_that_does_not_exist_names_the_range(home: Path) -> None:
    save_run("run-a", home, ["100_0", "100_1"])

    done = jobstrap("logs", "run-a", "--task", "5")

    assert done.returncode == 2
    assert "has tasks 0-1" in done.stderr


def test_logs_before_the_job_wrote_any_is_a_clear_error(home: Path) -> None:
    save_run("run-a", home, ["100"])

    done = jobstrap("logs", "run-a")

    assert done.returncode == 2
    assert "no log yet" in done.stderr


def test_logs_follow_prints_new_lines_until_the_job_ends(home: Path, fake_slurm: FakeSlurm) -> None:
    record = save_run("run-a", home, ["100"])
    add_job(fake_slurm, "100", state="RUNNING")
    out_path = Path(record.log_paths("100")[0])
    out_path.write_text("first\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "jobstrap", "logs", "run-a", "--follow", "--interval", "0.1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "first\n"

    with open(out_path, "a") as handle:
        handle.write("second\n")
    second = process.stdout.readline()
    with open(out_path, "a") as handle:
        handle.write("last\n")
    fake_slurm.set_job("100", state="COMPLETED")
    rest, _ = process.communicate(timeout=60)

    assert second == "second\n"
    assert rest == "last\n"
    assert process.returncode == 0


def test_the_commands_are_documented() -> None:
    for command in ("status", "cancel", "logs", "submit"):
        done = jobstrap(command, "--help")
        assert done.returncode == 0
        assert "Usage: jobstrap " + command in done.stdout


def test_a_run_whose_submitter_died_mid_submit_is_found_by_its_tag(
    home: Path, fake_slurm: FakeSlurm
) -> None:
    record = save_run("run-a", home, [])
    registry.update("run-a", status="submitting", profile={"resolved": {"job_name": "jobstrap"}})
    add_job(fake_slurm, "100", name=f"jobstrap-{record.tags[0]}", state="RUNNING")

    done = jobstrap("status", "run-a")

    assert done.stdout.splitlines()[1].split()[:4] == ["run-a", "app", "100", "RUNNING"]
    assert registry.load("run-a").job_ids == ["100"]
    assert registry.load("run-a").status == "submitted"


def test_cancel_reaches_the_jobs_of_a_run_whose_submitter_died(
    home: Path, fake_slurm: FakeSlurm
) -> None:
    record = save_run("run-a", home, [])
    registry.update("run-a", status="submitting", profile={"resolved": {"job_name": "jobstrap"}})
    add_job(fake_slurm, "100", name=f"jobstrap-{record.tags[0]}", state="RUNNING")

    jobstrap("cancel", "--all")

    assert fake_slurm.jobs()["100"]["state"] == "CANCELLED"
