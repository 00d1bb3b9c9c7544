"""Walltime-aware staggered lifetimes: when each worker job retires and is replaced.

Every worker job dies at its walltime. Instead of lifetime flags, jobstrap derives a
retirement time for each job from its start and walltime, a safety margin before the
end, and a stagger so that no two jobs of a cluster retire within one window (their
in-memory results move to the survivors). A replacement is submitted early enough,
from the queue waits this cluster actually observed, to be running before its
predecessor retires.

This module is pure planning arithmetic (no batch syntax, no I/O); the cluster calls it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: Bounds of the automatic safety margin before the walltime.
MIN_MARGIN = 20
MAX_MARGIN = 300


def default_margin(walltime: int) -> int:
    """Seconds before the walltime at which a job starts draining.

    A tenth of the walltime, at least ``MIN_MARGIN`` (a drain needs time to move data)
    and at most ``MAX_MARGIN`` (five minutes drains even large workers).
    """
    return int(min(MAX_MARGIN, max(MIN_MARGIN, walltime // 10)))


def default_stagger(walltime: int, jobs: int, margin: int | None = None) -> int:
    """Minimum seconds between two retirements of one cluster.

    Spread the retirements over the usable part of a job's life, so a cluster of ``jobs``
    rotates one job at a time: ``usable / jobs``, between 5 s and 10 minutes.
    """
    usable = walltime - (default_margin(walltime) if margin is None else margin)
    return int(min(600, max(5, usable // max(1, jobs) // 2)))


@dataclass(frozen=True)
class JobLife:
    """What the planner needs of one running job (epoch seconds)."""

    name: str
    started: float
    walltime: int

    @property
    def hard_end(self) -> float:
        return self.started + self.walltime


def plan_retirements(
    jobs: list[JobLife], *, margin: int, stagger: int, now: float
) -> dict[str, float]:
    """When each job should start draining.

    Each job retires at ``hard_end - margin`` at the latest. Going from the latest
    deadline backwards, a job whose deadline falls within ``stagger`` of the next
    retirement is moved earlier, so no two retirements are closer than ``stagger``.
    Nobody is moved into the past: such a job retires ``now`` (and the next ones keep
    their spacing from it going forward).
    """
    ordered = sorted(jobs, key=lambda job: (job.hard_end, job.name), reverse=True)
    planned: dict[str, float] = {}
    previous: float | None = None
    for job in ordered:
        deadline = job.hard_end - margin
        when = deadline if previous is None else min(deadline, previous - stagger)
        planned[job.name] = when
        previous = when
    # Forward pass: times clipped to "now" must still be spaced out.
    ascending = sorted(planned.items(), key=lambda item: item[1])
    spaced: dict[str, float] = {}
    last: float | None = None
    for name, when in ascending:
        when = max(when, now)
        if last is not None and when < last + stagger:
            when = last + stagger
        spaced[name] = when
        last = when
    return spaced


@dataclass
class QueueWaitEstimate:
    """Observed submit-to-running waits of this cluster's jobs (exponentially weighted)."""

    initial: float = 30.0
    weight: float = 0.5
    value: float | None = None
    samples: int = 0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.value = (
            seconds
            if self.value is None
            else (self.weight * seconds + (1 - self.weight) * self.value)
        )
        self.samples += 1

    @property
    def expected(self) -> float:
        """Expected wait; before any sample, the initial guess."""
        return self.initial if self.value is None else self.value


def replacement_due(
    retire_at: float, queue_wait: float, started: float | None = None, startup: float = 10.0
) -> float:
    """When to submit the successor so it runs (and its workers joined) before ``retire_at``.

    Twice the expected wait, plus worker start-up, keeps a slow queue from eating the
    overlap; submitting a little early only costs a short overlap of two jobs.

    A job is never replaced before it has lived half of its useful life
    (``started`` to ``retire_at``): when the queue wait is as long as a job's life, a
    successor replaced at once would itself be replaced at once, and the cluster
    would submit a chain of jobs that each do nothing. With the floor, a slow queue
    costs a shorter overlap (a gap in capacity at worst), never a runaway.
    """
    due = retire_at - 2 * queue_wait - startup
    if started is None:
        return due
    return max(due, started + (retire_at - started) / 2)


def next_retirement(plan: Mapping[str, float]) -> tuple[str, float] | None:
    """The job that retires first, with its time."""
    if not plan:
        return None
    name = min(plan, key=lambda key: plan[key])
    return name, plan[name]
