"""Walltime-aware staggered lifetimes: when each worker job retires and is replaced.

Every worker job dies at its walltime. Instead of lifetime flags, jobstrap derives a
retirement time for each job from its start and walltime, a safety margin before the
end, and a stagger so that no two jobs of a cluster retire within one window (their
in-memory results move to the survivors). A replacement is submitted early enough,
from the queue waits this cluster actually observed, to be running before its
predecessor retires.

A job's margin is spent in three parts (:func:`margin_parts`): the *drain* (its
workers take no new task and the tasks they run finish, when the scheduler expects
them to finish in time), the *handover* (their results move to the other workers and
the job is cancelled) and the *backstop* (the batch system's warning signal, which
makes the job retire its own workers should the cluster's process be unable to).
The default margin leaves a drain of a tenth of the walltime, so a task of up to a
tenth of the walltime never has to start again because its job ended.

The overlap of a replacement and the job it replaces is bounded
(:func:`overlap_limit`): the replacement is submitted at most ``margin`` before its
predecessor starts draining (``MAX_LEAD_MARGINS`` of it, :func:`replacement_due`),
and the predecessor ends at most ``margin`` after that, so the two overlap for at
most one and a half margins. Since
retirements are ``stagger`` apart, at most :func:`concurrent_replacements` jobs are
replaced at once, and a cluster of ``N`` jobs holds at most ``N`` plus that many.

This module is pure planning arithmetic (no batch syntax, no I/O); the cluster calls it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

#: Bounds of the automatic safety margin before the walltime.
MIN_MARGIN = 20
MAX_MARGIN = 1800

#: The handover and the backstop each take this fraction of the margin (at least
#: ``MIN_PART`` seconds); the drain has the rest.
PART_FRACTION = 0.125
MIN_PART = 2

#: A replacement is submitted at most this many margins before its predecessor
#: starts draining: the bound of the overlap (:func:`overlap_limit`) is one more.
MAX_LEAD_MARGINS = 0.5


@dataclass(frozen=True)
class MarginParts:
    """How a job's margin is spent, in seconds (see the module docstring)."""

    drain: float
    handover: float
    backstop: int


def margin_parts(margin: int) -> MarginParts:
    """Split ``margin`` into drain, handover and backstop."""
    part = max(MIN_PART, int(margin * PART_FRACTION))
    backstop = min(part, max(1, margin // 2))
    handover = min(float(part), max(0.0, margin - backstop) / 2)
    return MarginParts(max(0.0, margin - handover - backstop), handover, backstop)


def default_margin(walltime: int) -> int:
    """Seconds before the walltime at which a job starts draining.

    Enough for a drain of a tenth of the walltime besides the handover and the
    backstop (so a task of up to a tenth of the walltime finishes on its worker), at
    least ``MIN_MARGIN`` and at most ``MAX_MARGIN`` (half an hour drains even large
    workers; beyond it, long tasks on long jobs set ``lifetime_margin``).
    """
    wanted = math.ceil(walltime / 10 / (1 - 2 * PART_FRACTION))
    return int(min(MAX_MARGIN, max(MIN_MARGIN, wanted)))


def max_lead(margin: int) -> float:
    """The most seconds a replacement is submitted before its predecessor drains."""
    return MAX_LEAD_MARGINS * margin


def overlap_limit(margin: int) -> float:
    """The most seconds a replacement's job and its predecessor's run side by side.

    The replacement is submitted at most :func:`max_lead` before the predecessor
    starts draining, and the drain and handover end within ``margin``: a queue slower
    than the lead costs a shorter overlap (a gap at worst, never a runaway).
    """
    return max_lead(margin) + margin


def concurrent_replacements(jobs: int, margin: int, stagger: int) -> int:
    """The most jobs of a cluster of ``jobs`` that are being replaced at one time.

    Retirements are at least ``stagger`` apart and each overlap lasts at most
    :func:`overlap_limit`: so many overlaps can meet, and never more than ``jobs``.
    """
    if jobs <= 0:
        return 0
    return int(min(jobs, math.ceil(overlap_limit(margin) / max(1, stagger))))


def peak_jobs(jobs: int, margin: int, stagger: int) -> int:
    """The most jobs a cluster asked for ``jobs`` holds while it rotates them."""
    return jobs + concurrent_replacements(jobs, margin, stagger)


def default_stagger(walltime: int, jobs: int, margin: int | None = None) -> int:
    """Minimum seconds between two retirements of one cluster.

    Spread the retirements over the usable part of a job's life, so a cluster of ``jobs``
    rotates one job at a time: ``usable / jobs``, between 5 s and 10 minutes. The
    wider the spacing, the fewer replacements overlap (:func:`concurrent_replacements`).
    """
    usable = walltime - (default_margin(walltime) if margin is None else margin)
    return int(min(600, max(5, usable // max(1, jobs))))


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
    retire_at: float,
    queue_wait: float,
    started: float | None = None,
    startup: float = 10.0,
    lead_limit: float | None = None,
) -> float:
    """When to submit the successor so it runs (and its workers joined) before ``retire_at``.

    Twice the expected wait, plus worker start-up, keeps a slow queue from eating the
    overlap; submitting a little early only costs a short overlap of two jobs. The
    lead is at most ``lead_limit`` (:func:`max_lead`), which bounds that overlap.

    A job is never replaced before it has lived half of its useful life
    (``started`` to ``retire_at``): when the queue wait is as long as a job's life, a
    successor replaced at once would itself be replaced at once, and the cluster
    would submit a chain of jobs that each do nothing. With the floor, a slow queue
    costs a shorter overlap (a gap in capacity at worst), never a runaway.
    """
    lead = 2 * queue_wait + startup
    if lead_limit is not None:
        lead = min(lead, lead_limit)
    due = retire_at - lead
    if started is None:
        return due
    return max(due, started + (retire_at - started) / 2)


def next_retirement(plan: Mapping[str, float]) -> tuple[str, float] | None:
    """The job that retires first, with its time."""
    if not plan:
        return None
    name = min(plan, key=lambda key: plan[key])
    return name, plan[name]
