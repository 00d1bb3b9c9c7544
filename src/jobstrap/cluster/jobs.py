"""What a notebook cluster knows about each of its batch jobs.

One :class:`JobInfo` per submitted job (or array task): its state as batch control's
watcher last reported it, its node, when it started, how long it has left, and
which of its Dask workers have arrived. :class:`JobStatus` is the read-only snapshot
``cluster.jobs`` hands out. When a job fails, :func:`explain_failure` turns the
batch system's record and the tail of the job's stderr into one line a person can
act on ("python not found on node1: /nonexistent/python").

:func:`worker_job_spec` and :func:`name_jobs` build the worker jobs a cluster
submits. Pure except for :func:`stderr_tail`, which reads the job's log file.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jobstrap.config.profile import Profile
from jobstrap.config.units import format_duration
from jobstrap.jobs.spec import JobSpec, worker_job
from jobstrap.states import JobState
from jobstrap.systems.base import JobRecord

__all__ = [
    "FAILED_STATES",
    "JobInfo",
    "JobStatus",
    "explain_failure",
    "is_fatal_failure",
    "killed_for_memory",
    "log_stems",
    "name_jobs",
    "parse_elapsed",
    "stderr_tail",
    "worker_job_spec",
]

#: End states that count as failures of a worker job. TIMEOUT (the walltime was
#: used up) and COMPLETED (the workers retired) are normal ends; CANCELLED is
#: somebody's decision; PREEMPTED and NODE_FAIL are the site's doing.
FAILED_STATES = frozenset({JobState.FAILED, JobState.OUT_OF_MEMORY, JobState.MISSING})

_NOT_FOUND = re.compile(r"(?P<path>[^\s:'\"]+): (?:No such file or directory|command not found)")
_DENIED = re.compile(r"(?P<path>[^\s:'\"]+): Permission denied")
_SRUN_NODE = re.compile(r"srun: error: (?P<node>[\w.-]+): task \d+")
#: Slurm's words for a step the memory limit killed (srun's and slurmstepd's).
_OOM = re.compile(r"tasks? [\d,-]+: Out Of Memory|Detected \d+ oom.kill event")
_NO_MODULE = re.compile(r"No module named '?(?P<module>[\w.]+)'?")


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

    def __str__(self) -> str:
        parts = [f"{self.job_id} {self.state.value}"]
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


def log_stems(job_id: str) -> list[str]:
    """Log file names (without ``.out``/``.err``) a job's id may have.

    Slurm and the local queue: the id itself (``123``, ``123_4``). PBS: the numeric
    part, with an array index as ``_<index>`` (``7.srv`` -> ``7``, ``7[2].srv`` -> ``7_2``).
    """
    pbs = re.sub(r"\[(\d+)\]", r"_\1", job_id.split(".", 1)[0])
    return list(dict.fromkeys([job_id, pbs]))


def stderr_tail(log_directory: str, job_id: str, lines: int = 20, limit: int = 64_000) -> str:
    """The last ``lines`` lines of a job's stderr file, or ``""`` if there is none.

    Looks for ``<job id>.err`` (``123.err`` or ``123_4.err`` for array tasks, the
    names the shipped templates give; PBS's ``7[2].server`` is ``7_2.err``) and reads
    at most ``limit`` bytes from its end.
    """
    data = b""
    for stem in log_stems(job_id):
        try:
            with open(Path(log_directory) / f"{stem}.err", "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - limit))
                data = handle.read()
            break
        except OSError:
            continue
    if not data:
        return ""
    text = data.decode("utf-8", errors="replace")
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _node_of(record_nodes: str, tail: str) -> str:
    match = _SRUN_NODE.search(tail)
    if match:
        return match["node"]
    return record_nodes


def _same_program(found: str, python: str) -> bool:
    return found == python or os.path.basename(found) == os.path.basename(python) == found


def explain_failure(
    state: JobState, exit_code: int | None, nodes: str, tail: str, python: str
) -> str:
    """One line saying why a worker job failed, from its end state and stderr.

    Parameters
    ----------
    state
        The job's end state.
    exit_code
        Its exit code, if the batch system reported one.
    nodes
        The node(s) it ran on, as the batch system reported them.
    tail
        The last lines of its stderr.
    python
        The profile's ``python`` (what the job tried to run).

    Returns
    -------
    str
        e.g. ``"python not found on node1: /nonexistent/python"``.
    """
    node = _node_of(nodes, tail)
    where = f" on {node}" if node else ""
    for match in _NOT_FOUND.finditer(tail):
        if _same_program(match["path"], python):
            return f"python not found{where}: {python} (check python= or the profile)"
    for match in _DENIED.finditer(tail):
        if _same_program(match["path"], python):
            return f"python is not executable{where}: {python}"
    module = _NO_MODULE.search(tail)
    if module and module["module"].split(".")[0] in ("jobstrap", "distributed", "dask"):
        return f"{module['module']} is not installed for {python}{where}"
    if exit_code == 127:
        return f"a command was not found{where} (exit 127)"
    if state is JobState.OUT_OF_MEMORY or killed_for_memory(tail):
        return f"ran out of memory{where}; raise memory= or lower processes="
    if state is JobState.MISSING:
        return f"ended{where} without any worker reaching the scheduler"
    last = tail.strip().splitlines()[-1] if tail.strip() else ""
    code = f" (exit {exit_code})" if exit_code is not None else ""
    return f"failed{where}{code}" + (f": {last}" if last else "")


def killed_for_memory(tail: str) -> bool:
    """Whether a job's stderr says its memory limit killed it.

    Slurm marks only the step whose processes the OOM killer hit as OUT_OF_MEMORY;
    the job itself ends FAILED (its script exited non-zero), and ``squeue``/``sacct
    -X`` say FAILED. The step's words in the job's stderr tell the truth.
    """
    return bool(_OOM.search(tail))


def is_fatal_failure(explanation: str) -> bool:
    """True for failures that would repeat on every node: retrying cannot help."""
    return (
        explanation.startswith(
            ("python not found", "python is not executable", "a command was not found")
        )
        or " is not installed for " in explanation
    )


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
