"""A notebook cluster's jobs by name, as its worker spec sees them.

``SpecCluster``'s worker spec holds one entry per batch job (pending, running, or
provisional until its submission returns). :class:`JobPool` is the one place that
edits it for scaling, adaptivity, rotation and the failure policy, and the small
protocol those parts use: ``running_jobs()``, ``waiting_jobs()``,
``add_replacement()``, ``retire()``, ``scale_to()``... instead of the cluster's
private members. A job *outgoing* (its successor was submitted) is no capacity:
scaling and the adaptive loop count its replacement instead.
"""

# distributed's deploy classes are unannotated; calling their methods from typed code is
# the point of composing them, so that one strict check is off in this module only.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Any

from distributed.core import Status
from distributed.deploy.spec import SpecCluster

from jobstrap.cluster.book import ClusterFailedError, JobBook, warn
from jobstrap.cluster.jobs import FAILED_STATES, JobInfo
from jobstrap.cluster.pools import DEFAULT_POOL
from jobstrap.cluster.rotation import LifetimeManager
from jobstrap.cluster.scaling import job_of_worker
from jobstrap.states import JobState

__all__ = ["JobPool"]

logger = logging.getLogger(__name__)


class JobPool:
    """The jobs of one cluster's worker spec, by job name.

    Parameters
    ----------
    cluster
        The cluster whose ``worker_spec``/``workers`` this edits (held strongly:
        the cluster owns the pool).
    book
        The cluster's job book (infos by job id, failure policy).
    prefix
        The job name prefix (provisional entries are ``<prefix>-new<k>``).
    log_directory
        Where the jobs' stderr is (failed jobs are explained from it).
    templates
        The spec entry of a new job by pool (default: the cluster's ``new_spec``).
        Every entry names its pool (``"pool"``); the methods taking ``pool`` count
        that pool's jobs only, ``None`` every job.
    """

    def __init__(
        self,
        cluster: SpecCluster,
        book: JobBook,
        prefix: str,
        log_directory: str,
        templates: dict[str, dict[str, Any]] | None = None,
    ):
        self._cluster = cluster
        #: The spec entry of a new job, by pool (the first pool is the default).
        self.templates = templates or {DEFAULT_POOL: {}}
        self._book = book
        self._prefix = prefix
        self._log_directory = log_directory
        self._provisional = itertools.count()
        self._tasks: set[asyncio.Future[Any]] = set()
        #: Jobs whose workers were retired already: cancel them without asking again.
        self.retired: set[str] = set()
        #: The walltime-aware rotation (set by the cluster right after construction).
        self.lifetime: LifetimeManager | None = None
        #: Jobs the adaptive loop wants per pool (the most of its last rounds); a pool
        #: without an entry is not adapted by a loop that knows its demand.
        self.wanted: dict[str, int] = {}

    @property
    def _spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self._cluster.worker_spec
        return spec

    @property
    def _outgoing(self) -> set[str]:
        return self.lifetime.outgoing if self.lifetime is not None else set()

    # -- what the spec holds -------------------------------------------------------------

    @property
    def default_pool(self) -> str:
        """The pool ``scale()`` and the rotation use when none is named."""
        return next(iter(self.templates))

    def pool_of(self, name: str) -> str:
        """The pool of a job of the spec (by job name); the default one otherwise."""
        entry = self._spec.get(name)
        pool = entry.get("pool") if isinstance(entry, dict) else None
        return str(pool) if pool else self.default_pool

    def _in(self, names: Iterable[str], pool: str | None) -> set[str]:
        return {n for n in names if pool is None or self.pool_of(n) == pool}

    def names(self, pool: str | None = None) -> list[str]:
        """Every job of the spec (pending, running, provisional, outgoing)."""
        return [n for n in self._spec if pool is None or self.pool_of(n) == pool]

    def info(self, name: str) -> JobInfo | None:
        """The booked info of a submitted, live job, by name."""
        job = self._cluster.workers.get(name)
        if job is None or job.job_id is None:
            return None
        return self._book.get(job.job_id)

    def plan(self, pool: str | None = None) -> set[str]:
        """The jobs the adaptive loop counts: the spec without outgoing jobs."""
        return self._in(set(self._spec) - self._outgoing, pool)

    def requested(self, pool: str | None = None) -> set[str]:
        """Jobs of the spec that were submitted and are live."""
        return self._in({name for name in self._cluster.workers if name in self._spec}, pool)

    def observed(self, pool: str | None = None) -> set[str]:
        """Jobs with a worker at the scheduler."""
        workers = self._cluster.scheduler_info["workers"].values()
        return self._in({job_of_worker(d["name"]) for d in workers}, pool)

    def queue_waits(self, pool: str) -> list[float]:
        """Submit-to-first-worker seconds of the pool's jobs so far (oldest first)."""
        return self._book.queue_waits(pool)

    def worker_names_of(self, jobs: Iterable[str]) -> list[str]:
        """The names of the scheduler's workers belonging to ``jobs``."""
        wanted = set(jobs)
        return [
            d["name"]
            for d in self._cluster.scheduler_info["workers"].values()
            if job_of_worker(d["name"]) in wanted
        ]

    def running_jobs(self) -> dict[str, tuple[float, float | None]]:
        """Running jobs of the spec: name -> (started, first worker's arrival)."""
        running: dict[str, tuple[float, float | None]] = {}
        for name in list(self._spec):
            info = self.info(name)
            if info is None or info.started is None or info.state is not JobState.RUNNING:
                continue
            running[name] = (info.started, info.arrived)
        return running

    def replacement_wanted(self, pool: str) -> bool:
        """Whether a job of ``pool`` due to retire should get a successor.

        Yes unless the adaptive loop wants fewer of the pool's jobs than it counts
        now (the retiring job among them): then the retirement is the scale-down,
        and a successor would be a job submitted only to be given up.
        """
        wanted = self.wanted.get(pool)
        return wanted is None or len(self.plan(pool)) <= wanted

    def waiting_jobs(self) -> set[str]:
        """Jobs of the spec without a worker at the scheduler yet."""
        waiting = set()
        for name in self._spec:
            info = self.info(name)
            if info is None or info.arrived is None:
                waiting.add(name)
        return waiting

    # -- changing it -----------------------------------------------------------------------

    def add_replacement(self, pool: str | None = None) -> str:
        """Add one provisional job of ``pool`` to the spec (submitted by :meth:`apply`)."""
        pool = pool or self.default_pool
        name = f"{self._prefix}-new{next(self._provisional)}"
        template = self.templates.get(pool) or self._cluster.new_spec
        self._spec[name] = {**template, "pool": pool}
        return name

    async def apply(self) -> None:
        """Submit and cancel jobs until the cluster matches the spec."""
        await self._cluster._correct_state()

    async def retire(self, name: str) -> None:
        """Drop a job from the spec: its workers are retired, then it is cancelled."""
        del self._spec[name]
        await self.apply()

    async def drain(self, name: str, seconds: float) -> None:
        """Retire a job's workers after up to ``seconds`` for their running tasks.

        The scheduler's ``jobstrap_drain`` (:mod:`jobstrap.engines.dask.drain`) stops
        sending them tasks, waits while a running task is expected to finish in
        time, then retires them (their results move to the other workers); the job
        is cancelled after. Without the handler (a scheduler that does not have it),
        the workers are retired at once.
        """
        workers = self.worker_names_of([name])
        comm: Any = self._cluster.scheduler_comm
        if workers and comm is not None:
            try:
                report = await comm.jobstrap_drain(names=workers, seconds=seconds)
            except Exception as error:
                logger.info("draining %s failed (%s): retiring at once", name, error)
                with contextlib.suppress(Exception):
                    await comm.retire_workers(names=workers, close_workers=True, remove=True)
            else:
                if self.lifetime is not None and isinstance(report, dict):
                    self.lifetime.drains.append({"job": name, **report})
        self.retired.add(name)
        if name in self._spec:
            await self.retire(name)

    async def retire_gracefully(self, job: str, replace: bool) -> None:
        """Retire a job (id or name): its workers hand their data over, then it ends."""
        name = self._book.name_of(job)
        if name not in self._spec:
            raise KeyError(f"no live job {job!r} in this cluster")
        if replace:
            self.add_replacement(self.pool_of(name))
        workers = self.worker_names_of([name])
        comm: Any = self._cluster.scheduler_comm
        if workers and comm is not None:
            await comm.retire_workers(names=workers, close_workers=True, remove=True)
        self.retired.add(name)
        await self.retire(name)

    def background(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run ``coroutine`` as a task the pool keeps a reference to until it ends."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def scale_to(self, target: int, pool: str | None = None) -> None:
        """Grow or shrink ``pool``'s jobs to ``target`` (outgoing jobs are no capacity)."""
        pool = pool or self.default_pool
        if self._cluster.status in (Status.closing, Status.closed):
            target = 0
        # A job being replaced is not capacity: its successor already counts.
        current = len(self.plan(pool))
        if target > current and self._book.error is not None:
            raise self._book.error
        if target < current:
            for name in self._choose_jobs_to_drop(current - target, pool):
                del self._spec[name]
        for _ in range(target - current):
            self.add_replacement(pool)
        await self.apply()

    def _choose_jobs_to_drop(self, count: int, pool: str) -> list[str]:
        """The ``count`` cheapest jobs to give up: unsubmitted, pending, idle, newest."""

        def cost(name: str) -> tuple[int, float]:
            job = self._cluster.workers.get(name)
            info = self.info(name)
            if job is None or info is None:
                return (0, 0.0)
            if info.state is JobState.PENDING:
                return (1, -info.submitted)
            if not info.workers:
                return (2, -info.submitted)
            return (3, -(info.started or info.submitted))

        candidates = [n for n in self.names(pool) if n not in self._outgoing]
        return sorted(candidates, key=cost)[:count]

    async def scale_down(self, names: Iterable[Any]) -> None:
        """Drop the jobs of these workers (worker or job names; whole jobs go)."""
        for name in {n if n in self._spec else job_of_worker(n) for n in names}:
            self._spec.pop(name, None)
        await self.apply()

    async def apply_quietly(self) -> None:
        """:meth:`apply` from a background task: a failure is a warning."""
        try:
            await self.apply()
        except Exception as error:
            warn(f"could not replace worker jobs: {error}", RuntimeWarning)

    async def wait_for_workers(self, n_workers: int, timeout: float | None) -> None:
        """Wait for ``n_workers`` running workers; raise the cluster's failure at once."""
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        while True:
            if self._book.error is not None:
                raise self._book.error
            comm: Any = self._cluster.scheduler_comm
            identity = await comm.identity()
            running = sum(
                1 for w in identity["workers"].values() if w.get("status") == Status.running.name
            )
            if running >= n_workers:
                return
            if deadline is not None and time.monotonic() > deadline:
                live = self._book.live().values()
                states = ", ".join(str(s) for s in live) or "no live jobs"
                raise TimeoutError(
                    f"{running}/{n_workers} workers after {timeout} s; jobs: {states}"
                )
            await asyncio.sleep(0.1)

    # -- ends and failures -----------------------------------------------------------------

    def job_ended(self, info: JobInfo) -> None:
        """A live job of the spec ended on its own: forget, replace, or give up."""
        spec = self._spec
        lifetime = self.lifetime
        if info.cancelled_by_us or info.name in self._outgoing:
            # Ours to end, or already replaced (e.g. drained early on SIGUSR1).
            spec.pop(info.name, None)
            if lifetime is not None:
                lifetime.forget(info.name)
            return
        # A job that ended before its workers arrived failed, unless someone ended it:
        # a cancellation, or the site taking the nodes back (preemption is no fault
        # of the job, and must not count towards giving up).
        if info.state in FAILED_STATES or (
            info.arrived is None and info.state not in (JobState.CANCELLED, JobState.PREEMPTED)
        ):
            error = self._book.job_failed(info, self._log_directory)
            if error is not None:
                self.give_up(error)
        elif info.state is JobState.CANCELLED:
            error = self._book.cancelled_elsewhere(info)
            if error is not None:
                self.give_up(error)
        elif info.state is JobState.PREEMPTED:
            logger.info("worker job %s was preempted; submitting a replacement", info.job_id)
        # Whatever is still in the spec (a normal end, a failure below the limit) is
        # replaced by the next correction.
        if self._book.error is None and info.name in spec:
            self.background(self.apply_quietly())

    def give_up(self, error: ClusterFailedError) -> None:
        """Stop submitting: drop every job that is not (yet) doing anything useful."""
        self._book.error = error
        adaptive = self._cluster._adaptive
        if adaptive is not None:
            adaptive.stop(reason="worker jobs keep failing")
        for name in list(self._spec):
            info = self.info(name)
            if info is None or (info.state is JobState.PENDING and not info.workers):
                del self._spec[name]
        warn(str(error))
        self.background(self.apply_quietly())
