"""Adaptive scaling in whole jobs: ``distributed.Adaptive`` counting jobs, not workers.

The model is distributed's ``deploy/adaptive_core.py``: the decisions are small
methods over plain sets of names (plan, requested, observed), here sets of *job*
names read from the cluster's :class:`~jobstrap.cluster.pool.JobPool`. Scaling down
picks whole jobs (the scheduler groups workers by job), so a job of several workers
is never half-closed and the next round never undoes this one.
"""

# distributed's deploy classes are unannotated; calling their methods from typed code is
# the point of subclassing them, so that one strict check is off in this module only.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Iterable
from typing import Any, Protocol, cast

from distributed.deploy.adaptive import Adaptive
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.protocol import pickle

from jobstrap.cluster.book import warn
from jobstrap.cluster.pool import JobPool
from jobstrap.cluster.scaling import job_of_worker
from jobstrap.errors import SubmitError

__all__ = ["AdaptOnNewWork", "JobAdaptive", "PooledCluster", "stop_on_refusal"]

logger = logging.getLogger(__name__)


class PooledCluster(Protocol):
    """What the job-counting adaptive loop needs of its cluster."""

    job_pool: JobPool
    workers_per_job: int


def _worker_job_key(worker_state: Any) -> str:
    """Group key for ``Scheduler.workers_to_close``: the worker's job (pickled by name)."""
    return job_of_worker(worker_state.name)


class JobAdaptive(Adaptive):
    """``distributed.Adaptive`` counting whole jobs instead of workers.

    The plan, the requests and the observations are sets of *job* names; the
    scheduler's target (in workers) is rounded up to jobs; and scaling down picks
    whole jobs (the scheduler groups workers by job), so a job of several workers
    is never half-closed and the next round never undoes this one.
    """

    @property
    def _pooled(self) -> PooledCluster:
        return cast(PooledCluster, self.cluster)

    @property
    def plan(self) -> set[str]:  # type: ignore[override]
        return self._pooled.job_pool.plan()

    @property
    def requested(self) -> set[str]:  # type: ignore[override]
        return self._pooled.job_pool.requested()

    @property
    def observed(self) -> set[str]:  # type: ignore[override]
        return self._pooled.job_pool.observed()

    async def target(self) -> int:
        workers = await self.scheduler.adaptive_target(target_duration=self.target_duration)
        return math.ceil(int(workers) / self._pooled.workers_per_job)

    async def workers_to_close(self, target: int) -> list[str]:
        observed = self._pooled.job_pool.observed()
        surplus = len(self.plan) - target
        if surplus <= 0 or not observed:
            return []
        names = await self.scheduler.workers_to_close(
            n=surplus * self._pooled.workers_per_job,
            key=pickle.dumps(_worker_job_key),
            attribute="name",
            **self._workers_to_close_kwargs,
        )
        jobs = list(dict.fromkeys(job_of_worker(n) for n in names))
        return [j for j in jobs if j in observed][:surplus]

    async def scale_down(self, workers: Iterable[str]) -> None:  # type: ignore[override]
        jobs = list(workers)
        if not jobs:
            return
        logger.info("retiring jobs %s", jobs)
        pool = self._pooled.job_pool
        names = pool.worker_names_of(jobs)
        if names:
            await self.scheduler.retire_workers(names=names, remove=True, close_workers=True)
        pool.retired.update(jobs)  # retired already: cancel without asking again
        await pool.scale_down(jobs)

    async def scale_up(self, n: Any) -> None:
        # AdaptiveCore calls scale_up(n=<target>); the target is in jobs here.
        await self._pooled.job_pool.scale_to(int(n))


def _running(adaptive: Any) -> bool:
    return adaptive is not None and getattr(adaptive, "state", None) == "running"


async def _adapt_now(adaptive: Adaptive) -> None:
    try:
        await adaptive.adapt()
    except Exception:  # the periodic round will try again; say why this one failed
        logger.warning("adaptive scaling failed on new work", exc_info=True)


class AdaptOnNewWork(SchedulerPlugin):
    """Runs the adaptive loop as soon as work arrives instead of at its next tick.

    Lives in the in-process scheduler; holds the cluster weakly. The first worker of
    a burst is a whole adaptive interval sooner, and nothing else changes: the
    loop's own decision (and its ``maximum``) still rules.
    """

    name = "jobstrap-adapt-on-new-work"

    def __init__(self, cluster: Any) -> None:
        self._cluster = weakref.ref(cluster)

    def update_graph(self, scheduler: Any, **kwargs: Any) -> None:
        cluster = self._cluster()
        if cluster is None:
            return
        adaptive = cluster._adaptive  # distributed's Cluster keeps its Adaptive there
        if _running(adaptive):
            cluster.job_pool.background(_adapt_now(adaptive))


def stop_on_refusal(adaptive: Any, error: SubmitError) -> None:
    """A refused submission under adapt would repeat every interval: stop adapting."""
    if _running(adaptive):
        adaptive.stop(reason="submission refused")
        warn(f"adaptive scaling stopped: the batch system refused the jobs: {error}")
