"""The job side's one signal policy: the batch system's signals, first and again.

Batch systems warn a job before they end it: SIGTERM at the walltime or on
``scancel``, SIGUSR1 ahead of it (``--signal=USR1@120``), and Ctrl-C under
``mpiexec`` sends SIGINT to every rank. Every role answers the same way: the
first signal asks for an orderly wind-down (drain the workers, tell the app), and
a second one of the *counted* signals ends the run now. What "wind down" and "now"
mean is the role's: :class:`SignalPolicy` holds the two actions and the count, and
installs itself as a plain signal handler or on an event loop.

Helper processes (a fork server, the resource tracker, a rank standing by) must
outlive those signals instead: :func:`ignoring` and :func:`ignore`.

Imports nothing heavy: the bootstrap installs handlers before Dask is imported.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from jobstrap.bootstrap import drain

if TYPE_CHECKING:
    import asyncio

__all__ = ["BATCH_SIGNALS", "DRAIN_SIGNALS", "SignalPolicy", "ignore", "ignoring"]

#: The signals a batch system or a launcher sends to every process of a job.
BATCH_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
#: The two that announce the end of the job (SIGINT is left to the app's Python).
DRAIN_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)

#: What a policy does with one signal.
Action = Callable[[signal.Signals], None]


class SignalPolicy:
    """First signal: ``first``; a second counted one: ``again`` (the run ends now).

    Parameters
    ----------
    first
        Called with the signal for the first counted signal and for every
        signal that is not counted.
    again
        Called instead of ``first`` for every counted signal after the first;
        ``None`` means the count changes nothing.
    signals
        The signals the policy handles.
    counted
        The signals that count toward "again" (default: all of ``signals``).
    """

    def __init__(
        self,
        first: Action,
        again: Action | None = None,
        *,
        signals: Iterable[signal.Signals] = BATCH_SIGNALS,
        counted: Iterable[signal.Signals] | None = None,
    ) -> None:
        self.first = first
        self.again = again
        self.signals = tuple(signals)
        self.counted = frozenset(self.signals if counted is None else counted)
        self.count = 0
        self._previous: dict[signal.Signals, Any] = {}

    def handle(self, signum: int) -> None:
        """Act on one signal (from a handler, or replayed)."""
        sig = signal.Signals(signum)
        if sig in self.counted:
            self.count += 1
            if self.count > 1 and self.again is not None:
                self.again(sig)
                return
        self.first(sig)

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.handle(signum)

    def install(self, *, replay_early: bool = True) -> SignalPolicy:
        """Become the process's handler for :attr:`signals` (main thread only).

        With ``replay_early``, the signals the bootstrap caught before its handlers
        existed (:func:`jobstrap.bootstrap.drain.early_signals`) are handled now.
        """
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self)
        if replay_early:
            self.replay_early()
        return self

    def install_on(self, loop: asyncio.AbstractEventLoop, *, replay_early: bool = True) -> None:
        """Handle :attr:`signals` on ``loop`` (so the actions may touch the loop)."""
        for sig in self.signals:
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.add_signal_handler(sig, self.handle, sig)
        if replay_early:
            self.replay_early()

    def replay_early(self) -> None:
        """Handle the signals that arrived while the rank was still importing."""
        for name in drain.early_signals():
            self.handle(signal.Signals[name])

    def restore(self) -> None:
        """Put back the handlers :meth:`install` replaced."""
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
        self._previous.clear()


def ignore(signals: Iterable[signal.Signals] = BATCH_SIGNALS) -> None:
    """Ignore ``signals`` for good (a process that must outlive them)."""
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def ignoring(signals: Iterable[signal.Signals] = BATCH_SIGNALS) -> Iterator[None]:
    """Ignore ``signals`` for the block, then put the handlers back.

    A helper process started in the block inherits the ignored dispositions (they
    survive exec), so it outlives the signals its parent handles. Outside the main
    thread no handler can change: the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
