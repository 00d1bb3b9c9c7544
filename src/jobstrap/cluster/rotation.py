"""The cluster side of walltime-aware lifetimes: rotate worker jobs before they die.

One :class:`LifetimeManager` per notebook cluster runs every second on the cluster's
event loop. It knows when each running job started (the watcher's RUNNING
transition, or its first worker's arrival) and plans, with
:func:`jobstrap.cluster.lifetime.plan_retirements`, when each one retires: ``margin``
before its walltime at the latest, and never within ``stagger`` of another
retirement of the same cluster. For each job it then

1. submits a replacement at :func:`jobstrap.cluster.lifetime.replacement_due` (from the
   queue waits this cluster observed, at most half a margin ahead), so the successor
   runs when its predecessor starts draining; from then on the old job is
   *outgoing*: scaling and the adaptive loop count the replacement, not the old job;
2. drains it once its replacement's workers are up (so at most half a margin before
   its planned time, the lead; at the latest ``margin`` before its walltime): its
   workers take no new task, the tasks they run finish if the scheduler expects
   them to within the drain
   (:mod:`jobstrap.engines.dask.drain`), their results move to the other workers and
   the job is cancelled. A replacement and its predecessor overlap for at most
   :func:`jobstrap.cluster.lifetime.overlap_limit` seconds.

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
    margin_parts,
    max_lead,
    overlap_limit,
    peak_jobs,
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

    def pool_of(self, name: str) -> str:
        """The pool of a job (its replacement is of the same pool)."""
        ...

    def add_replacement(self, pool: str | None = None) -> str:
        """Add a job of ``pool`` to the spec (submitted by the next :meth:`apply`)."""
        ...

    def replacement_wanted(self, pool: str) -> bool:
        """Whether the pool still needs the capacity of a job that retires."""
        ...

    async def apply(self) -> None:
        """Submit and cancel jobs until the cluster matches its spec."""
        ...

    async def retire(self, name: str) -> None:
        """Drop a job: its workers hand their data over, then it is cancelled."""
        ...

    async def drain(self, name: str, seconds: float) -> None:
        """Retire a job's workers after up to ``seconds`` for their running tasks."""
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
        self.parts = margin_parts(self.margin)
        self._stagger_setting = profile.lifetime_stagger
        self.queue_wait = QueueWaitEstimate()
        #: Jobs whose successor was submitted (or that are draining): not capacity.
        self.outgoing: set[str] = set()
        #: Jobs whose workers are being retired.
        self.draining: set[str] = set()
        self.plan: dict[str, float] = {}
        #: When each outgoing job drains: its planned time when it was replaced (the
        #: lead, hence the overlap, was measured from it).
        self.drain_at: dict[str, float] = {}
        #: What each drain reported (``waited`` seconds, ``interrupted`` tasks).
        self.drains: list[dict[str, object]] = []
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
        """When (before the walltime) the batch system's USR1 backstop is asked for.

        The margin's last part: the drain and the handover come first; the signal
        only matters when the cluster's process could not act (it makes the job's
        bootstrap retire its own workers).
        """
        return self.parts.backstop

    def backstop(self, early_by: int) -> int | None:
        """The backstop's seconds before the walltime, or None to ask for no signal.

        A batch system may send the signal ``early_by`` seconds before the time asked
        for (Slurm: up to a minute). The job retires its workers at once on it, which
        interrupts their running tasks: a signal that can arrive before the planned
        drain has finished would throw away the work the drain saves. So it is asked
        for only when its earliest arrival falls in the handover, after the drain
        (with the default margin, for walltimes of about an hour and more); shorter
        jobs rely on the planned rotation alone.
        """
        return self.parts.backstop if early_by <= self.parts.handover else None

    @property
    def overlap_limit(self) -> float:
        """The most seconds a replacement's job and its predecessor run side by side."""
        return overlap_limit(self.margin)

    def peak_jobs(self, jobs: int) -> int:
        """The most jobs a cluster asked for ``jobs`` holds while rotating them."""
        return peak_jobs(jobs, self.margin, self.stagger(jobs))

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
        self.drain_at.pop(name, None)

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
        lead = max_lead(self.margin)
        for name, retire_at in self.plan.items():
            if name in self.outgoing:
                continue
            wait = self.queue_wait.expected
            if now >= replacement_due(retire_at, wait, running[name][0], lead_limit=lead):
                pool = jobs.pool_of(name)
                if not jobs.replacement_wanted(pool):
                    # Adapt wants fewer jobs than the pool has: this retirement is its
                    # scale-down (asked again every step, while the job still runs).
                    continue
                # The successor takes this job's place in the plan from now on.
                jobs.add_replacement(pool)
                self.outgoing.add(name)
                self.drain_at[name] = retire_at
                self.replacements += 1
                changed = True
                logger.info(
                    "job %s retires in %.0f s: replacement submitted", name, retire_at - now
                )
        if changed:
            await jobs.apply()
        pending = self._replacements_pending()
        due = []
        for name in self.plan:
            latest = running[name][0] + self.walltime - self.margin
            when = min(self.drain_at.get(name, self.plan[name]), latest)
            if name in self.drain_at and not pending:
                # Its successor's workers are here: two jobs doing one job's work is
                # the waste the overlap bound limits, so the old one drains now (at
                # most half a margin early: that is the lead).
                when = min(when, now)
            if when <= now:
                due.append((when, latest, name))
        if not due:
            return
        _, latest, name = min(due)
        if pending and now < latest:
            return  # keep the old job until its successor's workers are here
        self._start_drain(name, running[name][0], now)

    def drain_seconds(self, started: float, now: float) -> float:
        """How long a drain starting ``now`` may wait for running tasks.

        The margin's drain part, and never into the handover and backstop before
        the walltime (a drain started late has less).
        """
        end = started + self.walltime - self.parts.handover - self.parts.backstop
        return max(0.0, min(now + self.parts.drain, end) - now)

    def _replacements_pending(self) -> bool:
        """True while a job that is not outgoing has no worker at the scheduler yet."""
        return bool(self._jobs.waiting_jobs() - self.outgoing)

    def _start_drain(self, name: str, started: float, now: float) -> None:
        if name not in self._jobs.names() or name in self.draining:
            return
        self.outgoing.add(name)
        self.draining.add(name)
        self.retirements += 1
        seconds = self.drain_seconds(started, now)
        logger.info("draining job %s (up to %.0f s for its running tasks)", name, seconds)
        # In the background: other jobs' replacements must not wait for this drain.
        self._jobs.background(self._drain(name, seconds))

    async def _drain(self, name: str, seconds: float) -> None:
        try:
            await self._jobs.drain(name, seconds)
        except Exception:
            logger.warning("draining job %s failed", name, exc_info=True)
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
