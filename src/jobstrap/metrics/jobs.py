"""jobstrap's own metrics of a notebook cluster: its jobs, failures and batch commands.

:class:`ClusterCollector` is a ``prometheus_client`` collector over what the
cluster's process knows (its job book, its lifetime manager, its
:class:`~jobstrap.batchctl.control.BatchControl`). It reads them through the
cluster's public properties only (``jobs``, ``job_history``, ``failures``,
``batchctl``, ``lifetimes``), so this module imports nothing of the client side.
The scheduler's metrics endpoint serves it beside Dask's; the series carry no
``run`` label of their own (the target's labels name the run).

The same series, under the same names and labels, where the job book is elsewhere:
a batch run's scheduler serves its own job (:class:`RunJobs`: running, queue wait,
walltime used), and the scheduler job of a ``scheduler="job"`` cluster serves the
book its notebook pushes (:func:`to_wire`, :class:`PushedCollector`).

Series (all ``jobstrap_``):

* ``jobs{state,pool}``: live jobs by state; ``jobs_submitted_total{pool}``;
  ``jobs_ended_total{state,pool}`` (COMPLETED, FAILED, TIMEOUT, OUT_OF_MEMORY...);
* ``job_failures_total{reason}``: failures the cluster counted, by end state
  (``OUT_OF_MEMORY``, ``TIMEOUT``, ``NODE_FAIL``, ``PREEMPTED``, ``FAILED``...);
* ``job_queue_wait_seconds{job_id,pool}``: submission to start (pending jobs: so far);
  ``job_pending_seconds{job_id,pool}`` for pending jobs only;
* ``job_walltime_seconds{job_id,pool}``, ``job_walltime_used_ratio{job_id,pool}``;
* ``rotations_total``, ``replacements_total`` (walltime-aware rotation);
* ``batch_command_calls_total{command}`` and ``batch_command_seconds_total{command}``
  (mean latency: the ratio of their rates).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = [
    "ClusterCollector",
    "JobView",
    "PushedCollector",
    "RunJobs",
    "job_of_worker",
    "to_wire",
]


def _state(status: Any) -> str:
    state = getattr(status, "state", "")
    return str(getattr(state, "value", state))


class ClusterCollector:
    """Prometheus collector over a notebook cluster's jobs.

    Parameters
    ----------
    cluster
        A :class:`~jobstrap.cluster.core.BatchCluster` (or anything with its
        ``jobs``, ``job_history``, ``failures`` and ``batchctl`` properties).
    pool_of
        The pool of a job id (label ``pool``); default ``"default"``.
    rotation
        The cluster's rotation (``retirements`` and ``replacements`` counters), if any.
    clock
        Epoch seconds now (tests pass their own).
    """

    def __init__(
        self,
        cluster: Any,
        *,
        pool_of: Callable[[str], str] | None = None,
        rotation: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = cluster
        self.pool_of = pool_of or (lambda job_id: "default")
        self.clock = clock
        self.rotation = rotation

    def collect(self) -> Iterator[Any]:
        """The series above, from the cluster's state now."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        now = self.clock()
        live = dict(getattr(self.cluster, "jobs", {}) or {})
        history = dict(getattr(self.cluster, "job_history", {}) or {})

        jobs = GaugeMetricFamily("jobstrap_jobs", "Live jobs by state", labels=["state", "pool"])
        by_state = Counter((_state(s), self.pool_of(s.job_id)) for s in live.values())
        for (state, pool), count in sorted(by_state.items()):
            jobs.add_metric([state, pool], count)
        yield jobs

        submitted = CounterMetricFamily(
            "jobstrap_jobs_submitted", "Jobs submitted", labels=["pool"]
        )
        for pool, count in sorted(Counter(self.pool_of(j) for j in {*live, *history}).items()):
            submitted.add_metric([pool], count)
        yield submitted

        ended = CounterMetricFamily(
            "jobstrap_jobs_ended", "Jobs that ended, by end state", labels=["state", "pool"]
        )
        ended_states = Counter(
            (_state(s), self.pool_of(s.job_id)) for j, s in history.items() if j not in live
        )
        for (state, pool), count in sorted(ended_states.items()):
            ended.add_metric([state, pool], count)
        yield ended

        failures = CounterMetricFamily(
            "jobstrap_job_failures", "Job failures by reason (end state)", labels=["reason"]
        )
        reasons = Counter(
            str(getattr(f, "state", "FAILED")) for f in getattr(self.cluster, "failures", [])
        )
        for reason, count in sorted(reasons.items()):
            failures.add_metric([reason], count)
        yield failures

        yield from self._per_job(live, now)
        yield from self._rotation()
        yield from self._batch_commands()

    def _per_job(self, live: dict[str, Any], now: float) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        labels = ["job_id", "pool"]
        wait = GaugeMetricFamily(
            "jobstrap_job_queue_wait_seconds",
            "Submission to start (so far if pending)",
            labels=labels,
        )
        pending = GaugeMetricFamily(
            "jobstrap_job_pending_seconds", "How long a pending job has waited", labels=labels
        )
        walltime = GaugeMetricFamily("jobstrap_job_walltime_seconds", "Job walltime", labels=labels)
        used = GaugeMetricFamily(
            "jobstrap_job_walltime_used_ratio", "Share of its walltime a job has run", labels=labels
        )
        for job_id, status in sorted(live.items()):
            key = [job_id, self.pool_of(job_id)]
            submitted = float(getattr(status, "submitted", 0.0) or 0.0)
            started = getattr(status, "started", None)
            if started is not None:
                wait.add_metric(key, max(0.0, float(started) - submitted))
                total = float(getattr(status, "walltime", 0) or 0)
                if total > 0:
                    used.add_metric(key, max(0.0, now - float(started)) / total)
            elif submitted and _state(status) == "PENDING":
                wait.add_metric(key, max(0.0, now - submitted))
                pending.add_metric(key, max(0.0, now - submitted))
            if getattr(status, "walltime", 0):
                walltime.add_metric(key, float(status.walltime))
        yield from (wait, pending, walltime, used)

    def _rotation(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        lifetime = self.rotation
        if lifetime is None:
            return
        yield CounterMetricFamily(
            "jobstrap_rotations",
            "Jobs retired before their walltime",
            value=getattr(lifetime, "retirements", 0),
        )
        yield CounterMetricFamily(
            "jobstrap_replacements",
            "Jobs submitted to replace retiring ones",
            value=getattr(lifetime, "replacements", 0),
        )

    def _batch_commands(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        batchctl = getattr(self.cluster, "batchctl", None)
        if batchctl is None:
            return
        calls = CounterMetricFamily(
            "jobstrap_batch_command_calls", "Batch commands run", labels=["command"]
        )
        for command, count in sorted(dict(getattr(batchctl, "calls", {})).items()):
            calls.add_metric([command], count)
        yield calls
        seconds = CounterMetricFamily(
            "jobstrap_batch_command_seconds", "Time spent in batch commands", labels=["command"]
        )
        for command, total in sorted(dict(getattr(batchctl, "seconds", {})).items()):
            seconds.add_metric([command], total)
        yield seconds


def job_of_worker(cluster: Any) -> Callable[[str], str | None]:
    """The job id (as ``cluster.jobs`` keys it) of a worker name, or None.

    A cluster's workers are named ``<job name>-<i>`` after the job they run in.
    """

    def job_of(worker: str) -> str | None:
        job_name = worker.rsplit("-", 1)[0]
        for job_id, status in dict(getattr(cluster, "jobs", {}) or {}).items():
            if getattr(status, "name", None) in (job_name, worker):
                return str(job_id)
        return None

    return job_of


# -- jobs seen from elsewhere: a batch run's own job, a scheduler job's pushed book ------


@dataclass(frozen=True)
class JobView:
    """One job as :class:`ClusterCollector` reads it (the fields of a job status)."""

    job_id: str
    state: str
    submitted: float = 0.0
    started: float | None = None
    walltime: float = 0.0
    name: str = ""


class RunJobs:
    """A batch run's own job, as its scheduler (inside the job) sees it.

    Cluster-like for :class:`ClusterCollector`: the job is ``RUNNING`` (its
    scheduler answers), started when the scheduler's process did, submitted when
    ``run.json`` says the run was created, with the walltime the run was submitted
    with. What the job cannot see of itself (its end, a failure) is not served.

    Parameters
    ----------
    job_id
        The job's id (``JOBSTRAP_JOB_ID``).
    started
        When the job started (epoch seconds; the scheduler process's start).
    submitted_and_walltime
        Reads ``(submitted, walltime seconds)`` from the run's record, or None
        while it is not there (the submitter writes it after the batch system
        answered, so a fast job can start first): asked again until it answers.
    """

    failures: tuple[Any, ...] = ()
    job_history: Mapping[str, JobView] = MappingProxyType({})  # it sees no job end
    batchctl: Any = None

    def __init__(
        self,
        job_id: str,
        started: float,
        submitted_and_walltime: Callable[[], tuple[float, float] | None],
    ) -> None:
        self.job_id = job_id or "unknown"
        self.started = started
        self._read = submitted_and_walltime
        self._record: tuple[float, float] | None = None

    @property
    def jobs(self) -> dict[str, JobView]:
        """The run's job, running."""
        if self._record is None:
            self._record = self._read()
        submitted, walltime = self._record or (0.0, 0.0)
        view = JobView(self.job_id, "RUNNING", submitted or 0.0, self.started, walltime)
        return {self.job_id: view}


def to_wire(collector: Any) -> list[dict[str, Any]]:
    """A collector's families as plain data (sent to a scheduler in another job)."""
    return [
        {
            "name": family.name,
            "type": family.type,
            "documentation": family.documentation,
            "samples": [[s.name, dict(s.labels), float(s.value)] for s in family.samples],
        }
        for family in collector.collect()
    ]


class PushedCollector:
    """Serves the families a notebook cluster last pushed (:func:`to_wire`).

    A cluster whose scheduler runs in a job keeps its job book in the notebook's
    process; it pushes its :class:`ClusterCollector`'s families to the scheduler
    every few seconds. A book older than ``max_age`` (the notebook went away) is
    not served: stale job states would be taken for live ones.
    """

    def __init__(self, *, max_age: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self.max_age = max_age
        self.clock = clock
        self.families: list[dict[str, Any]] = []
        self.received = 0.0

    def receive(self, families: list[dict[str, Any]]) -> None:
        """Keep ``families`` (plain data from :func:`to_wire`) as the current book."""
        self.families = list(families)
        self.received = self.clock()

    def collect(self) -> Iterator[Any]:
        """The last book's families, if it is recent."""
        from prometheus_client import Metric

        if self.clock() - self.received > self.max_age:
            return
        for data in self.families:
            family = Metric(str(data["name"]), str(data["documentation"]), str(data["type"]))
            for name, labels, value in data["samples"]:
                family.add_sample(str(name), {str(k): str(v) for k, v in labels.items()}, value)
            yield family
