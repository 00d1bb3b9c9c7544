"""What a notebook cluster knows about each of its batch jobs.

One :class:`JobInfo` per submitted job (or array task): its state as batch control's
watcher last reported it, its node, when it started, how long it has left, and
which of its Dask workers have arrived. :class:`JobStatus` is the read-only snapshot
``cluster.jobs`` hands out. When a job fails, :func:`stderr_tail` finds the tail of
its stderr for :func:`jobstrap.jobs.diagnose.diagnose`, the one failure explainer.

:func:`worker_job_spec` and :func:`name_jobs` build the worker jobs a cluster
submits. Pure except for :func:`stderr_tail`, which reads the job's log file.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jobstrap.config.profile import Profile
from jobstrap.config.units import format_duration
from jobstrap.jobs.diagnose import diagnose, killed_for_memory
from jobstrap.jobs.spec import JobSpec, worker_job
from jobstrap.states import JobState
from jobstrap.store.files import read_tail
from jobstrap.systems import available, get_system
from jobstrap.systems.base import BatchSystem, JobRecord

__all__ = [
    "FAILED_STATES",
    "JobInfo",
    "JobStatus",
    "diagnose",
    "explain_failure",
    "killed_for_memory",
    "name_jobs",
    "parse_elapsed",
    "stderr_tail",
    "worker_job_spec",
]

#: End states that count as failures of a worker job. TIMEOUT (the walltime was
#: used up) and COMPLETED (the workers retired) are normal ends; CANCELLED is
#: somebody's decision; PREEMPTED and NODE_FAIL are the site's doing.
FAILED_STATES = frozenset({JobState.FAILED, JobState.OUT_OF_MEMORY, JobState.MISSING})


@dataclass
class JobInfo:
    """The cluster's live record of one of its batch jobs (mutable, loop thread only)."""

    job_id: str
    name: str
    walltime: int
    submitted: float = field(default_factory=time.time)
    state: JobState = JobState.PENDING
    nodes: str = ""
    reason: str = ""
    exit_code: int | None = None
    started: float | None = None
    ended: float | None = None
    workers: set[str] = field(default_factory=set)
    #: Epoch seconds when the first of its workers reached the scheduler.
    arrived: float | None = None
    #: Set by the cluster when it cancelled the job itself (a CANCELLED end is ours).
    cancelled_by_us: bool = False
    #: The worker pool the job belongs to.
    pool: str = "default"

    def update(self, record: JobRecord, now: float | None = None) -> bool:
        """Apply a watcher record; return True when the state changed."""
        now = time.time() if now is None else now
        state = record.state
        if state is JobState.UNKNOWN:
            # The controller could not be asked: keep what we knew.
            return False
        changed = state is not self.state
        self.state = state
        if record.nodes:
            self.nodes = record.nodes
        if record.reason and record.reason not in ("None", "(null)"):
            self.reason = record.reason
        if record.exit_code is not None:
            self.exit_code = record.exit_code
        if state is JobState.RUNNING and self.started is None:
            elapsed = parse_elapsed(getattr(record, "elapsed", ""))
            self.started = now - elapsed if elapsed is not None else now
        if state.is_terminal and self.ended is None:
            self.ended = now
        return changed

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds of walltime left, or ``None`` before the job started."""
        if self.started is None:
            return None
        now = time.time() if now is None else now
        end = self.ended if self.ended is not None else now
        return max(0.0, self.walltime - (end - self.started))

    def snapshot(self, now: float | None = None) -> JobStatus:
        """A read-only copy for ``cluster.jobs``."""
        return JobStatus(
            job_id=self.job_id,
            name=self.name,
            state=self.state,
            node=self.nodes,
            submitted=self.submitted,
            started=self.started,
            walltime=self.walltime,
            remaining=self.remaining(now),
            workers=tuple(sorted(self.workers)),
            reason=self.reason,
            pool=self.pool,
        )


@dataclass(frozen=True)
class JobStatus:
    """One batch job of a cluster, as ``cluster.jobs`` shows it.

    Attributes
    ----------
    job_id
        The batch system's id (``"123"`` or array task ``"123_4"``).
    name
        The job's name in the cluster; its workers are ``<name>-0``, ``<name>-1``, ...
    state
        PENDING, RUNNING or an end state.
    node
        The node(s) the job runs on (batch system's notation), once known.
    submitted
        Epoch seconds of the submission.
    started
        Epoch seconds when the job started running, or ``None``.
    walltime
        The job's walltime in seconds.
    remaining
        Seconds of walltime left, or ``None`` before the job started.
    workers
        Names of the job's Dask workers connected to the scheduler.
    reason
        Why it is pending or why it ended, as the batch system says.
    pool
        The worker pool the job belongs to (``"default"`` without pools).
    """

    job_id: str
    name: str
    state: JobState
    node: str
    submitted: float
    started: float | None
    walltime: int
    remaining: float | None
    workers: tuple[str, ...]
    reason: str = ""
    pool: str = "default"

    def __str__(self) -> str:
        parts = [f"{self.job_id} {self.state.value}"]
        if self.pool != "default":
            parts[0] += f" ({self.pool})"
        if self.node:
            parts.append(f"on {self.node}")
        if self.remaining is not None:
            parts.append(f"{format_duration(self.remaining)} left")
        if self.reason and self.state is JobState.PENDING:
            parts.append(f"({self.reason})")
        parts.append(f"{len(self.workers)} workers")
        return ", ".join(parts)


def parse_elapsed(text: str) -> float | None:
    """Seconds from Slurm's elapsed form: ``1-02:03:04``, ``02:03:04``, ``03:04``."""
    text = (text or "").strip()
    if not text or text in ("INVALID", "UNLIMITED"):
        return None
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        if not day_text.isdigit():
            return None
        days = int(day_text)
    parts = text.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return float(days * 86400 + seconds)


def stderr_tail(
    log_directory: str,
    job_id: str,
    lines: int = 20,
    limit: int = 64_000,
    system: BatchSystem | None = None,
) -> str:
    """The last ``lines`` non-empty lines of a job's stderr file, or ``""`` if there is none.

    Looks for ``<stem>.err`` under the log names the batch system gives the job
    (``123.err``, ``123_4.err`` for array tasks; PBS's ``7[2].server`` is ``7_2.err``),
    trying every known system's names when ``system`` is not given, and reads at most
    ``limit`` bytes from its end.
    """
    for stem in _log_stems(job_id, system):
        text = read_tail(Path(log_directory) / f"{stem}.err", lines, limit=limit, skip_blank=True)
        if text is not None:
            return "\n".join(text.splitlines())
    return ""


def _log_stems(job_id: str, system: BatchSystem | None) -> list[str]:
    if system is not None:
        return system.log_stems(job_id)
    stems: list[str] = []
    for name in available():
        with contextlib.suppress(Exception):  # a plugin that cannot load has no logs here
            stems += get_system(name).log_stems(job_id)
    return list(dict.fromkeys([job_id, *stems]))


def explain_failure(
    state: JobState, exit_code: int | None, nodes: str, tail: str, python: str
) -> str:
    """One line saying why a worker job failed (the message of :func:`diagnose`)."""
    return diagnose(state, exit_code, nodes, tail, python).message


# --- the worker job ----------------------------------------------------------------------------


def worker_job_spec(
    profile: Profile,
    run_dir: str,
    tag: str,
    *,
    scheduler_address: str | None,
    job_cpu: int | None = None,
    job_mem: int | None = None,
) -> JobSpec:
    """The job of Dask workers a notebook cluster submits (before naming).

    Parameters
    ----------
    profile
        The cluster's settings.
    run_dir
        The cluster's run directory.
    tag
        The submission's tag.
    scheduler_address
        Where the workers connect (``None``: read ``info.json`` in the run dir).
    job_cpu, job_mem
        dask-jobqueue's request overrides: CPUs and memory asked of the batch
        system per node, when they differ from what the workers use.
    """
    spec = worker_job(
        profile, run_dir, tag, scheduler_address=scheduler_address, name=profile.job_name
    )
    changes: dict[str, Any] = {}
    if job_cpu is not None:
        changes["cpus_per_task"] = job_cpu
    if job_mem is not None:
        changes["memory"] = job_mem
    return replace(spec, **changes) if changes else spec


def name_jobs(spec: JobSpec, prefix: str, serial: int) -> tuple[JobSpec, list[str]]:
    """``spec`` naming its workers after its array task ids, and the job names.

    Job ``k`` of the ``serial``-th submitted script is ``<prefix>-<serial>.<k>``
    (a plain job is ``<prefix>-<serial>.0``). The command runs
    ``jobstrap.bootstrap.worker_entry``, which expands the template in the job and hands
    ``<job name>-<rank>`` to the bootstrap.

    Returns
    -------
    tuple
        ``(spec, names)``: the spec to render and one job name per job it starts.
    """
    base = f"{prefix}-{serial}"
    if spec.array is None:
        template, names = f"{base}.0", [f"{base}.0"]
    else:
        template = base + ".{task}"
        names = [f"{base}.{task}" for task in spec.array.task_ids]
    command = spec.command
    if tuple(command[1:3]) != ("-m", "jobstrap.bootstrap"):
        raise ValueError(f"not a bootstrap command: {' '.join(command[:3])}")
    named = (command[0], "-m", "jobstrap.bootstrap.worker_entry", template, "--", *command[3:])
    return replace(spec, command=named), names
