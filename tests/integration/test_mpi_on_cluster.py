"""MPI from the project's virtualenv launches ranks across the test cluster's nodes.

jobstrap's batch mode MPI-launches a scheduler, a client and workers inside one
allocation, with the mpich wheel and mpi4py from PyPI.  These tests prove the
two launchers it relies on work across hosts: ``srun --mpi=pmi2`` and
``mpiexec`` (hydra, which itself starts its proxies through srun) inside an
sbatch job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

import pytest
from conftest import COMPUTE_NODES, TestCluster

pytestmark = pytest.mark.cluster

# Rank 0 prints one JSON line for the whole world, so the output of ranks on
# different hosts cannot interleave.
HELLO = """\
import json, socket
from mpi4py import MPI

comm = MPI.COMM_WORLD
seen = comm.gather({"rank": comm.Get_rank(), "size": comm.Get_size(),
                    "host": socket.gethostname()}, root=0)
if comm.Get_rank() == 0:
    print("HELLO " + json.dumps(seen), flush=True)
"""


def _hello_script(directory: Path) -> Path:
    path = directory / "hello_mpi.py"
    path.write_text(HELLO)
    return path


class Rank(TypedDict):
    rank: int
    size: int
    host: str


def _ranks(output: str) -> list[Rank]:
    lines = [line for line in output.splitlines() if line.startswith("HELLO ")]
    assert len(lines) == 1, output
    ranks: list[Rank] = json.loads(lines[0].removeprefix("HELLO "))
    return ranks


def test_srun_with_pmi2_launches_one_mpi_world_across_three_nodes(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    hello = _hello_script(shared_scratch)
    nodes = len(COMPUTE_NODES)

    result = testcluster.on(
        testcluster.login_host,
        ["srun", "--mpi=pmi2", f"--nodes={nodes}", f"--ntasks={nodes}", testcluster.python, hello],
        cwd=shared_scratch,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    ranks = _ranks(result.stdout)
    assert sorted(r["rank"] for r in ranks) == list(range(nodes))
    assert {r["size"] for r in ranks} == {nodes}
    assert {r["host"] for r in ranks} == set(COMPUTE_NODES)


def test_mpiexec_inside_sbatch_launches_one_mpi_world_across_three_nodes(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    hello = _hello_script(shared_scratch)
    nodes = len(COMPUTE_NODES)
    mpiexec = testcluster.venv_bin / "mpiexec"
    job = testcluster.sbatch(
        f"{mpiexec} -n {nodes} {testcluster.python} {hello}\n",
        shared_scratch,
        f"--nodes={nodes}",
        "--ntasks-per-node=1",
    )

    rows = testcluster.wait_job(job, timeout=180)

    assert [r["State"] for r in rows] == ["COMPLETED"], job.read_output()
    ranks = _ranks(job.read_output())
    assert sorted(r["rank"] for r in ranks) == list(range(nodes))
    assert {r["size"] for r in ranks} == {nodes}
    assert {r["host"] for r in ranks} == set(COMPUTE_NODES)


def test_srun_with_pmix_gives_every_task_its_own_pmix_rank(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    # The mpich wheel does not speak PMIx; check Slurm's PMIx server itself, the
    # part an Open MPI build would use.
    nodes = len(COMPUTE_NODES)

    result = testcluster.on(
        testcluster.login_host,
        [
            "srun",
            "--mpi=pmix",
            f"--nodes={nodes}",
            f"--ntasks={nodes}",
            "sh",
            "-c",
            'echo "$PMIX_RANK $(hostname)"',
        ],
        cwd=shared_scratch,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    pairs = [line.split() for line in result.stdout.splitlines() if line.strip()]
    assert sorted(int(rank) for rank, _ in pairs) == list(range(nodes))
    assert {host for _, host in pairs} == set(COMPUTE_NODES)
