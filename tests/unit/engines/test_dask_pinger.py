"""The worker ranks' scheduler ping, against a real scheduler on its own thread."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import pytest
from distributed import Security

from jobstrap.engines.dask.quiet import NOISY_LOGGERS
from jobstrap.engines.dask.scheduler import SchedulerPinger, SchedulerRunner


@pytest.fixture(autouse=True)
def _loggers_as_they_were() -> Iterator[None]:
    # Ending a run silences distributed's noisy loggers for the rest of the process:
    # in this test process, give the tests after this module their loggers back.
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _runner() -> SchedulerRunner:
    runner = SchedulerRunner(host="127.0.0.1", protocol="tcp", security=Security(), dashboard=False)
    runner.start()
    return runner


def test_a_ping_the_scheduler_answers_late_still_counts_and_keeps_its_connection() -> None:
    runner = _runner()

    async def scenario() -> tuple[bool | None, bool | None, bool | None, int]:
        pinger = SchedulerPinger(runner.address, Security(), timeout=5.0)
        try:
            first = await pinger.answered(wait=5.0, patience=10.0)
            assert runner.loop is not None
            runner.loop.call_soon_threadsafe(time.sleep, 1.5)  # the scheduler stalls
            await asyncio.sleep(0.1)
            waiting = await pinger.answered(wait=0.3, patience=10.0)
            late = await pinger.answered(wait=5.0, patience=10.0)  # the same ping
            return first, waiting, late, len(pinger._rpc.comms)
        finally:
            await pinger.close()

    try:
        first, waiting, late, connections = asyncio.run(scenario())
    finally:
        runner.finish(0)
        runner.wait(timeout=30)
    assert first is True
    assert waiting is None  # not an error: still in flight
    assert late is True
    assert connections == 1  # never cancelled, so never reconnected


def test_a_gone_scheduler_fails_the_ping() -> None:
    runner = _runner()
    address = runner.address
    runner.finish(0)
    runner.wait(timeout=30)

    async def scenario() -> bool | None:
        pinger = SchedulerPinger(address, Security(), timeout=2.0)
        try:
            return await pinger.answered(wait=10.0, patience=5.0)
        finally:
            await pinger.close()

    assert asyncio.run(scenario()) is False
