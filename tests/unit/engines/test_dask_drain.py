"""The drain's decision: wait for running tasks that can finish in time, else retire now."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from distributed import Client, Scheduler, Worker
from distributed.diagnostics.plugin import SchedulerPlugin
from hypothesis import given
from hypothesis import strategies as st

from jobstrap.engines.dask.drain import DRAIN_HANDLER, RunningTask, drain_decision, install_drain


def test_nothing_running_retires_now() -> None:
    assert drain_decision([], seconds_left=30.0) is None


def test_a_task_expected_to_finish_in_time_is_waited_for() -> None:
    # 12 s tasks, 5 s in: 7 s to go, 16 s left.
    assert drain_decision([RunningTask(elapsed=5.0, estimate=12.0)], 16.0) == 7.0


def test_a_task_that_cannot_finish_in_time_is_not_waited_for() -> None:
    # 60 s to go, 16 s left: it restarts elsewhere now rather than 16 s later.
    assert drain_decision([RunningTask(elapsed=0.0, estimate=60.0)], 16.0) is None


def test_the_time_being_up_retires_now_whatever_runs() -> None:
    assert drain_decision([RunningTask(elapsed=11.0, estimate=12.0)], 0.0) is None
    assert drain_decision([RunningTask(elapsed=11.0, estimate=12.0)], -1.0) is None


def test_one_task_that_fits_is_waited_for_beside_one_that_does_not() -> None:
    running = [RunningTask(2.0, 12.0), RunningTask(0.0, 600.0)]
    assert drain_decision(running, 16.0) == 10.0


def test_a_task_that_overran_its_estimate_is_waited_for_while_time_is_left() -> None:
    assert drain_decision([RunningTask(elapsed=20.0, estimate=12.0)], 3.0) == 0.0


@given(
    tasks=st.lists(
        st.tuples(st.floats(0, 1e4), st.floats(0, 1e4)).map(lambda t: RunningTask(*t)),
        max_size=8,
    ),
    left=st.floats(-10, 1e4),
)
def test_the_expected_wait_never_exceeds_the_time_left(
    tasks: list[RunningTask], left: float
) -> None:
    wait = drain_decision(tasks, left)
    if wait is not None:
        assert 0.0 <= wait <= left
        assert any(task.rest == wait for task in tasks)
    else:
        assert left <= 0 or all(task.rest > left for task in tasks)


class CountStarts(SchedulerPlugin):
    """Transitions into ``processing``, by key."""

    def __init__(self) -> None:
        self.starts: dict[str, int] = {}

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "processing":
            self.starts[str(key)] = self.starts.get(str(key), 0) + 1


def test_draining_a_real_worker_starts_none_of_its_tasks_twice() -> None:
    # Retiring the worker at once (retire_workers) starts both its tasks again on
    # the other worker; the drain lets the running one finish and moves the queued one.
    async def scenario() -> tuple[dict[str, int], dict[str, Any], set[str]]:
        async with Scheduler(dashboard_address=":0", port=0) as scheduler:
            install_drain(scheduler)
            counter = CountStarts()
            scheduler.add_plugin(counter)
            async with (
                Worker(scheduler.address, nthreads=1, name="old"),
                Client(scheduler.address, asynchronous=True) as client,
            ):
                # One task runs on the old worker, one more is queued on it.
                futures = [client.submit(time.sleep, 2.0, pure=False) for _ in range(3)]
                while not any(ws.executing for ws in scheduler.workers.values()):
                    await asyncio.sleep(0.05)
                async with Worker(scheduler.address, nthreads=1, name="new"):
                    report = await scheduler.handlers[DRAIN_HANDLER](names=["old"], seconds=30.0)
                    await client.gather(futures)
                    left = {str(ws.name) for ws in scheduler.workers.values()}
                    return counter.starts, report, left

    starts, report, left = asyncio.run(scenario())
    assert report["interrupted"] == 0, report
    assert report["retired"], report
    assert left == {"new"}
    assert len(starts) == 3
    assert all(n == 1 for n in starts.values()), starts
