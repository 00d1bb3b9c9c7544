"""The local queue with real processes: submit, states, walltime, cancel, arrays, launch.

Every test gets a spool of its own and drives ``python -m jobstrap.localq`` exactly as
batch control does (argv, stdout), then waits on the state it expects with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from jobstrap.localq.directives import Directives, parse_directives
from jobstrap.localq.spool import LocalQueueError
from jobstrap.states import JobState
from jobstrap.systems import get_system

DEADLINE = 60.0


# ------------------------------------------------------------------------------ helpers


@pytest.fixture
def spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "spool"
    monkeypatch.setenv("JOBSTRAP_LOCAL_SPOOL", str(path))
    monkeypatch.setenv("JOBSTRAP_LOCAL_KILL_WAIT", "1")
    monkeypatch.chdir(tmp_path)
    return path


@pytest.fixture
def job_script(tmp_path: Path) -> Callable[..., Path]:
    """Writes ``job.sh`` in the test's directory: ``job_script(body, *directives)``."""

    def write(body: str, *directives: str) -> Path:
        return write_script(tmp_path / "job.sh", body, *directives)

    return write


@pytest.fixture
def sleeping_job(spool: Path, job_script: Callable[..., Path], tmp_path: Path) -> tuple[str, int]:
    """A running job (id, shell pid) that sleeps until it is ended."""
    job = submit(job_script("echo $$ > pid\nsleep 300\n"))
    return job, read_pid(tmp_path / "pid")


@pytest.fixture
def directives() -> Directives:
    return Directives()


def localq(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "jobstrap.localq", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"localq {args} failed ({done.returncode}): {done.stderr}")
    return done


def write_script(path: Path, body: str, *directives: str) -> Path:
    header = "\n".join(f"#JOBSTRAP {d}" for d in directives)
    path.write_text(f"#!/usr/bin/env bash\n{header}\n{textwrap.dedent(body)}")
    path.chmod(0o700)
    return path


def submit(script: Path, *options: str) -> str:
    return localq("submit", *options, str(script)).stdout.strip()


def status(*ids: str) -> dict[str, list[str]]:
    lines = localq("status", *ids).stdout.splitlines()
    return {line.split("|")[0]: line.split("|") for line in lines}


def wait_for(
    condition: Callable[[], bool], describe: Callable[[], object], timeout: float = DEADLINE
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s; last seen: {describe()}")


def wait_state(job_id: str, *states: str, timeout: float = DEADLINE) -> list[str]:
    seen: dict[str, list[str]] = {}

    def reached() -> bool:
        seen.clear()
        seen.update(status(job_id))
        return job_id in seen and seen[job_id][1] in states

    wait_for(reached, lambda: seen, timeout)
    return seen[job_id]


def supervisor_pid(spool: Path, job: str) -> int:
    state = json.loads((spool / "jobs" / job / "state.json").read_text())
    return int(state["supervisor"]["pid"])


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def read_pid(path: Path) -> int:
    wait_for(lambda: path.exists() and path.read_text().strip() != "", lambda: path)
    return int(path.read_text().strip())


# ---------------------------------------------------------------------- directives (pure)


def test_directives_are_read_from_the_header_block_only() -> None:
    text = (
        "#!/bin/bash\n#JOBSTRAP --time=60\n# comment\n#JOBSTRAP --ntasks=3\n"
        "echo hi\n#JOBSTRAP --ntasks=9\n"
    )
    assert parse_directives(text) == [("time", "60"), ("ntasks", "3")]


def test_a_directive_value_may_be_quoted() -> None:
    text = '#JOBSTRAP --output="/tmp/a b/%j.out"\n'
    assert parse_directives(text) == [("output", "/tmp/a b/%j.out")]


def test_an_unknown_option_is_rejected_by_name(directives: Directives) -> None:
    with pytest.raises(LocalQueueError, match="--mem"):
        directives.apply("mem", "4G")


def test_array_ranges_steps_and_limit_are_parsed(directives: Directives) -> None:
    directives.apply("array", "0-4:2,7%2")
    assert (directives.array, directives.array_limit) == ([0, 2, 4, 7], 2)


def test_array_indices_beyond_max_array_size_are_rejected(directives: Directives) -> None:
    with pytest.raises(LocalQueueError, match="MaxArraySize=1001"):
        directives.apply("array", "0-1001")


def test_walltime_accepts_seconds_and_clock_forms(directives: Directives) -> None:
    directives.apply("time", "90")
    seconds = directives.time
    directives.apply("time", "00:02:00")
    assert (seconds, directives.time) == (90, 120)


def test_signal_accepts_the_batch_shell_prefix(directives: Directives) -> None:
    directives.apply("signal", "B:USR1@30")
    assert directives.signal == (signal.SIGUSR1, 30)


# ------------------------------------------------------------------------------- submit


def test_submit_prints_increasing_numeric_ids(spool: Path, job_script: Callable[..., Path]) -> None:
    script = job_script("true\n")
    first, second = submit(script), submit(script)
    assert (first.isdigit(), int(second)) == (True, int(first) + 1)


def test_the_spool_is_private(spool: Path, job_script: Callable[..., Path]) -> None:
    submit(job_script("true\n"))
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700


def test_a_job_that_exits_zero_completes_with_its_output_and_environment(
    spool: Path, tmp_path: Path, job_script: Callable[..., Path]
) -> None:
    script = job_script(
        'echo "id=$JOBSTRAP_JOB_ID ntasks=$JOBSTRAP_NTASKS task=[$JOBSTRAP_ARRAY_TASK_ID]"\n',
        "--output=out/%j.out",
        "--ntasks=4",
        "--job-name=hello",
    )
    job = submit(script)
    line = wait_state(job, "COMPLETED")
    assert line[:5] == [job, "COMPLETED", "0", "None", "hello"]
    assert line[6] == ""  # an ended job has no time left
    assert (tmp_path / "out" / f"{job}.out").read_text() == f"id={job} ntasks=4 task=[]\n"


def test_a_job_that_exits_non_zero_fails_with_its_exit_code(
    spool: Path, job_script: Callable[..., Path]
) -> None:
    job = submit(job_script("exit 7\n"))
    assert wait_state(job, "COMPLETED", "FAILED")[1:3] == ["FAILED", "7"]


def test_stderr_goes_to_the_error_file_when_one_is_given(
    spool: Path, tmp_path: Path, job_script: Callable[..., Path]
) -> None:
    script = job_script(
        "echo out; echo err >&2\n",
        "--output=%x-%j.out",
        "--error=%x-%j.err",
        "--job-name=split",
    )
    job = submit(script)
    wait_state(job, "COMPLETED")
    out, err = (
        (tmp_path / f"split-{job}.out").read_text(),
        (tmp_path / f"split-{job}.err").read_text(),
    )
    assert (out, err) == ("out\n", "err\n")


def test_command_line_options_override_script_directives(
    spool: Path, tmp_path: Path, job_script: Callable[..., Path]
) -> None:
    script = job_script("echo $JOBSTRAP_NTASKS\n", "--ntasks=2", "--output=o%j")
    job = submit(script, "--ntasks=5")
    wait_state(job, "COMPLETED")
    assert (tmp_path / f"o{job}").read_text() == "5\n"


def test_a_bad_directive_fails_the_submission_with_a_message(
    spool: Path, job_script: Callable[..., Path]
) -> None:
    script = job_script("true\n", "--partition=debug")
    done = localq("submit", str(script), check=False)
    assert (done.returncode, "--partition" in done.stderr, done.stdout) == (1, True, "")


def test_status_of_an_unknown_id_prints_nothing(spool: Path) -> None:
    assert localq("status", "999").stdout == ""


def test_limits_reports_the_array_size_limit_and_whose_ids_these_are(spool: Path) -> None:
    lines = localq("limits").stdout.splitlines()

    assert lines == ["MaxArraySize=1001", f"Controller={socket.gethostname()}:{spool.resolve()}"]


# ------------------------------------------------------------------------------- arrays


def test_an_array_runs_every_task_with_its_index(
    spool: Path, tmp_path: Path, job_script: Callable[..., Path]
) -> None:
    script = job_script(
        "echo $JOBSTRAP_ARRAY_TASK_ID $JOBSTRAP_ARRAY_JOB_ID\n",
        "--array=0-3",
        "--output=logs/%A_%a.out",
    )
    job = submit(script)
    wait_for(
        lambda: (
            all(line[1] == "COMPLETED" for line in status(job).values()) and len(status(job)) == 4
        ),
        lambda: status(job),
    )
    outputs = [(tmp_path / "logs" / f"{job}_{i}.out").read_text() for i in range(4)]
    assert outputs == [f"{i} {job}\n" for i in range(4)]


def test_status_of_one_array_task_names_only_that_task(
    spool: Path, job_script: Callable[..., Path]
) -> None:
    job = submit(job_script("exit $JOBSTRAP_ARRAY_TASK_ID\n", "--array=0-2"))
    wait_state(f"{job}_2", "FAILED")
    assert list(status(f"{job}_2")) == [f"{job}_2"]


def test_an_array_limit_bounds_the_tasks_running_at_once(
    spool: Path, tmp_path: Path, job_script: Callable[..., Path]
) -> None:
    script = job_script(
        'date +%s.%N > "spans/$JOBSTRAP_ARRAY_TASK_ID.start"; sleep 0.5;'
        ' date +%s.%N > "spans/$JOBSTRAP_ARRAY_TASK_ID.end"\n',
        "--array=0-5%2",
    )
    (tmp_path / "spans").mkdir()
    job = submit(script)
    wait_for(
        lambda: len(status(job)) == 6 and all(v[1] == "COMPLETED" for v in status(job).values()),
        lambda: status(job),
    )
    spans = [
        (
            float((tmp_path / f"spans/{i}.start").read_text()),
            float((tmp_path / f"spans/{i}.end").read_text()),
        )
        for i in range(6)
    ]
    most = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert most <= 2


# ------------------------------------------------------------------------ walltime/signals


def test_a_job_past_its_walltime_is_killed_and_times_out(
    spool: Path, tmp_path: Path, job_script: Callable[..., Path]
) -> None:
    # It ignores SIGTERM, so only the SIGKILL after the grace ends it.
    script = job_script("trap '' TERM\necho $$ > pid\nsleep 300\n", "--time=2")
    job = submit(script)
    pid = read_pid(tmp_path / "pid")
    line = wait_state(job, "TIMEOUT", "FAILED", "COMPLETED")
    assert (line[1], line[3], pid_alive(pid)) == ("TIMEOUT", "TimeLimit", False)


def test_the_signal_directive_warns_the_job_before_its_walltime(
    spool: Path, tmp_path: Path, job_script: Callable[..., Path]
) -> None:
    script = job_script(
        "trap 'echo warned > warned' USR1\nfor i in $(seq 100); do sleep 0.1; done\n",
        "--time=3",
        "--signal=USR1@2",
    )
    job = submit(script)
    line = wait_state(job, "TIMEOUT", "COMPLETED", "FAILED")
    assert (line[1], (tmp_path / "warned").read_text()) == ("TIMEOUT", "warned\n")


def test_signal_delivers_a_signal_to_a_running_job(
    spool: Path, tmp_path: Path, job_script: Callable[..., Path]
) -> None:
    script = job_script(
        "trap 'echo got > got; exit 0' USR2\necho $$ > pid\nwhile true; do sleep 0.1; done\n",
    )
    job = submit(script)
    read_pid(tmp_path / "pid")
    localq("signal", "--signal=USR2", job)
    assert (wait_state(job, "COMPLETED", "FAILED")[1], (tmp_path / "got").read_text()) == (
        "COMPLETED",
        "got\n",
    )


# --------------------------------------------------------------------------------- cancel


def test_cancel_ends_a_running_job_as_cancelled(sleeping_job: tuple[str, int]) -> None:
    job, pid = sleeping_job
    localq("cancel", job)
    line = wait_state(job, "CANCELLED", "FAILED", "COMPLETED")
    assert (line[1], pid_alive(pid)) == ("CANCELLED", False)


def test_cancel_reaches_processes_that_left_the_process_group(
    spool: Path, tmp_path: Path, job_script: Callable[..., Path]
) -> None:
    script = job_script("echo $$ > shell\nsetsid sleep 300 &\necho $! > pid\nsleep 300\n")
    job = submit(script)
    shell, escaped = read_pid(tmp_path / "shell"), read_pid(tmp_path / "pid")
    wait_for(lambda: os.getsid(escaped) != os.getsid(shell), lambda: "setsid has not run yet")
    localq("cancel", job)
    wait_state(job, "CANCELLED")
    wait_for(lambda: not pid_alive(escaped), lambda: f"pid {escaped} still alive", timeout=10)


def test_processes_left_behind_by_a_finished_script_are_ended(
    spool: Path, tmp_path: Path, job_script: Callable[..., Path]
) -> None:
    job = submit(job_script("nohup sleep 300 >/dev/null 2>&1 &\necho $! > pid\n"))
    leftover = read_pid(tmp_path / "pid")
    wait_state(job, "COMPLETED")
    assert not pid_alive(leftover)


def test_cancel_of_a_pending_array_task_keeps_it_from_starting(
    spool: Path, tmp_path: Path, job_script: Callable[..., Path]
) -> None:
    script = job_script("touch ran_$JOBSTRAP_ARRAY_TASK_ID; sleep 2\n", "--array=0-1%1")
    job = submit(script)
    wait_for(lambda: (tmp_path / "ran_0").exists(), lambda: status(job))
    localq("cancel", f"{job}_1")
    wait_state(f"{job}_0", "COMPLETED")
    assert (status(job)[f"{job}_1"][1], (tmp_path / "ran_1").exists()) == ("CANCELLED", False)


def test_find_lists_only_live_jobs_of_that_name(spool: Path, tmp_path: Path) -> None:
    live = submit(write_script(tmp_path / "a.sh", "sleep 300\n", "--job-name=wanted"))
    done = submit(write_script(tmp_path / "b.sh", "true\n", "--job-name=wanted"))
    other = submit(write_script(tmp_path / "c.sh", "sleep 300\n", "--job-name=other"))
    wait_state(done, "COMPLETED")
    try:
        assert localq("find", "wanted").stdout.split() == [live]
    finally:
        localq("cancel", live, other)


# ---------------------------------------------------------------------- lost supervisor


def test_a_killed_supervisor_is_noticed_and_its_job_ended(
    spool: Path, sleeping_job: tuple[str, int]
) -> None:
    job, pid = sleeping_job
    supervisor = supervisor_pid(spool, job)
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: not pid_alive(supervisor), lambda: f"supervisor pid {supervisor}")
    line = status(job)[job]
    assert (line[1], line[3]) == ("FAILED", "SupervisorLost")
    wait_for(lambda: not pid_alive(pid), lambda: f"job pid {pid} still alive", timeout=10)


def test_a_job_whose_processes_vanished_with_the_supervisor_is_missing(
    spool: Path, sleeping_job: tuple[str, int]
) -> None:
    job, pid = sleeping_job
    supervisor = supervisor_pid(spool, job)
    os.kill(supervisor, signal.SIGKILL)
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid) and not pid_alive(supervisor), lambda: pid)
    assert status(job)[job][1:4] == ["MISSING", "", "SupervisorLost"]


# ------------------------------------------------------------------------------- launch


def test_launch_gives_every_rank_its_rank_and_the_world_size(tmp_path: Path) -> None:
    done = localq("launch", "-n", "3", "--", "sh", "-c", 'echo "$PMI_RANK/$PMI_SIZE"', check=False)
    assert (done.returncode, sorted(done.stdout.split())) == (0, ["0/3", "1/3", "2/3"])


def test_launch_exits_with_a_failing_ranks_code_and_stops_the_others(tmp_path: Path) -> None:
    started = time.monotonic()
    done = localq(
        "launch",
        "-n",
        "2",
        "--",
        "sh",
        "-c",
        '[ "$PMI_RANK" = 1 ] && exit 5; exec sleep 300',
        check=False,
    )
    assert (done.returncode, time.monotonic() - started < 60) == (5, True)


# ------------------------------------------------------------------ through batch control


def test_the_batchctl_submits_watches_and_cancels_local_jobs(
    spool: Path, job_script: Callable[..., Path]
) -> None:
    from jobstrap.batchctl.control import BatchControl

    batchctl = BatchControl(get_system("local"))
    script = job_script("sleep 300\n", "--job-name=via-batchctl")
    job = batchctl.system.parse_submit(
        batchctl.run(batchctl.system.submit_argv(str(script), _Spec())).stdout
    )
    wait_for(
        lambda: batchctl.status([job])[job].state is JobState.RUNNING,
        lambda: batchctl.status([job]),
    )
    batchctl.cancel([job])
    wait_for(
        lambda: batchctl.status([job])[job].state is JobState.CANCELLED,
        lambda: batchctl.status([job]),
    )


class _Spec:
    """The one JobSpec attribute ``submit_argv`` reads."""

    submit_args: tuple[str, ...] = ()


def test_status_shows_a_running_task_s_elapsed_and_time_left(
    spool: Path, job_script: Callable[..., Path]
) -> None:
    job = submit(job_script("sleep 30\n", "--time=100"))
    line = wait_state(job, "RUNNING")
    elapsed, left = int(line[5]), int(line[6])
    assert 0 <= elapsed <= 30
    assert elapsed + left in (99, 100)  # both truncated from the same instant
    record = get_system("local").parse_status("|".join(line))[job]
    assert record.time_left.count(":") == 2
    localq("cancel", job)
    ended = wait_state(job, "CANCELLED")
    assert ended[6] == ""  # an ended task has no time left


def test_a_task_claimed_but_not_yet_launched_already_shows_its_times(
    spool: Path, tmp_path: Path, job_script: Callable[..., Path]
) -> None:
    # The supervisor marks a task RUNNING before it opens the output and starts the
    # script. An output file that is a FIFO holds it in that window (opening a FIFO
    # for writing waits for a reader), so the window can be looked at, not raced.
    fifo = tmp_path / "held.out"
    os.mkfifo(fifo)
    job = submit(job_script("true\n", "--time=100", f"--output={fifo}"))
    line = wait_state(job, "RUNNING")
    assert line[3] == "Starting"
    assert (line[5].isdigit(), line[6].isdigit()) == (True, True)
    assert int(line[5]) + int(line[6]) in (99, 100)
    with open(fifo, "rb") as reader:  # let the launch go on
        wait_state(job, "COMPLETED")
        reader.read()


def test_a_retitled_process_keeps_its_task_marker() -> None:
    from psutil._common import parse_environ_block

    from jobstrap.localq.processes import parse_environ

    # What /proc/PID/environ holds after a process (Ray's agents) wrote its title over
    # the start of the block: the title, zeros, then the entries that survived.
    block = b"ray::DashboardAgent\0\0\0\0HOME=/root\0JOBSTRAP_LOCALQ_JOB=7.0\0"

    assert parse_environ(block)["JOBSTRAP_LOCALQ_JOB"] == "7.0"
    assert "JOBSTRAP_LOCALQ_JOB" not in parse_environ_block(block.decode())  # psutil's view
