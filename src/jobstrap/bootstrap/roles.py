"""Who does what in one allocation: roles by rank (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from jobstrap.config.choices import WORKER_LAYOUTS
from jobstrap.errors import UserError

__all__ = [
    "WORKER_LAYOUTS",
    "Role",
    "check_world_size",
    "expected_workers",
    "minimum_world_size",
    "node_groups",
    "role_of",
    "worker_names",
]


class Role(str, Enum):
    """What one rank runs in batch (``mpi``) mode."""

    #: The Dask scheduler (rank 0).
    SCHEDULER = "scheduler"
    #: The user's app (rank 1).
    CLIENT = "client"
    #: The scheduler and the app in one process (rank 0 with --client-on-scheduler-rank).
    SCHEDULER_AND_CLIENT = "scheduler+client"
    #: Dask workers (every other rank).
    WORKER = "worker"


def minimum_world_size(*, client_on_scheduler_rank: bool = False) -> int:
    """Ranks needed: scheduler, client and one worker (the client may share rank 0)."""
    return 2 if client_on_scheduler_rank else 3


def role_of(rank: int, *, client_on_scheduler_rank: bool = False) -> Role:
    """Return the role of ``rank``: 0 scheduler, 1 client, others workers."""
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    if rank == 0:
        return Role.SCHEDULER_AND_CLIENT if client_on_scheduler_rank else Role.SCHEDULER
    if rank == 1 and not client_on_scheduler_rank:
        return Role.CLIENT
    return Role.WORKER


def expected_workers(
    size: int, *, worker_processes: int = 1, client_on_scheduler_rank: bool = False
) -> int:
    """Number of Dask workers a world of ``size`` ranks starts."""
    worker_ranks = size - (1 if client_on_scheduler_rank else 2)
    return max(0, worker_ranks) * worker_processes


def node_groups(
    hosts: Sequence[str], *, client_on_scheduler_rank: bool = False
) -> dict[int, tuple[int, ...]]:
    """Group the worker ranks by host, for the ``node`` worker layout.

    Parameters
    ----------
    hosts
        The host of every rank, indexed by rank.
    client_on_scheduler_rank
        Whether rank 1 is a worker too.

    Returns
    -------
    dict
        For each host with worker ranks, its first worker rank mapped to all the
        worker ranks there (ascending). The first rank runs the workers of them all;
        the others stand by.
    """
    groups: dict[str, list[int]] = {}
    for rank, host in enumerate(hosts):
        if role_of(rank, client_on_scheduler_rank=client_on_scheduler_rank) is Role.WORKER:
            groups.setdefault(host, []).append(rank)
    return {ranks[0]: tuple(ranks) for ranks in groups.values()}


def check_world_size(
    size: int, *, client_on_scheduler_rank: bool = False, launcher_hint: str | None = None
) -> None:
    """Fail with a one-line message naming the fix if ``size`` ranks are too few.

    Parameters
    ----------
    size
        Number of ranks of this launch.
    client_on_scheduler_rank
        Whether the app shares rank 0 with the scheduler.
    launcher_hint
        Extra advice, e.g. when the launcher seems not to have started MPI.

    Raises
    ------
    UserError
        If the world is too small.
    """
    need = minimum_world_size(client_on_scheduler_rank=client_on_scheduler_rank)
    if size >= need:
        return
    layout = (
        "scheduler+client on rank 0 and at least one worker"
        if client_on_scheduler_rank
        else "scheduler, client and at least one worker"
    )
    fixes = [f"start at least {need} tasks (srun --ntasks={need} / mpiexec -n {need})"]
    if not client_on_scheduler_rank:
        fixes.append("or pass --client-on-scheduler-rank to need only 2")
    message = (
        f"batch mode needs at least {need} ranks ({layout}) but this launch has {size}: "
        + " ".join(fixes)
    )
    if launcher_hint:
        message += f"; {launcher_hint}"
    raise UserError(message)


def worker_names(prefix: str, processes: int) -> list[str]:
    """The names of one rank's ``processes`` workers: ``prefix``, or ``prefix-<k>``.

    The cluster plans the same names for a job's workers, so both sides agree on
    which job a worker is in.
    """
    if processes == 1:
        return [prefix]
    return [f"{prefix}-{i}" for i in range(processes)]
