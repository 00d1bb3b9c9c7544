"""Idle-aware release: keep an idle job while releasing it would cost more than keeping it.

Between the steps of a serial workflow every worker goes idle for a moment; an
adaptive loop that releases idle jobs at once queues new ones for the next step and
pays the queue wait again each time. A job that went idle is kept for the *hold*:
at least the queue wait this cluster observed for the job's pool (``idle_hold=
"auto"``) or a fixed number of seconds, then released. Pending jobs and jobs whose
workers have not arrived cost nothing to drop and go first.

Everything here is pure: plain names, numbers and clocks passed in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dask.utils import parse_timedelta

from jobstrap.errors import ConfigError

__all__ = [
    "AUTO",
    "AUTO_MINIMUM",
    "IdleClock",
    "hold_seconds",
    "observed_wait",
    "parse_idle_hold",
    "to_release",
]

#: ``idle_hold="auto"``: hold for the queue wait observed for the pool.
AUTO = "auto"

#: Observed waits kept per pool (the hold follows the queue as it changes).
RECENT_WAITS = 5

#: The shortest ``"auto"`` hold, in seconds. A release costs more than the queue
#: wait alone: the successor's workers start, import and join, the data the idle
#: job held is gone, and two batch commands run. Gaps between the steps of a
#: serial workflow (the client collecting results, plotting, preparing the next
#: step) are seconds long, so even on an empty queue keeping the job that long is
#: cheaper than the churn.
AUTO_MINIMUM = 15.0


def parse_idle_hold(value: object) -> float | str:
    """``idle_hold`` checked: ``"auto"``, seconds, or a duration (``"2m"``)."""
    if value is None:
        return 0.0
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if isinstance(value, bool):
        raise ConfigError("idle_hold", value, 'expected seconds, a duration ("2m") or "auto"')
    try:
        if not isinstance(value, str | int | float):
            raise TypeError(value)
        seconds = float(parse_timedelta(value, default="seconds"))
    except (TypeError, ValueError, KeyError):
        raise ConfigError(
            "idle_hold", value, 'expected seconds, a duration ("2m") or "auto"'
        ) from None
    if not seconds >= 0 or math.isinf(seconds):
        raise ConfigError("idle_hold", value, "must be a finite, non-negative number of seconds")
    return seconds


def observed_wait(waits: Sequence[float]) -> float | None:
    """The queue wait to hold for: the longest of the recent waits, or ``None`` (none yet).

    The longest, not the mean: a job released in a gap is paid back by the next
    step's wait, and the hold must cover the wait that step may meet.
    """
    recent = [max(0.0, w) for w in waits[-RECENT_WAITS:]]
    return max(recent) if recent else None


def hold_seconds(setting: float | str, waits: Sequence[float], floor: float = 0.0) -> float:
    """How long an idle job of a pool is kept.

    ``"auto"`` keeps it for the longest recent queue wait of the pool (releasing
    it would make the next step pay that wait again), and at least
    :data:`AUTO_MINIMUM` seconds.

    Parameters
    ----------
    setting
        ``idle_hold``: seconds, or ``"auto"``.
    waits
        Submit-to-first-worker waits observed for the pool's jobs, oldest first.
    floor
        The adaptive loop's own patience (``interval x wait_count``): never less.
    """
    if setting == AUTO:
        wait = observed_wait(waits)
        return max(floor, AUTO_MINIMUM, wait or 0.0)
    return max(floor, float(setting))


@dataclass
class IdleClock:
    """Since when each job has been idle (all its workers without a task)."""

    since: dict[str, float] = field(default_factory=dict)

    def update(self, idle: Iterable[str], busy: Iterable[str], now: float) -> None:
        """Start the clock of newly idle jobs; stop busy ones; forget the rest."""
        idle = set(idle)
        for name in set(busy) | (set(self.since) - idle):
            self.since.pop(name, None)
        for name in idle:
            self.since.setdefault(name, now)

    def idle_for(self, name: str, now: float) -> float:
        """Seconds the job has been idle (0 when it is not)."""
        start = self.since.get(name)
        return 0.0 if start is None else max(0.0, now - start)


def to_release(
    surplus: int,
    waiting: Sequence[str],
    idle_since: Mapping[str, float],
    now: float,
    hold: float,
) -> list[str]:
    """The jobs to give up this round: at most ``surplus`` of them.

    Parameters
    ----------
    surplus
        Jobs above the pool's target.
    waiting
        Jobs without a worker at the scheduler yet (pending or starting), cheapest
        to drop first: they hold no data and nobody waits on them.
    idle_since
        When each idle job went idle.
    now, hold
        Idle jobs go only after ``hold`` seconds of idleness, longest idle first.
        Busy jobs are never released here (the target grows with their work).
    """
    if surplus <= 0:
        return []
    chosen = list(waiting[:surplus])
    due = [name for name, start in idle_since.items() if now - start >= hold]
    due.sort(key=lambda name: (idle_since[name], name))
    chosen += [name for name in due if name not in chosen]
    return chosen[:surplus]
