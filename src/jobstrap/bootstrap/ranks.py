"""Which rank am I, how many are we, and how do we talk before Dask is up.

The preferred source is MPI (mpi4py), which also carries the scheduler's address
to every rank with one broadcast. Without mpi4py, or when MPI was not started by
the launcher, ranks come from the launcher's environment (``PMI_RANK``,
``PMIX_RANK``, ``OMPI_COMM_WORLD_RANK``, ``SLURM_PROCID``) and the address goes
through ``info.json`` in the shared run directory.

The classic failure this module names: plain ``srun`` without ``--mpi`` starts N
processes that each initialise MPI alone, so each sees a world of one and believes
it is rank 0. We detect it (MPI says 1, Slurm says N), say so in one line with the
fix (``srun --mpi=pmi2``), and carry on with Slurm's ranks.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ENV_RANK_SOURCES",
    "World",
    "bcast",
    "discover_world",
    "env_rank",
    "in_slurm_batch_script",
    "in_slurm_step",
    "launch_id",
]

#: (rank variable, size variables, launcher) in the order they are trusted.
ENV_RANK_SOURCES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("PMI_RANK", ("PMI_SIZE",), "PMI"),
    ("PMIX_RANK", ("PMIX_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS"), "PMIx"),
    ("OMPI_COMM_WORLD_RANK", ("OMPI_COMM_WORLD_SIZE",), "Open MPI"),
    ("SLURM_PROCID", ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"), "Slurm"),
)


@dataclass
class World:
    """This process's place in the launch.

    Attributes
    ----------
    rank, size
        Rank of this process and number of ranks.
    source
        Where they came from: ``"mpi"``, an environment variable name such as
        ``"SLURM_PROCID"``, or ``"single"`` (no launcher).
    comm
        The mpi4py communicator when ``source == "mpi"``.
    launch
        An id every rank of this launch shares (job, step, restart), used to tell
        this launch's ``info.json`` from a stale one; ``None`` if unknown.
    warning
        A one-line warning about the launch (e.g. MPI not started), or ``None``.
    """

    rank: int
    size: int
    source: str
    comm: Any = None
    launch: str | None = None
    warning: str | None = None
    hostname: str = field(default_factory=socket.gethostname)

    @property
    def uses_mpi(self) -> bool:
        """Whether ranks talk through MPI (else through the run directory)."""
        return self.comm is not None

    def bcast(self, value: Any, root: int = 0) -> Any:
        """MPI broadcast that sleeps while it waits (MPI worlds only; see :func:`bcast`)."""
        assert self.comm is not None
        return bcast(self.comm, value, root)

    def allgather(self, value: Any) -> list[Any]:
        """MPI allgather (MPI worlds only)."""
        assert self.comm is not None
        return list(self.comm.allgather(value))

    def release(self) -> None:
        """Finalize MPI now that the bootstrap's collectives are done.

        MPI_Finalize waits for every rank (MPICH does a PMI barrier). Left to
        mpi4py's exit hook, it would make every surviving rank of a run that
        lost one hang at exit until the walltime; called here, while all ranks
        are alive and in step, it returns at once. The app cannot use MPI
        afterwards; Dask does not need it.
        """
        if self.comm is None:
            return
        from mpi4py import MPI

        if not MPI.Is_finalized():
            MPI.Finalize()


def bcast(comm: Any, value: Any, root: int = 0, *, poll: float = 0.005) -> Any:
    """Broadcast ``value`` from ``root`` over ``comm``, sleeping while it waits.

    The other ranks wait in this broadcast while rank 0 starts the scheduler (a
    second or more). MPICH's blocking collectives spin a core each meanwhile, which
    on a node with more ranks than cores takes the CPU from the ranks doing the
    work; a non-blocking broadcast tested every ``poll`` seconds costs nothing.
    """
    from mpi4py import MPI

    mine = comm.Get_rank() == root
    data = pickle.dumps(value) if mine else b""
    size = bytearray(struct.pack("!q", len(data)))
    _wait(comm.Ibcast([size, MPI.BYTE], root=root), poll)
    buffer = bytearray(data) if mine else bytearray(struct.unpack("!q", size)[0])
    _wait(comm.Ibcast([buffer, MPI.BYTE], root=root), poll)
    return value if mine else pickle.loads(buffer)


def _wait(request: Any, poll: float) -> None:
    while not request.Test():
        time.sleep(poll)


def _int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name, "").strip()
    try:
        return int(value)
    except ValueError:
        return None


def env_rank(environ: Mapping[str, str]) -> tuple[int, int, str] | None:
    """Return ``(rank, size, variable)`` from a launcher's environment, or ``None``."""
    for rank_var, size_vars, _launcher in ENV_RANK_SOURCES:
        rank = _int(environ, rank_var)
        if rank is None:
            continue
        if rank_var == "SLURM_PROCID" and not in_slurm_step(environ):
            # The batch script itself also has SLURM_PROCID=0 and the job's
            # SLURM_NTASKS; only a task started by srun is a rank of a launch.
            continue
        for size_var in size_vars:
            size = _int(environ, size_var)
            if size is not None and size > rank:
                return rank, size, rank_var
    return None


def in_slurm_step(environ: Mapping[str, str]) -> bool:
    """Whether this process is a task of an ``srun`` step (not the batch script)."""
    step = environ.get("SLURM_STEP_ID") or environ.get("SLURM_STEPID")
    return bool(step) and step not in {"batch", "extern"}


def in_slurm_batch_script(environ: Mapping[str, str]) -> bool:
    """Whether this process runs in a Slurm batch script itself, outside any srun."""
    return bool(environ.get("SLURM_JOB_ID")) and not in_slurm_step(environ)


def launch_id(environ: Mapping[str, str]) -> str | None:
    """An id shared by every rank of one launch, or ``None`` if the launcher gives none."""
    job = environ.get("SLURM_JOB_ID")
    if job:
        step = environ.get("SLURM_STEP_ID") or environ.get("SLURM_STEPID") or "batch"
        return f"slurm:{job}.{step}.{environ.get('SLURM_RESTART_COUNT', '0')}"
    for name in ("PBS_JOBID", "PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "PMI_JOBID"):
        value = environ.get(name)
        if value:
            return f"{name.lower()}:{value}"
    return None


def _mpi_comm() -> Any:
    """Return ``MPI.COMM_WORLD``, or ``None`` if mpi4py is not installed."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD


def discover_world(*, use_mpi: bool = True, environ: Mapping[str, str] | None = None) -> World:
    """Find this process's rank and the launch size.

    Parameters
    ----------
    use_mpi
        Try mpi4py first (batch mode). Worker-only jobs pass ``False``: their
        ranks are independent and must not initialise MPI.
    environ
        The environment to read; defaults to ``os.environ``.
    """
    env = os.environ if environ is None else environ
    launch = launch_id(env)
    from_env = env_rank(env)

    comm = _mpi_comm() if use_mpi else None
    if comm is not None and comm.Get_size() > 1:
        return World(comm.Get_rank(), comm.Get_size(), "mpi", comm=comm, launch=launch)

    if from_env is not None and from_env[1] > 1:
        rank, size, variable = from_env
        warning = None
        if comm is not None:
            warning = (
                f"every rank sees an MPI world of 1 but {variable}={rank} of {size}: the launcher "
                f"did not start MPI ({_fix_for(variable)}); continuing with ranks from {variable} "
                f"and addresses through the run directory"
            )
        return World(rank, size, variable, launch=launch, warning=warning)

    return World(0, 1, "single", launch=launch)


def _fix_for(variable: str) -> str:
    if variable == "SLURM_PROCID":
        return "use srun --mpi=pmi2"
    return "use the MPI launcher that matches mpi4py's MPI (e.g. srun --mpi=pmi2, mpiexec)"
