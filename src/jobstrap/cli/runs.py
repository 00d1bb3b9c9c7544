"""What the saved runs are now: asked of their batch systems, said in one vocabulary.

``status``, ``cancel`` and ``prune`` all start here. :func:`ask` puts one status query
per batch system (live view, then its accounting: sacct, ``qstat -x``, the local
queue's own records); :func:`describe` turns the answers into what a person reads,
and is the ONE place that decides what a run is:

- live: a job is pending or running; ``CANCELLING`` when jobstrap asked to cancel the
  run (:attr:`RunRecord.cancel_requested`) and the job has not left yet;
- ended: the batch system's final word when it still has one (COMPLETED, FAILED,
  CANCELLED, TIMEOUT, ...); else what jobstrap recorded in the run directory (the
  app's ``exit_code``, ``result.pkl``/``error.pkl``) or the registry (a cancel);
  else plainly ``ENDED``. A job the batch system has forgotten is not MISSING: it
  simply ended long enough ago.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jobstrap.batchctl.control import BatchControl
from jobstrap.errors import BatchCommandError
from jobstrap.states import JobState
from jobstrap.store import registry
from jobstrap.store.registry import JobKey, RunRecord
from jobstrap.store.rundir import RunDir
from jobstrap.systems import JobRecord

__all__ = [
    "ENDED",
    "RunView",
    "View",
    "ask",
    "describe",
    "elsewhere",
    "ended_at",
    "is_ours",
    "recover",
]

#: Shown for a run that ended with nothing left to say how.
ENDED = "ENDED"
#: How the jobs of one run rank when they ended differently: the first found names it.
_WORST = (
    JobState.FAILED,
    JobState.OUT_OF_MEMORY,
    JobState.NODE_FAIL,
    JobState.TIMEOUT,
    JobState.CANCELLED,
    JobState.PREEMPTED,
    JobState.MISSING,
)
#: States of a run that is, or may be, still in the batch system (UNKNOWN: cannot tell,
#: so never hidden and never pruned).
_LIVE = frozenset(
    {
        JobState.PENDING.value,
        JobState.RUNNING.value,
        JobState.CANCELLING.value,
        JobState.UNKNOWN.value,
    }
)


@dataclass(frozen=True)
class View:
    """What ``status`` shows of one job, or of a whole run."""

    state: str
    reason: str = ""
    nodes: str = ""
    elapsed: str = ""
    left: str = ""

    @property
    def live(self) -> bool:
        """True while the job (run) is, or may be, in the batch system."""
        return self.state in _LIVE


@dataclass(frozen=True)
class RunView:
    """One run: its jobs' views (in job id order) and the run's own line."""

    run: RunRecord
    jobs: list[tuple[str, View]]
    summary: View

    @property
    def live(self) -> bool:
        """True while any job of the run is, or may be, in the batch system."""
        return self.summary.live


# ------------------------------------------------------------------ asking the systems


def elsewhere(runs: Sequence[RunRecord]) -> dict[str, str]:
    """Runs whose jobs were numbered by another controller than the one here.

    Returns run id -> why they are not asked about. Their ids mean other jobs (or
    nothing) on this controller: asking, and worse cancelling, would hit the wrong job.
    A record without a controller (older versions) or a controller that cannot say
    its name is asked, as before; the tag check then tells its jobs from others.
    """
    away: dict[str, str] = {}
    for run in runs:
        if not run.controller:
            continue
        here = BatchControl.for_system(run.system).controller()
        if here and here != run.controller:
            away[run.run_id] = f"submitted to {run.system} {run.controller}, this is {here}"
    return away


def ask(runs: Sequence[RunRecord]) -> tuple[dict[JobKey, JobRecord], list[str]]:
    """Every job of ``runs``: one status query per batch system. Returns records, errors.

    Records are keyed by :class:`JobKey`, never by the id alone: a local run and a
    Slurm run (or two Slurm runs either side of a controller restart) may both have
    job ``5``, and each must get its own system's answer.
    """
    by_system: dict[str, list[RunRecord]] = defaultdict(list)
    for run in runs:
        by_system[run.system].append(run)
    found: dict[JobKey, JobRecord] = {}
    errors: list[str] = []
    for system, group in by_system.items():
        ids = [job_id for run in group for job_id in run.job_ids]
        try:
            answer = BatchControl.for_system(system).status(ids)
        except BatchCommandError as error:
            errors.append(f"cannot ask {system}: {error}")
            for run in group:
                for key in run.job_keys():
                    found[key] = JobRecord(key.job_id, JobState.UNKNOWN, reason="no answer")
            continue
        for run in group:
            found.update((k, answer[k.job_id]) for k in run.job_keys() if k.job_id in answer)
    return found, errors


def recover(runs: Sequence[RunRecord]) -> list[RunRecord]:
    """Find the jobs of runs whose submitter died before it could save their ids.

    Such a run is saved as ``submitting`` with its tag; the job name is
    ``<job_name>-<tag>``, so the batch system can say which jobs are the run's.
    """
    recovered: list[RunRecord] = []
    for run in runs:
        job_name = (run.profile.get("resolved") or {}).get("job_name")
        if run.status != "submitting" or run.job_ids or not run.tags or not job_name:
            recovered.append(run)
            continue
        batchctl = BatchControl.for_system(run.system)
        ids: list[str] = []
        try:
            for tag in run.tags:
                argv = batchctl.system.find_by_name_argv(f"{job_name}-{tag}")
                ids += batchctl.system.parse_find_by_name(batchctl.run(argv).stdout)
        except BatchCommandError:
            recovered.append(run)  # cannot tell now; the next status asks again
            continue
        if ids:
            run = registry.update(run.run_id, job_ids=ids, status="submitted")
        recovered.append(run)
    return recovered


def is_ours(run: RunRecord, record: JobRecord) -> bool:
    """Does the batch system's job behind this id still carry the run's tag?"""
    return not record.name or any(record.name.endswith(tag) for tag in run.tags)


# ------------------------------------------------------------------- what a run is


def _recorded(run: RunRecord) -> View:
    """How a run ended by what jobstrap left in its run directory and registry.

    Only file existence and the plain-text exit code are read: nothing is unpickled.
    """
    run_dir = RunDir(Path(run.run_dir))
    try:
        code: int | None = int(run_dir.exit_code_file.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        code = None
    if code is not None:
        # The app's own word, as `submit --wait` and JobFuture take it.
        if code == 0:
            return View(JobState.COMPLETED.value, "exit 0 (run directory)")
        return View(JobState.FAILED.value, f"exit {code} (run directory)")
    if run_dir.error_file.exists():
        return View(JobState.FAILED.value, "the app raised (error.pkl)")
    if run_dir.result_file.exists():
        return View(JobState.COMPLETED.value, "result.pkl written")
    if run.cancel_requested:
        return View(JobState.CANCELLED.value, _cancelled_by(run, live=False))
    return View(ENDED, "no longer known to the batch system")


def _cancelled_by(run: RunRecord, *, live: bool) -> str:
    """Why a run's jobs were cancelled: the cluster closed, or a cancel was asked for."""
    if run.status == "closed":
        return "cluster closed"
    return "cancel requested" if live else "cancelled by jobstrap"


def _job_view(run: RunRecord, record: JobRecord | None, recorded: View | None) -> View:
    if record is None or not is_ours(run, record):
        # Gone from the controller and its history (or the id now serves another job):
        # it ended long enough ago; say how, if jobstrap kept a trace.
        return recorded or _recorded(run)
    if not record.state.is_terminal and record.state is not JobState.UNKNOWN:
        if run.cancel_requested:
            why = _cancelled_by(run, live=True)
            return View(JobState.CANCELLING.value, why, record.nodes, record.elapsed)
        return View(
            record.state.value, record.reason, record.nodes, record.elapsed, record.time_left
        )
    reason = record.reason
    if record.exit_code and record.state.is_terminal:
        reason = f"{reason} exit {record.exit_code}".strip()
    return View(record.state.value, reason, record.nodes, record.elapsed, record.time_left)


def _summary(jobs: Sequence[View]) -> View:
    """A run's one line from its jobs' views: the live part, else how it ended."""
    if len(jobs) == 1:
        return jobs[0]
    counts = Counter(view.state for view in jobs)
    reason = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    live = [view for view in jobs if view.live]
    nodes = ",".join(dict.fromkeys(v.nodes for v in (live or jobs) if v.nodes))
    if live:
        order = (JobState.CANCELLING.value, JobState.RUNNING.value, JobState.PENDING.value)
        now = next((s for s in order if s in counts), JobState.UNKNOWN.value)
        return View(now, reason, nodes, live[0].elapsed, live[0].left)
    worst = next((s.value for s in _WORST if s.value in counts), None)
    if worst is None:
        worst = JobState.COMPLETED.value if JobState.COMPLETED.value in counts else ENDED
    return View(worst, reason if len(counts) > 1 else jobs[0].reason, nodes)


def describe(run: RunRecord, found: Mapping[JobKey, JobRecord], away: str | None = None) -> RunView:
    """What run ``run`` is, from the batch systems' answers in ``found`` (see :func:`ask`).

    Parameters
    ----------
    run
        The saved run.
    found
        The batch systems' records, by job key; a job absent from it is one its batch
        system no longer knows.
    away
        Why the run's controller was not asked (:func:`elsewhere`): its state is
        unknown here.
    """
    if away is not None:
        unknown = View(JobState.UNKNOWN.value, away)
        return RunView(run, [(job_id, unknown) for job_id in run.job_ids], unknown)
    if not run.job_ids:
        if run.status == "submitting":
            why = "no job id saved: the submission was interrupted"
            waiting = View(JobState.UNKNOWN.value, why)
            return RunView(run, [], waiting)
        return RunView(run, [], View(JobState.FAILED.value, "the submission failed"))
    recorded: View | None = None
    if any(found.get(key) is None for key in run.job_keys()):
        recorded = _recorded(run)  # read once per run, not once per forgotten job
    jobs = [(key.job_id, _job_view(run, found.get(key), recorded)) for key in run.job_keys()]
    return RunView(run, jobs, _summary([view for _, view in jobs]))


def ended_at(run: RunRecord) -> float:
    """When ``run`` last showed a sign of life (epoch seconds), for ``status``'s window
    and ``prune --older-than``.

    The newest of: its submission, the cancel jobstrap asked for, and the
    modification times of what its jobs wrote (logs, exit code, result). Only
    ``lstat`` is used, so a link in the run directory tells nothing about its target.
    """
    times = [run.created, float(run.extra.get("cancelled") or 0.0)]
    run_dir = RunDir(Path(run.run_dir))
    paths: list[str | Path] = [run_dir.exit_code_file, run_dir.result_file, run_dir.error_file]
    paths += [run_dir.logs_dir / name for name in _names(run_dir.logs_dir)]
    paths += [p for job_paths in run.logs.values() for p in job_paths.values()]
    for path in paths:
        try:
            times.append(os.lstat(path).st_mtime)
        except OSError:
            continue
    return max(times)


def _names(directory: os.PathLike[str]) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []
