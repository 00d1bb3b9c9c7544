"""The job model: what one batch job is (``JobSpec``), its role and its array shape.

Plain data, built by :mod:`jobstrap.jobs.spec` from a profile and read by the batch
systems (:mod:`jobstrap.systems`), which turn it into directives and commands. It
sits below both, so the systems never need the profile machinery that builds it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from enum import Enum

__all__ = ["ArraySpec", "JobSpec", "Role", "new_tag"]


class Role(str, Enum):
    """What a job is for; the template and the bootstrap mode follow from it."""

    WORKERS = "workers"  #: Dask workers for a scheduler elsewhere (notebook clusters)
    APP = "app"  #: scheduler + client + workers in one allocation (batch mode, graph jobs)
    SCHEDULER = "scheduler"  #: a scheduler alone (``scheduler="job"``)
    PROBE = "probe"  #: a diagnostic probe (``jobstrap doctor``)


@dataclass(frozen=True)
class ArraySpec:
    """A job array: task ids ``start..stop`` inclusive, at most ``limit`` running at once."""

    start: int
    stop: int
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.start < 0 or self.stop < self.start:
            raise ValueError(f"invalid array range {self.start}-{self.stop}")

    @property
    def size(self) -> int:
        return self.stop - self.start + 1

    @property
    def task_ids(self) -> range:
        return range(self.start, self.stop + 1)


@dataclass(frozen=True)
class JobSpec:
    """Everything one batch job needs; sizes in bytes, durations in seconds."""

    name: str
    role: Role
    run_dir: str
    tag: str
    command: tuple[str, ...]
    walltime: int
    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    memory: int | None = None  #: per node
    gpus: int = 0  #: per node
    gpus_per_job: int = 0  #: per job, placed by the batch system (instead of ``gpus``)
    gpu_type: str | None = None
    #: What the memory request counts: ``node``, ``cpu`` or ``gpu`` (one directive).
    memory_per: str = "node"
    mem_per_gpu: int | None = None  #: with ``memory_per="gpu"``; else memory over the GPUs
    gpu_bind: str | None = None
    queue: str | None = None
    account: str | None = None
    qos: str | None = None
    launcher: str = "none"  #: srun, mpiexec, mpirun, none (resolved, never "auto")
    mpi: bool = False  #: whether the launched tasks form one MPI world
    env: tuple[tuple[str, str], ...] = ()
    prologue: tuple[str, ...] = ()
    epilogue: tuple[str, ...] = ()
    extra_directives: tuple[str, ...] = ()
    skip_directives: tuple[str, ...] = ()
    submit_args: tuple[str, ...] = ()
    log_directory: str = ""
    shebang: str = "#!/usr/bin/env bash"
    array: ArraySpec | None = None
    #: Ask the batch system to send this signal this many seconds before the walltime.
    signal: tuple[str, int] | None = None
    python: str = "python3"
    labels: tuple[tuple[str, str], ...] = field(default=())

    @property
    def ntasks(self) -> int:
        return self.nodes * self.tasks_per_node

    @property
    def gpus_per_node(self) -> int:
        """GPUs on each node (``gpus_per_job`` spread evenly, rounded up)."""
        return self.gpus or -(-self.gpus_per_job // self.nodes)

    @property
    def memory_per_gpu(self) -> int | None:
        """Bytes per GPU for ``memory_per="gpu"``: ``mem_per_gpu``, else a node's share."""
        if self.mem_per_gpu is not None:
            return self.mem_per_gpu
        if self.memory is None or not self.gpus_per_node:
            return None
        return self.memory // self.gpus_per_node

    @property
    def memory_per_cpu(self) -> int | None:
        """Bytes per CPU for ``memory_per="cpu"``: the node's memory over its CPUs, rounded up."""
        if self.memory is None:
            return None
        cpus = self.tasks_per_node * self.cpus_per_task
        return -(-self.memory // cpus)

    def with_array(self, array: ArraySpec | None) -> JobSpec:
        """The same job as an array (or not)."""
        return replace(self, array=array)


def new_tag() -> str:
    """A short random tag that identifies one submission for idempotent retries."""
    return "js" + secrets.token_hex(5)
