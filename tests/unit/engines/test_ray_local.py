"""``jobstrap submit --engine ray`` end to end on the local backend, with real Ray.

The job is a real batch job of the embedded local batch system: rank 0 starts a
Ray head and runs the app, rank 1 starts a Ray worker node on the same host (a
one-node job splits its node in two Ray nodes). Ray is heavy (a few hundred MB
and seconds of CPU per node), so there are only two tests: one run, and two runs
at the same moment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import local_backend_env, processes_of_run

pytest.importorskip("ray")

#: Seconds one run may take: Ray's start-up on a busy two-core machine is slow.
TIMEOUT = 600.0

APP = """\
import sys
import ray

ray.init(address="auto")

@ray.remote
def square(x):
    return x * x

alive = [n for n in ray.nodes() if n["Alive"]]
total = sum(ray.get([square.remote(i) for i in range(100)]))
print("NODES", len(alive), "SUM", total, flush=True)
sys.exit(3)
"""


@pytest.fixture(scope="module", autouse=True)
def local_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A spool, run root and registry of this module's own (inherited by subprocesses)."""
    root = tmp_path_factory.mktemp("ray")
    with pytest.MonkeyPatch.context() as patch:
        local_backend_env(patch, root)
        patch.delenv("RAY_ADDRESS", raising=False)
        yield root


def _submit(app: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "jobstrap", "submit", "--system", "local", "--engine", "ray",
         "--wait", str(app)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )  # fmt: skip


def _finish(process: subprocess.Popen[str]) -> tuple[int, Path, str]:
    """Exit code, run directory and the app's output of one submission."""
    out, err = process.communicate(timeout=TIMEOUT)
    run_dir = Path(
        next(line.split()[-1] for line in out.splitlines() if line.startswith("run dir"))
    )
    app_out = "".join(p.read_text() for p in (run_dir / "logs").glob("*.out"))
    assert "NODES" in app_out, f"{out}\n{err}\n" + "".join(
        p.read_text()[-3000:] for p in (run_dir / "logs").glob("*.err")
    )
    return process.returncode, run_dir, app_out


def test_a_ray_app_joins_with_ray_init_auto_and_the_job_ends_with_its_code(
    tmp_path: Path,
) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)

    code, run_dir, out = _finish(_submit(app))

    assert code == 3
    assert "NODES 2 SUM 328350" in out
    head = json.loads((run_dir / "scheduler.json").read_text())
    assert head["type"] == "ray"
    # The run tore its nodes down itself: their private directory is gone...
    assert not Path(head["temp_dir"]).exists()
    # ...and so is every process of the run.
    assert processes_of_run(run_dir) == []
    # The CA's key lived only while the nodes joined; the token stays private.
    assert not (run_dir / "ray" / "ca-key.pem").exists()
    assert (run_dir / "ray" / "token").stat().st_mode & 0o077 == 0


def test_two_runs_started_together_on_one_host_never_see_each_other(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)

    first, second = _submit(app), _submit(app)
    results = [_finish(first), _finish(second)]

    for code, run_dir, out in results:
        assert code == 3
        assert "NODES 2 SUM 328350" in out  # its own two nodes, not the other run's
        assert processes_of_run(run_dir) == []
    heads = [json.loads((r / "scheduler.json").read_text()) for _, r, _ in results]
    assert heads[0]["address"] != heads[1]["address"]
    assert heads[0]["temp_dir"] != heads[1]["temp_dir"]
