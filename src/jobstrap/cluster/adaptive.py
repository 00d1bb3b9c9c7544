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
import time
import weakref
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, cast

from dask.utils import parse_timedelta
from distributed.deploy.adaptive import Adaptive
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.protocol import pickle

from jobstrap.cluster.book import warn
from jobstrap.cluster.demand import Demand, PoolNeeds, observe, worker_targets
from jobstrap.cluster.idle import IdleClock, hold_seconds, parse_idle_hold, to_release
from jobstrap.cluster.pool import JobPool
from jobstrap.cluster.pools import Pool, pool_bounds
from jobstrap.cluster.scaling import job_of_worker
from jobstrap.errors import ConfigError, SubmitError

__all__ = ["AdaptOnNewWork", "JobAdaptive", "PoolAdaptive", "PooledCluster", "stop_on_refusal"]

logger = logging.getLogger(__name__)


class PooledCluster(Protocol):
    """What the job-counting adaptive loop needs of its cluster."""

    job_pool: JobPool
    workers_per_job: int
    pools: Mapping[str, Pool]


def _worker_job_key(worker_state: Any) -> str:
    """Group key for ``Scheduler.workers_to_close``: the worker's job (pickled by name)."""
    return job_of_worker(worker_state.name)


class JobAdaptive(Adaptive):
    """``distributed.Adaptive`` counting whole jobs instead of workers.

    The plan, the requests and the observations are sets of *job* names; the
    scheduler's target (in workers) is rounded up to jobs; and scaling down picks
    whole jobs (the scheduler groups workers by job), so a job of several workers
    is never half-closed and the next round never undoes this one.

    The most jobs wanted over the last ``wait_count`` rounds (distributed closes a
    job only once that many rounds in a row found it surplus) is what the walltime
    rotation asks before it submits a successor
    (:meth:`jobstrap.cluster.pool.JobPool.replacement_wanted`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: The default pool's targets (in jobs) of the last ``wait_count`` rounds
        #: (sized again below, once distributed has settled ``wait_count``).
        self._recent: deque[int] = deque(maxlen=1)
        super().__init__(*args, **kwargs)
        self._recent = deque(maxlen=max(1, int(self.wait_count)))

    @property
    def _pooled(self) -> PooledCluster:
        return cast(PooledCluster, self.cluster)

    async def safe_target(self) -> int:
        target = await super().safe_target()
        self._recent.append(target)
        pool = self._pooled.job_pool
        pool.wanted[pool.default_pool] = max(self._recent)
        return target

    def stop(self, reason: str = "unknown") -> None:
        # Without this loop the rotation replaces every job again.
        super().stop(reason=reason)
        self._pooled.job_pool.wanted.clear()

    # On a cluster of several pools, this loop adapts the default pool only
    # (``adapt(pools=...)`` adapts the others): its sets hold that pool's jobs.
    @property
    def plan(self) -> set[str]:  # type: ignore[override]
        pool = self._pooled.job_pool
        return pool.plan(pool.default_pool)

    @property
    def requested(self) -> set[str]:  # type: ignore[override]
        pool = self._pooled.job_pool
        return pool.requested(pool.default_pool)

    @property
    def observed(self) -> set[str]:  # type: ignore[override]
        pool = self._pooled.job_pool
        return pool.observed(pool.default_pool)

    async def target(self) -> int:
        workers = await self.scheduler.adaptive_target(target_duration=self.target_duration)
        return math.ceil(int(workers) / self._pooled.workers_per_job)

    async def workers_to_close(self, target: int) -> list[str]:
        observed = self.observed
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


class PoolAdaptive(JobAdaptive):
    """Adapt each pool from the work that needs it, and keep idle jobs for a while.

    Every round reads the scheduler's work (:func:`jobstrap.cluster.demand.observe`),
    turns it into jobs per pool (:func:`~jobstrap.cluster.demand.worker_targets`,
    within each pool's bounds), submits what a pool lacks, and gives up a pool's
    surplus: pending jobs once every one of the last ``wait_count`` rounds found
    them surplus (distributed's own patience: the scheduler's estimate of the work
    swings as tasks finish and durations become known, and a job given up on a dip
    is submitted again on the next rise), idle jobs only after the hold as well
    (:mod:`jobstrap.cluster.idle`). Busy jobs are never released. What the pool
    wanted in those rounds is also what the walltime rotation asks before it
    submits a successor (:meth:`jobstrap.cluster.pool.JobPool.replacement_wanted`).

    Parameters
    ----------
    cluster
        The cluster.
    pools
        ``{pool: (minimum_jobs, maximum_jobs)}``; other pools are left as they are.
    idle_hold
        Seconds an idle job is kept, or ``"auto"`` (the pool's observed queue wait).
    **kwargs
        ``distributed.Adaptive``'s ``interval``, ``wait_count``, ``target_duration``.
    """

    def __init__(
        self,
        cluster: Any,
        *,
        pools: Mapping[str, tuple[int, float]],
        idle_hold: float | str = 0.0,
        **kwargs: Any,
    ) -> None:
        self.bounds = dict(pools)
        self.idle_hold = idle_hold
        self.idle = IdleClock()
        #: Jobs released by this loop, by pool (what a benchmark counts).
        self.released: dict[str, int] = dict.fromkeys(pools, 0)
        #: Each pool's targets of the last ``wait_count`` rounds.
        self._targets: dict[str, deque[int]] = {}
        kwargs.pop("minimum", None)
        kwargs.pop("maximum", None)
        low = sum(b[0] for b in self.bounds.values())
        high = sum(b[1] for b in self.bounds.values())
        super().__init__(cluster, minimum=low, maximum=high, **kwargs)
        self.target_seconds = float(parse_timedelta(self.target_duration, "seconds"))

    @classmethod
    def for_cluster(
        cls,
        cluster: Any,
        pools: Mapping[str, Any] | None,
        idle_hold: object,
        bounds: tuple[int, float],
        kwargs: dict[str, Any],
        adaptive: type[Adaptive] = JobAdaptive,
    ) -> PoolAdaptive | None:
        """``cluster.adapt(pools=..., idle_hold=...)``: checked, then started.

        Without ``pools``, ``bounds`` (the cluster-wide ones) are the default pool's.
        ``None`` when distributed's own loop is asked for instead: no pools and no
        hold (``idle_hold=0``), or a custom ``adaptive`` class (it knows no hold).
        """
        hold = parse_idle_hold(idle_hold)
        if pools is None and (not hold or adaptive is not JobAdaptive):
            return None
        if pools is None:
            per_pool = {next(iter(cluster.pools)): bounds}
        elif bounds[0] or bounds[1] != math.inf:
            raise ConfigError("pools", pools, "give bounds per pool or for the cluster, not both")
        else:
            per_pool = pool_bounds(cluster.pools, pools)
        return cls(cluster, pools=per_pool, idle_hold=hold, **kwargs)

    async def adapt(self) -> None:
        if self._adapting:  # one round at a time, as distributed's loop
            return
        self._adapting = True
        try:
            await self._round()
        finally:
            self._adapting = False

    async def _observe(self) -> Demand:
        response = await self.scheduler.run_function(function=pickle.dumps(observe), wait=True)
        if not isinstance(response, dict) or response.get("status") != "OK":
            raise RuntimeError(f"could not read the scheduler's work: {response!r}"[:300])
        return Demand.from_payload(response["result"])

    async def _round(self) -> None:
        cluster = self._pooled
        demand = await self._observe()
        now = time.time()
        pools = cluster.pools
        adapted = {name: pools[name] for name in self.bounds}
        plain = next((n for n, p in pools.items() if not p.resources), next(iter(pools)))
        needs = {n: PoolNeeds(p.resources, p.shape.threads) for n, p in adapted.items()}
        job_pool = cluster.job_pool
        by_job: dict[str, set[str]] = {}
        for worker in demand.workers:
            by_job.setdefault(job_of_worker(worker), set()).add(worker)
        plain_workers = sum(len(ws) for j, ws in by_job.items() if job_pool.pool_of(j) == plain)
        wanted = worker_targets(demand, needs, plain, self.target_seconds, plain_workers)
        busy = {job for job, ws in by_job.items() if ws & demand.busy}
        self.idle.update(set(by_job) - busy, busy, now)
        floor = float(self.interval or 0) * float(self.wait_count)
        for name, pool in adapted.items():
            low, high = self.bounds[name]
            target = int(min(high, max(low, math.ceil(wanted[name] / pool.shape.workers))))
            recent = self._targets.setdefault(name, deque(maxlen=max(1, int(self.wait_count))))
            recent.append(target)
            job_pool.wanted[name] = max(recent)
            plan = job_pool.plan(name)
            if target > len(plan):
                self.log.append((now, {"status": "up", "pool": name, "n": target}))
                await job_pool.scale_to(target, name)
                continue
            if len(recent) < (recent.maxlen or 1):
                continue  # too few rounds yet to call anything surplus
            waiting = sorted(
                (j for j in plan if j not in by_job),
                key=lambda j: -(getattr(job_pool.info(j), "submitted", math.inf)),
            )
            hold = hold_seconds(self.idle_hold, job_pool.queue_waits(name), floor)
            idle = {j: t for j, t in self.idle.since.items() if j in plan}
            release = to_release(len(plan) - max(recent), waiting, idle, now, hold)
            if release:
                self.log.append((now, {"status": "down", "pool": name, "jobs": release}))
                self.released[name] += len(release)
                await self.scale_down(release)


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
