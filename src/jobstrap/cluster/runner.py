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
from collections.abc import Callable
from typing import Any

from distributed.core import Status
from distributed.deploy.spec import ProcessInterface, SpecCluster

from jobstrap.batchctl.core import Watcher
from jobstrap.cluster.adaptive import stop_on_refusal
from jobstrap.cluster.book import JobBook
from jobstrap.cluster.orphans import OrphanGuard
from jobstrap.cluster.pool import JobPool
from jobstrap.cluster.scaling import job_of_worker
from jobstrap.cluster.submit import WorkerSubmitter
from jobstrap.errors import SubmitError
from jobstrap.states import JobState
from jobstrap.systems import JobRecord

__all__ = ["JobRunner"]


class JobRunner:
    """Submits, stops and follows one cluster's worker jobs.

    Parameters
    ----------
    cluster
        The cluster whose ``workers`` (one process interface per live job) it keeps.
    pool, book, submitter, guard
        The cluster's parts: the spec by name, the job book, submission, orphans.
    watcher
        Batch control's watcher (jobs that ended are no longer watched).
    make_job
        ``make_job(name, job_id)``: the process interface of a submitted job.
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
        make_job: Callable[[str, str], ProcessInterface],
    ) -> None:
        self._cluster = cluster
        self._pool = pool
        self._book = book
        self._submitter = submitter
        self._guard = guard
        self._watcher = watcher
        self._make_job = make_job

    async def correct(self) -> None:
        """Stop the jobs the spec dropped, then submit the ones it added (under its lock)."""
        cluster = self._cluster
        to_close = [name for name in cluster.workers if name not in cluster.worker_spec]
        if to_close:
            await self._stop_jobs(to_close)
        to_open = [name for name in cluster.worker_spec if name not in cluster.workers]
        if to_open:
            await self._start_jobs(to_open)

    async def _start_jobs(self, provisional: list[str]) -> None:
        cluster = self._cluster
        if self._book.error is not None:
            for name in provisional:
                cluster.worker_spec.pop(name, None)
            raise self._book.error
        try:
            names, job_ids = await self._submitter.submit(len(provisional))
        except SubmitError as error:
            for name in provisional:
                cluster.worker_spec.pop(name, None)
            self._submitter.explain_refusal(error)
            stop_on_refusal(cluster._adaptive, error)
            raise
        orphans: list[str] = []
        for old, name, job_id in zip(provisional, names, job_ids, strict=True):
            spec = cluster.worker_spec.pop(old, None)
            if spec is None or cluster.status in (Status.closing, Status.closed):
                orphans.append(job_id)  # scaled down while the submission was under way
                continue
            cluster.worker_spec[name] = spec
            job = self._make_job(name, job_id)
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
