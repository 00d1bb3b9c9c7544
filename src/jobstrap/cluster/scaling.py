"""Scale arithmetic for notebook clusters, in jobs.

A notebook cluster grows and shrinks by whole batch jobs: one job holds ``nodes x
processes`` Dask workers, and a request in workers, cores or memory is rounded to
jobs here, once. Keeping every count in jobs (never in workers) is what keeps the
adaptive loop stable when a job holds several workers: a target of 3 workers with 2
workers per job is 2 jobs, and 2 jobs is what the plan holds, so the next round of
the loop agrees with this one instead of flipping between 1 and 2 jobs.

Worker names are ``<job name>-<rank>[-<k>]``; :func:`job_of_worker` inverts that, so
the scheduler, the adaptive loop and the cluster all agree on which job a worker is in.

Everything here is pure: no processes, no event loop.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from jobstrap.config.profile import Profile
from jobstrap.config.units import format_memory, parse_memory
from jobstrap.errors import ConfigError

__all__ = [
    "JobShape",
    "adapt_bounds",
    "job_of_worker",
    "jobs_for",
    "worker_names",
    "worker_suffixes",
]


@dataclass(frozen=True)
class JobShape:
    """What one worker job brings to the cluster.

    Attributes
    ----------
    nodes
        Nodes per job.
    processes
        Dask worker processes per node.
    threads
        Threads of each worker.
    memory
        Memory per node in bytes, or ``None`` when the profile leaves it unset.
    """

    nodes: int = 1
    processes: int = 1
    threads: int = 1
    memory: int | None = None

    def __post_init__(self) -> None:
        for name in ("nodes", "processes", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")

    @classmethod
    def from_profile(cls, profile: Profile) -> JobShape:
        """The shape of the worker jobs a profile describes."""
        return cls(
            nodes=profile.nodes,
            processes=profile.processes,
            threads=profile.threads_per_worker,
            memory=profile.memory,
        )

    @property
    def workers(self) -> int:
        """Dask workers per job."""
        return self.nodes * self.processes

    @property
    def cores(self) -> int:
        """Worker threads per job (what ``scale(cores=...)`` counts)."""
        return self.workers * self.threads

    @property
    def job_memory(self) -> int | None:
        """Memory of the whole job in bytes (all nodes), or ``None``."""
        return None if self.memory is None else self.memory * self.nodes


def worker_suffixes(shape: JobShape) -> list[str]:
    """Suffixes of the worker names in one job.

    One launcher task per node (rank ``r``) runs the job's workers; with one worker
    per node they are ``<job>-<r>``, with ``k`` of ``processes`` workers per node
    ``<job>-<r>-<k>`` (the names ``jobstrap.bootstrap.worker_entry`` and the bootstrap give).
    ``distributed.SpecCluster`` calls these a spec's ``group``: a spec named ``name``
    stands for the workers ``name + suffix``.
    """
    if shape.processes == 1:
        return [f"-{rank}" for rank in range(shape.nodes)]
    return [f"-{rank}-{k}" for rank in range(shape.nodes) for k in range(shape.processes)]


def worker_names(job_name: str, shape: JobShape) -> list[str]:
    """The Dask worker names of the job ``job_name``."""
    return [job_name + suffix for suffix in worker_suffixes(shape)]


_WORKER_SUFFIX = re.compile(r"(?:-\d+){1,2}$")


def job_of_worker(worker_name: object) -> str:
    """The job name of a worker: its name without the ``-<rank>[-<k>]`` suffix.

    Job names end in ``.<number>`` (``jobstrap-3.4``), never in ``-<number>``, so the
    suffix is unambiguous whatever the cluster's name. A name without such a suffix
    is returned unchanged: a worker that joined by hand is a group of its own (and
    never closes someone else's job).
    """
    text = str(worker_name)
    head = _WORKER_SUFFIX.sub("", text)
    return head or text


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(name, value, "expected a number")
    if value < 0 or (isinstance(value, float) and math.isnan(value)):
        raise ConfigError(name, value, "must not be negative")
    if isinstance(value, float) and math.isinf(value):
        raise ConfigError(name, value, "must be finite")
    return math.ceil(value)


def _bytes(name: str, value: object) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(name, value, "must not be negative")
        return int(value)
    return parse_memory(value, name)


def _job_memory(shape: JobShape, name: str) -> int:
    if shape.job_memory is None:
        raise ConfigError(name, None, "needs a memory setting per job (memory=...)")
    return shape.job_memory


def jobs_for(
    shape: JobShape,
    *,
    jobs: object = None,
    workers: object = None,
    cores: object = None,
    memory: object = None,
) -> int:
    """The number of jobs that satisfies every request given (the largest of them).

    Parameters
    ----------
    shape
        What one job brings.
    jobs
        Jobs wanted.
    workers
        Dask workers wanted; rounded *up* to whole jobs.
    cores
        Worker threads wanted; rounded up to whole jobs.
    memory
        Worker memory wanted (bytes or ``"64GiB"``); rounded up to whole jobs.

    Returns
    -------
    int
        Jobs needed; 0 when nothing is asked for.

    Raises
    ------
    ConfigError
        A negative or non-numeric count, or ``memory`` without a memory setting.
    """
    return _jobs_at_least(shape, ("jobs", "n", "cores", "memory"), jobs, workers, cores, memory)


def _jobs_at_least(
    shape: JobShape,
    names: tuple[str, str, str, str],
    jobs: object,
    workers: object,
    cores: object,
    memory: object,
) -> int:
    """The fewest whole jobs that hold every request given (None: not asked for).

    ``names`` are the keywords of the four requests, for error messages.
    """
    needed = 0
    if jobs is not None:
        needed = max(needed, _count(names[0], jobs))
    if workers is not None:
        needed = max(needed, math.ceil(_count(names[1], workers) / shape.workers))
    if cores is not None:
        needed = max(needed, math.ceil(_count(names[2], cores) / shape.cores))
    if memory is not None:
        wanted = _bytes(names[3], memory)
        needed = max(needed, math.ceil(wanted / _job_memory(shape, names[3])))
    return needed


def _cap(count: int, per_job: int) -> int:
    # A cap rounds down (never more than asked for) but a positive cap smaller than
    # one job still allows one job: otherwise maximum=1 with 2 workers per job
    # would silently mean "never start anything".
    jobs = count // per_job
    return max(jobs, 1) if count > 0 else 0


def adapt_bounds(
    shape: JobShape,
    *,
    minimum: object = None,
    maximum: object = None,
    minimum_jobs: object = None,
    maximum_jobs: object = None,
    minimum_cores: object = None,
    maximum_cores: object = None,
    minimum_memory: object = None,
    maximum_memory: object = None,
) -> tuple[int, float]:
    """Adaptive bounds in jobs from bounds given in jobs, workers, cores or memory.

    Minimums round up (at least what was asked for), maximums round down (at most
    what was asked for, but at least one job when the maximum is positive). When
    several forms are given, the strictest wins: the largest minimum, the smallest
    maximum.

    Returns
    -------
    tuple
        ``(minimum_jobs, maximum_jobs)``; the maximum is ``math.inf`` when unbounded.

    Raises
    ------
    ConfigError
        A negative bound, or a minimum above the maximum.
    """
    low = _jobs_at_least(
        shape,
        ("minimum_jobs", "minimum", "minimum_cores", "minimum_memory"),
        minimum_jobs,
        minimum,
        minimum_cores,
        minimum_memory,
    )
    high: float = math.inf
    if maximum_jobs is not None and not _is_inf(maximum_jobs):
        high = min(high, _count("maximum_jobs", maximum_jobs))
    if maximum is not None and not _is_inf(maximum):
        high = min(high, _cap(_count("maximum", maximum), shape.workers))
    if maximum_cores is not None:
        high = min(high, _cap(_count("maximum_cores", maximum_cores), shape.cores))
    if maximum_memory is not None:
        wanted = _bytes("maximum_memory", maximum_memory)
        high = min(high, _cap(wanted, _job_memory(shape, "maximum_memory")))
    if low > high:
        raise ConfigError(
            "minimum",
            low,
            f"the minimum ({low} jobs) is above the maximum ({int(high)} jobs);"
            f" one job is {shape.workers} workers, {shape.cores} cores"
            + (f", {format_memory(shape.job_memory)}" if shape.job_memory else ""),
        )
    return low, high


def _is_inf(value: object) -> bool:
    return isinstance(value, float) and math.isinf(value) and value > 0
