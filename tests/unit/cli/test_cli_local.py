"""The CLI as a person uses it, driven in a subprocess on the local backend.

Each test runs the real ``jobstrap`` command (jobs are process groups of the embedded
local batch system) and asserts what the terminal shows, the exit code and what is
left running.
"""

from __future__ import annotations

import ast
import os
import pty
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import local_backend_env

#: Seconds one command may take (a job starts in a few seconds; CI machines are slow).
TIMEOUT = 240.0


@pytest.fixture(scope="module", autouse=True)
def local_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A spool, run root and registry of this module's own (inherited by subprocesses)."""
    root = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as patch:
        local_backend_env(patch, root)
        yield root


def jobstrap(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobstrap", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        env=dict(os.environ),
        check=False,
    )


ARGV_APP = "import sys\nprint('ARGV', repr(sys.argv[1:]))\n"


def printed_argv(text: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith("ARGV "))
    value = ast.literal_eval(line[len("ARGV ") :])
    assert isinstance(value, list)
    return value


# ------------------------------------------------------- options after the app are the app's


def test_run_passes_every_word_after_the_app_to_the_app_unchanged(tmp_path: Path) -> None:
    app = tmp_path / "argv.py"
    app.write_text(ARGV_APP)

    done = jobstrap("run", "--system", "local", str(app), "-s", "5", "--wait", "--", "-p", "x")

    assert done.returncode == 0, done.stderr
    assert printed_argv(done.stdout) == ["-s", "5", "--wait", "--", "-p", "x"]


def test_submit_passes_every_word_after_the_app_to_the_app_unchanged(tmp_path: Path) -> None:
    app = tmp_path / "argv.py"
    app.write_text(ARGV_APP)

    done = jobstrap("submit", "--system", "local", "--wait", str(app), "-s", "5", "--nodes", "7")

    assert done.returncode == 0, done.stderr
    stdout_log = next(
        line.split(None, 1)[1] for line in done.stdout.splitlines() if line.startswith("stdout ")
    )
    assert printed_argv(Path(stdout_log).read_text()) == ["-s", "5", "--nodes", "7"]


def test_an_unknown_option_before_the_app_is_a_usage_error_and_submits_nothing(
    tmp_path: Path, local_env: Path
) -> None:
    app = tmp_path / "argv.py"
    app.write_text(ARGV_APP)
    before = sorted((local_env / "state").rglob("*"))

    done = jobstrap("submit", "--bogus", str(app))

    assert done.returncode == 2
    assert "No such option '--bogus'" in done.stderr
    assert sorted((local_env / "state").rglob("*")) == before


# ------------------------------------------------------------ a failing app says why


MISSING_MODULE_APP = "import nonexistent_pkg_xyz  # noqa\n"
MISSING = "ModuleNotFoundError: No module named 'nonexistent_pkg_xyz'"


def test_run_ends_with_the_apps_exception_and_the_log_path(tmp_path: Path) -> None:
    app = tmp_path / "broken.py"
    app.write_text(MISSING_MODULE_APP)

    done = jobstrap("run", "--system", "local", str(app))

    assert done.returncode != 0
    last_lines = done.stderr.splitlines()[-8:]
    assert MISSING in last_lines, done.stderr
    assert f'  File "{app}", line 1, in <module>' in last_lines  # the app's frame, not ours
    assert "pip install nonexistent_pkg_xyz" in done.stderr
    log = last_lines[-1].removeprefix("logs: ")
    assert log.endswith(".err")
    assert MISSING in Path(log).read_text()


def test_submit_wait_ends_with_the_apps_exception_and_the_log_path(tmp_path: Path) -> None:
    app = tmp_path / "broken.py"
    app.write_text(MISSING_MODULE_APP)

    done = jobstrap("submit", "--system", "local", "--wait", str(app))

    assert done.returncode != 0
    last_lines = done.stderr.splitlines()[-6:]
    assert MISSING in last_lines, done.stderr
    assert any(line.startswith("error: run ") and line.endswith(MISSING) for line in last_lines)
    log = last_lines[-1].removeprefix("logs: ")
    assert log.endswith(".err")
    assert MISSING in Path(log).read_text()


def test_an_app_that_exits_non_zero_without_a_traceback_still_names_its_log(
    tmp_path: Path,
) -> None:
    app = tmp_path / "exits.py"
    app.write_text("import sys\nsys.exit('no input files found')\n")

    done = jobstrap("run", "--system", "local", str(app))

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    error = next(line for line in done.stderr.splitlines() if line.startswith("error: run "))
    assert error.endswith("(exit 1): no input files found"), done.stderr
    assert done.stderr.splitlines()[-1].startswith("logs: ")


# ------------------------------------------------------ what an interrupt does


SLEEPER_APP = "import time\nprint('STARTED', flush=True)\ntime.sleep(600)\n"


class Command:
    """A ``jobstrap`` command running in the background; its stdout and stderr merged."""

    def __init__(self, *args: str, stdin: int | None = subprocess.DEVNULL) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jobstrap", *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.partial = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        # By character: a question waits for its answer on the line it is asked.
        assert self.process.stdout is not None
        while char := self.process.stdout.read(1):
            if char == "\n":
                self.lines.put(self.partial)
                self.partial = ""
            else:
                self.partial += char
        if self.partial:
            self.lines.put(self.partial)

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> str:
        """The first line (or unfinished line) containing ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if text in self.partial:
                    return self.partial
                continue
            self.seen.append(line)
            if text in line:
                return line
        pytest.fail(f"no line with {text!r} within {timeout} s; saw {[*self.seen, self.partial]}")

    def finish(self) -> tuple[int, list[str]]:
        """The exit code and every line printed."""
        code = self.process.wait(timeout=120)
        time.sleep(0.2)  # let the reader thread drain the pipe
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code, self.seen


def active(job_id: str) -> bool:
    from jobstrap.batchctl.control import BatchControl

    record = BatchControl.for_system("local").status([job_id]).get(job_id)
    return record is not None and record.state.is_active


def gone_within(job_id: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while active(job_id):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """An app that runs until it is stopped; every run started is cancelled afterwards."""
    app = tmp_path / "sleeper.py"
    app.write_text(SLEEPER_APP)
    runs: list[str] = []
    yield app, runs
    for run_id in runs:
        jobstrap("cancel", run_id)


def started_submit(app: Path, runs: list[str], **popen: Any) -> tuple[Command, str, str]:
    command = Command("submit", "--system", "local", "--set", "walltime=5m", "--wait", str(app),
                      **popen)  # fmt: skip
    run_id = command.wait_for("run      ").split()[1]
    runs.append(run_id)
    job_id = command.wait_for("job      ").split()[1]
    command.wait_for("-> RUNNING")
    return command, run_id, job_id


def started_run(app: Path, runs: list[str], **popen: Any) -> tuple[Command, str, str]:
    command = Command("run", "--system", "local", "--set", "walltime=5m", str(app), **popen)
    words = command.wait_for(": job ").split()  # run RUN: job N on local
    run_id, job_id = words[1].rstrip(":"), words[3]
    runs.append(run_id)
    command.wait_for("STARTED")
    return command, run_id, job_id


def test_submit_wait_detaches_on_sigterm_and_says_how_to_reattach(
    sleeper: tuple[Path, list[str]],
) -> None:
    command, run_id, job_id = started_submit(*sleeper)

    command.process.send_signal(signal.SIGTERM)
    code, lines = command.finish()

    assert code == 143
    assert lines[-1] == (
        f"SIGTERM: detached; run {run_id} (job {job_id}) keeps running: "
        f"jobstrap logs -f {run_id} | jobstrap status {run_id} | jobstrap cancel {run_id}"
    )
    assert active(job_id)


def test_submit_wait_detaches_on_ctrl_c_without_a_terminal(
    sleeper: tuple[Path, list[str]],
) -> None:
    command, run_id, job_id = started_submit(*sleeper)

    command.process.send_signal(signal.SIGINT)
    code, lines = command.finish()

    assert code == 130
    assert lines[-1].startswith(f"SIGINT: detached; run {run_id} (job {job_id}) keeps running")
    assert active(job_id)


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["sigterm", "ctrl-c"]
)
def test_run_cancels_its_job_on_a_signal_without_a_terminal(
    sleeper: tuple[Path, list[str]], sig: signal.Signals, code: int
) -> None:
    command, run_id, job_id = started_run(*sleeper)

    command.process.send_signal(sig)
    exit_code, lines = command.finish()

    assert exit_code == code
    assert lines[-1] == f"{sig.name}: cancelled run {run_id} (job {job_id})"
    assert gone_within(job_id, 60)


def test_in_a_terminal_ctrl_c_asks_and_yes_cancels_a_submitted_job(
    sleeper: tuple[Path, list[str]],
) -> None:
    terminal, keyboard = pty.openpty()  # stdin is a terminal: a person is there to ask
    try:
        command, run_id, job_id = started_submit(*sleeper, stdin=keyboard)

        command.process.send_signal(signal.SIGINT)
        command.wait_for(f"cancel run {run_id} (job {job_id})? [y/N]")
        os.write(terminal, b"y\n")
        code, lines = command.finish()
    finally:
        os.close(terminal)
        os.close(keyboard)

    assert code == 130
    assert lines[-1] == f"SIGINT: cancelled run {run_id} (job {job_id})"
    assert gone_within(job_id, 60)


def test_in_a_terminal_ctrl_c_on_run_asks_and_no_detaches(
    sleeper: tuple[Path, list[str]],
) -> None:
    terminal, keyboard = pty.openpty()
    try:
        command, run_id, job_id = started_run(*sleeper, stdin=keyboard)

        command.process.send_signal(signal.SIGINT)
        command.wait_for(f"cancel run {run_id} (job {job_id})? [Y/n]")
        os.write(terminal, b"n\n")
        code, lines = command.finish()
    finally:
        os.close(terminal)
        os.close(keyboard)

    assert code == 130
    assert lines[-1].startswith(f"SIGINT: detached; run {run_id} (job {job_id}) keeps running")
    assert active(job_id)


def test_in_a_terminal_a_second_ctrl_c_at_the_question_cancels(
    sleeper: tuple[Path, list[str]],
) -> None:
    terminal, keyboard = pty.openpty()
    try:
        command, run_id, job_id = started_submit(*sleeper, stdin=keyboard)

        command.process.send_signal(signal.SIGINT)
        command.wait_for("(Ctrl-C again: cancel)")
        command.process.send_signal(signal.SIGINT)
        code, lines = command.finish()
    finally:
        os.close(terminal)
        os.close(keyboard)

    assert code == 130
    assert lines[-1] == f"SIGINT: cancelled run {run_id} (job {job_id})"
    assert gone_within(job_id, 60)
