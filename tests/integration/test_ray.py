"""``jobstrap submit --engine ray`` on the real Slurm test cluster.

Rank 0 starts the Ray head on the first node and runs the app there; one Ray
worker node starts on each other node. The hosts have ``eth0`` and ``ib0`` on two
subnets, so the Ray nodes' addresses say which network Ray uses. Needs Ray in the
venv the cluster runs (``pip install -e '.[ray]'``: every host shares it).

Run on the login node::

    scripts/testcluster on head .venv/bin/pytest -m cluster tests/integration/test_ray.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import COMPUTE_NODES, IB0_ADDRESSES, PYTHON, TestCluster, on

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs the Slurm test cluster"),
]
pytest.importorskip("ray")

TIMEOUT = 900

APP = """\
import sys
import ray

ray.init(address="auto")

@ray.remote
def square(x):
    return x * x

alive = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])
print("NODES", " ".join(alive), flush=True)
print("SUM", sum(ray.get([square.remote(i) for i in range(100)])), flush=True)
sys.exit(3)
"""

#: Lists the processes whose environment names a run directory (argv[1]).
LEFT_OVER = """\
import sys, psutil
for p in psutil.process_iter(["cmdline"]):
    try:
        if p.environ().get("JOBSTRAP_RUN_DIR") == sys.argv[1]:
            print(p.pid, " ".join(p.info["cmdline"] or []))
    except (psutil.Error, OSError):
        pass
"""


def _submit(app: Path, scratch: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "JOBSTRAP_STATE_DIR": str(scratch / "state"),
           "JOBSTRAP_RUN_ROOT": str(scratch / "runs")}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "jobstrap", "submit", "--profile", "testcluster",
         "--engine", "ray", "--nodes", "3", "--set", "cores=2", "--set", "memory=2GiB",
         "--set", "poll_interval=1", "--wait", str(app)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def _finish(process: subprocess.Popen[str]) -> tuple[int, Path, str]:
    out, err = process.communicate(timeout=TIMEOUT)
    run_dir = Path(
        next(line.split()[-1] for line in out.splitlines() if line.startswith("run dir"))
    )
    app_out = "".join(p.read_text() for p in (run_dir / "logs").glob("*.out"))
    assert "SUM" in app_out, (
        out + err + "".join(p.read_text()[-3000:] for p in (run_dir / "logs").glob("*.err"))
    )
    return process.returncode, run_dir, app_out


def _left_on_any_node(run_dir: Path) -> dict[str, str]:
    left = {}
    for host in COMPUTE_NODES:
        done = on(host, [PYTHON, "-c", LEFT_OVER, str(run_dir)], check=True)
        if done.stdout.strip():
            left[host] = done.stdout
    return left


def _nodes_line(out: str) -> list[str]:
    return next(line.split()[1:] for line in out.splitlines() if line.startswith("NODES"))


def test_a_ray_app_on_three_nodes_uses_ib0_and_ends_with_its_exit_code(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    app = shared_scratch / "app.py"
    app.write_text(APP)

    code, run_dir, out = _finish(_submit(app, shared_scratch))

    assert code == 3
    assert "SUM 328350" in out
    nodes = _nodes_line(out)
    assert len(nodes) == 3
    assert set(nodes) <= set(IB0_ADDRESSES.values())  # every Ray node on ib0
    assert json.loads((run_dir / "scheduler.json").read_text())["type"] == "ray"
    assert _left_on_any_node(run_dir) == {}


def test_two_ray_runs_started_at_once_on_the_same_nodes_both_finish(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    app = shared_scratch / "app.py"
    app.write_text(APP)

    first, second = _submit(app, shared_scratch), _submit(app, shared_scratch)
    results = [_finish(first), _finish(second)]

    for code, run_dir, out in results:
        assert code == 3
        assert "SUM 328350" in out
        assert len(_nodes_line(out)) == 3  # its own nodes, none of the other run's
        assert _left_on_any_node(run_dir) == {}
