"""``python -m jobstrap.bootstrap --mode in-process``: the app alone in one process.

Launched as a job script launches it: a real process, no MPI, no engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from jobstrap.store.rundir import RunDir

APP = """\
import os, sys
run_dir = os.environ["JOBSTRAP_RUN_DIR"]
with open(os.path.join(run_dir, "seen"), "w") as out:
    out.write(os.environ["JOBSTRAP_DRAIN_FILE"] + "\\n")
    out.write(str("distributed" in sys.modules))
sys.exit(3)
"""


def bootstrap(run: RunDir, app: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI", "DASK_"))}
    return subprocess.run(
        [sys.executable, "-m", "jobstrap.bootstrap", "--run-dir", str(run),
         "--mode", "in-process", "--", str(app)],
        capture_output=True, text=True, timeout=120, env={**clean, **env}, check=False,
    )  # fmt: skip


def test_the_app_runs_alone_with_its_run_dir_drain_file_and_exit_code(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "runs", "run")
    run.drain_file.write_text("")  # left by an earlier launch of a requeued job
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(APP))

    done = bootstrap(run, app)

    assert done.returncode == 3, done.stderr
    assert run.read_exit_code() == 3
    drain_file, imported = (run.path / "seen").read_text().splitlines()
    # No engine loaded, the stale drain file gone, nothing a scheduler writes.
    assert (drain_file, imported, run.drain_file.exists()) == (str(run.drain_file), "False", False)
    assert not run.info_file.exists()
    assert "in-process: the app runs in this process" in done.stderr


def test_several_launched_processes_are_refused_in_one_line(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "runs", "run")
    app = tmp_path / "app.py"
    app.write_text("raise SystemExit(0)\n")

    done = bootstrap(run, app, PMI_RANK="0", PMI_SIZE="2")

    assert done.returncode == 2
    assert "in-process mode runs one process, but 2 were launched" in done.stderr
    assert "Traceback" not in done.stderr
