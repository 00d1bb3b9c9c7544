"""How long a peer has been silent, counting only the time this process could listen.

A rank's watchdog ends the rank's workers when the scheduler has not answered for
the death timeout, and the app's link ends the app. Both used to count wall time
since the last answer. On a loaded node that is wrong: when the rank's own event
loop cannot run (64 nannies in one process answering a burst of calls, CPUs
overcommitted, a GIL-holding call), its pings time out however healthy the
scheduler is, and a 30 s stall of the *rank* ended a job whose scheduler was
fine (128 ranks on two nodes: every worker of a node stopped, "scheduler
unreachable"). What the rank could not observe is not evidence against the
scheduler.

:class:`LoopStalls` measures how long an event loop was unable to run (a ticker
task that notes how late its sleeps end). :class:`Silence` counts silence as wall
time since the last answer minus the stalls in between, so a frozen or dead
scheduler is still declared lost after the death timeout of *listening*, while a
stalled rank is not. A hard cap (:data:`HARD_CAP_FACTOR` times the limit, wall
time) still ends a rank whose loop never recovers enough to listen.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["HARD_CAP_FACTOR", "LoopStalls", "Silence", "Stalls", "WaitStalls"]

#: Wall time, as a multiple of the limit, after which silence is loss however much
#: of it this process spent stalled: a loop that never recovers must still end.
HARD_CAP_FACTOR = 4.0


class Stalls(Protocol):
    """Seconds this process could not listen, as :class:`Silence` discounts them."""

    def total(self) -> float:
        """Seconds stalled so far."""
        ...


class LoopStalls:
    """Seconds an asyncio event loop could not run, measured from inside it.

    Parameters
    ----------
    tick
        Seconds between the ticker's wake-ups.
    grace
        Lateness per tick that is ordinary scheduling, not a stall.
    clock
        The clock (the loop's own, ``time.monotonic``, by default).
    """

    def __init__(
        self, tick: float = 0.25, grace: float = 0.25, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.tick = tick
        self.grace = grace
        self._clock = clock
        self._counted = 0.0
        self._due: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the ticker in the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        """Stop the ticker."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def __enter__(self) -> LoopStalls:
        """Start the ticker for the ``with`` block (inside a running loop)."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def total(self) -> float:
        """Seconds stalled since the ticker started, the stall going on now included.

        A coroutine that wakes after a stall may run before the ticker does; the
        ticker's overdue wake-up is counted here so that it sees the stall too.
        """
        return self._counted + self._overdue(self._clock())

    def _overdue(self, now: float) -> float:
        if self._due is None:
            return 0.0
        # All of a lateness past the grace counts: a loop busy in blocks of half a
        # second is as unable to listen as one that stopped, not half as unable.
        late = now - self._due
        return late if late > self.grace else 0.0

    def note(self, now: float) -> None:
        """Account for the ticker waking at ``now`` (the ticker's step; for tests)."""
        self._counted += self._overdue(now)
        self._due = now + self.tick

    async def _run(self) -> None:
        self._due = self._clock() + self.tick
        while True:
            await asyncio.sleep(self.tick)
            self.note(self._clock())


class WaitStalls:
    """Seconds a watching thread could not run: how late its waits between calls end.

    For a thread that polls its peer (wait, call, wait...) rather than an event loop:
    only the waits are timed, so a call that is slow to answer counts as listening.

    Parameters
    ----------
    grace
        Lateness per wait that is ordinary scheduling, not a stall.
    clock
        The clock (``time.monotonic`` by default).
    """

    def __init__(self, grace: float = 0.25, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self._clock = clock
        self._counted = 0.0

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """``event.wait(seconds)``, noting how much later than ``seconds`` it returned."""
        began = self._clock()
        set_ = event.wait(seconds)
        late = self._clock() - began - seconds
        if not set_ and late > self.grace:
            self._counted += late
        return set_

    def total(self) -> float:
        """Seconds stalled since this began."""
        return self._counted


class Silence:
    """Silence of a peer since its last answer, less this process's own stalls.

    Parameters
    ----------
    limit
        Seconds of silence after which the peer is lost (the death timeout).
    stalls
        This process's stalls; ``None`` counts wall time (nothing discounted).
    clock
        The clock stalls are measured on.
    """

    def __init__(
        self,
        limit: float,
        stalls: Stalls | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self._stalls = stalls
        self._clock = clock
        self.heard()

    def heard(self) -> None:
        """The peer answered: silence starts again from now."""
        self._since = self._clock()
        self._stalled_before = self._stalled()

    def _stalled(self) -> float:
        return self._stalls.total() if self._stalls is not None else 0.0

    def wall(self) -> float:
        """Wall seconds since the last answer."""
        return self._clock() - self._since

    def seconds(self) -> float:
        """Seconds of silence this process was able to observe."""
        return max(0.0, self.wall() - (self._stalled() - self._stalled_before))

    def lost(self) -> bool:
        """Whether the peer has been silent for the limit (or the hard cap, stalls or not)."""
        return self.seconds() > self.limit or self.wall() > self.limit * HARD_CAP_FACTOR

    def account(self) -> str:
        """How long the peer has been silent, by the rule that judges it, for a message.

        ``"for 30 s"`` when the limit of observed silence is passed; when only the
        hard cap is, the wall time and how much of it this process was stalled.
        """
        if self.seconds() > self.limit or self.wall() <= self.limit * HARD_CAP_FACTOR:
            return f"for {self.limit:.0f} s"
        stalled = self.wall() - self.seconds()
        return (
            f"for {self.wall():.0f} s of wall time, {stalled:.0f} s of it while this "
            f"process was stalled (the cap is {HARD_CAP_FACTOR:g}x the "
            f"{self.limit:.0f} s death timeout)"
        )
