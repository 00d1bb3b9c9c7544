"""Carrying a notebook cluster's worker spec out, and taking the news about its jobs.

:class:`JobRunner` makes the live jobs match the spec: every new entry goes out in
one submission (a job array), every removed one has its workers retired (their data
moves to the others) before its job is cancelled. It also takes the news: the
watcher's state changes (from the watcher's thread, handed to the event loop) and
the scheduler's worker arrivals and departures.
"""

# distributed's deploy classes are unannotated; calling their methods from typed code is
# the point of composing them, so that one strict check is off in this module only.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Mapping
from typing import Any

from distributed.core import Status
from distributed.deploy.spec import ProcessInterface, SpecCluster

from jobstrap.batchctl.watcher import Watcher
from jobstrap.cluster.adaptive import stop_on_refusal
from jobstrap.cluster.book import JobBook
from jobstrap.cluster.orphans import OrphanGuard
from jobstrap.cluster.pool import JobPool
from jobstrap.cluster.pools import Pool
from jobstrap.cluster.scaling import job_of_worker, worker_suffixes
from jobstrap.cluster.submit import WorkerSubmitter
from jobstrap.errors import SubmitError
from jobstrap.states import JobState
from jobstrap.systems import JobRecord

__all__ = ["BatchJob", "JobRunner", "job_templates"]


class BatchJob(ProcessInterface):
    """One batch job of Dask workers: the unit a :class:`BatchCluster` scales by.

    The cluster submits jobs in batches (one batchctl call for every job a scale-up
    adds) and hands each its id; :meth:`close` cancels the job through batch control.

    Parameters
    ----------
    name
        The job's name in the cluster; its workers are ``<name>-0``, ``<name>-1``...
    job_id
        The batch system's id, once submitted.
    cluster
        The cluster the job belongs to (it talks to the cluster's ``job_runner``).
    """

    def __init__(
        self,
        scheduler: str | None = None,
        name: str | None = None,
        *,
        job_id: str | None = None,
        cluster: Any = None,
    ) -> None:
        super().__init__(scheduler=scheduler, name=name)
        self.name = name
        self.job_id = job_id
        self._cluster = weakref.ref(cluster) if cluster is not None else None

    async def start(self) -> None:
        """Submit this job alone (the cluster normally submits jobs in batches)."""
        cluster = self._cluster() if self._cluster else None
        if cluster is None:
            raise RuntimeError("a BatchJob is started by its cluster")
        if self.job_id is None:
            names, job_ids = await cluster.job_runner.submit(1)
            self.name = names[0]
            self.job_id = job_ids[0]
        await super().start()

    async def close(self) -> None:
        """Cancel the job (no-op when it has ended)."""
        cluster = self._cluster() if self._cluster else None
        if cluster is not None and self.job_id is not None:
            await cluster.job_runner.cancel([self.job_id])
        await super().close()

    def __repr__(self) -> str:
        return f"<BatchJob {self.name} job_id={self.job_id} status={self.status.name}>"


def job_templates(pools: Mapping[str, Pool]) -> dict[str, dict[str, Any]]:
    """The worker-spec entry of a new job, by pool: a :class:`BatchJob` of its workers."""
    return {
        name: {"cls": BatchJob, "options": {}, "group": worker_suffixes(p.shape), "pool": name}
        for name, p in pools.items()
    }


class JobRunner:
    """Submits, stops and follows one cluster's worker jobs.

    Parameters
    ----------
    cluster
        The cluster whose ``workers`` (one process interface per live job) it keeps.
    pool, book, submitter, guard
        The cluster's parts: the spec by name, the job book, submission, orphans.
    submitters
        Submission by worker pool (default: ``submitter`` for every pool).
    watcher
        Batch control's watcher (jobs that ended are no longer watched).
    """

    def __init__(
        self,
        cluster: SpecCluster,
        *,
        pool: JobPool,
        book: JobBook,
        submitter: WorkerSubmitter,
        guard: OrphanGuard,
        watcher: Watcher,
        submitters: dict[str, WorkerSubmitter] | None = None,
    ) -> None:
        self._cluster = cluster
        self._pool = pool
        self._book = book
        self._submitter = submitter
        self._submitters = submitters or {}
        self._guard = guard
        self._watcher = watcher
        self.submit = submitter.submit
        self.cancel = submitter.cancel

    async def correct(self) -> None:
        """Stop the jobs the spec dropped, then submit the ones it added (under its lock)."""
        cluster = self._cluster
        to_close = [name for name in cluster.workers if name not in cluster.worker_spec]
        if to_close:
            await self._stop_jobs(to_close)
        to_open = [name for name in cluster.worker_spec if name not in cluster.workers]
        by_pool: dict[str, list[str]] = {}
        for name in to_open:
            by_pool.setdefault(self._pool.pool_of(name), []).append(name)
        for pool, provisional in by_pool.items():
            # One submission (a job array) per pool: each pool is one job script.
            await self._start_jobs(provisional, self._submitters.get(pool, self._submitter))

    async def _start_jobs(self, provisional: list[str], submitter: WorkerSubmitter) -> None:
        cluster = self._cluster
        if self._book.error is not None:
            for name in provisional:
                cluster.worker_spec.pop(name, None)
            raise self._book.error
        try:
            names, job_ids = await submitter.submit(len(provisional))
        except SubmitError as error:
            for name in provisional:
                cluster.worker_spec.pop(name, None)
            submitter.explain_refusal(error)
            stop_on_refusal(cluster._adaptive, error)
            raise
        orphans: list[str] = []
        for old, name, job_id in zip(provisional, names, job_ids, strict=True):
            spec = cluster.worker_spec.pop(old, None)
            if spec is None or cluster.status in (Status.closing, Status.closed):
                orphans.append(job_id)  # scaled down while the submission was under way
                continue
            cluster.worker_spec[name] = spec
            job = BatchJob(name=name, job_id=job_id, cluster=cluster)
            job.status = Status.running
            cluster.workers[name] = job
        if orphans:
            await self._submitter.cancel(orphans)

    async def _stop_jobs(self, names: list[str]) -> None:
        cluster = self._cluster
        jobs = [cluster.workers.pop(name) for name in names if name in cluster.workers]
        pool = self._pool
        retired, pool.retired = pool.retired & set(names), pool.retired - set(names)
        comm: Any = cluster.scheduler_comm
        if cluster.status == Status.running and comm is not None:
            connected = pool.worker_names_of(n for n in names if n not in retired)
            if connected:
                # Let the workers hand their data over before their jobs are cancelled.
                with contextlib.suppress(Exception):
                    await comm.retire_workers(names=connected, close_workers=True, remove=True)
        ids = [job.job_id for job in jobs if job.job_id]
        await self._submitter.cancel(ids)
        for job in jobs:
            job.status = Status.closed
            job._event_finished.set()

    # -- the news --------------------------------------------------------------------------

    def on_change(self, job_id: str, old: JobState, record: JobRecord) -> None:
        """Watcher callback (its thread): hand the change to the event loop."""
        loop = self._cluster.loop
        if loop is None or self._cluster.status == Status.closed:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.add_callback(self._job_changed, job_id, record)

    def _job_changed(self, job_id: str, record: JobRecord) -> None:
        info = self._book.update(job_id, record)
        if info is None:
            return
        self._book.notify(info)
        if not info.state.is_terminal:
            return
        self._guard.discard([job_id])
        self._watcher.untrack([job_id])
        cluster = self._cluster
        job = cluster.workers.get(info.name)
        if job is None or job.job_id != job_id:
            return  # we stopped it ourselves
        del cluster.workers[info.name]
        job.status = Status.closed
        job._event_finished.set()
        if cluster.status == Status.running:
            self._pool.job_ended(info)

    def worker_status(self, op: str, msg: Any) -> None:
        """The scheduler's news of workers (``SpecCluster._update_worker_status``)."""
        if op == "add":
            now = time.time()
            for worker in msg.get("workers", {}).values():
                self.worker_arrived(str(worker.get("name", "")), now)
        elif op == "remove":
            state = self._cluster.scheduler_info["workers"].get(msg)
            if state is not None:
                self.worker_left(str(state.get("name", "")))

    def worker_arrived(self, worker: str, now: float) -> None:
        """A worker reached the scheduler: its job runs (and succeeded at starting)."""
        info = self._pool.info(job_of_worker(worker))
        if info is not None and self._book.worker_arrived(info, worker, now):
            # The watcher backs off while nothing changes, so it may learn of the start
            # (node, start time) a minute late; the state did change: ask now.
            self._watcher.poke()

    def worker_left(self, worker: str) -> None:
        """A worker left the scheduler."""
        info = self._pool.info(job_of_worker(worker))
        if info is not None:
            self._book.worker_left(info, worker)
