"""The cluster side of walltime-aware lifetimes: rotate worker jobs before they die.

One :class:`LifetimeManager` per notebook cluster runs every second on the cluster's
event loop. It knows when each running job started (the watcher's RUNNING
transition, or its first worker's arrival) and plans, with
:func:`jobstrap.cluster.lifetime.plan_retirements`, when each one retires: ``margin``
before its walltime at the latest, and never within ``stagger`` of another
retirement of the same cluster. For each job it then

1. submits a replacement at :func:`jobstrap.cluster.lifetime.replacement_due` (from the
   queue waits this cluster observed), so the successor runs before its
   predecessor leaves; from then on the old job is *outgoing*: scaling and the
   adaptive loop count the replacement, not the old job;
2. retires it at its planned time, once the replacements are up (or, at the
   latest, halfway through the margin): its spec entry goes and the cluster's
   ordinary stop path asks the scheduler to ``retire_workers(close_workers=True)``
   (their in-memory results move to the surviving workers) before the job is
   cancelled.

Per-worker timers (``--lifetime``) cannot do this: they do not know about each
other, so jobs started together retire together, and nobody submits a successor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from jobstrap.cluster.jobs import JobStatus
from jobstrap.cluster.lifetime import (
    JobLife,
    QueueWaitEstimate,
    default_margin,
    default_stagger,
    plan_retirements,
    replacement_due,
)
from jobstrap.config.profile import Profile

__all__ = ["JobLifetime", "LifetimeManager", "RotatingJobs"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobLifetime:
    """Where one job stands in the rotation (``cluster.lifetimes``).

    Attributes
    ----------
    name
        The job's name in the cluster.
    retire_at
        Epoch seconds of its planned retirement.
    remaining
        Seconds of walltime left.
    phase
        ``"running"``, ``"replacing"`` (a successor was submitted) or ``"draining"``.
    """

    name: str
    retire_at: float
    remaining: float
    phase: str


class RotatingJobs(Protocol):
    """What the rotation needs of a cluster's jobs (:class:`jobstrap.cluster.pool.JobPool`)."""

    def names(self) -> list[str]:
        """Every job of the cluster's spec, by name."""
        ...

    def running_jobs(self) -> dict[str, tuple[float, float | None]]:
        """Running jobs: name -> (started, first worker's arrival)."""
        ...

    def waiting_jobs(self) -> set[str]:
        """Jobs without a worker at the scheduler yet."""
        ...

    def add_replacement(self) -> str:
        """Add a job to the spec (submitted by the next :meth:`apply`)."""
        ...

    async def apply(self) -> None:
        """Submit and cancel jobs until the cluster matches its spec."""
        ...

    async def retire(self, name: str) -> None:
        """Drop a job: its workers hand their data over, then it is cancelled."""
        ...

    def background(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine on the cluster's loop, keeping a reference to it."""
        ...


class LifetimeManager:
    """Plans and carries out the retirement and replacement of a cluster's jobs.

    Parameters
    ----------
    jobs
        The cluster's jobs it rotates (held strongly: the cluster owns both and
        stops the manager's periodic callback on close).
    profile
        The cluster's settings (walltime, ``lifetime_margin``, ``lifetime_stagger``).
    """

    def __init__(self, jobs: RotatingJobs, profile: Profile) -> None:
        self._jobs = jobs
        walltime = int(profile.walltime)
        self.walltime = walltime
        margin = profile.lifetime_margin
        self.margin = int(default_margin(walltime) if margin is None else margin)
        self._stagger_setting = profile.lifetime_stagger
        self.queue_wait = QueueWaitEstimate()
        #: Jobs whose successor was submitted (or that are draining): not capacity.
        self.outgoing: set[str] = set()
        #: Jobs whose workers are being retired.
        self.draining: set[str] = set()
        self.plan: dict[str, float] = {}
        self.retirements = 0
        self.replacements = 0
        self._busy = False
        self._observed: set[str] = set()

    # -- settings --------------------------------------------------------------------------

    def stagger(self, jobs: int) -> int:
        """Minimum seconds between two retirements for a cluster of ``jobs`` jobs."""
        if self._stagger_setting is not None:
            return int(self._stagger_setting)
        return default_stagger(self.walltime, jobs=jobs, margin=self.margin)

    @property
    def signal_seconds(self) -> int:
        """When (before the walltime) the batch system's USR1 backstop arrives.

        Half the margin: the planned retirement at ``margin`` comes first; the signal
        only matters when the cluster's process could not act (it makes the job's
        bootstrap retire its own workers). Slurm may send it up to a minute early.
        """
        return max(1, self.margin // 2)

    # -- inputs ------------------------------------------------------------------------------

    def on_job(self, status: JobStatus) -> None:
        """Job callback: learn this cluster's queue wait from each job's start."""
        if status.started is None or status.job_id in self._observed:
            return
        self._observed.add(status.job_id)
        self.queue_wait.observe(status.started - status.submitted)

    def forget(self, name: str) -> None:
        """A job left the spec by other means (ended, scaled down)."""
        self.outgoing.discard(name)
        self.draining.discard(name)
        self.plan.pop(name, None)

    # -- the periodic step -----------------------------------------------------------------

    def tick(self) -> None:
        """Periodic callback: one planning step unless the last one is still running."""
        if self._busy:
            return
        self._busy = True
        self._jobs.background(self._step_guarded())

    async def _step_guarded(self) -> None:
        try:
            await self.step(time.time())
        except Exception:  # the next tick tries again; say why this one failed
            logger.warning("lifetime step failed", exc_info=True)
        finally:
            self._busy = False

    def _running(self) -> dict[str, tuple[float, float | None]]:
        """Running jobs of the spec: name -> (started, first worker's arrival)."""
        return self._jobs.running_jobs()

    async def step(self, now: float) -> None:
        """Plan, submit replacements that are due, retire the job whose time has come."""
        jobs = self._jobs
        names = set(jobs.names())
        for name in list(self.outgoing):
            if name not in names and name not in self.draining:
                self.forget(name)
        running = self._running()
        lives = [
            JobLife(name, started, self.walltime)
            for name, (started, _) in running.items()
            if name not in self.draining
        ]
        if not lives:
            self.plan = {}
            return
        capacity = len(names) - len(self.outgoing)
        stagger = self.stagger(max(1, capacity))
        self.plan = plan_retirements(lives, margin=self.margin, stagger=stagger, now=now)
        changed = False
        for name, retire_at in self.plan.items():
            if name in self.outgoing:
                continue
            if now >= replacement_due(retire_at, self.queue_wait.expected, running[name][0]):
                # The successor takes this job's place in the plan from now on.
                jobs.add_replacement()
                self.outgoing.add(name)
                self.replacements += 1
                changed = True
                logger.info(
                    "job %s retires in %.0f s: replacement submitted", name, retire_at - now
                )
        if changed:
            await jobs.apply()
        due = sorted((when, name) for name, when in self.plan.items() if when <= now)
        if not due:
            return
        _, name = due[0]
        started = running[name][0]
        last_call = started + self.walltime - self.margin / 2
        if self._replacements_pending() and now < last_call:
            return  # keep the old job until its successor's workers are here
        await self._retire(name)

    def _replacements_pending(self) -> bool:
        """True while a job that is not outgoing has no worker at the scheduler yet."""
        return bool(self._jobs.waiting_jobs() - self.outgoing)

    async def _retire(self, name: str) -> None:
        if name not in self._jobs.names():
            return
        self.outgoing.add(name)
        self.draining.add(name)
        self.retirements += 1
        logger.info("retiring job %s gracefully", name)
        # The cluster's stop path retires the job's workers through the scheduler
        # (their results move to the others) and then cancels the job.
        try:
            await self._jobs.retire(name)
        finally:
            self.forget(name)

    # -- what users see --------------------------------------------------------------------

    def describe(self, now: float | None = None) -> dict[str, JobLifetime]:
        """Each planned job's retirement time, walltime left and phase, by job name."""
        now = time.time() if now is None else now
        running = self._running()
        described: dict[str, JobLifetime] = {}
        for name, when in self.plan.items():
            started = running.get(name, (now, None))[0]
            phase = (
                "draining"
                if name in self.draining
                else "replacing"
                if name in self.outgoing
                else "running"
            )
            remaining = max(0.0, started + self.walltime - now)
            described[name] = JobLifetime(name, when, remaining, phase)
        for name in self.draining - set(described):
            described[name] = JobLifetime(name, now, 0.0, "draining")
        return described

    def summary(self) -> str:
        """``"1 replacing, 0 draining"`` for the cluster's repr."""
        replacing = len(self.outgoing - self.draining)
        return f"{replacing} replacing, {len(self.draining)} draining"
