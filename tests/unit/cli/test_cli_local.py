"""The CLI as a person uses it, driven in a subprocess on the local backend.

Each test runs the real ``jobstrap`` command (jobs are process groups of the embedded
local batch system) and asserts what the terminal shows, the exit code and what is
left running.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Seconds one command may take (a job starts in a few seconds; CI machines are slow).
TIMEOUT = 240.0


@pytest.fixture(scope="module", autouse=True)
def local_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A spool, run root and registry of this module's own (inherited by subprocesses)."""
    root = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JOBSTRAP_LOCAL_SPOOL", str(root / "spool"))
        patch.setenv("JOBSTRAP_RUN_ROOT", str(root / "runs"))
        patch.setenv("JOBSTRAP_STATE_DIR", str(root / "state"))
        patch.setenv("JOBSTRAP_CONFIG_DIR", str(root / "config"))
        patch.setenv("JOBSTRAP_LOCAL_KILL_WAIT", "2")
        patch.delenv("JOBSTRAP_PROFILE", raising=False)
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
