"""Where a worker rank's workers run: the node layout's grouping, standing ranks, one host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jobstrap.bootstrap.options import parse_args
from jobstrap.bootstrap.placement import (
    NODE_LAYOUT_MAX_RANKS,
    Peer,
    Placement,
    placement,
    single_host,
    split_group,
)
from jobstrap.bootstrap.ranks import World

#: Rank 0 scheduler, rank 1 client, three worker ranks on n1 and one on n2.
HOSTS = ["n1", "n1", "n1", "n1", "n1", "n2"]


@pytest.fixture
def peers() -> list[Peer]:
    return [Peer(host, 100 + rank, (rank,)) for rank, host in enumerate(HOSTS)]


def mpi_world(rank: int, hosts: list[str] = HOSTS) -> World:
    comm: Any = object()  # only its presence matters here: ranks agree through MPI
    return World(rank=rank, size=len(hosts), source="mpi", comm=comm, hostname=hosts[rank])


def test_the_node_layout_gives_a_host_s_worker_ranks_to_its_first(peers: list[Peer]) -> None:
    options = parse_args(["--run-dir", "/r"])

    first = placement(options, mpi_world(2), peers)
    other = placement(options, mpi_world(3), peers)
    alone = placement(options, mpi_world(5), peers)

    assert first == Placement((2, 3, 4), cpus=frozenset({2, 3, 4}))
    assert other == Placement((), leader=peers[2])
    assert alone == Placement((5,))  # fewer than NODE_LAYOUT_MIN_RANKS on n2


def test_two_worker_ranks_on_a_host_are_grouped_too() -> None:
    # Four ranks on two nodes: scheduler and client on n1, two workers on n2. The
    # group's fork server is a fork of its first rank, so two ranks save an import.
    hosts = ["n1", "n1", "n2", "n2"]
    peers = [Peer(host, 100 + rank, (rank,)) for rank, host in enumerate(hosts)]
    options = parse_args(["--run-dir", "/r"])

    assert placement(options, mpi_world(2, hosts), peers) == Placement(
        (2, 3), cpus=frozenset({2, 3})
    )
    assert placement(options, mpi_world(3, hosts), peers) == Placement((), leader=peers[2])


def test_a_crowded_node_is_split_into_groups_each_run_by_its_first_rank() -> None:
    # Rank 0 scheduler and rank 1 client on n1; 70 worker ranks on n2: past
    # NODE_LAYOUT_MAX_RANKS (32) they make three groups of 24, 23 and 23.
    workers = 70
    hosts = ["n1", "n1"] + ["n2"] * workers
    peers = [Peer(host, 100 + rank, (rank,)) for rank, host in enumerate(hosts)]
    options = parse_args(["--run-dir", "/r"])

    found = {
        rank: placement(options, mpi_world(rank, hosts), peers) for rank in range(2, len(hosts))
    }

    leaders = {rank: where for rank, where in found.items() if where.ranks}
    assert [len(where.ranks) for where in leaders.values()] == [24, 23, 23]
    assert sorted(r for where in leaders.values() for r in where.ranks) == list(range(2, 72))
    for rank, where in leaders.items():
        assert where.ranks[0] == rank
        assert where.cpus == frozenset(where.ranks)
    for rank, where in found.items():
        if not where.ranks:  # stands by for the first rank of its own group
            group = next(g.ranks for g in leaders.values() if rank in g.ranks)
            assert where == Placement((), leader=peers[group[0]])


@pytest.mark.parametrize(
    ("count", "sizes"),
    [
        (2, [2]),
        (NODE_LAYOUT_MAX_RANKS, [NODE_LAYOUT_MAX_RANKS]),
        (NODE_LAYOUT_MAX_RANKS + 1, [17, 16]),
        (127, [32, 32, 32, 31]),
        (254, [32, 32, 32, 32, 32, 32, 31, 31]),
    ],
)
def test_groups_are_consecutive_with_sizes_within_one(count: int, sizes: list[int]) -> None:
    ranks = tuple(range(10, 10 + count))

    groups = split_group(ranks)

    assert [len(g) for g in groups] == sizes
    assert tuple(r for g in groups for r in g) == ranks


@pytest.mark.parametrize("flag", ["--no-nanny", "--worker-layout=rank"])
def test_each_rank_runs_its_own_workers_without_nannies_or_in_the_rank_layout(
    peers: list[Peer], flag: str
) -> None:
    options = parse_args(["--run-dir", "/r", flag])

    assert placement(options, mpi_world(3), peers) == Placement((3,))


def test_loopback_is_allowed_only_when_every_rank_shares_the_host(peers: list[Peer]) -> None:
    assert not single_host(mpi_world(0), peers)
    assert single_host(mpi_world(0), [Peer("n1", 1, ()), Peer("n1", 2, ())])
    assert single_host(World(rank=0, size=1, source="single"), [])


@pytest.mark.parametrize("layout", ["--worker-layout=node", "--worker-layout=rank"])
def test_gpu_workers_run_in_one_rank_per_node_whatever_the_layout(
    peers: list[Peer], layout: str
) -> None:
    # Every task of a node sees the node's GPUs: two ranks each running a worker
    # per GPU would put two workers on every device.
    options = parse_args(["--run-dir", "/r", "--gpu-workers", layout])

    first = placement(options, mpi_world(2), peers)
    others = [placement(options, mpi_world(r), peers) for r in (3, 4)]
    alone = placement(options, mpi_world(5), peers)

    assert first == Placement((2,), cpus=frozenset({2, 3, 4}))
    assert others == [Placement((), leader=peers[2])] * 2
    assert alone == Placement((5,), cpus=frozenset({5}))


def test_a_standing_rank_becomes_a_small_waiter_that_outlives_batch_signals() -> None:
    leader = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    code = (
        "import msgpack  # a compiled module from site-packages, as a rank has mpi4py\n"
        "from jobstrap.bootstrap import placement\n"
        "placement._launched_by_slurmstepd = lambda: True  # a task of a Slurm step\n"
        f"placement.stand_by(placement.Peer('here', {leader.pid}, ()))\n"
        "raise SystemExit(3)  # not reached: the process became the waiter\n"
    )
    rank = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        cmdline = ""
        while "standby.py" not in cmdline and time.monotonic() < deadline:
            time.sleep(0.05)
            cmdline = Path(f"/proc/{rank.pid}/cmdline").read_bytes().decode()
        # The same pid, now an interpreter without site-packages loading only the waiter.
        assert "standby.py" in cmdline
        assert "-S" in cmdline.split("\0")
        # It let go of everything it had loaded from site-packages.
        assert "site-packages" not in Path(f"/proc/{rank.pid}/maps").read_text()
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            os.kill(rank.pid, sig)
        time.sleep(0.3)
        assert rank.poll() is None  # the batch system's signals are for the leader
        leader.kill()
        leader.wait()
        assert rank.wait(timeout=10) == 0
    finally:
        for process in (rank, leader):
            if process.poll() is None:
                process.kill()


def test_outside_a_slurm_step_a_standing_rank_waits_in_its_own_interpreter() -> None:
    # mpiexec (MPICH's Hydra) kills the job when a rank execs: no exec there.
    leader = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    code = (
        "from jobstrap.bootstrap.placement import Peer, stand_by\n"
        f"raise SystemExit(stand_by(Peer('here', {leader.pid}, ())) + 5)\n"
    )
    rank = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(2.0)
        assert rank.poll() is None
        assert "standby.py" not in Path(f"/proc/{rank.pid}/cmdline").read_bytes().decode()
        leader.kill()
        leader.wait()
        assert rank.wait(timeout=10) == 5  # stand_by returned 0 in this process
    finally:
        for process in (rank, leader):
            if process.poll() is None:
                process.kill()


def test_a_rank_loads_nothing_only_other_roles_need_before_it_knows_its_role() -> None:
    # Up to the placement every rank runs the same code, and most ranks of a large
    # job only stand by: what that path imports, each of them pays for. The engine is
    # found (not loaded); the client's and head's modules and asyncio come later.
    probe = (
        "import sys\n"
        "import jobstrap.bootstrap.main, jobstrap.bootstrap.placement\n"
        "from jobstrap.bootstrap.engine import get_engine\n"
        "from jobstrap.net.security import tls_files\n"
        "get_engine('dask')\n"
        "heavy = ['asyncio', 'dask', 'distributed', 'secrets', 'ssl',\n"
        "         'jobstrap.bootstrap.client', 'jobstrap.bootstrap.head']\n"
        "print(' '.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == []
