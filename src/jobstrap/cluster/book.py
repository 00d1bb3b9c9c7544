"""The job book of a notebook cluster: every job it submitted, their states, the failure policy.

Keyed by job id. The watcher's state changes and the scheduler's worker arrivals land
here; :meth:`JobBook.job_failed` and :meth:`JobBook.cancelled_elsewhere` decide
when failed jobs stop the cluster (``max_failures`` in a row, or at once when
retrying cannot help). The lock guards what the user's thread reads (``jobs``);
everything else runs on the event loop's thread.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterable

from jobstrap.cluster.jobs import (
    JobInfo,
    JobStatus,
    diagnose,
    killed_for_memory,
    stderr_tail,
)
from jobstrap.errors import JobFailedError
from jobstrap.states import JobState
from jobstrap.systems import JobRecord

__all__ = ["ClusterFailedError", "JobBook", "JobFailedWarning", "warn"]

logger = logging.getLogger(__name__)


class JobFailedWarning(UserWarning):
    """A worker job failed; the message says why and shows its stderr tail."""


class ClusterFailedError(JobFailedError):
    """Worker jobs keep failing: the cluster stopped submitting.

    Raised by ``scale()``, ``adapt()`` and ``wait_for_workers()`` once the
    cluster has given up; the message names the last failed job, why it failed
    and the tail of its stderr. :meth:`BatchCluster.reset_failures` lifts it.
    """

    def __init__(self, failure: JobFailedError, failures: int) -> None:
        self.failures = failures
        self.last_failure = failure
        super().__init__(failure.job_id, failure.state, failure.stderr_tail, _detail(failure))
        self.args = (
            f"stopped submitting worker jobs after {failures} failed job(s); "
            + str(failure.args[0] if failure.args else failure),
        )


def warn(message: str, category: type[Warning] = JobFailedWarning) -> None:
    """Warn from the event loop's thread, where no frame of the user's code is on the stack.

    ``warn_explicit`` without a registry shows every occurrence (each is a different
    job) and no misleading source line of this module. The filename stays the
    cluster's module so that existing warning filters keep matching.
    """
    warnings.warn_explicit(message, category, filename="jobstrap.cluster.core", lineno=0)


def _detail(failure: JobFailedError) -> str:
    text = str(failure.args[0] if failure.args else failure)
    head = text.split("\n", 1)[0]
    return head.split(": ", 1)[1] if ": " in head else ""


class JobBook:
    """Every worker job of one cluster by job id, and the failure policy.

    Parameters
    ----------
    max_failures
        Failed (or foreign-cancelled) jobs in a row after which the cluster gives up.
    python
        The profile's Python, named in "python not found" explanations.
    """

    def __init__(self, *, max_failures: int, python: str) -> None:
        #: Guards the infos against the user's thread (``jobs``) and the watcher.
        self.lock = threading.Lock()
        self._jobs: dict[str, JobInfo] = {}
        self._callbacks: list[Callable[[JobStatus], None]] = []
        self._failures: list[JobFailedError] = []
        self._max_failures = max_failures
        self._python = python
        self.consecutive_failures = 0
        #: Why the cluster stopped submitting, or None while it is healthy.
        self.error: ClusterFailedError | None = None

    # -- which jobs exist ------------------------------------------------------------------

    def record(
        self, names: Iterable[str], job_ids: Iterable[str], walltime: int, pool: str = "default"
    ) -> None:
        """Book freshly submitted jobs (pending) of one pool."""
        now = time.time()
        with self.lock:
            for name, job_id in zip(names, job_ids, strict=True):
                self._jobs[job_id] = JobInfo(
                    job_id=job_id, name=name, walltime=walltime, submitted=now, pool=pool
                )

    def queue_waits(self, pool: str) -> list[float]:
        """Seconds from submission to the first worker, for the pool's jobs (oldest first)."""
        with self.lock:
            infos = sorted(self._jobs.values(), key=lambda info: info.submitted)
        return [i.arrived - i.submitted for i in infos if i.pool == pool and i.arrived is not None]

    def get(self, job_id: str) -> JobInfo | None:
        """The job's info, or None for a job of another cluster."""
        return self._jobs.get(job_id)

    def name_of(self, job: str) -> str:
        """The job name of a job id (a job name is returned as it is)."""
        with self.lock:
            if job in self._jobs:
                return self._jobs[job].name
        return job

    def ids(self) -> list[str]:
        """Every job id ever booked."""
        with self.lock:
            return list(self._jobs)

    def mark_cancelled(self, job_ids: Iterable[str]) -> None:
        """These jobs are being cancelled by the cluster: their end is no failure."""
        with self.lock:
            for job_id in job_ids:
                if job_id in self._jobs:
                    self._jobs[job_id].cancelled_by_us = True

    # -- states --------------------------------------------------------------------------

    def update(self, job_id: str, record: JobRecord) -> JobInfo | None:
        """Apply a watcher record; the info when something changed, else None."""
        with self.lock:
            info = self._jobs.get(job_id)
            if info is None or not info.update(record):
                return None
        return info

    def add_callback(self, callback: Callable[[JobStatus], None]) -> None:
        """Call ``callback(JobStatus)`` after every job state change."""
        self._callbacks.append(callback)

    def notify(self, info: JobInfo) -> None:
        """Hand a job's new state to every callback (a failing callback is logged)."""
        status = info.snapshot()
        for callback in list(self._callbacks):
            try:
                callback(status)
            except Exception:
                logger.exception("job callback %r failed", callback)

    def worker_arrived(self, info: JobInfo, worker: str, now: float) -> bool:
        """A worker of the job reached the scheduler; True when that is the first news."""
        with self.lock:
            info.workers.add(worker)
            first_news = info.state is JobState.PENDING
            if first_news:
                info.state = JobState.RUNNING  # a worker is proof; the watcher may lag
            if info.arrived is None:
                info.arrived = now
            if info.started is None:
                info.started = now
        # A job that got a worker to the scheduler is a success: failures must be
        # consecutive to stop the cluster.
        self.consecutive_failures = 0
        return first_news

    def worker_left(self, info: JobInfo, worker: str) -> None:
        """A worker of the job left the scheduler."""
        with self.lock:
            info.workers.discard(worker)

    def live(self) -> dict[str, JobStatus]:
        """Pending and running jobs not being cancelled, by job id."""
        now = time.time()
        with self.lock:
            return {
                job_id: info.snapshot(now)
                for job_id, info in self._jobs.items()
                if not info.state.is_terminal and not info.cancelled_by_us
            }

    def history(self) -> dict[str, JobStatus]:
        """Every booked job, ended ones included, by job id."""
        now = time.time()
        with self.lock:
            return {job_id: info.snapshot(now) for job_id, info in self._jobs.items()}

    # -- failure policy --------------------------------------------------------------------

    @property
    def failures(self) -> list[JobFailedError]:
        """Every worker-job failure so far (newest last)."""
        return list(self._failures)

    def reset(self) -> None:
        """Forget the failures in a row and the verdict (the cluster submits again)."""
        self.error = None
        self.consecutive_failures = 0

    def job_failed(self, info: JobInfo, log_directory: str) -> ClusterFailedError | None:
        """A job failed: explain it; the error to give up with, or None (replace it)."""
        tail = stderr_tail(log_directory, info.job_id)
        if info.state is JobState.FAILED and killed_for_memory(tail):
            # Slurm says FAILED for the job when the memory limit killed a step of it.
            with self.lock:
                info.state = JobState.OUT_OF_MEMORY
        diagnosis = diagnose(info.state, info.exit_code, info.nodes, tail, self._python)
        failure = JobFailedError(info.job_id, info.state.value, tail, diagnosis.message)
        self._failures.append(failure)
        self.consecutive_failures += 1
        if diagnosis.fatal or self.consecutive_failures >= self._max_failures:
            return ClusterFailedError(failure, self.consecutive_failures)
        warn(
            f"{failure}\n(failure {self.consecutive_failures} of at most"
            f" {self._max_failures} in a row; submitting a replacement)"
        )
        return None

    def cancelled_elsewhere(self, info: JobInfo) -> ClusterFailedError | None:
        """A worker job cancelled by someone else (``scancel``, an admin): replace it.

        The cluster keeps the size it was asked for (``scale``/``adapt`` is how to
        change it). The cancellation counts with the failures in a row, so that
        cancelling its jobs again and again (``scancel -u``) stops the cluster after
        ``max_failures`` instead of starting a fight.
        """
        failure = JobFailedError(info.job_id, info.state.value, "", "cancelled outside the cluster")
        self._failures.append(failure)
        self.consecutive_failures += 1
        if self.consecutive_failures >= self._max_failures:
            return ClusterFailedError(failure, self.consecutive_failures)
        warn(
            f"worker job {info.job_id} was cancelled outside the cluster; submitting a"
            f" replacement ({self.consecutive_failures} of at most"
            f" {self._max_failures} lost jobs in a row)"
        )
        return None
