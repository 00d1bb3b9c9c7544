"""The scheduler job's watchdog: a ``scheduler="job"`` cluster cannot be orphaned.

A scheduler in its own batch job would outlive a notebook that was killed outright
(SIGKILL, a node crash) and keep its workers' jobs alive until walltime. The
cluster bumps a heartbeat in the scheduler's metadata every second, through
distributed's own cluster-info sync; :class:`ManagerWatchdog`, a scheduler plugin
the cluster installs, closes the scheduler when the heartbeat has not moved for the
death timeout. The workers then leave after theirs and every job ends.

Runs inside the scheduler's job (unpickled there); imports nothing client-side.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

__all__ = ["HEARTBEAT_KEY", "ManagerWatchdog"]

logger = logging.getLogger(__name__)

#: Where the cluster's heartbeat is found in the scheduler's metadata.
HEARTBEAT_KEY = ("cluster-manager-info", "jobstrap-heartbeat")


class ManagerWatchdog(SchedulerPlugin):
    """Close the scheduler when the cluster that manages it has gone silent.

    Parameters
    ----------
    timeout
        Seconds without a heartbeat before the scheduler closes.
    interval
        Seconds between checks.
    """

    name = "jobstrap-manager-watchdog"

    def __init__(self, timeout: float, interval: float = 1.0) -> None:
        self.timeout = timeout
        self.interval = interval
        self._task: Any = None

    async def start(self, scheduler: Any) -> None:
        self._task = asyncio.ensure_future(self._watch(scheduler))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self, scheduler: Any) -> None:
        last: object = None
        changed = time.monotonic()
        while scheduler.status.name not in ("closing", "closed"):
            # Change, not clock values: the cluster's clock is another machine's.
            beat = scheduler.get_metadata(list(HEARTBEAT_KEY), default=None)
            now = time.monotonic()
            if beat != last:
                last, changed = beat, now
            elif now - changed > self.timeout:
                logger.warning(
                    "no heartbeat from the cluster for %.0f s: closing the scheduler",
                    now - changed,
                )
                # Closing the scheduler closes its plugins, this one included: let go of
                # the task first, or close() would cancel the close half-way through.
                self._task = None
                await scheduler.close(reason="jobstrap: the cluster's process is gone")
                return
            await asyncio.sleep(self.interval)
