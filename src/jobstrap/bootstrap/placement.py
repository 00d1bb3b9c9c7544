"""Where a worker rank's workers run: its own process, or its group's first worker rank.

In the ``node`` layout the first worker rank of a node runs the workers of every
worker rank there (one interpreter imports the engine and forks them all); the
node's other worker ranks stand by until it ends. Past
:data:`NODE_LAYOUT_MAX_RANKS` worker ranks a node, they are split into groups, each
run so by its own first rank. Engine-agnostic: only hosts, pids and CPU bindings,
gathered in one allgather.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from jobstrap.bootstrap import standby
from jobstrap.bootstrap.messages import logger
from jobstrap.bootstrap.options import Options
from jobstrap.bootstrap.ranks import World
from jobstrap.bootstrap.roles import node_groups
from jobstrap.bootstrap.signals import BATCH_SIGNALS, ignore

__all__ = [
    "NODE_LAYOUT_MAX_RANKS",
    "NODE_LAYOUT_MIN_RANKS",
    "Peer",
    "Placement",
    "gather_peers",
    "placement",
    "single_host",
    "split_group",
    "stand_by",
    "widen_binding",
]

#: Fewest worker ranks on a node for the ``node`` layout to group them. The group's
#: workers come from a fork server forked from the first rank once it has imported
#: Dask, so two ranks already save one import of Dask (half of the node's start-up
#: CPU) and one copy of its modules, for a rank that stands by.
NODE_LAYOUT_MIN_RANKS = 2
#: Most worker ranks one process runs the workers of. Past it a node's worker ranks
#: are split into groups of near-equal size, each run by its own first rank: one
#: process's event loop starts, and then supervises, every nanny of its group on a
#: single core, so a 128-rank node with one such process would start its workers one
#: core at a time while the others idle. Each group costs one import of Dask and one
#: fork server more (about 50 MiB of a node's memory).
NODE_LAYOUT_MAX_RANKS = 32


@dataclass(frozen=True)
class Peer:
    """What every rank tells the others before the roles start."""

    host: str
    pid: int
    cpus: tuple[int, ...]


@dataclass(frozen=True)
class Placement:
    """Where this rank's workers run (worker ranks only).

    ``ranks`` are the worker ranks whose workers this process runs: its own in the
    ``rank`` layout; in the ``node`` layout, every worker rank of its group (the
    node's, or a part of it past :data:`NODE_LAYOUT_MAX_RANKS`) for the group's
    first worker rank and none for the others, which stand by for ``leader``.
    ``cpus`` is the CPU set the workers may use (the union of their ranks'
    bindings), ``None`` to leave the binding alone.
    """

    ranks: tuple[int, ...]
    leader: Peer | None = None
    cpus: frozenset[int] | None = None


def _cpus() -> tuple[int, ...]:
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return ()


def gather_peers(world: World) -> list[Peer]:
    """Every rank's host, pid and CPU binding (one allgather; just this rank without MPI)."""
    me = Peer(world.hostname, os.getpid(), _cpus())
    return list(world.allgather(me)) if world.uses_mpi else [me]


def placement(options: Options, world: World, peers: Sequence[Peer]) -> Placement:
    """Decide which workers this worker rank runs (see :class:`Placement`)."""
    own = Placement((world.rank,))
    if options.gpu_workers and len(peers) == world.size:
        return _gpu_placement(options, world, peers) or own
    # Without MPI the ranks cannot agree on a node's first rank; without nannies
    # one process's workers would share one interpreter (and its GIL).
    if options.worker_layout != "node" or not options.nanny or len(peers) != world.size:
        return own
    groups = node_groups(
        [p.host for p in peers], client_on_scheduler_rank=options.client_on_scheduler_rank
    )
    for ranks in groups.values():
        if world.rank not in ranks or len(ranks) < NODE_LAYOUT_MIN_RANKS:
            continue
        group = next(g for g in split_group(ranks) if world.rank in g)
        if group[0] != world.rank:
            return Placement((), leader=peers[group[0]])
        cpus = frozenset(c for r in group for c in peers[r].cpus)
        return Placement(group, cpus=cpus or None)
    return own


def split_group(ranks: tuple[int, ...], most: int = NODE_LAYOUT_MAX_RANKS) -> list[tuple[int, ...]]:
    """A node's worker ranks in consecutive groups of at most ``most``, sizes within one.

    Near-equal sizes rather than ``most`` and a remainder: 33 ranks are 17 and 16,
    not 32 and a group of one that would save nothing.
    """
    count = -(-len(ranks) // most)  # ceil
    size, extra = divmod(len(ranks), count)
    out, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        out.append(ranks[start:end])
        start = end
    return out


def _gpu_placement(options: Options, world: World, peers: Sequence[Peer]) -> Placement | None:
    """GPU workers: a node's first worker rank runs one worker per GPU of the node.

    Every task of a node sees the node's GPUs, so one rank runs the workers and the
    node's other worker ranks stand by (two ranks each running a worker per GPU
    would put two workers on every device).
    """
    groups = node_groups(
        [p.host for p in peers], client_on_scheduler_rank=options.client_on_scheduler_rank
    )
    for first, ranks in groups.items():
        if world.rank not in ranks:
            continue
        if first != world.rank:
            return Placement((), leader=peers[first])
        cpus = frozenset(c for r in ranks for c in peers[r].cpus)
        return Placement((first,), cpus=cpus or None)
    return None


def single_host(world: World, peers: Sequence[Peer]) -> bool:
    """Whether every rank runs on this host (then loopback is allowed)."""
    if world.uses_mpi:
        return len({p.host for p in peers}) == 1
    if world.size == 1:
        return True
    for name in ("SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES", "SLURM_NNODES"):
        value = os.environ.get(name)
        if value:
            return value.strip() == "1"
    return False


def widen_binding(where: Placement) -> None:
    """Let this process use the CPUs of every worker rank it runs the workers of."""
    if where.cpus is None:
        return
    # This process starts the workers of the node's other worker ranks too (their
    # fork server inherits the binding): let them use those ranks' CPUs. The
    # step's cpuset allows it; a binding finer than the step's stays as it was.
    try:
        os.sched_setaffinity(0, where.cpus)
    except (AttributeError, OSError) as error:
        logger.debug("could not widen the CPU binding to %s: %s", sorted(where.cpus), error)


def stand_by(leader: Peer) -> int:
    """Keep this rank's place in the launch while its node's first worker rank runs.

    The rank stays (a launcher may end a step whose first task exits, e.g. Slurm's
    ``WaitTime``) but holds no work, so it ignores the batch system's signals: the
    rank running the workers drains them. It ends when that rank ends. Under srun,
    MPI being finalized by now, the rank becomes a bare interpreter that only waits
    (:mod:`jobstrap.bootstrap.standby`): the same pid, the ignored signals kept
    across the exec, a fraction of the memory. Elsewhere, or if that exec fails, it
    waits here.
    """
    ignore(BATCH_SIGNALS)
    logger.debug("workers run in pid %d on this node; standing by", leader.pid)
    if _launched_by_slurmstepd():
        _become_small(leader.pid)
    standby.wait_for_exit(leader.pid)
    return 0


def _launched_by_slurmstepd() -> bool:
    """Whether this rank is a task of a Slurm step (its parent is ``slurmstepd``).

    The one launcher under which a rank may exec: MPICH's ``mpiexec`` (Hydra) kills
    the job when one of its ranks execs, even after ``MPI_Finalize`` (seen with
    MPICH 5: "BAD TERMINATION ... Killed (signal 9)"), and other launchers are
    untested.
    """
    try:
        with open(f"/proc/{os.getppid()}/comm", encoding="utf-8") as handle:
            return handle.read().strip() == "slurmstepd"
    except OSError:
        return False


def _become_small(pid: int) -> None:
    """Replace this process with ``python -S standby.py PID``; return only on failure."""
    import logging

    script = standby.__file__
    if not script or not os.path.isfile(script):  # e.g. imported from a zip
        return
    for handler in logging.getLogger().handlers + logging.getLogger("jobstrap").handlers:
        handler.flush()
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    try:
        # -S: no site-packages. The environment stays the rank's own (-I would drop a
        # PYTHONHOME that some relocated interpreters need to find their library).
        os.execv(sys.executable, [sys.executable, "-S", script, str(pid)])
    except OSError as error:
        logger.debug("standing by in this process: %s", error)
