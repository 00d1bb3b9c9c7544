"""The client rank's line to the scheduler rank, apart from the app's own Client.

A background thread with its own event loop:

* heartbeats, so the scheduler rank ends the run if the client rank dies (a killed
  client must not leave scheduler and workers idling until walltime);
* notices when the scheduler is gone for ``death_timeout`` and stops the app, so
  no rank outlives its scheduler by more than that;
* waits for the workers before the app starts (or, for an app started at once,
  stops it if no worker ever joins), and reports a network mismatch as one line
  instead of a silent hang;
* tells the scheduler the app's exit code at the end.
"""

from __future__ import annotations

import _thread
import asyncio
import concurrent.futures
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from distributed import Security

from jobstrap.bootstrap.silence import LoopStalls, Silence
from jobstrap.engines.dask.quiet import say
from jobstrap.engines.dask.scheduler import scheduler_rpc

__all__ = ["SchedulerLink"]

T = TypeVar("T")

#: How long the app gets to unwind after the scheduler is lost, before a hard exit.
_LOST_GRACE = 10.0


class SchedulerLink:
    """Heartbeats and control calls to the bootstrap's scheduler.

    Parameters
    ----------
    address
        The scheduler's address.
    security
        The run's ``distributed.Security``.
    death_timeout
        Seconds without an answer after which the scheduler counts as gone.
    on_lost
        Called (from the link's thread) when the scheduler is gone; the default
        interrupts the main thread and, if it does not end in time, exits.
    """

    def __init__(
        self,
        address: str,
        security: Security,
        *,
        death_timeout: float,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.address = address
        self.security = security
        self.death_timeout = death_timeout
        #: Set when the link stopped the app: its scheduler is gone, or no worker came.
        self.lost = threading.Event()
        self.lost_message: str | None = None
        self._on_lost = on_lost or self._interrupt_main
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="jobstrap-link", daemon=True
        )
        self._heartbeat: concurrent.futures.Future[None] | None = None
        self._watch: concurrent.futures.Future[None] | None = None
        self._stopping = False

    # ---------------------------------------------------------------- public API
    def start(self, *, heartbeat: bool = True) -> None:
        """Start the thread and (unless ``heartbeat`` is false) the heartbeat."""
        self._thread.start()
        if heartbeat:
            self._heartbeat = asyncio.run_coroutine_threadsafe(self._beat(), self._loop)

    def wait_for_workers(self, expected: int, timeout: float) -> int:
        """Wait until ``expected`` workers are connected or ``timeout`` passes.

        Returns
        -------
        int
            The number of workers connected when the wait ended.
        """
        return self._call(self._wait_for_workers(expected, timeout), timeout + 30)

    def expect_a_worker(self, timeout: float, message: str) -> None:
        """Without waiting, see that a worker joins within ``timeout``.

        If none does, the app is stopped as for a lost scheduler (:attr:`lost` is
        set and ``on_lost`` gets ``message``).
        """

        async def watch() -> None:
            count = await self._wait_for_workers(1, timeout)
            if count == 0 and not self._stopping and not self.lost.is_set():
                self.lost_message = message
                self.lost.set()
                self._on_lost(message)

        self._watch = asyncio.run_coroutine_threadsafe(watch(), self._loop)

    def done(self, code: int, timeout: float = 30.0) -> bool:
        """Tell the scheduler the app ended with ``code``; return whether it answered."""
        self._stopping = True
        try:
            # Short: if the app shut the scheduler down itself, nobody will answer.
            done = self._send("jobstrap_done", timeout=min(timeout, 5.0), code=code)
            return bool(self._call(done, timeout))
        except Exception:
            return False

    def stop(self) -> None:
        """Stop heartbeats and the thread."""
        self._stopping = True
        for task in (self._heartbeat, self._watch):
            if task is not None:
                task.cancel()
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    @property
    def stopping(self) -> bool:
        """Whether the link is shutting down (failures are expected then)."""
        return self._stopping

    # ----------------------------------------------------------------- internals
    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _send(self, op: str, timeout: float | None = None, **kwargs: Any) -> Any:
        timeout = timeout or max(5.0, self.death_timeout / 2)
        async with scheduler_rpc(self.address, self.security, timeout) as scheduler:
            return await asyncio.wait_for(getattr(scheduler, op)(**kwargs), timeout)

    async def _wait_for_workers(self, expected: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        count = 0
        while True:
            # The scheduler answers when the workers are there (or after a few
            # seconds, so a lost link is noticed): no polling from this side.
            wait = max(0.0, min(5.0, deadline - time.monotonic()))
            try:
                count = int(
                    await self._send(
                        "jobstrap_wait_workers", timeout=wait + 10.0, n=expected, wait=wait
                    )
                )
            except Exception:
                await asyncio.sleep(0.2)  # not answering yet; the deadline decides
            if count >= expected or time.monotonic() >= deadline or self.lost.is_set():
                return count

    async def _beat(self) -> None:
        interval = max(0.2, min(5.0, self.death_timeout / 5))
        # Silence this thread could observe: an app holding the GIL or a loaded node
        # stalls this loop, which is not the scheduler being gone.
        with LoopStalls() as stalls:
            await self._beat_until_lost(interval, Silence(self.death_timeout, stalls))

    async def _beat_until_lost(self, interval: float, silence: Silence) -> None:
        while not self._stopping:
            try:
                await self._send("jobstrap_heartbeat")
                silence.heard()
            except asyncio.CancelledError:
                raise
            except Exception:
                if self.stopping:
                    return
                if silence.lost():
                    self.lost_message = (
                        f"scheduler at {self.address} unreachable {silence.account()} "
                        "(scheduler rank died?); stopping the app"
                    )
                    self.lost.set()
                    self._on_lost(self.lost_message)
                    return
            await asyncio.sleep(interval)

    def _interrupt_main(self, message: str) -> None:
        say(message)
        # KeyboardInterrupt in the app lets it unwind (finally blocks, context
        # managers). A real SIGINT aimed at the main thread also wakes it from a
        # blocking wait; an app stuck in C code gets a hard exit after a grace period.
        main = threading.main_thread().ident
        if main is not None and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.pthread_kill(main, signal.SIGINT)
        else:
            _thread.interrupt_main()

        def hard_exit() -> None:
            time.sleep(_LOST_GRACE)
            say("the app did not stop; exiting")
            os._exit(1)

        threading.Thread(target=hard_exit, name="jobstrap-lost", daemon=True).start()
