"""The scheduler job's watchdog, on a real in-process scheduler."""

from __future__ import annotations

import asyncio
import time

from distributed import Scheduler

from jobstrap.engines.dask.watchdog import HEARTBEAT_KEY, ManagerWatchdog


async def _run(beat_for: float, wait: float) -> tuple[str, float]:
    """Beat for ``beat_for`` s, then stop; return the scheduler's status after ``wait`` s."""
    async with Scheduler(host="127.0.0.1", port=0, dashboard=False) as scheduler:
        await scheduler.register_scheduler_plugin(
            ManagerWatchdog(timeout=1.0, interval=0.1), idempotent=False
        )
        started = time.monotonic()
        closed_at = float("inf")
        while time.monotonic() - started < wait:
            if time.monotonic() - started < beat_for:
                scheduler.set_metadata(keys=list(HEARTBEAT_KEY), value=time.monotonic())
            if scheduler.status.name == "closed" and closed_at == float("inf"):
                closed_at = time.monotonic() - started
            await asyncio.sleep(0.05)
        return scheduler.status.name, closed_at


def test_a_scheduler_with_a_live_cluster_stays_up() -> None:
    status, _ = asyncio.run(_run(beat_for=4.0, wait=3.0))

    assert status == "running"


def test_a_scheduler_closes_itself_once_the_heartbeat_stops() -> None:
    status, closed_at = asyncio.run(_run(beat_for=1.0, wait=5.0))

    assert status == "closed"
    assert 2.0 <= closed_at < 4.0
