"""The one backoff schedule: how long to wait before trying again.

Used wherever jobstrap retries or polls: batch commands after a transient error,
the watcher while nothing changes, a tunnel reconnecting. One schedule, so that a
crowd of clients on a login node behaves the same everywhere: exponential from
``initial`` up to ``maximum``, with "equal jitter" (half fixed, half random) where
many processes may retry at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff", "exponential_delay"]


def exponential_delay(
    attempt: int, *, initial: float, maximum: float, jitter: bool = False
) -> float:
    """The delay before retry ``attempt`` (1-based): ``initial * 2**(attempt-1)``, capped.

    Parameters
    ----------
    attempt
        Which retry this is, from 1.
    initial, maximum
        The first delay and the cap, in seconds.
    jitter
        Equal jitter: half of the delay is fixed and half uniformly random, so clients
        that failed together do not retry together, yet none retries at once.
    """
    ceiling = min(maximum, initial * 2 ** max(0, attempt - 1))
    if not jitter:
        return float(ceiling)
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))


@dataclass
class Backoff:
    """A stateful schedule: each :meth:`next_delay` doubles, a long success resets it.

    An attempt that lasted at least ``stable_after`` seconds (a tunnel that stayed up,
    a poll that saw a change with ``uptime=inf``) starts the schedule again at
    ``initial``.
    """

    initial: float = 1.0
    maximum: float = 30.0
    stable_after: float = 30.0
    jitter: bool = False
    _attempt: int = field(default=0, init=False, repr=False)

    def next_delay(self, uptime: float = 0.0) -> float:
        """The delay before the next attempt, given how long the last one lasted."""
        fresh = uptime >= self.stable_after or self._attempt == 0
        self._attempt = 1 if fresh else self._attempt + 1
        return exponential_delay(
            self._attempt, initial=self.initial, maximum=self.maximum, jitter=self.jitter
        )

    def reset(self) -> None:
        """Start again from ``initial`` at the next delay."""
        self._attempt = 0
